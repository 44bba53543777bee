"""The figure of ``conetool spectrum``: alignment, effective rank and label energy against step.

Built like the other figures (object-oriented matplotlib, returned, saved by the pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .style import new_figure, set_logx, shade_phase1, style_axes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["spectrum_figure"]


def spectrum_figure(
    steps: Sequence[int],
    alignment: Sequence[float],
    effective_rank: Sequence[float],
    label_energy: Sequence[float],
    *,
    top_k: int,
    phase1_end: int | None = None,
    logx: bool = False,
    eval_accuracy: Sequence[float] | None = None,
) -> Figure:
    """Three panels against step: centered kernel-target alignment, effective rank, and the share
    of the labels' energy in the top ``top_k`` eigenvectors; with ``eval_accuracy`` (NaN for a
    step without one) a fourth, the kernel machine's test accuracy. Phase I shaded when known."""
    t = np.asarray(steps, dtype=np.float64)
    panels = [
        (alignment, "centered kernel-target alignment"),
        (effective_rank, "effective rank"),
        (label_energy, f"label energy in the top {top_k} eigenvectors"),
    ]
    if eval_accuracy is not None:
        panels.append((eval_accuracy, "kernel machine test accuracy"))
    fig = new_figure(ncols=len(panels), size=(4.2, 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (values, title) in zip(axes, panels, strict=True):
        y = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(y)
        ax.plot(t[keep], y[keep], color="C0", marker="o", markersize=2.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step t")
        if logx:
            set_logx(ax, t)
        style_axes(ax)
        shade_phase1(ax, phase1_end)
    return fig
