"""Which optimizer state file a switch point's momentum comes from, recorded with the point so
that a rerun recomputes a point whose state file was added, removed, repaired or replaced since.

A point's reuse key (:func:`conetool.pipeline.switch_finished_points.point_key`) covers the spec,
T and the checkpoint's content, so the state inside the checkpoint file is covered already; the
files beside it are not: the state ``conetool train`` saves beside the checkpoint
(``step_XXXXXX.optim.safetensors``) and a Hugging Face folder's ``optimizer.pt``. The point's
JSON records the one :func:`~conetool.pipeline.switch_optimizer.optimizer_at` reads first (its name
and content fingerprint, as for checkpoints: ``"<bytes>:<sha256>"``), or that there is none; a
point without the record (written before it was kept) is reused as before.

A computed point records the fingerprint of the bytes its momentum was loaded from: the file is
read once, hashed as it is read (:func:`read_state`), and the optimizer is given those bytes, as a
checkpoint's fingerprint is of the bytes loaded into the model. :func:`momentum_source` hashes the
file only to tell whether a stored point is current (rank 0's look for finished points under
torchrun, or a point found in the store): a file replaced after that is recorded as loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..checkpoints import CheckpointRef
from ..checkpoints._hashed_reads import combine_fingerprints, files_fingerprint, stream_file
from ..errors import CheckpointError
from ..trainer_optimizer import OPTIMIZER_FILE

#: The entry of a point's JSON (and of ``switch/reference.json``) that records its state file.
SOURCE_ENTRY = "momentum_source"


def state_beside(ckpts: Path, ref: CheckpointRef) -> Path:
    """The optimizer state ``conetool train`` saves beside the checkpoint ``ref``
    (``step_XXXXXX.optim.safetensors``, beside its own file: ``ckpts`` may be that file)."""
    return paths.optimizer_state(ref.paths[0].parent if ref.folder is None else ckpts, ref.step)


def state_files(ckpts: Path, ref: CheckpointRef) -> list[Path]:
    """The state files a point's momentum may come from, in the order they are tried: the state
    beside the checkpoint, then a Hugging Face folder's ``optimizer.pt`` (the checkpoint file's
    own state comes last; the checkpoint's fingerprint covers it)."""
    files = [state_beside(ckpts, ref)]
    if ref.folder is not None:
        files.append(ref.folder / OPTIMIZER_FILE)
    return files


@dataclass(frozen=True)
class StateRead:
    """The state file a point's momentum comes from, read once (:func:`read_state`): its ``path``
    and bytes ``data`` (None and None without one), and the ``source`` the point records (the
    fingerprint of these bytes, as :func:`momentum_source` gives it: ``{"state": None}`` without
    one)."""

    path: Path | None
    data: bytearray | None
    source: dict[str, Any]


def read_state(ckpts: Path, ref: CheckpointRef) -> StateRead:
    """The first of :func:`state_files` there, read once and hashed as it is read (the bytes the
    optimizer is given, whether they are then used or not); nothing without one. One the disk
    cannot read, or that changes while it is read, is a :class:`CheckpointError` naming it."""
    for path in state_files(ckpts, ref):
        if path.is_file():
            streamed = stream_file(path, keep=True)
            fingerprint = combine_fingerprints([(streamed.size, streamed.sha256)])
            return StateRead(
                path, streamed.data, {"state": _shown(path, ref), "fingerprint": fingerprint}
            )
    return StateRead(None, None, {"state": None})


def momentum_source(ckpts: Path, ref: CheckpointRef) -> dict[str, Any] | None:
    """What a point of the checkpoint ``ref`` would take its momentum from now (for telling whether
    a stored point is current; a computed point records :func:`read_state`'s):
    ``{"state": NAME, "fingerprint": "<bytes>:<sha256>"}`` for the first state file there
    (:func:`state_files`; whether it is then used or not, which its content decides),
    ``{"state": None}`` without one. None when the file cannot be read (not checked: the
    training that reads it says why)."""
    for path in state_files(ckpts, ref):
        if path.is_file():
            try:
                return {"state": _shown(path, ref), "fingerprint": files_fingerprint([path])}
            except (OSError, CheckpointError):  # stream_file says an OSError as the latter
                return None
    return {"state": None}


def source_changed(payload: Mapping[str, Any], now: Mapping[str, Any] | None) -> str | None:
    """Why the point (or reference) ``payload`` read from the store must be computed again, its
    momentum's state file not being the one ``now`` (:func:`momentum_source`): ``"the optimizer
    state beside the checkpoint (step_000400.optim.safetensors) was added"`` (``changed``,
    ``was removed``, ...; the caller says since when); else None: the same, not recorded (an
    older store's point: reused as before), or not known now."""
    recorded = payload.get(SOURCE_ENTRY)
    if now is None or not isinstance(recorded, Mapping) or dict(recorded) == dict(now):
        return None
    was, is_now = recorded.get("state"), now.get("state")
    trainer = any(
        isinstance(name, str) and name.endswith(f"/{OPTIMIZER_FILE}") for name in (was, is_now)
    )
    beside = (
        "the Trainer's optimizer state" if trainer else "the optimizer state beside the checkpoint"
    )
    if was is None:
        return f"{beside} ({is_now}) was added"
    if is_now is None:
        return f"{beside} ({was}) was removed"
    if was != is_now:
        return f"{beside} ({is_now}) replaced {was}"
    return f"{beside} ({is_now}) changed"


def _shown(path: Path, ref: CheckpointRef) -> str:
    """A state file's name as a point records it: ``step_000400.optim.safetensors``, or
    ``checkpoint-400/optimizer.pt`` for a Hugging Face folder's (all share the name)."""
    if ref.folder is not None and path.parent == ref.folder:
        return f"{ref.folder.name}/{path.name}"
    return path.name
