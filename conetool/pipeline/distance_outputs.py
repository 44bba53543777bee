"""The files of ``conetool distance``: the distance CSVs, the figures and the per-layer outputs,
written atomically into ``STORE/distance/`` (names from :mod:`conetool.paths`).

:mod:`conetool.pipeline.run_distance` computes the numbers and the verdict and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .. import paths
from ..errors import StoreError, StoreReplacedError
from ..geometry import AdjacentPair, KernelError, kernel_distance
from ..io import atomic_write_csv
from ..layer_groups import groups_flag
from ..plots import (
    adjacent_figure,
    distance_to_reference_figure,
    matrix_figure,
    per_layer_figure,
    write_figure,
)
from ..store import Store
from ..store_manifest import kernel_header
from .matrix_cache import csv_number
from .recompute_notes import DELETE, recompute_note

#: The per-layer outputs, removed when a store has no layer kernels.
PER_LAYER_OUTPUTS = (paths.per_layer_csv, paths.per_layer_png)


def write_to_ref(root: Path, steps: list[int], to_ref: dict[int, np.ndarray]) -> Path:
    refs = sorted(to_ref)
    rows = [[step, *(csv_number(to_ref[r][i]) for r in refs)] for i, step in enumerate(steps)]
    return atomic_write_csv(paths.to_ref_csv(root), ["step", *(f"ref_{r}" for r in refs)], rows)


def write_adjacent(root: Path, pairs: dict[int, list[AdjacentPair]]) -> Path:
    rows = [
        [p.step, p.dt, csv_number(p.distance), csv_number(p.velocity)]
        for dt in sorted(pairs)
        for p in pairs[dt]
    ]
    return atomic_write_csv(paths.adjacent_csv(root), ["step", "dt", "S", "velocity"], rows)


def write_figures(
    root: Path,
    steps: list[int],
    s: np.ndarray,
    to_ref: dict[int, np.ndarray],
    pairs: dict[int, list[AdjacentPair]],
    phase1_end: int | None,
    logx: bool,
    logy: bool,
    noise_floor: float | None = None,
) -> list[Path]:
    """The three figures of ``distance``, each drawn only when its PNG does not already hold it
    (:func:`~conetool.plots.write_figure`)."""
    curves = {dt: ([p.step for p in ps], [p.distance for p in ps]) for dt, ps in pairs.items()}
    return [
        write_figure(
            paths.to_ref_png(root),
            distance_to_reference_figure,
            steps,
            to_ref,
            logx=logx,
            logy=logy,
            phase1_end=phase1_end,
        ),
        write_figure(
            paths.adjacent_png(root),
            adjacent_figure,
            curves,
            velocity="both",
            logx=logx,
            logy=True,
            phase1_end=phase1_end,
            noise_floor=noise_floor,
        ),
        write_figure(paths.matrix_png(root), matrix_figure, steps, s, log_color=logy),
    ]


@dataclass(frozen=True)
class PerLayerTable:
    """What ``distance`` writes of the layer kernels, computed before it writes anything (a
    layer file it refuses then leaves every output as it was).

    Attributes:
        rows: the rows of ``per_layer.csv`` (None: nothing to write: no recorded groups, or
            no usable layer file).
        header: its header.
        curves: group -> (steps, velocities) of ``per_layer.png``.
        dt: the dt of the adjacent distances.
        info: ``summary.json``'s ``per_layer``.
        keep: with no rows, keep the per-layer outputs of an earlier run (the store has layer
            files but its manifest no record of their groups), rather than remove them.
        warnings: what ``distance`` says as warnings (per-layer numbers lost or stale): the
            steps without a current layer file (missing, or stale: of another checkpoint or
            grouping), the steps whose layer file was left out (``skip_bad``), per-layer outputs
            kept as they were.
    """

    rows: list[list[object]] | None
    header: list[str] = field(default_factory=list)
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    dt: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    keep: bool = False
    warnings: list[str] = field(default_factory=list)


def per_layer_table(
    store: Store, steps: list[int], refs: list[int], dt: int, *, skip_bad: bool = False
) -> PerLayerTable:
    """The per-layer table from the steps of ``steps`` with a current layer file: each group's
    distance to each reference and its adjacent distance and velocity at ``dt`` (empty where
    the other step has no layer file, or a group kernel is all zeros).

    A layer file that cannot be read, holds NaN or inf, or a kernel of another shape than the
    step's kernel is an error naming it and the fix, as a kernel file is; with ``skip_bad`` its
    step is left out (its cells empty) and one warning names the steps, the reason and the command
    that recomputes them. A step without a current layer file (none, or one of another
    checkpoint or grouping: ``missing_steps`` in ``info``) is named in a warning too, with the
    command that recomputes it, as ``spectrum`` names the steps without a current eval kernel."""
    record = store.layer_record
    if record is None:
        return _no_record(store)
    wanted = str(record.get("hash"))
    records = store.records()
    have: set[int] = set()
    bad: dict[int, str] = {}  # step -> why its layer file cannot be used
    missing: dict[int, str] = {}  # step -> why it has no current layer file (missing_steps)
    for step in steps:
        rec = records.get(step)
        if rec is None:
            continue
        problem = store.layer_kernel_problem(step, wanted, rec.fingerprint)
        if problem is None:
            have.add(step)
            continue
        unreadable = (
            _unreadable(store, step) if paths.layer_kernel(store.root, step).is_file() else None
        )
        if unreadable is not None:
            bad[step] = unreadable
        else:  # no layer file, or a stale one
            missing[step] = problem
    groups = list(record.get("groups") or {})
    cache: dict[int, dict[str, torch.Tensor]] = {}

    def refuse(step: int) -> None:
        """Without ``skip_bad``, the error a bad layer file of ``step`` is."""
        if skip_bad:
            return
        reason, delete, _ = bad[step].partition(f"; {DELETE}")
        fix = "Delete that file and rerun" if delete else "Rerun"
        raise StoreError(
            f"step {step}: {reason}. {fix} {store.kernels_command()} to recompute it, or pass "
            "--skip-bad to leave the step out of the per-layer outputs."
        )

    def load(step: int) -> dict[str, torch.Tensor] | None:
        """The layer kernels of ``step``, checked (finite, shaped like the step's kernel);
        None when it has no current layer file or a bad one (:func:`refuse`)."""
        if step not in have or step in bad:
            return None
        if step not in cache:
            try:
                loaded = store.load_layer_kernels(step)
            except StoreReplacedError:
                raise
            except StoreError as exc:  # not finite, or its data cannot be read
                bad[step] = f"{str(exc).split('. ')[0]}; {DELETE}"
                refuse(step)
                return None
            shape = _kernel_shape(store, step)
            odd = [g for g, k in loaded.items() if shape is not None and tuple(k.shape) != shape]
            if odd:
                bad[step] = (
                    f"layer kernel file {paths.layer_kernel(store.root, step)} holds a kernel of "
                    f"shape {tuple(loaded[odd[0]].shape)} for group {odd[0]}, not the {shape} "
                    f"of the step's kernel; {DELETE}"
                )
                refuse(step)
                return None
            cache[step] = loaded
        return cache[step]

    def between(
        a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor] | None, g: str
    ) -> float:
        if a is None or b is None or g not in a or g not in b:
            return float("nan")
        try:
            return kernel_distance(a[g], b[g])
        except KernelError:  # a group whose kernel is zero at one of the steps
            return float("nan")

    for step in sorted(bad):  # unreadable headers: before any kernel is read
        refuse(step)
    rows: list[list[object]] = []
    curves: dict[str, tuple[list[int], list[float]]] = {g: ([], []) for g in groups}
    for step in sorted(have):
        here = load(step)
        if here is None:
            continue
        later = load(step + dt)
        for g in groups:
            to_refs = [between(here, load(ref), g) for ref in refs]
            s_adj = between(here, later, g)
            rows.append(
                [
                    step,
                    g,
                    *(csv_number(x) for x in to_refs),
                    csv_number(s_adj),
                    csv_number(s_adj / dt),
                ]
            )
            if later is not None:
                curves[g][0].append(step)
                curves[g][1].append(s_adj / dt)
        for old in [k for k in cache if k <= step and k not in refs]:
            del cache[old]
    warned = [_missing_warning(store, record, missing)] if missing else []
    warned += [_left_out_warning(store, bad)] if bad else []
    layer_steps = sorted(have - set(bad))
    if not layer_steps:  # the outputs of an earlier run are kept while files are bad
        return PerLayerTable(None, keep=bool(bad), warnings=warned)
    header = ["step", "group", *(f"S_ref_{r}" for r in refs), "S_adjacent", "velocity"]
    info = {
        "groups": groups,
        "patterns": record.get("patterns"),
        "refs": refs,
        "dt": dt,
        "steps": len(layer_steps),
        "missing_steps": sorted(missing),
        "left_out": {str(s): why for s, why in sorted(bad.items())},
    }
    return PerLayerTable(rows, header, curves, dt, info, warnings=warned)


def _unreadable(store: Store, step: int) -> str | None:
    """Why the layer file of ``step`` cannot be read (its header; kernels recomputes it), or
    None when it can."""
    path = paths.layer_kernel(store.root, step)
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (OSError, SafetensorError) as exc:
        return f"layer kernel file {path} cannot be read ({exc})"
    return None


def _kernel_shape(store: Store, step: int) -> tuple[int, ...] | None:
    """The shape of the kernel of ``step`` (its file's header), or None when it cannot be had."""
    record = store.record(step)
    if record is None:
        return None
    header = kernel_header(store.root / record.kernel, "kernel file")
    return None if isinstance(header, str) else header[1]


def _layers_command(store: Store, record: dict[str, Any]) -> str:
    """The ``conetool kernels`` command that recomputes the layer files of the recorded grouping
    ``record``: ``--per-layer`` for leaf modules, else ``--groups`` with its patterns (a bare
    ``--per-layer`` would regroup by leaf modules and delete the store's layer files)."""
    return f"{store.kernels_command()} {groups_flag(record)}"


def _missing_warning(store: Store, record: dict[str, Any], why: dict[int, str]) -> str:
    """The warning naming the steps without a current layer file (``why``: step -> no file, or
    why it is stale), with the command that recomputes them (the wording of spectrum's warning
    on eval kernels)."""
    command = _layers_command(store, record)
    return recompute_note(
        store, why, lost="per-layer distances", files="layer kernels", command=command
    )


def _left_out_warning(store: Store, why: dict[int, str]) -> str:
    """The warning naming the steps whose layer file was left out (``why``: step -> the reason),
    with the command that recomputes them (the wording of spectrum's warning on eval kernels)."""
    return recompute_note(
        store,
        why,
        lost="per-layer distances",
        files="layer kernels",
        aside=", left out (--skip-bad)",
    )


def _no_record(store: Store) -> PerLayerTable:
    """The table of a store whose manifest records no parameter groups: none. When the store
    has layer files all the same (a manifest rebuilt without their record), the per-layer
    outputs of an earlier run are kept, and a warning says how to record the groups again."""
    folder = paths.layer_kernels_dir(store.root)
    if not (folder.is_dir() and any(folder.glob("step_*.safetensors"))):
        return PerLayerTable(None)
    kept = [p(store.root).name for p in PER_LAYER_OUTPUTS if p(store.root).is_file()]
    said = f"kept {' and '.join(kept)} as they were: " if kept else "no per-layer outputs: "
    warning = (
        f"{said}{paths.MANIFEST_NAME} records no parameter groups, although {folder} holds "
        f"layer kernel files. Rerun {store.kernels_command()} --per-layer, or --groups "
        "'NAME=PATTERN,...' with the patterns that made them, to record them again"
    )
    return PerLayerTable(None, keep=True, warnings=[warning])


def write_per_layer(
    store: Store,
    steps: list[int],
    refs: list[int],
    dt: int,
    phase1_end: int | None,
    logx: bool,
    *,
    table: PerLayerTable | None = None,
) -> tuple[list[Path], dict[str, Any]] | None:
    """``per_layer.csv`` and ``per_layer.png`` of ``table`` (:func:`per_layer_table` of
    ``steps``, ``refs`` and ``dt`` when not given). Without rows, none (and old per-layer
    outputs are removed, unless the table keeps them)."""
    root = store.root
    table = per_layer_table(store, steps, refs, dt) if table is None else table
    if table.rows is None:
        if not table.keep:
            for output in PER_LAYER_OUTPUTS:
                output(root).unlink(missing_ok=True)
        return None
    csv_path = atomic_write_csv(paths.per_layer_csv(root), table.header, table.rows)
    png = write_figure(
        paths.per_layer_png(root),
        per_layer_figure,
        table.curves,
        dt=table.dt,
        logx=logx,
        phase1_end=phase1_end,
    )
    return [csv_path, png], table.info
