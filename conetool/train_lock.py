"""The lock of ``conetool train``'s ``--out``: one train writes a checkpoint directory at a time.

It is the store's writer lock (:class:`~conetool.store_lock.StoreLock`, an exclusive
``fcntl.flock`` on ``OUT/.lock``, which names the holder's pid, host and command): the OS releases
it when the process ends, however it ends, so a killed train leaves no stale lock. Where the
folder cannot be written, on a file system without ``flock`` (NFS without its lock daemon,
Lustre without the ``flock`` mount option), or without ``fcntl`` (Windows), nothing is locked.

A train that fails or is refused inside the lock (a value found bad once the lock is taken, an
interrupt) before it writes anything leaves ``--out`` as it found it: the lock file it created is
removed (from beside the files of a folder that held some), and so are the folders it created for
``--out`` (a refused train into ``runs/new`` left ``runs/new/.lock`` behind). Once it has written anything there (``conetool.toml``, a checkpoint)
the folder is a run's and stays, its lock file with it, as a store's does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import paths
from .io import make_dir
from .store_lock import StoreLock

__all__ = ["train_out_lock"]


@contextmanager
def train_out_lock(out: Path) -> Iterator[None]:
    """Hold the lock of ``out`` (created if need be) while the body writes it, or raise
    :class:`~conetool.errors.StoreError` naming the folder and the process that writes it."""

    def refusal(holder: str, lock_file: Path) -> str:
        return (
            f"--out {out} is being written by another conetool process ({holder}); it holds "
            f"the lock {lock_file}. conetool train refuses a second writer rather than wait: "
            "two trains in one folder would overwrite each other's checkpoints and metrics.csv. "
            "Wait until it ends (then --resume continues its run if it was stopped), or choose "
            "another --out. The lock goes away with that process."
        )

    made = _missing_folders(out)
    lock_file = paths.lock(out)
    had_lock_file = lock_file.exists()
    found = _names(out)  # what was there (a folder of the user's files: they stay, alone)
    make_dir(out)  # (a folder that cannot be made is named, not its lock file)
    lock = StoreLock.acquire(out, refusal, shared=False)  # (a second train in this process too)
    try:
        yield
    except BaseException:
        if not had_lock_file:
            _remove_untouched(out, made, found)  # (the lock held: no other train is inside)
        raise
    finally:
        if lock is not None:
            lock.release()


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist, innermost first: what
    :func:`~conetool.io.make_dir` will create."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _names(out: Path) -> set[str]:
    """The names of the entries of ``out``; none when it is no folder (yet)."""
    try:
        return {p.name for p in out.iterdir()}
    except OSError:
        return set()


def _remove_untouched(out: Path, made: list[Path], found: set[str]) -> None:
    """When ``out`` holds nothing but what it held before (``found``) and the lock file this
    train created, remove that file and then the folders of ``made`` (innermost first) that are
    empty; anything else is left as it is (a file written, another process's folder), and so is
    whatever cannot be removed."""
    lock_file = paths.lock(out)
    try:
        if {p.name for p in out.iterdir()} != found | {lock_file.name}:
            return
        lock_file.unlink()
        for folder in made:
            folder.rmdir()  # OSError once a folder is not empty (something else was put there)
    except OSError:
        return
