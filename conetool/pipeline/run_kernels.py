"""``conetool kernels``: the eNTK of the probe set at every checkpoint, into the store."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed, paths
from .._version import __version__
from ..checkpoints import (
    CheckpointRef,
    StepRange,
    parse_step_range,
    step_range_text,
)
from ..checkpoints.discover import checkpoint_listing
from ..choices import Dtype, Kind, Method, choice, is_count, path_argument
from ..data import load_data
from ..errors import ConetoolError, DataError, StoreError
from ..folder_roles import checkpoint_contents, same_folder, store_holding
from ..layer_groups import groups_hash, parameter_groups, parse_groups
from ..library_call import library_call
from ..low_precision import rounded_note, upcast_note
from ..models import output_check
from ..ntk import is_auto, parse_memory
from ..probe import Probe, load_probe, make_probe, missing_classes_warning, save_probe
from ..progress import NullProgress, Progress, Said
from ..spec import ProbeSpec, Spec, toml_text
from ..store import Store, StoreIdentity
from ..store_clearing import remove_unused
from ..threads import limit_threads
from .kernels_loop import DTYPES, KernelsOptions, KernelsPlan, KernelsResult, compute_all
from .mixed_runs import another_run
from .overwrite_checks import check_before_clearing
from .remembered import (
    changed_imports,
    imports_record,
    manifest_json,
    rebuilt_remembered,
    recorded_step_regex,
    selection_record,
)
from .resolve import iterations_per_epoch, model_for, resolve_spec


@library_call
def kernels(
    ckpts: str | Path,
    *,
    spec: Spec | str | Path | None = None,
    store: str | Path = paths.DEFAULT_STORE,
    probe_size: int | None = None,
    kind: str = "trace",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "auto",
    max_memory: int | str | None = None,
    method: str = "auto",
    steps: StepRange | None = None,
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

    ``steps`` (``--steps``): only the checkpoints from ``first`` to ``last``, both included, as
    a pair ``(first, last)`` (None for an open end) or the text ``"first:last"``; ``every``
    (``--every``): only steps that are multiples of it.

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
        ckpts=path_argument(ckpts, "ckpts", "the checkpoint directory of the run"),
        spec=spec,
        store=path_argument(store, "--store", "the store directory"),
        probe_size=probe_size,
        # the CLI's Enums, one message for Python callers; a torch.float64 is taken as "float64"
        kind=choice(Kind, kind, "--kind").value,
        dtype=choice(Dtype, dtype, "--dtype").value,
        max_memory=max_memory,
        method=choice(Method, method, "--method").value,
        steps=step_range_text(steps),
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
    # Two channels: a warning is a possible loss or a guess to check (said as it comes, again
    # at the end under --quiet, KernelsResult.warnings); a note is information only (said once
    # as it comes, not under --quiet, KernelsResult.notes).
    said = Said(progress)
    left_out: dict[Path, str] = {}  # the files listing CKPTS refused (--skip-bad)
    if job.is_distributed:  # a rank started with other arguments would compute another job
        job.same_arguments(_arguments(options), "conetool kernels")
    plan = job.agree(lambda: _plan(options, said, left_out))
    if job.is_distributed:  # each rank computes steps from its own listing of CKPTS
        listed = job.broadcast([ref.step for ref in plan.refs])
        job.agree(lambda: _same_steps(listed, [ref.step for ref in plan.refs], ckpts))
    holder: list[Store] = []  # the store rank 0 opened (and locked), closed whatever happens
    # how the store's folder was before the run: "absent", "empty" or "used" (rank 0 only)
    before: list[str] = []
    # whether no other rank can be writing a kernel (under torchrun): not before rank 0 deals
    # the steps, and again once every rank has met after its last write (compute_all says when)
    settled = [True]

    def open_store() -> tuple[Store | None, nn.Module]:
        # The model first: its import (a "pkg.mod:factory" arch) is recorded in the header.
        model = model_for(plan.spec)
        if job.is_main:
            spec = plan.spec
            compute = DTYPES[o.dtype]
            upcast = upcast_note(model, spec.model.arch, spec.source, compute)
            if upcast is not None:  # a float16 or bfloat16 model: its kernels are float32
                said.note(upcast)
            rounded = rounded_note(model, spec.model.arch, spec.source, compute)
            if rounded is not None:  # a float64 model, --dtype float32: its weights rounded
                said.note(rounded)
            if not overwrite:  # kept kernels from the module as it was, new ones from it now
                for message in changed_imports(plan.manifest, plan.spec):
                    said.warn(message)
            before.append(_folder_state(Path(store)))
            selected = selection_record(ckpts, plan.step_regex, steps, every)
            mixed = another_run(
                Path(store), ckpts, plan.identity, plan.refs, manifest=plan.manifest
            )
            if mixed is not None:
                raise mixed
            header = _header(ckpts, plan.spec, plan.probe, method, selected, o.skip_bad)
            # what a reader says of a store still being written: "37 of 100 kernels so far"
            header["selected_steps"] = sorted({ref.step for ref in plan.refs})
            clears = (
                overwrite
                and before[0] == "used"
                and Store.overwrite_clears(store, plan.identity, plan.manifest)
            )
            # What would fail after the clearing is refused before it (.overwrite_checks). What
            # only the values or the engine tell is met before the first kernel: the store is
            # cleared once that kernel is computed (compute_all's clear_first; under torchrun
            # once every rank has computed its first kernel or ended its share, none failing).
            if clears:
                check_before_clearing(model, plan, Path(store), o.skip_bad)
            written = Store.open_for_writing(
                store, plan.identity, header, overwrite=overwrite, defer_clearing=clears
            )
            holder.append(written)
            if not written.clearing_deferred:
                fill(written)
            out: Store | None = written
        else:
            out = None  # joined below, once rank 0 has said whether its clearing waits
        output_check(
            model,
            tuple(plan.data.input_shape),
            plan.data.num_classes,
            plan.spec.model.arch,
            examples=plan.data.examples(),
        )
        return out, model

    def join_store(replacing: dict[str, Any] | None) -> Store:
        """The store rank 0 opened, joined by another rank: through its manifest.json, or with
        ``replacing`` (rank 0's new manifest, its clearing deferred) in memory until it clears."""
        out = Store.join(store, replacing)
        if out.identity != plan.identity:
            raise StoreError(
                f"rank {job.rank} made another spec, probe set or kernel kind than rank 0 "
                f"for store {out.root} ({out.identity} against {plan.identity}). Every node "
                "must run the same conetool, spec and data files."
            )
        return out

    def fill(out: Store) -> None:
        """Rank 0's first writes into the store it opened: what opening did said, the probe and
        evaluation sets written and recorded with the parameter groups."""
        # Warnings: a manifest rebuilt (it was missing or damaged: kernel files left out,
        # records not recovered) or a replaced store removed (--overwrite); files of an
        # evaluation set or grouping that another one replaced, deleted. Notes: the records
        # a rebuilt manifest got back from their files.
        # a record the rebuild could not get back, which this run records all the same (the
        # groups or evaluation set the damaged manifest still held, or given again, said in a
        # note): no rerun to ask for
        moot = {
            out.unrecovered.get(name)
            for name, kept in (("layer_groups", plan.layer_groups), ("eval", plan.eval_set))
            if kept is not None
        }
        for message in out.warnings:
            if message not in moot:
                said.warn(message)
        for message in out.notes:
            said.note(message)
        _ensure_probe(out.root, plan.probe)
        # a replaced set's files are recomputed at the steps this run selects only
        left = _not_selected(out.steps(), plan.refs)
        if plan.eval_set is not None:
            _ensure_probe(out.root, plan.eval_set, paths.eval_set(out.root))
            for message in out.record_eval(_eval_record(plan.spec, plan.eval_set)):
                said.warn(message + _left_out_of_recomputing(left, "eval kernels"))
        if plan.layer_groups is not None:
            record = _layer_record(plan.layer_groups, plan.layer_patterns)
            for message in out.record_layer_groups(record):
                said.warn(message + _left_out_of_recomputing(left, "layer files"))

    def clear_first(out: Store) -> None:
        """The deferred clearing (``--overwrite``), once the first kernel is computed."""
        out.clear_deferred()
        fill(out)

    try:
        opened, model = job.agree(open_store, main_first=True)
        if job.is_distributed:
            # --overwrite's clearing deferred: the others take rank 0's new manifest in memory
            # (on disk is the old store's until rank 0 clears it: compute_all's clear_first)
            main = opened if job.is_main else None
            replacing = job.broadcast(
                main.manifest if main is not None and main.clearing_deferred else None
            )
            opened = job.agree(lambda: main if main is not None else join_store(replacing))
        assert opened is not None
        out = opened
        if job.is_distributed:  # the others joined through manifest.json, which rank 0 rewrites
            # with this run's selection only with its next kernel: their files carry rank 0's
            out.carry(job.broadcast(out.carried()))
        settled[:] = [not job.is_distributed]
        deferred = partial(clear_first, out) if out.clearing_deferred and job.is_main else None
        result = compute_all(
            job, plan, out, model, options, progress, said.warnings, settled, deferred
        )
        return dataclasses.replace(result, left_out=left_out, notes=said.notes)
    except ConetoolError:
        # A store this run created (or emptied: --overwrite) and failed before its first kernel
        # in: removed, so that the rerun after the fix (another spec, say) starts afresh instead
        # of meeting a store of this spec (whose --overwrite would delete nothing). A folder
        # that was there stays, and a store that holds kernels or other files is kept whole.
        # Under torchrun rank 0 (which alone knows ``before``) does it once no rank can write
        # a kernel any more; one still at work after an unexpected stop keeps the store.
        # A store whose clearing --overwrite still defers is the old one, untouched: kept.
        if before and (before[0] != "used" or overwrite) and settled[0]:
            for opened in holder:
                if not opened.clearing_deferred:
                    remove_unused(opened.root, keep_folder=before[0] != "absent")
        raise
    finally:
        for opened in holder:
            opened.close()  # releases the store's lock


def _not_selected(stored: list[int], refs: list[CheckpointRef]) -> list[int]:
    """The stored steps that this run does not compute (outside ``--steps``/``--every``, or
    their checkpoint gone)."""
    selected = {ref.step for ref in refs}
    return [step for step in stored if step not in selected]


def _left_out_of_recomputing(left: list[int], what: str) -> str:
    """What a note of a replaced evaluation set or grouping adds when the run recomputes its
    ``what`` at some of the stored steps only: which are left, and what computes them."""
    if not left:
        return ""
    shown = ", ".join(map(str, left[:5])) + (" ..." if len(left) > 5 else "")
    return (
        f" at the checkpoints this run selects only: {len(left)} stored step(s) ({shown}) have "
        f"no {what} until a run selects them (one without --steps or --every; a step whose "
        "checkpoint is gone gets none again)"
    )


def _folder_state(root: Path) -> str:
    """``"absent"`` (no such folder), ``"empty"`` (a folder with nothing in it but the readers'
    lock files, which a failed ``--overwrite`` leaves: :func:`remove_unused` keeps them) or
    ``"used"``."""
    readers = (paths.RESULTS_LOCK_NAME, paths.RESULTS_GATE_NAME)
    try:
        return "used" if any(p.name not in readers for p in root.iterdir()) else "empty"
    except FileNotFoundError:
        return "absent"
    except OSError:  # a file, or unreadable: open_for_writing says what is wrong
        return "used"


def _arguments(options: KernelsOptions) -> dict[str, str | None]:
    """The arguments every rank of a job must share, as text keyed by flag (None: not given).
    ``--device``, ``--max-memory`` and ``--threads`` may differ: they are the rank's own."""
    o = options
    spec = o.spec
    values: dict[str, object] = {
        "CKPTS": o.ckpts,
        "--spec": f"a Spec object ({spec.hash()})" if isinstance(spec, Spec) else spec,
        "--store": o.store,
        "--probe-size": o.probe_size,
        "--kind": o.kind,
        "--dtype": o.dtype,
        "--method": o.method,
        "--steps": o.steps,
        "--every": o.every,
        "--step-regex": o.step_regex,
        "--skip-bad": o.skip_bad or None,
        "--overwrite": o.overwrite or None,
        "--eval-size": o.eval_size,
        "--per-layer": o.per_layer or None,
        "--groups": o.groups if o.groups is None or isinstance(o.groups, str) else dict(o.groups),
    }
    return {flag: None if v is None else str(v) for flag, v in values.items()}


def _same_steps(rank0: list[int], mine: list[int], ckpts: Path) -> None:
    """Refuse a rank that lists other checkpoints than rank 0 (it could not load its share)."""
    if mine != rank0:
        only_here = sorted(set(mine) - set(rank0))
        only_there = sorted(set(rank0) - set(mine))
        raise StoreError(
            f"this rank finds other checkpoints in {ckpts} than rank 0 (steps only here: "
            f"{only_here[:5] or 'none'}; only on rank 0: {only_there[:5] or 'none'}). Every "
            "rank must see the same checkpoint directory: put it on a file system that all "
            "nodes share, and wait until no checkpoint is being written."
        )


def _plan(options: KernelsOptions, said: Said, left_out: dict[Path, str]) -> KernelsPlan:
    """Check the options; find the spec, the checkpoints and the probe set (on every rank).
    Nothing is written before every option is checked. Without ``step_regex``, the one the
    store recorded for this same directory is used (a rerun needs no regex again), unless the
    store is being overwritten. The files listing ``ckpts`` refused (``skip_bad``) go into
    ``left_out``, file -> why."""
    o = options
    ckpts, spec, probe_size, kind, dtype = (o.ckpts, o.spec, o.probe_size, o.kind, o.dtype)
    max_memory, steps, every, step_regex, skip_bad = (
        o.max_memory,
        o.steps,
        o.every,
        o.step_regex,
        o.skip_bad,
    )
    progress = said.progress
    store = None if o.overwrite else Path(o.store)
    if max_memory is not None and not is_auto(max_memory):  # auto: the device's default
        parse_memory(max_memory)  # names max_memory=; before any file is touched
    if not ckpts.exists():
        spec_given = (
            f" ({ckpts.name} would be a spec: pass it as --spec {ckpts}, and the checkpoints as "
            "CKPTS)"
            if ckpts.suffix == ".toml"
            else ""
        )
        raise StoreError(
            f"checkpoint directory {ckpts} does not exist{spec_given}. Pass the run's checkpoint "
            "directory as CKPTS: the --out of conetool train, or the folder holding the "
            "checkpoint files (conetool kernels runs/digits)."
        )
    _check_folders(ckpts, Path(o.store))
    spec = resolve_spec(ckpts, spec)
    progress.log(f"loading data '{spec.data.dataset}' and listing {ckpts} ...")
    if probe_size is not None:
        _check_count(probe_size, "--probe-size")
        spec = dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, size=probe_size))
    if spec.probe.size == 1 and kind != "full":
        given, fix = (
            ("--probe-size 1", "Pass --probe-size 2 or more")
            if probe_size is not None
            else (
                f"[probe] size = 1 in {spec.source}",
                "Set it to 2 or more (or pass --probe-size N)",
            )
        )
        raise ConetoolError(
            f"{given}: a probe set of one example gives 1 x 1 kernels (--kind {kind}), and the "
            "distance S of two positive numbers is 0 whatever the training did, so every verdict "
            f"would read 'lazy'. {fix} (the paper uses 500), or pass --kind full (a c x c kernel "
            "per step)."
        )
    # Read once: what the store recorded (the options a rerun keeps; None under --overwrite),
    # and, --overwrite or not, what another_run checks for a run mixed in.
    manifest = manifest_json(Path(o.store))
    # the kept records a rebuilt manifest gets back from their files: said by the rebuild
    recovered: frozenset[str] = frozenset()
    if store is not None:  # one to be rebuilt: what its files keep of it (selection, eval, ...)
        manifest, lost, recovered = rebuilt_remembered(
            store, manifest, spec, kind, dtype, ckpts, step_regex
        )
        if lost:  # the step regex of the store's runs is not known: for the user to check
            said.warn(lost)
    recorded = manifest if store is not None else None
    if step_regex is None and store is not None:
        step_regex, note = recorded_step_regex(recorded, None, path=ckpts)
        if note:  # the option of the store's last run on this directory: information
            said.note(note)
    eval_size = o.eval_size
    if eval_size is not None:
        _check_count(eval_size, "--eval-size")
    if eval_size is None and recorded is not None:
        eval_size = _recorded_eval_size(recorded)
        if eval_size is not None and "eval" not in recovered:
            said.note(f"keeping the store's evaluation set of {eval_size} examples (--eval-size)")
    if eval_size is not None and spec.probe.split == EVAL_SPLIT:
        raise ConetoolError(
            f"--eval-size draws a held-out evaluation set from the {EVAL_SPLIT} split, but the "
            f"probe set is drawn from it too ([probe] split = {toml_text(EVAL_SPLIT)}), so the two "
            "would overlap. Draw the probe set from the train split, or leave out --eval-size."
        )

    per_layer, patterns, kept = _layer_patterns(o, recorded)
    if kept and "layer_groups" not in recovered:
        said.note(kept)

    selection = parse_step_range(steps) if steps else None  # once: the plan keeps it
    listing = checkpoint_listing(
        ckpts,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch(spec),
        steps=selection,
        every=every,
        skip_bad=skip_bad,
        warn=said.warn,
        note=said.note,
    )
    left_out.update(listing.left_out)
    refs = listing.refs
    data = load_data(spec.data, source=spec.source)
    flag = None if probe_size is None else "--probe-size"
    probe = make_probe(data, spec.probe, size_flag=flag, source=spec.source)
    left_out_classes = missing_classes_warning(
        probe, data.num_classes, size_flag=flag, source=spec.source
    )
    if left_out_classes is not None:
        said.warn(left_out_classes)
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
    return KernelsPlan(
        spec,
        refs,
        data,
        probe,
        identity,
        step_regex,
        evaluated,
        layer_groups,
        patterns,
        selection,
        manifest,
        listing.copies,
    )


def _check_folders(ckpts: Path, store: Path) -> None:
    """Refuse, before anything is written, a store that is the checkpoint directory itself (its
    probe set would be listed as a checkpoint by the next run) and a store given as CKPTS (its
    kernel files are no model weights)."""
    if same_folder(ckpts, store):
        raise StoreError(
            f"--store {store} is the checkpoint directory {ckpts} itself: the store's "
            f"{paths.MANIFEST_NAME}, {paths.PROBE_NAME} and {paths.KERNELS_DIR}/ would lie among "
            f"the checkpoints, and the next listing of {ckpts} would take {paths.PROBE_NAME} for "
            f"a checkpoint. Give the store a folder of its own: --store {paths.DEFAULT_STORE} "
            "(the default) or another."
        )
    held = store_holding(ckpts)
    if held is None:
        return
    root, recorded = held
    if root == ckpts and checkpoint_contents(ckpts) is not None:
        return  # checkpoints too: the listing leaves the store's files out, with a warning
    what = (
        f"CKPTS {ckpts} is a conetool store"
        if root == ckpts
        else f"CKPTS {ckpts} is the {ckpts.name}/ folder of the conetool store {root}"
    )
    fix = (
        f"Its kernels were computed from {recorded}; to add to them: conetool kernels "
        f"{recorded} --store {root}"
        if recorded is not None
        else "Pass the checkpoint directory of the run (the --out of conetool train) as CKPTS, "
        f"and the store as --store {root}"
    )
    raise StoreError(
        f"{what} (it holds {paths.MANIFEST_NAME}), not a checkpoint directory: its files are "
        f"kernels, not model weights. {fix}."
    )


def _check_count(value: object, flag: str) -> None:
    """A number of examples: a positive whole number (``probe_size="10"`` from Python too)."""
    if not is_count(value):
        raise ConetoolError(f"{flag} must be a positive whole number of examples, got {value!r}.")


def _group_mapping(groups: object) -> dict[str, str]:
    """``groups=`` given as a mapping: group name -> fnmatch pattern, both str."""
    if isinstance(groups, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in groups.items()
    ):
        return dict(groups)
    raise ConetoolError(
        f"--groups {groups!r} is no grouping. Pass the text of --groups, "
        "'stage1=layer1.*,stage2=layer2.*', or a mapping {'stage1': 'layer1.*', ...} of group "
        "names to fnmatch patterns over parameter names."
    )


def _layer_patterns(
    options: KernelsOptions, recorded: dict[str, object] | None
) -> tuple[bool, dict[str, str] | None, str | None]:
    """Whether to store layer kernels, the ``--groups`` patterns (None: leaf modules), and the
    note to say. Without ``--per-layer`` or ``--groups``, a store that records groups keeps
    them (the note says so)."""
    groups = options.groups
    if groups is not None:
        patterns = parse_groups(groups) if isinstance(groups, str) else _group_mapping(groups)
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


def _header(
    ckpts: Path,
    spec: Spec,
    probe: Probe,
    method: str = "auto",
    selection: dict[str, object] | None = None,
    skip_bad: bool = False,
) -> dict[str, object]:
    """The manifest's provenance. ``selection`` (path, step regex, steps, every) and
    ``imports`` (where a "pkg.mod:factory" spec's modules came from) are what the later
    commands reuse (:mod:`conetool.pipeline.remembered`); ``method`` and ``skip_bad`` are the
    options of the run (the report's Reproduce block repeats them)."""
    return {
        "checkpoints": str(ckpts.resolve()),
        "selection": selection or selection_record(ckpts, None, None, None),
        "imports": imports_record(spec),
        "method": method,
        "skip_bad": skip_bad,
        "spec_source": spec.source,
        "spec": spec.to_dict(),
        # the keys the spec file wrote (the rest conetool's defaults): switch names the recipe
        # keys a run of one's own leaves to them (None: a spec built in Python)
        "spec_written": None if spec.written is None else sorted(spec.written),
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
