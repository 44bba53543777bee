"""``conetool spectrum``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .app import Debug, Quiet, app, console, handle_errors, progress_display
from .options import DEFAULT_STORE, SkipBadKernels, StoreOpt
from .runtime import Threads, starting


def _g(x: float) -> str:
    return f"{x:.4g}"


@app.command()
def spectrum(
    store: StoreOpt = DEFAULT_STORE,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", min=1, help="Eigenvalues kept, and eigenvectors the label energy uses."
        ),
    ] = 10,
    logx: Annotated[
        bool, typer.Option("--logx", help="Log step axis on the figure (keeps step 0).")
    ] = False,
    skip_bad: SkipBadKernels = False,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """How each stored kernel lines up with the labels: alignment, effective rank, label energy.

    For every stored step: the centered kernel-target alignment with the probe set's one-hot
    labels, the effective rank, the share of the labels' energy in the top-k eigenvectors and the
    top-k eigenvalues.

    Writes spectrum.csv, summary.json and spectrum.png to STORE/spectrum.

    Example: conetool spectrum --top-k 20
    """
    starting("spectrum", quiet)
    from ..pipeline import spectrum as spectrum_run
    from ..threads import limit_threads

    with handle_errors(debug), progress_display(quiet) as progress, limit_threads(threads):
        result = spectrum_run(store, top_k=top_k, logx=logx, skip_bad=skip_bad, progress=progress)
    table = Table(title=f"conetool spectrum -> {result.store / 'spectrum'}", title_justify="left")
    for column in ("step", "alignment", "effective rank", f"label energy (top {result.top_k})"):
        table.add_column(column, justify="right")
    points = list(zip(result.steps, result.points, strict=True))
    shown = points if len(points) <= 8 else [*points[:3], None, *points[-4:]]
    for item in shown:
        if item is None:
            table.add_row("...", "", "", "")
            continue
        step, p = item
        table.add_row(str(step), _g(p.alignment), _g(p.effective_rank), _g(p.label_energy))
    console.print(table)
    if result.phase1_end is not None:
        console.print(f"Phase I ends at step {result.phase1_end} (distance/summary.json)")
    for step, why in result.excluded.items():
        console.print(f"- step {step} left out: {why}", highlight=False, markup=False)
    console.print(
        f"wrote {', '.join(p.name for p in result.files)} in {result.store / 'spectrum'}",
        highlight=False,
        markup=False,
    )
