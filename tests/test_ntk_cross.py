"""Cross kernels K(x1, x2) against explicit float64 Jacobians (J1 J2^T), on both engines."""

from __future__ import annotations

import doctest

import pytest
import torch
from test_ntk import MODELS, budget_named, build, explicit_jacobian, record_plans, rel
from test_ntk_structured import record_sources
from torch import nn

from conetool import ntk_structured, units
from conetool.errors import ConetoolError
from conetool.ntk import MemoryBudgetError, empirical_ntk

KINDS = ("trace", "full", "sum")
METHODS = ("jacobian", "structured")


def cross_reference(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, kind: str
) -> torch.Tensor:
    """``J1 J2^T`` in the layout of ``kind``, from explicit per-(example, logit) gradients."""
    j1 = explicit_jacobian(model.eval(), x1)  # (n1, c, p)
    j2 = explicit_jacobian(model.eval(), x2)  # (n2, c, p)
    if kind == "trace":
        return torch.einsum("iap,jap->ij", j1, j2)
    if kind == "full":
        return torch.einsum("iap,jbp->iajb", j1, j2)
    return j1.sum(dim=1) @ j2.sum(dim=1).T


def split(name: str, n1: int, n2: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x = build(name, n=n1 + n2)
    return model, x[:n1], x[n1:]


def minimum_budget(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, kind: str, method: str
) -> int:
    with pytest.raises(MemoryBudgetError) as info:
        empirical_ntk(model, x1, x2, kind=kind, max_memory=1, device="cpu", method=method)
    return budget_named(info.value)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_cross_matches_explicit_jacobians(name: str, method: str) -> None:
    model, x1, x2 = split(name, 5, 3)
    c = model(x1[:1]).shape[1]
    for kind in KINDS:
        kernel = empirical_ntk(model, x1, x2, kind=kind, device="cpu", method=method)
        assert kernel.dtype == torch.float64
        assert kernel.shape == ((5, c, 3, c) if kind == "full" else (5, 3))
        assert rel(kernel, cross_reference(model, x1, x2, kind)) < 1e-10
        # The other way round is the transpose.
        back = empirical_ntk(model, x2, x1, kind=kind, device="cpu", method=method)
        flipped = back.permute(2, 3, 0, 1) if kind == "full" else back.T
        assert rel(flipped, kernel) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_cross_of_a_set_with_itself_is_the_symmetric_kernel(method: str) -> None:
    model, x = build("conv_bn", n=6)
    for kind in KINDS:
        symmetric = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
        cross = empirical_ntk(model, x, x.clone(), kind=kind, device="cpu", method=method)
        assert cross.shape == symmetric.shape
        assert rel(cross, symmetric) < 1e-13


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_cross_blocked_equals_unblocked(
    kind: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x1, x2 = split("conv_bn", 7, 5)
    plans = record_plans(monkeypatch)
    whole = empirical_ntk(model, x1, x2, kind=kind, max_memory="1GiB", device="cpu", method=method)
    assert plans[-1].panel == 7 and len(plans[-1].groups) == 1  # everything at once
    assert rel(whole, cross_reference(model, x1, x2, kind)) < 1e-10
    low = minimum_budget(model, x1, x2, kind, method)
    p = sum(t.numel() for t in model.parameters())
    row = (3 if kind == "full" else 1) * p * 8
    seen = set()
    for extra_rows in (0, 1, 4, 9):
        calls: list[tuple[int, int]] = []
        blocked = empirical_ntk(
            model,
            x1,
            x2,
            kind=kind,
            max_memory=low + extra_rows * row,
            device="cpu",
            method=method,
            on_block=lambda done, total: calls.append((done, total)),  # noqa: B023
        )
        plan = plans[-1]
        seen.add((len(plan.groups), plan.panel, plan.chunk))
        assert rel(blocked, whole) < 1e-13
        assert calls[-1][0] == calls[-1][1]  # progress ends at its total
    assert min(panel for _, panel, _ in seen) < 7  # panels of x1: x2 recomputed per panel
    assert len(seen) >= 3
    with pytest.raises(MemoryBudgetError, match=r"7 x 5|21 x 15"):
        empirical_ntk(model, x1, x2, kind=kind, max_memory=low - 1, device="cpu", method=method)


@pytest.mark.parametrize("kind", KINDS)
def test_cross_factored_products_with_positions(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every convolution contracted from its factors: FactoredGrad products of two different sets
    # with many positions each, sliced.
    def choose(_kind: str, n: int, k: int, t: int, d_a: int, d_g: int, p: int, **_: object) -> str:
        return "kron" if d_a * d_g == p else "dense"

    monkeypatch.setattr(ntk_structured, "_choose", choose)
    made = record_sources(monkeypatch)
    model, x1, x2 = split("residual", 4, 6)
    kernel = empirical_ntk(model, x1, x2, kind=kind, device="cpu", method="structured")
    assert made[-1].modes() == {
        "stem": "kron",
        "conv1": "kron",
        "conv2": "kron",
        "fc": "kron",
        "bn": "norm",
    }
    assert rel(kernel, cross_reference(model, x1, x2, kind)) < 1e-10


def test_single_examples() -> None:
    model, x1, x2 = split("mlp", 1, 1)
    for kind in KINDS:
        for method in METHODS:
            kernel = empirical_ntk(model, x1, x2, kind=kind, device="cpu", method=method)
            assert rel(kernel, cross_reference(model, x1, x2, kind)) < 1e-12


def test_float32_cross_kernel_is_float32_and_close() -> None:
    model, x1, x2 = split("conv_bn", 4, 3)
    expected = cross_reference(model, x1, x2, "trace")
    kernel = empirical_ntk(model.float(), x1.float(), x2.float(), device="cpu")
    assert kernel.dtype == torch.float32
    assert rel(kernel, expected) < 1e-5


def test_bad_second_set() -> None:
    model, x1, x2 = split("mlp", 3, 2)
    with pytest.raises(ConetoolError, match=r"x2 have shape \(4,\).*x1 have shape \(5,\)"):
        empirical_ntk(model, x1, x2[:, :4], device="cpu")
    with pytest.raises(ConetoolError, match="n2 >= 1"):
        empirical_ntk(model, x1, x2[:0], device="cpu")


def test_units_doctests_run() -> None:
    assert doctest.testmod(units, raise_on_error=False).failed == 0
