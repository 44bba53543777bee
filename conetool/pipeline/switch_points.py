"""One switch point: the linearized model of the checkpoint of step t trained from t to T with the
spec's recipe (or the finished point read back from the store), and the point's files.

Beside it: a point's record and the store's finished points
(:mod:`conetool.pipeline.switch_finished_points`), what a point says of its momentum
(:mod:`conetool.pipeline.switch_momentum_notes`), its optimizer
(:mod:`conetool.pipeline.switch_optimizer`), the standard model at T
(:mod:`conetool.pipeline.switch_reference`) and the sweep's files
(:mod:`conetool.pipeline.switch_results`); the names of theirs that callers of this module used
are importable from here too."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..checkpoint_optimizer import ENTRIES
from ..checkpoints import (
    CheckpointRef,
    DtypeWarnings,
    checkpoint_metadata,
    fingerprint,
    load_checkpoint,
)
from ..data import DataBundle
from ..io import atomic_write_csv, atomic_write_json
from ..linearize import LinearizedModel
from ..loop import TrainingLoop
from ..models import output_check
from ..optim import learning_rate
from ..progress import Progress, Said
from ..spec import Spec
from ..threads import slow_step_watch
from .resolve import model_for
from .switch_finished_points import (
    SwitchPoint,
    all_points,
    payload_to_check,
    point_key,
    point_payload,
    read_point,
    reused_point,
)
from .switch_momentum_notes import MomentumNote, MomentumSaid, momentum_notes
from .switch_momentum_source import SOURCE_ENTRY, momentum_source, source_changed
from .switch_optimizer import optimizer_at
from .switch_results import RESULT_COLUMNS, write_sweep
from .switch_store import SwitchStore

__all__ = [
    "FOREIGN_RUN",
    "RESULT_COLUMNS",
    "MomentumNote",
    "MomentumSaid",
    "SwitchPoint",
    "all_points",
    "finished_point",
    "momentum_notes",
    "optimizer_at",
    "point_key",
    "read_point",
    "run_point",
    "said_again",
    "said_if_foreign",
    "write_sweep",
]

#: A warning (a guess to check: the spec's [train] recipe stands in for the run's, and the
#: batches are not the run's), said once per sweep.
FOREIGN_RUN = (
    "these checkpoints were not written by `conetool train` (no conetool metadata): the "
    "linearized model is trained on conetool's seeded batch order (the spec's [train] seed, "
    "batch_size and augment), not on the batches of the loop that wrote them, so the switch "
    "replays the spec's recipe, not your run's exact data order. Its loss is cross-entropy of "
    "the logits (with [train] label_smoothing), with the learning rate of the spec's schedule "
    "at each step: what else your loop added is not replayed and no spec key gives it (class "
    "weights, mixup or cutmix, gradient clipping or accumulation, an auxiliary loss, a "
    "scheduler other than [train]'s schedule and warmup_steps, an EMA of the weights, an "
    "augmentation other than [train] augment's crop and flip of cifar10: a data set of your "
    "own is never augmented)."
)


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
    dtypes_said: DtypeWarnings | None = None,
) -> SwitchPoint:
    """Train the linearized model of the checkpoint ``ref`` from its step t to ``until`` (or read
    the finished point from ``store``) and write the point's files (holding ``store`` against a
    replacement: a :class:`~conetool.errors.StoreReplacedError`, checked before the training
    too). Checkpoints not written by ``conetool train`` are said to ``says`` (a warning, once
    per sweep), what it says of its momentum to ``momentum_said`` before the point trains (a
    :class:`MomentumSaid`: one message for the points of the sweep it applies to; a point read back
    from ``store`` says what its record keeps of it: :func:`said_again`); the slow-step
    warning goes to ``progress``
    and ``warnings``,
    once per sweep: a point is watched only while ``warnings`` is empty. ``training(t)`` is
    called once the point passed that check and is to be trained (a replacement found after it
    costs the point in progress; before it, the point was not started). ``sources``: the state
    file its momentum would come from (:func:`momentum_source`) by step, where the sweep found
    it already (hashed once per run); a step not in it is looked at here, only where the store
    holds the point (its hash decides whether it is current). A point computed records the state
    file its momentum was loaded from: the hash of the bytes its load read
    (:func:`optimizer_at`), not of those looked at before."""
    t = ref.step
    store.check()  # no minutes of training for a point that could not be written
    found = dict(sources or {})
    if t not in found:  # (else the sweep looked already, and found it to do)
        stored = finished_point(spec, ref, ckpts, until, store.root, found)
        if stored is not None:
            said_if_foreign(checkpoint_metadata(ref), says)
            said_again(stored, momentum_said)
            return stored
    model = model_for(spec)
    # refuses non-finite weights, names the file; keeps a loop's optimizer state, read with them
    # a checkpoint of lower precision than the model: a warning of the sweep (its result's,
    # `warning:` on the command line), not one of Python's warnings module
    warn = (DtypeWarnings(says.warn) if dtypes_said is None else dtypes_said).of(ref)
    loaded = load_checkpoint(model, ref, keep=ENTRIES, spec=spec.source, warn=warn)
    assert loaded is not None
    said_if_foreign(loaded.metadata, says)
    key = point_key(spec, until, loaded.fingerprint)
    payload = point_payload(store.root, t, key)
    if payload is not None:  # its state file hashed only here, where the hash decides
        now = found[t] if t in found else momentum_source(ckpts, ref)
        changed = source_changed(payload, now)
        if changed is None:
            reused = reused_point(payload)
            said_again(reused, momentum_said)
            return reused
        says.note(f"t={t}: {changed} since this point was computed: it is computed again")
    output_check(
        model, tuple(data.input_shape), data.num_classes, spec.model.arch, examples=data.examples()
    )
    if training is not None:
        training(t)
    began = time.perf_counter()
    lin = LinearizedModel(model).to(device)
    # the point records the state file its momentum was loaded from (the hash of the bytes
    # read, not the one above, which would miss a file replaced in between)
    optimizer, momentum, said, source = optimizer_at(lin, spec, ckpts, loaded)
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
        # kept in its record: a rerun that reuses the point says it again
        momentum_said=None
        if said is None
        else {k: v for k, v in asdict(said).items() if k != "at"},
    )
    payload = {
        **asdict(point),
        "key": key,
        "checkpoint": [str(p) for p in ref.paths],
        SOURCE_ENTRY: source,
    }
    payload.pop("reused")
    with store.writing():  # into the store the sweep began with, or nowhere
        atomic_write_csv(paths.switch_point_metrics(store.root, t), list(rows[0]), rows)
        atomic_write_json(paths.switch_point(store.root, t), payload)
    return point


def finished_point(
    spec: Spec,
    ref: CheckpointRef,
    ckpts: Path,
    until: int,
    store: Path,
    found: dict[int, dict[str, Any] | None],
) -> SwitchPoint | None:
    """The store's finished point of ``ref``'s step for ``spec`` and ``until``, when its
    checkpoint's bytes (its fingerprint, streamed: nothing kept, nothing loaded) and its
    momentum's state file are those it was computed from; else None (to do: its load tells
    again, and says why where the checkpoint is the same). Read only where the store holds a
    point whose checkpoint had the size ``ref``'s has now; the state file's source looked at
    (hashed) is put in ``found`` by step, for that load, which so does not hash it again. Rank 0's
    look over a sweep (:mod:`conetool.pipeline.run_switch`) and a point's own (:func:`run_point`)
    both ask it."""
    t = ref.step
    payload = payload_to_check(store, t, spec, until, ref)
    if payload is None:
        return None
    found[t] = now = momentum_source(ckpts, ref)
    if source_changed(payload, now) is not None:
        return None
    if payload["key"] != point_key(spec, until, fingerprint(ref)):
        return None
    return reused_point(payload)


def said_again(point: SwitchPoint, momentum_said: Callable[[MomentumNote], None]) -> None:
    """Say to ``momentum_said`` what the reused ``point`` said of its momentum when it was
    computed (:attr:`SwitchPoint.momentum_said`, from its record), as a point computed now says
    it: a rerun that reuses every point says, and keeps in its summary, what the sweep that
    computed them did. Nothing for a point that said nothing, or whose record an older conetool
    wrote."""
    said = point.momentum_said
    if said is not None:
        momentum_said(MomentumNote(point.at, said["one"], said["many"], said["warning"]))


def said_if_foreign(metadata: dict[str, str], says: Said) -> None:
    """:data:`FOREIGN_RUN`, once per sweep, for a checkpoint whose (safetensors) ``metadata``
    is not conetool train's."""
    if metadata.get("format") != "conetool" and FOREIGN_RUN not in says.warnings:
        says.warn(FOREIGN_RUN)


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
