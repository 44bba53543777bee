"""One switch point and the sweep's files: train the linearized model from step t to T, read a
finished point back, the standard model at T, and results.csv / results.json / switch.png."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..checkpoint_optimizer import (
    ENTRIES,
    ScheduledLr,
    groups_of,
    names_in_file_order,
    restore_checkpoint_optimizer,
    restore_state,
    scheduled_lr,
)
from ..checkpoints import CheckpointRef, LoadedCheckpoint, load_checkpoint
from ..data import DataBundle
from ..errors import CheckpointError, ConetoolError, OptimizerStateDamagedError
from ..io import atomic_write_csv, atomic_write_json
from ..linearize import LinearizedModel
from ..loop import Row, TrainingLoop, evaluate
from ..models import output_check
from ..optim import learning_rate, make_optimizer, read_optimizer_state
from ..plots import save_figure, switch_figure
from ..progress import Progress, Said
from ..spec import Spec
from ..store import Store
from ..threads import slow_step_watch
from ..trainer_optimizer import OPTIMIZER_FILE, restore_trainer_optimizer
from ..training import diverged_hint
from .matrix_cache import kernels_key
from .resolve import model_for
from .saved_results import saved_phase1_end
from .switch_momentum_source import SOURCE_ENTRY, momentum_source, source_changed, state_beside
from .switch_store import SwitchStore

#: A warning (a guess to check: the spec's [train] recipe stands in for the run's, and the
#: batches are not the run's), said once per sweep.
FOREIGN_RUN = (
    "these checkpoints were not written by `conetool train` (no conetool metadata): the "
    "linearized model is trained on conetool's seeded batch order (the spec's [train] seed, "
    "batch_size and augment), not on the batches of the loop that wrote them, so the switch "
    "replays the spec's recipe, not your run's exact data order."
)

RESULT_COLUMNS = (
    "at",
    "until",
    "test_acc",
    "test_loss",
    "train_acc",
    "train_loss",
    "momentum",
    "seconds",
)


@dataclass(frozen=True)
class SwitchPoint:
    """The linearized continuation from step ``at`` to ``until``: its final test and train
    metrics, where momentum came from ("saved" optimizer state or "fresh"), the metrics rows along
    the way, and whether it was computed now or reused from the store."""

    at: int
    until: int
    test_acc: float
    test_loss: float
    train_acc: float
    train_loss: float
    momentum: str
    seconds: float
    rows: list[Row] = field(default_factory=list)
    reused: bool = False


@dataclass(frozen=True)
class MomentumNote:
    """What the point ``at`` says of its momentum: why it starts at zero, or the hyperparameters
    its saved state was saved with. ``one`` names the point's own files; ``many`` says the same
    of any number of points and names none of their files, so that the points it applies to
    share one message (:func:`momentum_notes`). ``warning``: it is said as a warning (an
    optimizer state the run saved is not used, or the saved hyperparameters are not the
    spec's: a loss, or a recipe to check), else as a note (no state saved: information)."""

    at: int
    one: str
    many: str
    warning: bool = False


def momentum_notes(said: list[MomentumNote]) -> list[str]:
    """One message per distinct reason, in the order of the first point it applies to: ``t=400:
    ONE`` for one point, ``t=0, 100, 200 (3 points): MANY`` for several (a sweep of 20 points
    over a run without optimizer state said it 20 times, each naming its files)."""
    return [message for _, message in _by_reason(said)]


def _by_reason(said: list[MomentumNote]) -> list[tuple[str, str]]:
    """``(reason, message)`` for each distinct reason (``MomentumNote.many``) of ``said``, the
    message as :func:`momentum_notes` gives it."""
    groups: dict[str, list[MomentumNote]] = {}
    for note in sorted(said, key=lambda n: n.at):
        groups.setdefault(note.many, []).append(note)
    out = []
    for many, notes in groups.items():
        if len(notes) == 1:
            out.append((many, f"t={notes[0].at}: {notes[0].one}"))
            continue
        steps = [str(n.at) for n in notes]
        if len(steps) > _LISTED:
            steps = [*steps[: _LISTED - 2], "...", steps[-1]]
        out.append((many, f"t={', '.join(steps)} ({len(notes)} points): {many}"))
    return out


#: The most switch points a shared momentum note lists by step (then: the first ones, ..., last).
_LISTED = 8


class MomentumSaid:
    """What a sweep's points say of their momentum, through ``says``, each reason once: as soon as
    it is known on this rank, before its point trains (that point's message, ``t=400: ONE``: the
    table's momentum column then shows every point's), and once the job's points are all known
    (:meth:`close`) one message per reason for all the points it applies to
    (:func:`momentum_notes`), which ``says`` keeps in place of the first (the result's record,
    and what ``--quiet`` prints at the end of the warnings) but says only for a reason this rank
    did not say (one that only points of other ranks met).

    Call it with each point's :class:`MomentumNote`; ``points`` holds this rank's."""

    def __init__(self, says: Said) -> None:
        self.says = says
        self.points: list[MomentumNote] = []
        self._first: dict[str, str] = {}  # reason (MomentumNote.many) -> what was said of it

    def __call__(self, note: MomentumNote) -> None:
        self.points.append(note)
        if note.many not in self._first:
            self._first[note.many] = message = momentum_notes([note])[0]
            (self.says.warn if note.warning else self.says.note)(message)

    def withdraw(self) -> None:
        """Take the messages said as they came out of ``says``' lists (before they are shared
        with the other ranks: :meth:`close` puts the job's in their place)."""
        said = set(self._first.values())
        self.says.warnings = [m for m in self.says.warnings if m not in said]
        self.says.notes = [m for m in self.says.notes if m not in said]

    def close(self, job: list[MomentumNote]) -> None:
        """One message per reason for the ``job``'s points (every rank's), warnings apart: kept,
        and said only where this rank said nothing of its reason as it came."""
        for warning, say, kept in (
            (False, self.says.note, self.says.notes),
            (True, self.says.warn, self.says.warnings),
        ):
            for reason, message in _by_reason([m for m in job if m.warning == warning]):
                if reason in self._first:
                    kept.append(message)
                else:
                    say(message)


def point_key(spec: Spec, until: int, fingerprint: str) -> dict[str, Any]:
    return {"spec_hash": spec.hash(), "until": until, "source_fingerprint": fingerprint}


def run_point(
    spec: Spec,
    ref: CheckpointRef,
    ckpts: Path,
    until: int,
    data: DataBundle,
    device: torch.device,
    store: SwitchStore,
    threads: int,
    progress: Progress,
    says: Said,
    warnings: list[str],
    training: Callable[[int], None] | None = None,
    *,
    momentum_said: Callable[[MomentumNote], None],
    sources: Mapping[int, dict[str, Any] | None] | None = None,
) -> SwitchPoint:
    """Train the linearized model of the checkpoint ``ref`` from its step t to ``until`` (or read
    the finished point from ``store``) and write the point's files (holding ``store`` against a
    replacement: a :class:`~conetool.errors.StoreReplacedError`, checked before the training
    too). Checkpoints not written by ``conetool train`` are said to ``says`` (a warning, once
    per sweep), what it says of its momentum to ``momentum_said`` before the point trains (a
    :class:`MomentumSaid`: one message for the points of the sweep it applies to); the slow-step
    warning goes to ``progress``
    and ``warnings``,
    once per sweep: a point is watched only while ``warnings`` is empty. ``training(t)`` is
    called once the point passed that check and is to be trained (a replacement found after it
    costs the point in progress; before it, the point was not started). ``sources``: the state
    file its momentum would come from (:func:`momentum_source`) by step, where the sweep found
    it already (hashed once per run); a step not in it is looked at here."""
    t = ref.step
    store.check()  # no minutes of training for a point that could not be written
    model = model_for(spec)
    # refuses non-finite weights, names the file; keeps a loop's optimizer state, read with them
    loaded = load_checkpoint(model, ref, keep=ENTRIES)
    assert loaded is not None
    if loaded.metadata.get("format") != "conetool" and FOREIGN_RUN not in says.warnings:
        says.warn(FOREIGN_RUN)
    key = point_key(spec, until, loaded.fingerprint)
    source = sources[t] if sources and t in sources else momentum_source(ckpts, ref)
    payload = _point_payload(store.root, t, key)
    if payload is not None:
        changed = source_changed(payload, source)
        if changed is None:
            return _reused(payload)
        says.note(f"t={t}: {changed} since this point was computed: it is computed again")
    output_check(model, tuple(data.input_shape), data.num_classes, arch=spec.model.arch)
    if training is not None:
        training(t)
    began = time.perf_counter()
    lin = LinearizedModel(model).to(device)
    optimizer, momentum, said = optimizer_at(lin, spec, ckpts, loaded)
    del loaded  # its optimizer state is in the optimizer now (its weights in the model)
    if said is not None:
        momentum_said(said)
    # A linearized step: the forward pass, its jvp and the vjp at θ_t, about twice a plain step.
    watch = (
        []
        if warnings
        else slow_step_watch(
            model, data, spec, device, threads, progress, passes=6.0, notes=warnings
        )
    )
    loop = TrainingLoop(
        spec,
        lin,
        optimizer,
        data,
        device,
        progress,
        description=f"switch t={t}",
        on_step=watch,
        diverged=_linearized_diverged(spec, t, store.root),
    )
    rows = loop.run(t, until)
    last = rows[-1]
    train_rows = [r for r in rows if r["train_loss"] == r["train_loss"]]  # not NaN
    point = SwitchPoint(
        at=t,
        until=until,
        test_acc=last["test_acc"],
        test_loss=last["test_loss"],
        train_acc=train_rows[-1]["train_acc"] if train_rows else float("nan"),
        train_loss=train_rows[-1]["train_loss"] if train_rows else float("nan"),
        momentum=momentum,
        seconds=round(time.perf_counter() - began, 3),
        rows=rows,
    )
    payload = {**asdict(point), "key": key, "checkpoint": [str(p) for p in ref.paths]}
    if source is not None:
        payload[SOURCE_ENTRY] = source
    payload.pop("reused")
    with store.writing():  # into the store the sweep began with, or nowhere
        atomic_write_csv(paths.switch_point_metrics(store.root, t), list(rows[0]), rows)
        atomic_write_json(paths.switch_point(store.root, t), payload)
    return point


def optimizer_at(
    model: torch.nn.Module, spec: Spec, ckpts: Path, loaded: LoadedCheckpoint
) -> tuple[torch.optim.Optimizer, str, MomentumNote | None]:
    """The spec's optimizer over ``model``'s trainable parameters, where momentum comes from
    ("saved" or "fresh"), and what a note says about it (None for nothing).

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
    if beside.is_file():
        return optimizer, *_from_beside(optimizer, names, beside, ref.step, lr)
    return optimizer, *_from_checkpoint_file(model, optimizer, names, beside, loaded, lr)


def _from_beside(
    optimizer: torch.optim.Optimizer, names: list[str], beside: Path, t: int, lr: ScheduledLr
) -> tuple[str, MomentumNote | None]:
    """Load the buffers of the state ``beside`` the checkpoint of step ``t`` (as ``conetool
    train`` writes it) into ``optimizer`` (over the parameters ``names``), keeping its
    hyperparameters (the spec's), when it is the spec's optimizer's state over these parameters
    (:func:`restore_state`, as for a loop's own file): ("saved", None), or ("saved", a warning
    naming the hyperparameters the state was saved with otherwise: a run of another recipe);
    else ("fresh", a warning saying why it is not used), as for a loop's own file: a file whose
    bytes are not safetensors, or that conetool train did not write, too (its warning adds that a
    rerun trains with it once restored: the point records the file's content). One the disk cannot read (an ``OSError``) is a
    :class:`CheckpointError`, as for a loop's own file."""
    one = f"the optimizer state beside the checkpoint ({beside.name})"
    many = "the optimizer states beside their checkpoints (step_XXXXXX.optim.safetensors)"
    fresh = "momentum starts at zero"
    try:
        saved = read_optimizer_state(beside)
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
    return (
        f"saved with {', '.join(differs)}: the model trains with the spec's values (its "
        "recipe); if your run used the saved ones, give the spec your run's recipe"
    )


def _from_checkpoint_file(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    beside: Path,
    loaded: LoadedCheckpoint,
    lr: ScheduledLr,
) -> tuple[str, MomentumNote | None]:
    """:func:`optimizer_at` without a state beside the checkpoint: ("saved", note or None) when
    the checkpoint file's own state (or a Hugging Face folder's optimizer.pt) was loaded into
    ``optimizer``, else ("fresh", why). ``lr``: the spec's schedule there, compared with the
    saved learning rates."""
    ref = loaded.ref

    def said(one: str, many: str, *, warning: bool = False) -> MomentumNote:
        return MomentumNote(ref.step, one, many, warning)

    none = f"no optimizer state beside the checkpoint ({beside.name}, as conetool train writes it)"
    nones = (
        "no optimizer state beside their checkpoints (step_XXXXXX.optim.safetensors, as "
        "conetool train writes it)"
    )
    fresh = "momentum starts at zero"
    hf_state = ref.folder / OPTIMIZER_FILE if ref.folder is not None else None
    if hf_state is not None and hf_state.is_file():
        trainer = _from_trainer_file(model, optimizer, names, hf_state, loaded, lr)
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
    if not found.differs:
        if not how:
            return "saved", None
        return "saved", said(  # how its positions were matched: information
            f"momentum from the {found.entry} in {file.name}, {how}",
            f"momentum from the {found.entry} in their files, {how}",
        )
    differs = _saved_with(found.differs)
    how = f"{how}; " if how else ""
    return "saved", said(  # which recipe the run used: for the user to check
        f"momentum from the {found.entry} in {file.name}, {how}{differs}",
        f"momentum from the {found.entry} in their files, {how}{differs}",
        warning=True,
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
    loaded: LoadedCheckpoint,
    lr: ScheduledLr,
) -> _TrainerSaid:
    """:func:`_from_checkpoint_file` for a Hugging Face folder's ``optimizer.pt`` ``path``
    (:mod:`conetool.trainer_optimizer`): used, with how it was matched (a warning when saved
    with other hyperparameters than the spec's), or why not."""
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


def read_point(
    store: Path, t: int, key: dict[str, Any], source: dict[str, Any] | None = None
) -> SwitchPoint | None:
    """A finished point of the same spec, T and checkpoint content, or None; ``source``: the
    state file its momentum would come from now (:func:`momentum_source`), None not to check:
    a point that recorded another (an older store's records none) is None too."""
    payload = _point_payload(store, t, key)
    if payload is None or source_changed(payload, source) is not None:
        return None
    return _reused(payload)


def _reused(payload: dict[str, Any]) -> SwitchPoint:
    """The finished point whose JSON is ``payload``, marked reused."""
    fields = {k: payload[k] for k in SwitchPoint.__dataclass_fields__ if k in payload}
    return SwitchPoint(**{**fields, "reused": True})


def _point_payload(store: Path, t: int, key: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON of the point at ``t`` in ``store`` when it has the reuse ``key``, else None (no
    file; damaged: recomputed and rewritten; computed for another spec, T or checkpoint)."""
    path = paths.switch_point(store, t)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    return payload


def all_points(
    store: Path,
    spec: Spec,
    until: int,
    current: list[SwitchPoint],
    fingerprint_now: Callable[[int], str | None] = lambda at: None,
    warnings: list[str] | None = None,
    source_now: Callable[[int], dict[str, Any] | None] = lambda at: None,
) -> list[SwitchPoint]:
    """This sweep's points plus those earlier sweeps left in the store for the same spec and T.

    ``fingerprint_now(t)``: the fingerprint of the run's checkpoint of step t now (None: no
    such checkpoint, or not to be checked). An earlier point whose checkpoint has changed since
    (a run replaced under the same spec) is left out, and ``warnings`` says so (a loss).
    ``source_now(t)``: the state file a point of step t would take its momentum from now
    (:func:`momentum_source`; None: not to be checked). An earlier point that recorded another
    (one a rerun of it would compute again: :func:`source_changed`) is left out too, and
    ``warnings`` names it, why, and the command that computes it again: its ``momentum`` is
    not the one its point would have now."""
    points = {p.at: p for p in current}
    changed: list[int] = []
    stale: dict[int, str] = {}  # at -> how its momentum's state file changed since
    for payload in _stored_points(store):
        key = payload.get("key", {})
        if key.get("spec_hash") != spec.hash() or key.get("until") != until:
            continue
        if payload.get("at") not in points:
            now = fingerprint_now(payload.get("at"))
            if now is not None and key.get("source_fingerprint") != now:
                changed.append(payload.get("at"))
                continue
            why = source_changed(payload, source_now(payload.get("at")))
            if why is not None:
                stale[payload["at"]] = why
                continue
            fields = {k: payload[k] for k in SwitchPoint.__dataclass_fields__ if k in payload}
            points[payload["at"]] = SwitchPoint(**{**fields, "reused": True})
    if changed and warnings is not None:
        at = " ".join(str(t) for t in sorted(changed))
        warnings.append(
            f"left out of results.csv the points of earlier sweeps at {at}: their checkpoints "
            f"changed since they were computed. Recompute them: conetool switch --at "
            f"{at.replace(' ', ',')}."
        )
    if stale and warnings is not None:
        steps = sorted(stale)
        whys = "; ".join(f"t={t}: {stale[t]}" for t in steps)
        warnings.append(
            f"left out of results.csv the points of earlier sweeps at {' '.join(map(str, steps))}"
            f": the optimizer state file their momentum comes from changed since they were "
            f"computed ({whys}). Recompute them: conetool switch --at "
            f"{','.join(map(str, steps))}."
        )
    return [points[t] for t in sorted(points)]


def _stored_points(store: Path) -> Iterator[Any]:
    """The payload (a JSON object) of each readable point file in ``store``
    (``switch/at_XXXXXX.json``), by ``at`` (damaged ones are left out: computed again)."""
    for path in sorted(paths.switch_dir(store).glob("at_*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(payload, dict):
            yield payload


def sweep_begun(store: Path, spec: Spec) -> bool:
    """Whether ``store`` holds a point a sweep computed with ``spec`` (the same spec hash, any
    T): a sweep begun with the spec, which goes on with it (see :func:`switch`'s refusal of a
    spec no training could learn from)."""
    for payload in _stored_points(store):
        key = payload.get("key")
        if isinstance(key, dict) and key.get("spec_hash") == spec.hash():
            return True
    return False


def standard_reference(
    spec: Spec,
    refs: dict[int, CheckpointRef],
    ckpts: Path,
    until: int,
    data: DataBundle,
    device: torch.device,
    store: SwitchStore,
    how: str,
    threads: int,
    progress: Progress,
    says: Said,
    warnings: list[str],
) -> dict[str, Any] | None:
    """The standard model at T: the stored checkpoint of T, or (``train``) the standard run
    continued from the last checkpoint before T, its result kept in ``store`` (written as
    :func:`run_point` writes a point; its steps watched as :func:`run_point` watches them).
    A missing checkpoint of T (no standard line) is a warning to ``says``; training the
    continuation is a note, said before it starts (minutes a user expecting a stored model did
    not plan)."""
    model = model_for(spec).to(device)
    if how == "checkpoint":
        if until not in refs:
            final = max(refs, default=None)
            if final is not None and final < until:
                # A spec whose [train] steps is not the run's (its default, say): every point
                # was trained past the run's end.
                says.warn(
                    f"no checkpoint of step {until} in {ckpts}: the run's checkpoints end at "
                    f"step {final}, before T = {until}, so each point was trained past the run's "
                    f"end and the figure has no standard-training line. If the run ended at step "
                    f"{final} (the spec's [train] steps, {spec.train.steps}, is then not the "
                    f"run's), rerun with --until {final}; to compare with the standard run "
                    f"continued to T, pass --reference train."
                )
                return None
            says.warn(
                f"no checkpoint of step {until} in {ckpts}: the figure has no standard-training "
                "line. Pass --reference train to train the standard continuation to T."
            )
            return None
        load_checkpoint(model, refs[until])
        loss, acc = evaluate(model, data.test, device, spec.train.eval_batch_size)
        return {"step": until, "test_acc": acc, "test_loss": loss, "source": "checkpoint"}
    start = max(s for s in refs if s <= until) if any(s <= until for s in refs) else None
    if start is None:
        raise CheckpointError(f"{ckpts} has no checkpoint at or before step {until}.")
    if start == until:  # the checkpoint of T is the standard model at T: nothing to train
        load_checkpoint(model, refs[until])
        loss, acc = evaluate(model, data.test, device, spec.train.eval_batch_size)
        return {"step": until, "test_acc": acc, "test_loss": loss, "source": "checkpoint"}
    path = paths.switch_reference(store.root)
    loaded = load_checkpoint(model, refs[start], keep=ENTRIES)
    assert loaded is not None
    key = {**point_key(spec, until, loaded.fingerprint), "from": start}
    source = momentum_source(ckpts, refs[start])
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("key") == key and source_changed(previous, source) is None:
            return previous["reference"]
    store.check()
    optimizer, momentum, said = optimizer_at(model, spec, ckpts, loaded)
    del loaded  # its optimizer state is in the optimizer now (its weights in the model)
    if said is not None and said.warning:  # a state saved and not used, or saved otherwise
        says.warn(f"--reference train, from the checkpoint of step {start}: {said.one}")
    says.note(
        f"--reference train: the run has no checkpoint of step {until}, so the standard model "
        f"at T is trained now, from the checkpoint of step {start}: {until - start} steps of "
        f"standard training with the spec's recipe (momentum "
        f"{'from the saved optimizer state' if momentum == 'saved' else 'starting at zero'}), "
        f"kept in {path} for reruns of the same spec, T and checkpoint. The figure's "
        "standard line is this continuation, not a model your run saved."
    )
    watch = (
        []
        if warnings
        else slow_step_watch(model, data, spec, device, threads, progress, notes=warnings)
    )
    loop = TrainingLoop(
        spec,
        model,
        optimizer,
        data,
        device,
        progress,
        description="standard",
        on_step=watch,
        diverged=lambda step, loss: (
            f"the standard (non-linearized) reference run diverged at step {step}: the loss is "
            f"{loss}. A lower train.lr or added train.warmup_steps in the spec may let it "
            "finish, but the spec's recipe is every switch point's too: each point would be "
            "trained again with the new recipe (points are reused only for the same spec), and "
            "the sweep would replay a recipe other than your run's, unless your run used it "
            "(then the spec should say so)."
            f"{_reference_diverged_hint(ckpts, store.root, until)}"
        ),
    )
    last = loop.run(start, until)[-1]
    result = {
        "step": until,
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "source": f"trained from step {start}",
    }
    with store.writing():
        kept = {"key": key, "reference": result}
        atomic_write_json(path, kept if source is None else {**kept, SOURCE_ENTRY: source})
    return result


def _linearized_diverged(spec: Spec, t: int, store: Path) -> Callable[[int, float], str]:
    """The message of a switch point whose linearized training diverges: why it can (its kernel
    is frozen at step t), that the spec's learning rate is part of the experiment (so the fix is
    not to lower it), what to do instead, and that the points already written are kept."""

    def message(step: int, loss: float) -> str:
        return (
            f"switch t={t}: the linearized model diverged at step {step} (the loss is {loss}; "
            f"the spec's learning rate there is {learning_rate(spec.train, step):g}). It keeps "
            f"the kernel of step {t} fixed: with the run's learning rate, a kernel with large "
            "eigenvalues makes each update overshoot, and where the standard network can move "
            "its kernel and settle, the linearized one cannot. That is a result of the switch "
            f"at t={t}, not a fault to fix: lowering train.lr or adding warmup would change the "
            "recipe the experiment replays and the standard run it is compared with. Report it "
            f"as such (the linearized model from t={t} diverges), and leave {t} out of --at to "
            f"finish the sweep: the points already written in {paths.switch_dir(store)} are kept, "
            "and a rerun with the same spec and --until reuses them. (conetool spectrum lists the "
            "stored kernels' largest eigenvalues along training: eig_1 in spectrum.csv.)"
        )

    return message


def _reference_diverged_hint(ckpts: Path, store: Path, until: int) -> str:
    """What ``--reference train`` adds when the standard run it continues diverges: train's hint
    (its checkpoints are valid), and that the sweep's points are kept. (The run has no checkpoint
    of T: from one, nothing is trained.)"""
    return (
        f"{diverged_hint(ckpts)} So are the switch points in {paths.switch_dir(store)}, which a "
        "rerun with the same spec reuses (--reference checkpoint keeps them without training, "
        f"and without a standard line in the figure: the run has no checkpoint of step {until})."
    )


def _kernels_now(store: Path) -> str | None:
    """The key of the kernels ``store`` holds now, so that Fig. 2 shades Phase I only from a
    distance verdict of those kernels (as the spectrum figure); None without a readable store."""
    try:
        return kernels_key(Store.open(store))
    except ConetoolError:
        return None


def write_sweep(
    store: SwitchStore, points: list[SwitchPoint], reference: dict[str, Any] | None, until: int
) -> list[Path]:
    """results.csv / results.json / switch.png over ``points`` (every finished point of this
    spec and T in the store), written as :func:`run_point` writes a point; the figure shades
    Phase I from ``distance``'s verdict when it was computed on the kernels the store holds
    now."""
    root = store.root
    rows = [{k: getattr(p, k) for k in RESULT_COLUMNS} for p in points]
    summary = {"until": until, "reference": reference, "points": rows}
    figure = switch_figure(
        [p.at for p in points],
        [p.test_acc for p in points],
        [p.test_loss for p in points],
        reference_acc=reference["test_acc"] if reference else None,
        reference_loss=reference["test_loss"] if reference else None,
        until=until,
        phase1_end=saved_phase1_end(root, kernels_key=_kernels_now(root)),
    )
    with store.writing():
        atomic_write_csv(paths.switch_results_csv(root), RESULT_COLUMNS, rows)
        atomic_write_json(paths.switch_results_json(root), summary)
        save_figure(figure, paths.switch_png(root))
    return [paths.switch_results_csv(root), paths.switch_results_json(root), paths.switch_png(root)]
