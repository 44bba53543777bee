"""The reference eNTK engine: Jacobian rows from ``vmap`` over examples of ``vjp``.

One forward pass per example and one reverse pass ``vmap``-ed over a set of cotangent vectors, for
every trainable parameter; rows are kept per parameter tensor, never concatenated into a ``p``-wide
matrix. A model with a custom ``torch.autograd.Function`` that torch.func cannot transform (no
``setup_context``, or no vmap rule) gets the same rows from ordinary autograd instead, one example
at a time (:func:`looped_grads`: slower, exact), as does one that writes each
example's values in place into a tensor its forward pass made for the whole batch
(``torch.zeros(n, k)`` then ``acc += h``; :func:`~conetool.ntk_failures.written_in_place`), and
one that holds nn.PReLU or a recurrent layer (nn.GRU, nn.LSTM, nn.RNN), which have no working
vmap rule (:func:`~conetool.ntk_failures.held_without_vmap_rule`). It is the exact check of the
structured engine (:mod:`conetool.ntk_structured`), and the path that engine falls back to for
parameters it cannot see.

Time: it costs what ``vmap(jacrev)`` costs, and on a CPU per-example gradients of convolutions
under ``vmap`` are slow (grouped convolutions): vgg16 (15M parameters) with n = 500 under an 8 GiB
budget takes tens of minutes on two cores with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from .errors import ModelError
from .ntk_buffers import updates_buffers
from .ntk_failures import (
    PERFORMANCE_DROP,
    held_without_vmap_rule,
    holds_module_without_vmap_rule,
    loop_notes_dropped,
    random_in_vmap,
    untransformable_function,
    vmap_failures_named,
    written_in_place,
)
from .ntk_saved import saved_activations
from .ntk_terms import Dense, Term

__all__ = ["JacobianRows", "looped_grads", "vmapped_or_looped"]


class JacobianRows:
    """The reference engine as a row source: ``vmap`` over examples of ``vjp`` (one forward pass
    per example, one reverse pass ``vmap``-ed over the cotangents), one dense term per parameter
    tensor.

    Memory per example (measured on resnet20 and lenet5, a call peaks at about
    ``2·saved + 2·g·row`` per example): its saved activations, the gradients in flight, its rows
    and one transient copy of them; ``saved`` is estimated from the tensors the forward pass of one
    example saves for the backward pass, ``largest`` the largest of them.
    """

    def __init__(
        self,
        forward: Callable[..., Tensor],
        params: dict[str, Tensor],
        x: Tensor,
        kind: str,
        model: nn.Module | None = None,
        looped: bool = False,
    ) -> None:
        self.params = params
        self.forward = forward
        # vmap failed on the model (in this call, or an earlier one of its signature: looped):
        # ordinary autograd instead
        self.looped = looped
        self.model = model  # whether it holds a module without a vmap rule (ntk_failures)
        self.x = x
        self.full = kind == "full"
        self.c, self.saved, self.largest = _measure(forward, params, x[:1])
        self.row = sum(t.numel() * t.element_size() for t in params.values())
        self.fixed = 2 * self.row  # the parameters and a copy

        def single(p: dict[str, Tensor], example: Tensor, cot: Tensor) -> dict[str, Tensor]:
            pair = vjp(lambda q: forward(example.unsqueeze(0), q).reshape(-1), p)
            _, pullback = cast("tuple[Tensor, Callable[..., Any]]", pair)  # no has_aux: two
            return vmap(pullback)(cot)[0]  # name -> (g, *shape)

        self._rows_of = vmap(single, in_dims=(None, 0, None))

    def rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]:
        """Dense rows of examples ``lo:hi``: ``(b·g, p_t)`` for ``full``, else ``(b, g·p_t)``."""
        batch = self.x[lo:hi]
        block, self.looped = vmapped_or_looped(
            lambda: self._rows_of(self.params, batch, cot),
            lambda: looped_grads(self.forward, self.params, list(self.params), batch, cot),
            self.looped,
            self.model,
        )  # name -> (b, g, *shape)
        b = hi - lo
        per = cot.shape[0] if self.full else 1
        mats: list[Term] = []
        for name in list(block):
            value = block.pop(name)  # drop each vmap output once it is a matrix
            mats.append(Dense(value.contiguous().view(per * b, -1)))
            del value
        return mats

    def resident(self, g: int) -> int:
        return g * self.row

    def transient(self, g: int) -> int:
        return 3 * self.saved + g * (2 * self.row + 4 * self.largest)

    def activations(self, g: int) -> int:
        return 3 * self.saved + 4 * g * self.largest


def vmapped_or_looped(
    vmapped: Callable[[], dict[str, Tensor]],
    looped: Callable[[], dict[str, Tensor]],
    loop: bool,
    model: nn.Module | None,
) -> tuple[dict[str, Tensor], bool]:
    """``(grads, loop)``: ``vmapped()`` (its errors named by :func:`vmap_failures_named`), or
    ``looped()`` once torch.func refused a custom autograd.Function of the model
    (:func:`~conetool.ntk_failures.untransformable_function`), failed on a model that updates
    a buffer in place (:mod:`conetool.ntk_buffers`) or refused to write a value of each example
    into a tensor the forward pass made for all of them
    (:func:`~conetool.ntk_failures.written_in_place`) or to make a random draw that the model seeds
    itself (:func:`~conetool.ntk_failures.random_in_vmap`), or failed on a model that holds
    nn.PReLU or a recurrent layer, which have no working vmap rule
    (:func:`~conetool.ntk_failures.held_without_vmap_rule`), and from then on (``loop`` returned
    True, to be passed back): the same per-example gradients by ordinary autograd."""
    if not loop:
        try:
            # torch's note that vmap loops over the examples where it is bound to fail
            with vmap_failures_named(), loop_notes_dropped(holds_module_without_vmap_rule(model)):
                return vmapped(), False
        except ModelError as exc:
            if not (
                untransformable_function(exc)
                or _in_place(exc)
                or written_in_place(exc)
                or random_in_vmap(exc)
                or held_without_vmap_rule(exc, model)
            ):
                raise
            if random_in_vmap(exc):
                return _drawn_alike(looped, exc), True
    return looped(), True


def _drawn_alike(looped: Callable[[], dict[str, Tensor]], exc: ModelError) -> dict[str, Tensor]:
    """``looped()`` for a model whose forward pass makes a random draw that ``vmap`` refused:
    computed twice, which must agree bit for bit (a generator the model seeds itself draws the
    same values on every call). Where they differ (the draws are random, and no check of two
    examples ran before: a single example, or ``check=False``) the model is refused: its kernel
    would be random."""
    first = looped()
    second = looped()
    if any(not torch.equal(first[name], second[name]) for name in first):
        raise ModelError(
            "the model's output is random in eval mode: its forward pass makes a random draw "
            f"({exc.__cause__}), and two evaluations of the same examples give other gradients. "
            "A functional dropout (F.dropout(x, p) is on unless given training=self.training, as "
            "F.scaled_dot_product_attention's dropout_p is) or a random draw (torch.rand, "
            "torch.randn) in the forward pass does this; make it follow the module's mode, or "
            "use nn.Dropout, which eval mode turns off."
        ) from exc
    return first


def _in_place(exc: ModelError) -> bool:
    """Whether ``vmap`` failed (a RuntimeError inside PyTorch) on a model that updates a buffer
    in place: a value that differs between examples written into its copy, which ``vmap`` holds
    once for all of them (``self.peak.copy_(h.max())``, ``self.mean.add_(h.mean(0))``), raises
    one of several errors. Ordinary autograd, one example at a time, computes it."""
    return bool(updates_buffers()) and isinstance(exc.__cause__, RuntimeError)


def looped_grads(
    forward: Callable[..., Tensor],
    params: dict[str, Tensor],
    names: list[str],
    batch: Tensor,
    cot: Tensor,
) -> dict[str, Tensor]:
    """Per-example gradients ``name -> (b, g, *shape)`` of ``params[name]`` for ``names``, the
    other parameters fixed: for each example of ``batch`` ``(b, *shape)`` one ordinary forward
    pass ``forward(example, params)`` and one backward pass for all the cotangents of ``cot``
    ``(g, c)`` (``is_grads_batched``: the backward graph ``vmap``-ed over them), or one backward
    pass per cotangent where ``vmap`` refuses that graph (a custom ``torch.autograd.Function``
    without a vmap rule).

    What ``vmap`` over examples of ``vjp`` gives, for a model that torch.func cannot transform (a
    custom ``torch.autograd.Function`` without ``setup_context`` or a vmap rule, nn.GRU), whose
    own ``backward`` ordinary autograd calls. ``b`` forward passes and ``b`` (or ``b·g``) backward
    passes: slower than ``vmap``.
    """
    fixed = {k: v for k, v in params.items() if k not in names}
    rows: dict[str, list[Tensor]] = {name: [] for name in names}
    batched = cot.shape[0] > 1  # until vmap refuses the backward graph
    with torch.enable_grad():
        for example in batch:
            live = {name: params[name].detach().requires_grad_() for name in names}
            out = forward(example.unsqueeze(0), {**fixed, **live}).reshape(-1)
            if out.requires_grad:
                grads, batched = _pulled_back(out, list(live.values()), cot, batched)
            else:  # no parameter reaches the outputs: every gradient is zero
                grads = [t.new_zeros((cot.shape[0], *t.shape)) for t in live.values()]
            for name, grad in zip(names, grads, strict=True):
                rows[name].append(grad)
            del out, grads
    return {name: torch.stack(rows[name]) for name in names}


def _pulled_back(
    out: Tensor, tensors: list[Tensor], cot: Tensor, batched: bool
) -> tuple[list[Tensor], bool]:
    """``(grads, batched)``: the gradients ``(g, *shape)`` of ``<cot[j], out>`` for each tensor
    and cotangent, from one backward pass ``vmap``-ed over the ``g`` cotangents while
    ``batched``, else (and from then on, ``batched`` returned False) one backward pass per
    cotangent."""
    g = cot.shape[0]
    if batched:
        try:
            with warnings.catch_warnings():
                # torch's note that vmap loops over the cotangents for an operation without a
                # batching rule (nn.LSTM's backward on a CPU): still one call, and exact
                warnings.filterwarnings("ignore", message=PERFORMANCE_DROP)
                grads = torch.autograd.grad(
                    out,
                    tensors,
                    cot,
                    retain_graph=True,  # the loop below needs it if this fails
                    allow_unused=True,
                    materialize_grads=True,
                    is_grads_batched=True,
                )
            return list(grads), True
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, NotImplementedError):
            pass
    per: list[tuple[Tensor, ...]] = [
        torch.autograd.grad(
            out,
            tensors,
            cot[j],
            retain_graph=j + 1 < g,
            allow_unused=True,
            materialize_grads=True,
        )
        for j in range(g)
    ]
    return [torch.stack(grads) for grads in zip(*per, strict=True)], False


def _measure(
    forward: Callable[..., Tensor], params: dict[str, Tensor], example: Tensor
) -> tuple[int, int, int]:
    """``(c, saved, largest)``: outputs per example, and the bytes of activations that one example's
    forward pass saves for the backward pass, in total and the largest single one.
    """
    # Parameters (and the live copies below, which share their storage) and the input are not
    # activations.
    live = {name: t.detach().requires_grad_() for name, t in params.items()}
    with torch.enable_grad(), saved_activations([*params.values(), example]) as seen:
        out = forward(example, live)
    sizes = list(seen.values())
    return out.numel(), sum(sizes), max(sizes, default=0)
