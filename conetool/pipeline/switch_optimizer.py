"""The optimizer a switch point trains with: the spec's, over the linearized model's parameters,
its momentum from the state the run saved at step t (beside the checkpoint, a Hugging Face
folder's optimizer.pt, or inside the checkpoint file) where that verifiably is the spec's
optimizer's, else from zero; what the point says of it (:class:`MomentumNote`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_optimizer import (
    ENTRIES,
    ScheduledLr,
    groups_of,
    names_in_file_order,
    restore_checkpoint_optimizer,
    restore_state,
    scheduled_lr,
)
from ..checkpoints import LoadedCheckpoint
from ..errors import OptimizerStateDamagedError
from ..optim import learning_rate, make_optimizer, optimizer_state_from_bytes
from ..spec import Spec
from ..trainer_optimizer import restore_trainer_optimizer
from .switch_momentum_notes import MomentumNote
from .switch_momentum_source import StateRead, read_state, state_beside


def optimizer_at(
    model: torch.nn.Module, spec: Spec, ckpts: Path, loaded: LoadedCheckpoint
) -> tuple[torch.optim.Optimizer, str, MomentumNote | None, dict[str, Any]]:
    """The spec's optimizer over ``model``'s trainable parameters, where momentum comes from
    ("saved" or "fresh"), what a note says about it (None for nothing), and the state file read
    for it, as a point records it (:func:`~conetool.pipeline.switch_momentum_source.read_state`:
    the fingerprint of the bytes read, once, and given to the optimizer).

    The state is the one saved beside the checkpoint ``loaded`` (``step_XXXXXX.optim.safetensors``,
    as ``conetool train`` writes it), else a Hugging Face folder's ``optimizer.pt``
    (:mod:`conetool.trainer_optimizer`), else the one inside the checkpoint file itself (a
    training loop's ``optimizer_state_dict``: :mod:`conetool.checkpoint_optimizer`), each used
    only when it verifiably is the spec's optimizer over the same parameters, else none: fresh,
    and the note says why. The hyperparameters are the spec's either way: a state gives its
    buffers (and Adam's step counts), and a warning names those it was saved with otherwise
    (the learning rate compared with the spec's schedule: :func:`scheduled_lr`)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = make_optimizer((p for _, p in named), spec.train)
    ref = loaded.ref
    beside = state_beside(ckpts, ref)  # beside the checkpoint's own file (or in ``ckpts``)
    lr = scheduled_lr(ref.step, lambda step: learning_rate(spec.train, step), spec.train.lr)
    names = [n for n, _ in named]
    read = read_state(ckpts, ref)  # the first state file there, read once with its hash
    if read.path == beside and read.data is not None:
        momentum, said = _from_beside(optimizer, names, beside, read.data, ref.step, lr)
    else:
        momentum, said = _from_checkpoint_file(model, optimizer, names, beside, loaded, lr, read)
    return optimizer, momentum, said, read.source


def _from_beside(
    optimizer: torch.optim.Optimizer,
    names: list[str],
    beside: Path,
    data: bytearray,
    t: int,
    lr: ScheduledLr,
) -> tuple[str, MomentumNote | None]:
    """Load the buffers of the state ``beside`` the checkpoint of step ``t`` (as ``conetool
    train`` writes it; its bytes ``data``) into ``optimizer`` (over the parameters ``names``),
    keeping its hyperparameters (the spec's), when it is the spec's optimizer's state over these
    parameters (:func:`restore_state`, as for a loop's own file): ("saved", None), or ("saved", a
    warning naming the hyperparameters the state was saved with otherwise: a run of another
    recipe); else ("fresh", a warning saying why it is not used), as for a loop's own file: a
    file whose bytes are not safetensors, or that conetool train did not write, too (its warning
    adds that a rerun trains with it once restored: the point records the file's content). (One
    the disk cannot read is a :class:`CheckpointError` from its read: ``read_state``.)"""
    one = f"the optimizer state beside the checkpoint ({beside.name})"
    many = "the optimizer states beside their checkpoints (step_XXXXXX.optim.safetensors)"
    fresh = "momentum starts at zero"
    try:
        saved = optimizer_state_from_bytes(beside, data)
    except OptimizerStateDamagedError as damaged:
        why = f"not used: {damaged.reason}; {fresh}"
        again = "restored from the run, a rerun trains with it again"
        return "fresh", MomentumNote(
            t, f"{one} is {why} (once it is {again})", f"{many} are {why} (once {again})", True
        )
    found = restore_state(optimizer, names, beside.name, saved, lr=lr)
    if not found.used:
        why = f"not used: {found.reason}; {fresh}"
        return "fresh", MomentumNote(t, f"{one} is {why}", f"{many} are {why}", warning=True)
    if not found.differs:
        return "saved", None
    said = _saved_with(found.differs)
    return "saved", MomentumNote(
        t, f"momentum from {one}, {said}", f"momentum from {many}, {said}", warning=True
    )


def _saved_with(differs: tuple[str, ...]) -> str:
    """What a used state saved with the hyperparameters ``differs`` (``"momentum 0.9 (the spec's
    0.5)"``, ...) says: which recipe the run used is for the user to check."""
    said = (
        f"saved with {', '.join(differs)}: the model trains with the spec's values (its "
        "recipe); if your run used the saved ones, give the spec your run's recipe"
    )
    if any(d.startswith("decoupled_weight_decay True") for d in differs):  # AdamW's state
        said += (
            " (for decoupled_weight_decay: your run used AdamW, whose weight decay is decoupled; "
            'write optimizer = "adamw" in [train], as the spec\'s optimizer = "adam" adds '
            "weight_decay to the gradient, a coupled L2 term, so with a weight_decay other than 0 "
            "the sweep's decay is not your run's)"
        )
    if any(d.startswith("decoupled_weight_decay False") for d in differs):  # Adam's, not AdamW's
        said += (
            " (for decoupled_weight_decay: your run used Adam, whose weight decay is the coupled "
            'L2 term added to the gradient; write optimizer = "adam" in [train], as the spec\'s '
            'optimizer = "adamw" decays the weights decoupled, so with a weight_decay other than '
            "0 the sweep's decay is not your run's)"
        )
    return said


def _from_checkpoint_file(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    beside: Path,
    loaded: LoadedCheckpoint,
    lr: ScheduledLr,
    read: StateRead,
) -> tuple[str, MomentumNote | None]:
    """:func:`optimizer_at` without a state beside the checkpoint: ("saved", note or None) when
    the checkpoint file's own state (or a Hugging Face folder's optimizer.pt: ``read``, where
    there is one) was loaded into ``optimizer``, else ("fresh", why). ``lr``: the spec's schedule
    there, compared with the saved learning rates."""
    ref = loaded.ref

    def said(one: str, many: str, *, warning: bool = False) -> MomentumNote:
        return MomentumNote(ref.step, one, many, warning)

    none = f"no optimizer state beside the checkpoint ({beside.name}, as conetool train writes it)"
    nones = (
        "no optimizer state beside their checkpoints (step_XXXXXX.optim.safetensors, as "
        "conetool train writes it)"
    )
    fresh = "momentum starts at zero"
    if read.path is not None and read.data is not None:  # a Hugging Face folder's optimizer.pt
        trainer = _from_trainer_file(model, optimizer, names, read.path, read.data, loaded, lr)
        if not trainer.used:
            return "fresh", said(  # a state the run saved, not used: a warning
                f"{none}, and {trainer.one}", f"{nones}, and {trainer.many}", warning=True
            )
        return "saved", said(trainer.one, trainer.many, warning=trainer.warning)
    if ref.format != "torch" or len(ref.paths) != 1:
        return "fresh", said(f"{none}; {fresh}", f"{nones}; {fresh}")
    file = ref.paths[0]
    found = restore_checkpoint_optimizer(
        optimizer,
        names,
        file,
        size=loaded.size,
        mtime_ns=loaded.mtime_ns,
        saved_names=names_in_file_order(model, loaded.state_dict, names),
        entries=loaded.entries,  # read with the weights: the file is not read again
        lr=lr,
    )
    if found.entry is None:
        entries = f"(no {', '.join(ENTRIES)} entry); {fresh}"
        return "fresh", said(
            f"{none} nor in {file.name} {entries}", f"{nones} nor in their files {entries}"
        )
    if not found.used:
        why = f"is not used: {found.reason}; {fresh}"
        return "fresh", said(  # a state the run saved, not used (often: not the spec's recipe)
            f"{none}, and the {found.entry} in {file.name} {why}",
            f"{nones}, and the {found.entry} in their files {why}",
            warning=True,
        )
    how = _groups_matched(found.groups)
    counted = _updates_counted(optimizer, ref.step, file.name)
    if not found.differs and counted is None:
        if not how:
            return "saved", None
        return "saved", said(  # how its positions were matched: information
            f"momentum from the {found.entry} in {file.name}, {how}",
            f"momentum from the {found.entry} in their files, {how}",
        )
    told = [how] if how else []
    told += [_saved_with(found.differs)] if found.differs else []
    one = "; ".join(told if counted is None else [*told, counted])
    many = "; ".join(told if counted is None else [*told, _updates_counted_many()])
    return "saved", said(  # which recipe the run used, or which step it is: for the user to check
        f"momentum from the {found.entry} in {file.name}, {one}",
        f"momentum from the {found.entry} in their files, {many}",
        warning=True,
    )


def _updates_counted(optimizer: torch.optim.Optimizer, t: int, name: str) -> str | None:
    """What a loop's own state loaded into ``optimizer`` says when Adam's step count (the updates
    the run's optimizer took) is more than ``t``, the step its file ``name`` reads as: a loop that
    names each file by the epoch just finished, counting from 0 (``epoch_0`` after the first
    epoch), gives every step one epoch early, and the sweep trains from the wrong step of the
    schedule; None when the count is at most ``t`` or there is none (SGD keeps no count). A count
    below ``t`` is no sign of it: an optimizer made fresh when the run resumed, the steps a
    mixed-precision GradScaler skipped, gradient accumulation."""
    counts = {int(float(values["step"])) for values in optimizer.state.values() if "step" in values}
    if len(counts) != 1 or max(counts) <= t:  # (several counts: not one optimizer's history)
        return None
    (taken,) = counts
    return (
        f"its step count says the run's optimizer took {taken} updates, but {name} reads as "
        f"step {t}: if your loop names a file by the epoch it just finished, counting from 0 "
        "(epoch_0 after the first epoch), every step reads one epoch early and each point "
        "trains from the wrong step of the schedule. Store each file's step in it (a 'step' "
        "entry of the torch.save dict) or name it by the epochs done (epoch_1 after the first)"
    )


def _updates_counted_many() -> str:
    """:func:`_updates_counted` for the points of several files, named once."""
    return (
        "their step counts say the run's optimizer took more updates than the step each file "
        "reads as (a loop naming files by the epoch just finished, counting from "
        "0, reads one epoch early: store each file's step in it, or name it by the epochs done)"
    )


@dataclass(frozen=True)
class _TrainerSaid:
    """What :func:`_from_trainer_file` found: whether the state was ``used``, what a point says of
    it (``one`` naming its folder, ``many`` naming none) and whether that is a ``warning``."""

    used: bool
    one: str
    many: str
    warning: bool


def _from_trainer_file(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    path: Path,
    data: bytearray,
    loaded: LoadedCheckpoint,
    lr: ScheduledLr,
) -> _TrainerSaid:
    """:func:`_from_checkpoint_file` for a Hugging Face folder's ``optimizer.pt`` ``path`` (its
    bytes ``data``: :mod:`conetool.trainer_optimizer`): used, with how it was matched (a warning
    when saved with other hyperparameters than the spec's), or why not."""
    ref = loaded.ref
    shown = f"Hugging Face's {path.parent.name}/{path.name}"
    many = f"Hugging Face's {path.name} in their folders"
    ordered = ref.format == "torch" and len(ref.paths) == 1  # pytorch_model.bin keeps the order
    found = restore_trainer_optimizer(
        optimizer,
        model,
        names,
        path,
        saved_names=names_in_file_order(model, loaded.state_dict, names) if ordered else None,
        lr=lr,
        data=data,
    )
    if not found.used:
        why = f"is not used: {found.reason}; momentum starts at zero"
        return _TrainerSaid(False, f"{shown} {why}", f"{many} {why}", warning=True)
    if len(found.groups) == 1:
        how = "its one parameter group taken in the model's order"
    else:
        how = (
            f"{groups_of(found.groups)} matched to the model's trainable parameters as the "
            f"Trainer splits them (weight decay, then none, by {found.matched}), each group in "
            "the model's order"
        )
    how += ", every buffer of its parameter's shape"
    if not ordered:
        how += (
            " (the run's model is taken to list its parameters in the spec's model's order: "
            f"{ref.paths[0].name} does not keep it)"
        )
    if not found.differs:  # how its positions were matched: information
        return _TrainerSaid(
            True, f"momentum from {shown}, {how}", f"momentum from {many}, {how}", False
        )
    differs = _saved_with(found.differs)
    return _TrainerSaid(  # which recipe the run used: for the user to check
        True,
        f"momentum from {shown}, {how}; {differs}",
        f"momentum from {many}, {how}; {differs}",
        True,
    )


def _groups_matched(sizes: tuple[int, ...]) -> str:
    """How a used state of several parameter groups, of ``sizes`` parameters each, was matched to
    the model's parameters ("" for one group: in order)."""
    if len(sizes) < 2:
        return ""
    return (
        f"{groups_of(sizes)} matched to the model's trainable parameters by shape: each group "
        "taken to list them in the model's order, every buffer fits one parameter only"
    )
