"""A custom ``torch.autograd.Function`` in the model's forward pass: every engine computes the
kernel of the model's own backward, against the float64 explicit Jacobian (one
``torch.autograd.grad`` per example and logit, which calls that backward).

torch.func cannot transform a Function without ``setup_context`` (``ctx`` in ``forward``) or one
without a vmap rule: the reference engine refused both, and so did the structured engine for a
parameter on its fallback path, while it followed one between the layers it hooks. Now their
``vmap`` path falls back to ordinary autograd, one example at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_ntk import (
    KINDS,
    full_kernels_in_blocks_and_with_a_memo_match,
    kernel_and_cross_kernel_match,
    reference,
    rel,
)
from torch import nn

from conetool.ntk import empirical_ntk

METHODS = ("structured", "jacobian", "auto")


class CtxSquare(torch.autograd.Function):
    """``x·|x|``, old style: ``ctx`` in ``forward``, no ``setup_context``."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * grad * x.abs()


class NoVmapSquare(torch.autograd.Function):
    """``x·|x|`` with ``setup_context`` but no vmap rule."""

    @staticmethod
    def forward(x):  # type: ignore[no-untyped-def, override]
        return x * x.abs()

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * grad * x.abs()


class StraightThrough(torch.autograd.Function):
    """``round(x)`` whose backward passes the gradient through (quantization-aware training):
    the kernel is that of the model's backward, not of the derivative (zero)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        return grad


class Activated(nn.Module):
    """The Function between two Linear layers, which the structured engine hooks."""

    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.fn.apply(self.a(x)))


class OnWeight(nn.Module):
    """The Function on a weight (a quantized layer), which the structured engine computes on
    its fallback path."""

    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn
        self.a = nn.Linear(4, 6)
        self.w = nn.Parameter(torch.randn(3, 6) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.a(x)), self.fn.apply(self.w))


class Convolved(nn.Module):
    """Convolutions on a 6x6 map, which auto gives the reference engine on a CPU."""

    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fn.apply(self.c2(self.fn.apply(self.c1(x))))
        return self.head(h.mean(dim=(2, 3)))


class ReadsItsGradient(torch.autograd.Function):
    """``x·|x|``, old style, whose backward reads a number from the gradient (a clip that never
    bites here): ``vmap`` cannot run that backward over the cotangents at once
    (``is_grads_batched``), so it runs once per cotangent."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        norm = float(grad.norm())
        return 2 * grad * x.abs() * (1.0 if norm < 1e6 else 1e6 / norm)


FUNCTIONS = {
    "ctx": CtxSquare,
    "no_vmap": NoVmapSquare,
    "straight_through": StraightThrough,
    "reads_its_gradient": ReadsItsGradient,
}
MODELS = {
    "activated": (Activated, (4,)),
    "on_weight": (OnWeight, (4,)),
    "conv": (Convolved, (1, 6, 6)),
}


def _built(model: str, fn: str, n: int = 5) -> tuple[nn.Module, torch.Tensor]:
    cls, shape = MODELS[model]
    torch.manual_seed(0)
    return cls(FUNCTIONS[fn]).double(), torch.randn(n, *shape, dtype=torch.float64)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fn", list(FUNCTIONS))
@pytest.mark.parametrize("model", list(MODELS))
def test_every_engine_gives_the_kernel_of_the_models_backward(
    model: str, fn: str, method: str
) -> None:
    net, x = _built(model, fn)
    kernel = empirical_ntk(net, x, device="cpu", method=method)
    assert rel(kernel, reference(net, x, "trace")) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ("structured", "jacobian"))
def test_every_kind_and_the_cross_kernel(kind: str, method: str) -> None:
    net, x = _built("on_weight", "ctx", n=6)
    whole = reference(net, x, kind)
    kernel_and_cross_kernel_match(net, x, whole, kind, method)


@pytest.mark.parametrize("method", METHODS)
def test_in_blocks_and_with_a_memo(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Panels smaller than n (the loop runs again for each block), and the memo's second call
    (its layout restored)."""
    net, x = _built("on_weight", "no_vmap", n=8)
    expected = reference(net, x, "full")
    full_kernels_in_blocks_and_with_a_memo_match(net, x, expected, method, monkeypatch)
