"""``conetool switch``: train normally to step t, then the linearized model from t to T (Fig. 2).

For each switch point t the checkpoint of step t is loaded, linearized around its weights
(:class:`conetool.linearize.LinearizedModel`: BatchNorm in eval mode with the running statistics
of step t, dropout off) and trained with the spec's recipe from global step t to T: the same
optimizer and hyperparameters, the learning rate of the schedule at each global step, and the very
batches (and augmentations) the standard run used from t on (:mod:`conetool.loop`). Momentum starts
from the optimizer state saved beside the checkpoint when there is one, else from the one inside
the checkpoint file when it verifiably is the spec's optimizer's
(:mod:`conetool.checkpoint_optimizer`), else from zero; only a saved state's buffers are taken,
never its hyperparameters (a warning names those saved otherwise than the spec's).

Each point's result is written as soon as it is done (``STORE/switch/at_XXXXXX.json`` and
``.csv``), so a rerun skips finished points and an interrupted sweep loses only the point in
progress; a point's record keeps what it said of its momentum, which a rerun reusing it says
again, and ``results.json`` what the sweep said (for ``conetool report``). A point records the
optimizer state file beside its checkpoint that its momentum came from (or none), and a rerun
computes again a point whose file was added, removed or changed since.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import distributed, paths
from ..checkpoints import DtypeWarnings, checkpoint_metadata, fingerprint
from ..choices import Reference, choice, path_argument
from ..errors import CheckpointError, ConetoolError, StoreReplacedError
from ..library_call import library_call
from ..progress import NullProgress, Progress, Said
from ..spec import Spec, recipe_warnings
from ..threads import limit_threads
from .kept_files import file_states, unchanged
from .switch_finished_points import (
    SwitchPoint,
    all_points,
)
from .switch_momentum_notes import MomentumNote, MomentumSaid, momentum_notes
from .switch_momentum_source import momentum_source
from .switch_options import SwitchOptions, parse_at
from .switch_other_sweeps import other_sweeps_replaced
from .switch_points import finished_point, run_point, said_again, said_if_foreign
from .switch_prepare import Sweep, for_switch, prepare_sweep
from .switch_recipe import defaults_warning, is_foreign_run
from .switch_reference import reference_step, standard_reference
from .switch_replaced import replaced_error, rerun_command
from .switch_results import write_sweep
from .switch_store import SwitchStore

__all__ = ["SwitchOptions", "SwitchResult", "parse_at", "switch"]


@dataclass(frozen=True)
class SwitchResult:
    """A whole sweep.

    Attributes:
        store: the store directory the sweep wrote into.
        until: T, the step every point is trained to.
        points: one :class:`~conetool.pipeline.switch_finished_points.SwitchPoint` per step of
            ``at``, ascending.
        reference: the standard model at T, ``{"step": T, "test_acc": ..., "test_loss": ...,
            "source": ...}``: ``test_acc`` a fraction in ``[0, 1]``, ``test_loss`` the mean
            cross-entropy on the test split, ``source`` ``"checkpoint"`` (the run's checkpoint
            of T) or ``"trained from step s"`` (``reference="train"``). ``None`` when the run
            has no checkpoint of T and ``reference="checkpoint"``, and on torchrun ranks other
            than 0.
        files: the files the sweep wrote, ``switch/results.csv``, ``switch/results.json`` and
            ``switch/switch.png`` in the store (every finished point of the spec and T);
            ``[]`` on torchrun ranks other than 0.
        kept: those of ``files`` left as they were, switch.png when it already held the figure.
        notes, warnings: what the sweep said, each message once (below).

    ``notes`` (information: options taken from the store, the checkpoint listing's (torch.save
    files, copies not read, ...), momentum starting at zero where no optimizer state was saved,
    the standard run that ``reference="train"`` trains), and ``warnings`` (a possible
    loss or a guess to check: what in the spec's recipe trains badly; what the checkpoint
    listing says of the run, as ``kernels`` says it (an EMA beside the state dict read, steps
    that may be Unix times, ...); checkpoints not written by
    ``conetool train``; an optimizer state not used, or saved with other hyperparameters
    than the spec's; points and the ``reference="train"`` standard model of another sweep
    (another T or spec) that this one overwrites, said before any point trains (with "stop now")
    and kept here as what was replaced; no standard model at T; a T past the run under the
    cosine schedule, whose learning rate is 0 there; earlier points left out of results.csv, and
    what those kept in it said of their momentum (from their records); the
    training steps implausibly slow, linearized or the standard run that ``reference="train"``
    continues), each said once per sweep, as ``progress`` showed it. A momentum message is
    said once, before the first point it applies to trains (naming that point; a point reused
    from the store says what its record keeps, as it said it when computed), and kept here
    as one message for all the points it applies to (``t=0, 100 (2 points): ...``), which
    ``progress`` does not say again (``--quiet``, which showed nothing, prints the warnings
    among them at the end); a reason only other torchrun ranks met is said at the end
    (:class:`~conetool.pipeline.switch_momentum_notes.MomentumSaid`)."""

    store: Path
    until: int
    points: list[SwitchPoint]
    reference: dict[str, Any] | None
    files: list[Path]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


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

    Without a ``progress``, a call that raises gives the warnings it said before (those of the
    sweep's preparation among them, which may explain the error) through :func:`warnings.warn`,
    a ``UserWarning`` each, as every library function does (:mod:`conetool.library_call`).

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
        # What the sweep says in its two channels (as it comes on rank 0, whose progress is
        # shown; gathered from every rank in _switch). What the sweep's preparation says (the
        # store's options, a damaged manifest read around, the recipe keys left to defaults, ...)
        # is said as it comes: before its refusal, which it may explain, if it refuses (a caller
        # without a progress, who gets no result then, gets it through Python's warnings module:
        # library_call).
        return _switch(job, options, count, Said(shown))


def _switch(job: distributed.Job, options: SwitchOptions, threads: int, says: Said) -> SwitchResult:
    store, reference = options.store, options.reference
    progress = says.progress
    # rank 0 alone makes the standard model at T: it alone reads its checkpoint before the sweep
    sweep = job.agree(lambda: prepare_sweep(options, read_reference=job.is_main, said=says))
    dev, T = job.device, sweep.until
    # A rank started with other --at, --until, ... (or seeing other checkpoints) would train
    # other points, or fail to find the checkpoint of a point dealt to it.
    job.same_arguments(_sweep_arguments(sweep, options), "conetool switch")
    # Every rank writes into the store as rank 0 began with it: a rank that opened it after a
    # kernels --overwrite replaced it writes nothing there either.
    target = SwitchStore(store, job.broadcast(sweep.store.opened if job.is_main else None))

    # With several ranks, rank 0 finds the points already done so that only the others are dealt,
    # and hands on the momentum source it found for those of the others it looked at (each
    # checkpoint and state file is hashed once per run, as in a single process, but where the
    # store's point needs its hash to tell: then the point's load hashes it again, and the point
    # records the bytes it loaded).
    done: list[SwitchPoint] = []
    todo = list(sweep.points_at)
    sources: dict[int, dict[str, Any] | None] = {}  # the momentum source of points to do, by step
    if job.is_distributed:
        nothing: _Found = ([], [], {})
        done, todo, sources = job.agree(
            lambda: _finished_points(sweep, store) if job.is_main else nothing
        )
    todo, shared = job.broadcast([todo, list(sources.items())] if job.is_main else None)
    sources = {t: source for t, source in shared}

    results: list[SwitchPoint] = list(done)
    # points (and the reference) of another T or spec that this sweep would overwrite, said
    # before any is; kept for the end worded as done (--quiet prints it after the points)
    if job.is_main:
        trains = choice(Reference, reference, "--reference") is Reference.train
        trains_reference = trains and reference_step("train", T, sweep.refs) != T
        replacing = other_sweeps_replaced(
            store, sweep.spec, T, todo, trains_reference, _own_store_command(sweep, options)
        )
        if replacing is not None:
            says.warn(replacing.after, as_it_comes=replacing.now)
    # what in the recipe trains badly (momentum >= 1), said once before any point is trained
    for concern in recipe_warnings(sweep.spec):
        says.warn(concern)
    # a run conetool train did not write: the recipe keys its spec file left to conetool's
    # defaults, which the sweep replays as the run's (its conetool.toml, if any, writes them all)
    if job.is_main:
        defaulted = defaults_warning(
            sweep.spec, until_given=options.until is not None, read_from=sweep.kernels_spec
        )
        if defaulted is not None and is_foreign_run(sweep.refs[t] for t in sweep.points_at):
            says.warn(defaulted)
    # checkpoints not written by conetool train, said as a single process says it when it reads
    # back a finished point (rank 0 found these itself: no rank's run_point sees them)
    for point in done:
        said_if_foreign(checkpoint_metadata(sweep.refs[point.at]), says)
    # the slow-step warning, one per rank at most: kept apart from says.warnings, since the
    # watch runs only while this list is empty
    warnings: list[str] = []
    # what each point says of its momentum, as it is known; one message per reason kept at the end
    momentum_said = MomentumSaid(says)
    # what loading says of the checkpoints' dtypes: of the sweep's first such file only
    dtypes_said = DtypeWarnings(says.warn)
    error: ConetoolError | None = None
    replaced = False  # this rank found the store replaced: before a point, or during it
    in_progress: int | None = None  # (during: the point it was training or writing)
    started: list[int] = []  # the points that passed run_point's own check of the store
    bar = job.bar(progress.task("switch points", total=len(sweep.points_at)))
    for point in done:
        said_again(point, momentum_said)  # what it said of its momentum when computed
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
                dtypes_said=dtypes_said,
            )
        except CheckpointError as exc:
            error = for_switch(exc)
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
        said = replaced_error(target, sweep, options, points, lost, todo)
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
            raise replaced_error(target, sweep, options, points, [], []) from exc

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
                read=sweep.reference,  # read before the sweep: not read again
                dtypes_said=dtypes_said,
            )
        except CheckpointError as exc:
            raise for_switch(exc) from exc
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
        # results.csv's points of earlier sweeps (not in this one's --at): what they said of
        # their momentum, from their records, so that results.json (the report) has it too
        earlier(p for p in gathered if p.at not in sweep.points_at)
        # for the report: all but what it said of a lost manifest, whole again by then
        said = {
            key: [m for m in messages if m not in sweep.of_lost_manifest]
            for key, messages in (("warnings", says.warnings + warnings), ("notes", says.notes))
        }
        return ref_result, write_sweep(target, gathered, ref_result, T, **said)

    def earlier(others: Iterable[SwitchPoint]) -> None:
        """Say what the points of earlier sweeps said of their momentum, one message per reason,
        warnings apart (as :class:`MomentumSaid` keeps this sweep's)."""
        notes = [
            MomentumNote(p.at, p.momentum_said["one"], p.momentum_said["many"], w)
            for p in others
            if p.momentum_said is not None
            for w in [bool(p.momentum_said["warning"])]
        ]
        for warning, say in ((True, says.warn), (False, says.note)):
            for message in momentum_notes([n for n in notes if n.warning == warning]):
                say(f"earlier sweeps' points in results.csv: {message}")

    before = file_states([paths.switch_png(target.root)])  # drawn only when it would differ
    ref_result, files = job.agree(write_all)  # the other ranks wait for rank 0's files
    if error is not None:
        if str(error) in [message for rank, message in failures if rank < job.rank]:
            raise distributed.PeerFailedError(str(error)) from error  # said by that rank
        raise error
    if failures:
        rank, message = failures[0]
        raise distributed.PeerFailedError(f"rank {rank} failed: {message}")
    return SwitchResult(
        store,
        T,
        points,
        ref_result,
        files,
        says.notes,
        says.warnings + warnings,
        kept=unchanged(files, before),
    )


def _own_store_command(sweep: Sweep, options: SwitchOptions) -> str:
    """This sweep's ``conetool switch`` command into a store of its own (``OTHER_STORE``, which
    has no manifest: the checkpoint directory and the spec file named)."""
    spec = options.spec
    source = Path(sweep.spec.source)
    if spec is None and source.is_file() and source != paths.spec(sweep.ckpts):
        spec = sweep.spec.source
    own = replace(options, store=Path("OTHER_STORE"), ckpts=sweep.ckpts, spec=spec)
    return rerun_command(sweep, own)


def _sweep_arguments(sweep: Sweep, options: SwitchOptions) -> dict[str, str | None]:
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


def _fingerprint_now(sweep: Sweep) -> Callable[[int], str | None]:
    """The fingerprint of the run's checkpoint of a step now (None without a readable one), for
    telling the points of earlier sweeps whose checkpoint has changed since."""

    def now(at: int) -> str | None:
        ref = sweep.refs.get(at)
        try:
            return None if ref is None else fingerprint(ref)
        except (OSError, ConetoolError):
            return None

    return now


def _source_now(sweep: Sweep) -> Callable[[int], dict[str, Any] | None]:
    """The optimizer state file a point of a step would take its momentum from now
    (:func:`~conetool.pipeline.switch_momentum_source.momentum_source`; None without a
    checkpoint of that step, or when the file cannot be read), for telling the points of earlier
    sweeps whose momentum's state file has changed since."""

    def now(at: int) -> dict[str, Any] | None:
        ref = sweep.refs.get(at)
        return None if ref is None else momentum_source(sweep.ckpts, ref)

    return now


#: rank 0's look for finished points: those done, the steps to do, the momentum sources found
_Found = tuple[list[SwitchPoint], list[int], dict[int, dict[str, Any] | None]]


def _finished_points(sweep: Sweep, store: Path) -> _Found:
    """The points of the sweep already in the store for the same spec, T and checkpoint whose
    momentum's state file is unchanged (reused), the steps of the others (to do), and by step
    the momentum source (:func:`~conetool.pipeline.switch_momentum_source.momentum_source`)
    found for those of them looked at, with which such a point tells whether the store's is
    current without hashing its state file again (a point computed records the hash of the
    state bytes its own load read, not this one: a file replaced in between is recorded as
    loaded).

    A file is hashed here only where its hash decides: where the store holds a point of the
    step for this spec and T, computed from a checkpoint of the size the step's has now
    (:func:`~conetool.pipeline.switch_finished_points.payload_to_check`), its state file, then,
    while that is unchanged, its checkpoint. Every other point is to do without a read here:
    its load hashes its checkpoint, and the point records the hash of the bytes it trained from
    (not one taken earlier, which would miss a file replaced in between). So a checkpoint is
    hashed once per run, but where it was replaced by one of the same size since its point was
    computed (a run trained again into the same directory): here, finding the point to do, and
    by its load."""
    done: list[SwitchPoint] = []
    todo: list[int] = []
    sources: dict[int, dict[str, Any] | None] = {}
    for t in sweep.points_at:
        point = finished_point(sweep.spec, sweep.refs[t], sweep.ckpts, sweep.until, store, sources)
        if point is not None:
            done.append(point)
            sources.pop(t, None)  # (kept for the points to do only)
        else:
            todo.append(t)
    return done, todo, sources
