"""Every on-disk name conetool reads or writes, in one place.

Checkpoint directories written by ``conetool train``::

    CKPTS/conetool.toml                     the resolved spec
    CKPTS/metrics.csv                       train / test loss and accuracy
    CKPTS/step_002000.safetensors           model state dict, metadata step, epoch, spec_hash, ...
    CKPTS/step_002000.optim.safetensors     optimizer state beside it

Steps are zero-padded to at least 6 digits so that names sort in step order.
"""

from __future__ import annotations

from pathlib import Path

SPEC_NAME = "conetool.toml"
METRICS_NAME = "metrics.csv"
CHECKPOINT_SUFFIX = ".safetensors"
OPTIMIZER_SUFFIX = ".optim.safetensors"


def step_name(step: int) -> str:
    """``step_002000`` for step 2000 (at least 6 digits)."""
    return f"step_{step:06d}"


def checkpoint(directory: Path, step: int) -> Path:
    """The model checkpoint of ``step`` in a directory written by ``conetool train``."""
    return Path(directory) / f"{step_name(step)}{CHECKPOINT_SUFFIX}"


def optimizer_state(directory: Path, step: int) -> Path:
    """The optimizer state saved beside the checkpoint of ``step``."""
    return Path(directory) / f"{step_name(step)}{OPTIMIZER_SUFFIX}"


def spec(directory: Path) -> Path:
    """The resolved spec copied into a checkpoint directory."""
    return Path(directory) / SPEC_NAME


def metrics(directory: Path) -> Path:
    """The training metrics CSV of a checkpoint directory."""
    return Path(directory) / METRICS_NAME


def is_optimizer_state(path: Path) -> bool:
    """True for optimizer-state files, which are never model checkpoints."""
    name = Path(path).name
    return name.endswith(OPTIMIZER_SUFFIX) or name.endswith(".optim.pt")


# The store written by the analysis commands (``--store``, default ``conetool-out``).
DEFAULT_STORE = "conetool-out"
MANIFEST_NAME = "manifest.json"
PROBE_NAME = "probe.safetensors"
KERNELS_DIR = "kernels"


def manifest(store: Path) -> Path:
    """The store's manifest: provenance and the per-step index of kernels."""
    return Path(store) / MANIFEST_NAME


def probe(store: Path) -> Path:
    """The probe set the store's kernels were computed on."""
    return Path(store) / PROBE_NAME


def kernel(store: Path, step: int) -> Path:
    """The kernel of ``step``: ``STORE/kernels/step_002000.safetensors``."""
    return Path(store) / KERNELS_DIR / f"{step_name(step)}{CHECKPOINT_SUFFIX}"


def kernel_relative(step: int) -> str:
    """The kernel's path relative to the store, as recorded in the manifest."""
    return f"{KERNELS_DIR}/{step_name(step)}{CHECKPOINT_SUFFIX}"
