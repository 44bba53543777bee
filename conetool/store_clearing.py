"""Clearing a store: what ``--overwrite`` removes (:func:`clear`: the manifest, probe and
evaluation sets, kernel files, derived outputs, and nothing else; moved into
``STORE/.conetool-replaced-*`` first, the manifest first, so that a clearing stopped at any moment
leaves the old store whole or gone, and :func:`finish_clearing` removes the rest; that folder is
renamed ``STORE/.conetool-cleared-*`` once all is in it, then deleted), counted under the results lock
held exclusive, after the readers writing their results into the store
(:meth:`conetool.store.Store.writing_results`); the temporary files a killed writer left,
which the next writer removes before it writes (:func:`remove_stale_temporaries`; in the result
folders, the next reader alone writing results: :func:`remove_stale_result_temporaries`); and a store
that a failed ``kernels`` run created and left without a kernel (:func:`remove_unused`)."""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from . import paths
from .io import remove_temporaries, temporaries_of
from .store_kernel_files import clearing_stopped, kernel_files
from .store_lock import results_lock

__all__ = [
    "clear",
    "clearing_stopped",
    "finish_clearing",
    "remove_stale_result_temporaries",
    "remove_stale_temporaries",
    "remove_unused",
]


#: The folders only ``kernels`` (the lock's holder and its ranks) writes in.
_WRITER_DIRS = (paths.KERNELS_DIR, paths.EVAL_KERNELS_DIR, paths.LAYER_KERNELS_DIR)


def _own_files(root: Path) -> tuple[Path, ...]:
    """The files ``kernels`` writes at the top of a store: the manifest, probe and eval sets."""
    return (paths.manifest(root), paths.probe(root), paths.eval_set(root))


def clear(root: Path) -> str | None:
    """Remove what conetool writes in a store (manifest, probe, kernels, derived outputs), and
    say what was removed (None when there was nothing): ``--overwrite`` tells the user.

    Atomic for a reader and for the next run, whatever stops it: the files are first moved into
    a folder of their own in the store (``STORE/.conetool-replaced-x1y2/``, renames on one file
    system), ``manifest.json`` first, then that folder is renamed ``.conetool-cleared-x1y2/``
    and deleted. Before that first rename the old store is whole; after it the old store is
    gone: no command reads what is left of it (:func:`clearing_stopped`), and the next writer
    finishes the clearing (:func:`finish_clearing`) before it writes anything. Once the folder
    is renamed, nothing of the old store is left in place: a deletion that fails (a file held
    open on NFS, a file the user cannot delete) is said in the message, and the new store is
    written beside that folder; the next writer deletes it, never anything in the store."""
    root = Path(root)
    with results_lock(root, exclusive=True):  # after the readers' writes (Store.writing_results)
        # counted under the lock: what is removed, once the readers waited for have written
        kernels = len(kernel_files(root))
        companions = [
            (len(list(folder.glob("step_*.safetensors"))) if folder.is_dir() else 0, what)
            for folder, what in (
                (paths.eval_kernels_dir(root), "eval kernel"),
                (paths.layer_kernels_dir(root), "layer kernel"),
            )
        ]
        derived = [name for name in paths.DERIVED_DIRS if (root / name).is_dir()]
        if _conetool_entries(root):
            aside = Path(tempfile.mkdtemp(prefix=paths.REPLACED_PREFIX, dir=root))
            _move_aside(root, aside)
        failed = _delete_cleared(
            root, paths.replaced_folders(root)
        )  # this one, and any a kill left
    said = [
        f"{count} {what} file(s)" for count, what in [(kernels, "kernel"), *companions] if count
    ]
    if derived:
        said.append(f"{'its ' if said else ''}{', '.join(derived)} results")
    removed = None
    if said:
        listed = said[0] if len(said) == 1 else f"{', '.join(said[:-1])} and {said[-1]}"
        removed = f"--overwrite removed the replaced store's {listed}"
    return "; ".join(m for m in (removed, failed) if m) or None


def finish_clearing(root: Path) -> str | None:
    """Finish what a stopped clearing (:func:`clear`) left in store ``root``: the replaced
    store's files still in place are moved aside (only where a ``STORE/.conetool-replaced-*``
    folder says that the clearing had not moved them all, and no ``manifest.json`` was written
    since: :func:`clearing_stopped`), and the replaced stores' folders are deleted. What is in
    the store beside a ``STORE/.conetool-cleared-*`` folder (one whose deletion failed) is never
    touched: it was written after that clearing. The caller holds the store's writer lock. Says
    what it removed, and a deletion that failed (None: neither)."""
    root = Path(root)
    if not paths.replaced_folders(root) and not paths.cleared_folders(root):
        return None
    said = None
    with results_lock(root, exclusive=True):
        folders = paths.replaced_folders(root)
        if folders and clearing_stopped(root):
            kernels = len(_step_files(root / paths.KERNELS_DIR))
            left = [
                f"{p.name}/" if p.is_dir() else p.name
                for p in _conetool_entries(root)
                if not p.is_symlink() or (p.name == paths.KERNELS_DIR and kernels)
            ]
            _move_aside(root, folders[0])
            if left:
                if kernels and f"{paths.KERNELS_DIR}/" in left:
                    left[left.index(f"{paths.KERNELS_DIR}/")] += f" ({kernels} kernel file(s))"
                said = (
                    f"a conetool kernels --overwrite was stopped while it cleared store {root}: "
                    "the store it replaced was already gone (its manifest.json moved aside), "
                    f"and what was left of it is now removed too: {', '.join(left)}"
                )
        failed = _delete_cleared(root, folders)
    return "; ".join(m for m in (said, failed) if m) or None


def _delete_cleared(root: Path, moved: list[Path]) -> str | None:
    """Rename the folders ``moved`` (``STORE/.conetool-replaced-*``, every file of the replaced
    store in them now) ``STORE/.conetool-cleared-*``, then delete every such folder in
    ``root``. Says which could not be deleted, and why (None: all were): the store is written
    all the same, and the next writer tries again."""
    for folder in moved:
        _mark_cleared(folder)
    failed = []
    for folder in paths.cleared_folders(root):
        try:
            _remove_folder(folder)
        except OSError as exc:
            named = exc.filename and Path(exc.filename) != folder  # a file in it
            failed.append(f"{folder} ({exc.strerror or exc}{f': {exc.filename}' if named else ''})")
    if not failed:
        return None
    return (
        f"could not delete {', '.join(failed)}, which holds the files of the store that "
        "--overwrite replaced, all moved out of the store (no command reads them). The next "
        "conetool kernels on this store tries again; or delete that folder yourself."
    )


def _mark_cleared(folder: Path) -> None:
    """Rename ``folder`` (``STORE/.conetool-replaced-x1y2``) ``STORE/.conetool-cleared-x1y2``
    (another suffix where that name is taken): from then on, no file in the store beside it is
    the replaced store's."""
    suffix = folder.name.removeprefix(paths.REPLACED_PREFIX)
    while True:
        target = folder.with_name(paths.CLEARED_PREFIX + suffix)
        if not os.path.lexists(target):
            os.rename(folder, target)
            return
        suffix = secrets.token_hex(4)


def _conetool_entries(root: Path) -> list[Path]:
    """What a store's writers put at its top (manifest, probe and eval sets, kernel folders,
    result folders) that is there now, the manifest first."""
    names = [p.name for p in _own_files(root)] + [*_WRITER_DIRS, *paths.DERIVED_DIRS]
    return [root / name for name in names if os.path.lexists(root / name)]


def _move_aside(root: Path, aside: Path) -> None:
    """Move the store's own files and folders into ``aside`` (a folder in ``root``), the
    manifest first. A folder that is a symlink (``kernels/`` on a shared disk) stays, as the
    link; the files conetool wrote directly in it are deleted there instead (a rename would
    cross file systems): kernel files in the kernel folders, every file in a result folder."""
    for entry in _conetool_entries(root):
        if entry.is_symlink() and entry.is_dir():
            own = _step_files(entry) if entry.name in _WRITER_DIRS else _plain_files(entry)
            for path in own:
                path.unlink(missing_ok=True)
            continue
        try:
            os.replace(entry, aside / entry.name)
        except FileNotFoundError:
            pass  # gone meanwhile


def _step_files(folder: Path) -> list[Path]:
    """The kernel files and their temporaries directly in ``folder`` (regular files only)."""
    pattern = re.compile(rf"{_STEP_FILE}|{temporaries_of(_STEP_FILE).pattern}")
    return [p for p in _plain_files(folder) if pattern.fullmatch(p.name)]


def _plain_files(folder: Path) -> list[Path]:
    """The regular files directly in ``folder`` (no symlink, nothing nested)."""
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


#: How many times :func:`_remove_folder` starts over when files appear in a folder it removes.
_REMOVE_TRIES = 20


def _remove_folder(folder: Path) -> None:
    """``shutil.rmtree(folder)`` that a command reading the store cannot make fail: ``distance``
    (say) run while ``kernels --overwrite`` clears the store may write in its result folder
    meanwhile, and rmtree then meets a temporary file gone before its turn (renamed into place)
    or a folder not empty at the end (a file written after rmtree listed it). Either starts the
    removal over. (A reader of this conetool writes under the results lock, which :func:`clear`
    holds, and never into a replaced store; this guards against older readers, and file systems
    without ``flock``.)"""
    for _ in range(_REMOVE_TRIES):
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass  # an entry went away meanwhile (or the folder itself): look again
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if not folder.exists():
            return
    shutil.rmtree(folder)  # still being written to: say so


def remove_stale_temporaries(root: Path) -> None:
    """Remove the temporary files of atomic writes (``.step_000100.safetensors.x1y2.tmp``) that
    a killed writer left in the store's own folders. Called by the lock's holder before it
    writes: conetool's other writers (torchrun ranks) join after it, and the commands that read
    the store write only in their own result folders.

    Only the names :func:`conetool.io.atomic_write_text` and its kin give a temporary of a file
    conetool writes there, and only regular files directly in each folder: a ``kernels/`` that
    is a symlink to a shared disk is the store's (its kernels are written through it), but
    nothing nested under it, no symlink, and no other program's ``.*.tmp`` there is touched."""
    own = "|".join(re.escape(p.name) for p in _own_files(root))  # root: not only ours
    targets = [(root, temporaries_of(own))]
    targets += [(root / name, temporaries_of(_STEP_FILE)) for name in _WRITER_DIRS]
    for folder, pattern in targets:
        remove_temporaries(folder, pattern)


def remove_stale_result_temporaries(root: Path) -> None:
    """Remove the temporary files of atomic writes (``.to_ref.csv.x1y2.tmp``) that a command
    killed while writing its results left in the store's result folders (``distance/``,
    ``embed/``, ``spectrum/``, ``switch/``, ``report/``). Called under the results lock held by
    the caller alone (:func:`conetool.store_lock.results_lock`): every result file is written
    under that lock, so none of these temporaries is being written. Only regular files directly
    in each folder whose names ``mkstemp`` gives are touched."""
    pattern = temporaries_of(r"[^/]+")
    for name in paths.DERIVED_DIRS:
        remove_temporaries(Path(root) / name, pattern)


#: The name of a step's file in a kernel folder (``step_000100.safetensors``), as a regex.
_STEP_FILE = r"step_\d+" + re.escape(paths.CHECKPOINT_SUFFIX)


#: The files a ``kernels`` run writes at the top of a store before its first kernel.
_BEFORE_A_KERNEL = (paths.MANIFEST_NAME, paths.PROBE_NAME, paths.EVAL_NAME, paths.LOCK_NAME)
_READERS_LOCKS = (paths.RESULTS_LOCK_NAME, paths.RESULTS_GATE_NAME)


def remove_unused(root: Path, *, keep_folder: bool) -> bool:
    """Remove a store that a ``kernels`` run created and that holds no kernel (the run failed
    before its first): its manifest, probe and evaluation sets, lock file and empty kernel
    folders, then the folder itself unless ``keep_folder`` (it was there before the run). The
    readers' lock files stay (a reader may hold one). Anything else in it (a kernel file, a file
    of the user's) keeps the store as it is. Called by the writer's lock holder before it
    releases the lock. True when it was removed."""
    remove_stale_temporaries(root)
    try:
        # the readers' locks (--overwrite's clearing takes them too) stay: a reader may hold one
        entries = [p for p in root.iterdir() if p.name not in _READERS_LOCKS]
        for entry in entries:
            if entry.name in _WRITER_DIRS and entry.is_dir() and not entry.is_symlink():
                if any(entry.iterdir()):
                    return False
            elif entry.name not in _BEFORE_A_KERNEL or entry.is_symlink() or not entry.is_file():
                return False
        # the lock file last: once it is unlinked, another writer can lock a new one at once
        # (flock is per inode) and write its own store here, which nothing after may delete
        for entry in sorted(entries, key=lambda p: p.name == paths.LOCK_NAME):
            entry.rmdir() if entry.is_dir() else entry.unlink()
        if not keep_folder:
            root.rmdir()
    except OSError:
        return False  # a file appeared meanwhile, or the store cannot be written: kept
    return True
