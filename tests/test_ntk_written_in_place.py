"""A forward pass that makes a tensor once for the whole batch and writes each example's values
into it in place (``acc = torch.zeros(x.shape[0], k); acc += h``, ``out[:, :3] = h``,
``acc.index_add_(...)``): plain tensor code that ordinary autograd differentiates,
but that ``vmap`` refuses (the factory is not told of the examples, unlike ``torch.zeros_like(h)``,
so the tensor is shared by all of them). Every engine computes the kernel, against the float64
explicit Jacobian of a twin without the in-place write.

Before, the reference engine (and the structured engine's fallback path, and auto where it picks
either) refused it with "Some PyTorch modules have no working vmap rule (... nn.PReLU, nn.GRU and
nn.LSTM ...)", naming no such module; now the vmap path falls back to ordinary autograd, one
example at a time (ntk_failures.written_in_place), as it does for a custom autograd.Function."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from test_ntk import (
    KINDS,
    Pure,
    full_kernels_in_blocks_and_with_a_memo_match,
    kernel_and_cross_kernel_match,
    reference,
    rel,
)
from torch import Tensor, nn

from conetool.ntk import empirical_ntk

METHODS = ("structured", "jacobian", "auto")


def _added(h: Tensor) -> Tensor:
    acc = torch.zeros(h.shape[0], h.shape[1], dtype=h.dtype)
    acc += h
    acc += h * h
    return acc


def _set(h: Tensor) -> Tensor:
    out = torch.zeros(h.shape[0], h.shape[1], dtype=h.dtype)
    out[:, :3] = h[:, :3]
    out[:, 3:] = 2 * h[:, 3:]
    return out


def _index_added(h: Tensor) -> Tensor:
    acc = torch.zeros(h.shape[0], h.shape[1], dtype=h.dtype)
    acc.index_add_(1, torch.arange(h.shape[1]), h)
    return acc


#: name -> (the forward's in-place form, what it computes)
WRITES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "add": (_added, lambda h: h + h * h),
    "setitem": (_set, lambda h: torch.cat([h[:, :3], 2 * h[:, 3:]], 1)),
    "index_add": (_index_added, lambda h: h),
}


class Between(nn.Module):
    """The write between two Linear layers, which the structured engine hooks."""

    def __init__(self, write: str) -> None:
        super().__init__()
        self.write = write
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(WRITES[self.write][0](self.a(x))))

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(WRITES[self.write][1](self.a(x))))


class Scaled(nn.Module):
    """The write in a module with a parameter of its own, which the structured engine's check
    moves to its fallback path (the vmap of the whole model)."""

    def __init__(self, write: str) -> None:
        super().__init__()
        self.write = write
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, 6))

    def forward(self, x: Tensor) -> Tensor:
        return WRITES[self.write][0](x * self.s)

    def pure(self, x: Tensor) -> Tensor:
        return WRITES[self.write][1](x * self.s)


class Inside(Between):
    def __init__(self, write: str) -> None:
        super().__init__(write)
        self.scale = Scaled(write)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.scale(self.a(x))))

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.scale.pure(self.a(x))))


MODELS = {"between": Between, "inside": Inside}


def _built(model: str, write: str, n: int = 5) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return MODELS[model](write).double(), torch.randn(n, 4, dtype=torch.float64)


#: Between hooked layers the structured engine (and auto, which takes it) computed it before.
CASES = [("between", "jacobian"), *(("inside", method) for method in METHODS)]


@pytest.mark.parametrize("write", list(WRITES))
@pytest.mark.parametrize(("model", "method"), CASES)
def test_every_engine_gives_the_kernel(model: str, write: str, method: str) -> None:
    net, x = _built(model, write)
    expected = reference(Pure(net).eval(), x, "trace")
    assert rel(empirical_ntk(net, x, device="cpu", method=method), expected) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ("structured", "jacobian"))
def test_every_kind_and_the_cross_kernel(kind: str, method: str) -> None:
    net, x = _built("inside", "add", n=6)
    whole = reference(Pure(net).eval(), x, kind)
    kernel_and_cross_kernel_match(net, x, whole, kind, method)


@pytest.mark.parametrize("method", METHODS)
def test_in_blocks_and_with_a_memo(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net, x = _built("inside", "setitem", n=8)
    expected = reference(Pure(net).eval(), x, "full")
    full_kernels_in_blocks_and_with_a_memo_match(net, x, expected, method, monkeypatch)
