"""``conetool switch``: train normally to step t, then the linearized model from t to T (Fig. 2).

For each switch point t the checkpoint of step t is loaded, linearized around its weights
(:class:`conetool.linearize.LinearizedModel`: BatchNorm in eval mode with the running statistics
of step t, dropout off) and trained with the spec's recipe from global step t to T: the same
optimizer and hyperparameters, the learning rate of the schedule at each global step, and the very
batches (and augmentations) the standard run used from t on (:mod:`conetool.loop`). Momentum starts
from the optimizer state saved beside the checkpoint when there is one, else from zero.

Each point's result is written as soon as it is done (``STORE/switch/at_XXXXXX.json`` and
``.csv``), so a rerun skips finished points and an interrupted sweep loses only the point in
progress.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed, paths
from ..checkpoints import CheckpointRef, fingerprint, list_checkpoints, load_checkpoint
from ..data import DataBundle, load_data
from ..errors import CheckpointError, ConetoolError, SpecError, StoreError
from ..io import atomic_write_json, atomic_write_text, write_error
from ..linearize import LinearizedModel
from ..loop import Row, TrainingLoop, evaluate
from ..models import output_check
from ..optim import load_optimizer_state, make_optimizer
from ..plots import save_figure, switch_figure
from ..progress import NullProgress, Progress
from ..spec import Spec, spec_from_dict
from ..store import nearest_steps
from ..threads import limit_threads, slow_step_watch
from .remembered import recorded_step_regex, use_recorded_imports
from .resolve import iterations_per_epoch, model_for, resolve_spec

REFERENCES = ("checkpoint", "train")
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
class SwitchResult:
    """A whole sweep: the points in order of ``at``, the standard model at T (``reference``:
    step, test_acc, test_loss, source; or None) and the files written."""

    store: Path
    until: int
    points: list[SwitchPoint]
    reference: dict[str, Any] | None
    files: list[Path]
    notes: list[str] = field(default_factory=list)


FOREIGN_NOTE = (
    "these checkpoints were not written by `conetool train` (no conetool metadata): the "
    "linearized model is trained on conetool's seeded batch order (the spec's [train] seed, "
    "batch_size and augment), not on the batches of the loop that wrote them, so the switch "
    "replays the spec's recipe, not your run's exact data order."
)


def parse_at(values: Sequence[int | str]) -> list[int]:
    """Switch steps from ``--at`` values: ``2000``, ``0,1000,2000`` or ``0:10000:1000`` (start,
    stop, stride as Python's range: the stop is excluded). Sorted, duplicates removed."""
    steps: set[int] = set()
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            try:
                if ":" in part:
                    bounds = [int(x) for x in part.split(":")]
                    if len(bounds) not in (2, 3) or (len(bounds) == 3 and bounds[2] <= 0):
                        raise ValueError
                    steps.update(range(*bounds))
                elif part:
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


@dataclass(frozen=True)
class _Sweep:
    points_at: list[int]
    ckpts: Path
    spec: Spec
    until: int
    refs: dict[int, CheckpointRef]
    data: DataBundle
    notes: list[str] = field(default_factory=list)  # what _prepare took from the store


def switch(
    at: Sequence[int | str],
    *,
    until: int | None = None,
    store: str | Path = paths.DEFAULT_STORE,
    ckpts: str | Path | None = None,
    spec: Spec | str | Path | None = None,
    reference: str = "checkpoint",
    device: str | torch.device = "auto",
    step_regex: str | None = None,
    beyond_run: bool = False,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> SwitchResult:
    """Run the switch experiment at each step of ``at`` and write the results to ``store``.

    The checkpoint directory and spec come from the store's manifest (as ``conetool kernels``
    wrote it); ``ckpts`` and ``spec`` override them (and are needed when there is no store yet).
    ``until`` (T) defaults to the spec's ``train.steps``; a T beyond it is refused unless
    ``beyond_run`` (``--beyond-run``). Only the checkpoints the sweep needs are read: an unusable
    file at another step is left alone.

    Under torchrun (:mod:`conetool.distributed`) every rank runs this function: the switch points
    still to do are dealt to the ranks (the longest continuations first, so that the work evens
    out), each rank trains its points on its own device and writes each point's files, and rank
    0, once all ranks are done, evaluates the standard model at T and writes ``results.csv``,
    ``results.json`` and the figure from every point's file. The result's ``points`` and
    ``notes`` cover the whole job on every rank; ``reference`` and ``files`` are rank 0's.

    ``threads`` sets the CPU threads of PyTorch and BLAS for the call: a count, or ``"auto"``
    (the idle cores; :func:`conetool.limit_threads`).

    Example::

        result = conetool.switch([0, 100, 200], store="conetool-out")
        [(p.at, p.test_acc) for p in result.points]
    """
    with limit_threads(threads) as count, distributed.job("switch", device) as job:
        return _switch(
            job,
            at,
            until=until,
            store=Path(store),
            ckpts=ckpts,
            spec=spec,
            reference=reference,
            step_regex=step_regex,
            beyond_run=beyond_run,
            threads=count,
            progress=(progress or NullProgress()) if job.is_main else NullProgress(),
        )


def _switch(
    job: distributed.Job,
    at: Sequence[int | str],
    *,
    until: int | None,
    store: Path,
    ckpts: str | Path | None,
    spec: Spec | str | Path | None,
    reference: str,
    step_regex: str | None,
    beyond_run: bool,
    threads: int,
    progress: Progress,
) -> SwitchResult:
    sweep = job.agree(
        lambda: _prepare(at, until, store, ckpts, spec, reference, step_regex, beyond_run)
    )
    dev, T = job.device, sweep.until

    # With several ranks, rank 0 finds the points already done so that only the others are dealt.
    done: list[SwitchPoint] = []
    if job.is_distributed:
        found = job.agree(lambda: _finished_points(sweep, store) if job.is_main else [])
        done = [p for p in found if p is not None]
    finished = {p.at for p in done}
    todo = job.broadcast([t for t in sweep.points_at if t not in finished] if job.is_main else None)

    results: list[SwitchPoint] = list(done)
    notes: list[str] = list(sweep.notes) if job.is_main else []  # said once, not per rank
    error: ConetoolError | None = None
    bar = job.bar(progress.task("switch points", total=len(sweep.points_at)))
    for point in done:
        bar.advance_here(1, at=point.at, test_acc=f"{point.test_acc:.4f}")
    for t in job.shard(todo, weights=[T - t for t in todo]):
        if job.peer_failed():
            break  # another rank hit an error: stop as a single process would
        try:
            point = _run_point(
                sweep.spec,
                sweep.refs[t],
                sweep.ckpts,
                T,
                sweep.data,
                dev,
                store,
                threads,
                progress,
                notes,
            )
        except CheckpointError as exc:
            error = _for_switch(exc)
            job.fail()
            break
        except ConetoolError as exc:
            error = exc
            job.fail()
            break
        results.append(point)
        bar.advance(1, at=t, test_acc=f"{point.test_acc:.4f}")

    share = {
        "points": [asdict(p) for p in results],
        "notes": notes,
        "error": None if error is None else str(error),
    }
    shares = job.gather(share, while_waiting=bar.poll)  # rank 0 shows progress while it waits
    bar.close()
    failures = [(r, other["error"]) for r, other in enumerate(shares) if other["error"]]
    points = sorted(
        (SwitchPoint(**p) for other in shares for p in other["points"]), key=lambda p: p.at
    )
    notes = [note for other in shares for note in other["notes"]]

    def write_sweep() -> tuple[dict[str, Any] | None, list[Path]]:
        """Rank 0, once every rank is done: the standard model at T and the sweep's files."""
        if not job.is_main or failures:
            return None, []
        try:
            ref_result = _reference(
                sweep.spec,
                sweep.refs,
                sweep.ckpts,
                T,
                sweep.data,
                dev,
                store,
                reference,
                progress,
                notes,
            )
        except CheckpointError as exc:
            raise _for_switch(exc) from exc
        return ref_result, _write_sweep(
            store, _all_points(store, sweep.spec, T, points), ref_result, T
        )

    ref_result, files = job.agree(write_sweep)  # the other ranks wait for rank 0's files
    if error is not None:
        raise error
    if failures:
        rank, message = failures[0]
        raise distributed.PeerFailedError(f"rank {rank} failed: {message}")
    return SwitchResult(store, T, points, ref_result, files, notes)


def _prepare(
    at: Sequence[int | str],
    until: int | None,
    store: Path,
    ckpts: str | Path | None,
    spec: Spec | str | Path | None,
    reference: str,
    step_regex: str | None,
    beyond_run: bool = False,
) -> _Sweep:
    """Check the arguments; find the checkpoints, the spec and the data (on every rank)."""
    points_at = parse_at(at)
    if reference not in REFERENCES:
        raise ConetoolError(f"--reference {reference!r} is unknown. Use checkpoint or train.")
    ckpts_dir, spec, manifest = _locate(store, ckpts, spec)
    # What kernels recorded: its --step-regex (unless one is given) and where it imported a
    # "pkg.mod:factory" model or data set from.
    step_regex, regex_note = recorded_step_regex(manifest, step_regex)
    notes = use_recorded_imports(manifest, spec) + ([regex_note] if regex_note else [])
    T = spec.train.steps if until is None else until
    if T > spec.train.steps and not beyond_run:
        raise ConetoolError(
            f"--until {T} is beyond the standard run: its T is {spec.train.steps} (train.steps "
            f"of {spec.source}), so there is no standard model at step {T} to compare with, and "
            f"the linearized model would train {T - spec.train.steps} steps past the run. Drop "
            f"--until (T = {spec.train.steps}), or pass --beyond-run to train to {T} anyway."
        )
    late = [t for t in points_at if t >= T]
    if late:
        raise ConetoolError(
            f"--at {late[0]} is not before --until {T}: the linearized model is trained from t "
            f"to T, so t must be smaller. Drop it or raise --until (the spec trains to "
            f"{spec.train.steps})."
        )
    # Only the checkpoints the sweep needs matter: an unusable file elsewhere is left alone.
    ipe = iterations_per_epoch(spec)
    try:
        found = list_checkpoints(
            ckpts_dir,
            step_regex=step_regex,
            iterations_per_epoch=ipe,
            skip_bad=True,
            warn=lambda message: None,
        )
    except CheckpointError as exc:
        try:  # no file usable: the files' own errors say why (e.g. no step in their names)
            list_checkpoints(ckpts_dir, step_regex=step_regex, iterations_per_epoch=ipe)
        except CheckpointError as reasons:
            raise _for_switch(reasons) from exc
        raise _for_switch(exc) from exc
    refs = {ref.step: ref for ref in found}
    needed = points_at + ([T] if reference == "checkpoint" else [])
    for t in needed:
        if t in refs:
            continue
        try:  # the file of step t, if there is one, and why it cannot be used
            list_checkpoints(
                ckpts_dir, step_regex=step_regex, iterations_per_epoch=ipe, steps=(t, t)
            )
        except CheckpointError as exc:
            if "is selected by" not in str(exc):
                raise _for_switch(exc) from exc
        if t == T and t not in points_at:
            continue  # no checkpoint at T: the figure goes without the standard line (a note)
        raise CheckpointError(
            f"--at {t}: {ckpts_dir} has no checkpoint of step {t}. Nearest: "
            f"{nearest_steps(sorted(refs), t)}."
        )
    data = load_data(spec.data)
    if len(data.test) == 0:
        raise SpecError(
            f"{spec.source}: data set '{spec.data.dataset}' has an empty test split, and the "
            "switch experiment reports test accuracy and loss. Give the data set a test split."
        )
    folder = paths.switch_dir(store)
    if not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = write_error(folder, exc)
            if problem is None:
                raise
            raise problem from exc
    return _Sweep(points_at, ckpts_dir, spec, T, refs, data, notes)


def _for_switch(exc: CheckpointError) -> CheckpointError:
    """A checkpoint error reworded for ``switch``, which has no --skip-bad or --steps: the step is
    needed, so the advice is to fix the file or choose another switch point."""
    text = str(exc)
    text = re.sub(
        r"Leave this step out \(--steps\) or pass --skip-bad\.",
        "Fix the file, or choose another --at step.",
        text,
    )
    text = re.sub(
        r"Fix or move these files, or pass --skip-bad to skip them with a warning\.",
        "Fix or move these files, or choose another --at step.",
        text,
    )
    text = re.sub(r"\s*\((?:or )?pass --skip-bad[^)]*\)", "", text)
    text = re.sub(r"\s*\(--skip-bad[^)]*\)", "", text)
    text = re.sub(r",? or pass --skip-bad[^.]*\.", ".", text)
    text = re.sub(r",? or pass --skip-bad\b", "", text)
    if text == str(exc):
        return exc
    return CheckpointError(text)


def _finished_points(sweep: _Sweep, store: Path) -> list[SwitchPoint | None]:
    """The points of the sweep already in the store for the same spec, T and checkpoint."""
    return [
        _read_point(store, t, _point_key(sweep.spec, sweep.until, fingerprint(sweep.refs[t])))
        for t in sweep.points_at
    ]


def _locate(
    store: Path, ckpts: str | Path | None, spec: Spec | str | Path | None
) -> tuple[Path, Spec, dict[str, Any] | None]:
    """The checkpoint directory and spec (flags first, then the store's manifest) and the
    manifest itself (None when the store has none)."""
    manifest_path = paths.manifest(store)
    manifest = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or "checkpoints" not in manifest:
                raise ValueError("not a conetool store manifest")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise StoreError(
                f"{manifest_path} is not a readable conetool manifest ({exc}), so it cannot say "
                "where the checkpoints are. Pass --ckpts CKPTS (and --spec SPEC), or rebuild it: "
                f"conetool kernels CKPTS --store {store} rebuilds the manifest from the kernel "
                "files."
            ) from exc
    if ckpts is None:
        if manifest is None:
            raise StoreError(
                f"store {store} has no {paths.MANIFEST_NAME} to say where the checkpoints are. "
                "Pass --ckpts CKPTS (and --spec SPEC unless CKPTS/conetool.toml exists), or run "
                f"conetool kernels CKPTS --store {store} first."
            )
        ckpts = manifest["checkpoints"]
    ckpts_dir = Path(ckpts)
    if spec is None and manifest is not None and not paths.spec(ckpts_dir).is_file():
        spec = spec_from_dict(manifest["spec"], source=f"{manifest_path} (spec)")
    return ckpts_dir, resolve_spec(ckpts_dir, spec), manifest


def _point_key(spec: Spec, until: int, fingerprint: str) -> dict[str, Any]:
    return {"spec_hash": spec.hash(), "until": until, "source_fingerprint": fingerprint}


def _run_point(
    spec: Spec,
    ref: CheckpointRef,
    ckpts: Path,
    until: int,
    data: DataBundle,
    device: torch.device,
    store: Path,
    threads: int,
    progress: Progress,
    notes: list[str],
) -> SwitchPoint:
    t = ref.step
    model = model_for(spec)
    loaded = load_checkpoint(model, ref)  # refuses non-finite weights, names the file
    assert loaded is not None
    if loaded.metadata.get("format") != "conetool" and FOREIGN_NOTE not in notes:
        notes.append(FOREIGN_NOTE)
    key = _point_key(spec, until, loaded.fingerprint)
    done = _read_point(store, t, key)
    if done is not None:
        return done
    output_check(model, tuple(data.input_shape), data.num_classes, arch=spec.model.arch)
    began = time.perf_counter()
    lin = LinearizedModel(model).to(device)
    optimizer, momentum = _optimizer_at(lin, spec, ckpts, t)
    if momentum == "fresh":
        notes.append(f"t={t}: no optimizer state beside the checkpoint; momentum starts at zero")
    # A linearized step: the forward pass, its jvp and the vjp at θ_t, about twice a plain step.
    watch = slow_step_watch(model, data, spec, device, threads, progress, passes=6.0)
    loop = TrainingLoop(
        spec, lin, optimizer, data, device, progress, description=f"switch t={t}", on_step=watch
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
    atomic_write_text(paths.switch_point_metrics(store, t), _rows_csv(rows))
    payload = {**asdict(point), "key": key, "checkpoint": [str(p) for p in ref.paths]}
    payload.pop("reused")
    atomic_write_json(paths.switch_point(store, t), payload)
    return point


def _optimizer_at(
    model: torch.nn.Module, spec: Spec, ckpts: Path, step: int
) -> tuple[torch.optim.Optimizer, str]:
    """The spec's optimizer over ``model``'s trainable parameters, with the state saved beside
    the checkpoint of ``step`` when there is one ("saved"), else fresh ("fresh")."""
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), spec.train)
    saved = paths.optimizer_state(ckpts, step)
    if not saved.is_file():
        return optimizer, "fresh"
    load_optimizer_state(optimizer, saved)
    return optimizer, "saved"


def _read_point(store: Path, t: int, key: dict[str, Any]) -> SwitchPoint | None:
    """A finished point of the same spec, T and checkpoint content, or None."""
    path = paths.switch_point(store, t)
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # damaged: recomputed and rewritten
    if payload.get("key") != key:
        return None
    fields = {k: payload[k] for k in SwitchPoint.__dataclass_fields__ if k in payload}
    return SwitchPoint(**{**fields, "reused": True})


def _all_points(
    store: Path, spec: Spec, until: int, current: list[SwitchPoint]
) -> list[SwitchPoint]:
    """This sweep's points plus those earlier sweeps left in the store for the same spec and T."""
    points = {p.at: p for p in current}
    for path in sorted(paths.switch_dir(store).glob("at_*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        key = payload.get("key", {})
        if key.get("spec_hash") != spec.hash() or key.get("until") != until:
            continue
        if payload.get("at") not in points:
            fields = {k: payload[k] for k in SwitchPoint.__dataclass_fields__ if k in payload}
            points[payload["at"]] = SwitchPoint(**{**fields, "reused": True})
    return [points[t] for t in sorted(points)]


def _reference(
    spec: Spec,
    refs: dict[int, CheckpointRef],
    ckpts: Path,
    until: int,
    data: DataBundle,
    device: torch.device,
    store: Path,
    how: str,
    progress: Progress,
    notes: list[str],
) -> dict[str, Any] | None:
    """The standard model at T: the stored checkpoint of T, or (``train``) the standard run
    continued from the last checkpoint before T."""
    model = model_for(spec).to(device)
    if how == "checkpoint":
        if until not in refs:
            notes.append(
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
    path = paths.switch_reference(store)
    loaded = load_checkpoint(model, refs[start])
    assert loaded is not None
    key = {**_point_key(spec, until, loaded.fingerprint), "from": start}
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("key") == key:
            return previous["reference"]
    optimizer, _ = _optimizer_at(model, spec, ckpts, start)
    loop = TrainingLoop(spec, model, optimizer, data, device, progress, description="standard")
    last = loop.run(start, until)[-1]
    result = {
        "step": until,
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "source": f"trained from step {start}",
    }
    atomic_write_json(path, {"key": key, "reference": result})
    return result


def _write_sweep(
    store: Path, points: list[SwitchPoint], reference: dict[str, Any] | None, until: int
) -> list[Path]:
    """results.csv / results.json / switch.png over ``points`` (every finished point of this
    spec and T in the store)."""
    rows = [{k: getattr(p, k) for k in RESULT_COLUMNS} for p in points]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(paths.switch_results_csv(store), text.getvalue())
    summary = {"until": until, "reference": reference, "points": rows}
    atomic_write_json(paths.switch_results_json(store), summary)
    figure = switch_figure(
        [p.at for p in points],
        [p.test_acc for p in points],
        [p.test_loss for p in points],
        reference_acc=reference["test_acc"] if reference else None,
        reference_loss=reference["test_loss"] if reference else None,
        until=until,
        phase1_end=_phase1_end(store),
    )
    save_figure(figure, paths.switch_png(store))
    return [
        paths.switch_results_csv(store),
        paths.switch_results_json(store),
        paths.switch_png(store),
    ]


def _phase1_end(store: Path) -> int | None:
    """Phase I's end from ``conetool distance``'s verdict, when it has run."""
    try:
        summary = json.loads(paths.distance_summary(store).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = summary.get("verdict", {}).get("phase1_end")
    return int(value) if isinstance(value, int | float) else None


def _rows_csv(rows: list[Row]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
