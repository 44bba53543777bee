"""Which of a command's outputs it left as they were: a PNG that already held its figure
(:func:`~conetool.plots.write_figure` leaves it), said apart from the files written (``kept``
beside ``wrote``). Every write replaces the file by a new one (a temporary file renamed into
place, :func:`~conetool.io.atomic_write`), so a file whose device, inode, size and modification
time are those it had before is one that was not written."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["FileState", "file_states", "unchanged"]

#: A file's device, inode, size and modification time (ns).
FileState = tuple[int, int, int, int]


def _state(path: Path) -> FileState | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def file_states(files: Iterable[Path]) -> dict[Path, FileState | None]:
    """The state of each of ``files`` now (None: there is none), before a command writes them."""
    return {Path(path): _state(Path(path)) for path in files}


def unchanged(files: Iterable[Path], before: Mapping[Path, FileState | None]) -> list[Path]:
    """Those of ``files`` that are the very files they were when ``before`` was taken
    (:func:`file_states`): left as they were, not written."""
    return [
        path
        for path in files
        if before.get(Path(path)) is not None and _state(Path(path)) == before[Path(path)]
    ]
