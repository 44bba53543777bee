"""A tensor held as a plain attribute of a module (``self.count = torch.zeros(())`` in
``__init__``, not ``register_buffer``) that the forward pass updates: every engine computes the
kernel of what one call of the model computes from its state as given, against the float64
explicit Jacobian of a twin without the update, and leaves the user's attribute as it was (the
same tensor, the same values), as it does for a registered buffer (test_ntk_buffer_updates.py).

Before, the structured engine (and auto, which took it) let every evaluation update the user's
attribute (a counter left at 12 after two kernels, a running mean moved) and gave a kernel that
depended on the evaluations before, or failed with autograd's raw in-place error where its call
reads the update; the reference engine refused a counter (torch.func cannot mutate a captured
tensor) and called a running mean random."""

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
    """Counts its calls in a plain attribute; its outputs do not read the count."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.count = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        self.count += 1
        return self.pure(x)

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class CounterRead(Counter):
    """Reads the count after updating it: one call from the model's state scales by count + 1."""

    def forward(self, x: Tensor) -> Tensor:
        self.count += 1
        return self.b(torch.tanh(self.a(x))) * self.count

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x))) * (self.count + 1)


class Running(nn.Module):
    """A running mean kept by hand in a plain attribute (float32: ``.double()`` leaves it so),
    read before its update in place."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)
        self.mean = torch.linspace(-0.3, 0.3, 6)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        out = self.b(torch.tanh(h - self.mean))
        self.mean.mul_(0.9).add_(0.1 * h.detach().mean(0))
        return out

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x) - self.mean))


class Replaced(Running):
    """The running mean replaced rather than updated in place (``self.mean = ...``)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        out = self.b(torch.tanh(h - self.mean))
        self.mean = 0.9 * self.mean + 0.1 * h.detach().mean(0)
        return out


class Peak(nn.Module):
    """A module with a parameter of its own (the structured engine's "local") that keeps the
    largest activation it saw in a plain attribute: a value of the batch, which vmap cannot write
    into the copy the examples share."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.peak = torch.zeros(6, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        h = x * self.s
        self.peak.copy_(torch.maximum(self.peak, h.detach().abs().amax(0)))
        return h


class Monitored(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.scale = Peak()
        self.b = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.scale(self.a(x))))

    def pure(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x) * self.scale.s))


MODELS = {
    "counter": (Counter, "count"),
    "counter_read": (CounterRead, "count"),
    "running": (Running, "mean"),
    "replaced": (Replaced, "mean"),
    "monitored": (Monitored, "scale.peak"),
}


def _built(name: str, n: int = 5, training: bool = False) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = MODELS[name][0]().double().train(training)
    if name == "counter_read":
        model.count.fill_(2.0)
    return model, torch.randn(n, 4, dtype=torch.float64)


def _attribute(model: nn.Module, name: str) -> Tensor:
    *path, last = name.split(".")
    owner = model.get_submodule(".".join(path))
    value = vars(owner)[last]
    assert isinstance(value, Tensor)
    return value


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_engine_gives_the_kernel_of_one_call_and_leaves_the_attribute(
    name: str, method: str, training: bool
) -> None:
    model, x = _built(name, training=training)
    attribute = MODELS[name][1]
    held = _attribute(model, attribute)
    before = held.clone()
    expected = reference(Pure(model).eval(), x, "trace")
    for _ in range(2):  # a second kernel starts from the same state
        kernel = empirical_ntk(model, x, device="cpu", method=method)
        assert rel(kernel, expected) < 1e-10
    assert _attribute(model, attribute) is held  # the user's tensor, not replaced
    assert torch.equal(held, before)  # nor written to
    assert model.training is training


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ("structured", "jacobian"))
def test_every_kind_and_the_cross_kernel(kind: str, method: str) -> None:
    model, x = _built("monitored", n=6)
    whole = reference(Pure(model).eval(), x, kind)
    kernel_and_cross_kernel_match(model, x, whole, kind, method)
    assert float(_attribute(model, "scale.peak").abs().sum()) == 0.0


@pytest.mark.parametrize("name", ["running", "replaced"])
@pytest.mark.parametrize("method", METHODS)
def test_in_blocks_and_with_a_memo(name: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Panels smaller than n (each block's evaluations start from the model's state again), and
    the memo's second call."""
    model, x = _built(name, n=8)
    before = model.mean.clone()
    expected = reference(Pure(model).eval(), x, "full")
    full_kernels_in_blocks_and_with_a_memo_match(model, x, expected, method, monkeypatch)
    assert torch.equal(model.mean, before)


class BatchMean(Running):
    """A running mean in a plain attribute updated from the batch and read after: each output
    mixes the examples."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        self.mean.mul_(0.5).add_(0.5 * h.mean(0))
        return self.b(torch.tanh(h - self.mean))


@pytest.mark.parametrize("method", METHODS)
def test_an_update_that_mixes_the_examples_is_refused_naming_the_attribute(method: str) -> None:
    torch.manual_seed(0)
    model = BatchMean().double()
    before = model.mean.clone()
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ModelError, match="depends on the other examples") as caught:
        empirical_ntk(model, x, device="cpu", method=method)
    said = str(caught.value)
    assert "the tensor attribute 'mean' in place" in said
    assert "self.register_buffer(name, tensor)" in said
    assert "if self.training" in said
    assert torch.equal(model.mean, before)
