"""Options shared by several commands (one definition each, so help texts agree)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import paths

SpecOpt = Annotated[
    Path | None,
    typer.Option(
        "--spec",
        help="The run's TOML spec (default: CKPTS/conetool.toml).",
        dir_okay=False,
        metavar="FILE",
    ),
]
StoreCkpts = Annotated[
    Path | None,
    typer.Option(
        "--ckpts",
        metavar="DIR",
        help="The run's checkpoint directory (default: the one the store records; give it when "
        "the run has moved since conetool kernels).",
    ),
]
StoreOpt = Annotated[
    Path,
    typer.Option("--store", help="The output store directory.", file_okay=False, metavar="DIR"),
]
StepRegex = Annotated[
    str | None,
    typer.Option(
        "--step-regex",
        metavar="REGEX",
        help="Regex recovering the step from each file (or checkpoint-N folder) name. Its "
        "group 'step' (or its first group) is the step: 'it(\\d+)'. A group 'epoch' (and "
        "optionally 'it', the iteration within the epoch) is converted with the spec: step = "
        "epoch x iterations per epoch + it, as in 'epoch_(?P<epoch>\\d+)'. Names like "
        "epoch_3 and ep3 are converted so without it.",
    ),
]
Steps = Annotated[
    str | None,
    typer.Option(
        "--steps",
        metavar="FIRST:LAST",
        help="Only steps in FIRST:LAST (both included; either may be empty).",
    ),
]
Every = Annotated[
    int | None,
    typer.Option("--every", min=1, metavar="K", help="Only steps that are multiples of K."),
]
SkipBadKernels = Annotated[
    bool,
    typer.Option(
        "--skip-bad",
        help="Leave out kernel files that are unreadable, not finite or not of the store's dtype "
        "(each named).",
    ),
]
MatrixMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory for the S matrix's kernel blocks (default auto: 1GiB).",
    ),
]
DEFAULT_STORE = Path(paths.DEFAULT_STORE)


class _VerdictDefaults:
    """The defaults of :class:`conetool.verdict.VerdictRules` that ``distance`` shows in its
    help, copied here because the verdict module loads NumPy and PyTorch (a test keeps them
    equal)."""

    min_drop = 5.0
    freeze_factor = 5.0
    bounded_exponent = 0.25
    drift_exponent = 0.5
    plateau_tolerance = 0.15
    lazy_level = 1e-4


VERDICT_DEFAULTS = _VerdictDefaults()
