"""An optimizer state given where a checkpoint (or the run's directory) belongs.

``conetool train`` saves ``step_002000.optim.safetensors`` beside ``step_002000.safetensors``;
a Hugging Face Trainer saves ``optimizer.pt`` in each ``checkpoint-N/`` folder. Their tensors are
momentum buffers, not the model's weights: ``conetool inspect FILE`` would report one as a
checkpoint, ``conetool kernels FILE`` would load it into the model. Given as the one file to
read, each is refused, naming the checkpoint or folder to pass instead.
"""

from __future__ import annotations

from pathlib import Path

from conetool import paths
from conetool.errors import CheckpointError

#: What a Hugging Face Trainer calls its optimizer state, in each checkpoint-N/ folder.
_TRAINER_OPTIMIZER = ("optimizer.pt", "optimizer.bin")


def refuse_optimizer_state(given: str | Path) -> None:
    """Raise a :class:`CheckpointError` when ``given`` is an optimizer-state file: the message
    says what it is and which checkpoint, folder or directory to pass instead. Nothing for
    anything else (a directory, a checkpoint, a file that does not exist).
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
    if name in _TRAINER_OPTIMIZER:
        instead = (
            f"the checkpoint folder ('{folder}') or the run's directory ('{folder.parent}')"
            if paths.is_hf_checkpoint_folder(folder.name)
            else f"the folder of the model's weights ('{folder}')"
        )
        raise CheckpointError(
            f"'{path}' is an optimizer state (what a Hugging Face Trainer saves beside the "
            f"model's weights), not a checkpoint of the model. Pass {instead}."
        )
