"""The folders a checkpoint directory reads as one checkpoint each (``checkpoint-2000/``,
``step_2000/model.pt``), told by their names and listings alone: no file is read and PyTorch is
not imported, so that :mod:`conetool.folder_roles` can tell a run saved as folders per step."""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import paths
from .errors import CheckpointError
from .step_names import name_step

__all__ = ["FOLDER_TORCH", "FOLDER_WEIGHT_NAMES", "HF_WEIGHTS", "read_as_one_step", "step_named"]

#: A Hugging Face checkpoint folder's weights: each pair is the index of the shards and the
#: single file, in the order a folder is read by.
HF_WEIGHTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
#: A plain loop's folder per step (``step_2000/model.pt``), read as a Hugging Face folder is: the
#: torch.save file of the weights, when the folder holds none of :data:`HF_WEIGHTS`.
FOLDER_TORCH = ("model.pt", "model.pth")
#: Every name the weights of a checkpoint folder are read by.
FOLDER_WEIGHT_NAMES = frozenset({n for pair in HF_WEIGHTS for n in pair} | set(FOLDER_TORCH))


def step_named(name: str, pattern: re.Pattern[str] | None) -> bool:
    """Whether a subfolder's ``name`` gives a step, so that it is read as a folder of one step:
    a Hugging Face ``checkpoint-2000``, a name a built-in rule reads (``step_2000``, ``2000``;
    an epoch name or a date too, whose error the folder then gets) or one ``pattern``
    (--step-regex) matches. ``old``, ``best``, ``backup`` give none."""
    if paths.is_hf_checkpoint_folder(name) or (pattern is not None and pattern.search(name)):
        return True
    try:
        return name_step(name, None, Path(name), dates=False) != (None, None)
    except CheckpointError:  # an epoch name without the iterations per epoch
        return True


def read_as_one_step(folder: Path) -> bool:
    """Whether ``folder``, a subfolder of a checkpoint directory listed whole (no
    ``--step-regex``), is read as one checkpoint: a Hugging Face ``checkpoint-N`` whatever it
    holds (an empty one gets its error), or a folder holding weights named as in
    :data:`FOLDER_WEIGHT_NAMES` that gives a step: named for one (``step_0``,
    :func:`step_named`) or holding ``trainer_state.json``. False when it cannot be listed."""
    folder = Path(folder)
    if paths.is_hf_checkpoint_folder(folder.name):
        return True
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    gives = step_named(folder.name, None) or "trainer_state.json" in names
    return gives and bool(names & FOLDER_WEIGHT_NAMES)
