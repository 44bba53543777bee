"""The per-checkpoint loop of ``conetool kernels``: load each checkpoint, compute its kernels and
write them into the store, with the next checkpoint read and the last kernel written in background
threads (:mod:`conetool.pipeline.prefetch`); and the values the loop is handed and hands back.

:mod:`conetool.pipeline.run_kernels` plans the run (spec, checkpoints, probe and evaluation sets,
the store) and calls :func:`compute_all`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed, paths
from ..checkpoints import (
    CheckpointRef,
    DtypeWarnings,
    apply_checkpoint,
    read_checkpoint,
)
from ..checkpoints.records import LeftCopy
from ..checkpoints.selection import is_selected
from ..data import DataBundle
from ..errors import ConetoolError, KeyMismatchError
from ..heap import kept_freed_memory
from ..layer_groups import group_kernels, groups_hash
from ..ntk import empirical_ntk
from ..ntk_memo import EngineMemo
from ..ntk_schedule import kept_panel_memory
from ..peak_memory import peak_resident_memory
from ..probe import Probe
from ..progress import CountBar, Progress
from ..spec import Spec
from ..store import StepRecord, Store, StoreIdentity, kernel_norm
from .kernels_failures import (
    MODEL,
    Failure,
    copies_hint,
    every_checkpoint_failed,
    fault_of,
    grouped_failures,
    same_problem,
    skipped_warning,
    stop_message,
)
from .prefetch import ReadAhead, Writer
from .retrained_run import retrained_warning

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class KernelsResult:
    """What :func:`kernels` did. Under torchrun it covers the whole job (every rank's steps).

    Attributes:
        store: the store directory.
        computed: the steps whose kernel this call computed, ascending.
        skipped: the steps already stored (checkpoint unchanged), not recomputed (the table's
            "stored before"), ascending; it includes those that got only a missing eval or
            layer kernel (``eval_computed``, ``layer_computed``).
        failed: step -> its error message, for each step whose checkpoint could not be read or
            whose kernel could not be computed (``skip_bad`` only; without it the call raises).
        kernel_shape: the shape of the probe kernel: ``(n, n)`` for ``kind`` ``"trace"`` and
            ``"sum"``, ``(n, c, n, c)`` for ``"full"`` (``n`` the probe size, ``c`` the classes);
            with nothing computed, that of the store's last kernel; ``()`` when the store holds
            none.
        seconds_per_kernel: mean wall-clock seconds per computed kernel, from taking its
            checkpoint (read ahead in the background) to the kernel in memory, its eval and
            layer kernels included, its files' writing not; ``None`` when none was computed.
        peak_memory: bytes. On a GPU, the most this call's kernels allocated on it at once
            (``torch.cuda.max_memory_allocated``, reset when the computation starts); on the
            CPU, the peak resident memory of the whole Python process since it started
            (``getrusage``: it includes what came before the call). Under torchrun the largest
            of the ranks'.
        device: where the kernels were computed: ``"cpu"``, ``"cuda:0"``, ...; under torchrun
            the device type and the rank count, ``"cuda x8"``.
        warnings: what may have lost something or was guessed (said as ``warning: ...``, again
            at the end with ``--quiet``).
        ranks: the processes of the job (torchrun's world size; 1 without it).
        eval_computed: the steps whose eval kernel K(eval, probe) this call computed
            (``eval_size``), ascending.
        eval_size: the evaluation set's size ``m`` (given, or recorded by the store); ``None``
            when the store has no evaluation set.
        layer_computed: the steps whose per-layer kernels this call computed (``per_layer``),
            ascending.
        layer_groups: the parameter groups' names (``per_layer``/``groups``, given or recorded
            by the store); ``None`` without per-layer kernels.
        left_out: a file that listing the directory refused (no step, damaged, a duplicate step,
            ...; with ``skip_bad``, the "left out" warnings) -> why: it has no step in
            ``computed``, ``skipped`` or ``failed``. The file is the Hugging Face folder, the
            shard index or the checkpoint file.
        notes: what was said for information only (``note: ...``; a rerun keeping the store's
            options, torch.save files, copies).
        failed_lines: ``failed`` said once per distinct problem: ``step 5 (file): why``, or for
            steps whose problems differ only by their file ``steps 0, 5, 10 (files): each file
            ...``.
    """

    store: Path
    computed: list[int]
    skipped: list[int]
    failed: dict[int, str]
    kernel_shape: tuple[int, ...]
    seconds_per_kernel: float | None
    peak_memory: int
    device: str
    warnings: list[str] = field(default_factory=list)
    ranks: int = 1
    eval_computed: list[int] = field(default_factory=list)
    eval_size: int | None = None
    layer_computed: list[int] = field(default_factory=list)
    layer_groups: list[str] | None = None
    left_out: dict[Path, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed_lines: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class KernelsPlan:
    spec: Spec
    refs: list[CheckpointRef]
    data: DataBundle
    probe: Probe
    identity: StoreIdentity
    step_regex: str | None  # given, or recorded by the store's last run on this directory
    eval_set: Probe | None = None  # --eval-size: the held-out set of the kernel machine
    # --per-layer: the parameter groups (group -> parameter names) and the --groups patterns
    layer_groups: dict[str, list[str]] | None = None
    layer_patterns: dict[str, str] | None = None
    # --steps, parsed: (first, last), both included, either None for an open end
    steps: tuple[int | None, int | None] | None = None
    # the store's manifest.json as the plan read it (None: none, or unreadable), --overwrite or
    # not: mixed_runs.another_run checks it without reading it again
    manifest: dict[str, Any] | None = None
    # step -> the files the listing left out as its copies (final.pt storing the step, a
    # Trainer's final model), named when the step's own file fails as it is read (--skip-bad)
    copies: Mapping[int, Sequence[LeftCopy]] = field(default_factory=dict)


@dataclass(frozen=True)
class KernelsOptions:
    """What :func:`kernels` was asked for, collected once and handed down as one value (to every
    torchrun rank's worker, the plan and the computation); the fields are its arguments."""

    ckpts: Path
    spec: Spec | str | Path | None
    store: str | Path
    probe_size: int | None
    kind: str
    dtype: str
    max_memory: int | str | None
    method: str
    steps: str | None
    every: int | None
    step_regex: str | None
    skip_bad: bool
    overwrite: bool
    eval_size: int | None = None
    per_layer: bool = False
    groups: str | Mapping[str, str] | None = None


def compute_all(
    job: distributed.Job,
    plan: KernelsPlan,
    out: Store,
    model: nn.Module,
    options: KernelsOptions,
    progress: Progress,
    warnings: list[str],
    settled: list[bool] | None = None,
    clear_first: Callable[[], None] | None = None,
) -> KernelsResult:
    """Compute every step of ``plan`` that ``out`` lacks (this rank's share of them) and hand
    back the whole job's :class:`KernelsResult`; an error that stops the run is raised once the
    ranks have met, by the first rank that hit it (the others raise
    :class:`~conetool.distributed.PeerFailedError`). ``settled`` (one flag) is set to True once
    every rank has met after its last write: from then on no rank writes a kernel, so rank 0 may
    remove a store that holds none (:func:`conetool.store_clearing.remove_unused`).

    ``clear_first``, for an ``out`` whose clearing is deferred (``--overwrite`` of a store that
    holds something: :attr:`conetool.store.Store.clearing_deferred`), clears the old store and
    writes the new one's manifest, probe and evaluation sets: it is called once the first kernel
    is computed, before its files are written (or at the end of a run that computed none and
    failed in nothing), so a run that stops before that leaves the old store as it was, and its
    error says so. Under torchrun rank 0 alone is given it, and calls it once every rank has
    computed its first kernel or ended its share without one, none failing (:meth:`Job.settle
    <conetool.distributed.Job.settle>`); the other ranks (their ``out`` joined with rank 0's new
    manifest in memory) write nothing until then, and join the new store after it."""
    kind, dtype, max_memory = options.kind, options.dtype, options.max_memory
    method, skip_bad = options.method, options.skip_bad
    dev = job.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    # Rank 0 decides what is missing (cheap: size and modification time, and the kernel file's
    # header against its record); the ranks share it.
    evaluated = plan.eval_set
    eval_hash = evaluated.hash if evaluated is not None else ""
    layers = plan.layer_groups
    layer_hash = groups_hash(layers) if layers is not None else ""
    recorded_dir = (plan.manifest or {}).get("checkpoints")
    dirs = (Path(recorded_dir), options.ckpts.resolve()) if isinstance(recorded_dir, str) else None
    todo = job.broadcast(
        [
            ref.step
            for ref in plan.refs
            if not _unchanged(out, ref, warnings, progress, dirs)
            or (evaluated is not None and not _eval_unchanged(out, ref.step, eval_hash))
            or (layers is not None and not _layers_unchanged(out, ref.step, layer_hash))
        ]
        if job.is_main
        else None
    )
    pending = set(todo)
    unchanged = [ref.step for ref in plan.refs if ref.step not in pending]
    # the files that give each step now, for the records of those skipped (read or not) to name
    # them: a run moved or copied with its store, a copy read in place of a file gone
    now_files = {ref.step: [str(p.resolve()) for p in ref.paths] for ref in plan.refs}
    before = _fingerprints(out) if job.is_main else {}
    by_step = {ref.step: ref for ref in plan.refs}

    computed: list[int] = []
    eval_computed: list[int] = []
    layer_computed: list[int] = []
    skipped: list[int] = []
    failed: dict[int, str] = {}
    seconds: list[float] = []
    shape: tuple[int, ...] = ()
    # the error, what happened, the fix, and for the model's fault (every rank's steps fail
    # alike) the problem with the step's file left out: the ranks that hit it too stay silent
    error: tuple[ConetoolError, str, str, str | None] | None = None

    def warn(message: str) -> None:
        warnings.append(message)
        progress.log(f"warning: {message}")

    dtypes_said = DtypeWarnings(warn)  # of the first checkpoint that has something to say

    memo = EngineMemo()  # the checks and the engine's set-up run once per run, not per checkpoint
    said_of_model: set[str] = set()

    def warn_of_model(message: str) -> None:
        """What the engine says of the model (trainable parameters no gradient reaches): once
        per run, though the probe and evaluation kernels' calls each find it."""
        if message not in said_of_model:
            said_of_model.add(message)
            warnings.append(message)
            progress.log(f"warning: {message}")

    def ntk(
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        on_block: Callable[[int, int], None] | None = None,
        whole: bool = True,
    ) -> torch.Tensor:
        """The run's kernel of ``x1`` (with ``x2``: the cross kernel) on the current weights.
        ``whole``: False for a group's kernel (--per-layer), whose call sees the other groups'
        parameters frozen, so it says nothing of the model (the whole model's calls do)."""
        return empirical_ntk(
            model,
            x1,
            x2,
            kind=kind,
            max_memory=max_memory,
            method=method,
            device=dev,
            dtype=DTYPES[dtype],
            on_block=on_block,
            memo=memo,
            warn=warn_of_model if whole else _silent,
        )

    first_said: dict[str, int] = {}  # a --skip-bad problem (its file aside) -> its first step
    files: dict[int, str] = {}  # a failed step -> its file
    mismatched: list[int] = []  # the failed steps whose keys or shapes do not fit the model
    fitted: list[CheckpointRef] = []  # the last checkpoint loaded into the model, once there is one

    def give_up(ref: CheckpointRef, exc: ConetoolError) -> bool:
        """A step that failed: True to stop (the error is raised once the ranks have met), False
        to go on without it (--skip-bad). An error of the model or the options (a module
        torch.func cannot vmap, examples that interact, a budget too small, a model that does
        not fit a second checkpoint either) is no checkpoint's: every step would fail alike, so
        it stops the run even with --skip-bad (.kernels_failures)."""
        nonlocal error
        fault = fault_of(exc, model, ref, plan.refs, fitted[-1] if fitted else None)
        if fault.whose == MODEL or not skip_bad:
            alike = same_problem(ref.file, str(exc)) if fault.whose == MODEL else None
            error = (exc, *stop_message(exc, ref, fault, plan.spec), alike)
            job.fail()
            return True
        hint = copies_hint(ref, plan.copies.get(ref.step, ()))
        failed[ref.step] = str(exc) + hint
        files[ref.step] = str(ref.file)
        if isinstance(exc, KeyMismatchError):
            mismatched.append(ref.step)
        progress.log(f"warning: {skipped_warning(exc, ref, first_said)}{hint}")
        bar.advance(1, step=ref.step)
        return False

    # Under torchrun every rank meets at the deferred clearing once (Job.settle), at its first
    # kernel or the end of its share, whichever comes first.
    unsettled = [job.is_distributed and out.clearing_deferred]

    def clear_once(ready: str = "kernel") -> bool:
        """The deferred clearing, before the run's first write (none: nothing to do); False when
        the run stops with the old store kept. One process clears at its first kernel. Under
        torchrun each rank says it is ``ready`` (``"kernel"``: it computed its first;
        ``"none"``: its share ended without one; ``"failed"``), and rank 0 clears once every
        rank has, when none failed and one has a kernel; the others then join the new store."""
        if not unsettled[0]:
            if clear_first is not None and out.clearing_deferred and not job.is_distributed:
                clear_first()
            return True
        unsettled[0] = False

        def decide(readiness: list[str]) -> dict[str, Any]:
            if "failed" in readiness or "kernel" not in readiness or clear_first is None:
                return {"cleared": False}
            clear_first()
            return {"cleared": True, "carried": out.carried()}

        decision = job.settle(ready, decide, while_waiting=bar.poll)
        if decision["cleared"] and not job.is_main:
            out.join_cleared()
            out.carry(decision["carried"])
        return bool(decision["cleared"])

    def save(
        ref: CheckpointRef,
        fingerprint: str,
        record: StepRecord,
        kernel: torch.Tensor,
        cross: torch.Tensor | None,
        per_group: dict[str, torch.Tensor] | None,
    ) -> None:
        """One step's files, in the store's order (run by the background writer)."""
        out.write_kernel(record, kernel)
        if cross is not None:  # after the kernel: a kill between the two loses the eval kernel only
            out.write_eval_kernel(ref.step, cross, eval_hash, fingerprint)
        if per_group is not None and layers is not None:  # after the kernel, like the eval kernel
            out.write_layer_kernels(ref.step, per_group, layers, layer_hash, fingerprint)

    bar = job.bar(progress.task("kernels", total=len(plan.refs)))
    for step in unchanged:
        bar.advance_here(1, step=step)
    # Overlap (.prefetch): the next checkpoint is read in a background thread while this step's
    # kernel is computed, and a step's files are written in another while the next step is
    # computed (one write in flight, in step order), so a run on a GPU waits on the device, not
    # on files. This rank's steps are read in its own order.
    mine = [by_step[step] for step in job.shard(todo)]
    touched: dict[int, int] = {}  # step -> mtime of a checkpoint read and found unchanged
    # Freed memory stays in the process between kernels (.heap): each kernel reuses the last one's,
    # its panel's too (ntk_schedule.kept_panel_memory: on the CPU a panel is one large mapping).
    with (
        kept_freed_memory(),
        kept_panel_memory(),
        ReadAhead(mine, read_checkpoint) as reads,
        Writer() as writer,
    ):
        for ref, take in reads:
            writer.check()  # a write that failed stops the run here, as it did when inline
            if job.peer_failed():
                break  # another rank hit an error: stop as a single process would
            try:
                began = time.perf_counter()
                loaded = take()  # read while the step before was computed; raises its error now
                fingerprint, size, mtime = loaded.fingerprint, loaded.size, loaded.mtime_ns
                current = out.is_current(ref.step, fingerprint) and (
                    out.kernel_file_problem(ref.step) is None
                )
                eval_missing = evaluated is not None and (
                    out.eval_kernel_problem(ref.step, eval_hash, fingerprint) is not None
                )
                layers_missing = layers is not None and (
                    out.layer_kernel_problem(ref.step, layer_hash, fingerprint) is not None
                )
                if current and not eval_missing and not layers_missing:
                    # the same bytes as its stored kernel's (a checkpoint touched or copied):
                    # nothing to compute, so the model is not loaded with it
                    del loaded
                    skipped.append(ref.step)
                    touched[ref.step] = mtime  # read and found unchanged: skipped unread next time
                    bar.advance(1, step=ref.step)
                    continue
                apply_checkpoint(
                    model,
                    loaded,
                    warn=dtypes_said.of(ref),
                    compute=DTYPES[dtype],
                    spec=plan.spec.source,
                )
                fitted[:] = [ref]  # the model fits it: another's key mismatch is that one's
                del loaded  # the model holds the weights: no second state dict kept
                cross = None
                if evaluated is not None and eval_missing:
                    cross = ntk(evaluated.inputs, plan.probe.inputs)
                per_group = None
                if layers is not None and layers_missing:
                    per_group = group_kernels(
                        model, layers, lambda: ntk(plan.probe.inputs, whole=False)
                    )
                kernel = (
                    None
                    if current
                    else ntk(plan.probe.inputs, on_block=_inner_bar(progress, ref.step))
                )
                engine = memo.last_engine  # the probe kernel's: what auto picked for it
            except ConetoolError as exc:
                if give_up(ref, exc):
                    break
                continue
            if kernel is None:  # current: only its eval or layer kernels were missing
                writer.join()  # the step before's files first; a failed write raises as it did
                if not clear_once():
                    break  # a rank failed before the clearing: the old store stays
                try:
                    if cross is not None:
                        out.write_eval_kernel(ref.step, cross, eval_hash, fingerprint)
                        eval_computed.append(ref.step)
                    if per_group is not None and layers is not None:
                        out.write_layer_kernels(
                            ref.step, per_group, layers, layer_hash, fingerprint
                        )
                        layer_computed.append(ref.step)
                except ConetoolError as exc:
                    if give_up(ref, exc):
                        break
                    continue
                skipped.append(ref.step)
                touched[ref.step] = mtime  # read and found unchanged: skipped unread next time
                bar.advance(1, step=ref.step)
                continue
            took = time.perf_counter() - began
            record = StepRecord(
                step=ref.step,
                source=now_files[ref.step],
                size=size,
                fingerprint=fingerprint,
                kernel=paths.kernel_relative(ref.step),
                norm=kernel_norm(kernel),
                seconds=round(took, 4),
                mtime_ns=mtime,  # of the bytes read, not the file's now: it may be rewritten since
                engine=engine,
                device=dev.type,
            )
            # the old store goes only now, the first kernel computed (--overwrite)
            if not clear_once():
                break  # a rank failed before the clearing: the old store stays
            writer.submit(partial(save, ref, fingerprint, record, kernel, cross, per_group))
            if cross is not None:
                eval_computed.append(ref.step)
            if per_group is not None and layers is not None:
                layer_computed.append(ref.step)
            computed.append(ref.step)
            seconds.append(took)
            shape = tuple(kernel.shape)
            bar.advance(1, step=ref.step, per_kernel=f"{took:.2f}s")
    if unsettled[0]:  # this rank's share ended before a kernel (or failed): the others may wait
        clear_once("failed" if error is not None else "none")
    out.refresh_mtimes(touched, {step: now_files[step] for step in unchanged + skipped})
    out.flush()  # the records write_kernel left out of manifest.json (it spaces its writes out)

    share = {
        "computed": computed,
        "eval_computed": eval_computed,
        "layer_computed": layer_computed,
        "skipped": skipped,
        "failed": {str(k): v for k, v in failed.items()},
        "failed_files": {str(k): v for k, v in files.items()},
        "mismatched": mismatched,
        "seconds": seconds,
        "shape": list(shape),
        "peak_memory": _peak_memory(dev),
        "device": str(dev),
        "error": None if error is None else list(error[1:]),
        # whether the store holds a kernel, as this rank knows it (a joined store's manifest
        # as rank 0 last wrote it, this rank's own kernels)
        "held": bool(out.steps()) or bool(computed),
    }
    shares = job.gather(share, while_waiting=bar.poll)  # rank 0 shows progress while it waits
    if settled is not None:
        settled[:] = [True]  # every rank is past its loop, its writes done
    bar.close()
    # Rank 0 records every rank's kernel files in the manifest; the others wait for it.
    job.agree(lambda: out.adopt_kernel_files() if job.is_main and job.is_distributed else None)
    held = any(other["held"] for other in shares)
    # --overwrite's clearing still deferred: the old store was not touched, which errors say
    kept_old = out.clearing_deferred
    if error is not None:
        alike = error[3]
        said = [
            rank
            for rank, other in enumerate(shares[: job.rank])
            if alike is not None and other["error"] is not None and other["error"][2] == alike
        ]
        if said:  # the model's fault, which a rank before this one hit too, says it
            stopped = _stop_text(shares[said[0]]["error"], out.root, held, kept_old)
            raise distributed.PeerFailedError(f"rank {said[0]} failed: {stopped}") from error[0]
        raise type(error[0])(_stop_text(error[1:3], out.root, held, kept_old)) from error[0]
    for rank, other in enumerate(shares):
        if other["error"] is not None:
            stopped = _stop_text(other["error"], out.root, held, kept_old)
            raise distributed.PeerFailedError(f"rank {rank} failed: {stopped}")

    all_seconds = [t for other in shares for t in other["seconds"]]
    all_failed = {int(k): v for other in shares for k, v in other["failed"].items()}
    done = sum(len(other["computed"]) + len(other["skipped"]) for other in shares) + len(unchanged)
    if all_failed and not done:
        failures = _failures(shares, all_failed)
        count = len(out.steps()) if job.is_main else 0
        kept = f"{out.root} keeps the {count} kernel(s) it held before." if count else ""
        if kept_old:
            kept = f"{_removed_nothing(out.root)}."
        failure = every_checkpoint_failed(failures, len(plan.refs), plan.spec, kept)
        if not job.is_main:  # every rank knows it: rank 0 alone says it
            raise distributed.PeerFailedError(f"rank 0 failed: {failure}") from failure
        raise failure
    if job.is_main and out.clearing_deferred and clear_first is not None:
        clear_first()  # a run with nothing to compute replaces the store all the same
    all_computed = sorted(s for other in shares for s in other["computed"])
    if job.is_main:
        present = {ref.step for ref in plan.refs}
        gone = [
            s for s in out.steps() if s not in present and is_selected(s, plan.steps, options.every)
        ]
        after = _fingerprints(out)
        if note := retrained_warning(before, after, all_computed, gone, str(out.root)):
            warnings.append(note)
            progress.log(f"warning: {note}")
    found_shape = next((tuple(o["shape"]) for o in shares if o["shape"]), ())
    devices = [other["device"] for other in shares]
    return KernelsResult(
        store=out.root,
        computed=all_computed,
        skipped=sorted(unchanged + [s for other in shares for s in other["skipped"]]),
        failed=dict(sorted(all_failed.items())),
        failed_lines=grouped_failures(_failures(shares, all_failed)),
        kernel_shape=found_shape or _stored_shape(out),
        seconds_per_kernel=sum(all_seconds) / len(all_seconds) if all_seconds else None,
        peak_memory=max(other["peak_memory"] for other in shares),
        device=devices[0] if len(devices) == 1 else _describe_devices(devices),
        warnings=warnings,
        ranks=job.world_size,
        eval_computed=sorted(s for other in shares for s in other["eval_computed"]),
        eval_size=len(evaluated) if evaluated is not None else None,
        layer_computed=sorted(s for other in shares for s in other["layer_computed"]),
        layer_groups=list(layers) if layers is not None else None,
    )


def _silent(message: str) -> None:
    """A ``warn`` that says nothing."""


def _failures(shares: list[dict[str, Any]], failed: dict[int, str]) -> list[Failure]:
    """The steps every rank went on without (``failed``: step -> message), by step."""
    files = {int(k): Path(v) for other in shares for k, v in other["failed_files"].items()}
    alike = {step for other in shares for step in other["mismatched"]}
    return [
        Failure(step, files[step], text, step in alike) for step, text in sorted(failed.items())
    ]


def _stop_text(
    stopped: Sequence[str | None], root: Path, held: bool, kept_old: bool = False
) -> str:
    """The message of the error that stopped the run (``stopped`` starts with
    :func:`.kernels_failures.stop_message`'s two parts, what happened and the fix), with what
    the store at ``root`` keeps between them: ``held``, whether it holds a kernel (any rank's,
    once the ranks have met); ``kept_old``, whether ``--overwrite`` has not cleared it yet."""
    what, fix = stopped[0], stopped[1]
    kept = f"Kernels already computed are kept in {root}" if held else "No kernel was computed"
    if kept_old:
        kept = f"No kernel was computed, and {_removed_nothing(root)}"
    return f"{what} {kept}; {fix}."


def _removed_nothing(root: Path) -> str:
    """What an error of an ``--overwrite`` run that stopped before its deferred clearing says."""
    return (
        f"--overwrite removed nothing: {root} is as it was (a store is cleared only once the "
        "run has computed its first kernel)"
    )


def _fingerprints(store: Store) -> dict[int, str]:
    """Each stored step's checkpoint fingerprint."""
    return {step: record.fingerprint for step, record in store.records().items()}


def _eval_unchanged(store: Store, step: int, eval_hash: str) -> bool:
    """Cheap check of a step whose kernel is current: its eval kernel is there and made with
    this evaluation set from the checkpoint the kernel's record names (header only)."""
    record = store.record(step)
    return (
        record is not None
        and store.eval_kernel_problem(step, eval_hash, record.fingerprint) is None
    )


def _layers_unchanged(store: Store, step: int, layer_hash: str) -> bool:
    """Cheap check of a step whose kernel is current: its layer file is there and made with
    this grouping from the checkpoint the kernel's record names (header only)."""
    record = store.record(step)
    return (
        record is not None
        and store.layer_kernel_problem(step, layer_hash, record.fingerprint) is None
    )


def _describe_devices(devices: list[str]) -> str:
    """``cuda x8`` for eight ranks on GPUs (one device type per job in practice)."""
    kinds = sorted({d.split(":")[0] for d in devices})
    return f"{'+'.join(kinds)} x{len(devices)}"


def _unchanged(
    store: Store,
    ref: CheckpointRef,
    warnings: list[str] | None = None,
    progress: Progress | None = None,
    dirs: tuple[Path, Path] | None = None,
) -> bool:
    """Cheap check before reading the file: the same files (:func:`_same_files`; ``dirs``: the
    checkpoint directory the manifest records and the one read now), the same size and
    modification time as when stored, and a kernel file whose header matches its manifest
    record (else it is recomputed, said once)."""
    record = store.record(ref.step)
    if record is None or not record.mtime_ns or not (store.root / record.kernel).is_file():
        return False
    if not _same_files(record.source, ref, dirs):
        return False  # another file gives the step now (a copy standing in for it): read it
    try:
        if ref.file_state() != (record.size, record.mtime_ns):
            return False
    except OSError:
        return False
    problem = store.kernel_file_problem(ref.step)
    if problem is not None:
        message = f"step {ref.step}: {problem}; recomputing it"
        if warnings is not None:
            warnings.append(message)
        if progress is not None:
            progress.log(f"warning: {message}")
        return False
    return True


def _same_files(
    recorded: Sequence[str], ref: CheckpointRef, dirs: tuple[Path, Path] | None = None
) -> bool:
    """Whether a record's ``source`` names the files ``ref`` reads: the same file names (and
    the folder's name, for a checkpoint folder's files), wherever the directory lies now (a run
    moved or copied with its store keeps them); and, given ``dirs`` (the checkpoint directory
    the manifest records, the one read now), the same paths below them where both lie below
    them (a Trainer's final ``model.safetensors`` is not ``checkpoint-10/model.safetensors``).
    Another file of the step (``final.pt`` read for step 20 in place of ``ckpt_20.pt``; its
    size and modification time may be the same) is not."""
    now = [p.resolve() for p in ref.paths]
    depth = 1 if ref.folder is None else 2
    if len(now) != len(recorded) or any(
        Path(r).parts[-depth:] != n.parts[-depth:] for r, n in zip(recorded, now, strict=True)
    ):
        return False
    if dirs is None:
        return True
    return all(
        _below(Path(r), dirs[0]) == _below(n, dirs[1])
        for r, n in zip(recorded, now, strict=True)
        if _below(Path(r), dirs[0]) is not None and _below(n, dirs[1]) is not None
    )


def _below(path: Path, directory: Path) -> Path | None:
    """``path`` relative to ``directory``, or None when it is not below it."""
    try:
        return path.relative_to(directory)
    except ValueError:
        return None


def _inner_bar(progress: Progress, step: int) -> CountBar:
    """An inner progress bar over the blocks of one kernel (none for a one-block kernel)."""
    return CountBar(progress, f"  step {step}", hide_single=True)


def _stored_shape(store: Store) -> tuple[int, ...]:
    steps = store.steps()
    return tuple(store.load_kernel(steps[-1]).shape) if steps else ()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_resident_memory()  # (ru_maxrss: KiB on Linux, bytes on macOS)
