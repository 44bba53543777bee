"""``conetool train SPEC --out CKPTS``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .app import Debug, DeviceOpt, Quiet, app, console, handle_errors, progress_display
from .options import path_parser
from .runtime import Threads, starting, warned_at_the_end
from .table_output import print_table

if TYPE_CHECKING:
    from ..training import TrainResult


@app.command()
def train(
    spec: Annotated[
        Path,
        typer.Argument(
            help="The TOML spec of the run.",
            parser=path_parser(
                "SPEC",
                "spec",
                "the TOML spec of the run",
                "conetool train examples/digits_lenet.toml --out runs/digits",
            ),
            metavar="SPEC",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Directory for the checkpoints.",
            parser=path_parser(
                "--out", "folder", "the folder for the checkpoints", "--out runs/digits"
            ),
            metavar="DIR",
        ),
    ],
    device: DeviceOpt = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run already in --out.")
    ] = False,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Train the spec's model and save safetensors checkpoints along the way.

    Writes step_XXXXXX.safetensors (plus the optimizer state beside each), conetool.toml (the
    resolved spec) and metrics.csv into --out.

    Example: conetool train examples/digits_lenet.toml --out runs/digits
    """
    starting("train", quiet)
    from ..training import train as train_run

    # Rerun as it was, an interrupted run would be refused (--out holds a run): --resume it.
    again = f"conetool train {shlex.quote(str(spec))} --out {shlex.quote(str(out))} --resume"
    with handle_errors(debug, continue_with=again), progress_display(quiet) as progress:
        result = train_run(
            spec,
            out,
            device=device,
            resume=resume,
            overwrite=overwrite,
            threads=threads,
            progress=progress,
        )
    table = Table(title=f"conetool train -> {result.out}", title_justify="left")
    for column in ("steps", "checkpoints", "test loss", "test accuracy", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(
        str(result.steps),
        _checkpoints(result),
        f"{result.test_loss:.4f}",
        f"{result.test_acc:.4f}",
        f"{result.seconds:.1f}",
    )
    print_table(console, table)
    console.print(f"final test accuracy: {result.test_acc:.4f}", highlight=False)
    warned_at_the_end(result.warnings, quiet)


def _checkpoints(result: TrainResult) -> str:
    """The run's checkpoints; resumed, with how many this call wrote (the step it resumed from is
    written again, identical)."""
    if result.resumed_from is None:
        return str(len(result.saved_steps))
    return f"{len(result.run_steps)} ({len(result.saved_steps)} written)"
