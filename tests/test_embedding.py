"""Embeddings of S matrices: known configurations recovered up to rotation and reflection."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from synthetic_s import drifting_kernels_s

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


def _stress1_direct(coords: np.ndarray, d: np.ndarray) -> float:
    """stress1 as it was (before 2**17-pair blocks): every difference in one (K, K, dims)."""
    diff = coords[:, None, :] - coords[None, :, :]
    fitted = np.sqrt(np.sum(diff * diff, axis=-1))
    iu = np.triu_indices(d.shape[0], k=1)
    denom = float(np.sum(d[iu] ** 2))
    return 0.0 if denom == 0.0 else float(np.sqrt(np.sum((fitted[iu] - d[iu]) ** 2) / denom))


def _stress_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(12)
    coords = rng.standard_normal((300, 2))
    d = _pairwise(rng.standard_normal((300, 4)))
    far = 1e6 + rng.standard_normal((300, 3))  # far from the origin: the Gram identity cancels
    repeated = np.repeat(rng.standard_normal((30, 3)), 10, axis=0)  # each point 10 times
    lopsided = np.triu(d) + 5.0 * np.tril(d, -1)  # only the upper triangle counts
    return {
        "random": (coords, d),
        "3-D far from the origin": (far, _pairwise(far + 1e-3 * rng.standard_normal(far.shape))),
        "coincident points": (repeated, _pairwise(repeated + rng.standard_normal((300, 3)))),
        "coincident, exact fit": (repeated, _pairwise(repeated)),
        "one point": (np.zeros((300, 2)), d),
        "all d zero": (coords, np.zeros_like(d)),
        "upper triangle": (coords, lopsided),
        "1-D": (coords[:, :1], d),
    }


@pytest.mark.parametrize("name", list(_stress_cases()))
@pytest.mark.parametrize("block", [2**17, 1000, 1])
def test_stress1_equals_the_direct_formula(
    name: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same value as the (K, K, dims) formula to rounding of the sums alone (each distance is
    the same to the last bit), in one block, in blocks of a few rows and row by row; coincident
    points at distance exactly 0 (the Gram identity gives them about 1e-8 of the scale)."""
    import conetool.embedding as embedding

    monkeypatch.setattr(embedding, "STRESS_BLOCK_ELEMENTS", block)
    coords, d = _stress_cases()[name]
    want = _stress1_direct(coords, d)
    got = stress1(coords, d)
    assert got == pytest.approx(want, rel=1e-13, abs=1e-300)
    if name == "coincident, exact fit":
        assert got == 0.0 and want == 0.0


def test_stress1_builds_no_pairwise_temporary() -> None:
    """At K = 1,500 the direct formula's (K, K, 2) differences alone are 36 MB (it peaked at
    over 100 MB); stress1 keeps a few blocks of 2**17 pairs (1 MiB each)."""
    import tracemalloc

    rng = np.random.default_rng(13)
    coords = rng.standard_normal((1500, 2))
    d = np.abs(rng.standard_normal((1500, 1500)))
    tracemalloc.start()
    try:
        value = stress1(coords, d)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    assert value == pytest.approx(_stress1_direct(coords, d), rel=1e-13)


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


@pytest.mark.parametrize("value", [0.0, -0.5])
def test_mds_of_zero_distances_computes_no_start(
    value: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every distance 0 (S all 0, or all at most 0: sqrt(2 S) clips it): one point, returned
    before the classical start, which it computed and threw away before (at 1,000 kernels and
    more, a tridiagonal reduction of B: ARPACK finds nothing in a B of zeros)."""
    import conetool.embedding as embedding

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("start computed")

    s = np.full((1000, 1000), value)
    np.fill_diagonal(s, 0.0)
    s[0, 1] = s[1, 0] = 2 * value  # B not 0 where value < 0: any start is thrown away
    monkeypatch.setattr(embedding, "_classical_coords", refuse)
    coords, stress = embed_mds(s, dims=3)
    assert coords.shape == (1000, 3) and not coords.any() and stress == 0.0


@pytest.mark.parametrize("count", [5, 1000])
def test_pca_of_equal_kernels_is_one_point_at_once(
    count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S all 0 (every kernel the same direction): what the dense path gives (zero coordinates
    and ratios, no sign bit), before any eigen-reduction, which took 11 s at 5,000 kernels."""
    import conetool.embedding as embedding

    s = np.zeros((count, count))
    dense = {dims: embedding._classical_from_b(s.copy(), dims, only_psd=True) for dims in (1, 2, 3)}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an eigen-reduction of B computed")

    for name in ("_classical_from_b", "_pca_by_lanczos", "_top_eigenpairs", "lanczos_top"):
        monkeypatch.setattr(embedding, name, refuse)
    for dims, (want_coords, want_ratio) in dense.items():
        coords, ratio = embed_pca(s, dims=dims)
        for found, want in ((coords, want_coords), (ratio, want_ratio)):
            assert found.shape == want.shape and found.dtype == want.dtype == np.float64
            np.testing.assert_array_equal(found, want)
            np.testing.assert_array_equal(np.signbit(found), np.signbit(want))
        found_embedding = embed_kernels(s, method="pca", dims=dims)
        assert found_embedding.stress == 0.0 and not found_embedding.coords.any()


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


# The classical start computes only the top eigenpairs of B (plus all eigenvalues, from the
# tridiagonal form): the same coordinates and ratios as the full np.linalg.eigh it replaced.


def _classical_by_full_eigh(s: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """The former start (f29fdab): every eigenpair of B = -C S C from np.linalg.eigh."""
    b = _minus_c_s_c(0.5 * (s + s.T))
    values, vectors = np.linalg.eigh(0.5 * (b + b.T))
    order = np.argsort(values)[::-1][:dims]
    top = np.clip(values[order], 0.0, None)
    coords = vectors[:, order] * np.sqrt(top)
    coords = coords - coords.mean(axis=0)
    rows = np.argmax(np.abs(coords), axis=0)
    signs = np.sign(coords[rows, np.arange(dims)])
    signs[signs == 0] = 1.0
    total = values[values > 0].sum()
    return coords * signs, top / total if total > 0 else np.zeros_like(top)


def _random_kernels_s(count: int = 40, seed: int = 10) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kernels = rng.standard_normal((count, 6, 6)) + 1.5 * rng.standard_normal((1, 6, 6))
    return distance_matrix(lambda i: kernels[i], count, block_size=9)


def _regular_polygon_s(count: int = 8, radius: float = 0.3) -> np.ndarray:
    """Points evenly on a circle (S = D^2 / 2): B's two nonzero eigenvalues are equal."""
    angles = 2 * np.pi * np.arange(count) / count
    return 0.5 * _pairwise(radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)) ** 2


def _simplex_s(count: int = 6) -> np.ndarray:
    """Orthogonal kernels, every pair at S = 1: B = C, K - 1 equal eigenvalues."""
    return np.ones((count, count)) - np.eye(count)


START_CASES = {
    "random kernels": (_random_kernels_s, (2, 3)),
    "trajectory": (lambda: drifting_kernels_s(120), (1, 2, 3)),
    "K = 2": (lambda: drifting_kernels_s(2, seed=1), (1,)),
    "K = 3": (lambda: drifting_kernels_s(3, seed=2), (1, 2)),
    "K = 4": (lambda: drifting_kernels_s(4, seed=3), (2, 3)),
    "planar points": (lambda: 0.5 * _pairwise(_planar_points(11, 30)) ** 2, (2,)),
    "all kernels equal": (lambda: np.zeros((5, 5)), (2, 3)),
}


@pytest.mark.parametrize(
    ("name", "dims"),
    [(name, dims) for name, (_, all_dims) in START_CASES.items() for dims in all_dims],
)
def test_the_start_equals_the_full_eigh(name: str, dims: int) -> None:
    """Coordinates (signs included: the orientation rule picks them from the coordinates) to
    1e-10 of their scale, ratios to 1e-12, the mds start the pca coordinates; the eigenvalues
    and the top vectors (up to sign) those of np.linalg.eigh. (Where B's rank is below dims,
    planar points in 3-D, the extra axes hold rounding, the square root of eigenvalues of
    1e-17, about 1e-9 of the scale in either code: test_equal_top_eigenvalues_...[8-3].)"""
    from conetool.embedding import _top_eigenpairs, mds_problem

    s = START_CASES[name][0]()
    coords, ratio = embed_pca(s, dims=dims)
    want_coords, want_ratio = _classical_by_full_eigh(s, dims)
    scale = max(float(np.max(np.abs(want_coords))), 1e-300)
    np.testing.assert_allclose(coords, want_coords, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(ratio, want_ratio, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(mds_problem(s, dims)[1], coords)
    b = _minus_c_s_c(s)
    values, vectors = _top_eigenpairs(b, dims)
    full_values, full_vectors = np.linalg.eigh(b)
    size = max(float(np.max(np.abs(full_values))), 1e-300)
    np.testing.assert_allclose(values, full_values, rtol=0, atol=1e-13 * size)
    assert vectors.shape == (s.shape[0], dims)
    top = full_vectors[:, ::-1][:, :dims]
    gaps = -np.diff(full_values[::-1][: dims + 1])
    if np.all(gaps > 1e-6 * size):  # each vector determined up to its sign
        signs = np.sign(np.sum(vectors * top, axis=0))
        np.testing.assert_allclose(vectors, top * signs, rtol=0, atol=1e-9)


def test_the_start_of_an_s_not_of_kernels_equals_the_full_eigh() -> None:
    """classical_mds takes any distances (B indefinite): its ratios leave the negative
    eigenvalues out, which still come from the whole spectrum."""
    s = _not_of_kernels(seed=4, count=20)
    for dims in (2, 3):
        coords, ratio = classical_mds(np.sqrt(2 * s), dims=dims)
        want_coords, want_ratio = _classical_by_full_eigh(s, dims)
        np.testing.assert_allclose(coords, want_coords, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ratio, want_ratio, rtol=0, atol=1e-12)


def test_the_start_computes_no_full_eigh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of _top_eigenpairs: no np.linalg.eigh of all of B (which it called before)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.linalg.eigh called")

    s = drifting_kernels_s(50)
    want = _classical_by_full_eigh(s, 2)
    monkeypatch.setattr(np.linalg, "eigh", refuse)
    coords, ratio = embed_pca(s, dims=2)
    np.testing.assert_allclose(coords, want[0], rtol=0, atol=1e-10 * np.max(np.abs(want[0])))
    np.testing.assert_allclose(ratio, want[1], rtol=0, atol=1e-12)
    assert embed_kernels(s, method="mds").coords.shape == (50, 2)


def test_the_full_eigh_is_taken_where_inverse_iteration_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import scipy.linalg

    real = scipy.linalg.eigh_tridiagonal
    calls = []

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("select", "a"))
        if kwargs.get("select") == "i":
            raise scipy.linalg.LinAlgError("stein: 1 eigenvectors failed to converge")
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.linalg, "eigh_tridiagonal", failing)
    s = drifting_kernels_s(30)
    coords, ratio = embed_pca(s, dims=3)
    assert "i" in calls  # the tridiagonal path was tried
    want_coords, want_ratio = _classical_by_full_eigh(s, 3)
    np.testing.assert_allclose(coords, want_coords, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ratio, want_ratio, rtol=0, atol=1e-14)


@pytest.mark.parametrize(("count", "dims"), [(8, 2), (7, 2), (8, 3)])
def test_equal_top_eigenvalues_give_the_full_eighs_picture_turned(count: int, dims: int) -> None:
    """A regular polygon: B's two nonzero eigenvalues tie, so any basis of their plane is an
    answer: the new path and np.linalg.eigh pick different ones (the coordinates differ by a
    rotation, by up to 0.57 with a radius of 0.3; which one either picks moves with the last
    bits of B), the new path the same one on every call; the distances, so the stress, and the
    ratios are the same. In 3-D the third axis is rounding in both (B has rank 2: the
    square root of an eigenvalue of 1e-17, 4e-9 here)."""
    s = _regular_polygon_s(count)
    coords, ratio = embed_pca(s, dims=dims)
    want_coords, want_ratio = _classical_by_full_eigh(s, dims)
    assert _procrustes_error(coords, want_coords) < (1e-12 if dims == 2 else 1e-8)
    d = np.sqrt(2 * s)
    assert stress1(coords, d) == pytest.approx(stress1(want_coords, d), abs=1e-12)
    np.testing.assert_allclose(ratio, want_ratio, rtol=0, atol=1e-12)
    again = embed_pca(s, dims=dims)
    np.testing.assert_array_equal(again[0], coords)
    np.testing.assert_array_equal(again[1], ratio)


@pytest.mark.parametrize(
    ("name", "dims"), [("simplex", 1), ("simplex", 2), ("simplex", 3), ("polygon", 1)]
)
def test_a_tie_across_the_cut_is_deterministic_with_the_same_ratios_and_strain(
    name: str, dims: int
) -> None:
    """The dims-th eigenvalue ties with the next: which subspace is taken is not determined
    (the new path and np.linalg.eigh take different ones: the coordinates differ, and so may
    the stress-1, 0.45 against 0.52 for the simplex in 2-D). What classical MDS fits is the
    same: the ratios, and the strain |B - X X^T|_F (the left-out eigenvalues). The same input
    gives the same output, for pca and for the mds that starts from it."""
    s = _simplex_s() if name == "simplex" else _regular_polygon_s()
    coords, ratio = embed_pca(s, dims=dims)
    want_coords, want_ratio = _classical_by_full_eigh(s, dims)
    np.testing.assert_allclose(ratio, want_ratio, rtol=0, atol=1e-12)
    b = _minus_c_s_c(s)
    strain = np.linalg.norm(b - coords @ coords.T)
    assert strain == pytest.approx(np.linalg.norm(b - want_coords @ want_coords.T), abs=1e-12)
    for method in ("pca", "mds"):
        first = embed_kernels(s, method=method, dims=dims)
        second = embed_kernels(s, method=method, dims=dims)
        np.testing.assert_array_equal(first.coords, second.coords)
        assert first.stress == second.stress


def test_the_start_benchmark_runs_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/bench_embed.py --start-only, whose former start is the reference above."""
    from benchmark_module import load_benchmark

    bench = load_benchmark("bench_embed")
    assert bench.main(["--sizes", "30,40", "--repeat", "1", "--start-only"]) == 0
    out = capsys.readouterr().out
    assert "same coordinates (to 1e-9 of their scale) and ratios (to 1e-12): True" in out
    s = drifting_kernels_s(25)
    for got, want in zip(bench.classical_before(s, 2), _classical_by_full_eigh(s, 2), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
