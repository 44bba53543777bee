"""Built-in models and the model registry.

Parameter counts are checked against hand arithmetic from the architectures' sources (open_lth
models/*.py, LeCun et al. 1998); forward passes are checked in float64 against functional
re-implementations written from those sources with explicit BatchNorm arithmetic.
"""

from __future__ import annotations

import copy
import math
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conetool.errors import ModelError
from conetool.models import BUILTIN_MODELS, build_model, output_check
from conetool.pipeline.resolve import model_for
from conetool.spec import ModelSpec, load_spec

DIGITS, MNIST, CIFAR = (1, 8, 8), (1, 28, 28), (3, 32, 32)


def _build(arch: str, shape: tuple[int, ...], num_classes: int = 10, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch=arch, num_classes=num_classes, options=options), shape)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return _build("vgg16", CIFAR)


def _randomize_bn(model: nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial running statistics, so eval-mode BN is tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


def _bn(h: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """Eval-mode BatchNorm2d written out: (h - mean) / sqrt(var + 1e-5) * weight + bias."""
    c = (None, slice(None), None, None)
    mean, var = sd[prefix + ".running_mean"][c], sd[prefix + ".running_var"][c]
    return (h - mean) / torch.sqrt(var + 1e-5) * sd[prefix + ".weight"][c] + sd[prefix + ".bias"][c]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------
# Output shapes
# ---------------------------------------------------------------------------------------------

SHAPE_CASES = [
    ("mlp", DIGITS),
    ("mlp", MNIST),
    ("mlp", CIFAR),
    ("mlp", (20,)),
    ("lenet5", DIGITS),
    ("lenet5", MNIST),
    ("lenet5", CIFAR),
    ("lenet5", (1, 4, 4)),  # the smallest image lenet5 takes
    ("lenet5", (2, 13, 30)),  # odd, non-square
    ("lenet_300_100", DIGITS),
    ("lenet_300_100", MNIST),
    ("lenet_300_100", CIFAR),
    ("resnet20", DIGITS),
    ("resnet20", MNIST),
    ("resnet20", CIFAR),
]


@pytest.mark.parametrize(("arch", "shape"), SHAPE_CASES)
@pytest.mark.parametrize("num_classes", [10, 3])
def test_output_shape(arch: str, shape: tuple[int, ...], num_classes: int) -> None:
    model = _build(arch, shape, num_classes=num_classes)
    assert isinstance(model, nn.Module)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    output_check(model, shape, num_classes, arch=arch)


def test_vgg16_output_shape(vgg: nn.Module) -> None:
    vgg.eval()
    with torch.no_grad():
        out = vgg(torch.randn(2, *CIFAR))
    assert out.shape == (2, 10)
    output_check(vgg, CIFAR, 10, arch="vgg16")
    # Larger images: 64 -> 4 after the max pools -> 2 after the average pool: 512*2*2 features.
    assert _build("vgg16", (3, 64, 64), num_classes=5).fc.in_features == 2048


def test_builtin_registry_names() -> None:
    assert sorted(BUILTIN_MODELS) == ["lenet5", "lenet_300_100", "mlp", "resnet20", "vgg16"]
    assert all(callable(f) for f in BUILTIN_MODELS.values())


# ---------------------------------------------------------------------------------------------
# Exact parameter counts (hand arithmetic; Linear: in*out + out, Conv: in*out*k*k (+ out))
# ---------------------------------------------------------------------------------------------


def test_mlp_param_counts() -> None:
    # MNIST 784-512-512-10 (the "670k params" MLP): 784*512+512 + 512*512+512 + 512*10+10
    assert _count(_build("mlp", MNIST)) == 401_920 + 262_656 + 5_130 == 669_706
    # digits 64-512-512-10
    assert _count(_build("mlp", DIGITS)) == 64 * 512 + 512 + 262_656 + 5_130 == 301_066
    # no hidden layer: logistic regression 64*10+10
    assert _count(_build("mlp", DIGITS, widths=[])) == 650
    # bias = false: 64*32 + 32*10
    assert _count(_build("mlp", DIGITS, widths=[32], bias=False)) == 2_368


def test_lenet5_param_counts() -> None:
    # MNIST (LeCun et al. 1998 on the 28x28 image padded to 32):
    # conv1 1*6*25+6=156, conv2 6*16*25+16=2416, fc1 400*120+120=48120, fc2 120*84+84=10164,
    # fc3 84*10+10=850 -> 61,706.
    model = _build("lenet5", MNIST)
    assert _count(model) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    assert model.fc1.in_features == 16 * 5 * 5
    # digits 8x8: both paddings 2 -> 8 -> 8 -> 4 -> 4 -> 2, fc1 16*2*2=64 features: 64*120+120=7800
    model = _build("lenet5", DIGITS)
    assert model.fc1.in_features == 64
    assert _count(model) == 156 + 2_416 + 7_800 + 10_164 + 850 == 21_386
    # CIFAR 3x32x32: 32 -> 32 -> 16 -> 12 -> 6, 16*6*6=576 features; conv1 3*6*25+6=456
    model = _build("lenet5", CIFAR)
    assert model.fc1.in_features == 576
    assert _count(model) == 456 + 2_416 + (576 * 120 + 120) + 10_164 + 850 == 83_126


def test_lenet_300_100_param_count() -> None:
    # open_lth mnist_lenet_300_100 (nn.Linear with bias): 784*300+300 + 300*100+100 + 100*10+10
    assert _count(_build("lenet_300_100", MNIST)) == 235_500 + 30_100 + 1_010 == 266_610
    assert _count(_build("lenet_300_100", DIGITS)) == 64 * 300 + 300 + 30_100 + 1_010


def _resnet20_count(w: int, c: int, in_ch: int = 3) -> int:
    """open_lth cifar_resnet_20_W by hand: bias-free convs, BN has 2 params per channel."""
    stem = in_ch * w * 9 + 2 * w  # conv 3x3 + bn
    same = lambda f: 2 * (f * f * 9 + 2 * f)  # noqa: E731  block without downsampling
    down = lambda f: (f // 2) * f * 9 + 2 * f + f * f * 9 + 2 * f + (f // 2) * f + 2 * f  # noqa: E731
    stages = 3 * same(w) + down(2 * w) + 2 * same(2 * w) + down(4 * w) + 2 * same(4 * w)
    return stem + stages + 4 * w * c + c


def test_resnet20_param_count() -> None:
    # open_lth cifar_resnet_20 (W = 16), 10 classes, per layer:
    #   conv 3*16*9 = 432, bn 32
    #   stage 1: 3 blocks x (2 convs 16*16*9 = 2304 + 2 bn 32)            = 3 * 4672  = 14,016
    #   stage 2: block 1: conv 16*32*9 = 4608 + bn 64 + conv 32*32*9 = 9216 + bn 64
    #                     + shortcut 1x1 16*32 = 512 + bn 64              =             14,528
    #            blocks 2-3: 2 x (2 * 9216 + 2 * 64)                       = 2 * 18,560 = 37,120
    #   stage 3: block 1: 32*64*9 = 18432 + 128 + 64*64*9 = 36864 + 128 + 32*64 = 2048 + 128
    #                                                                      =             57,728
    #            blocks 2-3: 2 x (2 * 36864 + 2 * 128)                     = 2 * 73,984 = 147,968
    #   fc 64*10 + 10 = 650
    expected = 432 + 32 + 14_016 + 14_528 + 37_120 + 57_728 + 147_968 + 650
    assert expected == 272_474 == _resnet20_count(16, 10)
    assert _count(_build("resnet20", CIFAR)) == 272_474
    assert _count(_build("resnet20", DIGITS)) == _resnet20_count(16, 10, in_ch=1)


@pytest.mark.parametrize(("width", "filters"), [(0.5, 8), (2, 32), (3, 48)])
def test_resnet20_width_multiplier(width: float, filters: int) -> None:
    # open_lth cifar_resnet_20_W with W = 16 * width filters in the first stage.
    model = _build("resnet20", CIFAR, num_classes=7, width=width)
    assert _count(model) == _resnet20_count(filters, 7)
    assert model.conv.out_channels == filters
    assert model.fc.in_features == 4 * filters


def test_vgg16_param_count(vgg: nn.Module) -> None:
    # open_lth cifar_vgg_16: every conv 3x3 with bias, then BN (2 per channel); fc 512 -> 10.
    plan = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs, c_in = 0, 3
    for c_out in plan:
        convs += c_in * c_out * 9 + c_out + 2 * c_out
        c_in = c_out
    # 1,920 + 37,056 + 74,112 + 147,840 + 295,680 + 2 * 590,592 + 1,181,184 + 5 * 2,360,832
    assert convs == 1_920 + 37_056 + 74_112 + 147_840 + 295_680 + 2 * 590_592 + 1_181_184 + (
        5 * 2_360_832
    )
    assert _count(vgg) == convs + 512 * 10 + 10 == 14_728_266


# ---------------------------------------------------------------------------------------------
# open_lth layout: state-dict names (its checkpoints load) and layer details
# ---------------------------------------------------------------------------------------------


def test_resnet20_open_lth_layout() -> None:
    sd = _build("resnet20", CIFAR).state_dict()
    assert sd["conv.weight"].shape == (16, 3, 3, 3)
    assert "conv.bias" not in sd
    assert not any(k.endswith("conv1.bias") or k.endswith("conv2.bias") for k in sd)
    shortcuts = sorted({k.split(".shortcut")[0] for k in sd if ".shortcut." in k})
    assert shortcuts == ["blocks.3", "blocks.6"]  # 1x1 stride-2 conv + BN where the shape changes
    assert sd["blocks.3.shortcut.0.weight"].shape == (32, 16, 1, 1)
    assert sd["blocks.6.shortcut.0.weight"].shape == (64, 32, 1, 1)
    assert "blocks.3.shortcut.1.running_var" in sd
    assert sd["blocks.8.conv2.weight"].shape == (64, 64, 3, 3)
    assert sd["fc.weight"].shape == (10, 64)
    assert "blocks.9.conv1.weight" not in sd


def test_vgg16_open_lth_layout(vgg: nn.Module) -> None:
    sd = vgg.state_dict()
    pools = [i for i, m in enumerate(vgg.layers) if isinstance(m, nn.MaxPool2d)]
    assert pools == [2, 5, 9, 13]
    assert sd["layers.0.conv.weight"].shape == (64, 3, 3, 3)
    assert sd["layers.0.conv.bias"].shape == (64,)  # open_lth keeps nn.Conv2d's bias
    assert sd["layers.16.bn.running_mean"].shape == (512,)
    assert sd["fc.weight"].shape == (10, 512)


def test_lenet_300_100_open_lth_layout() -> None:
    shapes = {k: tuple(v.shape) for k, v in _build("lenet_300_100", MNIST).state_dict().items()}
    assert shapes == {
        "fc_layers.0.weight": (300, 784),
        "fc_layers.0.bias": (300,),
        "fc_layers.1.weight": (100, 300),
        "fc_layers.1.bias": (100,),
        "fc.weight": (10, 100),
        "fc.bias": (10,),
    }


# ---------------------------------------------------------------------------------------------
# Forward passes against float64 functional references
# ---------------------------------------------------------------------------------------------


def test_resnet20_forward_matches_reference() -> None:
    model = _build("resnet20", CIFAR).double().eval()
    _randomize_bn(model)
    sd = model.state_dict()
    x = torch.randn(2, *CIFAR, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    h = F.relu(_bn(F.conv2d(x, sd["conv.weight"], padding=1), sd, "bn"))
    for i in range(9):
        p, stride = f"blocks.{i}", 2 if i in (3, 6) else 1
        o = F.relu(
            _bn(F.conv2d(h, sd[p + ".conv1.weight"], stride=stride, padding=1), sd, p + ".bn1")
        )
        o = _bn(F.conv2d(o, sd[p + ".conv2.weight"], padding=1), sd, p + ".bn2")
        if i in (3, 6):
            h = _bn(F.conv2d(h, sd[p + ".shortcut.0.weight"], stride=2), sd, p + ".shortcut.1")
        h = F.relu(o + h)
    ref = h.mean(dim=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]

    with torch.no_grad():
        out = model(x)
    assert _rel(out, ref) < 1e-12


def test_vgg16_forward_matches_reference(vgg: nn.Module) -> None:
    model = copy.deepcopy(vgg).double().eval()
    _randomize_bn(model)
    sd = model.state_dict()
    x = torch.randn(2, *CIFAR, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    h = x
    for i, m in enumerate(model.layers):
        if isinstance(m, nn.MaxPool2d):
            h = F.max_pool2d(h, 2)
        else:
            p = f"layers.{i}"
            conv = F.conv2d(h, sd[p + ".conv.weight"], sd[p + ".conv.bias"], padding=1)
            h = F.relu(_bn(conv, sd, p + ".bn"))
    assert h.shape[-2:] == (2, 2)
    ref = h.mean(dim=(2, 3)) @ sd["fc.weight"].T + sd["fc.bias"]  # avg pool 2 of 2x2 -> 1x1
    with torch.no_grad():
        out = model(x)
    assert _rel(out, ref) < 1e-12


@pytest.mark.parametrize(
    ("shape", "pad2", "activation", "pool"),
    [(DIGITS, 2, "relu", "max"), (MNIST, 0, "tanh", "avg"), (CIFAR, 0, "gelu", "max")],
)
def test_lenet5_forward_matches_reference(shape, pad2, activation, pool) -> None:
    model = _build("lenet5", shape, activation=activation, pool=pool).double().eval()
    sd = model.state_dict()
    act = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}[activation]
    pooling = {"max": F.max_pool2d, "avg": F.avg_pool2d}[pool]
    x = torch.randn(3, *shape, dtype=torch.float64)
    h = pooling(act(F.conv2d(x, sd["conv1.weight"], sd["conv1.bias"], padding=2)), 2)
    h = pooling(act(F.conv2d(h, sd["conv2.weight"], sd["conv2.bias"], padding=pad2)), 2)
    h = act(h.flatten(1) @ sd["fc1.weight"].T + sd["fc1.bias"])
    h = act(h @ sd["fc2.weight"].T + sd["fc2.bias"])
    ref = h @ sd["fc3.weight"].T + sd["fc3.bias"]
    with torch.no_grad():
        assert _rel(model(x), ref) < 1e-12


@pytest.mark.parametrize(("arch", "activation"), [("mlp", "tanh"), ("lenet_300_100", "relu")])
def test_fc_forward_matches_reference(arch: str, activation: str) -> None:
    options = {"widths": [17, 9], "activation": activation} if arch == "mlp" else {}
    model = _build(arch, DIGITS, **options).double()
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    x = torch.randn(4, *DIGITS, dtype=torch.float64)
    h = x.reshape(4, -1)
    for layer in layers[:-1]:
        h = h @ layer.weight.T + layer.bias
        h = torch.tanh(h) if activation == "tanh" else torch.clamp(h, min=0)
    ref = h @ layers[-1].weight.T + layers[-1].bias
    with torch.no_grad():
        assert _rel(model(x), ref) < 1e-12


def test_mlp_without_bias_is_linear_in_scale() -> None:
    model = _build("mlp", DIGITS, widths=[16], bias=False)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear))
    x = torch.randn(3, *DIGITS)
    with torch.no_grad():  # a bias-free ReLU net is positively homogeneous
        torch.testing.assert_close(model(3 * x), 3 * model(x))


# ---------------------------------------------------------------------------------------------
# Initialization (open_lth: kaiming_normal weights, BatchNorm weight U[0, 1), bias 0)
# ---------------------------------------------------------------------------------------------


def test_open_lth_initialization() -> None:
    model = _build("resnet20", CIFAR)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 18 + 2
    for bn in bns:
        assert (bn.weight >= 0).all() and (bn.weight < 1).all()
        assert (bn.bias == 0).all()
    weights = torch.cat([bn.weight.detach() for bn in bns])
    assert abs(float(weights.mean()) - 0.5) < 0.05  # U[0, 1), not PyTorch's constant 1
    # kaiming_normal_: std sqrt(2 / fan_in); 36,864 samples -> relative error of std ~0.4 %
    w = model.blocks[8].conv2.weight.detach()
    assert abs(float(w.std()) / math.sqrt(2 / (64 * 9)) - 1) < 0.03
    assert abs(float(w.mean())) < 0.01 * math.sqrt(2 / 576) * 10
    mlp = _build("mlp", MNIST)
    w = mlp.fc_layers[0].weight.detach()
    assert abs(float(w.std()) / math.sqrt(2 / 784) - 1) < 0.01
    # biases keep nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    b = mlp.fc_layers[0].bias.detach()
    assert b.abs().max() <= 1 / math.sqrt(784) and b.abs().max() > 0.5 / math.sqrt(784)


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "lenet_300_100", "resnet20"])
def test_seeded_builds_are_reproducible(arch: str) -> None:
    a, b = _build(arch, DIGITS, seed=5).state_dict(), _build(arch, DIGITS, seed=5).state_dict()
    c = _build(arch, DIGITS, seed=6).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_output_check_leaves_rng_mode_and_stats_alone() -> None:
    model = _build("resnet20", DIGITS)
    model.train()
    before = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    output_check(model, DIGITS, 10, arch="resnet20")
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    output_check(model, DIGITS, 10)
    assert not model.training


def test_output_check_uses_model_dtype() -> None:
    seen: list[torch.dtype] = []
    for dtype in (torch.float64, torch.float32):
        model = _build("lenet5", DIGITS).to(dtype)
        model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].dtype))
        output_check(model, DIGITS, 10, arch="lenet5")
    assert seen == [torch.float64, torch.float32]  # one batch each, in the model's dtype


# ---------------------------------------------------------------------------------------------
# Built-in errors
# ---------------------------------------------------------------------------------------------


def test_unknown_arch_message() -> None:
    expected = (
        '[model] arch = "x" is not a known architecture. Built-in: lenet5, lenet_300_100, mlp, '
        'resnet20, vgg16, or "package.module:factory" for your own model.'
    )
    with pytest.raises(ModelError, match=re.escape(expected)):
        _build("x", DIGITS)
    with pytest.raises(ModelError, match=re.escape('Did you mean "resnet20"?')):
        _build("resnet", DIGITS)


@pytest.mark.parametrize(
    ("arch", "options", "culprit"),
    [
        ("resnet20", {"depth": 32}, r"unknown key 'depth' in \[model\] for arch 'resnet20'.*width"),
        ("mlp", {"width": [8]}, r"'width'.*'mlp'.*widths, activation, bias"),
        ("vgg16", {"batchnorm": False}, r"'batchnorm'.*'vgg16'"),
        ("lenet_300_100", {"widths": [3]}, r"'widths'.*'lenet_300_100'"),
        ("lenet5", {"padding": 0}, r"'padding'.*'lenet5'.*activation, pool"),
    ],
)
def test_unknown_option_names_key_arch_and_valid_keys(arch, options, culprit) -> None:
    with pytest.raises(ModelError, match=culprit):
        _build(arch, CIFAR, **options)


@pytest.mark.parametrize(
    ("arch", "options", "suggested"),
    [("mlp", {"widthz": [8]}, "widths"), ("lenet5", {"activaton": "tanh"}, "activation")],
)
def test_a_misspelt_model_option_gets_the_closest_valid_one(arch, options, suggested) -> None:
    """A misspelt [model] key of a built-in arch listed the valid ones but not the one meant,
    as a misspelt key of the other sections names it (the README's 'The spec')."""
    with pytest.raises(ModelError, match=re.escape(f"Did you mean '{suggested}'?")):
        _build(arch, CIFAR, **options)


def test_a_key_of_another_arch_names_that_arch(tmp_path: Path) -> None:
    """A [model] without arch (the default, lenet5) but with mlp's widths was told only that
    'widths' is unknown for 'lenet5' (fuzz_cli --mode spec --seed 101 --only 18); now that it is
    a key of 'mlp', the arch to set, and that the file sets no arch: lenet5 is the default."""
    spec = tmp_path / "run.toml"
    spec.write_text('[model]\nnum_classes = 10\nwidths = [8]\n[data]\ndataset = "digits"\n')
    with pytest.raises(ModelError) as info:
        model_for(load_spec(spec))
    message = str(info.value)
    assert message.startswith(f"{spec}: unknown key 'widths' in [model] for arch 'lenet5'")
    assert (
        "'widths' is a key of arch 'mlp': set [model] arch = \"mlp\" if that model is meant. "
        f'{spec} sets no [model] arch, so the default "lenet5" was built: set arch to the model '
        "meant." in message
    )
    with pytest.raises(ModelError) as info:  # resnet20's width on vgg16: no default said
        _build("vgg16", CIFAR, width=2)
    assert str(info.value).endswith(
        "'width' is a key of arch 'resnet20': set [model] arch = \"resnet20\" if that model is "
        "meant."
    )
    with pytest.raises(ModelError) as info:  # a key of no arch: nothing added
        _build("mlp", CIFAR, depth=3)
    assert "is a key of arch" not in str(info.value)


def test_a_model_option_like_no_valid_one_gets_no_guess() -> None:
    with pytest.raises(ModelError) as info:
        _build("mlp", CIFAR, depth=3)
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("arch", "shape", "options", "culprit"),
    [
        ("mlp", DIGITS, {"activation": "sigmoid"}, r'activation = "sigmoid".*relu, tanh, gelu'),
        ("mlp", DIGITS, {"widths": 512}, r"widths = 512"),
        ("mlp", DIGITS, {"widths": [512, 0]}, r"widths = \[512, 0\].*the 2nd, 0, is not"),
        ("mlp", DIGITS, {"widths": [0]}, r"widths = \[0\].*the 1st, 0, is not"),
        ("mlp", DIGITS, {"widths": [8, 8, -3]}, r"widths = \[8, 8, -3\].*the 3rd, -3, is not"),
        ("mlp", DIGITS, {"bias": "yes"}, r'bias = "yes"'),
        ("mlp", DIGITS, {"widths": [8, "a"]}, r'widths = \[8, "a"\].*the 2nd, "a", is not'),
        ("mlp", DIGITS, {"widths": (8, True)}, r"widths = \[8, true\].*the 2nd, true, is not"),
        ("lenet5", DIGITS, {"activation": "elu"}, r'activation = "elu"'),
        ("lenet5", DIGITS, {"pool": "l2"}, r'pool = "l2".*max, avg'),
        ("lenet5", (1, 3, 3), {}, r"at least 4x4.*3x3"),
        ("lenet5", (64,), {}, r"'lenet5'.*\(channels, height, width\).*\(64,\)"),
        ("resnet20", CIFAR, {"width": 0}, r"width = 0"),
        ("resnet20", CIFAR, {"width": 0.3}, r"width = 0.3"),
        ("resnet20", CIFAR, {"width": "wide"}, r'width = "wide"'),
        ("vgg16", MNIST, {}, r"'vgg16'.*32x32.*28x28"),
    ],
)
def test_bad_option_values(arch, shape, options, culprit) -> None:
    with pytest.raises(ModelError, match=culprit):
        _build(arch, shape, **options)


def test_bad_num_classes() -> None:
    with pytest.raises(ModelError, match=r"num_classes = 0"):
        _build("lenet5", DIGITS, num_classes=0)


# ---------------------------------------------------------------------------------------------
# output_check errors
# ---------------------------------------------------------------------------------------------


def test_output_check_wrong_num_classes() -> None:
    model = _build("mlp", DIGITS, num_classes=10)
    with pytest.raises(ModelError, match=r"'mlp'.*\(2, 1, 8, 8\).*\(2, 10\).*expected \(2, 3\)"):
        output_check(model, DIGITS, 3, arch="mlp")


class _Reduced(nn.Module):
    """An MLP on DIGITS whose forward returns ``reduce`` of its logits."""

    def __init__(self, reduce) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.reduce = reduce

    def forward(self, x):
        return self.reduce(self.fc(x.flatten(1)))


@pytest.mark.parametrize(
    ("reduce", "said"),
    [
        (
            lambda out: out.sum(),
            r"output of shape \(\), which is not one row of logits per example",
        ),
        (lambda out: out.T, r"output of shape \(10, 2\), which is not one row .* batch first"),
        (lambda out: out.argmax(1), r"returns torch.int64 outputs .* not the predicted classes"),
    ],
)
def test_output_check_names_a_loss_a_transpose_and_argmax(reduce, said) -> None:
    """A loss, logits with the classes first, or predicted classes: the check said 'Set [model]
    num_classes = 10 to match the data set' of a model whose num_classes was 10 already."""
    with pytest.raises(ModelError, match=said) as refused:
        output_check(_Reduced(reduce), DIGITS, 10, arch="mine")
    assert "num_classes = 10" not in str(refused.value)


def test_output_check_forward_fails() -> None:
    model = _build("lenet_300_100", DIGITS)  # built for 64 features, fed 784
    with pytest.raises(ModelError, match=r"'lenet_300_100' fails.*\(2, 1, 28, 28\)"):
        output_check(model, MNIST, 10, arch="lenet_300_100")


def test_output_check_non_tensor_output() -> None:
    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return {"logits": self.fc(x.flatten(1))}

    with pytest.raises(ModelError, match=r"'DictOut' returned dict"):
        output_check(DictOut(), DIGITS, 10)


# ---------------------------------------------------------------------------------------------
# User factories "package.module:factory"
# ---------------------------------------------------------------------------------------------

USER_MODULE = """
import torch
from torch import nn

CONSTANT = 3


class Net(nn.Module):
    def __init__(self, num_classes, hidden=4):
        super().__init__()
        self.hidden = hidden
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)


def no_shape(num_classes, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Linear(hidden, num_classes))


def with_shape(input_shape, num_classes, scale=1.0):
    model = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2],
                                                  num_classes))
    model.seen = (tuple(input_shape), num_classes, scale)
    return model


def with_kwargs(num_classes, **kwargs):
    model = nn.Linear(1, num_classes)
    model.seen = dict(kwargs)
    return model


class Factories:
    @staticmethod
    def make(num_classes):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        model.made_by = "Factories.make"
        return model


def inner_type_error(num_classes):
    return len(num_classes)


def raises_value_error(num_classes):
    raise ValueError("hidden size must be even")


def not_a_module(num_classes):
    return "a string"
"""


@pytest.fixture
def user_mod(tmp_path, monkeypatch) -> str:
    """A fresh user module importable as the returned name."""
    name = f"conetool_user_models_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_user_factory_class_with_options(user_mod: str) -> None:
    model = _build(f"{user_mod}:Net", DIGITS, num_classes=5, hidden=7)
    assert model.hidden == 7
    output_check(model, DIGITS, 5, arch=f"{user_mod}:Net")


def test_user_factory_without_input_shape(user_mod: str) -> None:
    model = _build(f"{user_mod}:no_shape", DIGITS, num_classes=3, hidden=6)
    assert model[1].out_features == 6
    output_check(model, DIGITS, 3)


def test_user_factory_receives_input_shape(user_mod: str) -> None:
    model = _build(f"{user_mod}:with_shape", DIGITS, num_classes=4, scale=2.5)
    assert model.seen == (DIGITS, 4, 2.5)
    model = _build(f"{user_mod}:with_kwargs", DIGITS, num_classes=4, depth=3)
    assert model.seen == {"depth": 3, "input_shape": DIGITS}


def test_user_factory_dotted_attribute(user_mod: str) -> None:
    model = _build(f"{user_mod}:Factories.make", DIGITS, num_classes=2)
    assert model.made_by == "Factories.make"  # the attribute of the class, not of the module
    assert model[1].out_features == 2


def test_user_factory_found_in_current_directory(tmp_path, monkeypatch) -> None:
    name = "conetool_cwd_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    model = _build(f"{name}:no_shape", DIGITS, num_classes=3)
    assert isinstance(model, nn.Module)


@pytest.mark.parametrize(
    ("arch", "culprit"),
    [
        (
            "mypkg.models.build",
            r'\[model\] arch = "mypkg.models.build" is not a known architecture.* Did you mean '
            r'"mypkg.models:build" \(a factory is "package.module:factory"\)\?',
        ),
        ("mymodels:", r'"mymodels:" is not a valid import path.*package.module:factory'),
        (":factory", r'":factory" is not a valid import path'),
        ("a:b:c", r'"a:b:c" is not a valid import path'),
        ("my-models:net", r'"my-models:net" is not a valid import path'),
    ],
)
def test_malformed_import_path(arch: str, culprit: str) -> None:
    with pytest.raises(ModelError, match=culprit):
        _build(arch, DIGITS)


def test_module_not_importable(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=r"cannot import module 'no_such_pkg_xyz\.models'") as err:
        _build("no_such_pkg_xyz.models:net", DIGITS)
    message = str(err.value)
    assert "No module named 'no_such_pkg_xyz'" in message
    assert "PYTHONPATH" in message and "pip install" in message


def test_module_with_missing_dependency(tmp_path, monkeypatch) -> None:
    (tmp_path / "conetool_broken_models.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conetool_broken_models", raising=False)
    with pytest.raises(
        ModelError, match=r"'conetool_broken_models'.*No module named 'not_installed_dep_xyz'"
    ) as err:
        _build("conetool_broken_models:net", DIGITS)
    where = tmp_path / "conetool_broken_models.py"
    assert f"importing it failed at {where}:1; fix it there" in str(err.value)


def test_module_with_syntax_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "conetool_syntax_models.py").write_text("def net(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conetool_syntax_models", raising=False)
    with pytest.raises(ModelError, match=r"'conetool_syntax_models'.*SyntaxError") as err:
        _build("conetool_syntax_models:net", DIGITS)
    assert f"failed at {tmp_path / 'conetool_syntax_models.py'}:1" in str(err.value)


def test_missing_attribute_lists_callables(user_mod: str) -> None:
    with pytest.raises(ModelError, match=r"no attribute 'resnet'.*Net.*no_shape.*with_shape"):
        _build(f"{user_mod}:resnet", DIGITS)
    with pytest.raises(ModelError, match=r"'.*Factories' has no attribute 'build'.*make"):
        _build(f"{user_mod}:Factories.build", DIGITS)


def test_not_callable(user_mod: str) -> None:
    with pytest.raises(ModelError, match=rf'"{user_mod}:CONSTANT" names a int, not a callable'):
        _build(f"{user_mod}:CONSTANT", DIGITS)


def test_factory_rejects_passed_keys(user_mod: str) -> None:
    with pytest.raises(
        ModelError, match=r"keys passed \(num_classes, depth\).*unexpected keyword.*'depth'"
    ):
        _build(f"{user_mod}:no_shape", DIGITS, depth=3)


def test_factory_raises_type_error_inside(user_mod: str) -> None:
    with pytest.raises(ModelError, match=r"inner_type_error\" raised TypeError.*num_classes"):
        _build(f"{user_mod}:inner_type_error", DIGITS)


def test_factory_raises_other_error(user_mod: str) -> None:
    with pytest.raises(ModelError, match=r"raised ValueError.*hidden size must be even"):
        _build(f"{user_mod}:raises_value_error", DIGITS)


def test_factory_returns_non_module(user_mod: str) -> None:
    with pytest.raises(
        ModelError, match=r'"[^"]*:not_a_module" returned str, not a torch.nn.Module'
    ):
        _build(f"{user_mod}:not_a_module", DIGITS)


@pytest.mark.parametrize(
    "widths",
    [[2**62], [10**30]],  # "Storage size calculation overflowed"; "Overflow when unpacking"
)
def test_a_builtin_model_too_large_to_build_is_a_model_error_naming_the_spec_and_key(widths):
    # Found by scripts/fuzz_cli.py --mode spec: widths = [2147483648] ended in PyTorch's
    # RuntimeError and a traceback.
    spec = ModelSpec(arch="mlp", num_classes=10, options={"widths": widths})
    with pytest.raises(ModelError) as caught:
        build_model(spec, (1, 8, 8), source="run.toml")
    message = str(caught.value)
    assert message.startswith("run.toml: [model] arch 'mlp' with num_classes = 10, widths = ")
    assert "too large to build" in message and "widths = [512, 512]" in message
    assert "\n" not in message


def test_a_builtin_model_the_allocator_cannot_make_is_a_model_error(monkeypatch):
    def refused(input_shape, num_classes, widths=(512,)):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 549755813888 bytes. Error code 12\nframe #0: ..."
        )

    monkeypatch.setitem(BUILTIN_MODELS, "mlp", refused)
    spec = ModelSpec(arch="mlp", num_classes=10, options={"widths": [2**31]})
    with pytest.raises(ModelError, match=r"widths = \[2147483648\] is too large.*549755813888"):
        build_model(spec, (1, 8, 8), source="run.toml")


def test_a_builtin_factory_bug_keeps_its_traceback(monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setitem(BUILTIN_MODELS, "mlp", broken)
    with pytest.raises(RuntimeError, match="mat1"):
        build_model(ModelSpec(arch="mlp", num_classes=10), (1, 8, 8))


def test_a_builtin_model_too_large_for_its_class_count_names_num_classes():
    spec = ModelSpec(arch="mlp", num_classes=2**63 - 1, options={"widths": [8]})
    with pytest.raises(ModelError, match=r"num_classes = 9223372036854775807, widths = \[8\] is"):
        build_model(spec, (1, 8, 8), source="run.toml")
