"""Checkpoint directories: find checkpoints and their steps, load them, fingerprint them.

Typical use::

    from conetool.checkpoints import list_checkpoints, load_checkpoint

    for ref in list_checkpoints("runs/resnet20", steps=(0, 5000)):   # sorted by step, headers only
        loaded = load_checkpoint(model, ref)                           # one read of the file
        print(ref.step, loaded.fingerprint)

- :func:`list_checkpoints` -> [:class:`CheckpointRef`] (step, paths, source), sorted by step; the
  layouts and the step rules are in :mod:`conetool.checkpoints.discover`.
- :func:`read_checkpoint` / :func:`read_state_dict`: the tensors (and fingerprint) in one pass.
- :func:`load_checkpoint`: strict load into a model, stripping ``module.`` / ``model.`` /
  ``_orig_mod.`` only when that makes the keys match; it is :func:`read_checkpoint` (no model
  touched: safe in another thread) then :func:`apply_checkpoint` (into the model).
- :func:`fingerprint`: ``"<bytes>:<sha256>"`` streamed, for telling when a source file changed.
- :func:`inspect_checkpoints`: one :class:`InspectRow` per file, problems included
  (``conetool inspect``).

Every user-caused problem raises :class:`conetool.errors.CheckpointError` naming the file and
the fix.
"""

from __future__ import annotations

from .discover import (
    CHECKPOINT_SUFFIXES,
    CheckpointRef,
    CheckpointWarning,
    checkpoint_ref,
    list_checkpoints,
    parse_step_range,
    step_from_name,
)
from .inspection import InspectRow, inspect_checkpoints
from .load import (
    DtypeWarnings,
    LoadedCheckpoint,
    apply_checkpoint,
    check_finite_tensors,
    checkpoint_metadata,
    fingerprint,
    load_checkpoint,
    match_state_dict,
    read_checkpoint,
    read_state_dict,
)
from .selection import StepRange, step_range_text

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointRef",
    "CheckpointWarning",
    "DtypeWarnings",
    "InspectRow",
    "LoadedCheckpoint",
    "StepRange",
    "apply_checkpoint",
    "check_finite_tensors",
    "checkpoint_metadata",
    "checkpoint_ref",
    "fingerprint",
    "inspect_checkpoints",
    "list_checkpoints",
    "load_checkpoint",
    "match_state_dict",
    "parse_step_range",
    "read_checkpoint",
    "read_state_dict",
    "step_from_name",
    "step_range_text",
]
