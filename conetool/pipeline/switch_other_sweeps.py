"""What a switch sweep overwrites of another sweep (another T or spec) in the same store: the
store keeps one point per t (``switch/at_XXXXXX.json``) and one standard model at T trained by
``--reference train`` (``switch/reference.json``), so a sweep of another T or spec replaces those
of the earlier sweep at its steps, and its reference: minutes of training a rerun of that sweep
spends again. Said before any point trains, with the command that keeps both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..spec import Spec
from .switch_finished_points import read_payload


@dataclass(frozen=True)
class Replacing:
    """The warning of a sweep that replaces another sweep's files: ``now``, said before any point
    trains (stopping then keeps them), and ``after``, the same kept for the end of the sweep
    (what ``--quiet`` prints after the results, and the caller reads), when they are replaced."""

    now: str
    after: str


def other_sweeps_replaced(
    store: Path,
    spec: Spec,
    until: int,
    steps: list[int],
    trains_reference: bool,
    command: str,
) -> Replacing | None:
    """The warning of a sweep of ``spec`` and T ``until`` that would replace what another sweep
    (another T or spec) left in ``store``: the point files of ``steps`` (those it computes),
    and ``reference.json`` where it writes one (``trains_reference``: ``--reference train``
    without a checkpoint of T). ``command``: this sweep in a store of its own, the way round.
    None where there is none (a point or reference of this spec and T from another checkpoint
    is stale: replaced unsaid, as before)."""
    held: list[str] = []  # what of the other sweep's, how it was computed
    other: dict[str, list[int]] = {}  # how it was computed -> its steps
    for t in steps:
        how = _other_sweep(read_payload(paths.switch_point(store, t)), spec, until)
        if how is not None:
            other.setdefault(how, []).append(t)
    held += [f"t={', '.join(map(str, ts))}: {how}" for how, ts in other.items()]
    reference = None
    if trains_reference:
        reference = _other_sweep(read_payload(paths.switch_reference(store)), spec, until)
    if reference is not None:
        held.append(f"{paths.switch_reference(store).name}: {reference}")
    if not held:
        return None
    points = (
        "one point per t (at_XXXXXX.json), each overwritten when this sweep's point of its t is "
        "written"
    )
    standard = (
        "one standard model at T that --reference train trained (reference.json), overwritten "
        "when this sweep's is written, after its points"
    )
    if other and reference is not None:
        what, keeps, them = (
            "points and the standard model at T",
            f"{points}, and {standard}",
            "them",
        )
    elif other:
        what, keeps, them = "points", points, "them"
    else:
        what, keeps, them = "the standard model at T", standard, "it"
    said = "; ".join(held)
    where = paths.switch_dir(store)
    return Replacing(
        now=(
            f"this sweep (--until {until}) would replace {what} that {where} holds from another "
            f"sweep ({said}): it keeps {keeps}, and a rerun of that sweep would train {them} "
            f"again. To keep {them}, stop now ({'none is' if them == 'them' else 'it is not'} "
            f"replaced yet) and run this sweep in a store of its own: {command}"
        ),
        after=(
            f"this sweep (--until {until}) replaced {what} that {where} held from another sweep "
            f"({said}): it keeps {keeps}, and a rerun of that sweep trains {them} again. To keep "
            f"both sweeps, run each in a store of its own; this one: {command}"
        ),
    )


def _other_sweep(payload: dict[str, Any] | None, spec: Spec, until: int) -> str | None:
    """How the point or reference ``payload`` (None: none, or damaged) was computed, where that
    is another sweep's: ``--until 40``, or ``another spec``; else None."""
    key = None if payload is None else payload.get("key")
    if not isinstance(key, dict):
        return None
    same_spec = key.get("spec_hash") == spec.hash()
    if same_spec and key.get("until") == until:
        return None
    return f"--until {key.get('until')}" if same_spec else "another spec"
