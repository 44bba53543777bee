"""``conetool embed``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..choices import EmbedMethod
from .app import Debug, Quiet, app, console, handle_errors, progress_display
from .options import DEFAULT_STORE, MatrixMemory, SkipBadKernels, StoreOpt, VerdictSpec
from .runtime import Threads, check_max_memory, files_line, starting, warned_at_the_end
from .table_output import print_table


@app.command()
def embed(
    store: StoreOpt = DEFAULT_STORE,
    method: Annotated[
        EmbedMethod,
        typer.Option(
            "--method",
            help="mds: metric MDS of the chordal distance sqrt(2 S); pca: PCA of the "
            "unit-norm kernels.",
        ),
    ] = EmbedMethod.mds,
    dims: Annotated[
        int, typer.Option("--dims", min=2, max=3, metavar="2|3", help="2 or 3 dimensions.")
    ] = 2,
    seed: Annotated[
        int,
        typer.Option(
            "--seed",
            help="Recorded only: MDS starts from the PCA solution and draws nothing at random, "
            "so the result does not depend on it. Unused by pca.",
        ),
    ] = 0,
    skip_bad: SkipBadKernels = False,
    max_memory: MatrixMemory = None,
    spec: VerdictSpec = None,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """A 2-D (or 3-D) picture of the kernel trajectory: the cone (paper Fig. 1c).

    Writes coords.csv, summary.json, embedding.png and matrix.npz to STORE/embed.

    The S matrix is reused from STORE/distance/matrix.npz (or embed/matrix.npz) when it
    matches the kernels.

    Example: conetool embed --method pca --dims 3
    """
    starting("embed", quiet)
    from ..pipeline import embed as embed_run

    with handle_errors(debug), progress_display(quiet) as progress:
        check_max_memory(max_memory)
        result = embed_run(
            store,
            method=method.value,
            dims=dims,
            seed=seed,
            skip_bad=skip_bad,
            max_memory=max_memory,
            spec=spec,
            threads=threads,
            progress=progress,
        )
    e = result.embedding
    table = Table(title=f"conetool embed -> {result.store / 'embed'}", title_justify="left")
    for column in ("method", "dims", "kernels", "stress", "explained variance", "S matrix"):
        table.add_column(column, justify="right")
    ratio = e.explained_variance_ratio
    table.add_row(
        e.method,
        str(e.coords.shape[1]),
        str(len(result.steps)),
        f"{e.stress:.4f}",
        "-" if ratio is None else " + ".join(f"{r:.1%}" for r in ratio),
        "reused" if result.matrix_reused else "computed",
    )
    print_table(console, table)
    for step, why in result.excluded.items():
        console.print(f"- step {step} left out: {why}", highlight=False, markup=False)
    # The notes and warnings were said as they came (not with --quiet); the warnings again now.
    warned_at_the_end(result.warnings, quiet)
    console.print(
        files_line(result.files, result.kept, result.store / "embed"),
        highlight=False,
        markup=False,
    )
