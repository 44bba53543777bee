"""``train --resume``'s check that the run's last checkpoint fits the model its spec builds,
made before the run's folder is touched.

The spec ``--resume`` is given must be the one in the run's ``conetool.toml``; when that file
was edited since the run was trained (another ``[model]``), both agree and the checkpoint does
not fit: loading it ended in PyTorch's ``load_state_dict`` error and a traceback, after
``metrics.csv`` had lost its rows from the resume step on.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import paths
from .checkpoints.fit import fit_error
from .checkpoints.records import CheckpointRef
from .errors import CheckpointError


def refuse_unfit_resume(model: nn.Module, out: Path, step: int, spec_source: str) -> None:
    """Raise :class:`CheckpointError` when the keys or shapes of the checkpoint of ``step`` in
    ``out`` (read from its header) do not fit ``model``, the one ``spec_source`` builds; say
    nothing when they fit.

    Raises:
        CheckpointError: the checkpoint does not fit (naming it, the keys, ``spec_source`` and
            the fixes), or its header cannot be read (naming the file).
    """
    path = paths.checkpoint(out, step)
    error = fit_error(model, CheckpointRef(step, (path,), "safetensors"))
    if error is None:
        return
    spec_file = paths.spec(out)
    raise CheckpointError(
        f"--resume: {error} The run in {out} was trained with another [model] than "
        f"{spec_source} gives (was {spec_file.name} edited since?). Put back the [model] the run "
        "was trained with, or pass --overwrite to train it anew (it deletes the run's "
        "checkpoints), or choose another --out."
    ) from error
