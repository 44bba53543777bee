"""Every public result dataclass says what each of its fields holds: its docstring's
``Attributes:`` section has an entry naming the field (``name: ...`` or ``a, b: ...``).

The classes checked: each ``*Result`` exported by ``conetool``, :class:`InspectRow` (what
``conetool.inspect`` returns), and every conetool dataclass their fields' types name
(``SpectrumResult.points`` -> ``SpectrumPoint``, ...), found from the type hints.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

import pytest

import conetool
from conetool.checkpoints import InspectRow

ENTRY = re.compile(r"^    ([A-Za-z_]\w*(?:, [A-Za-z_]\w*)*):(?:\s|$)")


def _named_types(hint: object) -> typing.Iterator[object]:
    yield hint
    for arg in typing.get_args(hint):
        yield from _named_types(arg)


def _result_classes() -> list[type]:
    todo: list[type] = [getattr(conetool, n) for n in conetool.__all__ if n.endswith("Result")]
    todo.append(InspectRow)
    found: list[type] = []
    while todo:
        cls = todo.pop(0)
        if cls in found:
            continue
        found.append(cls)
        for hint in typing.get_type_hints(cls).values():
            for named in _named_types(hint):
                if (
                    isinstance(named, type)
                    and dataclasses.is_dataclass(named)
                    and named.__module__.startswith("conetool")
                ):
                    todo.append(named)
    return found


def documented_fields(cls: type) -> set[str]:
    """The names the entries of ``cls``'s ``Attributes:`` section give."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return set()
    names: set[str] = set()
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line and not line.startswith(" "):
            break  # the section ends at the next unindented paragraph
        if entry := ENTRY.match(line):
            names.update(entry.group(1).split(", "))
    return names


def test_the_classes_checked_include_the_nested_ones() -> None:
    names = {cls.__name__ for cls in _result_classes()}
    assert {"TrainResult", "KernelsResult", "InspectRow", "SwitchPoint", "SpectrumPoint"} <= names


@pytest.mark.parametrize("cls", _result_classes(), ids=lambda cls: cls.__name__)
def test_every_field_is_described_in_the_docstring(cls: type) -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    missing = [name for name in fields if name not in documented_fields(cls)]
    assert not missing, f"{cls.__qualname__}'s docstring has no Attributes entry for {missing}"
    extra = documented_fields(cls) - set(fields)
    assert not extra, f"{cls.__qualname__}'s docstring describes fields it lacks: {extra}"
