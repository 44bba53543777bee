"""Memory sizes as users write them (``"4GiB"``) and as conetool prints them (``"1.5 GiB"``).

Torch-free, so that the command line can parse and print sizes without loading PyTorch.
"""

from __future__ import annotations

import math
import numbers
import re

from .choices import holds_no_number, integer
from .errors import MemoryBudgetError

__all__ = ["format_bytes", "parse_memory"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_SIZE = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z]*)\s*$")
# The units format_bytes prints, largest first.
_BINARY = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


def is_auto(max_memory: object) -> bool:
    """Whether ``max_memory`` is ``"auto"`` (the command's default budget:
    :func:`conetool.ntk.default_memory_budget` of the device for the eNTK,
    :data:`conetool.geometry.DEFAULT_MAX_MEMORY` for the distances), as ``--max-memory auto``
    gives it."""
    return isinstance(max_memory, str) and max_memory.strip().lower() == "auto"


def parse_memory(value: float | str, argument: str = "max_memory") -> int:
    """A memory size in bytes from ``max_memory=`` or ``--max-memory``: a whole number of bytes
    (an integer, :func:`conetool.choices.integer`; a float such as ``2e9``, a numpy number;
    ``1.5`` is refused: bytes, or a slip for ``"1.5GiB"``?), or a string like ``"4GiB"``.

    Units (case-insensitive): none or ``B`` for bytes; ``KiB/MiB/GiB/TiB`` and the single letters
    ``K/M/G/T`` are powers of 1024; ``KB/MB/GB/TB`` are powers of 1000. Fractions are allowed
    (``"1.5GiB"``). Raises :class:`~conetool.errors.MemoryBudgetError` naming ``argument`` on
    anything else: a Python argument (``"max_memory"``, the default: ``max_memory='4GiB'``) or
    the flag (``"--max-memory"``: ``--max-memory 4GiB``, as the command line checks its own).

    >>> parse_memory("4GiB"), parse_memory("500MB"), parse_memory("2G"), parse_memory(1024)
    (4294967296, 500000000, 2147483648, 1024)
    >>> parse_memory("2e9"), parse_memory(2e9)
    (2000000000, 2000000000)
    """
    if isinstance(value, bool) or holds_no_number(value):  # np.timedelta64 is a numbers.Real
        raise MemoryBudgetError(_memory_syntax_message(value, argument))
    if (whole := integer(value)) is not None:  # int, numpy integer, 0-d integer tensor
        if not 0 < whole <= _LARGEST_MEMORY:  # (10**400 has no float)
            raise MemoryBudgetError(_memory_syntax_message(value, argument))
        return whole
    if isinstance(value, numbers.Real):  # a float (2e9) or a numpy floating number of bytes
        if not math.isfinite(value) or value <= 0 or not float(value).is_integer():
            raise MemoryBudgetError(_memory_syntax_message(value, argument))
        if int(value) > _LARGEST_MEMORY:
            raise MemoryBudgetError(_memory_syntax_message(value, argument))
        return int(value)
    if not isinstance(value, str):
        raise MemoryBudgetError(_memory_syntax_message(value, argument))
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise MemoryBudgetError(_memory_syntax_message(value, argument))
    number = float(match.group(1)) * _UNITS[unit]
    whole = unit not in ("", "b") or number.is_integer()  # no fraction of a byte, as for 1.5
    if not math.isfinite(number) or not whole or not 0 < int(number) <= _LARGEST_MEMORY:
        raise MemoryBudgetError(_memory_syntax_message(value, argument))
    return int(number)


#: The largest memory size taken: 2**63 - 1 bytes (8 EiB), beyond any machine; a larger number
#: (``10**400``, ``"1e30GiB"``) is a slip, and has no float for the arithmetic of the budgets.
_LARGEST_MEMORY = 2**63 - 1


def _memory_syntax_message(value: object, argument: str) -> str:
    if not argument.startswith("-"):
        return (
            f"{argument}={value!r} is not a memory size. Pass a positive whole number of bytes or "
            f"text with a unit, e.g. {argument}='4GiB', '500MB', '2G' or 1073741824 (bytes); "
            "KiB/MiB/GiB and K/M/G are powers of 1024, KB/MB/GB powers of 1000."
        )
    return (
        f"{argument} {value!r} is not a memory size. Write a positive number with an optional "
        f"unit, e.g. {argument} 4GiB, 500MB, 2G or 1073741824 (bytes); KiB/MiB/GiB and K/M/G are "
        "powers of 1024, KB/MB/GB powers of 1000."
    )


def format_bytes(size: float, digits: int = 1, *, smallest: str = "B", largest: str = "TiB") -> str:
    """``size`` bytes in a short human form, in binary units from ``smallest`` to ``largest``.

    The largest unit that ``size`` reaches is printed with ``digits`` decimals; below every unit
    above ``smallest``, ``size`` is a whole number of ``smallest``.

    >>> format_bytes(86_400), format_bytes(3 * 2**29, digits=2), format_bytes(512)
    ('84.4 KiB', '1.50 GiB', '512 B')
    >>> format_bytes(300 * 2**20, digits=2, smallest="MiB", largest="GiB")
    '300 MiB'
    """
    names = [name for name, _ in _BINARY]
    units = _BINARY[names.index(largest) : names.index(smallest) + 1]
    for unit, scale in units[:-1]:
        if size >= scale:
            return f"{size / scale:.{digits}f} {unit}"
    unit, scale = units[-1]
    return f"{int(size)} B" if scale == 1 else f"{size / scale:.0f} {unit}"
