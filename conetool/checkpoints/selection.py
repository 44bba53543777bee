"""Which checkpoints a run selects (``--steps FIRST:LAST``, ``--every K``) and the step each one
recovers from ``--step-regex``, its metadata or its name."""

from __future__ import annotations

import re
from pathlib import Path

from conetool.choices import integer, is_count
from conetool.errors import CheckpointError
from conetool.step_names import (
    UNIX_TIME_FIX,
    is_open_lth_name,
    name_regex,
    name_step,
    regex_step,
    unix_time_text,
    unix_time_unit,
)

from ._stored_steps import BEYOND_MAX_STEP, MAX_STEP, STEP_KEYS, BadStep, metadata_step
from ._torch_save import TORCH_SUFFIXES, check_torch_file
from .records import Candidate

# --------------------------------------------------------------------------------------------------
# flags


def parse_step_range(text: str) -> tuple[int | None, int | None]:
    """Parse ``--steps``: ``"0:5000"`` -> ``(0, 5000)``, ``"2000:"`` -> ``(2000, None)``,
    ``":5000"`` -> ``(None, 5000)``, ``"2000"`` -> ``(2000, 2000)``. Both ends are included."""
    raw = text.strip()
    lo_text, colon, hi_text = raw.partition(":")
    try:
        if ":" in hi_text or not raw:
            raise ValueError
        lo = int(lo_text) if lo_text.strip() else None
        hi = int(hi_text) if hi_text.strip() else None
        if not colon:
            hi = lo
        if any(v is not None and v < 0 for v in (lo, hi)):
            raise ValueError
    except ValueError:
        raise CheckpointError(
            f"--steps '{text}' is not a step range: write START:END with whole numbers, both "
            f"included (--steps 0:5000), or leave an end open (--steps 2000:, --steps :5000)."
        ) from None
    if lo is not None and hi is not None and lo > hi:
        raise CheckpointError(
            f"--steps '{text}' starts after it ends; write the smaller step first "
            f"(--steps {hi}:{lo})."
        )
    return lo, hi


StepRange = str | tuple[int | None, int | None] | list[int | None]


def step_range_text(steps: StepRange | None) -> str | None:
    """The ``steps`` argument of ``kernels`` and ``inspect`` as ``--steps`` text: a string as it
    is, a pair ``(first, last)`` (both included, either None for an open end) as
    ``"first:last"``; ``(0, 5000)`` -> ``"0:5000"``, ``(2000, None)`` -> ``"2000:"``."""
    if steps is None or isinstance(steps, str):
        return steps
    if isinstance(steps, (tuple, list)) and len(steps) == 2:  # integers (choices.integer) or None
        ends = [None if v is None else integer(v) for v in steps]
        if all(e is not None or v is None for e, v in zip(ends, steps, strict=True)):
            return ":".join("" if e is None else str(e) for e in ends)
    raise CheckpointError(
        f"--steps {steps!r} is not a step range: pass a pair (first, last) of steps, both "
        "included, with None for an open end ((0, 5000), (2000, None)), or the text "
        "'0:5000'."
    )


def check_selection(steps: tuple[int | None, int | None] | None, every: int | None) -> None:
    if every is not None and not is_count(every):
        raise CheckpointError(f"--every must be a positive whole number of steps, not {every!r}.")
    if steps is not None:
        ok = len(steps) == 2 and all(s is None or (isinstance(s, int) and s >= 0) for s in steps)
        if not ok or (steps[0] is not None and steps[1] is not None and steps[0] > steps[1]):
            raise CheckpointError(
                f"--steps must be START:END with 0 <= START <= END (either may be left open), "
                f"not {steps!r}."
            )


def is_selected(step: int, steps: tuple[int | None, int | None] | None, every: int | None) -> bool:
    lo, hi = steps if steps is not None else (None, None)
    if (lo is not None and step < lo) or (hi is not None and step > hi):
        return False
    return every is None or step % every == 0


# --------------------------------------------------------------------------------------------------
# steps


def step_from_name(name: str, *, iterations_per_epoch: int | None = None) -> int | None:
    """The step a checkpoint's name (without suffix) gives, or None (see
    :mod:`conetool.step_names`).

    Raises :class:`CheckpointError` for a name that gives an epoch (``epoch_3``, open_lth's
    ``model_ep3_it17``) without ``iterations_per_epoch``, and for a name whose number is a date
    and time (``ckpt_20261201101400``), which is no step.
    """
    return name_step(name, iterations_per_epoch, Path(name))[0]


def no_step_error(path: Path, empty: str = "") -> CheckpointError:
    """The error for ``path`` that gives no step; ``empty`` says which stored entries are None
    (" (its dict's 'step' entry is None)")."""
    name = "name files like step_2000.safetensors, store a 'step' metadata key"
    if path.name.lower().endswith(TORCH_SUFFIXES) and not path.is_dir():
        # a torch.save file has no metadata: its dict's own entry is what it can store
        name = (
            f"name files like step_2000{path.suffix}, save the step beside the state dict "
            f"({{'model_state_dict': ..., 'step': 2000}})"
        )
        if _legacy_pickle(path):
            name = (
                f"it is a legacy torch.save pickle (_use_new_zipfile_serialization=False, or "
                f"PyTorch before 1.6), whose dict's step is not read (only the zip format's "
                f"pickle is read without loading the tensors): name files like "
                f"step_2000{path.suffix}, re-save them with torch.save's default format"
            )
    return CheckpointError(
        f"no step recoverable from '{path}'{empty}: {name}, or pass {name_regex(path.name)} "
        f"(a regex with a group around the step)."
    )


def save_count_error(folder: Path) -> CheckpointError:
    """The error for a folder of Accelerate's ``save_state`` with automatic checkpoint naming
    (``checkpoint_3/`` holding ``random_states_0.pkl``), whose number counts the saves, not the
    training steps (the same text for every such folder but the path, so that a run of them
    reads as one line)."""
    return CheckpointError(
        f"'{folder}' is a folder of Accelerate's save_state with automatic checkpoint naming "
        f"(checkpoint_N holding random_states_*.pkl beside its weights): its number counts the "
        f"saves (checkpoint_0, checkpoint_1, ...), not training steps, so it gives no step (taken "
        f"for one, it would make the distances per step, the velocities and every step axis wrong). "
        f"Rename each such folder for the training step it was saved at (checkpoint_1 saved at "
        f"step 2000 -> step_2000: conetool reads the folder's model.safetensors or "
        f"pytorch_model.bin with the step of the folder's name), or save with "
        f"accelerator.save_state(f'checkpoints/step_{{step}}'); if the numbers are steps (the "
        f"loop set accelerator.project_configuration.iteration to the step before each save), "
        f"pass --step-regex 'checkpoint_(\\d+)'."
    )


def _legacy_pickle(path: Path) -> bool:
    """Whether ``path`` is a torch.save file in the legacy (non-zip) format."""
    try:
        return not check_torch_file(path)
    except CheckpointError:
        return False


def candidate_stem(c: Candidate) -> str:
    if c.folder is not None:
        return c.folder.name
    if c.index is not None:  # top-level shards: "model" of model.safetensors.index.json
        return c.index.name.split(".", 1)[0]
    name = c.location.name
    return name[: -len(c.location.suffix)] if c.location.suffix else name


def _stored_step(c: Candidate) -> tuple[str, int] | None:
    """The step a flat file stores, and where: its safetensors metadata ``step`` (else
    ``global_step``), or the ``step`` (else ``global_step``) entry of its torch.save dict; None
    when it stores none (an entry that is None, or metadata "None", is none). A folder's step is
    its own (its name, else its trainer_state.json), whatever its file stores: None for them
    (:func:`_file_step` reads what a folder's file stores)."""
    if c.folder is not None:
        return None
    return _file_step(c)


def _stored_entry(c: Candidate) -> tuple[str, str, int | BadStep, str] | None:
    """The step entry ``c``'s file stores, the first of :data:`STEP_KEYS` that is not None:
    ``(label, what, value, resave)`` ("the 'step' entry of its torch.save dict", "a 'step'
    entry of 'last' in its torch.save dict", its value, "its step as an int": how to re-save
    it); None when it stores none."""
    meta = c.metadata
    for key in STEP_KEYS:
        if key in meta:
            text, label = meta[key], f"safetensors metadata {key}"
            step = metadata_step(text)
            if step is None:
                continue
            return label, f"{label} '{text}'", step, "its step"
        value = c.stored_steps.get(key)
        if value is not None:
            what = f"a '{key}' entry of {value} in its torch.save dict"
            label = f"the '{key}' entry of its torch.save dict"
            return label, what, value, "its step as an int"
    return None


def _file_step(c: Candidate) -> tuple[str, int] | None:
    """:func:`_stored_step` of ``c``'s file, a folder's too (``step_7/model.pt``, its first
    shard's metadata)."""
    entry = _stored_entry(c)
    if entry is None:
        return None
    label, what, step, resave = entry
    return label, _whole_step(c, what, step, resave)


def bad_stored_step(c: Candidate) -> tuple[str, str] | None:
    """For a file whose stored step entry is no step (``{"step": "last"}``, ``2.5``, ``-1``, a
    tensor of two values): what it stores and why it is no step ("a 'step' entry of 'last' in
    its torch.save dict, which is not a whole number of steps (0 or more)"), and what to re-save
    it with ("its step as an int"). None when it stores a step, or none."""
    entry = _stored_entry(c)
    if entry is None or not isinstance(entry[2], BadStep):
        return None
    return f"{entry[1]}, {entry[2].why}", entry[3]


def stored_step(c: Candidate) -> int | None:
    """The step a flat file stores (:func:`_stored_step`), None when it stores none or one
    that is no step."""
    try:
        stored = _stored_step(c)
    except CheckpointError:
        return None
    return None if stored is None else stored[1]


def _whole_step(c: Candidate, what: str, step: int | BadStep, resave: str) -> int:
    if isinstance(step, BadStep):
        raise CheckpointError(
            f"'{c.folder or c.location}' has {what}, {step.why}; re-save it with {resave}, or "
            f"pass {name_regex((c.folder or c.location).name)} to take the step from the file "
            f"name instead."
        )
    return step


def _empty_entries(c: Candidate) -> str:
    """``" (its dict's 'step' entry is None)"``: why a file that stores a step entry gives no
    step; "" when it stores none."""
    said = [
        f"safetensors metadata {key} is '{c.metadata[key]}'"
        for key in STEP_KEYS
        if key in c.metadata
    ]
    said += [
        f"dict's '{key}' entry is None"
        for key in STEP_KEYS
        if key in c.stored_steps and c.stored_steps[key] is None
    ]
    return f" (its {' and its '.join(said)})" if said else ""


def _beyond_steps(c: Candidate, how: str, fix: str) -> CheckpointError:
    where = c.folder or c.location
    return CheckpointError(f"'{where}' gives step {c.step} ({how}), {BEYOND_MAX_STEP}; {fix}.")


def recover_step(c: Candidate, pattern: re.Pattern[str] | None, ipe: int | None) -> None:
    where = c.folder or c.location
    name = c.folder.name if c.folder is not None else c.location.name
    # (a Trainer's final model, model.safetensors, is not named for a step: a regex made for
    # the checkpoint-N/ folders leaves it to its trainer_state.json global_step)
    if pattern is not None and not (c.trainer_final and pattern.search(name) is None):
        c.step, c.epoch = regex_step(pattern, name, ipe, where)
        if c.step is not None and c.step > MAX_STEP:
            fix = "correct --step-regex so that its group holds the step only"
            raise _beyond_steps(c, "by --step-regex", fix)
        return
    if c.save_count and c.global_step is None:
        raise save_count_error(where)
    stored = _stored_step(c)
    if stored is not None:  # the file's own record wins over its name, as --step-regex does not
        c.step_inside, c.step = stored
        try:
            named = name_step(candidate_stem(c), ipe, where)[0]
        except CheckpointError:  # an epoch name without the iterations per epoch: no step
            named = None
        if named is not None and named != c.step:
            c.named_step = named  # said by the listing: the name may be the right one
        return
    stem = candidate_stem(c)
    c.step, c.epoch = name_step(stem, ipe, where, dates=c.folder is None)
    by_name = c.step is not None
    c.step_by_name_rule = (
        c.folder is None and c.step is not None and c.epoch is None and not is_open_lth_name(stem)
    )
    if c.global_step is not None:  # a Trainer's folder, or its final model beside them
        if c.step is None:
            c.step = c.global_step
        elif c.folder is not None and c.step != c.global_step:
            raise CheckpointError(
                f"'{c.folder}' is named for step {c.step} but its trainer_state.json says "
                f"global_step {c.global_step}; rename the folder to checkpoint-{c.global_step} if "
                f"that is right, or pass --step-regex to take the step from the name."
            )
    if c.step is None:
        raise no_step_error(where, _empty_entries(c))
    if c.step > MAX_STEP and c.step == c.global_step:
        fix = "correct global_step in its trainer_state.json"
        raise _beyond_steps(c, "its trainer_state.json global_step", fix)
    unit = unix_time_unit([c.step]) if c.step_by_name_rule else None
    if c.step > MAX_STEP and unit is not None:  # time.time_ns(): 19 digits
        raise CheckpointError(
            f"'{where}' gives step {c.step} (by its name), {BEYOND_MAX_STEP}. It reads as a Unix "
            f"time of 2001-2039 ({unix_time_text(c.step, *unit)}), as when a loop names its "
            f"files by when it saved them: {UNIX_TIME_FIX}"
        )
    if c.step > MAX_STEP:
        fix = (
            "rename it for its step (step_2000), or pass --step-regex with a group around the "
            "part of the name that is the step"
        )
        raise _beyond_steps(c, "by its name", fix)
    if c.folder is not None and c.paths:
        _note_folder_file_step(
            c, "by its name" if by_name else "by its trainer_state.json global_step"
        )


def _note_folder_file_step(c: Candidate, how: str) -> None:
    """Record in ``folder_file_step`` that a folder's weights file stores another step than the
    folder gives (``how``), which is taken: said by the listing (the stored one may be right).
    An entry that is no step (``'last'``) is not said: the folder gives the step."""
    try:
        stored = _file_step(c)
    except CheckpointError:
        return
    if stored is not None and stored[1] != c.step:
        c.folder_file_step = (c.paths[0], stored[0], stored[1], how)
