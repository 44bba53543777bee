"""What a notebook user passes by mistake to the library functions: each is refused with a
``ConetoolError`` naming the argument and the fix, not a raw ``AttributeError`` or
``IndexError`` from deep inside, nor a silently wrong number or a message blaming something else.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

import conetool

_WITH_PROGRESS = [
    name
    for name in ("train", "kernels", "distance", "embed", "spectrum", "switch", "report", "demo")
    if "progress" in inspect.signature(getattr(conetool, name)).parameters
]


def test_every_command_with_a_progress_is_covered() -> None:
    assert len(_WITH_PROGRESS) == 8, _WITH_PROGRESS


@pytest.mark.parametrize("name", _WITH_PROGRESS)
@pytest.mark.parametrize("value", [True, print, "yes"], ids=["True", "print", "str"])
def test_a_progress_that_is_no_progress_display_is_named(
    name: str, value: object, tmp_path: Path
) -> None:
    """progress=True (a notebook user asking for a bar) failed with AttributeError: 'bool'
    object has no attribute 'log' once the command reported, after work was done."""
    # the first argument of each: a path that need not exist (the check comes first)
    first: Any = [0] if name == "switch" else tmp_path / "nothing"
    more = {"out": tmp_path / "out"} if name == "train" else {}
    with pytest.raises(conetool.ConetoolError, match=r"progress=.* is not a progress display"):
        getattr(conetool, name)(first, progress=value, **more)
