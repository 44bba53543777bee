"""The cone picture: the embedded kernel trajectory (paper Fig. 1c), in 2-D or 3-D."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator

from .style import (
    EMBED_CMAP,
    as_vector,
    legend,
    new_figure,
    no_data,
    step_label,
    style_axes,
    truncated,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# --------------------------------------------------------------------------- Fig. 1c


def embedding_figure(
    coords: np.ndarray,
    steps: Sequence[int] | np.ndarray,
    *,
    method: str,
    quality: str,
    phase1_end: int | None = None,
    title: str | None = None,
) -> Figure:
    """Paper Fig. 1c: the kernels H(t) as points of a 2-D (or 3-D) embedding.

    The earliest kernel (normally H(0)) is a large black point labelled ``"H(<step>)"`` beside
    it (in 3-D, where points are not labelled, in the legend instead: a legend entry beside a
    labelled point read as a second H(0)); the
    others are coloured by step along a light-to-dark sequential colormap (later is darker, the
    pale end is cut so early points stay visible), with a colorbar "training step".
    Consecutive steps are joined by a thin grey line; both axes use the same scale (the
    embedding's distances are meaningful, so the picture is not stretched). In 3-D an axis
    whose spread is under 30 % of the largest is stretched to 30 % so it stays readable.

    Args:
        coords: ``(K, 2)`` or ``(K, 3)`` coordinates, row k for ``steps[k]``. Rows with a
            non-finite coordinate are left out.
        steps: ``(K,)`` the step of each row (any order; points are joined in step order).
        method: the embedding's name, e.g. ``"mds"`` or ``"pca"`` (axis labels and title).
        quality: a short quality note shown in the title, e.g. ``"stress 0.012"``.
        phase1_end: ring the last point with ``t <= phase1_end`` ("end of Phase I").
        title: the axes title; ``None`` gives ``"Kernel trajectory (<METHOD>, <quality>)"``.

    Returns:
        A Figure with the embedding axes (3-D axes for 3 columns) and a colorbar axes.
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] not in (2, 3):
        raise ValueError(f"coords must have shape (K, 2) or (K, 3), got {xy.shape}.")
    t = as_vector(steps, "steps")
    if t.size != xy.shape[0]:
        raise ValueError(f"coords has {xy.shape[0]} rows but there are {t.size} steps.")
    keep = np.isfinite(xy).all(axis=1) & np.isfinite(t)
    xy, t = xy[keep], t[keep]
    order = np.argsort(t, kind="stable")
    xy, t = xy[order], t[order]
    dims = xy.shape[1]

    fig = new_figure(size=(6.0, 5.0) if dims == 2 else (6.5, 5.5))
    if dims == 3:
        ax = fig.add_subplot(projection="3d")
    else:
        ax = fig.add_subplot()
        style_axes(ax)
    cols = [xy[:, i] for i in range(dims)]
    label = method.upper() if len(method) <= 4 else method
    cmap = truncated(EMBED_CMAP, 0.3)
    vmin = float(t.min()) if t.size else 0.0
    vmax = float(t.max()) if t.size else 1.0
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0)

    if t.size:
        ax.plot(*cols, color="0.6", linewidth=0.7, zorder=1)
        if t.size > 1:
            rest = [c[1:] for c in cols]
            ax.scatter(*rest, c=t[1:], cmap=cmap, norm=norm, s=22, edgecolors="none", zorder=2)
        first = f"H({step_label(t[0])})"
        ax.scatter(
            *[c[:1] for c in cols],
            s=90,
            color="black",
            edgecolors="white",
            linewidths=0.8,
            zorder=4,
            label=first if dims == 3 else f"_{first}",  # 2-D: labelled beside the point
        )
        if phase1_end is not None and np.any(t <= phase1_end):
            i = int(np.flatnonzero(t <= phase1_end)[-1])
            ax.scatter(
                *[c[i : i + 1] for c in cols],
                s=160,
                facecolors="none",
                edgecolors="tab:red",
                linewidths=1.5,
                zorder=3,
                label=f"end of Phase I (t = {step_label(t[i])})",
            )
        if dims == 2:
            _label_point(ax, xy, 0, first)
            if t.size > 1:
                _label_point(ax, xy, -1, f"H({step_label(t[-1])})")
        legend(ax, loc="best")
    else:
        no_data(ax, "no finite coordinates")

    ax.set_xlabel(f"{label} 1")
    ax.set_ylabel(f"{label} 2")
    if dims == 3:
        ax.set_zlabel(f"{label} 3")
        _box_aspect_3d(ax, xy)
    else:
        ax.margins(0.08)
        ax.set_aspect("equal", adjustable="datalim")
    if title is None:
        title = (
            f"Kernel trajectory ({label}, {quality})" if quality else f"Kernel trajectory ({label})"
        )
    ax.set_title(title, fontsize=11)
    cbar = fig.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8 if dims == 3 else 1.0
    )
    cbar.set_label("training step")
    return fig


def _label_point(ax: Axes, xy: np.ndarray, i: int, text: str) -> None:
    """Label point ``i`` inside the axes: towards the middle horizontally, and vertically on the
    side away from the mean of the other points."""
    mid = 0.5 * (xy[:, 0].min() + xy[:, 0].max())
    dx = 1 if xy[i, 0] <= mid else -1
    dy = 1 if xy[i, 1] >= xy[:, 1].mean() else -1
    ax.annotate(
        text,
        xy=(xy[i, 0], xy[i, 1]),
        xytext=(7 * dx, 5 * dy),
        textcoords="offset points",
        fontsize=9,
        ha="left" if dx > 0 else "right",
        va="bottom" if dy > 0 else "top",
    )


def _box_aspect_3d(ax: Any, xy: np.ndarray) -> None:
    """Equal scale on the three axes, except that an axis with a tiny spread is stretched to
    30 % of the largest one (an exactly equal box would be a flat sheet with unreadable ticks)."""
    ax.set_xmargin(0.05)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(4))
    if xy.shape[0] == 0:
        return
    spans = np.ptp(xy, axis=0)
    if spans.max() <= 0:
        return
    ax.set_box_aspect(np.clip(spans / spans.max(), 0.3, 1.0))
