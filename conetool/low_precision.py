"""Models held in fewer than 32 bits (float16, bfloat16, float8): the dtype their eNTK is computed
in, and what the commands that train them say; and the note for a model held in more digits than
the kernels' dtype (a float64 model under ``conetool kernels --dtype float32``).

- **The eNTK** is computed in at least float32: :func:`conetool.ntk.empirical_ntk` with
  ``dtype=None`` computes the kernel of a float16 or bfloat16 model in float32, from its weights
  upcast exactly (a copy: the model keeps its own), and range-checks the float32 kernel it returns
  (:mod:`conetool.ntk_range`). Computed in the model's own dtype, as it was, a tiny MLP's and a
  small convolutional net's kernels were 2e-4 (float16) and 1e-3 to 3e-3 (bfloat16) off the
  float64 kernel of the same weights (relative Frobenius error), and the float16 MLP's was all
  zeros, unchecked, for outputs scaled by 1e-6; in float32 they are within 1e-6
  (``tests/test_half_precision.py``). ``conetool kernels``
  always passed its ``--dtype`` (float32 by default), so its kernels were float32 already; it says
  in a note that the model is upcast (:func:`upcast_note`).
- **Training** (``conetool train``, ``conetool switch``) steps the model's weights in place, in
  their own dtype, on batches in that dtype (:mod:`conetool.model_inputs`: a float64 model trains
  in float64), without the float32 master weights and loss scaling of mixed-precision training: a
  float16 or bfloat16 model (which failed on its first batch with PyTorch's dtype mismatch, when
  the batches were float32 whatever the model) is refused before anything is written, naming the
  spec's ``[model] arch`` and the fix (:func:`refuse_for_training`).
- **A float64 model** (``model.double()``) under ``conetool kernels --dtype float32`` (the
  default) has its kernels computed from copies of its weights rounded to float32: the kernels
  are those of the rounded weights, which ``kernels`` says in a note naming ``--dtype float64``,
  which keeps them (:func:`rounded_note`).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ModelError

__all__ = [
    "is_low_precision",
    "low_precision_parameter",
    "refuse_for_training",
    "rounded_note",
    "upcast_note",
]


def is_low_precision(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is a floating dtype of fewer than 32 bits (float16, bfloat16, float8)."""
    return dtype.is_floating_point and torch.finfo(dtype).bits < 32


def low_precision_parameter(model: nn.Module) -> tuple[str, torch.dtype] | None:
    """The name and dtype of the first trainable parameter of ``model`` held in fewer than 32
    bits; ``None`` when there is none."""
    for name, p in model.named_parameters():
        if p.requires_grad and is_low_precision(p.dtype):
            return name, p.dtype
    return None


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def upcast_note(model: nn.Module, arch: str, source: str, compute: torch.dtype) -> str | None:
    """``conetool kernels``' note for a spec whose model (``[model] arch`` of the spec file
    ``source``) holds trainable parameters in fewer than 32 bits: its kernels are computed in
    ``compute`` (float32 or float64) from its weights upcast; ``None`` for any other model."""
    found = low_precision_parameter(model)
    if found is None:
        return None
    name, dtype = found
    return (
        f'{source}: [model] arch = "{arch}" builds a {_dtype(dtype)} model (parameter '
        f"'{name}'): its kernels are computed in {_dtype(compute)} from its {_dtype(dtype)} "
        f"weights, upcast exactly (checkpoints are loaded into the model's {_dtype(dtype)} first)."
    )


def rounded_note(model: nn.Module, arch: str, source: str, compute: torch.dtype) -> str | None:
    """``conetool kernels``' note for a spec whose model (``[model] arch`` of the spec file
    ``source``) holds a trainable parameter in more significant digits than ``compute``, the
    dtype its kernels are computed in (a float64 model, ``--dtype float32``): they are computed
    from its weights rounded to ``compute``; ``None`` for any other model."""
    for name, p in model.named_parameters():
        if (
            p.requires_grad
            and p.dtype.is_floating_point
            and torch.finfo(p.dtype).eps < torch.finfo(compute).eps
        ):
            held, wanted = _dtype(p.dtype), _dtype(compute)
            return (
                f'{source}: [model] arch = "{arch}" builds a {held} model (parameter '
                f"'{name}'): its kernels are computed in {wanted} (--dtype {wanted}) from its "
                f"{held} weights rounded to {wanted}; --dtype {held} keeps them."
            )
    return None


def refuse_for_training(model: nn.Module, arch: str, source: str, command: str) -> None:
    """Refuse a model with trainable parameters in fewer than 32 bits for ``command``
    (``"conetool train"``, ``"conetool switch"``), which would step its weights in their own
    dtype, without mixed precision (float32 and float64 models train in their own dtype).

    Raises:
        ModelError: naming the spec file ``source``, its ``[model] arch``, the first such
            parameter and its dtype, and the fix (a factory that returns the model in float32).
    """
    found = low_precision_parameter(model)
    if found is None:
        return
    name, dtype = found
    raise ModelError(
        f'{source}: [model] arch = "{arch}" builds a {_dtype(dtype)} model (parameter '
        f"'{name}'), but {command} trains in float32 (or float64): it steps the model's weights "
        f"in their own dtype, without the float32 master weights and loss scaling of "
        f"mixed-precision training. Make the factory return the model in float32 "
        f"(drop its .half() / .bfloat16() / .to({dtype})): {_dtype(dtype)} checkpoints load "
        "into it exactly, and conetool kernels computes float32 kernels of either."
    )
