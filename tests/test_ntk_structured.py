"""The structured eNTK engine (``method="structured"``) against an explicit float64 Jacobian.

Every model is checked per kind against ``reference`` (one ``autograd.grad`` per example and logit)
and, where cheap, against the reference engine (``method="jacobian"``). The per-layer choices
(kron, dense, local, fallback) are watched through the :class:`StructuredRows` instance the engine
builds, and the internal paths (FactoredGrad products with positions and their slicing, BLAS
syrk, forced kron/dense, the blocked schedule) are forced with monkeypatches so that small models reach them.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_ntk import MODELS, Counter, budget_named, explicit_jacobian, record_plans, reference, rel
from torch import nn
from torch.func import functional_call, jacrev

from conetool import ntk, ntk_reference, ntk_schedule, ntk_structured, ntk_terms
from conetool.errors import ConetoolError
from conetool.ntk import MemoryBudgetError, empirical_ntk
from conetool.ntk_saved import saved_activations
from conetool.ntk_structured import StructuredRows

KINDS = ("trace", "full", "sum")
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


def structured(model: nn.Module, x: torch.Tensor, kind: str, **kwargs: object) -> torch.Tensor:
    return empirical_ntk(model, x, kind=kind, device="cpu", method="structured", **kwargs)


def record_sources(monkeypatch: pytest.MonkeyPatch) -> list[StructuredRows]:
    """Every StructuredRows the engine builds, in order."""
    made: list[StructuredRows] = []

    class Recording(StructuredRows):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(ntk, "StructuredRows", Recording)
    return made


def _perturb(model: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics for every norm layer."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return model


# --------------------------------------------------------------------------------------------------
# New models


class TwiceLinear(nn.Module):
    """(a) One Linear module called twice in sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class FrozenMiddle(nn.Module):
    """(b) A frozen layer in the middle, and layers with only their bias trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.frozen = nn.Linear(6, 6).requires_grad_(False)
        self.bias_only = nn.Linear(6, 4)
        self.bias_only.weight.requires_grad_(False)
        self.conv_bias = nn.Conv1d(1, 2, 3)
        self.conv_bias.weight.requires_grad_(False)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bias_only(torch.tanh(self.frozen(torch.tanh(self.a(x))))))
        h = torch.tanh(self.conv_bias(h.unsqueeze(1))).mean(dim=(1,))  # (b, 2)
        return self.out(torch.cat([h, h], dim=1))


class ConvNet(nn.Module):
    """(c) One convolution of a given configuration, a nonlinearity, and a Linear head."""

    def __init__(self, conv: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = conv
        with torch.no_grad():
            features = conv(torch.zeros(1, *shape)).numel()
        self.fc = nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


CONVS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "groups2_stride2": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (4, 5, 5)),
    "dilation2": (lambda: nn.Conv2d(2, 3, 3, dilation=2, padding=1), (2, 6, 6)),
    "reflect": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 4, 5)),
    "circular": (
        lambda: nn.Conv2d(2, 3, (3, 2), padding=(1, 2), padding_mode="circular"),
        (2, 4, 4),
    ),
    "same_even_kernel": (lambda: nn.Conv2d(2, 3, 4, padding="same"), (2, 5, 5)),
    "same_dilated": (lambda: nn.Conv2d(2, 2, 3, padding="same", dilation=2, bias=False), (2, 5, 4)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (3, 9)),
    "conv1d_groups_circular": (
        lambda: nn.Conv1d(4, 4, 3, groups=4, padding=1, padding_mode="circular"),
        (4, 6),
    ),
}


def conv_model(name: str) -> tuple[Callable[[], nn.Module], tuple[int, ...]]:
    factory, shape = CONVS[name]
    return (lambda: ConvNet(factory(), shape)), shape


class NormMLP(nn.Module):
    """(d) An MLP with LayerNorm and GroupNorm (elementwise affine)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.ln = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 6)
        self.gn = nn.GroupNorm(2, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.ln(self.fc1(x)))
        return self.out(torch.tanh(self.gn(self.fc2(h))))


class Sequence(nn.Module):
    """(e) A Linear on a sequence ``(b, T, d)``, then the mean over ``T``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)).mean(dim=1))


class LearnedScale(nn.Module):
    """A module with its own parameter, used in its forward."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(width) + 0.5)
        self.shift = nn.Parameter(0.1 * torch.randn(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * self.scale) + self.shift * x


class ScaledMLP(nn.Module):
    """(f) A custom parameter module between two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.scale = LearnedScale(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.scale(self.fc(x)))


class Reused(nn.Module):
    """(g) A layer's weight used in its forward and also outside it, by the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x)) + F.linear(torch.sin(x), self.fc.weight)
        return self.out(h)


class RootScale(nn.Module):
    """(f) The model itself holds a parameter (its root module goes "local"), with Linear children."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor(1.3))
        self.fc = nn.Linear(5, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x) * self.temperature)) / self.temperature


class TanhLinear(nn.Linear):
    """A Linear with a custom forward: its weight enters through tanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.tanh(self.weight), self.bias)


class SubclassNet(nn.Module):
    """(h) A subclass of nn.Linear with a custom forward."""

    def __init__(self) -> None:
        super().__init__()
        self.custom = TanhLinear(5, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.custom(x)))


class Gate(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))

    def forward(self, x: torch.Tensor, power: int = 1) -> torch.Tensor:
        return x * torch.sigmoid(self.weight) ** power


class KeywordNet(nn.Module):
    """(i) Modules called with keyword arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.gate = Gate(6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gate(torch.tanh(self.fc(input=x)), power=2))


NEW_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "twice_linear": (TwiceLinear, (5,)),
    "frozen_middle": (FrozenMiddle, (5,)),
    **{f"conv_{name}": conv_model(name) for name in CONVS},
    "norm_mlp": (lambda: _perturb(NormMLP()), (5,)),
    "sequence": (Sequence, (4, 5)),
    "custom_parameter": (ScaledMLP, (5,)),
    "root_parameter": (RootScale, (5,)),
    "reused_weight": (Reused, (5,)),
    "linear_subclass": (SubclassNet, (5,)),
    "keyword_call": (KeywordNet, (5,)),
}


ALL_MODELS = {**MODELS, **NEW_MODELS}


def make(
    factory: Callable[[], nn.Module], shape: tuple[int, ...], n: int = 6, seed: int = 0
) -> tuple[nn.Module, torch.Tensor]:
    """A float64 model in eval mode and inputs ``(n, *shape)``, as test_ntk's ``build`` makes them."""
    torch.manual_seed(seed)
    model = factory().double().eval()
    return model, torch.randn(n, *shape, dtype=torch.float64)


def get(name: str, n: int = 6) -> tuple[nn.Module, torch.Tensor]:
    """A model of test_ntk's zoo or of this file's, by name (the same weights on every call)."""
    return make(*ALL_MODELS[name], n=n)


@functools.cache
def _expected(name: str, n: int) -> dict[str, torch.Tensor]:
    model, x = get(name, n)
    jac = explicit_jacobian(model, x)  # (n, c, p), once for the three kinds
    summed = jac.sum(dim=1)
    return {
        "trace": torch.einsum("iap,jap->ij", jac, jac),
        "full": torch.einsum("iap,jbp->iajb", jac, jac),
        "sum": summed @ summed.T,
    }


def expected(name: str, kind: str, n: int = 6) -> torch.Tensor:
    """The explicit float64 reference kernel of model ``name`` (see test_ntk's ``reference``)."""
    return _expected(name, n)[kind]


# --------------------------------------------------------------------------------------------------
# 1-2. Exactness


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_matches_reference_and_jacobian_engine(name: str, kind: str) -> None:
    model, x = get(name)
    kernel = structured(model, x, kind)
    assert kernel.dtype == torch.float64
    assert kernel.shape == expected(name, kind).shape
    assert rel(kernel, expected(name, kind)) < 1e-10
    jacobian = empirical_ntk(model, x, kind=kind, device="cpu", method="jacobian")
    assert rel(kernel, jacobian) < 1e-12


@pytest.mark.parametrize("name", ["tied", "unused_frozen", "conv_bn", "norm_mlp", "sequence"])
def test_cached_reference_matches_a_jacrev_jacobian(name: str) -> None:
    # The reference of this file (one autograd.grad per example and logit) against a second,
    # independent Jacobian: torch.func.jacrev over the trainable parameters, the whole batch at
    # once. Tied weights are one entry of named_parameters; frozen ones stay in the module.
    model, x = get(name)
    trainable = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(trainable)  # name -> (n, c, *shape)
    n, c = x.shape[0], model(x).shape[1]
    flat = torch.cat([j.reshape(n, c, -1) for j in jac.values()], dim=2)
    assert flat.shape[2] == sum(p.numel() for p in trainable.values())
    summed = flat.sum(dim=1)
    independent = {
        "trace": torch.einsum("iap,jap->ij", flat, flat),
        "full": torch.einsum("iap,jbp->iajb", flat, flat),
        "sum": summed @ summed.T,
    }
    for kind in KINDS:
        assert rel(expected(name, kind), independent[kind]) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(NEW_MODELS))
def test_new_models_match_reference(name: str, kind: str) -> None:
    model, x = get(name)
    kernel = structured(model, x, kind)
    assert kernel.shape == expected(name, kind).shape
    assert rel(kernel, expected(name, kind)) < 1e-10


@pytest.mark.parametrize("n", [1, 2])
def test_one_and_two_examples(n: int) -> None:
    # The gradient check runs on min(n, 2) examples; kron, dense and fallback rows with n < 3.
    model, x = get("tied", n=n)
    for kind in KINDS:
        assert rel(structured(model, x, kind), expected("tied", kind, n=n)) < 1e-10


def test_frozen_parameters_are_fixed_inputs() -> None:
    # Unfreezing the frozen layers changes the kernel: frozen weights really are not in θ.
    model, x = get("frozen_middle")
    model.requires_grad_(True)
    unfrozen = structured(model, x, "trace")
    assert rel(unfrozen, reference(model, x, "trace")) < 1e-10
    assert rel(unfrozen, expected("frozen_middle", "trace")) > 1e-3


@pytest.mark.parametrize("kind", ["trace", "full"])
@pytest.mark.parametrize("name", ["conv_bn", "tied", "norm_mlp", "sequence", "mlp"])
def test_fused_cotangent_copies_give_the_same_kernel(
    name: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Off the CPU, a call with several cotangents fills (g, b, ...) buffers with one fused copy per
    # backward pass (the final layer's expanded cotangent copied on its own), and the rows read
    # them through a transposed view; on the CPU each pass is copied into (b, g, ...). The GPU's
    # way, forced here on the CPU, must give the same numbers, and the plan must count its memory.
    model, x = get(name)
    in_place = structured(model, x, kind)
    fused: list[int] = []
    real_copy = torch._foreach_copy_

    def counting_copy(dest: list[torch.Tensor], src: list[torch.Tensor]) -> None:
        fused.append(len(dest))
        real_copy(dest, src)

    monkeypatch.setattr(torch, "_foreach_copy_", counting_copy)
    monkeypatch.setattr(StructuredRows, "fuses_copies", lambda self: True)
    made = record_sources(monkeypatch)
    kernel = structured(model, x, kind)
    assert torch.equal(kernel, in_place)
    assert rel(kernel, expected(name, kind)) < 1e-10
    assert fused and max(fused) >= 1  # the fused path ran
    source = made[0]
    one, largest = source._cotangent_bytes, source._largest_cotangent_bytes
    assert 0 < largest <= one
    assert source._held_cotangent_bytes(1) == one
    # During the passes one pass in flight, after them one layer output's copy:
    assert source._held_cotangent_bytes(4) == 4 * one + max(one, 4 * largest)
    monkeypatch.undo()
    assert source._held_cotangent_bytes(4) == 5 * one  # four in place, and one pass in flight


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_the_set_up_measures_one_example_from_the_checks_own_pass(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bytes per example come from the check's hooked pass over two examples (one set-up
    # pass, not two), and must be what a pass over one example measures. The kron/dense choice,
    # which depends on n, is fixed so that the layouts of n = 1 and n = 2 compare.
    monkeypatch.setattr(
        ntk_structured, "_choose", lambda kind, n, k, t, d_a, d_g, p, pairs=None: "kron"
    )
    passes = Counter(monkeypatch, StructuredRows, "_record")
    made = record_sources(monkeypatch)
    layouts = []
    for n in (1, 2):
        model, x = get(name, n=n)
        structured(model, x, "trace")
        # The set-up's one hooked pass (run again each time a module called with keywords is
        # unhooked: keyword_call's two), and the rows' (one chunk).
        assert passes.count == (4 if name == "keyword_call" else 2)
        passes.count = 0
        layouts.append(made[-1].layout())
    one, two = layouts
    assert (two.modes, two.fallback, two.c) == (one.modes, one.fallback, one.c)
    assert two.sizes == one.sizes


@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_the_check_at_perturbed_weights_measures_what_the_weights_themselves_give(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check evaluates a perturbed copy of the weights, which its pass saves for the backward
    # pass like the weights themselves: not activations. Its bytes per example must be those
    # of the measurement alone at the model's own weights (the GPU's order measures first and
    # checks after the blocks, forced here; the check measures again).
    monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    made = record_sources(monkeypatch)
    measured = []
    original = StructuredRows.check_later_found_changes

    def measured_first(self: StructuredRows) -> bool:
        measured.append(self.layout())
        return original(self)

    monkeypatch.setattr(StructuredRows, "check_later_found_changes", measured_first)
    model, x = get(name, n=4)
    structured(model, x, "trace")
    before, after = measured[0], made[-1].layout()
    if (before.modes, before.fallback) != (after.modes, after.fallback):
        assert name == "reused_weight"  # the check moved its layers: another layout
        return
    assert after.sizes == before.sizes


def test_saved_activations_share_out_what_holds_the_batch() -> None:
    # A saved tensor that leads with the batch is shared among its examples; one that does not
    # (a per-channel statistic, a non-owned constant) counts whole for each example.
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for batch, expected_bytes in ((1, [32, 192]), (2, [32, 96])):
        with saved_activations([], batch) as seen:
            x * w  # mul saves both factors
        assert sorted(seen.values()) == expected_bytes
    with saved_activations([w], 2) as seen:  # owned storage: not an activation
        x * w
    assert list(seen.values()) == [96]


# --------------------------------------------------------------------------------------------------
# 3. Per-layer choices


def _source(monkeypatch: pytest.MonkeyPatch, model: nn.Module, x: torch.Tensor) -> StructuredRows:
    made = record_sources(monkeypatch)
    structured(model, x, "trace")
    assert len(made) == 1
    return made[0]


class EarlyConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)  # 16 x 16 outputs
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, stride=2)  # 8 x 8
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.tanh(self.conv2(h)).mean(dim=(2, 3)))


class OneByOne(nn.Module):
    """The same 1 x 1-output convolution with and without groups, and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.plain = nn.Conv2d(4, 6, 3)
        self.grouped = nn.Conv2d(4, 6, 3, groups=2)
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (self.plain(x) + self.grouped(x)).flatten(1)  # (b, 6)
        return self.fc(torch.tanh(self.ln(h)))


def test_mlp_layers_are_kron(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("mlp")
    source = _source(monkeypatch, model, x)
    assert source.modes() == {"0": "kron", "2": "kron"}
    assert source.fallback == []


def test_large_early_convolutions_are_dense_and_batchnorm_norm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = make(lambda: _perturb(EarlyConvs()), (2, 16, 16), n=5)
    source = _source(monkeypatch, model, x)
    modes = source.modes()
    assert modes["conv1"] == "dense"
    assert modes["bn1"] == "norm"
    assert modes["fc"] == "kron"
    assert source.fallback == []
    assert rel(structured(model, x, "sum"), reference(model, x, "sum")) < 1e-10


def test_grouped_convolution_is_dense_where_ungrouped_is_kron(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = make(OneByOne, (4, 3, 3), n=6)
    source = _source(monkeypatch, model, x)
    modes = source.modes()
    assert modes["plain"] == "kron"  # one output pixel: kron is cheaper
    assert modes["grouped"] == "dense"  # the same shape with groups: always dense
    assert modes["ln"] == "norm"
    assert rel(structured(model, x, "full"), reference(model, x, "full")) < 1e-10


def test_norm_layers_are_norm_and_custom_modules_local(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("norm_mlp")
    modes = _source(monkeypatch, model, x).modes()
    assert modes["ln"] == "norm" and modes["gn"] == "norm"
    model, x = get("custom_parameter")
    source = _source(monkeypatch, model, x)
    assert source.modes()["scale"] == "local"
    assert source.fallback == []
    model, x = get("root_parameter")
    source = _source(monkeypatch, model, x)
    assert source.modes() == {"": "local", "fc": "kron", "out": "kron"}
    assert source.fallback == []


def test_tied_weight_goes_to_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("tied")
    source = _source(monkeypatch, model, x)
    assert "first.weight" in source.fallback  # held by `first` and `second`
    assert {"first.bias", "second.bias"} <= set(source.fallback)  # with its holders
    assert source.modes()["shared"] in ("kron", "dense")  # called twice, not tied
    assert "shared.weight" not in source.fallback


def test_weight_used_outside_its_module_goes_to_the_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = get("reused_weight")
    source = _source(monkeypatch, model, x)
    assert set(source.fallback) == {"fc.weight", "fc.bias"}
    assert "fc" not in source.modes()
    assert source.modes()["out"] == "kron"


def test_check_verdicts_per_parameter() -> None:
    """The set-up check's verdict per parameter (worst gap over the examples): agreement within the
    tolerance, a real difference, a NaN in a later example, differing shapes, an unused parameter."""
    ones = torch.ones(2, 1, 3)
    close = [torch.ones(3), torch.ones(3) * (1 + 1e-9)]
    off = [torch.ones(3), torch.tensor([1.0, 1.0, 2.0])]
    nan = [torch.ones(3), torch.tensor([1.0, float("nan"), 1.0])]
    other_shape = [torch.ones(4), torch.ones(4)]
    zero_rows = torch.zeros(2, 1, 3)
    gaps = ntk_structured._worst_gaps(
        [(ones, close), (ones, off), (ones, nan), (ones, other_shape), (zero_rows, [None, None])],
        tol=1e-6,
    )
    assert gaps[0] <= 0
    assert gaps[1] == pytest.approx(1 - 1e-6 * (3**0.5 + 6**0.5))  # example 1: |diff| = 1
    assert math.isnan(gaps[2])  # not skipped because example 0 agreed
    assert gaps[3] == math.inf
    assert gaps[4] <= 0  # unused alone and zero when reconstructed: agrees
    assert ntk_structured._worst_gaps([(ones, [None, None])], tol=1e-6)[0] > 0


def test_linear_subclass_with_custom_forward_is_not_a_plain_linear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, x = get("linear_subclass")
    source = _source(monkeypatch, model, x)
    assert source.modes()["custom"] == "local"
    assert source.fallback == []
    # A subclass that keeps nn.Linear's forward is a plain Linear.
    plain = type("Plain", (nn.Linear,), {})
    model = nn.Sequential(plain(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    assert _source(monkeypatch, model, x).modes() == {"0": "kron", "2": "kron"}


def test_modules_called_with_keywords_go_to_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("keyword_call")
    source = _source(monkeypatch, model, x)
    assert set(source.fallback) == {"fc.weight", "fc.bias", "gate.weight"}
    assert source.modes() == {"out": "kron"}


# --------------------------------------------------------------------------------------------------
# 4. Forced kron (with positions, sliced) and forced dense


def _force(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    def choose(kind: str, n: int, k: int, t: int, d_a: int, d_g: int, p: int) -> str:
        if mode == "kron" and d_a * d_g == p:  # no groups
            return "kron"
        return "dense"

    monkeypatch.setattr(ntk_structured, "_choose", choose)


FORCED_KRON = [
    "conv_bn",
    "tied",
    "sequence",
    *(f"conv_{name}" for name in CONVS if "groups" not in name),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", FORCED_KRON)
def test_forced_kron_with_sliced_products(
    name: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = get(name)
    _force(monkeypatch, "kron")
    monkeypatch.setattr(ntk_terms, "_KRON_ELEMENTS", 1)  # one left example per slice
    made = record_sources(monkeypatch)
    assert rel(structured(model, x, kind), expected(name, kind)) < 1e-10
    # Every Linear/conv layer with a trainable weight and no groups was contracted as kron.
    forced = [
        layer.mode
        for layer in made[0].layers
        if isinstance(layer.module, (nn.Linear, nn.Conv1d, nn.Conv2d))
        and "weight" in layer.names
        and getattr(layer.module, "groups", 1) == 1
    ]
    assert forced and set(forced) == {"kron"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["conv_dilation2", "conv_same_even_kernel"])
def test_forced_kron_unsliced(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get(name)
    _force(monkeypatch, "kron")
    assert rel(structured(model, x, kind), expected(name, kind)) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["tied", "sequence", "twice_linear", "conv_circular"])
def test_forced_dense(name: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get(name)
    _force(monkeypatch, "dense")
    made = record_sources(monkeypatch)
    assert rel(structured(model, x, kind), expected(name, kind)) < 1e-10
    assert "kron" not in made[0].modes().values()
    assert "dense" in made[0].modes().values()


# --------------------------------------------------------------------------------------------------
# 5. syrk paths


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("syrk", [True, False])
@pytest.mark.parametrize("name", ["frozen_middle", "norm_mlp"])
def test_syrk_and_product_paths(
    name: str, syrk: bool, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # frozen_middle: kron (T = 1) and dense bias-only terms; norm_mlp: kron and local terms.
    model, x = get(name)
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_ROWS", 1 if syrk else 10**9)
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_WIDTH", 1 if syrk else 10**9)
    kernel = structured(model, x, kind)
    assert rel(kernel, expected(name, kind)) < 1e-10
    matrix = kernel.reshape(x.shape[0] * (kernel.shape[1] if kind == "full" else 1), -1)
    assert torch.equal(matrix, matrix.T)


# --------------------------------------------------------------------------------------------------
# 6. Blocked schedule


def minimum_structured_budget(model: nn.Module, x: torch.Tensor, kind: str) -> int:
    with pytest.raises(MemoryBudgetError) as info:
        structured(model, x, kind, max_memory=1)
    return budget_named(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_blocked_equals_one_pass(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("conv_bn")  # n = 6
    plans = record_plans(monkeypatch)
    whole = structured(model, x, kind, max_memory="1GiB")
    assert plans[-1].panel == 6 and len(plans[-1].groups) == 1  # everything at once
    assert rel(whole, expected("conv_bn", kind)) < 1e-10
    low = minimum_structured_budget(model, x, kind)
    p = sum(t.numel() for t in model.parameters())
    row = (3 if kind == "full" else 1) * p * 8
    seen = set()
    for extra_rows in (3, 6):
        blocked = structured(model, x, kind, max_memory=low + extra_rows * row)
        plan = plans[-1]
        seen.add((len(plan.groups), plan.panel, plan.chunk))
        assert rel(blocked, whole) < 1e-12
    assert len(seen) == 2  # two schedules, each different from the one pass
    assert min(panel for _, panel, _ in seen) < 6  # panels: rows recomputed
    with pytest.raises(MemoryBudgetError, match="--max-memory"):
        structured(model, x, kind, max_memory=low - 1)


# --------------------------------------------------------------------------------------------------
# 7. float32


def test_float32_mlp_matches_float64_reference_and_jacobian_engine() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5)
    )
    x = torch.randn(7, 20)
    model64 = copy.deepcopy(model).double()
    for kind in KINDS:
        kernel = structured(model, x, kind)
        assert kernel.dtype == torch.float32
        assert rel(kernel, reference(model64, x.double(), kind)) < 1e-5
        jacobian = empirical_ntk(model, x, kind=kind, device="cpu", method="jacobian")
        assert rel(kernel, jacobian) < 1e-5


# --------------------------------------------------------------------------------------------------
# 8. Method selection


class LocalOnly(nn.Module):
    """No Linear or convolution: LayerNorm and a custom parameter module."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(5)
        self.scale = LearnedScale(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.ln(x))[:, :3]


def record_source_types(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The class of the row source each plan is made for."""
    types: list[type] = []
    original = ntk_schedule.plan

    def spy(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        types.append(type(source))
        return original(source, *args, **kwargs)

    monkeypatch.setattr(ntk_schedule, "plan", spy)
    return types


def test_unknown_method_names_the_flag() -> None:
    model, x = get("mlp", n=3)
    with pytest.raises(ConetoolError, match=r"--method 'bogus'.*auto, structured, jacobian"):
        empirical_ntk(model, x, device="cpu", method="bogus")


def test_auto_picks_jacobian_without_linear_or_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = make(lambda: _perturb(LocalOnly()), (5,))
    types = record_source_types(monkeypatch)
    full = reference(model, x, "full")
    assert rel(empirical_ntk(model, x, kind="full", device="cpu"), full) < 1e-10
    assert types == [ntk_reference.JacobianRows]
    # Forced, the structured engine handles it with local rows only, exactly.
    assert rel(structured(model, x, "full"), full) < 1e-10
    assert types[-1] is StructuredRows


def test_auto_picks_structured_for_an_mlp(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("mlp")
    types = record_source_types(monkeypatch)
    kernel = empirical_ntk(model, x, device="cpu")
    assert types == [StructuredRows]
    assert rel(kernel, expected("mlp", "trace")) < 1e-10
    empirical_ntk(model, x, device="cpu", method="jacobian")
    assert types[-1] is ntk_reference.JacobianRows


# --------------------------------------------------------------------------------------------------
# 9. Progress


def test_progress_counts_up_to_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("conv_bn")
    plans = record_plans(monkeypatch)
    low = minimum_structured_budget(model, x, "sum")
    row = sum(t.numel() for t in model.parameters()) * 8
    calls: list[tuple[int, int]] = []
    kernel = structured(
        model, x, "sum", max_memory=low + 2 * row, on_block=lambda d, t: calls.append((d, t))
    )
    assert plans[-1].panel < 6  # several panels, streamed blocks
    assert rel(kernel, expected("conv_bn", "sum")) < 1e-10
    totals = {t for _, t in calls}
    assert len(totals) == 1
    done = [d for d, _ in calls]
    assert len(calls) > 1
    assert done == sorted(done) and done[0] >= 1
    assert done[-1] == calls[-1][1]


# --------------------------------------------------------------------------------------------------
# 10. Hard cases: layers that mix the batch with itself or with a constant, norm layers in their
# rarer shapes, and what `auto` picks by the share of parameters in factored layers


class BatchFlip(nn.Module):
    """Per-example, but its first Linear sees the batch in reverse order."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x.flip(0))).flip(0))


class Prototypes(nn.Module):
    """A shared projection applied to the batch and to ``c`` fixed prototypes."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.register_buffer("protos", torch.randn(c, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) @ self.proj(self.protos).T


def test_prototypes_with_three_classes_fall_back() -> None:
    model, x = make(lambda: Prototypes(3), (4,))
    assert rel(structured(model, x, "full"), reference(model, x, "full")) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_layer_on_a_permuted_batch(kind: str) -> None:
    # The per-example gradient check sees that the layer's rows belong to other examples.
    model, x = make(BatchFlip, (4,))
    assert rel(empirical_ntk(model, x, kind=kind, device="cpu"), reference(model, x, kind)) < 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_prototypes_with_two_classes(kind: str) -> None:
    # A layer applied to a constant whose leading size equals the check's two examples.
    model, x = make(lambda: Prototypes(2), (4,))
    assert rel(empirical_ntk(model, x, kind=kind, device="cpu"), reference(model, x, kind)) < 1e-10


class NormVariety(nn.Module):
    """Norm layers in their less common shapes: BatchNorm1d on (b, C) and (b, C, L), a LayerNorm
    over two trailing dimensions without bias, a frozen-bias GroupNorm, and a BatchNorm subclass
    with its own forward (not a plain norm layer: it goes "local")."""

    class ScaledBN(nn.BatchNorm1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 12)
        self.bn_flat = nn.BatchNorm1d(12)
        self.bn_seq = nn.BatchNorm1d(3)
        self.ln = nn.LayerNorm((3, 4), bias=False)
        self.gn = nn.GroupNorm(3, 3)
        self.gn.bias.requires_grad_(False)
        self.scaled = NormVariety.ScaledBN(12)
        self.out = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn_flat(self.fc(x)))
        s = h.view(-1, 3, 4)
        s = torch.tanh(self.gn(self.ln(self.bn_seq(s))))
        return self.out(torch.tanh(self.scaled(s.flatten(1))))


def _norm_variety() -> nn.Module:
    model = NormVariety()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            for p in module.parameters(recurse=False):
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_norm_layers_in_every_shape(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = make(_norm_variety, (6,), n=5)
    source = _source(monkeypatch, model, x)
    modes = source.modes()
    assert {modes[name] for name in ("bn_flat", "bn_seq", "ln", "gn")} == {"norm"}
    assert modes["scaled"] == "local" and source.fallback == []
    assert rel(structured(model, x, kind), reference(model, x, kind)) < 1e-10


def test_auto_follows_the_share_of_parameters_contracted_from_factors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Convolutions on a large feature map holding most of the parameters: the reference engine.
    # (Four channels keep the wide head below small: 224 convolution parameters against 15.)
    class ConvHeavy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
            return self.fc(h.mean(dim=(2, 3)))

    model, x = make(ConvHeavy, (2, 16, 16), n=4)
    types = record_source_types(monkeypatch)
    made = record_sources(monkeypatch)
    kernel = empirical_ntk(model, x, device="cpu")
    assert made[-1].kron_share() < ntk._AUTO_KRON_SHARE
    assert types[-1] is ntk_reference.JacobianRows
    assert rel(kernel, reference(model, x, "trace")) < 1e-10
    # A wide classifier head on the same convolutions: most parameters in a Linear layer
    # (2,500 of 2,724).
    model.fc = nn.Linear(4, 500).double()
    kernel = empirical_ntk(model, x, device="cpu")
    assert made[-1].kron_share() > 0.9
    assert issubclass(types[-1], StructuredRows)
    assert rel(kernel, reference(model, x, "trace")) < 1e-10
