"""A command's results table printed whole where its output is not a terminal (a log file, a
pipe, a CI job): rich folds everything to 80 columns there, having no terminal to measure, which
cut the kernels table's first header to ``comput…``. A terminal keeps its width, and ``COLUMNS``,
where set, is the width asked for: the table is folded to it as before."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

#: The widest a table is printed at where there is no terminal: enough for every command's.
MAX_WIDTH = 400


def print_table(console: Console, table: Table, *, highlight: bool | None = None) -> None:
    """Print ``table`` on ``console`` (``highlight`` as :meth:`rich.console.Console.print`'s):
    folded to the terminal's width, or to ``COLUMNS`` where that is set; elsewhere at the width
    the table needs (at least the console's, at most :data:`MAX_WIDTH`)."""
    width = console.width
    if not console.is_terminal:
        columns = os.environ.get("COLUMNS", "").strip()
        if columns.isdigit() and int(columns) > 0:
            width = int(columns)
        else:
            options = console.options.update_width(MAX_WIDTH)
            width = max(width, console.measure(table, options=options).maximum)
    if width == console.width:
        console.print(table, highlight=highlight)
        return
    # (no colour without a terminal: nothing else of the console's to carry over)
    Console(file=console.file, width=width, no_color=console.no_color).print(table)
