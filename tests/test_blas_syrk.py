"""BLAS syrk read in place (:mod:`conetool.blas_syrk`) against a float64 matrix product, through
each BLAS this machine has (PyTorch's MKL, SciPy's), and the choice between them."""

from __future__ import annotations

import platform
import sys

import pytest
import torch
from benchmark_module import load_benchmark

from conetool import blas_syrk

pytestmark = pytest.mark.skipif(not blas_syrk.available(), reason="needs a BLAS syrk")

BACKENDS = [
    pytest.param(
        "mkl",
        marks=pytest.mark.skipif(
            blas_syrk._mkl_routines() is None, reason="PyTorch without MKL's syrk"
        ),
    ),
    pytest.param(
        "scipy",
        marks=pytest.mark.skipif(blas_syrk._scipy_routines() is None, reason="needs SciPy"),
    ),
]


@pytest.mark.parametrize("using", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("step", [1, 7, 64, 512, 10_000])
def test_gram_of_a_column_slice_in_pieces(using: str, dtype: torch.dtype, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    wide = torch.randn(37, 1000, generator=gen, dtype=dtype)
    mat = wide[3:, 100:613]  # rows with a leading dimension of 1000, not 513
    want = mat.double() @ mat.double().T
    got = blas_syrk.gram(mat, step, using=using)
    assert got.dtype == torch.float64 and got.shape == (34, 34)
    assert torch.equal(got, got.T)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert float((got - want).abs().max() / want.abs().max()) < tol
    # The memory beside the slice was read by no piece: a change there changes nothing.
    wide[:, :100] = float("nan")
    wide[:, 613:] = float("nan")
    assert torch.equal(blas_syrk.gram(mat, step, using=using), got)


@pytest.mark.parametrize("using", BACKENDS)
def test_gram_of_rows_that_are_not_contiguous_and_of_empty_matrices(using: str) -> None:
    mat = torch.randn(20, 9).T  # stride(1) != 1: copied
    got = blas_syrk.gram(mat, 4, using=using)
    assert torch.allclose(got, mat.double() @ mat.double().T, atol=1e-5)
    assert blas_syrk.gram(torch.zeros(3, 0), 4, using=using).eq(0).all()
    with pytest.raises(ValueError, match="float32 or float64"):
        blas_syrk.gram(torch.zeros(3, 3, dtype=torch.float16), 4, using=using)


@pytest.mark.parametrize("using", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_gram_with_each_thread_count(using: str, threads: int) -> None:
    """Large enough for the BLAS to split the work between threads; the result is the same."""
    gen = torch.Generator().manual_seed(threads)
    mat = torch.randn(300, 5000, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = blas_syrk.gram(mat, 2048, using=using)
    finally:
        torch.set_num_threads(before)
    want = mat.double() @ mat.double().T
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


def test_scipys_blas_comes_first() -> None:
    """The contraction's syrk goes through SciPy's BLAS where it is there: the whole kernel ran
    faster than through MKL on both CPUs measured (README "Benchmarks")."""
    if blas_syrk._scipy_routines() is None:
        pytest.skip("needs SciPy")
    assert blas_syrk.backend() == "scipy"


@pytest.mark.skipif(
    not (
        sys.platform == "linux"
        and platform.machine() in ("x86_64", "AMD64")
        and torch.backends.mkl.is_available()
    ),
    reason="PyTorch's MKL is linked in on x86-64 Linux",
)
def test_pytorchs_mkl_is_used_where_scipys_blas_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On x86-64 Linux PyTorch's wheels link MKL, whose syrk the contraction uses where SciPy's
    pointers are missing."""
    assert blas_syrk._mkl_routines() is not None
    monkeypatch.setattr(blas_syrk, "_scipy_routines", lambda: None)
    assert blas_syrk.backend() == "mkl"
    mat = torch.randn(10, 50)
    got = blas_syrk.gram(mat, 16)
    assert torch.allclose(got, mat.double() @ mat.double().T, atol=1e-5)


def test_the_cpu_vendor_is_read_from_cpuinfo() -> None:
    # (what benchmarks/bench_ntk_parts.py prints beside its timings)
    vendor_in = load_benchmark("bench_ntk_parts").vendor_in
    lines = [
        "processor\t: 0\n",
        "vendor_id\t: AuthenticAMD\n",
        "cpu family\t: 25\n",
        "processor\t: 1\n",
        "vendor_id\t: AuthenticAMD\n",
    ]
    assert vendor_in(lines) == "AuthenticAMD"
    assert vendor_in(["vendor_id : GenuineIntel"]) == "GenuineIntel"
    assert vendor_in(["processor\t: 0\n", "vendor_id\t:\n"]) is None  # (ARM: none)
    assert vendor_in([]) is None


def test_an_mkl_syrk_that_fails_the_check_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check runs a small syrk through MKL and compares it with a float64 product: a routine
    that computes something else (here: nothing, leaving zeros) is never used."""

    def nothing(*args: object) -> None:
        return None

    wrong = blas_syrk._SIGNATURE(nothing)
    monkeypatch.setattr(
        blas_syrk, "_mkl_routines", lambda: {torch.float32: wrong, torch.float64: wrong}
    )
    monkeypatch.setattr(blas_syrk, "_scipy_routines", lambda: None)  # (else SciPy's serves)
    blas_syrk._mkl_checked.cache_clear()
    try:
        assert not blas_syrk._mkl_checked()
        assert blas_syrk.backend() is None
    finally:
        monkeypatch.undo()
        blas_syrk._mkl_checked.cache_clear()


def test_no_mkl_falls_back_to_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    if blas_syrk._scipy_routines() is None:
        pytest.skip("needs SciPy")
    monkeypatch.setattr(blas_syrk, "_mkl_routines", lambda: None)
    blas_syrk._mkl_checked.cache_clear()
    try:
        assert blas_syrk.backend() == "scipy"
        mat = torch.randn(10, 50)
        got = blas_syrk.gram(mat, 16)
        assert torch.allclose(got, mat.double() @ mat.double().T, atol=1e-5)
    finally:
        monkeypatch.undo()
        blas_syrk._mkl_checked.cache_clear()
