"""``conetool demo``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .app import Debug, DeviceOpt, Quiet, app, console, handle_errors, progress_display
from .distance_cmd import verdict_line
from .options import path_parser
from .runtime import Threads, starting, warned_at_the_end
from .table_output import print_table

if TYPE_CHECKING:  # (conetool.pipeline imports PyTorch: the command imports it in its body)
    from ..pipeline.demo_reuse import StageWork


@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Folder for the run, its store and the report.",
            parser=path_parser("--out", "folder", "the demo's folder", "--out conetool-demo"),
        ),
    ] = Path("conetool-demo"),
    device: DeviceOpt = "auto",
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=8,
            metavar="T",
            help="Shorten the training run (default 2400; checkpoints scale along).",
        ),
    ] = None,
    probe_size: Annotated[
        int | None,
        typer.Option(
            "--probe-size",
            min=2,
            metavar="N",
            help="Probe examples (default 100, at most 360: the demo's evaluation set, as "
            "large as the probe, is drawn from the 360 test images).",
        ),
    ] = None,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """The whole pipeline on the embedded digits data, then a report (one to two minutes on 2 CPU cores).

    Trains examples/digits_lenet.toml, computes its kernels, distances, embedding, spectrum and a
    switch sweep, and writes the report. A second run reuses what is already done, and says
    what each stage reused.

    Example: conetool demo --out conetool-demo
    """
    starting("demo", quiet)
    from ..pipeline.run_demo import demo as demo_run

    with handle_errors(debug), progress_display(quiet) as progress:
        result = demo_run(
            out,
            device=device,
            steps=steps,
            probe_size=probe_size,
            threads=threads,
            progress=progress,
        )
    table = Table(title=f"conetool demo -> {result.out}", title_justify="left")
    for name in result.stage_seconds:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    table.add_row(
        *(f"{s:.1f}s" for s in result.stage_seconds.values()),
        f"{sum(result.stage_seconds.values()):.1f}s",
    )
    print_table(console, table)
    if any(work.reused for work in result.stage_work.values()):  # a rerun: say what it reused
        for name, work in result.stage_work.items():
            console.print(work_line(name, work), highlight=False, markup=False)
    verdict = result.verdict
    line = verdict_line(verdict["regime"], verdict.get("phase1_end"), verdict.get("numbers", {}))
    console.print(line, highlight=False)
    console.print(verdict.get("explanation", ""), highlight=False, markup=False)
    console.print(f"report: {result.report_html}", highlight=False, markup=False)
    console.print(f"        {result.report_md}", highlight=False, markup=False)
    warned_at_the_end(result.warnings, quiet)


def work_line(stage: str, work: StageWork) -> str:
    """One line of what a stage of the demo reused and made: ``kernels: 44 steps reused, 0
    computed``, ``spectrum: 44 spectra computed`` (nothing reused), ``distance: S matrix
    reused``."""
    if work.reused + work.made == 1:
        return f"{stage}: {work.what} {'reused' if work.reused else work.verb}"
    if not work.reused:
        return f"{stage}: {work.made} {work.what} {work.verb}"
    return f"{stage}: {work.reused} {work.what} reused, {work.made} {work.verb}"
