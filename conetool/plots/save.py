"""Writing a figure to a file atomically (PNG, or the format its suffix names), and drawing a
PNG figure only when the file does not already hold it (:func:`write_figure`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conetool.io import atomic_write

from .figure_key import KEY_FIELD, figure_key, recorded_key

if TYPE_CHECKING:  # matplotlib.figure loads when a figure is drawn: a rerun drawing none skips it
    from matplotlib.figure import Figure

#: The dpi of every figure conetool writes.
DPI = 150


def write_figure(
    path: str | Path, draw: Callable[..., Figure], /, *args: Any, **kwargs: Any
) -> Path:
    """Write the figure ``draw(*args, **kwargs)`` to the PNG ``path`` (as :func:`save_figure`
    does, at :data:`DPI`), unless ``path`` already holds it; returns the path.

    "Holds it": ``path`` is a whole, undamaged PNG recording the
    :func:`~conetool.plots.figure_key.figure_key` of this call (its arguments, the plot code,
    matplotlib's version and settings, the dpi, conetool's version). Then ``draw`` is not called
    and the file is left as it is: a rerun whose results are unchanged draws nothing. Anything
    else (another argument or option, a missing, truncated or damaged file, one from another
    version, an argument the key cannot hash, another suffix than ``.png``) draws and writes it.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        return save_figure(draw(*args, **kwargs), path, dpi=DPI)
    key = figure_key(draw, args, kwargs, dpi=DPI)
    if key is not None and recorded_key(path) == key:
        return path
    metadata = None if key is None else {KEY_FIELD: key}
    return save_figure(draw(*args, **kwargs), path, dpi=DPI, metadata=metadata)


def save_figure(
    fig: Figure, path: str | Path, *, dpi: int = DPI, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename); returns the path.

    The format comes from the suffix (``.png``, ``.pdf``, ``.svg``, ...; none means PNG). The
    figure is not closed: figures from this module are not registered with pyplot and need no
    closing. A PNG is drawn once (:func:`render_png`), the same pixels as ``fig.savefig``.
    ``metadata``: text a PNG records (``savefig``'s ``metadata``); other formats ignore it.
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
        atomic_write(path, lambda tmp: render_png(fig, tmp, dpi=dpi, metadata=metadata))
    else:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    return path


def render_png(
    fig: Figure, target: str | Path, *, dpi: int = DPI, metadata: dict[str, str] | None = None
) -> None:
    """Write ``fig`` as a PNG at ``dpi`` to ``target``: the pixels of ``fig.savefig(target,
    format="png", dpi=dpi)``, drawn once instead of twice (0.82-0.89 of its CPU time per figure
    in ``benchmarks/bench_figures.py``).

    Why: with a layout engine (every figure here is ``constrained``), ``savefig`` lays the
    figure out inside a whole draw with rendering off, then draws it again; that first draw
    updates every tick and measures every text only to be thrown away. Here the layout runs
    alone, on the Agg renderer of the final draw (same size and dpi, so the same text
    metrics), and ``savefig`` then draws once with the layout engine off. The figure keeps its
    canvas and layout engine. ``metadata``: ``savefig``'s (PNG text chunks).
    """
    engine = fig.get_layout_engine()
    if engine is None:
        fig.savefig(target, format="png", dpi=dpi, metadata=metadata)
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas, figure_dpi = fig.canvas, fig.dpi
    FigureCanvasAgg(fig)  # attaches itself; savefig then draws on it with its cached renderer
    try:
        fig.dpi = dpi
        engine.execute(fig)
        # None, not "none": savefig makes its extra draw for any engine, even the placeholder.
        fig.set_layout_engine(None)
        fig.savefig(target, format="png", dpi=dpi, metadata=metadata)
    finally:
        fig.set_layout_engine(engine)
        fig.dpi = figure_dpi
        fig.set_canvas(canvas)
