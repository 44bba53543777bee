"""The random calls a model's forward pass makes in eval mode, named in the error that says its
output is random (:func:`conetool.ntk_checks.check_independence`).

A hand-written attention block that gives ``F.scaled_dot_product_attention`` its ``dropout_p``
whatever the mode (``nn.MultiheadAttention`` passes it only in training mode), an ``F.dropout``
without ``training=``, a ``torch.randn`` in ``forward``: one more forward pass under a
``TorchFunctionMode`` finds which of them the model calls, so that the error names it and its fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["random_calls"]

#: Functional dropouts, with the position of their ``p`` and ``training`` arguments.
_DROPOUTS: dict[Any, str] = {
    F.dropout: "F.dropout",
    F.alpha_dropout: "F.alpha_dropout",
    F.feature_alpha_dropout: "F.feature_alpha_dropout",
    F.dropout1d: "F.dropout1d",
    F.dropout2d: "F.dropout2d",
    F.dropout3d: "F.dropout3d",
}

#: Draws from PyTorch's random number generators, by their name (torch.randn, Tensor.normal_).
_DRAWS = frozenset(
    {
        "rand",
        "randn",
        "randint",
        "rand_like",
        "randn_like",
        "randint_like",
        "randperm",
        "bernoulli",
        "bernoulli_",
        "normal",
        "normal_",
        "uniform_",
        "random_",
        "exponential_",
        "cauchy_",
        "log_normal_",
        "geometric_",
        "multinomial",
        "poisson",
    }
)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """The argument ``name`` of a call, given by keyword or at position ``index``, else None."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _described(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """What a call draws at random in eval mode and how to turn it off, or None when it draws
    nothing (a dropout given ``training=False`` or ``p=0``)."""
    if func is F.scaled_dot_product_attention:
        p = _argument(args, kwargs, 4, "dropout_p")
        if isinstance(p, (int, float)) and p > 0:
            return (
                f"F.scaled_dot_product_attention(..., dropout_p={p:g}), which drops attention "
                "weights in eval mode too (pass dropout_p=p if self.training else 0.0)"
            )
        return None
    if func in _DROPOUTS:
        p = _argument(args, kwargs, 1, "p")
        training = _argument(args, kwargs, 2, "training")
        p = 0.5 if p is None else p
        training = True if training is None else training
        if training and isinstance(p, (int, float)) and p > 0:
            return f"{_DROPOUTS[func]}(x, {p:g}), which is on unless given training=self.training"
        return None
    name = getattr(func, "__name__", "")
    if name in _DRAWS:
        return f"torch.{name}" if not name.endswith("_") else f"Tensor.{name}"
    return None


class _Recorder(TorchFunctionMode):
    """Records :func:`_described` of every call that draws at random, each once, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        said = _described(func, args, kwargs)
        if said is not None and said not in self.calls:
            self.calls.append(said)
        return func(*args, **kwargs)


def random_calls(run: Callable[[], object]) -> list[str]:
    """The random calls that ``run()`` (one forward pass of the model) makes, each described with
    its fix, in the order first made; empty when it makes none that PyTorch's API shows (a draw
    from NumPy or Python's ``random``). An error ``run`` raises is not the caller's concern here:
    the calls recorded until then are returned."""
    recorder = _Recorder()
    try:
        with recorder, torch.no_grad():
            run()
    except Exception:  # only what was recorded matters to the message
        pass
    return recorder.calls
