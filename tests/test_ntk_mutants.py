"""Behaviour a mutation check of the eNTK engines found unpinned, each against a reference.

The references are independent of the engines: ``torch.func.jacrev`` Jacobians in float64 of tiny
models (``J J^T`` in the layout of each kind), products written out by hand, and finite
differences for the linearized model. Each test names the change to the code that it rules out.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import STEPS, run_fixtures, tiny_spec
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from conetool import ntk, ntk_structured, ntk_tuning, paths
from conetool.linearize import LinearizedModel, linearize
from conetool.ntk import empirical_ntk
from conetool.pipeline import kernels
from conetool.pipeline.resolve import model_for
from conetool.probe import load_probe
from conetool.spec import spec_from_dict
from conetool.store import Store


def jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """``(n, c, p)``: the float64 Jacobian of the eval-mode ``model`` at each example, w.r.t. its
    trainable parameters (``torch.func.jacrev``, one example at a time)."""
    model = model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    consts = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    consts.update(dict(model.named_buffers()))

    def f(p: dict[str, Tensor], example: Tensor) -> Tensor:
        return functional_call(model, (p, consts), (example.unsqueeze(0),)).reshape(-1)

    per = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # name -> (n, c, *shape)
    return torch.cat([t.flatten(2) for t in per.values()], dim=2)


def kernel_of(j1: Tensor, j2: Tensor, kind: str) -> Tensor:
    """The kernel of two Jacobians ``(n1, c, p)``, ``(n2, c, p)`` in the layout of ``kind``."""
    if kind == "trace":
        return torch.einsum("iap,jap->ij", j1, j2)
    if kind == "full":
        return torch.einsum("iap,jbp->iajb", j1, j2)
    return j1.sum(1) @ j2.sum(1).T


def rel(a: Tensor, b: Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def mlp(seed: int = 0, d: int = 4, hidden: int = 5, c: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, c)).double()


# --------------------------------------------------------------------------------------------------
# ntk_schedule: sub-blocks of a panel start at an example


def test_full_kind_sub_blocks_cut_at_examples_when_the_sub_block_size_is_not_a_multiple_of_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rules out counting the examples of a block by its rows (ntk_terms.block_examples): with
    # sub-blocks of 5 rows and 3 rows per example, the factored (kron) terms would be cut inside
    # an example. The structured engine keeps both Linear layers of an MLP as factors.
    monkeypatch.setattr(ntk_tuning, "CPU", dataclasses.replace(ntk_tuning.CPU, sub_rows=5))
    monkeypatch.setattr(
        ntk_structured, "_choose", lambda kind, n, k, t, d_a, d_g, p, pairs=None: "kron"
    )
    model = mlp()
    x = torch.randn(7, 4, dtype=torch.float64)
    kernel = empirical_ntk(model, x, kind="full", device="cpu", method="structured")
    j = jacobian(model, x)
    assert rel(kernel, kernel_of(j, j, "full")) < 1e-12


# --------------------------------------------------------------------------------------------------
# ntk_layer_grads: norm and local layers over tokens, and called more than once


class Scale(nn.Module):
    """A module with a parameter of its own that the structured engine knows nothing of: "local"."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.w = nn.Parameter(1 + 0.3 * torch.randn(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.w


class Tokens(nn.Module):
    """A Linear layer over 3 tokens; a LayerNorm over each token's features and a local module,
    each applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.scale = Scale(6)
        self.out = nn.Linear(18, 2)
        with torch.no_grad():
            self.ln.weight.add_(0.3 * torch.randn(6))
            self.ln.bias.add_(0.3 * torch.randn(6))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.scale(self.ln(self.fc(x.view(-1, 3, 4)))))
        h = torch.tanh(self.scale(self.ln(h)))
        return self.out(h.flatten(1))


def structured_sources(monkeypatch: pytest.MonkeyPatch) -> list[ntk_structured.StructuredRows]:
    """Every StructuredRows the engine builds, in order."""
    made: list[ntk_structured.StructuredRows] = []

    class Recording(ntk_structured.StructuredRows):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(ntk, "StructuredRows", Recording)
    return made


@pytest.mark.parametrize("kind", ["trace", "full", "sum"])
def test_norm_and_local_layers_over_tokens_and_called_twice_stay_on_their_paths(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rules out summing a LayerNorm's per-example gradients over the wrong dimensions (the token
    # dimension left out) and keeping only the last call of a norm or local layer: the set-up's
    # check would then move the layer to the fallback path, still exact but off its own path.
    torch.manual_seed(0)
    model = Tokens().double()
    x = torch.randn(5, 12, dtype=torch.float64)
    made = structured_sources(monkeypatch)
    kernel = empirical_ntk(model, x, kind=kind, device="cpu", method="structured")
    modes = made[-1].modes()
    assert modes["ln"] == "norm" and modes["scale"] == "local"
    assert made[-1].fallback == []
    j = jacobian(model, x)
    assert rel(kernel, kernel_of(j, j, kind)) < 1e-12


# --------------------------------------------------------------------------------------------------
# ntk: the model's buffers are not modified


class Counting(nn.Module):
    """An MLP that counts the examples it sees in a buffer, in place, in eval mode too."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.register_buffer("seen", torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        self.seen.add_(x.shape[0])
        return self.net(x)


def test_a_buffer_the_forward_pass_updates_in_place_is_left_as_it_was() -> None:
    # Rules out handing the engine the model's own buffers (not copies): the documented promise
    # is that the model's parameters and buffers are not modified.
    model = Counting()
    x = torch.randn(4, 4, dtype=torch.float64)
    kernel = empirical_ntk(model, x, device="cpu", method="structured")
    assert model.seen.item() == 0
    j = jacobian(model.net, x)
    assert rel(kernel, kernel_of(j, j, "trace")) < 1e-12


# --------------------------------------------------------------------------------------------------
# linearize: f_lin(θ) = f(θ_t) + J(θ_t)(θ − θ_t), against central finite differences of f


class RootParameter(nn.Module):
    """A parameter of the model itself (top level), beside a child module's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(x @ self.w))


def finite_difference_f_lin(
    model: nn.Module, theta: dict[str, Tensor], x: Tensor, h: float = 1e-5
) -> Tensor:
    """``f(θ_t) + (f(θ_t + hΔ) − f(θ_t − hΔ)) / 2h`` with ``Δ = θ − θ_t``: ``f_lin(θ)`` to
    ``O(h²)``, from the network alone (float64)."""
    at = {k: v.detach() for k, v in model.named_parameters()}
    delta = {k: theta[k].detach() - at[k] for k in at}

    def f(step: float) -> Tensor:
        moved = {k: at[k] + step * delta[k] for k in at}
        return functional_call(model, moved, (x,))

    with torch.no_grad():
        return f(0.0) + (f(h) - f(-h)) / (2 * h)


def moved_linearization(model: nn.Module) -> tuple[LinearizedModel, dict[str, Tensor]]:
    lin = linearize(model)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return lin, {k: v.detach().clone() for k, v in lin.named_parameters()}


def test_f_lin_under_inference_mode_is_f_lin() -> None:
    # Rules out the dual-number path under torch.inference_mode(), where dual tensors carry no
    # tangent: f_lin would silently be f(θ_t).
    torch.manual_seed(0)
    model = mlp().eval()
    lin, theta = moved_linearization(model)
    x = torch.randn(6, 4, dtype=torch.float64)
    with torch.inference_mode():
        got = lin(x)
    assert rel(got, finite_difference_f_lin(model, theta, x)) < 1e-8


def test_a_conversion_that_replaces_top_level_parameters_keeps_f_lin_and_the_state_dict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rules out the network keeping the old top-level Parameter objects after a conversion that
    # replaces them (what .to() does between devices, here forced on the CPU with torch's
    # overwrite flag): params_state_dict(), the network's own state dict, would hold stale values.
    torch.manual_seed(0)
    model = RootParameter().eval()
    lin = linearize(model)
    monkeypatch.setattr(torch.__future__, "_overwrite_module_params_on_conversion", True)
    lin = lin.double()
    assert lin.w.dtype == torch.float64
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theta = {k: v.detach().clone() for k, v in lin.named_parameters()}
    x = torch.randn(5, 3, dtype=torch.float64)
    out = lin(x)
    assert rel(out, finite_difference_f_lin(model.double(), theta, x)) < 1e-8
    out.sum().backward()
    assert lin.w.grad is not None and float(lin.w.grad.abs().sum()) > 0
    saved = lin.params_state_dict()
    assert saved.keys() == theta.keys()
    assert all(torch.equal(saved[k], theta[k]) for k in theta)


# --------------------------------------------------------------------------------------------------
# kernels --eval-size: K(eval, probe) of the full kind, on a network with two hidden layers

trained, run = run_fixtures(tiny_spec(widths=[5, 4]))


def test_the_full_eval_kernel_keeps_the_logits_of_eval_and_probe_apart(run, tmp_path):  # type: ignore[no-untyped-def]
    # Rules out a stored K(eval, probe) whose logit indices are swapped, K[i, b, j, a]. With one
    # hidden layer (tiny_run.SPEC) the full cross kernel is symmetric in the two logits (each
    # hidden unit's weights reach one unit), so the swap shows only with two hidden layers.
    root = tmp_path / "s"
    kernels(run, store=root, dtype="float64", device="cpu", kind="full", eval_size=5)
    store = Store.open(root)
    probe = load_probe(paths.probe(root))
    evaluated = load_probe(paths.eval_set(root))
    step = STEPS[-1]
    model = model_for(spec_from_dict(tiny_spec(widths=[5, 4]))).double().eval()
    model.load_state_dict(load_file(str(paths.checkpoint(run, step))))
    j_eval = jacobian(model, evaluated.inputs.double())
    j_probe = jacobian(model, probe.inputs.double())
    reference = kernel_of(j_eval, j_probe, "full")
    swapped = reference.permute(0, 3, 2, 1)
    assert rel(swapped, reference) > 1e-3  # the model tells the two layouts apart
    assert rel(store.load_eval_kernel(step), reference) < 1e-12
