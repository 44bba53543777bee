"""Embeddings of S matrices: known configurations recovered up to rotation and reflection."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA

from conetool.embedding import (
    Embedding,
    classical_mds,
    embed_kernels,
    embed_mds,
    embed_pca,
    stress1,
)
from conetool.geometry import GeometryError, distance_matrix


def _pairwise(points: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1))


def _procrustes_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Largest coordinate error after the best rotation/reflection (no scaling) of ``found``."""
    a = found - found.mean(axis=0)
    b = truth - truth.mean(axis=0)
    rotation, _ = orthogonal_procrustes(a, b)
    return float(np.max(np.abs(a @ rotation - b)))


def _planar_points(seed: int = 0, count: int = 15) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.6, 0.6, size=(count, 2))


def test_classical_mds_recovers_planar_points() -> None:
    points = _planar_points()
    coords, ratio = classical_mds(_pairwise(points), dims=2)
    assert _procrustes_error(coords, points) < 1e-10
    assert ratio.sum() == pytest.approx(1.0, abs=1e-12)
    # explained variance ratio of the planar points themselves
    centred = points - points.mean(axis=0)
    variances = np.linalg.eigvalsh(centred.T @ centred)[::-1]
    np.testing.assert_allclose(ratio, variances / variances.sum(), atol=1e-12)


@pytest.mark.parametrize("method", ["pca", "mds"])
def test_embedding_of_a_planar_s_matrix(method: str) -> None:
    # S = D^2 / 2 makes sqrt(2 S) exactly the planar distances
    points = _planar_points(1)
    s = 0.5 * _pairwise(points) ** 2
    assert s.max() <= 2.0
    result = embed_kernels(s, method=method, dims=2)
    assert isinstance(result, Embedding) and result.coords.shape == (15, 2)
    assert _procrustes_error(result.coords, points) < 1e-6
    assert result.stress < 1e-6


def test_kernels_on_a_cone_are_embedded_as_their_circle() -> None:
    """Unit kernels on a circle of a cone around an axis are planar in chordal distance."""
    rng = np.random.default_rng(2)
    radius, count, side = 0.3, 12, 7
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    angles[:4] = [0.0, np.pi / 2, np.pi, 3 * np.pi / 2]  # a centred part, for the radius check
    circle = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    unit = np.column_stack([circle, np.full(count, np.sqrt(1 - radius**2))])
    basis, _ = np.linalg.qr(rng.standard_normal((side * side, 3)))  # any 3 orthonormal directions
    kernels = [(2.0 + k) * (basis @ u).reshape(side, side) for k, u in enumerate(unit)]
    s = distance_matrix(lambda i: kernels[i], count, block_size=5)
    for method in ("pca", "mds"):
        coords = embed_kernels(s, method=method).coords
        assert _procrustes_error(coords, circle) < 1e-6
        # the circle's centre is where the axis of the cone crosses its plane
        centre = coords[:4].mean(axis=0)
        radii = np.linalg.norm(coords - centre, axis=1)
        assert radii == pytest.approx(np.full(count, radius), abs=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
def test_pca_of_s_equals_pca_of_the_unit_kernels(dims: int) -> None:
    rng = np.random.default_rng(3)
    kernels = rng.standard_normal((30, 5, 5)) + 2.0 * rng.standard_normal((1, 5, 5))
    flat = kernels.reshape(30, -1)
    units = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    s = distance_matrix(lambda i: kernels[i], 30, block_size=7)
    coords, ratio = embed_pca(s, dims=dims)
    reference = PCA(n_components=dims, svd_solver="full").fit(units)
    expected = reference.transform(units)
    # equal up to the sign of each axis
    signs = np.sign(np.sum(coords * expected, axis=0))
    np.testing.assert_allclose(coords, expected * signs, atol=1e-10)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, atol=1e-12)


def test_mds_fits_at_least_as_well_as_its_classical_start() -> None:
    rng = np.random.default_rng(4)
    points = rng.standard_normal((25, 6))  # not planar: no 2-D picture is exact
    units = points / np.linalg.norm(points, axis=1, keepdims=True)
    s = 0.5 * _pairwise(units) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning from scikit-learn's defaults
        coords, stress = embed_mds(s, dims=2, seed=0)
        again, _ = embed_mds(s, dims=2, seed=0)
    pca = embed_kernels(s, method="pca")
    assert 0.0 < stress < pca.stress
    assert stress == pytest.approx(stress1(coords, np.sqrt(2 * s)))
    np.testing.assert_array_equal(coords, again)  # deterministic


def test_stress1_against_a_direct_loop() -> None:
    rng = np.random.default_rng(5)
    coords = rng.standard_normal((6, 2))
    d = _pairwise(rng.standard_normal((6, 3)))
    num = den = 0.0
    for i in range(6):
        for j in range(i + 1, 6):
            num += (np.linalg.norm(coords[i] - coords[j]) - d[i, j]) ** 2
            den += d[i, j] ** 2
    assert stress1(coords, d) == pytest.approx(np.sqrt(num / den), rel=1e-12)


def test_coordinates_are_centred_and_oriented() -> None:
    s = 0.5 * _pairwise(_planar_points(6)) ** 2
    for method in ("pca", "mds"):
        coords = embed_kernels(s, method=method, dims=2).coords
        np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-12)
        largest = coords[np.argmax(np.abs(coords), axis=0), [0, 1]]
        assert np.all(largest > 0)


def test_to_dict_is_json_ready() -> None:
    s = 0.5 * _pairwise(_planar_points(7)) ** 2
    data = json.loads(json.dumps(embed_kernels(s, method="pca", dims=3).to_dict()))
    assert data["method"] == "pca" and data["dims"] == 3
    assert len(data["explained_variance_ratio"]) == 3
    assert data["explained_variance_ratio"][2] == pytest.approx(0.0, abs=1e-12)
    assert json.loads(json.dumps(embed_kernels(s).to_dict()))["explained_variance_ratio"] is None


@pytest.mark.parametrize(
    ("s", "kwargs", "match"),
    [
        (np.zeros((3, 4)), {}, "square"),
        (np.full((3, 3), np.nan), {}, "NaN"),
        (np.zeros((5, 5)), {"dims": 4}, "dims"),
        (np.zeros((2, 2)), {"dims": 2}, "at least 3 kernels"),
        (np.zeros((5, 5)), {"method": "tsne"}, "unknown embedding method"),
    ],
)
def test_bad_input_is_rejected(s: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        embed_kernels(s, **kwargs)


def test_mds_of_equal_kernels_is_one_point_without_warnings() -> None:
    # every distance 0 (a lazy run's kernels all alike): SMACOF would divide by zero and warn
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        coords, stress = embed_mds(np.zeros((4, 4)), dims=2)
    assert coords.shape == (4, 2) and not coords.any() and stress == 0.0


def _minus_c_s_c(s: np.ndarray) -> np.ndarray:
    """B = -C S C (C the centering matrix), whose eigenvalues classical MDS takes."""
    return -s + s.mean(axis=0) + s.mean(axis=1, keepdims=True) - s.mean()


def _not_of_kernels(seed: int = 0, count: int = 8) -> np.ndarray:
    """A user's own S: symmetric, zero diagonal, values in [0, 2], but sqrt(2 S) is no
    Euclidean distance (B = -C S C has large negative eigenvalues)."""
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.uniform(0.0, 2.0, (count, count)), 1)
    return upper + upper.T


def test_pca_refuses_an_s_matrix_that_is_not_of_kernels() -> None:
    """Its ratios lambda / trace(B) summed above 1 (1.15 here): B is indefinite, so there are no
    unit kernels to take the PCA of. MDS still embeds it."""
    s = _not_of_kernels()
    b = _minus_c_s_c(s)
    values = np.linalg.eigvalsh(b)
    assert np.sort(values)[::-1][:3].sum() / np.trace(b) > 1.1  # the old ratios, dims=3
    for call in (lambda: embed_pca(s, dims=3), lambda: embed_kernels(s, method="pca")):
        with pytest.raises(GeometryError, match=r"^this S matrix is not that of any kernels") as e:
            call()
        message = str(e.value)
        assert f"down to {values.min():.3g}" in message and "method='mds'" in message
    assert embed_kernels(s, method="mds").coords.shape == (8, 2)
    # classical MDS of any distances leaves the negative eigenvalues out, of the trace too
    _, ratio = classical_mds(np.sqrt(2 * s), dims=3)
    positive = values[values > 0]
    np.testing.assert_allclose(ratio, np.sort(positive)[::-1][:3] / positive.sum(), atol=1e-12)
    assert ratio.sum() <= 1.0


@pytest.mark.parametrize("spread", [1e-3, 1e-6, 1e-8, 0.0])
def test_kernels_that_hardly_move_are_embedded_with_ratios_at_most_1(spread: float) -> None:
    """An S of real kernels is never refused, down to kernels that differ by float32 rounding
    (S of 1e-15 and below, B's eigenvalues as negative as positive); its ratios stay in [0, 1]
    and sum to at most 1 (they summed to 1.25 with spread 1e-8)."""
    rng = np.random.default_rng(8)
    base = rng.standard_normal((20, 20))
    kernels = [
        (base + spread * rng.standard_normal((20, 20))).astype(np.float32) for _ in range(30)
    ]
    s = distance_matrix(lambda i: kernels[i], 30, block_size=7)
    for dims in (1, 2, 3):
        coords, ratio = embed_pca(s, dims=dims)
        assert coords.shape == (30, dims)
        assert np.all(ratio >= 0.0) and ratio.sum() <= 1.0 + 1e-12, ratio
        _, again = classical_mds(np.sqrt(2 * s), dims=dims)
        np.testing.assert_allclose(again, ratio, atol=1e-12)


def test_an_s_rounded_to_a_few_digits_is_refused_by_pca_only_beyond_its_tolerance() -> None:
    """Negative eigenvalues below NEGATIVE_TOLERANCE of the positive ones are rounding: the
    ratios are then off by no more than that share."""
    from conetool.embedding import NEGATIVE_TOLERANCE

    rng = np.random.default_rng(9)
    points = rng.standard_normal((12, 5))
    units = points / np.linalg.norm(points, axis=1, keepdims=True)
    s = 0.5 * _pairwise(units) ** 2
    exact = embed_pca(s, dims=2)[1]
    nudged = s + 1e-9 * _not_of_kernels(1, 12)  # a few negative eigenvalues, tiny
    assert np.linalg.eigvalsh(_minus_c_s_c(nudged)).min() < -1e-12  # beyond float64 rounding
    np.testing.assert_allclose(embed_pca(nudged, dims=2)[1], exact, atol=10 * NEGATIVE_TOLERANCE)
    with pytest.raises(GeometryError, match="not that of any kernels"):
        embed_pca(s + 1e-3 * _not_of_kernels(1, 12), dims=2)
