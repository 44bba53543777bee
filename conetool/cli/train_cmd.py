"""``conetool train SPEC --out CKPTS``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .app import Debug, DeviceOpt, Quiet, app, console, handle_errors, progress_display
from .runtime import Threads, starting


@app.command()
def train(
    spec: Annotated[
        Path, typer.Argument(help="The TOML spec of the run.", dir_okay=False, metavar="SPEC")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the checkpoints.", metavar="DIR")
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

    with handle_errors(debug), progress_display(quiet) as progress:
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
        str(len(result.saved_steps)),
        f"{result.test_loss:.4f}",
        f"{result.test_acc:.4f}",
        f"{result.seconds:.1f}",
    )
    console.print(table)
    console.print(f"final test accuracy: {result.test_acc:.4f}", highlight=False)
