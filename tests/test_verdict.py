"""The phase verdict against labelled trajectories whose regime is known by construction.

Every class of :mod:`conetool.trajectories` (no two phases; two phases then frozen, freezing,
bounded, diffusive or linear; a late Phase I; a velocity hovering at 10% of its peak) is drawn
with several seeds and noise levels, with and without the noise floor, and must get its regime.
Where the end of Phase I is defined by construction it must be found within a tenth of the run,
or lie inside the range the verdict reports.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conetool.geometry import GeometryError
from conetool.trajectories import CLASSES, default_steps, trajectory
from conetool.verdict import REGIMES, VerdictRules, phase_verdict

SEEDS = (0, 1, 2)
NOISES = (1e-4, 1e-3, 3e-3)


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_labelled_trajectory_gets_its_regime(name: str) -> None:
    wrong = []
    for seed in SEEDS:
        for noise in NOISES:
            for floor in (None, noise**2):
                t = trajectory(name, seed=seed, noise=noise)
                v = phase_verdict(t.steps, t.S, noise_floor=floor)
                if v.regime != t.expected:
                    wrong.append((seed, noise, floor, v.regime, v.explanation[:300]))
                    continue
                if t.truth_phase1_end is not None:
                    # within a tenth of the run, or inside the range it reports (+- one spacing)
                    assert v.phase1_end is not None
                    low, high = v.numbers["velocity"]["phase1_range"]
                    truth = t.truth_phase1_end
                    close = abs(v.phase1_end - truth) <= 0.1 * t.steps[-1]
                    assert close or low - 100 <= truth <= high + 100, (seed, noise, v.numbers)
    assert not wrong, wrong


def test_the_regime_names_its_sentence_and_never_contradicts_it() -> None:
    heads = {
        "no-two-phase": "No two-phase pattern",
        "lazy": "Lazy",
        "cone": "Cone:",
        "drift-after-phase-I": "Drift after Phase I:",
    }
    for name in CLASSES:
        t = trajectory(name, seed=0, noise=1e-3)
        v = phase_verdict(t.steps, t.S)
        assert v.regime in REGIMES
        assert heads[v.regime] in v.explanation
        for other, head in heads.items():
            if other != v.regime:
                assert head not in v.explanation, (name, other)


def test_demo_like_run_is_two_phases_then_drift_not_no_two_phase() -> None:
    """The issue's demo: the velocity falls 2,000x, then S keeps growing with the lag."""
    t = trajectory("diffusive", seed=4, noise=1e-4)
    v = phase_verdict(t.steps, t.S)
    assert v.regime == "drift-after-phase-I"
    assert v.numbers["velocity"]["drop_factor"] > 100
    lag = next(c for c in v.numbers["criteria"] if c["name"] == "lag growth")
    assert lag["value"] > 0.5 and lag["reads"] == "drift"


def test_a_kernel_that_freezes_in_phase_two_is_lazy_not_cone() -> None:
    """The issue's MLP trained to a loss of 6e-4: the distance plateaus because the kernel
    stopped, and the velocity trend tells it from a cone."""
    t = trajectory("freezing", seed=0, noise=1e-4)
    v = phase_verdict(t.steps, t.S)
    assert v.regime == "lazy"
    trend = next(c for c in v.numbers["criteria"] if c["name"] == "velocity trend")
    assert trend["reads"] == "freezing" and trend["value"] >= 5


def test_every_criterion_states_value_and_what_it_rests_on() -> None:
    t = trajectory("bounded", seed=1, noise=1e-3)
    v = phase_verdict(t.steps, t.S)
    names = [c["name"] for c in v.numbers["criteria"]]
    assert names == ["spread", "lag growth", "reference curves", "velocity trend"]
    for c in v.numbers["criteria"]:
        assert c["value"] is not None and c["rests_on"] and c["reads"]
        assert c["sentence"].split(":")[0].split(" (")[0] in v.explanation
    lag = v.numbers["criteria"][1]
    assert int(lag["rests_on"].split()[0]) > 100  # hundreds of Phase II pairs, not 3 points
    assert isinstance(v.numbers["agree"], bool)
    low, high = v.numbers["velocity"]["phase1_range"]
    assert low <= v.phase1_end <= high


def test_readings_at_the_noise_floor_say_so() -> None:
    t = trajectory("frozen", seed=0, noise=3e-3)
    floor = t.noise**2
    v = phase_verdict(t.steps, t.S, noise_floor=floor)
    assert v.regime == "lazy" and v.numbers["noise_floor"] == floor
    spread = v.numbers["criteria"][0]
    assert spread["at_noise_floor"] and "noise floor" in v.explanation
    # without the floor the same run is still lazy, by lazy_level alone
    assert phase_verdict(t.steps, t.S).regime == "lazy"


def test_kernel_that_never_moves_is_lazy_without_phase_one() -> None:
    steps = list(range(0, 2000, 100))
    s = np.full((20, 20), 1e-6)
    np.fill_diagonal(s, 0.0)
    v = phase_verdict(steps, s)
    assert v.regime == "lazy" and v.phase1_end is None and "never moved" in v.explanation


def test_velocity_still_falling_at_the_end_is_undetermined_with_advice() -> None:
    t = trajectory("frozen", seed=0, noise=0.0)  # exponential slow-down, no floor before ~3,900
    keep = t.steps <= 3000
    v = phase_verdict(t.steps[keep], t.S[np.ix_(keep, keep)])
    assert v.regime == "undetermined" and v.phase1_end is None
    assert "still falling at the end" in v.explanation and "Train longer" in v.explanation


def test_phase_two_too_short_names_the_count_and_how_much_longer() -> None:
    t = trajectory("bounded", seed=0, noise=1e-4)
    keep = t.steps <= 1000  # Phase I ends near 500: about 5 Phase II checkpoints
    v = phase_verdict(t.steps[keep], t.S[np.ix_(keep, keep)])
    assert v.regime == "undetermined"
    assert "Phase II holds only" in v.explanation and "longer" in v.explanation


def test_too_few_steps_is_undetermined() -> None:
    s = np.zeros((5, 5))
    v = phase_verdict([0, 1, 2, 3, 4], s)
    assert v.regime == "undetermined" and "at least 8" in v.explanation


def test_every_unusable_user_reference_is_named_with_the_reason() -> None:
    t = trajectory("bounded", seed=2, noise=1e-3)
    last = int(t.steps[-1])
    v = phase_verdict(t.steps, t.S, refs=[0, 2000, last])
    user = {u["ref"]: u for u in v.numbers["user_references"]}
    assert user[2000]["used"] and not user[0]["used"] and not user[last]["used"]
    assert "in Phase I" in user[0]["why"] and "too few stored steps" in user[last]["why"]
    assert "--ref 0: in Phase I" in v.explanation and f"--ref {last}: too few" in v.explanation
    judged = {r["ref"]: r["from"] for r in v.numbers["references"]}
    assert judged[2000] == "user" and 0 not in judged and last not in judged
    assert sorted(k for k, origin in judged.items() if origin == "default")  # defaults beside
    assert json.loads(json.dumps(v.to_dict()))["regime"] == v.regime


def test_thresholds_are_options() -> None:
    t = trajectory("hover", seed=0, noise=1e-3)  # the velocity falls about 8-10x
    assert phase_verdict(t.steps, t.S).regime == "cone"
    strict = phase_verdict(t.steps, t.S, rules=VerdictRules(min_drop=50.0))
    assert strict.regime == "no-two-phase" and "50x" in strict.explanation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_drop": 1.0}, "min_drop"),
        ({"freeze_factor": 0.5}, "freeze_factor"),
        ({"bounded_exponent": 0.6, "drift_exponent": 0.5}, "bounded < drift"),
        ({"min_phase2_steps": 2}, "min_phase2_steps"),
        ({"lazy_level": -1.0}, "lazy_level"),
        # dt 0 divides by zero; a reference at T has no thirds after it; a third with no step
        # has no mean; a negative tolerance calls a falling curve rising
        ({"velocity_dt": 0}, "velocity_dt=0"),
        ({"velocity_dt": -100}, "velocity_dt=-100"),
        ({"reference_fractions": (0.1, 1.0)}, "reference_fractions"),
        ({"reference_fractions": ()}, "reference_fractions"),
        ({"min_window_points": 0}, "min_window_points=0"),
        ({"plateau_tolerance": -0.1}, "plateau_tolerance=-0.1"),
    ],
)
def test_bad_rules_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        VerdictRules(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # values that passed and made the reading trivial: every curve a plateau (growth is at
        # most 1), every run lazy (S is at most 2), no drop or fall ever enough (inf), nothing
        # bounded unless S shrinks with lag (a negative exponent)
        ({"plateau_tolerance": 1.0}, r"plateau_tolerance=1\.0 \(--plateau-tolerance 1\.0\)"),
        ({"plateau_tolerance": 2.0}, r"needs a fraction in \(0, 1\)"),
        ({"plateau_tolerance": math.inf}, r"plateau_tolerance=inf"),
        ({"plateau_tolerance": math.nan}, r"plateau_tolerance=nan"),
        ({"lazy_level": 2.0}, r"lazy_level=2\.0 \(--lazy-level 2\.0\): needs an S in \[0, 2\)"),
        ({"lazy_level": math.inf}, r"lazy_level=inf \(--lazy-level inf\)"),
        ({"lazy_level": math.nan}, r"lazy_level=nan"),
        ({"min_drop": math.inf}, r"min_drop=inf \(--min-drop inf\): needs a finite factor > 1"),
        ({"min_drop": math.nan}, r"min_drop=nan"),
        ({"freeze_factor": math.inf}, r"freeze_factor=inf \(--freeze-factor inf\): needs a finite"),
        ({"freeze_factor": -5.0}, r"freeze_factor=-5\.0"),
        ({"bounded_exponent": -0.1}, r"bounded_exponent=-0\.1 \(--bounded-exponent -0\.1\)"),
        ({"bounded_exponent": -math.inf}, r"bounded_exponent=-inf.*needs a finite exponent >= 0"),
        ({"bounded_exponent": math.nan}, r"bounded_exponent=nan.*needs a finite exponent >= 0"),
        ({"drift_exponent": math.inf}, r"drift_exponent=inf \(--drift-exponent inf\)"),
        ({"drift_exponent": math.nan}, r"drift_exponent=nan.*needs a finite exponent"),
    ],
)
def test_rules_that_make_the_reading_trivial_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        VerdictRules(**kwargs)


def test_rules_at_the_edge_of_their_range_are_accepted() -> None:
    rules = VerdictRules(velocity_dt=1, reference_fractions=(0.0, 0.99), min_window_points=1)
    assert rules.velocity_dt == 1 and rules.reference_fractions == (0.0, 0.99)
    # the edges the README's ranges include: a level of 0 (frozen only when identical), a
    # bounded exponent of 0 (S flat with lag), a tolerance just under 1, factors just over 1
    edge = VerdictRules(
        lazy_level=0.0,
        bounded_exponent=0.0,
        drift_exponent=3.0,
        plateau_tolerance=0.999,
        min_drop=1.001,
        freeze_factor=1.001,
    )
    assert (edge.lazy_level, edge.bounded_exponent, edge.plateau_tolerance) == (0.0, 0.0, 0.999)
    assert VerdictRules(lazy_level=1.999).lazy_level == 1.999


def test_verdict_checks_its_inputs() -> None:
    steps = default_steps(1000)
    with pytest.raises(GeometryError, match="shape"):
        phase_verdict(steps, np.zeros((3, 3)))
    t = trajectory("bounded", seed=0, last=2000)
    with pytest.raises(GeometryError, match="nearest stored steps"):
        phase_verdict(t.steps, t.S, refs=[123])


@settings(max_examples=60, deadline=None)
@given(
    spacing=st.lists(st.integers(1, 400), min_size=2, max_size=60),
    dim=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-6, 1.0),
)
def test_any_trajectory_and_any_checkpoint_schedule_gets_a_regime_and_a_reason(
    spacing: list[int], dim: int, seed: int, scale: float
) -> None:
    """Irregular, sparse or dense schedules and any motion: never a crash, always one of the
    regimes, and a phase1_end that is a stored step inside its range."""
    steps = np.cumsum([0, *spacing])
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((steps.size, dim)) * scale, axis=0)
    u = np.hstack([np.ones((steps.size, 1)), walk])
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    s = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    np.fill_diagonal(s, 0.0)
    v = phase_verdict(steps, (s + s.T) / 2)
    assert v.regime in REGIMES and v.explanation
    if v.phase1_end is not None:
        assert v.phase1_end in steps.tolist()
        low, high = v.numbers["velocity"]["phase1_range"]
        assert low <= v.phase1_end <= high
    json.dumps(v.to_dict())  # JSON-ready, whatever the input
