"""Stores written by hand, without a training run, which the store and analysis tests share.

Two kinds:

* the store tests' float32 store of run ``/runs/x`` (``IDENT``, ``HEADER``): records of a fixed
  norm 1 (:func:`record`), kernels small multiples of the identity (:func:`store_with_kernels`);
* the analysis tests' float64 store of run ``/ckpts`` (``IDENT64``, ``CKPTS_HEADER``) holding
  given kernels, each recorded with its own norm (:func:`make_store`, :func:`write_step`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conetool import paths
from conetool.store import StepRecord, Store, StoreIdentity, kernel_norm

# ----------------------------------------------------------------- the store tests' float32 store

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


# ------------------------------------------------------------ the analysis tests' float64 store

IDENT64 = StoreIdentity("spec0", "probe0", "trace", "float64")
CKPTS_HEADER = {"checkpoints": "/ckpts"}


def open_store(
    root: Path,
    identity: StoreIdentity = IDENT64,
    header: Mapping[str, Any] = CKPTS_HEADER,
    overwrite: bool = False,
) -> Store:
    """``root`` opened for writing as the store of run ``/ckpts`` (of ``identity``)."""
    return Store.open_for_writing(root, identity, header, overwrite=overwrite)


def kernel_record(
    step: int, kernel: torch.Tensor, fingerprint: str | None = None, norm: float | None = None
) -> StepRecord:
    """The record of ``kernel`` as the kernel of ``step`` from
    ``/ckpts/step_XXXXXX.safetensors``; ``fingerprint`` default ``fp-STEP``, ``norm`` default
    the kernel's (1 for a non-finite one)."""
    if norm is None:
        norm = kernel_norm(kernel) if torch.isfinite(kernel).all() else 1.0
    return StepRecord(
        step=step,
        source=[f"/ckpts/step_{step:06d}.safetensors"],
        size=1,
        fingerprint=f"fp-{step}" if fingerprint is None else fingerprint,
        kernel=paths.kernel_relative(step),
        norm=norm,
        seconds=0.0,
    )


def write_step(
    store: Store,
    step: int,
    kernel: np.ndarray | torch.Tensor,
    fingerprint: str | None = None,
    norm: float | None = None,
) -> None:
    """Write ``kernel`` (any shape) as the kernel of ``step``, recorded by
    :func:`kernel_record`."""
    tensor = torch.as_tensor(kernel)
    store.write_kernel(kernel_record(step, tensor, fingerprint, norm), tensor)


def make_store(
    root: Path,
    steps: Sequence[int],
    kernels: Sequence[np.ndarray | torch.Tensor],
    *,
    tag: str = "fp",
    flush: bool = False,
    header: Mapping[str, Any] = CKPTS_HEADER,
    overwrite: bool = False,
) -> Path:
    """``root``, a closed float64 store holding ``kernels[i]`` as the kernel of ``steps[i]``,
    fingerprinted ``TAG-STEP``; ``flush``: ``manifest.json`` written after each kernel (as
    :meth:`Store.flush` does) rather than only when closing."""
    with open_store(root, header=header, overwrite=overwrite) as store:
        for step, kernel in zip(steps, kernels, strict=True):
            write_step(store, step, kernel, f"{tag}-{step}")
            if flush:
                store.flush()
    return root
