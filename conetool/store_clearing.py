"""Clearing a store: what ``--overwrite`` removes (:func:`clear`: the manifest, probe and
evaluation sets, kernel files, derived outputs, and nothing else), counted under the results lock
held exclusive, after the readers writing their results into the store
(:meth:`conetool.store.Store.writing_results`); the temporary files a killed writer left,
which the next writer removes before it writes (:func:`remove_stale_temporaries`; in the result
folders, the next reader alone writing results: :func:`remove_stale_result_temporaries`); and a store
that a failed ``kernels`` run created and left without a kernel (:func:`remove_unused`)."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from . import paths
from .io import remove_temporaries, temporaries_of
from .store_kernel_files import kernel_files
from .store_lock import results_lock

__all__ = ["clear", "remove_stale_result_temporaries", "remove_stale_temporaries", "remove_unused"]


#: The folders only ``kernels`` (the lock's holder and its ranks) writes in.
_WRITER_DIRS = (paths.KERNELS_DIR, paths.EVAL_KERNELS_DIR, paths.LAYER_KERNELS_DIR)


def _own_files(root: Path) -> tuple[Path, ...]:
    """The files ``kernels`` writes at the top of a store: the manifest, probe and eval sets."""
    return (paths.manifest(root), paths.probe(root), paths.eval_set(root))


def clear(root: Path) -> str | None:
    """Remove what conetool writes in a store (manifest, probe, kernels, derived outputs), and
    say what was removed (None when there was nothing): ``--overwrite`` tells the user."""
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
        derived = [name for name in paths.DERIVED_DIRS if (Path(root) / name).is_dir()]
        for path in _own_files(root):
            path.unlink(missing_ok=True)
        for name in (*_WRITER_DIRS, *paths.DERIVED_DIRS):
            folder = Path(root) / name
            if folder.is_dir():
                _remove_folder(folder)
    said = [
        f"{count} {what} file(s)" for count, what in [(kernels, "kernel"), *companions] if count
    ]
    if derived:
        said.append(f"its {', '.join(derived)} results")
    if not said:
        return None
    removed = said[0] if len(said) == 1 else f"{', '.join(said[:-1])} and {said[-1]}"
    return f"--overwrite removed the replaced store's {removed}"


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
