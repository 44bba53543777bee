"""The verdict under a decaying learning rate: S read per unit of learning rate.

Under a step or cosine schedule the kernel moves more slowly because the learning rate falls,
whatever the dynamics do: read in steps, a milestone's drop looked like the end of Phase I (the
fit put its bend on the milestone) and a cosine's last quarter like a kernel that froze (the
velocity trend fell with the rate), which the verdict called ``lazy``. When the run's spec
records such a schedule (``[train] schedule = "step"`` with a milestone in the run and
``gamma < 1``, or ``"cosine"``), the verdict reads every S per unit of learning rate instead:

    S_lr(t, t') = S(t, t') / (mean of lr(u) / train.lr over the updates u = t .. t' - 1)

(steps counted in the schedule's own time, gradient-flow time, rather than in steps), so that a
fall of the velocity that the schedule alone makes is not read as the kernel's, and one that
exceeds the rate's is. A constant schedule gives ``S_lr = S``.

Example::

    clock = lr_clock(spec.train, last=2400)          # None for a constant rate
    v = phase_verdict(steps, s, schedule=clock)      # v.numbers["schedule"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from conetool.optim import learning_rate
from conetool.spec import TrainSpec
from conetool.verdict_phase2 import fmt

__all__ = ["LrClock", "longer_run_note", "lr_clock", "past_the_cosine", "per_unit_lr"]


@dataclass(frozen=True)
class LrClock:
    """The learning rate of a run's updates, relative to ``train.lr``.

    Attributes:
        schedule: ``"step"`` or ``"cosine"``; base: ``train.lr``; steps: ``train.steps``.
        relative: ``(last + 1,)`` float64, ``lr(u) / train.lr`` for the update at step ``u``
            (divided again by the fall of any milestone at step 0, which sets the rate the run
            starts at, not a fall within it).
        milestones: the step schedule's milestones up to ``last``, each with the factor the
            rate falls there (``1 / gamma``); empty for cosine.
        warmup: ``train.warmup_steps`` (0: none), whose rise ``relative`` holds too.
        recorded_in: the spec the schedule was read from, as the verdict names it (``"the
            store's spec"``, or ``"--spec FILE"`` differing from it in ``[train]`` alone).
    """

    schedule: str
    base: float
    steps: int
    relative: np.ndarray
    milestones: tuple[tuple[int, float], ...]
    warmup: int = 0
    recorded_in: str = "the store's spec"

    def describe(self) -> str:
        """Where the rate falls: ``'train.schedule = "step": the learning rate falls 10x at step
        1200'`` (or the cosine's values at the run's quarters), after its warmup's rise where
        the spec has one (``'rises from 0.02x train.lr at step 0 to 0.88x at step 49
        (train.warmup_steps = 50), then falls to 0.5x at step 75, ...'``)."""
        last = self.relative.size - 1
        top = min(self.warmup, last + 1) - 1  # the warmup's last update
        rise = (
            f"rises from {self.relative[0]:.2g}x train.lr at step 0 to "
            f"{self.relative[top]:.2g}x at step {top} (train.warmup_steps = {self.warmup}), then "
            if top > 0
            else ""
        )
        if self.schedule == "step":
            where = ", ".join(f"{fmt(f)}x at step {m}" for m, f in self.milestones)
            return f'train.schedule = "step": the learning rate {rise}falls {where}'
        quarters = (self.steps // 4, self.steps // 2, 3 * self.steps // 4)
        marks = [t for t in quarters if max(top, 0) < t <= last]
        values = "".join(f"{self.relative[t]:.2g}x at step {t}, " for t in marks)
        start = "falls to " if rise else "falls from train.lr at step 0 to "
        return (
            f'train.schedule = "cosine": the learning rate {rise}{start}{values}0 at step '
            f"{self.steps}"
        )

    def numbers(self) -> dict[str, Any]:
        """What ``numbers["schedule"]`` records."""
        return {
            "schedule": self.schedule,
            "lr": self.base,
            "milestones": [[m, f] for m, f in self.milestones],
            "read": "per unit of learning rate",
        }


def longer_run_note(clock: LrClock) -> str:
    """What a longer run does to the schedule, said after the verdict's advice to train longer
    (empty for a step schedule, whose rate after the last milestone just goes on)."""
    if clock.schedule != "cosine":
        return ""
    return (
        f' Under train.schedule = "cosine" a larger train.steps stretches the decay too (the '
        f"learning rate reaches 0 at train.steps = {clock.steps} now): the longer run decays "
        "more slowly, another run rather than this one continued."
    )


def lr_clock(train: TrainSpec, last: int) -> LrClock | None:
    """The relative learning rate of ``train``'s schedule over the updates ``0 .. last``, or
    ``None`` when the rate does not decay there (a constant schedule, a warmup alone, a step
    schedule without a milestone in ``1 .. last - 1`` or with ``gamma >= 1``) or when ``train``
    does not describe those updates (a cosine with ``last`` past ``train.steps``, where its rate
    is 0: :func:`past_the_cosine` says so)."""
    if train.lr <= 0 or last < 1:
        return None
    if train.schedule == "step":
        milestones = tuple(
            (int(m), 1.0 / train.gamma)
            for m in sorted(set(train.milestones))
            if 0 < m < last and 0 < train.gamma < 1  # update `last` is past every stored pair
        )
        if not milestones:
            return None
    elif train.schedule == "cosine":
        if last > train.steps:  # the spec's rate is 0 there: not the run these steps come from
            return None
        milestones = ()
    else:
        return None
    rel = np.array([learning_rate(train, u) / train.lr for u in range(last + 1)])
    if train.schedule == "step":  # milestones at step 0 set the run's own starting rate
        rel /= train.gamma ** sum(1 for m in train.milestones if m <= 0)
    return LrClock(
        train.schedule, float(train.lr), int(train.steps), rel, milestones, int(train.warmup_steps)
    )


def past_the_cosine(train: TrainSpec, last: int, where: str) -> str | None:
    """Why the verdict does not read S per unit of learning rate when stored steps go past a
    cosine's end (``None`` otherwise); ``where`` names the spec."""
    if train.schedule != "cosine" or last <= train.steps:
        return None
    return (
        f'{where} records train.schedule = "cosine" over train.steps = {train.steps}, but '
        f"kernels are stored up to step {last}: that spec's learning rate is 0 past step "
        f"{train.steps}, so it is not the run these checkpoints come from. The verdict reads S "
        "as it is, not per unit of learning rate; compute kernels with the spec the run was "
        "trained with to read its schedule."
    )


def per_unit_lr(
    steps: Sequence[int] | np.ndarray,
    s: np.ndarray,
    clock: LrClock,
    noise_floor: float | None = None,
) -> np.ndarray:
    """``(K, K)`` ``S / (mean relative learning rate of the updates between the two steps)``;
    ``s`` is ``(K, K)`` with rows in the order of the ascending ``steps`` ``(K,)``.

    With the numerical ``noise_floor`` ``n`` of S known (S between two computations of one
    kernel: that much of any S is rounding, whatever the rate), only the rest is divided by the
    rate: ``min(S, n) + max(S - n, 0) / mean``. Rounding does not shrink with the learning rate;
    divided by a cosine's near-zero rate it read as fast motion (a frozen kernel's noise as a
    velocity climbing back at the run's end: ``no-two-phase``)."""
    arr = np.asarray(steps, dtype=np.int64)
    if arr.size and int(arr[-1]) >= clock.relative.size:
        raise ValueError(f"the clock ends at step {clock.relative.size - 1}, before {arr[-1]}")
    cum = np.concatenate([[0.0], np.cumsum(clock.relative)])
    a = np.minimum.outer(arr, arr)
    b = np.maximum.outer(arr, arr)
    span = (b - a).astype(np.float64)
    # (a cosine's rate is 0 only from train.steps on, past the clock: lr_clock ends there)
    mean = np.where(span > 0, (cum[b] - cum[a]) / np.maximum(span, 1.0), 1.0)
    mean = np.maximum(mean, 1e-12)
    raw = np.asarray(s, dtype=np.float64)
    if noise_floor is None:
        out = raw / mean
    else:
        held = max(float(noise_floor), 0.0)
        out = np.minimum(raw, held) + np.maximum(raw - held, 0.0) / mean
    np.fill_diagonal(out, 0.0)
    return out
