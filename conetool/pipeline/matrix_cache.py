"""The S matrix of a store's kernels, computed once and reused while the kernels are unchanged.

Shared by ``conetool distance`` and ``conetool embed``. :func:`kernel_matrix` returns the
``(K, K)`` matrix of kernel distances over every stored step (block by block, see
:func:`conetool.geometry.distance_matrix`) and saves it in the command's own result folder,
``STORE/distance/matrix.npz`` or ``STORE/embed/matrix.npz``, with arrays ``steps`` (K,), ``S``
(K, K), ``key`` (the cache key, a string) and ``excluded`` (the steps left out with
``skip_bad``) and ``files`` (JSON: per stored step, the kernel file's size, modification time
and the SHA-256 of the kernel the matrix was computed from). Either command reuses either file
when its key equals the store's (:func:`store_key`: a SHA-256 over the store's identity and, per
stored step, its record (source fingerprint, kernel file, ‖H‖_F), the kernel file's size and the
digest of its kernel) and every kernel file still holds that kernel: a file of the same size and
modification time is taken to (no read, as before); any other file (a copied store: ``cp -r``,
``rsync`` without ``-t``) is read and its kernel's digest compared, so that a copy reuses the
matrix (and records the new times) while a file rewritten with other contents never does.
Recomputing a kernel or adding a step changes the key. A command writes only its own file (the
other's matrix, when reused, is copied into it): ``distance/matrix.npz`` is always the matrix of
``distance/summary.json``, even when ``embed`` ran later on more kernels (a store still being
written).

Before any kernel is read in full, every kernel file's safetensors header is checked (cheap):
its metadata ``kind``, ``probe_hash``, ``spec_hash``, ``dtype`` and ``step`` must match the
manifest, and its shape must match the other kernels'. A mismatch is refused (a store never mixes
kernels). A file that cannot be read, or whose kernel is non-finite or zero, is an error naming
it; with ``skip_bad`` it is left out instead, with a warning, which a command reusing the
saved matrix (whose ``excluded`` and ``excluded_reasons`` keep the steps and why) says again.

The small CSV / JSON writers at the end are shared by ``distance`` and ``embed``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import paths
from ..errors import StoreError, StoreReplacedError
from ..geometry import ZERO_KERNEL, KernelError, distance_matrix
from ..io import atomic_write
from ..ntk import is_auto
from ..progress import CountBar, NullProgress, Progress
from ..store import StepRecord, Store
from ..store_manifest import kernel_header
from ..units import parse_memory
from .saved_results import remove_old_summary

__all__ = [
    "KernelMatrix",
    "kernel_digest",
    "kernel_matrix",
    "kernels_key",
    "require_kernels",
    "store_key",
    "summary_matrix_key",
]


#: A kernel file as the saved matrix knows it: ``(size, mtime_ns, digest)``, the digest being
#: :func:`kernel_digest` of the kernel the matrix was computed from (None: the step was left out
#: with ``skip_bad``); None for a file that did not exist.
FileState = tuple[int, int, str | None] | None


@dataclass(frozen=True, eq=False)
class KernelMatrix:
    """The S matrix of a store.

    Attributes:
        steps: the ``K`` steps in the matrix, ascending (stored steps minus ``excluded``).
        S: float64 ``(K, K)``, ``S[i, j] = S(θ(steps[i]), θ(steps[j]))``.
        excluded: step -> why its kernel was left out (only with ``skip_bad``).
        key: the store's cache key the matrix belongs to (:func:`store_key`).
        reused: ``True`` when read back from a saved matrix instead of computed.
        saved: ``True`` when written to the command's own matrix file by this call.
        files: stored step -> its kernel file as the matrix was computed from it
            (:data:`FileState`), saved with it.
    """

    steps: list[int]
    S: np.ndarray
    excluded: dict[int, str] = field(default_factory=dict)
    key: str = ""
    reused: bool = False
    saved: bool = False
    files: dict[int, FileState] = field(default_factory=dict)


def kernels_key(store: Store) -> str:
    """SHA-256 (hex) over the store's identity and, per stored step, the source checkpoint's
    fingerprint and the kernel's norm: which kernels the store holds, whatever the files' times
    (a copied store keeps it; a kernel recomputed from a changed checkpoint changes it). Recorded
    in the distance and embed summaries, so that the report can tell results of other kernels."""
    entries = [[step, r.fingerprint, r.norm] for step, r in store.records().items()]
    payload = {"identity": asdict(store.identity), "steps": entries}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def kernel_digest(kernel: torch.Tensor) -> str:
    """SHA-256 (hex) of a kernel's dtype, shape and values (what S is computed from)."""
    array = np.ascontiguousarray(kernel.detach().cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype.str} {array.shape}".encode())
    digest.update(array.data)  # no copy: the array is C-contiguous
    return digest.hexdigest()


def store_key(
    store: Store,
    files: Mapping[int, FileState],
    records: Mapping[int, StepRecord] | None = None,
) -> str:
    """SHA-256 (hex) over the store's identity and, per stored step (of ``records``, default
    the store's now), its record and its kernel file's size and kernel digest from ``files``
    (step -> :data:`FileState`; not the file's modification time, which a copy changes)."""
    records = store.records() if records is None else records
    entries = []
    for step, record in records.items():
        state = files.get(step)
        held = None if state is None else [state[0], state[2]]
        entries.append([step, record.fingerprint, record.norm, record.kernel, held])
    payload = {"identity": asdict(store.identity), "steps": entries}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of ``path``, None when it cannot be had (no file)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _checkpoints(store: Store) -> str:
    return str(store.manifest.get("checkpoints") or "CKPTS")


_KERNEL_COUNTS = {1: "one kernel", 2: "two kernels"}


def require_kernels(
    store: Store,
    steps: list[int],
    excluded: dict[int, str] | None = None,
    *,
    at_least: int = 2,
    needed_by: str = "the kernel distance",
) -> None:
    """Refuse a store with fewer than ``at_least`` usable kernels (a distance needs two, the
    spectrum one); ``needed_by`` names what needs them in the message. A distance also
    refuses 1 x 1 kernels (a probe set of one example, kind trace or sum: S is 0 between any
    two of them), which a store made before ``kernels`` refused them may hold."""
    if at_least >= 2:
        _require_two_examples(store, needed_by)
    if len(steps) >= at_least:
        return
    fix = f"Compute more: conetool kernels {_checkpoints(store)} --store {store.root}"
    left_out = ""
    if excluded:
        left_out = (
            f" ({len(excluded)} more left out by --skip-bad: steps "
            f"{', '.join(str(s) for s in sorted(excluded))})"
        )
    if not steps:
        held = "has no kernels" if not excluded else "has no usable kernels"
    else:
        held = f"has 1 (step {steps[0]})"
    raise StoreError(
        f"{needed_by} needs at least {_KERNEL_COUNTS.get(at_least, f'{at_least} kernels')}; "
        f"store {store.root} {held}{left_out}. "
        f"{fix}"
    )


def _require_two_examples(store: Store, needed_by: str) -> None:
    probe = store.manifest.get("probe")
    size = probe.get("size") if isinstance(probe, dict) else None
    kind = store.identity.kind
    if size != 1 or kind == "full":
        return
    raise StoreError(
        f"{needed_by} cannot be read from store {store.root}: its kernels are 1 x 1 (a probe "
        f"set of one example, kind {kind}), and the distance S of two positive numbers is 0 "
        "whatever the training did. Compute kernels on a larger probe set: conetool kernels "
        f"{_checkpoints(store)} --store {store.root} --probe-size 100 --overwrite (or a new "
        "--store to keep these), or --kind full."
    )


# --------------------------------------------------------------------------- header checks


def _check_headers(store: Store) -> dict[int, str]:
    """Read every kernel file's header; return the unreadable ones (step -> reason).

    Raises:
        StoreError: a kernel file's metadata or shape does not fit the store (never mixed).
    """
    ident = store.identity
    expected = {
        "kind": ident.kind,
        "probe_hash": ident.probe_hash,
        "spec_hash": ident.spec_hash,
        "dtype": ident.dtype,
    }
    bad: dict[int, str] = {}
    shapes: dict[int, tuple[int, ...]] = {}
    for step, record in store.records().items():
        path = store.root / record.kernel
        header = kernel_header(path, "kernel file")
        if isinstance(header, str):
            bad[step] = header
            continue
        meta, shapes[step], _ = header
        wrong = [
            f"{name} {meta.get(name)!r} (store: {want!r})"
            for name, want in {**expected, "step": str(step)}.items()
            if meta.get(name) != want
        ]
        if wrong:
            raise StoreError(
                f"kernel file {path} does not belong to store {store.root}: its metadata has "
                f"{'; '.join(wrong)}, while {paths.MANIFEST_NAME} says the store holds "
                f"{ident.kind} kernels of probe set {ident.probe_hash} (spec {ident.spec_hash}, "
                f"{ident.dtype}). conetool never mixes kernels: delete that file and rerun "
                f"conetool kernels {_checkpoints(store)} --store {store.root} to recompute the "
                "step, or use a separate --store for the other kernels."
            )
    if shapes:
        common, _ = Counter(shapes.values()).most_common(1)[0]
        odd = {step: shape for step, shape in shapes.items() if shape != common}
        if odd:
            listed = "; ".join(
                f"{store.root / store.records()[s].kernel} has shape {shape}"
                for s, shape in sorted(odd.items())[:5]
            )
            raise StoreError(
                f"kernels of different shapes in store {store.root}: {listed}, the others "
                f"{common}. They were computed on another probe set or kernel kind, and "
                "conetool never mixes kernels: delete the odd files and rerun conetool kernels "
                f"{_checkpoints(store)} --store {store.root}."
            )
    return bad


# --------------------------------------------------------------------------- the cache file


#: command -> its own matrix file; the first is the one each command tries first after its own.
CACHES: dict[str, Callable[[Path], Path]] = {
    "distance": paths.matrix_npz,
    "embed": paths.embed_matrix_npz,
}


#: command -> its ``summary.json``, which records the matrix its outputs were computed from
#: (``matrix_key``) and lists the matrix file among them.
SUMMARIES: dict[str, Callable[[Path], Path]] = {
    "distance": paths.distance_summary,
    "embed": paths.embed_summary,
}


def _save(store: Store, matrix: KernelMatrix, command: str) -> None:
    excluded = sorted(matrix.excluded)
    arrays: dict[str, Any] = {
        "steps": np.asarray(matrix.steps, dtype=np.int64),
        "S": np.asarray(matrix.S, dtype=np.float64),
        "key": np.asarray(matrix.key),
        "excluded": np.asarray(excluded, dtype=np.int64),
        "excluded_reasons": np.asarray([matrix.excluded[s] for s in excluded], dtype=np.str_),
        "files": np.asarray(json.dumps({str(k): v for k, v in sorted(matrix.files.items())})),
    }

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # into a buffer: savez would append ".npz" to a path
    data = buffer.getvalue()
    target = CACHES[command](store.root)
    with store.writing_results(command):  # never into a store replaced meanwhile
        # the command's summary of another matrix goes first (it writes it again last): a run
        # stopped after this write leaves no summary beside a matrix it does not describe
        summary = SUMMARIES[command](store.root)
        if summary_matrix_key(summary) != matrix.key:
            remove_old_summary(summary)
        atomic_write(target, lambda tmp: tmp.write_bytes(data), needed=len(data))


def summary_matrix_key(path: Path) -> str | None:
    """The ``matrix_key`` the summary at ``path`` records; None when there is none, or the file
    cannot be read as a JSON object."""
    try:
        key = json.loads(path.read_text(encoding="utf-8")).get("matrix_key")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def _load_cached(path: Path, skip_bad: bool) -> KernelMatrix | None:
    """The matrix saved at ``path``, whole (and needing no ``skip_bad`` it lacks); whether it is
    the store's is for :func:`_current` to tell."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            key = str(data["key"])
            steps = [int(s) for s in data["steps"]]
            s = np.array(data["S"], dtype=np.float64)
            excluded_steps = [int(x) for x in data["excluded"]]
            reasons = [str(x) for x in data["excluded_reasons"]]
            files = _file_states(json.loads(str(data["files"])))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # damaged (truncated), foreign or older: recompute (and rewrite)
    if (
        files is None
        or s.shape != (len(steps), len(steps))
        or not np.all(np.isfinite(s))
        or len(reasons) != len(excluded_steps)
    ):
        return None
    if excluded_steps and not skip_bad:
        return None  # recompute, so that the bad kernel raises its error
    excluded = dict(zip(excluded_steps, reasons, strict=True))
    return KernelMatrix(steps, s, excluded, key, reused=True, files=files)


def _file_states(raw: Any) -> dict[int, FileState] | None:
    """The saved ``files`` (JSON) as step -> :data:`FileState`, None when it is not that."""
    if not isinstance(raw, dict):
        return None
    files: dict[int, FileState] = {}
    for step, state in raw.items():
        if state is None:
            files[int(step)] = None
            continue
        if not isinstance(state, list) or len(state) != 3:
            return None
        size, mtime, digest = state
        if not (isinstance(size, int) and isinstance(mtime, int)):
            return None
        if digest is not None and not isinstance(digest, str):
            return None
        files[int(step)] = (size, mtime, digest)
    return files


def _current(store: Store, cached: KernelMatrix, progress: Progress) -> dict[int, FileState] | None:
    """The kernel files' states now when the store still holds the kernels ``cached`` was
    computed from (its key is :func:`store_key` of the records now, and each file holds the
    kernel of the saved digest); else None.

    A file of the saved size and modification time is taken to hold it unread (the check of a
    store in place costs a ``stat`` per file); any other (a copy) is read and its kernel's digest
    compared. A file left out (no digest) or missing then must be as it was."""
    saved = cached.files
    records = store.records()
    if set(saved) != set(records) or store_key(store, saved, records) != cached.key:
        return None  # another step set or record (a recomputed kernel), or another size
    now: dict[int, FileState] = {}
    to_read: list[int] = []
    for step, record in records.items():
        state, stamp = saved[step], _stamp(store.root / record.kernel)
        if state is None or stamp is None:
            if (state is None) != (stamp is None):  # a file that appeared or went
                return None
            now[step] = None
        elif stamp == state[:2]:
            now[step] = state
        elif state[2] is None or stamp[0] != state[0]:
            return None  # a left-out file changed (or one of another size): recompute
        else:
            to_read.append(step)
            now[step] = (*stamp, state[2])
    report = CountBar(progress, "checking copied kernels")
    try:
        for done, step in enumerate(to_read, 1):
            try:
                kernel = store.load_kernel(step)
            except StoreReplacedError:
                raise
            except StoreError:
                return None  # recomputed: the bad file gets its message there
            state = now[step]
            if state is None or kernel_digest(kernel) != state[2]:
                return None
            report(done, len(to_read))
    finally:
        report.close()
    return now


# --------------------------------------------------------------------------- computing


def kernel_matrix(
    store: Store,
    *,
    command: str = "distance",
    skip_bad: bool = False,
    max_memory: int | str | None = None,
    reuse: bool = True,
    progress: Progress | None = None,
) -> KernelMatrix:
    """The S matrix over every stored step, reused from a saved matrix when current.

    Args:
        store: an open store.
        command: ``"distance"`` or ``"embed"``, the command it is for: its own matrix file
            (``distance/matrix.npz``, ``embed/matrix.npz``) is read first, then the other's, and
            only its own is written (with the matrix it returns, when that file held another).
        skip_bad: leave out (with a warning through ``progress.log``) kernel files that cannot be
            read or hold a non-finite or zero kernel, instead of raising. A saved matrix reused
            says again the warning of each step it left out.
        max_memory: budget for the two float64 blocks of kernels (``"2GiB"`` or bytes);
            default 1 GiB (:data:`conetool.geometry.DEFAULT_MAX_MEMORY`).
        reuse: read the saved matrix back when its key matches the store (default).
        progress: a bar over kernel loads ("S matrix").

    Returns:
        A :class:`KernelMatrix` (``(K, K)`` S, its steps, the left-out steps); the matrix is
        saved to the command's own file whenever that file did not hold it.

    Raises:
        StoreError: fewer than two usable kernels; a kernel file that does not belong to the
            store; without ``skip_bad``, a kernel file that cannot be used (named).
    """
    progress = progress or NullProgress()
    # "auto" (as kernels --max-memory takes it): the matrix's default, 1 GiB
    budget = None if max_memory is None or is_auto(max_memory) else parse_memory(max_memory)
    records = store.records()  # the steps of the matrix, and their files' key
    stored = list(records)
    require_kernels(store, stored)
    if reuse:
        own = CACHES[command]
        for cache in (own, *(c for c in CACHES.values() if c is not own)):
            cached = _load_cached(cache(store.root), skip_bad)
            now = None if cached is None else _current(store, cached, progress)
            if cached is None or now is None:
                continue
            # the steps left out as the run that made it said (their files are as they were)
            for step, reason in sorted(cached.excluded.items()):
                _say_left_out(progress, step, reason)
            if cache is own and now == cached.files:
                return cached
            # the other command's file, or this one's with the times of a copy: save it anew
            cached = dataclasses.replace(cached, files=now, saved=True)
            _save(store, cached, command)
            return cached

    # each file's size and time before any is read: a file rewritten meanwhile is read again
    # by the next run (its time differs), which then finds the digest of what was used here
    stamps = {step: _stamp(store.root / r.kernel) for step, r in records.items()}
    digests: dict[int, str] = {}
    excluded: dict[int, str] = {}
    for step, reason in _check_headers(store).items():
        _exclude(store, excluded, step, reason, skip_bad, progress)
    while True:
        steps = [s for s in stored if s not in excluded]
        require_kernels(store, steps, excluded)
        try:
            s = _compute(store, steps, budget, progress, digests)
            break
        except _BadKernel as bad:
            _exclude(store, excluded, bad.step, bad.reason, skip_bad, progress, bad.zero)
    files: dict[int, FileState] = {
        step: None if stamp is None else (*stamp, digests.get(step) if step in steps else None)
        for step, stamp in stamps.items()
    }
    key = store_key(store, files, records)
    matrix = KernelMatrix(steps, s, excluded, key, reused=False, saved=True, files=files)
    _save(store, matrix, command)
    return matrix


class _BadKernel(Exception):
    def __init__(self, step: int, reason: str, zero: bool = False) -> None:
        super().__init__(reason)
        self.step, self.reason, self.zero = step, reason, zero


def _exclude(
    store: Store,
    excluded: dict[int, str],
    step: int,
    reason: str,
    skip_bad: bool,
    progress: Progress,
    zero: bool = False,
) -> None:
    if not skip_bad and zero:  # recomputing gives the same zeros: leaving it out is the fix
        raise StoreError(
            f"step {step}: {reason}. {ZERO_KERNEL}: pass --skip-bad to leave the step out."
        )
    if not skip_bad:
        record = store.record(step)
        missing = record is not None and not (store.root / record.kernel).exists()
        fix = "Rerun" if missing else "Delete that file and rerun"
        raise StoreError(
            f"step {step}: {reason}. {fix} conetool kernels "
            f"{_checkpoints(store)} --store {store.root} to recompute it, or pass --skip-bad to "
            "leave the step out."
        )
    excluded[step] = reason
    _say_left_out(progress, step, reason)


def _say_left_out(progress: Progress, step: int, reason: str) -> None:
    """The warning for a step whose kernel ``skip_bad`` left out, said when the matrix is
    computed and again by every command that reuses it (a rerun of ``distance`` reads its results
    from the saved matrix, without that step)."""
    progress.log(f"warning: step {step} left out (--skip-bad): {reason}")


def _compute(
    store: Store,
    steps: list[int],
    budget: int | None,
    progress: Progress,
    digests: dict[int, str],
) -> np.ndarray:
    """distance_matrix over ``steps``; a kernel that cannot be used raises :class:`_BadKernel`.
    ``digests`` gets the :func:`kernel_digest` of each kernel as first read."""
    records = store.records()
    report = CountBar(progress, "S matrix")
    digests.clear()  # of this attempt's reads only

    def load(index: int) -> torch.Tensor:
        step = steps[index]
        try:
            kernel = store.load_kernel(step)
        except StoreReplacedError:
            raise  # not this kernel's fault, and no --skip-bad leaves it out
        except StoreError as exc:
            raise _BadKernel(step, _strip_fix(str(exc))) from exc
        if step not in digests:
            digests[step] = kernel_digest(kernel)
        return kernel

    try:
        return distance_matrix(load, len(steps), max_memory=budget, progress=report)
    except KernelError as exc:
        if exc.index is None:
            raise
        step = steps[exc.index]
        path = store.root / records[step].kernel
        what = _strip_fix(str(exc)).replace(f"kernel {exc.index} ", "its kernel ", 1)
        raise _BadKernel(step, f"kernel file {path}: {what}", exc.zero) from exc
    finally:
        report.close()


def _strip_fix(message: str) -> str:
    """The first sentence of an error message (the caller adds its own fix)."""
    head, _, _ = message.partition(". ")
    return head.rstrip(".")


# --------------------------------------------------------------------------- output writers
# (shared by distance and embed)


def csv_number(x: float) -> str:
    """Full precision (``repr``), empty for an undefined value."""
    return repr(float(x)) if math.isfinite(x) else ""
