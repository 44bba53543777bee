"""``embed_kernels`` against independent numpy references (no conetool helper in them): PCA of the
unit-norm kernels by an explicit SVD of the centred matrix, classical MDS of ``sqrt(2 S)`` by
``np.linalg.eigh``, Kruskal's stress-1 as the docstring and README define it, the orientation
rule, and the smallest K for each dims (the README's and DESIGN.md's definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from conetool.embedding import embed_kernels


def _psd_kernels(count: int, scales: np.ndarray, seed: int, n: int = 6) -> np.ndarray:
    """``(count, n, n)`` PSD kernels ``A A^T`` near a common one, kernel ``k`` scaled by
    ``scales[k]`` (S ignores the scale; the unit kernels do too)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, n + 2))
    out = []
    for k in range(count):
        a = base + 0.6 * rng.standard_normal((n, n + 2))
        out.append(scales[k] * (a @ a.T))
    return np.stack(out)


def _units_and_s(kernels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit kernels ``(K, n*n)`` and ``S = 1 - <u_i, u_j>`` ``(K, K)`` by the definition."""
    flat = kernels.reshape(kernels.shape[0], -1)
    units = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    s = 1.0 - units @ units.T
    np.fill_diagonal(s, 0.0)
    return units, 0.5 * (s + s.T)


def _kruskal_stress1(coords: np.ndarray, target: np.ndarray) -> float:
    """sqrt(sum_{i<j} (|x_i - x_j| - d_ij)^2 / sum_{i<j} d_ij^2), by a plain loop."""
    num = den = 0.0
    for i in range(coords.shape[0]):
        for j in range(i + 1, coords.shape[0]):
            fitted = float(np.sqrt(np.sum((coords[i] - coords[j]) ** 2)))
            num += (fitted - target[i, j]) ** 2
            den += target[i, j] ** 2
    return float(np.sqrt(num / den))


def _match_signs(found: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return reference * np.sign(np.sum(found * reference, axis=0))


CASES = [(3, 2), (4, 3), (25, 2), (25, 3)]  # (K, dims): the smallest K each dims accepts, and more


@pytest.mark.parametrize(("count", "dims"), CASES)
def test_pca_is_the_svd_of_the_centred_unit_kernels_and_the_classical_mds_of_sqrt_2s(
    count: int, dims: int
) -> None:
    """Kernels of scales 1e-6 to 1e6: PCA coordinates U_k sigma_k and ratios sigma_k^2 / sum
    sigma^2 of the centred unit kernels, and the classical MDS of sqrt(2 S) (top eigenpairs of
    -1/2 C D^2 C), equal to 1e-10 up to the sign of each axis (|u_i - u_j|^2 = 2 S_ij)."""
    rng = np.random.default_rng(100 + count + dims)
    kernels = _psd_kernels(count, 10.0 ** rng.uniform(-6.0, 6.0, count), seed=count * dims)
    units, s = _units_and_s(kernels)
    got = embed_kernels(s, method="pca", dims=dims)
    assert got.explained_variance_ratio is not None

    centred = units - units.mean(axis=0)
    left, sigma, _ = np.linalg.svd(centred, full_matrices=False)
    svd_coords = left[:, :dims] * sigma[:dims]
    np.testing.assert_allclose(got.coords, _match_signs(got.coords, svd_coords), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        got.explained_variance_ratio, sigma[:dims] ** 2 / np.sum(sigma**2), rtol=0, atol=1e-10
    )

    d = np.sqrt(2.0 * np.clip(s, 0.0, None))
    centring = np.eye(count) - 1.0 / count
    values, vectors = np.linalg.eigh(-0.5 * centring @ (d * d) @ centring)
    values, vectors = values[::-1], vectors[:, ::-1]
    mds_coords = vectors[:, :dims] * np.sqrt(np.clip(values[:dims], 0.0, None))
    np.testing.assert_allclose(got.coords, _match_signs(got.coords, mds_coords), rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        got.explained_variance_ratio, values[:dims] / values[values > 0].sum(), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("method", ["pca", "mds"])
@pytest.mark.parametrize(("count", "dims"), CASES)
def test_reported_stress_is_kruskal_stress1_of_the_returned_coordinates(
    method: str, count: int, dims: int
) -> None:
    """The stress reported is Kruskal's stress-1 (docstring, README) of the coordinates returned
    against sqrt(2 S); the coordinates are centred and each axis's largest entry is positive;
    K = dims + 1 kernels always fit exactly (stress 0, ratios summing to 1)."""
    rng = np.random.default_rng(200 + count + dims)
    kernels = _psd_kernels(count, 10.0 ** rng.uniform(-3.0, 3.0, count), seed=7 * count + dims)
    _, s = _units_and_s(kernels)
    got = embed_kernels(s, method=method, dims=dims)
    coords = got.coords
    assert coords.shape == (count, dims) and coords.dtype == np.float64
    want = _kruskal_stress1(coords, np.sqrt(2.0 * np.clip(s, 0.0, None)))
    assert got.stress == pytest.approx(want, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(coords.mean(axis=0), 0.0, rtol=0, atol=1e-14)
    for axis in range(dims):
        assert coords[np.argmax(np.abs(coords[:, axis])), axis] > 0
    if count == dims + 1:
        assert got.stress < 1e-12
        if got.explained_variance_ratio is not None:
            assert float(np.sum(got.explained_variance_ratio)) == pytest.approx(1.0, abs=1e-12)
    else:
        assert got.stress > 1e-3  # a real fit: the check above was not 0 == 0


@pytest.mark.parametrize("method", ["pca", "mds"])
@pytest.mark.parametrize("dims", [2, 3])
def test_two_clusters_of_equal_kernels_are_two_points_on_the_first_axis(
    method: str, dims: int
) -> None:
    """3 kernels equal to A (at scales 1, 1, 1) and 4 equal to B: two points sqrt(2 S_AB) apart
    on the first axis, at -4/7 and 3/7 of it from the centroid (the centring), the other axes
    rounding; stress rounding; PCA's first ratio 1."""
    rng = np.random.default_rng(5)
    a, b = (m @ m.T for m in rng.standard_normal((2, 5, 7)))
    kernels = np.stack([a] * 3 + [b] * 4)
    _, s = _units_and_s(kernels)
    got = embed_kernels(s, method=method, dims=dims)
    chord = float(np.sqrt(2.0 * s[0, 3]))
    first = got.coords[:, 0]
    np.testing.assert_allclose(first[:3], first[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(first[3:], first[3], rtol=0, atol=1e-12)
    assert abs(first[0] - first[3]) == pytest.approx(chord, rel=1e-12)
    assert sorted([abs(first[0]), abs(first[3])]) == pytest.approx(
        [3 / 7 * chord, 4 / 7 * chord], rel=1e-12
    )
    np.testing.assert_allclose(got.coords[:, 1:], 0.0, rtol=0, atol=1e-6)
    assert got.stress < 1e-6
    if got.explained_variance_ratio is not None:
        assert got.explained_variance_ratio[0] == pytest.approx(1.0, abs=1e-12)
