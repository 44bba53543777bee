"""The spec whose ``[train]`` the verdict reads (``--spec`` of ``distance`` and ``embed``).

The kernels of a store depend on ``[model]``, ``[data]`` and ``[probe]``, not on the recipe of
``[train]`` (the checkpoints hold the weights it trained), with one exception:
``train.batch_size`` sets the step of a checkpoint named by epoch (``epoch x ceil(training
examples / batch_size)``), so which step each kernel is stored at. The verdict reads the
learning-rate schedule from ``[train]`` (S per unit of rate). So a spec that differs from the
store's only in the ``[train]`` keys of :data:`KERNEL_FREE_TRAIN_KEYS` is taken for the verdict
(a researcher's own spec completed with the run's schedule: no kernel is recomputed), and one
that differs in any other key is refused, naming it, as any other spec is
(:func:`verdict_spec`). :func:`schedule_record` is what ``summary.json`` records of it, and
:func:`same_schedule` whether a summary's verdict was read under the spec given now.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ConetoolError, StoreError
from ..spec import Spec, differing_keys, load_spec, resolved_differences, spec_from_dict
from ..store import Store

__all__ = [
    "KERNEL_FREE_TRAIN_KEYS",
    "read_from_note",
    "same_schedule",
    "schedule_record",
    "schedule_source",
    "verdict_spec",
]

#: The ``[train]`` keys no stored kernel depends on (every key of ``TrainSpec`` but
#: ``batch_size``, which sets the steps of checkpoints named by epoch). A key added to
#: ``[train]`` later is refused until it is judged here (``tests/test_schedule_spec.py``).
KERNEL_FREE_TRAIN_KEYS = frozenset(
    f"train.{key}"
    for key in (
        "steps",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "betas",
        "weight_decay",
        "label_smoothing",
        "schedule",
        "milestones",
        "gamma",
        "warmup_steps",
        "augment",
        "seed",
        "save_every",
        "save_at",
        "dense_every",
        "dense_until",
        "eval_every",
        "eval_batch_size",
    )
)


def verdict_spec(store: Store, spec: str | Path | Spec | None) -> tuple[Spec | None, list[str]]:
    """``spec`` loaded and checked against the store's: ``(spec, [])`` when it is the store's
    (same hash), ``(spec, keys)`` when it differs only in ``keys``, all of
    :data:`KERNEL_FREE_TRAIN_KEYS` (its ``[train]`` is then the verdict's, the kernels are the
    store's as they are); ``(None, [])`` without one. A :class:`~conetool.errors.StoreError`
    naming the keys that change kernels, for any other spec (or one the manifest's record cannot
    be compared with)."""
    if spec is None:
        return None, []
    loaded = spec if isinstance(spec, Spec) else load_spec(spec)
    if loaded.hash() == store.identity.spec_hash:
        return loaded, []
    stored = store.manifest.get("spec")
    keys = differing_keys(stored, loaded.to_dict()) if isinstance(stored, Mapping) else []
    trusted = _is_the_stores(stored, store.identity.spec_hash)
    if keys and trusted and all(key in KERNEL_FREE_TRAIN_KEYS for key in keys):
        return loaded, keys
    kernel_keys = [key for key in keys if key not in KERNEL_FREE_TRAIN_KEYS]
    shown = resolved_differences(stored, loaded.to_dict()) if isinstance(stored, Mapping) else []
    differs = f" It differs from the store's in {'; '.join(shown)}." if shown else ""
    which = (
        f" The kernels depend on {', '.join(kernel_keys)}"
        + (
            " (train.batch_size sets the steps of checkpoints named by epoch)"
            if "train.batch_size" in kernel_keys
            else ""
        )
        + ": only the other [train] keys (the schedule, lr, steps, ...) may differ, and the "
        "verdict reads them from --spec."
        if kernel_keys
        else ""
    )
    if isinstance(stored, Mapping) and not trusted:  # its keys tell nothing of the kernels'
        which += (
            f" The spec {paths.manifest(store.root)} records does not have the store's spec hash "
            f"{store.identity.spec_hash} (edited, or written by another conetool), so it cannot "
            "tell which keys the kernels depend on: only a spec of that hash is taken."
        )
    schedule = ", with the run's schedule written into its [train] if you like," if trusted else ""
    raise StoreError(
        f"--spec {loaded.source}: its hash is {loaded.hash()}, but the kernels of store "
        f"{store.root} were computed with spec hash {store.identity.spec_hash}.{differs}{which} "
        f"Pass the spec of that run (conetool report writes it to STORE/report/spec.toml)"
        f"{schedule} or leave --spec out: the store's manifest records it."
    )


def read_from_note(spec: Spec, keys: list[str]) -> str:
    """The note that the verdict reads ``[train]`` from ``spec``, which differs from the store's
    spec in ``keys`` (all :data:`KERNEL_FREE_TRAIN_KEYS`), not from the store's."""
    return (
        f"the verdict reads [train] (the learning-rate schedule) from --spec {spec.source}, "
        f"which differs from the spec of the store's kernels only in {', '.join(keys)}: no "
        "kernel depends on them, so the stored kernels are read as they are"
    )


def schedule_source(spec: Spec | None, keys: list[str]) -> str | None:
    """How the verdict names the spec it read the schedule from: ``"--spec FILE"`` for ``spec``
    differing from the store's in ``keys`` of ``[train]``; None (the store's spec) else."""
    return f"--spec {spec.source}" if spec is not None and keys else None


def schedule_record(store: Store, spec: Spec | None, keys: list[str]) -> dict[str, Any]:
    """What ``summary.json`` records of the spec whose ``[train]`` the verdict read:
    ``{"source": file, "spec_hash": its hash, "differs": keys}`` (``differs``: the ``[train]``
    keys it differs from the store's spec in; empty for the store's own), the manifest's spec
    when ``spec`` is None. A file given by a relative path is recorded by its absolute one: the
    report passes it to its Reproduce commands, which may run from another folder."""
    if spec is None:
        source = f"{paths.manifest(store.root)} (spec)"
        return {"source": source, "spec_hash": store.identity.spec_hash, "differs": []}
    given = Path(spec.source)
    source = str(given.absolute()) if given.is_file() else spec.source
    return {"source": source, "spec_hash": spec.hash(), "differs": list(keys)}


def same_schedule(summary: Mapping[str, Any], store: Store, spec: Spec | None) -> bool:
    """Whether the verdict of ``summary`` (``distance``'s ``summary.json``) was read under the
    ``[train]`` of ``spec``: always without one (a later command reads the schedule distance
    read, which the summary names); else when the summary's ``schedule_spec`` has the hash of
    ``spec`` (a summary written before it was recorded was read under the store's spec)."""
    if spec is None:
        return True
    record = summary.get("schedule_spec")
    read = record.get("spec_hash") if isinstance(record, Mapping) else store.identity.spec_hash
    return bool(read == spec.hash())


def _is_the_stores(stored: Any, spec_hash: str) -> bool:
    """Whether the manifest's record of the spec (``stored``) reads back as the spec of the
    store's hash: only then do its keys tell what a spec differs from the kernels' in."""
    if not isinstance(stored, Mapping):
        return False
    try:
        return bool(spec_from_dict(stored, source="<manifest>").hash() == spec_hash)
    except ConetoolError:
        return False
