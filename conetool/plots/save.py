"""Writing a figure to a file atomically (PNG, or the format its suffix names)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from conetool.io import atomic_write


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
