"""The probe set: the fixed, class-balanced examples on which every eNTK is computed.

:func:`make_probe` draws ``probe.size`` examples of ``probe.split`` with ``probe.seed``:

* class quotas: ``size // num_classes`` each, the remainder ``size % num_classes`` going one each
  to the first classes in class order (0, 1, ...);
* within each class the examples are taken in the order of a ``torch.randperm`` of that class's
  positions, the permutations drawn class by class from one generator seeded with ``probe.seed``;
* a class with fewer examples than its quota gives all it has, and the shortfall is filled one
  example at a time, round-robin over the classes in class order that still have examples left
  (taking each class's next example in its permutation), so the counts stay as even as possible;
* the result is ordered by class, then by position in the split, so kernel matrices show the
  class blocks directly.

The inputs are the split's stored examples, never augmented. The probe's :attr:`Probe.hash` is a
content hash (see :func:`probe_hash`) recorded in the store so that kernels of different probe
sets are never mixed.

Example::

    probe = make_probe(load_data(spec.data), spec.probe)
    probe.inputs.shape  # (500, 3, 32, 32); probe.labels (500,); probe.indices (500,)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .data import DataBundle
from .data_split import as_input
from .errors import DataError
from .io import atomic_save_safetensors
from .spec import ProbeSpec

__all__ = [
    "Probe",
    "load_probe",
    "make_probe",
    "missing_classes_warning",
    "probe_hash",
    "save_probe",
]

_TENSORS = ("inputs", "labels", "indices")


@dataclass(frozen=True, eq=False)
class Probe:
    """A probe set: inputs (n, *shape) float32 (int64 or int32 for token ids, as the data set
    holds them), labels (n,) int64, indices (n,) int64 (positions
    in ``split`` of the data set), and ``hash``, the content hash of the three tensors."""

    inputs: Tensor
    labels: Tensor
    indices: Tensor
    split: str
    hash: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def probe_hash(inputs: Tensor, labels: Tensor, indices: Tensor) -> str:
    """16 hex digits of sha256 over, for inputs, labels and indices in turn: the name, dtype,
    shape and raw (C-contiguous, CPU, native byte order) bytes of the tensor."""
    digest = hashlib.sha256()
    for name, tensor in zip(_TENSORS, (inputs, labels, indices), strict=True):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def _class_counts(available: list[int], size: int) -> list[int]:
    """Per-class counts: balanced quotas, capped by what is available, shortfall filled
    round-robin in class order. ``sum(available) >= size`` is required."""
    classes = len(available)
    base, extra = divmod(size, classes)
    counts = [min(base + (c < extra), available[c]) for c in range(classes)]
    shortfall = size - sum(counts)
    while shortfall > 0:
        for c in range(classes):
            if shortfall > 0 and counts[c] < available[c]:
                counts[c] += 1
                shortfall -= 1
    return counts


def make_probe(
    bundle: DataBundle,
    spec: ProbeSpec,
    *,
    size_flag: str | None = None,
    source: str | None = None,
) -> Probe:
    """Draw the probe set of ``spec`` from ``bundle`` (identical on every call; see the module doc).

    Raises :class:`DataError` when ``probe.size`` exceeds the split or a label lies outside
    ``0..num_classes-1``. ``size_flag`` is the flag that set ``spec.size``
    (``"--probe-size"``), named in that error in place of the spec's key; ``source``, the spec
    file, begins the errors that name its ``probe.size``.
    """
    split = bundle.split(spec.split)
    labels = split.labels().cpu()
    n, classes = int(labels.shape[0]), bundle.num_classes
    where = f"{source}: " if source else ""
    if spec.size <= 0:
        raise DataError(f"{where}'probe.size' must be positive, got {spec.size}.")
    if spec.size > n and size_flag is not None:
        raise DataError(
            f"{size_flag} {spec.size} is larger than the {spec.split} split of {bundle.name}, "
            f"which has {n} examples. Pass {size_flag} {n} or less."
        )
    if spec.size > n:
        raise DataError(
            f"{where}'probe.size' = {spec.size} is larger than the {spec.split} split of "
            f"{bundle.name}, which has {n} examples. Set probe.size to at most {n}."
        )
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DataError(
            f"the {spec.split} split of {bundle.name} has labels in "
            f"{int(labels.min())}..{int(labels.max())}, outside 0..{classes - 1} "
            f"(num_classes = {classes}). Labels must be class indices."
        )
    generator = torch.Generator().manual_seed(spec.seed)
    members = []
    for c in range(classes):
        positions = torch.nonzero(labels == c).flatten()
        members.append(positions[torch.randperm(len(positions), generator=generator)])
    counts = _class_counts([len(m) for m in members], spec.size)
    chosen = [m[:k].sort().values for m, k in zip(members, counts, strict=True)]
    indices = torch.cat(chosen).to(torch.int64)
    inputs, probe_labels = split.batch(indices)
    inputs = as_input(inputs.detach().cpu()).contiguous()
    probe_labels = probe_labels.cpu().to(torch.int64).contiguous()
    return Probe(
        inputs=inputs,
        labels=probe_labels,
        indices=indices,
        split=spec.split,
        hash=probe_hash(inputs, probe_labels, indices),
    )


def _classes_text(classes: list[int]) -> str:
    """``class 4``, ``classes 5 to 9`` (a run of them) or ``classes 2, 5 and 7``."""
    if len(classes) == 1:
        return f"class {classes[0]}"
    if classes == list(range(classes[0], classes[-1] + 1)):
        return f"classes {classes[0]} to {classes[-1]}"
    return f"classes {', '.join(map(str, classes[:-1]))} and {classes[-1]}"


def missing_classes_warning(
    probe: Probe,
    num_classes: int,
    *,
    size_flag: str | None = None,
    source: str | None = None,
) -> str | None:
    """A warning when a probe set of fewer examples than ``num_classes`` leaves classes out (its
    quotas are one example each for the first ``size`` classes: :func:`make_probe`), or None.
    Such a probe set is drawn as asked, but every kernel (and the distance, embedding and
    spectrum read from them) sees only the classes it holds: the message names the classes left
    out and the fix, ``size_flag`` (``"--probe-size"``) when that set the size, else the spec's
    ``probe.size`` (``source``, the spec file, before it)."""
    size = len(probe)
    if size >= num_classes:
        return None
    held = set(probe.labels.tolist())
    missing = [c for c in range(num_classes) if c not in held]
    if not missing:
        return None
    given = (
        f"{size_flag} {size}"
        if size_flag is not None
        else f"{f'{source}: ' if source else ''}'probe.size' = {size}"
    )
    fix = (
        f"Pass {size_flag} {num_classes} or more"
        if size_flag is not None
        else f"Set probe.size to {num_classes} or more (or pass --probe-size N)"
    )
    return (
        f"{given} is smaller than the {num_classes} classes of the data: the probe set, one "
        f"example per class in class order, holds no example of {_classes_text(missing)}, so "
        "the kernels (and the distance, embedding and spectrum read from them) see only the "
        f"others. {fix}: the paper uses 500, and a multiple of {num_classes} gives every class "
        "as many."
    )


def save_probe(probe: Probe, path: str | Path) -> None:
    """Write ``probe`` to ``path`` (safetensors: tensors inputs, labels, indices; metadata split,
    hash), atomically."""
    atomic_save_safetensors(
        Path(path),
        {"inputs": probe.inputs, "labels": probe.labels, "indices": probe.indices},
        metadata={"split": probe.split, "hash": probe.hash},
    )


def load_probe(path: str | Path) -> Probe:
    """Read a probe set written by :func:`save_probe` and verify its content hash.

    Raises :class:`DataError` naming the file when it is missing, unreadable, incomplete or does
    not match its recorded hash.
    """
    path = Path(path)
    fix = (
        "Restore the file, or delete it and rebuild the store with `conetool kernels ... "
        "--overwrite`, which draws the probe set again from the spec."
    )
    if not path.is_file():
        raise DataError(f"probe file {path} does not exist. {fix}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            missing = [k for k in _TENSORS if k not in keys]
            if missing:
                raise DataError(
                    f"probe file {path} lacks the tensor(s) {', '.join(missing)} (it holds "
                    f"{', '.join(sorted(keys)) or 'none'}). {fix}"
                )
            tensors = {k: handle.get_tensor(k) for k in _TENSORS}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(
            f"probe file {path} is not a readable safetensors file ({exc}). {fix}"
        ) from exc
    if "hash" not in metadata or "split" not in metadata:
        raise DataError(f"probe file {path} lacks the metadata 'split' and 'hash'. {fix}")
    inputs, labels, indices = (tensors[k] for k in _TENSORS)
    actual = probe_hash(inputs, labels, indices)
    if actual != metadata["hash"]:
        raise DataError(
            f"probe file {path} was modified or is corrupted: its content hash is {actual} but "
            f"it records {metadata['hash']}. {fix}"
        )
    return Probe(inputs, labels, indices, metadata["split"], metadata["hash"])
