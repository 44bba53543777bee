"""The spec a store's kernels were computed with, as their files carry it, for a ``switch`` on a
store whose ``manifest.json`` is missing or damaged: what its refusal of another spec reads there
in the manifest's place (:func:`~conetool.pipeline.switch_prepare._refuse_another_spec`).

Each kernel file carries the hash of its spec, and those written since conetool carried it the
resolved spec itself (JSON metadata ``spec``); the probe file records the probe set's split and
size. Header metadata only: no kernel is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .. import paths
from ..errors import SpecError
from ..spec import spec_from_dict

__all__ = ["carried_spec"]


def carried_spec(
    store: Path,
    carried: list[dict[str, str]],
    spec_hash: str,
    held: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """What a manifest records of the spec the kernels of ``store`` were computed with, as their
    files carry it (their metadata ``carried``, the newest first): ``{"spec_hash": ..., "steps":
    {step: {}}, "spec": ..., "probe": {"size": ..., "split": ...}}``. The spec hash is the one
    most files carry (the newest group on a tie, as the rebuild of the manifest decides); the
    spec, the newest of those files' that carries it, else the damaged manifest ``held``'s
    when it hashes to it (absent when neither: files written before they carried it); the probe
    set's size and split, from the store's probe file when it can be read (absent otherwise).
    None when no kernel file carries a spec hash, or some are of ``spec_hash`` (the sweep's):
    kernels of its spec are in the store."""
    groups: dict[str, list[dict[str, str]]] = {}
    for meta in carried:
        if meta.get("spec_hash"):
            groups.setdefault(meta["spec_hash"], []).append(meta)
    if not groups or spec_hash in groups:
        return None
    theirs = max(groups, key=lambda h: len(groups[h]))  # the first of the largest: the newest
    record: dict[str, Any] = {
        "spec_hash": theirs,
        "steps": {str(meta.get("step")): {} for meta in groups[theirs]},
    }
    spec = next((s for s in map(_spec_of, groups[theirs]) if s is not None), None)
    if spec is None:
        spec = _held_spec(held, theirs)
    if spec is not None:
        record["spec"] = spec
    probe = _probe_of(store)
    if probe is not None:
        record["probe"] = probe
    return record


def _spec_of(meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The resolved spec a kernel file's metadata carries (None: none, or not a table)."""
    try:
        spec = json.loads(meta.get("spec", "null"))
    except json.JSONDecodeError:
        return None
    return spec if isinstance(spec, dict) else None


def _held_spec(held: Mapping[str, Any] | None, spec_hash: str) -> dict[str, Any] | None:
    """The spec the damaged manifest ``held`` (its JSON object as read) still records, when it
    is the one of hash ``spec_hash``; else None."""
    record = (held or {}).get("spec")
    if not isinstance(record, dict):
        return None
    try:
        hashed = spec_from_dict(record).hash()
    except SpecError:
        return None
    return record if hashed == spec_hash else None


def _probe_of(store: Path) -> dict[str, Any] | None:
    """``{"size", "split"}`` of the probe set in the probe file of ``store`` (its header: the
    ``indices`` tensor's length and the ``split`` metadata); None when it cannot be read."""
    try:
        with safe_open(str(paths.probe(store)), framework="pt") as handle:
            split = (handle.metadata() or {}).get("split")
            shape = handle.get_slice("indices").get_shape()
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    if not isinstance(split, str) or len(shape) != 1:
        return None
    return {"size": int(shape[0]), "split": split}
