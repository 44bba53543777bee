"""The verdict of one training saved more or less often: the velocity's dt and what it reads.

Draws labelled synthetic trajectories (:mod:`conetool.trajectories`, noise 1e-3, seeds 0 and 1),
keeps the checkpoints of every 10, 20, 50 and 100 steps, and reads each with
:func:`conetool.verdict.phase_verdict` at three dts: the checkpoint spacing (the default before
:func:`conetool.geometry.default_velocity_dt`), the smallest multiple of it at least 1/80 of the
run, and the default (at least 1/50 of the run). Prints a Markdown table: per run, class and
spacing, the dt, the regime and the velocity's drop factor at each. A regime unlike the class's
is starred.

    python scripts/verdict_dt_sampling.py         # 5,000-step runs of every class, and 10,000-step hover

The README's paragraph "The velocity's dt" quotes this script's output.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from conetool.geometry import default_velocity_dt
from conetool.trajectories import CLASSES, trajectory
from conetool.verdict import VerdictRules, phase_verdict

EVERY = (10, 20, 50, 100)
SEEDS = (0, 1)
NOISE = 1e-3


def multiple_at_least(spacing: int, fraction: Fraction, length: int) -> int:
    """The smallest multiple of ``spacing`` that is at least ``fraction`` of ``length``."""
    return spacing * max(1, math.ceil(fraction * length / spacing))


def read(steps: np.ndarray, s: np.ndarray, dt: int | None) -> str:
    """``regime (drop factor)`` of the verdict at ``dt`` (None: the default)."""
    v = phase_verdict(steps, s, rules=VerdictRules(velocity_dt=dt))
    drop = v.numbers.get("velocity", {}).get("drop_factor")
    shown = f"{drop:.1f}x" if isinstance(drop, float) and math.isfinite(drop) else "-"
    return f"{v.regime} ({shown})"


def main() -> int:
    print("| run | class | seed | every | spacing dt | 1/80 dt | default dt (1/50) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for last, names in ((5000, list(CLASSES)), (10_000, ["hover"])):
        union = np.arange(0, last + 1, 10)
        for name in names:
            for seed in SEEDS:
                s = trajectory(name, seed=seed, noise=NOISE, last=last, steps=union).S
                for every in EVERY:
                    keep = union % every == 0
                    steps, kept = union[keep], s[np.ix_(keep, keep)]
                    eighty = multiple_at_least(every, Fraction(1, 80), last)
                    default = default_velocity_dt(steps.tolist())
                    cells = []
                    for dt, given in ((every, every), (eighty, eighty), (default, None)):
                        said = read(steps, kept, given)
                        star = "" if said.startswith(CLASSES[name] + " ") else " *"
                        cells.append(f"{dt}: {said}{star}")
                    print(f"| {last} | {name} | {seed} | {every} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
