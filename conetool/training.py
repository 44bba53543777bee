"""``conetool train``: the standard training run that writes checkpoints.

The run is a pure function of the spec: parameters are initialized from ``train.seed``, the batch
at global step s is drawn from a permutation seeded by (seed, epoch), augmentation and any other
randomness at step s are seeded by (seed, s). So ``--resume`` from any saved step reproduces an
uninterrupted run bit for bit, and the switch experiment can replay the same batches.

The checkpoint of step s holds the weights after s updates (step 0 = the initialization).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from . import paths
from ._version import __version__
from .choices import path_argument
from .data import DataBundle, load_data, steps_per_epoch
from .device import resolve_device
from .errors import DataError, ModelError, SpecError, StoreError
from .io import (
    atomic_save_safetensors,
    atomic_write_csv,
    dangling_link,
    make_dir,
    remove_temporaries,
    temporaries_of,
)
from .library_call import library_call
from .loop import TrainingLoop
from .low_precision import refuse_for_training
from .models import build_model, output_check
from .optim import load_optimizer_state, make_optimizer, save_optimizer_state
from .progress import NullProgress, Progress, Said
from .resume_fit import refuse_unfit_resume
from .spec import (
    Spec,
    check_for_training,
    check_model_classes,
    default_arch_note,
    is_save_step,
    load_spec,
    save_spec,
    save_steps,
    spec_differences,
    train_warnings,
)
from .threads import limit_threads, slow_step_watch
from .train_lock import train_out_lock

METRIC_COLUMNS = ("step", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
#: The optimizer state's metadata entry that holds, as a JSON list, the training loss summed
#: over examples, the correct predictions and the examples seen since the last metrics row (before
#: the update of its step): ``--resume`` continues them, so that its metrics.csv is the
#: uninterrupted run's.
TRAIN_SUMS = "train_sums"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: where, which steps it saved, and the final test metrics.

    Attributes:
        out: the checkpoint directory (``--out``).
        steps: the run's length, the spec's ``train.steps`` (the last step, not this call's count).
        saved_steps: the steps whose checkpoint this call wrote, ascending (resumed: those from
            ``resumed_from`` on; ``[]`` when ``out`` already held the finished run).
        resumed_from: the step this call resumed from (``resume=True`` and an optimizer state
            saved there); ``None`` when it trained from step 0; ``steps`` when ``out`` already
            held the finished run and nothing was trained.
        test_loss: mean cross-entropy of the final model (after ``steps`` updates) over the whole
            test split: the last row of ``metrics``. NaN when the run was already finished and
            its ``metrics.csv`` holds no row.
        test_acc: accuracy of that model on the test split, a fraction in ``[0, 1]`` (not a
            percentage), from the same row; NaN alike.
        seconds: wall-clock seconds of this call's training loop (updates, evaluations and
            checkpoint writes; not loading the data or building the model); ``0.0`` when
            nothing was trained.
        metrics: the metrics rows this call evaluated, in step order, each a dict of
            ``step, epoch, lr, train_loss, train_acc, test_loss, test_acc`` (floats; the train
            numbers averaged over the steps since the row before, NaN when there were none, as
            in the row of step 0); resumed, the rows from ``resumed_from`` on; a finished run's,
            every row of its ``metrics.csv``.
        run_steps: every step the run saves a checkpoint at (the spec's), ascending, resumed
            or not.
        warnings: what may train badly or was guessed, as said through ``progress``
            (``warning: ...``): the spec's recipe, the probe, a resume that restarts from step 0,
            training steps implausibly slow.
    """

    out: Path
    steps: int
    saved_steps: list[int]
    resumed_from: int | None
    test_loss: float
    test_acc: float
    seconds: float
    metrics: list[dict[str, float]] = field(default_factory=list)
    run_steps: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def build_for_spec(spec: Spec, data: DataBundle | None = None) -> tuple[nn.Module, DataBundle]:
    """The spec's data and its freshly initialized model (parameters seeded by ``train.seed``)."""
    data = data or load_data(spec.data, source=spec.source)
    check_model_classes(spec, data.num_classes)
    torch.manual_seed(spec.train.seed)
    examples = data.examples()
    try:
        model = build_model(
            spec.model, tuple(data.input_shape), source=spec.source, examples=examples
        )
    except ModelError as exc:
        if note := default_arch_note(spec):
            raise type(exc)(f"{exc} {note}") from exc
        raise
    output_check(
        model, tuple(data.input_shape), data.num_classes, spec.model.arch, examples=examples
    )
    return model, data


@library_call
def train(
    spec: Spec | str | Path,
    out: str | Path,
    *,
    device: str | torch.device = "auto",
    resume: bool = False,
    overwrite: bool = False,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> TrainResult:
    """Train the spec's model, writing checkpoints, ``conetool.toml`` and ``metrics.csv`` to ``out``.

    ``threads``: CPU threads of PyTorch and BLAS, a count or ``"auto"`` (the idle cores;
    :func:`conetool.limit_threads`). On the CPU, a warning goes to ``progress`` when the steps run
    implausibly slowly for the model's size (:class:`conetool.threads.SlowStepWatch`).

    Example::

        result = conetool.train("examples/digits_lenet.toml", "runs/digits")
        print(result.test_acc)
    """
    with limit_threads(threads) as count:
        return _train(
            spec,
            path_argument(out, "--out", "the checkpoint directory"),
            device,
            resume,
            overwrite,
            count,
            progress,
        )


def _train(
    spec: Spec | str | Path,
    out: Path,
    device: str | torch.device,
    resume: bool,
    overwrite: bool,
    threads: int,
    progress: Progress | None,
) -> TrainResult:
    if resume and overwrite:  # (overwrite would win: the run --resume asks to continue, deleted)
        raise StoreError(
            f"--resume and --overwrite contradict each other: --resume continues the run in "
            f"--out {out} from its last checkpoint, --overwrite deletes it and trains again from "
            "step 0. Pass only one of them."
        )
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    if not (resume and out.is_dir() and paths.checkpoint_steps(out)):
        check_for_training(spec)  # (a run begun with the spec goes on with it: --resume)
    progress = progress or NullProgress()
    dev = resolve_device(device)
    # The whole spec is checked before anything is written: model, data and [probe] (which only
    # conetool kernels uses, but a bad probe found after training would cost the run).
    progress.log(f"loading data '{spec.data.dataset}' and building '{spec.model.arch}' ...")
    model, data = build_for_spec(spec)
    refuse_for_training(model, spec.model.arch, spec.source, "conetool train")
    # batch_size fits the data
    per_epoch = steps_per_epoch(len(data.train), spec.train.batch_size, spec_file=spec.source)
    said = Said(progress)  # its warnings in the result, so that --quiet prints them at the end
    if probe_warning := _check_probe(spec, data):
        said.warn(probe_warning)
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file, not a directory. Choose a directory path.")
    if (link := dangling_link(out)) is not None:
        what = f"--out {out} is" if link == out else f"--out {out} lies under {link},"
        raise StoreError(
            f"{what} a symbolic link to {os.readlink(link)}, which does not exist (a folder "
            f"removed, a disk not mounted). Nothing was written. Create the folder it "
            f"points to (mkdir -p '{link.resolve()}') and rerun, or pass another --out (or "
            f"remove the link)."
        )
    with train_out_lock(out):  # one train writes a folder at a time (a kill leaves no lock)
        had_metrics = paths.metrics(out).is_file()
        start, finished = _prepare_out(out, spec, resume=resume, overwrite=overwrite, model=model)
        if start and not finished and (lost := _lost_rows_warning(out, spec, start, had_metrics)):
            said.warn(lost)
        if start < spec.train.steps:  # what in the spec trains badly or does nothing, said first
            for concern in train_warnings(spec):
                said.warn(concern)
        if resume and not start and paths.checkpoint_steps(out):
            said.warn(
                f"--resume: {out} holds checkpoints but no optimizer state "
                "(step_*.optim.safetensors), so training restarts from step 0 and writes every "
                "checkpoint again."
            )
        if finished:
            progress.log(f"{out} already holds the finished run (step {start}); nothing to train")
            return _finished(out, spec)
        model.to(dev)
        optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), spec.train)
        loop = TrainingLoop(
            spec,
            model,
            optimizer,
            data,
            dev,
            progress,
            on_eval=lambda row: _append_metrics(paths.metrics(out), row),
            diverged_hint=diverged_hint(out),
        )
        loop.on_step.extend(
            [
                _saver(spec, model, optimizer, out, per_epoch, loop.train_sums),
                *slow_step_watch(model, data, spec, dev, threads, progress, notes=said.warnings),
            ]
        )
        if start:
            sums = _load_state(model, optimizer, out, start, dev)
            if isinstance(sums, str):  # damaged: the weights are resumed all the same
                said.warn(_damaged_sums_warning(out, start, sums))
            elif sums is not None:  # (a run saved by an older conetool has none: its next row
                loop.resume_train_sums(*sums)  # averages the steps since the resume only)
            progress.log(f"resuming {out} from step {start}")
        else:
            save_spec(spec, paths.spec(out))

        began = time.perf_counter()
        rows = loop.run(start, spec.train.steps)
        last = rows[-1]
        run_steps = save_steps(spec)  # built once the run is trained (a list as long as it saved)
        return TrainResult(
            out=out,
            steps=spec.train.steps,
            saved_steps=[s for s in run_steps if s >= start],
            resumed_from=start or None,
            test_loss=last["test_loss"],
            test_acc=last["test_acc"],
            seconds=time.perf_counter() - began,
            metrics=rows,
            run_steps=run_steps,
            warnings=said.warnings,
        )


def diverged_hint(ckpts: Path) -> str:
    """What a standard training run that diverged adds to the loop's advice (lower ``train.lr`` or
    add warmup): the checkpoints in ``ckpts`` written before the divergence are valid. Said by
    ``train`` and by ``switch --reference train``, which continues the run from its checkpoints."""
    return f" The checkpoints already in {ckpts} are valid."


def _saver(
    spec: Spec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    out: Path,
    per_epoch: int,
    sums: Callable[[], tuple[float, int, int]],
) -> Callable[[int], None]:
    """The on_step callback that writes the checkpoints of :func:`save_steps` (asked step by
    step, :func:`is_save_step`: a run of any length starts at once); beside the optimizer
    state, ``sums()`` (:meth:`TrainingLoop.train_sums`) as :data:`TRAIN_SUMS`."""

    def save(step: int) -> None:
        if not is_save_step(spec.train, step):
            return
        metadata = {
            "step": str(step),
            "epoch": str(step // per_epoch),
            "spec_hash": spec.hash(),
            "arch": spec.model.arch,
            "conetool_version": __version__,
            "format": "conetool",
        }
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        # The optimizer state goes first: a checkpoint file present means its state is too.
        extra = {TRAIN_SUMS: json.dumps(list(sums()))}  # (JSON floats round-trip exactly)
        save_optimizer_state(optimizer, paths.optimizer_state(out, step), step, extra)
        atomic_save_safetensors(paths.checkpoint(out, step), state, metadata)

    return save


def _finished(out: Path, spec: Spec) -> TrainResult:
    """The result of a run that is already complete in ``out``, read from its metrics."""
    rows = [{k: float(v) for k, v in r.items()} for r in _read_metrics(paths.metrics(out))]
    last = rows[-1] if rows else {"test_loss": float("nan"), "test_acc": float("nan")}
    return TrainResult(
        out=out,
        steps=spec.train.steps,
        saved_steps=[],
        resumed_from=spec.train.steps,
        test_loss=last["test_loss"],
        test_acc=last["test_acc"],
        seconds=0.0,
        metrics=rows,
        run_steps=save_steps(spec),
    )


def _append_metrics(path: Path, row: dict[str, float]) -> None:
    """Append one row, rewriting the file atomically (it is small) so it is never half-written."""
    rows = _read_metrics(path)
    rows.append({k: str(row[k]) for k in METRIC_COLUMNS})
    _write_metrics(path, rows)


def _read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of ``metrics.csv`` (none when it is absent), each cell a number as train writes
    it (``nan`` included).

    Raises:
        StoreError: a cell that is not a number, or a row of another length (a damaged or
            edited file), naming the file, the line and the fix.
    """
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.DictReader(handle))
    for line, row in enumerate(rows, start=2):
        for column, value in row.items():
            try:
                float(value)  # (None: a short row; a list: a long one)
                continue
            except (TypeError, ValueError):
                pass
            raise StoreError(
                f"{path} line {line} is damaged: {column or 'a cell past the header'} = "
                f"{value!r} is not a number (conetool train writes numbers only). Put back the "
                f"run's {path.name}, or remove that line (--resume then says which rows are "
                "missing)."
            )
    return rows


def _write_metrics(path: Path, rows: list[dict[str, str]]) -> None:
    atomic_write_csv(path, METRIC_COLUMNS, rows)


def _check_probe(spec: Spec, data: DataBundle) -> str | None:
    """The spec's [probe] must be drawable from the data (checked at train, not after it).

    A [probe] the spec states is refused when it does not fit; the default one (no [probe] in
    the spec) only gets a warning, returned (None: it fits), since ``conetool kernels
    --probe-size`` can still choose."""
    from .probe import make_probe
    from .spec import ProbeSpec

    try:
        make_probe(data, spec.probe)
    except DataError as exc:
        if spec.probe == ProbeSpec():
            return (
                f"{spec.source} has no [probe] table and the default one does not fit "
                f"the data ({exc}) Add [probe] size to the spec, or pass --probe-size to "
                "conetool kernels."
            )
        raise SpecError(
            f"{spec.source}: [probe] does not fit the data: {exc} conetool kernels draws the "
            "probe set from it, so train checks it before training."
        ) from exc
    return None


def _prepare_out(
    out: Path, spec: Spec, *, resume: bool, overwrite: bool, model: nn.Module | None = None
) -> tuple[int, bool]:
    """Check (and if asked, clear) the output directory; return the step to start from and
    whether the run there is finished (its last checkpoint and its last metrics row written:
    a run stopped between the two is resumed at its last step, which evaluates it). A resume
    checks first that the checkpoint it starts from fits ``model`` (when given)."""
    make_dir(out)  # flushed into its parent: a power loss cannot take the folder from its files
    ours = paths.checkpoint_steps(out)
    spec_file = paths.spec(out)
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.suffix in {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}
        and not p.name.startswith("step_")
    )
    if foreign:
        raise StoreError(
            f"--out {out} holds checkpoint files that conetool train did not write "
            f"({', '.join(foreign[:5])}). conetool never deletes them; choose an empty --out."
        )
    if not ours and not spec_file.exists():
        return 0, False
    if ours and not spec_file.exists():  # train writes it before its first checkpoint
        raise StoreError(
            f"--out {out} holds {len(ours)} checkpoint(s) named as conetool train names them "
            f"({paths.checkpoint(out, ours[0]).name}, ...) but no {spec_file.name}, which train "
            "writes before its first checkpoint: not a run conetool train wrote (or its "
            f"{spec_file.name} was removed). conetool never deletes or continues files it did "
            f"not write: choose an empty --out (to continue the run, put its {spec_file.name} "
            "back and pass --resume)."
        )
    previous_spec = load_spec(spec_file) if spec_file.exists() else None
    previous = previous_spec.hash() if previous_spec is not None else "unknown"
    if overwrite:
        _remove_stale_temporaries(out)
        for step in ours:
            paths.checkpoint(out, step).unlink(missing_ok=True)
            paths.optimizer_state(out, step).unlink(missing_ok=True)
        for path in out.glob("step_*.optim.safetensors"):
            path.unlink()
        spec_file.unlink(missing_ok=True)
        paths.metrics(out).unlink(missing_ok=True)
        return 0, False
    if not resume:
        raise StoreError(
            f"--out {out} already holds a run ({len(ours)} checkpoints, spec hash {previous}). "
            "Pass --resume to continue it, --overwrite to replace it, or choose another --out."
        )
    if previous != spec.hash():
        changed = (
            f" It differs in {'; '.join(spec_differences(previous_spec, spec))}."
            if previous_spec is not None
            else ""
        )
        raise StoreError(
            f"--out {out} holds a run made with another spec (hash {previous}; {spec.source} has "
            f"hash {spec.hash()}).{changed} --resume needs the same spec: compare with "
            f"{spec_file}. Use another --out, or --overwrite to replace that run."
        )
    _remove_stale_temporaries(out)
    resumable = [s for s in ours if paths.optimizer_state(out, s).exists()]
    # Without any optimizer state the run restarts from step 0 (its checkpoints come out the same).
    start = resumable[-1] if resumable else 0
    rows = _read_metrics(paths.metrics(out))
    if start == spec.train.steps and any(float(r["step"]) == start for r in rows):
        return start, True  # already finished: nothing to redo, nothing rewritten
    if start and model is not None:  # before its metrics rows from start on are cut
        refuse_unfit_resume(model, out, start, spec.source)
    # Metrics rows at or after the resume step are recomputed by the resumed run (all of them when
    # it restarts from 0: they were appended to the old rows; none when it stopped between its
    # last checkpoint and its last evaluation, which the resumed run makes).
    _write_metrics(paths.metrics(out), [r for r in rows if float(r["step"]) < start])
    return start, False


#: The names of the temporary files that train's atomic writes make in ``--out``
#: (``.step_000100.safetensors.x1y2.tmp``, :func:`conetool.io.temporaries_of`).
_TEMPORARY = temporaries_of(
    r"step_\d+(?:"
    + "|".join(re.escape(s) for s in (paths.OPTIMIZER_SUFFIX, paths.CHECKPOINT_SUFFIX))
    + ")|"
    + "|".join(re.escape(n) for n in (paths.METRICS_NAME, paths.SPEC_NAME))
)


def _remove_stale_temporaries(out: Path) -> None:
    """Remove the temporary files that a train killed while writing (SIGKILL, a job's time limit,
    a power loss) left in ``out``: a whole checkpoint or optimizer state each, never renamed into
    place, which --resume and --overwrite then kept forever. Only :data:`_TEMPORARY`'s names, only
    regular files directly in ``out`` (:func:`conetool.io.remove_temporaries`); called once
    --resume or --overwrite goes on with the run there (never by a train refused, which another
    train writing there would not survive)."""
    remove_temporaries(out, _TEMPORARY)


def _load_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, out: Path, step: int, device: torch.device
) -> tuple[float, int, int] | str | None:
    """Load the weights and optimizer state of ``step``; return the train sums saved with them
    (None: a state written before conetool saved them; a string: why its entry cannot be
    read as such)."""
    path = paths.checkpoint(out, step)
    with safe_open(str(path), framework="pt") as handle:
        found = int((handle.metadata() or {}).get("step", step))
    if found != step:
        raise StoreError(f"{path} says it holds step {found}, not {step}. Remove it and rerun.")
    model.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
    load_optimizer_state(optimizer, paths.optimizer_state(out, step))
    return _train_sums(paths.optimizer_state(out, step))


def _train_sums(path: Path) -> tuple[float, int, int] | str | None:
    """The :data:`TRAIN_SUMS` entry of the optimizer state ``path``: None when it has none (a
    state an older conetool wrote), why not when it is damaged (not three numbers: a loss sum,
    and whole numbers of correct predictions and examples seen, none negative)."""
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get(TRAIN_SUMS)
    if text is None:
        return None
    damaged = f"its {TRAIN_SUMS} entry {text[:60]!r} is not [loss_sum, correct, seen]"
    try:
        loss_sum, correct, seen = json.loads(text)
    except (ValueError, TypeError):
        return damaged
    if (
        isinstance(loss_sum, bool)
        or not isinstance(loss_sum, float | int)
        or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (correct, seen)
        )
    ):
        return damaged
    return float(loss_sum), correct, seen


def _lost_rows_warning(out: Path, spec: Spec, start: int, had_file: bool) -> str | None:
    """What a run resumed at ``start`` lacks in its ``metrics.csv`` (``had_file``: whether the file
    was there), once :func:`_prepare_out` has kept its rows before ``start``: the rows of the
    steps before ``start`` that ``eval_every`` evaluated, deleted since (the file removed, rows
    cut), which the resumed run does not write again; None when none is missing. Found without
    listing every evaluated step: the scans stop at the first missing rows."""
    every = spec.train.eval_every
    present = {
        int(step)
        for row in _read_metrics(paths.metrics(out))
        if (step := float(row["step"])).is_integer() and step % every == 0
    }
    expected = -(-start // every)  # rows of 0, every, 2 every, ... below start
    missing = expected - len(present)
    if missing <= 0:
        return None
    first = list(itertools.islice((s for s in range(0, start, every) if s not in present), 3))
    last = next(s for s in range(every * (expected - 1), -1, -every) if s not in present)
    shown = ", ".join(map(str, first)) + (f", ..., {last}" if last > first[-1] else "")
    file = paths.metrics(out)
    held = "was missing" if not had_file else "lacks rows"
    return (
        f"--resume: {file} {held}: {missing} of the {expected} rows that the run evaluated "
        f"before step {start}, where it resumes, are missing (step{'s' * (missing > 1)} "
        f"{shown}), and the resumed run writes only the rows from step {start} on. They cannot "
        "be rebuilt (a row's train numbers average the batches trained since the row before). "
        "To keep them, put a copy of the file back and pass --resume again, or pass "
        "--overwrite to train the whole run again with every row."
    )


def _damaged_sums_warning(out: Path, step: int, why: str) -> str:
    """What a damaged :data:`TRAIN_SUMS` entry of the optimizer state of ``step`` means: the
    weights and optimizer state resume as saved; only the first metrics row from ``step`` on
    loses the train numbers of the steps before the resume."""
    return (
        f"--resume: {paths.optimizer_state(out, step)}: {why}, so the first row of "
        f"{paths.metrics(out)} from step {step} on has the train_loss and train_acc of the "
        f"steps trained since the resume only (NaN for a row at step {step} itself), not of "
        "every step since the row before. The weights and optimizer state are resumed as "
        "saved, unaffected."
    )
