"""The Typer app, the options every command shares, and the one place errors become exit codes.

Exit codes: 0 success; 1 a user error (a :class:`~conetool.errors.ConetoolError`: one paragraph
naming the file or flag at fault and the fix, no traceback unless ``--debug``); 2 a usage error
(Typer's own); 130 interrupted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConetoolError
from ..progress import NullProgress
from .progress_display import PlainProgress, RichProgress

app = typer.Typer(
    name="conetool",
    help=(
        "Measure how a network's empirical Neural Tangent Kernel moved during training "
        "(the cone effect of Zhou et al. 2025)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")]
Debug = Annotated[
    bool,
    typer.Option("--debug", help="Show the full traceback of an error (or set CONETOOL_DEBUG=1)."),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:K.")
]


@contextmanager
def handle_errors(debug: bool = False) -> Iterator[None]:
    """Turn a ConetoolError into a clean message and exit code 1 (traceback with ``--debug``)."""
    debug = debug or os.environ.get("CONETOOL_DEBUG", "") not in ("", "0")
    try:
        yield
    except ConetoolError as exc:
        if debug:
            err_console.print_exception()
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted.[/] Everything already written is complete and valid; "
            "rerun the same command to continue."
        )
        raise typer.Exit(130) from None


@contextmanager
def progress_display(quiet: bool) -> Iterator[RichProgress | PlainProgress | NullProgress]:
    """A rich display on a terminal, plain lines otherwise, nothing with ``--quiet``."""
    if quiet:
        yield NullProgress()
    elif console.is_terminal:
        with RichProgress(console) as display:
            yield display
    else:
        yield PlainProgress(console)


@app.callback()
def _root() -> None:
    """Measure how a network's empirical Neural Tangent Kernel moved during training.

    Start with: conetool train examples/digits_lenet.toml --out runs/digits
    """
