"""What a notebook user passes by mistake to the library functions: each is refused with a
``ConetoolError`` naming the argument and the fix, not a raw ``AttributeError`` or
``IndexError`` from deep inside, nor a silently wrong number or a message blaming something else.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import conetool

_WITH_PROGRESS = [
    name
    for name in ("train", "kernels", "distance", "embed", "spectrum", "switch", "report", "demo")
    if "progress" in inspect.signature(getattr(conetool, name)).parameters
]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


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


@pytest.mark.parametrize("model", [None, lambda x: x], ids=["None", "function"])
def test_empirical_ntk_of_no_module_is_named(model: Any) -> None:
    with pytest.raises(conetool.ConetoolError, match="needs a torch.nn.Module as model"):
        conetool.empirical_ntk(model, torch.randn(3, 4))


def test_empirical_ntk_of_numpy_inputs_says_to_make_them_tensors() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(conetool.ConetoolError, match=r"x1 as a torch.Tensor, got ndarray"):
        conetool.empirical_ntk(_mlp(), x)
    with pytest.raises(conetool.ConetoolError, match=r"x2 as a torch.Tensor, got ndarray"):
        conetool.empirical_ntk(_mlp(), torch.as_tensor(x), x)


def test_empirical_ntk_refuses_an_integer_dtype_naming_it() -> None:
    """dtype=torch.int64 was blamed on the inputs ("the model cannot take inputs of shape")."""
    with pytest.raises(conetool.ConetoolError, match=r"dtype=torch.int64 is not a floating"):
        conetool.empirical_ntk(_mlp(), torch.randn(3, 4), dtype=torch.int64)


def test_empirical_ntk_refuses_a_memo_that_is_no_engine_memo() -> None:
    with pytest.raises(conetool.ConetoolError, match=r"memo=\{\} is not a conetool.EngineMemo"):
        conetool.empirical_ntk(_mlp(), torch.randn(3, 4), memo={})  # type: ignore[arg-type]


@pytest.mark.parametrize("row", [0, 4])
@pytest.mark.parametrize("method", ["auto", "jacobian"])
def test_nan_inputs_are_named_as_the_inputs(row: int, method: str) -> None:
    """A NaN in the first example read as "the model's output is random in eval mode" (the
    independence check compared NaN with NaN), and one elsewhere blamed the weights."""
    x = torch.randn(5, 4)
    x[row, 1] = float("nan")
    with pytest.raises(conetool.NonFiniteKernelError, match=rf"x1 holds NaN .* at index {row}\)"):
        conetool.empirical_ntk(_mlp(), x, method=method)
    with pytest.raises(conetool.NonFiniteKernelError, match=rf"x2 holds NaN .* at index {row}\)"):
        conetool.empirical_ntk(_mlp(), torch.randn(3, 4), x, method=method)


def test_nan_weights_are_no_random_model() -> None:
    """NaN weights were a ModelError ("random in eval mode"), which kernels takes as the model's
    fault (the run stops, even with skip_bad) rather than the checkpoint's."""
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(conetool.NonFiniteKernelError, match="Check the weights for NaN") as info:
        conetool.empirical_ntk(model, torch.randn(5, 4))
    assert not isinstance(info.value, conetool.ModelError)


def test_a_memo_learns_nothing_from_a_call_that_failed_on_nan() -> None:
    """The independence check cannot decide on NaN outputs: the next call of the memo runs it."""

    class Centered(nn.Module):  # each example's output depends on the batch
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x - x.mean(0))

    model, memo = Centered(), conetool.EngineMemo()
    x = torch.randn(5, 4)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(conetool.NonFiniteKernelError):
        conetool.empirical_ntk(model, bad, memo=memo)
    with pytest.raises(conetool.ModelError, match="depends on the other examples"):
        conetool.empirical_ntk(model, x, memo=memo)
