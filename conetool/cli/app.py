"""The Typer app, the options every command shares, and the one place errors become exit codes.

Exit codes: 0 success; 1 a user error (a :class:`~conetool.errors.ConetoolError`: one paragraph
naming the file or flag at fault and the fix, no traceback unless ``--debug``); 2 a usage error
(Typer's own); 130 interrupted.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ConetoolError
from ..progress import WARNING, Heard, NullProgress
from .collector import imports_done
from .progress_display import PlainProgress, RichProgress

if TYPE_CHECKING:  # conetool.distributed imports torch: only commands that run load it
    from ..distributed import Ranks

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


def _forget_zero_columns() -> None:
    """Drop ``COLUMNS=0`` from the environment: a width unknown (``shutil.get_terminal_size``
    reads it so), which rich, and Typer's help through it, took for 0 columns and printed nothing
    at, every line lost: results, errors, ``--help``. Without it the terminal's width, or 80."""
    columns = os.environ.get("COLUMNS")
    if columns is not None and columns.isdigit() and int(columns) == 0:  # (as rich reads it)
        del os.environ["COLUMNS"]


_forget_zero_columns()  # (before the consoles, which read COLUMNS once made)
console = Console()
err_console = Console(stderr=True)


def unfold_where_no_terminal() -> None:
    """Messages printed whole, one line each, where the output is not a terminal (a log file, a
    pipe, a CI job): rich folds them to 80 columns there, having no terminal to measure, and cut
    a path longer than that in two, so that it could be neither copied nor searched for. A
    terminal keeps its width and its folding."""
    for each in (console, err_console):
        each.soft_wrap = not each.is_terminal


#: Set when a command has said it was interrupted, so that ``main`` does not say it again.
INTERRUPT_ANNOUNCED: list[bool] = []
#: What a Ctrl-C advises while a command runs (from its first line on: ``runtime.starting``,
#: ``handle_errors``), for ``main`` to say when the interrupt ends the process itself (inside an
#: import, as the command loads its modules, or surfacing as another error): empty before a
#: command starts; once its work ended normally, :func:`finished_advice` (a Ctrl-C as it prints
#: its results, after ``handle_errors``, reaches ``main`` only).
INTERRUPT_ADVICE: list[str] = []
#: The command running, from its first line on (``runtime.starting``).
RUNNING: list[str] = []


def forget_last_command() -> None:
    """Clear what the previous command in this process left (:data:`INTERRUPT_ADVICE`,
    :data:`RUNNING`, :data:`INTERRUPT_ANNOUNCED`), as ``main`` starts another: a Ctrl-C before
    the new command's first line then says a bare ``interrupted.``, not the last command's
    advice (``The command had finished``, of a command run before it in a test or a program
    that calls ``main`` again)."""
    INTERRUPT_ADVICE.clear()
    RUNNING.clear()
    INTERRUPT_ANNOUNCED.clear()


#: What an interrupted command keeps, said in its ``interrupted.`` line (:func:`interrupt_advice`);
#: the commands not named write their results only at the end.
INTERRUPT_KEEPS = {
    "train": "the checkpoints saved so far are kept",
    "kernels": "the store and its finished kernels are kept; only the kernel in progress is lost",
    "switch": "the sweep's finished points are kept; only the point in progress is lost",
    "demo": "the run's checkpoints, the store and its finished kernels, and the stages done are "
    "kept",
    "report": "the store's kernels and results are as they were",
}
#: What a command interrupted as it prints its results (its work done) has done, where that is
#: not :func:`finished_advice`'s default (everything written).
INTERRUPT_DONE = {
    "inspect": "every checkpoint was read (inspect writes nothing); only the printing of its "
    "results was cut short: rerun it to see them",
}

Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars or progress lines, nor the notes said along the way; warnings "
        "are still printed, at the end, and the results as always.",
    ),
]
Debug = Annotated[
    bool,
    typer.Option("--debug", help="Show the full traceback of an error (or set CONETOOL_DEBUG=1)."),
]
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?", re.IGNORECASE)


def _check_device(value: str) -> str:
    """The device's spelling, a usage error (exit 2) like any other bad option value; whether the
    machine has it is the library's check (:func:`conetool.device.resolve_device`, exit 1)."""
    if not _DEVICE_NAME.fullmatch(value.strip()):
        raise typer.BadParameter(f"{value!r} is not a device. Use auto, cpu, cuda or cuda:K.")
    return value


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda|cuda:K",
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:K.",
        callback=_check_device,
    ),
]


_PEER_EXIT_DELAY = 1.0  # seconds; torchrun checks its workers every 0.1 s


def _ranks() -> Ranks:
    from ..distributed import Ranks

    try:
        return Ranks.from_env()
    except ConetoolError:
        return Ranks()  # the command itself reports the bad variable


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a torchrun job (those print no results)."""
    return _ranks().is_main


@contextmanager
def handle_errors(debug: bool = False, continue_with: str | None = None) -> Iterator[None]:
    """Turn a ConetoolError into a clean message and exit code 1 (traceback with ``--debug``).
    On Ctrl-C, exit 130 advising the command to continue with (``continue_with``; by default the
    same command: every command but ``train`` continues where it stopped).

    Under torchrun each distinct error is printed once, by the rank that hit it (prefixed with
    its rank unless rank 0); a rank that stopped because another one failed exits 1 silently,
    and 130 when that rank was interrupted (rank 0 saying so, when the Ctrl-C did not reach it).
    """
    from ..distributed import PeerFailedError, PeerInterruptedError

    imports_done()  # (the command's modules are imported: see conetool.cli.collector)
    unfold_where_no_terminal()
    debug = debug or os.environ.get("CONETOOL_DEBUG", "") not in ("", "0")
    ranks = _ranks()
    advice = interrupt_advice(continue_with, RUNNING[-1] if RUNNING else None)
    INTERRUPT_ADVICE[:] = [advice]  # (kept when the command ends by an error: main may say it)
    try:
        yield
    except PeerInterruptedError as exc:
        # The job was interrupted on another rank: exit as for a Ctrl-C here, rank 0 saying so
        # (unless it was the rank interrupted, which said it itself).
        INTERRUPT_ANNOUNCED.append(True)
        if ranks.is_main:
            err_console.print(
                f"[yellow]interrupted:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(130) from None
    except PeerFailedError:
        if debug:
            err_console.print_exception()
        # The failing rank prints the error; exiting a moment after it lets torchrun name that
        # rank, not this one, as the root cause.
        time.sleep(_PEER_EXIT_DELAY)
        raise typer.Exit(1) from None
    except ConetoolError as exc:
        if debug:
            err_console.print_exception()
        where = f"rank {ranks.rank}: " if ranks.is_distributed and not ranks.is_main else ""
        err_console.print(
            f"[bold red]error:[/] {escape(where + str(exc))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    except OSError as exc:
        # A full, read-only or forbidden file system met outside conetool's own writers (which
        # raise StoreError for it): still one paragraph naming the path. Anything else is a bug.
        # (Under torchrun the other ranks stop silently: conetool.distributed knows it is said.)
        from ..io import said_os_error  # torch-free --help: conetool.io loads safetensors.torch

        error = said_os_error(exc)
        if error is None:
            raise
        if debug:
            err_console.print_exception()
        where = f"rank {ranks.rank}: " if ranks.is_distributed and not ranks.is_main else ""
        err_console.print(
            f"[bold red]error:[/] {escape(where + str(error))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        INTERRUPT_ANNOUNCED.append(True)
        if ranks.is_main:
            err_console.print(
                f"[yellow]interrupted.[/] {escape(advice)}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(130) from None
    # the work is done: a Ctrl-C from here on (the results table) cuts short the printing only
    INTERRUPT_ADVICE[:] = [finished_advice(RUNNING[-1] if RUNNING else None)]


def finished_advice(command: str | None = None) -> str:
    """What ``interrupted.`` is followed by once ``command``'s work ended normally (as it prints
    its results): its work is complete and written, nothing to rerun (:data:`INTERRUPT_DONE`
    for a command that writes nothing)."""
    done = INTERRUPT_DONE.get(command or "")
    if done is not None:
        return f"The command had finished: {done}."
    return (
        "The command had finished: everything it writes is complete and written; only the "
        "printing of its results was cut short (nothing to rerun)."
    )


def interrupt_advice(continue_with: str | None = None, command: str | None = None) -> str:
    """What ``interrupted.`` is followed by inside a command (:func:`handle_errors`): nothing
    written is lost, what ``command`` keeps (:data:`INTERRUPT_KEEPS`), and the command to
    continue with (by default the same command)."""
    keeps = INTERRUPT_KEEPS.get(command or "")
    return (
        "Everything already written is complete and valid"
        + (f" ({keeps})" if keeps else "")
        + "; "
        + (
            "rerun the same command to continue."
            if continue_with is None
            else f"continue with: {continue_with}"
        )
    )


@contextmanager
def progress_display(
    quiet: bool,
) -> Iterator[RichProgress | PlainProgress | Heard | NullProgress]:
    """A rich display on a terminal, plain lines otherwise, nothing with ``--quiet`` (nor on
    torchrun ranks other than 0: rank 0 shows the progress of the whole job). ``--quiet`` hides
    the progress and the notes, never the warnings: when the command fails (an error, Ctrl-C),
    those said before the failure go to stderr ahead of its error, as a run without ``--quiet``
    showed them (a command that ends well prints its result's warnings after its table)."""
    if not is_main_process():
        yield NullProgress()
    elif quiet:
        kept = Heard()  # (keeps the warnings, as for a library call given no progress)
        try:
            yield kept
        except (Exception, KeyboardInterrupt):
            for line in kept.warnings:
                err_console.print(f"{WARNING}{line}", highlight=False, markup=False, soft_wrap=True)
            raise
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
