"""Stores written by hand, without a training run, which the store tests share: the float32
store of run ``/runs/x`` (``IDENT``, ``HEADER``), records of a fixed norm 1 (:func:`record`),
kernels small multiples of the identity (:func:`store_with_kernels`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from conetool import paths
from conetool.store import StepRecord, Store, StoreIdentity

IDENT = StoreIdentity(spec_hash="aaaa", probe_hash="pppp", kind="trace", dtype="float32")
HEADER = {"checkpoints": "/runs/x", "spec": {"model": {"arch": "mlp"}}}

#: (field, value) pairs that each make another store identity than IDENT's.
IDENTITY_CHANGES = [
    ("spec_hash", "bbbb"),
    ("probe_hash", "qqqq"),
    ("kind", "full"),
    ("dtype", "float64"),
]


def record(step: int, fingerprint: str = "f1") -> StepRecord:
    """The record of ``step`` from ``/runs/x/step_XXXXXX.safetensors``, of norm 1."""
    return StepRecord(
        step=step,
        source=[f"/runs/x/step_{step:06d}.safetensors"],
        size=10,
        fingerprint=fingerprint,
        kernel=paths.kernel_relative(step),
        norm=1.0,
        seconds=0.5,
    )


def store_with_kernels(
    root: Path, ident: StoreIdentity = IDENT, steps: Iterable[int] = (0, 10)
) -> Store:
    """A closed store of ``ident`` holding a small kernel ``(step + 1) · I₂`` for each of
    ``steps``."""
    store = Store.open_for_writing(root, ident, HEADER)
    for step in steps:
        store.write_kernel(record(step), (step + 1) * torch.eye(2))
    store.close()
    return store
