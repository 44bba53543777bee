"""Writing a figure to a file atomically (PNG, or the format its suffix names)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from conetool.io import atomic_write


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename); returns the path.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``, ...; none means PNG). The
    figure is not closed: figures from this module are not registered with pyplot and need no
    closing. A PNG is drawn once (:func:`render_png`), the same pixels as ``fig.savefig``.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot save a figure as {path.name!r}: unknown format {fmt!r}. "
            f"Use one of the suffixes {', '.join('.' + k for k in sorted(supported))}."
        )
    if fmt == "png":
        atomic_write(path, lambda tmp: render_png(fig, tmp, dpi=dpi))
    else:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    return path


def render_png(fig: Figure, target: str | Path, *, dpi: int = 150) -> None:
    """Write ``fig`` as a PNG at ``dpi`` to ``target``: the pixels of ``fig.savefig(target,
    format="png", dpi=dpi)``, drawn once instead of twice (0.82-0.89 of its CPU time per figure
    in ``benchmarks/bench_figures.py``).

    Why: with a layout engine (every figure here is ``constrained``), ``savefig`` lays the
    figure out inside a whole draw with rendering off, then draws it again; that first draw
    updates every tick and measures every text only to be thrown away. Here the layout runs
    alone, on the Agg renderer of the final draw (same size and dpi, so the same text
    metrics), and ``savefig`` then draws once with the layout engine off. The figure keeps its
    canvas and layout engine.
    """
    engine = fig.get_layout_engine()
    if engine is None:
        fig.savefig(target, format="png", dpi=dpi)
        return
    canvas, figure_dpi = fig.canvas, fig.dpi
    FigureCanvasAgg(fig)  # attaches itself; savefig then draws on it with its cached renderer
    try:
        fig.dpi = dpi
        engine.execute(fig)
        # None, not "none": savefig makes its extra draw for any engine, even the placeholder.
        fig.set_layout_engine(None)
        fig.savefig(target, format="png", dpi=dpi)
    finally:
        fig.set_layout_engine(engine)
        fig.dpi = figure_dpi
        fig.set_canvas(canvas)
