"""The files of ``conetool distance``: the distance CSVs, the figures and the per-layer outputs,
written atomically into ``STORE/distance/`` (names from :mod:`conetool.paths`).

:mod:`conetool.pipeline.run_distance` computes the numbers and the verdict and calls these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import paths
from ..geometry import AdjacentPair, KernelError, kernel_distance
from ..io import atomic_write_csv
from ..plots import (
    adjacent_figure,
    distance_to_reference_figure,
    matrix_figure,
    per_layer_figure,
    save_figure,
)
from ..store import Store
from .matrix_cache import csv_number

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
    curves = {dt: ([p.step for p in ps], [p.distance for p in ps]) for dt, ps in pairs.items()}
    figures = [
        (
            paths.to_ref_png(root),
            distance_to_reference_figure(
                steps, to_ref, logx=logx, logy=logy, phase1_end=phase1_end
            ),
        ),
        (
            paths.adjacent_png(root),
            adjacent_figure(
                curves,
                velocity="both",
                logx=logx,
                logy=True,
                phase1_end=phase1_end,
                noise_floor=noise_floor,
            ),
        ),
        (paths.matrix_png(root), matrix_figure(steps, s, log_color=logy)),
    ]
    return [save_figure(figure, path) for path, figure in figures]


def write_per_layer(
    store: Store,
    steps: list[int],
    refs: list[int],
    dt: int,
    phase1_end: int | None,
    logx: bool,
    notes: list[str] | None = None,
) -> tuple[list[Path], dict[str, Any]] | None:
    """``per_layer.csv`` and ``per_layer.png`` from the steps of ``steps`` with a current layer
    file: each group's distance to each reference and its adjacent distance and velocity at
    ``dt`` (empty where the other step has no layer file, or a group kernel is all zeros).
    Without layer files, none (and old per-layer outputs are removed). A store whose manifest
    records no parameter groups although it has layer files (a manifest rebuilt without their
    record) keeps the per-layer outputs of an earlier run, and a note added to ``notes`` says
    how to record the groups again."""
    root = store.root
    record = store.layer_record
    if record is None:
        note = _no_record_note(store)
        if note is not None and notes is not None:
            notes.append(note)
        if note is None:
            for output in PER_LAYER_OUTPUTS:
                output(root).unlink(missing_ok=True)
        return None
    have = set(store.current_layer_steps()) & set(steps)
    if not have:
        for output in PER_LAYER_OUTPUTS:
            output(root).unlink(missing_ok=True)
        return None
    layer_steps = sorted(have)
    groups = list(record.get("groups") or {})
    cache: dict[int, dict[str, torch.Tensor]] = {}

    def load(step: int) -> dict[str, torch.Tensor] | None:
        if step not in have:
            return None
        if step not in cache:
            cache[step] = store.load_layer_kernels(step)
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

    rows: list[list[object]] = []
    curves: dict[str, tuple[list[int], list[float]]] = {g: ([], []) for g in groups}
    for step in layer_steps:
        here, later = load(step), load(step + dt)
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
    header = ["step", "group", *(f"S_ref_{r}" for r in refs), "S_adjacent", "velocity"]
    csv_path = atomic_write_csv(paths.per_layer_csv(root), header, rows)
    figure = per_layer_figure(curves, dt=dt, logx=logx, phase1_end=phase1_end)
    png = save_figure(figure, paths.per_layer_png(root))
    info = {
        "groups": groups,
        "patterns": record.get("patterns"),
        "refs": refs,
        "dt": dt,
        "steps": len(layer_steps),
        "missing_steps": [s for s in steps if s not in have],
    }
    return [csv_path, png], info


def _no_record_note(store: Store) -> str | None:
    """None when the store has no layer files; else (its manifest records no parameter groups:
    rebuilt without their record) the note that the per-layer outputs of an earlier run are
    kept, and how to record the groups again."""
    folder = paths.layer_kernels_dir(store.root)
    if not (folder.is_dir() and any(folder.glob("step_*.safetensors"))):
        return None
    kept = [p(store.root).name for p in PER_LAYER_OUTPUTS if p(store.root).is_file()]
    said = f"kept {' and '.join(kept)} as they were: " if kept else "no per-layer outputs: "
    return (
        f"{said}{paths.MANIFEST_NAME} records no parameter groups, although {folder} holds "
        f"layer kernel files. Rerun {store.kernels_command()} --per-layer, or --groups "
        "'NAME=PATTERN,...' with the patterns that made them, to record them again"
    )
