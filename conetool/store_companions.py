"""The store's companion files: the eval kernels K(eval, probe) (``eval_kernels/``) and the
per-layer kernels (``layer_kernels/``), one file per step, each carrying in its metadata what
makes it current. :class:`conetool.store.Store` records their sets in the manifest and calls
these; a manifest rebuilt from the kernel files gets those records back from the evaluation set
file and the layer files (:func:`recovered_eval_record`, :func:`recovered_layer_record`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import paths
from .errors import StoreError
from .io import atomic_save_safetensors
from .layer_groups import ROOT, groups_hash
from .store_manifest import (
    StoreIdentity,
    file_metadata,
    kernel_header,
    load_finite_kernel,
    made_with,
    tensor_dtype_problem,
)

#: A record recovered for a rebuilt manifest, or None, and why it could not be (None: it could,
#: or there was nothing to recover).
Recovered = tuple[dict[str, Any] | None, str | None]


def companion_metadata(
    ident: StoreIdentity, step: int, fingerprint: str, hash_key: str, hash_value: str
) -> dict[str, str]:
    """What makes a per-step companion file (eval or layer kernels) current: the step, the
    store's identity, its own set's hash and the source checkpoint's fingerprint."""
    return {
        "step": str(step),
        "kind": ident.kind,
        "dtype": ident.dtype,
        "spec_hash": ident.spec_hash,
        "probe_hash": ident.probe_hash,
        hash_key: hash_value,
        "fingerprint": fingerprint,
    }


def delete_other_sets(folder: Path, hash_key: str, hash_value: Any) -> int:
    """Delete the files in ``folder`` whose metadata ``hash_key`` is not ``hash_value``; return
    how many."""
    removed = 0
    for path in _step_files(folder):
        if _metadata(path).get(hash_key) != hash_value:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _step_files(folder: Path) -> list[Path]:
    """The per-step safetensors files of ``folder`` (none when it does not exist)."""
    return sorted(folder.glob("step_*.safetensors")) if folder.is_dir() else []


def _metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata; empty when it cannot be read."""
    return file_metadata(path) or {}


# ----------------------------------------------------------------- eval kernels
def eval_set_changed_note(
    root: Path, old: Mapping[str, Any], record: Mapping[str, Any], removed: int
) -> str:
    """The note shown when the evaluation set ``old`` of the store ``root`` was replaced by
    ``record`` and ``removed`` of its eval kernel files were deleted."""
    return (
        f"the evaluation set changed (size {old.get('size')} -> {record.get('size')}, "
        f"hash {old.get('hash')} -> {record.get('hash')}); its {removed} eval kernel(s) "
        f"in {paths.eval_kernels_dir(root)} were deleted and are recomputed"
    )


def eval_kernel_problem(
    root: Path, step: int, expected: Mapping[str, str], size: Any
) -> str | None:
    """Why the eval kernel file of ``step`` does not carry the metadata ``expected`` or the eval
    set's ``size`` rows, or None when it does (header only)."""
    path = paths.eval_kernel(root, step)
    if not path.is_file():
        return f"no eval kernel {path}"
    header = kernel_header(path, "eval kernel file")
    if isinstance(header, str):
        return header
    meta, shape, _ = header
    wrong = [f"{k} {meta.get(k)!r} (wanted {v!r})" for k, v in expected.items() if meta.get(k) != v]
    if "dtype" in expected and (tensor := tensor_dtype_problem(header, expected["dtype"])):
        wrong.append(tensor)
    if isinstance(size, int) and (len(shape) < 2 or shape[0] != size):
        wrong.append(f"shape {shape} (eval size {size})")
    if wrong:
        return f"eval kernel file {path} is stale: {'; '.join(wrong)}"
    return None


def write_eval_kernel(
    root: Path, step: int, kernel: torch.Tensor, metadata: Mapping[str, str]
) -> Path:
    """Write the cross kernel ``kernel`` of ``step`` atomically with ``metadata``; its path."""
    path = paths.eval_kernel(root, step)
    atomic_save_safetensors(path, {"kernel": kernel.cpu()}, metadata)
    return path


def load_eval_kernel(root: Path, step: int, rerun: str) -> torch.Tensor:
    """The stored cross kernel of ``step``; checked finite. ``rerun``: the ``conetool kernels``
    command that recomputes it (:meth:`~conetool.store.Store.kernels_command`)."""
    return load_finite_kernel(
        paths.eval_kernel(root, step),
        "eval kernel file",
        unreadable=f"Delete it and rerun {rerun}, which recomputes it.",
        non_finite=f"Delete it and rerun {rerun}, which recomputes it.",
    )


# ----------------------------------------------------------------- layer kernels
def layer_groups_changed_note(
    root: Path, old: Mapping[str, Any], record: Mapping[str, Any], removed: int
) -> str:
    """The note shown when the parameter groups ``old`` of the store ``root`` were replaced by
    ``record`` and ``removed`` of its layer kernel files were deleted."""
    return (
        f"the parameter groups changed ({', '.join(old.get('groups') or {})} -> "
        f"{', '.join(record.get('groups') or {})}); the {removed} layer kernel file(s) "
        f"in {paths.layer_kernels_dir(root)} were deleted and are recomputed"
    )


def layer_kernel_problem(root: Path, step: int, expected: Mapping[str, str]) -> str | None:
    """Why the layer file of ``step`` does not carry the metadata ``expected`` or one tensor per
    group it names, or None when it does (header only)."""
    path = paths.layer_kernel(root, step)
    if not path.is_file():
        return f"no layer kernel file {path}"
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            keys = set(handle.keys())
    except (OSError, SafetensorError) as exc:
        return f"layer kernel file {path} cannot be read ({exc})"
    wrong = [f"{k} {meta.get(k)!r} (wanted {v!r})" for k, v in expected.items() if meta.get(k) != v]
    try:
        groups = json.loads(meta.get("groups", "null"))
    except json.JSONDecodeError:
        groups = None
    if not isinstance(groups, dict) or set(groups) != keys:
        wrong.append("its tensors are not the groups it names")
    if wrong:
        return f"layer kernel file {path} is stale: {'; '.join(wrong)}"
    return None


def write_layer_kernels(
    root: Path,
    step: int,
    kernels: Mapping[str, torch.Tensor],
    groups: Mapping[str, list[str]],
    metadata: Mapping[str, str],
    patterns: str | None = None,
) -> Path:
    """Write the per-group ``kernels`` of ``step`` atomically with ``metadata``, the ``groups``
    (group -> parameter names) they were made of and ``patterns``, the JSON text of the
    ``--groups`` patterns that made them (``null``: leaf modules; None: not known, not written),
    from which a rebuilt manifest gets its ``layer_groups`` record back
    (:func:`recovered_layer_record`); its path."""
    metadata = {**metadata, "groups": json.dumps({g: list(m) for g, m in groups.items()})}
    if patterns is not None:
        metadata["patterns"] = patterns
    path = paths.layer_kernel(root, step)
    atomic_save_safetensors(path, {g: k.cpu() for g, k in kernels.items()}, metadata)
    return path


def load_layer_kernels(
    root: Path, step: int, recorded: Mapping[str, Any] | None, rerun: str
) -> dict[str, torch.Tensor]:
    """The stored per-group kernels of ``step``, group -> kernel, in the order of the
    ``recorded`` groups (the file's own order without a record); checked finite. ``rerun``: the
    ``conetool kernels`` command that recomputes them
    (:meth:`~conetool.store.Store.kernels_command`)."""
    path = paths.layer_kernel(root, step)
    fix = f"Delete it and rerun {rerun}, which recomputes it."
    try:
        loaded = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise StoreError(f"layer kernel file {path} cannot be read ({exc}). {fix}") from exc
    bad = [g for g, kernel in loaded.items() if not torch.isfinite(kernel).all()]
    if bad:
        raise StoreError(
            f"layer kernel file {path} holds non-finite values (group {bad[0]}). {fix}"
        )
    order = list((recorded or {}).get("groups") or loaded)
    return {g: loaded[g] for g in order if g in loaded}


# ----------------------------------------------------------------- a rebuilt manifest
def recovered_eval_record(root: Path, seed: Any) -> Recovered:
    """The manifest's ``eval`` record (as ``kernels --eval-size`` writes it: size, split, seed,
    hash, file) recovered from the evaluation set file of the store ``root`` (header only: its
    metadata and the length of its labels), with the probe's ``seed`` (the spec's, which the
    store's spec hash fixes); ``(None, None)`` when the store has no evaluation set, ``(None,
    why)`` when it has eval kernels but no readable evaluation set."""
    path = paths.eval_set(root)
    if not path.is_file():
        if not _step_files(paths.eval_kernels_dir(root)):
            return None, None
        return None, f"its eval kernels have no evaluation set ({path} is missing)"
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            shape = handle.get_slice("labels").get_shape() if "labels" in handle.keys() else []
    except (OSError, SafetensorError) as exc:
        return None, f"its evaluation set {path} cannot be read ({exc})"
    if len(shape) != 1 or "hash" not in meta or "split" not in meta:
        return None, f"its evaluation set {path} lacks its labels, split or hash"
    record = {
        "size": int(shape[0]),
        "split": meta["split"],
        "seed": seed,
        "hash": meta["hash"],
        "file": paths.EVAL_NAME,
    }
    return record, None


def eval_size_of_kernels(root: Path, ident: StoreIdentity) -> int | None:
    """The evaluation set's size as the eval kernel files of the store ``root`` made with
    ``ident`` give it (rows of the first readable one; header only), or None."""
    for path in _step_files(paths.eval_kernels_dir(root)):
        header = kernel_header(path, "eval kernel file")
        if not isinstance(header, str) and made_with(header[0], ident) and header[1]:
            return int(header[1][0])
    return None


def recovered_layer_record(root: Path, ident: StoreIdentity) -> Recovered:
    """The manifest's ``layer_groups`` record (as ``kernels --per-layer`` writes it: patterns,
    groups, hash, dir) recovered from the newest layer file of the store ``root`` made with
    ``ident`` whose groups match the hash it carries (header only; a regrouping deletes the old
    grouping's files, so the newest is the recorded one). A file written before layer files
    carried their ``--groups`` patterns gives them when its groups are leaf modules (``None``,
    as ``--per-layer`` records them); else ``(None, why)``, as when no layer file can be used.
    ``(None, None)`` when the store has no layer files."""
    files = _step_files(paths.layer_kernels_dir(root))
    if not files:
        return None, None
    newest: tuple[int, dict[str, str], dict[str, list[str]]] | None = None
    for path in files:
        meta = _metadata(path)
        groups = _groups_of(meta)
        if groups is None or not made_with(meta, ident):
            continue
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            continue
        if newest is None or mtime > newest[0]:
            newest = (mtime, meta, groups)
    folder = paths.layer_kernels_dir(root)
    if newest is None:
        return None, (
            f"none of its {len(files)} layer kernel file(s) in {folder} can be read, or "
            "they were made with another spec, probe set, kernel kind or dtype"
        )
    _, meta, groups = newest
    if "patterns" in meta:
        try:
            patterns = json.loads(meta["patterns"])
        except json.JSONDecodeError:
            patterns = "?"
    else:  # written before layer files carried them
        leaves = all((m.rpartition(".")[0] or ROOT) == g for g, ms in groups.items() for m in ms)
        patterns = None if leaves else "?"
    if patterns is not None and not (
        isinstance(patterns, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in patterns.items())
    ):
        return None, (
            f"its layer kernel files in {folder} carry the parameter groups "
            f"{', '.join(groups)} but not the --groups patterns that made them"
        )
    record = {"patterns": patterns, "groups": groups, "hash": meta["groups_hash"]}
    return {**record, "dir": paths.LAYER_KERNELS_DIR}, None


def _groups_of(meta: Mapping[str, str]) -> dict[str, list[str]] | None:
    """The groups (group -> parameter names) a layer file's metadata ``meta`` names, when they
    are such a mapping and match the ``groups_hash`` it carries; else None."""
    try:
        groups = json.loads(meta.get("groups", "null"))
    except json.JSONDecodeError:
        return None
    if not isinstance(groups, dict) or not all(
        isinstance(members, list) and all(isinstance(m, str) for m in members)
        for members in groups.values()
    ):
        return None
    return groups if groups_hash(groups) == meta.get("groups_hash") else None
