"""The start of ``embed --method mds`` from ARPACK's top eigenpairs: the dense path's coordinates
where the check accepts them, the dense path itself where it does not."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.sparse.linalg
from synthetic_s import drifting_kernels_s

import conetool.embedding as embedding
from conetool.embedding import _classical_from_b, _double_center, mds_problem
from conetool.lanczos_top import MAX_RESTARTS, lanczos_top


def _b(s: np.ndarray) -> np.ndarray:
    b = _double_center(-s)
    return 0.5 * (b + b.T)


def _pairwise(points: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1))


def _polygon_s(count: int) -> np.ndarray:
    """Points evenly on a circle: B's two nonzero eigenvalues tie."""
    angles = 2 * np.pi * np.arange(count) / count
    return 0.5 * _pairwise(0.3 * np.stack([np.cos(angles), np.sin(angles)], axis=1)) ** 2


def _spectrum_b(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """A symmetric matrix with the eigenvalues ``values`` and random eigenvectors."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((values.size, values.size)))
    b = (q * values) @ q.T
    return 0.5 * (b + b.T)


def _same_up_to_sign(got: np.ndarray, want: np.ndarray, atol: float) -> None:
    signs = np.sign(np.sum(got * want, axis=0))
    np.testing.assert_allclose(got * signs, want, rtol=0, atol=atol)


@pytest.mark.parametrize("count", [30, 120, 400, 1000])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_the_top_eigenpairs_are_the_dense_ones(count: int, dims: int) -> None:
    """Trajectories of several sizes: accepted, the eigenvalues and (up to sign) the vectors of
    np.linalg.eigh to 1e-11, well within the check's TOLERANCE (1e-8)."""
    b = _b(drifting_kernels_s(count, seed=count))
    found = lanczos_top(b, dims)
    assert found is not None
    values, vectors = found
    full_values, full_vectors = np.linalg.eigh(b)
    np.testing.assert_allclose(values, full_values[::-1][:dims], rtol=0, atol=1e-13)
    assert vectors.shape == (count, dims)
    _same_up_to_sign(vectors, full_vectors[:, ::-1][:, :dims], atol=1e-11)


@pytest.mark.parametrize("count", [60, 250, 1000])
@pytest.mark.parametrize("dims", [2, 3])
def test_the_mds_start_is_the_dense_paths(
    count: int, dims: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mds_problem's start from ARPACK (LANCZOS_MIN_K lowered below 1,000): the dense path's
    coordinates up to the sign of each axis (the same signs here: the orientation rule picks
    them) to 1e-10 of their scale; the distances are untouched."""
    s = drifting_kernels_s(count, seed=count + 1)
    want = _classical_from_b(_b(s), dims)[0]
    monkeypatch.setattr(embedding, "LANCZOS_MIN_K", min(count, 1000))
    d, start = mds_problem(s, dims)
    _same_up_to_sign(start, want, atol=1e-10 * np.max(np.abs(want)))
    np.testing.assert_allclose(start, want, rtol=0, atol=1e-10 * np.max(np.abs(want)))
    np.testing.assert_array_equal(d, np.sqrt(2.0 * np.clip(s, 0.0, None)) * (1 - np.eye(count)))


def test_the_mds_start_at_1000_kernels_makes_no_tridiagonal_reduction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From LANCZOS_MIN_K kernels on the start of mds no longer reduces B (K, K) to tridiagonal
    form (4/3 K^3 flops; it did before) where ARPACK's answer passes the check."""
    s = drifting_kernels_s(1000, seed=5)
    want = _classical_from_b(_b(s), 2)[0]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("dense path taken")

    monkeypatch.setattr(embedding, "_tridiagonal_top", refuse)
    monkeypatch.setattr(np.linalg, "eigh", refuse)
    start = mds_problem(s, 2)[1]
    np.testing.assert_allclose(start, want, rtol=0, atol=1e-10 * np.max(np.abs(want)))
    np.testing.assert_array_equal(mds_problem(s, 2)[1], start)  # deterministic


def _counting_dense(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the dense path's tridiagonal reductions (they still run)."""
    real = embedding._tridiagonal_top
    calls: list[int] = []

    def counted(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray] | None:
        calls.append(b.shape[0])
        return real(b, dims)

    monkeypatch.setattr(embedding, "_tridiagonal_top", counted)
    return calls


@pytest.mark.parametrize(
    ("name", "make", "dims"),
    [
        ("tied top eigenvalues (a regular polygon)", lambda: _polygon_s(1000), 2),
        ("a tie across the cut (orthogonal kernels)", lambda: 1.0 - np.eye(1000), 2),
        (
            "rank below dims (points on a line)",
            lambda: 0.5 * _pairwise(np.linspace(0.0, 1.0, 1000)[:, None]) ** 2,
            2,
        ),
    ],
)
def test_ties_fall_back_to_the_dense_path(
    name: str,
    make: Callable[[], np.ndarray],
    dims: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the eigenvectors are not determined, ARPACK's answer is refused and mds starts from
    the dense path, exactly as below LANCZOS_MIN_K."""
    s = make()
    assert lanczos_top(_b(s), dims) is None
    calls = _counting_dense(monkeypatch)
    start = mds_problem(s, dims)[1]
    assert calls == [1000]
    np.testing.assert_array_equal(start, _classical_from_b(_b(s), dims)[0])


def test_points_on_a_line_fall_back() -> None:
    rng = np.random.default_rng(6)
    s = 0.5 * _pairwise(rng.standard_normal((300, 1))) ** 2  # B of rank 1: lambda_2 = lambda_3 = 0
    assert lanczos_top(_b(s), 1) is not None
    assert lanczos_top(_b(s), 2) is None


def test_no_convergence_falls_back() -> None:
    """Evenly spaced eigenvalues, Lanczos's slowest case: ARPACK stops at MAX_RESTARTS."""
    b = _spectrum_b(np.arange(400) / 400)
    with pytest.raises(scipy.sparse.linalg.ArpackNoConvergence):
        scipy.sparse.linalg.eigsh(b, k=2, which="LA", tol=0, maxiter=MAX_RESTARTS)
    assert lanczos_top(b, 2) is None


def test_arpack_errors_fall_back_in_embed(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.ones(1), np.ones((1, 1)))

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", failing)
    s = drifting_kernels_s(1000, seed=7)
    calls = _counting_dense(monkeypatch)
    start = mds_problem(s, 2)[1]
    assert calls == [1000]
    np.testing.assert_array_equal(start, _classical_from_b(_b(s), 2)[0])


def _first_call_replaced(
    monkeypatch: pytest.MonkeyPatch, answer: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
) -> list[str]:
    """eigsh whose first call (on B) returns ``answer(B)``; the deflation run is ARPACK's own."""
    real = scipy.sparse.linalg.eigsh
    calls: list[str] = []

    def replaced(a: object, *args: object, **kwargs: object) -> object:
        calls.append("B" if isinstance(a, np.ndarray) else "deflated")
        if len(calls) == 1:
            assert isinstance(a, np.ndarray)
            return answer(a)
        return real(a, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scipy.sparse.linalg, "eigsh", replaced)
    return calls


def test_a_missed_copy_of_a_repeated_eigenvalue_is_caught_by_the_deflation_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lanczos can return lambda_1 once and lambda_3 in place of the second copy of lambda_1,
    with small residuals and a wide gap between them: only the deflation run sees that B has
    more of lambda_1 outside the vectors found."""
    values = np.r_[5.0, 5.0, 2.0, np.linspace(1.0, 0.0, 197)]
    b = _spectrum_b(values, seed=8)
    full_values, full_vectors = np.linalg.eigh(b)

    def missing_a_copy(_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        picked = [-1, -3]  # lambda_1 and lambda_3: one copy of 5 is missing
        return full_values[picked], full_vectors[:, picked]

    calls = _first_call_replaced(monkeypatch, missing_a_copy)
    vectors = full_vectors[:, [-1, -3]]
    residuals = np.linalg.norm(b @ vectors - vectors * full_values[[-1, -3]], axis=0)
    assert np.all(residuals < 1e-13) and full_values[-1] - full_values[-3] > 2.9
    assert lanczos_top(b, 2) is None
    assert calls == ["B", "deflated"]


def test_a_residual_too_large_for_the_gaps_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors off by 1e-6 (residual 1e-6 against gaps of order 1): refused, where the exact
    ones pass."""
    b = _b(drifting_kernels_s(200, seed=9))
    found = lanczos_top(b, 2)
    assert found is not None
    values, vectors = found
    rng = np.random.default_rng(10)
    nudged, _ = np.linalg.qr(vectors + 1e-6 * rng.standard_normal(vectors.shape))
    _first_call_replaced(monkeypatch, lambda _: (values, nudged))
    assert lanczos_top(b, 2) is None


@pytest.mark.parametrize("bad", [np.zeros((50, 50)), np.full((50, 50), np.nan)])
def test_zero_or_non_finite_b_falls_back(bad: np.ndarray) -> None:
    assert lanczos_top(bad, 2) is None


def test_too_few_rows_fall_back() -> None:
    b = _b(drifting_kernels_s(4, seed=11))
    assert lanczos_top(b, 3) is None
    assert lanczos_top(b, 2) is not None


def test_the_parts_benchmark_runs_at_a_tiny_size(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/bench_embed_parts.py, with LANCZOS_MIN_K lowered so that its new start is
    ARPACK's at these sizes."""
    from benchmark_module import load_benchmark

    monkeypatch.setattr(embedding, "LANCZOS_MIN_K", 30)
    bench = load_benchmark("bench_embed_parts")
    assert bench.main(["--sizes", "30,50", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "path lanczos" in out
    pca = [line for line in out.splitlines() if line.split()[2:3] == ["pca"]]
    assert len(pca) == 4  # two S matrices at each size
    assert "path lanczos" in pca[0] and "ratios" in pca[0]  # the trajectory at 30 kernels
    assert out.rstrip().endswith(
        "same start and pca (coordinates to 1e-8 of their scale, up to axis signs; ratios to "
        "1e-09) and stress1 (to 1e-12): True"
    )
    rng = np.random.default_rng(14)
    coords, d = rng.standard_normal((40, 3)), np.abs(rng.standard_normal((40, 40)))
    assert bench.stress1_before(coords, d) == pytest.approx(embedding.stress1(coords, d), rel=1e-13)


@pytest.mark.parametrize(("angle", "accepted"), [(3e-10, True), (3e-8, False)])
def test_a_vector_more_than_1e_8_off_in_angle_is_refused(
    angle: float, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module's promise: where it returns, each vector is within TOLERANCE (1e-8) in angle
    of the true eigenvector. The top eigenvector turned by ``angle`` towards another one
    (eigenvalue 1, gaps 2 to the rest): the Davis-Kahan bound is ``4 sin(angle) / 2``, 6e-10
    (taken) or 6e-8 (refused). (mutation check: TOLERANCE 1e-6 took the second)"""
    values = np.r_[5.0, 3.0, 1.0, np.linspace(0.5, 0.0, 197)]  # apart: ARPACK converges
    b = _spectrum_b(values, seed=12)
    full_values, full_vectors = np.linalg.eigh(b)
    top, second, other = full_vectors[:, -1], full_vectors[:, -2], full_vectors[:, -3]
    turned = np.cos(angle) * top + np.sin(angle) * other
    _first_call_replaced(
        monkeypatch,
        lambda _: (full_values[[-1, -2]], np.stack([turned, second], axis=1)),
    )
    found = lanczos_top(b, 2)
    assert (found is not None) == accepted
