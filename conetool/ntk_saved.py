"""Measuring what a forward pass saves for its backward pass: the bytes of each activation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["saved_activations"]


@contextmanager
def saved_activations(owned: Iterable[Tensor]) -> Iterator[dict[int, int]]:
    """Inside the block, record the storage (pointer -> bytes) of every tensor autograd saves
    for the backward pass, except those sharing storage with ``owned`` (parameters and inputs,
    which are not activations). Yields that dict; a storage saved twice counts once."""
    skip = {t.untyped_storage().data_ptr() for t in owned}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen
