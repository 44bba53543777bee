"""``conetool kernels CKPTS``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..choices import Dtype, Kind, Method
from ..units import format_bytes
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
from .options import (
    DEFAULT_STORE,
    Every,
    SpecOpt,
    StepRegex,
    Steps,
    StoreOpt,
    ckpts_argument,
)
from .runtime import Threads, check_max_memory, starting, warned_at_the_end
from .table_output import print_table


@app.command()
def kernels(
    ckpts: Annotated[
        Path,
        typer.Argument(
            help="The checkpoint directory of the run.",
            metavar="CKPTS",
            parser=ckpts_argument("kernels"),
        ),
    ],
    spec: SpecOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    probe_size: Annotated[
        int | None,
        typer.Option(
            "--probe-size",
            min=1,
            metavar="N",
            help="Probe examples (default: the spec's \\[probe] size).",
        ),
    ] = None,
    kind: Annotated[
        Kind,
        typer.Option(
            "--kind",
            help="trace (n, n): summed over the logits | full (n, c, n, c): every pair of logits | "
            "sum (n, n): the kernel of the logits' sum.",
        ),
    ] = Kind.trace,
    dtype: Annotated[
        Dtype, typer.Option("--dtype", help="float32, or float64 for exact kernels on deep nets.")
    ] = Dtype.float32,
    device: DeviceOpt = "auto",
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            metavar="SIZE",
            help="Memory budget, e.g. 4GiB (default auto: half the available RAM, at most 64GiB, "
            "on a CPU; 80% of the free memory of a GPU).",
        ),
    ] = None,
    method: Annotated[
        Method,
        typer.Option(
            "--method",
            help="eNTK engine: structured (per layer), jacobian (the reference) or auto.",
        ),
    ] = Method.auto,
    steps: Steps = None,
    every: Every = None,
    step_regex: StepRegex = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Warn about unusable checkpoints and go on.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace a store made with another spec, probe, kind or dtype."
        ),
    ] = False,
    eval_size: Annotated[
        int | None,
        typer.Option(
            "--eval-size",
            min=1,
            metavar="M",
            help="Also store K(eval, probe) for M test examples (kernel-machine accuracy).",
        ),
    ] = None,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Also store the kernel of each parameter group (one more kernel per group).",
        ),
    ] = False,
    groups: Annotated[
        str | None,
        typer.Option(
            "--groups",
            metavar="NAME=PATTERN,...",
            help="Parameter groups by fnmatch pattern (implies --per-layer; default: leaf "
            "modules).",
        ),
    ] = None,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Compute the eNTK of the probe set at every checkpoint and write it to the store.

    A rerun computes only the steps that are missing or whose checkpoint changed; a run killed at
    any moment loses at most the kernel in progress.

    With --eval-size M it also draws M examples of the test split (like the probe set) and stores
    the cross kernel K(eval, probe) at each step, for the kernel-machine accuracy of conetool
    spectrum; added to an existing store, only those are computed.

    With --per-layer it also stores the kernel of each parameter group (a leaf module, or the
    groups of --groups 'stage1=layer1.*,stage2=layer2.*'; they sum to the kernel), for the
    per-group distances of conetool distance; added to an existing store, only those are computed.

    Example: conetool kernels runs/digits --store conetool-out

    On several GPUs or nodes, torchrun shares the checkpoints among its processes:
    torchrun --nproc-per-node 4 -m conetool kernels runs/digits --store conetool-out
    """
    starting("kernels", quiet)
    from ..pipeline import kernels as kernels_run

    with handle_errors(debug), progress_display(quiet) as progress:
        check_max_memory(max_memory)
        result = kernels_run(
            ckpts,
            spec=spec,
            store=store,
            probe_size=probe_size,
            kind=kind.value,
            dtype=dtype.value,
            device=device,
            max_memory=max_memory,
            method=method.value,
            steps=steps,
            every=every,
            step_regex=step_regex,
            skip_bad=skip_bad,
            overwrite=overwrite,
            eval_size=eval_size,
            per_layer=per_layer,
            groups=groups,
            threads=threads,
            progress=progress,
        )
    if not is_main_process():
        return  # rank 0 reports the whole torchrun job
    table = Table(title=f"conetool kernels -> {result.store}", title_justify="left")
    # "stored before": steps already in the store, not recomputed (KernelsResult.skipped);
    # "left out": files refused while listing CKPTS (the "left out" warnings of --skip-bad);
    # "failed": steps whose checkpoint or kernel failed (--skip-bad), listed below the table.
    for column in (
        "computed",
        "stored before",
        "left out",
        "failed",
        "kernel",
        "s / kernel",
        "peak memory",
        "device",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(len(result.computed)),
        str(len(result.skipped)),
        str(len(result.left_out)),
        str(len(result.failed)),
        " x ".join(map(str, result.kernel_shape)),
        "-" if result.seconds_per_kernel is None else f"{result.seconds_per_kernel:.2f}",
        format_bytes(result.peak_memory, digits=2, smallest="MiB", largest="GiB"),
        result.device,
    )
    print_table(console, table)
    if result.eval_size is not None:
        console.print(
            f"eval kernels K(eval, probe), {result.eval_size} test examples: "
            f"{len(result.eval_computed)} computed (in {result.store / 'eval_kernels'})",
            highlight=False,
            markup=False,
        )
    if result.layer_groups is not None:
        console.print(
            f"per-layer kernels, groups {', '.join(result.layer_groups)}: "
            f"{len(result.layer_computed)} computed (in {result.store / 'layer_kernels'})",
            highlight=False,
            markup=False,
        )
    for line in result.failed_lines:  # steps that failed alike: said once
        console.print(f"- failed {line}", highlight=False, markup=False)
    warned_at_the_end(result.warnings, quiet)
