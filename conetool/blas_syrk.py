"""``mat @ mat.T`` of a row-major CPU matrix with BLAS ``syrk`` (half the work of a product), read
in place.

A C-contiguous ``(m, w)`` matrix is, to Fortran BLAS, a column-major ``(w, m)`` matrix ``A`` with
leading dimension ``w``, and ``mat @ mat.T = A^T A``, which ``syrk`` computes with
``trans = "T"``. A piece of columns ``lo:hi`` of ``mat`` is the rows ``lo:hi`` of ``A``: a pointer
into the same memory with the same leading dimension, so no piece is copied. SciPy's f2py
wrappers (``scipy.linalg.blas.ssyrk``) would copy every piece into a contiguous array, and
allocate a new ``(m, m)`` result for each; here one float32 result buffer is reused and added into
a float64 sum after each piece.

The routines are SciPy's (``scipy.linalg.cython_blas``, the BLAS that SciPy itself links; SciPy
comes with scikit-learn), called through the function pointers that module exports for C code.
ctypes releases the GIL during each call. SciPy's BLAS has its own thread pool, set to torch's
thread count for each call.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "gram"]

# void ?syrk(char *uplo, char *trans, int *n, int *k, T *alpha, T *a, int *lda, T *beta, T *c,
#            int *ldc): every argument by pointer (Fortran).
_SIGNATURE = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 10))


@functools.cache
def _routines() -> tuple[dict[torch.dtype, Callable[..., None]], Any] | None:
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
        routines: dict[torch.dtype, Callable[..., None]] = {}
        for dtype, name in ((torch.float32, "ssyrk"), (torch.float64, "dsyrk")):
            capsule = capi[name]
            routines[dtype] = _SIGNATURE(get_pointer(capsule, get_name(capsule)))
    except (ImportError, AttributeError, KeyError, ValueError):  # pragma: no cover
        return None
    return routines, ThreadpoolController()


def available() -> bool:
    """Whether :func:`gram` can run (SciPy's BLAS routines were found)."""
    return _routines() is not None


def gram(mat: Tensor, step: int) -> Tensor:
    """``mat @ mat.T`` ``(m, m)`` in float64, exactly symmetric, for a float32 or float64 CPU
    matrix ``mat`` ``(m, w)`` whose rows are contiguous (``mat.stride(1) == 1``).

    Computed in pieces of ``step`` columns (one ``syrk`` each, in ``mat``'s dtype), whose upper
    triangles are summed in float64.
    """
    found = _routines()
    if found is None:  # pragma: no cover - callers check available()
        raise RuntimeError("SciPy's BLAS syrk is not available")
    routines, threads = found
    if mat.dtype not in routines or mat.device.type != "cpu" or mat.dim() != 2:
        raise ValueError(f"gram needs a float32 or float64 CPU matrix, got {mat.dtype} {mat.shape}")
    if mat.stride(1) != 1:
        mat = mat.contiguous()
    syrk = routines[mat.dtype]
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
    n_arg, ld_arg, ldc_arg = ctypes.c_int(m), ctypes.c_int(lda), ctypes.c_int(m)
    base = mat.data_ptr()
    size = mat.element_size()
    with threads.limit(limits=torch.get_num_threads(), user_api="blas"):
        for lo in range(0, width, step):
            k_arg = ctypes.c_int(min(step, width - lo))
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
