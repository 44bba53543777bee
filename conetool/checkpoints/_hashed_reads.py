"""One-pass reads of a checkpoint file with a streaming hash: its bytes (when kept), size,
sha256 and modification time, refused when the file changes while it is read; and the
fingerprint (``"<bytes>:<sha256>"``) of a checkpoint's file or shards.

Everything here works on one file and raises :class:`CheckpointError` with a message that names the
file and the fix; discovery turns those errors into per-file problems.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from conetool.errors import CheckpointError

from . import _opening
from ._opening import open_error

_CHUNK = 8 * 2**20


def _stat(path: Path) -> os.stat_result:  # indirection so tests can simulate a growing file
    return os.stat(path)


def _changed_error(
    path: Path, before: os.stat_result, after: os.stat_result | None
) -> CheckpointError:
    what = "was replaced or removed"
    if after is not None and after.st_size != before.st_size:
        what = f"went from {before.st_size} to {after.st_size} bytes"
    elif after is not None:
        what = "was modified"
    return CheckpointError(
        f"'{path}' changed while conetool was reading it (it {what}): a run is probably still "
        f"writing it. Wait until the run has written it, or rerun."
    )


class Streamed(NamedTuple):
    """One file read by :func:`stream_file`."""

    data: bytearray | None  # its bytes, when kept
    size: int
    sha256: str  # hex
    mtime_ns: int  # its modification time when it was read (unchanged through the read)


def stream_file(path: Path, *, keep: bool) -> Streamed:
    """Read ``path`` once, hashing as it streams; return its bytes (if ``keep``), size, sha256
    and modification time.

    Raises :class:`CheckpointError` when the file changes while it is read (size, mtime or inode
    differ before and after, or the read ends early or runs long): it is still being written.
    """
    digest = hashlib.sha256()
    try:
        with _opening.open_file(path) as f:
            before = os.fstat(f.fileno())
            size = before.st_size
            buf = bytearray(size if keep else min(size, _CHUNK))
            view = memoryview(buf)
            pos = 0
            while pos < size:
                window = view[pos : pos + _CHUNK] if keep else view[: min(_CHUNK, size - pos)]
                n = f.readinto(window)
                if not n:
                    break
                digest.update(window[:n])
                pos += n
            view.release()
            longer = bool(f.read(1))
    except OSError as e:
        raise open_error(path, e) from None
    try:
        after: os.stat_result | None = _stat(path)
    except OSError:
        after = None
    same = after is not None and (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    if pos < size or longer or not same:
        raise _changed_error(path, before, after)
    return Streamed(buf if keep else None, size, digest.hexdigest(), before.st_mtime_ns)


def combine_fingerprints(parts: list[tuple[int, str]]) -> str:
    """``"<total bytes>:<sha256>"``: a file's own sha256, or for shards the sha256 of its lines."""
    total = sum(size for size, _ in parts)
    if len(parts) == 1:
        return f"{total}:{parts[0][1]}"
    lines = "".join(f"{size}:{hexdigest}\n" for size, hexdigest in parts)
    return f"{total}:{hashlib.sha256(lines.encode()).hexdigest()}"


def files_fingerprint(files: Sequence[Path]) -> str:
    """:func:`combine_fingerprints` of ``files`` (a checkpoint's file or shards, in order),
    each streamed and hashed, nothing kept."""
    parts = []
    for path in files:
        streamed = stream_file(path, keep=False)
        parts.append((streamed.size, streamed.sha256))
    return combine_fingerprints(parts)
