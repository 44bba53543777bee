"""Keeping freed memory in the process while an eNTK is computed (glibc only).

The engines allocate and free the same tensors over and over: every call of a row source
allocates its activations, gradients and rows, and frees them before the next call. glibc's
``malloc`` returns the top of its heap to the system once more than its trim threshold is free
there (64 MiB once its dynamic rule has adjusted, 128 KiB before), so each call faults its memory
in again, a page at a time, each page zeroed by the kernel. Measured on a 2-core CPU (resnet20,
n = 256, reference engine; one run each, not a committed script): 3.5 million page faults and
7.3 s of system time in a 15.1 s kernel; with freed memory kept, 1.5 million and 3.3 s, and an
11.2 s kernel at about the same peak resident memory (4.25 GB against 4.12).

:func:`kept_freed_memory` raises the trim threshold to 2 GiB - 1 (``mallopt`` takes an ``int``)
and fixes the ``mmap`` threshold at 32 MiB (the ceiling of glibc's dynamic rule, which a process
that has freed a large tensor has reached anyway) for the duration of a block, so freed heap
memory is reused instead of returned. Allocations above 32 MiB still get their own ``mmap``:
served from the heap they would not be reused either (PyTorch asks for 64-byte alignment, and
glibc cannot fit such a request into a freed chunk of the same size), and the heap would grow
with every one (the torch.func baseline at resnet20, n = 1024, was killed for memory that way).
On leaving the outermost such block the trim threshold goes back to 64 MiB and the free memory
is returned to the system (``malloc_trim(0)``), so the process's resident memory after the
computation is what it would have been.

Nothing happens where ``malloc`` is not glibc's (macOS, Windows, musl), or where the user chose
glibc's malloc settings themselves (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_`` or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``): their choice stands.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["kept_freed_memory"]

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The mmap threshold: glibc's dynamic rule's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), held
# and restored. The trim threshold: the largest value mallopt's int takes while held; restored to
# what the dynamic rule sets beside its ceiling (twice the mmap threshold).
_MMAP = 32 * 2**20
_HELD = 2**31 - 1
_RESTORED_TRIM = 64 * 2**20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc() -> Any | None:
    """glibc's C library with ``mallopt`` and ``malloc_trim``, or None elsewhere."""
    if os.name != "posix":  # pragma: no cover - Windows
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version  # glibc only
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - macOS, musl
        return None
    version.restype = ctypes.c_char_p
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def applies() -> bool:
    """Whether :func:`kept_freed_memory` changes anything in this process: glibc's malloc, and no
    malloc setting of the user's in the environment."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return _glibc() is not None


@contextmanager
def kept_freed_memory() -> Iterator[None]:
    """Keep memory freed inside the block for reuse by the process (see the module docstring).

    Blocks nest (a run's loop around each kernel's computation); the settings change on entering
    the outermost block and are put back, with the free memory returned, on leaving it.
    """
    global _depth
    libc = _glibc() if applies() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _HELD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _MMAP)
                libc.mallopt(_M_TRIM_THRESHOLD, _RESTORED_TRIM)
                libc.malloc_trim(0)
