"""Figures: structure (axes, lines, labels, legends, colorbars, scales), data fidelity, robustness."""

from __future__ import annotations

import csv
import io
import itertools
import struct
import subprocess
import sys
import warnings
from collections.abc import Callable

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import LogNorm, to_rgba
from matplotlib.figure import Figure

from conetool import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = np.array([0, 10, 20, 50, 100, 200, 500, 1000])


def _png_bytes(fig, dpi: int = 150) -> bytes:
    """The figure rendered to PNG in memory, as save_figure renders it to a file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _s_matrix(steps: np.ndarray) -> np.ndarray:
    """A valid S matrix of unit vectors moving away from the first one (float64 reference)."""
    angle = np.log1p(steps / 10.0) * 0.3
    u = np.stack([np.cos(angle), np.sin(angle), 0.1 * np.sqrt(steps / steps.max())], axis=1)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    s = 1.0 - u @ u.T
    np.fill_diagonal(s, 0.0)
    return s


def _labelled_lines(ax):
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def _render(fig: Figure) -> bytes:
    data = _png_bytes(fig)
    assert data.startswith(PNG_SIGNATURE)
    return data


# --------------------------------------------------------------------------- Fig. 1a


def test_distance_to_reference_lines_labels_and_data():
    s = _s_matrix(STEPS)
    refs = [0, 100, 500]
    curves = {r: s[list(STEPS).index(r)] for r in (500, 0, 100)}  # unsorted on purpose
    fig = plots.distance_to_reference_figure(STEPS, curves)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    lines = _labelled_lines(ax)
    assert [ln.get_label() for ln in lines] == ["τ = 0", "τ = 100", "τ = 500"]
    for ln, r in zip(lines, refs, strict=True):
        np.testing.assert_array_equal(ln.get_xdata(), STEPS)
        np.testing.assert_array_equal(ln.get_ydata(), s[list(STEPS).index(r)])
    # One dotted vertical marker per reference, at x = τ, in the colour of its curve.
    verticals = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
    assert len(verticals) == len(refs)
    for v, ln, r in zip(verticals, lines, refs, strict=True):
        assert list(v.get_xdata()) == [r, r]
        assert v.get_linestyle() == ":"
        assert v.get_color() == ln.get_color()
    # Sequential colormap in the order of τ: first curve is the colormap's start.
    cmap = matplotlib.colormaps[plots.style.CURVE_CMAP]
    assert to_rgba(lines[0].get_color()) == pytest.approx(cmap(0.0))
    assert len({to_rgba(ln.get_color()) for ln in lines}) == 3
    assert ax.get_xlabel() == "training step t"
    assert ax.get_ylabel() == "kernel distance S(θ(t), θ(τ))"
    assert _legend_texts(ax) == ["τ = 0", "τ = 100", "τ = 500"]
    assert ax.get_xscale() == "linear" and ax.get_yscale() == "linear"
    _render(fig)


def test_distance_to_reference_log_axes_keep_step_zero_and_phase1():
    s = _s_matrix(STEPS)
    fig = plots.distance_to_reference_figure(
        STEPS, {0: s[0], 100: s[4]}, logx=True, logy=True, phase1_end=100, title="x"
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    assert ax.xaxis.get_transform().linthresh == 10  # the smallest positive step
    assert ax.get_xlim()[0] == 0  # step 0 is on the axis, no negative region
    assert ax.get_yscale() == "log"
    texts = [t.get_text() for t in ax.texts]
    assert "Phase I" in texts and "Phase II" in texts
    assert ax.get_title() == "x"
    # The shaded Phase I region spans from the left edge to phase1_end.
    spans = [p for p in ax.patches if p.get_x() <= 0]
    assert spans and any(abs(p.get_x() + p.get_width() - 100) < 1e-9 for p in spans)
    _render(fig)


def test_distance_to_reference_nan_single_point_and_empty():
    curve = np.array([np.nan, 0.1, np.nan, 0.3, 0.2, np.nan, 0.4, 0.5])
    fig = plots.distance_to_reference_figure(STEPS, {10: curve}, logy=True)
    _render(fig)
    # All-NaN (or all-zero) curve on a log axis: falls back to linear, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.distance_to_reference_figure(
            STEPS, {0: np.full(8, np.nan)}, logx=True, logy=True
        )
        assert fig.axes[0].get_yscale() == "linear"
        _render(fig)
        fig = plots.distance_to_reference_figure([0], {0: [0.0]}, logx=True, logy=True)
        assert len(_labelled_lines(fig.axes[0])) == 1
        assert fig.axes[0].get_lines()[0].get_marker() == "o"  # a single point stays visible
        _render(fig)
        fig = plots.distance_to_reference_figure(STEPS, {})
        assert fig.axes[0].get_legend() is None
        _render(fig)
    with pytest.raises(ValueError, match="lengths differ"):
        plots.distance_to_reference_figure(STEPS, {0: [0.1, 0.2]})


def test_per_layer_figure_says_which_groups_have_no_velocity():
    """A group whose kernel is zero has blank velocity cells (NaN): the legend named it beside
    the drawn groups as if it had a line, and with no drawable group the axes were empty."""
    nan = np.full(3, np.nan)
    fig = plots.per_layer_figure({"a": ([0, 2, 4], nan), "b": ([0, 2, 4], [0.1, 0.2, 0.3])}, dt=2)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a (no finite velocity)", "b"]
    _render(fig)
    fig = plots.per_layer_figure({"a": ([0, 2, 4], nan)}, dt=2, logx=True, phase1_end=2)
    assert "no finite velocity in any group" in [t.get_text() for t in fig.axes[0].texts]
    _render(fig)


# --------------------------------------------------------------------------- Fig. 1b


def _adjacent_curves() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {
        100: (np.array([0, 100, 200, 300]), np.array([0.2, 0.05, 0.01, 0.008])),
        10: (np.array([20, 0, 10]), np.array([0.01, 0.05, 0.02])),  # unsorted t
    }


def test_adjacent_distance_panel():
    fig = plots.adjacent_figure(_adjacent_curves(), phase1_end=100)
    (ax,) = fig.axes
    lines = _labelled_lines(ax)
    assert [ln.get_label() for ln in lines] == ["dt = 10", "dt = 100"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [0, 10, 20])
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.05, 0.02, 0.01])
    assert ax.get_yscale() == "log"  # the default, as in the paper
    assert ax.get_xlabel() == "training step t"
    assert ax.get_ylabel() == "adjacent distance S(θ(t), θ(t+dt))"
    assert _legend_texts(ax) == ["dt = 10", "dt = 100"]
    assert "Phase I" in [t.get_text() for t in ax.texts]
    _render(fig)


def test_adjacent_velocity_and_both():
    curves = _adjacent_curves()
    fig = plots.adjacent_figure(curves, velocity=True, logy=False, logx=True)
    (ax,) = fig.axes
    lines = _labelled_lines(ax)
    np.testing.assert_allclose(lines[1].get_ydata(), np.array([0.2, 0.05, 0.01, 0.008]) / 100)
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "symlog"
    assert "velocity" in ax.get_ylabel()
    fig = plots.adjacent_figure(curves, velocity="both")
    left, right = fig.axes
    assert "adjacent distance" in left.get_ylabel() and "velocity" in right.get_ylabel()
    assert len(_labelled_lines(left)) == len(_labelled_lines(right)) == 2
    np.testing.assert_allclose(
        _labelled_lines(right)[0].get_ydata(), _labelled_lines(left)[0].get_ydata() / 10
    )
    _render(fig)
    with pytest.raises(ValueError, match="velocity"):
        plots.adjacent_figure(curves, velocity="yes")  # type: ignore[arg-type]


def test_adjacent_nan_empty_and_single():
    curves = {5: (np.array([0]), np.array([np.nan])), 7: (np.array([]), np.array([]))}
    fig = plots.adjacent_figure(curves, velocity="both", logx=True)
    assert len(_labelled_lines(fig.axes[0])) == 2
    _render(fig)
    _render(plots.adjacent_figure({}))


# --------------------------------------------------------------------------- Fig. 1c


def _luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _collection(ax, label: str):
    (found,) = [c for c in ax.collections if c.get_label() == label]
    return found


def test_embedding_2d_styling():
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(len(STEPS), 2))
    perm = rng.permutation(len(STEPS))  # rows in any order; drawn in step order
    fig = plots.embedding_figure(
        coords[perm], STEPS[perm], method="mds", quality="stress 0.012", phase1_end=100
    )
    assert len(fig.axes) == 2  # embedding + colorbar
    ax, cax = fig.axes
    assert cax.get_ylabel() == "training step"
    assert ax.get_title() == "Kernel trajectory (MDS, stress 0.012)"
    assert ax.get_xlabel() == "MDS 1" and ax.get_ylabel() == "MDS 2"
    assert ax.get_aspect() == 1.0
    # H(0): a black marker, larger than the others, labelled beside it; not in the legend, where
    # a black dot labelled H(0) read as a second H(0) (issue 16).
    h0 = _collection(ax, "_H(0)")
    assert to_rgba(h0.get_facecolor()[0]) == pytest.approx(to_rgba("black"))
    np.testing.assert_allclose(h0.get_offsets(), coords[:1])
    assert "H(0)" not in _legend_texts(ax) and "H(0)" in [t.get_text() for t in ax.texts]
    assert "end of Phase I (t = 100)" in _legend_texts(ax)
    # The path joins consecutive steps (sorted by step).
    (path,) = ax.get_lines()
    np.testing.assert_allclose(np.c_[path.get_xdata(), path.get_ydata()], coords)
    # Later steps are darker.
    _render(fig)
    rest = next(c for c in ax.collections if c.get_label().startswith("_"))
    np.testing.assert_allclose(rest.get_offsets(), coords[1:])
    lum = [_luminance(c) for c in rest.get_facecolors()]
    assert all(a > b for a, b in itertools.pairwise(lum))
    assert min(lum) < 0.3 and lum[0] < 0.95  # dark at the end, visible at the start


def test_embedding_3d():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(6, 3)) * np.array([1.0, 0.1, 0.001])
    fig = plots.embedding_figure(
        coords, np.arange(6) * 100, method="pca", quality="explained variance 93%"
    )
    ax = fig.axes[0]
    assert ax.name == "3d"
    assert ax.get_zlabel() == "PCA 3"
    assert fig.axes[1].get_ylabel() == "training step"
    h0 = _collection(ax, "H(0)")
    assert to_rgba(h0.get_facecolor()[0]) == pytest.approx(to_rgba("black"))
    _render(fig)


def test_embedding_nan_rows_single_point_and_shape_errors():
    coords = np.array([[0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])
    fig = plots.embedding_figure(coords, [0, 1, 2], method="mds", quality="")
    (path,) = fig.axes[0].get_lines()
    np.testing.assert_array_equal(path.get_xdata(), [0.0, 1.0])  # the NaN row is left out
    _render(fig)
    fig = plots.embedding_figure(np.zeros((1, 2)), [5], method="pca", quality="q")
    assert "H(5)" in [t.get_text() for t in fig.axes[0].texts]
    _render(fig)
    _render(plots.embedding_figure(np.full((2, 2), np.nan), [0, 1], method="mds", quality=""))
    with pytest.raises(ValueError, match=r"\(K, 2\) or \(K, 3\)"):
        plots.embedding_figure(np.zeros((3, 4)), [0, 1, 2], method="mds", quality="")
    with pytest.raises(ValueError, match="rows"):
        plots.embedding_figure(np.zeros((3, 2)), [0, 1], method="mds", quality="")


# --------------------------------------------------------------------------- S matrix


def test_matrix_figure():
    steps = np.arange(0, 2000, 100)
    s = _s_matrix(steps)
    s[2, 3] = s[3, 2] = np.nan
    fig = plots.matrix_figure(steps, s)
    ax, cax = fig.axes
    assert cax.get_ylabel() == "S"
    (image,) = ax.get_images()
    shown = image.get_array()
    assert shown.shape == s.shape
    assert shown.mask[2, 3] and not shown.mask[0, 1]
    np.testing.assert_array_equal(shown.filled(np.nan)[~np.isnan(s)], s[~np.isnan(s)])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 2 <= len(labels) <= 8
    assert set(labels) <= {str(x) for x in steps} and labels[0] == "0" and labels[-1] == "1900"
    assert [float(x) for x in ax.get_xticks()] == [float(list(steps).index(int(t))) for t in labels]
    _render(fig)
    fig = plots.matrix_figure(steps, s, log_color=True)
    image = fig.axes[0].get_images()[0]
    assert isinstance(image.norm, LogNorm)
    assert image.get_array().mask[0, 0]  # the zero diagonal cannot be shown on a log scale
    _render(fig)
    _render(plots.matrix_figure([0], np.zeros((1, 1)), log_color=True))
    # Dense early checkpoints then sparse ones: the last dense step is a labelled tick.
    steps = [*range(0, 21), *range(40, 481, 20)]
    fig = plots.matrix_figure(steps, _s_matrix(np.array(steps)))
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        texts = [t.get_text() for t in labels]
        assert "20" in texts and texts[0] == "0" and texts[-1] == "480"
    assert "one cell per checkpoint" in ax.get_xlabel()
    with pytest.raises(ValueError, match="shape"):
        plots.matrix_figure([0, 1], np.zeros((3, 3)))


# --------------------------------------------------------------------------- Fig. 2


def test_switch_figure():
    at = np.array([400, 0, 100])
    acc, loss = np.array([0.85, 0.5, 0.7]), np.array([0.4, 1.5, 0.9])
    fig = plots.switch_figure(
        at, acc, loss, reference_acc=0.9, reference_loss=0.3, until=1000, phase1_end=200
    )
    acc_ax, loss_ax = fig.axes
    assert acc_ax.get_ylabel() == "test accuracy" and loss_ax.get_ylabel() == "test loss"
    for ax, ys, ref in ((acc_ax, [0.5, 0.7, 0.85], 0.9), (loss_ax, [1.5, 0.9, 0.4], 0.3)):
        assert ax.get_xlabel() == "switch step t"
        curve, reference = _labelled_lines(ax)
        np.testing.assert_array_equal(curve.get_xdata(), [0, 100, 400])
        np.testing.assert_array_equal(curve.get_ydata(), ys)
        assert reference.get_label() == "standard training at T=1000"
        assert reference.get_linestyle() == "--"
        assert list(reference.get_ydata()) == [ref, ref]
        assert "standard training at T=1000" in _legend_texts(ax)
        assert "Phase I" in [t.get_text() for t in ax.texts]
    _render(fig)
    # The phase labels sit in a band above the data (they overlapped the last point).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax, ys in ((acc_ax, acc), (loss_ax, loss)):
        label = next(t for t in ax.texts if t.get_text() == "Phase II")
        box = label.get_window_extent(renderer)
        top = ax.transData.transform((0, max(ys)))[1]
        assert box.y0 >= top, (box.y0, top)
        assert ax.get_xlim()[1] >= 1000  # the axis runs on to T
    fig = plots.switch_figure(
        [500], [np.nan], [0.3], reference_acc=None, reference_loss=float("nan"), until=1000
    )
    assert all(len(_labelled_lines(ax)) == 1 for ax in fig.axes)
    _render(fig)


# --------------------------------------------------------------------------- training curves


def test_training_curves_from_csv_rows():
    text = io.StringIO()
    writer = csv.DictWriter(
        text, ["step", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    )
    writer.writeheader()
    for step in range(0, 100, 10):
        evaluated = step % 30 == 0
        writer.writerow(
            {
                "step": step,
                "train_loss": 2.0 / (1 + step),
                "train_acc": step / 100,
                "test_loss": 2.5 / (1 + step) if evaluated else "",
                "test_acc": step / 120 if evaluated else "",
                "lr": 0.1,
            }
        )
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    fig = plots.training_curves_figure(rows, log_loss=True)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_yscale() == "log"
    assert _legend_texts(loss_ax) == ["train", "test"] == _legend_texts(acc_ax)
    train, test = _labelled_lines(loss_ax)
    np.testing.assert_array_equal(test.get_xdata(), [0, 30, 60, 90])
    np.testing.assert_allclose(test.get_ydata(), [2.5 / (1 + s) for s in (0, 30, 60, 90)])
    assert len(train.get_xdata()) == 10
    assert loss_ax.get_xlabel() == "training step" and acc_ax.get_ylabel() == "accuracy"
    _render(fig)
    # Only train metrics logged; an empty log.
    fig = plots.training_curves_figure(
        [{"step": 0, "train_loss": 1.0}, {"step": 1, "train_loss": None}]
    )
    assert [ln.get_label() for ln in _labelled_lines(fig.axes[0])] == ["train"]
    assert _labelled_lines(fig.axes[1]) == []
    _render(fig)
    _render(plots.training_curves_figure([]))


# --------------------------------------------------------------------------- writing


def test_png_bytes_and_dpi():
    fig = plots.distance_to_reference_figure(STEPS, {0: _s_matrix(STEPS)[0]})
    data = _png_bytes(fig)
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert _png_size(data) == (900, 600)  # (6, 4) inches at 150 dpi
    assert _png_size(_png_bytes(fig, dpi=50)) == (300, 200)


def test_save_figure_atomic_and_formats(tmp_path):
    fig = plots.adjacent_figure(_adjacent_curves())
    target = tmp_path / "sub" / "fig.png"
    assert plots.save_figure(fig, target) == target
    assert target.read_bytes().startswith(PNG_SIGNATURE)
    assert plots.save_figure(fig, tmp_path / "fig.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ValueError, match=r"\.png"):
        plots.save_figure(fig, tmp_path / "fig.docx")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fig.pdf", "fig.png", "sub"]


def _every_kind_of_figure() -> dict[str, Callable[[], Figure]]:
    """A builder of each figure the commands write (a fresh figure per call: matplotlib's
    second ``savefig`` of one figure can differ from its first by a few pixels)."""
    rng = np.random.default_rng(3)
    coords_2d, coords_3d = rng.normal(size=(len(STEPS), 2)), rng.normal(size=(6, 3))
    steps = np.arange(0, 1300, 100)
    return {
        "distance": lambda: plots.distance_to_reference_figure(
            STEPS, {0: _s_matrix(STEPS)[0], 100: _s_matrix(STEPS)[4]}, phase1_end=100
        ),
        "adjacent": lambda: plots.adjacent_figure(
            _adjacent_curves(), velocity="both", logx=True, phase1_end=100, noise_floor=1e-3
        ),
        "matrix": lambda: plots.matrix_figure(STEPS, _s_matrix(STEPS), log_color=True),
        "embedding": lambda: plots.embedding_figure(
            coords_2d, STEPS, method="mds", quality="stress 0.01"
        ),
        "embedding 3-D": lambda: plots.embedding_figure(
            coords_3d, np.arange(6) * 100, method="pca", quality="q"
        ),
        "per layer": lambda: plots.per_layer_figure(
            {"conv": (list(STEPS[1:]), list(1 / STEPS[1:])), "fc": ([10, 20], [0.1, 0.2])},
            dt=10,
            logx=True,
        ),
        "spectrum": lambda: plots.spectrum_figure(
            steps, steps / 2e3, 5 + steps / 100, 0.5 + steps / 3e3, top_k=10, phase1_end=300
        ),
        "switch": lambda: plots.switch_figure(
            [0, 100, 400],
            [0.5, 0.7, 0.85],
            [1.5, 0.9, 0.4],
            reference_acc=0.9,
            reference_loss=0.3,
            until=1000,
            phase1_end=200,
        ),
    }


@pytest.mark.parametrize("kind", list(_every_kind_of_figure()))
def test_save_figure_png_has_savefigs_pixels_drawn_once(tmp_path, kind):
    """save_figure lays a PNG out, then draws it once (savefig drew it twice: once with
    rendering off to run the constrained layout); the pixels are savefig's, the size the
    figure's inches times 150 dpi, and the figure keeps its canvas, dpi and layout engine."""
    from PIL import Image

    build = _every_kind_of_figure()[kind]
    reference = np.asarray(Image.open(io.BytesIO(_png_bytes(build()))))
    fig = build()
    canvas, engine, dpi = fig.canvas, fig.get_layout_engine(), fig.dpi
    draws: list[object] = []
    fig.canvas.mpl_connect("draw_event", draws.append)
    data = plots.save_figure(fig, tmp_path / "fig.png").read_bytes()
    assert len(draws) == 1
    width, height = fig.get_size_inches() * 150
    assert _png_size(data) == (round(width), round(height))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), reference)
    assert (fig.canvas, fig.get_layout_engine(), fig.dpi) == (canvas, engine, dpi)


def test_no_pyplot_needed():
    code = (
        "import sys, numpy as np; from conetool import plots; "
        "f = plots.matrix_figure([0, 1], np.array([[0, .1], [.1, 0]])); "
        "import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp()); "
        "assert plots.save_figure(f, d / 'm.png').read_bytes()[:4] == b'\\x89PNG'; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_adjacent_figure_draws_the_noise_floor_near_the_data_and_names_it_when_far_below():
    from conetool.plots import adjacent_figure

    curves = {100: ([0, 100, 200, 300], [1e-1, 1e-3, 1e-4, 1e-4])}
    near = adjacent_figure(curves, velocity="both", noise_floor=1e-6)
    distance_ax = near.axes[0]
    floors = [line for line in distance_ax.lines if line.get_label() == "noise floor of S"]
    assert len(floors) == 1 and list(floors[0].get_ydata()) == [1e-6, 1e-6]
    assert not any("noise" in line.get_label() for line in near.axes[1].lines)
    far = adjacent_figure(curves, velocity="both", noise_floor=1e-14)
    labels = [text.get_text() for text in far.axes[0].get_legend().get_texts()]
    assert any("below the axis" in label and "1e-14" in label for label in labels)
    assert far.axes[0].get_ylim()[0] > 1e-9  # the curves keep their scale
