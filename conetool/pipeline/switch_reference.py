"""The standard model at T that a switch sweep compares with: the run's checkpoint of T, or
(``--reference train``) the standard run continued to T from the last checkpoint before it,
kept in ``STORE/switch/reference.json`` for reruns of the same spec, T and checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..checkpoint_optimizer import ENTRIES
from ..checkpoints import (
    CheckpointRef,
    DtypeWarnings,
    LoadedCheckpoint,
    apply_checkpoint,
    load_checkpoint,
)
from ..checkpoints.load import NON_FINITE_ADVICE
from ..data import DataBundle
from ..errors import CheckpointError
from ..io import atomic_write_json
from ..loop import TrainingLoop, evaluate
from ..progress import Progress, Said
from ..spec import Spec
from ..threads import slow_step_watch
from ..training import diverged_hint
from .resolve import model_for
from .switch_finished_points import point_key
from .switch_momentum_source import SOURCE_ENTRY, momentum_source, source_changed
from .switch_optimizer import optimizer_at
from .switch_store import SwitchStore


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
    read: LoadedCheckpoint | None = None,
    dtypes_said: DtypeWarnings | None = None,
) -> dict[str, Any] | None:
    """The standard model at T: the stored checkpoint of T, or (``train``) the standard run
    continued from the last checkpoint before T, its result kept in ``store`` (written as
    :func:`~conetool.pipeline.switch_points.run_point` writes a point; its steps watched as
    it watches them).
    A missing checkpoint of T (no standard line) is a warning to ``says``; training the
    continuation is a note, said before it starts (minutes a user expecting a stored model did
    not plan); the warning its momentum gives (a saved state not used, or saved with other
    hyperparameters) is kept in ``reference.json`` and said again by a rerun that reuses it.
    ``read``: the checkpoint it comes from, already read (with the optimizer state inside a
    torch.save file, for ``train``: :attr:`~conetool.pipeline.switch_prepare.Sweep.reference`),
    which is then not read again; None to read it here."""
    dtypes = DtypeWarnings(says.warn) if dtypes_said is None else dtypes_said
    model = model_for(spec).to(device)

    def stored_at_t() -> dict[str, Any]:
        """The stored checkpoint of T, evaluated: the standard model at T."""
        _load(
            model,
            refs[until],
            non_finite_advice(until, until),
            read,
            dtypes.of(refs[until]),
            spec=spec.source,
        )
        loss, acc = evaluate(model, data.test, device, spec.train.eval_batch_size)
        return {"step": until, "test_acc": acc, "test_loss": loss, "source": "checkpoint"}

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
        return stored_at_t()
    start = reference_step(how, until, refs)
    if start is None:
        raise CheckpointError(f"{ckpts} has no checkpoint at or before step {until}.")
    if start == until:  # the checkpoint of T is the standard model at T: nothing to train
        return stored_at_t()
    path = paths.switch_reference(store.root)
    loaded = _load(
        model,
        refs[start],
        non_finite_advice(until, start),
        read,
        dtypes.of(refs[start]),
        keep=ENTRIES,
        spec=spec.source,
    )
    key = {**point_key(spec, until, loaded.fingerprint), "from": start}
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("key") == key and (
            source_changed(previous, momentum_source(ckpts, refs[start])) is None
        ):
            kept = previous.get(_SAID)  # (an older conetool's record has none: nothing said)
            if isinstance(kept, str):
                says.warn(kept)  # as the sweep that trained it warned
            return previous["reference"]
    store.check()
    # it records the state file its momentum was loaded from (the hash of the bytes read)
    optimizer, momentum, said, source = optimizer_at(model, spec, ckpts, loaded)
    del loaded  # its optimizer state is in the optimizer now (its weights in the model)
    warned = None
    if said is not None and said.warning:  # a state saved and not used, or saved otherwise
        warned = f"--reference train, from the checkpoint of step {start}: {said.one}"
        says.warn(warned)
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
        atomic_write_json(path, {**kept, SOURCE_ENTRY: source, _SAID: warned})
    return result


#: The entry of ``reference.json`` that keeps the warning its momentum gave (or null), which a
#: rerun that reuses the standard model says again.
_SAID = "momentum_warning"


def _reference_diverged_hint(ckpts: Path, store: Path, until: int) -> str:
    """What ``--reference train`` adds when the standard run it continues diverges: train's hint
    (its checkpoints are valid), and that the sweep's points are kept. (The run has no checkpoint
    of T: from one, nothing is trained.)"""
    return (
        f"{diverged_hint(ckpts)} So are the switch points in {paths.switch_dir(store)}, which a "
        "rerun with the same spec reuses (--reference checkpoint keeps them without training, "
        f"and without a standard line in the figure: the run has no checkpoint of step {until})."
    )


def reference_step(how: str, until: int, steps: Collection[int]) -> int | None:
    """The step of the checkpoint the standard model at T (``until``) is read from: T's own
    (``how`` ``"checkpoint"``, or ``"train"`` with a checkpoint at T), the last before T that
    ``--reference train`` continues from, or None when ``steps`` has none."""
    if how == "checkpoint":
        return until if until in steps else None
    return max((s for s in steps if s <= until), default=None)


def non_finite_advice(until: int, step: int) -> str:
    """The advice for NaN or Inf in the checkpoint of ``step`` that the standard model at T
    (``until``) comes from (no --at names it: another --until)."""
    if step == until:
        return (
            "such weights make no standard model at T to compare the switch points with (this "
            f"is the checkpoint of --until {until}): choose another --until."
        )
    return (
        "the standard run cannot be continued from such weights (--reference train continues "
        f"it from this checkpoint, the last at or before --until {until}): choose another "
        "--until, one whose last checkpoint at or before it has finite weights."
    )


@contextmanager
def non_finite_said(advice: str) -> Iterator[None]:
    """A checkpoint read inside that holds NaN or Inf is said with ``advice`` (switch's fix) in
    place of kernels' "leave this step out"; any other error is raised as it is."""
    try:
        yield
    except CheckpointError as exc:
        text = str(exc).replace(NON_FINITE_ADVICE, advice)
        if text == str(exc):
            raise
        raise CheckpointError(text) from exc


def _load(
    model: torch.nn.Module,
    ref: CheckpointRef,
    advice: str,
    read: LoadedCheckpoint | None,
    warn: Callable[[str], None],
    keep: tuple[str, ...] = (),
    spec: str | None = None,
) -> LoadedCheckpoint:
    """:func:`load_checkpoint` of ``ref`` into ``model``, NaN or Inf said with ``advice``; or
    ``read``, when it is ``ref`` already read (its weights checked finite, and ``keep`` kept),
    applied to ``model`` without reading the file again (``spec``: the spec file that built
    ``model``, named when it does not fit). What it says of the checkpoint's dtypes goes to
    ``warn`` (:class:`~conetool.checkpoints.DtypeWarnings`), not to Python's warnings
    module."""
    if read is not None and read.ref == ref:
        apply_checkpoint(model, read, warn=warn, spec=spec)
        return read
    with non_finite_said(advice):
        loaded = load_checkpoint(model, ref, keep=keep, spec=spec, warn=warn)
    assert loaded is not None
    return loaded
