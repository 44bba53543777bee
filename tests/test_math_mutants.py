"""Behaviour of the embedding, spectrum, linearization and noise-floor math that a mutation
check found unpinned by the other tests (a second sweep, after ``test_measure_mutants.py``).

Each test names the mutant it kills (a one-line change of conetool that the rest of the suite
let through) and checks the documented definition against numbers computed here in float64, or
an invariant of the definition.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.manifold import smacof as sklearn_smacof
from synthetic_s import drifting_kernels_s
from test_verdict_parts import FALL_THEN_FLAT, STEPS_3000, built_s, knots, phase_two_far
from threadpoolctl import threadpool_limits

import conetool.smacof as smacof_module
from conetool import noise_floor
from conetool.embedding import (
    LANCZOS_MIN_K,
    MDS_EPS,
    NEGATIVE_TOLERANCE,
    ROUNDING,
    _orient,
    _refuse_indefinite,
    embed_kernels,
    embed_mds,
    embed_pca,
    mds_problem,
)
from conetool.geometry import (
    GeometryError,
    KernelError,
    adjacent,
    block_size_for,
    check_steps,
    distance_matrix,
    distance_to_reference,
    kernel_distance,
    step_index,
)
from conetool.kernel_spectrum import one_hot, spectrum_point
from conetool.ntk import empirical_ntk
from conetool.trajectories import CLASSES, _angle, trajectory
from conetool.verdict import phase_verdict
from conetool.verdict_measures import LagGrowth
from conetool.verdict_phase2 import Reading, criteria_readings, judge_reference, user_references
from conetool.verdict_rules import VerdictRules

# --- embedding -----------------------------------------------------------------------------------


def _s_of_points(points: np.ndarray) -> np.ndarray:
    """The S matrix of kernels whose centred unit vectors have Gram matrix ``points points^T``:
    ``S_ij = |x_i - x_j|^2 / 2`` (for unit kernels, ``S = 1 - <u_i, u_j> = |u_i - u_j|^2 / 2``),
    so ``-C S C`` is the Gram matrix of the centred ``points``."""
    diff = points[:, None, :] - points[None, :, :]
    return 0.5 * np.einsum("ijk,ijk->ij", diff, diff)


def _s_with_gram_spectrum(values: list[float], seed: int = 0) -> np.ndarray:
    """An S matrix ``(K, K)``, ``K = len(values) + 1``, whose ``B = -C S C`` has the eigenvalues
    ``values`` (and 0 on the vector of ones): ``S_ij = (B_ii + B_jj) / 2 - B_ij``."""
    count = len(values) + 1
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(
        np.column_stack([np.ones(count), rng.standard_normal((count, count - 1))])
    )[0]
    v = basis[:, 1:]  # orthonormal, orthogonal to the ones
    b = (v * np.asarray(values)) @ v.T
    diagonal = np.diagonal(b)
    s = 0.5 * (diagonal[:, None] + diagonal[None, :]) - b
    np.fill_diagonal(s, 0.0)
    return 0.5 * (s + s.T)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", ["pca", "mds"])
def test_an_axis_beyond_the_rank_holds_rounding_not_nan(method: str, dims: int) -> None:
    # ``dims`` kernels equal but for 1e-9 and one far kernel: B has rank 1, and its dims-th
    # eigenvalue is rounding, negative (-4e-17 .. -3e-18) for some of these seeds. The docstring:
    # "an axis whose eigenvalue is rounding (dims above B's rank) holds rounding".
    # (mutant: the top eigenvalues not clipped at 0 before the square root: NaN coordinates)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        h = rng.standard_normal((2, 6, 6))
        kernels = [h[0] + 1e-9 * rng.standard_normal((6, 6)) for _ in range(dims)] + [h[1]]
        s = distance_matrix(kernels.__getitem__, len(kernels))
        got = embed_kernels(s, method=method, dims=dims)
        assert np.all(np.isfinite(got.coords)), seed
        np.testing.assert_allclose(got.coords[:, 1:], 0.0, atol=1e-6)
        # the first axis: the far kernel at chordal distance sqrt(2 S) from the others
        chord = np.sqrt(2.0 * s[-1, 0])
        assert abs(got.coords[-1, 0] - got.coords[0, 0]) == pytest.approx(chord, rel=1e-6)
        if got.explained_variance_ratio is not None:
            assert np.all(got.explained_variance_ratio >= 0.0)
            assert got.explained_variance_ratio[0] == pytest.approx(1.0, abs=1e-9)


def _rounded_s() -> tuple[np.ndarray, np.ndarray]:
    """An S matrix as a user may compute it, ``1 - <u_i, u_j>`` unclipped, with rounding on the
    diagonal (``2e-16``) and entries of equal kernels at ``-1e-16``; and the S it stands for."""
    rng = np.random.default_rng(4)
    u = rng.standard_normal((6, 20))
    u[3] = u[2]  # two equal kernels
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    clean = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    np.fill_diagonal(clean, 0.0)
    clean = 0.5 * (clean + clean.T)
    rounded = clean.copy()
    rounded[2, 3] = rounded[3, 2] = -1.1e-16
    np.fill_diagonal(rounded, 2.2e-16)
    return rounded, clean


@pytest.mark.parametrize("method", ["pca", "mds"])
def test_rounding_below_0_and_on_the_diagonal_of_s_embeds_as_the_clean_s(method: str) -> None:
    # D = sqrt(2 S) of S's entries clipped at 0, with a zero diagonal (the chordal distance of
    # kernels: a kernel is at distance 0 from itself).
    # (mutants: S not clipped at 0 before the square root, in the distances for SMACOF or in the
    # stress of "pca": NaN distances; the diagonal of D not set to 0: SMACOF refuses D)
    rounded, clean = _rounded_s()
    got = embed_kernels(rounded, method=method)
    want = embed_kernels(clean, method=method)
    assert np.isfinite(got.stress)
    np.testing.assert_allclose(got.coords, want.coords, atol=1e-7)
    assert got.stress == pytest.approx(want.stress, abs=1e-7)


def test_pca_refuses_exactly_beyond_the_documented_share_of_negative_eigenvalues() -> None:
    # Refused when B's negative eigenvalues sum to more than NEGATIVE_TOLERANCE (1e-6: a
    # thousand times RATIO_TOLERANCE, 1e-9) of its positive ones, plus K times ROUNDING (1e-12:
    # a thousand times the 1e-15 that rounding leaves in S). B's positive eigenvalues sum to 1
    # here (K = 4), so the limit is 1e-6 + 4e-12 (the ROUNDING term is negligible).
    # (mutant: NEGATIVE_TOLERANCE 1e-5)
    embed_kernels(_s_with_gram_spectrum([0.7, 0.3, -0.5e-6]), method="pca")
    with pytest.raises(GeometryError, match="not that of any kernels"):
        embed_kernels(_s_with_gram_spectrum([0.7, 0.3, -2e-6]), method="pca")


def test_pca_refusal_allows_k_times_1e_12_where_the_kernels_hardly_move() -> None:
    # B's positive eigenvalues sum to 1e-9 (kernels that hardly move): the limit is then
    # 1e-15 + K * 1e-12 = 4.001e-12 (K = 4): negative eigenvalues summing to 2e-12 are rounding,
    # 1.5e-11 are refused.
    # (mutants: ROUNDING 1e-13, which refuses the first; ROUNDING 1e-11, which takes the second)
    embed_kernels(_s_with_gram_spectrum([0.7e-9, 0.3e-9, -2e-12]), method="pca")
    with pytest.raises(GeometryError, match="not that of any kernels"):
        embed_kernels(_s_with_gram_spectrum([0.7e-9, 0.3e-9, -1.5e-11]), method="pca")


def test_the_refusal_limit_itself_is_accepted() -> None:
    # "refused ... when B's negative eigenvalues sum to MORE than" the limit: at it, accepted
    # (eigenvalues whose sums are exact in float64). (mutant: `<=` -> `<` in the refusal)
    positive = 0.75
    limit = NEGATIVE_TOLERANCE * positive + ROUNDING * 3
    _refuse_indefinite(np.array([-limit, 0.25, 0.5]))
    with pytest.raises(GeometryError):
        _refuse_indefinite(np.array([-np.nextafter(limit, 1.0), 0.25, 0.5]))


def test_pca_ratios_on_the_arpack_path_sum_to_at_most_1() -> None:
    # 1,000 kernels on a great circle (B of rank 2, dims 2: the two ratios hold everything):
    # on the ARPACK path the ratios divide by max(trace(B), l), l the sum of the top
    # eigenvalues, "so they sum to at most 1"; trace(B) alone, whose rounding puts it below l
    # by 1e-15 here, gave 1 + 9e-16. (mutant: the ratios divided by trace(B) alone)
    rng = np.random.default_rng(0)
    angles = np.sort(rng.uniform(0.0, 1.2, LANCZOS_MIN_K))
    plane = np.linalg.qr(rng.standard_normal((30, 2)))[0]
    u = np.cos(angles)[:, None] * plane[:, 0] + np.sin(angles)[:, None] * plane[:, 1]
    s = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    np.fill_diagonal(s, 0.0)
    _, ratio = embed_pca(0.5 * (s + s.T), dims=2)
    assert float(ratio.sum()) <= 1.0
    assert float(ratio.sum()) == pytest.approx(1.0, abs=1e-12)


def test_mds_runs_smacof_to_scikit_learns_stop_at_1e_9_within_1000_iterations() -> None:
    # embed_mds: SMACOF from the classical start, at most 1000 iterations (MDS_MAX_ITER),
    # stopping at a relative decrease below 1e-9 (MDS_EPS), as scikit-learn's smacof with those
    # settings; this trajectory takes 195 iterations (59 % more than at 1e-8, and the result
    # differs there by 5e-3 of the scale). (mutants: MDS_MAX_ITER 100; MDS_EPS 1e-8)
    s = drifting_kernels_s(40, seed=2)
    d, start = mds_problem(s, 2)
    want, _, n_iter = sklearn_smacof(
        d,
        metric=True,
        n_components=2,
        init=start,
        n_init=1,
        max_iter=1000,
        eps=1e-9,
        normalized_stress=False,
        return_n_iter=True,
    )
    assert 100 < n_iter < 1000
    got, _ = embed_mds(s, dims=2)
    want = _orient(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * float(np.abs(want).max()))


# --- SMACOF --------------------------------------------------------------------------------------


def test_smacof_sums_the_stress_pair_by_pair_only_near_the_stopping_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # conetool.smacof: "The stress is not summed pair by pair at each iteration": the decrease
    # from the Guttman product decides where it is farther than the rounding bound from the
    # threshold, and the direct sums only near it (and once for the stress returned).
    # (mutant: the test of the margin inverted, so the direct sums decide every iteration and
    # the cheap decrease only near the threshold: the same iterations, a third slower)
    calls: list[int] = []
    real = smacof_module._Walk.stress

    def counted(self: smacof_module._Walk, x: np.ndarray) -> float:
        calls.append(1)
        return real(self, x)

    monkeypatch.setattr(smacof_module._Walk, "stress", counted)
    d, start = mds_problem(drifting_kernels_s(40), 2)
    result = smacof_module.smacof(d, start, max_iter=1000, eps=MDS_EPS)
    assert result.n_iter > 10
    assert len(calls) <= 3


def test_smacof_threads_follow_a_blas_limit_above_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # threads=None: "as many as NumPy's BLAS may use now" (test_smacof checks a limit of 1,
    # which the mutant also gives). (mutant: the default thread count always 1)
    seen: list[int] = []
    real = smacof_module._Walk.__init__

    def watched(self: smacof_module._Walk, *args: object) -> None:
        real(self, *args)  # type: ignore[arg-type]
        seen.append(self.threads)

    monkeypatch.setattr(smacof_module._Walk, "__init__", watched)
    d, start = mds_problem(drifting_kernels_s(60, seed=11), 2)
    with threadpool_limits(limits=3, user_api="blas"):
        smacof_module.smacof(d, start, block_elements=40, block_rows=2)
    assert seen == [3]


# --- spectrum ------------------------------------------------------------------------------------


def test_one_hot_labels_of_classes_above_127() -> None:
    # one_hot: row i has its 1 in column labels[i], for any number of classes (ImageNet's 1000).
    # (mutant: labels cast to int8, which wraps class 150 to -106)
    labels = np.array([150, 3, 999])
    got = one_hot(labels, 1000)
    want = np.zeros((3, 1000))
    want[[0, 1, 2], [150, 3, 999]] = 1.0
    np.testing.assert_array_equal(got, want)


def test_a_probe_set_of_one_class_has_no_label_energy_or_alignment() -> None:
    # Every probe example of one class: the centred labels C Y are 0, so the share of their
    # energy in the top eigenvectors is 0 / 0, reported as 0 (as the alignment, "0 when either
    # centered matrix is zero"), not an error. (mutant: the energy tested with >= 0: division
    # by zero)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 12))
    point = spectrum_point(x @ x.T, np.full(8, 2), num_classes=3, top_k=4)
    assert point.label_energy == 0.0
    assert point.alignment == 0.0
    assert point.eigenvalues.shape == (4,)


# --- noise floor ---------------------------------------------------------------------------------


def test_uncertainty_of_a_distance_rounded_below_0_is_that_of_0() -> None:
    # The bound 2·sqrt(2·s)·ε + 2ε² is for a distance s >= 0; a measured S a rounding below 0 is
    # a distance of 0, which moves by 2ε² (mutant: |s| read, the bound of a distance of 1e-4).
    noise = noise_floor.NoiseEstimate(1e-3, 0.0, 4, "trace", "auto", "float32")
    assert noise.uncertainty(-1e-4) == pytest.approx(2e-6, rel=1e-12, abs=0)
    assert noise.uncertainty(-1e-4) == noise.uncertainty(0.0)


@pytest.mark.parametrize("kind", ["full", "sum"])
def test_noise_records_its_kind_and_computes_both_routes_on_the_given_device(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # "kind, method and dtype say which computation was checked", and both kernels are computed
    # as the run computes them: its kind, on its device (mutants: kind recorded as "trace";
    # either route sent to the default device instead of the one given)
    calls: list[dict[str, object]] = []

    def spy(model, inputs, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return empirical_ntk(model, inputs, **kwargs)

    monkeypatch.setattr(noise_floor, "empirical_ntk", spy)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    noise = noise_floor.kernel_noise(net, torch.randn(5, 4), kind=kind, device="cpu")
    assert noise.kind == kind
    assert [(c["kind"], c["device"]) for c in calls] == [(kind, "cpu"), (kind, "cpu")]


# --- labelled trajectories -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CLASSES))
def test_a_labelled_s_matrix_keeps_the_contract_of_a_measured_one(name: str) -> None:
    # What phase_verdict reads is an S matrix as distance_matrix gives it: exactly symmetric,
    # diagonal exactly 0, values in [0, 2]. Without noise a frozen kernel's late steps are one
    # unit vector, and 1 - <u, u> rounds to -2e-16 there (mutant: S not clipped to [0, 2]).
    for seed in range(3):
        for noise in (0.0, 1e-4):
            s = trajectory(name, seed=seed, noise=noise).S
            np.testing.assert_array_equal(s, s.T)
            np.testing.assert_array_equal(np.diagonal(s), 0.0)
            assert s.min() >= 0.0 and s.max() <= 2.0, (seed, noise)


def test_the_bounded_phase_two_walk_is_stationary_with_s_about_radius_squared() -> None:
    # The Ornstein-Uhlenbeck walk of the bounded class: stationary spread 0.05, so S between
    # states many correlation times (100 steps) apart is about 0.05**2 (|x - x'|**2 / 2 for two
    # independent states of variance 0.05**2 / dims per coordinate); Phase I adds under 5 % after
    # step 1000. (mutants: the OU step scaled by 1 - decay instead of sqrt(1 - decay**2), which
    # shrinks the stationary spread to 0.46x; the Phase II process embedded at half its size)
    ratios = []
    for seed in range(4):
        t = trajectory("bounded", seed=seed)
        lag = t.steps[None, :] - t.steps[:, None]
        pairs = (t.steps[:, None] >= 1000) & (lag >= 500)
        ratios.append(t.S[pairs].mean() / 0.05**2)
    assert 0.8 < np.mean(ratios) < 1.25, ratios


def test_late_phase_one_turns_at_0_3_rad_per_100_steps_then_slows_down_without_a_jump() -> None:
    # late-phase-I: ~0.3 rad per 100 steps through a long fast stretch, then an angular speed that
    # decays exponentially; the speed is continuous where the decay starts (mutant: the decaying
    # part's amplitude without its time scale, a 100-fold drop in speed from one step to the next)
    t = np.arange(0.0, 5001.0)
    speed = np.diff(_angle("late-phase-I", t, 5000))  # rad per step
    assert speed[0] * 100 == pytest.approx(0.3, rel=1e-9)
    assert np.max(np.abs(np.diff(speed))) < 0.02 * speed[0]
    assert np.all(speed[-2000:] < 1e-3 * speed[0])
    decay = slice(2300, 3000)  # past the fast stretch, before the speed reaches rounding
    log_speed = np.log(speed[decay])
    fit = np.polyval(np.polyfit(t[decay], log_speed, 1), t[decay])
    assert np.max(np.abs(log_speed - fit)) < 1e-6


# --- verdict, Phase II ---------------------------------------------------------------------------


def test_a_reference_with_exactly_min_window_points_in_each_third_is_judged() -> None:
    # min_window_points: the fewest stored steps in each third a reference curve is judged on.
    # Steps 0..50 by 10, reference 0: the middle third [16.7, 33.3) holds 20 and 30, the last
    # third 40 and 50, two each (mutants: at least one more needed, default and user references)
    steps = np.arange(0, 60, 10)
    s = np.abs(steps[:, None] - steps[None, :]) / 1000.0  # S(0, t) = t / 1000
    rules = VerdictRules()
    assert rules.min_window_points == 2
    record = judge_reference(s, steps, 0, rules)
    assert (record["middle_third_points"], record["last_third_points"]) == (2, 2)
    # last third's mean 0.045 over the middle's 0.025: growth 0.444, above the tolerance 0.15
    assert record["status"] == "rising"
    assert record["growth"] == pytest.approx((0.045 - 0.025) / 0.045, rel=1e-12)
    assert user_references([0], steps, 0, rules) == [{"ref": 0, "used": True, "why": ""}]
    # steps 0..60: the middle third [20, 40) starts on a stored step, which counts (mutant: the
    # user reference's middle third open at its start, 1 point)
    assert user_references([0], np.arange(0, 70, 10), 0, rules)[0]["used"]


def test_a_reading_at_exactly_three_times_the_noise_floor_is_at_the_floor() -> None:
    # "Readings at or below three times it say so" (mutants: strictly below; twice the floor)
    reading = Reading(np.arange(0, 100, 10), VerdictRules(), 0.5)
    assert reading.at_noise(1.5) and reading.at_noise(1.2)
    assert not reading.at_noise(1.5000001)
    assert not Reading(np.arange(0, 100, 10), VerdictRules(), None).at_noise(0.0)


def _criterion(criteria: list[dict], name: str) -> dict:
    return next(c for c in criteria if c["name"] == name)


def test_the_velocity_trend_is_read_at_the_smallest_lag_dt() -> None:
    # README: "the Phase II velocity's first quarter over its last quarter (at the smallest lag
    # whose S is 10x above the noise floor)"; with no floor, the smallest lag: dt = 100, not the
    # 3 dt = 300 the fit also uses. log10 v falls 0.5 over Phase II (1,000..3,000), so the pairs
    # (t, t + 100), t = 1,000..2,900, give 20 velocities, 5 per quarter, v(midpoint) exactly:
    # medians at the midpoints 1,250 and 2,750, a fall of 10^(0.5 * 1,500 / 2,000). At lag 300
    # (18 pairs, quarters of 4) the medians average v at 1,250 and 1,350, and at 2,650 and 2,750,
    # another fall (mutant: the trend read at the largest lag, dts[-1])
    log_v = knots((0, -2.0), (1000, -4.0), (3000, -4.5))
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, log_v))
    assert v.phase1_end == 1000 and v.numbers["velocity"]["lags"] == [100, 200, 300]
    trend = _criterion(v.numbers["criteria"], "velocity trend")
    assert trend["value"] == pytest.approx(10**0.375, rel=1e-9)
    assert trend["rests_on"] == "20 Phase II velocities (5 per quarter)"
    assert "Phase II velocity at lag 100 falls" in trend["sentence"]

    def at(m: float) -> float:
        return float(10.0 ** log_v(np.array(m)))

    at_300 = (at(1250) + at(1350)) / (at(2650) + at(2750))
    assert abs(at_300 - 10**0.375) > 1e-3  # the test tells the two lags apart


def test_a_lazy_verdict_whose_reference_curves_do_not_read_frozen_does_not_agree() -> None:
    # README: numbers.agree of a lazy verdict is "whether the spread and the reference curves
    # both read frozen". Phase II S = 2e-4 beyond lag 300 with a noise floor of 1e-4: the spread
    # is frozen (its largest lags' median within 3x the floor), the references' level 2e-4 is
    # above lazy_level 1e-4 and flat: plateau, not frozen (mutant: agree when either reads frozen)
    law = phase_two_far(lambda d: np.full_like(d, 2e-4))
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, FALL_THEN_FLAT, law), noise_floor=1e-4)
    reads = {c["name"]: c["reads"] for c in v.numbers["criteria"]}
    assert v.regime == "lazy"
    assert reads["spread"] == "frozen" and reads["reference curves"] == "plateau"
    assert v.numbers["agree"] is False


def test_an_unsettled_lag_growth_advises_training_until_phase_two_is_twice_as_long() -> None:
    # "Train about 2x longer (to step N) so that Phase II spans more lags": Phase II is
    # 1,000..3,000, so twice its length ends at 5,000 (mutant: twice the last step, 6,000)
    law = phase_two_far(lambda d: 0.03 * (d / 300.0) ** 0.35)
    v = phase_verdict(STEPS_3000, built_s(STEPS_3000, FALL_THEN_FLAT, law))
    assert v.regime == "undetermined" and v.phase1_end == 1000
    match = re.search(r"Train about 2x longer \(to step (\d+)\)", v.explanation)
    assert match is not None, v.explanation
    assert int(match.group(1)) - v.phase1_end == 2 * (3000 - v.phase1_end)


def test_the_lag_growth_is_at_the_noise_floor_by_its_smallest_lags() -> None:
    # "its small-lag values at the noise floor": S at the smallest lags, 2e-4, is within 3x the
    # floor 1e-4 while S at the largest lags, 1e-2, is not (mutant: read at the largest lags)
    r = Reading(STEPS_3000, VerdictRules(), noise=1e-4)
    growth = LagGrowth(0.9, 100, 6, 200, 600, 2e-4, 1e-2, 2e-2)
    lag = _criterion(criteria_readings(r, growth, None, [], None), "lag growth")
    assert lag["at_noise_floor"] and "small-lag values at the noise floor" in lag["sentence"]
    growth = LagGrowth(0.9, 100, 6, 200, 600, 4e-4, 1e-2, 2e-2)  # 4e-4 > 3e-4
    lag = _criterion(criteria_readings(r, growth, None, [], None), "lag growth")
    assert not lag["at_noise_floor"] and "noise floor" not in lag["sentence"]


def test_the_reference_curves_are_at_the_noise_floor_when_one_reference_level_is() -> None:
    # The reading rests on every judged reference: one level within 3x the floor 1e-4 (2e-4)
    # flags it though the other's (1e-2) is far above (mutant: only when every level is)
    r = Reading(STEPS_3000, VerdictRules(), noise=1e-4)
    judged = [
        {"ref": 1200, "level": 2e-4, "growth": 0.0, "status": "plateau"},
        {"ref": 1600, "level": 1e-2, "growth": 0.0, "status": "plateau"},
    ]
    refs = _criterion(criteria_readings(r, None, None, judged, "plateau"), "reference curves")
    assert refs["at_noise_floor"]
    judged[0]["level"] = 4e-4
    refs = _criterion(criteria_readings(r, None, None, judged, "plateau"), "reference curves")
    assert not refs["at_noise_floor"]


# --- geometry ------------------------------------------------------------------------------------


def test_opposite_kernels_are_at_distance_at_most_2() -> None:
    # S is in [0, 2] and S(H, -cH) = 2: 1 - <H, -cH> / (||H|| ||cH||) rounds above 2 for some H,
    # both in kernel_distance and in the matrix's 1 - <u, u'> (mutants: no clip at 2 in either)
    rng = np.random.default_rng(0)
    above = [0, 0]
    for _ in range(300):
        h = rng.standard_normal(int(rng.integers(2, 50)))
        c = float(rng.uniform(0.1, 10.0))
        raw = 1.0 - float(np.dot(h, -c * h)) / (np.linalg.norm(h) * np.linalg.norm(-c * h))
        u = h / np.linalg.norm(h)
        above[0] += raw > 2.0
        above[1] += 1.0 + float(np.dot(u, u)) > 2.0
        assert kernel_distance(h, -c * h) == pytest.approx(2.0, abs=1e-15)
        assert kernel_distance(h, -c * h) <= 2.0
        s = distance_matrix(lambda i, h=h, c=c: h if i == 0 else -c * h, 2)
        assert s[0, 1] == pytest.approx(2.0, abs=1e-15) and s.max() <= 2.0
    assert min(above) > 0  # rounding does take the unclipped value above 2 on these draws


def test_a_one_entry_kernel_of_any_magnitude_has_a_distance() -> None:
    # S(aH, bH') = S(H, H') for a, b > 0 over the float64 range: a (1, 1) kernel (one probe
    # example, one output) of 1e-200 is rescaled like any other, not read as all zeros (mutant:
    # the rescaling skips one-entry kernels)
    tiny = np.array([[1e-200]])
    assert kernel_distance(tiny, 3.0 * tiny) == 0.0
    assert kernel_distance(tiny, -tiny) == 2.0
    with pytest.raises(KernelError, match="all zeros"):
        kernel_distance(np.zeros((1, 1)), tiny)


def test_the_memory_error_states_three_kernels_worth_of_bytes() -> None:
    # the budget holds two blocks of one kernel plus the kernel being loaded: 3 * numel * 8 bytes
    # (mutant: the message asks for two kernels' worth, which is still refused)
    assert block_size_for(1000, 24_000) == 1
    with pytest.raises(GeometryError, match=r"at least 24000 bytes"):
        block_size_for(1000, 23_999)


def test_a_block_size_above_the_kernel_count_holds_only_the_kernels() -> None:
    # blocks of block_size kernels, but never more than K of them exist: a block size of 10**15
    # (a large --max-memory over few kernels) allocates K rows, not 10**15 (mutant: the buffers
    # sized by block_size, which cannot be allocated)
    h = [np.eye(3), np.diag([1.0, 2.0, 3.0]), np.ones((3, 3))]
    s = distance_matrix(lambda i: h[i], 3, block_size=10**15)
    assert s[0, 1] == pytest.approx(kernel_distance(h[0], h[1]), abs=1e-15)
    assert s[0, 2] == pytest.approx(1.0 - 3.0 / (np.sqrt(3.0) * 3.0), abs=1e-15)


def test_steps_must_be_one_dimensional_and_s_square_in_their_order() -> None:
    # "steps must be a 1-D sequence" (mutant: a 0-d array accepted); S must be (K, K) (mutant:
    # only its number of rows checked)
    with pytest.raises(GeometryError, match="1-D"):
        check_steps(np.array(7))
    with pytest.raises(GeometryError, match=r"shape \(3, 4\)"):
        check_steps([0, 10, 20], np.zeros((3, 4)))


def test_a_step_outside_the_stored_ones_names_the_nearest_or_says_none_are_stored() -> None:
    # before the first stored step: the first one (mutant: position 0 left out of the search,
    # "none"); no stored steps at all: says so (mutant: an empty hint)
    with pytest.raises(GeometryError, match=r"nearest stored step is 10\."):
        step_index([10, 20, 30], 5)
    with pytest.raises(GeometryError, match=r"none \(no steps are stored\)"):
        step_index([], 5)


def test_a_reference_curve_is_a_float64_copy_of_its_row() -> None:
    # "float64 (K,)": an S matrix in float32 gives float64 (mutant: the input's dtype), and the
    # curve is a copy, so writing to it leaves S alone (mutant: a view of S's row)
    s = np.array([[0.0, 0.25, 0.5], [0.25, 0.0, 0.125], [0.5, 0.125, 0.0]], dtype=np.float32)
    curve = distance_to_reference(s, [0, 10, 20], 10)
    assert curve.dtype == np.float64
    np.testing.assert_array_equal(curve, [0.25, 0.0, 0.125])
    s64 = s.astype(np.float64)
    curve = distance_to_reference(s64, [0, 10, 20], 10)
    curve[0] = 9.0
    assert s64[1, 0] == 0.25


def test_a_fractional_dt_is_refused() -> None:
    # "dt must be a positive integer number of steps" (mutant: 1.5 truncated to 1, pairs at 1)
    s = np.zeros((3, 3))
    with pytest.raises(GeometryError, match="positive integer"):
        adjacent(s, [0, 1, 2], 1.5)  # type: ignore[arg-type]
    assert [p.step for p in adjacent(s, [0, 1, 2], 1.0)] == [0, 1]  # type: ignore[arg-type]
