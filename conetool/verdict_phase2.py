"""Phase II of the verdict: the four readings of the S matrix after Phase I (spread, lag growth,
reference curves, velocity trend), the user's references, and the regime they give."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from conetool.geometry import step_index
from conetool.verdict_measures import (
    LagGrowth,
    VelocityTrend,
    lag_growth,
    velocity_trend,
)
from conetool.verdict_rules import Regime, Verdict, VerdictRules


def fmt(x: float) -> str:
    return f"{x:.3g}"


def judge_reference(
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


def default_references(steps: np.ndarray, start: int, rules: VerdictRules) -> list[int]:
    phase2 = steps[steps >= start]
    last = int(steps[-1])
    refs: list[int] = []
    for f in rules.reference_fractions:
        target = start + f * (last - start)
        tau = int(phase2[int(np.argmin(np.abs(phase2 - target)))])
        if tau not in refs:
            refs.append(tau)
    return sorted(refs)


def nearest_step(steps: np.ndarray, x: float) -> int:
    return int(steps[int(np.argmin(np.abs(steps - x)))])


class Reading:
    """Collects the numbers and the sentence pieces of one verdict."""

    def __init__(self, arr: np.ndarray, rules: VerdictRules, noise: float | None) -> None:
        self.arr = arr
        self.rules = rules
        self.noise = noise
        #: said before the explanation (the schedule's reading), and after any advice to train
        #: longer (what a longer run does to that schedule); empty without a decaying schedule
        self.prefix = ""
        self.advice = ""
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
            text += f" Noise floor of S on this run: {fmt(self.noise)}; {where}."
        return Verdict(regime, phase1_end, self.numbers, self.prefix + text)


def user_references(
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


def unused_text(user: list[dict[str, Any]]) -> str:
    unused = [u for u in user if not u["used"]]
    if not unused:
        return ""
    return " Not used: " + "; ".join(f"--ref {u['ref']}: {u['why']}" for u in unused) + "."


def phase_two(
    r: Reading,
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
    taus = sorted(set(usable) | set(default_references(arr, phase1_end, rules)))
    records = [judge_reference(s, arr, tau, rules) for tau in taus]
    for record in records:
        record["from"] = "user" if record["ref"] in usable else "default"
    r.numbers["references"] = records
    r.numbers["references_from"] = "user and default" if usable else "default"
    judged = [x for x in records if x["status"] != "skipped"]
    counts = Counter(x["status"] for x in judged)
    status, votes = counts.most_common(1)[0] if counts else ("none", 0)
    majority = status if judged and 2 * votes > len(judged) else None

    criteria = criteria_readings(r, growth, trend, judged, majority)
    r.numbers["criteria"] = criteria
    frozen_by = [c for c in criteria if c["reads"] in ("frozen", "freezing")]
    lag = next(c for c in criteria if c["name"] == "lag growth")
    refs_c = next(c for c in criteria if c["name"] == "reference curves")
    detail = " ".join(c["sentence"] for c in criteria)
    unused = unused_text(user)
    if frozen_by:
        # The readings of how far apart Phase II kernels are (the spread, and the reference
        # curves when there are any) agree that they froze; the velocity trend is the other
        # route to lazy (a kernel still freezing), and steady once the kernel has frozen.
        levels = [
            c
            for c in criteria
            if c["name"] in ("spread", "reference curves") and c["reads"] != "none"
        ]
        r.numbers["agree"] = bool(levels) and all(c["reads"] == "frozen" for c in levels)
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
        f"that Phase II spans more lags, and compute its kernels.{r.advice}{unused}",
    )


def criteria_readings(
    r: Reading,
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
            f"; at the largest lags its median, {fmt(growth.s_high)}, is at the noise floor "
            f"{fmt(r.noise or 0.0)}"
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
                f"{fmt(growth.s_max)}{noise_note}"
                + (f", at or below lazy_level {fmt(rules.lazy_level)}." if frozen else "."),
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
                f"from {fmt(growth.s_low)} to {fmt(growth.s_high)})"
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
            f"ref {x['ref']}: level {fmt(x['level'])}, growth {x['growth']:+.0%} ({x['status']})"
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
                "rests_on": f"{trend.points} Phase II velocities ({trend.per_quarter} per quarter)",
                "reads": "freezing" if freezing else "steady",
                "at_noise_floor": at_floor,
                "sentence": f"Velocity trend: the Phase II velocity at lag {trend.dt} falls "
                f"{fmt(trend.fall)}x from "
                f"its first quarter to its last ({'freezing' if freezing else 'steady'}; "
                f"freezing at {fmt(rules.freeze_factor)}x)"
                + (
                    f"; its last quarter's S, {fmt(trend.tail * trend.dt)}, is at the noise floor."
                    if at_floor
                    else "."
                ),
            }
        )
    return out
