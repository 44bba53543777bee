"""The records of a directory scan: a checkpoint reference (step, files, format) and the
candidates and results of one scan, with the warning class checkpoint problems use."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ._safetensors_format import SAFETENSORS_SUFFIX, SafetensorsHeader
from ._stored_steps import BadStep
from ._torch_save import TORCH_SUFFIXES

CHECKPOINT_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)


def has_checkpoint_suffix(name: str) -> bool:
    """Whether a file name ends with a checkpoint extension, in any case (``STEP_4.SAFETENSORS``
    from a case-insensitive file system too)."""
    return name.lower().endswith(CHECKPOINT_SUFFIXES)


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` names a safetensors file (its extension, in any case)."""
    return path.suffix.lower() == SAFETENSORS_SUFFIX


SOURCES = ("safetensors", "torch", "hf", "hf-sharded")
TORCH_NOTE = (
    "a torch.save file, read only with torch.load(weights_only=True); safetensors is preferred "
    "(no pickle, checked from its header)"
)


class CheckpointWarning(UserWarning):
    """A per-file checkpoint problem skipped under ``skip_bad``, or a note on the file format."""


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a directory: its training step and the file(s) holding its weights.

    ``paths`` is one file, or the shards of a sharded checkpoint in order. ``source`` is
    ``"safetensors"`` or ``"torch"`` for flat files, ``"hf"`` for a Hugging Face folder with one
    weights file, ``"hf-sharded"`` for shards with their index. ``size`` is the total size in
    bytes when it was listed.
    """

    step: int
    paths: tuple[Path, ...]
    source: str
    folder: Path | None = None  # the Hugging Face checkpoint-N/ folder
    index: Path | None = None  # the shard index (*.index.json)
    size: int = 0

    @property
    def file(self) -> Path:
        """What to show the user: the Hugging Face folder, else the shard index, else the file."""
        return self.folder or self.index or self.paths[0]

    def file_state(self) -> tuple[int, int]:
        """``(bytes, mtime_ns)`` of its files now: their total size and the newest modification
        time (what a store compares before reading a checkpoint). Raises OSError when one is
        gone."""
        stats = [p.stat() for p in self.paths]
        return sum(s.st_size for s in stats), max(s.st_mtime_ns for s in stats)

    @property
    def format(self) -> str:
        """``"safetensors"`` or ``"torch"`` (pickle-based, read with ``weights_only=True``)."""
        return "safetensors" if is_safetensors(self.paths[0]) else "torch"


class LeftCopy(NamedTuple):
    """A file left out as a copy of a step another file gives: ``final.pt`` storing the step,
    or a Hugging Face Trainer's final model of a step a ``checkpoint-N/`` folder gives."""

    path: Path
    #: the ``trainer_state.json`` whose ``global_step`` gives its step (a Trainer's final model
    #: that stores none); None when the file stores its step
    state_file: Path | None = None


@dataclass
class Candidate:
    name: str  # relative to the directory, for display ("checkpoint-2000/" for folders)
    location: Path
    paths: tuple[Path, ...] = ()
    source: str = ""
    folder: Path | None = None
    index: Path | None = None
    size: int = 0
    step: int | None = None
    problem: str | None = None
    headers: tuple[SafetensorsHeader, ...] = ()
    shapes: dict[str, tuple[int, ...]] | None = None  # key -> shape, when known without loading
    global_step: int | None = None  # trainer_state.json
    #: a folder of Accelerate's ``save_state`` with automatic checkpoint naming
    #: (``checkpoint_3/`` holding ``random_states_0.pkl``): its number counts the saves, not
    #: training steps
    save_count: bool = False
    #: a Hugging Face Trainer's final model (``Trainer.save_model``: ``model.safetensors`` in the
    #: output directory beside its ``checkpoint-N/`` folders), ``global_step`` from the output
    #: directory's ``trainer_state.json``
    trainer_final: bool = False
    epoch: int | None = None  # set when the step was converted from an epoch in the name
    #: a flat torch.save file that holds no tensor by name (``"a list of 3 items"``): no checkpoint
    holds: str | None = None
    #: the step entries of the torch.save dict of a flat file or a folder's one file
    #: (``_stored_steps.STEP_KEYS``), as read (None: the entry is None)
    stored_steps: dict[str, int | BadStep | None] = field(default_factory=dict)
    #: where the step came from when the file stores it (``"safetensors metadata step"``)
    step_inside: str | None = None
    #: the torch.save dict's ``epoch`` entry (a whole number), which gives no step
    stored_epoch: int | None = None
    #: the step the name gives when it differs from the one stored in the file (which is taken)
    named_step: int | None = None
    #: a folder of one step whose weights file stores another step than the folder gives (the
    #: folder's is taken): (the file, where it stores the step, the step stored, how the
    #: folder gives its step: "by its name", "by its trainer_state.json global_step")
    folder_file_step: tuple[Path, str, int, str] | None = None
    #: the step was read from a file's name by a built-in step rule (``ckpt_2000``): not by
    #: --step-regex, from an epoch name or open_lth's, stored in the file, or a Hugging Face
    #: folder's (the Trainer names it by its step)
    step_by_name_rule: bool = False
    #: a torch.save file's dict: the entry whose state dict is read (``"model"``); None for a
    #: plain state dict or a file not read
    entry: str | None = None
    #: the entries beside ``entry`` that hold a state dict of the same names, dtypes and shapes,
    #: not one in memory with it: their values are compared only when the file is read in full
    uncompared: tuple[str, ...] = ()
    #: where the dict holds another state dict of the same network, which is not read: the keys
    #: leading to each (``("ema",)``, a Lightning callback's ``("callbacks", "EMA",
    #: "ema_state_dict")``)
    left: tuple[tuple[str, ...], ...] = ()
    #: the first of ``paths`` that holds one of ``left`` (a Hugging Face folder's
    #: pytorch_model.bin, a shard): the file to read it from
    left_file: Path | None = None

    def fail(self, message: str) -> None:
        if self.problem is None:
            self.problem = message

    @property
    def metadata(self) -> dict[str, str]:
        return self.headers[0].metadata if self.headers else {}

    @property
    def format(self) -> str:
        return "safetensors" if self.paths and is_safetensors(self.paths[0]) else "torch"

    def ref(self) -> CheckpointRef:
        assert self.step is not None and self.problem is None
        return CheckpointRef(self.step, self.paths, self.source, self.folder, self.index, self.size)


@dataclass(frozen=True)
class BadStepCopy:
    """A copy named without a step (``final.pt``) whose stored step entry is no step
    (``{"step": "last"}``, ``2.5``, ``-1``): left out as such copies are, its step not known.
    ``last``: the last checkpoint read, with which it was compared (as a copy that stores no step
    is), and its step; None when it was not compared (a ``best.pt``, a selection without the
    last step, no checkpoint read)."""

    name: str
    entry: str  # "a 'step' entry of 'last' in its torch.save dict, which is not a whole ..."
    resave: str  # what to re-save it with: "its step as an int"
    last: str | None = None
    last_step: int | None = None
    other: bool = False  # it holds other tensors than ``last``


@dataclass
class Scan:
    directory: Path
    candidates: list[Candidate]  # selected ones, sorted by step (unknown steps last)
    ignored: list[str] = field(default_factory=list)  # skipped on purpose (optimizer states, ...)
    others: list[str] = field(default_factory=list)  # everything else in the directory
    unselected: list[int] = field(default_factory=list)  # steps left out by --steps / --every
    # subfolders (not checkpoint folders) holding checkpoints, which are not read: name -> count
    nested: dict[str, int] = field(default_factory=dict)
    # files left out as copies of another file of their step: (copy, kept, step, how), ``how``
    # saying what they share ("the same content (size and sha256)", "the same tensors (...)")
    copies: list[tuple[str, str, int, str]] = field(default_factory=list)
    # torch.save files that hold no tensor by name, not read: name -> what ("a list of 3 items")
    not_state_dicts: dict[str, str] = field(default_factory=dict)
    # a conetool store's own files and folders lying among the checkpoints (an older conetool
    # wrote a store into its checkpoint directory): manifest.json, probe.safetensors, kernels/
    store_files: list[str] = field(default_factory=list)
    # the top-level trainer_state.json's best_model_checkpoint beside a Trainer's final model
    best_model: str | None = None
    # a Trainer's final model not read, as its step is not known: (name, global_step)
    final_left: list[tuple[str, int]] = field(default_factory=list)
    # a copy named without a step (final.pt) or a Trainer's final model read for a step whose
    # own file or checkpoint-N/ folder is unusable: (name read, names of the unusable, step, how
    # its step is known: "which it stores", "the global_step of ...")
    stand_ins: list[tuple[str, list[str], int, str]] = field(default_factory=list)
    # a copy named without a step that --step-regex does not match, left out though it stores a
    # step no file read gives: (name, the step it stores, the regex)
    regex_left: list[tuple[str, int, str]] = field(default_factory=list)
    # a copy named without a step (final.pt) that cannot be read (truncated, corrupt), so its
    # step is not known and it is left out: (name, its problem)
    unreadable_aliases: list[tuple[str, str]] = field(default_factory=list)
    # a copy named without a step (final.pt, last.ckpt) left out because another file gives the
    # step it stores, though it holds other tensors than that file (a loop that saved later
    # weights with a stale step counter): (copy's name, the read file's name, step)
    other_copies: list[tuple[str, str, int]] = field(default_factory=list)
    # a copy named without a step (final.pt, last.pt) that stores no step, left out though it
    # holds other tensors than the last step's file (a loop's final weights, saved after its
    # last numbered checkpoint): (copy's name, the last file read, its step)
    stepless_copies: list[tuple[str, str, int]] = field(default_factory=list)
    # the --step-regex the scan read steps by (None: the built-in rules): under it a copy named
    # without a step is read only if the regex reads its step from its name
    step_regex: str | None = None
    # a copy named without a step whose stored step entry is no step ('last', 2.5, -1), left out
    # as such copies are, with what it stores and, where compared, the last step's file
    bad_step_copies: list[BadStepCopy] = field(default_factory=list)
    # every file left out as a copy of a step another file gives (final.pt, a Trainer's final
    # model): step -> them, for a step whose file fails when it is read to name them
    left_copies: dict[int, list[LeftCopy]] = field(default_factory=dict)
