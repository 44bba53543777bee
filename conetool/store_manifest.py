"""The store's index: ``manifest.json`` (its format, the values it holds, :class:`StoreIdentity`
and :class:`StepRecord`, reading it checked, writing it, rebuilding it) and the copy of its record
that each kernel file carries in its metadata (written, checked, read back to rebuild the
manifest). :class:`conetool.store.Store` holds the manifest in memory and calls these."""

from __future__ import annotations

import json
import math
import reprlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from . import paths
from ._version import __version__
from .checkpoints._stored_steps import BEYOND_MAX_STEP, MAX_STEP
from .errors import StoreError
from .io import SAFETENSORS_DTYPES, atomic_write_text
from .spec import differing_keys, resolved_differences

FORMAT = "conetool-store"
FORMAT_VERSION = 1
LAYOUTS = {
    "trace": "(n, n): H[i, j] = sum_k <df_k(x_i)/dθ, df_k(x_j)/dθ>",
    "sum": "(n, n): kernel of the logit sum g = sum_k f_k",
    "full": "(n, c, n, c), example-major: H[i, a, j, b] = <df_a(x_i)/dθ, df_b(x_j)/dθ>",
}


@dataclass(frozen=True)
class StoreIdentity:
    """What makes two kernels comparable: same spec, same probe set, same kind and dtype."""

    spec_hash: str
    probe_hash: str
    kind: str
    dtype: str


@dataclass(frozen=True)
class StepRecord:
    """One stored kernel: its source checkpoint (paths, total size, modification time and
    content fingerprint), kernel file (relative to the store), Frobenius norm and seconds taken,
    and what computed it: ``engine``, the eNTK engine actually used (``structured`` or
    ``jacobian``: what ``--method auto`` picked, not the option), and ``device``, the device
    type (``cpu``, ``cuda``). Both are None in a record written before conetool recorded them
    (a kernel file carries its record, so a rebuilt manifest keeps them)."""

    step: int
    source: list[str]
    size: int
    fingerprint: str
    kernel: str
    norm: float
    seconds: float
    mtime_ns: int = 0
    engine: str | None = None
    device: str | None = None


#: The fields a record may lack (written by an older conetool), with the value that means.
_OPTIONAL = {"mtime_ns": 0, "engine": None, "device": None}


def kernel_norm(kernel: torch.Tensor) -> float:
    """‖H‖_F of ``kernel`` (any shape) in float64, as :attr:`StepRecord.norm` records it; a
    :class:`StoreError` when it is not finite."""
    value = float(torch.linalg.vector_norm(kernel.double()))
    if not math.isfinite(value):
        raise StoreError("kernel norm is not finite")
    return value


def made_by(record: StepRecord) -> str:
    """What computed the kernel of ``record``, as the notes name it: ``structured on cpu``; for a
    record written before conetool recorded it, ``an unrecorded engine``."""
    if record.engine is None:
        return "an unrecorded engine" + (f" on {record.device}" if record.device else "")
    return f"{record.engine} on {record.device or 'an unrecorded device'}"


#: How :func:`mixed_engines_note` begins (the report, which states its own, leaves out the copy
#: that distance's summary kept).
MIXED_ENGINES = "this store's kernels were made by more than one engine or device type:"


def mixed_engines_note(records: Mapping[int, StepRecord]) -> str | None:
    """One line saying which steps' kernels were made by which engine on which device type, when
    ``records`` (step -> record) were not all made alike (a kernel lost and recomputed by a rerun
    with another ``--method``, or on another device); else None. Not an error: the engines agree
    to about 1e-6 relative in float32, but a distance that small may then be theirs."""
    groups: dict[str, list[int]] = {}
    for step, record in sorted(records.items()):
        groups.setdefault(made_by(record), []).append(step)
    if len(groups) < 2:
        return None
    listed = "; ".join(f"{_steps_of(steps)} by {who}" for who, steps in groups.items())
    return (
        f"{MIXED_ENGINES} {listed}. "
        "They agree to about 1e-6 relative in float32 (closer in float64), so a distance that "
        "small between kernels of two groups may come from the engines, not the run; to make "
        "them alike, delete one group's kernel files and rerun conetool kernels with the "
        "other's --method and --device"
    )


def _steps_of(steps: list[int]) -> str:
    """``step 5``, ``steps 0, 2, 4`` or ``12 steps (0 to 900)``."""
    if len(steps) == 1:
        return f"step {steps[0]}"
    if len(steps) <= 4:
        return "steps " + ", ".join(str(s) for s in steps)
    return f"{len(steps)} steps ({steps[0]} to {steps[-1]})"


def new_store_id() -> str:
    """A fresh store's ``store_id``: random, so that a store cleared and started again (``kernels
    --overwrite``) is told from the one it replaced even when its identity is the same."""
    return uuid.uuid4().hex


def new_manifest(identity: StoreIdentity, header: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest of a fresh store of ``identity`` with the provenance ``header``, no steps."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "store_id": new_store_id(),
        **asdict(identity),
        "layout": LAYOUTS[identity.kind],
        **header,
        "steps": {},
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, checked (a JSON object of this format, not from a newer
    conetool); else a :class:`StoreError` naming the file and the fix."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, exc) from exc
    return checked_manifest(path, manifest)


def _damaged(path: Path, why: Exception) -> StoreError:
    """The error for a manifest that cannot be read or is not whole; raised ``from`` ``why``,
    which tells :meth:`~conetool.store.Store.open_for_writing` to rebuild it."""
    return StoreError(
        f"{path} is not a readable conetool manifest ({why}). It is written atomically, so "
        "it was edited or damaged by hand. Rerun conetool kernels CKPTS --store "
        f"{path.parent}: it rebuilds the manifest from the kernel files (each carries its "
        "own record) and recomputes only what is missing."
    )


def checked_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest``, the JSON object read from ``path``, when it is a manifest of this format
    and not from a newer conetool; else a :class:`StoreError` naming the file and the fix (a
    manifest of this format with a value of the wrong type is damaged, and rebuilt by
    ``kernels``, as an unreadable one is)."""
    if manifest.get("format") != FORMAT:
        raise StoreError(
            f"{path} is not a conetool store manifest. Point --store at a directory written by "
            "conetool kernels."
        )
    version = manifest.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise StoreError(
            f"{path} was written by a newer conetool (store format "
            f"{manifest['format_version']}); upgrade conetool to read it."
        )
    problem = _malformed(manifest)
    if problem is not None:
        why = ValueError(problem)
        raise _damaged(path, why) from why
    check_steps(path, manifest)
    return manifest


def check_steps(path: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse the manifest at ``path`` when its steps hold one above
    :data:`~conetool.checkpoints._stored_steps.MAX_STEP`: a conetool before that refusal took one
    from a checkpoint (a 20-digit step entry or name), and ``distance`` then failed only after its
    S matrix was computed. A :class:`StoreError` naming the step, its kernel file and the fix."""
    beyond = [
        r
        for r in manifest["steps"].values()
        if isinstance(r, Mapping) and isinstance(r.get("step"), int) and r["step"] > MAX_STEP
    ]
    if not beyond:
        return
    beyond.sort(key=lambda r: int(r["step"]))
    root = path.parent
    steps = ", ".join(str(r["step"]) for r in beyond)
    files = ", ".join(str(root / str(r.get("kernel"))) for r in beyond)
    sources = [str(s) for r in beyond if isinstance(r.get("source"), list) for s in r["source"]]
    taken = f" ({', '.join(sources)})" if sources else ""
    raise StoreError(
        f"{path} records step {steps}, {BEYOND_MAX_STEP}. An older conetool took it from a "
        f"checkpoint{taken}. Delete the kernel file {files} and {path}, then rerun conetool "
        f"kernels {manifest.get('checkpoints') or 'CKPTS'} --store {root}: it rebuilds the "
        "manifest from the other kernel files (each carries its own record) without recomputing "
        "them, and refuses a checkpoint that still gives such a step, naming the fix."
    )


#: The type of each value of a manifest that conetool reads (``_RECORD_TYPES``: of a step's
#: record); a key absent is fine where it is optional (a store made by an older conetool).
_REQUIRED_TYPES: dict[str, type | tuple[type, ...]] = {
    "spec_hash": str,
    "probe_hash": str,
    "kind": str,
    "dtype": str,
    "steps": dict,
}
_OPTIONAL_TYPES: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "store_id": str,
    "checkpoints": (str, type(None)),
    "spec": dict,
    "probe": dict,
    "selection": (dict, type(None)),
    "imports": list,
    "selected_steps": list,
    "eval": (dict, type(None)),
    "layer_groups": (dict, type(None)),
}
_RECORD_TYPES: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "source": list,
    "size": int,
    "fingerprint": str,
    "kernel": str,
    "norm": (int, float),
    "seconds": (int, float),
    "mtime_ns": int,
    "engine": (str, type(None)),
    "device": (str, type(None)),
}


def _malformed(manifest: Mapping[str, Any]) -> str | None:
    """What makes ``manifest`` (of this format) unusable, or None: a value of the wrong type, a
    kind conetool does not compute, a step record that is not one."""

    def wrong(value: Any, expected: type | tuple[type, ...]) -> bool:
        # a JSON true is no integer here, though Python's bool is an int
        if isinstance(value, bool):
            return bool not in _as_tuple(expected)
        return not isinstance(value, expected)

    for key, expected in _REQUIRED_TYPES.items():
        if key not in manifest:
            return f"'{key}' is missing"
        if wrong(manifest[key], expected):
            return f"'{key}' is {reprlib.repr(manifest[key])}"
    for key, expected in _OPTIONAL_TYPES.items():
        if key in manifest and wrong(manifest[key], expected):
            return f"'{key}' is {reprlib.repr(manifest[key])}"
    if manifest["kind"] not in LAYOUTS:
        return f"'kind' is {manifest['kind']!r}, not one of {', '.join(LAYOUTS)}"
    spec = manifest.get("spec", {})
    for section, values in spec.items():
        if not isinstance(values, dict):
            return f"'spec.{section}' is {reprlib.repr(values)}"
    for key, record in manifest["steps"].items():
        if not isinstance(record, dict) or key != str(record.get("step")):
            return f"the record of step {key!r} is not a record of that step"
        for name, expected in _RECORD_TYPES.items():
            if name not in record and name not in _OPTIONAL:
                return f"the record of step {key} has no '{name}'"
            if name in record and wrong(record[name], expected):
                return f"the record of step {key} has '{name}' {reprlib.repr(record[name])}"
        unknown = sorted(set(record) - set(_RECORD_TYPES))
        if unknown:
            return f"the record of step {key} has an unknown field '{unknown[0]}'"
    return None


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Sort ``manifest``'s steps (in place), stamp this conetool's version and write it
    atomically as ``root``'s manifest. The caller holds the store's manifest lock."""
    manifest["steps"] = dict(sorted(manifest["steps"].items(), key=lambda kv: int(kv[0])))
    manifest["conetool_version"] = __version__
    text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
    atomic_write_text(paths.manifest(root), text)


def manifest_identity(manifest: Mapping[str, Any]) -> StoreIdentity:
    """The identity a manifest records."""
    return StoreIdentity(
        spec_hash=manifest["spec_hash"],
        probe_hash=manifest["probe_hash"],
        kind=manifest["kind"],
        dtype=manifest["dtype"],
    )


def opened_as(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What tells the store a reader opened from one that replaced it: the manifest's
    ``store_id`` and identity (see :func:`same_store`)."""
    keys = ("store_id", "spec_hash", "probe_hash", "kind", "dtype")
    return {key: manifest.get(key) for key in keys}


def same_store(opened: Mapping[str, Any], now: Mapping[str, Any]) -> bool:
    """Whether the manifest ``now`` is of the store whose :func:`opened_as` is ``opened``: the
    same ``store_id``; for a store opened before conetool recorded one, the same identity (a
    store is cleared only for another identity, or when its manifest is damaged)."""
    if opened.get("store_id") is not None:
        return bool(now.get("store_id") == opened["store_id"])
    return all(
        now.get(key) == opened.get(key) for key in ("spec_hash", "probe_hash", "kind", "dtype")
    )


def mixed_message(
    root: Path,
    found: StoreIdentity,
    wanted: StoreIdentity,
    count: int,
    specs: tuple[Any, Any] = (None, None),
    source: Any = None,
    written: Any = None,
) -> str:
    """The refusal to open the store ``root`` of identity ``found`` for ``wanted``. ``specs``:
    the store's resolved spec and this run's (as dicts, when known), so that a store whose spec
    differs from this run's in the probe size alone names the ``--probe-size`` that adds to it.
    ``source`` and ``written``: this run's spec file and the keys it sets (a manifest header's
    ``spec_source`` and ``spec_written``), named when the specs differ: a run's own
    ``conetool.toml``, read without ``--spec``, is otherwise nowhere in the message."""
    differences = [
        f"{name} {getattr(found, name)} (this run: {getattr(wanted, name)})"
        for name in ("spec_hash", "probe_hash", "kind", "dtype")
        if getattr(found, name) != getattr(wanted, name)
    ]
    # the flags that make this run the store's, where a flag alone decides
    matching = [
        f"--{name} {getattr(found, name)}"
        for name in ("kind", "dtype")
        if getattr(found, name) != getattr(wanted, name)
    ]
    same_spec = found.spec_hash == wanted.spec_hash and found.probe_hash == wanted.probe_hash
    if not same_spec and (size := _probe_size_alone(*specs)) is not None:
        matching.insert(0, f"--probe-size {size}")
        same_spec = True
    add_to_it = ""
    if matching and same_spec:
        add_to_it = f"To add to it, pass {' '.join(matching)}. "
    changed = ""
    named = ""
    if isinstance(source, str) and source:
        named = f", {source}," + (
            " which sets no key (conetool's defaults all)," if written == [] else ""
        )
    if found.spec_hash != wanted.spec_hash and all(isinstance(d, Mapping) for d in specs):
        if keys := resolved_differences(*specs):
            changed = f" This run's spec{named} differs from the store's in {'; '.join(keys)}."
    if found.spec_hash != wanted.spec_hash and not changed and named:
        changed = f" This run's spec is {named.strip(' ,')}."
    cheaper = ""
    if len(differences) == 1 and found.spec_hash != wanted.spec_hash:  # the spec alone
        cheaper = _schedule_alone(specs, source)
    return (
        f"store {root} holds {count} kernels made with another "
        f"{', '.join(differences)}; conetool never mixes them.{changed} {add_to_it}Use another "
        f"--store, or pass --overwrite to replace that store (it deletes those {count} kernels "
        f"and the results made from them).{cheaper}"
    )


def _schedule_alone(specs: tuple[Any, Any], source: Any) -> str:
    """The note that ``distance --spec`` reads this run's spec over the store's kernels, when it
    differs from the store's spec (``specs``: the store's and this run's, as dicts) only in
    ``[train]`` keys no kernel depends on (the schedule written into a run's own spec after
    ``kernels``); else ``""``. ``source``: this run's spec file."""
    from .pipeline.schedule_spec import KERNEL_FREE_TRAIN_KEYS  # (the pipeline's judgement)

    if not all(isinstance(d, Mapping) for d in specs):
        return ""
    keys = differing_keys(*specs)
    if not keys or not all(key in KERNEL_FREE_TRAIN_KEYS for key in keys):
        return ""
    file = source if isinstance(source, str) and source else "FILE"
    return (
        " No kernel depends on those [train] keys: to read the verdict under its schedule over "
        f"these kernels, pass it to conetool distance --spec {file} (and embed --spec {file}) "
        "instead; none is recomputed."
    )


def _probe_size_alone(stored: Any, wanted: Any) -> int | None:
    """The store's probe size when its spec (a resolved spec's dict) differs from this run's in
    ``[probe] size`` alone (a store made with ``kernels --probe-size``), else None."""
    if not isinstance(stored, Mapping) or not isinstance(wanted, Mapping):
        return None
    try:  # as the manifest holds them (JSON: tuples become lists)
        stored, wanted = (json.loads(json.dumps(d, allow_nan=False)) for d in (stored, wanted))
    except (TypeError, ValueError):
        return None
    probe, mine = stored.get("probe"), wanted.get("probe")
    if not isinstance(probe, Mapping) or not isinstance(mine, Mapping):
        return None
    size = probe.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size == mine.get("size"):
        return None
    if {**stored, "probe": {**probe, "size": mine.get("size")}} != wanted:
        return None
    return size


def rebuilt_note(root: Path, note: str, adopted: int, foreign: int) -> str:
    """``note`` (the manifest was missing or damaged) completed with how many kernels were
    recovered from their files (``adopted``) and how many were left out (``foreign``); a
    :class:`StoreError` when every kernel file was made with another identity."""
    if foreign and not adopted:
        raise StoreError(
            f"store {root} has no usable {paths.MANIFEST_NAME}, and its {foreign} kernel "
            "file(s) were made with another spec, probe set, kernel kind or dtype than "
            "this run; conetool never mixes them. Use another --store, or pass "
            "--overwrite to replace that store."
        )
    return note + (
        f" ({adopted} kernel(s) recovered, each from the record it carries"
        + (f"; {foreign} other file(s) left out and recomputed" if foreign else "")
        + ")."
    )


# ------------------------------------------------ the record each kernel file carries
def kernel_metadata(
    ident: StoreIdentity,
    record: StepRecord,
    store_id: str | None = None,
    selection: Mapping[str, Any] | None = None,
    imports: Sequence[Mapping[str, Any]] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The metadata of a kernel file: its step, the store's identity, its own manifest record,
    the manifest's ``store_id`` (from which a lost or damaged manifest is rebuilt as the same
    store: :func:`store_id_of_kernel_files`) and the checkpoint ``selection`` of the run that
    wrote it (JSON: directory, step regex, steps, every; from which the run that rebuilds a lost
    manifest gets the step regex it recorded: :mod:`conetool.pipeline.remembered`), and the
    ``imports`` record of that run (JSON: where it imported a "pkg.mod:factory" spec's modules
    from; from which ``switch`` on a store whose manifest is lost finds them again), and the
    resolved ``spec`` the kernels were computed with (JSON, as the manifest records it; from
    which ``switch`` on such a store tells a spec differing in ``[probe]`` alone from another)."""
    meta = {
        "step": str(record.step),
        "kind": ident.kind,
        "spec_hash": ident.spec_hash,
        "probe_hash": ident.probe_hash,
        "dtype": ident.dtype,
        "record": json.dumps(asdict(record)),
    }
    if store_id is not None:
        meta["store_id"] = store_id
    if selection is not None:
        meta["selection"] = json.dumps(dict(selection))
    if imports is not None:
        meta["imports"] = json.dumps([dict(record) for record in imports])
    if spec is not None:
        meta["spec"] = json.dumps(dict(spec), sort_keys=True)
    return meta


def store_id_of_kernel_files(metadata: Iterable[Mapping[str, str] | None]) -> str | None:
    """The ``store_id`` the kernel files carry, given the ``metadata`` of each as
    :func:`metadata_made_with` reads it (None: damaged, or made with another identity), when they
    carry one and all the same (files from before conetool wrote it carry none); else None. A
    manifest removed by hand (or damaged) and rebuilt from these files keeps it, so that a command
    reading the store meanwhile, or a ``switch`` sweep, does not take the rebuilt store for
    another."""
    found: set[str] = set()
    for meta in metadata:
        if meta is not None and meta.get("store_id"):  # none: from before conetool wrote it
            found.add(meta["store_id"])
    return found.pop() if len(found) == 1 else None


def kernel_file_problem(
    path: Path, step: int, ident: StoreIdentity, record: StepRecord, size: Any
) -> str | None:
    """Why the kernel file ``path`` of ``step`` does not match the store's identity ``ident``,
    its manifest ``record`` and the probe ``size``, or None when it does (header only:
    metadata, embedded record, tensor shape; no data read)."""
    header = kernel_header(path, "kernel file")
    if isinstance(header, str):
        return header
    meta, shape, _ = header
    expected = {
        "step": str(step),
        "kind": ident.kind,
        "spec_hash": ident.spec_hash,
        "probe_hash": ident.probe_hash,
        "dtype": ident.dtype,
    }
    wrong = [f"{k} {meta.get(k)!r} (store: {v!r})" for k, v in expected.items() if meta.get(k) != v]
    if tensor := tensor_dtype_problem(header, ident.dtype):
        wrong.append(tensor)
    try:
        embedded = json.loads(meta.get("record", "null"))
    except json.JSONDecodeError:
        embedded = None
    if not same_kernel_record(embedded, asdict(record)):
        wrong.append("its embedded record differs from the manifest's")
    if isinstance(size, int) and (len(shape) < 2 or shape[0] != size):
        wrong.append(f"shape {shape} (probe size {size})")
    if wrong:
        return f"kernel file {path} does not match the store: {'; '.join(wrong)}"
    return None


def same_kernel_record(embedded: Any, recorded: Mapping[str, Any] | None) -> bool:
    """Whether a kernel file's embedded record and a manifest record describe the same kernel:
    equal but perhaps for ``mtime_ns``, the source's modification time when it was last read,
    which the manifest refreshes when a touched checkpoint's content is found unchanged, and
    ``source``, the files, which it refreshes when other files now give the step (a run moved
    with its store: :meth:`conetool.store.Store.refresh_mtimes`; the kernel file keeps the
    time and files it was computed from), a field missing from either counting as its
    default."""
    if not isinstance(embedded, dict) or recorded is None:
        return False
    return _compared(embedded) == _compared(recorded)


def _compared(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` as :func:`same_kernel_record` compares it: without ``mtime_ns`` and
    ``source``, and with the fields an older conetool did not write (``engine``, ``device``) at
    their defaults, so that a kernel file written before them matches its record read back with
    them."""
    full = {**_OPTIONAL, **record}
    del full["mtime_ns"]
    full.pop("source", None)
    return full


class KernelHeader(NamedTuple):
    """A kernel file's header: its metadata, and the shape and dtype (``"float32"``, ...) of
    its tensor ``kernel``."""

    meta: dict[str, str]
    shape: tuple[int, ...]
    dtype: str


def kernel_header(path: Path, label: str) -> KernelHeader | str:
    """The metadata and the shape and dtype of the tensor ``kernel`` of the safetensors file
    ``path`` (header only, no data read), or why they cannot be had, naming the file as
    ``label``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if "kernel" not in handle.keys():
                return f"{label} {path} holds no tensor 'kernel'"
            tensor = handle.get_slice("kernel")
            code = str(tensor.get_dtype())
            dtype = SAFETENSORS_DTYPES.get(code)  # "float32", as the metadata says it
            name = code if dtype is None else str(dtype).removeprefix("torch.")
            return KernelHeader(meta, tuple(tensor.get_shape()), name)
    except (OSError, SafetensorError) as exc:
        return f"{label} {path} cannot be read ({exc})"


def tensor_dtype_problem(header: KernelHeader, wanted: str) -> str | None:
    """``"a float64 tensor (...)"`` when the file's tensor is not of the dtype ``wanted`` while
    its metadata says it is (a file written or changed outside conetool: ``kernels`` reads
    headers only, so this is how a rerun finds it); None otherwise (a metadata ``dtype`` of its
    own is named by the metadata comparison)."""
    if header.meta.get("dtype") == wanted and header.dtype != wanted:
        return f"a {header.dtype} tensor (its metadata and the store: {wanted})"
    return None


def load_finite_kernel(path: Path, label: str, unreadable: str, non_finite: str) -> torch.Tensor:
    """The tensor ``kernel`` of the safetensors file ``path``, checked finite; a
    :class:`StoreError` naming the file as ``label`` and ending with the fix ``unreadable`` or
    ``non_finite`` otherwise."""
    return read_finite_kernel(path, label, unreadable, non_finite)[0]


def read_finite_kernel(
    path: Path, label: str, unreadable: str, non_finite: str
) -> tuple[torch.Tensor, dict[str, str]]:
    """:func:`load_finite_kernel`, and the file's metadata (read in the same open)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            kernel = handle.get_tensor("kernel")
    except (OSError, SafetensorError, KeyError) as exc:
        raise StoreError(f"{label} {path} cannot be read ({exc}). {unreadable}") from exc
    if not torch.isfinite(kernel).all():
        raise StoreError(f"{label} {path} holds non-finite values. {non_finite}")
    return kernel, meta


def made_with(meta: Mapping[str, str], ident: StoreIdentity) -> bool:
    """Whether a kernel file's metadata ``meta`` says it was made with the identity ``ident``
    (a file from before kernel files recorded their dtype counts as of ``ident``'s)."""
    return (
        meta.get("spec_hash"),
        meta.get("probe_hash"),
        meta.get("kind"),
        meta.get("dtype", ident.dtype),
    ) == (ident.spec_hash, ident.probe_hash, ident.kind, ident.dtype)


def file_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of the safetensors file ``path`` (header only), or None when it cannot be
    read."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (OSError, SafetensorError):
        return None


def metadata_made_with(path: Path, ident: StoreIdentity) -> dict[str, str] | None:
    """The metadata of the kernel file ``path`` when it is readable and made with ``ident``
    (:func:`made_with`); else None (damaged: load_kernel names it, kernels recomputes it)."""
    meta = file_metadata(path)
    return meta if meta is not None and made_with(meta, ident) else None


def embedded_record(meta: Mapping[str, str] | None) -> tuple[str, dict[str, Any]] | None:
    """The step (as the manifest keys it) and the record a kernel file carries, given its
    metadata as :func:`metadata_made_with` reads it, when the file is readable, made with the
    store's identity and carries both; else None."""
    if meta is None or "record" not in meta or "step" not in meta:
        return None
    try:
        embedded = json.loads(meta["record"])
    except json.JSONDecodeError:
        return None
    return meta["step"], embedded
