"""The structured eNTK engine: per-layer contraction from a batched forward and backward pass.

The kernel is a sum over parameter tensors of inner products of per-example gradients. For layers
whose weight gradient has Kronecker structure, ``∂f/∂W = Σ_t g_t ⊗ a_t`` (``a_t`` the layer's input
at position ``t``, ``g_t`` the cotangent of its output there), those gradients need no per-example
backward pass: one batched forward pass records every layer's inputs, and one batched backward
pass per cotangent (logit) gives every layer's output cotangents at once. Per layer:

- ``nn.Linear`` (positions: its tokens, and its calls when applied more than once) and
  ``nn.Conv1d``/``nn.Conv2d`` (positions: output pixels; any stride, padding, dilation, groups and
  padding mode) are contracted from their factors (:class:`~conetool.ntk_terms.Kron`,
  ``Σ_{t,t'} (a_it·a_jt')(g_it·g_jt')`` per pair, the bias as a weight on a constant input 1: for
  a Linear layer ``d_in + c·d_out`` per pair instead of ``c·d_in·d_out``) or their per-example
  gradients are formed with one batched matrix product over examples (unfolded patches times
  output cotangents) and contracted as dense rows, whichever a cost estimate (:func:`_choose`) says
  is cheaper for this layer and ``n``: Linear layers and convolutions with small feature maps
  (VGG-16's 4x4 and 2x2 stages) go "kron", early convolutions "dense".
- ``nn.BatchNorm*`` (with running statistics, in eval mode), ``nn.LayerNorm`` and ``nn.GroupNorm``
  ("norm"): ``y = x̂·γ + β``, so the per-example gradients are ``Σ g·x̂`` and ``Σ g``, with ``x̂``
  computed from the recorded input.
- Any other module with parameters of its own (embeddings, custom modules) that is called with one
  tensor ("local"): its per-example gradients come from :func:`torch.func` on that module alone
  (``vmap`` over examples of ``vjp``), from its recorded input and output cotangents.
- Everything else (a parameter shared by several modules, a module called in another way, a
  parameter used outside its module's ``forward``): the reference engine's path, ``vmap`` of ``vjp``
  over the whole model, for exactly those parameters (``.fallback``).

Before the first block a check runs on two examples: for a random cotangent, the per-example
gradients this engine reconstructs for each parameter must equal the model's ordinary gradient of
that example evaluated alone; any layer that does not (a parameter used somewhere the hooks do not
see, a layer applied to something other than the batch, or to the examples in another order) moves
to the fallback path. The rows then go
through the shared block schedule (:mod:`conetool.ntk_schedule`) under the same memory budget.

On the CPU the batched passes run outside oneDNN (:func:`conetool.ntk_precision.outside_onednn`):
on some CPUs its float32 convolution backward with a batch of two or more examples is up to 8.5e-4
off, where PyTorch's own convolutions are exact to about 2e-7.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from . import ntk_precision
from .errors import ConetoolError
from .ntk_terms import Dense, Kron, Term

_STRUCTURED = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class _Call:
    """One recorded call of a hooked module: its input (detached) and the zero ``eps`` added to
    its output, whose gradient is the output's cotangent."""

    inp: Tensor
    eps: Tensor


@dataclass(eq=False)
class _Layer:
    """A hooked module and how its parameters' rows are formed.

    ``mode``: ``"kron"`` or ``"dense"`` for a Linear/conv layer (its weight as factors, or as
    per-example gradients; its bias is always dense), ``"local"`` for torch.func on the module
    alone. ``names``: local parameter name -> full name, for the trainable parameters it owns.
    """

    name: str
    module: nn.Module
    mode: str
    names: dict[str, str]
    calls: list[_Call] = field(default_factory=list)


class StructuredRows:
    """The structured engine as a row source for :func:`conetool.ntk_schedule.run`.

    ``forward(batch, params)`` evaluates the model functionally (``params`` defaults to all
    trainable parameters); ``params`` are the trainable parameters (name -> tensor) and ``tensors``
    every parameter and buffer of the model (name -> tensor), already on the device and in the
    compute dtype. ``x`` ``(n, *shape)`` are the inputs.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[..., Tensor],
        params: dict[str, Tensor],
        tensors: dict[str, Tensor],
        x: Tensor,
        kind: str,
    ) -> None:
        self.model = model
        self.forward = forward
        self.params = params
        self.tensors = tensors
        self.x = x
        self.kind = kind
        self.n = x.shape[0]
        self.c = forward(x[:1]).reshape(1, -1).shape[1]
        self.item = next(iter(params.values())).element_size()
        self._recording = False
        self.layers, self.fallback = self._classify()
        self.fixed = sum(t.numel() for t in params.values()) * self.item
        with ntk_precision.outside_onednn(x.device):
            with self._hooks():
                self._check(x[: min(self.n, 2)])
            self._measure(x[:1])

    def kron_share(self) -> float:
        """The share of the trainable parameters (by count) contracted from factors ("kron")."""
        total = _numel(self.params, self.params)
        kron = sum(
            _numel(self.params, layer.names.values())
            for layer in self.layers
            if layer.mode == "kron"
        )
        return kron / max(1, total)

    def modes(self) -> dict[str, str]:
        """Layer name -> how its rows are formed (``kron``, ``dense``, ``local``)."""
        return {layer.name: layer.mode for layer in self.layers}

    # ----------------------------------------------------------------------------------------------
    # Which parameters go where

    def _classify(self) -> tuple[list[_Layer], list[str]]:
        named = dict(self.model.named_parameters())
        trainable = {id(named[name]): name for name in self.params if name in named}
        owners: dict[int, int] = {}
        for _, module in self.model.named_modules(remove_duplicate=False):
            for p in module._parameters.values():
                if p is not None and id(p) in trainable:
                    owners[id(p)] = owners.get(id(p), 0) + 1
        layers = []
        for module_name, module in self.model.named_modules():
            own = {
                local: trainable[id(p)]
                for local, p in module._parameters.items()
                if p is not None and id(p) in trainable
            }
            # A parameter held by several modules (tied) goes to the fallback with its holders.
            if not own or any(owners[id(named[name])] > 1 for name in own.values()):
                continue
            mode = "local"
            if set(own) <= {"weight", "bias"}:
                if _is_structured(module):
                    mode = "dense"  # or "kron": chosen per layer by _measure
                elif _is_norm(module):
                    mode = "norm"
            layers.append(_Layer(module_name, module, mode, own))
        claimed = {name for layer in layers for name in layer.names.values()}
        return layers, [name for name in self.params if name not in claimed]

    def _drop(self, layer: _Layer) -> None:
        """Move a layer's parameters to the fallback path."""
        self.layers.remove(layer)
        self.fallback = [n for n in self.params if n in {*self.fallback, *layer.names.values()}]

    # ----------------------------------------------------------------------------------------------
    # Hooks

    @contextlib.contextmanager
    def _hooks(self) -> Iterator[None]:
        handles = [
            layer.module.register_forward_hook(self._hook(layer), with_kwargs=True)
            for layer in self.layers
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: _Layer) -> Callable[..., Tensor | None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> Tensor | None:
            if not self._recording or layer not in self.layers:
                return None
            if kwargs or len(args) != 1 or not isinstance(args[0], Tensor):
                raise _Unsupported(layer)
            if not isinstance(output, Tensor) or output.dim() == 0 or not output.is_floating_point():
                raise _Unsupported(layer)
            batch = self._batch
            if args[0].dim() == 0 or args[0].shape[0] != batch or output.shape[0] != batch:
                raise _Unsupported(layer)
            eps = torch.zeros_like(output, requires_grad=True)
            layer.calls.append(_Call(args[0].detach(), eps))
            return output + eps

        return hook

    def _record(self, batch: Tensor) -> Tensor:
        """The hooked forward pass of ``batch``: outputs ``(b, c)``; each layer's calls recorded."""
        for layer in self.layers:
            layer.calls = []
        self._recording = True
        self._batch = batch.shape[0]
        try:
            with torch.enable_grad():
                return self.forward(batch).reshape(batch.shape[0], -1)
        finally:
            self._recording = False

    # ----------------------------------------------------------------------------------------------
    # Rows

    def rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]:
        """The rows of examples ``lo:hi`` for cotangents ``cot`` ``(g, c)`` (see RowSource)."""
        with ntk_precision.outside_onednn(self.x.device):
            return self._rows(cot, lo, hi)

    def _rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]:
        batch = self.x[lo:hi]
        terms: list[Term] = []
        if self.layers:
            with self._hooks():
                try:
                    out = self._record(batch)
                except _Unsupported as exc:
                    raise ConetoolError(
                        f"module '{exc.layer.name}' was called on a tensor that is not the batch "
                        f"of {hi - lo} examples, which the structured eNTK engine cannot split "
                        "into examples. Use --method jacobian (method='jacobian')."
                    ) from None
                grads = self._cotangents(out, cot)
                del out
                for layer in self.layers:
                    terms += self._layer_terms(layer, grads)
                    layer.calls = []
                del grads
        if self.fallback:
            terms += [_dense(rows, self.kind == "full") for rows in self._fallback(batch, cot)]
        return terms

    def _cotangents(self, out: Tensor, cot: Tensor) -> dict[int, Tensor]:
        """id(eps) -> the output cotangents of that call, ``(b, g, *output shape[1:])``."""
        eps = [call.eps for layer in self.layers for call in layer.calls]
        b = out.shape[0]
        g = cot.shape[0]
        # One batched backward pass per cotangent (measured on a CPU: faster than one pass
        # vmap-ed over the cotangents, and than one pass over the batch repeated g times).
        per_cot = [
            torch.autograd.grad(
                out,
                eps,
                cot[j].expand(b, -1),
                retain_graph=j + 1 < g,
                allow_unused=True,
                materialize_grads=True,
            )
            for j in range(g)
        ]
        if g == 1:
            return {id(e): grad.unsqueeze(1) for e, grad in zip(eps, per_cot[0], strict=True)}
        return {id(e): torch.stack([p[k] for p in per_cot], dim=1) for k, e in enumerate(eps)}

    def _layer_terms(self, layer: _Layer, grads: dict[int, Tensor]) -> list[Term]:
        full = self.kind == "full"
        if layer.mode == "kron" and "weight" in layer.names:
            a, g = _factors(layer.module, layer.calls, grads)  # (b, d_a, T), (b, k, d_g, T)
            if "bias" in layer.names:
                # The bias is a weight on a constant input 1: Σ_{t,t'} (a_t·a_t' + 1)(g_t·g_t').
                a = torch.cat([a, a.new_ones(a.shape[0], 1, a.shape[2])], dim=1)
            return [Kron(a.transpose(1, 2).contiguous(), g.transpose(2, 3).contiguous(), full)]
        return [_dense(rows, full) for rows in self._layer_grads(layer, grads).values()]

    def _layer_grads(self, layer: _Layer, grads: dict[int, Tensor]) -> dict[str, Tensor]:
        """Per-example gradients of a layer's parameters: full name -> ``(b, k, *shape)``."""
        if layer.mode == "local":
            return self._local_grads(layer, grads)
        if layer.mode == "norm":
            return self._norm_grads(layer, grads)
        module = layer.module
        a, g = _factors(module, layer.calls, grads)
        return {
            name: g.sum(dim=3) if local == "bias" else _weight_grads(module, a, g)
            for local, name in layer.names.items()
        }

    def _norm_grads(self, layer: _Layer, grads: dict[int, Tensor]) -> dict[str, Tensor]:
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
                    mean = self.tensors[prefix + "running_mean"]
                    var = self.tensors[prefix + "running_var"]
                    shape = (1, -1) + (1,) * (call.inp.dim() - 2)
                    x_hat = (call.inp - mean.view(shape)) * torch.rsqrt(var.view(shape) + module.eps)
                dims = tuple(range(3, g.dim()))  # all but (example, cotangent, channel)
            for local in layer.names:
                value = g * x_hat.unsqueeze(1) if local == "weight" else g
                if dims:  # (a sum over an empty tuple of dimensions would sum over all)
                    value = value.sum(dims)
                total[local] = total[local] + value if local in total else value
        return {name: total[local] for local, name in layer.names.items()}

    def _local_grads(self, layer: _Layer, grads: dict[int, Tensor]) -> dict[str, Tensor]:
        """Per-example gradients of a module's own parameters: full name -> ``(b, k, *shape)``."""
        module = layer.module
        prefix = layer.name + "." if layer.name else ""
        state = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        own = {local: self.params[name] for local, name in layer.names.items()}

        def single(inp: Tensor, cot: Tensor) -> dict[str, Tensor]:
            def apply(p: dict[str, Tensor]) -> Tensor:
                return functional_call(module, {**state, **p}, (inp.unsqueeze(0),))

            _, pullback = vjp(apply, own)
            return vmap(pullback)(cot.unsqueeze(1))[0]

        total: dict[str, Tensor] = {}
        for call in layer.calls:
            out = vmap(single)(call.inp, grads[id(call.eps)])
            for local, value in out.items():
                total[local] = total[local] + value if local in total else value
        return {name: total[local] for local, name in layer.names.items()}

    def _fallback(self, batch: Tensor, cot: Tensor) -> list[Tensor]:
        """Per-example gradients ``(b, g, *shape)`` of the fallback parameters: ``vmap`` over the
        examples of ``vjp`` of the whole model (the reference engine's path)."""
        names = self.fallback
        chosen = {k: self.params[k] for k in names}
        fixed = {k: v for k, v in self.params.items() if k not in chosen}

        def single(example: Tensor) -> dict[str, Tensor]:
            def apply(p: dict[str, Tensor]) -> Tensor:
                return self.forward(example.unsqueeze(0), {**fixed, **p}).reshape(-1)

            _, pullback = vjp(apply, chosen)
            return vmap(pullback)(cot)[0]

        out = vmap(single)(batch)
        return [out[name] for name in names]

    # ----------------------------------------------------------------------------------------------
    # Setup: the check and the measurements

    def _check(self, batch: Tensor) -> None:
        """Move to the fallback every layer whose reconstructed gradients are not the model's.

        For a random cotangent ``r`` ``(c,)`` and each example ``x_i`` of ``batch`` (two), the
        per-example gradient ``J(x_i)^T r`` this engine reconstructs for each parameter must equal
        the ordinary gradient of ``<r, f(x_i)>`` with ``x_i`` evaluated alone. A parameter used
        where the hooks do not see it (outside its module's forward), a module called with keyword
        arguments or on something other than the batch, or a layer that sees the examples in
        another order fails this, and its layer falls back.
        """
        b = batch.shape[0]
        generator = torch.Generator().manual_seed(0)
        dtype = next(iter(self.params.values())).dtype
        cot = torch.randn(1, self.c, generator=generator, dtype=torch.float64)
        cot = cot.to(device=batch.device, dtype=dtype)
        live = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        reference: list[dict[str, Tensor | None]] = []
        with torch.enable_grad():
            for i in range(b):
                out = self.forward(batch[i : i + 1], live).reshape(1, -1)
                grads = torch.autograd.grad(out, list(live.values()), cot, allow_unused=True)
                reference.append(dict(zip(live, grads, strict=True)))
        tol = 10 * math.sqrt(torch.finfo(dtype).eps)

        def agrees(name: str, rows: Tensor) -> bool:
            for i in range(b):
                got, want = rows[i, 0], reference[i][name]
                if want is None:
                    want = torch.zeros_like(got)
                scale = float(want.norm()) + float(got.norm())
                if got.shape != want.shape or not float((got - want).norm()) <= tol * scale:
                    return False
            return True

        while self.layers:
            try:
                out = self._record(batch)
            except _Unsupported as exc:
                self._drop(exc.layer)
                continue
            grads = self._cotangents(out, cot)
            for layer in list(self.layers):
                try:
                    found = self._layer_grads(layer, grads)
                except RuntimeError:
                    self._drop(layer)
                    continue
                if not all(agrees(name, rows) for name, rows in found.items()):
                    self._drop(layer)
            for layer in self.layers:
                layer.calls = []
            return

    def _measure(self, example: Tensor) -> None:
        """Bytes per example (recording, cotangents, rows) and each layer's kron/dense choice."""
        saved: dict[int, int] = {}
        owned = {t.untyped_storage().data_ptr() for t in self.tensors.values()}

        def pack(t: Tensor) -> Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in owned:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        k = self.c if self.kind != "sum" else 1
        n = self.n
        item = self.item
        self._act = 0
        self._outs = 0
        self._rep_fixed = 0  # resident bytes per example that do not grow with g
        self._rep_per_g = 0  # and those per cotangent
        while self.layers:
            saved.clear()
            try:
                with self._hooks(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    self._record(example)
                break
            except _Unsupported as exc:
                self._drop(exc.layer)
        if self.layers:
            for layer in self.layers:
                eps = sum(call.eps.numel() for call in layer.calls)
                self._outs += eps * item
                self._act += sum(call.inp.numel() + call.eps.numel() for call in layer.calls) * item
                if layer.mode in ("local", "norm"):
                    self._rep_per_g += _numel(self.params, layer.names.values()) * item
                    continue
                positions, d_a, d_g = _shape(layer)
                bias = "bias" in layer.names
                if "weight" not in layer.names:
                    self._rep_per_g += d_g * item
                    continue
                p = layer.module.weight.numel()
                layer.mode = _choose(self.kind, n, k, positions, d_a, d_g, p)
                if layer.mode == "kron":  # the bias rides along as a constant input
                    self._act += positions * d_a * item  # a convolution's unfolded input
                    self._rep_fixed += positions * (d_a + bias) * item
                    self._rep_per_g += positions * d_g * item
                else:
                    self._rep_per_g += (p + bias * d_g) * item
                layer.calls = []
            self._act += sum(saved.values())
        self._fallback_row = _numel(self.params, self.fallback) * item
        if self.fallback:
            self._act += 3 * max(self._act, 1)
            self._rep_per_g += self._fallback_row

    def resident(self, g: int) -> int:
        """Bytes of one example's rows for ``g`` cotangents."""
        return self._rep_fixed + g * self._rep_per_g

    def transient(self, g: int) -> int:
        """Bytes one example adds to a call: recording, cotangents, its rows and one copy."""
        return 2 * self._act + 2 * g * self._outs + 2 * self.resident(g) + 2 * g * self._fallback_row

    def activations(self, g: int) -> int:
        """The activations part of :meth:`transient`."""
        return self._act + g * self._outs


class _Unsupported(Exception):
    """A hooked module was called in a way the structured path does not handle."""

    def __init__(self, layer: _Layer) -> None:
        super().__init__(layer.name)
        self.layer = layer


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_structured(module: nn.Module) -> bool:
    """A Linear or Conv1d/Conv2d whose forward (and convolution) is the standard one."""
    for kind in _STRUCTURED:
        if isinstance(module, kind):
            cls = type(module)
            return cls.forward is kind.forward and getattr(cls, "_conv_forward", None) is getattr(
                kind, "_conv_forward", None
            )
    return False


def _is_norm(module: nn.Module) -> bool:
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


def _numel(params: dict[str, Tensor], names: Iterable[str]) -> int:
    return sum(params[name].numel() for name in names)


def _shape(layer: _Layer) -> tuple[int, int, int]:
    """``(T, d_a, d_g)`` of a recorded Linear/conv layer, for one example."""
    module = layer.module
    if isinstance(module, nn.Linear):
        t = sum(call.inp.numel() // module.in_features for call in layer.calls)
        return t, module.in_features, module.out_features
    t = sum(call.eps[0, 0].numel() for call in layer.calls)  # output pixels
    d_a = module.weight[0].numel() * module.groups
    return t, d_a, module.out_channels


def _choose(kind: str, n: int, k: int, t: int, d_a: int, d_g: int, p: int) -> str:
    """``"kron"`` or ``"dense"``: the cheaper way (in multiply-adds) to contract one layer's weight.

    Dense: per-example gradients (``n·k·T·p`` to form) and their products (``n²/2`` pairs of
    ``k·p``-wide rows; ``full``: ``k²·p`` per pair). Kron: per pair ``T²·(d_a + k·d_g)`` in two
    products (``full``: ``T²·(d_a + k²·d_g)``) plus the elementwise product and sum, counted
    four times over as it runs at memory speed; grouped convolutions are always dense.
    """
    pairs = n * (n + 1) / 2
    kk = k * k if kind == "full" else k
    if d_a * d_g != p:  # a grouped convolution
        return "dense"
    dense = n * k * t * p + pairs * kk * p
    kron = pairs * t * t * (d_a + kk * d_g + 4 * kk)
    return "kron" if kron < dense else "dense"


def _dense(rows: Tensor, full: bool) -> Dense:
    """Dense rows from per-example gradients ``(b, k, *shape)``: ``(b·k, p)`` for ``full``, else
    ``(b, k·p)`` (the product of two rows sums over the ``k`` cotangents)."""
    b, k = rows.shape[:2]
    if full:
        return Dense(rows.reshape(b * k, -1))
    return Dense(rows.reshape(b, -1))


def _factors(
    module: nn.Module, calls: list[_Call], grads: dict[int, Tensor]
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
            a_parts.append(_patches(module, call.inp))  # (b, C_in·kk, P)
            g_parts.append(g.reshape(b, k, module.out_channels, -1))
    if len(calls) == 1:
        return a_parts[0], g_parts[0]
    return torch.cat(a_parts, dim=2), torch.cat(g_parts, dim=3)


def _patches(module: nn.Conv1d | nn.Conv2d, inp: Tensor) -> Tensor:
    """The convolution's input patches, ``(b, C_in·kh·kw, P)`` (``F.unfold``'s layout)."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(inp, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        return F.unfold(
            x,
            kernel_size=(1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            stride=(1, module.stride[0]),
        )
    return F.unfold(x, kernel_size=module.kernel_size, dilation=module.dilation, stride=module.stride)


def _weight_grads(module: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradients ``(b, k, *weight.shape)`` from the factors ``a``
    ``(b, d_a, T)`` and ``g`` ``(b, k, d_g, T)``: ``Σ_t g_t ⊗ a_t``, one batched matrix product
    over the examples (and groups)."""
    b, k, dg, t = g.shape
    groups = getattr(module, "groups", 1)
    if groups == 1:
        w = torch.matmul(g.reshape(b, k * dg, t), a.transpose(1, 2))  # (b, k·d_g, d_a)
        return w.view(b, k, *module.weight.shape)
    da = a.shape[1]
    ga = g.reshape(b, k, groups, dg // groups, t).transpose(1, 2)  # (b, G, k, o, T)
    aa = a.reshape(b, groups, 1, da // groups, t).transpose(3, 4)  # (b, G, 1, T, i)
    w = torch.matmul(ga, aa)  # (b, G, k, o, i)
    return w.transpose(1, 2).reshape(b, k, *module.weight.shape)
