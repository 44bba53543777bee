"""BLAS syrk read in place (:mod:`conetool.blas_syrk`) against a float64 matrix product."""

from __future__ import annotations

import pytest
import torch

from conetool import blas_syrk

pytestmark = pytest.mark.skipif(not blas_syrk.available(), reason="needs SciPy's BLAS")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("step", [1, 7, 64, 512, 10_000])
def test_gram_of_a_column_slice_in_pieces(dtype: torch.dtype, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    wide = torch.randn(37, 1000, generator=gen, dtype=dtype)
    mat = wide[3:, 100:613]  # rows with a leading dimension of 1000, not 513
    want = mat.double() @ mat.double().T
    got = blas_syrk.gram(mat, step)
    assert got.dtype == torch.float64 and got.shape == (34, 34)
    assert torch.equal(got, got.T)
    tol = 1e-14 if dtype == torch.float64 else 1e-6
    assert float((got - want).abs().max() / want.abs().max()) < tol
    # The memory beside the slice was read by no piece: a change there changes nothing.
    wide[:, :100] = float("nan")
    wide[:, 613:] = float("nan")
    assert torch.equal(blas_syrk.gram(mat, step), got)


def test_gram_of_rows_that_are_not_contiguous_and_of_empty_matrices() -> None:
    mat = torch.randn(20, 9).T  # stride(1) != 1: copied
    assert torch.allclose(blas_syrk.gram(mat, 4), mat.double() @ mat.double().T, atol=1e-5)
    assert blas_syrk.gram(torch.zeros(3, 0), 4).eq(0).all()
    with pytest.raises(ValueError, match="float32 or float64"):
        blas_syrk.gram(torch.zeros(3, 3, dtype=torch.float16), 4)
