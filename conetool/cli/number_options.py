"""What each numeric option of the commands takes, and the usage error for a value it cannot be.

Typer checks an ``int`` or ``float`` option's value itself and said only "Invalid value for
'--top-k': Input should be a valid integer, unable to parse string as an integer" (or "...
greater than or equal to 1"), with no fix; :func:`number_problem` says it as the path options'
errors are said (:mod:`conetool.cli.options`): the flag and its value, what the flag takes and
an example. :class:`~conetool.cli.help_format.FlagsCommand` makes it the usage error (exit 2).
"""

from __future__ import annotations

import shlex
import typing
from typing import Any

#: Every ``int`` or ``float`` option of every command (``tests/test_number_options.py`` checks
#: it by the app's parameters): what its number is, and the option with a value it takes.
NUMBER_OPTIONS: dict[str, tuple[str, str]] = {
    "--every": (
        "a step spacing K (only the steps that are multiples of K are read)",
        "--every 100",
    ),
    "--probe-size": ("the number of probe examples", "--probe-size 200"),
    "--eval-size": ("the number M of test examples of K(eval, probe)", "--eval-size 1000"),
    "--dt": ("the spacing of the pairs (t, t+dt), in steps (repeatable)", "--dt 10"),
    "--min-drop": ("the factor the velocity must fall by for two phases", "--min-drop 5"),
    "--freeze-factor": (
        "the factor by which a Phase II velocity falling from its first quarter to its last "
        "means the kernel froze",
        "--freeze-factor 5",
    ),
    "--bounded-exponent": (
        "the largest exponent a of Phase II S growing like lag^a that counts as bounded",
        "--bounded-exponent 0.25",
    ),
    "--drift-exponent": (
        "the smallest exponent a of Phase II S growing like lag^a that counts as drift",
        "--drift-exponent 0.5",
    ),
    "--plateau-tolerance": (
        "the largest growth of a reference curve that still counts as a plateau",
        "--plateau-tolerance 0.15",
    ),
    "--lazy-level": (
        "the distance S up to which kernels count as frozen",
        "--lazy-level 0.0001",
    ),
    "--velocity-dt": ("the spacing, in steps, of the verdict's velocity", "--velocity-dt 50"),
    "--dims": ("the embedding's dimensions", "--dims 3"),
    "--seed": ("a seed, recorded only", "--seed 0"),
    "--top-k": ("the number of eigenvalues kept", "--top-k 20"),
    "--until": ("the end step T of the linearized training", "--until 2000"),
    "--steps": ("the steps of the demo's training run", "--steps 1200"),
}

#: Pydantic's error types (what Typer checks a value with) of a value that is not a number
_NOT_A_NUMBER = frozenset({"int_parsing", "int_from_float", "float_parsing", "finite_number"})


def is_whole(annotation: Any) -> bool:
    """Whether a numeric option's annotation (``int``, ``list[int]``; Typer drops ``None``)
    takes whole numbers."""
    return annotation is int or typing.get_args(annotation) == (int,)


def is_number(annotation: Any) -> bool:
    """Whether an option's annotation is a number or a list of them (``int``, ``list[float]``)."""
    return annotation in (int, float) or typing.get_args(annotation) in ((int,), (float,))


def takes(flag: str, whole: bool, least: Any, most: Any) -> str:
    """What ``flag`` takes, in words: ``"the number of eigenvalues kept, a whole number of at
    least 1"`` (``least``, ``most``: its bounds, or None)."""
    kind = "a whole number" if whole else "a number"
    if whole and least is not None and most == least + 1:
        kind = f"{least} or {most}"
    elif least is not None and most is not None:
        kind += f" from {least} to {most}"
    elif least is not None:
        kind += f" of at least {least}"
    elif most is not None:
        kind += f" of at most {most}"
    return f"{NUMBER_OPTIONS[flag][0]}, {kind}"


def number_problem(error: Exception) -> str | None:
    """conetool's words for Typer's ``error`` (a ``BadParameter``) when it refused a value of an
    option of :data:`NUMBER_OPTIONS` as no number, or out of its bounds: ``"--top-k abc is not a
    whole number: --top-k takes the number of eigenvalues kept, a whole number of at least 1,
    for example --top-k 20."``; else None (Typer's message stays)."""
    param = getattr(error, "param", None)
    found = getattr(error.__cause__, "errors", None)  # pydantic's ValidationError
    if param is None or not callable(found):
        return None
    flag = next((name for name in param.opts if name in NUMBER_OPTIONS), None)
    descriptor = getattr(param, "type_descriptor", None)
    listed = found()
    if flag is None or descriptor is None or not listed or not is_number(descriptor.annotation):
        return None
    kind, value = listed[0].get("type"), listed[0].get("input")
    whole = is_whole(descriptor.annotation)
    info = descriptor.parameter_info
    if kind in _NOT_A_NUMBER:
        wrong = "is not a whole number" if whole else "is not a number"
    elif kind in ("greater_than_equal", "greater_than") and info.min is not None:
        wrong = f"is below {info.min}"
    elif kind in ("less_than_equal", "less_than") and info.max is not None:
        wrong = f"is above {info.max}"
    else:
        return None
    shown = shlex.quote(str(value))
    return (
        f"{flag} {shown} {wrong}: {flag} takes {takes(flag, whole, info.min, info.max)}, for "
        f"example {NUMBER_OPTIONS[flag][1]}."
    )
