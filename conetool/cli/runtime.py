"""What every computing command shares: ``--threads`` (and ``--max-memory``, where taken),
and a first line printed at once.

Nothing here imports PyTorch: ``conetool --help``, each command's ``--help`` and usage errors
answer from Typer alone, and a command imports the library inside its body, after printing its
first line (PyTorch and a user's data factory can take many seconds to load).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from ..threads import THREADS_HELP, parse_threads
from .app import INTERRUPT_ADVICE, RUNNING, console, interrupt_advice


def _check_threads(value: str) -> str:
    try:
        parse_threads(value)
    except ValueError as e:
        raise typer.BadParameter(f"{e}; for example --threads 1 or --threads auto") from None
    return value


Threads = Annotated[
    str,
    typer.Option("--threads", metavar="N|auto", help=THREADS_HELP, callback=_check_threads),
]


def check_max_memory(value: str | None) -> None:
    """Refuse a ``--max-memory`` that is no memory size, naming the flag: the library names its
    argument (``max_memory='lots' is not a memory size``), which the command line has not.
    ``None`` and ``auto`` are the command's default.

    Raises:
        MemoryBudgetError: ``value`` is no memory size (:func:`conetool.units.parse_memory`).
    """
    from ..units import is_auto, parse_memory

    if value is not None and not is_auto(value):
        parse_memory(value, "--max-memory")


def starting(command: str, quiet: bool, what: str = "loading PyTorch") -> None:
    """Print ``conetool COMMAND: WHAT ...`` at once (not with --quiet, nor on torchrun ranks
    other than 0). From here on a Ctrl-C says what the command keeps and how to continue
    (:func:`~conetool.cli.app.interrupt_advice`), the imports that follow included: it said a
    bare ``interrupted.`` while the command loaded PyTorch (most of a short ``report``)."""
    RUNNING[:] = [command]
    INTERRUPT_ADVICE[:] = [interrupt_advice(command=command)]
    if quiet or os.environ.get("RANK", "0").strip() not in ("", "0"):
        return
    console.print(f"conetool {command}: {what} ...", highlight=False, markup=False)


def warned_at_the_end(warnings: list[str], quiet: bool) -> None:
    """Print a result's ``warnings`` after its table with ``--quiet``: the progress display said
    them as they came, and ``--quiet`` must not lose them."""
    if quiet:
        for message in warnings:
            console.print(f"warning: {message}", highlight=False, markup=False)


def files_line(files: Sequence[Path], kept: Sequence[Path], folder: Path) -> str:
    """``wrote a.csv, summary.json in FOLDER``, and ``; kept a.png (unchanged)`` for those of
    ``files`` the command left as they were (a figure the PNG there already held)."""
    wrote = [p.name for p in files if p not in kept]
    left = [p.name for p in files if p in kept]
    line = f"wrote {', '.join(wrote)} in {folder}" if wrote else f"wrote nothing in {folder}"
    return f"{line}; kept {', '.join(left)} (unchanged)" if left else line
