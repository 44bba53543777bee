"""``conetool kernels``: the eNTK of the probe set at every checkpoint, into the store."""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .. import distributed, paths
from .._version import __version__
from ..checkpoints import (
    CheckpointRef,
    apply_checkpoint,
    list_checkpoints,
    parse_step_range,
    read_checkpoint,
)
from ..choices import Dtype, Kind, Method, choice
from ..data import DataBundle, load_data
from ..errors import ConetoolError, DataError, StoreError
from ..layer_groups import group_kernels, groups_hash, parameter_groups, parse_groups
from ..models import output_check
from ..ntk import empirical_ntk, parse_memory
from ..ntk_memo import EngineMemo
from ..probe import Probe, load_probe, make_probe, save_probe
from ..progress import CountBar, NullProgress, Progress
from ..spec import ProbeSpec, Spec
from ..store import StepRecord, Store, StoreIdentity, kernel_norm
from ..threads import limit_threads
from .prefetch import ReadAhead, Writer
from .remembered import imports_record, read_manifest, recorded_step_regex, selection_record
from .resolve import iterations_per_epoch, model_for, resolve_spec

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class KernelsResult:
    """What :func:`kernels` did. ``failed`` maps a step to its error (with ``skip_bad``). Under
    torchrun it covers the whole job (every rank's steps; ``peak_memory`` is the largest of the
    ranks'; ``device`` reads like ``cuda x8``)."""

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


@dataclass(frozen=True)
class _Plan:
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


def kernels(
    ckpts: str | Path,
    *,
    spec: Spec | str | Path | None = None,
    store: str | Path = paths.DEFAULT_STORE,
    probe_size: int | None = None,
    kind: str = "trace",
    dtype: str = "float32",
    device: str | torch.device = "auto",
    max_memory: int | str | None = None,
    method: str = "auto",
    steps: str | None = None,
    every: int | None = None,
    step_regex: str | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    eval_size: int | None = None,
    per_layer: bool = False,
    groups: str | Mapping[str, str] | None = None,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> KernelsResult:
    """Compute the eNTK of the spec's probe set at every checkpoint of ``ckpts`` into ``store``.

    Steps already in the store whose checkpoint is unchanged are skipped, so a rerun (or a run
    after a kill) computes only what is missing. The store's contract is in :mod:`conetool.store`.

    Under torchrun (:mod:`conetool.distributed`) every rank runs this function: rank 0 creates
    the store, the steps still to compute are dealt round-robin to the ranks, each rank writes
    its kernels on its own device (``cuda:LOCAL_RANK``), rank 0 shows the whole job's progress
    and, once all ranks are done, records their kernels in ``manifest.json``.

    ``threads`` sets the CPU threads of PyTorch and BLAS for the call: a count, or ``"auto"``
    (the idle cores; :func:`conetool.limit_threads`).

    ``eval_size`` (``--eval-size m``): also draw an evaluation set of ``m`` examples like the
    probe set but from the test split (class-balanced, the probe's seed), save it once as
    ``STORE/eval.safetensors``, and store at each step the cross kernel K(eval, probe) in
    ``STORE/eval_kernels/`` (``conetool spectrum`` fits a kernel machine with it). A step whose
    kernel is current but whose eval kernel is missing or stale gets its eval kernel only. Without
    it, a store that records an evaluation set keeps it (its eval kernels are kept complete); a
    different ``m`` replaces the evaluation set and its eval kernels.

    ``per_layer`` (``--per-layer``): also store at each step the kernel of each parameter group
    (:mod:`conetool.layer_groups`; they sum to the kernel) in ``STORE/layer_kernels/``, one more
    kernel computation per group per step. A group is a leaf module, or with ``groups``
    (``--groups 'stage1=layer1.*,stage2=layer2.*'``, or a mapping; implies ``per_layer``) a name
    given to the parameters an ``fnmatch`` pattern matches (the rest make the group ``other``).
    A step whose kernel is current but whose layer file is missing or stale gets its layer file
    only. Without it, a store that records groups keeps them (its layer files are kept
    complete); another grouping replaces the layer files.

    Example::

        result = conetool.kernels("runs/digits", store="conetool-out")
        H = conetool.Store.open("conetool-out").load_kernel(result.computed[-1])  # (n, n)
    """
    options = KernelsOptions(
        ckpts=Path(ckpts),
        spec=spec,
        store=store,
        probe_size=probe_size,
        kind=kind,
        dtype=dtype,
        max_memory=max_memory,
        method=method,
        steps=steps,
        every=every,
        step_regex=step_regex,
        skip_bad=skip_bad,
        overwrite=overwrite,
        eval_size=eval_size,
        per_layer=per_layer or groups is not None,
        groups=groups,
    )
    with limit_threads(threads), distributed.job("kernels", device) as job:
        shown = (progress or NullProgress()) if job.is_main else NullProgress()
        return _kernels(job, options, shown)


def _kernels(job: distributed.Job, options: KernelsOptions, progress: Progress) -> KernelsResult:
    o = options
    ckpts, store, method, steps, every, overwrite = (
        o.ckpts,
        o.store,
        o.method,
        o.steps,
        o.every,
        o.overwrite,
    )
    notes: list[str] = []
    plan = job.agree(lambda: _plan(options, progress, notes))
    holder: list[Store] = []  # the store rank 0 opened (and locked), closed whatever happens

    def open_store() -> tuple[Store, nn.Module]:
        # The model first: its import (a "pkg.mod:factory" arch) is recorded in the header.
        model = model_for(plan.spec)
        if job.is_main:
            selected = selection_record(ckpts, plan.step_regex, steps, every)
            out = Store.open_for_writing(
                store,
                plan.identity,
                _header(ckpts, plan.spec, plan.probe, method, selected),
                overwrite=overwrite,
            )
            holder.append(out)
            for note in out.notes:
                notes.append(note)
                progress.log(f"note: {note}")
            _ensure_probe(out.root, plan.probe)
            if plan.eval_set is not None:
                _ensure_probe(out.root, plan.eval_set, paths.eval_set(out.root))
                for note in out.record_eval(_eval_record(plan.spec, plan.eval_set)):
                    notes.append(note)
                    progress.log(f"note: {note}")
            if plan.layer_groups is not None:
                record = _layer_record(plan.layer_groups, plan.layer_patterns)
                for note in out.record_layer_groups(record):
                    notes.append(note)
                    progress.log(f"note: {note}")
        else:
            out = Store.join(store)
            if out.identity != plan.identity:
                raise StoreError(
                    f"rank {job.rank} made another spec, probe set or kernel kind than rank 0 "
                    f"for store {out.root} ({out.identity} against {plan.identity}). Every node "
                    "must run the same conetool, spec and data files."
                )
        output_check(
            model, tuple(plan.data.input_shape), plan.data.num_classes, arch=plan.spec.model.arch
        )
        return out, model

    try:
        out, model = job.agree(open_store, main_first=True)
        return _compute_all(job, plan, out, model, options, progress, notes)
    finally:
        for opened in holder:
            opened.close()  # releases the store's lock


def _compute_all(
    job: distributed.Job,
    plan: _Plan,
    out: Store,
    model: nn.Module,
    options: KernelsOptions,
    progress: Progress,
    notes: list[str],
) -> KernelsResult:
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
    todo = job.broadcast(
        [
            ref.step
            for ref in plan.refs
            if not _unchanged(out, ref, notes, progress)
            or (evaluated is not None and not _eval_unchanged(out, ref.step, eval_hash))
            or (layers is not None and not _layers_unchanged(out, ref.step, layer_hash))
        ]
        if job.is_main
        else None
    )
    pending = set(todo)
    unchanged = [ref.step for ref in plan.refs if ref.step not in pending]
    by_step = {ref.step: ref for ref in plan.refs}

    computed: list[int] = []
    eval_computed: list[int] = []
    layer_computed: list[int] = []
    skipped: list[int] = []
    failed: dict[int, str] = {}
    seconds: list[float] = []
    shape: tuple[int, ...] = ()
    error: tuple[ConetoolError, ConetoolError] | None = None
    warned: list[str] = []

    def warn_once(message: str) -> None:
        """Lower-precision checkpoints: said for the first file only (a run saves them alike)."""
        if not warned:
            warned.append(message)
            notes.append(message)
            progress.log(f"warning: {message}")

    memo = EngineMemo()  # the checks and the engine's set-up run once per run, not per checkpoint

    def ntk(
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        on_block: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """The run's kernel of ``x1`` (with ``x2``: the cross kernel) on the current weights."""
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
        )

    def give_up(ref: CheckpointRef, exc: ConetoolError) -> bool:
        """A step that failed: True to stop (the error is raised once the ranks have met), False
        to go on without it (--skip-bad)."""
        nonlocal error
        message = f"step {ref.step} ({ref.file}): {exc}"
        if not skip_bad:
            error = (
                type(exc)(
                    f"{message} Kernels already computed are kept in {out.root}; fix this "
                    "checkpoint and rerun, or pass --skip-bad to go on without it."
                ),
                exc,
            )
            job.fail()
            return True
        failed[ref.step] = str(exc)
        progress.log(f"warning: skipped {message}")
        bar.advance(1, step=ref.step)
        return False

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
    with ReadAhead(mine, read_checkpoint) as reads, Writer() as writer:
        for ref, take in reads:
            writer.check()  # a write that failed stops the run here, as it did when inline
            if job.peer_failed():
                break  # another rank hit an error: stop as a single process would
            try:
                began = time.perf_counter()
                loaded = take()  # read while the step before was computed; raises its error now
                apply_checkpoint(model, loaded, warn=warn_once)
                fingerprint, size = loaded.fingerprint, loaded.size
                del loaded  # the model holds the weights: no second state dict kept
                current = out.is_current(ref.step, fingerprint) and (
                    out.kernel_file_problem(ref.step) is None
                )
                cross = None
                if evaluated is not None and (
                    out.eval_kernel_problem(ref.step, eval_hash, fingerprint) is not None
                ):
                    cross = ntk(evaluated.inputs, plan.probe.inputs)
                per_group = None
                if layers is not None and (
                    out.layer_kernel_problem(ref.step, layer_hash, fingerprint) is not None
                ):
                    per_group = group_kernels(model, layers, lambda: ntk(plan.probe.inputs))
                kernel = (
                    None
                    if current
                    else ntk(plan.probe.inputs, on_block=_inner_bar(progress, ref.step))
                )
            except ConetoolError as exc:
                if give_up(ref, exc):
                    break
                continue
            if kernel is None:  # current: only its eval or layer kernels were missing
                writer.join()  # the step before's files first; a failed write raises as it did
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
                bar.advance(1, step=ref.step)
                continue
            took = time.perf_counter() - began
            record = StepRecord(
                step=ref.step,
                source=[str(p.resolve()) for p in ref.paths],
                size=size,
                fingerprint=fingerprint,
                kernel=paths.kernel_relative(ref.step),
                norm=kernel_norm(kernel),
                seconds=round(took, 4),
                mtime_ns=_mtime_ns(ref),
            )
            writer.submit(partial(save, ref, fingerprint, record, kernel, cross, per_group))
            if cross is not None:
                eval_computed.append(ref.step)
            if per_group is not None and layers is not None:
                layer_computed.append(ref.step)
            computed.append(ref.step)
            seconds.append(took)
            shape = tuple(kernel.shape)
            bar.advance(1, step=ref.step, per_kernel=f"{took:.2f}s")

    share = {
        "computed": computed,
        "eval_computed": eval_computed,
        "layer_computed": layer_computed,
        "skipped": skipped,
        "failed": {str(k): v for k, v in failed.items()},
        "seconds": seconds,
        "shape": list(shape),
        "peak_memory": _peak_memory(dev),
        "device": str(dev),
        "error": None if error is None else str(error[0]),
    }
    shares = job.gather(share, while_waiting=bar.poll)  # rank 0 shows progress while it waits
    bar.close()
    # Rank 0 records every rank's kernel files in the manifest; the others wait for it.
    job.agree(lambda: out.adopt_kernel_files() if job.is_main and job.is_distributed else None)
    if error is not None:
        raise error[0] from error[1]
    for rank, other in enumerate(shares):
        if other["error"] is not None:
            raise distributed.PeerFailedError(f"rank {rank} failed: {other['error']}")

    all_seconds = [t for other in shares for t in other["seconds"]]
    all_failed = {int(k): v for other in shares for k, v in other["failed"].items()}
    done = sum(len(other["computed"]) + len(other["skipped"]) for other in shares) + len(unchanged)
    if all_failed and not done:
        listed = "; ".join(f"step {s}: {m}" for s, m in sorted(all_failed.items())[:3])
        more = f" (and {len(all_failed) - 3} more)" if len(all_failed) > 3 else ""
        raise StoreError(
            f"every checkpoint failed ({len(all_failed)} of {len(plan.refs)}); no kernel was "
            f"computed into {out.root}. {listed}{more}. Fix the checkpoints (or the options) "
            "and rerun."
        )
    found_shape = next((tuple(o["shape"]) for o in shares if o["shape"]), ())
    devices = [other["device"] for other in shares]
    return KernelsResult(
        store=out.root,
        computed=sorted(s for other in shares for s in other["computed"]),
        skipped=sorted(unchanged + [s for other in shares for s in other["skipped"]]),
        failed=dict(sorted(all_failed.items())),
        kernel_shape=found_shape or _stored_shape(out),
        seconds_per_kernel=sum(all_seconds) / len(all_seconds) if all_seconds else None,
        peak_memory=max(other["peak_memory"] for other in shares),
        device=devices[0] if len(devices) == 1 else _describe_devices(devices),
        warnings=notes,
        ranks=job.world_size,
        eval_computed=sorted(s for other in shares for s in other["eval_computed"]),
        eval_size=len(evaluated) if evaluated is not None else None,
        layer_computed=sorted(s for other in shares for s in other["layer_computed"]),
        layer_groups=list(layers) if layers is not None else None,
    )


def _plan(options: KernelsOptions, progress: Progress, notes: list[str]) -> _Plan:
    """Check the options; find the spec, the checkpoints and the probe set (on every rank).
    Nothing is written before every option is checked. Without ``step_regex``, the one the
    store recorded for this same directory is used (a rerun needs no regex again), unless the
    store is being overwritten."""
    o = options
    ckpts, spec, probe_size, kind, dtype, method = (
        o.ckpts,
        o.spec,
        o.probe_size,
        o.kind,
        o.dtype,
        o.method,
    )
    max_memory, steps, every, step_regex, skip_bad = (
        o.max_memory,
        o.steps,
        o.every,
        o.step_regex,
        o.skip_bad,
    )
    store = None if o.overwrite else Path(o.store)
    if max_memory is not None:
        parse_memory(max_memory)  # names --max-memory; before any file is touched
    kind = choice(Kind, kind, "--kind").value  # the CLI's Enums, one message for Python callers
    dtype = choice(Dtype, dtype, "--dtype").value
    method = choice(Method, method, "--method").value
    if not ckpts.exists():
        raise StoreError(f"checkpoint directory {ckpts} does not exist. Check the CKPTS path.")
    spec = resolve_spec(ckpts, spec)
    progress.log(f"loading data '{spec.data.dataset}' and listing {ckpts} ...")
    if probe_size is not None:
        if probe_size < 1:
            raise ConetoolError(f"--probe-size must be positive, got {probe_size}.")
        spec = dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, size=probe_size))
    recorded = read_manifest(store) if store is not None else None
    if step_regex is None and store is not None:
        step_regex, note = recorded_step_regex(recorded, None, path=ckpts)
        if note:
            notes.append(note)
            progress.log(f"note: {note}")
    eval_size = o.eval_size
    if eval_size is not None and eval_size < 1:
        raise ConetoolError(f"--eval-size must be positive, got {eval_size}.")
    if eval_size is None and recorded is not None:
        eval_size = _recorded_eval_size(recorded)
        if eval_size is not None:
            note = f"keeping the store's evaluation set of {eval_size} examples (--eval-size)"
            notes.append(note)
            progress.log(f"note: {note}")
    if eval_size is not None and spec.probe.split == EVAL_SPLIT:
        raise ConetoolError(
            f"--eval-size draws a held-out evaluation set from the {EVAL_SPLIT} split, but the "
            f"probe set is drawn from it too ([probe] split = {EVAL_SPLIT!r}), so the two would "
            "overlap. Draw the probe set from the train split, or leave out --eval-size."
        )

    per_layer, patterns, kept = _layer_patterns(o, recorded, notes)
    if kept:
        notes.append(kept)
        progress.log(f"note: {kept}")

    def warn(message: str) -> None:
        notes.append(message)
        progress.log(f"warning: {message}")

    refs = list_checkpoints(
        ckpts,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch(spec),
        steps=parse_step_range(steps) if steps else None,
        every=every,
        skip_bad=skip_bad,
        warn=warn,
    )
    data = load_data(spec.data)
    probe = make_probe(data, spec.probe)
    evaluated = None
    if eval_size is not None:
        available = int(data.split(EVAL_SPLIT).labels().shape[0])
        if eval_size > available:
            raise DataError(
                f"--eval-size {eval_size} is larger than the {EVAL_SPLIT} split of {data.name}, "
                f"which has {available} examples. Pass --eval-size {available} or less."
            )
        evaluated = make_probe(data, _eval_spec(spec, eval_size))
    identity = StoreIdentity(spec.hash(), probe.hash, kind, dtype)
    layer_groups = None
    if per_layer:
        layer_groups = parameter_groups(model_for(spec), patterns)
    return _Plan(spec, refs, data, probe, identity, step_regex, evaluated, layer_groups, patterns)


def _layer_patterns(
    options: KernelsOptions, recorded: dict[str, object] | None, notes: list[str]
) -> tuple[bool, dict[str, str] | None, str | None]:
    """Whether to store layer kernels, and the ``--groups`` patterns (None: leaf modules).
    Without ``--per-layer`` or ``--groups``, a store that records groups keeps them."""
    groups = options.groups
    if groups is not None:
        patterns = parse_groups(groups) if isinstance(groups, str) else dict(groups)
        if not patterns:
            raise ConetoolError("--groups is empty. Pass e.g. --groups 'stage1=layer1.*'.")
        return True, patterns, None
    if options.per_layer:
        return True, None, None
    record = recorded.get("layer_groups") if recorded is not None else None
    if not isinstance(record, dict):
        return False, None, None
    raw = record.get("patterns")
    kept = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None
    shown = ", ".join(str(g) for g in record.get("groups") or {})
    return True, kept, f"keeping the store's per-layer kernels (--per-layer; groups {shown})"


#: The split the evaluation set of ``--eval-size`` is drawn from.
EVAL_SPLIT = "test"


def _eval_spec(spec: Spec, size: int) -> ProbeSpec:
    """The evaluation set is drawn like the probe set (class-balanced, the probe's seed), from
    the test split."""
    return ProbeSpec(size=size, split=EVAL_SPLIT, seed=spec.probe.seed)


def _eval_record(spec: Spec, evaluated: Probe) -> dict[str, object]:
    """The evaluation set as the manifest header records it."""
    return {
        "size": len(evaluated),
        "split": evaluated.split,
        "seed": spec.probe.seed,
        "hash": evaluated.hash,
        "file": paths.EVAL_NAME,
    }


def _recorded_eval_size(manifest: dict[str, object]) -> int | None:
    record = manifest.get("eval")
    size = record.get("size") if isinstance(record, dict) else None
    return size if isinstance(size, int) and size > 0 else None


def _eval_unchanged(store: Store, step: int, eval_hash: str) -> bool:
    """Cheap check of a step whose kernel is current: its eval kernel is there and made with
    this evaluation set from the checkpoint the kernel's record names (header only)."""
    record = store.record(step)
    return (
        record is not None
        and store.eval_kernel_problem(step, eval_hash, record.fingerprint) is None
    )


def _layer_record(
    groups: dict[str, list[str]], patterns: dict[str, str] | None
) -> dict[str, object]:
    """The parameter groups as the manifest header records them."""
    return {
        "patterns": patterns,
        "groups": groups,
        "hash": groups_hash(groups),
        "dir": paths.LAYER_KERNELS_DIR,
    }


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


def _header(
    ckpts: Path,
    spec: Spec,
    probe: Probe,
    method: str = "auto",
    selection: dict[str, object] | None = None,
) -> dict[str, object]:
    """The manifest's provenance. ``selection`` (path, step regex, steps, every) and
    ``imports`` (where a "pkg.mod:factory" spec's modules came from) are what the later
    commands reuse (:mod:`conetool.pipeline.remembered`)."""
    return {
        "checkpoints": str(ckpts.resolve()),
        "selection": selection or selection_record(ckpts, None, None, None),
        "imports": imports_record(spec),
        "method": method,
        "spec_source": spec.source,
        "spec": spec.to_dict(),
        "probe": {
            "size": len(probe),
            "split": probe.split,
            "seed": spec.probe.seed,
            "hash": probe.hash,
            "file": paths.PROBE_NAME,
        },
        "versions": {
            "conetool": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }


def _ensure_probe(root: Path, probe: Probe, path: Path | None = None) -> None:
    """Write the probe set (or the evaluation set, at ``path``) once; rewrite it only if the
    stored copy is damaged or another one."""
    path = paths.probe(root) if path is None else path
    if path.is_file():
        try:
            if load_probe(path).hash == probe.hash:
                return
        except DataError:
            pass  # damaged: rewritten below from the data set
    save_probe(probe, path)


def _mtime_ns(ref: CheckpointRef) -> int:
    return max(p.stat().st_mtime_ns for p in ref.paths)


def _unchanged(
    store: Store,
    ref: CheckpointRef,
    notes: list[str] | None = None,
    progress: Progress | None = None,
) -> bool:
    """Cheap check before reading the file: same size and modification time as when stored, and
    a kernel file whose header matches its manifest record (else it is recomputed, said once)."""
    record = store.record(ref.step)
    if record is None or not record.mtime_ns or not (store.root / record.kernel).is_file():
        return False
    try:
        size = sum(p.stat().st_size for p in ref.paths)
        same = size == record.size and _mtime_ns(ref) == record.mtime_ns
    except OSError:
        return False
    if not same:
        return False
    problem = store.kernel_file_problem(ref.step)
    if problem is not None:
        message = f"step {ref.step}: {problem}; recomputing it"
        if notes is not None:
            notes.append(message)
        if progress is not None:
            progress.log(f"warning: {message}")
        return False
    return True


def _inner_bar(progress: Progress, step: int) -> CountBar:
    """An inner progress bar over the blocks of one kernel (none for a one-block kernel)."""
    return CountBar(progress, f"  step {step}", hide_single=True)


def _stored_shape(store: Store) -> tuple[int, ...]:
    steps = store.steps()
    return tuple(store.load_kernel(steps[-1]).shape) if steps else ()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
