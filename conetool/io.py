"""Atomic file writes: every file conetool writes appears whole or not at all.

Each writer writes to a temporary name in the target's directory, flushes it to disk and renames it
into place (``os.replace`` is atomic on POSIX and Windows within one file system), then flushes
the directory too on POSIX (:func:`_fsync_dir`: the rename is an entry of the directory, and
without it a power loss may bring back the old file, or none); a folder created for it is
flushed into its parent the same way (:func:`create_dirs`). When the write
fails because the file system is full, read-only or not writable by this user, the temporary file
is removed, the file in place (if any) is untouched, and a :class:`~conetool.errors.StoreError`
names the path (and, for a full disk, the space needed): see :func:`write_error`. A safetensors
file is the same bytes for the same tensors and metadata, whichever process writes it
(:func:`_sort_metadata`).
"""

from __future__ import annotations

import csv
import errno
import io as _io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save, save_file

from .errors import StoreError
from .units import format_bytes

#: safetensors' dtype codes (a file header's ``dtype``) -> torch dtypes
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in [
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("C64", "complex64"),
]:
    if hasattr(torch, _attr):  # newer dtypes, absent from older torch builds
        SAFETENSORS_DTYPES[_name] = getattr(torch, _attr)

# The errors of a file system that cannot take a write: full, over quota, read-only, not ours.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_error(path: Path, exc: OSError, needed: int | None = None) -> StoreError | None:
    """The one-paragraph error for an ``OSError`` met while writing ``path``, or None when it is
    not a full, read-only or forbidden file system, a file in the way of a folder or a folder in
    the way of the file (then it is a bug, and keeps its traceback).

    ``needed`` is the size of what was being written, when known, for the full-disk message.
    """
    where = os_error_path(exc) or Path(path)
    if exc.errno in NO_SPACE:
        free = _free_space(where)
        size = f"about {format_bytes(needed)} is needed" if needed else "more space is needed"
        left = f", {format_bytes(free)} is free there" if free is not None else ""
        return StoreError(
            f"no space left on the device while writing {path} ({size}{left}). Nothing was "
            "corrupted: every file conetool writes appears whole or not at all, and what was "
            "already written is kept. Free some space (or write to another directory) and rerun: "
            "the rerun continues from what is there (conetool train: with --resume)."
        )
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # a folder to make where a file is
        if (link := dangling_link(where)) is not None:
            return StoreError(
                f"cannot write {path}: {link} is a symbolic link to {os.readlink(link)}, which "
                "does not exist. Nothing was changed. Create the folder it points to (mkdir -p "
                f"'{link.resolve()}'), or choose another path (another --store / --out), or "
                "remove the link, and rerun."
            )
        blocking = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return StoreError(
                f"cannot write {path}: {blocking} is a file, not a folder. Nothing was changed. "
                "Choose a path whose folders are folders (another --store / --out), or move "
                f"{blocking} away and rerun."
            )
        return None
    if exc.errno == errno.ENAMETOOLONG:  # (a path given on the command line, 5,000 letters)
        shown = (
            str(path)
            if len(str(path)) <= 200
            else f"{str(path)[:200]}... ({len(str(path))} characters)"
        )
        return StoreError(
            f"cannot use {shown}: a name in it is longer than the file system allows "
            f"({exc.strerror}). Nothing was changed. Choose a shorter path (another --store / "
            "--out / CKPTS) and rerun."
        )
    if exc.errno == errno.EISDIR and Path(path).is_dir():  # a file to write where a folder is
        return StoreError(
            f"cannot write {path}: a folder of that name is there, where conetool writes a "
            "file. Nothing was changed. Move or rename that folder (or choose another --store / "
            "--out) and rerun."
        )
    if exc.errno in NOT_WRITABLE:
        why = "is on a read-only file system" if exc.errno == errno.EROFS else "is not writable"
        return StoreError(
            f"cannot write {path}: {where} {why} ({exc.strerror}). Nothing was changed. Make the "
            "directory writable, or copy it somewhere writable (or choose another --store / "
            "--out) and rerun there; commands that only read a store never write to it."
        )
    return None


def dangling_link(path: Path) -> Path | None:
    """The first of ``path`` and its parents that is a symbolic link to nothing (a folder
    removed, a disk not mounted), where making the folder fails with ``FileExistsError``; None
    when there is none."""
    return next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)


def said_os_error(exc: OSError) -> StoreError | None:
    """The one paragraph the command line says for an ``OSError`` met outside conetool's own
    writers (:func:`write_error` at the path it names), or None when it is a bug, which keeps
    its traceback. (Under torchrun, a rank ending on one that has a paragraph said it itself.)"""
    return write_error(os_error_path(exc) or Path("."), exc)


def os_error_path(exc: OSError) -> Path | None:
    """The path an ``OSError`` names, or None: its ``filename`` may be a str, bytes (decoded as
    the file system does, :func:`os.fsdecode`), a path-like, or a file descriptor (an int, from
    ``os.fdopen``, ``os.fstat`` and the like), which names no path."""
    name = exc.filename
    if isinstance(name, (str, bytes, os.PathLike)) and name:
        return Path(os.fsdecode(name))
    return None


def make_dir(folder: Path) -> None:
    """Create ``folder`` (and its parents) if missing, durably (:func:`create_dirs`); a full,
    read-only or forbidden file system is the one-paragraph :func:`write_error`, anything else
    keeps its traceback."""
    if folder.is_dir():
        return
    try:
        create_dirs(folder)
    except OSError as exc:
        error = write_error(folder, exc)
        if error is None:
            raise
        raise error from exc


def create_dirs(folder: Path) -> None:
    """Create ``folder`` and any missing parents (as ``mkdir(parents=True, exist_ok=True)``),
    and flush the parent of each folder this call created (:func:`_fsync_dir`): a new folder is
    an entry of its parent, and without that flush a power loss may take it away with the files
    renamed (and flushed) into it. A folder that was there, or that another process created
    meanwhile, is left alone. Raises ``OSError`` as ``mkdir`` does."""
    folder = Path(folder)
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    for candidate in reversed(missing):  # the outermost first
        try:
            candidate.mkdir()
        except FileExistsError:
            if not candidate.is_dir():
                raise
            continue  # made meanwhile by another process, which flushes it
        _fsync_dir(candidate.parent)


def _free_space(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


@contextmanager
def _atomic_path(path: Path, needed: int | None = None) -> Iterator[Path]:
    try:
        with _atomic_path_raw(path) as tmp:
            yield tmp
    except OSError as exc:
        error = write_error(path, exc, needed)
        if error is None:
            raise
        raise error from exc


@contextmanager
def _atomic_path_raw(path: Path) -> Iterator[Path]:
    if not path.parent.is_dir():
        create_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600; give the mode open() would. After the write: some writers
        # (safetensors' save_file) replace the temporary file instead of writing into it.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: The errors of a directory fsync that the platform or file system does not support.
_NO_DIR_FSYNC = (
    errno.EINVAL,
    errno.EBADF,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTSUP,
    errno.EOPNOTSUPP,
)


def _fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss (POSIX
    makes the file's data durable with its own fsync, its name only with the directory's). Skipped
    where a directory cannot be opened or flushed (Windows; some network file systems)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object], *, needed: int | None = None) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``.

    Raises:
        StoreError: the file system is full (``needed``: the bytes being written, for the
            message), read-only or not writable; ``path`` is left as it was.
    """
    with _atomic_path(Path(path), needed) as tmp:
        write(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, as :func:`atomic_write` does, but into the
    temporary file's own descriptor: one file made, written, given its mode and flushed, then
    renamed into place and its directory flushed (:func:`atomic_write` with a writer that opens
    the file by name makes it, reopens it to flush it, and for safetensors' ``save_file``
    replaces it with another file: three more opens, and another inode, per write).

    Raises:
        StoreError: the file system is full, read-only or not writable; ``path`` is left as
            it was.
    """
    path = Path(path)
    try:
        _atomic_bytes_raw(path, data)
    except OSError as exc:
        error = write_error(path, exc, len(data))
        if error is None:
            raise
        raise error from exc


def _atomic_bytes_raw(path: Path, data: bytes) -> None:
    if not path.parent.is_dir():
        create_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode open() would
                os.fchmod(fd, 0o666 & ~_UMASK)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not hasattr(os, "fchmod"):
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """CSV with ``header`` then one line per row (a sequence in header order, or a mapping by
    column), ``\n`` line ends; numbers as ``str`` gives them (``repr`` for floats)."""
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row[k] for k in header] if isinstance(row, Mapping) else row)
    return buffer.getvalue()


def atomic_write_csv(
    path: Path, header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]
) -> Path:
    """Write :func:`csv_text` of ``header`` and ``rows`` to ``path`` atomically; returns it."""
    atomic_write_text(Path(path), csv_text(header, rows))
    return Path(path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """Plain JSON data: numpy scalars to Python numbers, non-finite floats to ``None``."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as strict, indented JSON (see :func:`json_safe`) atomically."""
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    atomic_write_text(path, text)


def atomic_save_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save ``tensors`` (made contiguous; shared storage is copied) as safetensors, atomically,
    with the same bytes for the same tensors and metadata (:func:`_sort_metadata`), whether they
    are serialized in memory (up to :data:`IN_MEMORY_MAX` bytes: a kernel of n up to 4,096 in
    float32) or by ``save_file``."""
    flat = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    needed = sum(t.numel() * t.element_size() for t in flat.values())
    if needed <= IN_MEMORY_MAX:  # serialized in memory, written through one descriptor
        atomic_write_bytes(path, _sorted_metadata(save(flat, metadata=dict(metadata or {}))))
        return

    def write(tmp: Path) -> None:
        try:
            save_file(flat, str(tmp), metadata=dict(metadata or {}))
        except SafetensorError as exc:  # an I/O error from the Rust writer: keep its errno
            match = re.search(r"os error (\d+)", str(exc))
            if match is None:
                raise
            code = int(match.group(1))
            raise OSError(code, os.strerror(code), str(tmp)) from exc
        _sort_metadata(tmp)

    atomic_write(path, write, needed=needed)


#: :func:`atomic_save_safetensors` serializes tensors of up to this many bytes in memory (one more
#: copy of them) and writes the bytes through the temporary file's descriptor; larger ones are
#: written by safetensors' ``save_file`` straight to the file, their header sorted in place.
IN_MEMORY_MAX = 64 * 2**20


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a whole safetensors file) with its ``__metadata__`` keys sorted, as
    :func:`_sort_metadata` rewrites a file."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or len(meta) < 2:
        return data
    header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:  # cannot happen for the same keys and values; leave it unsorted
        return data
    return b"".join((data[:8], text.ljust(size, b" "), memoryview(data)[8 + size :]))


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of the safetensors file ``path`` in place with its ``__metadata__``
    keys sorted: the Rust writer keeps them in a hash map whose order changes from one process to
    the next, so the same checkpoint saved twice (a retrained run, a kernel recomputed) had other
    bytes, another sha256 and so another fingerprint. The tensors' entries (already in a fixed
    order) and the data are left as they are; the header keeps its length (padded with spaces,
    as the writer pads it), so the data's offsets do not move."""
    with open(path, "rb+") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:  # cannot happen for the same keys and values; leave it unsorted
            return
        handle.seek(8)
        handle.write(text.ljust(size, b" "))


# ------------------------------------------------- what a killed atomic write leaves
def temporaries_of(name: str) -> re.Pattern[str]:
    """The names of the temporary files that an atomic write here of a file named like the regex
    ``name`` makes (``tempfile.mkstemp``'s prefix ``.NAME.``, random letters, digits or ``_``,
    ``.tmp``): ``.step_000100.safetensors.x1y2.tmp`` for ``step_\\d+\\.safetensors``."""
    return re.compile(rf"\.(?:{name})\.[A-Za-z0-9_]+\.tmp")


def remove_temporaries(folder: Path, pattern: re.Pattern[str]) -> None:
    """Unlink the regular files directly in ``folder`` whose names match ``pattern`` (of
    :func:`temporaries_of`: what a writer killed midway left): no symlink, nothing nested. No
    folder, or one that cannot be read or written: nothing (left for a writer that can)."""
    try:
        with os.scandir(folder) as entries:
            leftovers = [
                Path(entry.path)
                for entry in entries
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            ]
    except OSError:
        return
    for leftover in leftovers:
        try:
            leftover.unlink(missing_ok=True)
        except OSError:
            return  # a read-only folder
