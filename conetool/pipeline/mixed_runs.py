"""Refusing to mix two runs in one store: ``kernels`` pointed at another checkpoint directory
whose checkpoints differ from the ones the store's kernels were computed from.

The store's identity (spec, probe set, kind, dtype) says which kernels may share it, and a rerun
recomputes a step whose checkpoint changed. But two runs with the same spec (another seed, a run
retrained elsewhere) have different checkpoints at the same steps: recomputing those steps from the
other directory, and keeping the steps it does not have, would leave a store of kernels from two
runs, and a verdict across both. A run that only moved (the same files elsewhere, with or without
their modification times) is the same run. A run is told by its files' bytes, not by the weights
in them (no identity of the weights is recorded), so the same run converted to other files
(``.safetensors`` to ``.pt``) or saved again is refused too, and the message says so.
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
    differ = [(ref, _difference(ref, held.get(str(ref.step)))) for ref in refs]
    differ = [(ref, why) for ref, why in differ if why is not None]
    if not differ:
        return None
    steps = [ref.step for ref, _ in differ]
    shown = ", ".join(str(step) for step in steps[:5]) + (", ..." if len(steps) > 5 else "")
    first, why = differ[0]
    files = ", ".join(str(path) for path in first.paths)
    return StoreError(
        f"store {store} holds kernels of the checkpoints in {recorded}, and {ckpts} has other "
        f"checkpoint files at {len(steps)} of the steps it holds ({shown}; step {first.step}: "
        f"{files}, {why}): another run, or that run converted or saved again. conetool tells a "
        "run by its files' bytes, not by the weights in them, so a copy of the same run "
        "converted to other files (.safetensors to .pt) or saved again is refused too: its "
        f"kernels would be computed beside those of the files in {recorded}. Give this run a "
        f"store of its own: --store OTHER_STORE; or delete {store} to compute its kernels "
        "afresh from these files (--overwrite does not: it replaces only a store of another "
        "spec, probe set, kind or dtype). A run moved or renamed since, holding the same files, "
        "is accepted. Nothing was changed."
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


def _difference(ref: CheckpointRef, record: Any) -> str | None:
    """How the checkpoint ``ref``'s bytes differ from those the stored ``record`` describes
    (``"it has N bytes, the record M"``, ``"its bytes differ (sha256)"``), or None: the same."""
    if not isinstance(record, dict):
        return None
    try:
        size, mtime_ns = ref.file_state()
    except OSError:
        return None  # kernels names the file itself
    if size != record.get("size"):
        return f"it has {size} bytes, the record {record.get('size')}"
    if mtime_ns == record.get("mtime_ns"):
        return None
    try:
        same = fingerprint(ref) == record.get("fingerprint")
    except CheckpointError:
        return None  # unreadable: kernels says why
    return None if same else "its bytes differ (sha256)"
