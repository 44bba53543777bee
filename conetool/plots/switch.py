"""The switch figure (paper Fig. 2) and the training curves of a run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .style import (
    as_vector,
    legend,
    marker_for,
    new_figure,
    no_data,
    phase_headroom,
    same_length,
    set_logx,
    set_logy,
    shade_phase1,
    style_axes,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
    x = as_vector(at, "at")
    acc = as_vector(test_acc, "test_acc")
    loss = as_vector(test_loss, "test_loss")
    same_length(x, acc, "at and test_acc")
    same_length(x, loss, "at and test_loss")
    order = np.argsort(x, kind="stable")
    x, acc, loss = x[order], acc[order], loss[order]
    fig = new_figure(ncols=2)
    axes = fig.subplots(1, 2)
    panels = [
        (axes[0], acc, reference_acc, "test accuracy"),
        (axes[1], loss, reference_loss, "test loss"),
    ]
    for ax, y, ref, name in panels:
        style_axes(ax)
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
            set_logx(ax, x)
        if phase1_end is not None:
            phase_headroom(ax, x, until)
        shade_phase1(ax, phase1_end, horizontal=True)
        legend(ax, loc="best")
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
    fig = new_figure(ncols=2)
    axes = fig.subplots(1, 2)
    for ax, quantity, name in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        style_axes(ax)
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
                **marker_for(int(ok.sum())),
            )
            drawn.append(y[ok])
        if len(drawn) == 1:
            no_data(ax, f"no {name} logged")
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        if quantity == "loss" and log_loss:
            set_logy(ax, np.concatenate(drawn))
        legend(ax, loc="best")
    if title is None:
        title = "Training curves"
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
