"""`distance`'s numbers against an independent plain-numpy implementation of their definitions.

Nothing here calls conetool to compute an expected value: S, the reference curves, the adjacent
distances and velocities come from DESIGN.md's formulas, written out below in float64 numpy;
the verdict's numbers (velocity drop, lag growth, reference-curve growth) from README's "How to
read the verdict" and the docstrings of :mod:`conetool.verdict_measures`. The inputs have
uneven step spacings, so that a number read at the wrong pair or the wrong lag shows.

- ``S(H, H') = 1 - <H, H'>_F / (||H||_F ||H'||_F)``; ``v(t) = S(t, t + dt) / dt`` for every
  stored pair ``dt`` apart (not only neighbours).
- velocity drop: geometric mean of the two largest ``dt`` velocities whose pair midpoint is at
  or before the bend, over the median of those after it.
- lag growth: Phase II pairs (stored steps at or after the end of Phase I) whose lag lies in
  ``[L/5, 3L/5]`` (``L`` Phase II's length), in 6 log-spaced bins from the smallest such lag to
  ``3L/5``; each pair ``(t_a, t_b)`` counted as many times as the pairs of steps it stands for,
  ``c_a c_b`` (``c``: the steps up to the next stored step, the last one as many as the one
  before it); the slope of ln(median S) on ln(median lag) per non-empty bin, each median over
  the pairs so counted, weighted least squares with weights sqrt(pairs so counted in the bin
  over the largest ``c`` squared). Evenly spaced Phase II steps count each pair once.
- reference curve from ``tau``: mean S(tau, t) over the stored ``t`` of the last third of
  ``[tau, T]`` against the middle third; growth ``(last - middle) / last``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_distance_command import reference_s

from conetool.geometry import adjacent, distance_matrix, distance_to_reference, kernel_distance
from conetool.verdict import phase_verdict
from conetool.verdict_measures import lag_growth

# ------------------------------------------------------------------------ reference formulas


def ref_lag_exponent(steps: np.ndarray, s: np.ndarray, start: int, bins: int = 6) -> float:
    """The lag-growth exponent as README and ``lag_growth``'s docstring define it."""
    keep = np.flatnonzero(steps >= start)
    length = float(steps[keep[-1]] - steps[keep[0]])
    phase2 = [int(steps[k]) for k in keep]
    cell = [b - a for a, b in itertools.pairwise(phase2)]
    cell.append(cell[-1])
    lags, values, counted = [], [], []
    for a in range(keep.size):
        for b in range(a + 1, keep.size):
            lag = float(steps[keep[b]] - steps[keep[a]])
            if length / 5 <= lag <= 3 * length / 5:
                lags.append(lag)
                values.append(float(s[keep[a], keep[b]]))
                counted.append(cell[a] * cell[b])
    lag_arr, val_arr, times = np.array(lags), np.array(values), np.array(counted)
    edges = np.exp(np.linspace(np.log(lag_arr.min()), np.log(3 * length / 5), bins + 1))
    xs, ys, ws = [], [], []
    for k in range(bins):
        last = k == bins - 1
        inbin = (lag_arr >= edges[k]) & (
            (lag_arr <= edges[k + 1]) if last else (lag_arr < edges[k + 1])
        )
        if inbin.any():
            reps = times[inbin] // np.gcd.reduce(times[inbin])  # the same medians, fewer copies
            xs.append(np.log(np.median(np.repeat(lag_arr[inbin], reps))))
            ys.append(np.log(np.median(np.repeat(val_arr[inbin], reps))))
            ws.append(np.sqrt(times[inbin].sum() / max(cell) ** 2))
    x, y, w = np.array(xs), np.array(ys), np.array(ws)
    # weighted least squares y = c + a x: solve the 2x2 normal equations
    design = np.stack([np.ones_like(x), x], axis=1) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(design, y * np.sqrt(w), rcond=None)
    return float(coef[1])


def ref_reference_growth(steps: np.ndarray, s: np.ndarray, tau: int) -> tuple[float, float]:
    """``(level, growth)`` of the reference curve from ``tau``: last-third mean and its growth
    over the middle third."""
    i = int(np.flatnonzero(steps == tau)[0])
    length = float(steps[-1] - tau)
    middle = [s[i, j] for j, t in enumerate(steps) if tau + length / 3 <= t < tau + 2 * length / 3]
    last = [s[i, j] for j, t in enumerate(steps) if t >= tau + 2 * length / 3]
    level = float(np.mean(last))
    return level, (level - float(np.mean(middle))) / level


# ------------------------------------------------------------------------ S and its curves

#: uneven: an early dense stretch, gaps of 3, 7, 20, 50 and a few steps off any grid
UNEVEN = np.array([0, 1, 2, 5, 8, 15, 22, 42, 62, 70, 120, 170, 173, 220, 270, 320])


def full_kernels(count: int, seed: int = 3) -> list[np.ndarray]:
    """Random ``(n, c, n, c)`` full kernels, each at its own positive scale over 20 decades."""
    rng = np.random.default_rng(seed)
    n, c = 4, 3
    base = rng.standard_normal((n * c, n * c + 1))
    out = []
    for k in range(count):
        a = base + 0.3 * rng.standard_normal(base.shape) * (k % 4)
        h = (a @ a.T).reshape(n, c, n, c)
        out.append(h * 10.0 ** rng.uniform(-10, 10))
    return out


def test_matrix_reference_curves_and_every_adjacent_pair_follow_design() -> None:
    kernels = full_kernels(UNEVEN.size)
    expected = reference_s(kernels)  # DESIGN's S, one pair at a time, in float64
    s = distance_matrix(lambda i: kernels[i], UNEVEN.size, block_size=3)
    np.testing.assert_allclose(s, expected, rtol=0, atol=1e-13)
    for i, j in ((0, 5), (7, 12), (15, 2)):
        assert kernel_distance(kernels[i], kernels[j]) == pytest.approx(expected[i, j], abs=1e-13)
    for tau in (0, 42, 173, 320):
        np.testing.assert_array_equal(
            distance_to_reference(s, UNEVEN, tau), s[int(np.flatnonzero(UNEVEN == tau)[0])]
        )
    # every dt that occurs between any two stored steps: every stored pair that far apart
    stored = {int(t): i for i, t in enumerate(UNEVEN)}
    all_dts = sorted({int(b - a) for a in UNEVEN for b in UNEVEN if b > a})
    for dt in all_dts:
        want = [
            (int(t), stored[int(t)], stored[int(t) + dt]) for t in UNEVEN if int(t) + dt in stored
        ]
        got = adjacent(s, UNEVEN, dt)
        assert [p.step for p in got] == [t for t, _, _ in want]
        for p, (_, i, j) in zip(got, want, strict=True):
            assert p.dt == dt
            assert p.distance == pytest.approx(expected[i, j], abs=1e-13)
            assert p.velocity == pytest.approx(expected[i, j] / dt, abs=1e-13 / dt)


# ------------------------------------------------------------------------ the verdict's numbers


def power_law_run(steps: np.ndarray, p: float, end: int = 1000) -> np.ndarray:
    """A two-phase S matrix: before ``end`` the velocity falls from 1e-2 to 1e-4 per step
    (``S = lag * v(midpoint)``, ``log10 v`` linear), and between two Phase II steps
    ``S = a |t - t'|^p`` exactly, with ``a`` such that the velocity at lag 100 is 1e-4."""
    t = steps.astype(np.float64)
    lo, hi = np.minimum.outer(t, t), np.maximum.outer(t, t)
    lag = hi - lo
    log_v = np.interp((lo + hi) / 2.0, [0.0, end, 1e9], [-2.0, -4.0, -4.0])
    s = lag * 10.0**log_v
    a = 1e-4 * 100.0 ** (1.0 - p)
    s = np.where(lo >= end, a * lag**p, s)
    np.fill_diagonal(s, 0.0)
    return s


EVEN = np.arange(0, 3001, 100)
#: every 100 steps plus steps off that grid in both phases (the verdict's dt stays 100)
IRREGULAR = np.unique(np.concatenate([EVEN, [30, 450, 1150, 1430, 1730, 2060, 2410, 2770]]))


@pytest.mark.parametrize("p", [0.1, 0.7, 1.3, 2.0])
def test_an_exact_power_law_in_phase_two_gives_its_exponent_to_1e_9(p: float) -> None:
    s = power_law_run(EVEN, p)
    v = phase_verdict(EVEN.tolist(), s)
    # the pairs across step 1,000 follow neither law: the fit may put the bend a step later
    assert v.phase1_end in (1000, 1100)
    lag = next(c for c in v.numbers["criteria"] if c["name"] == "lag growth")
    assert lag["value"] == pytest.approx(p, abs=1e-9)
    assert ref_lag_exponent(EVEN, s, v.phase1_end) == pytest.approx(p, abs=1e-9)


@pytest.mark.parametrize("p", [0.1, 0.7, 1.3, 2.0])
def test_verdict_numbers_on_uneven_steps_match_their_definitions(p: float) -> None:
    steps = IRREGULAR
    s = power_law_run(steps, p)
    v = phase_verdict(steps.tolist(), s)
    start = v.phase1_end
    assert start in (1000, 1100)  # as above
    numbers = v.numbers
    assert numbers["velocity"]["dt"] == 100

    # velocity drop across the fitted bend, at dt = 100: every stored pair 100 apart
    bend = numbers["velocity"]["bend"]
    stored = {int(t): i for i, t in enumerate(steps)}
    pairs = [(t + 50.0, s[stored[t], stored[t + 100]] / 100) for t in stored if t + 100 in stored]
    before = sorted((v_ for m, v_ in pairs if m <= bend), reverse=True)
    after = [v_ for m, v_ in pairs if m > bend]
    early = float(np.sqrt(before[0] * before[1]))
    late = float(np.median(after))
    assert numbers["velocity"]["early_level"] == pytest.approx(early, rel=1e-12)
    assert numbers["velocity"]["phase2_level"] == pytest.approx(late, rel=1e-12)
    assert numbers["velocity"]["drop_factor"] == pytest.approx(early / late, rel=1e-12)

    # lag growth: the definition to 1e-12; the power law itself to 1e-5 (see below)
    lag = next(c for c in numbers["criteria"] if c["name"] == "lag growth")
    assert lag["value"] == pytest.approx(ref_lag_exponent(steps, s, start), abs=1e-12)
    # a bin with an even number of pairs takes the mean of its two middle lags and of their
    # two S, which a power law other than p = 1 does not map onto each other: p to about 1e-6
    assert lag["value"] == pytest.approx(p, abs=1e-5)
    direct = lag_growth(steps, s, start)
    assert direct is not None and direct.exponent == lag["value"]

    # reference curves: the defaults, the stored steps nearest 10%, 30%, 50% into Phase II
    records = {r["ref"]: r for r in numbers["references"]}
    targets = [start + f * (3000 - start) for f in (0.1, 0.3, 0.5)]
    assert sorted(records) == [int(steps[np.argmin(np.abs(steps - x))]) for x in targets]
    for tau, record in records.items():
        level, growth = ref_reference_growth(steps, s, tau)
        assert record["level"] == pytest.approx(level, rel=1e-12)
        assert record["growth"] == pytest.approx(growth, rel=1e-12, abs=1e-15)

    # spread: the largest S between two Phase II kernels
    spread = next(c for c in numbers["criteria"] if c["name"] == "spread")
    phase2 = steps >= start
    assert spread["value"] == pytest.approx(s[np.ix_(phase2, phase2)].max(), rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_lag_growth_of_any_s_matrix_on_uneven_steps_is_its_definition(seed: int) -> None:
    # S with no law at all (so that the weights and every bin edge matter), on random uneven
    # steps whose lags fall on 1/5 and 3/5 of Phase II's length, from a stored step mid-run
    rng = np.random.default_rng(seed)
    steps = np.unique(rng.choice(np.arange(0, 4000, 10), 50, replace=False))
    start = int(steps[12])
    end = start + 1000 * (1 + int(rng.integers(0, 2)))  # lags of 1/5 and 3/5: multiples of 10
    steps = np.unique(
        np.concatenate([steps[steps < end], [start, start + (end - start) // 5, end]])
    )
    upper = np.triu(rng.uniform(1e-4, 1e-1, (steps.size, steps.size)), k=1)
    s = upper + upper.T
    got = lag_growth(steps, s, start)
    assert got is not None
    assert got.exponent == pytest.approx(ref_lag_exponent(steps, s, start), abs=1e-12)
