"""Find the checkpoints of a directory and recover their training steps, reading headers only.

Layouts accepted without configuration (one directory level, plus Hugging Face folders):

- flat ``*.safetensors`` files (what ``conetool train`` writes: ``step_002000.safetensors``);
- flat ``*.pt`` / ``*.pth`` / ``*.bin`` / ``*.ckpt`` torch.save files (plain state dicts, or
  Lightning's dict with ``state_dict``), read only with ``torch.load(weights_only=True)``;
- Hugging Face Trainer folders ``checkpoint-2000/`` holding ``model.safetensors`` or
  ``pytorch_model.bin``, or shards ``model-00001-of-00002.safetensors`` with
  ``model.safetensors.index.json`` (also shards with their index directly in the directory);
- a plain loop's folder per step, ``step_2000/`` holding ``model.pt`` or ``model.pth`` (or any
  of the Hugging Face weights above), read as a Hugging Face folder: the step is the folder's,
  whatever its file stores (read from the run's directory or given alone; a stored step that
  differs is warned of: :func:`folder_step_warning`).
  A subfolder whose name gives no step (nor ``--step-regex``) and that holds no
  ``trainer_state.json`` (``old/model.pt``, ``best/model.safetensors``) is not read: a warning
  names it (:func:`nested_warning`).

Accelerate's ``save_state`` folders with automatic naming (``checkpoint_3/`` beside its
``random_states_0.pkl``) are numbered by the count of saves, not by step: each is an error naming
the fixes (:func:`conetool.checkpoints.selection.save_count_error`).

Beside ``checkpoint-N/`` folders, the final model that ``Trainer.save_model`` writes into the
output directory is read as the ``global_step`` of that directory's ``trainer_state.json``
(``Trainer.save_state``) when no usable folder gives that step (one without its weights yet, a
save in progress, gives none); it is left out when one does (the same
weights again), when there is no such ``trainer_state.json`` (no step known), and, with a warning,
when that file names a ``best_model_checkpoint`` (the final model may be its weights).

Never taken for model checkpoints: optimizer states (``*.optim.safetensors``, ``*.optim.pt``),
Hugging Face Trainer extras (``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``,
``training_args.bin``), open_lth's ``checkpoint.pth`` (resume state) and ``mask.pth``, and hidden
files (``.step_002000.safetensors.tmp``: a write in progress). Torch.save files that hold no tensor by name at all (a list of
losses, a cached data tensor, a dict of numbers, an optimizer state) are not checkpoints either:
they are left out with a note saying what each holds. A file that holds tensors by name stays a
checkpoint, with its errors (another architecture, an unknown wrapping).

The step of each checkpoint, in order of precedence:

1. ``step_regex`` (``--step-regex``), searched in the file name (or the Hugging Face folder name):
   its group ``step`` or its first group; or a group ``epoch`` (and optionally ``it``) for
   ``epoch × iterations per epoch + it``;
2. the step the file stores: its safetensors metadata ``step`` (else ``global_step``), or the
   ``step`` (else ``global_step``) entry of a zip-format torch.save dict that wraps the state dict
   (a plain loop's ``{"model_state_dict": ..., "step": 1500}``, Lightning's ``global_step``; an
   ``epoch`` entry is no step). It wins over the name; files whose name gives another step get a
   warning naming ``--step-regex``. A torch.save copy named without a step (``best.pt``,
   ``last.pt``, Lightning's ``last.ckpt``: the dict of a step saved under its own name too) is
   left out all the same
   when another file gives its step (with a warning when it holds other tensors than that
   file: :func:`other_copy_warning`; one that no other file gives is read as that step, and
   so is one whose step only unusable files give: it stands in for them, with a warning); a
   copy that stores no step is not read, with a warning when it holds other tensors than the
   last step's file (:func:`stepless_copy_warning`; ``best`` copies excepted);
3. the name: ``step_2000``, ``step=2000``, ``epoch=3-step=2000``, ``global_step2000``,
   ``ckpt-2000``, ``checkpoint-2000``, ``model_2000``, ``iter_2000``, a bare ``2000``; or an epoch
   name, ``epoch_3``, ``epoch=3``, ``ep3`` (step = 3 × iterations per epoch) or open_lth's
   ``model_ep3_it17`` (3 × iterations per epoch + 17), with iterations per epoch = ceil(training
   examples / batch size) from the spec; without it, an error says what to give (the rules are in
   :mod:`conetool.step_names`). A name whose number is a date and time is refused;
   one that reads as a Unix time is kept, with a warning when every step read from a name does
   (:func:`unix_time_warning`);
4. for Hugging Face folders, ``trainer_state.json`` ``global_step``, which is also checked against
   the folder name when both are present.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conetool.errors import CheckpointError
from conetool.step_names import (
    UNIX_TIME_FIX,
    epoch_note,
    name_regex,
    unix_time_text,
    unix_time_unit,
)

from .records import (
    CHECKPOINT_SUFFIXES,
    TORCH_NOTE,
    BadStepCopy,
    Candidate,
    CheckpointRef,
    CheckpointWarning,
    LeftCopy,
    Scan,
)
from .scanning import FOLDER_WEIGHTS, only_checkpoint_file, scan_directory
from .selection import is_selected, parse_step_range, step_from_name

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "TORCH_NOTE",
    "CheckpointListing",
    "CheckpointRef",
    "CheckpointWarning",
    "abridged",
    "checkpoint_listing",
    "checkpoint_ref",
    "each_file",
    "list_checkpoints",
    "parse_step_range",
    "scan_selected",
    "step_from_name",
    "summarize_problems",
]


# --------------------------------------------------------------------------------------------------
# public


def _describe_contents(scan: Scan) -> str:
    held = scan.not_state_dicts
    names = scan.store_files + scan.others
    names += [f"{n} ({held[n]})" if n in held else n for n in scan.ignored]
    if not names:
        return "it is empty"
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"it holds: {shown}"


def _nested_list(scan: Scan) -> str:
    """``seed0/ (9 checkpoints), seed1/ (9 checkpoints)``: the subfolders that hold checkpoints."""
    shown = [f"{name} ({n} checkpoint{'s' if n > 1 else ''})" for name, n in scan.nested.items()]
    more = len(shown) - 5
    return ", ".join(shown[:5]) + (f" and {more} more" if more > 0 else "")


def nested_warning(scan: Scan) -> str | None:
    """The warning for checkpoints in subfolders, which are not read; None when there are none."""
    if not scan.nested:
        return None
    first = scan.directory / next(iter(scan.nested))
    plural = len(scan.nested) > 1
    return (
        f"not read: {'subfolders' if plural else 'subfolder'} {_nested_list(scan)} of "
        f"'{scan.directory}' (conetool reads a directory's own checkpoint files and the folders "
        f"named for a step, checkpoint-N/ and step_N/, or holding trainer_state.json, not other "
        f"subfolders). To use {'them' if plural else 'it'}, point at "
        f"{'each' if plural else 'it'}: '{first}'."
    )


def store_files_warning(scan: Scan) -> str | None:
    """The warning for a conetool store lying among the checkpoints (``kernels CKPTS --store
    CKPTS`` wrote it there before that was refused), whose files are not read as checkpoints;
    None when there is none."""
    if not scan.store_files:
        return None
    files = scan.store_files
    shown = ", ".join(files[:-1]) + " and " + files[-1] if len(files) > 1 else files[0]
    moved = " ".join(f"'{scan.directory / name.rstrip('/')}'" for name in files)
    return (
        f"not read: {shown} of '{scan.directory}' are a conetool store's files (an older "
        "conetool wrote the store into the checkpoint directory), not checkpoints. Give the store "
        f"a folder of its own: mkdir S && mv {moved} S/, then pass --store S."
    )


def final_model_warning(scan: Scan) -> str | None:
    """The warning for a Hugging Face Trainer's final model (``model.safetensors`` beside the
    ``checkpoint-N/`` folders) left out though no folder gives the ``global_step`` of the output
    directory's ``trainer_state.json``: that file names a ``best_model_checkpoint``, so the final
    model may be that checkpoint's weights (``load_best_model_at_end``), not the last step's.
    None when no final model was left out so, or its step is not selected (``--steps``,
    ``--every``: nothing is lost)."""
    if not scan.final_left:
        return None
    name, step = scan.final_left[0]
    folder = scan.directory / f"checkpoint-{step}"
    return (
        f"not read: '{name}' in '{scan.directory}', the Trainer's final model: its "
        f"trainer_state.json gives global_step {step}, which no usable checkpoint-N/ folder "
        f"has, but also best_model_checkpoint '{scan.best_model}', so the final model may be that "
        f"checkpoint's weights (load_best_model_at_end), not step {step}'s. If it is step "
        f"{step}'s, move it (with its shards, if any) into a folder named for the step: mkdir "
        f"'{folder}' && mv '{scan.directory / name}' '{folder}/'."
    )


def stand_in_warning(scan: Scan) -> str | None:
    """The warning for a copy named without a step (``final.pt``, Lightning's ``last.ckpt``) or
    a Hugging Face Trainer's final model read for a step whose own file or ``checkpoint-N/``
    folder is unusable (left out under ``skip_bad``; ``inspect`` shows its row): the step's
    weights come from the copy, which stores that step. None when no file stands in so."""
    if not scan.stand_ins:
        return None
    lines = []
    for name, broken, step, how in scan.stand_ins:
        quoted = _quoted(broken)
        lines.append(
            f"'{name}' in '{scan.directory}' is read for step {step} ({how}) in place "
            f"of {quoted}, {'their' if len(broken) > 1 else 'its'} own "
            f"{'checkpoints' if len(broken) > 1 else 'checkpoint'}, unusable (see "
            f"{'their errors' if len(broken) > 1 else 'its error'}). If '{name}' does not hold "
            f"step {step}'s weights, fix {quoted} or move '{name}' out of the directory."
        )
    return " ".join(lines)


def other_copy_warning(scan: Scan) -> str | None:
    """The warning for copies named without a step (``final.pt``, ``last.ckpt``) left out because
    another file gives the step they store, though they hold other tensors than that file (a
    loop that saved later weights with a stale step counter): the file read, and how to read
    the copy. None when every such copy holds its step's tensors (or there is none)."""
    if not scan.other_copies:
        return None
    lines = []
    for copy, kept, step in scan.other_copies:
        # the step's other copies go too: two files of one step that are not copies of each
        # other are both refused (a rerun would lose the step)
        others = [_relative(c.path, scan.directory) for c in scan.left_copies.get(step, [])]
        others = [name for name in others if name != copy]
        also = f" with {_quoted(others)}" if others else ""
        lines.append(
            f"not read: '{copy}' in '{scan.directory}' stores step {step}, as '{kept}' does, but "
            f"holds other tensors: '{kept}' is read for step {step}. If '{copy}' holds the "
            f"weights of a later step saved with a stale step counter, "
            f"{_folder_fix(scan, copy)}; to read it "
            f"for step {step} instead, move '{kept}'{also} out of the directory."
        )
    return " ".join(lines)


def stepless_copy_warning(scan: Scan) -> str | None:
    """The warning for copies named without a step (``final.pt``, ``last.pt``) that store no
    step, left out though they hold other tensors than the last step's file (a loop's final
    weights, saved after its last numbered checkpoint): the file read last, and how to read the
    copy (under ``--step-regex``, which does not match its name: by a name the regex reads, not
    a step folder or a stored step, neither of which it reads). None when every such copy holds
    the last step's tensors (or there is none)."""
    if not scan.stepless_copies:
        return None
    lines = []
    for copy, last, step in scan.stepless_copies:
        if scan.step_regex is not None:  # (its step entry, if any, is not read under a regex)
            lines.append(
                f"not read: '{copy}' in '{scan.directory}' is named without a step, and "
                f"--step-regex '{scan.step_regex}' does not match its name (under --step-regex "
                f"the steps come from the names); it holds other tensors than the last "
                f"checkpoint read, '{last}' (step {step}). If it holds the weights of a step no "
                f"file gives (a loop's final weights), rename it so that the regex reads its "
                f"step from its name, or leave --step-regex out and save it with its step (a "
                f"'step' entry of the torch.save dict, an int, or safetensors metadata 'step')."
            )
            continue
        lines.append(
            f"not read: '{copy}' in '{scan.directory}' stores no step, and holds other tensors "
            f"than the last checkpoint read, '{last}' (step {step}). If it holds the weights of "
            f"a step no file gives (a loop's final weights), {_folder_fix(scan, copy)}, or "
            f"save it with its step (a 'step' entry of the torch.save dict, or safetensors metadata "
            f"'step')."
        )
    return " ".join(lines)


def _folder_fix(scan: Scan, name: str) -> str:
    """How to read ``name`` (a copy named without a step) for a step of its own: move it into a
    folder named for the step, under the weights name of its format."""
    to = "model.safetensors" if name.lower().endswith(".safetensors") else "model.pt"
    return (
        f"move it into a folder named for its step, which gives the step (mkdir "
        f"'{scan.directory / 'step_N'}' && mv '{scan.directory / name}' "
        f"'{scan.directory / 'step_N' / to}', N its step)"
    )


def _bad_step_text(scan: Scan, copy: BadStepCopy) -> str:
    return (
        f"not read: '{copy.name}' in '{scan.directory}' is named without a step and stores "
        f"{copy.entry}, so its step is not known"
    )


def bad_step_copy_warning(scan: Scan) -> str | None:
    """The warning for copies named without a step (``final.pt``) whose stored step entry is no
    step (``{"step": "last"}``, ``2.5``, ``-1``), left out though they hold other tensors than
    the last step's file (a loop's final weights): the entry, the file read last, and the fixes.
    None when there is none."""
    told = [
        f"{_bad_step_text(scan, c)}, and it holds other tensors than the last checkpoint read, "
        f"'{c.last}' (step {c.last_step}). If it holds the weights of a step no file gives (a "
        f"loop's final weights), re-save it with {c.resave}, or {_folder_fix(scan, c.name)}."
        for c in scan.bad_step_copies
        if c.other
    ]
    return " ".join(told) or None


def bad_step_copy_note(scan: Scan) -> str | None:
    """The note for the other copies named without a step whose stored step entry is no step:
    those holding the last step's tensors (nothing lost), and those not compared (a ``best.pt``,
    an earlier step's weights by its name; a selection without the last step). It names the
    entry, which the copy's loop saves so, and the fixes. None when there is none."""
    told = []
    for c in scan.bad_step_copies:
        if c.other:
            continue
        if c.last is not None:
            told.append(
                f"{_bad_step_text(scan, c)}; it holds the same tensors as the last checkpoint "
                f"read, '{c.last}' (step {c.last_step}), so nothing is lost. To have such a copy "
                f"read for the step it stores, re-save it with {c.resave}."
            )
        else:
            told.append(
                f"{_bad_step_text(scan, c)}. If it holds the weights of a step no file gives, "
                f"re-save it with {c.resave}, or {_folder_fix(scan, c.name)}."
            )
    return " ".join(told) or None


def regex_left_warning(scan: Scan) -> str | None:
    """The warning for copies named without a step (``final.pt``) that ``--step-regex`` does not
    match, left out though each stores a step that no file read gives (a loop's last step saved
    under no other name): that step's kernel is lost unless the copy is renamed. None when
    there is none."""
    if not scan.regex_left:
        return None
    lines = []
    for name, step, regex in scan.regex_left:
        lines.append(
            f"not read: '{name}' in '{scan.directory}' stores step {step}, which no checkpoint "
            f"read gives, but --step-regex '{regex}' does not match its name (under --step-regex "
            f"the steps come from the names). To read it, rename it so that the regex reads step "
            f"{step} from its name, or leave --step-regex out."
        )
    return " ".join(lines)


def unreadable_alias_warning(scan: Scan) -> str | None:
    """The warning for copies named without a step (``final.pt``) that cannot be read
    (truncated, corrupt): left out, their step unknown, though one may hold a step no other file
    gives (a loop's last step saved under no other name). None when there is none."""
    if not scan.unreadable_aliases:
        return None
    return " ".join(
        f"not read: '{name}' in '{scan.directory}', a file named without a step, cannot be read, "
        f"so its step is not known: {problem} If it holds a step that no other file gives (a "
        f"training loop's last step), that step has no kernel until it is re-saved."
        for name, problem in scan.unreadable_aliases
    )


def not_state_dicts_note(scan: Scan) -> str | None:
    """The note for torch.save files left out because they hold no tensor by name (a cached
    data tensor, a list of losses): not checkpoints. None when there are none."""
    held = scan.not_state_dicts
    if not held:
        return None
    if len(held) == 1:
        ((name, what),) = held.items()
        return (
            f"not read: '{name}' in '{scan.directory}' holds {what}, not a state dict (no tensors "
            f"by name), so it is no checkpoint."
        )
    shown = [f"{name} ({what})" for name, what in list(held.items())[:5]]
    more = f" and {len(held) - 5} more" if len(held) > 5 else ""
    return (
        f"not read: {len(held)} torch.save files in '{scan.directory}' hold no state dict (no "
        f"tensors by name), so they are no checkpoints: {', '.join(shown)}{more}."
    )


def stored_step_note(
    directory: Path, candidates: list[Candidate], iterations_per_epoch: int | None = None
) -> tuple[str, bool] | None:
    """What the listing says of files whose stored step (safetensors metadata, the step entry of
    a torch.save dict) differs from the step of their name: the stored one is taken, and
    --step-regex takes the names'. ``(message, True)``: a warning (the name may be right);
    ``(message, False)``: a note, when every such name is a number of epochs (the stored step is
    it x ``iterations_per_epoch``: a loop saving ``ckpt_{epoch}.pt`` with its step inside), which
    the stored steps confirm. Both name the files as the torch.save note does (relative to
    ``directory``, the one listed). None when every name agrees (or gives no step)."""
    differ = [c for c in candidates if c.problem is None and c.named_step is not None]
    if not differ:
        return None
    c = differ[0]
    ipe = iterations_per_epoch
    epochs = all(d.named_step is not None and d.step == d.named_step * (ipe or 0) for d in differ)
    if ipe is not None and epochs:
        names = [shown_name(directory, d) for d in differ]
        many = len(differ) > 1
        example = f"{names[0]}: {c.step_inside}, " if many else f"{c.step_inside}: "
        return (
            f"{named_files(names)} {'are' if many else 'is'} numbered by epoch, not by step: "
            f"{'each' if many else 'it'} stores its step ({example}{c.step} = {c.named_step} x "
            f"{ipe} iterations per epoch from the spec), which is taken.",
            False,
        )
    shown = shown_name(directory, c)
    example = f"'{shown}' stores step {c.step} ({c.step_inside}), its name says {c.named_step}"
    which = f"{len(differ)} checkpoints store a step other than their name's, such as: "
    return (
        f"{which if len(differ) > 1 else ''}{example}. The step stored in a file is taken. If the "
        f"names are right, pass {name_regex(c.location.name)} (a regex with a group around the "
        f"step of the name) to take theirs.",
        True,
    )


def epoch_entry_warning(directory: Path, candidates: list[Candidate]) -> str | None:
    """The warning for files whose name's number, read as their step, is the ``epoch`` entry
    each stores (``checkpoint-3.pth`` holding ``{"epoch": 3, "state_dict": ...}``, as timm's
    and the PyTorch ImageNet example's loops save): the step axis then counts epochs. Said
    when every such file read by a name rule stores an epoch equal to its step and they give
    two steps or more (one ``ckpt_0.pt`` storing epoch 0 is no sign); None otherwise."""
    named = [
        c
        for c in candidates
        if c.problem is None and c.step_by_name_rule and c.stored_epoch is not None
    ]
    if len({c.step for c in named}) < 2 or any(c.step != c.stored_epoch for c in named):
        return None
    c = max(named, key=lambda d: d.step or 0)
    regex = name_regex(c.location.name).replace("(\\d+)", "(?P<epoch>\\d+)")
    return (
        f"{named_files([shown_name(directory, d) for d in named])} are numbered by epoch, not "
        f"by step: each stores no step and an 'epoch' entry that is the number of its name "
        f"('{shown_name(directory, c)}' stores 'epoch': {c.stored_epoch}), which is taken as "
        f"its step, so the step axis counts epochs (and `switch` would start each point at the "
        f"wrong step of the [train] schedule). Save each file's step in its dict "
        f'("step": ...), or pass {regex} to take step = epoch x the iterations per epoch of '
        f"the spec (a loop that saves epoch E after E + 1 epochs, as timm's does, then comes "
        f"out one epoch early: save the step instead)."
    )


def folder_step_warning(directory: Path, candidates: list[Candidate]) -> str | None:
    """The warning for folders of one step (``step_7/``, ``checkpoint-7/``) whose weights file
    stores another step (``step_7/model.pt`` whose dict's ``step`` is 700): the folder's step
    is taken, from the run's directory as from the folder given alone, and the stored one may be
    the right one. Names the first such file (relative to ``directory``, as the other notes
    name files), where it stores its step, both steps, the one taken and the fix; counts the
    others. None when every stored step agrees with its folder's (or none is stored)."""
    differ = [c for c in candidates if c.problem is None and c.folder_file_step is not None]
    if not differ:
        return None
    c = differ[0]
    assert c.folder_file_step is not None and c.folder is not None and c.step is not None
    file, where, stored, how = c.folder_file_step
    if c.global_step is not None and c.global_step == c.step:
        fix = f"correct the global_step of '{c.folder / 'trainer_state.json'}'"
        if "name" in how:
            fix = f"rename the folder ({_renamed(c.folder, c.step, stored)}) and {fix}"
    else:
        fix = f"rename the folder: {_renamed(c.folder, c.step, stored)}"
    others = len(differ) - 1
    also = ""
    if others:
        also = f" So do {others} other checkpoint folders." if others > 1 else " So does 1 other."
    return (
        f"'{_relative(file, directory)}' stores step {stored} ({where}), but its folder gives "
        f"step {c.step} ({how}), which is taken: a folder's step wins over its file's, read "
        f"from the run's directory or given alone. If step {stored} is the right one, {fix}."
        f"{also}"
    )


def _renamed(folder: Path, step: int, stored: int) -> str:
    """``mv 'run/step_7' 'run/step_700'``: renaming ``folder``, named for ``step``, for
    ``stored`` (its last number that is ``step`` replaced; else ``step_{stored}``)."""
    numbers = [m for m in re.finditer(r"\d+", folder.name) if int(m.group()) == step]
    name = f"step_{stored}"
    if numbers:
        m = numbers[-1]
        name = folder.name[: m.start()] + str(stored) + folder.name[m.end() :]
    return f"mv '{folder}' '{folder.parent / name}'"


def unix_time_warning(directory: Path, candidates: list[Candidate]) -> str | None:
    """The warning for a run whose every step read from a name by a built-in rule (the files
    that store no step, without ``--step-regex``, not Hugging Face folders: at least one) is a
    Unix time of 2001-2039 (:data:`~conetool.step_names.UNIX_TIMES`), or every one
    such a time in milliseconds or microseconds (one unit for all,
    :data:`~conetool.step_names.UNIX_TIME_UNITS`): the files were probably named by
    when they were saved. Their steps are kept (a long run may count that
    many); the warning names the files as the other notes do (relative to ``directory``) and the
    fixes. None when there is no such file or one step is no such time."""
    named = [c for c in candidates if c.problem is None and c.step_by_name_rule]
    # (an int's "in range" is two comparisons; None never gets here: the rule read a step)
    steps = [c.step for c in named if c.step is not None]
    if not named or len(steps) < len(named) or (unit := unix_time_unit(steps)) is None:
        return None
    first, files = named[0], named_files([shown_name(directory, c) for c in named])
    assert first.step is not None
    s, theirs, are = ("s", "their names", "are") if len(named) > 1 else ("", "its name", "is a")
    return (
        f"the step{s} of {files}, read from {theirs}, {are} Unix time{s} of 2001-2039 "
        f"({unix_time_text(first.step, *unit)}), as when a loop names its files by when it "
        f"saved them; then the step axis (the distances per step, the velocities, --every, "
        f"--at) is time, not training. If so, {UNIX_TIME_FIX} If the numbers really are steps, "
        f"pass {name_regex(first.location.name)} to say so, which silences this warning."
    )


def _one_and_others(directory: Path, held: list[Candidate]) -> tuple[str, str]:
    """``("'ckpt_5.pt'", "s")`` for one file, ``("'ckpt_5.pt' and 59 other checkpoints", "")``
    for more (the first named as the other notes name files, relative to ``directory``): the
    subject of a sentence said once for a run, and the ending of its verb."""
    first = f"'{shown_name(directory, held[0])}'"
    if len(held) == 1:
        return first, "s"
    others = len(held) - 1
    return f"{first} and {others} other checkpoint{'s' if others > 1 else ''}", ""


def _listed(shown: Sequence[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" and {shown[-1]}"


def _relative(path: Path, directory: Path) -> str:
    """``path`` as the warnings name a file of ``directory``: relative to it where inside."""
    try:
        return str(path.relative_to(directory))
    except ValueError:
        return str(path)


def _quoted(keys: Sequence[str]) -> str:
    return _listed([f"'{k}'" for k in keys])


def _entry_shown(path: tuple[str, ...]) -> str:
    """How the warnings name where a dict holds a state dict: ``'ema'`` for an entry of the dict,
    ``['callbacks']['EMA']['ema_state_dict']`` for one further down (as Python subscripts it)."""
    return f"'{path[0]}'" if len(path) == 1 else "".join(f"[{key!r}]" for key in path)


def left_entries_warning(directory: Path, candidates: list[Candidate]) -> str | None:
    """The warning for torch.save files whose dict holds, beside the state dict that is read
    (under ``state_dict``, ``model_state_dict`` or ``model``, the first present), another of the
    same network that is not (an EMA of the weights under ``ema``, ``model_ema``,
    ``ema_state_dict``, ..., or further down: a Lightning EMA callback's under
    ``["callbacks"]["EMA"]["ema_state_dict"]``): said once for the run, naming the first such
    file, the count of the others, the entry read, where the others are, and how to measure one
    of those (save it alone). None when no usable file holds such a state dict."""
    held = [c for c in candidates if c.problem is None and c.left and c.entry is not None]
    if not held:
        return None
    first = held[0]
    left = list(dict.fromkeys(path for c in held for path in c.left))
    shown = [_entry_shown(path) for path in left]
    taken = "sd" + "".join(f"[{key!r}]" for key in left[0])
    who, s = _one_and_others(directory, held)
    return (
        f"{who} hold{s} a state dict under '{first.entry}', which is read, and another of the "
        f"same network under {_listed(shown)} (an EMA of the weights, say), which is not: conetool "
        f"reads the entry 'state_dict', 'model_state_dict' or 'model', the first present. To "
        f"measure {shown[0]} instead, save it alone for each checkpoint into a directory of its "
        f"own and point conetool at that, in Python: sd = torch.load('{first.left_file}', "
        f"weights_only=True); safetensors.torch.save_file({taken}, "
        f"'step_2000.safetensors', metadata={{'step': '2000'}}) with the file's step."
    )


def uncompared_warning(directory: Path, candidates: list[Candidate]) -> str | None:
    """The warning of ``inspect`` without ``verify`` for torch.save files whose dict holds a
    state dict under more than one of ``state_dict``, ``model_state_dict`` and ``model`` with the
    same names, dtypes and shapes, not one in memory: their values, which ``kernels`` compares
    when it reads the file (and refuses it when they differ), were not compared, as comparing
    them reads the tensor data that the headers-only listing does not. Said once for the run,
    naming the first such file and the count of the others; None when there is none."""
    held = [c for c in candidates if c.problem is None and c.uncompared and c.entry is not None]
    if not held:
        return None
    first = held[0]
    assert first.entry is not None
    who, s = _one_and_others(directory, held)
    return (
        f"{who} hold{s} a state dict under each of {_quoted([first.entry, *first.uncompared])} "
        f"(the first is read) with the same names, dtypes and shapes, but their values were not "
        f"compared: inspect reads no tensor data without --verify. kernels reads each file in "
        f"full and refuses it if they differ (the model beside an EMA of it, say); --verify "
        f"compares them now."
    )


def copies_note(scan: Scan) -> str | None:
    """The note for files left out as copies of another file of their step (the same size and
    sha256, or the same tensors), naming which was taken as a copy of which; None when there are
    none."""
    if not scan.copies:
        return None
    if len(scan.copies) == 1:
        ((copy, kept, step, how),) = scan.copies
        return (
            f"'{copy}' in '{scan.directory}' has the same step ({step}) and {how} as '{kept}': it "
            f"is taken as a copy of '{kept}' and not read. Move it out of the directory to "
            f"silence this note."
        )
    pairs = [f"'{copy}' of '{kept}' (step {step})" for copy, kept, step, _ in scan.copies]
    more = len(pairs) - 5
    shown = ", ".join(pairs[:5]) + (f" and {more} more" if more > 0 else "")
    hows = " or ".join(dict.fromkeys(how for *_, how in scan.copies))
    return (
        f"{len(pairs)} files in '{scan.directory}' have the same step and {hows} as another "
        f"file and are taken as its copies, not read: {shown}. Move them out of the directory "
        f"to silence this note."
    )


def _step_folders_error(scan: Scan) -> CheckpointError | None:
    """The error for a directory whose subfolders are each named for a step and hold one
    checkpoint file under a name a folder per step is not read by (``step_0/weights.pt``): the
    file to rename, and to what. None when some subfolder is not so."""
    folders = list(scan.nested)
    if any(count != 1 for count in scan.nested.values()):
        return None
    try:
        if any(step_from_name(name.rstrip("/")) is None for name in folders):
            return None
    except CheckpointError:  # an epoch name, a date: not a step
        return None
    first = scan.directory / folders[0]
    held = only_checkpoint_file(first)
    if held is None:
        return None
    to = "model.safetensors" if held.lower().endswith(".safetensors") else "model.pt"
    return CheckpointError(
        f"no checkpoints in '{scan.directory}' itself: its "
        f"{'subfolders' if len(folders) > 1 else 'subfolder'} {_nested_list(scan)} "
        f"{'are each' if len(folders) > 1 else 'is'} named for a step and "
        f"hold{'' if len(folders) > 1 else 's'} one checkpoint ('{first / held}'), and conetool reads a folder per step only when its checkpoint is "
        f"named {FOLDER_WEIGHTS} (the step is the folder's). Rename each so: mv '{first / held}' "
        f"'{first / to}'; then pass '{scan.directory}'."
    )


def empty_error(scan: Scan) -> CheckpointError:
    """The error for a directory without checkpoint candidates, listing what is there."""
    if scan.nested and (per_step := _step_folders_error(scan)) is not None:
        return per_step
    if scan.nested:
        first = scan.directory / next(iter(scan.nested))
        which = "one run's folder, such as" if len(scan.nested) > 1 else "that folder,"
        return CheckpointError(
            f"no checkpoints in '{scan.directory}' itself: they are in "
            f"{'subfolders' if len(scan.nested) > 1 else 'its subfolder'} {_nested_list(scan)}, "
            f"and conetool reads a directory's own checkpoint files and the folders named for a "
            f"step (checkpoint-N/, step_N/) or holding trainer_state.json, not other "
            f"subfolders. Pass {which} '{first}'."
        )
    # a final.pt storing {"step": "last"}: the entry that kept it from being read for a step
    entries = " ".join(
        f"'{c.name}' stores {c.entry}: re-save it with {c.resave} to have it read for its step."
        for c in scan.bad_step_copies
    )
    tars = _tar_named(scan)
    if tars:
        entries = f"{_tar_advice(scan.directory, tars)}{' ' if entries else ''}{entries}"
    return CheckpointError(
        f"no checkpoints in '{scan.directory}' ({_describe_contents(scan)}). conetool reads "
        f"*.safetensors and *.pt/*.pth/*.bin/*.ckpt files and Hugging Face checkpoint-N/ folders, "
        f"and skips optimizer states (*.optim.safetensors, optimizer.pt), hidden files, and "
        f"copies named without a step (Lightning's last.ckpt, best.pt, last.pt: to read one, "
        f"give it its step, as in step_2000.pt); pass the --out directory of `conetool train` "
        f"or the folder holding the checkpoint files.{' ' if entries else ''}{entries}"
    )


def _tar_named(scan: Scan) -> list[str]:
    """The directory's ``*.pth.tar`` (or ``*.pt.tar``) files: timm's ``train.py`` and the PyTorch
    ImageNet example name their torch.save files so."""
    names = [*scan.others, *scan.ignored]
    return [n for n in names if n.lower().endswith((".pth.tar", ".pt.tar"))]


def _tar_advice(directory: Path, tars: list[str]) -> str:
    """What to do with ``.pth.tar`` files: their number counts epochs (timm's
    ``checkpoint-E.pth.tar`` holds the weights after epoch E + 1, E counting from 0), which no
    name conetool reads can say, so each is re-saved with its step."""
    shown = ", ".join(f"'{n}'" for n in tars[:3]) + (
        f" and {len(tars) - 3} more" if len(tars) > 3 else ""
    )
    first = directory / tars[0]
    return (
        f"{shown} {'are' if len(tars) > 1 else 'is a'} .pth.tar file{'s' if len(tars) > 1 else ''} "
        f"(timm's train.py, the PyTorch ImageNet example), not read by that name: renaming is not "
        f"enough, as their numbers count epochs, not steps (timm's checkpoint-E.pth.tar holds the "
        f"weights after epoch E + 1, E counting from 0, under 'state_dict', its EMA under "
        f"'state_dict_ema'; last.pth.tar and model_best.pth.tar are copies). Save each one's "
        f"weights with its step N = (E + 1) x iterations per epoch into a folder of their own, "
        f"in Python: import argparse; torch.serialization.add_safe_globals([argparse.Namespace]); "
        f"sd = torch.load('{first}', weights_only=True); "
        f"safetensors.torch.save_file(sd['state_dict'], 'steps/step_N.safetensors', "
        f"metadata={{'step': 'N'}}); then pass that folder."
    )


_COLLAPSE_AT = 3


def each_file(where: Path, message: str) -> str:
    """``message`` about the file ``where`` with the file named "each file": the same text for
    every file that has the same problem (what :func:`summarize_problems` groups by)."""
    return message.replace(f"'{where}'", "each file").replace(str(where), "each file")


def summarize_problems(problems: list[tuple[Path, str]]) -> list[str]:
    """One line per distinct problem: three or more ``(file, message)`` pairs whose messages
    differ only by the file become ``"61 files (epoch_0.pt, epoch_1.pt, epoch_2.pt, ...,
    epoch_60.pt): <message>"``, the message naming "each file" instead of one (it still says how
    to fix it). Fewer are listed as they are."""
    groups: dict[str, list[tuple[Path, str]]] = {}
    for where, message in problems:
        groups.setdefault(each_file(where, message), []).append((where, message))
    lines: list[str] = []
    for key, members in groups.items():
        if len(members) < _COLLAPSE_AT:
            lines.extend(message for _, message in members)
            continue
        names = [where.name or str(where) for where, _ in members]
        shown = abridged(names)
        lines.append(f"{len(members)} files ({shown}): {key}")
    # A message naming two files (a duplicate step) is each file's: said once, counting both.
    counts = Counter(lines)
    return [line if counts[line] == 1 else f"{counts[line]} files: {line}" for line in counts]


def _problem_lines(bad: list[Candidate]) -> list[str]:
    assert all(c.problem is not None for c in bad)
    return summarize_problems([(c.folder or c.location, c.problem or "") for c in bad])


#: How list_checkpoints' error ends: its ``skip_bad`` is kernels' --skip-bad. Per-file messages
#: name no flag (``inspect`` has none, ``switch`` needs the step), so the flag is said once, here.
SKIP_BAD_ADVICE = "Fix or move these files, or pass --skip-bad to leave them out with a warning."


def _problems_error(
    directory: Path, bad: list[Candidate], advice: str = SKIP_BAD_ADVICE
) -> CheckpointError:
    lines = _problem_lines(bad)
    shown = "\n".join(f"  - {line}" for line in lines[:20])
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    return CheckpointError(
        f"{len(bad)} unusable checkpoint(s) in '{directory}':\n{shown}{more}\n{advice}"
    )


def _none_selected(
    scan: Scan, steps: tuple[int | None, int | None] | None, every: int | None
) -> CheckpointError:
    found = sorted(scan.unselected)
    shown = ", ".join(map(str, found[:10])) + (" ..." if len(found) > 10 else "")
    flags = []
    if steps is not None:
        lo, hi = steps
        flags.append(f"--steps {'' if lo is None else lo}:{'' if hi is None else hi}")
    if every is not None:
        flags.append(f"--every {every} (steps that are multiples of {every})")
    return CheckpointError(
        f"no checkpoint in '{scan.directory}' is selected by {' and '.join(flags)}; the steps "
        f"found are {shown}. Widen the selection."
    )


def _every_note(every: int, kept: int, left_out: list[int]) -> str:
    """--every kept one checkpoint: no distance can be measured; the spacing that would work."""
    found = sorted({kept, *left_out})
    spacing = math.gcd(*found)
    shown = ", ".join(map(str, found[:6])) + (" ..." if len(found) > 6 else "")
    fix = "Leave --every out, or select a range with --steps."
    if spacing > 1:
        near = spacing * max(1, round(every / spacing))
        if sum(1 for step in found if step % near == 0) >= 2:
            fix = (
                f"The steps found are multiples of {spacing}: pass a multiple of {spacing} "
                f"(--every {near}), or leave --every out."
            )
        else:  # --every beyond the run's span: the nearest multiple of the spacing keeps one too
            last = found[-1]
            wider = spacing * max(1, last // (2 * spacing))
            if sum(1 for step in found if step % wider == 0) < 2:
                wider = spacing  # keeps every step found
            fix = (
                f"The steps found are multiples of {spacing} and end at {last}: pass a smaller "
                f"multiple of {spacing} (--every {wider}), or leave --every out."
            )
    return (
        f"--every {every} (the steps that are multiples of {every}) keeps only step {kept} of "
        f"the {len(found)} steps found ({shown}), and distances need two kernels. {fix}"
    )


def shown_name(directory: Path, c: Candidate) -> str:
    """How a candidate is named to the user: relative to its directory (the folder name with a
    slash for Hugging Face folders)."""
    if c.folder is not None:
        return c.name
    try:
        return str(c.location.relative_to(directory))
    except ValueError:
        return c.location.name


def weights_name(directory: Path, c: Candidate) -> str:
    """How the notes about a checkpoint's file name it (the torch.save note): as
    :func:`shown_name`, but the file inside a folder read for its one weights file
    (``step_0/model.pt``, not ``step_0/``, which is no torch.save file)."""
    if c.folder is not None and c.index is None and len(c.paths) == 1:
        return _relative(c.paths[0], directory)
    return shown_name(directory, c)


def default_warn(message: str) -> None:
    warnings.warn(message, CheckpointWarning, stacklevel=3)


def abridged(names: Sequence[str]) -> str:
    """``a, b, c, ..., z``: the first three names and the last; all of them when they are four
    or fewer (a ``...`` that stands for no name would say that some are left out)."""
    if len(names) <= 4:
        return ", ".join(names)
    return ", ".join(names[:3]) + f", ..., {names[-1]}"


def named_files(names: Sequence[str]) -> str:
    """The files a note is about, as the notes name them: ``ckpt_5.pt`` for one, ``3 checkpoints
    (ckpt_0.pt, ckpt_5.pt, ckpt_10.pt)`` for several (of more than four, the first three, ...,
    the last)."""
    if len(names) == 1:
        return names[0]
    shown = abridged(names)
    return f"{len(names)} checkpoints ({shown})"


def torch_note(names: Sequence[str]) -> str:
    """The note on torch.save checkpoints, naming them (``names``: at least one, as shown to the
    user, relative to their directory): ``ckpt_5.pt is a torch.save file, read only with ...``,
    ``3 checkpoints (a.pt, b.pt, c.pt) are torch.save files, read only with ...``; the row note
    :data:`TORCH_NOTE` of ``conetool inspect`` said of the files it is about."""
    one = "a torch.save file"
    rest = TORCH_NOTE.removeprefix(one)
    if len(names) == 1:
        return f"{names[0]} is {one}{rest}"
    return f"{named_files(names)} are torch.save files{rest}"


def scan_selected(
    directory: str | Path,
    *,
    step_regex: str | None,
    iterations_per_epoch: int | None,
    steps: tuple[int | None, int | None] | None,
    every: int | None,
    deep: bool,
) -> Scan:
    """The directory's candidates within the selection; an error when there are none."""
    scan = scan_directory(
        directory,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=steps,
        every=every,
        deep=deep,
    )
    if not scan.candidates and scan.unselected:
        raise _none_selected(scan, steps, every)
    if not scan.candidates:
        given = Path(directory).expanduser()
        if given.is_file():  # one file given, and not a checkpoint (conetool.toml, metrics.csv)
            raise CheckpointError(
                f"'{given}' is not a checkpoint: conetool reads *.safetensors and "
                "*.pt/*.pth/*.bin/*.ckpt files and Hugging Face checkpoint-N/ folders. Pass the "
                f"directory of the checkpoints ('{given.parent}'), or one checkpoint file."
            )
        raise empty_error(scan)
    return scan


@dataclass(frozen=True)
class CheckpointListing:
    """What :func:`checkpoint_listing` found: the usable checkpoints, and the files it left out
    under ``skip_bad``."""

    refs: list[CheckpointRef]  # sorted by step
    #: file (the Hugging Face folder, the shard index or the file) -> why it was left out; the
    #: files of the "left out ..." warnings, one entry each (both files of a duplicate step)
    left_out: dict[Path, str] = field(default_factory=dict)
    #: step read -> the files left out as its copies though they are no file of it (``final.pt``
    #: storing the step, a Trainer's final model): read in its place if its file were moved out
    copies: dict[int, list[LeftCopy]] = field(default_factory=dict)


def list_checkpoints(
    directory: str | Path,
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
    steps: tuple[int | None, int | None] | None = None,
    every: int | None = None,
    skip_bad: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[CheckpointRef]:
    """The checkpoints of ``directory`` sorted by step, found by reading file headers only.

    Args:
        directory: a checkpoint directory (see the module docstring for the layouts), or one
            checkpoint file or Hugging Face folder.
        step_regex: overrides step recovery (``--step-regex``), searched in each file name (the
            folder name for Hugging Face folders); its group ``step``, or its first group.
        iterations_per_epoch: for names that give an epoch (``epoch_3``: step = 3 x this;
            open_lth's ``model_ep{E}_it{I}``: E x this + I; see
            :mod:`conetool.step_names`): ceil(training examples / batch size).
        steps: ``(first, last)``, both included, either may be None (``--steps``; see
            :func:`parse_step_range`). Files outside the range are not checked.
        every: keep only steps that are multiples of ``every`` (``--every``).
        skip_bad: turn per-file problems into ``warn`` calls and go on with the other files.
        warn: receives warnings (skipped files, notes); default :func:`warnings.warn`.

    Files that give the same step and hold the same bytes (size and sha256; a backup
    ``ckpt_0060.pt`` beside ``ckpt_60.pt``) are copies: the first by name is listed (a file named
    for its step before a ``best``/``last`` copy), the others are left out with a note. So are
    files of one step that hold the same tensors, bit for bit, in other bytes (one state dict
    saved under two names, or as a ``.pt`` and a ``.safetensors``): a torch.save file is listed
    before a safetensors one (its dict may hold the optimizer state), then the first by name.
    Only files that share a step are hashed, and read in full to compare their tensors.

    Raises:
        CheckpointError: the directory is missing, unreadable or holds no checkpoint; or (unless
            ``skip_bad``) any file is unusable: not safetensors, truncated, no step, a step that
            files of different content give, a run mixed into another, a symlink loop,
            unreadable, still being written.
            One error lists every problem, each naming its file and the fix.
    """
    return checkpoint_listing(
        directory,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=steps,
        every=every,
        skip_bad=skip_bad,
        warn=warn,
    ).refs


def checkpoint_listing(
    directory: str | Path,
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
    steps: tuple[int | None, int | None] | None = None,
    every: int | None = None,
    skip_bad: bool = False,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
    left_out: Callable[[str], None] | None = None,
) -> CheckpointListing:
    """:func:`list_checkpoints` (same arguments, same errors), also saying which files it left
    out under ``skip_bad`` and why (what ``conetool kernels`` counts as "left out").

    ``note`` receives what is said for information only, nothing lost or guessed (the
    torch.save note: ``--quiet`` leaves it out); default ``warn``. ``left_out`` receives the
    ``left out ...`` lines of ``skip_bad`` (one per unusable file); default ``warn``: a caller
    that reads only some steps (``switch``) says the problems of the files it needs itself."""
    warn = warn or default_warn
    note = note or warn
    left_out = left_out or warn
    scan = scan_selected(
        directory,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=steps,
        every=every,
        deep=False,
    )
    bad = [c for c in scan.candidates if c.problem is not None]
    if bad and not skip_bad:
        raise _problems_error(scan.directory, bad)
    for line in _problem_lines(bad):
        # "left out", the word of kernels' table (its "left out" column counts these files)
        left_out(f"left out {line}" if line[0].isdigit() else f"left out a checkpoint: {line}")
    refs = [c.ref() for c in scan.candidates if c.problem is None]
    if not refs:
        raise CheckpointError(
            f"no usable checkpoint left in '{scan.directory}': all {len(bad)} were left "
            f"out (--skip-bad; see the warnings). Fix the files or point at another directory."
        )
    by_every = [step for step in scan.unselected if is_selected(step, steps, None)]
    if every is not None and len(refs) == 1 and by_every:
        warn(_every_note(every, refs[0].step, by_every))
    from_epochs = sum(1 for c in scan.candidates if c.problem is None and c.epoch is not None)
    if from_epochs and iterations_per_epoch is not None:
        warn(epoch_note(iterations_per_epoch, from_epochs))
    if stored := stored_step_note(scan.directory, scan.candidates, iterations_per_epoch):
        (warn if stored[1] else note)(stored[0])
    if said := folder_step_warning(scan.directory, scan.candidates):  # step_7/ storing 700
        warn(said)
    if said := epoch_entry_warning(scan.directory, scan.candidates):  # timm's checkpoint-3
        warn(said)
    if said := unix_time_warning(scan.directory, scan.candidates):  # steps that may be times
        warn(said)
    if said := left_entries_warning(scan.directory, scan.candidates):  # an EMA not read
        warn(said)
    pickled = [c for c in scan.candidates if c.problem is None and c.paths and c.format == "torch"]
    if pickled:  # named as conetool inspect names them
        note(torch_note([weights_name(scan.directory, c) for c in pickled]))
    if said := not_state_dicts_note(scan):
        note(said)
    if said := copies_note(scan):  # the same bytes or tensors as a file read: nothing lost
        note(said)
    if said := nested_warning(scan):  # checkpoints in subfolders are not read: a warning
        warn(said)
    if said := final_model_warning(scan):  # a Trainer's final model whose step is not known
        warn(said)
    if said := stand_in_warning(scan):  # a copy read for a step whose own file is unusable
        warn(said)
    if said := other_copy_warning(scan):  # a copy of a step with other tensors, not read
        warn(said)
    if said := stepless_copy_warning(scan):  # a final.pt of no step, other tensors
        warn(said)
    if said := bad_step_copy_warning(scan):  # a final.pt of a step entry 'last', other tensors
        warn(said)
    if said := bad_step_copy_note(scan):  # one of the last step's tensors, or not compared
        note(said)
    if said := regex_left_warning(scan):  # a copy of a step no file gives, not matched
        warn(said)
    if said := unreadable_alias_warning(scan):  # a copy whose step cannot be known
        warn(said)
    if said := store_files_warning(scan):  # a store's files among the checkpoints
        warn(said)
    read = {ref.step for ref in refs}
    copies = {step: files for step, files in scan.left_copies.items() if step in read}
    return CheckpointListing(refs, {c.folder or c.location: c.problem or "" for c in bad}, copies)


def step_problems(
    directory: str | Path,
    step: int,
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
) -> CheckpointError | None:
    """Why the file(s) of ``step`` in ``directory`` cannot be used (one error naming each file
    and its fix), or None when none of them has a problem or there is none. Files whose step
    cannot be known, and files of other steps, are left out: their problems are not this step's.
    """
    return steps_problems(
        directory, [step], step_regex=step_regex, iterations_per_epoch=iterations_per_epoch
    ).get(step)


def steps_problems(
    directory: str | Path,
    steps: Sequence[int],
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
) -> dict[int, CheckpointError]:
    """:func:`step_problems` of each of ``steps`` that has one, by step, from one scan of
    ``directory`` (``switch --at 0:20000`` asks for thousands of steps: a scan each listed the
    folder as often)."""
    wanted = set(steps)
    if not wanted:
        return {}
    try:
        scan = scan_selected(
            directory,
            step_regex=step_regex,
            iterations_per_epoch=iterations_per_epoch,
            steps=(min(wanted), max(wanted)),
            every=None,
            deep=False,
        )
    except CheckpointError:
        return {}  # no file of these steps at all
    bad: dict[int, list[Candidate]] = {}
    for c in scan.candidates:
        if c.problem is not None and c.step in wanted:
            bad.setdefault(c.step, []).append(c)
    return {
        step: _problems_error(scan.directory, mine, "Fix or move these files.")
        for step, mine in bad.items()
    }


def checkpoint_ref(
    path: str | Path,
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
    step: int | None = None,
) -> CheckpointRef:
    """The :class:`CheckpointRef` of one checkpoint file or Hugging Face folder (header checked).

    The step is recovered as in :func:`list_checkpoints` unless ``step`` is given.
    """
    scan = scan_directory(
        path,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=None,
        every=None,
        deep=False,
        single=True,
        fixed_step=step,
    )
    if not scan.candidates:
        raise CheckpointError(
            f"'{path}' is not a checkpoint: conetool reads *.safetensors, *.pt/*.pth/*.bin/*.ckpt "
            f"files and Hugging Face checkpoint-N/ folders."
        )
    c = scan.candidates[0]
    if c.problem is not None:
        raise CheckpointError(c.problem)
    return c.ref()
