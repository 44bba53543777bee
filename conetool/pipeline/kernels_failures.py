"""What ``conetool kernels`` says when a step fails: whose fault it is (the model's, which every
checkpoint shares, or one checkpoint's; a key or shape mismatch is told apart at a second
checkpoint, read by its headers only), the message of an error that stops the run, the warning
of a step ``--skip-bad`` goes on without (a problem said once, its repeats by step), and the error
when every checkpoint failed, its problems grouped.

:mod:`conetool.pipeline.kernels_loop` calls these from its loop over the checkpoints."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..checkpoints import CheckpointRef
from ..checkpoints.discover import abridged, each_file
from ..checkpoints.fit import model_fits
from ..checkpoints.records import LeftCopy
from ..errors import (
    CheckpointOverflowError,
    ConetoolError,
    ExtraModulesError,
    KeyMismatchError,
    MemoryBudgetError,
    ModelError,
    StoreError,
)
from ..ntk_range import KernelUnderflowError, NonFiniteKernelError
from ..spec import Spec, toml_text

__all__ = [
    "Failure",
    "Fault",
    "every_checkpoint_failed",
    "fault_of",
    "grouped_failures",
    "same_problem",
    "second_checkpoint",
    "skipped_warning",
    "spec_model",
    "stop_message",
]

#: The fault is the model's (or the options'): every checkpoint fails alike.
MODEL = "model"
#: The fault is this checkpoint's: the others may load.
CHECKPOINT = "checkpoint"
#: A key or shape mismatch that no second checkpoint could tell apart (none, or none read cheaply).
EITHER = "either"


@dataclass(frozen=True)
class Fault:
    """Whose fault a step's error is (:data:`MODEL`, :data:`CHECKPOINT` or :data:`EITHER`), and
    the second checkpoint that told it (a key or shape mismatch only)."""

    whose: str
    other: CheckpointRef | None = None


@dataclass(frozen=True)
class Failure:
    """A step ``--skip-bad`` went on without: its file, its error's message, and whether that is a
    key or shape mismatch with the model."""

    step: int
    file: Path
    message: str
    mismatch: bool = False


def fault_of(
    exc: ConetoolError,
    model: nn.Module,
    ref: CheckpointRef,
    refs: Sequence[CheckpointRef],
    loaded: CheckpointRef | None = None,
) -> Fault:
    """Whose fault ``exc``, raised at ``ref``, is. An error of the model or the options (a module
    torch.func cannot vmap, examples that interact, a budget too small, a factory that wraps the
    saved network) is the model's. A checkpoint whose keys or shapes do not fit the model is
    the model's when a second checkpoint of the run (``refs``) does not fit it either, this one's
    when that one fits, and either's when there is no other or it cannot be read by its headers
    alone; but this one's whenever the model was loaded from another checkpoint in this run
    (``loaded``, named when the second does not fit). Anything else is the checkpoint's."""
    if isinstance(exc, ModelError | MemoryBudgetError):
        return Fault(MODEL)
    if not isinstance(exc, KeyMismatchError):
        return Fault(CHECKPOINT)
    other = second_checkpoint(ref, refs)
    fits = None if other is None else model_fits(model, other)
    if not fits and loaded is not None:  # the model fits that one: this checkpoint alone does not
        return Fault(CHECKPOINT, loaded)
    if fits is None:
        return Fault(EITHER)
    return Fault(CHECKPOINT if fits else MODEL, other)


def second_checkpoint(ref: CheckpointRef, refs: Sequence[CheckpointRef]) -> CheckpointRef | None:
    """The checkpoint to compare with: the run's last, or its first when ``ref`` is the last."""
    others = [r for r in refs if r.step != ref.step]
    if not others:
        return None
    return others[-1] if others[-1].step > ref.step else others[0]


def spec_model(spec: Spec) -> str:
    """The spec's model as the user wrote it: ``[model] arch = "pkg.mod:make" in run.toml``;
    an arch the file does not write is said to be the default (``[model] arch = "lenet5" (the
    default: run.toml sets no arch)``)."""
    if spec.written is not None and "model.arch" not in spec.written:
        file = "the spec" if spec.source == "<spec>" else spec.source
        return f"[model] arch = {toml_text(spec.model.arch)} (the default: {file} sets no arch)"
    where = "" if spec.source == "<spec>" else f" in {spec.source}"
    return f"[model] arch = {toml_text(spec.model.arch)}{where}"


def stop_message(
    exc: ConetoolError, ref: CheckpointRef, fault: Fault, spec: Spec
) -> tuple[str, str]:
    """The error that stops the run at ``ref``, in two parts: what happened and whose fault it
    is, and the fix. The caller puts between them what the store keeps (known once the run has
    stopped)."""
    head = f"step {ref.step} ({ref.file}): {exc}"
    other = fault.other
    if isinstance(exc, ExtraModulesError) and fault.whose != CHECKPOINT:
        return (
            f"{head} Every checkpoint of this run saved like this one fails alike, so the run "
            "stops here (with --skip-bad too).",
            "re-save the checkpoints as said above and rerun with that directory",
        )
    if fault.whose == MODEL and other is not None:  # a key mismatch the other shares
        return (
            f"{head} Step {other.step} ({other.file}) does not fit it either: the spec's model "
            "does not fit this run's checkpoints (the fault is not this checkpoint's), so every "
            "checkpoint would fail alike and the run stops here (with --skip-bad too). The "
            f"spec's {spec_model(spec)} must build the network they were saved from.",
            "fix that arch or its factory (or their options), or pass the spec of the run that "
            "wrote the checkpoints with --spec, and rerun",
        )
    if fault.whose == MODEL:
        return (
            f"{head} This is the model's (or the options'), not this checkpoint's: every "
            "checkpoint would fail alike, so the run stops here (with --skip-bad too).",
            "rerun after the fix",
        )
    if fault.whose == EITHER:
        return (
            f"{head} If the run's other checkpoints were saved like this one, the spec's model "
            "does not fit them (the fault is not this checkpoint's): the spec's "
            f"{spec_model(spec)} must build the network they were saved from.",
            "fix that arch or its factory (or their options), or pass the spec of the run that "
            "wrote the checkpoints with --spec, and rerun; if this checkpoint alone comes from "
            "another network, move it out and rerun, or pass --skip-bad to go on without it",
        )
    if isinstance(exc, CheckpointOverflowError):
        fix = (
            "the fix is the model's dtype (above), not this file: rerun once the model is built "
            "in a dtype that holds these values"
        )
    elif isinstance(exc, KernelUnderflowError | NonFiniteKernelError):
        fix = (
            "the fix is the dtype the kernels are computed in (above), not this file: rerun with "
            "--dtype float64 (with --overwrite once the store holds float32 kernels)"
        )
    elif other is not None:  # a key mismatch that the run's other checkpoint does not share
        return (
            f"{head} Step {other.step} ({other.file}) fits the model: this checkpoint alone was "
            "saved from another network.",
            "move it out and rerun, or pass --skip-bad to go on without it",
        )
    else:
        fix = "fix this checkpoint and rerun"
    return head, f"{fix}, or pass --skip-bad to go on without it"


#: A number in a message (``0.278``, ``1.13e-43``, ``21``): what :func:`same_problem` leaves out.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?")


def same_problem(where: Path, message: str) -> str:
    """``message`` about the file ``where`` as a key that is the same for every checkpoint with
    the same problem: the file named "each file" (:func:`each_file`) and every number left out,
    since the numbers an error gives (the largest entry of a kernel, how far a batch's outputs
    differ from one example's) are of the weights of the checkpoint it was raised at."""
    return _NUMBER.sub("#", each_file(where, message))


def skipped_warning(exc: ConetoolError, ref: CheckpointRef, first: dict[str, int]) -> str:
    """The warning of a step ``--skip-bad`` goes on without: the problem in full the first time,
    then, for another step with the same problem (its file and numbers aside,
    :func:`same_problem`), the step it is the same as. ``first`` (problem -> its first step) is
    kept by the caller across steps."""
    message = str(exc)
    seen = first.setdefault(same_problem(ref.file, message), ref.step)
    if seen != ref.step:
        return f"skipped step {ref.step} ({ref.file}): the same problem as step {seen} (above)"
    return f"skipped step {ref.step} ({ref.file}): {message}"


def copies_hint(ref: CheckpointRef, copies: Sequence[LeftCopy]) -> str:
    """What follows the problem of a step ``--skip-bad`` goes on without when the listing left
    out ``copies`` of it (``final.pt`` storing the step; a Hugging Face Trainer's final model,
    whose step is the output directory's global_step: not read while the step's own file or
    ``checkpoint-N/`` folder is there): that they exist, how each gives the step, and how to
    read one in its place (of several, the others moved out too: two files of one step that
    hold other tensors are refused). "" when there are none."""
    if not copies:
        return ""
    said = []
    stored = [c.path for c in copies if c.state_file is None]
    if stored:
        one = len(stored) == 1
        names = " and ".join(f"'{p}'" for p in stored)
        said.append(
            f"{names}, named without a step, store{'s' if one else ''} step {ref.step} too and "
            f"{'was' if one else 'were'} left out as {'its copy' if one else 'its copies'}"
        )
    said += [
        f"'{c.path}', the Trainer's final model (Trainer.save_model), stores no step; the "
        f"global_step of '{c.state_file}' makes it step {ref.step}, which '{ref.file}' gives, "
        "so it was left out"
        for c in copies
        if c.state_file is not None
    ]
    if len(copies) == 1:
        move = f"move '{ref.file}' out of the directory and rerun"
        return f" {said[0]}: to read it for step {ref.step}, {move}."
    # (the others stay: two files of one step, not copies of each other, are both refused)
    return (
        f" {'; '.join(said)}: to read one of them for step {ref.step}, move '{ref.file}' out of "
        f"the directory with all of them but that one, and rerun."
    )


def grouped_failures(failures: Sequence[Failure]) -> list[str]:
    """One line per distinct problem: steps whose messages differ only by their file are said
    once, ``steps 0, 5, 10, ..., 100 (step_000000.pt, ..., step_000100.pt): each file ...``
    (:func:`conetool.checkpoints.discover.each_file`); a step alone keeps its message."""
    groups: dict[str, list[Failure]] = {}
    for failure in failures:
        groups.setdefault(each_file(failure.file, failure.message), []).append(failure)
    lines = []
    for key, members in groups.items():
        if len(members) == 1:
            one = members[0]
            lines.append(f"step {one.step} ({one.file}): {one.message}")
            continue
        steps = abridged([str(m.step) for m in members])
        names = abridged([m.file.name or str(m.file) for m in members])
        lines.append(f"steps {steps} ({names}): {key}")
    return lines


#: How many lines of problems the error of :func:`every_checkpoint_failed` lists.
_LISTED = 10


def every_checkpoint_failed(
    failures: Sequence[Failure], total: int, spec: Spec, kept: str
) -> StoreError:
    """The error when ``--skip-bad`` went on without every one of the ``total`` checkpoints:
    each distinct problem once (:func:`grouped_failures`), the fix (the spec's model when none
    of the checkpoints fits it), and ``kept``: what the store keeps, a sentence, or ""."""
    lines = grouped_failures(failures)
    shown = "\n".join(f"  - {line}" for line in lines[:_LISTED])
    more = f"\n  ... and {len(lines) - _LISTED} more" if len(lines) > _LISTED else ""
    if all(f.mismatch for f in failures):
        fix = (
            "None of them fits the spec's model: its "
            f"{spec_model(spec)} must build the network this run's checkpoints were saved "
            "from. Fix that arch or its factory (or their options), or pass the spec of the run "
            "that wrote them with --spec, and rerun."
        )
    else:
        fix = "Fix the checkpoints (or the options) and rerun."
    return StoreError(
        f"every checkpoint failed ({len(failures)} of {total}), so no kernel was computed:\n"
        f"{shown}{more}\n{fix}" + (f" {kept}" if kept else "")
    )
