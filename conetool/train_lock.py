"""The lock of ``conetool train``'s ``--out``: one train writes a checkpoint directory at a time.

It is the store's writer lock (:class:`~conetool.store_lock.StoreLock`, an exclusive
``fcntl.flock`` on ``OUT/.lock``, which names the holder's pid, host and command): the OS releases
it when the process ends, however it ends, so a killed train leaves no stale lock. Where the
folder cannot be written, on a file system without ``flock`` (NFS without its lock daemon,
Lustre without the ``flock`` mount option), or without ``fcntl`` (Windows), nothing is locked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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

    make_dir(out)  # (a folder that cannot be made is named, not its lock file)
    lock = StoreLock.acquire(out, refusal, shared=False)  # (a second train in this process too)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
