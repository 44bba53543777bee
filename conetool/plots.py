"""The figures of the paper (Fig. 1a, 1b, 1c, 2), the S matrix and the training curves.

Every ``*_figure`` function is pure: plain arrays in, a :class:`matplotlib.figure.Figure` out.
Figures are built with the object-oriented API (``Figure()`` directly, never ``pyplot``), so they
need no GUI backend, never touch pyplot's global figure manager and work on a headless machine
(each call builds its own figure; rcParams are read, never changed). Nothing here saves or shows a figure; :func:`save_figure` and
:func:`figure_to_png_bytes` do the writing. A ``Figure`` made this way is not registered with
pyplot, so it needs no ``plt.close``: it is freed when the last reference goes (calling
``plt.close(fig)`` on it anyway is harmless).

Conventions shared by the functions:

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

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, ListedColormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from conetool.io import atomic_write

__all__ = [
    "adjacent_figure",
    "distance_to_reference_figure",
    "embedding_figure",
    "figure_to_png_bytes",
    "matrix_figure",
    "save_figure",
    "switch_figure",
    "training_curves_figure",
]

#: Size of one panel in inches; at the pipeline's dpi=150 this is 900 x 600 pixels.
PANEL_SIZE = (6.0, 4.0)
#: Colormap of families of curves (one per reference step or per dt); cut before its pale end.
CURVE_CMAP = "viridis"
#: Colormap of the embedding: light (early steps) to dark (late steps).
EMBED_CMAP = "YlGnBu"
#: Colormap of the S matrix heatmap.
MATRIX_CMAP = "magma_r"
_PHASE1_COLOR = "0.92"
_MAX_TICKS = 8


# --------------------------------------------------------------------------- shared helpers


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = PANEL_SIZE) -> Figure:
    return Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")


def _style(ax: Axes) -> None:
    """Paper-like axes: light grid behind the data, no top/right spines."""
    ax.grid(True, color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.tick_params(labelsize=9)


def _vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
    return arr


def _same_length(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: lengths differ ({a.size} vs {b.size}); they must be aligned.")


def _colors(n: int, cmap: str = CURVE_CMAP, lo: float = 0.0, hi: float = 0.85) -> list[tuple]:
    """``n`` colours evenly spaced along ``cmap`` (by rank, so close values stay distinguishable)."""
    cm = matplotlib.colormaps[cmap]
    if n <= 1:
        return [cm(lo)] * n
    return [cm(v) for v in np.linspace(lo, hi, n)]


def _truncated(cmap: str, lo: float, hi: float = 1.0) -> Colormap:
    cm = matplotlib.colormaps[cmap]
    return ListedColormap(cm(np.linspace(lo, hi, 256)), name=f"{cmap}_{lo:g}_{hi:g}")


def _marker_for(n_points: int) -> dict[str, Any]:
    """Markers on short curves (so single points show), plain lines on long ones."""
    return {"marker": "o", "markersize": 3.5} if n_points <= 40 else {}


def _set_logx(ax: Axes, xs: np.ndarray) -> None:
    positive = xs[np.isfinite(xs) & (xs > 0)]
    if positive.size == 0:
        return
    ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.4)
    # Margins are added in the transformed space, which would open a negative-step region.
    finite = xs[np.isfinite(xs)]
    ax.set_xlim(left=float(finite.min()))


def _set_logy(ax: Axes, ys: np.ndarray) -> None:
    if np.any(np.isfinite(ys) & (ys > 0)):
        ax.set_yscale("log", nonpositive="mask")


def _phase_headroom(ax: Axes, x: np.ndarray, until: int) -> None:
    """Room for the phase labels above the data (they overlapped the last point), and the x
    axis carried on to T so that Phase II has width."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.14 * (hi - lo))
    if x.size and np.isfinite(x).any() and until > np.nanmax(x):
        left, right = ax.get_xlim()
        ax.set_xlim(left, max(right, until + 0.02 * (until - left)))


def _shade_phase1(ax: Axes, phase1_end: float | None, *, horizontal: bool = False) -> None:
    """Shade ``x < phase1_end`` and label the two phases; call after all data is drawn.

    ``horizontal``: the labels run horizontally in the band above the data that
    :func:`_phase_headroom` made (switch figure); else vertically at the top of the axes."""
    if phase1_end is None:
        return
    lo, hi = ax.get_xlim()
    end = min(float(phase1_end), hi)
    if end <= lo:
        return
    ax.axvspan(lo, end, color=_PHASE1_COLOR, zorder=0, linewidth=0)
    ax.axvline(end, color="0.55", linewidth=0.8, linestyle="--", zorder=0.5)
    ax.set_xlim(lo, hi)
    # Vertical text fits inside even a narrow Phase I band.
    rotation = 0 if horizontal else 90
    _phase_label(ax, "Phase I", end, dx=-3, ha="right", facecolor=_PHASE1_COLOR, rotation=rotation)
    if end < hi:
        _phase_label(ax, "Phase II", end, dx=3, ha="left", facecolor="white", rotation=rotation)


def _phase_label(
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


def _legend(ax: Axes, title: str | None = None, **kwargs: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = 1 if len(handles) <= 6 else 2 if len(handles) <= 16 else 3
    ax.legend(title=title, fontsize=8, title_fontsize=8, ncol=ncol, frameon=False, **kwargs)


def _no_data(ax: Axes, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _step_label(step: float) -> str:
    return f"{int(step)}" if float(step).is_integer() else f"{step:g}"


# --------------------------------------------------------------------------- Fig. 1a


def distance_to_reference_figure(
    steps: Sequence[int] | np.ndarray,
    curves: Mapping[int, Sequence[float] | np.ndarray],
    *,
    logx: bool = False,
    logy: bool = False,
    phase1_end: int | None = None,
    title: str | None = None,
) -> Figure:
    """Paper Fig. 1a: the kernel distance from each reference step τ, against training step t.

    Args:
        steps: ``(K,)`` the stored steps t.
        curves: reference step τ -> ``(K,)`` values ``S(θ(t), θ(τ))`` aligned with ``steps``
            (``NaN`` where undefined). One line per τ, coloured along a sequential colormap in
            the order of τ, with a dotted vertical line of the same colour at t = τ.
        logx: symmetric-log x axis that keeps t = 0 (see the module docstring).
        logy: log y axis; the zero at t = τ is dropped.
        phase1_end: shade ``t < phase1_end`` as Phase I.
        title: the axes title; ``None`` gives a default, ``""`` none.

    Returns:
        A one-panel Figure. Its lines labelled ``"τ = <step>"`` are the curves (one per key of
        ``curves``, ascending τ); the vertical markers are unlabelled.
    """
    t = _vector(steps, "steps")
    fig = _figure()
    ax = fig.add_subplot()
    _style(ax)
    refs = sorted(curves)
    all_y = [np.empty(0)]
    for ref, color in zip(refs, _colors(len(refs)), strict=True):
        y = _vector(curves[ref], f"curves[{ref}]")
        _same_length(t, y, f"steps and curves[{ref}]")
        ax.plot(
            t, y, color=color, linewidth=1.5, label=f"τ = {_step_label(ref)}", **_marker_for(t.size)
        )
        ax.axvline(ref, color=color, linestyle=":", linewidth=1.2)
        all_y.append(y)
    if not refs:
        _no_data(ax, "no reference steps")
    ax.set_xlabel("training step t")
    ax.set_ylabel("kernel distance S(θ(t), θ(τ))")
    if logx:
        _set_logx(ax, np.concatenate([t, np.asarray(refs, dtype=np.float64)]))
    if logy:
        _set_logy(ax, np.concatenate(all_y))
    ax.set_title("Distance to reference kernels" if title is None else title, fontsize=11)
    _shade_phase1(ax, phase1_end)
    _legend(ax, title="reference step")
    return fig


# --------------------------------------------------------------------------- Fig. 1b


def adjacent_figure(
    curves: Mapping[int, tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]],
    *,
    velocity: bool | Literal["both"] = False,
    logx: bool = False,
    logy: bool = True,
    phase1_end: int | None = None,
    noise_floor: float | None = None,
    title: str | None = None,
) -> Figure:
    """Paper Fig. 1b: the adjacent distance ``S(θ(t), θ(t + dt))`` against t, one curve per dt.

    Args:
        curves: dt -> ``(t, S)``, two ``(M,)`` arrays (``M`` may differ between dt): the start
            step of each pair and its distance.
        velocity: ``False`` plots S; ``True`` the kernel velocity ``v = S / dt``; ``"both"``
            gives two panels, S on the left and velocity on the right.
        logx: symmetric-log x axis that keeps t = 0.
        logy: log y axis (default, as in the paper); values <= 0 are dropped.
        phase1_end: shade ``t < phase1_end`` as Phase I.
        noise_floor: the numerical noise floor of S (:mod:`conetool.noise_floor`), drawn as a
            dashed line on the distance panel (``noise_floor / dt`` would depend on dt, so the
            velocity panel has none); distances at or below it cannot be told from rounding.
        title: the figure title; ``None`` gives a default, ``""`` none.

    Returns:
        A Figure with one panel (two for ``"both"``); each panel has one line per dt, ascending,
        labelled ``"dt = <dt>"``.
    """
    if velocity == "both":
        kinds = ["distance", "velocity"]
    elif isinstance(velocity, bool | np.bool_):
        kinds = ["velocity" if velocity else "distance"]
    else:
        raise ValueError(f'velocity must be True, False or "both", got {velocity!r}.')
    data = {}
    for dt in sorted(curves):
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt}.")
        x, s = curves[dt]
        x, s = _vector(x, f"curves[{dt}][0]"), _vector(s, f"curves[{dt}][1]")
        _same_length(x, s, f"curves[{dt}] (t, S)")
        order = np.argsort(x, kind="stable")
        data[dt] = (x[order], s[order])
    colors = _colors(len(data))
    fig = _figure(ncols=len(kinds))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        _style(ax)
        ys = [np.empty(0)]
        for (dt, (x, s)), color in zip(data.items(), colors, strict=True):
            y = s / dt if kind == "velocity" else s
            ax.plot(x, y, color=color, linewidth=1.5, label=f"dt = {dt}", **_marker_for(x.size))
            ys.append(y)
        if not data:
            _no_data(ax, "no adjacent pairs")
        if kind == "distance" and noise_floor is not None and noise_floor > 0:
            shown = np.concatenate(ys)
            lowest = float(shown[shown > 0].min()) if np.any(shown > 0) else noise_floor
            if noise_floor >= 1e-3 * lowest:  # near the data: a line
                ax.axhline(
                    noise_floor, color="0.45", linestyle="--", linewidth=1.0,
                    label="noise floor of S",
                )
                ys.append(np.array([noise_floor]))
            else:  # far below: a line would squash the curves, so say where it is
                ax.plot([], [], color="0.45", linestyle="--", linewidth=1.0,
                        label=f"noise floor of S: {noise_floor:.2g} (below the axis)")
        ax.set_xlabel("training step t")
        if kind == "velocity":
            ax.set_ylabel("kernel velocity S(θ(t), θ(t+dt)) / dt")
        else:
            ax.set_ylabel("adjacent distance S(θ(t), θ(t+dt))")
        if logx:
            _set_logx(ax, np.concatenate([x for x, _ in data.values()] or [np.empty(0)]))
        if logy:
            _set_logy(ax, np.concatenate(ys))
        _shade_phase1(ax, phase1_end)
        _legend(ax)
    default = "Kernel velocity" if kinds == ["velocity"] else "Adjacent kernel distance"
    if title is None:
        title = default
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


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
    t = _vector(steps, "steps")
    if t.size != xy.shape[0]:
        raise ValueError(f"coords has {xy.shape[0]} rows but there are {t.size} steps.")
    keep = np.isfinite(xy).all(axis=1) & np.isfinite(t)
    xy, t = xy[keep], t[keep]
    order = np.argsort(t, kind="stable")
    xy, t = xy[order], t[order]
    dims = xy.shape[1]

    fig = _figure(size=(6.0, 5.0) if dims == 2 else (6.5, 5.5))
    if dims == 3:
        ax = fig.add_subplot(projection="3d")
    else:
        ax = fig.add_subplot()
        _style(ax)
    cols = [xy[:, i] for i in range(dims)]
    label = method.upper() if len(method) <= 4 else method
    cmap = _truncated(EMBED_CMAP, 0.3)
    vmin = float(t.min()) if t.size else 0.0
    vmax = float(t.max()) if t.size else 1.0
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0)

    if t.size:
        ax.plot(*cols, color="0.6", linewidth=0.7, zorder=1)
        if t.size > 1:
            rest = [c[1:] for c in cols]
            ax.scatter(*rest, c=t[1:], cmap=cmap, norm=norm, s=22, edgecolors="none", zorder=2)
        first = f"H({_step_label(t[0])})"
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
                label=f"end of Phase I (t = {_step_label(t[i])})",
            )
        if dims == 2:
            _label_point(ax, xy, 0, first)
            if t.size > 1:
                _label_point(ax, xy, -1, f"H({_step_label(t[-1])})")
        _legend(ax, loc="best")
    else:
        _no_data(ax, "no finite coordinates")

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


# --------------------------------------------------------------------------- S matrix


def matrix_figure(
    steps: Sequence[int] | np.ndarray,
    S: np.ndarray,
    *,
    log_color: bool = False,
    title: str | None = None,
) -> Figure:
    """Heatmap of the S matrix ``S[i, j] = S(θ(steps[i]), θ(steps[j]))``.

    Cells are drawn one per checkpoint (index space, so dense early checkpoints are not squeezed
    into a sliver); at most ~8 ticks on each axis are labelled with their step, always including
    the last step before the checkpoint spacing changes (e.g. from every 5 steps to every 100),
    where a thin white line marks that the axes change scale. ``NaN`` cells are light grey.

    Args:
        steps: ``(K,)`` the stored steps, in the order of the rows of ``S``.
        S: ``(K, K)`` kernel distances.
        log_color: logarithmic colour scale; cells <= 0 (the diagonal) are then drawn as missing.
        title: the axes title; ``None`` gives a default, ``""`` none.

    Returns:
        A Figure with the heatmap axes and a colorbar axes labelled "S".
    """
    t = _vector(steps, "steps")
    m = np.asarray(S, dtype=np.float64)
    if m.shape != (t.size, t.size):
        raise ValueError(
            f"S has shape {m.shape}; with {t.size} steps it must be ({t.size}, {t.size})."
        )
    fig = _figure(size=(5.6, 4.6))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[MATRIX_CMAP].with_extremes(bad="0.85")
    finite = m[np.isfinite(m)]
    positive = finite[finite > 0]
    if log_color and positive.size:
        masked = np.ma.masked_where(~np.isfinite(m) | (m <= 0), m)
        vmax = float(positive.max())
        norm: Normalize = LogNorm(
            vmin=float(positive.min()), vmax=max(vmax, float(positive.min()) * 1.0001)
        )
    else:
        masked = np.ma.masked_invalid(m)
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-12)
    image = ax.imshow(masked, cmap=cmap, norm=norm, interpolation="nearest", origin="upper")
    ticks, changes = _matrix_ticks(t)
    ax.set_xticks(ticks, [_step_label(t[i]) for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, [_step_label(t[i]) for i in ticks])
    for i in changes:  # where the checkpoint spacing changes: the axes are not to scale there
        ax.axvline(i + 0.5, color="white", linewidth=0.8, alpha=0.9)
        ax.axhline(i + 0.5, color="white", linewidth=0.8, alpha=0.9)
    ax.tick_params(labelsize=8)
    ax.set_xlabel("training step (one cell per checkpoint)")
    ax.set_ylabel("training step")
    ax.set_title("Kernel distance S between checkpoints" if title is None else title, fontsize=11)
    cbar = fig.colorbar(image, ax=ax)
    cbar.set_label("S")
    return fig


def _matrix_ticks(t: np.ndarray) -> tuple[list[int], list[int]]:
    """Tick indices for the S matrix's step axes, and the indices after which the spacing of
    the steps changes by more than half (a dense early range giving way to a sparse one)."""
    k = t.size
    if k == 0:
        return [], []
    ticks = {int(i) for i in np.linspace(0, k - 1, min(k, _MAX_TICKS)).round()}
    gaps = np.diff(t)
    changes = [
        i
        for i in range(1, k - 1)
        if gaps[i - 1] > 0 and not 2 / 3 <= gaps[i] / gaps[i - 1] <= 3 / 2
    ]
    near = max(1, k // _MAX_TICKS)
    for i in changes[:3]:  # a few boundaries at most: more would crowd the axis
        ticks = {j for j in ticks if abs(j - i) >= near or j in (0, k - 1)} | {i}
    return sorted(ticks), changes[:3]


# --------------------------------------------------------------------------- Fig. 2


def switch_figure(
    at: Sequence[int] | np.ndarray,
    test_acc: Sequence[float] | np.ndarray,
    test_loss: Sequence[float] | np.ndarray,
    *,
    reference_acc: float | None,
    reference_loss: float | None,
    until: int,
    phase1_end: int | None = None,
    logx: bool = False,
    title: str | None = None,
) -> Figure:
    """Paper Fig. 2: train normally to step t, then the linearized model to T; result against t.

    Args:
        at: ``(P,)`` the switch steps t.
        test_acc: ``(P,)`` test accuracy of each switched run at T (any unit; drawn as given).
        test_loss: ``(P,)`` test loss of each switched run at T.
        reference_acc: test accuracy of standard training at T (a dashed horizontal line),
            or ``None`` when that model is not available.
        reference_loss: the same for the test loss.
        until: T, the step every run ends at (legend text).
        phase1_end: shade ``t < phase1_end`` as Phase I.
        logx: symmetric-log x axis that keeps t = 0.
        title: the figure title; ``None`` gives a default, ``""`` none.

    Returns:
        A two-panel Figure: accuracy (left) and loss (right). Each panel has one line for the
        switched runs and, when its reference is given, one dashed line labelled
        ``"standard training at T=<until>"``.
    """
    x = _vector(at, "at")
    acc = _vector(test_acc, "test_acc")
    loss = _vector(test_loss, "test_loss")
    _same_length(x, acc, "at and test_acc")
    _same_length(x, loss, "at and test_loss")
    order = np.argsort(x, kind="stable")
    x, acc, loss = x[order], acc[order], loss[order]
    fig = _figure(ncols=2)
    axes = fig.subplots(1, 2)
    panels = [
        (axes[0], acc, reference_acc, "test accuracy"),
        (axes[1], loss, reference_loss, "test loss"),
    ]
    for ax, y, ref, name in panels:
        _style(ax)
        ax.plot(
            x,
            y,
            color="tab:blue",
            marker="o",
            markersize=4,
            linewidth=1.5,
            label=f"linearized from t to T={until}",
        )
        if ref is not None and math.isfinite(ref):
            ax.axhline(
                ref,
                color="black",
                linestyle="--",
                linewidth=1.2,
                label=f"standard training at T={until}",
            )
        ax.set_xlabel("switch step t")
        ax.set_ylabel(name)
        if logx:
            _set_logx(ax, x)
        if phase1_end is not None:
            _phase_headroom(ax, x, until)
        _shade_phase1(ax, phase1_end, horizontal=True)
        _legend(ax, loc="best")
    if title is None:
        title = "Switching to the linearized model at step t"
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# --------------------------------------------------------------------------- training curves


def _float_or_nan(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def training_curves_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    log_loss: bool = False,
    title: str | None = None,
) -> Figure:
    """Loss and accuracy against step, train and test, from the rows of ``metrics.csv``.

    Args:
        rows: one mapping per logged step with keys ``step`` and any of ``train_loss``,
            ``train_acc``, ``test_loss``, ``test_acc``. Values may be numbers, numeric strings
            (as read by ``csv.DictReader``), ``""`` or ``None`` (missing); other keys are ignored.
            Each series is drawn through the rows where it is present.
        log_loss: log y axis for the loss panel.
        title: the figure title; ``None`` gives a default, ``""`` none.

    Returns:
        A two-panel Figure, loss (left) and accuracy (right); one line per series that has at
        least one value, labelled ``"train"`` or ``"test"``.
    """
    steps = np.array([_float_or_nan(r.get("step")) for r in rows], dtype=np.float64)
    order = np.argsort(steps, kind="stable")
    steps = steps[order]
    fig = _figure(ncols=2)
    axes = fig.subplots(1, 2)
    for ax, quantity, name in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        _style(ax)
        drawn = [np.empty(0)]
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            key = f"{split}_{quantity}"
            y = np.array([_float_or_nan(r.get(key)) for r in rows], dtype=np.float64)[order]
            ok = np.isfinite(y) & np.isfinite(steps)
            if not ok.any():
                continue
            ax.plot(
                steps[ok],
                y[ok],
                color=color,
                linewidth=1.4,
                label=split,
                **_marker_for(int(ok.sum())),
            )
            drawn.append(y[ok])
        if len(drawn) == 1:
            _no_data(ax, f"no {name} logged")
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        if quantity == "loss" and log_loss:
            _set_logy(ax, np.concatenate(drawn))
        _legend(ax, loc="best")
    if title is None:
        title = "Training curves"
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


# --------------------------------------------------------------------------- writing


def figure_to_png_bytes(fig: Figure, dpi: int = 150) -> bytes:
    """Render ``fig`` to PNG bytes (Agg; no display needed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename); returns the path.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``, ...; none means PNG). The
    figure is not closed: figures from this module are not registered with pyplot and need no
    closing.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot save a figure as {path.name!r}: unknown format {fmt!r}. "
            f"Use one of the suffixes {', '.join('.' + k for k in sorted(supported))}."
        )
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    return path
