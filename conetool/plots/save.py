"""Writing figures: PNG bytes in memory, or a PNG file written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from conetool.io import atomic_write


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
