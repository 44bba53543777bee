"""Models held in float16 or bfloat16 (conetool.low_precision): their eNTK is computed in float32
from their weights upcast, checked against the float64 Jacobian of the same weights, and range
checked as the float32 kernel it is; `kernels` says it upcasts, `train` and `switch` refuse such a
model before writing anything, naming the spec and the fix."""

from __future__ import annotations

import copy

import pytest
import torch
from test_ntk import explicit_jacobian

from conetool.errors import ConetoolError
from conetool.ntk import KernelUnderflowError, empirical_ntk

HALVES = [torch.float16, torch.bfloat16]
METHODS = ["jacobian", "structured"]


class Scaled(torch.nn.Module):
    """A small MLP whose logits are multiplied by ``scale`` (a Python float, applied in the
    forward pass's own dtype)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def _conv() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 3),
    )
    with torch.no_grad():  # running statistics away from 0 and 1: the buffers matter
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


MODELS = {"mlp": (lambda: Scaled(1.0), (6, 8)), "conv": (_conv, (5, 2, 5, 5))}


def _reference(model: torch.nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The float64 kernel of ``model``'s weights as it holds them (upcast exactly) on ``x``."""
    jac = explicit_jacobian(copy.deepcopy(model).double().eval(), x.double())
    if kind == "trace":
        return torch.einsum("iap,jap->ij", jac, jac)
    return torch.einsum("iap,jbp->iajb", jac, jac)


def _relative(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    return float((kernel.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_half_precision_models_kernel_is_computed_in_float32(
    name: str, half: torch.dtype, method: str
) -> None:
    """dtype=None on a float16 (bfloat16) model computed the kernel in float16 (bfloat16): 2e-4
    (2e-3) off the float64 kernel of the same weights, against 1e-6 promised for float32."""
    build, shape = MODELS[name]
    model = build().to(half)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(half)
    for kind in ("trace", "full"):
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
        assert kernel.dtype == torch.float32
        assert _relative(kernel, _reference(model, x, kind)) < 1e-6, kind
    # the upcast is a copy: the model keeps its own weights and dtype
    after = model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_small_outputs_of_a_half_precision_model_keep_their_kernel(half: torch.dtype) -> None:
    """Logits scaled by 1e-6: in float16 every product of Jacobian entries was 0 and the kernel
    all zeros, returned unchecked; in bfloat16 it was 6e-3 off."""
    model = Scaled(1e-6).to(half)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(half)
    kernel = empirical_ntk(model, x, device="cpu")
    assert _relative(kernel, _reference(model, x, "trace")) < 1e-6


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_the_range_check_runs_on_a_half_precision_models_kernel(half: torch.dtype) -> None:
    """Logits scaled by 1e-20: the float32 kernel is made of subnormal products and is refused,
    as a float32 model's is (tests/test_ntk_range.py). With dtype=None the half-precision kernel
    skipped the check (it only ran for a kernel computed in float32) and came back as zeros."""
    model = Scaled(1e-20).to(half)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(half)
    with pytest.raises(KernelUnderflowError, match="--dtype float64"):
        empirical_ntk(model, x, device="cpu")
    exact = empirical_ntk(model, x, device="cpu", dtype="float64")
    assert exact.dtype == torch.float64
    assert _relative(exact, _reference(model, x, "trace")) < 1e-12


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_a_half_precision_compute_dtype_is_refused(half: torch.dtype) -> None:
    model = Scaled(1.0)
    with pytest.raises(ConetoolError, match=rf"dtype={half}: the eNTK is computed in float32"):
        empirical_ntk(model, torch.randn(4, 8), device="cpu", dtype=half)
