"""The reference eNTK engine: Jacobian rows from ``vmap`` over examples of ``vjp``.

One forward pass per example and one reverse pass ``vmap``-ed over a set of cotangent vectors, for
every trainable parameter; rows are kept per parameter tensor, never concatenated into a ``p``-wide
matrix. It is the exact check of the structured engine (:mod:`conetool.ntk_structured`), and the
path that engine falls back to for parameters it cannot see.

Time: it costs what ``vmap(jacrev)`` costs, and on a CPU per-example gradients of convolutions
under ``vmap`` are slow (grouped convolutions): vgg16 (15M parameters) with n = 500 under an 8 GiB
budget takes tens of minutes on two cores with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap

from .ntk_failures import vmap_failures_named
from .ntk_saved import saved_activations
from .ntk_terms import Dense, Term

__all__ = ["JacobianRows"]


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
    ) -> None:
        self.params = params
        self.model = model  # named in an error torch.func raises (ntk_failures.failing_module)
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
        with vmap_failures_named(self.model):
            block = self._rows_of(self.params, self.x[lo:hi], cot)  # name -> (b, g, *shape)
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
