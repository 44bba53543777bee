"""Results that one command leaves for the next to read: Phase I's end from
``distance/summary.json``; the decaying learning rate the store's spec records, which the verdict
reads S per unit of (:func:`recorded_schedule`); what a command said, in its ``summary.json``;
the summary of the run before, removed before a command writes its outputs
(:func:`remove_old_summary`). (The noise floor ``distance`` cached is read by
:func:`conetool.pipeline.noise_estimate.saved_noise_floor`, beside the code that writes it.)"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ConetoolError
from ..io import write_error
from ..spec import Spec, spec_from_dict
from ..store import Store
from ..verdict_schedule import LrClock, lr_clock, past_the_cosine

__all__ = [
    "UnrecordedSchedule",
    "recorded_schedule",
    "remove_old_summary",
    "said_in_summary",
    "saved_phase1_end",
    "summary_said",
    "unrecorded_schedule",
]


def recorded_schedule(
    store: Store,
    spec: Spec | None,
    last: int,
    warn: Callable[[str], None] | None = None,
    recorded_in: str | None = None,
) -> LrClock | None:
    """The decaying learning rate that ``spec`` (or the store's manifest) records for the run,
    over its updates up to step ``last``; None for a constant rate or a manifest without a
    readable spec (the verdict then reads S as it is), and, told to ``warn``, for a cosine that
    ends before ``last`` (:func:`conetool.verdict_schedule.past_the_cosine`). ``distance`` and
    ``embed`` (its Phase I end when no ``distance/summary.json`` is about these kernels) read
    the same schedule. ``recorded_in``: how the verdict names the spec it came from (default
    the store's; ``"--spec FILE"`` for a spec differing from it in ``[train]`` alone)."""
    where = f"--spec {spec.source}" if spec is not None else f"{paths.manifest(store.root)} (spec)"
    if spec is None:
        spec = _manifest_spec(store, where)
        if spec is None:
            return None
    gap = past_the_cosine(spec.train, last, where)
    if gap is not None and warn is not None:
        warn(gap)
    clock = lr_clock(spec.train, last)
    if clock is None or recorded_in is None:
        return clock
    return replace(clock, recorded_in=recorded_in)


def _manifest_spec(store: Store, source: str) -> Spec | None:
    """The spec the store's manifest records (named ``source`` in messages); None without a
    readable one."""
    recorded = store.manifest.get("spec")
    if not isinstance(recorded, Mapping):
        return None
    try:
        return spec_from_dict(recorded, source=source)
    except ConetoolError:
        return None


@dataclass(frozen=True)
class UnrecordedSchedule:
    """What :func:`unrecorded_schedule` says: its ``message``, and whether it is a ``warning``
    (else a note: the rates the run saved were one rate, as the verdict reads it)."""

    message: str
    warning: bool = True


def unrecorded_schedule(
    store: Store,
    spec: Spec | None,
    steps: Sequence[int] = (),
    ckpts: Path | None = None,
) -> UnrecordedSchedule | None:
    """What to say when the spec of the store's kernels (``spec``, else the manifest's record)
    reads a constant learning rate only because its file does not write ``train.schedule`` (a
    researcher's own spec: ``conetool train``'s ``conetool.toml`` writes every key), so that the
    verdict reads S per step whatever rate the run trained with; None when the file writes it,
    the schedule decays, or which keys it wrote is not known (a spec built in Python, a store of
    an older conetool).

    Only then are the optimizer states saved with the checkpoints of ``steps`` read, for their
    learning rates (:func:`conetool.pipeline.saved_lr.saved_rates`; ``ckpts``: the run's
    directory when it moved): one rate at every checkpoint read is a note (the verdict's
    reading is the run's), as are rates that rose and never fell (a warmup, which the verdict
    reads as a constant rate); rates that fell are the warning with them as its evidence; no
    state read, the warning that the rate may have changed."""
    from .saved_lr import saved_rates  # (reads checkpoints: only when it would be said)
    from .switch_recipe import recorded_written  # (pipeline: switch's, a sibling)

    where = spec.source if spec is not None else None
    written = spec.written if spec is not None else recorded_written(store.manifest)
    if spec is None:
        spec = _manifest_spec(store, "<manifest>")
        if spec is None:
            return None
        source = store.manifest.get("spec_source")
        where = source if isinstance(source, str) else f"{paths.manifest(store.root)} (spec)"
    if written is None or "train.schedule" in written or spec.train.schedule != "constant":
        return None
    read = "so the verdict reads the learning rate as constant (conetool's default) and S per step"
    rates = saved_rates(store, steps, ckpts) if steps else None
    if rates is not None and rates.constant:
        return UnrecordedSchedule(
            f"{where} does not write train.schedule, {read}, and the optimizer states saved in "
            f"{rates.where} ({rates.steps_read()}) hold {rates.shown()}: one rate, the run's as "
            'the verdict reads it (write schedule = "constant" to say so)',
            warning=False,
        )
    if rates is not None and not rates.fell:  # a warmup: lr_clock reads it as a constant rate
        return UnrecordedSchedule(
            f"{where} does not write train.schedule, {read}, and the optimizer states saved in "
            f"{rates.where} ({rates.steps_read()}) hold {rates.shown()}: a rate that rose (a "
            "warmup) and never fell, which the verdict reads as it reads a constant one (write "
            'schedule = "constant" with warmup_steps to say so)',
            warning=False,
        )
    if rates is not None:
        said = (
            f"{where} does not write train.schedule, {read}, but the run's rate changed: the "
            f"optimizer states saved in {rates.where} ({rates.steps_read()}) hold "
            f"{rates.shown()}. The slowing a falling rate makes reads as the kernel's, and can look like the "
            "end of Phase I."
        )
    else:
        said = (
            f"{where} does not write train.schedule, {read}: if your run's rate fell (a cosine, "
            "steps, a scheduler of your own loop), the slowing it makes reads as the kernel's, "
            "and can look like the end of Phase I."
        )
    advice = (
        " Write the run's schedule into the [train] of a copy of that file (schedule = "
        '"cosine" or "step" with milestones and gamma, lr, steps, warmup_steps; the README\'s '
        "'The spec') and pass it: conetool distance --spec FILE (and embed --spec FILE). No "
        "kernel depends on those keys, so none is recomputed, and the verdict reads S per unit "
        "of learning rate."
    )
    if rates is None:
        advice += (
            ' A rate that was constant needs no change (write schedule = "constant" to say so).'
        )
    return UnrecordedSchedule(said + advice)


def remove_old_summary(path: Path) -> None:
    """Remove the ``summary.json`` at ``path`` that the run before wrote, before this run writes
    the first of the outputs it describes (the new summary is written after them, last): a run
    that fails or is killed midway leaves a folder without a summary (which its readers take as
    not computed), never an old summary beside a CSV it does not describe (another ``--top-k``,
    other steps). A full, read-only or forbidden file system is :func:`~conetool.io.write_error`'s
    one-paragraph error."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from exc


def saved_phase1_end(
    store: Path, matrix_key: str | None = None, kernels_key: str | None = None
) -> int | None:
    """Phase I's end from ``conetool distance``'s verdict, when it has run (and, with
    ``matrix_key``, only when it was computed from that S matrix; with ``kernels_key``, only when
    the store held the same kernels then: a summary written before distance recorded the key
    is taken); else ``None``."""
    try:
        summary = json.loads(paths.distance_summary(store).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or (
        matrix_key is not None and summary.get("matrix_key") != matrix_key
    ):
        return None
    if kernels_key is not None and summary.get("kernels_key") not in (None, kernels_key):
        return None  # distance ran on other kernels (a store still being written, say)
    value = summary.get("verdict", {}).get("phase1_end")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def said_in_summary(warnings: list[str], notes: list[str]) -> dict[str, list[str]]:
    """The ``notes`` and ``warnings`` keys of a ``summary.json`` (``distance``, ``embed``,
    ``spectrum``): ``notes`` is every message the command said, its warnings first, as the key
    held before the warnings had a channel of their own (a reader of older summaries still finds
    them all there); ``warnings`` is those of them that are warnings."""
    return {"notes": [*warnings, *notes], "warnings": list(warnings)}


def summary_said(summary: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(warnings, notes)`` of a ``summary.json`` that :func:`said_in_summary` wrote, the notes
    without the warnings; a summary written before it kept warnings apart (no ``warnings`` key)
    gives ``([], its notes)``: which of them were warnings is not recorded."""
    notes = [str(n) for n in summary.get("notes") or []]
    warnings = [str(w) for w in summary.get("warnings") or []]
    return warnings, [n for n in notes if n not in warnings]
