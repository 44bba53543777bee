"""conetool.negative_bound: the bound on the sum of the negative eigenvalues holds, is nearly
reached where B has many eigenvalues just above minus the shift, and is refused (None) where
one lies below it."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse.linalg
from synthetic_s import drifting_kernels_s

from conetool.embedding import _double_center
from conetool.negative_bound import _rounding_share, negative_sum_bound


def _spectrum_b(values: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((values.size, values.size)))
    b = (q * values) @ q.T
    return 0.5 * (b + b.T)


def _negative_sum(b: np.ndarray) -> float:
    values = np.linalg.eigvalsh(b)
    return float(-values[values < 0].sum())


def _shift(count: int, trace: float, budget: float) -> float:
    """The shift negative_sum_bound takes for this budget."""
    share = _rounding_share(count)
    return (0.99 * budget - share * trace) / (count * (1.0 + share))


@pytest.mark.parametrize("count", [100, 300, 1000])
def test_the_bound_holds_for_the_b_of_kernels(count: int) -> None:
    """B = -C S C of a trajectory: its negative eigenvalues are rounding, and N bounds their sum
    within the budget (a thousandth of the trace here)."""
    b = _double_center(-drifting_kernels_s(count, seed=count))
    sym = 0.5 * (b + b.T)
    trace = float(np.trace(sym))
    negative = _negative_sum(sym)
    bound = negative_sum_bound(sym.copy(), trace, 1e-9 * trace)
    assert bound is not None
    assert negative <= bound <= 1e-9 * trace


def _many_just_above_minus(factor: float) -> tuple[np.ndarray, float, float]:
    """B (200, 200): 100 eigenvalues in [1, 10] and 100 at ``-factor * delta``, delta the shift
    negative_sum_bound takes for the budget returned."""
    count = 200
    positive = np.linspace(1.0, 10.0, 100)
    trace_guess = float(positive.sum())
    budget = 1e-6 * trace_guess
    delta = _shift(count, trace_guess, budget)
    b = _spectrum_b(np.r_[positive, np.full(100, -factor * delta)], seed=3)
    return b, float(np.trace(b)), budget


def test_the_bound_is_nearly_reached_by_many_eigenvalues_just_above_minus_the_shift() -> None:
    """100 eigenvalues at -0.9 delta: the factorisation of B + delta I succeeds, and their sum
    (90 delta) is within the bound (about K delta = 200 delta), a bound that without its
    K delta term would fail."""
    b, trace, budget = _many_just_above_minus(0.9)
    negative = _negative_sum(b)
    bound = negative_sum_bound(b.copy(), trace, budget)
    assert bound is not None
    assert negative <= bound <= budget
    assert negative > 0.4 * bound


def test_an_eigenvalue_below_minus_the_shift_is_refused() -> None:
    b, trace, budget = _many_just_above_minus(1.1)
    assert negative_sum_bound(b.copy(), trace, budget) is None
    # one negative eigenvalue, -1e-6 of the largest, among many near 0
    values = np.r_[np.linspace(1.0, 10.0, 20), np.zeros(179), -1e-5]
    b = _spectrum_b(values, seed=4)
    trace = float(np.trace(b))
    assert negative_sum_bound(b.copy(), trace, 1e-9 * trace) is None
    assert negative_sum_bound(b.copy(), trace, 1e-3 * trace) is not None  # a wide budget


@pytest.mark.parametrize(("trace", "budget"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 1e-20)])
def test_no_trace_or_no_budget_leaves_the_matrix_alone(trace: float, budget: float) -> None:
    b = _spectrum_b(np.linspace(0.0, 1.0, 50))
    kept = b.copy()
    assert negative_sum_bound(b, trace, budget) is None
    np.testing.assert_array_equal(b, kept)


def test_arpack_cannot_bound_the_smallest_eigenvalue_of_the_b_of_kernels() -> None:
    """Why the module factorises: Lanczos for B's smallest eigenvalue (rounding, among hundreds
    near 0) does not converge."""
    b = _double_center(-drifting_kernels_s(400, seed=12))
    start = np.random.default_rng(0).standard_normal(400)
    with pytest.raises(scipy.sparse.linalg.ArpackNoConvergence):
        scipy.sparse.linalg.eigsh(b, k=1, which="SA", v0=start, tol=0, maxiter=20)


@pytest.mark.parametrize("count", [2, 200, 1000, 5000])
def test_the_rounding_share_is_the_documented_one(count: int) -> None:
    """N = K delta + c trace(A), c = (u + 2 sqrt(K) g) (1 + 2 K u), g = gamma_{K+1} / (1 -
    gamma_{K+1}), gamma_n = n u / (1 - n u), u = 2^-53 (module docstring), here in exact
    rationals but for the square root. (mutation check: u = 2^-52, gamma_K for gamma_{K+1},
    g = gamma, sqrt(K) g once, no 1 + 2 K u: each changes c by 1e-13 of it or more)"""
    u = Fraction(1, 2**53)
    gamma = (count + 1) * u / (1 - (count + 1) * u)
    g = gamma / (1 - gamma)
    root = Fraction(math.sqrt(count))  # sqrt(K) to rounding (1e-16 of it)
    want = (u + 2 * root * g) * (1 + 2 * count * u)
    assert _rounding_share(count) == pytest.approx(float(want), rel=1e-15, abs=0.0)


def test_no_shift_below_2_to_the_minus_900_is_taken() -> None:
    """A B of scale 1e-275: the budget (1e-9 of the trace) allows a shift of about 1e-287, below
    2^-900 (1.2e-271), where underflow is no longer far below the rounding of the diagonal:
    None. (mutation check: the smallest shift 2^-1000 took it)"""
    b = 1e-275 * _spectrum_b(np.r_[np.linspace(1.0, 10.0, 20), np.zeros(30)], seed=5)
    trace = float(np.trace(b))
    assert _shift(50, trace, 1e-9 * trace) < 2.0**-900
    assert negative_sum_bound(b.copy(), trace, 1e-9 * trace) is None
    # the same B at scale 1: a shift far above 2^-900, and a bound
    b = 1e275 * b
    trace = float(np.trace(b))
    assert negative_sum_bound(b.copy(), trace, 1e-9 * trace) is not None


def test_a_bound_above_the_budget_is_never_returned() -> None:
    """Returns "N (at most budget)": given a trace half the matrix's, the shift taken for the
    budget leaves N = K delta + c trace(A) above it (c trace(A) / 2 more than planned, with a
    budget of 10 c trace(A)): None. (mutation check: N returned whatever its size)"""
    count = 200
    b = _spectrum_b(np.r_[np.linspace(1.0, 10.0, 100), np.zeros(100)], seed=6)
    trace = float(np.trace(b))
    budget = 10.0 * _rounding_share(count) * trace
    assert negative_sum_bound(b.copy(), trace, budget) is not None
    assert negative_sum_bound(b.copy(), 0.5 * trace, budget) is None
