"""The lock of ``conetool train``'s ``--out``: one train writes a checkpoint directory at a time.

It is the store's writer lock (:class:`~conetool.store_lock.StoreLock`, an exclusive
``fcntl.flock`` on ``OUT/.lock``, which names the holder's pid, host and command): the OS releases
it when the process ends, however it ends, so a killed train leaves no stale lock. Where the
folder cannot be written, on a file system without ``flock`` (NFS without its lock daemon,
Lustre without the ``flock`` mount option), or without ``fcntl`` (Windows), nothing is locked.

A train that fails or is refused inside the lock (a value found bad once the lock is taken, an
interrupt) before it writes its run's ``conetool.toml`` removes the lock file it created, whatever
else the folder holds (a store's files, the user's, a file another program put there meanwhile,
what ``--overwrite`` left of a run it cleared), and then the folders it created for ``--out`` that
are empty (a refused train into ``runs/new`` left ``runs/new/.lock`` behind; one into
``runs/../new`` left ``runs``, and took a ``new`` that was there for a folder it made); that
cleanup removes nothing else. It does so while it still
holds the lock (a train that opened the file meanwhile locks the one at the path once it is
free: ``store_lock``), and never removes a lock file that was there before the call (a run's,
another train's). Once it has written
``conetool.toml`` the folder is a run's and stays, its lock file with it, as a store's does.
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

    made, folder = _missing_folders(out)  # (folder: out as it resolves once they are made)
    lock_file = paths.lock(folder)
    had_lock_file = lock_file.exists()
    spec_file = _file_identity(paths.spec(folder))  # (rewritten by this train: a new file)
    make_dir(out)  # (a folder that cannot be made is named, not its lock file)
    lock = StoreLock.acquire(out, refusal, shared=False)  # (a second train in this process too)
    try:
        yield
    except BaseException:
        written = _file_identity(paths.spec(folder))
        if written is None or written == spec_file:  # (the lock held: no train is inside)
            _remove_created(folder, made, lock_file=not had_lock_file)
        raise
    finally:
        if lock is not None:
            lock.release()


def _missing_folders(out: Path) -> tuple[list[Path], Path]:
    """The folders :func:`~conetool.io.make_dir` will create for ``out``, innermost first, and
    the path ``out`` names once they are made. A ``..`` that leaves a folder made here
    (``runs/..`` of ``runs/../new``, runs missing) goes back to its parent, as it will once the
    folder exists: until then the system resolves no path through it, so ``runs/../new`` would
    look missing though ``new`` is there (a refused train then took ``new`` and its lock file
    for its own). Other ``..`` are left to the system (a link's ``..`` is not its parent's)."""
    current = Path(out.anchor) if out.anchor else Path()
    made: list[Path] = []
    for part in out.parts[1 if out.anchor else 0 :]:
        if part == ".." and current in made:
            current = current.parent  # (made here: a plain folder in its parent)
            continue
        current = current / part
        if current not in made and not current.exists():
            made.append(current)
    return made[::-1], current


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    """``path``'s device, inode and modification time in ns; None when there is no such file.
    An atomic write (conetool.toml's) gives the path a new inode."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _remove_created(out: Path, made: list[Path], *, lock_file: bool = True) -> None:
    """Remove ``out``'s lock file, which this train created (``lock_file``: not one that was
    there before, whose folder stays), and then the folders of ``made`` (innermost first) while
    they are empty (``runs`` of ``runs/../new``); nothing else (the folder's other files, a
    folder another process put something in) is touched, and what cannot be removed is left."""
    try:
        if lock_file:
            paths.lock(out).unlink()
        for folder in made:
            folder.rmdir()  # OSError once a folder is not empty (it holds anything but the lock)
    except OSError:
        return
