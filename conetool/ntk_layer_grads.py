"""Per-example gradients of one hooked layer, from the inputs and cotangents its calls recorded.

The structured engine (:mod:`conetool.ntk_structured`) hooks the layers it knows, records each
call's input and output cotangents in one batched forward and backward pass, and turns them into
rows here:

- ``nn.Linear`` (positions: its tokens, and its calls when applied more than once) and
  ``nn.Conv1d``/``nn.Conv2d`` (positions: output pixels; any stride, padding, dilation, groups and
  padding mode): the weight gradient is ``Σ_t g_t ⊗ a_t`` (``a_t`` the layer's input at position
  ``t``, ``g_t`` the cotangent of its output there). Mode ``"kron"`` keeps it as its factors
  (:func:`factored_grad`, a :class:`~conetool.ntk_terms.FactoredGrad` whose products are
  ``Σ_{t,t'} (a_it·a_jt')(g_it·g_jt')``, the bias as a weight on a constant input 1); mode
  ``"dense"`` forms the per-example gradients with one batched matrix product over examples
  (unfolded patches times output cotangents, :func:`weight_grads`).
- ``nn.BatchNorm*`` (with running statistics, in eval mode), ``nn.LayerNorm`` and ``nn.GroupNorm``
  (mode ``"norm"``): ``y = x̂·γ + β``, so the per-example gradients are ``Σ g·x̂`` and ``Σ g``, with
  ``x̂`` computed from the recorded input.
- Any other module with parameters of its own that is called with one tensor (mode ``"local"``):
  :func:`torch.func` on that module alone (``vmap`` over examples of ``vjp``), from its recorded
  input and output cotangents; for ``nn.PReLU``, which has no working vmap rule, ``Σ g·min(x, 0)``
  per slope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from .ntk_failures import holds_module_without_vmap_rule, loop_notes_dropped
from .ntk_terms import Dense, FactoredGrad

_STRUCTURED = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class RecordedCall:
    """One recorded call of a hooked module: its input (detached) and the zero ``eps`` added to
    its output, whose gradient is the output's cotangent."""

    inp: Tensor
    eps: Tensor


@dataclass(eq=False)
class HookedLayer:
    """A hooked module and how its parameters' rows are formed.

    ``mode``: ``"kron"`` or ``"dense"`` for a Linear/conv layer (its weight as factors, or as
    per-example gradients; its bias is always dense), ``"norm"`` for a normalization layer's affine
    parameters, ``"local"`` for torch.func on the module alone. ``names``: local parameter name ->
    full name, for the trainable parameters it owns.
    """

    name: str
    module: nn.Module
    mode: str
    names: dict[str, str]
    calls: list[RecordedCall] = field(default_factory=list)


class Unsupported(Exception):
    """A hooked module was called in a way the structured path does not handle."""

    def __init__(self, layer: HookedLayer) -> None:
        super().__init__(layer.name)
        self.layer = layer


def per_example_grads(
    layer: HookedLayer,
    grads: dict[int, Tensor],
    params: dict[str, Tensor],
    tensors: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Per-example gradients of a layer's parameters: full name -> ``(b, k, *shape)``.

    ``grads``: id of each call's ``eps`` -> its output cotangents ``(b, k, *output shape[1:])``;
    ``params`` the trainable parameters and ``tensors`` every parameter and buffer (name -> tensor).
    """
    if layer.mode == "local" and is_prelu(layer.module):
        return _prelu_grads(layer, grads)
    if layer.mode == "local":
        return _local_grads(layer, grads, params, tensors)
    if layer.mode == "norm":
        return _norm_grads(layer, grads, tensors)
    module = layer.module
    a, g = factors(module, layer.calls, grads)
    return {
        name: g.sum(dim=3) if local == "bias" else weight_grads(module, a, g)
        for local, name in layer.names.items()
    }


def factored_grad(layer: HookedLayer, grads: dict[int, Tensor], full: bool) -> FactoredGrad:
    """A Linear/conv layer's weight (and bias) rows as factors, for mode ``"kron"``."""
    a, g = factors(layer.module, layer.calls, grads)  # (b, d_a, T), (b, k, d_g, T)
    if "bias" in layer.names:
        # The bias is a weight on a constant input 1: Σ_{t,t'} (a_t·a_t' + 1)(g_t·g_t').
        a = torch.cat([a, a.new_ones(a.shape[0], 1, a.shape[2])], dim=1)
    return FactoredGrad(a.transpose(1, 2).contiguous(), g.transpose(2, 3).contiguous(), full)


def _norm_grads(
    layer: HookedLayer, grads: dict[int, Tensor], tensors: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Per-example gradients of a norm layer's affine parameters, ``y = x̂·γ + β``:
    ``Σ g·x̂`` and ``Σ g`` over everything but the parameter's own dimensions."""
    module = layer.module
    prefix = layer.name + "." if layer.name else ""
    total: dict[str, Tensor] = {}
    for call in layer.calls:
        g = grads[id(call.eps)]  # (b, k, *x.shape[1:])
        if isinstance(module, nn.LayerNorm):
            x_hat = F.layer_norm(call.inp, module.normalized_shape, eps=module.eps)
            keep = len(module.normalized_shape)  # trailing dimensions
            dims = tuple(range(2, g.dim() - keep))
        else:
            if isinstance(module, nn.GroupNorm):
                x_hat = F.group_norm(call.inp, module.num_groups, eps=module.eps)
            else:  # BatchNorm in eval mode: the running statistics
                module = cast(nn.modules.batchnorm._BatchNorm, module)  # is_norm chose it
                mean = tensors[prefix + "running_mean"]
                var = tensors[prefix + "running_var"]
                shape = (1, -1) + (1,) * (call.inp.dim() - 2)
                x_hat = (call.inp - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
            dims = tuple(range(3, g.dim()))  # all but (example, cotangent, channel)
        for local in layer.names:
            value = g * x_hat.unsqueeze(1) if local == "weight" else g
            if dims:  # (a sum over an empty tuple of dimensions would sum over all)
                value = value.sum(dims)
            total[local] = total[local] + value if local in total else value
    return {name: total[local] for local, name in layer.names.items()}


def _prelu_grads(layer: HookedLayer, grads: dict[int, Tensor]) -> dict[str, Tensor]:
    """Per-example gradients of an nn.PReLU's slopes, ``y = max(x, 0) + a·min(x, 0)``:
    ``Σ g·min(x, 0)`` over every position of a slope (its channel, dimension 1 of the input, or
    everything for one slope), which torch.func cannot give (nn.PReLU has no working vmap rule in
    torch 2.14)."""
    slopes = cast(Tensor, layer.module.weight).numel()
    total: Tensor | None = None
    for call in layer.calls:
        g = grads[id(call.eps)]  # (b, k, *x.shape[1:])
        b, k = g.shape[:2]
        value = g * call.inp.clamp(max=0).unsqueeze(1)
        if slopes == 1:
            value = value.reshape(b, k, -1).sum(2, keepdim=True)
        else:
            value = value.reshape(b, k, slopes, -1).sum(3)
        total = value if total is None else total + value
    assert total is not None  # a hooked layer that was not called is dropped before
    return {name: total for name in layer.names.values()}


def is_prelu(module: nn.Module) -> bool:
    """An nn.PReLU whose forward is the standard one."""
    return isinstance(module, nn.PReLU) and type(module).forward is nn.PReLU.forward


def _local_grads(
    layer: HookedLayer,
    grads: dict[int, Tensor],
    params: dict[str, Tensor],
    tensors: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Per-example gradients of a module's own parameters: full name -> ``(b, k, *shape)``."""
    module = layer.module
    prefix = layer.name + "." if layer.name else ""
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = {local: params[name] for local, name in layer.names.items()}

    def single(inp: Tensor, cot: Tensor) -> dict[str, Tensor]:
        def apply(p: dict[str, Tensor]) -> Tensor:
            return functional_call(module, {**state, **p}, (inp.unsqueeze(0),))

        pair = vjp(apply, own)
        _, pullback = cast("tuple[Tensor, Callable[..., Any]]", pair)  # no has_aux: two
        return vmap(pullback)(cot.unsqueeze(1))[0]

    total: dict[str, Tensor] = {}
    # an nn.LSTM with a state of its own, in float32 on a CPU: vmap loops over the examples
    # through oneDNN's layer and says so in torch's note (not conetool's user's to act on)
    quiet = holds_module_without_vmap_rule(module)
    for call in layer.calls:
        with loop_notes_dropped(quiet):
            out = vmap(single)(call.inp, grads[id(call.eps)])
        for local, value in out.items():
            total[local] = total[local] + value if local in total else value
    return {name: total[local] for local, name in layer.names.items()}


def is_structured(module: nn.Module) -> bool:
    """A Linear or Conv1d/Conv2d whose forward (and convolution) is the standard one."""
    for kind in _STRUCTURED:
        if isinstance(module, kind):
            cls = type(module)
            return cls.forward is kind.forward and getattr(cls, "_conv_forward", None) is getattr(
                kind, "_conv_forward", None
            )
    return False


def is_norm(module: nn.Module) -> bool:
    """A BatchNorm (with running statistics, evaluated in eval mode), LayerNorm or GroupNorm
    whose forward is the standard one."""
    batchnorm = nn.modules.batchnorm._BatchNorm
    if isinstance(module, batchnorm):
        return (
            type(module).forward is batchnorm.forward
            and module.running_mean is not None
            and module.running_var is not None
        )
    return type(module) in (nn.LayerNorm, nn.GroupNorm)


def numel(params: dict[str, Tensor], names: Iterable[str]) -> int:
    return sum(params[name].numel() for name in names)


def layer_shape(layer: HookedLayer) -> tuple[int, int, int]:
    """``(T, d_a, d_g)`` of a recorded Linear/conv layer, for one example."""
    module = layer.module
    if isinstance(module, nn.Linear):
        t = sum(call.inp[0].numel() // module.in_features for call in layer.calls)
        return t, module.in_features, module.out_features
    conv = cast("nn.Conv1d | nn.Conv2d", module)  # is_structured: Linear or a convolution
    t = sum(call.eps[0, 0].numel() for call in layer.calls)  # output pixels
    d_a = conv.weight[0].numel() * conv.groups
    return t, d_a, conv.out_channels


def dense_rows(rows: Tensor, full: bool) -> Dense:
    """Dense rows from per-example gradients ``(b, k, *shape)``: ``(b·k, p)`` for ``full``, else
    ``(b, k·p)`` (the product of two rows sums over the ``k`` cotangents)."""
    b, k = rows.shape[:2]
    if full:
        return Dense(rows.reshape(b * k, -1))
    return Dense(rows.reshape(b, -1))


def factors(
    module: nn.Module, calls: list[RecordedCall], grads: dict[int, Tensor]
) -> tuple[Tensor, Tensor]:
    """A Linear/conv layer's factors over all its calls, positions last: inputs ``a``
    ``(b, d_a, T)`` and output cotangents ``g`` ``(b, k, d_g, T)`` (views where possible); for a
    grouped convolution ``d_a``/``d_g`` hold every group's channels one group after another."""
    a_parts, g_parts = [], []
    for call in calls:
        g = grads[id(call.eps)]
        b, k = g.shape[:2]
        if isinstance(module, nn.Linear):
            a_parts.append(call.inp.reshape(b, -1, module.in_features).transpose(1, 2))
            g_parts.append(g.reshape(b, k, -1, module.out_features).transpose(2, 3))
        else:
            conv = cast("nn.Conv1d | nn.Conv2d", module)  # is_structured: Linear or a convolution
            a_parts.append(patches(conv, call.inp))  # (b, C_in·kk, P)
            g_parts.append(g.reshape(b, k, conv.out_channels, -1))
    if len(calls) == 1:
        return a_parts[0], g_parts[0]
    return torch.cat(a_parts, dim=2), torch.cat(g_parts, dim=3)


def patches(module: nn.Conv1d | nn.Conv2d, inp: Tensor) -> Tensor:
    """The convolution's input patches, ``(b, C_in·kh·kw, P)`` (``F.unfold``'s layout).

    Formed as a strided view of the padded input and one copy, not with ``F.unfold``: on CUDA
    ``F.unfold`` launches one im2col kernel per example (a loop over the batch in ATen's
    ``Im2Col.cu``), which made the structured engine launch-bound on a GPU (issue 15).
    """
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(inp, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (
            (1, *module.kernel_size),
            (1, *module.dilation),
            (1, *module.stride),
        )
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    b, c = x.shape[:2]
    # Windows along each spatial axis: (b, c, oh, ow, span_h, span_w), then every dilation-th
    # element of a window: (b, c, oh, ow, kh, kw).
    for axis in (2, 3):
        span = dilation[axis - 2] * (kernel[axis - 2] - 1) + 1
        x = x.unfold(axis, span, stride[axis - 2])
    windows = x[..., :: dilation[0], :: dilation[1]]
    oh, ow = windows.shape[2:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(b, c * kernel[0] * kernel[1], oh * ow)


def weight_grads(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradients ``(b, k, *weight.shape)`` from the factors ``a``
    ``(b, d_a, T)`` and ``g`` ``(b, k, d_g, T)``: ``Σ_t g_t ⊗ a_t``, one batched matrix product
    over the examples (and groups)."""
    b, k, dg, t = g.shape
    shape = cast(Tensor, module.weight).shape
    groups = getattr(module, "groups", 1)
    if groups == 1:
        w = torch.matmul(g.reshape(b, k * dg, t), a.transpose(1, 2))  # (b, k·d_g, d_a)
        return w.view(b, k, *shape)
    da = a.shape[1]
    ga = g.reshape(b, k, groups, dg // groups, t).transpose(1, 2)  # (b, G, k, o, T)
    aa = a.reshape(b, groups, 1, da // groups, t).transpose(3, 4)  # (b, G, 1, T, i)
    w = torch.matmul(ga, aa)  # (b, G, k, o, i)
    return w.transpose(1, 2).reshape(b, k, *shape)
