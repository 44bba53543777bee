"""The kernel-distance figures: distance to reference steps (paper Fig. 1a), adjacent
distance and velocity (Fig. 1b), and the S matrix heatmap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize

from .style import (
    MATRIX_CMAP,
    MAX_TICKS,
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
    step_label,
    style_axes,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    t = as_vector(steps, "steps")
    fig = new_figure()
    ax = fig.add_subplot()
    style_axes(ax)
    refs = sorted(curves)
    all_y = [np.empty(0)]
    for ref, color in zip(refs, curve_colors(len(refs)), strict=True):
        y = as_vector(curves[ref], f"curves[{ref}]")
        same_length(t, y, f"steps and curves[{ref}]")
        ax.plot(
            t, y, color=color, linewidth=1.5, label=f"τ = {step_label(ref)}", **marker_for(t.size)
        )
        ax.axvline(ref, color=color, linestyle=":", linewidth=1.2)
        all_y.append(y)
    if not refs:
        no_data(ax, "no reference steps")
    ax.set_xlabel("training step t")
    ax.set_ylabel("kernel distance S(θ(t), θ(τ))")
    if logx:
        set_logx(ax, np.concatenate([t, np.asarray(refs, dtype=np.float64)]))
    if logy:
        set_logy(ax, np.concatenate(all_y))
    ax.set_title("Distance to reference kernels" if title is None else title, fontsize=11)
    shade_phase1(ax, phase1_end)
    legend(ax, title="reference step")
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
        x, s = as_vector(x, f"curves[{dt}][0]"), as_vector(s, f"curves[{dt}][1]")
        same_length(x, s, f"curves[{dt}] (t, S)")
        order = np.argsort(x, kind="stable")
        data[dt] = (x[order], s[order])
    colors = curve_colors(len(data))
    fig = new_figure(ncols=len(kinds))
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        style_axes(ax)
        ys = [np.empty(0)]
        for (dt, (x, s)), color in zip(data.items(), colors, strict=True):
            y = s / dt if kind == "velocity" else s
            ax.plot(x, y, color=color, linewidth=1.5, label=f"dt = {dt}", **marker_for(x.size))
            ys.append(y)
        if not data:
            no_data(ax, "no adjacent pairs")
        if kind == "distance" and noise_floor is not None and noise_floor > 0:
            shown = np.concatenate(ys)
            lowest = float(shown[shown > 0].min()) if np.any(shown > 0) else noise_floor
            if noise_floor >= 1e-3 * lowest:  # near the data: a line
                ax.axhline(
                    noise_floor,
                    color="0.45",
                    linestyle="--",
                    linewidth=1.0,
                    label="noise floor of S",
                )
                ys.append(np.array([noise_floor]))
            else:  # far below: a line would squash the curves, so say where it is
                ax.plot(
                    [],
                    [],
                    color="0.45",
                    linestyle="--",
                    linewidth=1.0,
                    label=f"noise floor of S: {noise_floor:.2g} (below the axis)",
                )
        ax.set_xlabel("training step t")
        if kind == "velocity":
            ax.set_ylabel("kernel velocity S(θ(t), θ(t+dt)) / dt")
        else:
            ax.set_ylabel("adjacent distance S(θ(t), θ(t+dt))")
        if logx:
            set_logx(ax, np.concatenate([x for x, _ in data.values()] or [np.empty(0)]))
        if logy:
            set_logy(ax, np.concatenate(ys))
        shade_phase1(ax, phase1_end)
        legend(ax)
    default = "Kernel velocity" if kinds == ["velocity"] else "Adjacent kernel distance"
    if title is None:
        title = default
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


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
    t = as_vector(steps, "steps")
    m = np.asarray(S, dtype=np.float64)
    if m.shape != (t.size, t.size):
        raise ValueError(
            f"S has shape {m.shape}; with {t.size} steps it must be ({t.size}, {t.size})."
        )
    fig = new_figure(size=(5.6, 4.6))
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
    ax.set_xticks(ticks, [step_label(t[i]) for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, [step_label(t[i]) for i in ticks])
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
    ticks = {int(i) for i in np.linspace(0, k - 1, min(k, MAX_TICKS)).round()}
    gaps = np.diff(t)
    changes = [
        i
        for i in range(1, k - 1)
        if gaps[i - 1] > 0 and not 2 / 3 <= gaps[i] / gaps[i - 1] <= 3 / 2
    ]
    near = max(1, k // MAX_TICKS)
    for i in changes[:3]:  # a few boundaries at most: more would crowd the axis
        ticks = {j for j in ticks if abs(j - i) >= near or j in (0, k - 1)} | {i}
    return sorted(ticks), changes[:3]
