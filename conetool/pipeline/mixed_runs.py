"""Refusing to mix two runs in one store: ``kernels`` pointed at another checkpoint directory
whose checkpoints differ from the ones the store's kernels were computed from.

The store's identity (spec, probe set, kind, dtype) says which kernels may share it, and a rerun
recomputes a step whose checkpoint changed. But two runs with the same spec (another seed, a run
retrained elsewhere) have different checkpoints at the same steps: recomputing those steps from the
other directory, and keeping the steps it does not have, would leave a store of kernels from two
runs, and a verdict across both. A run that only moved (the same files elsewhere, with or without
their modification times) is the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import paths
from ..checkpoints import CheckpointRef, fingerprint
from ..errors import CheckpointError, StoreError
from ..store import Store, StoreIdentity
from ..store_manifest import checked_manifest, manifest_identity
from .remembered import manifest_json

__all__ = ["another_run"]


def another_run(
    store: Path,
    ckpts: Path,
    identity: StoreIdentity,
    refs: list[CheckpointRef],
    *,
    manifest: dict[str, Any] | None = None,
) -> StoreError | None:
    """Why ``kernels`` of ``refs`` (the checkpoints of ``ckpts``) into ``store`` would mix two
    runs, or None: the store (of this ``identity``) was made from another directory, and a
    checkpoint of ``ckpts`` at a step it holds has other content (size, else fingerprint; a file
    with the recorded size and modification time is taken as the same, unread).

    ``manifest``: the store's ``manifest.json`` as the caller read it (``kernels`` reads it once
    for its plan; it is changed here, adopting kernel files it does not list), or None to read
    it here."""
    if manifest is None:
        manifest = manifest_json(store)
    if manifest is None or not isinstance(manifest.get("steps"), dict):
        return None
    try:
        if manifest_identity(manifest) != identity:
            return None  # another identity: opening the store refuses it
    except (KeyError, TypeError):
        return None
    recorded = manifest.get("checkpoints")
    if not isinstance(recorded, str) or Path(recorded) == ckpts.resolve():
        return None
    held = _held_records(store, manifest)
    differ = [ref.step for ref in refs if _differs(ref, held.get(str(ref.step)))]
    if not differ:
        return None
    shown = ", ".join(str(step) for step in differ[:5]) + (", ..." if len(differ) > 5 else "")
    return StoreError(
        f"store {store} holds kernels of the checkpoints in {recorded}, and {ckpts} has other "
        f"checkpoints at {len(differ)} of the steps it holds ({shown}): another run, whose kernels "
        f"would mix with that run's. Give this run its own --store, or delete {store} to compute "
        "it afresh from this run (--overwrite replaces only a store of another spec, probe set, "
        "kind or dtype). Nothing was changed."
    )


def _held_records(store: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Step -> record of every kernel the store holds: those of ``manifest`` (its
    ``manifest.json``, as read), and those of kernel files it does not list yet (it is rewritten
    about once a second, so a run killed early may have left kernels it never listed; they are
    adopted in memory, as :meth:`Store.open` does, from the manifest already read)."""
    try:
        held = Store(store, checked_manifest(paths.manifest(store), manifest))
    except StoreError:
        return dict(manifest["steps"])  # not a manifest to open: opening it for writing says why
    held.adopt_kernel_files(save=False)
    return dict(held.manifest["steps"])


def _differs(ref: CheckpointRef, record: Any) -> bool:
    """Whether the checkpoint ``ref`` has other content than the stored ``record`` describes."""
    if not isinstance(record, dict):
        return False
    try:
        size, mtime_ns = ref.file_state()
    except OSError:
        return False  # kernels names the file itself
    if size != record.get("size"):
        return True
    if mtime_ns == record.get("mtime_ns"):
        return False
    try:
        return fingerprint(ref) != record.get("fingerprint")
    except CheckpointError:
        return False  # unreadable: kernels says why
