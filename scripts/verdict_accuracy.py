"""How often the phase verdict gets the regime of a labelled synthetic trajectory right.

Draws every class of :mod:`conetool.trajectories` with ``--seeds`` seeds at each noise level
(a relative kernel error of 1e-4, 1e-3 and 3e-3, as float32 rounding on different networks
gives), reads each with :func:`conetool.verdict.phase_verdict`, with and without the noise floor
known, and prints a Markdown table: per class, the regime it must get, how many of its draws got
it, what the others got, and the median error of the end of Phase I where it is defined.

    python scripts/verdict_accuracy.py              # 10 seeds: 540 trajectories, about a minute
    python scripts/verdict_accuracy.py --schedule cosine --by-noise

The README's table under "Proof on labelled trajectories" is this script's output.
``--schedule cosine`` draws each trajectory in a 5,000-step cosine schedule's own time (its
motion slowed by the learning rate and nothing else, as tests/test_verdict_schedule.py does)
and reads it per unit of learning rate; ``--by-noise`` adds, per noise level, how many got their
class's regime with the noise floor known and without it (``distance --no-noise``). The README's
paragraph on ``--no-noise`` under a decaying learning rate quotes them.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from conetool.optim import learning_rate
from conetool.spec import TrainSpec
from conetool.trajectories import CLASSES, default_steps, trajectory
from conetool.verdict import phase_verdict
from conetool.verdict_schedule import LrClock, lr_clock

NOISES = (1e-4, 1e-3, 3e-3)
LAST = 5000


def cosine() -> tuple[np.ndarray, LrClock]:
    """``(tau, clock)``: the default checkpoints' times in a ``LAST``-step cosine schedule's own
    units (the sum of ``lr / train.lr`` over the updates before each) ``(K,)``, and its clock."""
    train = TrainSpec(steps=LAST, lr=0.1, schedule="cosine")
    clock = lr_clock(train, LAST)
    assert clock is not None
    rel = np.array([learning_rate(train, u) / train.lr for u in range(LAST)])
    return np.concatenate([[0.0], np.cumsum(rel)])[default_steps(LAST)], clock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--by-noise", action="store_true")
    args = parser.parse_args(argv)
    tau, clock = cosine() if args.schedule == "cosine" else (None, None)
    by_noise: Counter[tuple[float, bool]] = Counter()
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
                    if tau is None:
                        t = trajectory(name, seed=seed, noise=noise)
                        v = phase_verdict(t.steps, t.S, noise_floor=floor)
                    else:  # drawn at the cosine's times, read at the steps
                        t = trajectory(name, seed=seed, noise=noise, last=LAST, steps=tau)
                        v = phase_verdict(
                            default_steps(LAST), t.S, noise_floor=floor, schedule=clock
                        )
                    got[v.regime] += 1
                    by_noise[noise, floor is not None] += v.regime == expected
                    truth = t.truth_phase1_end if tau is None else None  # (tau's units)
                    if truth is not None and v.phase1_end is not None:
                        low, high = v.numbers["velocity"]["phase1_range"]
                        errors.append(abs(v.phase1_end - truth))
                        inside += low <= truth <= high
                        timed += 1
        n = sum(got.values())
        right = got[expected]
        total += n
        right_total += right
        others = ", ".join(f"{k} {c}" for k, c in got.items() if k != expected) or "-"
        where = f"{np.median(errors):.0f} steps ({inside} of {timed})" if errors else "not defined"
        print(f"| {name} | `{expected}` | {right}/{n} | {others} | {where} |")
    print(f"| all | | {right_total}/{total} ({right_total / total:.1%}) | | |")
    if args.by_noise:
        each = args.seeds * len(CLASSES)
        print()
        print("| noise | right, floor known | right, no floor (--no-noise) |")
        print("| --- | --- | --- |")
        for noise in NOISES:
            known, unknown = by_noise[noise, True], by_noise[noise, False]
            print(f"| {noise:g} | {known}/{each} | {unknown}/{each} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
