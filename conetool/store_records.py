"""The store's manifest in memory: its records read and changed under one lock, each kernel file
written with its record, the records the kernel files carry adopted, and ``manifest.json``
written spaced out (:data:`MANIFEST_INTERVAL`, :data:`MANIFEST_COST_RATIO`).

:class:`StoreRecords` is the base of :class:`conetool.store.Store`, which adds opening
(:mod:`conetool.store_opening`), the eval and layer records (:mod:`conetool.store_companion_records`),
reading kernels (:mod:`conetool.store_kernel_reading`) and noticing a replaced store
(:mod:`conetool.store_replaced`). Kernels are ``(n, n)`` (trace, sum) or ``(n, c, n, c)`` (full)
tensors, as the manifest's layout says."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .errors import StoreError
from .io import NOT_WRITABLE, atomic_save_safetensors
from .store_kernel_files import kernel_files_made_with
from .store_lock import StoreLock
from .store_manifest import (
    StepRecord,
    StoreIdentity,
    embedded_record,
    kernel_metadata,
    manifest_identity,
    opened_as,
    same_kernel_record,
    write_manifest,
)

__all__ = ["MANIFEST_COST_RATIO", "MANIFEST_INTERVAL", "StoreRecords"]


#: :meth:`StoreRecords.write_kernel` rewrites ``manifest.json`` only when this many seconds have
#: passed since its last write ...
MANIFEST_INTERVAL = 1.0
#: ... and this many times as long as that write took: however many steps the manifest holds, its
#: rewrites take at most about a tenth of the run.
MANIFEST_COST_RATIO = 10.0
#: The clock of those intervals (seconds; tests replace it).
_now = time.monotonic


#: The manifest entries each kernel file carries in its metadata (:meth:`StoreRecords.carried`).
_CARRIED = ("store_id", "selection", "imports", "spec")


class StoreRecords:
    """A store's manifest in memory and the kernel files written with it (the base of
    :class:`conetool.store.Store`)."""

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
        # Of those warnings, the one of each kept record a rebuilt manifest could not get back
        # (``"eval"``, ``"layer_groups"`` -> its warning): moot for a run that records it anyway.
        self.unrecovered: dict[str, str] = {}
        self._lock: StoreLock | None = None
        # Guards self.manifest (and manifest.json's writes) between a writer thread and readers.
        self._manifest_guard = threading.RLock()
        self._unsaved = False  # steps recorded in self.manifest since manifest.json was written
        self._next_save = 0.0  # _now() from which write_kernel writes manifest.json again
        # Opened with the clearing of a replaced store put off (``kernels --overwrite``,
        # :meth:`~conetool.store.Store.clear_deferred`): the manifest in memory is the new
        # store's, the files on disk still the old one's, and nothing is written until it clears.
        self._clearing_deferred = False

    @property
    def clearing_deferred(self) -> bool:
        """True while the replaced store this one was opened over is still on disk: nothing of it
        counts as this store's, and nothing is written (see
        :meth:`~conetool.store.Store.open_for_writing`'s ``defer_clearing``)."""
        return self._clearing_deferred

    def _refuse_while_deferred(self, what: str) -> None:
        """Guard of every write: none may land in the replaced store before it is cleared."""
        if self._clearing_deferred:
            raise RuntimeError(
                f"{what} in {self.root} before the replaced store there was cleared "
                "(Store.clear_deferred): it would mix into the old store"
            )

    def flush(self) -> None:
        """Write ``manifest.json`` now if kernels were recorded since its last write
        (:meth:`write_kernel` spaces its writes out). The owner only; :meth:`close` calls it."""
        with self._manifest_guard:
            if self.owner and self._unsaved:
                self._write_manifest()

    def close(self) -> None:
        """Write what :meth:`write_kernel` left out of ``manifest.json`` (:meth:`flush`) and
        release the writer's lock (:meth:`~conetool.store.Store.open_for_writing`); the store can
        still be read."""
        try:
            self.flush()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

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

    def kernels_command(self) -> str:
        """The ``conetool kernels`` command that completes this store (recomputing what is
        missing or damaged), as error messages advise it: the recorded checkpoint directory, or
        ``CKPTS`` when none is recorded."""
        with self._manifest_guard:
            ckpts = self.manifest.get("checkpoints") or "CKPTS"
        return f"conetool kernels {ckpts} --store {self.root}"

    # ----------------------------------------------------------------- writing
    def write_kernel(self, record: StepRecord, kernel: torch.Tensor) -> None:
        """Write one step's kernel atomically and record it in the manifest in memory; then
        write ``manifest.json`` if its last write is far enough behind (:data:`MANIFEST_INTERVAL`,
        :data:`MANIFEST_COST_RATIO`), else leave it to a later kernel or :meth:`flush`. The
        kernel file carries its record, so a kill before the manifest write is recovered on the
        next open. A store opened with :meth:`~conetool.store.Store.join` writes the kernel file
        only."""
        self._refuse_while_deferred(f"writing the kernel of step {record.step}")
        carried = self.carried()
        store_id, selection, imports, spec = (carried[k] for k in _CARRIED)
        selection = selection if isinstance(selection, dict) else None
        imports = imports if isinstance(imports, list) else None
        spec = spec if isinstance(spec, dict) else None
        metadata = kernel_metadata(self.identity, record, store_id, selection, imports, spec)
        atomic_save_safetensors(self.root / record.kernel, {"kernel": kernel.cpu()}, metadata)
        with self._manifest_guard:
            self.manifest["steps"][str(record.step)] = asdict(record)
            if self.owner:
                self._unsaved = True
                if _now() >= self._next_save:
                    self._write_manifest()

    def carried(self) -> dict[str, Any]:
        """What each kernel file written through this store carries of its manifest besides its
        own record: ``{"store_id": ..., "selection": ..., "imports": ..., "spec": ...}`` (the
        writing run's checkpoint selection, the folders it imported a "pkg.mod:factory" spec's
        modules from, and the resolved spec; None for a key the manifest lacks)."""
        with self._manifest_guard:
            return {key: self.manifest.get(key) for key in _CARRIED}

    def carry(self, carried: Mapping[str, Any]) -> None:
        """Have the kernel files written from now on carry ``carried`` (the owner's
        :meth:`carried`; a None value changes nothing). For a store opened with
        :meth:`~conetool.store.Store.join`: the ``manifest.json`` it read gets the owner's run's
        header (its selection) only with the owner's next kernel, so until then it holds the
        previous run's."""
        with self._manifest_guard:
            for key in _CARRIED:
                if carried.get(key) is not None:
                    self.manifest[key] = carried[key]

    def refresh_mtimes(
        self, mtimes: Mapping[int, int], sources: Mapping[int, list[str]] | None = None
    ) -> None:
        """Record new modification times (step -> ns) of checkpoints that were read and found
        unchanged (the fingerprint of their record): a rerun then skips them without reading
        them again; and the files (step -> ``source``, resolved paths) that now give steps whose
        kernel is current (a run moved or copied with its store, a copy of the same bytes read in
        place of a file gone), so that the records name files that are there (the noise floor
        reads the last step's). One manifest write, left out on a store that cannot be written
        (read-only media, a copy not ours): a rerun with nothing to compute writes nothing, and
        the records keep their old times and files. The kernel files keep the records they were
        written with (see :func:`conetool.store_manifest.same_kernel_record`). A store opened
        with :meth:`~conetool.store.Store.join` leaves the manifest to its owner (those steps
        are read again next time)."""
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
            for step, source in (sources or {}).items():
                held = steps.get(str(step))
                if held is not None and held.get("source") != list(source):
                    steps[str(step)] = {**held, "source": list(source)}
                    changed = True
            if changed:
                try:
                    self._write_manifest()
                except StoreError as exc:
                    cause = exc.__cause__
                    if not (isinstance(cause, OSError) and cause.errno in NOT_WRITABLE):
                        raise

    # ----------------------------------------------------------------- the records kernel files carry
    def adopt_kernel_files(self, *, save: bool = True) -> list[int]:
        """Record in the manifest every kernel file of this store's identity whose embedded
        record is missing from it or differs (written by another process, or by a run killed
        before its manifest write); with ``save`` (and as the owner) save the manifest if
        anything changed. Returns those steps (none while the clearing is deferred: the files
        there are the replaced store's).
        """
        if self._clearing_deferred:
            return []
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
        self._refuse_while_deferred("writing manifest.json")
        with self._manifest_guard:
            began = _now()
            write_manifest(self.root, self.manifest)
            ended = _now()
            self._unsaved = False
            self._next_save = ended + max(MANIFEST_INTERVAL, MANIFEST_COST_RATIO * (ended - began))
