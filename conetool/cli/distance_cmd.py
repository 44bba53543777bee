"""``conetool distance``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .app import Debug, Quiet, app, console, handle_errors, progress_display
from .options import (
    DEFAULT_STORE,
    VERDICT_DEFAULTS,
    MatrixMemory,
    SkipBadKernels,
    StoreCkpts,
    StoreOpt,
    VerdictSpec,
)
from .runtime import Threads, check_max_memory, files_line, starting, warned_at_the_end
from .table_output import print_table

_RULES = VERDICT_DEFAULTS


def verdict_line(regime: str, phase1_end: int | None, numbers: dict[str, Any]) -> str:
    """``verdict: [bold]REGIME[/bold] (what it means), Phase I ends at step N (range A to B)``
    (rich markup), as ``distance`` and ``demo`` print it; the range when the fit's is wider
    than one checkpoint."""
    from ..verdict import REGIMES

    end = "" if phase1_end is None else f", Phase I ends at step {phase1_end}"
    span = numbers.get("velocity", {}).get("phase1_range")
    if phase1_end is not None and span and span[0] != span[1]:
        end += f" (range {span[0]} to {span[1]})"
    return f"verdict: [bold]{regime}[/bold] ({REGIMES[regime][0]}){end}"


def _g(x: float) -> str:
    return f"{x:.4g}"


@app.command()
def distance(
    store: StoreOpt = DEFAULT_STORE,
    ref: Annotated[
        list[str] | None,
        typer.Option(
            "--ref",
            metavar="STEP|last",
            help="Reference step τ for S(θ(t), θ(τ)), or 'last'; repeatable (default: 0).",
        ),
    ] = None,
    dt: Annotated[
        list[int] | None,
        typer.Option(
            "--dt",
            min=1,
            metavar="DT",
            help="Spacing of the adjacent pairs (t, t+dt); repeatable (default: the smallest "
            "spacing of the stored steps, plus the verdict's dt when different).",
        ),
    ] = None,
    logx: Annotated[
        bool, typer.Option("--logx", help="Log step axis on the curve figures (keeps step 0).")
    ] = False,
    logy: Annotated[
        bool,
        typer.Option("--logy", help="Log distance axis on to_ref.png, log colours on matrix.png."),
    ] = False,
    min_drop: Annotated[
        float,
        typer.Option(
            "--min-drop",
            metavar="FACTOR",
            help="Verdict: the velocity must fall by at least this factor for two phases.",
        ),
    ] = _RULES.min_drop,
    freeze_factor: Annotated[
        float,
        typer.Option(
            "--freeze-factor",
            metavar="FACTOR",
            help="Verdict: a Phase II velocity falling by at least this factor from its first "
            "quarter to its last means the kernel froze.",
        ),
    ] = _RULES.freeze_factor,
    bounded_exponent: Annotated[
        float,
        typer.Option(
            "--bounded-exponent",
            metavar="A",
            help="Verdict: Phase II S growing like lag^a with a at most this is bounded (cone).",
        ),
    ] = _RULES.bounded_exponent,
    drift_exponent: Annotated[
        float,
        typer.Option(
            "--drift-exponent",
            metavar="A",
            help="Verdict: Phase II S growing like lag^a with a at least this is drift.",
        ),
    ] = _RULES.drift_exponent,
    plateau_tolerance: Annotated[
        float,
        typer.Option(
            "--plateau-tolerance",
            metavar="FRACTION",
            help="Verdict: largest growth of a reference curve, (last third - middle third) / "
            "last third of its mean S, that still counts as a plateau.",
        ),
    ] = _RULES.plateau_tolerance,
    lazy_level: Annotated[
        float,
        typer.Option(
            "--lazy-level",
            metavar="S",
            help="Verdict: kernels no farther apart than this S count as frozen.",
        ),
    ] = _RULES.lazy_level,
    velocity_dt: Annotated[
        int | None,
        typer.Option(
            "--velocity-dt",
            metavar="DT",
            min=1,
            help="Verdict: the dt of its velocity (default: the spacing that covers the run, or "
            "the smallest multiple of a spacing that is at least 1/50 of the run and covers it "
            "as well).",
        ),
    ] = None,
    no_noise: Annotated[
        bool,
        typer.Option(
            "--no-noise",
            help="Skip estimating the noise floor of S (it needs the checkpoint of the last "
            "stored step: it rebuilds the model and computes 32 examples' kernel twice, as the "
            "store did and in float64).",
        ),
    ] = False,
    skip_bad: SkipBadKernels = False,
    max_memory: MatrixMemory = None,
    ckpts: StoreCkpts = None,
    spec: VerdictSpec = None,
    threads: Threads = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Kernel distances, velocity, the S matrix and the verdict (paper Fig. 1a, 1b).

    Distance to reference steps, adjacent distance and velocity, the S matrix, and a verdict:
    no-two-phase, lazy, cone, drift-after-phase-I or undetermined, with its evidence.

    Writes to_ref.csv, adjacent.csv, matrix.npz, summary.json and PNG figures to STORE/distance,
    and noise.json, the noise floor of S (unless --no-noise), reused while its checkpoint, engine
    and device type are unchanged.

    With the layer kernels of conetool kernels --per-layer, also per_layer.csv (each parameter
    group's distance to the references and its velocity) and per_layer.png.

    Example: conetool distance --ref 0 --ref 100 --dt 5 --dt 50
    """
    starting("distance", quiet)
    from ..pipeline import distance as distance_run
    from ..verdict import VerdictRules

    with handle_errors(debug), progress_display(quiet) as progress:
        check_max_memory(max_memory)
        rules = VerdictRules(
            min_drop=min_drop,
            velocity_dt=velocity_dt,
            freeze_factor=freeze_factor,
            bounded_exponent=bounded_exponent,
            drift_exponent=drift_exponent,
            plateau_tolerance=plateau_tolerance,
            lazy_level=lazy_level,
        )
        result = distance_run(
            store,
            refs=ref,
            dts=dt,
            rules=rules,
            logx=logx,
            logy=logy,
            skip_bad=skip_bad,
            max_memory=max_memory,
            noise=not no_noise,
            ckpts=ckpts,
            spec=spec,
            threads=threads,
            progress=progress,
        )
    table = Table(title=f"conetool distance -> {result.store / 'distance'}", title_justify="left")
    for column in ("curve", "points", "final S", "max S", "peak velocity", "at step"):
        table.add_column(column, justify="right")
    for c in result.reference_curves:
        table.add_row(f"S(t, τ={c.ref})", str(len(result.steps)), _g(c.final), _g(c.max), "", "")
    for a in result.adjacent_curves:
        table.add_row(
            f"S(t, t+{a.dt})" + (" *" if a.verdict else ""),
            str(a.pairs),
            _g(a.final),
            _g(a.max),
            _g(a.peak_velocity),
            str(a.peak_step),
        )
    print_table(console, table)
    if any(a.verdict for a in result.adjacent_curves):
        console.print("* the velocity the verdict reads", highlight=False)
    how = "reused: kernels unchanged" if result.matrix_reused else "computed"
    console.print(
        f"S matrix: {len(result.steps)} kernels, steps {result.steps[0]} to "
        f"{result.steps[-1]} ({how})",
        highlight=False,
    )
    verdict = result.verdict
    console.print(
        verdict_line(verdict.regime, verdict.phase1_end, verdict.numbers), highlight=False
    )
    console.print(escape(verdict.explanation), highlight=False)
    for step, why in result.excluded.items():
        console.print(f"- step {step} left out: {why}", highlight=False, markup=False)
    # The notes and warnings were said as they came (not with --quiet); the warnings again now.
    warned_at_the_end(result.warnings, quiet)
    console.print(
        files_line(result.files, result.kept, result.store / "distance"),
        highlight=False,
        markup=False,
    )
