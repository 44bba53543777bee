"""Options shared by several commands (one definition each, so help texts agree)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import typer

from .. import paths
from ..errors import OptionError

#: What a path option takes: a folder (made when missing), a spec file, or either (a checkpoint
#: folder, or one checkpoint).
Takes = Literal["folder", "spec", "either"]


def path_problem(flag: str, value: str | Path, takes: Takes, what: str, example: str) -> str | None:
    """Why ``value``, given to the path option ``flag`` (``--store``, or an argument's name,
    ``SPEC``), cannot be what it takes (:data:`Takes`; ``what``, in words, and an ``example`` of
    it for the fix: ``--store conetool-out``), or None. Refused: an empty path (``--store ''``, as
    a shell variable that is not set gives: Python reads it as the current folder, where a store,
    a run or its checkpoints would have been written or read unasked); a path of only spaces
    (``--store ' '``: a folder named by spaces, never meant); a file where a folder is
    wanted, or under which one would have to be made; a folder where a spec file is wanted. A
    path that does not exist yet is left to the command (a folder is made; a missing spec or
    checkpoint folder is its error)."""
    raw = os.fspath(value)
    option = flag.startswith("-")
    given = f"{flag} {raw}" if option else f"{flag} {raw!r}"
    if not raw:
        return (
            f"{flag} {raw!r} is an empty path, which would mean the current folder. Give {what}, "
            f"for example {example}. (An empty value usually comes from a shell variable that "
            "is not set.)"
        )
    if not raw.strip():
        return (
            f"{flag} {raw!r} is a path of only spaces, which would name a file or folder "
            f"{raw!r} in the current folder. Give {what}, for example {example}."
        )
    try:
        return _kind_problem(flag, raw, given, takes, what, example)
    except OSError:  # a name too long, a folder not searchable: the command says it, naming it
        return None


def _kind_problem(
    flag: str, raw: str, given: str, takes: Takes, what: str, example: str
) -> str | None:
    """:func:`path_problem` for a path given (``raw``, said as ``given``): the wrong kind."""
    option = flag.startswith("-")
    path = Path(raw)
    if takes == "folder":
        if path.exists() and not path.is_dir():
            return (
                f"{given} is a file, not a folder: {flag} takes {what} (made when it does not "
                f"exist). Pass the path of a folder, for example {example}, or move {raw} away."
            )
        blocking = next((p for p in path.parents if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            return (
                f"{given} cannot be made: {blocking} is a file, not a folder. {flag} takes "
                f"{what}: pass a path whose folders are folders, for example {example}."
            )
    if takes == "spec" and path.is_dir():
        inside = paths.spec(path)
        hint = (
            f"pass {f'{flag} ' if option else ''}{inside}, the spec of the run in it"
            if inside.is_file()
            else f"pass the path of a TOML spec file, for example {example}"
        )
        return f"{given} is a folder, not a file: {flag} takes {what}; {hint}."
    return None


def path_parser(flag: str, takes: Takes, what: str, example: str) -> Callable[[str | Path], Path]:
    """The ``parser=`` of a path option: its value as a Path, or :class:`OptionError` saying
    :func:`path_problem` (the CLI makes it a usage error, exit 2, as Click's own were)."""

    def parse(value: str | Path) -> Path:
        problem = path_problem(flag, value, takes, what, example)
        if problem is not None:
            raise OptionError(problem)
        return Path(value)

    return parse


#: The run's spec (``--spec``), and the checkpoints (``CKPTS`` of ``conetool COMMAND``).
SPEC_FILE = path_parser(
    "--spec", "spec", "the TOML spec of the run", "--spec runs/digits/conetool.toml"
)


def ckpts_argument(command: str) -> Callable[[str | Path], Path]:
    """The parser of ``command``'s ``CKPTS`` argument."""
    return path_parser(
        "CKPTS",
        "either",
        "the run's checkpoint folder (or one checkpoint)",
        f"conetool {command} runs/digits",
    )


SpecOpt = Annotated[
    Path | None,
    typer.Option(
        "--spec",
        help="The run's TOML spec (default: CKPTS/conetool.toml).",
        parser=SPEC_FILE,
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
        parser=path_parser(
            "--ckpts",
            "either",
            "the run's checkpoint folder (or one checkpoint)",
            "--ckpts runs/digits",
        ),
    ),
]
VerdictSpec = Annotated[
    Path | None,
    typer.Option(
        "--spec",
        metavar="FILE",
        parser=SPEC_FILE,
        help="The run's TOML spec (default: the one the store's manifest records): the store's, "
        "or one differing from it only in [train] keys no kernel depends on (the schedule, lr, "
        "steps, ...; not batch_size), whose learning-rate schedule the verdict then reads. No "
        "kernel is recomputed.",
    ),
]
StoreOpt = Annotated[
    Path,
    typer.Option(
        "--store",
        help="The output store directory.",
        parser=path_parser(
            "--store", "folder", "the store's folder", f"--store {paths.DEFAULT_STORE}"
        ),
        metavar="DIR",
    ),
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
