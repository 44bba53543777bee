"""What ``conetool switch`` is asked for: its arguments as one value (:class:`SwitchOptions`,
handed to every torchrun rank and to the sweep's preparation) and the switch steps of ``--at``
(:func:`parse_at`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConetoolError
from ..spec import Spec


@dataclass(frozen=True)
class SwitchOptions:
    """What :func:`switch` was asked for, collected once and handed down as one value (to every
    torchrun rank's worker and to the sweep's preparation); the fields are its arguments."""

    at: int | str | Sequence[int | str]
    until: int | None
    store: Path
    ckpts: str | Path | None
    spec: Spec | str | Path | None
    reference: str
    step_regex: str | None
    beyond_run: bool
    device: str | torch.device = "auto"
    threads: int | str | None = "auto"


#: The most switch points one ``--at`` may name (each is a whole linearized training run): a
#: range past it (``0:10000000000:1``, a stride left out) is refused before it is expanded,
#: which would fill the memory, uninterruptibly, before any step is checked.
MAX_POINTS = 100_000


def _refuse_too_many(value: object, steps: range, held: int) -> None:
    """Refuse ``--at value``, the range ``steps``, when its steps with the ``held`` ones of the
    earlier values are more than :data:`MAX_POINTS`."""
    try:
        count = len(steps)
    except OverflowError:  # past sys.maxsize
        count = -1
    if count < 0 or count + held > MAX_POINTS:
        many = f"{count}" if count >= 0 else f"more than {MAX_POINTS}"
        total = f" ({count + held} with the {held} named before it)" if held and count >= 0 else ""
        raise ConetoolError(
            f"--at {value!r} names {many} switch points{total}, each a linearized training run; "
            f"at most {MAX_POINTS} are taken. Give the range a larger stride, the third number "
            "of start:stop:stride (--at 0:10000:1000)."
        )


def parse_at(values: int | str | Sequence[int | str]) -> list[int]:
    """Switch steps from ``--at`` values: ``2000``, ``0,1000,2000`` or ``0:10000:1000`` (start,
    stop, stride as Python's range: the stop is excluded), one of them or a sequence of them
    (a ``range`` too). Sorted, duplicates removed; at most :data:`MAX_POINTS` of them."""
    steps: set[int] = set()
    if isinstance(values, range):
        _refuse_too_many(values, values, 0)
    if isinstance(values, str) or not isinstance(values, Iterable):
        values = [values]
    for value in values:
        parts = [part.strip() for part in str(value).split(",")]
        if "" in parts and len(parts) > 1:  # "5,,10" or "5,": a step left out, not to drop
            kept = ",".join(part for part in parts if part) or "2000"
            raise ConetoolError(
                f"--at {value!r} has an empty item: each comma-separated item must be a step "
                "or a range start:stop:stride. Write the step that was meant there, or remove "
                f"the extra comma (--at {kept})."
            )
        if parts == [""]:
            raise ConetoolError(f"--at {value!r} names no step. Give a step, e.g. --at 2000.")
        for part in parts:
            try:
                if ":" in part:
                    bounds = [int(x) for x in part.split(":")]
                    if len(bounds) not in (2, 3) or (len(bounds) == 3 and bounds[2] <= 0):
                        raise ValueError
                    span = range(*bounds)
                    _refuse_too_many(value, span, len(steps))
                    steps.update(span)
                else:
                    steps.add(int(part))
            except ValueError:
                raise ConetoolError(
                    f"--at {value!r} is not a step list. Use a step (--at 2000), a list "
                    "(--at 0,1000,2000) or a range start:stop:stride (--at 0:10000:1000)."
                ) from None
    if not steps:
        raise ConetoolError("--at names no step. Give at least one, e.g. --at 2000.")
    if min(steps) < 0:
        raise ConetoolError(f"--at steps must be >= 0, got {min(steps)}.")
    return sorted(steps)
