"""A model whose forward pass updates a buffer in place (a call counter, a running statistic kept
by hand and not gated by ``if self.training:``, a monitor of its activations): every engine
computes the kernel of the function one call of the model computes from its state as given,
against the float64 explicit Jacobian of a twin without the update, and leaves the model's
buffers as they were.

The reference engine refused a counter (torch.func cannot mutate a captured tensor), every engine
called a running statistic read before its update random, the structured engine failed with
autograd's in-place error on a counter its call reads, and one that mixes the examples of its
batch raised a raw error from the structured engine. Now each evaluation gets its own copy of the
buffers a forward pass updates (:mod:`conetool.ntk_buffers`)."""

from __future__ import annotations

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

from conetool.errors import ModelError
from conetool.ntk import empirical_ntk

METHODS = ("structured", "jacobian", "auto")


class Counter(nn.Module):
    """Counts its calls; its outputs do not read the count."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.pure(x)

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class ScaleCounting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.seen.add_(1)
        return x * self.s


class LocalCounter(nn.Module):
    """A counter in a module with a parameter of its own (the structured engine's "local")."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.scale = ScaleCounting()
        self.b = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.scale(self.a(x))))

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x) * self.scale.s))


class Monitor(Counter):
    """Keeps the largest activation it saw (a value of the batch, which vmap cannot write into
    a buffer shared by the examples)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("peak", torch.zeros(6))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.a(x))
        self.peak.copy_(torch.maximum(self.peak, h.detach().abs().amax(0)))
        return self.b(h)


class Running(nn.Module):
    """A running mean kept by hand, updated in eval mode too, read before the update."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.register_buffer("mean", torch.linspace(-0.3, 0.3, 6))

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        out = h - h.mean(0) if self.training else h - self.mean
        self.mean.mul_(0.9).add_(0.1 * h.detach().mean(0))
        return self.b(torch.tanh(out))

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x) - self.mean))


class CounterRead(Counter):
    """Reads the count after updating it: one call from the model's state scales by count + 1."""

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.b(torch.tanh(self.a(x))) * self.calls

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x))) * (self.calls + 1)


class BatchMean(Running):
    """A running mean updated from the batch and read after: each output mixes the examples."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        self.mean.mul_(0.5).add_(0.5 * h.mean(0))
        return self.b(torch.tanh(h - self.mean))


MODELS = {
    "counter": Counter,
    "local_counter": LocalCounter,
    "monitor": Monitor,
    "running": Running,
    "counter_read": CounterRead,
}


def _built(name: str, n: int = 5, training: bool = False) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = MODELS[name]().double().train(training)
    if name == "counter_read":
        model.calls.fill_(2.0)
    return model, torch.randn(n, 4, dtype=torch.float64)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_engine_gives_the_kernel_of_one_call_and_leaves_the_buffers(
    name: str, method: str, training: bool
) -> None:
    model, x = _built(name, training=training)
    before = _state(model)
    expected = reference(Pure(model).eval(), x, "trace")
    kernel = empirical_ntk(model, x, device="cpu", method=method)
    assert rel(kernel, expected) < 1e-10
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert model.training is training


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ("structured", "jacobian"))
def test_every_kind_and_the_cross_kernel(kind: str, method: str) -> None:
    model, x = _built("monitor", n=6)
    whole = reference(Pure(model).eval(), x, kind)
    kernel_and_cross_kernel_match(model, x, whole, kind, method)
    assert float(model.peak.abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["monitor", "running"])
@pytest.mark.parametrize("method", METHODS)
def test_in_blocks_and_with_a_memo(name: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Panels smaller than n (each block's evaluations start from the model's buffers again),
    and the memo's second call."""
    model, x = _built(name, n=8)
    expected = reference(Pure(model).eval(), x, "full")
    full_kernels_in_blocks_and_with_a_memo_match(model, x, expected, method, monkeypatch)


@pytest.mark.parametrize("method", METHODS)
def test_an_update_that_mixes_the_examples_is_refused_naming_the_buffer(method: str) -> None:
    torch.manual_seed(0)
    model = BatchMean().double()
    before = _state(model)
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ModelError, match="depends on the other examples") as caught:
        empirical_ntk(model, x, device="cpu", method=method)
    assert "buffer 'mean' in place" in str(caught.value)
    assert "if self.training" in str(caught.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
