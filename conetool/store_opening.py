"""Opening a store: for reading (:meth:`StoreOpening.open`, which never writes, with a clear
message when there is no manifest to read), as a torchrun rank beside the owner
(:meth:`StoreOpening.join`), or for writing (:meth:`StoreOpening.open_for_writing`: created,
reopened with the same identity, refused or cleared for another, and rebuilt from the kernel files
when ``manifest.json`` is damaged or deleted), under the writer's lock."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import paths
from .choices import path_argument
from .errors import StoreError, StoreReplacedError
from .folder_roles import checkpoint_contents, store_holding
from .io import make_dir
from .store_clearing import clear, clearing_stopped, finish_clearing, remove_stale_temporaries
from .store_companion_records import CompanionRecords
from .store_kernel_files import damaged, kernel_files, kernel_files_made_with
from .store_lock import StoreLock, writer_note
from .store_manifest import (
    StoreIdentity,
    check_steps,
    checked_manifest,
    manifest_identity,
    mixed_message,
    new_manifest,
    new_store_id,
    read_manifest,
    rebuilt_note,
    store_id_of_kernel_files,
)

__all__ = ["StoreOpening"]

_S = TypeVar("_S", bound="StoreOpening")


class StoreOpening(CompanionRecords):
    """The ways to open a store (a base of :class:`conetool.store.Store`; its class methods
    return the class they are called on)."""

    @classmethod
    def open(cls: type[_S], root: str | Path) -> _S:
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
            if clearing_stopped(root):
                raise StoreError(
                    f"store {root} has no {paths.MANIFEST_NAME}: a conetool kernels --overwrite "
                    "was stopped while it cleared the store it replaced there. That store is "
                    "gone, and the new one has no kernels yet. Rerun that conetool kernels "
                    f"CKPTS --store {root} --overwrite: it removes what is left of the replaced "
                    "store and computes the new kernels."
                )
            if kernel_files(root):
                raise StoreError(
                    f"store {root} has kernel files but no {paths.MANIFEST_NAME} (deleted?). "
                    f"Rebuild it: conetool kernels CKPTS --store {root} rebuilds the manifest "
                    "from the kernel files (each carries its own record) and recomputes only "
                    "what is missing."
                )
            if root.is_file():
                raise StoreError(
                    f"store {root} is a file, not a store directory. Pass the folder that "
                    f"conetool kernels wrote the kernels into ({paths.DEFAULT_STORE} unless it "
                    "was given another --store)."
                )
            where = "does not exist" if not root.exists() else f"has no {paths.MANIFEST_NAME}"
            held = store_holding(root) if root.is_dir() else None
            if held is not None and held[0] != root:  # a folder of kernel files of a store
                raise StoreError(
                    f"store {root} {where}: it is the {root.name}/ folder of the conetool store "
                    f"{held[0]} (which holds {paths.MANIFEST_NAME}), not a store. Pass that "
                    f"store: --store {held[0]}"
                )
            run = checkpoint_contents(root)
            if run is not None:
                raise StoreError(
                    f"store {root} {where}: it is a checkpoint directory (it holds {run}), not a "
                    "store. Pass the --store that conetool kernels wrote the kernels into "
                    f"({paths.DEFAULT_STORE} unless it was given another), or compute them into "
                    f"a folder of their own: conetool kernels {root} --store {paths.DEFAULT_STORE}"
                )
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
    def join(cls: type[_S], root: str | Path, replacing: Mapping[str, Any] | None = None) -> _S:
        """Open a store that another process owns (rank 0 of a torchrun job), to add kernels.

        The manifest is read as it is and never written: :meth:`write_kernel` writes the kernel
        file only (it carries its own record), and the owner adopts it.

        ``replacing``: the owner's new manifest, its clearing of a replaced store deferred
        (``kernels --overwrite``: :meth:`open_for_writing`'s ``defer_clearing``). The store is
        that manifest in memory, :attr:`clearing_deferred` and writing nothing, until
        :meth:`join_cleared` once the owner has cleared the old one.
        """
        root = Path(root)
        if replacing is not None:
            store = cls(root, dict(replacing), owner=False)
            store._clearing_deferred = True
            return store
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
        cls: type[_S],
        root: str | Path,
        identity: StoreIdentity,
        header: Mapping[str, Any],
        *,
        overwrite: bool = False,
        defer_clearing: bool = False,
    ) -> _S:
        """Create the store, or reopen one of the same identity; refuse any other identity.

        ``header`` is the provenance recorded in the manifest (checkpoint directory, resolved
        spec, probe description, versions). With ``overwrite`` an existing store of another
        identity is cleared first (only the files conetool writes are removed).

        With ``defer_clearing`` too, a store that ``overwrite`` would clear is left as it is for
        now, under the lock: the store returned is the new one in memory
        (:attr:`clearing_deferred`; no file of the old one counts as its, and every write is
        refused) until :meth:`clear_deferred` clears the old one and writes the new manifest.
        ``kernels --overwrite`` calls it once its first kernel is computed, so that a run that
        fails before never costs the old store anything.
        """
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"--store {root} is a file, not a directory. Choose a directory.")
        lock = StoreLock.acquire(root)
        try:
            store = cls._open_locked(root, identity, header, overwrite, defer_clearing)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store._lock = lock
        if lock is not None:  # a store dropped without close() gives its lock back too
            weakref.finalize(store, lock.release)
        return store

    @staticmethod
    def overwrite_clears(
        root: str | Path, identity: StoreIdentity, manifest: dict[str, Any] | None
    ) -> bool:
        """Whether :meth:`open_for_writing` with ``overwrite`` would clear ``root`` for a store of
        ``identity``, given ``manifest``, the store's ``manifest.json`` as the caller read it, as
        JSON unchecked (None: there is none, or it cannot be read as a JSON object): no manifest,
        a damaged one, or one of another identity (nothing read or written here; the clearing may
        find nothing to remove). ``kernels --overwrite`` makes the checks it can before a store
        that holds something is cleared."""
        if manifest is None:
            return True
        try:
            found = manifest_identity(checked_manifest(paths.manifest(Path(root)), manifest))
        except StoreError:
            return True
        return found != identity

    @classmethod
    def _open_locked(
        cls: type[_S],
        root: Path,
        identity: StoreIdentity,
        header: Mapping[str, Any],
        overwrite: bool,
        defer_clearing: bool = False,
    ) -> _S:
        path = paths.manifest(root)
        warnings: list[str] = []  # the rebuild (its last item completed below), what is lost
        clears = False  # overwrite: what is there is cleared (or left until clear_deferred)
        # what a stopped --overwrite left of the store it replaced, removed before anything else
        finished = finish_clearing(root)
        remove_stale_temporaries(root)
        if path.is_file():
            try:
                manifest: dict[str, Any] | None = read_manifest(path)
            except StoreError as exc:
                if overwrite:
                    manifest = None
                    clears = True
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
                    source, written = header.get("spec_source"), header.get("spec_written")
                    raise StoreError(
                        mixed_message(root, found, identity, held, specs, source, written)
                    )
                if found != identity:
                    clears = True
                else:
                    manifest.update(header)  # written with the next kernel, not before
                    manifest.setdefault("store_id", new_store_id())  # a store made before it
                    store = cls(root, manifest)
                    if store.adopt_kernel_files(save=False):
                        store._write_manifest()  # only a change of the index is written now
                    store._ensure_kernels_dir()
                    return store
        elif overwrite:
            clears = True
        elif kernel_files(root):
            warnings.append(f"{path} was missing; rebuilt it from the kernel files")
        manifest = new_manifest(identity, header)
        if clears and defer_clearing:  # the old store stays until clear_deferred
            store = cls(root, manifest)
            store._clearing_deferred = True
            store.warnings = [finished] if finished else []
            return store
        cleared = clear(root) if clears else None
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
        store.warnings = [m for m in (finished, *warnings, cleared) if m]
        store._ensure_kernels_dir()
        store._write_manifest()
        return store

    def clear_deferred(self) -> None:
        """Clear the replaced store that :meth:`open_for_writing` with ``defer_clearing`` left
        in place (:attr:`clearing_deferred`; nothing to do otherwise), then write this store's
        manifest: from here on it is the store on disk. What was removed is added to
        :attr:`warnings`. A kill meanwhile leaves what a kill during an ``overwrite`` opening
        leaves (:func:`conetool.store_clearing.clear`)."""
        if not self._clearing_deferred:
            return
        cleared = clear(self.root)
        self._clearing_deferred = False
        if cleared:
            self.warnings.append(cleared)
        self._ensure_kernels_dir()
        self._write_manifest()

    def join_cleared(self) -> None:
        """For a store joined with ``replacing`` (:meth:`join`), once the owner has cleared the
        replaced store (:meth:`clear_deferred`) and written its manifest: read that manifest,
        and write kernels from here on. Nothing to do for any other store."""
        if not self._clearing_deferred or self.owner:
            return
        joined = type(self).join(self.root)
        if joined.identity != self.identity:
            raise StoreError(
                f"store {self.root}'s {paths.MANIFEST_NAME} is not the one rank 0 wrote when it "
                f"cleared the store ({joined.identity} against {self.identity}): every rank must "
                "see the same --store directory, on a file system that all nodes share."
            )
        with self._manifest_guard:
            self.manifest = joined.manifest
            self._opened_as = joined._opened_as
        self._clearing_deferred = False

    def _ensure_kernels_dir(self) -> None:
        make_dir(self.root / paths.KERNELS_DIR)
