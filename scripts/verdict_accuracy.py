"""How often the phase verdict gets the regime of a labelled synthetic trajectory right.

Draws every class of :mod:`conetool.trajectories` with ``--seeds`` seeds at each noise level
(a relative kernel error of 1e-4, 1e-3 and 3e-3, as float32 rounding on different networks
gives), reads each with :func:`conetool.verdict.phase_verdict`, with and without the noise floor
known, and prints a Markdown table: per class, the regime it must get, how many of its draws got
it, what the others got, and the median error of the end of Phase I where it is defined.

    python scripts/verdict_accuracy.py              # 10 seeds: 540 trajectories, about a minute

The README's table under "Proof on labelled trajectories" is this script's output.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from conetool.trajectories import CLASSES, trajectory
from conetool.verdict import phase_verdict

NOISES = (1e-4, 1e-3, 3e-3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    print(
        "| class | must be | right | other answers | Phase I end: median error "
        "(truth inside the reported range) |"
    )
    print("| --- | --- | --- | --- | --- |")
    total = right_total = 0
    for name, expected in CLASSES.items():
        got: Counter[str] = Counter()
        errors, inside, timed = [], 0, 0
        for seed in range(args.seeds):
            for noise in NOISES:
                for floor in (None, noise**2):
                    t = trajectory(name, seed=seed, noise=noise)
                    v = phase_verdict(t.steps, t.S, noise_floor=floor)
                    got[v.regime] += 1
                    if t.truth_phase1_end is not None and v.phase1_end is not None:
                        low, high = v.numbers["velocity"]["phase1_range"]
                        errors.append(abs(v.phase1_end - t.truth_phase1_end))
                        inside += low <= t.truth_phase1_end <= high
                        timed += 1
        n = sum(got.values())
        right = got[expected]
        total += n
        right_total += right
        others = ", ".join(f"{k} {c}" for k, c in got.items() if k != expected) or "-"
        where = f"{np.median(errors):.0f} steps ({inside} of {timed})" if errors else "not defined"
        print(f"| {name} | `{expected}` | {right}/{n} | {others} | {where} |")
    print(f"| all | | {right_total}/{total} ({right_total / total:.1%}) | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
