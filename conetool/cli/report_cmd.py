"""``conetool report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..units import format_bytes
from .app import Debug, Quiet, app, console, handle_errors, progress_display
from .options import DEFAULT_STORE, StoreCkpts, StoreOpt, path_parser
from .runtime import starting, warned_at_the_end
from .table_output import print_table

_TITLES = {
    "summary": "summary",
    "verdict": "verdict",
    "distance": "kernel distance",
    "embed": "cone embedding",
    "switch": "switch experiment",
    "checkpoints": "checkpoints and kernels",
    "run": "run",
    "reproduce": "reproduce",
}


@app.command()
def report(
    store: StoreOpt = DEFAULT_STORE,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Directory for report.html, report.md, spec.toml and training.png (default: "
            "STORE/report).",
            parser=path_parser("--out", "folder", "the folder for the report", "--out report"),
            metavar="DIR",
        ),
    ] = None,
    ckpts: StoreCkpts = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """One self-contained HTML page (and a Markdown version) of everything the store holds.

    The page holds the verdict with its numbers, the training curves, Fig. 1a, 1b, 1c, the S
    matrix, the per-layer velocities, the spectrum and Fig. 2 (embedded: no network needed to
    view it), the checkpoint table, the spec, versions, and the commands that reproduce it all.
    Parts the store lacks are listed with the command that makes each.

    Writes report.html, report.md, spec.toml and training.png to STORE/report (or --out).

    Example: conetool report --store conetool-out
    """
    starting("report", quiet)
    from ..pipeline import report as report_run

    with handle_errors(debug), progress_display(quiet) as progress:
        result = report_run(store, out=out, ckpts=ckpts, progress=progress)
    table = Table(title=f"conetool report -> {result.html.parent}", title_justify="left")
    table.add_column("section")
    table.add_column("holds")
    for name in result.sections:
        table.add_row(_TITLES.get(name, name), escape(result.details.get(name, "")))
    for part, command in result.missing:
        table.add_row(f"[yellow]missing[/] {escape(part)}", f"run: {escape(command)}")
    print_table(console, table, highlight=False)
    # The notes and warnings were said as they came (not with --quiet); the warnings again now.
    warned_at_the_end(result.warnings, quiet)
    size = format_bytes(result.html.stat().st_size, smallest="KiB", largest="MiB")
    beside = [p for p in (result.markdown, result.spec, result.training_png) if p]
    kept = [p.name for p in beside if p in result.kept]
    console.print(
        f"wrote {result.html.name} ({size}, {len(result.figures)} figures embedded), "
        + ", ".join(p.name for p in beside if p not in result.kept)
        + (f"; kept {', '.join(kept)} (unchanged)" if kept else "")
        + (
            f"; removed {', '.join(p.name for p in result.removed)} (not in this report)"
            if result.removed
            else ""
        ),
        highlight=False,
        markup=False,
    )
