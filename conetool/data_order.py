"""The training data order: which examples make the batch of any global step, and the seed of its
augmentation. A pure function of ``(seed, step)``, so a resumed run, ``switch`` and a second
machine replay exactly the same batches.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch
from torch import Tensor

from .errors import DataError

__all__ = ["augment_generator", "batch_indices", "mix_seed", "steps_per_epoch"]


def mix_seed(*parts: object) -> int:
    """A deterministic 63-bit seed from ``parts`` (sha256 of their repr), for torch generators."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def steps_per_epoch(n_train: int, batch_size: int, *, spec_file: str | None = None) -> int:
    """Training steps per epoch: ``n_train // batch_size`` (the last partial batch is dropped).

    A batch larger than the split is a :class:`DataError`; ``spec_file`` (the spec's
    ``source``, where the caller has one) begins it, as the spec's own errors begin."""
    where = f"{spec_file}: " if spec_file else ""
    if batch_size <= 0:
        raise DataError(f"{where}'train.batch_size' must be positive, got {batch_size}.")
    if batch_size > n_train:
        raise DataError(
            f"{where}'train.batch_size' = {batch_size} is larger than the training split "
            f"({n_train} examples). Set train.batch_size to at most {n_train}."
        )
    return n_train // batch_size


@lru_cache(maxsize=4)
def _epoch_permutation(n_train: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(mix_seed("epoch", seed, epoch))
    return torch.randperm(n_train, generator=generator)


def batch_indices(n_train: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices (batch_size,) int64 of the training batch at global ``step``.

    Epoch ``e = step // steps_per_epoch`` visits the training split in the order
    ``torch.randperm(n_train)`` drawn from a generator seeded with a hash of ``("epoch", seed, e)``
    (see ``_mix``); the step takes the ``step % steps_per_epoch``-th block of ``batch_size`` from
    it. Every epoch visits ``steps_per_epoch * batch_size`` distinct examples (``drop_last``), and
    the result depends on ``(n_train, batch_size, seed, step)`` only, which makes resuming exact.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    per_epoch = steps_per_epoch(n_train, batch_size)
    epoch, position = divmod(step, per_epoch)
    perm = _epoch_permutation(n_train, seed, epoch)
    return perm[position * batch_size : (position + 1) * batch_size].clone()


def augment_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator that draws the augmentation of the batch at ``step`` (seeded with a hash of
    ``("augment", seed, step)``, independent of the data order's)."""
    return torch.Generator().manual_seed(mix_seed("augment", seed, step))
