"""What a checkpoint directory holds, file by file, without stopping at the first problem.

The library half of ``conetool inspect``: one :class:`InspectRow` per checkpoint candidate, bad ones
included. Cheap by default (headers only: safetensors headers, the pickle of zip-format torch files
memory-mapped without its data); ``verify=True`` also reads every tensor once, checks finiteness
and shapes against the model, and records each file's fingerprint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from conetool.errors import CheckpointError
from conetool.step_names import epoch_note

from ._keys import describe_mismatch, match_keys
from ._tied import tied_keys
from .discover import (
    TORCH_NOTE,
    bad_step_copy_note,
    bad_step_copy_warning,
    copies_note,
    default_warn,
    epoch_entry_warning,
    final_model_warning,
    folder_step_warning,
    left_entries_warning,
    nested_warning,
    not_state_dicts_note,
    other_copy_warning,
    regex_left_warning,
    scan_selected,
    shown_name,
    stand_in_warning,
    stepless_copy_warning,
    store_files_warning,
    stored_step_note,
    uncompared_warning,
    unix_time_warning,
    unreadable_alias_warning,
    weights_name,
)
from .load import match_state_dict, read_checkpoint

STATUSES = ("ok", "error")


@dataclass(frozen=True)
class InspectRow:
    """One checkpoint candidate of a directory and its verdict.

    Attributes:
        step: the training step (from the file's name, its stored step, or the spec's
            iterations per epoch for epoch names); ``None`` when no step could be recovered.
        file: the path relative to the directory (``"checkpoint-2000/"`` for a Hugging Face
            folder, the index file for shards).
        size: bytes, all shards together; ``0`` when unreadable, ``-1`` when not a regular file.
        num_params: elements over all tensors (parameters and buffers, not bytes), from the
            headers (with ``verify``, of the tensors read); ``None`` when unknown (unreadable).
        status: ``"ok"`` or ``"error"``.
        problem: the one-paragraph message when ``status == "error"``; ``None`` otherwise.
        source: the format: ``"safetensors"``, ``"torch"``, ``"hf"`` (a Hugging Face folder) or
            ``"hf-sharded"``; ``None`` when the file could not be opened.
        fingerprint: ``"<bytes>:<sha256>"`` of the file(s), as the store records it
            (:func:`conetool.checkpoints.load.fingerprint`); only with ``verify=True`` and
            ``status == "ok"``, else ``None``.
        notes: each note on its own: information (a torch.save file).
        weights_file: the file the notes are about where it is not ``file``: the weights
            file inside a folder read for its one file (``"step_0/model.pt"``, relative to the
            directory as ``file``); ``None`` when it is ``file``.
        warnings: each warning on its own: what to check (dtypes below the model's, steps from
            epoch names).
    """

    step: int | None
    file: str
    size: int
    num_params: int | None
    status: str
    problem: str | None = None
    source: str | None = None
    fingerprint: str | None = None
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    weights_file: str | None = None

    @property
    def note(self) -> str | None:
        """Every note of ``notes`` in one string; None when there is none."""
        return " ".join(self.notes) or None


def inspect_checkpoints(
    directory: str | Path,
    *,
    model: nn.Module | None = None,
    verify: bool = False,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
    steps: tuple[int | None, int | None] | None = None,
    every: int | None = None,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
    spec: str | None = None,
) -> list[InspectRow]:
    """One row per checkpoint candidate of ``directory``, sorted by step (unknown steps last).

    Per-file problems (everything :func:`list_checkpoints` would refuse, plus a key or shape
    mismatch with ``model`` read from the headers, plus with ``verify`` NaN/Inf, unreadable data or
    a file that changes while read) become rows with ``status="error"``; nothing is raised for them.
    ``spec``: the spec file that built ``model``, named in a mismatch's fix. Other arguments as
    in :func:`list_checkpoints`. What the directory holds but is not read,
    which gets no row, and files whose stored step differs from their name's are said as
    :func:`~conetool.checkpoints.discover.checkpoint_listing` says them to ``kernels``: ``warn``
    receives the warnings (checkpoints in subfolders; a stored step the name or folder
    contradicts; steps that read as Unix times; an EMA or other state dict of the network beside the one read in
    a torch.save dict; and, without ``verify``, entries of such a dict whose values kernels
    compares and a headers-only reading does not), default :func:`warnings.warn`; ``note`` the notes, information only (copies of another file
    of the same step, torch.save files that hold no state dict, names counting epochs that the
    stored steps confirm), default ``warn``. A row's own are in its ``notes`` and ``warnings``.

    Raises:
        CheckpointError: the directory is missing or unreadable, holds no checkpoint candidate, or
            the selection (``steps``/``every``) leaves none; or a flag is malformed.
    """
    scan = scan_selected(
        directory,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=steps,
        every=every,
        deep=True,
    )
    warn = warn or default_warn
    note = note or warn
    stored = stored_step_note(scan.directory, scan.candidates, iterations_per_epoch)
    said_of_the_directory = (
        (stored[0] if stored else None, warn if stored and stored[1] else note),
        (folder_step_warning(scan.directory, scan.candidates), warn),  # step_7/ storing 700
        (epoch_entry_warning(scan.directory, scan.candidates), warn),  # timm's checkpoint-3
        (unix_time_warning(scan.directory, scan.candidates), warn),  # steps that may be times
        (left_entries_warning(scan.directory, scan.candidates), warn),  # an EMA not read
        # entries whose values kernels compares, which a headers-only reading does not
        (None if verify else uncompared_warning(scan.directory, scan.candidates), warn),
        (not_state_dicts_note(scan), note),
        (copies_note(scan), note),  # the same bytes or tensors as a file read: nothing lost
        (nested_warning(scan), warn),  # checkpoints in subfolders are not read
        (final_model_warning(scan), warn),  # a Trainer's final model whose step is not known
        (stand_in_warning(scan), warn),  # a copy read for a step whose own file is unusable
        (other_copy_warning(scan), warn),  # a copy of a step with other tensors, not read
        (stepless_copy_warning(scan), warn),  # a final.pt of no step, other tensors
        (bad_step_copy_warning(scan), warn),  # a final.pt of a step entry 'last', other tensors
        (bad_step_copy_note(scan), note),  # one of the last step's tensors, or not compared
        (regex_left_warning(scan), warn),  # a copy of a step no file gives, not matched
        (unreadable_alias_warning(scan), warn),  # a copy whose step cannot be known
        (store_files_warning(scan), warn),  # a store's files among the checkpoints
    )
    for message, say in said_of_the_directory:
        if message:
            say(message)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()} if model is not None else None
    tied = tied_keys(model) if model is not None else {}
    from_epochs = sum(1 for c in scan.candidates if c.epoch is not None)
    rows = []
    for c in scan.candidates:
        problem, fp = c.problem, None
        count = sum(math.prod(s) for s in c.shapes.values()) if c.shapes is not None else None
        if problem is None and own is not None and c.shapes is not None:
            match = match_keys(c.shapes, own, tied)
            if not match.ok:
                problem = describe_mismatch(
                    match, str(c.folder or c.location), type(model).__name__, spec
                )
        warned: list[str] = []
        if problem is None and verify:
            try:
                loaded = read_checkpoint(c.ref(), check_finite=True)
                fp = loaded.fingerprint
                count = sum(t.numel() for t in loaded.state_dict.values())
                if model is not None:
                    # the file (a Hugging Face folder) as the row and its problems name it
                    where = str(c.folder or c.location)
                    match_state_dict(
                        model, loaded.state_dict, name=where, warn=warned.append, spec=spec
                    )
            except CheckpointError as e:
                problem = str(e)
        notes = [TORCH_NOTE] if c.paths and c.format == "torch" else []
        if c.epoch is not None and iterations_per_epoch is not None:
            # a step computed from the spec's batch size: a warning, as kernels says it
            warned.append(epoch_note(iterations_per_epoch, from_epochs))
        shown, weights = shown_name(scan.directory, c), weights_name(scan.directory, c)
        rows.append(
            InspectRow(
                step=c.step,
                file=shown,
                size=c.size,
                num_params=count,
                status="ok" if problem is None else "error",
                problem=problem,
                source=c.source or None,
                fingerprint=fp,
                notes=tuple(notes),
                warnings=tuple(warned),
                weights_file=None if weights == shown else weights,
            )
        )
    return rows
