""":func:`conetool.store_clearing.remove_unused`, which deletes the store a failed ``kernels``
run created before its first kernel: it deletes only that run's files, and never while another
writer can hold the store."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conetool import paths, store_clearing
from conetool.store_lock import StoreLock


def _unused_store(root: Path) -> StoreLock:
    """A store as a run leaves it before its first kernel, its writer's lock held."""
    lock = StoreLock.acquire(root)
    assert lock is not None
    paths.manifest(root).write_text("{}")
    paths.probe(root).write_bytes(b"probe")
    (root / paths.KERNELS_DIR).mkdir()
    return lock


@pytest.mark.parametrize("keep_folder", [False, True])
def test_the_lock_goes_last_so_no_second_writer_loses_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_folder: bool
) -> None:
    # Once the lock file is unlinked, a second conetool kernels takes the lock on a new one at
    # once (flock is per inode) and writes its store; deleting the manifest, probe or kernels
    # folder after that deleted the second writer's. iterdir's order is the file system's:
    # here the lock file comes first.
    root = tmp_path / "store"
    lock = _unused_store(root)
    real_iterdir, real_unlink = Path.iterdir, Path.unlink

    def lock_first(self: Path) -> Iterator[Path]:
        return iter(sorted(real_iterdir(self), key=lambda p: p.name != paths.LOCK_NAME))

    taken: list[int] = []

    def unlink(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok=missing_ok)
        if self.name == paths.LOCK_NAME and not taken:  # the second writer comes in now
            fd = os.open(self, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the lock
            taken.append(fd)
            paths.manifest(root).write_text("the second writer's")

    monkeypatch.setattr(Path, "iterdir", lock_first)
    monkeypatch.setattr(Path, "unlink", unlink)
    try:
        store_clearing.remove_unused(root, keep_folder=keep_folder)
    finally:
        monkeypatch.undo()
        lock.release()
        for fd in taken:
            os.close(fd)
    assert taken  # the lock file was removed (the second writer came in)
    assert paths.manifest(root).read_text() == "the second writer's"
