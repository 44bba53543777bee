"""Read a run's kernel distances the way the paper does, in two questions, with their evidence.

**1. Is there a two-phase pattern (Fort et al. 2020)?** The kernel velocity
``v(t) = S(t, t + dt) / dt`` of every stored pair at the lags ``dt``, ``2 dt`` and ``3 dt``
(``dt``: ``rules.velocity_dt``, or :func:`conetool.geometry.default_velocity_dt`, at least 1/50
of the run whatever the checkpoint spacing: the velocity of a smooth Phase I grows with ``dt``
while a noisy Phase II's does not, so a ``dt`` that followed the spacing read a cone saved often
as no two phases) is fitted in ``log10`` by a continuous line with two bends
(:func:`conetool.verdict_measures.fit_phase_break`); Phase I ends at the bend where the fall
stops, with a range from the fit's profile likelihood. There is a two-phase pattern when, at
the paper's ``dt``, the velocity falls across that bend by at least ``min_drop`` [5x] (early
level: the two largest velocities before it; Phase II level: the median after it), the fitted
slope after the bend is at most half as steep as before it, and the velocity does not climb
back. Otherwise the answer is ``no-two-phase`` (the paper's Fig. 3), or ``undetermined`` when
the velocity is still falling at the end of the run.

**2. What does the kernel do in Phase II?** Every pair of Phase II steps ``(t, t')`` gives S as a
function of the lag ``t' - t``. Three readings:

- *lag growth* (Fig. 1b: "upper-bounded by the same value for different dt"): the exponent ``a``
  of ``S ~ lag^a`` over lags between 1/5 and 3/5 of Phase II's length, each stored pair counted
  for the pairs of steps it stands for (:func:`conetool.verdict_measures.lag_growth`). ``a <= bounded_exponent`` [0.25]: S saturates,
  the kernel moves inside a bounded region; ``a >= drift_exponent`` [0.5]: S keeps growing
  (about 1 for a random walk, 2 for a straight line); in between: not settled.
- *reference curves* (Fig. 1a: the distance from a Phase II reference "first increases and then
  keeps nearly constant"): for each reference τ (the user's references in Phase II, and the
  stored steps 10%, 30% and 50% into Phase II), the mean of ``S(τ, t)`` over the last third of
  ``[τ, T]`` against the middle third: *plateau* when its growth (last − middle) / last is at
  most ``plateau_tolerance`` [0.15], *rising* above, *frozen* when the level is at most ``lazy_level``.
- *velocity trend*: the Phase II velocity's first quarter over its last quarter, quarters of its
  steps (not of its stored pairs, which a schedule dense early would put all in one). A kernel that
  freezes because the loss goes to zero slows down by orders of magnitude; one that moves inside
  a cone does not.

The regime: ``lazy`` when the kernel froze (velocity falling by ``freeze_factor`` [5x] across
Phase II, or no two Phase II kernels farther apart than ``lazy_level`` [1e-4], or the median S at
Phase II's largest lags within three times the numerical noise floor when it is known, or the
reference curves' majority reading frozen: a single pair of Phase II kernels apart beyond
``lazy_level`` does not outvote them, and ``numbers["agree"]`` then says the spread did not
read frozen); else ``cone`` when the lag growth says bounded and ``drift-after-phase-I`` when it
says growing (the lag growth decides: when the reference curves' majority says the opposite, the explanation says
so and ``numbers["agree"]`` is false); else ``undetermined``, naming what is missing and how to
get it. A run whose kernels never moved farther than ``lazy_level`` is ``lazy`` with no Phase I.

Example::

    v = phase_verdict(steps, s)                  # s: (K, K) S matrix, rows in step order
    v.regime, v.phase1_end                       # e.g. "cone", 1200
    print(v.explanation)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from conetool.geometry import (
    VELOCITY_DT_FRACTION,
    check_steps,
    step_index,
    velocity_dt,
    velocity_lag,
)
from conetool.verdict_measures import (
    PhaseBreak,
    VelocityDrop,
    fit_phase_break,
    velocity_drop,
    velocity_points,
)
from conetool.verdict_phase2 import (
    Reading,
    fmt,
    nearest_step,
    phase_two,
    unused_text,
    user_references,
)
from conetool.verdict_rules import REGIMES, Regime, Verdict, VerdictRules
from conetool.verdict_schedule import LrClock, longer_run_note, per_unit_lr

__all__ = ["REGIMES", "Regime", "Verdict", "VerdictRules", "phase_verdict"]


def phase_verdict(
    steps: Sequence[int],
    s: np.ndarray,
    *,
    refs: Sequence[int] | None = None,
    rules: VerdictRules | None = None,
    noise_floor: float | None = None,
    schedule: LrClock | None = None,
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
            whose median S at its largest lags is no more than that is frozen.
        schedule: the run's decaying learning rate (:func:`conetool.verdict_schedule.lr_clock`,
            covering the last stored step), or ``None`` (constant, or unknown). Given, every S
            after the check that the kernel moved at all is read per unit of learning rate
            (:mod:`conetool.verdict_schedule`; with ``noise_floor``, only the part of each S above
            it), and the explanation says where the rate fell and how far the velocity itself
            fell.

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
    r = Reading(arr, rules, noise_floor)
    n = r.numbers
    if arr.size < rules.min_steps:
        return r.done(
            "undetermined",
            None,
            f"Only {arr.size} kernels are stored; the verdict needs at least {rules.min_steps} "
            "(min_steps). Compute kernels at more checkpoints: at every checkpoint of the run "
            "(`conetool kernels` without `--steps` or `--every`), or save checkpoints more often "
            "(`save_every`).",
        )
    max_distance = float(s.max())
    n["max_distance"] = max_distance
    if max_distance <= rules.lazy_level:
        return r.done(
            "lazy",
            None,
            f"Lazy: the kernel never moved. No two of the {arr.size} stored kernels (steps "
            f"{arr[0]} to {arr[-1]}) are farther apart than S = {fmt(max_distance)}, at or below "
            f"lazy_level {fmt(rules.lazy_level)}; there is no Phase I.",
        )
    raw = s
    if schedule is not None:
        s = per_unit_lr(arr, s, schedule, noise_floor)
        n["schedule"] = schedule.numbers()
        r.advice = longer_run_note(schedule)
        above = "" if noise_floor is None else " (its part above the noise floor)"
        r.prefix = (
            f"Read per unit of learning rate ({schedule.describe()}; {schedule.recorded_in} "
            f"records it): each S{above} is divided by the mean learning rate, relative to train.lr, of the "
            "updates between its two steps, so that the slowing the schedule makes is not read "
            "as the kernel's. "
        )
    # the default dt with the spacing it is a multiple of: not always the covering spacing
    # (velocity_dt), which a lost checkpoint's hole can make twice the run's own
    lag = velocity_lag(arr.tolist())
    assert lag is not None
    dt, spacing = lag
    if rules.velocity_dt is not None:
        dt, spacing = rules.velocity_dt, velocity_dt(arr.tolist()) or lag[1]
    dt_from = (
        "velocity_dt"
        if rules.velocity_dt is not None
        else "spacing"
        if dt == spacing
        else "multiple of spacing"
    )
    # a default dt that is not the checkpoint spacing says why (the README's "How to read the
    # verdict"): the spacing follows how densely the checkpoints were saved, the verdict must not
    why_dt = (
        f"{dt // spacing}x the checkpoint spacing {spacing}: the default dt is at least "
        f"{VELOCITY_DT_FRACTION} of the run's {arr[-1] - arr[0]} steps; "
        if dt_from == "multiple of spacing"
        else ""
    )
    points = velocity_points(arr, s, dt)
    fit = fit_phase_break(points, min_fall=0.5 * float(np.log10(rules.min_drop)))
    n["velocity"] = {
        "dt": int(dt),
        "dt_from": dt_from,
        "spacing": int(spacing),
        "lags": list(points.dts),
        "points": int(points.start.size),
    }
    if fit is None:
        return r.done(
            "undetermined",
            None,
            f"Too few pairs of stored steps are {dt} steps apart ({why_dt}"
            f"{int((points.lag == dt).sum())}) "
            "to follow the kernel velocity; the fit needs pairs at 6 or more distinct steps. "
            "Store kernels at evenly spaced steps over the whole run, or choose another "
            "velocity_dt (`conetool distance --velocity-dt`).",
        )
    drop = velocity_drop(points, fit.step)
    assert drop is not None  # the fit leaves points on both sides of its bends
    phase1_end = nearest_step(arr, fit.step)
    n["velocity"].update(fit_numbers(fit, drop, arr))
    per_lr = " per unit of learning rate" if schedule is not None else ""
    fit_text = (
        f"the velocity{per_lr} at dt = {dt} ({why_dt}{fit.points} velocities at lags "
        f"{', '.join(str(d) for d in points.dts)}, fitted in log scale by a line with two "
        f"bends)"
    )
    falls = f"falls {fmt(drop.factor)}x, from {fmt(drop.early)} to {fmt(drop.late)} per step"
    if schedule is not None:
        plain = velocity_drop(velocity_points(arr, raw, dt), fit.step)
        if plain is not None:
            n["schedule"]["raw_drop_factor"] = plain.factor
            falls += f" (the velocity S / dt itself falls {fmt(plain.factor)}x there)"
    low, high = n["velocity"]["phase1_range"]
    where = f"at step {phase1_end}" + (f" (range {low} to {high})" if low != high else "")
    steepening = fit.slope_after - fit.slope_before
    levels_off = fit.slope_before < 0 and steepening >= 0.5 * abs(fit.slope_before)
    stays_down = drop.rebound * drop.late <= drop.early / np.sqrt(rules.min_drop)
    n["velocity"].update(levels_off=bool(levels_off), stays_down=bool(stays_down))
    user = user_references(given, arr, phase1_end, rules)
    n["user_references"] = user

    if drop.factor < rules.min_drop or not stays_down:
        why = (
            f"it {falls} across its largest bend ({where}), less than the {fmt(rules.min_drop)}x "
            "(min_drop) a second phase needs"
            if drop.factor < rules.min_drop
            else f"it {falls} {where} but climbs back to {fmt(drop.rebound * drop.late)} later"
        )
        return r.done(
            "no-two-phase",
            None,
            f"No two-phase pattern (the paper's Fig. 3): {fit_text} never falls for good: "
            f"{why}.{unused_text(user)}",
        )
    if not levels_off:
        return r.done(
            "undetermined",
            None,
            f"Phase I has not ended by the end of the run: {fit_text} {falls} but is still "
            f"falling at the end ({fmt(fit.slope_after)} decades per 1,000 steps after the last "
            f"bend, against {fmt(fit.slope_before)} before it). Train longer, about twice as "
            f"long (to step {2 * int(arr[-1])}), and compute its kernels.{r.advice}"
            f"{unused_text(user)}",
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
            f"save checkpoints more often after step {phase1_end}.{r.advice}{unused_text(user)}",
        )
    return phase_two(r, s, arr, phase1_end, head, points, given, user)


def fit_numbers(fit: PhaseBreak, drop: VelocityDrop, arr: np.ndarray) -> dict[str, Any]:
    return {
        "phase1_end": nearest_step(arr, fit.step),
        "phase1_range": [nearest_step(arr, fit.low), nearest_step(arr, fit.high)],
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
