"""Read the distance curves the way the paper does: Phase I, then a cone, a frozen kernel, or drift.

The rule (every threshold is a field of :class:`VerdictRules`; defaults in brackets):

1. **Enough data.** At least ``min_steps`` [8] stored steps, else ``"undetermined"``. If no two
   stored kernels are farther apart than ``lazy_level`` [1e-3] (the largest entry of ``S``), the
   kernel never moved: ``"lazy"``.
2. **Velocity.** ``v(t) = S(t, t + dt) / dt`` over every stored pair, for one ``dt``:
   ``velocity_dt``, or by default the consecutive spacing whose pairs cover the longest stretch of
   the run (:func:`conetool.geometry.velocity_dt`; 100 with checkpoints every 100 steps). At
   least 3 pairs are needed, else ``"undetermined"``. Optionally a running median over
   ``smooth_window`` [1: none] pairs.
3. **End of Phase I.** The peak velocity ``v_max`` at step ``t_peak``. Phase I ends at the first
   pair step ``t1 >= t_peak`` from which every later pair's velocity is at most
   ``phase1_fraction * v_max`` [0.1]. If the last pair is still above that, the velocity never
   settled: there is no Phase I/Phase II split (step 5 still looks at the distances over the whole
   run, but can then only say ``"drift"`` or ``"undetermined"``).
4. **References in Phase II.** The user's references at or after ``t1``, or when there are none the
   stored steps nearest to ``t1 + f * (T - t1)`` for ``f`` in ``reference_fractions``
   [(0.1, 0.3, 0.5)], ``T`` the last stored step (not Phase II's very start, whose curve
   still carries the last of Phase I's motion). For each reference ``tau`` the curve
   ``d(t) = S(tau, t)`` on ``t`` in ``[tau, T]`` is cut in thirds of ``L = T - tau``: the
   *level* is the mean of ``d`` over the last third ``[tau + 2L/3, T]``, the *growth* is
   ``(level - m) / level`` with ``m`` the mean over the middle third ``[tau + L/3, tau + 2L/3)``.
   Each third needs ``min_window_points`` [2] stored steps, else the reference is skipped. A
   reference is

   - *frozen* when ``level <= lazy_level`` [1e-3] (the distance stays at about zero);
   - *rising* when ``growth > plateau_tolerance`` [0.15] (it keeps climbing; a distance growing
     like ``sqrt(t - tau)`` has growth 0.23, linearly 0.4, quadratically 0.63);
   - *plateau* otherwise: it rose to a level clearly above zero and stopped rising.
5. **Regime.** The status held by a strict majority of the judged references decides (a
   majority, not every one, so that one noisy curve does not flip the verdict): *rising* gives
   ``"drift"`` (the kernel keeps drifting: no two-phase pattern, the paper's Fig. 3); when Phase
   I ended, *plateau* gives ``"cone"`` (the kernel keeps moving, inside a bounded region: the
   cone effect) and *frozen* gives ``"lazy"`` (the kernel froze after Phase I). Anything else
   (no majority, no reference with enough steps after it, or plateaus without a settled
   velocity) is ``"undetermined"``, with the reason in the explanation.

The velocity is the paper's ``S / dt``. For small moves ``S`` is half the squared angle between
the kernels, so a velocity at a tenth of its peak is an angular speed at about a third of its peak.

Example::

    s = distance_matrix(load, len(steps))      # (K, K)
    v = phase_verdict(steps, s)                # e.g. v.regime == "cone", v.phase1_end == 1200
    print(v.explanation)
    json.dumps(v.to_dict())
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from conetool.geometry import GeometryError, _check_steps, adjacent, step_index, velocity_dt

__all__ = ["Regime", "Verdict", "VerdictRules", "phase_verdict"]

Regime = Literal["cone", "lazy", "drift", "undetermined"]


@dataclass(frozen=True)
class VerdictRules:
    """Thresholds of :func:`phase_verdict`; the module docstring states the rule that uses them.

    Attributes:
        phase1_fraction: Phase I ends once the velocity stays at or below this fraction of its
            peak.
        velocity_dt: the ``dt`` of the velocity curve; ``None`` picks the spacing that covers
            the run best.
        smooth_window: running-median window (in pairs) applied to the velocity; 1 = none.
        reference_fractions: default Phase II references, as fractions of Phase II's length
            after its start.
        plateau_tolerance: largest relative growth, last third over middle third, of a
            distance-to-reference curve that still counts as a plateau.
        lazy_level: a plateau level (kernel distance) at or below this counts as frozen.
        min_steps: fewest stored steps for any verdict.
        min_window_points: fewest stored steps in each of the two thirds a reference is judged on.
    """

    phase1_fraction: float = 0.1
    velocity_dt: int | None = None
    smooth_window: int = 1
    reference_fractions: tuple[float, ...] = (0.1, 0.3, 0.5)
    plateau_tolerance: float = 0.15
    lazy_level: float = 1e-3
    min_steps: int = 8
    min_window_points: int = 2

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.phase1_fraction < 1.0:
            problems.append(f"phase1_fraction={self.phase1_fraction} (needs 0 < x < 1)")
        if self.velocity_dt is not None and self.velocity_dt < 1:
            problems.append(f"velocity_dt={self.velocity_dt} (needs a positive step count)")
        if self.smooth_window < 1:
            problems.append(f"smooth_window={self.smooth_window} (needs >= 1)")
        if not self.reference_fractions or not all(
            0.0 <= f < 1.0 for f in self.reference_fractions
        ):
            problems.append(
                f"reference_fractions={self.reference_fractions} (needs values in [0, 1))"
            )
        if not self.plateau_tolerance > 0.0:
            problems.append(f"plateau_tolerance={self.plateau_tolerance} (needs > 0)")
        if not self.lazy_level >= 0.0:
            problems.append(f"lazy_level={self.lazy_level} (needs >= 0)")
        if self.min_steps < 3:
            problems.append(f"min_steps={self.min_steps} (needs >= 3)")
        if self.min_window_points < 1:
            problems.append(f"min_window_points={self.min_window_points} (needs >= 1)")
        if problems:
            raise GeometryError("invalid verdict rules: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class Verdict:
    """What the curves say.

    Attributes:
        regime: ``"cone"``, ``"lazy"``, ``"drift"`` or ``"undetermined"``.
        phase1_end: the step at which Phase I ends, ``None`` when the velocity never settled or
            could not be measured.
        numbers: the measurements behind the verdict (JSON-ready): peak velocity and its step,
            the threshold, per reference its level, growth and status, and the rules used.
        explanation: one paragraph, with the numbers, that says why.
    """

    regime: Regime
    phase1_end: int | None
    numbers: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``regime``, ``phase1_end``, ``numbers``, ``explanation``."""
        return {
            "regime": self.regime,
            "phase1_end": self.phase1_end,
            "numbers": self.numbers,
            "explanation": self.explanation,
        }


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1:
        return values
    half = window // 2
    return np.array(
        [np.median(values[max(0, i - half) : i - half + window]) for i in range(values.size)]
    )


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _judge_reference(
    s: np.ndarray, steps: np.ndarray, tau: int, rules: VerdictRules
) -> dict[str, Any]:
    i = step_index(steps, tau)
    last = int(steps[-1])
    length = last - tau
    row = s[i]
    middle = (steps >= tau + length / 3) & (steps < tau + 2 * length / 3)
    end = steps >= tau + 2 * length / 3
    record: dict[str, Any] = {
        "ref": int(tau),
        "middle_third_points": int(middle.sum()),
        "last_third_points": int(end.sum()),
    }
    if length <= 0 or min(middle.sum(), end.sum()) < rules.min_window_points:
        record["status"] = "skipped"
        return record
    level = float(row[end].mean())
    m = float(row[middle].mean())
    growth = (level - m) / level if level > 0.0 else 0.0
    if level <= rules.lazy_level:
        status = "frozen"
    elif growth > rules.plateau_tolerance:
        status = "rising"
    else:
        status = "plateau"
    record.update(level=level, middle_third_mean=m, growth=growth, status=status)
    return record


def _default_references(steps: np.ndarray, start: int, rules: VerdictRules) -> list[int]:
    phase2 = steps[steps >= start]
    last = int(steps[-1])
    refs: list[int] = []
    for f in rules.reference_fractions:
        target = start + f * (last - start)
        tau = int(phase2[int(np.argmin(np.abs(phase2 - target)))])
        if tau not in refs:
            refs.append(tau)
    return sorted(refs)


def phase_verdict(
    steps: Sequence[int],
    s: np.ndarray,
    *,
    refs: Sequence[int] | None = None,
    rules: VerdictRules | None = None,
) -> Verdict:
    """Classify a run's kernel trajectory as ``cone``, ``lazy``, ``drift`` or ``undetermined``.

    Args:
        steps: the ``K`` stored steps, strictly increasing.
        s: the ``(K, K)`` S matrix (:func:`conetool.geometry.distance_matrix`), rows in the order
            of ``steps``.
        refs: reference steps to judge Phase II by (those before the end of Phase I are ignored;
            when none is left, or by default: the stored steps at ``rules.reference_fractions``
            of Phase II). Each must be stored.
        rules: thresholds; default :class:`VerdictRules` ``()``.

    Returns:
        A :class:`Verdict`. The rule is stated in full in this module's docstring.

    Raises:
        GeometryError: ``steps`` and ``s`` do not fit together, or a reference is not stored.
    """
    rules = VerdictRules() if rules is None else rules
    s = np.asarray(s, dtype=np.float64)
    arr = _check_steps(steps, s)
    numbers: dict[str, Any] = {"rules": asdict(rules), "stored_steps": int(arr.size)}
    numbers["rules"]["reference_fractions"] = list(rules.reference_fractions)

    def done(regime: Regime, phase1_end: int | None, text: str) -> Verdict:
        return Verdict(regime, phase1_end, numbers, text)

    if arr.size < rules.min_steps:
        return done(
            "undetermined",
            None,
            f"Only {arr.size} kernels are stored; the verdict needs at least {rules.min_steps} "
            "(min_steps). Save checkpoints more often (`save_every`) or compute kernels at more "
            "of them.",
        )
    numbers.update(first_step=int(arr[0]), last_step=int(arr[-1]))
    max_distance = float(s.max())
    numbers["max_distance"] = max_distance
    if max_distance <= rules.lazy_level:
        return done(
            "lazy",
            None,
            f"Lazy regime: no two of the {arr.size} stored kernels (steps {arr[0]} to {arr[-1]}) "
            f"are farther apart than S = {_fmt(max_distance)}, at or below the lazy level "
            f"{_fmt(rules.lazy_level)}; the kernel stayed frozen for the whole run.",
        )

    dt = rules.velocity_dt if rules.velocity_dt is not None else velocity_dt(arr.tolist())
    assert dt is not None
    pairs = adjacent(s, arr.tolist(), dt)
    numbers["velocity_dt"] = int(dt)
    numbers["velocity_pairs"] = len(pairs)
    if len(pairs) < 3:
        return done(
            "undetermined",
            None,
            f"Only {len(pairs)} pairs of stored steps are {dt} steps apart, too few to follow "
            "the kernel velocity (3 needed). Store kernels at evenly spaced steps, or choose "
            "another velocity_dt.",
        )
    pair_steps = np.array([p.step for p in pairs])
    velocity = _running_median(np.array([p.velocity for p in pairs]), rules.smooth_window)
    peak = int(np.argmax(velocity))
    v_max = float(velocity[peak])
    threshold = rules.phase1_fraction * v_max
    numbers.update(
        peak_velocity=v_max, peak_step=int(pair_steps[peak]), velocity_threshold=threshold
    )
    above = np.nonzero(velocity > threshold)[0]
    settle = peak + 1 if above.size == 0 else int(above[-1]) + 1
    phase1_end = int(pair_steps[settle]) if settle < len(pairs) else None
    numbers["phase1_end"] = phase1_end
    velocity_text = (
        f"The adjacent velocity at dt = {dt} peaks at {_fmt(v_max)} per step (step "
        f"{pair_steps[peak]})"
    )
    if phase1_end is None:
        velocity_text += (
            f" and never stays at or below {100 * rules.phase1_fraction:g}% of that peak "
            f"({_fmt(threshold)}): it is still above it at step {pair_steps[-1]}, so there is no "
            "Phase I/Phase II split."
        )
        start = int(arr[0])
    else:
        velocity_text += (
            f" and stays at or below {100 * rules.phase1_fraction:g}% of that peak ({_fmt(threshold)}) "
            f"from step {phase1_end} on: Phase I ends at step {phase1_end}."
        )
        start = phase1_end

    given = [] if refs is None else [int(t) for t in refs]
    for tau in given:
        step_index(arr.tolist(), tau)  # every reference must be a stored step
    taus = sorted({t for t in given if t >= start})
    numbers["references_from"] = "user" if taus else "default"
    if not taus:  # none given, or all of them in Phase I
        taus = _default_references(arr, start, rules)
    records = [_judge_reference(s, arr, tau, rules) for tau in taus]
    numbers["references"] = records
    judged = [r for r in records if r["status"] != "skipped"]
    numbers["phase2_steps"] = int((arr >= start).sum())

    if not judged:
        where = "in Phase II" if phase1_end is not None else "in the run"
        return done(
            "undetermined",
            phase1_end,
            f"{velocity_text} No reference {where} has enough stored steps after it to judge a "
            f"plateau (each of the last two thirds of its curve needs "
            f"{rules.min_window_points}; references tried: "
            f"{', '.join(str(t) for t in taus) or 'none'}). Train longer or store more "
            "kernels after Phase I.",
        )

    def describe(r: dict[str, Any]) -> str:
        return (
            f"ref {r['ref']}: level {_fmt(r['level'])}, growth {r['growth']:+.1%} ({r['status']})"
        )

    detail = "; ".join(describe(r) for r in judged)
    criteria = (
        f"(growth: mean of the last third of each curve over its middle third; rising above "
        f"{rules.plateau_tolerance:.0%}; frozen: level at most {_fmt(rules.lazy_level)})"
    )
    counts = Counter(r["status"] for r in judged)
    numbers["status_counts"] = dict(counts)
    status, votes = counts.most_common(1)[0]
    majority = status if 2 * votes > len(judged) else None
    tally = f"{votes} of {len(judged)} references"
    if majority == "rising":
        return done(
            "drift",
            phase1_end,
            f"No two-phase pattern: the kernel keeps drifting. {velocity_text} For {tally} the "
            f"distance is still rising at the end of the run instead of levelling off: "
            f"{detail} {criteria}.",
        )
    if majority is not None and phase1_end is None:
        return done(
            "undetermined",
            None,
            f"{velocity_text} Yet for {tally} the distance is {majority}: {detail} "
            f"{criteria}. Neither a two-phase pattern nor a drift; look at the curves.",
        )
    if majority == "plateau":
        return done(
            "cone",
            phase1_end,
            f"Cone effect. {velocity_text} In Phase II the distance to the reference rises and "
            f"then plateaus clearly above zero for {tally}, so the kernel keeps moving inside a "
            f"bounded region: {detail} {criteria}.",
        )
    if majority == "frozen":
        return done(
            "lazy",
            phase1_end,
            f"Lazy regime after Phase I. {velocity_text} In Phase II the distance to the "
            f"reference stays at about zero for {tally}: the kernel froze: {detail} {criteria}.",
        )
    return done(
        "undetermined",
        phase1_end,
        f"{velocity_text} The references disagree, with no majority for a plateau, a rise or "
        f"a frozen kernel: {detail} {criteria}. Store more kernels or train longer.",
    )
