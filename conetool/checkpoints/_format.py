"""Where :func:`load_weights_only` was imported from before the checkpoint file formats were
split into modules of one job each; it lives in :mod:`conetool.checkpoints._torch_save`.

The formats: :mod:`._opening` (opening one file, its ``OSError`` as a message),
:mod:`._safetensors_format` (safetensors headers, tensors from a file's bytes),
:mod:`._hashed_reads` (one-pass reads with a streaming hash, fingerprints), :mod:`._torch_save`
(torch.save files, read with ``weights_only=True``), :mod:`._state_dicts` (the state dict inside
what ``torch.load`` returned) and :mod:`._stored_steps` (the step a file stores). Import from
those; this module only keeps :mod:`conetool.checkpoint_optimizer` and
:mod:`conetool.trainer_optimizer` working.
"""

from __future__ import annotations

from ._torch_save import load_weights_only

__all__ = ["load_weights_only"]
