"""Measuring what a forward pass saves for its backward pass: the bytes of each activation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["per_example_bytes", "saved_activations"]


@contextmanager
def saved_activations(owned: Iterable[Tensor], batch: int = 1) -> Iterator[dict[int, int]]:
    """Inside the block, record the storage (pointer -> bytes per example) of every tensor autograd
    saves for the backward pass, except those sharing storage with ``owned`` (parameters and
    inputs, which are not activations). Yields that dict; a storage saved twice counts once.

    ``batch``: the examples the forward pass in the block evaluates; a storage's bytes are
    divided by it when every saved view of it leads with the batch dimension
    (:func:`per_example_bytes`), and counted whole (per example, so never less) otherwise.
    """
    skip = {t.untyped_storage().data_ptr() for t in owned}
    seen: dict[int, int] = {}
    batched: dict[int, bool] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip:
            leads = t.dim() > 0 and t.shape[0] == batch
            batched[ptr] = batched.get(ptr, True) and leads
            seen[ptr] = per_example_bytes(storage.nbytes(), batch, batched[ptr])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def per_example_bytes(nbytes: int, batch: int, batched: bool) -> int:
    """One example's share of a saved storage of ``nbytes`` from a pass over ``batch`` examples:
    ``nbytes / batch`` (rounded up) when the storage holds the batch, else all of it (a
    BatchNorm's per-channel statistics, say, which one example's pass saves as well)."""
    return -(-nbytes // batch) if batched else nbytes
