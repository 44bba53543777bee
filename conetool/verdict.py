"""Read a run's kernel distances the way the paper does, in two questions, with their evidence.

**1. Is there a two-phase pattern (Fort et al. 2020)?** The kernel velocity
``v(t) = S(t, t + dt) / dt`` of every stored pair at the lags ``dt``, ``2 dt`` and ``3 dt`` is
fitted in ``log10`` by a continuous line with two bends (:func:`conetool.verdict_measures.
fit_phase_break`); Phase I ends at the bend where the fall stops, with a range from the fit's
profile likelihood. There is a two-phase pattern when, at the paper's ``dt``, the velocity falls
across that bend by at least ``min_drop`` [5x] (early level: the two largest velocities before
it; Phase II level: the median after it), the fitted slope after the bend is less than half as
steep as before it, and the velocity does not climb back. Otherwise the answer is
``no-two-phase`` (the paper's Fig. 3), or ``undetermined`` when the velocity is still falling at
the end of the run.

**2. What does the kernel do in Phase II?** Every pair of Phase II steps ``(t, t')`` gives S as a
function of the lag ``t' - t``. Three readings:

- *lag growth* (Fig. 1b: "upper-bounded by the same value for different dt"): the exponent ``a``
  of ``S ~ lag^a`` over lags between 1/10 and 1/2 of Phase II's length
  (:func:`conetool.verdict_measures.lag_growth`). ``a <= bounded_exponent`` [0.25]: S saturates,
  the kernel moves inside a bounded region; ``a >= drift_exponent`` [0.5]: S keeps growing
  (about 1 for a random walk, 2 for a straight line); in between: not settled.
- *reference curves* (Fig. 1a: the distance from a Phase II reference "first increases and then
  keeps nearly constant"): for each reference τ (the user's references in Phase II, and the
  stored steps 10%, 30% and 50% into Phase II), the mean of ``S(τ, t)`` over the last third of
  ``[τ, T]`` against the middle third: *plateau* when it grew by at most ``plateau_tolerance``
  [15%], *rising* above, *frozen* when the level is at most ``lazy_level``.
- *velocity trend*: the Phase II velocity's first quarter over its last quarter. A kernel that
  freezes because the loss goes to zero slows down by orders of magnitude; one that moves inside
  a cone does not.

The regime: ``lazy`` when the kernel froze (velocity falling by ``freeze_factor`` [5x] across
Phase II, or no two Phase II kernels farther apart than ``lazy_level`` [1e-4], or than three
times the numerical noise floor when it is known); else ``cone`` when the lag growth says bounded
and ``drift-after-phase-I`` when it says growing, provided the reference curves' majority does
not say the opposite; else ``undetermined``, naming what is missing and how to get it. A run
whose kernels never moved farther than ``lazy_level`` is ``lazy`` with no Phase I.

Example::

    v = phase_verdict(steps, s)                  # s: (K, K) S matrix, rows in step order
    v.regime, v.phase1_end                       # e.g. "cone", 1200
    print(v.explanation)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from conetool.geometry import GeometryError, check_steps, step_index, velocity_dt
from conetool.verdict_measures import (
    LagGrowth,
    PhaseBreak,
    VelocityDrop,
    VelocityTrend,
    fit_phase_break,
    lag_growth,
    velocity_drop,
    velocity_points,
    velocity_trend,
)

__all__ = ["REGIMES", "Regime", "Verdict", "VerdictRules", "phase_verdict"]

Regime = Literal["no-two-phase", "lazy", "cone", "drift-after-phase-I", "undetermined"]

#: regime -> (a few words, one sentence): how the README, the CLI and the report name it.
REGIMES: dict[str, tuple[str, str]] = {
    "no-two-phase": (
        "no two-phase pattern",
        "the kernel velocity never falls for good: no two phases, as in the paper's Fig. 3",
    ),
    "lazy": (
        "the kernel froze",
        "the kernel froze: after Phase I (or from the start) it stops moving, Fort et al.'s "
        "lazy regime",
    ),
    "cone": (
        "two phases, then a cone",
        "after a fast Phase I the kernel keeps moving, but inside a bounded region: the cone "
        "effect",
    ),
    "drift-after-phase-I": (
        "two phases, then drift",
        "after a fast Phase I the kernel keeps moving away, with no bound in sight",
    ),
    "undetermined": (
        "the stored kernels do not settle it",
        "the stored kernels do not settle the question; the explanation says what is missing "
        "and how to get it",
    ),
}


@dataclass(frozen=True)
class VerdictRules:
    """Thresholds of :func:`phase_verdict`; the module docstring states the rule that uses them.

    Attributes:
        min_drop: the velocity must fall by at least this factor across Phase I's end.
        velocity_dt: the paper's ``dt``; ``None`` picks the spacing that covers the run best.
        freeze_factor: a Phase II velocity falling by this factor (first quarter over last)
            means the kernel is freezing.
        bounded_exponent: ``S ~ lag^a`` with ``a`` at most this reads as bounded motion.
        drift_exponent: ``a`` at least this reads as drift.
        plateau_tolerance: largest growth, last third over middle third, of a reference curve
            that still counts as a plateau.
        lazy_level: S at or below this between any two kernels (of Phase II, or of the run)
            means frozen.
        reference_fractions: default Phase II references, as fractions of Phase II's length.
        min_steps: fewest stored steps for any verdict.
        min_phase2_steps: fewest stored steps in Phase II to judge it.
        min_window_points: fewest stored steps in each third a reference curve is judged on.
    """

    min_drop: float = 5.0
    velocity_dt: int | None = None
    freeze_factor: float = 5.0
    bounded_exponent: float = 0.25
    drift_exponent: float = 0.5
    plateau_tolerance: float = 0.15
    lazy_level: float = 1e-4
    reference_fractions: tuple[float, ...] = (0.1, 0.3, 0.5)
    min_steps: int = 8
    min_phase2_steps: int = 8
    min_window_points: int = 2

    def __post_init__(self) -> None:
        problems = []
        if not self.min_drop > 1.0:
            problems.append(f"min_drop={self.min_drop} (needs > 1)")
        if self.velocity_dt is not None and self.velocity_dt < 1:
            problems.append(f"velocity_dt={self.velocity_dt} (needs a positive step count)")
        if not self.freeze_factor > 1.0:
            problems.append(f"freeze_factor={self.freeze_factor} (needs > 1)")
        if not self.bounded_exponent < self.drift_exponent:
            problems.append(
                f"bounded_exponent={self.bounded_exponent}, drift_exponent="
                f"{self.drift_exponent} (needs bounded < drift)"
            )
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
        if self.min_phase2_steps < 4:
            problems.append(f"min_phase2_steps={self.min_phase2_steps} (needs >= 4)")
        if self.min_window_points < 1:
            problems.append(f"min_window_points={self.min_window_points} (needs >= 1)")
        if problems:
            raise GeometryError("invalid verdict rules: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, ``reference_fractions`` as a list."""
        out = asdict(self)
        out["reference_fractions"] = list(self.reference_fractions)
        return out


@dataclass(frozen=True)
class Verdict:
    """What the distances say.

    Attributes:
        regime: one of :data:`REGIMES`.
        phase1_end: the stored step nearest the end of Phase I; ``None`` without two phases.
        numbers: the measurements behind the verdict (JSON-ready): ``velocity`` (the fit, the
            drop and its range), ``criteria`` (each Phase II reading with its value, what it
            rests on, what it reads and whether it sits at the noise floor), ``references``
            (each judged curve), ``user_references`` (each reference the user gave: used, or
            why not), ``agree``, ``noise_floor`` and the ``rules``.
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


def _g(x: float) -> str:
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


def _nearest_step(steps: np.ndarray, x: float) -> int:
    return int(steps[int(np.argmin(np.abs(steps - x)))])


class _Reading:
    """Collects the numbers and the sentence pieces of one verdict."""

    def __init__(self, arr: np.ndarray, rules: VerdictRules, noise: float | None) -> None:
        self.arr = arr
        self.rules = rules
        self.noise = noise
        self.numbers: dict[str, Any] = {
            "rules": rules.to_dict(),
            "stored_steps": int(arr.size),
            "first_step": int(arr[0]) if arr.size else None,
            "last_step": int(arr[-1]) if arr.size else None,
            "noise_floor": noise,
        }

    def at_noise(self, value: float) -> bool:
        return self.noise is not None and value <= 3.0 * self.noise

    def done(self, regime: Regime, phase1_end: int | None, text: str) -> Verdict:
        self.numbers["regime"] = regime
        if self.noise is not None:
            flagged = [c["name"] for c in self.numbers.get("criteria", []) if c["at_noise_floor"]]
            where = (
                f"at or within 3x of it: {', '.join(flagged)}"
                if flagged
                else "no reading is within 3x of it"
            )
            text += f" Noise floor of S on this run: {_g(self.noise)}; {where}."
        return Verdict(regime, phase1_end, self.numbers, text)


def phase_verdict(
    steps: Sequence[int],
    s: np.ndarray,
    *,
    refs: Sequence[int] | None = None,
    rules: VerdictRules | None = None,
    noise_floor: float | None = None,
) -> Verdict:
    """Classify a run's kernel trajectory; the rule is in this module's docstring.

    Args:
        steps: the ``K`` stored steps, strictly increasing.
        s: the ``(K, K)`` S matrix (:func:`conetool.geometry.distance_matrix`), rows in the order
            of ``steps``.
        refs: the user's reference steps; those in Phase II with enough stored steps after them
            are judged beside the default references. Each must be stored; each one
            that cannot be used is named in ``numbers["user_references"]`` with the reason.
        rules: thresholds; default :class:`VerdictRules` ``()``.
        noise_floor: the numerical noise of S on this run (:mod:`conetool.noise_floor`), or
            ``None`` when unknown. Readings at or below three times it say so, and a Phase II
            whose kernels differ by no more than that is frozen.

    Returns:
        A :class:`Verdict`.

    Raises:
        GeometryError: ``steps`` and ``s`` do not fit together, or a reference is not stored.
    """
    rules = VerdictRules() if rules is None else rules
    s = np.asarray(s, dtype=np.float64)
    arr = check_steps(steps, s)
    given = [] if refs is None else sorted({int(t) for t in refs})
    for tau in given:
        step_index(arr.tolist(), tau)  # every reference must be a stored step
    r = _Reading(arr, rules, noise_floor)
    n = r.numbers
    if arr.size < rules.min_steps:
        return r.done(
            "undetermined",
            None,
            f"Only {arr.size} kernels are stored; the verdict needs at least {rules.min_steps} "
            "(min_steps). Compute kernels at more checkpoints (save them more often with "
            "`save_every`).",
        )
    max_distance = float(s.max())
    n["max_distance"] = max_distance
    if max_distance <= rules.lazy_level:
        return r.done(
            "lazy",
            None,
            f"Lazy: the kernel never moved. No two of the {arr.size} stored kernels (steps "
            f"{arr[0]} to {arr[-1]}) are farther apart than S = {_g(max_distance)}, at or below "
            f"lazy_level {_g(rules.lazy_level)}; there is no Phase I.",
        )
    dt = rules.velocity_dt if rules.velocity_dt is not None else velocity_dt(arr.tolist())
    assert dt is not None
    points = velocity_points(arr, s, dt)
    fit = fit_phase_break(points, min_fall=0.5 * float(np.log10(rules.min_drop)))
    n["velocity"] = {"dt": int(dt), "lags": list(points.dts), "points": int(points.start.size)}
    if fit is None:
        return r.done(
            "undetermined",
            None,
            f"Too few pairs of stored steps are {dt} steps apart ({int((points.lag == dt).sum())}) "
            "to follow the kernel velocity; the fit needs pairs at 6 or more distinct steps. "
            "Store kernels at evenly spaced steps over the whole run, or choose another "
            "velocity_dt.",
        )
    drop = velocity_drop(points, fit.step)
    assert drop is not None  # the fit leaves points on both sides of its bends
    phase1_end = _nearest_step(arr, fit.step)
    n["velocity"].update(_fit_numbers(fit, drop, arr))
    fit_text = (
        f"the velocity at dt = {dt} ({fit.points} velocities at lags "
        f"{', '.join(str(d) for d in points.dts)}, fitted in log scale by a line with two "
        f"bends)"
    )
    falls = f"falls {_g(drop.factor)}x, from {_g(drop.early)} to {_g(drop.late)} per step"
    low, high = n["velocity"]["phase1_range"]
    where = f"at step {phase1_end}" + (f" (range {low} to {high})" if low != high else "")
    steepening = fit.slope_after - fit.slope_before
    levels_off = fit.slope_before < 0 and steepening >= 0.5 * abs(fit.slope_before)
    stays_down = drop.rebound * drop.late <= drop.early / np.sqrt(rules.min_drop)
    n["velocity"].update(levels_off=bool(levels_off), stays_down=bool(stays_down))
    user = _user_references(given, arr, phase1_end, rules)
    n["user_references"] = user

    if drop.factor < rules.min_drop or not stays_down:
        why = (
            f"it {falls} across its largest bend ({where}), less than the {_g(rules.min_drop)}x "
            "(min_drop) a second phase needs"
            if drop.factor < rules.min_drop
            else f"it {falls} {where} but climbs back to "
            f"{_g(drop.rebound * drop.late)} later"
        )
        return r.done(
            "no-two-phase",
            None,
            f"No two-phase pattern (the paper's Fig. 3): {fit_text} never falls for good: "
            f"{why}.{_unused(user)}",
        )
    if not levels_off:
        return r.done(
            "undetermined",
            None,
            f"Phase I has not ended by the end of the run: {fit_text} {falls} but is still "
            f"falling at the end ({_g(fit.slope_after)} decades per 1,000 steps after the last "
            f"bend, against {_g(fit.slope_before)} before it). Train longer, about twice as "
            f"long (to step {2 * int(arr[-1])}), and compute its kernels.{_unused(user)}",
        )

    head = f"Two phases: {fit_text} {falls}; Phase I ends {where}."
    phase2 = arr[arr >= phase1_end]
    n["phase2"] = {"start": phase1_end, "steps": int(phase2.size)}
    if phase2.size < rules.min_phase2_steps:
        spacing = int(np.median(np.diff(phase2))) if phase2.size > 1 else int(dt)
        needed = phase1_end + (rules.min_phase2_steps - 1) * spacing
        factor = needed / max(int(arr[-1]), 1)
        return r.done(
            "undetermined",
            phase1_end,
            f"{head} Phase II holds only {phase2.size} stored steps ({phase1_end} to "
            f"{arr[-1]}); judging it needs {rules.min_phase2_steps} (min_phase2_steps). Train "
            f"about {factor:.1f}x longer (to about step {needed}) at this checkpoint spacing, or "
            f"save checkpoints more often after step {phase1_end}.{_unused(user)}",
        )
    return _phase_two(r, s, arr, phase1_end, head, points, given, user)


def _fit_numbers(fit: PhaseBreak, drop: VelocityDrop, arr: np.ndarray) -> dict[str, Any]:
    return {
        "phase1_end": _nearest_step(arr, fit.step),
        "phase1_range": [_nearest_step(arr, fit.low), _nearest_step(arr, fit.high)],
        "bend": fit.step,
        "bends": list(fit.bends),
        "slope_before": fit.slope_before,
        "slope_after": fit.slope_after,
        "fit_rms_decades": fit.rms,
        "curves": fit.curves,
        "early_level": drop.early,
        "phase2_level": drop.late,
        "drop_factor": drop.factor,
        "rebound": drop.rebound,
        "points_before": drop.before,
        "points_after": drop.after,
    }


def _user_references(
    given: list[int], arr: np.ndarray, phase1_end: int, rules: VerdictRules
) -> list[dict[str, Any]]:
    out = []
    for tau in given:
        if tau < phase1_end:
            out.append({"ref": tau, "used": False, "why": f"in Phase I (before step {phase1_end})"})
            continue
        length = int(arr[-1]) - tau
        middle = int(((arr >= tau + length / 3) & (arr < tau + 2 * length / 3)).sum())
        end = int((arr >= tau + 2 * length / 3).sum())
        if length <= 0 or min(middle, end) < rules.min_window_points:
            out.append(
                {
                    "ref": tau,
                    "used": False,
                    "why": f"too few stored steps after it ({middle} and {end} in the last two "
                    f"thirds of [{tau}, {arr[-1]}]; {rules.min_window_points} each needed)",
                }
            )
            continue
        out.append({"ref": tau, "used": True, "why": ""})
    return out


def _unused(user: list[dict[str, Any]]) -> str:
    unused = [u for u in user if not u["used"]]
    if not unused:
        return ""
    return " Not used: " + "; ".join(f"--ref {u['ref']}: {u['why']}" for u in unused) + "."


def _phase_two(
    r: _Reading,
    s: np.ndarray,
    arr: np.ndarray,
    phase1_end: int,
    head: str,
    points: Any,
    given: list[int],
    user: list[dict[str, Any]],
) -> Verdict:
    rules = r.rules
    growth = lag_growth(arr, s, phase1_end)
    trend = velocity_trend(arr, s, phase1_end, points.dts[0], r.noise)
    usable = [u["ref"] for u in user if u["used"]]
    taus = sorted(set(usable) | set(_default_references(arr, phase1_end, rules)))
    records = [_judge_reference(s, arr, tau, rules) for tau in taus]
    for record in records:
        record["from"] = "user" if record["ref"] in usable else "default"
    r.numbers["references"] = records
    r.numbers["references_from"] = "user and default" if usable else "default"
    judged = [x for x in records if x["status"] != "skipped"]
    counts = Counter(x["status"] for x in judged)
    status, votes = counts.most_common(1)[0] if counts else ("none", 0)
    majority = status if judged and 2 * votes > len(judged) else None

    criteria = _criteria(r, growth, trend, judged, majority)
    r.numbers["criteria"] = criteria
    frozen_by = [c for c in criteria if c["reads"] in ("frozen", "freezing")]
    lag = next(c for c in criteria if c["name"] == "lag growth")
    refs_c = next(c for c in criteria if c["name"] == "reference curves")
    detail = " ".join(c["sentence"] for c in criteria)
    unused = _unused(user)
    if frozen_by:
        r.numbers["agree"] = len(frozen_by) == len(criteria) - 2  # spread, trend (+ refs)
        names = " and ".join(c["name"] for c in frozen_by)
        return r.done(
            "lazy",
            phase1_end,
            f"{head} Lazy Phase II: the kernel froze ({names}). {detail}{unused}",
        )
    lag_reads = lag["reads"]
    opposite = {"bounded": "rising", "drift": "plateau"}
    conflict = lag_reads in opposite and refs_c["reads"] == opposite[lag_reads]
    r.numbers["agree"] = lag_reads in opposite and refs_c["reads"] in (
        {"bounded": "plateau", "drift": "rising"}[lag_reads],
    )
    caveat = (
        f" The reference curves read {refs_c['reads']} against the lag growth: each follows "
        f"one reference and fluctuates, while the lag growth rests on "
        f"{lag['rests_on'].split(' in ')[0]}, so the lag growth decides."
        if conflict
        else ""
    )
    if lag_reads == "bounded":
        return r.done(
            "cone",
            phase1_end,
            f"{head} Cone: in Phase II the kernel keeps moving, inside a bounded region. "
            f"{detail}{caveat}{unused}",
        )
    if lag_reads == "drift":
        return r.done(
            "drift-after-phase-I",
            phase1_end,
            f"{head} Drift after Phase I: in Phase II the kernel keeps moving away, without a "
            f"bound in sight. {detail}{caveat}{unused}",
        )
    length = int(arr[-1]) - phase1_end
    if lag_reads == "unsettled":
        missing = (
            "S still grows with the lag, but more slowly than a random walk: over Phase II's "
            f"{length} steps it has neither levelled off nor kept growing."
        )
    else:
        missing = "Phase II's pairs do not span enough distinct lags to measure the lag growth."
    return r.done(
        "undetermined",
        phase1_end,
        f"{head} {missing} {detail} Train about 2x longer (to step {int(arr[-1]) + length}) so "
        f"that Phase II spans more lags, and compute its kernels.{unused}",
    )


def _criteria(
    r: _Reading,
    growth: LagGrowth | None,
    trend: VelocityTrend | None,
    judged: list[dict[str, Any]],
    majority: str | None,
) -> list[dict[str, Any]]:
    rules = r.rules
    out: list[dict[str, Any]] = []
    # 1. how far apart Phase II kernels get
    if growth is not None:
        # the median S at the largest lags against the floor: the largest S of hundreds of
        # pairs of noisy kernels sits a few times above it
        floor_only = r.at_noise(growth.s_high)
        frozen = growth.s_max <= rules.lazy_level or floor_only
        noise_note = (
            f"; at the largest lags its median, {_g(growth.s_high)}, is at the noise floor "
            f"{_g(r.noise or 0.0)}"
            if floor_only
            else ""
        )
        out.append(
            {
                "name": "spread",
                "value": growth.s_max,
                "rests_on": "every pair of Phase II steps",
                "reads": "frozen" if frozen else "moving",
                "at_noise_floor": floor_only,
                "sentence": f"Spread: the largest S between two Phase II kernels is "
                f"{_g(growth.s_max)}{noise_note}"
                + (f", at or below lazy_level {_g(rules.lazy_level)}." if frozen else "."),
            }
        )
        # 2. lag growth
        if growth.exponent <= rules.bounded_exponent:
            reads = "bounded"
        elif growth.exponent >= rules.drift_exponent:
            reads = "drift"
        else:
            reads = "unsettled"
        low_noise = r.at_noise(growth.s_low)
        out.append(
            {
                "name": "lag growth",
                "value": growth.exponent,
                "rests_on": f"{growth.pairs} pairs in {growth.bins} lag bins, lags "
                f"{growth.lag_low} to {growth.lag_high}",
                "reads": reads,
                "at_noise_floor": low_noise,
                "sentence": f"Lag growth (Fig. 1b): S ~ lag^{growth.exponent:.2f} over "
                f"{growth.pairs} Phase II pairs (lags {growth.lag_low} to {growth.lag_high}, S "
                f"from {_g(growth.s_low)} to {_g(growth.s_high)})"
                + (", its small-lag values at the noise floor" if low_noise else "")
                + f"; bounded at or below {rules.bounded_exponent:g}, drifting at or above "
                f"{rules.drift_exponent:g}.",
            }
        )
    else:
        out.append(
            {
                "name": "lag growth",
                "value": None,
                "rests_on": "too few distinct lags in Phase II",
                "reads": "none",
                "at_noise_floor": False,
                "sentence": "Lag growth: Phase II's pairs span fewer than 3 lag bins.",
            }
        )
    # 3. reference curves (Fig. 1a)
    if judged:
        parts = "; ".join(
            f"ref {x['ref']}: level {_g(x['level'])}, growth {x['growth']:+.0%} ({x['status']})"
            for x in judged
        )
        reads = majority or "split"
        out.append(
            {
                "name": "reference curves",
                "value": dict(Counter(x["status"] for x in judged)),
                "rests_on": f"{len(judged)} references",
                "reads": reads,
                "at_noise_floor": any(r.at_noise(x["level"]) for x in judged),
                "sentence": f"Reference curves (Fig. 1a), last third over middle third: {parts}.",
            }
        )
    else:
        out.append(
            {
                "name": "reference curves",
                "value": None,
                "rests_on": "no reference with enough stored steps after it",
                "reads": "none",
                "at_noise_floor": False,
                "sentence": "Reference curves: no reference has enough stored steps after it.",
            }
        )
    # 4. velocity trend
    if trend is not None:
        at_floor = r.at_noise(trend.tail * trend.dt)
        freezing = trend.fall >= rules.freeze_factor
        out.append(
            {
                "name": "velocity trend",
                "value": trend.fall,
                "rests_on": f"{trend.points} Phase II velocities ({trend.per_quarter} per "
                "quarter)",
                "reads": "freezing" if freezing else "steady",
                "at_noise_floor": at_floor,
                "sentence": f"Velocity trend: the Phase II velocity at lag {trend.dt} falls "
                f"{_g(trend.fall)}x from "
                f"its first quarter to its last ({'freezing' if freezing else 'steady'}; "
                f"freezing at {_g(rules.freeze_factor)}x)"
                + (
                    f"; its last quarter's S, {_g(trend.tail * trend.dt)}, is at the noise floor."
                    if at_floor
                    else "."
                ),
            }
        )
    return out
