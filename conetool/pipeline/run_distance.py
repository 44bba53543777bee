"""``conetool distance``: distance to references, adjacent distance and velocity, the S matrix,
and the verdict (paper Fig. 1a, 1b), into ``STORE/distance/``.

Outputs (names from :mod:`conetool.paths`)::

    distance/to_ref.csv     step, ref_<τ>, ...        S(θ(t), θ(τ)) for every stored t (Fig. 1a)
    distance/adjacent.csv   step, dt, S, velocity     one row per stored pair (t, t + dt) (Fig. 1b)
    distance/matrix.npz     steps (K,), S (K, K)      (+ key, excluded: see matrix_cache)
    distance/summary.json   the verdict with its numbers, references, dts, rules, store identity,
                            the noise floor of S (also cached in distance/noise.json), the
                            options given (logx, logy, skip_bad, noise: the report repeats them),
                            and what it said (``notes``, ``warnings``: see saved_results)
    distance/to_ref.png, adjacent.png (distance and velocity panels), matrix.png
    distance/per_layer.csv  step, group, S_ref_<τ> ..., S_adjacent, velocity   with the layer
                            kernels of ``kernels --per-layer``: each group's distance to each
                            reference and its adjacent distance and velocity at the verdict's dt
    distance/per_layer.png  the velocity of each group against step (log y, Phase I shaded)

``summary.json`` is removed before the other outputs are written, and written after them: a run
that fails midway (a full disk) leaves no summary beside outputs of another run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import paths
from .._version import __version__
from ..choices import step_or_last
from ..errors import ConetoolError, StoreError
from ..geometry import (
    AdjacentPair,
    GeometryError,
    adjacent,
    default_velocity_dt,
    distance_to_reference,
    spacings,
    step_index,
)
from ..io import atomic_write_json
from ..library_call import library_call
from ..progress import NullProgress, Progress, Said
from ..spec import Spec
from ..store import Store
from ..store_manifest import mixed_engines_note
from ..threads import limit_threads
from ..verdict import Verdict, VerdictRules, phase_verdict
from ..verdict_schedule import LrClock
from .distance_outputs import (
    PER_LAYER_OUTPUTS,
    per_layer_table,
    write_adjacent,
    write_figures,
    write_per_layer,
    write_to_ref,
)
from .kept_files import file_states, unchanged
from .kernels_running import kernels_running
from .matrix_cache import kernel_matrix, kernels_key, require_kernels
from .noise_estimate import estimate_noise_floor
from .resolve import moved_run
from .saved_results import (
    recorded_schedule,
    remove_old_summary,
    said_in_summary,
    unrecorded_schedule,
)
from .schedule_spec import read_from_note, schedule_record, schedule_source, verdict_spec

__all__ = ["UNUSED_REF", "AdjacentCurve", "DistanceResult", "ReferenceCurve", "distance"]

#: How the warning on a ``refs`` step the verdict does not use begins (``demo``, which chose its
#: references itself, leaves it out: the verdict's explanation names them).
UNUSED_REF = "the verdict does not use --ref"


@dataclass(frozen=True)
class ReferenceCurve:
    """Summary of ``S(θ(t), θ(ref))`` over the stored steps.

    Attributes:
        ref: the reference step τ.
        final: ``S`` at the last stored step (dimensionless, in ``[0, 2]``).
        max: its largest value over the stored steps.
        max_step: the step where it is largest.
    """

    ref: int
    final: float
    max: float
    max_step: int


@dataclass(frozen=True)
class AdjacentCurve:
    """Summary of the pairs ``(t, t + dt)``.

    Attributes:
        dt: the spacing in steps.
        pairs: how many stored pairs ``(t, t + dt)`` there are.
        final: ``S`` of the last pair.
        max: the largest ``S`` of the pairs.
        peak_velocity: the largest ``S / dt`` (per step).
        peak_step: the step ``t`` where it peaks.
        verdict: whether this ``dt`` is the one the verdict's velocity uses.
    """

    dt: int
    pairs: int
    final: float
    max: float
    peak_velocity: float
    peak_step: int
    verdict: bool = False


@dataclass(frozen=True, eq=False)
class DistanceResult:
    """What :func:`distance` computed and wrote.

    Attributes:
        store: the store directory.
        steps: the ``K`` steps of the S matrix (stored steps minus ``excluded``), ascending.
        S: float64 ``(K, K)`` kernel distances, rows and columns in the order of ``steps``.
        refs: the reference steps τ, ascending.
        dts: the adjacent spacings, ascending.
        to_ref: τ -> float64 ``(K,)`` ``S(θ(t), θ(τ))`` aligned with ``steps``.
        adjacent: dt -> the stored pairs ``(t, dt, S, velocity)``, ordered by t.
        reference_curves, adjacent_curves: per τ and per dt, the numbers of the summary table.
        verdict: the phase verdict (:func:`conetool.verdict.phase_verdict`).
        rules: the thresholds the verdict used.
        excluded: steps left out with ``skip_bad`` -> why.
        matrix_reused: the S matrix was read back from ``distance/matrix.npz`` (kernels unchanged).
        files: every file written.
        kept: those of ``files`` left as they were, not written: a PNG that already held
            its figure (:func:`~conetool.plots.write_figure`).
        warnings: what changes how the numbers read or asks for a rerun: a ``kernels`` run still
            writing the store, kernels made by more than one engine, the noise floor not
            estimated, a ``refs`` step the verdict does not use, per-layer outputs left out or
            kept as they were. Said as ``warning: ...`` through ``progress`` as they come.
        notes: information only: a default reference taken, a model module imported from
            where ``kernels`` found it (for a noise floor estimated now; one read from
            ``noise.json`` imports nothing). Said as ``note: ...`` as they come.
    """

    store: Path
    steps: list[int]
    S: np.ndarray
    refs: list[int]
    dts: list[int]
    to_ref: dict[int, np.ndarray]
    adjacent: dict[int, list[AdjacentPair]]
    reference_curves: list[ReferenceCurve]
    adjacent_curves: list[AdjacentCurve]
    verdict: Verdict
    rules: VerdictRules
    excluded: dict[int, str] = field(default_factory=dict)
    matrix_reused: bool = False
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


@library_call
def distance(
    store: str | Path = paths.DEFAULT_STORE,
    *,
    refs: int | str | Sequence[int | str] | None = None,
    dts: int | Sequence[int] | None = None,
    rules: VerdictRules | None = None,
    logx: bool = False,
    logy: bool = False,
    skip_bad: bool = False,
    max_memory: int | str | None = None,
    noise: bool = True,
    ckpts: str | Path | None = None,
    spec: str | Path | Spec | None = None,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> DistanceResult:
    """Kernel distances of a store's kernels: to references, between neighbours, all pairs.

    Args:
        store: the store directory (``conetool kernels`` wrote it).
        refs: reference steps τ (ints, or ``"last"``; one, or a sequence); default step 0, or the first stored step
            when 0 is not stored. Each must be stored.
        dts: adjacent spacings (one, or a sequence); default the smallest spacing between consecutive stored steps,
            plus the ``dt`` the verdict's velocity uses when that is another one. A ``dt`` with no
            stored pair is an error that lists the spacings that exist.
        rules: the verdict's thresholds (:class:`conetool.verdict.VerdictRules`). When ``refs``
            is given, its steps in Phase II are the verdict's references. A
            ``rules.velocity_dt`` with no stored pair is an error that lists the spacings that
            exist, as a ``dt`` is.
        logx: symmetric-log step axis on the curve figures (keeps step 0).
        logy: log distance axis on the distance-to-reference figure and log colours on the S
            matrix heatmap (the adjacent figure always has a log axis, as in the paper).
        skip_bad: leave out kernel files that cannot be read or are non-finite (warned about),
            and layer files that cannot be read, are non-finite or of another shape than the
            step's kernel (from the per-layer outputs only; one note names them).
        max_memory: budget for the S matrix's two float64 kernel blocks (default 1 GiB).
        noise: estimate the numerical noise floor of S on the run's model (rebuilt from the
            last stored step's checkpoint; :mod:`conetool.pipeline.noise_estimate`), read by
            the verdict and drawn on the adjacent figure; reused while that checkpoint is
            unchanged.
        ckpts: the run's checkpoint directory, when it is no longer where the store's manifest
            says (the noise floor's checkpoint is looked up there); default the manifest's.
        spec: the run's spec (a TOML path or a :class:`~conetool.spec.Spec`) instead of the one
            the manifest records: the store's (same hash), or one that differs from it only in
            ``[train]`` keys no kernel depends on (the schedule, ``lr``, ``steps``, ...; not
            ``batch_size``), whose ``[train]`` the verdict then reads (a note says so, and
            ``summary.json``'s ``schedule_spec`` records the file;
            :func:`conetool.pipeline.schedule_spec.verdict_spec`).
        threads: CPU threads of PyTorch and BLAS for the call, a count or ``"auto"`` (the idle
            cores; :func:`conetool.limit_threads`).
        progress: progress display (a bar over kernel loads, and the warnings and notes as they
            come); default silent.

    Returns:
        A :class:`DistanceResult`; the files listed in this module's docstring are written.

    Example::

        result = conetool.distance("conetool-out", refs=[0, 100], dts=[5, 50])
        print(result.verdict.regime, result.verdict.phase1_end)   # e.g. "cone", 60
        S = result.S                                               # (K, K), rows = result.steps
    """
    with limit_threads(threads):
        progress = progress or NullProgress()
        rules = VerdictRules() if rules is None else rules
        if not isinstance(rules, VerdictRules):
            raise ConetoolError(
                f"rules={rules!r} is not a conetool.VerdictRules. Pass the verdict's "
                "thresholds as one, e.g. rules=conetool.VerdictRules(min_drop=5.0) (the command line's "
                "--min-drop, --velocity-dt, ... flags), or leave rules out for the defaults."
            )
        opened = Store.open(store)
        # a store replaced meanwhile (kernels --overwrite) stops it, and gets none of its files
        with opened.reading("distance"):
            stored = opened.steps()
            require_kernels(opened, stored)
            wanted = _parse_refs(refs, stored)
            dts = _parse_dts(dts)
            for ref in wanted:  # before any kernel is read: a typo fails at once
                if ref != "last":
                    step_index(stored, int(ref))
            if dts is not None:
                for dt in dts:
                    _check_dt(dt, stored)
            if rules.velocity_dt is not None:  # a typo fails at once, as a --dt does
                _check_dt(rules.velocity_dt, stored, velocity=True)
            given_spec, train_differs = verdict_spec(opened, spec)
            given_ckpts = moved_run(ckpts)

            matrix = kernel_matrix(
                opened,
                command="distance",
                skip_bad=skip_bad,
                max_memory=max_memory,
                progress=progress,
            )
            steps, s = matrix.steps, matrix.S
            said = Said(progress)  # each message as the work comes to it (the noise floor's too)
            running = kernels_running(opened, "conetool distance")
            if running is not None:
                said.warn(running)
            in_matrix = set(steps)
            mixed = mixed_engines_note(
                {step: r for step, r in opened.records().items() if step in in_matrix}
            )
            if mixed is not None:  # a kernel recomputed by another engine or on another device
                said.warn(mixed)
            ref_steps = _resolve_refs(wanted, steps, matrix.excluded, said.note)
            if rules.velocity_dt is not None:  # its pairs may have lost a step to --skip-bad
                _check_dt(rules.velocity_dt, steps, excluded=matrix.excluded, velocity=True)

            dt_list = (
                _default_dts(s, steps, rules) if dts is None else sorted({int(dt) for dt in dts})
            )
            pairs: dict[int, list[AdjacentPair]] = {}
            for dt in dt_list:
                pairs[dt] = adjacent(s, steps, dt)
                if not pairs[dt]:
                    _check_dt(dt, steps, excluded=matrix.excluded)

            to_ref = {ref: distance_to_reference(s, steps, ref) for ref in ref_steps}
            noise_record = None
            if noise:
                noise_record, why = estimate_noise_floor(
                    opened, device="auto", ckpts=given_ckpts, spec=given_spec, log=progress.log
                )
                if why and noise_record is None:  # not estimated: the verdict reads no floor
                    said.warn(why)
                elif why:  # estimated, the model's module imported from where kernels found it
                    said.note(why)
            floor = None if noise_record is None else float(noise_record["floor"])
            if train_differs and given_spec is not None:
                said.note(read_from_note(given_spec, train_differs))
            clock = recorded_schedule(
                opened, given_spec, steps[-1], said.warn, schedule_source(given_spec, train_differs)
            )
            unrecorded = unrecorded_schedule(opened, given_spec, steps, given_ckpts)
            if unrecorded is not None:  # a note when the run's saved rates were one rate
                (said.warn if unrecorded.warning else said.note)(unrecorded.message)
            verdict = _read_verdict(
                s, steps, ref_steps if wanted else None, rules, said.warn, floor, clock
            )
            ref_curves = [_reference_curve(ref, to_ref[ref], steps) for ref in ref_steps]
            used = verdict.numbers.get("velocity", {}).get("dt")
            dt_curves = [_adjacent_curve(dt, pairs[dt], dt == used) for dt in dt_list]

            layer_dt = used if used is not None else dt_list[0]
            # before any file is written: a layer file it refuses leaves them all as they were
            layers = per_layer_table(opened, steps, ref_steps, layer_dt, skip_bad=skip_bad)
            for message in layers.warnings:  # per-layer outputs left out, or kept as they were
                said.warn(message)

            with opened.writing_results("distance"):
                root = opened.root
                remove_old_summary(paths.distance_summary(root))  # written again last
                figures = [p(root) for p in (*_OUTPUTS, *PER_LAYER_OUTPUTS)]
                before = file_states(p for p in figures if p.suffix == ".png")  # matrix.npz: saved
                files = [write_to_ref(root, steps, to_ref), write_adjacent(root, pairs)]
                if matrix.saved:
                    files.append(paths.matrix_npz(root))
                files += write_figures(
                    root, steps, s, to_ref, pairs, verdict.phase1_end, logx, logy, floor
                )
                per_layer = write_per_layer(
                    opened, steps, ref_steps, layer_dt, verdict.phase1_end, logx, table=layers
                )
                if per_layer is not None:
                    files += per_layer[0]
                summary = {
                    "command": "distance",
                    "conetool_version": __version__,
                    "store": str(root),
                    "identity": asdict(opened.identity),
                    "matrix_key": matrix.key,
                    "kernels_key": kernels_key(opened),
                    "steps": {"count": len(steps), "first": steps[0], "last": steps[-1]},
                    "excluded": {str(k): v for k, v in sorted(matrix.excluded.items())},
                    "refs": ref_steps,
                    "dts": dt_list,
                    "verdict_dt": used,
                    "rules": _rules_dict(rules),
                    "schedule_spec": schedule_record(opened, given_spec, train_differs),
                    "noise": noise_record,
                    "verdict": verdict.to_dict(),
                    "reference_curves": [asdict(c) for c in ref_curves],
                    "adjacent_curves": [asdict(c) for c in dt_curves],
                    "options": {"logx": logx, "logy": logy, "skip_bad": skip_bad, "noise": noise},
                    "files": [p(root).name for p in _OUTPUTS],
                    **said_in_summary(said.warnings, said.notes),
                }
                if per_layer is not None:
                    summary["per_layer"] = per_layer[1]
                    summary["files"] += [p(root).name for p in PER_LAYER_OUTPUTS]
                summary_path = paths.distance_summary(root)
                atomic_write_json(summary_path, summary)
                files.append(summary_path)
        return DistanceResult(
            store=root,
            steps=steps,
            S=s,
            refs=ref_steps,
            dts=dt_list,
            to_ref=to_ref,
            adjacent=pairs,
            reference_curves=ref_curves,
            adjacent_curves=dt_curves,
            verdict=verdict,
            rules=rules,
            excluded=matrix.excluded,
            matrix_reused=matrix.reused,
            files=files,
            warnings=said.warnings,
            notes=said.notes,
            kept=unchanged(files, before),
        )


# Every file in STORE/distance/, in the order summary.json lists them.
_OUTPUTS = (
    paths.to_ref_csv,
    paths.adjacent_csv,
    paths.matrix_npz,
    paths.distance_summary,
    paths.to_ref_png,
    paths.adjacent_png,
    paths.matrix_png,
)


# With layer kernels (``kernels --per-layer``).


# --------------------------------------------------------------------------- options


def _parse_refs(
    refs: int | str | Sequence[int | str] | None, stored: Sequence[int] = ()
) -> list[int | str]:
    """``--ref`` values as ints or ``"last"`` (one, or a sequence of them); an error naming
    ``--ref`` on anything else, and on a negative step (never stored: steps count from 0),
    which names the ``stored`` steps' range."""
    if refs is None:
        return []
    if isinstance(refs, str) or not isinstance(refs, Iterable):
        refs = [refs]
    parsed: list[int | str] = []
    for raw in refs:
        step = step_or_last(raw)
        if isinstance(step, int) and step < 0:
            held = f" (this store holds steps {stored[0]} to {stored[-1]})" if stored else ""
            raise GeometryError(
                f"--ref {step}: steps count from 0, so a negative step is never stored. Pass a "
                f"stored step{held} or --ref last."
            )
        if step is not None:
            parsed.append(step)
        else:
            raise ConetoolError(
                f"--ref {raw!r} is not a step. Pass a stored step (an integer, e.g. "
                "--ref 100) or --ref last; repeat --ref for several references."
            )
    return parsed


def _parse_dts(dts: int | Sequence[int] | None) -> list[int] | None:
    """``dts`` as ints: one or a sequence, each an int or its text (``--dt 5``); a
    :class:`GeometryError` naming ``--dt`` on anything else (a str was read a character at a
    time: ``dts="15"`` asked for spacings 1 and 5)."""
    if dts is None:
        return None
    if isinstance(dts, str) or not isinstance(dts, Iterable):
        dts = [dts]
    parsed: list[int] = []
    for raw in dts:
        step = step_or_last(raw)  # an int, a numpy integer or its digits, as --ref takes them
        if isinstance(step, int):
            parsed.append(step)
        else:
            raise GeometryError(
                f"--dt {raw!r} is not a number of steps. Pass a positive whole number of steps "
                "(e.g. --dt 5, dts=5); repeat --dt (a sequence, dts=[5, 50]) for several."
            )
    return parsed


def _resolve_refs(
    wanted: list[int | str],
    steps: list[int],
    excluded: dict[int, str],
    note: Callable[[str], None],
) -> list[int]:
    """The reference steps: ``wanted`` resolved (``"last"``), checked to be in ``steps``; without
    any, step 0, else the first of ``steps`` (a default taken, told to ``note``)."""
    if not wanted:
        if 0 in steps:
            return [0]
        said = f"step 0 is not stored; the reference defaults to the first stored step, {steps[0]}"
        if 0 in excluded:
            said = (
                f"step 0 was left out (--skip-bad); the reference defaults to the first usable "
                f"step, {steps[0]}"
            )
        note(said)
        return [steps[0]]
    resolved = []
    for ref in wanted:
        if ref == "last":
            resolved.append(steps[-1])
            continue
        step = int(ref)
        if step in excluded:
            raise StoreError(
                f"--ref {step}: that step was left out by --skip-bad ({excluded[step]}). "
                f"Choose another reference, e.g. {_near(steps, step)}, or recompute the kernel "
                "(conetool kernels)."
            )
        step_index(steps, step)
        resolved.append(step)
    return sorted(set(resolved))


def _near(steps: list[int], step: int) -> str:
    near = sorted(sorted(steps, key=lambda s: abs(s - step))[:2])
    return " or ".join(str(s) for s in near)


def _check_dt(
    dt: int,
    steps: list[int],
    excluded: dict[int, str] | None = None,
    *,
    velocity: bool = False,
) -> None:
    """Raise when no two of ``steps`` are ``dt`` apart, listing the spacings that occur;
    ``velocity``: ``dt`` is the verdict's (``--velocity-dt``, ``rules.velocity_dt``)."""
    given = f"velocity_dt={dt} (--velocity-dt {dt})" if velocity else f"--dt {dt}"
    if int(dt) != dt or dt < 1:
        raise GeometryError(f"{given} is not a positive number of steps.")
    present = set(steps)
    if any(t + dt in present for t in steps):
        return
    consecutive = spacings(steps)
    others = [d for d in spacings(steps, consecutive=False) if d not in consecutive]
    shown = ", ".join(str(d) for d in others[:12]) + (" ..." if len(others) > 12 else "")
    also = f"; other differences that occur: {shown}" if others else ""
    left_out = ""
    if excluded:
        left_out = (
            f" (steps {', '.join(str(s) for s in sorted(excluded))} were left out by --skip-bad)"
        )
    fix = (
        "Pass one of them as --velocity-dt (rules=VerdictRules(velocity_dt=...)), or leave it "
        "out: the verdict then picks the spacing that covers the run (or the smallest multiple "
        "of a spacing that is at least 1/50 of the run and covers it as well)."
        if velocity
        else "Pass one of them as --dt."
    )
    raise GeometryError(
        f"{given} matches no pair of stored steps: no two stored steps are {dt} apart"
        f"{left_out}. Spacings between consecutive stored steps: "
        f"{', '.join(str(d) for d in consecutive)}{also}. {fix}"
    )


def _default_dts(s: np.ndarray, steps: list[int], rules: VerdictRules) -> list[int]:
    """The smallest consecutive spacing, plus the verdict's velocity dt when it has pairs: the
    curve the verdict reads is drawn (``*`` in the table) and written to adjacent.csv."""
    chosen = {min(spacings(steps))}
    verdict_dt = rules.velocity_dt if rules.velocity_dt is not None else default_velocity_dt(steps)
    if verdict_dt is not None and adjacent(s, steps, verdict_dt):
        chosen.add(int(verdict_dt))
    return sorted(chosen)


def _read_verdict(
    s: np.ndarray,
    steps: list[int],
    refs: list[int] | None,
    rules: VerdictRules,
    warn: Callable[[str], None],
    noise_floor: float | None = None,
    schedule: LrClock | None = None,
) -> Verdict:
    """The phase verdict; each of the user's references it cannot use is told to ``warn`` (the
    verdict reads other steps than the user asked for)."""
    verdict = phase_verdict(
        steps, s, refs=refs, rules=rules, noise_floor=noise_floor, schedule=schedule
    )
    for u in verdict.numbers.get("user_references", []):
        if not u["used"]:
            warn(f"{UNUSED_REF} {u['ref']}: {u['why']}")
    return verdict


def _rules_dict(rules: VerdictRules) -> dict[str, Any]:
    return rules.to_dict()


# --------------------------------------------------------------------------- summaries


def _reference_curve(ref: int, values: np.ndarray, steps: list[int]) -> ReferenceCurve:
    peak = int(np.argmax(values))
    return ReferenceCurve(ref, float(values[-1]), float(values[peak]), int(steps[peak]))


def _adjacent_curve(dt: int, pairs: list[AdjacentPair], for_verdict: bool) -> AdjacentCurve:
    velocities = np.array([p.velocity for p in pairs])
    peak = int(np.argmax(velocities))
    return AdjacentCurve(
        dt=dt,
        pairs=len(pairs),
        final=float(pairs[-1].distance),
        max=float(max(p.distance for p in pairs)),
        peak_velocity=float(velocities[peak]),
        peak_step=int(pairs[peak].step),
        verdict=for_verdict,
    )
