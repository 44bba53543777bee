"""``conetool switch --at t``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..choices import Reference
from .app import (
    Debug,
    DeviceOpt,
    Quiet,
    app,
    console,
    handle_errors,
    is_main_process,
    progress_display,
)
from .options import DEFAULT_STORE, SPEC_FILE, StepRegex, StoreCkpts, StoreOpt
from .runtime import Threads, starting, warned_at_the_end
from .table_output import print_table


@app.command()
def switch(
    at: Annotated[
        list[str],
        typer.Option(
            "--at",
            metavar="STEPS",
            help="Switch step t: 2000, a list 0,1000,2000, or a range 0:10000:1000 (stop excluded). "
            "Repeatable.",
        ),
    ],
    until: Annotated[
        int | None,
        typer.Option(
            "--until",
            min=1,
            metavar="T",
            help="End step T of the linearized training and of the comparison (default: the "
            "spec's train.steps; a larger T needs --beyond-run).",
        ),
    ] = None,
    beyond_run: Annotated[
        bool,
        typer.Option(
            "--beyond-run",
            help="Allow --until beyond the spec's train.steps (the standard run ends there, so "
            "there is no standard model at T to compare with).",
        ),
    ] = False,
    store: StoreOpt = DEFAULT_STORE,
    ckpts: StoreCkpts = None,
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="The run's TOML spec (default: CKPTS/conetool.toml, else the spec recorded in "
            "the store's manifest).",
            parser=SPEC_FILE,
            metavar="FILE",
        ),
    ] = None,
    reference: Annotated[
        Reference,
        typer.Option(
            "--reference",
            help="The standard model at T: 'checkpoint' (the stored one) or 'train' (continue "
            "the standard run to T).",
        ),
    ] = Reference.checkpoint,
    device: DeviceOpt = "auto",
    step_regex: StepRegex = None,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """From the checkpoint at step t, train the linearized model to T (the paper's Fig. 2).

    Each point is written to STORE/switch/ as soon as it is done; a rerun skips finished points.
    The checkpoint directory, spec and --step-regex default to those conetool kernels recorded
    in the store.

    Example: conetool switch --at 0,50,100,200 --store conetool-out

    On several GPUs or nodes, torchrun shares the switch points among its processes:
    torchrun --nproc-per-node 4 -m conetool switch --at 0,50,100,200 --store conetool-out
    """
    starting("switch", quiet)
    from ..pipeline.run_switch import switch as switch_run

    with handle_errors(debug), progress_display(quiet) as progress:
        result = switch_run(
            at,
            until=until,
            store=store,
            ckpts=ckpts,
            spec=spec,
            reference=reference.value,
            device=device,
            step_regex=step_regex,
            beyond_run=beyond_run,
            threads=threads,
            progress=progress,
        )
    if not is_main_process():
        return  # rank 0 reports the whole torchrun job
    table = Table(
        title=f"conetool switch -> {result.store}/switch (T = {result.until})", title_justify="left"
    )
    for column in ("t", "test acc", "test loss", "train loss", "momentum", "seconds"):
        table.add_column(column, justify="right")
    for p in result.points:
        table.add_row(
            str(p.at),
            f"{p.test_acc:.4f}",
            f"{p.test_loss:.4f}",
            f"{p.train_loss:.4f}",
            p.momentum,
            "reused" if p.reused else f"{p.seconds:.1f}",
        )
    if result.reference is not None:
        r = result.reference
        table.add_row(
            f"standard {r['step']}", f"{r['test_acc']:.4f}", f"{r['test_loss']:.4f}", "", "", ""
        )
    print_table(console, table)
    # The notes and warnings were said as they came (not with --quiet); the warnings again now.
    warned_at_the_end(result.warnings, quiet)
    for path in result.files:
        said = f"kept {path} (unchanged)" if path in result.kept else f"wrote {path}"
        console.print(said, highlight=False, markup=False)
