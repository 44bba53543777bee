"""The choices a flag or argument can take, as Enums shared by the library and the command line.

Standard library only, so that the command line parses (and refuses a bad choice with exit 2,
naming the choices) without importing PyTorch. The library accepts the Enum or its string value;
:func:`choice` turns either into the Enum, or raises :class:`~conetool.errors.ConetoolError` naming
the flag and the choices.
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = ["Dtype", "EmbedMethod", "Kind", "Method", "Reference", "choice", "is_count"]


class Kind(str, Enum):
    """The kernel: ``trace`` ``(n, n)``, ``full`` ``(n, c, n, c)``, ``sum`` ``(n, n)``."""

    trace = "trace"
    full = "full"
    sum = "sum"


class Dtype(str, Enum):
    """The dtype the kernels are computed in."""

    float32 = "float32"
    float64 = "float64"


class Method(str, Enum):
    """The eNTK engine."""

    auto = "auto"
    structured = "structured"
    jacobian = "jacobian"


class Reference(str, Enum):
    """The standard model at T that ``switch`` compares with."""

    checkpoint = "checkpoint"
    train = "train"


class EmbedMethod(str, Enum):
    """How ``embed`` places the kernels in the plane."""

    mds = "mds"
    pca = "pca"


E = TypeVar("E", bound=Enum)


def choice(enum: type[E], value: object, flag: str) -> E:
    """``value`` (a member, its value, or a torch object named by it: ``torch.float64``) as a
    member of ``enum``.

    Raises:
        ConetoolError: not one of the choices; the message names ``flag`` and every choice.
    """
    if isinstance(value, enum):
        return value
    if not isinstance(value, str) and str(value).startswith("torch."):
        value = str(value).removeprefix("torch.")  # torch.float64, as empirical_ntk takes it
    try:
        return enum(value)
    except ValueError:
        from .errors import ConetoolError

        names = ", ".join(str(m.value) for m in enum)
        raise ConetoolError(f"{flag} {value!r} is unknown. Use one of: {names}.") from None


def is_count(value: object, least: int = 1) -> bool:
    """Whether ``value`` is a whole number (an ``int``, not a ``bool``) of at least ``least``:
    a count of examples or steps, as the library's callers must pass it."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
