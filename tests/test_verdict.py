"""The phase verdict on synthetic kernel trajectories whose answer is known by construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conetool.geometry import GeometryError, distance_matrix
from conetool.verdict import Verdict, VerdictRules, phase_verdict

STEPS = np.arange(0, 10_001, 25)  # 401 stored steps, like save_every = 25 for T = 10^4


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _matrix(vectors: np.ndarray, side: int | None = None) -> np.ndarray:
    """S matrix through the library's blocked path, the vectors reshaped into square kernels."""
    kernels = vectors if side is None else vectors.reshape(len(vectors), side, side)
    return distance_matrix(lambda i: kernels[i], len(kernels), block_size=128)


def cone_trajectory(steps: np.ndarray, seed: int, level: float = 0.02) -> np.ndarray:
    """Phase I: the direction swings fast from near e1 towards the axis e0 (time constant 40 steps).

    Phase II: it keeps moving, as an Ornstein-Uhlenbeck walk (correlation time 200 steps) in the
    98 directions orthogonal to e0 and e1, so it stays in a cone around e0: the distance between
    two far-apart kernels is about ``level``. Kernels are 10 x 10.
    """
    rng = np.random.default_rng(seed)
    dim = 100
    sigma = np.sqrt(level / (dim - 2))
    axis = np.eye(dim)[0]
    swing = np.eye(dim)[1]

    def noise() -> np.ndarray:
        z = rng.standard_normal(dim)
        z[:2] = 0.0
        return z

    y = sigma * noise()
    out, previous = [], steps[0]
    for t in steps:
        keep = np.exp(-(t - previous) / 200.0)
        previous = t
        y = keep * y + np.sqrt(1.0 - keep * keep) * sigma * noise()
        out.append(_unit(axis + 3.0 * np.exp(-t / 40.0) * swing + y))
    return np.array(out)


def lazy_trajectory(steps: np.ndarray) -> np.ndarray:
    """Fast early motion, then exactly frozen from step 300 on."""
    t = np.minimum(steps, 300).astype(float)
    swing = 3.0 * np.exp(-t / 40.0)
    return _unit(np.stack([np.ones_like(swing), swing, np.zeros_like(swing)], axis=1))


def rotation(steps: np.ndarray, early: float, total: float) -> np.ndarray:
    """A plane rotation: ``early`` radians in a fast Phase I, then ``total`` radians at a
    constant angular speed for the whole run (the kernel keeps drifting, no plateau)."""
    s = steps.astype(float)
    phi = early * (1.0 - np.exp(-s / 40.0)) + total * s / s[-1]
    return np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi), np.zeros_like(phi)], axis=1)


def steps_with_velocities(s_per_pair: list[float], dt: int = 10) -> tuple[list[int], np.ndarray]:
    """A plane rotation whose consecutive pairs have exactly the given kernel distances."""
    angles = np.concatenate([[0.0], np.cumsum(np.arccos(1.0 - np.asarray(s_per_pair)))])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    steps = [dt * k for k in range(len(angles))]
    return steps, _matrix(vectors)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cone_is_recognised(seed: int) -> None:
    s = _matrix(cone_trajectory(STEPS, seed), side=10)
    v = phase_verdict(STEPS.tolist(), s)
    assert v.regime == "cone", v.explanation
    # the swing's velocity falls to a tenth of its peak within a few time constants
    assert v.phase1_end is not None and 50 <= v.phase1_end <= 300
    refs = v.numbers["references"]
    assert len(refs) == 3 and all(r["status"] == "plateau" for r in refs)
    assert all(0.01 < r["level"] < 0.04 for r in refs)  # about `level`, clearly above zero
    assert "Cone effect" in v.explanation and f"step {v.phase1_end}" in v.explanation


def test_lazy_freeze_is_recognised() -> None:
    s = _matrix(lazy_trajectory(STEPS))
    v = phase_verdict(STEPS.tolist(), s)
    assert v.regime == "lazy", v.explanation
    assert v.phase1_end is not None and v.phase1_end <= 300
    refs = v.numbers["references"]
    assert len(refs) == 3 and all(r["ref"] > 300 for r in refs)
    assert all(r["status"] == "frozen" and r["level"] < 1e-12 for r in refs)
    assert "froze" in v.explanation


def test_kernel_that_never_moves_is_lazy() -> None:
    s = np.zeros((20, 20))
    v = phase_verdict(list(range(0, 200, 10)), s)
    assert v.regime == "lazy" and v.phase1_end is None
    assert "frozen for the whole run" in v.explanation


def test_drift_after_a_fast_start_is_recognised() -> None:
    """Velocity settles (Phase I ends) but the distances keep rising: Fig. 3's counterexample."""
    s = _matrix(rotation(STEPS, early=1.0, total=1.2))
    v = phase_verdict(STEPS.tolist(), s)
    assert v.regime == "drift", v.explanation
    assert v.phase1_end is not None
    growths = [r["growth"] for r in v.numbers["references"]]
    # 1 - cos of a linearly growing angle: growth between the linear 0.4 and quadratic 0.63
    assert all(0.3 < g < 0.65 for g in growths)
    assert "keeps drifting" in v.explanation


def test_constant_drift_has_no_phase_one() -> None:
    s = _matrix(rotation(STEPS, early=0.0, total=1.2))
    v = phase_verdict(STEPS.tolist(), s)
    assert v.regime == "drift"
    assert v.phase1_end is None
    assert "never stays at or below" in v.explanation


def test_phase_one_ends_after_the_last_fast_pair() -> None:
    # peak 0.03 at step 20; 10% of it is 0.003; the lone pair at step 60 is back above it
    pattern = [0.01, 0.02, 0.03, 0.015, 0.001, 0.001, 0.005, *[0.001] * 20]
    steps, s = steps_with_velocities(pattern)
    v = phase_verdict(steps, s, rules=VerdictRules(velocity_dt=10))
    assert v.numbers["peak_step"] == 20
    assert v.numbers["peak_velocity"] == pytest.approx(0.03 / 10, rel=1e-9)
    assert v.numbers["velocity_threshold"] == pytest.approx(0.003 / 10, rel=1e-9)
    assert v.phase1_end == 70
    # a running median over 3 pairs removes the lone late spike (and lowers the peak to 0.02)
    smooth = phase_verdict(steps, s, rules=VerdictRules(velocity_dt=10, smooth_window=3))
    assert smooth.numbers["peak_velocity"] == pytest.approx(0.02 / 10, rel=1e-9)
    assert smooth.phase1_end == 40
    looser = phase_verdict(steps, s, rules=VerdictRules(velocity_dt=10, phase1_fraction=0.6))
    assert looser.phase1_end == 30


def test_too_few_steps_is_undetermined() -> None:
    s = _matrix(rotation(np.arange(0, 70, 10), early=1.0, total=0.5))
    v = phase_verdict(list(range(0, 70, 10)), s)
    assert v.regime == "undetermined" and v.phase1_end is None
    assert "Only 7 kernels" in v.explanation and "min_steps" in v.explanation


def test_too_few_pairs_at_the_velocity_spacing_is_undetermined() -> None:
    steps = [0, 1, 3, 7, 15, 31, 63, 127, 255, 511]
    s = _matrix(rotation(np.array(steps), early=1.0, total=1.0))
    v = phase_verdict(steps, s)
    assert v.regime == "undetermined"
    assert "too few to follow the kernel velocity" in v.explanation


def test_phase_two_too_short_to_judge_is_undetermined() -> None:
    # velocity only settles near the end of the run
    pattern = [0.02] * 30 + [0.0001] * 3
    steps, s = steps_with_velocities(pattern)
    v = phase_verdict(steps, s)
    assert v.phase1_end == 300
    assert v.regime == "undetermined"
    assert "enough stored steps after it" in v.explanation


def test_user_references_and_json_round_trip() -> None:
    s = _matrix(cone_trajectory(STEPS, 0), side=10)
    v = phase_verdict(STEPS.tolist(), s, refs=[0, 1000, 4000])
    # step 0 is in Phase I, so only the two Phase II references are judged
    assert [r["ref"] for r in v.numbers["references"]] == [1000, 4000]
    assert v.numbers["references_from"] == "user"
    only_phase1 = phase_verdict(STEPS.tolist(), s, refs=np.array([0, 50]))
    assert only_phase1.numbers["references_from"] == "default"
    assert len(only_phase1.numbers["references"]) == 3 and only_phase1.regime == "cone"
    assert v.regime == "cone"
    data = json.loads(json.dumps(v.to_dict()))
    assert data["regime"] == "cone" and data["phase1_end"] == v.phase1_end
    assert data["numbers"]["rules"]["plateau_tolerance"] == 0.15
    with pytest.raises(GeometryError, match="step 1010 has no stored kernel"):
        phase_verdict(STEPS.tolist(), s, refs=[1010])
    with pytest.raises(GeometryError, match="step 10 has no stored kernel"):
        phase_verdict(STEPS.tolist(), s, refs=[10, 1000])


def test_thresholds_are_options() -> None:
    s = _matrix(cone_trajectory(STEPS, 0), side=10)
    # a lazy level above the cone's plateau turns the same curves into a frozen kernel
    assert phase_verdict(STEPS.tolist(), s, rules=VerdictRules(lazy_level=0.1)).regime == "lazy"
    # a drift becomes a plateau if any growth is tolerated
    d = _matrix(rotation(STEPS, early=1.0, total=1.2))
    loose = VerdictRules(plateau_tolerance=0.9)
    assert phase_verdict(STEPS.tolist(), d, rules=loose).regime == "cone"


def test_mixed_references_without_majority_are_undetermined() -> None:
    # kernel moves inside a cone, then freezes two thirds of the way through: early references
    # plateau above zero, the latest sees no movement at all
    vectors = cone_trajectory(STEPS, 0)
    frozen_from = int(np.searchsorted(STEPS, 7000))
    vectors[frozen_from:] = vectors[frozen_from]
    s = _matrix(vectors)
    v = phase_verdict(STEPS.tolist(), s, refs=[1000, 8000])
    statuses = [r["status"] for r in v.numbers["references"]]
    assert statuses == ["plateau", "frozen"]
    assert v.regime == "undetermined" and "disagree" in v.explanation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"phase1_fraction": 1.5}, "phase1_fraction"),
        ({"velocity_dt": 0}, "velocity_dt"),
        ({"smooth_window": 0}, "smooth_window"),
        ({"reference_fractions": (0.0, 1.0)}, "reference_fractions"),
        ({"plateau_tolerance": 0.0}, "plateau_tolerance"),
        ({"lazy_level": -1.0}, "lazy_level"),
        ({"min_steps": 2}, "min_steps"),
        ({"min_window_points": 0}, "min_window_points"),
    ],
)
def test_bad_rules_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        VerdictRules(**kwargs)


def test_verdict_checks_its_inputs() -> None:
    with pytest.raises(GeometryError, match="shape"):
        phase_verdict([0, 1, 2], np.zeros((4, 4)))
    assert isinstance(phase_verdict(list(range(8)), np.zeros((8, 8))), Verdict)
