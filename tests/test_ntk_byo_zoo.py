"""Architectures researchers bring, every engine against the float64 explicit Jacobian ``J Jᵀ``.

Beside the zoo of ``test_ntk`` / ``test_ntk_structured`` (MLP, conv + BatchNorm, residual, tied,
frozen, grouped/dilated/padded convolutions, LayerNorm/GroupNorm MLP, sequences): norms in their
other forms (InstanceNorm with and without running statistics, BatchNorm3d, BatchNorm without
affine, LayerNorm without bias or over two dimensions, RMSNorm, GroupNorm on feature maps),
GELU/SiLU/Softplus/Mish, depthwise and strided-dilated convolutions, ConvTranspose1d/2d, Conv3d,
adaptive average pooling, max pooling with exact ties, a factory returning its model in training
mode (Dropout, BatchNorm: the eNTK is the eval-mode one), a residual block, nn.MultiheadAttention
(no bias; kdim/vdim with add_bias_kv), a tiny ViT (patch embedding, class token and positional
embedding as bare Parameters, pre-norm GELU encoder), a ConvNeXt block (channels-last Linear,
layer scale), weight tying through a transpose and an embedding used as the head, integer token
inputs, weight_norm / spectral_norm / orthogonal parametrizations, buffers, a dict output, a
forward of F.* calls on bare Parameters, channels_last memory format. Each: float64 kernels of
every kind within 1e-10, float32 trace within 1e-6, and ``--per-layer`` group kernels (leaf modules,
as ``conetool kernels`` makes them) that sum to the full kernel.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_ntk import explicit_jacobian
from torch import nn
from torch.nn.utils import parametrizations

from conetool.layer_groups import group_kernels, parameter_groups
from conetool.ntk import empirical_ntk

METHODS = ("auto", "structured", "jacobian")
KINDS = ("trace", "full", "sum")
N = 5
# torch.func has no batching rule for weight_norm's backward yet: it loops, exactly.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _norms_moved(model: nn.Module) -> nn.Module:
    """Running statistics and affine parameters away from their initial 0 and 1."""
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "running_mean", None) is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            weight = getattr(module, "weight", None)
            if isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                if weight is not None:
                    weight.uniform_(0.5, 1.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.uniform_(-0.5, 0.5)
    return model


def seq(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.out = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn2(self.c2(F.silu(self.bn1(self.c1(x)))))
        return self.out(F.adaptive_avg_pool2d(F.silu(h + x), 1).flatten(1))


class Attention(nn.Module):
    """Self-attention (no bias), or cross-attention with kdim/vdim and add_bias_kv (seq-first)."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        self.cross = cross
        self.embed = nn.Linear(3, 8)
        if cross:
            self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, kdim=5, vdim=6)
            self.k, self.v = nn.Linear(3, 5), nn.Linear(3, 6)
        else:
            self.attn = nn.MultiheadAttention(8, 2, bias=False, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cross:
            s = x.transpose(0, 1)
            a, _ = self.attn(self.embed(s), self.k(s), self.v(s))
            return self.out(a.mean(0))
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(torch.tanh(a + h).mean(1))


class TinyViT(nn.Module):
    """Patch embedding, a class token and positional embeddings as bare Parameters, one pre-norm
    GELU encoder layer with dropout (off in eval mode), a LayerNorm and a head on the class token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls = nn.Parameter(0.5 * torch.randn(1, 1, 8))
        self.pos = nn.Parameter(0.5 * torch.randn(1, 5, 8))
        layer = nn.TransformerEncoderLayer(
            8, 2, 16, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
        return self.head(self.norm(self.encoder(h)[:, 0]))


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm and Linear layers on channels-last features, layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 2, stride=2)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.ln = nn.LayerNorm(4)
        self.pw1, self.pw2 = nn.Linear(4, 8), nn.Linear(8, 4)
        self.gamma = nn.Parameter(torch.full((4,), 0.5))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.pw2(F.gelu(self.pw1(self.ln(self.dw(x).permute(0, 2, 3, 1)))))
        return self.head((x + (self.gamma * h).permute(0, 3, 1, 2)).mean((2, 3)))


class TiedTranspose(nn.Module):
    """An encoder weight used again, transposed, as a decoder (F.linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc(x))
        return self.out(torch.tanh(h)) + F.linear(h, self.enc.weight.t())[:, :3]


class TokensTiedHead(nn.Module):
    """Integer token inputs; the embedding is also the output layer (logits = h Eᵀ)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(3, 6)
        self.mid = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.mid(self.emb(x).mean(1))), self.emb.weight)


class FunctionalOnly(nn.Module):
    """No layers: F.conv2d, F.group_norm, F.gelu, F.layer_norm and F.linear on bare Parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(0.3 * torch.randn(4, 2, 3, 3))
        self.b = nn.Parameter(0.1 * torch.randn(4))
        self.g = nn.Parameter(torch.rand(4) + 0.5)
        self.beta = nn.Parameter(0.1 * torch.randn(4))
        self.head = nn.Parameter(0.3 * torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.group_norm(F.conv2d(x, self.w, self.b, padding=1), 2, self.g, self.beta))
        return F.linear(torch.tanh(h.mean((2, 3))), self.head)


class Standardized(nn.Module):
    """Fixed input statistics in buffers (one of them non-persistent)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.randn(6))
        self.register_buffer("scale", torch.rand(6) + 0.5, persistent=False)
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.softplus(self.fc((x - self.mean) * self.scale)))


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.fc(x))
        return {"features": h, "logits": self.head(h)}


class ExactTies(nn.Module):
    """Nearest upsampling makes every 2x2 max-pooling window an exact tie."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.out = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(self.conv(x), scale_factor=2, mode="nearest")
        return self.out(F.max_pool2d(h, 2, stride=1).flatten(1))


def _weight_norm() -> nn.Module:
    model = seq(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    parametrizations.weight_norm(model[0])
    parametrizations.weight_norm(model[2], dim=None)
    return model


def _spectral_norm() -> nn.Module:
    model = seq(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    parametrizations.spectral_norm(model[0])
    model.train()
    with torch.no_grad():  # power iterations: _u and _v away from their first values
        for _ in range(3):
            model(torch.randn(2, 6))
    return model


def _orthogonal() -> nn.Module:
    model = seq(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    parametrizations.orthogonal(model[0])
    return model


def _train_mode() -> nn.Module:
    model = seq(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout1d(0.3),
        nn.Linear(36, 3),
    )
    return _norms_moved(model).train()


def _channels_last() -> nn.Module:
    model = seq(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU())
    model.append(nn.Conv2d(4, 4, 3, stride=2))
    model.extend([nn.Flatten(), nn.Linear(16, 3)])
    return _norms_moved(model).to(memory_format=torch.channels_last)


# name -> (factory, one example's shape, vocabulary size for integer inputs or None)
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int | None]] = {
    "layernorm_no_bias_mish": (
        lambda: _norms_moved(
            seq(nn.Linear(6, 8), nn.LayerNorm(8, bias=False), nn.Mish(), nn.Linear(8, 3))
        ),
        (6,),
        None,
    ),
    "layernorm_2d_no_affine": (
        lambda: seq(
            nn.Linear(6, 8),
            nn.LayerNorm([4, 8], elementwise_affine=False),
            nn.Softplus(),
            nn.Flatten(),
            nn.Linear(32, 3),
        ),
        (4, 6),
        None,
    ),
    "rmsnorm": (
        lambda: seq(nn.Linear(6, 8), nn.RMSNorm(8), nn.GELU("tanh"), nn.Linear(8, 3)),
        (6,),
        None,
    ),
    "groupnorm_feature_maps": (
        lambda: _norms_moved(
            seq(
                nn.Conv2d(2, 4, 3, padding=1),
                nn.GroupNorm(1, 4),
                nn.SiLU(),
                nn.GroupNorm(4, 4),
                nn.Flatten(),
                nn.Linear(64, 3),
            )
        ),
        (2, 4, 4),
        None,
    ),
    "instancenorm_affine": (
        lambda: _norms_moved(
            seq(
                nn.Conv2d(2, 4, 3, padding=1),
                nn.InstanceNorm2d(4, affine=True),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(100, 3),
            )
        ),
        (2, 5, 5),
        None,
    ),
    "instancenorm_running_stats": (
        lambda: _norms_moved(
            seq(
                nn.Conv1d(2, 4, 3),
                nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
                nn.Tanh(),
                nn.Flatten(),
                nn.Linear(16, 3),
            )
        ),
        (2, 6),
        None,
    ),
    "batchnorm3d_no_affine": (
        lambda: _norms_moved(
            seq(
                nn.Conv3d(2, 3, 2),
                nn.BatchNorm3d(3),
                nn.Tanh(),
                nn.Flatten(),
                nn.BatchNorm1d(24, affine=False),
                nn.Linear(24, 3),
            )
        ),
        (2, 3, 3, 3),
        None,
    ),
    "depthwise_strided_dilated": (
        lambda: seq(
            nn.Conv2d(4, 4, 3, groups=4, padding=1),
            nn.GELU(),
            nn.Conv2d(4, 6, 1),
            nn.Tanh(),
            nn.Conv2d(6, 6, 3, stride=(2, 1), dilation=(1, 2), groups=3, padding=(1, 0)),
            nn.Flatten(),
            nn.Linear(6 * 3 * 2, 3),
        ),
        (4, 6, 6),
        None,
    ),
    "conv_transpose": (
        lambda: seq(
            nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 2, 3),
            nn.Flatten(),
            nn.Linear(2 * 4 * 4, 3),
        ),
        (3, 3, 3),
        None,
    ),
    "conv_transpose1d_groups": (
        lambda: seq(
            nn.ConvTranspose1d(4, 4, 3, stride=2, groups=2, dilation=2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * 13, 3),
        ),
        (4, 5),
        None,
    ),
    "conv3d_strided": (
        lambda: seq(
            nn.Conv3d(2, 3, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(24, 3)
        ),
        (2, 4, 4, 4),
        None,
    ),
    "adaptive_avg_pool": (
        lambda: seq(
            nn.Conv2d(2, 4, 3),
            nn.ELU(),
            nn.AdaptiveAvgPool2d((2, 3)),
            nn.Flatten(),
            nn.Linear(24, 3),
        ),
        (2, 7, 7),
        None,
    ),
    "max_pool_exact_ties": (ExactTies, (1, 3, 3), None),
    "train_mode_factory": (_train_mode, (2, 6, 6), None),
    "residual_block": (lambda: _norms_moved(Residual()), (3, 5, 5), None),
    "attention_no_bias": (lambda: Attention(cross=False), (4, 3), None),
    "attention_kdim_bias_kv": (lambda: Attention(cross=True), (4, 3), None),
    "tiny_vit": (TinyViT, (3, 4, 4), None),
    "convnext_block": (ConvNeXtBlock, (2, 6, 6), None),
    "tied_transpose": (TiedTranspose, (6,), None),
    "tokens_tied_head": (TokensTiedHead, (5,), 3),
    "weight_norm": (_weight_norm, (6,), None),
    "spectral_norm": (_spectral_norm, (6,), None),
    "orthogonal": (_orthogonal, (6,), None),
    "buffers": (Standardized, (6,), None),
    "dict_output": (DictOutput, (6,), None),
    "functional_only": (FunctionalOnly, (2, 4, 4), None),
    "channels_last": (_channels_last, (2, 6, 6), None),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The model (float32, in the mode its factory left it) and ``N`` inputs."""
    factory, shape, vocabulary = ZOO[name]
    torch.manual_seed(0)
    model = factory()
    if vocabulary is not None:
        return model, torch.randint(0, vocabulary, (N, *shape))
    return model, torch.randn(N, *shape)


def explicit_kernels(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three kinds from ``J`` ``(n, c, p)``: one ``autograd.grad`` per example and logit of a
    float64 copy in eval mode, over the trainable parameters (tied ones once), nothing of
    conetool's."""
    model = copy.deepcopy(model).double().eval()
    jac = explicit_jacobian(model, x.double() if x.is_floating_point() else x)
    summed = jac.sum(dim=1)
    return {
        "trace": torch.einsum("iap,jap->ij", jac, jac),
        "full": torch.einsum("iap,jbp->iajb", jac, jac),
        "sum": summed @ summed.T,
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(ZOO))
def test_every_engine_gives_the_explicit_jacobian_kernel(name: str, method: str) -> None:
    model, x = build(name)
    training = [m.training for m in model.modules()]
    want = explicit_kernels(model, x)
    for kind in KINDS:
        got = empirical_ntk(model, x, kind=kind, device="cpu", method=method, dtype="float64")
        assert got.dtype == torch.float64 and got.shape == want[kind].shape, kind
        assert rel(got, want[kind]) < 1e-10, kind
    got32 = empirical_ntk(model, x, device="cpu", method=method)
    assert got32.dtype == torch.float32
    assert rel(got32, want["trace"]) < 1e-6
    assert [m.training for m in model.modules()] == training  # each module's mode is restored


@pytest.mark.parametrize("name", ["tied_transpose", "tokens_tied_head", "weight_norm", "tiny_vit"])
def test_per_layer_kernels_are_each_groups_and_sum_to_the_kernel(name: str) -> None:
    """Leaf-module groups, as ``kernels --per-layer`` makes them: a tied or parametrized weight
    is in one group (the first module that names it), so the groups' kernels sum to the kernel."""
    model, x = build(name)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    groups = parameter_groups(model)
    kernels = group_kernels(model, groups, lambda: empirical_ntk(model, x, device="cpu"))
    assert rel(sum(kernels.values()), explicit_kernels(model, x)["trace"]) < 1e-10
    for group, members in groups.items():
        alone = copy.deepcopy(model)
        for param_name, p in alone.named_parameters():
            p.requires_grad_(param_name in members)
        assert rel(kernels[group], explicit_kernels(alone, x)["trace"]) < 1e-10, group
