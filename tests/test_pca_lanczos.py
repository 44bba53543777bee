"""embed --method pca from ARPACK's top eigenpairs and the bound of conetool.negative_bound:
the dense path's coordinates (up to axis signs) and ratios (to RATIO_TOLERANCE, and to 1e-10 for
kernels) where it is taken; the dense path, its result and its refusal, everywhere else."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from synthetic_s import drifting_kernels_s
from test_lanczos_top import _counting_dense

import conetool.embedding as embedding
from conetool.embedding import RATIO_TOLERANCE, _classical_from_b, _double_center, embed_pca
from conetool.geometry import GeometryError
from conetool.lanczos_top import lanczos_top


def _dense(s: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """embed_pca's result before the ARPACK path (the dense path, with the refusal)."""
    return _classical_from_b(_double_center(-0.5 * (s + s.T)), dims, only_psd=True)


def _same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    """Coordinates to 1e-10 of their scale (the orientation rule picks the same signs), ratios
    to RATIO_TOLERANCE (proven) and to 1e-10 (the S matrices here are of kernels)."""
    scale = float(np.max(np.abs(want[0])))
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-10 * scale)
    assert np.all(np.abs(got[1] / want[1] - 1.0) <= RATIO_TOLERANCE)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10, atol=0)
    assert got[1].sum() <= 1.0


def test_pca_at_1000_kernels_makes_no_dense_reduction(monkeypatch: pytest.MonkeyPatch) -> None:
    """From LANCZOS_MIN_K kernels on pca no longer reduces B to tridiagonal form (nor calls
    np.linalg.eigh) where the checks pass; it did before, as mds did."""
    s = drifting_kernels_s(1000, seed=21)
    want = _dense(s, 2)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("dense path taken")

    monkeypatch.setattr(embedding, "_tridiagonal_top", refuse)
    monkeypatch.setattr(np.linalg, "eigh", refuse)
    got = embed_pca(s, dims=2)
    _same(got, want)
    again = embed_pca(s, dims=2)  # deterministic
    np.testing.assert_array_equal(again[0], got[0])
    np.testing.assert_array_equal(again[1], got[1])


def _points_on_a_line(count: int) -> np.ndarray:
    """Unit kernels along a great circle's arc, unevenly (so that the orientation rule's
    largest entry is not a tie): B of rank 1 up to rounding."""
    angles = 0.5 * np.linspace(0.0, 1.0, count) ** 2
    units = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return 1.0 - units @ units.T


@pytest.mark.parametrize("count", [60, 250, 1000])
@pytest.mark.parametrize(
    ("name", "make", "dims"),
    [
        ("trajectory", lambda n: drifting_kernels_s(n, seed=n + 2), 2),
        ("trajectory, 3 dims", lambda n: drifting_kernels_s(n, seed=n + 3), 3),
        ("trajectory, 1 dim", lambda n: drifting_kernels_s(n, seed=n + 4), 1),
        ("an arc: all the variance on one axis", _points_on_a_line, 1),
    ],
)
def test_pca_by_arpack_is_the_dense_paths(
    count: int,
    name: str,
    make: Callable[[int], np.ndarray],
    dims: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LANCZOS_MIN_K lowered to the size: the ARPACK path is taken (no dense reduction) and
    gives the dense path's coordinates and ratios; on the arc (ratio 1 up to rounding) the
    ratio stays at most 1."""
    s = make(count)
    want = _dense(s, dims)
    monkeypatch.setattr(embedding, "LANCZOS_MIN_K", count)
    calls = _counting_dense(monkeypatch)
    got = embed_pca(s, dims=dims)
    assert calls == []
    _same(got, want)


def _symmetric_noise(count: int, seed: int) -> np.ndarray:
    upper = np.triu(np.random.default_rng(seed).uniform(-1.0, 1.0, (count, count)), 1)
    return upper + upper.T


def test_an_s_not_of_kernels_goes_to_the_dense_path_and_is_refused_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kernels' S plus noise of 1e-3: ARPACK's top eigenpairs pass their check, the
    factorisation fails (B is indefinite), and the dense path refuses it with the message it
    gave before."""
    s = drifting_kernels_s(1000, seed=22) + 1e-3 * _symmetric_noise(1000, seed=23)
    b = _double_center(-s)
    assert lanczos_top(0.5 * (b + b.T), 2) is not None
    with pytest.raises(GeometryError) as before:
        _dense(s, 2)
    calls = _counting_dense(monkeypatch)
    with pytest.raises(GeometryError) as now:
        embed_pca(s, dims=2)
    assert calls == [1000]
    assert str(now.value) == str(before.value)
    assert str(now.value).startswith("this S matrix is not that of any kernels")


def test_negative_eigenvalues_within_the_refusals_tolerance_take_the_dense_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Noise of 1e-10: negative eigenvalues beyond what the bound allows (about 1e-9 of the
    trace over K) but within NEGATIVE_TOLERANCE: the dense path, accepted, its result exactly."""
    s = drifting_kernels_s(1000, seed=24) + 1e-10 * _symmetric_noise(1000, seed=25)
    want = _dense(s, 2)
    calls = _counting_dense(monkeypatch)
    got = embed_pca(s, dims=2)
    assert calls == [1000]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_tied_top_eigenvalues_take_the_dense_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Points evenly on a circle (unit kernels in a plane): ARPACK's answer is refused."""
    angles = 2 * np.pi * np.arange(1000) / 1000
    units = np.stack([np.cos(angles), np.sin(angles), np.ones(1000)], axis=1) / np.sqrt(2)
    s = 1.0 - units @ units.T
    want = _dense(s, 2)
    calls = _counting_dense(monkeypatch)
    got = embed_pca(s, dims=2)
    assert calls == [1000]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
