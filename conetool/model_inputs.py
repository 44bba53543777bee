"""The dtype and device a model takes its input batches in.

conetool's data sets hold float32 inputs, but a user's factory may return its model in another
floating dtype: a float64 model (``model.double()``, as for NTK studies in double precision)
fails on a float32 batch with PyTorch's "mat1 and mat2 must have the same dtype". Every batch
conetool feeds a model (the training loop, the test-set evaluation, the linearized training of
``conetool switch``, the speed and output checks) goes through :func:`model_batch`, which moves it
to the model's device and casts floating inputs to the model's floating dtype; integer inputs
(token ids) are moved only.

:func:`check_batch` is the batch of two examples a model is first run on, to see what its forward
returns: random normal ones, or the data set's own when they are token ids.

The model's dtype is that of its first parameter (its first buffer when it has none), as
``model.parameters()`` lists them; ``None`` when that tensor is not floating point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["check_batch", "is_token_batch", "model_batch", "model_device", "model_dtype"]


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    first: torch.Tensor | None = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return first


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of ``model``'s first parameter (first buffer when it has no
    parameters); ``None`` when it has neither, or that tensor is not floating point."""
    first = _first_tensor(model)
    return first.dtype if first is not None and first.is_floating_point() else None


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (first buffer when it has no parameters); the
    CPU when it has neither."""
    first = _first_tensor(model)
    return first.device if first is not None else torch.device("cpu")


def model_batch(model: nn.Module, x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """The input batch ``x`` (``(batch, *input_shape)``, any dtype) as ``model`` takes it: on
    ``device``, and, when ``x`` is floating point, in the model's floating dtype
    (:func:`model_dtype`; unchanged when the model has none). A float32 batch of a float32 model
    is only moved."""
    dtype = model_dtype(model)
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        return x.to(device=device, dtype=dtype)
    return x.to(device)


def is_token_batch(x: torch.Tensor | None) -> bool:
    """Whether ``x`` holds integer inputs (token ids, not floating point or complex)."""
    return x is not None and not (x.is_floating_point() or x.is_complex())


def check_batch(
    model: nn.Module, input_shape: Sequence[int], examples: torch.Tensor | None = None
) -> torch.Tensor:
    """The batch ``(2, *input_shape)`` on ``model``'s device that conetool runs ``model`` on to
    check what its forward returns (:func:`conetool.models.output_check`,
    :func:`conetool.models.outputs.logits_returned`): standard normal from a private generator
    (the global RNG is untouched), in the model's floating dtype (float32 when it has none).

    ``examples`` ``(k, *input_shape)``: inputs of the data set (its first training examples).
    When they are integer (token ids: random values could lie outside the vocabulary, and a
    float batch would break an ``nn.Embedding``), the batch is their first two, as they are (the
    first twice when k = 1); floating ones are not used.
    """
    device = model_device(model)
    if examples is not None and is_token_batch(examples) and examples.shape[0] > 0:
        rows = torch.tensor([0, 1]).clamp(max=examples.shape[0] - 1)
        return examples[rows].to(device)
    dtype = model_dtype(model) or torch.float32
    generator = torch.Generator().manual_seed(0)
    shape = (2, *tuple(input_shape))
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)
