"""The look shared by every figure: panel size, colour maps, axes style, the Phase I shading,
log axes, legends and input checks.

Conventions (every figure follows them):

- ``NaN`` values (undefined distances, missing metrics) are not drawn: lines break there. Single
  points are drawn with a marker so they stay visible.
- ``logx=True`` uses a *symmetric* log scale (``symlog``) whose linear part ends at the smallest
  positive step, so step 0 (the initialization, usually the most interesting point) stays on the
  axis: above the first positive step the axis is exactly logarithmic.
- ``logy=True`` drops values ``<= 0`` (for instance ``S(θ(τ), θ(τ)) = 0``) instead of clipping them,
  and falls back to a linear axis when nothing positive is left.
- ``phase1_end``: the steps ``t < phase1_end`` are shaded and labelled "Phase I".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.colors import Colormap, ListedColormap

if TYPE_CHECKING:  # matplotlib.figure and .axes load when a figure is drawn (0.5-1 s)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL_SIZE = (6.0, 4.0)
#: Colormap of families of curves (one per reference step or per dt); cut before its pale end.
CURVE_CMAP = "viridis"
#: Colormap of the embedding: light (early steps) to dark (late steps).
EMBED_CMAP = "YlGnBu"
#: Colormap of the S matrix heatmap.
MATRIX_CMAP = "magma_r"
PHASE1_COLOR = "0.92"
MAX_TICKS = 8


# --------------------------------------------------------------------------- shared helpers


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = PANEL_SIZE) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")


def style_axes(ax: Axes) -> None:
    """Paper-like axes: light grid behind the data, no top/right spines."""
    ax.grid(True, color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=9)


def as_vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    return arr


def same_length(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: lengths differ ({a.size} vs {b.size}); they must be aligned.")


def curve_colors(
    n: int, cmap: str = CURVE_CMAP, lo: float = 0.0, hi: float = 0.85
) -> list[tuple[float, float, float, float]]:
    """``n`` colours evenly spaced along ``cmap`` (by rank, so close values stay distinguishable)."""
    cm = matplotlib.colormaps[cmap]
    if n <= 1:
        return [cm(lo)] * n
    return [cm(v) for v in np.linspace(lo, hi, n)]


def truncated(cmap: str, lo: float, hi: float = 1.0) -> Colormap:
    cm = matplotlib.colormaps[cmap]
    return ListedColormap(cm(np.linspace(lo, hi, 256)), name=f"{cmap}_{lo:g}_{hi:g}")


def marker_for(n_points: int) -> dict[str, Any]:
    """Markers on short curves (so single points show), plain lines on long ones."""
    return {"marker": "o", "markersize": 3.5} if n_points <= 40 else {}


def set_logx(ax: Axes, xs: np.ndarray) -> None:
    positive = xs[np.isfinite(xs) & (xs > 0)]
    if positive.size == 0:
        return
    ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.4)
    # Margins are added in the transformed space, which would open a negative-step region.
    finite = xs[np.isfinite(xs)]
    ax.set_xlim(left=float(finite.min()))


def set_logy(ax: Axes, ys: np.ndarray) -> None:
    if np.any(np.isfinite(ys) & (ys > 0)):
        ax.set_yscale("log", nonpositive="mask")


def phase_headroom(ax: Axes, x: np.ndarray, until: int) -> None:
    """Room for the phase labels above the data (they overlapped the last point), and the x
    axis carried on to T so that Phase II has width."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.14 * (hi - lo))
    if x.size and np.isfinite(x).any() and until > np.nanmax(x):
        left, right = ax.get_xlim()
        ax.set_xlim(left, max(right, until + 0.02 * (until - left)))


def shade_phase1(ax: Axes, phase1_end: float | None, *, horizontal: bool = False) -> None:
    """Shade ``x < phase1_end`` and label the two phases; call after all data is drawn.

    ``horizontal``: the labels run horizontally in the band above the data that
    :func:`phase_headroom` made (switch figure); else vertically at the top of the axes."""
    if phase1_end is None:
        return
    lo, hi = ax.get_xlim()
    end = min(float(phase1_end), hi)
    if end <= lo:
        return
    ax.axvspan(lo, end, color=PHASE1_COLOR, zorder=0, linewidth=0)
    ax.axvline(end, color="0.55", linewidth=0.8, linestyle="--", zorder=0.5)
    ax.set_xlim(lo, hi)
    # Vertical text fits inside even a narrow Phase I band.
    rotation = 0 if horizontal else 90
    phase_label(ax, "Phase I", end, dx=-3, ha="right", facecolor=PHASE1_COLOR, rotation=rotation)
    if end < hi:
        phase_label(ax, "Phase II", end, dx=3, ha="left", facecolor="white", rotation=rotation)


def phase_label(
    ax: Axes, text: str, end: float, *, dx: int, ha: str, facecolor: Any, rotation: int = 90
) -> None:
    """A label (vertical by default) at the top of the axes, beside the Phase I boundary."""
    ax.annotate(
        text,
        xy=(end, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(dx, -4),
        textcoords="offset points",
        ha=ha,
        va="top",
        rotation=rotation,
        fontsize=9,
        color="0.3",
        zorder=5,
        bbox={
            "boxstyle": "square,pad=0.1",
            "facecolor": facecolor,
            "edgecolor": "none",
            "alpha": 0.6,
        },
    )


def legend(ax: Axes, title: str | None = None, **kwargs: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = 1 if len(handles) <= 6 else 2 if len(handles) <= 16 else 3
    ax.legend(title=title, fontsize=8, title_fontsize=8, ncol=ncol, frameon=False, **kwargs)


def no_data(ax: Axes, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def step_label(step: float) -> str:
    return f"{int(step)}" if float(step).is_integer() else f"{step:g}"
