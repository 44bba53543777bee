"""Tied weights: state-dict keys of a model that name one tensor (``self.b.weight = self.a.weight``).

``model.state_dict()`` lists a tied tensor under each of its names, but a file need not: safetensors'
``save_model`` and Hugging Face's ``save_pretrained`` write it under one name only (safetensors'
``save_file`` refuses tensors that share memory). Loading that one name sets every name of it, so
the others are not missing (:func:`conetool.checkpoints._keys.match_keys` takes ``tied``). A file
that holds two names of one tied tensor with different values comes from a model without that tie:
loading would keep one of them silently, so :func:`check_tied_values` refuses it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from conetool.errors import CheckpointError


def tied_keys(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """State-dict key -> every state-dict key of the same tensor (itself included, in the
    model's order), for the tensors the model holds under two names or more; {} when none."""
    keys = set(model.state_dict())
    names: dict[int, list[str]] = {}
    for name, tensor in (
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ):
        if name in keys:
            names.setdefault(id(tensor), []).append(name)
    return {name: tuple(group) for group in names.values() if len(group) > 1 for name in group}


def check_tied_values(
    state_dict: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    tied: Mapping[str, tuple[str, ...]],
    name: str,
) -> None:
    """Refuse a checkpoint that holds one tied tensor of the model under two of its names with
    other values (``mapping``: checkpoint key -> model key; ``tied`` from :func:`tied_keys`).

    Raises:
        CheckpointError: naming the file, both keys and the fix.
    """
    if not tied:
        return
    first: dict[tuple[str, ...], str] = {}  # tied group -> the first checkpoint key of it
    for key, model_key in mapping.items():
        group = tied.get(model_key)
        if group is None:
            continue
        seen = first.setdefault(group, key)
        if seen == key:
            continue
        a, b = state_dict[seen], state_dict[key]
        if a.shape == b.shape and torch.equal(a, b.to(a.dtype)):
            continue
        raise CheckpointError(
            f"'{name}' holds '{seen}' and '{key}' with different values, but in the model they "
            f"are one tensor (tied: {', '.join(repr(k) for k in group)}); loading would keep one "
            "of them silently and the kernel would be that of weights the checkpoint does not "
            "hold. The checkpoint comes from a model without this tying: check that the spec's "
            "[model] arch and options are those of the run that wrote it (a factory that ties "
            "weights the run did not)."
        )
