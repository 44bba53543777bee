"""``mat @ mat.T`` of a row-major CPU matrix with BLAS ``syrk`` (half the work of a product), read
in place.

A C-contiguous ``(m, w)`` matrix is, to Fortran BLAS, a column-major ``(w, m)`` matrix ``A`` with
leading dimension ``w``, and ``mat @ mat.T = A^T A``, which ``syrk`` computes with
``trans = "T"``. A piece of columns ``lo:hi`` of ``mat`` is the rows ``lo:hi`` of ``A``: a pointer
into the same memory with the same leading dimension, so no piece is copied. SciPy's f2py
wrappers (``scipy.linalg.blas.ssyrk``) would copy every piece into a contiguous array, and
allocate a new ``(m, m)`` result for each; here one result buffer is reused and added into a
float64 sum after each piece.

Two BLAS libraries can serve, called through ctypes (which releases the GIL during each call):

- ``"mkl"``: the MKL that PyTorch links into ``libtorch_cpu`` on x86, whose ``syrk`` driver
  (``mkl_blas_ssyrk`` / ``mkl_blas_dsyrk``, Fortran calling convention) the library exports; its
  threads are PyTorch's (``torch.set_num_threads`` sets MKL's). Used only after a check in this
  process: a small ``syrk`` through it must agree with a float64 product (:func:`_mkl_checked`).
  On the 2-core AVX-512 CPU of the README's benchmarks it ran the contraction's pieces (1,024 rows
  of 32,768 columns) at 211-258 GFLOP/s where SciPy's ran at 160-219, and ResNet-20's contraction
  at n = 1024 in 11.75 s against 13.34 s (``benchmarks/bench_ntk_parts.py``, README
  "Benchmarks"). The fallback where SciPy's pointers are missing.
- ``"scipy"``: the BLAS SciPy links (OpenBLAS in SciPy's wheels; SciPy comes with scikit-learn),
  through the function pointers ``scipy.linalg.cython_blas`` exports for C code; its own thread
  pool, set to torch's thread count for each call.

Which one (:func:`backend`): SciPy's, where it is there, else MKL. Through MKL the contraction
itself ran faster on one CPU and slower on another, but the whole kernel ran slower on both: the
rows computed between two contractions took longer after MKL's ``syrk``. ResNet-20 at n = 1024
under 4 GiB (``benchmarks/bench_ntk_parts.py``, README "Benchmarks"): on the README's first
2-core AVX-512 CPU 37.32 s through MKL against 36.41 s through SciPy (contraction 11.75 s against
13.34 s, rows 23.49 s against 21.22 s); on a 2-core AMD EPYC 50.28 s against 42.67 s (contraction
23.56 s against 18.82 s, rows 23.82 s against 21.39 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "backend", "gram"]

# void ?syrk(char *uplo, char *trans, int *n, int *k, T *alpha, T *a, int *lda, T *beta, T *c,
#            int *ldc): every argument by pointer (Fortran).
_SIGNATURE = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 10))

Routines = dict[torch.dtype, Callable[..., None]]


@functools.cache
def _scipy_routines() -> tuple[Routines, Any] | None:
    """dtype -> SciPy's ``ssyrk``/``dsyrk`` as ctypes functions, and a controller of its BLAS
    threads; None when SciPy or its exported pointers are missing."""
    try:
        from scipy.linalg import cython_blas
        from threadpoolctl import ThreadpoolController

        capi = cython_blas.__pyx_capi__
        get_name = ctypes.pythonapi.PyCapsule_GetName
        get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
        get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        get_pointer.restype = ctypes.c_void_p
        get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        routines: Routines = {}
        for dtype, name in ((torch.float32, "ssyrk"), (torch.float64, "dsyrk")):
            capsule = capi[name]
            routines[dtype] = _SIGNATURE(get_pointer(capsule, get_name(capsule)))
    except (ImportError, AttributeError, KeyError, ValueError):  # pragma: no cover
        return None
    return routines, ThreadpoolController()


@functools.cache
def _mkl_routines() -> Routines | None:
    """dtype -> MKL's ``syrk`` drivers in PyTorch's ``libtorch_cpu``, or None where that library
    exports none (a build without MKL) or integers could be read at the wrong width.

    The integer arguments are passed as 64-bit values: MKL reads them whole (ILP64) or their
    first 4 bytes (LP64), which on a little-endian machine is the same number below 2**31."""
    if sys.byteorder != "little" or not torch.backends.mkl.is_available():
        return None
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        library = ctypes.CDLL(path)  # already loaded by torch: the same handle
        routines: Routines = {
            torch.float32: _SIGNATURE(("mkl_blas_ssyrk", library)),
            torch.float64: _SIGNATURE(("mkl_blas_dsyrk", library)),
        }
    except (OSError, AttributeError):  # not Linux, or no such symbols
        return None
    return routines


@functools.cache
def _mkl_checked() -> bool:
    """Whether MKL's ``syrk`` drivers are there and give, for a small float32 and float64 matrix
    read in place (a leading dimension wider than the piece, several pieces), what a float64
    product gives. Run once per process."""
    routines = _mkl_routines()
    if routines is None:
        return False
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        wide = torch.randn(67, 400, generator=gen, dtype=dtype)
        mat = wide[:, 5:333]
        want = mat.double() @ mat.double().T
        got = _gram(mat, 100, routines[dtype], None, ctypes.c_int64)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        if not bool(((got - want).abs().max() <= tol * want.abs().max()).item()):
            return False
    return True


def backend() -> str | None:
    """The BLAS :func:`gram` uses: ``"scipy"`` where SciPy's pointers are there, else ``"mkl"``
    (PyTorch's, checked), else None (module docstring)."""
    if _scipy_routines() is not None:
        return "scipy"
    if _mkl_checked():
        return "mkl"
    return None


def available() -> bool:
    """Whether :func:`gram` can run (a BLAS ``syrk`` was found)."""
    return backend() is not None


def gram(mat: Tensor, step: int, using: str | None = None) -> Tensor:
    """``mat @ mat.T`` ``(m, m)`` in float64, exactly symmetric, for a float32 or float64 CPU
    matrix ``mat`` ``(m, w)`` whose rows are contiguous (``mat.stride(1) == 1``).

    Computed in pieces of ``step`` columns (one ``syrk`` each, in ``mat``'s dtype), whose upper
    triangles are summed in float64. ``using``: ``"mkl"`` or ``"scipy"`` (default: :func:`backend`).
    """
    using = using or backend()
    if (
        mat.dtype not in (torch.float32, torch.float64)
        or mat.device.type != "cpu"
        or mat.dim() != 2
    ):
        raise ValueError(f"gram needs a float32 or float64 CPU matrix, got {mat.dtype} {mat.shape}")
    if using == "mkl":
        mkl = _mkl_routines()
        if mkl is None:
            raise RuntimeError("PyTorch's MKL syrk is not available")
        return _gram(mat, step, mkl[mat.dtype], None, ctypes.c_int64)
    found = _scipy_routines()
    if using != "scipy" or found is None:
        raise RuntimeError("no BLAS syrk is available")
    routines, threads = found
    return _gram(mat, step, routines[mat.dtype], threads, ctypes.c_int)


def _gram(
    mat: Tensor, step: int, syrk: Callable[..., None], threads: Any, integer: type[Any]
) -> Tensor:
    """:func:`gram` with one routine; ``threads``: SciPy's thread-pool controller, or None where
    the routine's threads are PyTorch's (MKL); ``integer``: the ctypes type of its integer
    arguments (64-bit for MKL, see :func:`_mkl_routines`)."""
    if mat.stride(1) != 1:
        mat = mat.contiguous()
    m, width = mat.shape
    lda = max(1, mat.stride(0))
    total = torch.zeros(m, m, dtype=torch.float64)
    if m == 0 or width == 0:
        return total
    # The result, column-major (m, m) with its upper triangle set: row-major, the lower triangle.
    # syrk leaves the other triangle as it is (zeros), so each piece adds one triangle.
    out = torch.zeros(m, m, dtype=mat.dtype)
    scalar = ctypes.c_float if mat.dtype == torch.float32 else ctypes.c_double
    one, zero = scalar(1.0), scalar(0.0)
    n_arg, ld_arg, ldc_arg = integer(m), integer(lda), integer(m)
    base = mat.data_ptr()
    size = mat.element_size()
    limit = (
        threads.limit(limits=torch.get_num_threads(), user_api="blas")
        if threads is not None
        else contextlib.nullcontext()
    )
    with limit:
        for lo in range(0, width, step):
            k_arg = integer(min(step, width - lo))
            syrk(
                ctypes.c_char_p(b"U"),
                ctypes.c_char_p(b"T"),
                ctypes.byref(n_arg),
                ctypes.byref(k_arg),
                ctypes.byref(one),
                ctypes.c_void_p(base + lo * size),
                ctypes.byref(ld_arg),
                ctypes.byref(zero),
                ctypes.c_void_p(out.data_ptr()),
                ctypes.byref(ldc_arg),
            )
            total += out
    return total + total.tril(-1).T
