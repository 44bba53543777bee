"""``conetool switch``: train normally to step t, then the linearized model from t to T (Fig. 2).

For each switch point t the checkpoint of step t is loaded, linearized around its weights
(:class:`conetool.linearize.LinearizedModel`: BatchNorm in eval mode with the running statistics
of step t, dropout off) and trained with the spec's recipe from global step t to T: the same
optimizer and hyperparameters, the learning rate of the schedule at each global step, and the very
batches (and augmentations) the standard run used from t on (:mod:`conetool.loop`). Momentum starts
from the optimizer state saved beside the checkpoint when there is one, else from the one inside
the checkpoint file when it verifiably is the spec's optimizer's (:mod:`conetool.checkpoint_optimizer`),
else from zero; only a saved state's buffers are taken, never its hyperparameters (a warning names
those saved otherwise than the spec's).

Each point's result is written as soon as it is done (``STORE/switch/at_XXXXXX.json`` and
``.csv``), so a rerun skips finished points and an interrupted sweep loses only the point in
progress. A point records the optimizer state file beside its checkpoint that its momentum came
from (or none), and a rerun computes again a point whose file was added, removed or changed since.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed, paths
from ..checkpoints import CheckpointRef, fingerprint, list_checkpoints
from ..checkpoints.discover import SKIP_BAD_ADVICE, checkpoint_listing, step_problems
from ..choices import Reference, choice, is_count, path_argument
from ..data import DataBundle, load_data, steps_per_epoch
from ..errors import CheckpointError, ConetoolError, SpecError, StoreError, StoreReplacedError
from ..library_call import library_call
from ..progress import NullProgress, Progress, Said
from ..spec import Spec, check_training_data, recipe_warnings, spec_from_dict
from ..store import kernel_file_headers, nearest_steps, read_manifest, rebuilds_manifest
from ..threads import limit_threads, parse_threads
from .remembered import (
    carried_directory,
    carried_imports,
    carried_step_regex,
    manifest_json,
    recorded_step_regex,
    use_recorded_imports,
)
from .resolve import iterations_per_epoch, resolve_spec
from .switch_momentum_source import momentum_source
from .switch_points import (
    MomentumNote,
    MomentumSaid,
    SwitchPoint,
    all_points,
    point_key,
    read_point,
    run_point,
    standard_reference,
    sweep_begun,
    write_sweep,
)
from .switch_store import SwitchStore

REFERENCES = tuple(r.value for r in Reference)


@dataclass(frozen=True)
class SwitchResult:
    """A whole sweep: the points in order of ``at``, the standard model at T (``reference``:
    step, test_acc, test_loss, source; or None), the files written, ``notes`` (information:
    options taken from the store, the checkpoint listing's (torch.save files, copies not
    read, ...), momentum starting at zero where no optimizer state was
    saved, the standard run that ``reference="train"`` trains), and ``warnings`` (a possible
    loss or a guess to check: what in the spec's recipe trains badly; what the checkpoint
    listing says of the run, as ``kernels`` says it (an EMA beside the state dict read, steps
    that may be Unix times, ...); checkpoints not written by
    ``conetool train``; an optimizer state not used, or saved with other hyperparameters
    than the spec's; no standard model at T; a T past the run under the cosine schedule, whose
    learning rate is 0 there; earlier points left out of results.csv; the
    training steps implausibly slow, linearized or the standard run that ``reference="train"``
    continues), each said once per sweep, as ``progress`` showed it. A momentum message is
    said once, before the first point it applies to trains (naming that point), and kept here
    as one message for all the points it applies to (``t=0, 100 (2 points): ...``), which
    ``progress`` does not say again (``--quiet``, which showed nothing, prints the warnings
    among them at the end); a reason only other torchrun ranks met is said at the end
    (:class:`~conetool.pipeline.switch_points.MomentumSaid`)."""

    store: Path
    until: int
    points: list[SwitchPoint]
    reference: dict[str, Any] | None
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_at(values: int | str | Sequence[int | str]) -> list[int]:
    """Switch steps from ``--at`` values: ``2000``, ``0,1000,2000`` or ``0:10000:1000`` (start,
    stop, stride as Python's range: the stop is excluded), one of them or a sequence of them
    (a ``range`` too). Sorted, duplicates removed."""
    steps: set[int] = set()
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
                    steps.update(range(*bounds))
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


@dataclass(frozen=True)
class _Sweep:
    points_at: list[int]
    ckpts: Path
    spec: Spec
    until: int
    refs: dict[int, CheckpointRef]
    data: DataBundle
    store: SwitchStore  # the store as this rank began with it (rank 0's is the job's)
    notes: list[str] = field(default_factory=list)  # what _prepare took from the store
    warnings: list[str] = field(default_factory=list)  # a damaged manifest it read around


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


@library_call
def switch(
    at: int | str | Sequence[int | str],
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

    ``at``: a step (``100``), a sequence of steps (``[0, 100]``, ``range(0, 1000, 100)``), or
    the text of ``--at`` (``"0,100"``, ``"0:1000:100"``, the stop excluded).

    The checkpoint directory and spec come from the store's manifest (as ``conetool kernels``
    wrote it); ``ckpts`` and ``spec`` override them (and are needed when there is no store yet).
    ``until`` (T) defaults to the spec's ``train.steps``; a T beyond it is refused unless
    ``beyond_run`` (``--beyond-run``). Only the checkpoints the sweep needs are read: an unusable
    file at another step is left alone. A spec whose data ``conetool train`` refuses to train
    on (:func:`conetool.spec.check_training_data`) is refused before anything is written,
    unless the store holds points of that very spec (a sweep begun with it goes on with it).

    Under torchrun (:mod:`conetool.distributed`) every rank runs this function: the switch points
    still to do are dealt to the ranks (the longest continuations first, so that the work evens
    out), each rank trains its points on its own device and writes each point's files, and rank
    0, once all ranks are done, evaluates the standard model at T and writes ``results.csv``,
    ``results.json`` and the figure from every point's file. The result's ``points``,
    ``notes`` and ``warnings`` cover the whole job on every rank; ``reference``, ``files`` and
    what is said of them are rank 0's.

    A ``kernels --overwrite`` that replaces the store during the sweep stops it with a
    :class:`~conetool.errors.StoreReplacedError`: nothing of the sweep is written into the new
    store (:mod:`conetool.pipeline.switch_store`); the points written before went with the old one.
    Its message names the points not written and the command that computes the sweep anew.

    ``threads`` sets the CPU threads of PyTorch and BLAS for the call: a count, or ``"auto"``
    (the idle cores; :func:`conetool.limit_threads`).

    Example::

        result = conetool.switch([0, 100, 200], store="conetool-out")
        [(p.at, p.test_acc) for p in result.points]
    """
    options = SwitchOptions(
        at=at,
        until=until,
        store=path_argument(store, "--store", "the store directory"),
        ckpts=ckpts,
        spec=spec,
        reference=reference,
        step_regex=step_regex,
        beyond_run=beyond_run,
        device=device,
        threads=threads,
    )
    with limit_threads(threads) as count, distributed.job("switch", device) as job:
        shown = (progress or NullProgress()) if job.is_main else NullProgress()
        return _switch(job, options, count, shown)


def _switch(
    job: distributed.Job, options: SwitchOptions, threads: int, progress: Progress
) -> SwitchResult:
    store, reference = options.store, options.reference
    sweep = job.agree(lambda: _prepare(options))
    dev, T = job.device, sweep.until
    # A rank started with other --at, --until, ... (or seeing other checkpoints) would train
    # other points, or fail to find the checkpoint of a point dealt to it.
    job.same_arguments(_sweep_arguments(sweep, options), "conetool switch")
    # Every rank writes into the store as rank 0 began with it: a rank that opened it after a
    # kernels --overwrite replaced it writes nothing there either.
    target = SwitchStore(store, job.broadcast(sweep.store.opened if job.is_main else None))

    # With several ranks, rank 0 finds the points already done so that only the others are dealt,
    # and hands on the momentum source it found for each of those (its state file is hashed once).
    done: list[SwitchPoint] = []
    todo = list(sweep.points_at)
    sources: dict[int, dict[str, Any] | None] = {}  # the momentum source of each point to do
    if job.is_distributed:
        found = job.agree(lambda: _finished_points(sweep, store) if job.is_main else [])
        done = [p for _, p, _ in found if p is not None]
        todo = [t for t, p, _ in found if p is None]
        sources = {t: source for t, p, source in found if p is None}
    todo, shared = job.broadcast([todo, list(sources.items())] if job.is_main else None)
    sources = {t: source for t, source in shared}

    results: list[SwitchPoint] = list(done)
    # What the sweep says in its two channels (as it comes on rank 0, whose progress is shown;
    # gathered from every rank below). The store's options: said once, not per rank.
    says = Said(progress)
    for note in sweep.notes if job.is_main else []:
        says.note(note)
    for warning in sweep.warnings if job.is_main else []:
        says.warn(warning)
    # what in the recipe trains badly (momentum >= 1), said once before any point is trained
    for concern in recipe_warnings(sweep.spec):
        says.warn(concern)
    # the slow-step warning, one per rank at most: kept apart from says.warnings, since the
    # watch runs only while this list is empty
    warnings: list[str] = []
    # what each point says of its momentum, as it is known; one message per reason kept at the end
    momentum_said = MomentumSaid(says)
    error: ConetoolError | None = None
    replaced = False  # this rank found the store replaced: before a point, or during it
    in_progress: int | None = None  # (during: the point it was training or writing)
    started: list[int] = []  # the points that passed run_point's own check of the store
    bar = job.bar(progress.task("switch points", total=len(sweep.points_at)))
    for point in done:
        bar.advance_here(1, at=point.at, test_acc=f"{point.test_acc:.4f}")
    for t in job.shard(todo, weights=[T - t for t in todo]):
        if job.peer_failed():
            break  # another rank hit an error: stop as a single process would
        try:
            target.check()  # (run_point checks too; found here, the point is not started)
        except StoreReplacedError as exc:
            error, replaced = exc, True
            job.fail()
            break
        try:
            point = run_point(
                sweep.spec,
                sweep.refs[t],
                sweep.ckpts,
                T,
                sweep.data,
                dev,
                target,
                threads,
                progress,
                says,
                warnings,
                training=started.append,
                momentum_said=momentum_said,
                sources=sources,
            )
        except CheckpointError as exc:
            error = _for_switch(exc)
            job.fail()
            break
        except StoreReplacedError as exc:
            # found by run_point's own check (the store replaced since the one above): the
            # point was not started either; found writing its files: it was in progress
            error, replaced = exc, True
            in_progress = t if t in started else None
            job.fail()
            break
        except ConetoolError as exc:
            error = exc
            job.fail()
            break
        results.append(point)
        bar.advance(1, at=t, test_acc=f"{point.test_acc:.4f}")

    momentum_said.withdraw()  # said as they came: the job's one per reason takes their place
    share = {
        "points": [asdict(p) for p in results],
        "notes": says.notes,
        "warned": says.warnings,
        "momentum": [[m.at, m.one, m.many, m.warning] for m in momentum_said.points],
        "warnings": warnings,
        "error": None if error is None else str(error),
        "replaced": replaced,
        "in_progress": in_progress,
    }
    shares = job.gather(share, while_waiting=bar.poll)  # rank 0 shows progress while it waits
    bar.close()
    failures = [(r, other["error"]) for r, other in enumerate(shares) if other["error"]]
    points = sorted(
        (SwitchPoint(**p) for other in shares for p in other["points"]), key=lambda p: p.at
    )
    # each message once (every rank that read a foreign checkpoint warned of it; rank 0 says
    # those only other ranks said), in the job's order (rank 0's first) on every rank; then the
    # momentum messages of every rank's points, one per reason (said only where rank 0 said
    # nothing of it yet): a note where no optimizer state was saved, else a warning
    warned = list(dict.fromkeys(w for other in shares for w in other["warned"]))
    for message in warned:
        if message not in says.warnings:
            says.warn(message)
    says.warnings = warned
    says.notes = list(dict.fromkeys(note for other in shares for note in other["notes"]))
    momentum_said.close([MomentumNote(*m) for other in shares for m in other["momentum"]])
    if replaced:
        # Every rank that found the store replaced has the same message (the first one says it):
        # the points of the whole job not written, and the command that computes them anew.
        lost = sorted(other["in_progress"] for other in shares if other["in_progress"] is not None)
        first = next(r for r, other in enumerate(shares) if other["replaced"])
        said = _replaced_error(target, sweep, options, points, lost, todo)
        error = said if job.rank == first else distributed.PeerFailedError(str(said))
    # one slow-step warning for the whole job: the first rank's that warned
    warnings = next((other["warnings"] for other in shares if other["warnings"]), [])

    def write_all() -> tuple[dict[str, Any] | None, list[Path]]:
        """Rank 0, once every rank is done: the standard model at T and the sweep's files."""
        if not job.is_main or failures:
            return None, []
        try:
            return _write_all()
        except StoreReplacedError as exc:  # every point done: the results are not written
            raise _replaced_error(target, sweep, options, points, [], []) from exc

    def _write_all() -> tuple[dict[str, Any] | None, list[Path]]:
        try:
            ref_result = standard_reference(
                sweep.spec,
                sweep.refs,
                sweep.ckpts,
                T,
                sweep.data,
                dev,
                target,
                reference,
                threads,
                progress,
                says,
                warnings,
            )
        except CheckpointError as exc:
            raise _for_switch(exc) from exc
        left_out: list[str] = []
        gathered = all_points(
            store,
            sweep.spec,
            T,
            points,
            _fingerprint_now(sweep),
            left_out,
            _source_now(sweep),
        )
        for message in left_out:
            says.warn(message)
        return ref_result, write_sweep(target, gathered, ref_result, T)

    ref_result, files = job.agree(write_all)  # the other ranks wait for rank 0's files
    if error is not None:
        if str(error) in [message for rank, message in failures if rank < job.rank]:
            raise distributed.PeerFailedError(str(error)) from error  # said by that rank
        raise error
    if failures:
        rank, message = failures[0]
        raise distributed.PeerFailedError(f"rank {rank} failed: {message}")
    return SwitchResult(store, T, points, ref_result, files, says.notes, says.warnings + warnings)


def _replaced_error(
    target: SwitchStore,
    sweep: _Sweep,
    options: SwitchOptions,
    points: list[SwitchPoint],
    in_progress: list[int],
    todo: list[int],
) -> StoreReplacedError:
    """The sweep's error when its store was replaced, naming the points not written (those
    ``in_progress`` on the ranks that found it, those of ``todo`` not started) and those that
    went with the old store (``points``, done), and the command that computes the sweep in the
    new store: every point of it, since the new store has none."""
    done = {p.at for p in points}
    waiting = [t for t in todo if t not in done and t not in in_progress]

    def steps(label: str, ats: list[int]) -> str:
        return f"the {label}{'s' if len(ats) > 1 else ''} at t = {', '.join(map(str, ats))}"

    parts = []
    if in_progress:
        parts.append(f"{steps('point', in_progress)} (in progress)")
    if waiting:
        parts.append(f"{steps('point', waiting)} (not started)")
    if parts:
        lost = (
            " and ".join(parts)
            + f" {'are' if len(in_progress + waiting) > 1 else 'is'} not written"
        )
    else:
        files = [paths.switch_results_csv, paths.switch_results_json, paths.switch_png]
        if choice(Reference, options.reference, "--reference") is Reference.train:
            files.insert(0, paths.switch_reference)
        names = [f(target.root).name for f in files]
        lost = f"{', '.join(names[:-1])} and {names[-1]} are not written"
    if done:
        lost += f", and {steps('point', sorted(done))} went with the old store"
    return target.replaced_error(lost, _rerun_command(sweep, options), options.ckpts is not None)


def _rerun_command(sweep: _Sweep, options: SwitchOptions) -> str:
    """The ``conetool switch`` command of this sweep: its points, T, store and the flags given
    (``--device`` and ``--threads`` too; a spec given as a :class:`Spec` object, which names no
    file, as ``--spec FILE`` and a note on writing it)."""
    parts = ["conetool switch --at", ",".join(map(str, sweep.points_at))]
    if options.until is not None:
        parts += ["--until", str(sweep.until)]
    if options.beyond_run:
        parts.append("--beyond-run")
    parts += ["--store", shlex.quote(str(options.store))]
    if options.ckpts is not None:
        parts += ["--ckpts", shlex.quote(str(sweep.ckpts))]
    if isinstance(options.spec, (str, Path)):
        parts += ["--spec", shlex.quote(str(options.spec))]
    elif options.spec is not None:
        parts += ["--spec", "FILE"]  # a Spec object: no file to name (said below)
    reference = choice(Reference, options.reference, "--reference").value
    if reference != Reference.checkpoint.value:
        parts += ["--reference", reference]
    if options.step_regex is not None:
        parts += ["--step-regex", shlex.quote(options.step_regex)]
    if str(options.device).strip().lower() != "auto":
        parts += ["--device", shlex.quote(str(options.device))]
    threads = parse_threads(options.threads)  # a count; None for "auto" and None, the default
    if threads is not None:
        parts += ["--threads", str(threads)]
    command = " ".join(parts)
    if isinstance(options.spec, Spec):
        command += (
            " (FILE: the spec this sweep was given as a Spec object, which names no file; "
            "conetool.spec.save_spec(spec, FILE) writes it)"
        )
    return command


def _sweep_arguments(sweep: _Sweep, options: SwitchOptions) -> dict[str, str | None]:
    """The resolved sweep every rank of a job must share, as text keyed by flag."""
    return {
        "--at": ",".join(map(str, sweep.points_at)),
        "--until": str(sweep.until),
        "--store": str(options.store),
        "--ckpts": str(sweep.ckpts),
        "--spec": f"{sweep.spec.source} ({sweep.spec.hash()})",
        "--reference": options.reference,
        "--beyond-run": str(options.beyond_run) if options.beyond_run else None,
        "(the checkpoints found at the points)": ",".join(map(str, sorted(sweep.refs))),
    }


def _fingerprint_now(sweep: _Sweep) -> Callable[[int], str | None]:
    """The fingerprint of the run's checkpoint of a step now (None without a readable one), for
    telling the points of earlier sweeps whose checkpoint has changed since."""

    def now(at: int) -> str | None:
        ref = sweep.refs.get(at)
        try:
            return None if ref is None else fingerprint(ref)
        except (OSError, ConetoolError):
            return None

    return now


def _source_now(sweep: _Sweep) -> Callable[[int], dict[str, Any] | None]:
    """The optimizer state file a point of a step would take its momentum from now
    (:func:`~conetool.pipeline.switch_momentum_source.momentum_source`; None without a
    checkpoint of that step, or when the file cannot be read), for telling the points of earlier
    sweeps whose momentum's state file has changed since."""

    def now(at: int) -> dict[str, Any] | None:
        ref = sweep.refs.get(at)
        return None if ref is None else momentum_source(sweep.ckpts, ref)

    return now


def _prepare(options: SwitchOptions) -> _Sweep:
    """Check the options; find the checkpoints, the spec and the data (on every rank)."""
    o = options
    until, store, ckpts, spec = o.until, o.store, o.ckpts, o.spec
    step_regex, beyond_run = o.step_regex, o.beyond_run
    points_at = parse_at(o.at)
    if until is not None and not is_count(until):
        raise ConetoolError(
            f"--until {until!r} is not a step. Pass the end step T as a positive whole number "
            "(e.g. --until 2000), or leave it out for the spec's train.steps."
        )
    reference = choice(Reference, o.reference, "--reference").value
    located = _locate(store, ckpts, spec)
    ckpts_dir, spec, manifest = located.ckpts, located.spec, located.manifest
    # What train refuses of the data it trains on, refused here too before anything is written;
    # a sweep begun with the spec (an earlier conetool's points in the store) goes on with it,
    # as train --resume does: its new points stay comparable with those it holds.
    if not sweep_begun(store, spec):
        check_training_data(spec)
    # What kernels recorded: its --step-regex (unless one is given) and where it imported a
    # "pkg.mod:factory" model or data set from; the kernel files carry both, for a store whose
    # manifest is missing or damaged.
    warnings = list(located.warnings)
    recorded = manifest
    if manifest is None:
        recorded = carried_imports(located.carried, spec.hash())
        lost = located.lost or "missing"
        step_regex, regex_note, differ = carried_step_regex(
            store,
            step_regex,
            located.carried,
            spec_hash=spec.hash(),
            manifest_is=lost,
            held=located.held,
        )
        if differ:  # a guess between runs: to check
            warnings.append(f"{_sentence(differ)}. Pass --step-regex to use another")
    else:
        step_regex, regex_note = recorded_step_regex(manifest, step_regex)
    notes = located.notes + use_recorded_imports(recorded, spec)
    notes += [regex_note] if regex_note else []
    T = spec.train.steps if until is None else until
    if T > spec.train.steps and not beyond_run:
        raise ConetoolError(
            f"--until {T} is beyond the standard run: its T is {spec.train.steps} (train.steps "
            f"of {spec.source}), so there is no standard model at step {T} to compare with, and "
            f"the linearized model would train {T - spec.train.steps} steps past the run. Drop "
            f"--until (T = {spec.train.steps}), or pass --beyond-run to train to {T} anyway."
        )
    if T > spec.train.steps and spec.train.schedule == "cosine":
        warnings.append(_cosine_past_the_run(spec, T))
    late = [t for t in points_at if t >= T]
    if late:
        raise ConetoolError(
            f"--at {late[0]} is not before --until {T}: the linearized model is trained from t "
            f"to T, so t must be smaller. Drop it or raise --until (the spec trains to "
            f"{spec.train.steps}; beyond that with --beyond-run)."
        )
    # Only the checkpoints the sweep needs matter: an unusable file elsewhere is left alone
    # (unsaid: the one of a step needed is refused below). What the listing says of the run, as
    # kernels says it (an EMA beside the state dict read, steps that may be Unix times, steps
    # from epoch names, ...), is said once for the sweep.
    ipe = iterations_per_epoch(spec)
    try:
        found = checkpoint_listing(
            ckpts_dir,
            step_regex=step_regex,
            iterations_per_epoch=ipe,
            skip_bad=True,
            warn=warnings.append,
            note=notes.append,
            left_out=lambda message: None,
        ).refs
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
        # The file of step t, if there is one, and why it cannot be used (a file whose step
        # cannot be known is no step's: kernels --skip-bad left it out, and so does switch).
        problem = step_problems(ckpts_dir, t, step_regex=step_regex, iterations_per_epoch=ipe)
        if problem is not None and t == T and t not in points_at:
            raise _for_reference(problem, T, refs, points_at)
        if problem is not None:
            raise _for_switch(problem)
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
    # the batches of the spec's recipe: refused here, not when the first point starts
    steps_per_epoch(len(data.train), spec.train.batch_size, spec_file=spec.source)
    target = SwitchStore.begin(store, manifest)
    return _Sweep(points_at, ckpts_dir, spec, T, refs, data, target, notes, warnings)


def _cosine_past_the_run(spec: Spec, T: int) -> str:
    """The warning of a --beyond-run sweep under the cosine schedule, which holds its end value,
    0, past ``train.steps`` (:func:`conetool.optim.learning_rate`): nothing moves there."""
    steps = spec.train.steps
    return (
        f"--until {T} is beyond train.steps = {steps}, and {spec.source} has train.schedule = "
        f'"cosine", whose learning rate is 0 from step {steps} on (the schedule ends there): '
        f"the linearized model does not move after step {steps}, so each point's result at T "
        f"is its result at step {steps}, after {T - steps} updates at lr 0. Use --until {steps}, "
        "or a spec whose schedule goes on past train.steps (constant or step) to train further"
    )


def _for_switch(exc: CheckpointError) -> CheckpointError:
    """A checkpoint error reworded for ``switch``, which has no --skip-bad: the step is needed,
    so the advice is to fix the file or choose another switch point. (Per-file messages name no
    flag; only the listing's closing advice and its all-skipped error do.)"""
    text = str(exc)
    for said in (SKIP_BAD_ADVICE, "Fix or move these files."):
        text = text.replace(said, "Fix or move these files, or choose another --at step.")
    text = re.sub(r"\s*\(--skip-bad[^)]*\)", "", text)
    return exc if text == str(exc) else CheckpointError(text)


def _for_reference(
    exc: CheckpointError, T: int, refs: dict[int, CheckpointRef], points_at: list[int]
) -> CheckpointError:
    """A checkpoint error at T, which no --at names: it is the standard model the sweep compares
    with (--reference checkpoint), so the advice is the file, --until or --reference train."""
    earlier = [s for s in refs if max(points_at, default=-1) < s < T]
    until = f"--until {max(earlier)}" if earlier else "--until with an earlier step"
    text = str(exc).replace(
        "Fix or move these files.",
        f"The checkpoint of step {T} is the standard model at T that the sweep compares with "
        f"(--reference checkpoint, the default): fix or move these files, end the sweep at an "
        f"earlier checkpoint ({until}), or pass --reference train to continue the standard run "
        f"to step {T} from the last checkpoint before it.",
    )
    return CheckpointError(text)


def _finished_points(
    sweep: _Sweep, store: Path
) -> list[tuple[int, SwitchPoint | None, dict[str, Any] | None]]:
    """For each step t of the sweep, ``(t, point, source)``: the point already in the store for the same spec, T and
    checkpoint whose momentum's state file is unchanged (None: to do), with that state file as
    it is now (:func:`~conetool.pipeline.switch_momentum_source.momentum_source`), which the
    point to do records without hashing it again."""
    found = []
    for t in sweep.points_at:
        source = momentum_source(sweep.ckpts, sweep.refs[t])
        key = point_key(sweep.spec, sweep.until, fingerprint(sweep.refs[t]))
        found.append((t, read_point(store, t, key, source), source))
    return found


@dataclass(frozen=True)
class _Located:
    """Where a sweep's checkpoints and spec come from: ``manifest`` is the store's (None when
    there is none, or none to read), ``lost`` says how a manifest whose records the kernel files
    stand in for is lost (``"missing"``, ``"damaged"``; None otherwise), ``carried`` the kernel
    files' metadata read then (:func:`conetool.store.kernel_file_headers`, read once; empty
    otherwise), ``held`` a damaged manifest's JSON object as read (None: none, or not JSON),
    whose records switch takes where the kernel files agree (the checkpoint directory, the
    selection's step regex: :mod:`conetool.pipeline.remembered`), ``notes`` and ``warnings``
    what switch says of what it took from the store."""

    ckpts: Path
    spec: Spec
    manifest: dict[str, Any] | None
    lost: str | None
    carried: list[dict[str, str]]
    notes: list[str]
    warnings: list[str]
    held: dict[str, Any] | None = None


def _locate(store: Path, ckpts: str | Path | None, spec: Spec | str | Path | None) -> _Located:
    """The checkpoint directory and spec: flags first, then the store's manifest, and for a
    store whose manifest is missing or damaged (one ``kernels`` rebuilds: kernel files without
    it, or an unreadable one in a store) the directory ``kernels`` read as its kernel files
    record it; switch leaves the manifest as it is (``kernels`` owns it)."""
    manifest_path = paths.manifest(store)
    manifest, lost = _store_manifest(store)
    carried = kernel_file_headers(store) if lost is not None else []
    # a damaged manifest's records, taken where the kernel files agree (as kernels keeps them)
    held = manifest_json(store) if lost == "damaged" else None
    notes: list[str] = []
    warnings: list[str] = []
    if ckpts is not None:
        ckpts = path_argument(ckpts, "--ckpts", "the run's checkpoint directory")
    elif manifest is not None:
        ckpts = manifest.get("checkpoints")
        if not isinstance(ckpts, str):
            raise StoreError(
                f"{manifest_path} does not name its checkpoint directory, so it cannot say "
                "where the checkpoints are: pass --ckpts CKPTS (and --spec SPEC unless "
                f"CKPTS/conetool.toml exists), or rebuild it: conetool kernels CKPTS --store "
                f"{store} rebuilds the manifest from the kernel files."
            )
        if not Path(ckpts).exists():  # a directory, or the one file kernels was given
            raise CheckpointError(
                f"the checkpoint directory that kernels read, {ckpts} (recorded in {store}/"
                f"{paths.MANIFEST_NAME}), is not there any more. If the run moved, pass its new "
                "place: --ckpts DIR."
            )
    else:
        # the kernel files of the spec switch runs with decide, when it is given (else the
        # directory's conetool.toml gives it, and the spec most files have decides)
        if spec is not None:
            spec = resolve_spec(Path(store), spec)  # a given spec: the directory plays no part
        ckpts, differ, held_it = _carried_checkpoints(
            store, lost, carried, None if spec is None else spec.hash(), held
        )
        where = (
            f"recorded in {store}'s damaged {paths.MANIFEST_NAME}, the one its kernel files were "
            "computed from ("
            if held_it
            else f"recorded by conetool kernels in the kernel files of {store} (its "
            f"{paths.MANIFEST_NAME}, which records it, is {lost}; "
        )
        notes.append(f"using the checkpoint directory {ckpts}, {where}pass --ckpts to use another)")
        if differ:  # a guess between runs: to check
            warnings.append(
                f"{_sentence(differ)}. Pass --ckpts CKPTS (and --spec SPEC unless "
                "CKPTS/conetool.toml exists) to use another"
            )
    ckpts_dir = Path(ckpts)
    if lost == "damaged":
        warnings.append(
            f"{manifest_path} is damaged: switch read what it needs from the kernel files of "
            f"{store} (each carries its own record) and left it as it is; conetool kernels "
            f"{ckpts_dir} --store {store} rebuilds it from them (the other commands that read "
            "the store refuse it until then)"
        )
    recorded_spec = manifest.get("spec") if manifest is not None else None
    if spec is None and isinstance(recorded_spec, dict) and not paths.spec(ckpts_dir).is_file():
        spec = spec_from_dict(recorded_spec, source=f"{manifest_path} (spec)")
    return _Located(
        ckpts_dir, resolve_spec(ckpts_dir, spec), manifest, lost, carried, notes, warnings, held
    )


def _store_manifest(store: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, lost)``: the store's manifest as read, or None; ``lost`` is ``"missing"``
    for kernel files without one (deleted) and ``"damaged"`` for one that cannot be read or is
    not whole, in a store: those ``kernels`` rebuilds from the kernel files
    (:func:`conetool.store.rebuilds_manifest`), whose records switch reads instead; else None
    (no store there yet). Another tool's file, or a newer conetool's manifest, is refused with
    its reason, as ``kernels`` refuses it."""
    path = paths.manifest(store)
    if not path.is_file():
        return None, "missing" if rebuilds_manifest(store) else None
    try:
        return read_manifest(path), None
    except StoreError:
        if not rebuilds_manifest(store):
            raise
        return None, "damaged"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _carried_checkpoints(
    store: Path,
    lost: str | None,
    carried: list[dict[str, str]],
    spec_hash: str | None,
    held: dict[str, Any] | None = None,
) -> tuple[str, str | None, bool]:
    """``(directory, disagreement, held_it)``: the checkpoint directory ``kernels`` read, as the
    kernel files of ``store`` record it (their metadata ``carried``, those of the spec
    ``spec_hash`` first when it is given: :func:`~conetool.pipeline.remembered.carried_directory`;
    its manifest is ``lost``: missing, damaged, or None for no store there yet), or as its
    damaged manifest's JSON object ``held`` still records it where they agree (``held_it``),
    when it is still there, and which files decided it when those of another spec record
    another; else the error saying what to pass."""
    if lost is None:
        raise StoreError(
            f"store {store} has no {paths.MANIFEST_NAME} to say where the checkpoints are. "
            "Pass --ckpts CKPTS (and --spec SPEC unless CKPTS/conetool.toml exists), or run "
            f"conetool kernels CKPTS --store {store} first."
        )
    recorded, differ, held_it = carried_directory(store, carried, spec_hash, held)
    said = f"store {store}'s {paths.MANIFEST_NAME}, which says where the checkpoints are, is {lost}"
    rebuild = f"conetool kernels CKPTS --store {store} rebuilds the manifest from the kernel files"
    if recorded is None:
        raise StoreError(
            f"{said}, and no kernel file of it records where they are. Pass --ckpts CKPTS (and "
            f"--spec SPEC unless CKPTS/conetool.toml exists); {rebuild}."
        )
    if not Path(recorded).exists():
        raise CheckpointError(
            f"{said}, and the checkpoint directory its kernel files record (the one conetool "
            f"kernels read), {recorded}, is not there any more. If the run moved, pass its new "
            f"place: --ckpts CKPTS (and --spec SPEC unless CKPTS/conetool.toml exists); "
            f"{rebuild}." + (f" ({_sentence(differ)}.)" if differ else "")
        )
    return recorded, differ, held_it
