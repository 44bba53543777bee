"""What each stage of ``conetool demo`` took from an earlier run and what it made now.

A second demo into the same ``--out`` reuses what is done: the run's checkpoints, the stored
kernels, the S matrix, the finished switch points. :func:`work_of` reads that from each
stage's own result (``TrainResult.resumed_from``, ``KernelsResult.skipped``,
``DistanceResult.matrix_reused``, ``SwitchPoint.reused``, ...), so that the demo can say it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..training import TrainResult
from .kernels_loop import KernelsResult
from .run_distance import DistanceResult
from .run_embed import EmbedResult
from .run_report import ReportResult
from .run_spectrum import SpectrumResult
from .run_switch import SwitchResult


@dataclass(frozen=True)
class StageWork:
    """What one stage of the demo reused and what it made.

    Attributes:
        what: what is counted: a plural for a count (``"checkpoints"``, ``"steps"``,
            ``"spectra"``, ``"points"``), or the one thing the stage makes (``"S matrix"``,
            ``"embedding"``, ``"page"``) when ``reused + made`` is 1.
        reused: how many were already there, current, and used as they were.
        made: how many this run made (the stage's ``verb``); ``reused + made`` is all the
            stage's.
        verb: how the stage makes them: ``"trained"``, ``"computed"`` or ``"written"``.
    """

    what: str
    reused: int
    made: int
    verb: str


def work_of(name: str, result: Any) -> StageWork:
    """What the demo's stage ``name`` (``train``, ``kernels``, ...) reused and made, from its
    ``result``:

    - train: the run's checkpoints, reused up to the step it resumed from (all of them when it
      was finished), the rest trained;
    - kernels: the steps, reused when their kernels were all stored; a step whose eval or
      per-layer kernel this run added counts as computed;
    - distance: the S matrix, read back or computed;
    - embed: the embedding, always computed, from the S matrix that distance computed or read
      back just before (or its own S matrix, computed, when it could not read that one);
    - spectrum: the spectra of the steps, always computed (it keeps none to reuse);
    - switch: the points, read back or trained;
    - report: the page, always written.
    """
    if isinstance(result, TrainResult):
        total = len(result.run_steps)
        start = result.resumed_from
        reused = 0 if start is None else sum(1 for s in result.run_steps if s <= start)
        return StageWork("checkpoints", reused, total - reused, "trained")
    if isinstance(result, KernelsResult):
        added = (set(result.eval_computed) | set(result.layer_computed)) & set(result.skipped)
        reused = len(result.skipped) - len(added)
        return StageWork("steps", reused, len(result.computed) + len(added), "computed")
    if isinstance(result, DistanceResult):
        reused = int(result.matrix_reused)
        return StageWork("S matrix", reused, 1 - reused, "computed")
    if isinstance(result, EmbedResult):
        # It reads the S matrix distance wrote or reused a moment before: nothing of an earlier
        # run (a first run too reads it back), unless it had to compute one of its own.
        what = "embedding" if result.matrix_reused else "S matrix and embedding"
        return StageWork(what, 0, 1, "computed")
    if isinstance(result, SpectrumResult):
        return StageWork("spectra", 0, len(result.steps), "computed")
    if isinstance(result, SwitchResult):
        reused = sum(1 for p in result.points if p.reused)
        return StageWork("points", reused, len(result.points) - reused, "trained")
    if isinstance(result, ReportResult):
        return StageWork("page", 0, 1, "written")
    raise TypeError(f"no demo stage returns {type(result).__name__} ({name})")
