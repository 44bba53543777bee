"""``conetool spectrum``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .app import Debug, Quiet, app, console, handle_errors, progress_display
from .options import DEFAULT_STORE, SkipBadKernels, StoreOpt
from .runtime import Threads, files_line, starting, warned_at_the_end
from .table_output import print_table


def _g(x: float) -> str:
    return f"{x:.4g}"


@app.command()
def spectrum(
    store: StoreOpt = DEFAULT_STORE,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            min=1,
            metavar="K",
            help="Eigenvalues kept, and eigenvectors the label energy uses.",
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
    top-k eigenvalues. With the eval kernels of conetool kernels --eval-size, also the test
    accuracy and loss of kernel regression on the probe set with the eNTK frozen at each step.

    Writes spectrum.csv, summary.json and spectrum.png to STORE/spectrum.

    Example: conetool spectrum --top-k 20
    """
    starting("spectrum", quiet)
    from ..pipeline import spectrum as spectrum_run

    with handle_errors(debug), progress_display(quiet) as progress:
        result = spectrum_run(
            store,
            top_k=top_k,
            logx=logx,
            skip_bad=skip_bad,
            threads=threads,
            progress=progress,
        )
    table = Table(title=f"conetool spectrum -> {result.store / 'spectrum'}", title_justify="left")
    columns = ["step", "alignment", "effective rank", f"label energy (top {result.top_k})"]
    machine = result.eval_size is not None
    if machine:
        columns.append("kernel machine test acc")
    for column in columns:
        table.add_column(column, justify="right")
    points = list(zip(result.steps, result.points, result.eval_acc, strict=True))
    shown = points if len(points) <= 8 else [*points[:3], None, *points[-4:]]
    for item in shown:
        if item is None:
            table.add_row(*(["..."] + [""] * (len(columns) - 1)))
            continue
        step, p, acc = item
        row = [str(step), _g(p.alignment), _g(p.effective_rank), _g(p.label_energy)]
        if machine:
            row.append("-" if acc != acc else _g(acc))  # NaN: no current eval kernel
        table.add_row(*row)
    print_table(console, table)
    if machine:
        console.print(
            f"kernel machine: kernel regression on the probe set, eNTK frozen at each step, "
            f"ridge {result.ridge:g} x tr(K)/n, tested on {result.eval_size} test examples",
            highlight=False,
            markup=False,
        )
    if result.phase1_end is not None:
        console.print(f"Phase I ends at step {result.phase1_end} (distance/summary.json)")
    for step, why in result.excluded.items():
        console.print(f"- step {step} left out: {why}", highlight=False, markup=False)
    # The notes and warnings were said as they came (not with --quiet); the warnings again now.
    warned_at_the_end(result.warnings, quiet)
    console.print(
        files_line(result.files, result.kept, result.store / "spectrum"),
        highlight=False,
        markup=False,
    )
