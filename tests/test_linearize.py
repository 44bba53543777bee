"""The linearized model against float64 references: the network itself (torch.func.functional_call
on an eval-mode copy), explicit Jacobians (torch.autograd.functional.jacobian), second directional
derivatives (nested torch.func.jvp) and standard training of a model that is linear in θ."""

from __future__ import annotations

import copy
import importlib
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_ntk_hidden_paths import Attention
from torch import Tensor, nn
from torch.func import functional_call

from conetool.attention import composite_attention
from conetool.errors import ModelError
from conetool.linearize import LinearizedModel, f0_and_jvp, linearize
from conetool.models import build_model
from conetool.spec import ModelSpec


class TinyMLP(nn.Module):
    """Linear -> tanh -> dropout -> linear, times a top-level scale, plus a top-level buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(7, 3)
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.register_buffer("shift", torch.linspace(-0.2, 0.3, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.fc2(self.drop(torch.tanh(self.fc1(x)))) + self.shift


class ConvBN(nn.Module):
    """conv -> BN -> act -> conv -> BN -> act -> linear, on (batch, 2, 6, 6) inputs."""

    def __init__(self, act: str = "tanh") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 2 * 2, 3)
        self.act = getattr(torch, act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class TinyResNet(nn.Module):
    """conv -> BN -> act, one residual block (conv-BN-act-conv-BN + identity), global mean, linear."""

    def __init__(self, act: str = "tanh") -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.ModuleDict(
            {
                "conv1": nn.Conv2d(4, 4, 3, padding=1, bias=False),
                "bn1": nn.BatchNorm2d(4),
                "conv2": nn.Conv2d(4, 4, 3, padding=1, bias=False),
                "bn2": nn.BatchNorm2d(4),
            }
        )
        self.fc = nn.Linear(4, 3)
        self.act = getattr(torch, act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn(self.conv(x)))
        b = self.block
        res = b["bn2"](b["conv2"](self.act(b["bn1"](b["conv1"](out)))))
        out = self.act(out + res)
        return self.fc(out.mean(dim=(2, 3)))


class Tied(nn.Module):
    """Two square layers sharing one weight (named_parameters lists it once)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class FixedFeatures(nn.Module):
    """f(x; θ) = W φ(x) + b with φ = tanh(frozen linear): linear in θ = (W, b)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(5, 16)
        self.features.requires_grad_(False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.features(x)))


INPUTS = {
    "mlp": (5,),
    "convbn": (2, 6, 6),
    "resnet": (2, 6, 6),
    "resnet_relu": (2, 6, 6),
    "attention": (4, 3),
}


def _build(name: str, seed: int = 0) -> nn.Module:
    """A float64 model; BatchNorm with non-trivial affine parameters and running statistics."""
    torch.manual_seed(seed)
    model = {
        "mlp": TinyMLP,
        "convbn": ConvBN,
        "resnet": TinyResNet,
        "resnet_relu": lambda: TinyResNet("relu"),
        "attention": Attention,  # eval mode takes the fused fast path: no forward-mode AD
    }[name]().double()
    if name not in ("mlp", "attention"):
        model.train()
        with torch.no_grad():
            for _ in range(3):  # running statistics and num_batches_tracked move
                model(1.5 * torch.randn(8, *INPUTS[name], dtype=torch.float64) + 0.4)
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.3, 0.3)
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _inputs(name: str, n: int = 4, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *INPUTS[name], generator=gen, dtype=torch.float64)


class Reference:
    """f(x; θ) of an eval-mode copy of the model as a function of the flat trainable vector."""

    def __init__(self, model: nn.Module) -> None:
        self.net = copy.deepcopy(model).eval()
        self.names = [n for n, p in self.net.named_parameters() if p.requires_grad]
        self.shapes = [self.net.get_parameter(n).shape for n in self.names]
        self.theta_t = torch.cat([self.net.get_parameter(n).detach().flatten() for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        sizes = [math.prod(s) for s in self.shapes]
        parts = torch.split(flat, sizes)
        return {n: part.view(s) for n, part, s in zip(self.names, parts, self.shapes, strict=True)}

    def f(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.net, self.unflatten(flat), (x,))

    def jacobian(self, flat: Tensor, x: Tensor) -> Tensor:
        """Explicit J at ``flat``: shape (n * c, p)."""
        return torch.autograd.functional.jacobian(lambda v: self.f(v, x).flatten(), flat)


def _set_theta(lin: LinearizedModel, ref: Reference, flat: Tensor) -> None:
    with torch.no_grad():
        for name, value in ref.unflatten(flat).items():
            lin.get_parameter(name).copy_(value)


def _flat_grad(lin: LinearizedModel, ref: Reference) -> Tensor:
    return torch.cat([lin.get_parameter(n).grad.flatten() for n in ref.names])


def _direction(ref: Reference, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(ref.theta_t.shape, generator=gen, dtype=torch.float64)


ALL = ["mlp", "convbn", "resnet", "resnet_relu", "attention"]
SMOOTH = ["mlp", "convbn", "resnet", "attention"]


@pytest.mark.parametrize("name", ALL)
def test_value_at_theta_t_is_the_eval_mode_network(name: str) -> None:
    model = _build(name)
    x = _inputs(name)
    lin = linearize(model)
    expected = model.eval()(x)
    torch.testing.assert_close(lin(x), expected, rtol=0, atol=1e-12)
    lin.train()  # only the flag: the network stays in eval mode
    torch.testing.assert_close(lin(x), expected, rtol=0, atol=1e-12)
    assert [n for n, _ in lin.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert list(lin.state_dict()) == list(model.state_dict())


@pytest.mark.parametrize("name", SMOOTH)
def test_second_order_agreement_with_the_network(name: str) -> None:
    """f(θ_t + εd) − f_lin(θ_t + εd) = ε² q + O(ε³), q = ½ dᵀ∇²f d from nested jvp."""
    model = _build(name)
    x = _inputs(name)
    ref = Reference(model)
    lin = linearize(model)
    d = _direction(ref, seed=2)
    d = d / d.norm() * ref.theta_t.norm() * 0.5  # a direction on the scale of θ_t

    def first(v: Tensor) -> Tensor:
        return torch.func.jvp(lambda u: ref.f(u, x), (v,), (d,))[1]

    with composite_attention():  # forward mode through attention: its composite formula
        q = 0.5 * torch.func.jvp(first, (ref.theta_t,), (d,))[1]
    assert q.abs().max() > 1e-3  # the network is not linear in θ along d
    errors = []
    for eps in (1e-2, 1e-3, 1e-4):
        theta = ref.theta_t + eps * d
        _set_theta(lin, ref, theta)
        with torch.no_grad():
            err = ref.f(theta, x) - lin(x)
        errors.append(err.abs().max().item())
        rel = (err / eps**2 - q).norm() / q.norm()
        assert rel < 10 * eps, (eps, rel.item())
    # Finite differences: the error drops by ε² (100x per decade), not by ε (first order).
    assert 60 < errors[0] / errors[1] < 160
    assert 60 < errors[1] / errors[2] < 160


@pytest.mark.parametrize("name", ALL)
def test_exactly_affine_in_theta(name: str) -> None:
    model = _build(name)
    x = _inputs(name)
    ref = Reference(model)
    lin = linearize(model)
    d1, d2 = _direction(ref, 3), _direction(ref, 4)

    def at(theta: Tensor, fn: str) -> Tensor:
        if fn == "f":
            return ref.f(theta, x)
        _set_theta(lin, ref, theta)
        with torch.no_grad():
            return lin(x)

    for fn in ("lin", "f"):
        base = at(ref.theta_t, fn)
        one = at(ref.theta_t + d1, fn) - base
        two = at(ref.theta_t + d2, fn) - base
        both = at(ref.theta_t + 0.7 * d1 - 1.3 * d2, fn) - base
        gap = (both - (0.7 * one - 1.3 * two)).abs().max().item()
        if fn == "lin":
            assert gap < 1e-12 * max(1.0, both.abs().max().item())
        else:
            assert gap > 1e-2  # the network itself is not affine: the check can fail


@pytest.mark.parametrize("name", ALL)
def test_gradient_is_jacobian_at_theta_t_transposed(name: str) -> None:
    model = _build(name)
    x = _inputs(name)
    ref = Reference(model)
    lin = linearize(model)
    theta = ref.theta_t + 0.3 * _direction(ref, 5)  # away from θ_t
    _set_theta(lin, ref, theta)
    out = lin(x)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    (w * out).sum().backward()
    grad = _flat_grad(lin, ref)
    expected = ref.jacobian(ref.theta_t, x).T @ w.flatten()
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    # ... and not J(θ)ᵀ w, the gradient of the network at θ.
    assert (ref.jacobian(theta, x).T @ w.flatten() - expected).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["mlp", "convbn"])
def test_loss_gradient_matches_central_finite_differences(name: str) -> None:
    """The gradient that training uses, of L(θ) = cross-entropy(f_lin(x; θ), y) at a θ away from
    θ_t (the module in training mode: dropout and BatchNorm as it trains), against central
    differences of L evaluated through the linearized model itself, in every coordinate."""
    model = _build(name)
    x = _inputs(name, n=6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ref = Reference(model)
    lin = linearize(model).train()
    theta = ref.theta_t + 0.3 * _direction(ref, 10)
    _set_theta(lin, ref, theta)
    F.cross_entropy(lin(x), y).backward()
    grad = _flat_grad(lin, ref)

    def loss(flat: Tensor) -> float:
        _set_theta(lin, ref, flat)
        with torch.no_grad():
            return float(F.cross_entropy(lin(x), y))

    h = 1e-5
    fd = torch.empty_like(theta)
    for i in range(theta.numel()):
        step = torch.zeros_like(theta)
        step[i] = h
        fd[i] = (loss(theta + step) - loss(theta - step)) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)
    # the network's own gradient at θ differs: the check can tell J(θ)ᵀ from J(θ_t)ᵀ
    own = torch.func.grad(lambda v: F.cross_entropy(ref.f(v, x), y))(theta)
    assert (own - fd).abs().max() > 1e-3


def test_tied_weights_count_once() -> None:
    torch.manual_seed(0)
    model = Tied().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    ref = Reference(model)
    lin = linearize(model)
    assert ref.names == ["a.weight", "a.bias", "b.bias", "head.weight", "head.bias"]
    assert lin.b.weight is lin.a.weight
    theta = ref.theta_t + 0.3 * _direction(ref, 7)
    _set_theta(lin, ref, theta)
    out = lin(x)
    expected_out = ref.f(ref.theta_t, x) + (
        ref.jacobian(ref.theta_t, x) @ (theta - ref.theta_t)
    ).view(out.shape)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    out.sum().backward()
    expected = ref.jacobian(ref.theta_t, x).T @ torch.ones(out.numel(), dtype=torch.float64)
    torch.testing.assert_close(_flat_grad(lin, ref), expected, rtol=1e-10, atol=1e-12)


def test_training_a_model_linear_in_theta_matches_standard_training() -> None:
    torch.manual_seed(0)
    model = FixedFeatures().double()
    standard = copy.deepcopy(model)
    lin = linearize(model)
    assert list(lin.anchor_parameters()) == ["head.weight", "head.bias"]
    opt_std = torch.optim.SGD(standard.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    opt_lin = torch.optim.SGD(lin.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(8)
    for _ in range(10):
        x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=gen)
        for net, opt in ((standard, opt_std), (lin, opt_lin)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    moved = (lin.head.weight - model.head.weight).abs().max()
    assert moved > 0.1  # training went somewhere
    for (name, p_std), (name_lin, p_lin) in zip(
        standard.named_parameters(), lin.named_parameters(), strict=True
    ):
        assert name == name_lin
        torch.testing.assert_close(p_lin, p_std, rtol=0, atol=1e-12)
    assert lin.features.weight.grad is None  # frozen parameters are constants
    torch.testing.assert_close(lin.features.weight, model.features.weight, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["convbn", "resnet_relu"])
def test_batchnorm_uses_running_statistics_at_t_and_never_updates_them(name: str) -> None:
    model = _build(name)
    x = 2.0 * _inputs(name, n=6) - 0.5
    ref = Reference(model)
    lin = linearize(model)
    before = {k: v.clone() for k, v in lin.named_buffers()}
    theta = ref.theta_t + 0.1 * _direction(ref, 9)
    _set_theta(lin, ref, theta)
    lin.train()
    out_train = lin(x)
    out_train.sum().backward()
    for key, value in lin.named_buffers():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert all(not m.training for m in lin.modules() if m is not lin)
    out_eval = lin.eval()(x)
    torch.testing.assert_close(out_train, out_eval, rtol=0, atol=0)
    expected = ref.f(ref.theta_t, x) + (ref.jacobian(ref.theta_t, x) @ (theta - ref.theta_t)).view(
        out_eval.shape
    )
    torch.testing.assert_close(out_eval, expected, rtol=1e-10, atol=1e-12)
    # Even a submodule switched to training mode by hand is evaluated in eval mode.
    lin.bn1.train() if name == "convbn" else lin.bn.train()
    torch.testing.assert_close(lin(x), out_eval, rtol=0, atol=0)


def test_dropout_is_off_in_training_mode() -> None:
    model = _build("mlp")
    x = _inputs("mlp", n=32)
    lin = linearize(model).train()
    torch.testing.assert_close(lin(x), lin(x), rtol=0, atol=0)
    torch.testing.assert_close(lin(x), model.eval()(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "resnet_relu"])
def test_params_state_dict_is_a_checkpoint_of_the_architecture(name: str) -> None:
    model = _build(name)
    x = _inputs(name)
    ref = Reference(model)
    lin = linearize(model)
    theta = ref.theta_t + 0.2 * _direction(ref, 10)
    _set_theta(lin, ref, theta)
    state = lin.params_state_dict()
    fresh = _build(name, seed=123)
    fresh.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        if key in ref.names:
            torch.testing.assert_close(state[key], ref.unflatten(theta)[key], rtol=0, atol=0)
        else:  # buffers (and frozen parameters) at t
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    torch.testing.assert_close(fresh.eval()(x), ref.f(theta, x), rtol=0, atol=1e-12)
    # Resuming: linearize the model at t again and load θ.
    resumed = linearize(model)
    resumed.load_state_dict(state, strict=True)
    torch.testing.assert_close(resumed(x), lin(x), rtol=0, atol=0)
    assert (
        state["fc2.weight" if name == "mlp" else "fc.weight"].data_ptr()
        != lin.get_parameter("fc2.weight" if name == "mlp" else "fc.weight").data_ptr()
    )


def test_model_is_copied_not_modified() -> None:
    model = _build("convbn")
    model.train()
    snapshot = copy.deepcopy(model.state_dict())
    lin = linearize(model)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    F.cross_entropy(lin(_inputs("convbn")), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert model.training and model.bn1.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshot[key], rtol=0, atol=0)


def test_dtype_conversion_moves_anchor_and_top_level_tensors() -> None:
    torch.manual_seed(0)
    model32 = TinyMLP().eval()
    lin = linearize(model32).double()
    assert all(t.dtype == torch.float64 for t in lin.anchor_parameters().values())
    assert lin._network.shift.dtype == torch.float64
    assert lin._network.scale is lin.scale
    model = copy.deepcopy(model32).double()
    ref = Reference(model)
    x = _inputs("mlp")
    theta = ref.theta_t + 0.2 * _direction(ref, 11)
    _set_theta(lin, ref, theta)
    expected = ref.f(ref.theta_t, x) + (ref.jacobian(ref.theta_t, x) @ (theta - ref.theta_t)).view(
        -1, 3
    )
    torch.testing.assert_close(lin(x), expected, rtol=1e-10, atol=1e-12)


def test_torch_func_transforms_see_the_constant_jacobian() -> None:
    """jacrev (as the eNTK engine uses) and jvp of f_lin at θ ≠ θ_t give J(θ_t)."""
    model = _build("resnet")
    x = _inputs("resnet", n=3)
    ref = Reference(model)
    lin = linearize(model)
    theta = ref.theta_t + 0.3 * _direction(ref, 12)
    params = ref.unflatten(theta)

    def flat_lin(flat: Tensor) -> Tensor:
        return functional_call(lin, ref.unflatten(flat), (x,)).flatten()

    expected = ref.jacobian(ref.theta_t, x)
    torch.testing.assert_close(torch.func.jacrev(flat_lin)(theta), expected, rtol=1e-10, atol=1e-12)
    d = _direction(ref, 13)
    out, tangent = torch.func.jvp(flat_lin, (theta,), (d,))  # the torch.func fallback inside
    torch.testing.assert_close(tangent, expected @ d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, flat_lin(theta), rtol=0, atol=1e-12)
    assert set(params) == set(lin.anchor_parameters())


def test_input_gradient_is_that_of_f_lin() -> None:
    model = _build("mlp")
    ref = Reference(model)
    lin = linearize(model)
    theta = ref.theta_t + 0.3 * _direction(ref, 14)
    _set_theta(lin, ref, theta)
    x = _inputs("mlp").requires_grad_()

    def f_lin_ref(inp: Tensor) -> Tensor:
        dt = theta - ref.theta_t
        return (
            ref.f(ref.theta_t, inp)
            + torch.func.jvp(lambda v: ref.f(v, inp), (ref.theta_t,), (dt,))[1]
        )

    lin(x).sum().backward()
    expected = torch.autograd.grad(f_lin_ref(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=1e-12)


def test_f0_and_jvp_and_structured_outputs() -> None:
    torch.manual_seed(0)

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.const = nn.Linear(3, 2)  # frozen: contributes no tangent
            self.const.requires_grad_(False)

        def forward(self, x: Tensor) -> dict[str, object]:
            return {"logits": torch.tanh(self.fc(x)), "aux": self.const(x), "tag": "two"}

    model = TwoHeads().double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    primals = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    tangents = {n: torch.ones_like(p) for n, p in primals.items()}
    f0, tangent = f0_and_jvp(model, primals, tangents, (x,))
    z = model.fc(x)
    torch.testing.assert_close(f0["logits"], torch.tanh(z), rtol=0, atol=0)
    dz = x.sum(dim=1, keepdim=True) + 1.0  # d(xWᵀ + b) along all-ones W and b
    torch.testing.assert_close(tangent["logits"], (1 - torch.tanh(z) ** 2) * dz, rtol=1e-12, atol=0)
    torch.testing.assert_close(tangent["aux"], torch.zeros(4, 2, dtype=torch.float64))
    lin = linearize(model)
    out = lin(x)
    assert out["tag"] == "two"
    torch.testing.assert_close(out["logits"], f0["logits"], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arch", "shape", "options"),
    [("lenet5", (1, 8, 8), {}), ("resnet20", (3, 8, 8), {"width": 0.25})],
)
def test_builtin_models(arch: str, shape: tuple[int, ...], options: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, num_classes=10, options=options), shape).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        model(x)  # training mode: BatchNorm running statistics move
    model.eval()
    lin = linearize(model)
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=1e-12)
    assert [n for n, _ in lin.named_parameters()] == [n for n, _ in model.named_parameters()]
    ref = Reference(model)
    theta = ref.theta_t + 1e-3 * _direction(ref, 15)
    _set_theta(lin, ref, theta)
    dt = theta - ref.theta_t
    tangent = torch.func.jvp(lambda v: ref.f(v, x), (ref.theta_t,), (dt,))[1]
    torch.testing.assert_close(lin(x), model(x) + tangent, rtol=1e-12, atol=1e-12)
    fresh = build_model(ModelSpec(arch=arch, num_classes=10, options=options), shape).double()
    fresh.load_state_dict(lin.params_state_dict(), strict=True)


def test_not_a_module_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="needs a torch.nn.Module"):
        linearize(lambda x: x)  # type: ignore[arg-type]


def test_reserved_top_level_name_is_a_model_error() -> None:
    model = nn.Module()
    model.add_module("_conetool_anchor", nn.Linear(2, 2))
    with pytest.raises(ModelError, match="_conetool_anchor"):
        linearize(model)


@pytest.mark.parametrize("kind", ["parameter", "buffer"])
def test_reserved_top_level_parameter_or_buffer_name_is_a_model_error(kind: str) -> None:
    """The reserved names are refused on any top-level attribute, a buffer as much as a child
    module (mutation check: buffers left out of the clash test, which then failed with
    torch's KeyError "attribute 'params_state_dict' already exists")."""
    model = nn.Sequential(nn.Linear(2, 2))
    if kind == "parameter":
        model.register_parameter("params_state_dict", nn.Parameter(torch.zeros(2)))
    else:
        model.register_buffer("params_state_dict", torch.zeros(2))
    with pytest.raises(ModelError, match="params_state_dict"):
        linearize(model)


class _FrozenScale(nn.Module):
    """``scale * fc(x)`` with a frozen top-level parameter ``scale``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.tensor(1.5), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.fc(x)


def test_a_frozen_parameter_swapped_in_by_functional_call_is_the_one_used() -> None:
    """Frozen parameters are constants read from the linearized model at each call, so
    torch.func.functional_call(lin, {"scale": ...}) evaluates f_lin with that value (at θ = θ_t:
    f(x; θ_t) with the new scale). (mutation check: frozen parameters not passed on, so the
    network's own top-level tensor was used instead of the swapped one)"""
    torch.manual_seed(0)
    model = _FrozenScale()
    lin = linearize(model)
    x = torch.randn(4, 3)
    got = functional_call(lin, {"scale": torch.tensor(3.0)}, (x,))
    torch.testing.assert_close(got, 3.0 * model.fc(x))
    torch.testing.assert_close(lin(x), 1.5 * model.fc(x))


def test_a_forward_ad_level_error_falls_back_to_torch_func_jvp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """f0_and_jvp takes torch.func.jvp where the dual-number pass cannot run: a RuntimeError
    about forward AD, in either of torch's wordings ("Nested forward mode AD is not supported",
    or forward_ad.enter_dual_level's "Entering a new forward AD level but the current level is
    not valid"); any other RuntimeError propagates. (mutation check: only the first wording
    fell back)"""
    module = importlib.import_module("conetool.linearize")  # conetool.linearize is also a function
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    primals = {name: p.detach() for name, p in net.named_parameters()}
    tangents = {name: torch.randn_like(p) for name, p in primals.items()}
    x = torch.randn(6, 4, dtype=torch.float64)
    # J t from the explicit Jacobian (6, 3, *shape) of each parameter, in float64
    jacobian = torch.func.jacrev(lambda p: functional_call(net, p, (x,)))(primals)
    want_jt = sum((jacobian[name].flatten(2) @ tangents[name].flatten()) for name in primals)

    def failing(message: str) -> Callable[..., None]:
        def dual(*args: object) -> None:
            raise RuntimeError(message)

        return dual

    for message in (
        "Nested forward mode AD is not supported at the moment",
        "Entering a new forward AD level but the current level is not valid. Make sure you did "
        "not modify it directly.",
    ):
        monkeypatch.setattr(module, "_f0_and_jvp_dual", failing(message))
        f, jt = f0_and_jvp(net, primals, tangents, (x,))
        torch.testing.assert_close(f, net(x), rtol=0, atol=1e-14)
        torch.testing.assert_close(jt, want_jt, rtol=0, atol=1e-12)
    monkeypatch.setattr(module, "_f0_and_jvp_dual", failing("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        f0_and_jvp(net, primals, tangents, (x,))


class Structured(nn.Module):
    """tanh(fc(x)) and a frozen head, returned as a dict (with a non-tensor) or as a tuple."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(3, 2)
        self.const = nn.Linear(3, 2)
        self.const.requires_grad_(False)

    def forward(self, x: Tensor) -> object:
        logits, aux = torch.tanh(self.fc(x)), self.const(x)
        return (
            {"logits": logits, "aux": aux, "tag": "two"} if self.kind == "dict" else (logits, aux)
        )


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_structured_outputs_move_with_theta(kind: str) -> None:
    # reference: f_lin = tanh(z0) + (1 - tanh(z0)^2) (x dWᵀ + db), z0 = x W0ᵀ + b0, by hand
    torch.manual_seed(0)
    model = Structured(kind).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    w0, b0 = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
    lin = linearize(model)
    dw = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    db = torch.tensor([0.4, -0.7], dtype=torch.float64)
    with torch.no_grad():
        lin.fc.weight.add_(dw)
        lin.fc.bias.add_(db)
    out = lin(x)
    logits, aux = (out["logits"], out["aux"]) if kind == "dict" else out
    t0 = torch.tanh(x @ w0.T + b0)
    expected = t0 + (1 - t0**2) * (x @ dw.T + db)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    assert (expected - t0).abs().max() > 0.1  # θ moved far enough for the check to fail
    torch.testing.assert_close(aux, x @ model.const.weight.T + model.const.bias, rtol=0, atol=1e-15)
    if kind == "dict":
        assert out["tag"] == "two"
    else:
        assert isinstance(out, tuple) and len(out) == 2


class WithScratch(nn.Module):
    """A top-level non-persistent buffer (not in state_dict) next to a persistent one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("offset", torch.tensor([0.5, -0.5]))
        self.register_buffer("mask", torch.tensor([1.0, 2.0]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask * self.fc(x) + self.offset


def test_non_persistent_buffers_stay_out_of_the_state_dict() -> None:
    # reference: the original model's own state_dict() and named_buffers()
    torch.manual_seed(0)
    model = WithScratch().double().eval()
    lin = linearize(model)
    assert list(model.state_dict()) == ["offset", "fc.weight", "fc.bias"]
    assert list(lin.state_dict()) == list(model.state_dict())
    buffers = [n for n, _ in lin.named_buffers() if not n.startswith("_conetool_anchor.")]
    assert buffers == [n for n, _ in model.named_buffers()] == ["offset", "mask"]
    lin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=1e-15)
