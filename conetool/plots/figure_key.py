"""Whether a PNG already holds a figure: the key of everything the figure shows, and the key a
PNG file records.

A figure is a pure function of its drawing function's arguments, the code of
:mod:`conetool.plots`, matplotlib (its version and its ``rcParams``), the dpi and conetool's
version. :func:`figure_key` hashes all of them; :func:`~conetool.plots.save.write_figure` records
the key in the PNG (a ``tEXt`` chunk) and, on a rerun, draws again only when
:func:`recorded_key` of the file there is not the key of the figure to draw. A file that is
missing, truncated or damaged (a chunk whose CRC does not match) records no key, so it is drawn
again; a killed run leaves no partial PNG (PNGs are written to a temporary file, then renamed).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from .._version import __version__

#: The PNG text keyword that holds the key.
KEY_FIELD = "conetool figure key"
#: Changes when the key's layout does.
KEY_FORMAT = b"conetool-figure-key/1"


class Unkeyable(TypeError):
    """An argument of a type :func:`figure_key` does not hash (the figure is drawn every time)."""


def figure_key(
    draw: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], *, dpi: int
) -> str | None:
    """The sha256 (hex) of everything the PNG of ``draw(*args, **kwargs)`` at ``dpi`` shows: the
    arguments (arrays by dtype, shape and bytes; mappings in their order, which is the order
    drawn), the function's module and name, the source of every module of ``conetool.plots``,
    matplotlib's version and ``rcParams``, and conetool's version. None when an argument is of a
    type it does not hash: then the figure has no key and is always drawn."""
    digest = hashlib.sha256(KEY_FORMAT)
    try:
        _feed(digest, (args, dict(kwargs)))
    except Unkeyable:
        return None
    name = f"{getattr(draw, '__module__', '?')}.{getattr(draw, '__qualname__', repr(draw))}"
    for part in (name, str(dpi), __version__, _plot_code(), _matplotlib_settings()):
        _feed(digest, part)
    return digest.hexdigest()


def recorded_key(path: Path) -> str | None:
    """The key recorded in the PNG at ``path``; None when there is no such file, it records no
    key, or it is not a whole, undamaged PNG (truncated, or a chunk's CRC does not match)."""
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG"]) as image:
            key = image.info.get(KEY_FIELD)
            image.verify()  # every chunk's CRC, up to IEND; reads no pixels
    except Exception:  # any file that cannot be read as a whole PNG is drawn again
        return None
    return key if isinstance(key, str) else None


@cache
def _plot_code() -> str:
    """The sha256 of the source of every module of ``conetool.plots`` (read once per process)."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def _matplotlib_settings() -> str:
    """matplotlib's version and its current ``rcParams`` (every setting a figure reads), as
    text. ``backend`` is left out: reading it can switch backends, and figures are drawn on Agg
    whatever it is."""
    params = matplotlib.rcParams
    settings = [(k, params[k]) for k in sorted(params) if k != "backend"]
    return f"{matplotlib.__version__}\n{settings!r}"


def _feed(digest: Any, value: Any) -> None:
    """Add ``value`` to ``digest``, each kind with its own tag and lengths, so that two values
    that differ (even in type: 1 and 1.0, a list and a tuple) feed different bytes.

    Raises:
        Unkeyable: ``value`` holds something not a number, string, array, sequence or mapping.
    """
    if value is None:
        digest.update(b"N")
    elif isinstance(value, bool | np.bool_):
        digest.update(b"T" if value else b"F")
    elif isinstance(value, int | np.integer):
        text = str(int(value)).encode()
        digest.update(b"I" + struct.pack("<Q", len(text)) + text)
    elif isinstance(value, float | np.floating):
        digest.update(b"D" + struct.pack("<d", float(value)))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        digest.update(b"S" + struct.pack("<Q", len(data)) + data)
    elif isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            _feed(digest, ("object array", value.shape, value.tolist()))
            return
        data = np.ascontiguousarray(value).tobytes()
        head = f"{value.dtype.str}{value.shape}".encode()
        digest.update(b"A" + struct.pack("<QQ", len(head), len(data)) + head + data)
    elif isinstance(value, Mapping):
        digest.update(b"M" + struct.pack("<Q", len(value)))
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple | range):
        digest.update((b"L" if isinstance(value, list) else b"U") + struct.pack("<Q", len(value)))
        for item in value:
            _feed(digest, item)
    else:
        raise Unkeyable(f"cannot key a figure argument of type {type(value).__name__}")
