"""conetool.smacof against scikit-learn's SMACOF: the same iterations, to rounding.

Each case runs both from the same start with the same ``max_iter`` and ``eps`` and asks for
the same iteration count, coordinates equal to 1e-12 of their scale (1e-10 where all distances
tie) and the same raw stress.
The cases: a kernel trajectory (2 and 3 dimensions), ties (all distances equal), kernels that
repeat (distances of 0 between different kernels), coinciding start points at a positive
distance (scikit-learn's 0 -> 1e-5 rule), K = 3, an S matrix that is no kernels', a stop at
``max_iter``, and blocks of a few rows (every path of the block walk at small K).
"""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load_benchmark
from sklearn.manifold import smacof as sklearn_smacof
from synthetic_s import drifting_kernels_s

from conetool.embedding import (
    MDS_EPS,
    MDS_MAX_ITER,
    _orient,
    _sklearn_mds,
    embed_mds,
    mds_problem,
)
from conetool.geometry import GeometryError, distance_matrix
from conetool.smacof import SmacofResult, smacof


def _repeated_kernels() -> np.ndarray:
    """A trajectory whose kernels 3, 7 and 11 come twice (and 0 three times): S = 0 off the
    diagonal, coinciding start points, R = 0 between them."""
    s = drifting_kernels_s(16, seed=1)
    order = [0, 1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 11, 12, 13, 14, 15, 0, 0]
    return s[np.ix_(order, order)]


def _simplex(count: int = 6) -> np.ndarray:
    """Every pair of kernels at the same distance (orthogonal kernels): all distances tie."""
    s = np.ones((count, count))
    np.fill_diagonal(s, 0.0)
    return s


def _not_of_kernels() -> np.ndarray:
    rng = np.random.default_rng(3)
    upper = np.triu(rng.uniform(0.0, 2.0, (12, 12)), 1)
    return upper + upper.T


def _reference(d: np.ndarray, start: np.ndarray, max_iter: int) -> tuple[np.ndarray, float, int]:
    coords, stress, n_iter = sklearn_smacof(
        d,
        metric=True,
        n_components=start.shape[1],
        init=start,
        n_init=1,
        max_iter=max_iter,
        eps=MDS_EPS,
        normalized_stress=False,
        return_n_iter=True,
    )
    return coords, float(stress), int(n_iter)


def _pairwise(coords: np.ndarray) -> np.ndarray:
    """(K, K) Euclidean distances between the rows of ``coords`` (K, dims)."""
    return np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)


def _assert_same(
    d: np.ndarray,
    start: np.ndarray,
    max_iter: int = MDS_MAX_ITER,
    tolerance: float = 1e-12,
    **blocks: int,
) -> SmacofResult:
    """The same iteration count, coordinates within ``tolerance`` of their largest, the same
    raw stress (differences seen: 1e-15 to 1e-13 of the scale; 2e-11 where all distances tie)."""
    coords, stress, n_iter = _reference(d, start, max_iter)
    result = smacof(d, start, max_iter=max_iter, eps=MDS_EPS, **blocks)
    assert result.n_iter == n_iter
    scale = float(np.max(np.abs(coords)))
    np.testing.assert_allclose(result.coords, coords, rtol=0, atol=tolerance * scale)
    assert result.stress == pytest.approx(stress, rel=1e-9, abs=1e-12 * float(np.sum(d * d)))
    return result


@pytest.mark.parametrize(
    ("name", "dims"),
    [
        ("trajectory", 2),
        ("trajectory", 3),
        ("ties", 2),
        ("repeated kernels", 2),
        ("K = 3", 2),
        ("not of kernels", 2),
    ],
)
def test_the_same_iterations_as_scikit_learn(name: str, dims: int) -> None:
    s = {
        "trajectory": lambda: drifting_kernels_s(40),
        "ties": _simplex,
        "repeated kernels": _repeated_kernels,
        "K = 3": lambda: drifting_kernels_s(3, seed=2),
        "not of kernels": _not_of_kernels,
    }[name]()
    d, start = mds_problem(s, dims)
    if name == "ties":
        # All distances tied: the start is one of many equal eigenvector bases, and SMACOF from
        # such a symmetric configuration amplifies rounding about 4e4-fold per iteration. The
        # coordinates matched scikit-learn's to 2e-11 of the scale only while both rounded
        # every operation alike; with scikit-learn 1.9.1 and numpy 2.4.6 they differ by 1e-9
        # after the second iteration (2.6e-14 after the first) and by 7e-5 at the end, along
        # the flat valley of equal stress. What the two solvers must share there: the
        # iteration count, the stress, and the configuration up to that valley's motions
        # (its distances within 1e-5 of the scale: 7e-7 seen).
        coords, stress, n_iter = _reference(d, start, MDS_MAX_ITER)
        result = smacof(d, start, max_iter=MDS_MAX_ITER, eps=MDS_EPS)
        assert result.n_iter == n_iter
        assert result.stress == pytest.approx(stress, rel=1e-9)
        scale = float(np.max(np.abs(coords)))
        np.testing.assert_allclose(
            _pairwise(result.coords), _pairwise(coords), rtol=0, atol=1e-5 * scale
        )
    else:
        result = _assert_same(d, start)
    assert result.n_iter >= 2
    if name == "repeated kernels":  # repeated kernels stay one point
        np.testing.assert_allclose(result.coords[3], result.coords[4], atol=1e-12)


def test_coinciding_start_points_take_scikit_learns_1e_5() -> None:
    """Start points that coincide exactly (integer coordinates: every product exact) while
    their kernels differ: the distance 0 is taken as 1e-5 in R, as scikit-learn does (a value
    only rounding sees, since R_ij multiplies x_i - x_j = 0; without one, R is inf and the
    coordinates NaN)."""
    d, _ = mds_problem(drifting_kernels_s(9, seed=4), 2)
    start = np.array([[0, 0], [0, 0], [1, 0], [2, 1], [2, 1], [-1, 2], [0, 3], [1, -2], [3, 3.0]])
    result = _assert_same(d, start)
    assert result.n_iter > 2


@pytest.mark.parametrize(("block_elements", "block_rows"), [(1, 1), (7, 3), (50, 4)])
def test_small_blocks_give_the_same_iterations(block_elements: int, block_rows: int) -> None:
    d, start = mds_problem(_repeated_kernels(), 2)
    _assert_same(d, start, block_elements=block_elements, block_rows=block_rows)


def test_a_stop_at_max_iter_is_the_same() -> None:
    d, start = mds_problem(drifting_kernels_s(30, seed=5), 2)
    assert _assert_same(d, start, max_iter=4).n_iter == 4
    assert _assert_same(d, start, max_iter=1).n_iter == 1


def test_embed_mds_is_scikit_learns_mds_without_calling_it(monkeypatch: pytest.MonkeyPatch) -> None:
    s = drifting_kernels_s(50, seed=6)
    d, start = mds_problem(s, 2)
    expected = _orient(_sklearn_mds(d, start, 2, 0)[0])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("embed_mds called scikit-learn's MDS")

    monkeypatch.setattr("sklearn.manifold.MDS", refuse)
    coords, _ = embed_mds(s, dims=2)
    np.testing.assert_allclose(coords, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize(
    ("d", "init", "match"),
    [
        (np.zeros((3, 4)), np.zeros((3, 2)), "square"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), np.zeros((2, 1)), "symmetric"),
        (np.eye(3), np.zeros((3, 2)), "zero on the diagonal"),
        (np.zeros((3, 3)), np.zeros((4, 2)), r"init must be \(3, dims\)"),
    ],
)
def test_bad_input_is_refused(d: np.ndarray, init: np.ndarray, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        smacof(d, init)


# ------------------------------------------------- against the former code, and over threads

_before = load_benchmark("baseline_smacof").smacof  # conetool/smacof.py at 5f07b49


def _collinear() -> np.ndarray:
    """Kernels on a straight line (S of ``u_k`` along one direction): a perfect fit in one
    dimension, so the stress falls towards rounding in two."""
    base = np.eye(6)[0]
    kernels = [base + 0.3 * k * np.eye(6)[1] for k in range(12)]
    return distance_matrix(lambda i: kernels[i].reshape(2, 3), 12)


_PROBLEMS = {
    "trajectory": lambda: mds_problem(drifting_kernels_s(60, seed=7), 2),
    "trajectory, 3 dims": lambda: mds_problem(drifting_kernels_s(45, seed=8), 3),
    "ties": lambda: mds_problem(_simplex(7), 2),
    "repeated kernels": lambda: mds_problem(_repeated_kernels(), 2),
    "collinear": lambda: mds_problem(_collinear(), 2),
    "K = 3": lambda: mds_problem(drifting_kernels_s(3, seed=9), 2),
    "K = 2": lambda: (np.array([[0.0, 0.7], [0.7, 0.0]]), np.array([[0.1, 0.2], [0.3, -0.1]])),
    "all zero": lambda: (np.zeros((5, 5)), np.arange(10.0).reshape(5, 2)),
    "coinciding start": lambda: (
        mds_problem(drifting_kernels_s(9, seed=4), 2)[0],
        np.array([[0, 0], [0, 0], [1, 0], [2, 1], [2, 1], [-1, 2], [0, 3], [1, -2], [3, 3.0]]),
    ),
}


@pytest.mark.parametrize("name", list(_PROBLEMS))
@pytest.mark.parametrize("threads", [1, 3])
def test_the_same_as_the_former_code(name: str, threads: int) -> None:
    """The iterations (count, coordinates, stress) of conetool/smacof.py as it was, whose
    stress was summed pair by pair at every iteration, on one thread; small blocks, so that
    there are many runs to share out."""
    d, start = _PROBLEMS[name]()
    max_iter = 50 if name == "all zero" else MDS_MAX_ITER  # never stops: 0 / 0 is no decrease
    expected = _before(d, start, max_iter=max_iter, eps=MDS_EPS)
    result = smacof(
        d, start, max_iter=max_iter, eps=MDS_EPS, block_elements=40, block_rows=3, threads=threads
    )
    assert result.n_iter == expected.n_iter
    scale = max(float(np.max(np.abs(expected.coords))), 1e-300)
    tolerance = 1e-10 if name == "ties" else 1e-12  # ties amplify rounding (see above)
    np.testing.assert_allclose(result.coords, expected.coords, rtol=0, atol=tolerance * scale)
    assert result.stress == pytest.approx(
        expected.stress, rel=1e-9, abs=1e-12 * float(np.sum(d * d))
    )


@pytest.mark.parametrize("name", ["trajectory", "collinear", "coinciding start"])
@pytest.mark.parametrize("factor", [0.0, np.inf])
def test_either_way_of_deciding_makes_scikit_learns_iterations(
    name: str, factor: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decrease from the Guttman product alone (a bound of 0: the stresses are never
    summed pair by pair) and the direct sums alone (an infinite bound) each stop where
    scikit-learn does."""
    monkeypatch.setattr("conetool.smacof.BOUND_FACTOR", factor)
    d, start = _PROBLEMS[name]()
    _assert_same(d, start)


def test_the_result_is_the_same_bits_for_any_thread_count() -> None:
    d, start = mds_problem(drifting_kernels_s(80, seed=10), 2)
    results = [
        smacof(d, start, max_iter=300, eps=MDS_EPS, block_elements=64, block_rows=2, threads=t)
        for t in (1, 2, 5, 40)
    ]
    for other in results[1:]:
        assert other.n_iter == results[0].n_iter
        assert other.stress == results[0].stress
        np.testing.assert_array_equal(other.coords, results[0].coords)


def test_threads_default_to_the_blas_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_limits

    import conetool.smacof as module

    seen: list[int] = []
    real = module._Walk.__init__

    def watched(self: module._Walk, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        seen.append(self.threads)

    monkeypatch.setattr(module._Walk, "__init__", watched)
    d, start = mds_problem(drifting_kernels_s(60, seed=11), 2)
    with threadpool_limits(limits=1, user_api="blas"):
        smacof(d, start, block_elements=40, block_rows=2)
    smacof(d, start, block_elements=40, block_rows=2, threads=2)
    assert seen == [1, 2]


def test_a_thread_count_below_one_is_refused() -> None:
    d, start = mds_problem(drifting_kernels_s(5, seed=12), 2)
    with pytest.raises(GeometryError, match="threads must be at least 1"):
        smacof(d, start, threads=0)
