"""The choices a flag or argument can take, as Enums shared by the library and the command line.

Standard library only, so that the command line parses (and refuses a bad choice with exit 2,
naming the choices) without importing PyTorch. The library accepts the Enum or its string value;
:func:`choice` turns either into the Enum, or raises :class:`~conetool.errors.ConetoolError` naming
the flag and the choices.
"""

from __future__ import annotations

import numbers
import operator
import os
import re
from enum import Enum
from pathlib import Path
from typing import TypeVar

__all__ = [
    "Dtype",
    "EmbedMethod",
    "Kind",
    "Method",
    "Reference",
    "bool_argument",
    "choice",
    "float_argument",
    "holds_no_number",
    "int_argument",
    "integer",
    "is_count",
    "path_argument",
    "step_or_last",
]


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


def path_argument(value: object, name: str, what: str) -> Path:
    """``value`` (a ``str`` or ``pathlib.Path``) as a Path.

    ``name`` is the flag (``"--store"``) or, for what the command line takes as a positional
    argument, the Python argument (``"ckpts"``); ``what`` says what the path is for.

    Raises:
        ConetoolError: ``value`` is no path (``None``, a number, a list of paths), or the empty
            path ``""`` (which Path reads as the current folder: a store, a run or its
            checkpoints would be written or read there unasked), or a path of only spaces; the
            message names ``name`` and what to pass.
    """
    from .errors import ConetoolError

    lead = f"{name} {value!r}" if name.startswith("--") else f"{name}={value!r}"
    if isinstance(value, str | os.PathLike) and isinstance(os.fspath(value), str):
        if not os.fspath(value):
            raise ConetoolError(
                f"{lead} is an empty path, which would mean the current folder. Pass {what} "
                "(an empty value usually comes from a variable that is not set)."
            )
        if not os.fspath(value).strip():
            raise ConetoolError(
                f"{lead} is a path of only spaces, which would name a file or folder "
                f"{os.fspath(value)!r} in the current folder. Pass {what}."
            )
        return Path(value)
    several = " (one path: call once per directory)" if isinstance(value, list | tuple) else ""
    raise ConetoolError(f"{lead} is not a path. Pass {what} as a str or pathlib.Path{several}.")


def bool_argument(value: object, name: str) -> bool:
    """``value`` when it is a ``bool``; ``name`` is the Python argument (``"overwrite"``).

    Raises:
        ConetoolError: anything else (``"no"``, ``0``, ``None``, a numpy bool): taken by its
            truth, ``overwrite="no"`` would overwrite. The message names ``name`` and the fix.
    """
    if isinstance(value, bool):
        return value
    from .errors import ConetoolError

    raise ConetoolError(
        f"{name}={value!r} is a {type(value).__name__}, not a bool: pass {name}=True or "
        f"{name}=False (any other value would be taken by its truth, {name}='no' as True)."
    )


def int_argument(value: object, name: str, *, optional: bool = False) -> int | None:
    """``value`` as an ``int`` when it is an integer (:func:`integer`: an ``int``, a numpy
    integer or a 0-d integer array or tensor, not a bool), or None when ``optional``; ``name`` is
    the Python argument (``"dims"``). The range (positive, 2 or 3, ...) is the caller's to check.

    A numpy integer (``np.arange(...)[i]``, a shape) or a 0-d tensor (``labels.max()``) comes
    back a plain ``int``: the functions write their arguments into JSON files, which refuse
    ``np.int64``.

    Raises:
        ConetoolError: anything else (``2.0``, ``"10"``, ``True``, a numpy bool); the message
            names ``name`` and, for a whole number of another type, the int to pass.
    """
    if value is None and optional:
        return None
    if (checked := integer(value)) is not None:
        return checked
    from .errors import ConetoolError

    whole = _whole(value)
    fix = f"{name}={whole}" if whole is not None else "a whole number as an int"
    if optional:
        fix += f" (or {name}=None)"
    raise ConetoolError(f"{name}={value!r} is a {type(value).__name__}, not an int: pass {fix}.")


def float_argument(value: object, name: str, *, optional: bool = False) -> float | None:
    """``value`` as a ``float`` when it is a real number (an ``int``, ``float`` or numpy number,
    any :class:`numbers.Real` but a ``bool`` and a time span, :func:`holds_no_number`), or None
    when ``optional``; ``name`` is the Python argument. The range is the caller's to check.

    Raises:
        ConetoolError: anything else (``"0.5"``, ``True``, ``None``, a numpy bool); the message
            names ``name`` and, for the text of a number, the float to pass.
    """
    if value is None and optional:
        return None
    if (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and not holds_no_number(value)
    ):
        return float(value)
    from .errors import ConetoolError

    number = _real(value)
    fix = f"{name}={number!r}" if number is not None else "a number as a float"
    if optional:
        fix += f" (or {name}=None)"
    raise ConetoolError(f"{name}={value!r} is a {type(value).__name__}, not a float: pass {fix}.")


def _real(value: object) -> float | None:
    """The float the text of a number stands for (None otherwise)."""
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


#: The text of a whole number: one optional sign, ASCII digits (``"--5"`` and ``"²"``, which
#: ``str.isdigit`` passes, are not).
_SIGNED_DIGITS = re.compile(r"[+-]?[0-9]+")


def integer(value: object) -> int | None:
    """The ``int`` ``value`` is when it is an integer, None otherwise: what every integer
    argument of the library takes, so that each takes the same values.

    An integer is an ``int``, a numpy integer (``np.int64``: ``np.arange(...)[i]``, a shape) or a
    0-d array or tensor of an integer dtype (``np.array(3)``, ``torch.tensor(3)``,
    ``labels.max()``). Not one: a ``bool`` or a 0-d array or tensor of bools (``True`` is no
    count), a float of any kind (``3.0``, ``torch.tensor(3.0)``), text (``"3"``), an array or
    tensor of one element that is not 0-d (``torch.tensor([3])``, which PyTorch would take as
    its element), a time span or date (``np.timedelta64(3)``, which numpy counts among its
    integers), a masked value (``np.ma.masked``, a 0-d masked array whose mask is set: its data
    is no value). Standard library only: a tensor is known by its ``ndim`` and ``dtype``."""
    if isinstance(value, bool) or holds_no_number(value):
        return None
    if isinstance(value, numbers.Integral):  # int, numpy integers (np.bool_ is not Integral)
        return int(value)
    if getattr(value, "ndim", None) != 0 or _bool_dtype(value):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]  # a 0-d integer array or tensor
    except (TypeError, RuntimeError):  # a float; a tensor without data (meta)
        return None


def _bool_dtype(value: object) -> bool:
    """Whether ``value`` is an array or tensor of bools (numpy's ``bool``, ``torch.bool``)."""
    return str(getattr(value, "dtype", "")).endswith("bool")


def holds_no_number(value: object) -> bool:
    """Whether ``value`` holds no number though numpy's types say integer: a time span or a date
    (``np.timedelta64``, a ``numpy.signedinteger``; ``np.datetime64``), or a masked value
    (``np.ma.masked``, or a 0-d masked array whose mask is set: its data is a placeholder)."""
    if str(getattr(value, "dtype", "")).startswith(("timedelta64", "datetime64")):
        return True
    mask = getattr(value, "mask", None)
    return getattr(mask, "ndim", None) == 0 and bool(mask)


def _whole(value: object) -> int | None:
    """The int a float, text or numpy integer of a whole number stands for (None otherwise)."""
    if isinstance(value, bool) or _bool_dtype(value) or holds_no_number(value):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _SIGNED_DIGITS.fullmatch(text) else None
    try:
        return operator.index(value)  # type: ignore[arg-type]  # a numpy integer
    except (TypeError, RuntimeError):  # a float; a tensor without data (meta)
        return None


def step_or_last(value: object) -> int | str | None:
    """A step as the library takes it where ``--ref`` does: an integer (:func:`integer`: an
    ``int``, a numpy integer or a 0-d integer tensor, not a ``bool``), its digits as text (``"100"``, ``"-10"``: a negative one is the caller's to
    refuse as such), or ``"last"`` (any case); ``None`` for anything else, for the caller to
    refuse naming its flag or argument."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "last":
            return "last"
        # a signed whole number too: "-10" is a step the caller refuses as negative, not text
        return int(text) if _SIGNED_DIGITS.fullmatch(text) else None
    return integer(value)
