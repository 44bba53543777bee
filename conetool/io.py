"""Atomic file writes: every file conetool writes appears whole or not at all.

Each writer writes to a temporary name in the target's directory, flushes it to disk and renames it
into place (``os.replace`` is atomic on POSIX and Windows within one file system).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
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
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` to fill a temporary file, then rename it to ``path``."""
    with _atomic_path(Path(path)) as tmp:
        write(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


def format_bytes(size: float, digits: int = 1) -> str:
    """``size`` bytes in a short human form: ``"84.4 KiB"``, ``"1.5 GiB"``, ``"512 B"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.{digits}f} {unit}"
    return f"{int(size)} B"


def atomic_save_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Save ``tensors`` (made contiguous; shared storage is copied) as safetensors, atomically."""
    flat = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, str(tmp), metadata=dict(metadata or {})))
