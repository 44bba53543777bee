"""Opening one checkpoint file: the indirection tests replace (:func:`open_file`), the error an
``OSError`` of opening or reading becomes (:func:`open_error`), and the first bytes that tell the
file formats apart (:data:`ZIP_MAGIC`, :data:`MAX_HEADER`).

The modules of the file formats (:mod:`._safetensors_format`, :mod:`._hashed_reads`,
:mod:`._torch_save`) call :func:`open_file` through this module, so that one replacement reaches
every read. Each works on one file and raises :class:`CheckpointError` with a message that names
the file and the fix; discovery turns those errors into per-file problems.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path

from conetool.errors import CheckpointError

MAX_HEADER = 100 * 2**20  # safetensors itself refuses headers over 100 MB
ZIP_MAGIC = b"PK\x03\x04"


def open_file(path: Path) -> io.BufferedReader:
    """``open(path, "rb")``, through this indirection so that tests can simulate unreadable
    files."""
    return open(path, "rb")


def open_error(path: Path, error: OSError) -> CheckpointError:
    """A :class:`CheckpointError` for an ``OSError`` raised while opening or reading ``path``."""
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return CheckpointError(
            f"cannot read '{path}': permission denied. Make it readable "
            f"(chmod u+r '{path}') or run as a user who may read it."
        )
    if error.errno == errno.ELOOP:
        return CheckpointError(
            f"'{path}' is a symlink loop (following its links leads back to itself). Remove the "
            f"link or point it at the real checkpoint file."
        )
    if isinstance(error, FileNotFoundError):
        return CheckpointError(
            f"'{path}' disappeared (or is a broken symlink) while conetool was reading the "
            f"directory. If a run is still writing or rotating checkpoints, wait and rerun; "
            f"otherwise remove the broken link."
        )
    return CheckpointError(
        f"cannot read '{path}': {error.strerror or error}. Check the file and the disk."
    )
