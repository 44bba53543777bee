"""The per-layer velocity figure of ``conetool distance`` (with ``kernels --per-layer``): the
kernel velocity of each parameter group against step, so a reader sees which layers drive
Phase I and which keep moving in Phase II.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .style import (
    as_vector,
    curve_colors,
    legend,
    marker_for,
    new_figure,
    no_data,
    same_length,
    set_logx,
    set_logy,
    shade_phase1,
    style_axes,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def per_layer_figure(
    curves: Mapping[str, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    dt: int,
    logx: bool = False,
    phase1_end: int | None = None,
    title: str | None = None,
) -> Figure:
    """The velocity ``S(H_g(t), H_g(t + dt)) / dt`` of each parameter group g against t.

    Args:
        curves: group -> ``(t, velocity)``, two aligned 1-D arrays (``NaN`` where undefined);
            one line per group, in the mapping's order (the model's order of its parameters);
            a group with no finite velocity (a zero kernel) is labelled so.
        dt: the spacing of the pairs (for the axis label).
        logx: symmetric-log x axis that keeps t = 0.
        phase1_end: shade ``t < phase1_end`` as Phase I.
        title: the axes title; ``None`` gives a default, ``""`` none.

    Returns:
        A one-panel Figure with a log y axis; its lines are labelled with the group names.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    style_axes(ax)
    xs, ys = [np.empty(0)], [np.empty(0)]
    for (group, (t, v)), color in zip(curves.items(), curve_colors(len(curves)), strict=True):
        x, y = as_vector(t, f"curves[{group!r}][0]"), as_vector(v, f"curves[{group!r}][1]")
        same_length(x, y, f"curves[{group!r}] (t, velocity)")
        # a group whose kernel is zero (or whose layer files are missing) has no velocity: its
        # legend entry says so rather than naming a line that is not there
        label = group if np.isfinite(y).any() else f"{group} (no finite velocity)"
        ax.plot(x, y, color=color, linewidth=1.5, label=label, **marker_for(x.size))
        xs.append(x)
        ys.append(y)
    if not curves:
        no_data(ax, "no per-layer kernels")
    elif not any(np.isfinite(y).any() for y in ys):
        no_data(ax, "no finite velocity in any group")
    ax.set_xlabel("training step t")
    ax.set_ylabel(f"velocity S(H_g(t), H_g(t + {dt})) / {dt}")
    if logx:
        set_logx(ax, np.concatenate(xs))
    set_logy(ax, np.concatenate(ys))
    ax.set_title("Kernel velocity per parameter group" if title is None else title, fontsize=11)
    shade_phase1(ax, phase1_end)
    legend(ax, title="group")
    return fig
