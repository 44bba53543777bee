"""A switch sweep made ready before anything is trained (on every torchrun rank): its options
checked, its checkpoints and spec found (:mod:`conetool.pipeline.switch_locate`), what ``kernels``
recorded taken over (the step regex, the spec's imports), T checked against the run, the
checkpoints of the points (and of T) found or refused with the reason and the fix, the data
loaded; checkpoint errors reworded for ``switch``, which has no ``--skip-bad``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..checkpoint_optimizer import ENTRIES
from ..checkpoints import CheckpointRef, LoadedCheckpoint, fingerprint, list_checkpoints
from ..checkpoints.discover import SKIP_BAD_ADVICE, checkpoint_listing, steps_problems
from ..checkpoints.load import NON_FINITE_ADVICE, read_checkpoint
from ..choices import Reference, choice, is_count
from ..data import DataBundle, load_data, steps_per_epoch
from ..errors import CheckpointError, ConetoolError, SpecError, StoreError
from ..low_precision import refuse_for_training
from ..progress import NullProgress, Said
from ..spec import MAX_STEPS, Spec, check_training_data, resolved_differences
from ..store import nearest_steps
from .remembered import (
    carried_imports,
    carried_run,
    carried_step_regex,
    changed_imports,
    recorded_step_regex,
    use_recorded_imports,
)
from .resolve import iterations_per_epoch, model_for
from .switch_carried_spec import carried_spec
from .switch_finished_points import sweep_begun
from .switch_locate import locate, sentence
from .switch_options import SwitchOptions, parse_at
from .switch_reference import non_finite_advice, non_finite_said, reference_step
from .switch_store import SwitchStore


@dataclass(frozen=True)
class Sweep:
    points_at: list[int]
    ckpts: Path
    spec: Spec
    until: int
    refs: dict[int, CheckpointRef]
    data: DataBundle
    store: SwitchStore  # the store as this rank began with it (rank 0's is the job's)
    notes: list[str] = field(default_factory=list)  # what prepare_sweep took from the store
    warnings: list[str] = field(default_factory=list)  # a damaged manifest it read around
    #: the checkpoint the standard model at T comes from, read (its weights checked finite)
    #: before any point trains, and kept for the standard model after the sweep, which so does
    #: not read it again; None where no checkpoint is read for it here (a point's own, read by
    #: its point; none at all; or ``prepare_sweep(read_reference=False)``)
    reference: LoadedCheckpoint | None = None
    #: the spec file ``conetool kernels`` read, when the sweep's spec is the store manifest's
    #: record of it (:attr:`~conetool.pipeline.switch_locate.Located.kernels_spec`); else None
    kernels_spec: str | None = None
    #: of :attr:`notes` and :attr:`warnings`, what it said of the store's manifest being lost
    #: (:attr:`~conetool.pipeline.switch_locate.Located.of_lost_manifest`, and the step regex
    #: read from the kernel files instead): not kept in ``results.json``, since ``conetool
    #: report`` reads it once ``kernels`` has rebuilt the manifest
    of_lost_manifest: tuple[str, ...] = ()


def prepare_sweep(
    options: SwitchOptions, *, read_reference: bool = True, said: Said | None = None
) -> Sweep:
    """Check the options; find the checkpoints, the spec and the data (on every rank).

    ``read_reference``: read the checkpoint the standard model at T comes from (refused with
    NaN or Inf before any point trains) and keep it in :attr:`Sweep.reference`; a torchrun
    job reads it on rank 0 only, which alone makes the standard model.

    ``said``: where its notes and warnings are said as they come (a damaged manifest read
    around, a step regex guessed between runs, ...), so that those said before a refusal reach
    the user ahead of its error, which they may explain (``--quiet`` prints them then too);
    :attr:`Sweep.notes` and :attr:`Sweep.warnings` keep what it said. None: said nowhere."""
    said = Said(NullProgress()) if said is None else said
    notes_from, warnings_from = len(said.notes), len(said.warnings)  # (what it said before)
    o = options
    until, store, ckpts, spec = o.until, o.store, o.ckpts, o.spec
    step_regex, beyond_run = o.step_regex, o.beyond_run
    points_at = parse_at(o.at)
    if until is not None and not is_count(until):
        raise ConetoolError(
            f"--until {until!r} is not a step. Pass the end step T as a positive whole number "
            "(e.g. --until 2000), or leave it out for the spec's train.steps."
        )
    if until is not None and until > MAX_STEPS:  # (with --beyond-run it trained without end)
        raise ConetoolError(
            f"--until {until}: T must be at most {MAX_STEPS} (the longest run conetool trains, "
            "as for train.steps in a spec). Pass a smaller end step, or leave it out for the "
            "spec's train.steps."
        )
    reference = choice(Reference, o.reference, "--reference").value
    located = locate(store, ckpts, spec, said)
    ckpts_dir, spec, manifest = located.ckpts, located.spec, located.manifest
    kernels_hash = spec.hash()  # the spec of the kernels a lost manifest's records are of
    if o.spec is not None or o.ckpts is not None:  # (else the run the store's kernels read)
        if manifest is not None:
            _refuse_another_spec(store, manifest, spec, given_spec=o.spec is not None)
        elif (kept := carried_spec(store, located.carried, spec.hash(), located.held)) is not None:
            kernels_hash = str(kept["spec_hash"])  # (a spec differing in [probe] alone sweeps)
            # a manifest missing or damaged: what the kernel files carry stands in for it
            lost = f"the record its kernel files carry: {paths.MANIFEST_NAME} is {located.lost}"
            _refuse_another_spec(store, kept, spec, given_spec=o.spec is not None, recorded_in=lost)
    # What train refuses of the data it trains on, refused here too before anything is written;
    # a sweep begun with the spec (an earlier conetool's points in the store) goes on with it,
    # as train --resume does: its new points stay comparable with those it holds.
    if not sweep_begun(store, spec):
        check_training_data(spec)
    # What kernels recorded: its --step-regex (unless one is given) and where it imported a
    # "pkg.mod:factory" model or data set from; the kernel files carry both, for a store whose
    # manifest is missing or damaged.
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
            said.warn(f"{sentence(differ)}. Pass --step-regex to use another")
    else:
        step_regex, regex_note = recorded_step_regex(manifest, step_regex)
    for note in use_recorded_imports(recorded, spec):
        said.note(note)
    for warning in changed_imports(recorded, spec):
        said.warn(warning)
    if regex_note:
        said.note(regex_note)
    _refuse_low_precision(spec)
    T = spec.train.steps if until is None else until
    if T > spec.train.steps and not beyond_run:
        raise ConetoolError(
            f"--until {T} is beyond the standard run: its T is {spec.train.steps} (train.steps "
            f"of {spec.source}), so there is no standard model at step {T} to compare with, and "
            f"the linearized model would train {T - spec.train.steps} steps past the run. Drop "
            f"--until (T = {spec.train.steps}), or pass --beyond-run to train to {T} anyway."
        )
    if T > spec.train.steps and spec.train.schedule == "cosine":
        said.warn(_cosine_past_the_run(spec, T))
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
            warn=said.warn,
            note=said.note,
            left_out=lambda message: None,
        ).refs
    except CheckpointError as exc:
        try:  # no file usable: the files' own errors say why (e.g. no step in their names)
            list_checkpoints(ckpts_dir, step_regex=step_regex, iterations_per_epoch=ipe)
        except CheckpointError as reasons:
            raise for_switch(reasons) from exc
        raise for_switch(exc) from exc
    refs = {ref.step: ref for ref in found}
    needed = points_at + ([T] if reference == "checkpoint" else [])
    missing: list[int] = []  # points with no file of their step: said together below
    absent = [t for t in needed if t not in refs]
    # The files of those steps, if there are any, and why they cannot be used (a file whose step
    # cannot be known is no step's: kernels --skip-bad left it out, and so does switch); one
    # scan of the folder for them all.
    problems = steps_problems(ckpts_dir, absent, step_regex=step_regex, iterations_per_epoch=ipe)
    for t in absent:
        problem = problems.get(t)
        if problem is not None and t == T and t not in points_at:
            raise _for_reference(problem, T, refs, points_at)
        if problem is not None:
            raise for_switch(problem)
        if t == T and t not in points_at:
            continue  # no checkpoint at T: the figure goes without the standard line (a note)
        missing.append(t)
    if missing:
        raise _not_stored(missing, ckpts_dir, sorted(refs))
    read = _read_reference(reference, T, refs, points_at) if read_reference else None
    if o.ckpts is not None:  # (else the run the store's kernels read)
        if manifest is not None:
            _refuse_another_run(store, manifest, ckpts_dir, refs, read)
        elif (kept := carried_run(located.carried, kernels_hash)) is not None:
            # a manifest missing or damaged: the records the kernel files carry stand in for it
            lost = f"the record its kernel file carries ({paths.MANIFEST_NAME} is {located.lost})"
            _refuse_another_run(store, kept, ckpts_dir, refs, read, lost)
    data = load_data(spec.data, source=spec.source)
    if len(data.test) == 0:
        raise SpecError(
            f"{spec.source}: data set '{spec.data.dataset}' has an empty test split, and the "
            "switch experiment reports test accuracy and loss. Give the data set a test split."
        )
    # the batches of the spec's recipe: refused here, not when the first point starts
    steps_per_epoch(len(data.train), spec.train.batch_size, spec_file=spec.source)
    target = SwitchStore.begin(store, manifest)
    return Sweep(
        points_at,
        ckpts_dir,
        spec,
        T,
        refs,
        data,
        target,
        said.notes[notes_from:],
        said.warnings[warnings_from:],
        read,
        located.kernels_spec,
        (*located.of_lost_manifest, *([regex_note] if manifest is None and regex_note else [])),
    )


def _read_reference(
    reference: str, T: int, refs: dict[int, CheckpointRef], points_at: list[int]
) -> LoadedCheckpoint | None:
    """The checkpoint the standard model at T comes from, read before any point trains, NaN or
    Inf in it refused: the standard model is made after the sweep, and points trained to this T
    are of no use to the other --until a fix needs. It is kept for that standard model (with the
    optimizer state inside a torch.save file, which --reference train continues with), so that
    the file is read once. A point's own checkpoint is checked (and read) by its point: None."""
    step = reference_step(reference, T, refs)
    if step is None or step in points_at:
        return None
    keep = ENTRIES if step < T else ()  # --reference train continues from it
    with non_finite_said(non_finite_advice(T, step)):
        return read_checkpoint(refs[step], keep=keep)


def _refuse_another_spec(
    store: Path,
    manifest: Mapping[str, Any] | None,
    spec: Spec,
    *,
    given_spec: bool,
    recorded_in: str = paths.MANIFEST_NAME,
) -> None:
    """Refuse a sweep whose spec is not the one the store's kernels were computed with (its
    manifest's ``spec_hash``), before anything is written, as ``kernels`` refuses it (and
    ``distance --spec`` any spec differing in more than the ``[train]`` it reads the schedule
    from; a sweep trains with ``[train]``, so that differs too here): conetool never mixes specs in a store, and its sweep would sit beside kernels of
    another run (Fig. 2 shaded from their verdict, the report showing both). A store without a
    manifest (switch alone) or without kernels has no kernels' spec to keep; a spec that differs in its ``[probe]``
    alone is the same run's (kernels computed on another probe set; the sweep does not use it).
    Asked only where ``--spec`` or ``--ckpts`` chose the spec: without them the sweep is of the
    run the store's kernels read, with its own ``conetool.toml``. ``manifest``: the store's, or
    where it is missing or damaged what its kernel files carry of it
    (:func:`~conetool.pipeline.switch_carried_spec.carried_spec`; ``recorded_in`` then says so):
    files written before they carried their spec carry its hash alone, and then a spec whose
    ``[probe]`` size and split alone differ (those of the store's probe file give the hash) is
    told as the same run's; one differing in another key of ``[probe]`` cannot be told there."""
    if manifest is None or manifest.get("spec_hash") in (None, spec.hash()):
        return
    if not manifest.get("steps"):  # no kernels (yet): nothing a sweep would be read beside
        return
    stored = manifest.get("spec")
    keys = resolved_differences(stored, spec.to_dict()) if isinstance(stored, Mapping) else []
    if keys and all(key.startswith("probe.") for key in keys):
        return
    if not isinstance(stored, Mapping) and _probe_alone(spec, manifest):
        return
    differs = f" It differs from the store's in {'; '.join(keys)}." if keys else ""
    if not isinstance(stored, Mapping):
        differs = (
            " Its kernel files carry the hash of that spec, not the spec (written before they "
            "carried it), so a spec differing from it in [probe] alone (a probe set the sweep "
            "does not use) cannot be told from another here: if yours does, rebuild the manifest "
            f"first with the spec the kernels were computed with (conetool kernels CKPTS --store "
            f"{store} --spec THAT_SPEC), and switch tells by it."
        )
    flag = f"--spec {spec.source}" if given_spec else f"the spec {spec.source}"
    raise StoreError(
        f"{flag}: its hash is {spec.hash()}, but the kernels of store {store} were computed "
        f"with spec hash {manifest.get('spec_hash')} ({recorded_in}).{differs} conetool "
        "never mixes specs in a store: a switch sweep there would be read beside the kernels of "
        "another run. Leave --spec and --ckpts out to sweep the run the store's kernels were "
        "computed from, or give this sweep a store of its own: --store OTHER_STORE."
    )


def _probe_alone(spec: Spec, manifest: Mapping[str, Any]) -> bool:
    """Whether ``spec`` with the ``[probe]`` size and split the record ``manifest`` gives
    (``{"probe": {"size", "split"}}``) is the spec of its ``spec_hash``."""
    probe = manifest.get("probe")
    if not isinstance(probe, Mapping):
        return False
    size, split = probe.get("size"), probe.get("split")
    if not isinstance(size, int) or not isinstance(split, str):
        return False
    alike = replace(spec, probe=replace(spec.probe, size=size, split=split))
    return bool(alike.hash() == manifest.get("spec_hash"))


def _refuse_another_run(
    store: Path,
    manifest: Mapping[str, Any],
    ckpts: Path,
    refs: Mapping[int, CheckpointRef],
    read: LoadedCheckpoint | None,
    recorded_in: str = f"the record in {paths.MANIFEST_NAME}",
) -> None:
    """Refuse a ``--ckpts`` run whose checkpoints are not those the store's kernels were computed
    from (another run of the same spec: a second seed, trained by one's own loop), before
    anything is written: its points would sit beside the store's run's in switch/results.csv
    and the figure, shaded from that run's verdict. Told at the latest step both hold (two runs
    that share their initial weights still differ there): its file's size, then its fingerprint,
    against the store's record of that step (the fingerprint of the reference checkpoint read
    already when it is that step, else one streamed hash of the file). A run moved or renamed
    since ``conetool kernels``, holding the same files, passes; the same run converted to other
    files (``.safetensors`` to ``.pt``) or saved again is refused too, and the message says so
    (no identity of the weights themselves is recorded to tell it by); a store without kernels,
    or with no step in common, has nothing to tell it by. A file that cannot be read in full
    there is named with why switch reads it. ``manifest``: the store's, or where it is
    missing or damaged what its kernel files carry of it
    (:func:`~conetool.pipeline.remembered.carried_run`; ``recorded_in`` then says so)."""
    records = manifest.get("steps")
    if not isinstance(records, Mapping):
        return
    common = sorted(set(refs) & {int(step) for step in records})
    if not common:
        return
    step = common[-1]
    record, ref = records[str(step)], refs[step]
    if not isinstance(record, Mapping):
        return
    try:
        size = ref.file_state()[0]
        now = read.fingerprint if read is not None and read.ref.step == step else None
        if size == record.get("size") and (now or fingerprint(ref)) == record.get("fingerprint"):
            return
    except OSError:
        return  # a file gone since the listing: its point's load says so
    except CheckpointError as exc:  # unreadable, or changed while it was read
        raise _unreadable_for_the_check(exc, step, ckpts) from None
    recorded = manifest.get("checkpoints")
    sources = record.get("source")
    was = ", ".join(map(str, sources)) if isinstance(sources, list) and sources else "its record"
    files = ", ".join(str(p) for p in ref.paths)
    differs = (
        f"it has {size} bytes, the record {record.get('size')}"
        if size != record.get("size")
        else "its bytes differ (sha256)"
    )
    in_place = isinstance(recorded, str) and Path(recorded).resolve() == ckpts.resolve()
    other = (
        f"the checkpoints in {ckpts} changed since conetool kernels read them (the run trained "
        "again into the same folder, or its files converted or saved again?)"
        if in_place
        else f"--ckpts {ckpts} holds other checkpoint files than the run the store's kernels "
        f"were computed from ({recorded or 'its directory is not recorded'}): another run, or "
        "that run converted or saved again"
    )
    raise StoreError(
        f"{other}: its checkpoint of step {step} ({files}) is not the file the kernel of step "
        f"{step} in store {store} was computed from ({was}): {differs}, against "
        f"{recorded_in}. conetool tells a run by its files' bytes, not by the weights in them, "
        "so a copy of the same run converted to other files (.safetensors to .pt) or saved "
        "again is refused too. A switch sweep there would put this run's points beside the "
        "store's run's (switch/results.csv, the figure, the report). Give this sweep a store of "
        "its own: --store OTHER_STORE"
        + (
            f"; or rerun conetool kernels {ckpts} --store {store} first to recompute the "
            "changed kernels."
            if in_place
            else f" (conetool kernels {ckpts} --store OTHER_STORE computes its kernels there); "
            "or leave --ckpts out to sweep the store's run from the files its kernels read. (A "
            "run moved or renamed since conetool kernels, holding the same files, is accepted.)"
        )
    )


def _unreadable_for_the_check(exc: CheckpointError, step: int, ckpts: Path) -> CheckpointError:
    """The error of a checkpoint that cannot be read in full when ``switch --ckpts`` hashes it
    to tell the run from the store's (its listing read no more than its header): the file's own
    error (named, with its fix), then why switch reads that step, which the sweep may not
    otherwise need."""
    return CheckpointError(
        f"{exc} (conetool switch reads the checkpoint of step {step}, the latest step both "
        f"--ckpts {ckpts} and the store's kernels hold, to tell whether it is the run those "
        "kernels were computed from; nothing was written.)"
    )


def _refuse_low_precision(spec: Spec) -> None:
    """Refuse a ``"pkg.mod:factory"`` model held in fewer than 32 bits before anything is
    written: the points would step its weights in their own dtype, without mixed precision
    (:func:`conetool.low_precision.refuse_for_training`).
    A built-in model is float32 and is not built; a factory's is built once, the global RNG
    left as it was."""
    if ":" not in spec.model.arch:
        return
    with torch.random.fork_rng(devices=[]):
        model = model_for(spec)
    refuse_for_training(model, spec.model.arch, spec.source, "conetool switch")


def _not_stored(missing: list[int], ckpts: Path, stored: list[int]) -> CheckpointError:
    """The error of --at steps the run has no checkpoint of: every one of them at once (a range
    whose stride is not the run's saving interval misses many), each with the stored steps
    nearest to it (the first 5; then how many more)."""
    if len(missing) == 1:
        t = missing[0]
        return CheckpointError(
            f"--at {t}: {ckpts} has no checkpoint of step {t}. Nearest: {nearest_steps(stored, t)}."
        )
    shown = "; ".join(f"{t}: {nearest_steps(stored, t, 3)}" for t in missing[:5])
    more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
    return CheckpointError(
        f"--at {', '.join(map(str, missing[:5]))}{'...' if len(missing) > 5 else ''}: {ckpts} "
        f"has no checkpoint of these {len(missing)} steps. Nearest stored steps ({shown}{more}). "
        "Pass --at steps the run saved."
    )


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


def for_switch(exc: CheckpointError) -> CheckpointError:
    """A checkpoint error reworded for ``switch``, which has no --skip-bad: the step is needed,
    so the advice is to fix the file or choose another switch point (for NaN or Inf weights,
    kernels' "leave this step out": another --at). (Per-file messages name no flag; only the
    listing's closing advice and its all-skipped error do.) The standard model at T words its
    own (:func:`conetool.pipeline.switch_reference.standard_reference`)."""
    text = str(exc).replace(
        NON_FINITE_ADVICE,
        "a switch point from such weights is meaningless: choose another --at step.",
    )
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
