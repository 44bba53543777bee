"""The linearized model of a model with parts forward-mode AD or a shared buffer trips on: a custom
``torch.autograd.Function`` without a ``jvp`` (or ``setup_context``), and a forward pass that
updates a buffer in place.

Before, the first raised PyTorch's own error from ``lin(x)`` (dual numbers and ``torch.func.jvp``
both refuse it), and the second moved the linearization point with every call: the linearized
model's own buffers were updated (a running mean kept by hand drifted, a counter its call reads
failed autograd's in-place check). Now ``J t`` comes from two reverse passes
(:mod:`conetool.linearize_reverse`) and each call starts from the buffers at ``t``. References:
central finite differences of the network, and its explicit Jacobian by ordinary autograd (which
calls the Function's own ``backward``: a straight-through estimator's derivative is zero)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_ntk import rel
from test_ntk_buffer_updates import MODELS as BUFFER_MODELS
from test_ntk_buffer_updates import Pure
from test_ntk_buffer_updates import _built as buffer_model
from test_ntk_custom_function import FUNCTIONS, MODELS, Activated
from test_ntk_custom_function import _built as function_model
from test_ntk_tensor_attributes import MODELS as ATTRIBUTE_MODELS
from test_ntk_tensor_attributes import Pure as AttributePure
from test_ntk_tensor_attributes import _attribute as attribute_of
from test_ntk_tensor_attributes import _built as attribute_model
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from conetool.errors import ModelError
from conetool.linearize import LinearizedModel, linearize


def _moved(model: nn.Module) -> tuple[LinearizedModel, dict[str, Tensor]]:
    lin = linearize(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return lin, {k: v.detach().clone() for k, v in lin.named_parameters()}


def _finite_differences(net: nn.Module, theta: dict[str, Tensor], x: Tensor) -> Tensor:
    """``f(θ_t) + (f(θ_t + hΔ) − f(θ_t − hΔ)) / 2h``, each evaluation of ``net`` (eval mode)
    from its own copy of the model: ``f_lin(θ)`` to ``O(h²)``."""
    at = {k: v.detach() for k, v in net.named_parameters()}
    h = 1e-5

    def f(step: float) -> Tensor:
        fresh = copy.deepcopy(net).eval()
        moved = {k: at[k] + step * (theta[k] - at[k]) for k in at}
        return functional_call(fresh, moved, (x,))

    with torch.no_grad():
        return f(0.0) + (f(h) - f(-h)) / (2 * h)


def _explicit(net: nn.Module, theta: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(f_lin(θ), J(θ_t))`` from the explicit Jacobian ``(n·c, p)`` by ordinary autograd."""
    names = [k for k, _ in net.named_parameters()]
    at = [net.get_parameter(k).detach() for k in names]
    flat = torch.cat([t.flatten() for t in at])
    sizes = [t.numel() for t in at]

    def f(v: Tensor) -> Tensor:
        parts = dict(
            zip(names, (p.view_as(t) for p, t in zip(v.split(sizes), at, strict=True)), strict=True)
        )
        return functional_call(copy.deepcopy(net).eval(), parts, (x,)).flatten()

    jac = torch.autograd.functional.jacobian(f, flat)
    delta = torch.cat([(theta[k] - net.get_parameter(k)).detach().flatten() for k in names])
    return (f(flat) + jac @ delta).view(x.shape[0], -1), jac


@pytest.mark.parametrize("fn", list(FUNCTIONS))
@pytest.mark.parametrize("model", list(MODELS))
def test_a_custom_function_gets_the_jacobian_of_its_backward(model: str, fn: str) -> None:
    net, x = function_model(model, fn)
    lin, theta = _moved(net)
    out = lin(x)
    expected, jac = _explicit(net, theta, x)
    assert rel(out.detach(), expected) < 1e-10
    if fn != "straight_through":  # whose derivative is zero, and its backward the identity
        assert rel(out.detach(), _finite_differences(net, theta, x)) < 1e-8
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    (w * out).sum().backward()
    grad = torch.cat([p.grad.flatten() for p in lin.parameters()])  # type: ignore[union-attr]
    assert rel(grad, jac.T @ w.flatten()) < 1e-10
    with torch.no_grad():
        assert rel(lin(x), expected) < 1e-10
    with torch.inference_mode():
        assert rel(lin(x), expected) < 1e-10


class Once(torch.autograd.Function):
    """``x·|x|`` with a backward that cannot be differentiated again."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(x)
        return x * x.abs()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (x,) = ctx.saved_tensors
        return 2 * grad * x.abs()


def test_a_function_whose_backward_is_once_differentiable_is_refused_by_name() -> None:
    torch.manual_seed(0)
    lin, _ = _moved(Activated(Once).double())
    with pytest.raises(ModelError, match="custom torch.autograd.Function 'Once'") as caught:
        lin(torch.randn(3, 4, dtype=torch.float64))
    assert "jvp staticmethod" in str(caught.value)
    assert "once_differentiable" in str(caught.value)


@pytest.mark.parametrize("name", list(BUFFER_MODELS))
def test_a_buffer_the_forward_pass_updates_stays_at_t(name: str) -> None:
    net, x = buffer_model(name)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lin, theta = _moved(net)
    named = {f"net.{k}": v for k, v in theta.items()}  # Pure keeps the model as .net
    expected = _finite_differences(Pure(net), named, x)
    for _ in range(3):  # each call from the buffers at t
        out = lin(x)
        assert rel(out.detach(), expected) < 1e-8
        out.sum().backward()  # a count the call reads: autograd's in-place check passes
    saved = lin.params_state_dict()
    assert all(torch.equal(saved[k], v) for k, v in before.items() if k not in theta)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("name", list(ATTRIBUTE_MODELS))
def test_a_tensor_attribute_the_forward_pass_updates_stays_at_t(name: str) -> None:
    """A tensor held as a plain attribute (not a registered buffer) that the forward pass updates
    in place or replaces: each call starts from it as it was at t, as the kernels' engines
    evaluate it (test_ntk_tensor_attributes.py). Before, the linearized model's own attribute was
    updated by every call, which moved its linearization point (a running mean drifted)."""
    net, x = attribute_model(name)
    attribute = ATTRIBUTE_MODELS[name][1]
    held = attribute_of(net, attribute).clone()
    lin, theta = _moved(net)
    named = {f"net.{k}": v for k, v in theta.items()}  # Pure keeps the model as .net
    expected = _finite_differences(AttributePure(net), named, x)
    for _ in range(3):  # each call from the attribute at t
        out = lin(x)
        assert rel(out.detach(), expected) < 1e-8
        out.sum().backward()
    assert torch.equal(attribute_of(lin._network, attribute), held)
    assert torch.equal(attribute_of(net, attribute), held)
