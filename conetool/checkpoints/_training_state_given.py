"""A file of the training's state given where a checkpoint (or the run's directory) belongs.

``conetool train`` saves ``step_002000.optim.safetensors`` beside ``step_002000.safetensors``;
a Hugging Face Trainer saves ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state.pth``
(``rng_state_0.pth`` ... per process) and ``training_args.bin`` beside the model's weights
(``model.safetensors`` or ``pytorch_model.bin``) in each ``checkpoint-N/`` folder. None of them
holds the model's weights: ``conetool inspect FILE`` would report an optimizer state as a
checkpoint, ``conetool kernels FILE`` would load it into the model, and the others were refused
as a dict that is "not a state dict" with the advice to re-save the model's. Given as the one file
to read, each is refused, naming what it is and the weights file, folder or directory to pass
instead. (In a folder they are left out without a word, as the discovery skips them.)
"""

from __future__ import annotations

import re
from pathlib import Path

from conetool import paths
from conetool.errors import CheckpointError

#: What a Hugging Face Trainer saves beside the model's weights in each checkpoint-N/ folder,
#: by name (lowercase): what each holds.
_TRAINER_STATES = (
    (re.compile(r"optimizer\.(pt|bin)"), "an optimizer state"),
    (re.compile(r"scheduler\.pt"), "a learning-rate scheduler's state"),
    (re.compile(r"scaler\.pt"), "a gradient scaler's state (mixed precision)"),
    (re.compile(r"rng_state.*\.pth"), "the random number generators' states"),
    (re.compile(r"training_args\.bin"), "the Trainer's arguments (TrainingArguments)"),
)

#: The model's weights in a Hugging Face checkpoint folder: one file, or the index of its shards.
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def refuse_training_state(given: str | Path) -> None:
    """Raise a :class:`CheckpointError` when ``given`` is a file of the training's state (an
    optimizer state; a Hugging Face Trainer's scheduler, scaler, RNG state or arguments): the
    message says what it is and which checkpoint, weights file, folder or directory to pass
    instead. Nothing for anything else (a directory, a checkpoint, a file that does not exist).
    """
    path = Path(given).expanduser()
    if not path.is_file():
        return
    name = path.name.lower()
    folder = path.parent
    if paths.is_optimizer_state(path):
        cut = (
            len(paths.OPTIMIZER_SUFFIX)
            if name.endswith(paths.OPTIMIZER_SUFFIX)
            else len(".optim.pt")
        )
        suffix = paths.CHECKPOINT_SUFFIX if name.endswith(paths.OPTIMIZER_SUFFIX) else ".pt"
        beside = folder / (path.name[:-cut] + suffix)
        instead = (
            f"the checkpoint beside it ('{beside}') or the run's directory ('{folder}')"
            if beside.is_file()
            else f"the run's directory ('{folder}') or one of its model checkpoints"
        )
        raise CheckpointError(
            f"'{path}' is an optimizer state (the momentum buffers `conetool train` saves beside "
            f"each checkpoint, *{paths.OPTIMIZER_SUFFIX}), not a checkpoint of the model. Pass "
            f"{instead}."
        )
    what = next((what for pattern, what in _TRAINER_STATES if pattern.fullmatch(name)), None)
    if what is None:
        return
    raise CheckpointError(
        f"'{path}' holds {what}, which a Hugging Face Trainer saves beside the model's weights, "
        f"not the weights: it is no checkpoint of the model. Pass {_weights_instead(folder)}."
    )


def _weights_instead(folder: Path) -> str:
    """What to pass instead of a Trainer's file in ``folder``: the weights beside it when there
    is one file of them, the folder (which reads shards too), the run's directory."""
    weights = next((folder / n for n in _WEIGHTS if (folder / n).is_file()), None)
    sharded = any((folder / n).is_file() for n in _SHARD_INDEXES)
    run = (
        f" or the run's directory ('{folder.parent}')"
        if paths.is_hf_checkpoint_folder(folder.name)
        else ""
    )
    if weights is not None:
        return f"the model's weights beside it ('{weights}'), the folder ('{folder}'){run}"
    if sharded:
        return f"the folder ('{folder}'), whose index lists the shards of the model's weights{run}"
    return (
        f"the model's weights file (model.safetensors or pytorch_model.bin, which a Trainer "
        f"saves in each checkpoint-N/ folder; there is none in '{folder}'){run}"
    )
