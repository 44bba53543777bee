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
  identity is refused; ``overwrite=True`` deletes what conetool wrote there and starts afresh
  (with ``defer_clearing``, only at :meth:`Store.clear_deferred`: ``kernels --overwrite`` calls it
  once its first kernel is computed, so a run that fails before leaves the old store whole);
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

The class :class:`Store` is put together from one base per job: the manifest in memory, kernel
files written with their records and ``manifest.json`` writes spaced out in
:mod:`conetool.store_records`; opening (for reading, as a rank, for writing, rebuilding) in
:mod:`conetool.store_opening`; the records of the evaluation set and the parameter groups in
:mod:`conetool.store_companion_records`; reading one kernel in :mod:`conetool.store_kernel_reading`;
a store replaced while read in :mod:`conetool.store_replaced`. The manifest (format, values,
reading, writing, rebuilding) and the record each kernel file carries are in
:mod:`conetool.store_manifest`; the kernel files read by their headers (before the store is opened
too) in :mod:`conetool.store_kernel_files`; the eval and layer kernel files in
:mod:`conetool.store_companions`; the writer lock in :mod:`conetool.store_lock`; clearing a store
(``overwrite``) and removing a killed writer's temporary files in :mod:`conetool.store_clearing`.
Every name in ``__all__`` is still imported from here (``from conetool.store import Store``).
"""

from __future__ import annotations

from .store_clearing import clear
from .store_kernel_files import kernel_file_headers, kernel_files_metadata, rebuilds_manifest
from .store_kernel_reading import KernelReading, nearest_steps
from .store_manifest import (
    FORMAT,
    FORMAT_VERSION,
    LAYOUTS,
    StepRecord,
    StoreIdentity,
    kernel_norm,
    read_manifest,
)
from .store_opening import StoreOpening
from .store_records import MANIFEST_COST_RATIO, MANIFEST_INTERVAL
from .store_replaced import store_on_disk

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


class Store(KernelReading, StoreOpening):
    """A store directory. Create or reopen with :meth:`open_for_writing`; read with :meth:`open`."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
