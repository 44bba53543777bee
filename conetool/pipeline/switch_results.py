"""A switch sweep's files over every finished point of its spec and T: results.csv,
results.json and the figure switch.png (Phase I shaded from ``distance``'s verdict on the kernels
the store holds now)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ConetoolError
from ..io import atomic_write_csv, atomic_write_json
from ..plots import switch_figure, write_figure
from ..store import Store
from .matrix_cache import kernels_key
from .saved_results import said_in_summary, saved_phase1_end
from .switch_finished_points import SwitchPoint
from .switch_store import SwitchStore

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


def _kernels_now(store: Path) -> str | None:
    """The key of the kernels ``store`` holds now, so that Fig. 2 shades Phase I only from a
    distance verdict of those kernels (as the spectrum figure); None without a readable store."""
    try:
        return kernels_key(Store.open(store))
    except ConetoolError:
        return None


def write_sweep(
    store: SwitchStore,
    points: list[SwitchPoint],
    reference: dict[str, Any] | None,
    until: int,
    *,
    warnings: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> list[Path]:
    """results.csv / results.json / switch.png over ``points`` (every finished point of this
    spec and T in the store), written as
    :func:`~conetool.pipeline.switch_points.run_point` writes a point; the figure shades
    Phase I from ``distance``'s verdict when it was computed on the kernels the store holds
    now. ``warnings`` and ``notes``: what the sweep said (its points' momentum among them,
    those of reused points as their records keep it), kept in results.json as ``distance``
    keeps its own (:func:`~conetool.pipeline.saved_results.said_in_summary`), for
    ``conetool report``."""
    root = store.root
    rows = [{k: getattr(p, k) for k in RESULT_COLUMNS} for p in points]
    summary = {
        "until": until,
        "reference": reference,
        "points": rows,
        **said_in_summary(list(warnings), list(notes)),
    }
    phase1_end = saved_phase1_end(root, kernels_key=_kernels_now(root))
    with store.writing():
        atomic_write_csv(paths.switch_results_csv(root), RESULT_COLUMNS, rows)
        atomic_write_json(paths.switch_results_json(root), summary)
        # drawn only when it would differ from the PNG there (write_figure)
        write_figure(
            paths.switch_png(root),
            switch_figure,
            [p.at for p in points],
            [p.test_acc for p in points],
            [p.test_loss for p in points],
            reference_acc=reference["test_acc"] if reference else None,
            reference_loss=reference["test_loss"] if reference else None,
            until=until,
            phase1_end=phase1_end,
        )
    return [paths.switch_results_csv(root), paths.switch_results_json(root), paths.switch_png(root)]
