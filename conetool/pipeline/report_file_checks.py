"""Cheap checks of the store files a report's captions point a reader to (``distance/to_ref.csv``,
``distance/adjacent.csv``, ``distance/matrix.npz``, ``distance/per_layer.csv``,
``embed/coords.csv``, ``switch/results.csv``): that each is there and whole, without reading a
large array.

A CSV is read whole with the csv module (these files are small beside the kernels), as
``csv.DictReader`` reads it back from a file opened with ``newline=''``: rows end at ``\n``,
``\r\n`` or ``\r`` outside quotes alone (a quoted field may hold a line end, a field any other
character), a UTF-8 byte order mark is not part of the header, and a blank line is no row. Checked:
its header, that every row has the header's number of fields, that no quoted field is left open and
the file ends with a line end (a file cut short mid-row has none) and, where the summary JSON says
how many rows it wrote, their count. An
``.npz`` file is opened as the zip archive it is: its index (the central directory, at its end, so a
truncated file has none) must list the arrays the format names; no array is read.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["csv_problem", "npz_problem"]


def csv_problem(
    path: Path,
    header: Sequence[str] | None,
    rows: int | None = None,
    counted_in: str = "summary.json",
) -> str | None:
    """What is wrong with the CSV file ``path``, in words that follow its name; None when it is
    whole.

    Args:
        path: the file.
        header: the header it must have, column by column; None: any (the rows are checked
            against the file's own).
        rows: the number of rows (after the header) it must hold; None when not known (a summary
            written before it was recorded).
        counted_in: the name of the file that says ``rows``, for the message.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    try:
        text = raw.decode("utf-8-sig")  # (a byte order mark is not part of the header)
    except UnicodeDecodeError as exc:
        return f"cannot be read as CSV ({exc})"
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    lines: list[tuple[int, list[str]]] = []  # (the line a row starts on, the row)
    start = 1
    try:
        for row in reader:
            if row:  # (a blank line is no row)
                lines.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:  # (a quoted field left open at the end: cut short inside it)
        return f"is cut short or damaged (line {start}: {exc})"
    if not lines:
        return "is empty"
    if header is None:
        header = lines[0][1]
    elif lines[0][1] != list(header):
        return f"has the header {','.join(lines[0][1])!r}, not {','.join(header)!r}"
    body = lines[1:]
    for number, row in body:
        if len(row) != len(header):
            return f"is cut short or damaged (line {number} has {len(row)} of {len(header)} fields)"
    if not raw.endswith((b"\n", b"\r")):
        return "is cut short (its last line has no line end)"
    if rows is not None and len(body) != rows:
        return f"holds {len(body)} rows, where its {counted_in} says {rows}"
    return None


def npz_problem(path: Path, arrays: Sequence[str]) -> str | None:
    """What is wrong with the ``.npz`` file ``path`` (its index only: no array is read), in words
    that follow its name; None when its index opens and lists every one of ``arrays``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except FileNotFoundError:
        return "is missing"
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return f"cannot be opened as .npz (truncated or damaged: {exc})"
    lacking = [name for name in arrays if f"{name}.npy" not in names]
    if lacking:
        return f"lacks the array{'s' if len(lacking) > 1 else ''} {', '.join(lacking)}"
    return None
