"""The structured eNTK engine: per-layer Jacobian rows from batched forward and backward passes.

The kernel is a sum over parameter tensors of inner products of per-example gradients. For layers
whose weight gradient has Kronecker structure, ``∂f/∂W = Σ_t g_t ⊗ a_t`` (``a_t`` the layer's input
at position ``t``, ``g_t`` the cotangent of its output there), those gradients need no per-example
backward pass: one batched forward pass records every layer's inputs, and one batched backward
pass per cotangent (logit) gives every layer's output cotangents at once. Which layers this engine
knows and how their rows are formed from what they recorded is :mod:`conetool.ntk_layer_grads`;
this module hooks them, runs the passes and hands the rows to the block schedule
(:mod:`conetool.ntk_schedule`) under the same memory budget as the reference engine:

- Linear layers and convolutions go "kron" (their factors, a
  :class:`~conetool.ntk_terms.FactoredGrad`) or "dense" (per-example gradients), whichever a cost
  estimate (:func:`_choose`) says is cheaper for this layer and ``n``: Linear layers and
  convolutions with small feature maps (VGG-16's 4x4 and 2x2 stages) go "kron", early
  convolutions "dense". Normalization layers go "norm", other modules with parameters of their
  own "local".
- Everything else (a parameter shared by several modules, a module called in another way, a
  parameter used outside its module's ``forward``): the reference engine's path, ``vmap`` of ``vjp``
  over the whole model, for exactly those parameters (``.fallback``).

A check runs on two examples: for a random cotangent, the per-example gradients this engine
reconstructs for each parameter must equal the model's ordinary gradient of that example evaluated
alone; any layer that does not (a parameter used somewhere the hooks do not see, a layer applied to
something other than the batch, or to the examples in another order) moves to the fallback path.
On a CPU it runs before the first block. Off the CPU (``check_later``) the set-up before the first
block is one hooked pass that measures the bytes per example, and the check runs after the last
block has been dispatched (:meth:`StructuredRows.check_later_found_changes`), while the device
still computes: its few hundred small calls are host time that no longer delays the device. When
it moves a layer, the caller computes the kernel again with the new layout.

On a CPU where oneDNN's float32 convolutions are inexact (checked once per process), the batched
passes of a model with convolutions run outside oneDNN
(:func:`conetool.ntk_precision.outside_onednn`): on some CPUs its float32 convolution backward with
a batch of two or more examples is up to 8.5e-4 off, where PyTorch's own convolutions are exact to
about 2e-7.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from . import ntk_precision
from .errors import ConetoolError
from .ntk_checks import perturbed
from .ntk_layer_grads import (
    HookedLayer,
    RecordedCall,
    Unsupported,
    dense_rows,
    factored_grad,
    is_norm,
    is_structured,
    layer_shape,
    numel,
    per_example_grads,
)
from .ntk_memo import StructuredLayout
from .ntk_reference import looped_grads, vmapped_or_looped
from .ntk_saved import saved_activations
from .ntk_terms import Term
from .ntk_tuning import tuning_for

# The byte counts per example that _measure sets and the schedule plans with.
_SIZES = (
    "_activation_bytes",
    "_cotangent_bytes",
    "_largest_cotangent_bytes",
    "_row_bytes_fixed",
    "_row_bytes_per_cotangent",
    "_fallback_row_bytes",
)


class StructuredRows:
    """The structured engine as a row source for :func:`conetool.ntk_schedule.run`.

    ``forward(batch, params)`` evaluates the model functionally (``params`` defaults to all
    trainable parameters); ``params`` are the trainable parameters (name -> tensor) and ``tensors``
    every parameter and buffer of the model (name -> tensor), already on the device and in the
    compute dtype. ``x`` ``(n, *shape)`` are the inputs. ``pairs``: how many pairs of examples
    the kernel multiplies, for the cost model of each layer's kron/dense choice (default
    ``n(n+1)/2``, the symmetric kernel of ``x``; a cross kernel of ``n1 + n2`` examples multiplies
    ``n1·n2``). ``check_later``: measure now and leave the check for
    :meth:`check_later_found_changes`, which the caller runs after dispatching the blocks.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[..., Tensor],
        params: dict[str, Tensor],
        tensors: dict[str, Tensor],
        x: Tensor,
        kind: str,
        pairs: float | None = None,
        layout: StructuredLayout | None = None,
        check_later: bool = False,
        looped: bool = False,
    ) -> None:
        self.model = model
        self.forward = forward
        # the fallback's vmap failed on the model (in this call, or an earlier one of its
        # signature: looped): ordinary autograd instead
        self.looped = looped
        self.params = params
        self.tensors = tensors
        self.x = x
        self.kind = kind
        self.n = x.shape[0]
        self.pairs = pairs
        self.value_bytes = next(iter(params.values())).element_size()
        self.convolutions = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
        self._recording = False
        self.layers, self.fallback = self._classify()
        self.fixed = sum(t.numel() for t in params.values()) * self.value_bytes
        # The outputs of the check's first two examples, together and each alone, for the
        # independence check (ntk_checks.check_independence), which then needs no forward passes.
        self.pair_outputs: tuple[Tensor, Tensor] | None = None
        self._cotangent: Tensor | None = None
        self.checked = not check_later or layout is not None
        if layout is not None:
            self._restore(layout)
            return
        self._set_up(self._measure_only if check_later else self._check)

    def check_later_found_changes(self) -> bool:
        """Run the check that ``check_later`` left out (after the blocks were dispatched); True
        when it moved layers to the fallback path, so that rows computed before were not those of
        the layout it leaves (whose bytes per example it measures again)."""
        if self.checked:
            return False
        before = self.modes(), list(self.fallback)
        self._set_up(self._check)
        self.checked = True
        return (self.modes(), self.fallback) != before

    def _set_up(self, step: Callable[[Tensor], None]) -> None:
        """Run a set-up step (the check, or the measurement alone) on the first two examples,
        hooked and, on a CPU with inexact oneDNN convolutions, outside oneDNN."""
        with ntk_precision.outside_onednn(self.x.device, self.convolutions):
            with self._hooks():
                step(self.x[: min(self.n, 2)])

    def layout(self) -> StructuredLayout:
        """The set-up that the check and the measurements left, for an
        :class:`~conetool.ntk_memo.EngineMemo` to restore on the next checkpoint."""
        return StructuredLayout(
            modes={layer.name: layer.mode for layer in self.layers},
            fallback=tuple(self.fallback),
            c=self.c,
            sizes={name: getattr(self, name) for name in _SIZES},
            kron_share=self.kron_share(),
        )

    def _restore(self, layout: StructuredLayout) -> None:
        """Take the set-up of an earlier call with the same signature instead of checking and
        measuring again (the layers are this model's own modules, found by name)."""
        by_name = {layer.name: layer for layer in self.layers}
        self.layers = []
        for name, mode in layout.modes.items():
            layer = by_name[name]
            layer.mode = mode
            self.layers.append(layer)
        self.fallback = list(layout.fallback)
        self.c = layout.c
        for name, value in layout.sizes.items():
            setattr(self, name, value)

    def kron_share(self) -> float:
        """The share of the trainable parameters (by count) contracted from factors ("kron")."""
        total = numel(self.params, self.params)
        kron = sum(
            numel(self.params, layer.names.values())
            for layer in self.layers
            if layer.mode == "kron"
        )
        return kron / max(1, total)

    def modes(self) -> dict[str, str]:
        """Layer name -> how its rows are formed (``kron``, ``dense``, ``local``)."""
        return {layer.name: layer.mode for layer in self.layers}

    # ----------------------------------------------------------------------------------------------
    # Which parameters go where

    def _classify(self) -> tuple[list[HookedLayer], list[str]]:
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
                if is_structured(module):
                    mode = "dense"  # or "kron": chosen per layer by _measure
                elif is_norm(module):
                    mode = "norm"
            layers.append(HookedLayer(module_name, module, mode, own))
        claimed = {name for layer in layers for name in layer.names.values()}
        return layers, [name for name in self.params if name not in claimed]

    def _drop(self, layer: HookedLayer) -> None:
        """Move a layer's parameters to the fallback path (and let go of what it recorded)."""
        self.layers.remove(layer)
        layer.calls = []
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

    def _hook(self, layer: HookedLayer) -> Callable[..., Tensor | None]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object
        ) -> Tensor | None:
            if not self._recording or layer not in self.layers:
                return None
            if kwargs or len(args) != 1 or not isinstance(args[0], Tensor):
                raise Unsupported(layer)
            if (
                not isinstance(output, Tensor)
                or output.dim() == 0
                or not output.is_floating_point()
            ):
                raise Unsupported(layer)
            batch = self._batch
            if args[0].dim() == 0 or args[0].shape[0] != batch or output.shape[0] != batch:
                raise Unsupported(layer)
            eps = torch.zeros_like(output, requires_grad=True)
            layer.calls.append(RecordedCall(args[0].detach(), eps))
            return output + eps

        return hook

    def _record(self, batch: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """The hooked forward pass of ``batch`` at ``params`` (default: the model's): outputs
        ``(b, c)``; each layer's calls recorded."""
        for layer in self.layers:
            layer.calls = []
        self._recording = True
        self._batch = batch.shape[0]
        try:
            with torch.enable_grad():
                out = self.forward(batch) if params is None else self.forward(batch, params)
                return out.reshape(batch.shape[0], -1)
        finally:
            self._recording = False

    # ----------------------------------------------------------------------------------------------
    # Rows

    def rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]:
        """The rows of examples ``lo:hi`` for cotangents ``cot`` ``(g, c)`` (see RowSource)."""
        with ntk_precision.outside_onednn(self.x.device, self.convolutions):
            return self._rows(cot, lo, hi)

    def _rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]:
        batch = self.x[lo:hi]
        terms: list[Term] = []
        if self.layers:
            with self._hooks():
                try:
                    out = self._record(batch)
                except Unsupported as exc:
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
            terms += [dense_rows(rows, self.kind == "full") for rows in self._fallback(batch, cot)]
        return terms

    def _cotangents(self, out: Tensor, cot: Tensor) -> dict[int, Tensor]:
        """id(eps) -> the output cotangents of that call, ``(b, g, *output shape[1:])``."""
        eps = [call.eps for layer in self.layers for call in layer.calls]
        b = out.shape[0]
        g = cot.shape[0]
        if not out.requires_grad:  # no recorded call reaches the outputs (a layer whose result
            # forward discards, in a group of kernels --per-layer): every cotangent is zero,
            # which autograd refuses to compute
            return {id(e): e.new_zeros((b, g, *e.shape[1:])) for e in eps}
        # One batched backward pass per cotangent. Measured on a CPU, this is faster than one pass
        # vmap-ed over the cotangents (torch 2.14's vmap loops over them for convolution_backward
        # and native_batch_norm_backward anyway) and than one pass over the batch repeated g times.
        if g == 1:
            grads = torch.autograd.grad(
                out, eps, cot[0].expand(b, -1), allow_unused=True, materialize_grads=True
            )
            return {id(e): grad.unsqueeze(1) for e, grad in zip(eps, grads, strict=True)}
        # Each pass's cotangents go straight into their slot of one buffer per layer output and
        # are freed: held once, not once per pass and again stacked. On the CPU the buffer is
        # (b, g, ...), the layout the rows are formed from without copying. Off the CPU it is
        # (g, b, ...): a pass's slots are then contiguous, and one torch._foreach_copy_ fills
        # them all (a fused kernel on CUDA, where a copy per slot would launch one kernel per pass
        # and layer output, 430 per call on resnet20 with 10 logits); each layer's rows then copy
        # its cotangents once into the (b, g, ...) layout (one kernel per layer, a layer's worth of
        # memory).
        fused = self.fuses_copies()
        shape = (g, b) if fused else (b, g)
        buffers = [e.new_empty((*shape, *e.shape[1:])) for e in eps]
        for j in range(g):
            grads = torch.autograd.grad(
                out,
                eps,
                cot[j].expand(b, -1),
                retain_graph=j + 1 < g,
                allow_unused=True,
                materialize_grads=True,
            )
            # Off the CPU the dense sources go in one fused copy; the others (the final layer's
            # cotangent is an expanded view), and every source on the CPU, one by one.
            dest, src = [], []
            for buffer, grad in zip(buffers, grads, strict=True):
                slot = buffer[j] if fused else buffer[:, j]
                if fused and grad.is_contiguous():
                    dest.append(slot)
                    src.append(grad)
                else:
                    slot.copy_(grad)
            if dest:
                torch._foreach_copy_(dest, src)
            del grads, dest, src  # freed before the next pass
        return {
            id(e): buffer.transpose(0, 1) if fused else buffer
            for e, buffer in zip(eps, buffers, strict=True)
        }

    def fuses_copies(self) -> bool:
        """Whether a call with several cotangents fills its cotangent buffers with one fused copy
        per backward pass, in the (g, b, ...) layout (off the CPU: fewer kernel launches), rather
        than one copy per layer output into the (b, g, ...) layout (on the CPU: no copy of the
        layout later): the tuning's ``fuses_copies`` (:mod:`conetool.ntk_tuning`)."""
        return tuning_for(self.x.device).fuses_copies

    def _layer_terms(self, layer: HookedLayer, grads: dict[int, Tensor]) -> list[Term]:
        full = self.kind == "full"
        if layer.mode == "kron" and "weight" in layer.names:
            return [factored_grad(layer, grads, full)]
        found = per_example_grads(layer, grads, self.params, self.tensors)
        return [dense_rows(rows, full) for rows in found.values()]

    def _fallback(self, batch: Tensor, cot: Tensor) -> list[Tensor]:
        """Per-example gradients ``(b, g, *shape)`` of the fallback parameters: ``vmap`` over the
        examples of ``vjp`` of the whole model (the reference engine's path; ordinary autograd one
        example at a time for a custom autograd.Function torch.func cannot transform)."""
        names = self.fallback
        chosen = {k: self.params[k] for k in names}
        fixed = {k: v for k, v in self.params.items() if k not in chosen}

        def single(example: Tensor) -> dict[str, Tensor]:
            def apply(p: dict[str, Tensor]) -> Tensor:
                return self.forward(example.unsqueeze(0), {**fixed, **p}).reshape(-1)

            pair = vjp(apply, chosen)
            _, pullback = cast("tuple[Tensor, Callable[..., Any]]", pair)  # no has_aux: two
            return vmap(pullback)(cot)[0]

        out, self.looped = vmapped_or_looped(
            lambda: vmap(single)(batch),
            lambda: looped_grads(self.forward, self.params, names, batch, cot),
            self.looped,
            self.model,
        )
        return [out[name] for name in names]

    # ----------------------------------------------------------------------------------------------
    # Setup: the check and the measurements

    def _check(self, batch: Tensor) -> None:
        """Move to the fallback every layer whose reconstructed gradients are not the model's, then
        measure the bytes per example from the same hooked pass (:meth:`_measure`).

        For a random cotangent ``r`` ``(c,)`` and each example ``x_i`` of ``batch`` (two), the
        per-example gradient ``J(x_i)^T r`` this engine reconstructs for each parameter must equal
        the ordinary gradient of ``<r, f(x_i)>`` with ``x_i`` evaluated alone. A parameter used
        where the hooks do not see it (outside its module's forward), a module called with keyword
        arguments or on something other than the batch, or a layer that sees these two examples
        in another order fails this, and its layer falls back.

        Both sides are evaluated at the weights plus a small seeded perturbation
        (:func:`~conetool.ntk_checks.perturbed`), not at the checkpoint's own: a weight that is
        zero there (a zero-initialised head makes every gradient behind it zero) would hide a
        second use of a parameter, and the layout this leaves is kept for the whole run
        (:class:`~conetool.ntk_memo.EngineMemo`). The pair's outputs kept for the independence
        check are those at the same perturbed weights.
        """
        b = batch.shape[0]
        dtype = next(iter(self.params.values())).dtype
        at = perturbed(self.params)
        live = {k: v.detach().requires_grad_() for k, v in at.items()}
        with torch.enable_grad():
            outs = [self.forward(batch[i : i + 1], live).reshape(1, -1) for i in range(b)]
        self.c = outs[0].shape[1]
        cot = self._check_cotangent()
        reference: list[dict[str, Tensor | None]] = []
        with torch.enable_grad():
            for single in outs:
                # An output no trainable parameter reaches (a group of parameters forward never
                # uses, such as an auxiliary head in eval mode: kernels --per-layer) has zero
                # gradients, which autograd refuses to compute.
                alone = (
                    torch.autograd.grad(single, list(live.values()), cot, allow_unused=True)
                    if single.requires_grad
                    else (None,) * len(live)
                )
                reference.append(dict(zip(live, alone, strict=True)))
        tol = 10 * math.sqrt(torch.finfo(dtype).eps)
        out, saved = self._hooked_pass(batch, at)
        if out is not None:
            if b >= 2:
                self.pair_outputs = (out.detach()[:2], torch.cat(outs[:2]).detach())
            grads = self._cotangents(out, cot)
            checked: list[tuple[HookedLayer, list[str]]] = []
            pairs: list[tuple[Tensor, list[Tensor | None]]] = []  # per parameter: got, want
            for layer in list(self.layers):
                try:
                    found = per_example_grads(layer, grads, at, {**self.tensors, **at})
                except (RuntimeError, ValueError):
                    self._drop(layer)
                    continue
                checked.append((layer, list(found)))
                pairs += [
                    (rows, [alone[name] for alone in reference]) for name, rows in found.items()
                ]
            gaps = iter(_worst_gaps(pairs, tol))
            for layer, names in checked:
                worst = [next(gaps) for _ in names]
                if not all(gap <= 0 for gap in worst):  # NaN disagrees, as a NaN gradient must
                    self._drop(layer)
        self._measure(b, saved)

    def _hooked_pass(
        self, batch: Tensor, params: dict[str, Tensor] | None = None
    ) -> tuple[Tensor | None, dict[int, int]]:
        """The hooked forward pass of ``batch`` (outputs ``(b, c)``, each layer's calls recorded)
        at ``params`` (default: the model's) and the activations it saved (storage -> bytes per
        example). A module called in a way the hooks cannot split moves to the fallback path and
        the pass runs again, and one the pass did not call moves there after it; ``None`` and no
        activations when no hooked layer is left."""
        while self.layers:
            try:
                owned = [*self.tensors.values(), *(params or {}).values()]  # not activations
                with saved_activations(owned, batch.shape[0]) as saved:
                    out = self._record(batch, params)
            except Unsupported as exc:
                self._drop(exc.layer)
                continue
            # A module never called (unused, or its weight used through F.linear, as
            # nn.MultiheadAttention uses its out_proj's) has no rows the hooks could form.
            for layer in [layer for layer in self.layers if not layer.calls]:
                self._drop(layer)
            return (out, saved) if self.layers else (None, {})
        return None, {}

    def _check_cotangent(self) -> Tensor:
        """The check's random cotangent ``(1, c)`` (seeded), made once. The set-up that leaves the
        check for later makes it before the blocks: a copy from the host to a GPU waits for
        everything queued on the device, which after the blocks would be all of them."""
        if self._cotangent is None:
            generator = torch.Generator().manual_seed(0)
            cot = torch.randn(1, self.c, generator=generator, dtype=torch.float64)
            dtype = next(iter(self.params.values())).dtype
            self._cotangent = cot.to(device=self.x.device, dtype=dtype)
        return self._cotangent

    def _measure_only(self, batch: Tensor) -> None:
        """The check's hooked pass without the check: the output size and the bytes per example
        (modules called in a way the hooks cannot split still move to the fallback here)."""
        out, saved = self._hooked_pass(batch)
        if out is None:  # every layer on the fallback path: the output size from a plain pass
            out = self.forward(batch[:1]).reshape(1, -1)
        self.c = out.shape[1]
        del out
        self._check_cotangent()
        self._measure(batch.shape[0], saved)

    def _measure(self, b: int, saved: dict[int, int]) -> None:
        """Bytes per example (recording, cotangents, rows) and each layer's kron/dense choice, from
        the calls the check's hooked pass over ``b`` examples recorded for the layers that passed
        it (which it then lets go) and the activations that pass saved (storage -> bytes per
        example)."""
        k = self.c if self.kind != "sum" else 1
        n = self.n
        # Counted in values per example, then in bytes. A recorded call's input and output lead
        # with the batch (the hooks check it), so one example's share is exactly 1/b of each.
        activations = 0  # recorded inputs and output perturbations (and unfolded patches)
        cotangents = 0  # output cotangents, per cotangent
        largest = 0  # the largest output cotangent of one call, per cotangent
        row_fixed = 0  # resident rows that do not grow with the cotangents
        row_per_cotangent = 0  # and those per cotangent
        choose = {} if self.pairs is None else {"pairs": self.pairs}
        for layer in self.layers:
            eps = sum(call.eps.numel() // b for call in layer.calls)
            cotangents += eps
            largest = max([largest, *(call.eps.numel() // b for call in layer.calls)])
            activations += sum((call.inp.numel() + call.eps.numel()) // b for call in layer.calls)
            if layer.mode in ("local", "norm"):
                row_per_cotangent += numel(self.params, layer.names.values())
                continue
            positions, d_a, d_g = layer_shape(layer)
            bias = "bias" in layer.names
            if "weight" not in layer.names:
                row_per_cotangent += d_g
                continue
            p = cast(Tensor, layer.module.weight).numel()
            layer.mode = _choose(self.kind, n, k, positions, d_a, d_g, p, **choose)
            if layer.mode == "kron":  # the bias rides along as a constant input
                activations += positions * d_a  # a convolution's unfolded input
                row_fixed += positions * (d_a + bias)
                row_per_cotangent += positions * d_g
            else:
                row_per_cotangent += p + bias * d_g
        for layer in self.layers:
            layer.calls = []
        size = self.value_bytes
        self._activation_bytes = activations * size + (sum(saved.values()) if self.layers else 0)
        self._cotangent_bytes = cotangents * size
        self._largest_cotangent_bytes = largest * size
        self._row_bytes_fixed = row_fixed * size
        self._row_bytes_per_cotangent = row_per_cotangent * size
        self._fallback_row_bytes = numel(self.params, self.fallback) * size
        if self.fallback:
            self._activation_bytes += 3 * max(self._activation_bytes, 1)
            self._row_bytes_per_cotangent += self._fallback_row_bytes

    def resident(self, g: int) -> int:
        """Bytes of one example's rows for ``g`` cotangents."""
        return self._row_bytes_fixed + g * self._row_bytes_per_cotangent

    def transient(self, g: int) -> int:
        """Bytes one example adds to a call: recording, cotangents (``g`` held and, with ``g > 1``,
        one backward pass's in flight; see :meth:`_held_cotangent_bytes`), its rows and one
        copy."""
        return (
            2 * self._activation_bytes
            + self._held_cotangent_bytes(g)
            + 2 * self.resident(g)
            + 2 * g * self._fallback_row_bytes
        )

    def _held_cotangent_bytes(self, g: int) -> int:
        """Bytes of one example's output cotangents held at once during a call with ``g``: the
        ``g`` sets and, while ``g > 1``, one backward pass's set in flight or, after the passes,
        with the fused copies, one layer output's ``g`` copied into the rows' layout."""
        held = g * self._cotangent_bytes
        if g == 1:
            return held
        if self.fuses_copies():
            return held + max(self._cotangent_bytes, g * self._largest_cotangent_bytes)
        return held + self._cotangent_bytes

    def activations(self, g: int) -> int:
        """The activations part of :meth:`transient`."""
        return self._activation_bytes + g * self._cotangent_bytes


def _choose(
    kind: str, n: int, k: int, t: int, d_a: int, d_g: int, p: int, pairs: float | None = None
) -> str:
    """``"kron"`` or ``"dense"``: the cheaper way (in multiply-adds) to contract one layer's weight.

    Dense: per-example gradients (``n·k·T·p`` to form) and their products (``pairs`` of
    ``k·p``-wide rows, ``n(n+1)/2`` by default; ``full``: ``k²·p`` per pair). Factored ("kron"):
    per pair ``T²·(d_a + k·d_g)`` in two products (``full``: ``T²·(d_a + k²·d_g)``) plus the
    elementwise product and sum, counted four times over as it runs at memory speed; grouped
    convolutions are always dense.
    """
    if pairs is None:
        pairs = n * (n + 1) / 2
    kk = k * k if kind == "full" else k
    if d_a * d_g != p:  # a grouped convolution
        return "dense"
    dense = n * k * t * p + pairs * kk * p
    kron = pairs * t * t * (d_a + kk * d_g + 4 * kk)
    return "kron" if kron < dense else "dense"


def _worst_gaps(pairs: list[tuple[Tensor, list[Tensor | None]]], tol: float) -> list[float]:
    """Per parameter, the worst over the examples of ``|got - want| - tol·(|got| + |want|)`` (norms
    over the parameter's entries): ``<= 0`` agrees; NaN, and ``inf`` for differing shapes, do not.

    ``pairs``: per parameter, the reconstructed per-example gradients ``(b, 1, *shape)`` and the
    gradient of each of the ``b`` examples evaluated alone (``None``: unused there, so zero). All
    norms are three ``torch._foreach_norm`` calls and one ``torch._foreach_sub`` (fused kernels on
    CUDA) and are read back once: no launches or host round trips per parameter on a GPU.
    """
    got: list[Tensor] = []
    want: list[Tensor] = []
    # Each parameter's slice of got and want; None where the shapes differ.
    spans: list[tuple[int, int] | None] = []
    for rows, alone in pairs:
        examples = [
            (rows[i, 0], w if w is not None else torch.zeros_like(rows[i, 0]))
            for i, w in enumerate(alone)
        ]
        if any(g.shape != w.shape for g, w in examples):
            spans.append(None)
            continue
        spans.append((len(got), len(got) + len(examples)))
        got += [g for g, _ in examples]
        want += [w for _, w in examples]
    gaps: list[float] = []
    if got:
        err, got_norm, want_norm = (
            torch.stack(torch._foreach_norm(tensors)).double()
            for tensors in (torch._foreach_sub(got, want), got, want)
        )
        gaps = (err - tol * (got_norm + want_norm)).tolist()
    worst = []
    for span in spans:
        if span is None:
            worst.append(math.inf)
            continue
        mine = gaps[span[0] : span[1]]
        # max() would skip a NaN that is not first; a NaN gap must disagree.
        worst.append(math.nan if any(math.isnan(v) for v in mine) else max(mine))
    return worst
