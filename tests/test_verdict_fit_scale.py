"""The two-bend fit from products shared by all pairs of bends, against the design it replaced.

:func:`conetool.verdict_measures._two_bend_fits` used to build the whole ``(P, N, m + 3)``
design (every pair of candidate bends times every velocity point) and contract it three times;
it now puts each pair's normal equations together from ``(G, N)``-sized products and sums the
squared errors a bounded block of pairs at a time. ``_reference_fits`` below is the old code,
copied as it was, and both are run on random and realistic velocity curves: one to three lag
curves, ties in position (lags whose midpoints coincide) and in value (velocities at a floor),
falls of many decades within a step or two, irregular schedules, 20 to about 3,000 points.

Tolerances, and why:

- ``a`` and ``b`` are identical, and :func:`fit_phase_break` gives the same bends, step and
  range (exact equality): those are what the verdict reads.
- ``coef``: per pair, ``||coef - coef_ref|| <= sqrt(N) eps cond(gram) ||coef_ref||`` (2-norms,
  ``gram`` the ridged normal matrix). Both versions solve the same normal equations, whose
  entries differ only by the order of summation over the ``N`` points (about ``sqrt(N) eps``
  relative), so their solutions can differ by that times the condition number, and neither is
  closer to the exact solution (checked once against a long-double solve: both are off by about
  ``eps cond``). Adjacent bends make nearly collinear hinge columns: the condition reaches 4e6
  on 40 steps and 4e8 on 300, where the coefficients differ by up to 3e-8 relative, so a flat
  1e-9 would fail where the old code is no more right than the new one. The median pair differs
  by 4e-14 relative, 99.7% of them by under 1e-10; the largest difference is 0.13 of the bound.
- ``sse``: ``|sse - sse_ref| <= 1e-9 sse_ref + 1e-18 y.y``. Both sum the squares of explicit
  residuals: they agree to about 1e-15 relative, 6e-11 at worst (a poor, ill-conditioned pair
  on 3,000 points). The absolute term is for fits exact but for rounding (a noiseless line),
  whose residuals are the solve's own rounding and whose SSE (1e-19 to 1e-14 here) has only a
  few significant digits: they differ by up to 4e-18, 1e-3 of the bound.
  :func:`fit_phase_break` treats any SSE below ``1e-12 N`` as ``1e-12 N``.
- :class:`PhaseBreak`'s slopes within ``1e-9`` decades per 1,000 steps (plus ``1e-9``
  relative) and its ``rms`` within ``1e-9`` relative plus ``1e-12``: they come from one pair's
  ``coef`` and ``sse``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from benchmark_module import load_benchmark

import conetool.verdict_measures as vm
from conetool.trajectories import trajectory
from conetool.verdict_measures import (
    VelocityPoints,
    _candidates,
    _two_bend_fits,
    fit_phase_break,
    velocity_points,
)

EPS = float(np.finfo(np.float64).eps)


#: The former ``_two_bend_fits`` (the whole ``(P, N, m + 3)`` design at once), kept as the
#: baseline of ``benchmarks/bench_verdict_fit.py``: one copy for the benchmark and this test.
_reference_fits = load_benchmark("bench_verdict_fit").baseline_fits


def _fit_inputs(points: VelocityPoints) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, onehot, grid)`` as :func:`fit_phase_break` hands them to the fit."""
    x = points.middle
    y = np.log10(np.maximum(points.velocity, 1e-300))
    lags = np.unique(points.lag)
    onehot = (points.lag[:, None] == lags[None, :]).astype(np.float64)
    return x, y, onehot, _candidates(x)


def _curves(
    steps: np.ndarray,
    log_v: Callable[[np.ndarray], np.ndarray],
    *,
    noise: float,
    seed: int,
    multiples: tuple[int, ...] = (1, 2, 3),
    floor: float | None = None,
) -> VelocityPoints:
    """Velocity points of every pair of ``steps`` at the lags ``multiples * (steps[1] - steps[0])``:
    ``log10 v = log_v(midpoint) + 0.05 * multiple + noise * N(0, 1)``, at least ``floor``."""
    rng = np.random.default_rng(seed)
    steps = np.asarray(steps, dtype=np.float64)
    dt = float(steps[1] - steps[0])
    start, lag, velocity, dts = [], [], [], []
    for m in multiples:
        t = steps[np.isin(steps + m * dt, steps)]
        v = 10.0 ** (log_v(t + m * dt / 2.0) + 0.05 * m + noise * rng.standard_normal(t.size))
        start.append(t)
        lag.append(np.full(t.size, m * dt))
        velocity.append(v if floor is None else np.maximum(v, floor))
        dts.append(int(m * dt))
    return VelocityPoints(
        np.concatenate(start), np.concatenate(lag), np.concatenate(velocity), tuple(dts)
    )


def _knots(*points: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """``log10 v`` linear between ``(step, log10 v)`` knots."""
    xs, ys = zip(*points, strict=True)
    return lambda m: np.interp(m, xs, ys)


def _from_trajectory(name: str, seed: int, noise: float) -> VelocityPoints:
    t = trajectory(name, seed=seed, noise=noise)
    return velocity_points(t.steps, t.S, 100)


EVERY_100 = np.arange(0, 4001, 100.0)
DENSE_THEN_SPARSE = np.unique(np.concatenate([np.arange(0, 100, 5), np.arange(0, 3001, 100)]))

#: name -> velocity points (built lazily: some take a moment)
CASES: dict[str, Callable[[], VelocityPoints]] = {
    "20 points": lambda: _curves(
        np.arange(0, 901, 100.0), _knots((0, -1), (300, -3), (900, -3.2)), noise=0.1, seed=0
    ),
    "fall then flat": lambda: _curves(
        EVERY_100, _knots((0, -2), (1500, -5), (4000, -5.3)), noise=0.05, seed=1
    ),
    "one curve": lambda: _curves(
        EVERY_100, _knots((0, -2), (1000, -4), (4000, -4.5)), noise=0.2, seed=2, multiples=(1,)
    ),
    "two curves": lambda: _curves(
        EVERY_100, _knots((0, -2), (2500, -4), (4000, -4)), noise=0.1, seed=3, multiples=(1, 2)
    ),
    "steep fall": lambda: _curves(
        EVERY_100, _knots((0, -1), (1000, -1.5), (1100, -9.5), (4000, -10)), noise=0.02, seed=4
    ),
    "ties at a floor": lambda: _curves(
        EVERY_100, _knots((0, -2), (2000, -20), (4000, -20)), noise=0.1, seed=5, floor=1e-12
    ),
    "rise, fall, flat": lambda: _curves(
        EVERY_100, _knots((0, -3), (1200, -2), (2000, -5), (4000, -5)), noise=0.1, seed=6
    ),
    "dense then sparse": lambda: _curves(
        DENSE_THEN_SPARSE, _knots((0, -1), (300, -3), (3000, -3.5)), noise=0.1, seed=7
    ),
    "noiseless line": lambda: _curves(EVERY_100, _knots((0, -2), (4000, -4)), noise=0.0, seed=8),
    "100,000 steps": lambda: _curves(
        np.arange(0, 100_001, 1000.0), _knots((0, -2), (30_000, -4), (1e5, -4.2)), noise=0.1, seed=9
    ),
    "900 points": lambda: _curves(
        np.arange(0, 30_001, 100.0), _knots((0, -2), (8000, -4), (3e4, -4.5)), noise=0.3, seed=10
    ),
    "trajectory bounded": lambda: _from_trajectory("bounded", 0, 1e-3),
    "trajectory late-phase-I": lambda: _from_trajectory("late-phase-I", 1, 1e-4),
    "trajectory hover": lambda: _from_trajectory("hover", 2, 3e-3),
    "trajectory constant-velocity": lambda: _from_trajectory("constant-velocity", 0, 0.0),
}


def _fit_differences(
    x: np.ndarray, y: np.ndarray, onehot: np.ndarray, grid: np.ndarray
) -> dict[str, np.ndarray]:
    """Per pair ``(P,)``: how far ``_two_bend_fits`` is from ``_reference_fits``, each measure
    over the bound the module docstring sets (so at most 1 passes)."""
    a, b, sse, coef = _two_bend_fits(x, y, onehot, grid)
    ra, rb, rsse, rcoef = _reference_fits(x, y, onehot, grid)
    np.testing.assert_array_equal(a, ra)
    np.testing.assert_array_equal(b, rb)
    base = np.hstack([onehot, x[:, None] / 1000.0])  # (N, m + 1)
    hinge = np.maximum(x[None, :] - grid[:, None], 0.0) / 1000.0  # (G, N)
    out: dict[str, list[np.ndarray]] = {"coef": [], "sse": []}
    for first in range(0, a.size, 256):
        rows = slice(first, first + 256)
        design = np.concatenate(
            [
                np.broadcast_to(base, (a[rows].size, *base.shape)),
                hinge[a[rows]][:, :, None],
                hinge[b[rows]][:, :, None],
            ],
            axis=2,
        )  # (block, N, m + 3)
        gram = np.einsum("pni,pnj->pij", design, design)
        gram += 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(gram.shape[1])
        bound = np.sqrt(x.size) * EPS * np.linalg.cond(gram) * np.linalg.norm(rcoef[rows], axis=1)
        out["coef"].append(np.linalg.norm(coef[rows] - rcoef[rows], axis=1) / bound)
    out["sse"].append(np.abs(sse - rsse) / (1e-9 * rsse + 1e-18 * float(y @ y)))
    return {k: np.concatenate(v) for k, v in out.items()}


def _check_fits(x: np.ndarray, y: np.ndarray, onehot: np.ndarray, grid: np.ndarray) -> None:
    for measure, ratio in _fit_differences(x, y, onehot, grid).items():
        assert np.all(ratio <= 1.0), (measure, float(ratio.max()))


@pytest.mark.parametrize("case", list(CASES))
def test_the_fits_of_every_pair_of_bends_match_the_whole_design(case: str) -> None:
    _check_fits(*_fit_inputs(CASES[case]()))


def test_the_fits_match_on_about_3000_points_with_fewer_candidates() -> None:
    # 1,000 steps, 3 lags: 2,994 points; 30 candidates (435 pairs) keep the old design ~60 MB
    points = _curves(
        np.arange(0, 100_000, 100.0),
        _knots((0, -1), (20_000, -4), (1e5, -4.5)),
        noise=0.2,
        seed=11,
    )
    x, y, onehot, _ = _fit_inputs(points)
    assert x.size == 2994
    _check_fits(x, y, onehot, _candidates(x, limit=30))


@pytest.mark.parametrize("case", list(CASES))
def test_fit_phase_break_is_the_same_as_with_the_whole_design(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    points = CASES[case]()
    new = fit_phase_break(points)
    monkeypatch.setattr(vm, "_two_bend_fits", _reference_fits)
    old = fit_phase_break(points)
    assert (new is None) == (old is None)
    if new is None or old is None:
        return
    same = ("step", "low", "high", "bends", "points", "curves")
    assert {k: getattr(new, k) for k in same} == {k: getattr(old, k) for k in same}
    for name in ("slope_before", "slope_after"):
        assert getattr(new, name) == pytest.approx(getattr(old, name), rel=1e-9, abs=1e-9)
    assert new.rms == pytest.approx(old.rms, rel=1e-9, abs=1e-12)
