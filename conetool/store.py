"""The store: a directory of kernels with a manifest, never half-written, never mixed.

Layout (names from :mod:`conetool.paths`)::

    STORE/manifest.json                 provenance + per-step index (see :meth:`Store.record`)
    STORE/probe.safetensors             the probe set ("inputs", "labels", "indices")
    STORE/kernels/step_002000.safetensors   tensor "kernel"; metadata step, kind, hashes, record,
                                        store id, the writing run's checkpoint selection and
                                        import folders
    STORE/eval.safetensors              with --eval-size: the evaluation set (like the probe set)
    STORE/eval_kernels/step_002000.safetensors   K(eval, probe); metadata step, kind, dtype,
                                        eval, probe and spec hashes, source fingerprint
    STORE/layer_kernels/step_002000.safetensors  with --per-layer: one kernel per parameter
                                        group; metadata step, kind, dtype, probe and spec
                                        hashes, source fingerprint, groups, groups_hash
                                        and the --groups patterns

Guarantees:

* every file is written to a temporary name and renamed into place, kernel first, manifest after;
  a kernel file carries its own manifest record in its metadata, so a run killed between the two
  writes loses nothing: the next open adopts the kernel (and the next :meth:`Store.open_for_writing`
  removes the temporary files a killed writer left);
* ``manifest.json`` is not rewritten after every kernel: a whole rewrite costs time in proportion
  to the steps it holds, so one per kernel makes a run of N fast kernels O(N^2) (at N = 2,000 tiny
  kernels it was most of the run). :meth:`Store.write_kernel` rewrites it only once
  :data:`MANIFEST_INTERVAL` seconds, and :data:`MANIFEST_COST_RATIO` times its last write's
  duration, have passed since that write; :meth:`Store.flush` and :meth:`Store.close` write what
  is left. Kernels that take a second or more still get one write each. The kernel files not yet in
  ``manifest.json`` carry their records (the point above), so a kill loses nothing and
  :meth:`Store.open` (in memory) and :meth:`Store.open_for_writing` (on disk) pick them up;
* a store is identified by (spec hash, probe hash, kernel kind, dtype). Opening it for another
  identity is refused; ``overwrite=True`` deletes what conetool wrote there and starts afresh;
* a step is recomputed only when missing or when its source checkpoint's fingerprint changed;
* several processes may share a store (torchrun ranks, :mod:`conetool.distributed`): one owns
  ``manifest.json`` (:meth:`Store.open_for_writing`), the others :meth:`Store.join` it and write
  kernel files only, carrying the owner's store id, selection and imports (:meth:`Store.carry`);
  the owner merges their records from the files (:meth:`Store.adopt_kernel_files`);
* the owner holds an exclusive OS lock (``fcntl.flock`` on ``STORE/.lock``) from
  :meth:`Store.open_for_writing` to :meth:`Store.close`; the OS releases it when the process ends,
  however it ends. A second writer is refused at once with a message naming the holder (it never
  waits: a waiting ``--overwrite`` would silently replace the first run's kernels right after);
* a damaged or deleted ``manifest.json`` is rebuilt by :meth:`Store.open_for_writing` from the
  kernel files, each of which carries its own record (:attr:`Store.warnings` says so), with the
  records of the evaluation set and the parameter groups recovered from ``eval.safetensors``
  and the layer files (the ``kernels`` run that rebuilds it reads them, and the step regex the
  kernel files carry, before it opens the store: :mod:`conetool.store_kernel_files`);
* :meth:`Store.open` never writes: a store on a read-only file system can be read;
* a store replaced while a command reads it (``kernels --overwrite`` clears it and starts a new
  one, with a new ``store_id``) stops that command with a :class:`StoreReplacedError`
  (:meth:`Store.reading`, :meth:`Store.load_kernel`), and its results are never written into
  the new store: :meth:`Store.writing_results` holds ``STORE/.results.lock`` (shared) while it
  checks the ``store_id`` and the command writes, and the clearing holds it exclusive;
* one thread may write kernels while another reads records and checks files (``conetool kernels``
  writes step k in the background while it checks step k + 1): the in-memory manifest is read and
  changed under one lock, and manifest writes are serialised by it.

The manifest (format, values, reading, writing, rebuilding) and the record each kernel file
carries are in :mod:`conetool.store_manifest`; the kernel files read by their headers (before
the store is opened too) in :mod:`conetool.store_kernel_files`; the eval and layer kernel files
in :mod:`conetool.store_companions`; the writer lock in :mod:`conetool.store_lock`; clearing a
store (``overwrite``) and removing a killed writer's temporary files in
:mod:`conetool.store_clearing`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch

from . import paths
from . import store_companions as companions
from .choices import path_argument, step_or_last
from .errors import ConetoolError, StoreError, StoreReplacedError
from .io import atomic_save_safetensors, make_dir
from .store_clearing import clear, remove_stale_temporaries
from .store_kernel_files import (
    damaged,
    is_kernel_of,
    kernel_file_headers,
    kernel_files,
    kernel_files_made_with,
    kernel_files_metadata,
    rebuilds_manifest,
)
from .store_lock import StoreLock, results_lock, writer_note
from .store_manifest import (
    FORMAT,
    FORMAT_VERSION,
    LAYOUTS,
    StepRecord,
    StoreIdentity,
    check_steps,
    embedded_record,
    kernel_file_problem,
    kernel_metadata,
    manifest_identity,
    mixed_message,
    new_manifest,
    new_store_id,
    opened_as,
    read_finite_kernel,
    read_manifest,
    rebuilt_note,
    same_kernel_record,
    same_store,
    store_id_of_kernel_files,
    write_manifest,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LAYOUTS",
    "MANIFEST_COST_RATIO",
    "MANIFEST_INTERVAL",
    "StepRecord",
    "Store",
    "StoreIdentity",
    "clear",
    "kernel_file_headers",
    "kernel_files_metadata",
    "kernel_norm",
    "nearest_steps",
    "read_manifest",
    "rebuilds_manifest",
    "store_on_disk",
]


#: :meth:`Store.write_kernel` rewrites ``manifest.json`` only when this many seconds have passed
#: since its last write ...
MANIFEST_INTERVAL = 1.0
#: ... and this many times as long as that write took: however many steps the manifest holds, its
#: rewrites take at most about a tenth of the run.
MANIFEST_COST_RATIO = 10.0
#: The clock of those intervals (seconds; tests replace it).
_now = time.monotonic


#: The manifest entries each kernel file carries in its metadata (:meth:`Store.carried`).
_CARRIED = ("store_id", "selection", "imports")


class Store:
    """A store directory. Create or reopen with :meth:`open_for_writing`; read with :meth:`open`."""

    def __init__(self, root: Path, manifest: dict[str, Any], *, owner: bool = True) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._opened_as = opened_as(manifest)  # what replaced() compares the manifest on disk to
        self.owner = owner  # False: never writes manifest.json (another process owns it)
        # What opening did that the user should hear of, in the two channels of every command:
        # warnings, a possible loss to check (a manifest rebuilt, records not recovered, a
        # replaced store removed); notes, information only (records recovered from their files).
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self._lock: StoreLock | None = None
        # Guards self.manifest (and manifest.json's writes) between a writer thread and readers.
        self._manifest_guard = threading.RLock()
        self._unsaved = False  # steps recorded in self.manifest since manifest.json was written
        self._next_save = 0.0  # _now() from which write_kernel writes manifest.json again

    def flush(self) -> None:
        """Write ``manifest.json`` now if kernels were recorded since its last write
        (:meth:`write_kernel` spaces its writes out). The owner only; :meth:`close` calls it."""
        with self._manifest_guard:
            if self.owner and self._unsaved:
                self._write_manifest()

    def close(self) -> None:
        """Write what :meth:`write_kernel` left out of ``manifest.json`` (:meth:`flush`) and
        release the writer's lock (:meth:`open_for_writing`); the store can still be read."""
        try:
            self.flush()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: str | Path) -> Store:
        """Open an existing store for reading; a clear error when there is none (or when
        ``root`` is no path: ``None``, a number)."""
        root = path_argument(root, "--store", "the store directory")
        path = paths.manifest(root)
        if not path.is_file():
            writer = writer_note(root)
            if writer is not None:
                raise StoreError(
                    f"store {root} has no {paths.MANIFEST_NAME} yet: conetool kernels is "
                    f"writing it ({writer}) and has not written its manifest (it clears a "
                    "replaced store first). Wait a moment and open it again."
                )
            if kernel_files(root):
                raise StoreError(
                    f"store {root} has kernel files but no {paths.MANIFEST_NAME} (deleted?). "
                    f"Rebuild it: conetool kernels CKPTS --store {root} rebuilds the manifest "
                    "from the kernel files (each carries its own record) and recomputes only "
                    "what is missing."
                )
            where = "does not exist" if not root.exists() else f"has no {paths.MANIFEST_NAME}"
            raise StoreError(
                f"store {root} {where}. Compute kernels into it first: "
                f"conetool kernels CKPTS --store {root}"
            )
        try:
            manifest = read_manifest(path)
        except StoreError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):  # gone between the check and the read
                raise StoreReplacedError(
                    f"store {root}'s {paths.MANIFEST_NAME} was removed while it was being opened: "
                    "a conetool kernels --overwrite is clearing the store to start a new one "
                    "there. Open it again once that run has stored the kernels you want."
                ) from exc
            raise
        store = cls(root, manifest)
        if store.adopt_kernel_files(save=False):  # in memory only: reading never writes
            check_steps(path, store.manifest)  # an adopted kernel file's step too
        return store

    @classmethod
    def join(cls, root: str | Path) -> Store:
        """Open a store that another process owns (rank 0 of a torchrun job), to add kernels.

        The manifest is read as it is and never written: :meth:`write_kernel` writes the kernel
        file only (it carries its own record), and the owner adopts it.
        """
        root = Path(root)
        path = paths.manifest(root)
        if not path.is_file():
            raise StoreError(
                f"store {root} has no {paths.MANIFEST_NAME} although rank 0 created it. Every "
                "rank must see the same --store directory: put it on a file system that all "
                "nodes share."
            )
        return cls(root, read_manifest(path), owner=False)

    @classmethod
    def open_for_writing(
        cls,
        root: str | Path,
        identity: StoreIdentity,
        header: Mapping[str, Any],
        *,
        overwrite: bool = False,
    ) -> Store:
        """Create the store, or reopen one of the same identity; refuse any other identity.

        ``header`` is the provenance recorded in the manifest (checkpoint directory, resolved
        spec, probe description, versions). With ``overwrite`` an existing store of another
        identity is cleared first (only the files conetool writes are removed).
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"--store {root} is a file, not a directory. Choose a directory.")
        lock = StoreLock.acquire(root)
        try:
            store = cls._open_locked(root, identity, header, overwrite)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store._lock = lock
        if lock is not None:  # a store dropped without close() gives its lock back too
            weakref.finalize(store, lock.release)
        return store

    @classmethod
    def _open_locked(
        cls, root: Path, identity: StoreIdentity, header: Mapping[str, Any], overwrite: bool
    ) -> Store:
        path = paths.manifest(root)
        warnings: list[str] = []  # the rebuild (its last item completed below), what is lost
        cleared: str | None = None
        remove_stale_temporaries(root)
        if path.is_file():
            try:
                manifest: dict[str, Any] | None = read_manifest(path)
            except StoreError as exc:
                if overwrite:
                    manifest = None
                    cleared = clear(root)
                elif damaged(exc, root):
                    manifest = None  # damaged (not foreign, not newer): rebuilt below
                    warnings.append(
                        f"{path} was damaged ({exc.__cause__}); rebuilt it from the kernel files"
                    )
                else:
                    raise
            if manifest is not None:
                found = manifest_identity(manifest)
                if found != identity and not overwrite:
                    # the kernel files too: manifest.json may lag behind them (write_kernel)
                    held = max(len(manifest["steps"]), len(kernel_files(root)))
                    specs = (manifest.get("spec"), header.get("spec"))
                    raise StoreError(mixed_message(root, found, identity, held, specs))
                if found != identity:
                    cleared = clear(root)
                else:
                    manifest.update(header)  # written with the next kernel, not before
                    manifest.setdefault("store_id", new_store_id())  # a store made before it
                    store = cls(root, manifest)
                    if store.adopt_kernel_files(save=False):
                        store._write_manifest()  # only a change of the index is written now
                    store._ensure_kernels_dir()
                    return store
        elif overwrite:
            cleared = clear(root)
        elif kernel_files(root):
            warnings.append(f"{path} was missing; rebuilt it from the kernel files")
        manifest = new_manifest(identity, header)
        # rebuilt from the kernel files: the same store, under the id they carry (each header
        # read once, for the id and the records)
        rebuilt = bool(warnings)
        headers = kernel_files_made_with(root, identity) if rebuilt else {}
        kept = store_id_of_kernel_files(headers.values())
        if kept is not None:
            manifest["store_id"] = kept
        store = cls(root, manifest)
        if rebuilt:
            adopted = store._adopt(headers)
            warnings[-1] = rebuilt_note(
                root, warnings[-1], len(adopted), len(headers) - len(adopted)
            )
            recovered, lost = store._recover_companion_records(header)
            store.notes += recovered
            warnings += lost
        store.warnings = warnings + ([cleared] if cleared else [])
        store._ensure_kernels_dir()
        store._write_manifest()
        return store

    def _recover_companion_records(self, header: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """Put back in a rebuilt manifest (in memory) the records of the evaluation set
        (``eval``, from ``eval.safetensors``) and of the parameter groups (``layer_groups``,
        from the layer files): without them the next ``distance`` removed its per-layer outputs
        and ``spectrum`` lost its kernel-machine accuracy, although their files were all there.
        ``header``: the run's provenance (its spec gives the probe seed the eval record keeps).
        Returns ``(notes, warnings)``: what was recovered (information: each record is the
        one its files carry), and what could not be, with the command that records it again
        (a loss: until then its files are not kept complete)."""
        spec = header.get("spec")
        probe = spec.get("probe") if isinstance(spec, Mapping) else None
        seed = probe.get("seed") if isinstance(probe, Mapping) else None
        evaluated, eval_problem = companions.recovered_eval_record(self.root, seed)
        layers, layer_problem = companions.recovered_layer_record(self.root, self.identity)
        with self._manifest_guard:
            if evaluated is not None:
                self.manifest["eval"] = evaluated
            if layers is not None:
                self.manifest["layer_groups"] = layers
        notes, warnings = [], []
        kept = []
        if evaluated is not None:
            kept.append(f"the evaluation set of {evaluated['size']} examples (--eval-size)")
        if layers is not None:
            kept.append(f"the parameter groups {', '.join(layers['groups'])} (--per-layer)")
        if kept:
            notes.append(
                f"recovered {' and '.join(kept)} from their files; kernels runs keep them, "
                "this one included"
            )
        if eval_problem is not None:
            size = companions.eval_size_of_kernels(self.root, self.identity)
            warnings.append(
                f"no evaluation set was recovered: {eval_problem}. Rerun "
                f"{self.kernels_command()} --eval-size {size or 'M'} (the size it had), which "
                "draws it again and keeps the eval kernels made with it"
            )
        if layer_problem is not None:
            warnings.append(
                f"no parameter groups were recovered: {layer_problem}. Rerun "
                f"{self.kernels_command()} --per-layer, or --groups 'NAME=PATTERN,...' with the "
                "patterns that made them, which records them again and keeps the layer files "
                "made with the same groups; until then distance keeps its per-layer outputs "
                "as they are"
            )
        return notes, warnings

    def _ensure_kernels_dir(self) -> None:
        make_dir(self.root / paths.KERNELS_DIR)

    # ----------------------------------------------------------------- reading
    @property
    def identity(self) -> StoreIdentity:
        with self._manifest_guard:
            return manifest_identity(self.manifest)

    def records(self) -> dict[int, StepRecord]:
        """Every stored step's record, by step (sorted)."""
        with self._manifest_guard:
            items = sorted(self.manifest["steps"].items(), key=lambda kv: int(kv[0]))
            return {int(step): StepRecord(**record) for step, record in items}

    def steps(self) -> list[int]:
        """The stored steps, sorted."""
        with self._manifest_guard:
            return sorted(int(step) for step in self.manifest["steps"])

    def record(self, step: int) -> StepRecord | None:
        with self._manifest_guard:
            raw = self.manifest["steps"].get(str(step))
            return StepRecord(**raw) if raw else None

    def is_current(self, step: int, fingerprint: str) -> bool:
        """True when ``step`` is stored, its kernel file exists and its source is unchanged."""
        record = self.record(step)
        return (
            record is not None
            and record.fingerprint == fingerprint
            and (self.root / record.kernel).is_file()
        )

    def kernel_file_problem(self, step: int) -> str | None:
        """Why the kernel file of ``step`` does not match its manifest record, or None when it
        does (header only: metadata, embedded record, tensor shape; no data read)."""
        record = self.record(step)
        if record is None:
            return f"step {step} is not in {paths.MANIFEST_NAME}"
        with self._manifest_guard:
            size = (self.manifest.get("probe") or {}).get("size")
        return kernel_file_problem(self.root / record.kernel, step, self.identity, record, size)

    def load_kernel(self, step: int | str) -> torch.Tensor:
        """The stored kernel of ``step`` (shape per the manifest's layout); checked finite and of
        the store's dtype (a :class:`StoreError` naming the file otherwise). ``step``: an int,
        or ``"last"`` (the last stored step), as ``--ref`` takes them."""
        wanted = step_or_last(step)
        stored = [] if isinstance(wanted, int) else self.steps()  # read only when needed
        if wanted is None or (wanted == "last" and not stored):
            held = (
                f"it holds {len(stored)} step(s), {stored[0]} to {stored[-1]}"
                if stored
                else "it holds no kernel yet (conetool kernels computes them)"
            )
            raise StoreError(
                f"load_kernel(step={step!r}): pass a stored step of {self.root} as an int, e.g. "
                f"load_kernel({stored[-1] if stored else 0}), or 'last'; {held}."
            )
        step = stored[-1] if wanted == "last" else int(wanted)
        record = self.record(step)
        if record is None:
            raise StoreError(
                f"step {step} is not in store {self.root}; stored steps: "
                f"{nearest_steps(self.steps(), step)}."
            )
        try:
            kernel, meta = read_finite_kernel(
                self.root / record.kernel,
                "kernel file",
                unreadable=f"Recompute it: {self.kernels_command()} (it redoes missing or "
                "damaged steps), or pass --skip-bad.",
                non_finite=f"Delete it and rerun {self.kernels_command()}, or pass --skip-bad to "
                "leave the step out.",
            )
        except StoreError as exc:
            if self.replaced():  # the file went with the store it belonged to
                raise self.replaced_error() from exc
            raise
        if not is_kernel_of(meta, self.identity, record) and self.replaced():
            raise self.replaced_error()  # the new store's kernel, now at that path
        dtype = self.identity.dtype  # "float32" or "float64", as kernels --dtype wrote it
        if str(kernel.dtype) != f"torch.{dtype}":  # written or changed outside conetool
            found = str(kernel.dtype).removeprefix("torch.")
            raise StoreError(
                f"kernel file {self.root / record.kernel} holds a {found} tensor, not the "
                f"{dtype} of the store's kernels ({paths.MANIFEST_NAME}: dtype {dtype}). "
                f"Delete that file and rerun {self.kernels_command()} to recompute it, or pass "
                "--skip-bad to leave the step out."
            )
        return kernel

    def kernels_command(self) -> str:
        """The ``conetool kernels`` command that completes this store (recomputing what is
        missing or damaged), as error messages advise it: the recorded checkpoint directory, or
        ``CKPTS`` when none is recorded."""
        with self._manifest_guard:
            ckpts = self.manifest.get("checkpoints") or "CKPTS"
        return f"conetool kernels {ckpts} --store {self.root}"

    # ----------------------------------------------------------------- replaced meanwhile
    def replaced(self) -> bool:
        """Whether the store on disk is no longer the one this object opened: its manifest is
        gone, or it records another ``store_id`` (another identity, for a store made before
        conetool recorded one): ``kernels --overwrite`` cleared it and started a new store."""
        return store_on_disk(self.root, self._opened_as) != "same"

    def replaced_error(self, command: str | None = None) -> StoreReplacedError:
        """The error of ``command`` (``"distance"``: ``conetool distance``; None: a Python
        caller of this object) finding the store replaced; it names the rerun."""
        if command is None:
            who, rerun = "it was read", "Open it again (conetool.Store.open)"
        else:
            who = f"conetool {command} was reading it; conetool {command} stopped and wrote nothing"
            rerun = f"Rerun conetool {command} --store {self.root}"
        return StoreReplacedError(
            f"store {self.root} was replaced while {who}: a conetool kernels --overwrite cleared "
            f"it and started a new store there (or its {paths.MANIFEST_NAME} was removed). "
            f"{rerun} once that run has stored the kernels you want."
        )

    @contextmanager
    def reading(self, command: str) -> Iterator[None]:
        """Run ``command``'s reading of the store: a file gone or unreadable because the store
        was replaced meanwhile (:meth:`replaced`) is that :class:`StoreReplacedError`, not a
        traceback or a message about a damaged file."""
        try:
            yield
        except StoreReplacedError as exc:
            raise self.replaced_error(command) from exc  # named for the command
        except (OSError, ConetoolError) as exc:
            if self.replaced():
                raise self.replaced_error(command) from exc
            raise

    @contextmanager
    def writing_results(self, command: str) -> Iterator[None]:
        """Hold the store against ``kernels --overwrite``'s clearing while ``command`` writes its
        results into it, refusing (a :class:`StoreReplacedError`, nothing written) when the
        store was replaced since it was opened: results of the old kernels never land in the
        new store. The clearing waits for the writes, then removes them."""
        with results_lock(self.root, exclusive=False):
            if self.replaced():
                raise self.replaced_error(command)
            yield

    # ----------------------------------------------------------------- writing
    def write_kernel(self, record: StepRecord, kernel: torch.Tensor) -> None:
        """Write one step's kernel atomically and record it in the manifest in memory; then
        write ``manifest.json`` if its last write is far enough behind (:data:`MANIFEST_INTERVAL`,
        :data:`MANIFEST_COST_RATIO`), else leave it to a later kernel or :meth:`flush`. The
        kernel file carries its record, so a kill before the manifest write is recovered on the
        next open. A store opened with :meth:`join` writes the kernel file only."""
        carried = self.carried()
        store_id, selection, imports = (carried[k] for k in _CARRIED)
        selection = selection if isinstance(selection, dict) else None
        imports = imports if isinstance(imports, list) else None
        metadata = kernel_metadata(self.identity, record, store_id, selection, imports)
        atomic_save_safetensors(self.root / record.kernel, {"kernel": kernel.cpu()}, metadata)
        with self._manifest_guard:
            self.manifest["steps"][str(record.step)] = asdict(record)
            if self.owner:
                self._unsaved = True
                if _now() >= self._next_save:
                    self._write_manifest()

    def carried(self) -> dict[str, Any]:
        """What each kernel file written through this store carries of its manifest besides its
        own record: ``{"store_id": ..., "selection": ..., "imports": ...}`` (the writing run's
        checkpoint selection and the folders it imported a "pkg.mod:factory" spec's modules
        from; None for a key the manifest lacks)."""
        with self._manifest_guard:
            return {key: self.manifest.get(key) for key in _CARRIED}

    def carry(self, carried: Mapping[str, Any]) -> None:
        """Have the kernel files written from now on carry ``carried`` (the owner's
        :meth:`carried`; a None value changes nothing). For a store opened with :meth:`join`:
        the ``manifest.json`` it read gets the owner's run's header (its selection) only with
        the owner's next kernel, so until then it holds the previous run's."""
        with self._manifest_guard:
            for key in _CARRIED:
                if carried.get(key) is not None:
                    self.manifest[key] = carried[key]

    def refresh_mtimes(self, mtimes: Mapping[int, int]) -> None:
        """Record new modification times (step -> ns) of checkpoints that were read and found
        unchanged (the fingerprint of their record): a rerun then skips them without reading
        them again. One manifest write; the kernel files keep the records they were written with
        (see :func:`conetool.store_manifest.same_kernel_record`). A store opened with
        :meth:`join` leaves the manifest to its owner (those steps are read again next time)."""
        if not self.owner:
            return
        with self._manifest_guard:
            steps = self.manifest["steps"]
            changed = False
            for step, mtime in mtimes.items():
                held = steps.get(str(step))
                if held is not None and held.get("mtime_ns") != mtime:
                    steps[str(step)] = {**held, "mtime_ns": mtime}
                    changed = True
            if changed:
                self._write_manifest()

    # ----------------------------------------------------------------- eval kernels
    @property
    def eval_record(self) -> dict[str, Any] | None:
        """The evaluation set recorded in the manifest (size, split, seed, hash, file), if any."""
        with self._manifest_guard:
            raw = self.manifest.get("eval")
        return raw if isinstance(raw, dict) else None

    def record_eval(self, record: dict[str, Any]) -> list[str]:
        """Record the evaluation set ``record`` (size, split, seed, hash, file) in the manifest,
        written now when it changed. When it replaces another evaluation set, the eval kernel
        files of the old one are deleted (they carry its hash and would never be used again).
        Returns the warnings to show (the replacement: files deleted)."""
        old = self.eval_record
        removed = self._record_companion("eval", record, paths.eval_kernels_dir, "eval_hash")
        if removed is None:
            return []
        assert old is not None
        return [companions.eval_set_changed_note(self.root, old, record, removed)]

    def _record_companion(
        self,
        key: str,
        record: dict[str, Any],
        folder: Callable[[Path], Path],
        hash_key: str,
    ) -> int | None:
        """Record ``record`` under manifest ``key`` (written now when it changed). When it
        replaces a record of another ``hash``, delete the files in ``folder`` whose metadata
        ``hash_key`` is not the new hash and return how many; else None."""
        with self._manifest_guard:
            raw = self.manifest.get(key)
            old = raw if isinstance(raw, dict) else None
            if old == record:
                return None
            self.manifest[key] = dict(record)
            if self.owner:
                self._write_manifest()
        if old is None or old.get("hash") == record.get("hash"):
            return None
        return companions.delete_other_sets(folder(self.root), hash_key, record.get("hash"))

    def _companion_metadata(
        self, step: int, fingerprint: str, hash_key: str, hash_value: str
    ) -> dict[str, str]:
        """What makes a per-step companion file current (see
        :func:`conetool.store_companions.companion_metadata`), for this store's identity."""
        return companions.companion_metadata(self.identity, step, fingerprint, hash_key, hash_value)

    def eval_kernel_problem(self, step: int, eval_hash: str, fingerprint: str) -> str | None:
        """Why the eval kernel of ``step`` cannot be used with the evaluation set ``eval_hash``
        and the source checkpoint ``fingerprint``, or None when it can (header only)."""
        expected = self._companion_metadata(step, fingerprint, "eval_hash", eval_hash)
        size = (self.eval_record or {}).get("size")
        return companions.eval_kernel_problem(self.root, step, expected, size)

    def write_eval_kernel(
        self, step: int, kernel: torch.Tensor, eval_hash: str, fingerprint: str
    ) -> Path:
        """Write the cross kernel K(eval, probe) of ``step`` atomically. It carries what makes it
        current (evaluation set, probe set, spec, kind, dtype, source fingerprint), so the manifest
        is not touched: any rank may write it."""
        metadata = self._companion_metadata(step, fingerprint, "eval_hash", eval_hash)
        return companions.write_eval_kernel(self.root, step, kernel, metadata)

    def load_eval_kernel(self, step: int) -> torch.Tensor:
        """The stored cross kernel K(eval, probe) of ``step``; check it with
        :meth:`eval_kernel_problem` first."""
        return companions.load_eval_kernel(self.root, step, self.kernels_command())

    # ----------------------------------------------------------------- layer kernels
    @property
    def layer_record(self) -> dict[str, Any] | None:
        """The parameter groups recorded in the manifest (``patterns``, ``groups``, ``hash``,
        ``dir``) by ``kernels --per-layer``, if any."""
        with self._manifest_guard:
            raw = self.manifest.get("layer_groups")
        return raw if isinstance(raw, dict) else None

    def record_layer_groups(self, record: dict[str, Any]) -> list[str]:
        """Record the parameter groups ``record`` in the manifest, written now when it changed.
        When it replaces another grouping, the layer files of the old one are deleted (they
        carry its hash and would never be used again). Returns the warnings to show (files
        deleted)."""
        old = self.layer_record
        removed = self._record_companion(
            "layer_groups", record, paths.layer_kernels_dir, "groups_hash"
        )
        if removed is None:
            return []
        assert old is not None
        return [companions.layer_groups_changed_note(self.root, old, record, removed)]

    def layer_kernel_problem(self, step: int, groups_hash: str, fingerprint: str) -> str | None:
        """Why the layer file of ``step`` cannot be used with the grouping ``groups_hash`` and
        the source checkpoint ``fingerprint``, or None when it can (header only)."""
        expected = self._companion_metadata(step, fingerprint, "groups_hash", groups_hash)
        return companions.layer_kernel_problem(self.root, step, expected)

    def write_layer_kernels(
        self,
        step: int,
        kernels: Mapping[str, torch.Tensor],
        groups: Mapping[str, list[str]],
        groups_hash: str,
        fingerprint: str,
    ) -> Path:
        """Write the per-group kernels of ``step`` atomically. The file carries what makes it
        current (grouping, probe set, spec, kind, dtype, source fingerprint), so the manifest is
        not touched: any rank may write it."""
        metadata = self._companion_metadata(step, fingerprint, "groups_hash", groups_hash)
        record = self.layer_record or {}
        patterns = record.get("patterns")  # of the recorded groups: a rebuilt manifest's record
        known = record.get("hash") == groups_hash and (
            patterns is None or isinstance(patterns, dict)
        )
        return companions.write_layer_kernels(
            self.root, step, kernels, groups, metadata, json.dumps(patterns) if known else None
        )

    def current_layer_steps(self) -> list[int]:
        """The stored steps whose layer file is current (the recorded grouping, the checkpoint
        the step's kernel was computed from)."""
        record = self.layer_record
        if record is None:
            return []
        wanted = str(record.get("hash"))
        return [
            step
            for step, rec in self.records().items()
            if self.layer_kernel_problem(step, wanted, rec.fingerprint) is None
        ]

    def load_layer_kernels(self, step: int) -> dict[str, torch.Tensor]:
        """The stored per-group kernels of ``step`` (group -> kernel, in the recorded order);
        check them with :meth:`layer_kernel_problem` first."""
        return companions.load_layer_kernels(
            self.root, step, self.layer_record, self.kernels_command()
        )

    # ----------------------------------------------------------------- the manifest
    def adopt_kernel_files(self, *, save: bool = True) -> list[int]:
        """Record in the manifest every kernel file of this store's identity whose embedded
        record is missing from it or differs (written by another process, or by a run killed
        before its manifest write); with ``save`` (and as the owner) save the manifest if
        anything changed. Returns those steps.
        """
        adopted = self._adopt(kernel_files_made_with(self.root, self.identity))
        if adopted and self.owner and save:
            self._write_manifest()
        return adopted

    def _adopt(self, found: Mapping[Path, Mapping[str, str] | None]) -> list[int]:
        """Record in the manifest (in memory) the embedded record of each kernel file of
        ``found`` (path -> :func:`kernel_files_made_with`'s metadata) that is missing from it or
        differs; returns those steps, sorted."""
        adopted = []
        for meta in found.values():
            carried = embedded_record(meta)
            if carried is None:
                continue
            step, embedded = carried
            with self._manifest_guard:
                if not same_kernel_record(embedded, self.manifest["steps"].get(step)):
                    self.manifest["steps"][step] = embedded
                    adopted.append(int(step))
        return sorted(adopted)

    def _write_manifest(self) -> None:
        with self._manifest_guard:
            began = _now()
            write_manifest(self.root, self.manifest)
            ended = _now()
            self._unsaved = False
            self._next_save = ended + max(MANIFEST_INTERVAL, MANIFEST_COST_RATIO * (ended - began))


def store_on_disk(root: Path, opened: Mapping[str, Any]) -> Literal["same", "other", "none"]:
    """What ``root``'s ``manifest.json`` says now of the store whose
    :func:`~conetool.store_manifest.opened_as` is ``opened``: ``"same"`` (also when it is
    damaged: not replaced, the command's own error says so), ``"other"`` (another ``store_id``,
    or another identity for a store made before conetool recorded one: ``kernels --overwrite``
    cleared it and started a new store), or ``"none"`` (no manifest: being replaced, or removed)."""
    try:
        now = json.loads(paths.manifest(root).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "none"
    except (OSError, UnicodeDecodeError, ValueError):
        return "same"
    return "other" if isinstance(now, dict) and not same_store(opened, now) else "same"


def nearest_steps(steps: list[int], step: int, count: int = 5) -> str:
    """The ``count`` stored steps nearest to ``step``, as text for error messages."""
    if not steps:
        return "none"
    near = sorted(sorted(steps, key=lambda s: abs(s - step))[:count])
    return ", ".join(str(s) for s in near)


def kernel_norm(kernel: torch.Tensor) -> float:
    """‖H‖_F in float64."""
    value = float(torch.linalg.vector_norm(kernel.double()))
    if not math.isfinite(value):
        raise StoreError("kernel norm is not finite")
    return value
