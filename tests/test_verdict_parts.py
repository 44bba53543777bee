"""The verdict's parts, each against numbers computed by hand.

tests/test_verdict.py checks the final regime on labelled trajectories; here every measurement
(:mod:`conetool.verdict_measures`), every Phase II reading (:mod:`conetool.verdict_phase2`) and
every branch of :func:`conetool.verdict.phase_verdict` is checked for exact values on inputs
built so that the expected value can be worked out on paper.

Most verdict-level inputs come from :func:`built_s`: ``S(t, t') = (t' - t) v(midpoint)`` for a
chosen ``log10 v``, so the velocity of every pair at every lag is exactly ``v`` at the pair's
midpoint, where the fit places it, and ``log10 v`` is exactly piecewise linear when asked to be.
Larger lags can be given another law (``far``) to set what Phase II's lag growth and reference
curves see.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from conetool.verdict import VerdictRules, phase_verdict
from conetool.verdict_measures import (
    LagGrowth,
    VelocityPoints,
    VelocityTrend,
    _candidates,
    _step_quarters,
    _weighted_median,
    fit_phase_break,
    lag_growth,
    velocity_drop,
    velocity_points,
    velocity_trend,
)
from conetool.verdict_phase2 import (
    Reading,
    criteria_readings,
    default_references,
    judge_reference,
    user_references,
)

Law = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def knots(*points: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """``log10 v`` linear between the given ``(step, log10 v)`` knots."""
    xs, ys = zip(*points, strict=True)
    return lambda m: np.interp(m, xs, ys)


def built_s(
    steps: np.ndarray,
    log_v: Callable[[np.ndarray], np.ndarray],
    far: Law | None = None,
    near: int = 300,
) -> np.ndarray:
    """``S = lag * 10**log_v(midpoint)``; ``far(t, t', lag)`` instead for lags above ``near``."""
    t = np.asarray(steps, dtype=np.float64)
    a, b = np.minimum.outer(t, t), np.maximum.outer(t, t)
    lag = b - a
    s = lag * 10.0 ** log_v((a + b) / 2.0)
    if far is not None:
        s = np.where(lag > near, far(a, b, lag), s)
    np.fill_diagonal(s, 0.0)
    return s


def lag_only_s(steps: np.ndarray, law: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``S(t, t') = law(|t' - t|)``, zero on the diagonal."""
    t = np.asarray(steps, dtype=np.float64)
    lag = np.abs(t[:, None] - t[None, :])
    s = np.where(lag > 0, law(np.maximum(lag, 1.0)), 0.0)
    return s


STEPS_2000 = np.arange(0, 2001, 100)  # 21 steps: every midpoint of lags 100-300 is a candidate
STEPS_3000 = np.arange(0, 3001, 100)
#: velocity 1e-2 falling to 1e-4 over steps 0-1,000, then flat: Phase I ends at 1,000
FALL_THEN_FLAT = knots((0, -2.0), (1000, -4.0), (3000, -4.0))


def phase_two_far(
    law: Callable[[np.ndarray], np.ndarray],
    log_v: Callable[[np.ndarray], np.ndarray] = FALL_THEN_FLAT,
) -> Law:
    """Between two Phase II steps (from 1,000 on) at lags above 300: ``law(lag)``; before
    Phase II, ``lag * 10**log_v(midpoint)`` as :func:`built_s` gives at the smaller lags."""

    def far(a: np.ndarray, b: np.ndarray, lag: np.ndarray) -> np.ndarray:
        return np.where(a >= 1000, law(lag), lag * 10.0 ** log_v((a + b) / 2.0))

    return far


# --- velocity_points ---------------------------------------------------------------------------


def test_velocity_points_keep_every_multiple_of_dt_with_three_pairs_and_drop_one_with_two() -> None:
    # S = 0.01 * (steps apart / 100)^2: v = 1e-4 at lag 100, 2e-4 at 200, 3e-4 at 300
    steps = np.arange(0, 501, 100)
    s = lag_only_s(steps, lambda d: 0.01 * (d / 100.0) ** 2)
    p = velocity_points(steps, s, 100)
    assert p.dts == (100, 200, 300)  # 5, 4 and 3 pairs
    np.testing.assert_array_equal(p.start, [0, 100, 200, 300, 400, 0, 100, 200, 300, 0, 100, 200])
    np.testing.assert_array_equal(p.lag, [100] * 5 + [200] * 4 + [300] * 3)
    np.testing.assert_allclose(p.velocity, [1e-4] * 5 + [2e-4] * 4 + [3e-4] * 3, rtol=1e-12)
    np.testing.assert_array_equal(
        p.middle, [50, 150, 250, 350, 450, 100, 200, 300, 400, 150, 250, 350]
    )
    short = velocity_points(steps[:5], s[:5, :5], 100)  # lag 300: only (0, 300) and (100, 400)
    assert short.dts == (100, 200) and short.start.size == 4 + 3


# --- fit_phase_break -----------------------------------------------------------------------------


def test_candidate_bends_stay_two_distinct_midpoints_from_either_end() -> None:
    # midpoints 0..5: of the grid 0, 0.5, ..., 5 only 1.5 to 3.5 have two midpoints on each side
    x = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    np.testing.assert_array_equal(_candidates(x), [1.5, 2.0, 2.5, 3.0, 3.5])


def test_an_exactly_piecewise_linear_log_velocity_gives_its_bends_and_slopes() -> None:
    # log10 v: slope -2 per 1,000 steps to step 1,000, flat to 1,500, then -1 per 1,000 steps
    s = built_s(STEPS_2000, knots((0, -2.0), (1000, -4.0), (1500, -4.0), (2000, -4.5)))
    fit = fit_phase_break(velocity_points(STEPS_2000, s, 100))
    assert fit is not None
    assert fit.bends == (1000.0, 1500.0) and fit.step == 1000.0
    assert fit.low == fit.high == 1000.0  # an exact fit: no other bend is within the bound
    assert fit.slope_before == pytest.approx(-2.0, abs=1e-8)
    assert fit.slope_after == pytest.approx(0.0, abs=1e-8)
    assert fit.rms < 1e-8
    assert (fit.points, fit.curves) == (20 + 19 + 18, 3)  # pairs at lags 100, 200, 300 of 21 steps


# --- velocity_drop -------------------------------------------------------------------------------


def test_velocity_drop_levels_are_the_two_largest_before_and_the_median_after() -> None:
    # before 50: 8, 2, 4 -> early = sqrt(8 * 4); after: 1, 1, 10, 1, 3 -> late = median = 1;
    # 3-point running medians 1, 1, 1, 3, 2 -> rebound 3 (a lone 10 is not a rebound)
    v = np.array([8.0, 2.0, 4.0, 1.0, 1.0, 10.0, 1.0, 3.0])
    start = np.arange(v.size) * 10.0
    points = VelocityPoints(start, np.full(v.size, 10.0), v, (10,))
    drop = velocity_drop(points, break_step=25.0)  # midpoints 5, 15, 25 before; 35.. after
    assert drop is not None
    assert drop.early == pytest.approx(np.sqrt(32.0), rel=1e-12)
    assert drop.late == 1.0
    assert drop.factor == pytest.approx(np.sqrt(32.0), rel=1e-12)
    assert drop.rebound == 3.0
    assert (drop.before, drop.after) == (3, 5)


# --- lag_growth ----------------------------------------------------------------------------------


def test_lag_growth_of_a_power_law_is_its_exponent_over_phase_two_from_its_first_step() -> None:
    # steps 0..10 from start 0: lags 2..6 (1/5 and 3/5 of 10) fall in the bins {2}, {3}, {4},
    # {5, 6} (edges 2 * 3^(k/6)); pairs 9 + 8 + 7 + 6 + 5 = 35; S = 0.01 lag^0.7
    steps = np.arange(11)
    s = lag_only_s(steps, lambda d: 0.01 * d**0.7)
    g = lag_growth(steps, s, 0)
    assert g is not None
    assert g.exponent == pytest.approx(0.7, abs=1e-12)
    assert (g.pairs, g.bins, g.lag_low, g.lag_high) == (35, 4, 2, 5)  # last bin's median lag: 5
    assert g.s_low == pytest.approx(0.01 * 2**0.7, rel=1e-12)
    assert g.s_high == pytest.approx(0.01 * 5**0.7, rel=1e-12)
    assert g.s_max == pytest.approx(0.01 * 10**0.7, rel=1e-12)  # the pair (0, 10)


def test_lag_growth_weights_each_bin_by_the_root_of_its_pair_count() -> None:
    # bins {2}, {3}, {4}, {5, 6} hold 9, 8, 7 and 11 pairs; S = 1 at lag 2, 2 beyond: the
    # weighted least-squares slope of ln S on ln(median lag) with weights sqrt(count)
    steps = np.arange(11)
    s = lag_only_s(steps, lambda d: np.where(d <= 2, 1.0, 2.0))
    x = np.log([2.0, 3.0, 4.0, 5.0])
    y = np.log([1.0, 2.0, 2.0, 2.0])
    w = np.sqrt([9.0, 8.0, 7.0, 11.0])
    xm, ym = (w * x).sum() / w.sum(), (w * y).sum() / w.sum()
    expected = (w * (x - xm) * (y - ym)).sum() / (w * (x - xm) ** 2).sum()
    unweighted = np.polyfit(x, y, 1)[0]
    assert abs(expected - unweighted) > 1e-3  # the weights matter here
    g = lag_growth(steps, s, 0)
    assert g is not None and g.exponent == pytest.approx(expected, rel=1e-12)


def test_lag_bins_start_at_the_smallest_lag_in_range_not_at_a_fifth_of_phase_two() -> None:
    # steps 0..12: lags from 2.4 to 7.2, so 3..7; edges 3 * 2.4^(k/6) = 3, 3.47, 4.02, 4.65, 5.38,
    # 6.22, 7.2 put each lag in a bin of its own (edges from 2.4 would put 6 and 7 together)
    steps = np.arange(13)
    s = lag_only_s(steps, lambda d: 0.01 * d**1.5)
    g = lag_growth(steps, s, 0)
    assert g is not None
    assert (g.bins, g.lag_low, g.lag_high) == (5, 3, 7)
    assert g.pairs == 10 + 9 + 8 + 7 + 6
    assert g.exponent == pytest.approx(1.5, abs=1e-12)


def test_lag_growth_reads_steps_billions_apart_as_their_spacing_in_units() -> None:
    # Steps counted in examples or tokens seen: spacings of 3e9 and more, whose products overflowed
    # int64 (IndexError from the weighted median, or a square root of a negative count). The
    # same uneven schedule in any unit is the same reading.
    small = np.array([0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40])
    for unit in (1, 10**9, 3 * 10**10, 2 * 10**11):
        steps = small * unit
        s = lag_only_s(steps, lambda d, u=unit: 0.01 * (d / u) ** 0.8)
        g = lag_growth(steps, s, 0)
        assert g is not None
        if unit == 1:
            want = g
        assert g.exponent == pytest.approx(want.exponent, rel=1e-9)
        assert (g.pairs, g.bins) == (want.pairs, want.bins)


def test_the_weighted_median_is_the_median_of_each_value_repeated_by_its_weight() -> None:
    # reference: np.median of the values each repeated as often as its whole-number weight (the
    # mean of the two middle ones where half the weight falls between two values)
    assert _weighted_median(np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4)) == 2.5
    assert (
        _weighted_median(np.array([3.0, 1.0, 2.0]), np.array([2, 1, 1])) == 2.5
    )  # 1 2 | 3 3: (2 + 3) / 2
    assert _weighted_median(np.array([3.0, 1.0, 2.0]), np.array([3, 1, 1])) == 3.0  # 1 2 (3) 3 3
    # sums past 2**53 round (2**60 + 1 is 2**60): the search still ends on a value, the heavy one
    heavy = [2.0**60, 1.0, 1.0]
    assert _weighted_median(np.array([1.0, 2.0, 3.0]), np.array(heavy)) == 1.0
    assert _weighted_median(np.array([1.0, 2.0, 3.0]), np.array(heavy[::-1])) == 3.0
    rng = np.random.default_rng(5)
    for _ in range(400):
        n = int(rng.integers(1, 7))
        values = rng.integers(0, 5, size=n).astype(np.float64)  # ties included
        weights = rng.integers(1, 4, size=n)
        expected = float(np.median(np.repeat(values, weights)))
        assert _weighted_median(values, weights) == expected, (values, weights)


def test_trend_quarters_are_quarters_of_the_steps_the_pairs_stand_for() -> None:
    # evenly spaced: the first and the last N // 4 pairs
    first, last = _step_quarters(np.arange(0, 80, 10))
    assert first.tolist() == [True, True] + [False] * 6
    assert last.tolist() == [False] * 6 + [True, True]
    # starts 0, 10, 20, 30, 1000 stand for 10, 10, 10, 970, 970 steps (1,970): the first quarter
    # (up to step 492.5) holds the first three pairs whole; none starts in the last quarter (from
    # step 1,477.5), so the last pair stands for it
    first, last = _step_quarters(np.array([0, 10, 20, 30, 1000]))
    assert first.tolist() == [True, True, True, False, False]
    assert last.tolist() == [False, False, False, False, True]
    # 0, 1000, 1010, 1020, 1030 (1,000, then 10 each: 1,040 steps): no pair ends in the first
    # quarter (by step 260), the first pair stands for it; the last quarter (from step 780)
    # holds the four pairs from 1,000 on
    first, last = _step_quarters(np.array([0, 1000, 1010, 1020, 1030]))
    assert first.tolist() == [True, False, False, False, False]
    assert last.tolist() == [False, True, True, True, True]


# --- velocity_trend ------------------------------------------------------------------------------


def _trend_s(steps: np.ndarray, law: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``S(t, t + lag) = law(lag)``, doubled when ``t`` is before step 800."""
    t = np.asarray(steps, dtype=np.float64)
    s = lag_only_s(steps, law)
    return s * np.where(np.minimum.outer(t, t) < 800, 2.0, 1.0)


def test_velocity_trend_moves_to_the_first_lag_whose_s_is_ten_times_the_noise_floor() -> None:
    # steps 0..1600: S = 5e-6 (lag 100) and 2e-5 (lag 200), doubled before step 800. With floor
    # 1e-6: lag 100's median S, 7.5e-6, is under 1e-5; lag 200's, 4e-5, is not. Its 15 pairs
    # (t = 0..1400) give quarters of 3: head 2 * 2e-5 / 200, tail 2e-5 / 200
    steps = np.arange(0, 1601, 100)
    s = _trend_s(steps, lambda d: np.where(d <= 100, 5e-6, 2e-5))
    with_floor = velocity_trend(steps, s, 0, 100, noise_floor=1e-6)
    assert with_floor is not None
    assert (with_floor.dt, with_floor.points, with_floor.per_quarter) == (200, 15, 3)
    assert with_floor.head == pytest.approx(2e-7, rel=1e-12)
    assert with_floor.tail == pytest.approx(1e-7, rel=1e-12)
    assert with_floor.fall == pytest.approx(2.0, rel=1e-12)
    # without the floor: lag 100, 16 pairs, quarters of 4: head 1e-7, tail 5e-8
    plain = velocity_trend(steps, s, 0, 100)
    assert plain is not None
    assert (plain.dt, plain.points, plain.per_quarter) == (100, 16, 4)
    assert plain.head == pytest.approx(1e-7, rel=1e-12)
    assert plain.tail == pytest.approx(5e-8, rel=1e-12)


def test_velocity_trend_looks_no_further_than_a_quarter_of_phase_two_then_keeps_dt() -> None:
    # Phase II 0..1600: lags up to 400 are searched; all have S <= 2e-6 < 10 * 1e-6, so the trend
    # stays at lag 100 although lag 500 would clear the floor
    steps = np.arange(0, 1601, 100)
    s = _trend_s(steps, lambda d: np.where(d <= 400, 1e-6, 1e-3))
    trend = velocity_trend(steps, s, 0, 100, noise_floor=1e-6)
    assert trend is not None
    assert (trend.dt, trend.points) == (100, 16)
    assert trend.fall == pytest.approx(2.0, rel=1e-12)


def test_the_trend_of_uneven_steps_rests_on_its_smaller_quarter() -> None:
    # steps 0..40 every 10, then 200 and 210: the pairs 10 apart start at 0, 10, 20, 30 and 200
    # (10, 10, 10, 170 and 170 steps: 370); the first quarter (to step 92.5) holds three of them,
    # the last quarter the last one alone: per_quarter 1. S = 1e-3 before step 100, 1e-4 after
    steps = np.array([0, 10, 20, 30, 40, 200, 210])
    s = lag_only_s(steps, lambda d: np.ones_like(d, dtype=np.float64))
    s *= np.where(np.minimum.outer(steps, steps) < 100, 1e-3, 1e-4)
    trend = velocity_trend(steps, s, 0, 10)
    assert trend is not None
    assert (trend.dt, trend.points, trend.per_quarter) == (10, 5, 1)
    assert trend.head == pytest.approx(1e-4, rel=1e-12)  # S / lag: 1e-3 / 10
    assert trend.tail == pytest.approx(1e-5, rel=1e-12)
    assert trend.fall == pytest.approx(10.0, rel=1e-12)


# --- judge_reference, default_references, user_references ----------------------------------------


def test_a_reference_curve_compares_the_mean_of_its_last_third_with_its_middle_third() -> None:
    # tau 0, T 90: middle third [30, 60) = steps 30, 40, 50 (S 1, 2, 3: mean 2); last third
    # [60, 90] = 60..90 (S 3, 3, 3, 5: mean 3.5); growth (3.5 - 2) / 3.5 = 3/7
    steps = np.arange(0, 91, 10)
    s = np.zeros((10, 10))
    s[0] = [0.0, 9.0, 9.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 5.0]
    record = judge_reference(s, steps, 0, VerdictRules())
    assert record == {
        "ref": 0,
        "middle_third_points": 3,
        "last_third_points": 4,
        "level": 3.5,
        "middle_third_mean": 2.0,
        "growth": pytest.approx(3.0 / 7.0, rel=1e-12),
        "status": "rising",
    }
    # growth 3/7 is at most a tolerance of 0.5: a plateau; a level of 0.35 (S a tenth of the
    # above) at most 0.4: frozen (a lazy level is an S, below 2)
    assert judge_reference(s, steps, 0, VerdictRules(plateau_tolerance=0.5))["status"] == "plateau"
    assert judge_reference(s / 10, steps, 0, VerdictRules(lazy_level=0.4))["status"] == "frozen"


def test_default_references_sit_ten_thirty_and_fifty_percent_into_phase_two() -> None:
    # Phase II 1,000..2,000: 1,000 + 0.1, 0.3, 0.5 of 1,000
    assert default_references(STEPS_2000, 1000, VerdictRules()) == [1100, 1300, 1500]


def test_a_reference_exactly_at_the_end_of_phase_one_is_used_and_one_before_it_is_not() -> None:
    user = user_references([900, 1000], STEPS_2000, 1000, VerdictRules())
    assert user[0] == {"ref": 900, "used": False, "why": "in Phase I (before step 1000)"}
    assert user[1] == {"ref": 1000, "used": True, "why": ""}


# --- criteria_readings ---------------------------------------------------------------------------


def _growth(exponent: float = 0.1, s_high: float = 1e-2, s_max: float = 2e-2) -> LagGrowth:
    return LagGrowth(exponent, 100, 6, 200, 600, 1e-2, s_high, s_max)


def _reads(readings: list[dict], name: str) -> dict:
    return next(c for c in readings if c["name"] == name)


def test_a_spread_whose_largest_lags_sit_at_the_noise_floor_reads_frozen() -> None:
    # s_max 5e-4 is above lazy_level 1e-4, but the median S at the largest lags, 2e-4, is within
    # 3x the floor 1e-4
    r = Reading(STEPS_2000, VerdictRules(), noise=1e-4)
    spread = _reads(
        criteria_readings(r, _growth(s_high=2e-4, s_max=5e-4), None, [], None), "spread"
    )
    assert spread["reads"] == "frozen" and spread["at_noise_floor"]
    r = Reading(STEPS_2000, VerdictRules(), noise=5e-5)  # 3x 5e-5 < 2e-4: moving
    spread = _reads(
        criteria_readings(r, _growth(s_high=2e-4, s_max=5e-4), None, [], None), "spread"
    )
    assert spread["reads"] == "moving" and not spread["at_noise_floor"]


@pytest.mark.parametrize(
    ("exponent", "reads"),
    [
        (0.25, "bounded"),
        (0.26, "unsettled"),
        (0.35, "unsettled"),
        (0.49, "unsettled"),
        (0.5, "drift"),
    ],
)
def test_the_lag_exponent_reads_bounded_unsettled_or_drift(exponent: float, reads: str) -> None:
    # bounded at or below 0.25, drift at or above 0.5, unsettled in between
    r = Reading(STEPS_2000, VerdictRules(), noise=None)
    lag = _reads(criteria_readings(r, _growth(exponent), None, [], None), "lag growth")
    assert lag["reads"] == reads and lag["value"] == exponent


def test_the_velocity_trend_is_at_the_noise_floor_by_its_s_not_its_velocity() -> None:
    # tail velocity 1e-5 at lag 100: S = 1e-3, above 3x the floor 1e-4 (the velocity is below it)
    r = Reading(STEPS_2000, VerdictRules(), noise=1e-4)
    trend = VelocityTrend(fall=1.5, points=20, per_quarter=5, head=1.5e-5, tail=1e-5, dt=100)
    reading = _reads(criteria_readings(r, None, trend, [], None), "velocity trend")
    assert not reading["at_noise_floor"] and reading["reads"] == "steady"
    low = VelocityTrend(fall=1.5, points=20, per_quarter=5, head=1.5e-6, tail=1e-6, dt=100)
    reading = _reads(criteria_readings(r, None, low, [], None), "velocity trend")
    assert reading["at_noise_floor"]  # S = 1e-4 is within 3x


# --- phase_verdict: question 1 -------------------------------------------------------------------


def test_a_kernel_still_moving_between_two_later_steps_is_not_lazy_without_phase_one() -> None:
    # every S is 1e-6 except between steps 500 and 600 (not involving the first step): S = 1
    steps = np.arange(0, 2001, 100)
    s = np.full((21, 21), 1e-6)
    np.fill_diagonal(s, 0.0)
    s[5, 6] = s[6, 5] = 1.0
    v = phase_verdict(steps, s)
    assert v.numbers["max_distance"] == 1.0
    assert "never moved" not in v.explanation


def test_a_first_fall_of_half_a_decade_ends_phase_one_when_min_fall_is_half_min_drop() -> None:
    # log10 v falls 1.2 per 1,000 steps to 500 (0.54 decades from the first midpoint, 50: above
    # 0.5 * log10(5) = 0.35), then 0.5 per 1,000 (less than half as steep) to 1,500, then flat.
    # Early level 10^-2.12 (midpoints 50, 150), Phase II level 10^-2.975 (median, at 1,250)
    s = built_s(STEPS_2000, knots((0, -2.0), (500, -2.6), (1500, -3.1), (2000, -3.1)))
    v = phase_verdict(STEPS_2000, s)
    assert v.phase1_end == 500
    vel = v.numbers["velocity"]
    assert vel["bends"] == [500.0, 1500.0]
    assert vel["slope_before"] == pytest.approx(-1.2, abs=1e-8)
    assert vel["slope_after"] == pytest.approx(-0.5, abs=1e-8)
    assert vel["drop_factor"] == pytest.approx(10 ** (-2.12 + 2.975), rel=1e-8)


def test_a_velocity_still_falling_a_third_less_steeply_has_not_ended_phase_one() -> None:
    # log10 v: slopes -3, -2, -1.4 per 1,000 steps (bends 600, 1,200). Neither bend ends a fall
    # (the next segment is not less than half as steep); the last one steepens by 0.6, under
    # half of 2: undetermined, though the velocity fell over 1,000x
    s = built_s(STEPS_2000, knots((0, -2.0), (600, -3.8), (1200, -5.0), (2000, -6.12)))
    v = phase_verdict(STEPS_2000, s)
    assert v.regime == "undetermined" and v.phase1_end is None
    vel = v.numbers["velocity"]
    assert vel["bends"] == [600.0, 1200.0]
    assert vel["slope_before"] == pytest.approx(-2.0, abs=1e-8)
    assert vel["slope_after"] == pytest.approx(-1.4, abs=1e-8)
    assert vel["levels_off"] is False and vel["drop_factor"] > 1000
    assert "still falling at the end" in v.explanation


def test_a_velocity_that_climbs_back_to_two_thirds_of_its_early_level_is_no_two_phase() -> None:
    # log10 v: -2 to -4 by 800, flat to 1,600, back up to -2 at 2,000. Early 10^-2.25, late 1e-4
    # (56x); the last running median, of the midpoints 1,850 (-2.75) and 1,950 (-2.25), is
    # (10^-2.75 + 10^-2.25) / 2 = 0.66 of the early level: above early / sqrt(5) = 0.45 of it
    s = built_s(STEPS_2000, knots((0, -2.0), (800, -4.0), (1600, -4.0), (2000, -2.0)))
    v = phase_verdict(STEPS_2000, s)
    assert v.regime == "no-two-phase" and v.phase1_end is None
    vel = v.numbers["velocity"]
    assert vel["early_level"] == pytest.approx(10**-2.25, rel=1e-9)
    assert vel["phase2_level"] == pytest.approx(1e-4, rel=1e-9)
    assert vel["rebound"] == pytest.approx((10**-2.75 + 10**-2.25) / 2 / 1e-4, rel=1e-9)
    assert vel["stays_down"] is False and vel["levels_off"] is True
    assert "climbs back" in v.explanation


# --- phase_verdict: question 2 -------------------------------------------------------------------


def test_phase_two_counts_the_step_that_ends_phase_one() -> None:
    # Phase I ends at 1,000; Phase II is 1,000..3,000: 21 stored steps, exactly min_phase2_steps
    s = built_s(STEPS_3000, FALL_THEN_FLAT, phase_two_far(lambda d: 1e-4 * np.minimum(d, 600)))
    v = phase_verdict(STEPS_3000, s, rules=VerdictRules(min_phase2_steps=21))
    assert v.phase1_end == 1000
    assert v.numbers["phase2"] == {"start": 1000, "steps": 21}
    assert "Phase II holds only" not in v.explanation and "criteria" in v.numbers


def test_two_plateaus_and_two_rising_references_read_split() -> None:
    # Phase II S = 1e-4 min(lag, 600). Middle and last thirds of [tau, 3000]: tau 1,200 and
    # 1,600 see S at 600+ almost throughout (growth 0 and 1/30: plateau), 2,000 sees 0.05 then
    # 0.06 (growth 1/6), the user's 2,200 sees 0.04 then 0.06 (growth 1/3): rising. 2 against 2
    s = built_s(STEPS_3000, FALL_THEN_FLAT, phase_two_far(lambda d: 1e-4 * np.minimum(d, 600)))
    v = phase_verdict(STEPS_3000, s, refs=[2200])
    assert v.phase1_end == 1000
    growth = {r["ref"]: (r["growth"], r["status"]) for r in v.numbers["references"]}
    assert growth == {
        1200: (pytest.approx(0.0, abs=1e-12), "plateau"),
        1600: (pytest.approx(1 / 30, rel=1e-9), "plateau"),
        2000: (pytest.approx(1 / 6, rel=1e-9), "rising"),
        2200: (pytest.approx(1 / 3, rel=1e-9), "rising"),
    }
    refs = _reads(v.numbers["criteria"], "reference curves")
    assert refs["reads"] == "split" and refs["value"] == {"plateau": 2, "rising": 2}


def test_a_lag_exponent_of_0_35_leaves_the_regime_undetermined() -> None:
    # Phase II S = 0.03 (lag / 300)^0.35 at lags above 300: between bounded (0.25) and drift (0.5)
    law = phase_two_far(lambda d: 0.03 * (d / 300.0) ** 0.35)
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, FALL_THEN_FLAT, law))
    assert v.regime == "undetermined" and v.phase1_end == 1000
    lag = _reads(v.numbers["criteria"], "lag growth")
    assert lag["value"] == pytest.approx(0.35, abs=1e-12) and lag["reads"] == "unsettled"
    assert "more slowly than a random walk" in v.explanation


def test_phase_two_kernels_apart_by_no_more_than_the_noise_floor_are_lazy() -> None:
    # Phase II S = 2e-4 at lags above 300 (above lazy_level 1e-4); with a noise floor of 1e-4 the
    # median S at the largest lags is within 3x of it: frozen. Without the floor: a cone
    law = phase_two_far(lambda d: np.full_like(d, 2e-4))
    s = built_s(STEPS_3000, FALL_THEN_FLAT, law)
    v = phase_verdict(STEPS_3000, s, noise_floor=1e-4)
    assert v.regime == "lazy" and v.phase1_end == 1000
    spread = _reads(v.numbers["criteria"], "spread")
    assert spread["reads"] == "frozen" and spread["at_noise_floor"]
    assert spread["value"] == pytest.approx(0.03, rel=1e-12)  # lag 300 at v = 1e-4
    assert phase_verdict(STEPS_3000, s).regime == "cone"


def test_a_frozen_phase_two_read_by_spread_and_references_agrees() -> None:
    # velocity 1e-2 -> 1e-7 over 0..1,000, then flat; Phase II S = 5e-5 beyond lag 300: spread
    # (max 5e-5) and reference levels (5e-5) are at or below lazy_level 1e-4, the trend is
    # steady: two of the four readings say frozen, as a frozen kernel gives
    log_v = knots((0, -2.0), (1000, -7.0), (3000, -7.0))
    far = phase_two_far(lambda d: np.full_like(d, 5e-5), log_v)
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, log_v, far))
    assert v.regime == "lazy" and v.phase1_end == 1000
    reads = {c["name"]: c["reads"] for c in v.numbers["criteria"]}
    assert reads == {
        "spread": "frozen",
        "lag growth": "bounded",
        "reference curves": "frozen",
        "velocity trend": "steady",
    }
    assert v.numbers["agree"] is True


def test_a_lazy_phase_two_read_frozen_by_every_reading_agrees() -> None:
    # velocity 1e-2 -> 1e-7 over 0..1,000, then on to 1e-9 by 3,000 (a 100x fall: freezing);
    # Phase II S = 5e-5 beyond lag 300: spread, references and trend all say frozen/freezing
    log_v = knots((0, -2.0), (1000, -7.0), (3000, -9.0))
    far = phase_two_far(lambda d: np.full_like(d, 5e-5), log_v)
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, log_v, far))
    assert v.regime == "lazy" and v.phase1_end == 1000
    reads = {c["name"]: c["reads"] for c in v.numbers["criteria"]}
    assert reads["spread"] == "frozen" and reads["reference curves"] == "frozen"
    assert reads["velocity trend"] == "freezing"
    assert v.numbers["agree"] is True


def test_a_lazy_verdict_from_the_trend_alone_does_not_agree() -> None:
    # velocity 1e-2 -> 1e-4 over 0..1,000, then on to 1e-6 by 3,000 (a 100x fall: freezing), but
    # Phase II kernels 1e-2 apart beyond lag 300 (above lazy_level): the levels say moving
    log_v = knots((0, -2.0), (1000, -4.0), (3000, -6.0))
    far = phase_two_far(lambda d: np.full_like(d, 1e-2), log_v)
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, log_v, far))
    reads = {c["name"]: c["reads"] for c in v.numbers["criteria"]}
    assert v.regime == "lazy" and reads["velocity trend"] == "freezing", reads
    assert reads["spread"] == "moving"
    assert v.numbers["agree"] is False


def test_too_few_kernels_names_both_fixes_every_checkpoint_and_more_checkpoints() -> None:
    # A store made with `kernels --every` has fewer kernels than the run has checkpoints: the
    # fix is to compute the others, not only to save more often.
    steps = [0, 100, 200, 300]
    s = np.full((4, 4), 0.1) - 0.1 * np.eye(4)
    verdict = phase_verdict(steps, s)
    assert verdict.regime == "undetermined"
    assert "without `--steps` or `--every`" in verdict.explanation
    assert "`save_every`" in verdict.explanation


def test_the_reference_curves_majority_reading_frozen_makes_phase_two_lazy_alone() -> None:
    """The code's route to lazy that the README's regime table left out (found by helper 110's
    mutation check): every Phase II pair at 5e-5 (under lazy_level) but one, S(1000, 3000) =
    1e-3, so the spread reads moving; the reference curves read frozen and decide, and
    numbers['agree'] says the spread did not agree."""
    log_v = knots((0, -2.0), (1000, -7.0), (3000, -7.0))
    far = phase_two_far(lambda d: np.full_like(d, 5e-5), log_v)
    s = built_s(STEPS_3000, log_v, far)
    s[10, 30] = s[30, 10] = 1e-3  # steps 1000 and 3000
    v = phase_verdict(STEPS_3000, s)
    reads = {c["name"]: c["reads"] for c in v.numbers["criteria"]}
    assert reads["spread"] == "moving" and reads["reference curves"] == "frozen", reads
    assert reads["lag growth"] == "bounded" and reads["velocity trend"] == "steady", reads
    assert v.regime == "lazy" and v.numbers["agree"] is False
    assert "the kernel froze (reference curves)" in v.explanation
