"""Behaviour of the measurement math that a mutation check found unpinned by the other tests.

Each test names the mutant it kills (a one-line change of conetool that the rest of the suite
let through) and checks the documented definition against numbers computed here in float64, or
an invariant of the definition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_distance_command import UNEVEN_STEPS, make_store, random_psd, read_csv
from test_verdict_parts import (
    FALL_THEN_FLAT,
    STEPS_2000,
    STEPS_3000,
    _growth,
    _reads,
    built_s,
    knots,
    phase_two_far,
)

from conetool import paths
from conetool.embedding import embed_kernels
from conetool.geometry import GeometryError, distance_matrix, kernel_distance
from conetool.kernel_regression import kernel_regression
from conetool.kernel_spectrum import spectrum_point
from conetool.noise_floor import kernel_noise
from conetool.ntk import empirical_ntk
from conetool.pipeline import distance, distance_outputs
from conetool.trajectories import default_steps
from conetool.units import format_bytes, parse_memory
from conetool.verdict import VerdictRules, phase_verdict
from conetool.verdict_measures import (
    PROFILE_BOUND,
    VelocityTrend,
    _candidates,
    fit_phase_break,
    velocity_points,
    velocity_trend,
)
from conetool.verdict_phase2 import (
    Reading,
    criteria_readings,
    default_references,
    judge_reference,
    nearest_step,
)

# --- the S matrix --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_matrix_of_one_kernel_at_several_scales_is_never_negative(seed: int) -> None:
    # S(aH, bH) = 0: 1 - <u, u> rounds to -2.2e-16 for some H, which the matrix clips to 0
    # (mutant: S not clipped from below)
    h = np.random.default_rng(seed).standard_normal((5, 5))
    kernels = [h, 3.0 * h, 0.7 * h, -h]
    s = distance_matrix(lambda i: kernels[i], len(kernels))
    assert np.all(s >= 0.0) and np.all(s <= 2.0)
    np.testing.assert_allclose(s[:3, :3], 0.0, atol=1e-15)
    np.testing.assert_allclose(s[3, :3], 2.0, atol=1e-15)
    for i in range(4):
        for j in range(4):
            assert s[i, j] == pytest.approx(kernel_distance(kernels[i], kernels[j]), abs=1e-15)


# --- embedding -----------------------------------------------------------------------------------


def _unit_kernel_s(seed: int, count: int = 7, dim: int = 30) -> np.ndarray:
    u = np.random.default_rng(seed).standard_normal((count, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    s = 1.0 - u @ u.T
    np.fill_diagonal(s, 0.0)
    return np.clip((s + s.T) / 2.0, 0.0, 2.0)


@pytest.mark.parametrize("method", ["mds", "pca"])
def test_an_s_matrix_with_rounding_asymmetry_is_embedded_as_its_symmetric_part(method: str) -> None:
    # (mutant: _check returns S as given, so SMACOF reads an asymmetric dissimilarity)
    s = _unit_kernel_s(0)
    rng = np.random.default_rng(1)
    skew = s + 1e-3 * np.triu(rng.random(s.shape), 1)
    got = embed_kernels(skew, method=method)
    want = embed_kernels((skew + skew.T) / 2.0, method=method)
    np.testing.assert_allclose(got.coords, want.coords, atol=1e-12)
    assert got.stress == pytest.approx(want.stress, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_mds_axes_follow_the_sign_convention(seed: int) -> None:
    # every axis centred, its entry of largest magnitude positive (mutant: MDS output not oriented)
    coords = embed_kernels(_unit_kernel_s(seed), method="mds", dims=2, seed=seed).coords
    np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-12)
    largest = coords[np.argmax(np.abs(coords), axis=0), np.arange(coords.shape[1])]
    assert np.all(largest > 0)


# --- spectrum and kernel regression --------------------------------------------------------------


def _asymmetric_kernel(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2 * n))
    k = x @ x.T / n
    return k + 0.05 * np.triu(rng.standard_normal((n, n)), 1)  # rounding-like asymmetry, larger


def test_spectrum_of_an_asymmetric_kernel_is_that_of_its_symmetric_part() -> None:
    # as_matrix symmetrises (mutant: it does not, and eigh reads one triangle only)
    k = _asymmetric_kernel(12, 0)
    labels = np.arange(12) % 3
    sym = (k + k.T) / 2.0
    got = spectrum_point(k, labels, 3, top_k=4)
    w = np.linalg.eigvalsh(sym)[::-1]
    np.testing.assert_allclose(got.eigenvalues, w[:4], rtol=1e-12)
    want = spectrum_point(sym, labels, 3, top_k=4)
    assert got.alignment == pytest.approx(want.alignment, rel=1e-12)
    assert got.effective_rank == pytest.approx(want.effective_rank, rel=1e-12)
    assert got.label_energy == pytest.approx(want.label_energy, rel=1e-12)


def test_kernel_regression_on_an_asymmetric_kernel_uses_its_symmetric_part() -> None:
    # (mutant: no symmetrisation; the Cholesky solve reads one triangle only)
    n, m, c = 12, 5, 3
    k = _asymmetric_kernel(n, 1)
    ke = np.random.default_rng(2).standard_normal((m, n))
    y, ye = np.arange(n) % c, np.arange(m) % c
    sym = (k + k.T) / 2.0
    got = kernel_regression(k, ke, y, ye, c, ridge=1e-2)
    lam = 1e-2 * np.trace(sym) / n
    coef = np.linalg.solve(sym + lam * np.eye(n), np.eye(c)[y] - 1.0 / c)
    np.testing.assert_allclose(got.predictions, ke @ coef, rtol=1e-9, atol=1e-12)
    assert got.ridge == pytest.approx(lam, rel=1e-12)


# --- noise floor ---------------------------------------------------------------------------------


def test_noise_relative_error_is_relative_to_the_float64_kernel() -> None:
    # relative_error = ||H - H64|| / ||H64|| (mutant: divided by ||H||, 2.5e-8 relatively off here)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    x = torch.randn(10, 6)
    noise = kernel_noise(net, x, subset=8, method="jacobian", device="cpu")
    h = empirical_ntk(net, x[:8], method="jacobian", device="cpu").double().numpy()
    h64 = empirical_ntk(net, x[:8], method="jacobian", dtype=torch.float64, device="cpu").numpy()
    want = np.linalg.norm(h - h64) / np.linalg.norm(h64)
    assert want > 1e-9  # float32 rounding is there to measure
    assert noise.relative_error == pytest.approx(want, rel=1e-12, abs=0.0)


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("1kB", 1000), ("1KiB", 1024), ("1K", 1024), ("3MB", 3 * 10**6), ("2TB", 2 * 10**12)],
)
def test_decimal_and_binary_units(text: str, size: int) -> None:
    # KB/MB/GB/TB are powers of 1000 (mutant: kB read as 1024)
    assert parse_memory(text) == size


@pytest.mark.parametrize(
    ("size", "text"),
    [(1023, "1023 B"), (1024, "1.0 KiB"), (2**20, "1.0 MiB"), (2**30, "1.0 GiB")],
)
def test_format_bytes_uses_a_unit_from_exactly_one_of_it(size: int, text: str) -> None:
    # "the largest unit that size reaches" (mutant: size must exceed the unit)
    assert format_bytes(size) == text


# --- the labelled trajectories' schedule ---------------------------------------------------------


def test_default_steps_are_every_5_to_100_then_every_100() -> None:
    steps = default_steps(400)
    np.testing.assert_array_equal(steps, [*range(0, 100, 5), 100, 200, 300, 400])
    assert steps.dtype == np.int64


# --- the verdict's measurements ------------------------------------------------------------------


def _direct_break_fits(x: np.ndarray, y: np.ndarray, lag: np.ndarray, grid: np.ndarray):
    """Every pair of bends fitted with lstsq on the explicit design: (a, b, sse, slopes)."""
    lags = np.unique(lag)
    onehot = (lag[:, None] == lags[None, :]).astype(np.float64)
    out = []
    for a in range(grid.size):
        for b in range(a + 1, grid.size):
            design = np.column_stack(
                [
                    onehot,
                    x / 1000.0,
                    np.maximum(x - grid[a], 0.0) / 1000.0,
                    np.maximum(x - grid[b], 0.0) / 1000.0,
                ]
            )
            coef, *_ = np.linalg.lstsq(design, y, rcond=None)
            resid = y - design @ coef
            m = lags.size
            slopes = np.cumsum(coef[m:])
            out.append((a, b, float(resid @ resid), slopes))
    return out


def test_break_range_and_rms_follow_the_profile_likelihood_over_every_pair_of_bends() -> None:
    # log10 v falls 2 decades to 1,000 then is flat, with seeded noise of 0.15 decades. Done
    # directly: the break's range is every bend ending a fall whose fit has
    # N ln(SSE / SSE_min) <= 3.84, and rms = sqrt(SSE_min / N)
    # (mutants: the bound without N; rms without the square root)
    noise = np.random.default_rng(3).normal(0.0, 0.15, STEPS_2000.size)
    s = built_s(STEPS_2000, knots((0, -2.0), (1000, -4.0), (2000, -4.0)))
    s = s * 10.0 ** (0.5 * (noise[:, None] + noise[None, :]))
    np.fill_diagonal(s, 0.0)
    points = velocity_points(STEPS_2000, s, 100)
    fit = fit_phase_break(points, min_fall=0.35)
    assert fit is not None
    x, y = points.middle, np.log10(points.velocity)
    grid = _candidates(x)
    fits = _direct_break_fits(x, y, points.lag, grid)
    n = x.size
    sse_min = min(f[2] for f in fits)
    lo, hi = x.min(), x.max()
    inside = []
    for a, b, sse, slopes in fits:
        lengths = np.array([grid[a] - lo, grid[b] - grid[a], hi - grid[b]]) / 1000.0
        falls = -slopes * lengths >= 0.35
        ends = [falls[i] and slopes[i + 1] > 0.5 * slopes[i] for i in range(2)]
        stop = a if ends[0] else (b if ends[1] else None)
        if stop is not None and n * np.log(sse / sse_min) <= PROFILE_BOUND:
            inside.append(grid[stop])
    assert fit.rms == pytest.approx(np.sqrt(sse_min / n), rel=1e-6)
    assert (fit.low, fit.high) == (min(inside), max(inside))
    assert fit.low < fit.step < fit.high  # a real range, not one point


def test_velocity_trend_searches_lags_up_to_a_quarter_of_phase_two_inclusive() -> None:
    # Phase II 0..4000, dt 100: lags up to 1,000 (a quarter) are searched. S = 1e-6 (lag/100)^2
    # reaches 10x the floor 9.5e-6 first at lag 1,000 (S 1e-4; lag 900 gives 8.1e-5)
    # (mutant: the search stops one multiple short)
    steps = np.arange(0, 4001, 100)
    lag = np.abs(steps[:, None] - steps[None, :]).astype(np.float64)
    s = 1e-6 * (lag / 100.0) ** 2
    trend = velocity_trend(steps, s, 0, 100, noise_floor=9.5e-6)
    assert trend is not None and trend.dt == 1000
    assert trend.points == 31 and trend.fall == pytest.approx(1.0, rel=1e-12)


# --- the verdict's rules -------------------------------------------------------------------------


def test_kernels_never_farther_apart_than_exactly_lazy_level_are_lazy() -> None:
    # "at or below lazy_level" (mutant: strictly below)
    steps = np.arange(0, 901, 100)
    lag = np.abs(steps[:, None] - steps[None, :])
    s = np.where(lag >= 900, 1e-4, np.where(lag > 0, 5e-5, 0.0))
    assert s.max() == 1e-4
    v = phase_verdict(steps, s)
    assert v.regime == "lazy" and v.phase1_end is None


def test_a_velocity_falling_by_exactly_min_drop_has_two_phases() -> None:
    # "falls by at least min_drop" (mutant: more than min_drop)
    s = built_s(STEPS_2000, FALL_THEN_FLAT)
    factor = phase_verdict(STEPS_2000, s).numbers["velocity"]["drop_factor"]
    v = phase_verdict(STEPS_2000, s, rules=VerdictRules(min_drop=factor))
    assert v.regime != "no-two-phase" and v.phase1_end == 1000


def test_the_rules_velocity_dt_is_the_one_used() -> None:
    # (mutant: the spacing that covers the run best is used whatever the rules say)
    s = built_s(STEPS_2000, FALL_THEN_FLAT)
    assert phase_verdict(STEPS_2000, s).numbers["velocity"]["dt"] == 100
    v = phase_verdict(STEPS_2000, s, rules=VerdictRules(velocity_dt=200))
    assert v.numbers["velocity"]["dt"] == 200 and v.numbers["velocity"]["lags"][0] == 200


def test_too_short_phase_two_advises_the_step_that_gives_min_phase2_steps() -> None:
    # Phase II 1,000..2,000 (11 steps every 100); 21 needed: steps 1,000 to 3,000
    # (mutant: one spacing too far)
    s = built_s(STEPS_2000, FALL_THEN_FLAT)
    v = phase_verdict(STEPS_2000, s, rules=VerdictRules(min_phase2_steps=21))
    assert v.regime == "undetermined" and v.phase1_end == 1000
    assert "to about step 3000)" in v.explanation and "1.5x longer" in v.explanation


def test_reference_curve_boundaries_are_inclusive() -> None:
    # growth exactly plateau_tolerance is a plateau; a level exactly lazy_level is frozen
    # (mutants: strict comparisons). tau 0, T 90: middle third 30..50 (0.75), last 60..90 (1.0)
    steps = np.arange(0, 91, 10)
    s = np.zeros((10, 10))
    s[0] = [0.0, 0.5, 0.5, 0.75, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0]
    record = judge_reference(s, steps, 0, VerdictRules(plateau_tolerance=0.25))
    assert record["growth"] == 0.25 and record["status"] == "plateau"
    assert judge_reference(s, steps, 0, VerdictRules(lazy_level=1.0))["status"] == "frozen"


def test_spread_reads_the_largest_phase_two_distance_not_the_largest_lag_median() -> None:
    # s_max 5e-4 above lazy_level 1e-4 while the median at the largest lags is 5e-5: moving
    # (mutant: the spread compares s_high with lazy_level)
    r = Reading(STEPS_2000, VerdictRules(), noise=None)
    spread = _reads(
        criteria_readings(r, _growth(s_high=5e-5, s_max=5e-4), None, [], None), "spread"
    )
    assert spread["reads"] == "moving" and spread["value"] == 5e-4


def test_a_velocity_falling_by_exactly_freeze_factor_is_freezing() -> None:
    # "falling by freeze_factor" (mutant: by more than freeze_factor)
    r = Reading(STEPS_2000, VerdictRules(), noise=None)
    trend = VelocityTrend(fall=5.0, points=20, per_quarter=5, head=5e-5, tail=1e-5, dt=100)
    assert _reads(criteria_readings(r, None, trend, [], None), "velocity trend")["reads"] == (
        "freezing"
    )


def test_phase_one_ends_at_the_nearest_stored_step_and_references_at_the_nearest_too() -> None:
    # (mutants: the next stored step at or after the position instead of the nearest)
    steps = np.arange(0, 2001, 100)
    assert [nearest_step(steps, x) for x in (1020.0, 1075.0, 1949.0)] == [1000, 1100, 1900]
    # Phase II 1,000..2,000 stored at 1,000, 1,100, 1,400, 2,000: 10%, 30%, 50% into it are
    # 1,100, 1,300, 1,500, whose nearest stored steps are 1,100, 1,400 and 1,400
    stored = np.array([0, 500, 1000, 1100, 1400, 2000])
    assert default_references(stored, 1000, VerdictRules()) == [1100, 1400]


@pytest.mark.parametrize(("law", "caveat"), [(3e-2, False), (None, True)])
def test_the_caveat_names_reference_curves_that_read_against_a_bounded_lag_growth(
    law: float | None, caveat: bool
) -> None:
    # Phase II 1,000..3,000. S constant 3e-2 at lags above 300: bounded, references plateau, no
    # caveat. S 3e-2 up to lag 1,200 (the lag growth reads lags 400-1,200: bounded) and 6e-2
    # above: the references at 1,200 and 1,600 read rising, 2,000 plateau; the caveat says so
    # (mutant: the map of opposite readings swapped)
    def far(d: np.ndarray) -> np.ndarray:
        return np.full_like(d, law) if law is not None else np.where(d <= 1200, 3e-2, 6e-2)

    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, FALL_THEN_FLAT, phase_two_far(far)))
    assert v.regime == "cone" and v.phase1_end == 1000
    assert v.numbers["agree"] is not caveat
    assert ("The reference curves read rising against the lag growth" in v.explanation) is caveat


def test_rules_with_equal_bounded_and_drift_exponents_are_refused() -> None:
    # bounded < drift is required (mutant: bounded <= drift)
    with pytest.raises(GeometryError, match="bounded < drift"):
        VerdictRules(bounded_exponent=0.5, drift_exponent=0.5)


# --- scale invariance at the ends of the float64 range -------------------------------------------


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-160, 1e-157, 1e157, 1e160, 1e200, 1e300])
def test_distance_and_matrix_are_scale_invariant_over_the_float64_range(scale: float) -> None:
    # S(aH, bH') = S(H, H') (DESIGN): kernels whose squared norm over- or underflows (or lands
    # among the subnormals) are rescaled, in the S matrix as in kernel_distance. Reference: the
    # direct formula on the unscaled kernels.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    b = a + 0.3 * rng.standard_normal((6, 6))
    want = 1.0 - np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    assert kernel_distance(scale * a, b) == pytest.approx(want, rel=1e-12)
    assert kernel_distance(scale * a, scale * b) == pytest.approx(want, rel=1e-12)
    kernels = [scale * a, scale * b, b]
    s = distance_matrix(lambda i: kernels[i], 3)
    np.testing.assert_allclose(s[0, 1:], [want, want], rtol=1e-12)
    np.testing.assert_allclose(s[1, 2], 0.0, atol=1e-15)


# --- conetool distance: defaults and the summary's numbers ---------------------------------------


@pytest.fixture
def uneven(tmp_path, monkeypatch) -> tuple[Path, list[np.ndarray]]:
    """A store of kernels at steps 0, 5, 10, 15, 20, 40, 60, 80; figures are not rendered."""
    monkeypatch.setattr(distance_outputs, "write_figure", lambda path, draw, *a, **kw: Path(path))
    kernels_ = random_psd(UNEVEN_STEPS)
    return make_store(tmp_path / "uneven", UNEVEN_STEPS, kernels_), kernels_


def test_distance_defaults_to_reference_step_0_and_summarises_each_dt(uneven) -> None:
    # no --ref: the reference is step 0 (mutant: another stored step). Each dt's summary: final
    # and largest S, peak velocity and its step, from the pairs computed directly (mutant: the
    # smallest velocity reported as the peak)
    root, kernels_ = uneven
    result = distance(root)
    assert result.refs == [0]
    rows = read_csv(paths.to_ref_csv(root))
    assert list(rows[0]) == ["step", "ref_0"]
    for row, kernel in zip(rows, kernels_, strict=True):
        assert float(row["ref_0"]) == pytest.approx(kernel_distance(kernel, kernels_[0]), abs=1e-12)
    index = {step: i for i, step in enumerate(UNEVEN_STEPS)}
    for curve in result.adjacent_curves:
        starts = [t for t in UNEVEN_STEPS if t + curve.dt in index]
        direct = [
            kernel_distance(kernels_[index[t]], kernels_[index[t + curve.dt]]) for t in starts
        ]
        peak = int(np.argmax(direct))
        assert curve.pairs == len(starts)
        assert curve.final == pytest.approx(direct[-1], abs=1e-12)
        assert curve.max == pytest.approx(max(direct), abs=1e-12)
        assert curve.peak_velocity == pytest.approx(direct[peak] / curve.dt, abs=1e-14)
        assert curve.peak_step == starts[peak]


def test_a_dt_whose_only_pair_starts_at_the_first_step_is_accepted(uneven) -> None:
    # steps 0, 5, ..., 80: dt 80 has one pair, (0, 80) (mutant: the check skips the first step)
    root, kernels_ = uneven
    result = distance(root, dts=[80])
    assert [(p.step, p.dt) for p in result.adjacent[80]] == [(0, 80)]
    assert result.adjacent[80][0].distance == pytest.approx(
        kernel_distance(kernels_[0], kernels_[-1]), abs=1e-12
    )
