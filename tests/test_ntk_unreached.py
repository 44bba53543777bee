"""Trainable parameters that no gradient of the outputs reaches (a ``torch.no_grad()`` block, a
``.detach()``, ``.data``, a head never used): the kernel leaves them out, and the call says so
once per architecture, naming them; frozen parameters and zero gradients (a dead ReLU) stay
silent, and the kernel is the same either way."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_ntk import reference, rel
from torch import nn

from conetool import ntk_checks
from conetool.ntk import EngineMemo, empirical_ntk
from conetool.ntk_checks import UnreachedParametersWarning

METHODS = ("structured", "jacobian", "auto")


class Trunk(nn.Module):
    """``b(tanh(a(x)))``; the subclasses change how ``a`` is reached."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class NoGrad(Trunk):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.tanh(self.a(x))
        return self.b(h)


class Detached(Trunk):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)).detach())


class ThroughData(Trunk):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(x @ self.a.weight.data.T + self.a.bias.data))


class AuxHead(Trunk):
    """An auxiliary head the forward pass never calls, and a bare parameter it never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(6, 2)
        self.spare = nn.Parameter(torch.randn(3))


class Frozen(Trunk):
    """``a`` frozen on purpose (requires_grad=False), and under no_grad too."""

    def __init__(self) -> None:
        super().__init__()
        self.a.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = torch.tanh(self.a(x))
        return self.b(h)


class DeadRelu(Trunk):
    """A ReLU that no input turns on: ``a``'s gradients are zero tensors, not missing."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.a.bias.fill_(-100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class Wide(nn.Module):
    """Seven layers under no_grad, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*[nn.Linear(4, 4) for _ in range(7)])
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.trunk(x)
        return self.head(h)


def _model(cls: type[nn.Module]) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return cls().double(), torch.randn(5, 4, dtype=torch.float64)


def _said(model: nn.Module, x: torch.Tensor, **options: object) -> tuple[torch.Tensor, list[str]]:
    """The kernel and what the call warned of (its own category only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = empirical_ntk(model, x, device="cpu", **options)  # type: ignore[arg-type]
    return kernel, [
        str(w.message) for w in caught if issubclass(w.category, UnreachedParametersWarning)
    ]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cls", [NoGrad, Detached, ThroughData])
def test_parameters_cut_from_the_graph_are_named_and_the_kernel_is_unchanged(
    cls: type[nn.Module], method: str
) -> None:
    model, x = _model(cls)
    kernel, said = _said(model, x, method=method)
    assert len(said) == 1, said
    assert said[0].startswith("2 trainable parameter tensors (requires_grad=True) get no "), said
    assert "'a.weight', 'a.bias'." in said[0], said
    assert "'b." not in said[0], said
    assert "torch.no_grad()" in said[0] and "requires_grad=False" in said[0], said
    # a diagnostic only: the kernel is the explicit Jacobian's, which has no a.* columns either
    assert rel(kernel, reference(model, x, "trace")) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_parameters_never_used_are_named_with_the_same_message(method: str) -> None:
    model, x = _model(AuxHead)
    _, said = _said(model, x, method=method)
    assert len(said) == 1, said
    assert "3 trainable parameter tensors" in said[0], said
    assert "'spare', 'aux.weight', 'aux.bias'." in said[0], said  # named_parameters' order
    assert "or not at all (an auxiliary head it never calls, or whose output it" in said[0], said


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cls", [Trunk, Frozen, DeadRelu])
def test_frozen_parameters_and_zero_gradients_are_not_named(
    cls: type[nn.Module], method: str
) -> None:
    model, x = _model(cls)
    kernel, said = _said(model, x, method=method)
    assert said == []
    assert rel(kernel, reference(model, x, "trace")) < 1e-10


def test_the_first_five_are_named_and_the_rest_counted() -> None:
    model, x = _model(Wide)
    _, said = _said(model, x)
    assert said[0].startswith("14 trainable parameter tensors"), said
    named = "'trunk.0.weight', 'trunk.0.bias', 'trunk.1.weight', 'trunk.1.bias', 'trunk.2.weight'"
    assert f"{named} and 9 more." in said[0], said


def test_freezing_them_silences_it() -> None:
    model, x = _model(NoGrad)
    model.a.requires_grad_(False)
    assert _said(model, x)[1] == []


def test_warn_receives_it_and_a_memo_checks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One small forward and backward pass per signature of the memo, none on later calls."""
    passes: list[int] = []
    original = ntk_checks.unreached_parameters

    def counted(forward, params, x):  # type: ignore[no-untyped-def]
        passes.append(x.shape[0])
        return original(forward, params, x)

    monkeypatch.setattr("conetool.ntk.unreached_parameters", counted)
    model, x = _model(NoGrad)
    memo, got = EngineMemo(), []
    for _ in range(3):
        _, said = _said(model, x, memo=memo, warn=got.append)
        assert said == []  # given to warn, not to the warnings module
    assert passes == [5] and len(got) == 1 and "'a.weight', 'a.bias'" in got[0]


def test_check_false_checks_nothing() -> None:
    model, x = _model(NoGrad)
    assert _said(model, x, check=False)[1] == []


def test_the_check_passes_two_examples_at_most() -> None:
    model, x = _model(NoGrad)
    seen: list[int] = []

    def forward(batch: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        seen.append(batch.shape[0])
        return torch.func.functional_call(model, p, (batch,))

    params = {k: v.detach() for k, v in model.named_parameters()}
    assert ntk_checks.unreached_parameters(forward, params, x) == ["a.weight", "a.bias"]
    assert seen == [2]


def test_one_parameter_is_said_in_the_singular() -> None:
    said = ntk_checks.unreached_warning(["spare"])
    assert said.startswith("1 trainable parameter tensor (requires_grad=True) gets no gradient")
    assert "leaves its contribution out: 'spare'. The forward pass uses it under" in said
