"""The state dict inside what ``torch.load`` returned: a plain one, or the one a training loop's
dict holds under :data:`STATE_DICT_ENTRIES` (several only when they hold the same tensors), the
other state dicts of the same network it holds (an EMA of the weights, not read), and what an
object that is no checkpoint holds, in a few words."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from conetool.errors import CheckpointError

from ._keys import KNOWN_PREFIXES, diff_keys, strip_common_prefixes

#: The entries of a dict that may hold its state dict, in the order they are read: Lightning's
#: ``"state_dict"``, a training loop's ``"model_state_dict"`` or ``"model"``. A dict that holds
#: several (a loop that saved ``model.state_dict()`` under two names, or the raw model beside its
#: DDP-wrapped copy) is read only when they hold the same tensors; then the first is taken.
STATE_DICT_ENTRIES = ("state_dict", "model_state_dict", "model")


def is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def unwrap_state_dict(
    obj: object, path: Path, *, compare_values: bool = True
) -> dict[str, torch.Tensor]:
    """A plain state dict from what torch.load returned.

    Accepts a mapping of tensors, or a mapping holding one under an entry of
    :data:`STATE_DICT_ENTRIES` (``"state_dict"`` (Lightning), ``"model_state_dict"``, ``"model"``).
    When it holds several, they must hold the same tensors (names, but for a wrapper prefix all
    of one entry's share, such as DDP's ``module.``; dtypes; shapes; and, with
    ``compare_values``, values bit for bit), and the first in that order is taken; tensors that
    are one in memory (one state dict saved under two names) are not compared. Without
    ``compare_values`` (a memory-mapped read of the pickle only) no tensor data is read: values
    are compared when the file is read in full.

    Raises:
        CheckpointError: no state dict in ``obj``, or entries holding different state dicts
            (naming the entries, the first difference and the fix).
    """
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        found = {key: obj[key] for key in STATE_DICT_ENTRIES if is_state_dict(obj.get(key))}
        if found:
            first, *others = found
            for other in others:
                why = _state_dicts_differ(found[first], found[other], compare_values)
                if why is not None:
                    raise CheckpointError(_different_entries(path, list(found), first, other, why))
            return dict(found[first])
        if (several := several_state_dicts(obj, path)) is not None:
            raise CheckpointError(f"'{path}' holds {several}.")
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        what = f"a dict with keys {keys}" if obj else "an empty dict"
    else:
        what = f"a {type(obj).__name__}"
    raise CheckpointError(
        f"'{path}' holds {what}, not a state dict. conetool reads a plain state dict "
        f"(torch.save(model.state_dict(), ...)) or a dict holding one under 'state_dict' "
        f"(Lightning), 'model_state_dict' or 'model'; re-save the model's state dict."
    )


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are one tensor in memory (the same storage, offset, strides, dtype
    and shape): equal without reading their values, memory-mapped ones too."""
    return bool(
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.device == b.device
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.stride() == b.stride()
    )


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same dtype, shape and bytes (NaN equals itself); two
    views of the same memory are equal without a read."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if _same_memory(a, b):
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def one_in_memory(first: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> bool:
    """Whether two state dicts that hold the same names (but for a wrapper prefix all of one's
    share), dtypes and shapes are one in memory, tensor by tensor (one state dict saved under two
    entries, the model beside its DDP-wrapped copy): their values are then equal without a read."""
    if first is other:
        return True
    a = dict(zip(strip_common_prefixes(first)[1], first.values(), strict=True))
    b = dict(zip(strip_common_prefixes(other)[1], other.values(), strict=True))
    return a.keys() == b.keys() and all(_same_memory(t, b[k]) for k, t in a.items())


def _bare_name(key: str) -> str:
    """``key`` without any known wrapper prefix at its start (``module.fc.weight`` -> ``fc.weight``)."""
    while prefix := next((p for p in KNOWN_PREFIXES if key.startswith(p)), None):
        key = key[len(prefix) :]
    return key


#: How far below the top of a torch.save dict :func:`other_state_dicts` looks: Lightning keeps
#: a callback's state under ``sd["callbacks"][its state key]``, an EMA callback its weights one
#: entry further down (``sd["callbacks"]["EMA"]["ema_state_dict"]``); a level or two more for
#: loops that nest deeper.
OTHER_STATE_DICT_DEPTH = 4


def other_state_dicts(
    obj: Mapping[Any, Any], taken: Mapping[str, torch.Tensor]
) -> list[tuple[str, ...]]:
    """Where the dict ``obj`` holds another state dict of the network whose state dict ``taken``
    is (an EMA of its weights: ``"ema"``, ``"model_ema"``, ``"ema_state_dict"``, an averaged
    copy), which is not read: the keys that lead to it, ``("ema",)`` for an entry of ``obj``,
    ``("callbacks", "EMA", "ema_state_dict")`` for one a Lightning callback saved. Such a state
    dict is a mapping of tensors that shares a tensor name with ``taken`` (each name without its
    wrapper prefixes: timm's ``ModelEmaV2`` and ``AveragedModel`` save ``module.fc.weight``),
    under a string entry that is not one of :data:`STATE_DICT_ENTRIES` of ``obj`` itself (those
    are read, or compared with the one read), found in mappings under string entries down to
    :data:`OTHER_STATE_DICT_DEPTH` levels below ``obj``. A dict of metrics
    (``{"loss": tensor(0.3)}``) shares no name; an optimizer state is no mapping of tensors (its
    buffers are under the parameters' numbers)."""
    names = {_bare_name(k) for k in taken}
    found: list[tuple[str, ...]] = []

    def look(mapping: Mapping[Any, Any], path: tuple[str, ...]) -> None:
        for key, value in mapping.items():
            if not isinstance(key, str) or not isinstance(value, Mapping):
                continue
            if is_state_dict(value):
                read = not path and key in STATE_DICT_ENTRIES
                if not read and any(isinstance(k, str) and _bare_name(k) in names for k in value):
                    found.append((*path, key))
            elif len(path) < OTHER_STATE_DICT_DEPTH:
                look(value, (*path, key))

    look(obj, ())
    return found


def _state_dicts_differ(
    first: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], compare_values: bool
) -> str | None:
    """How ``other`` differs from ``first`` (names without a prefix they all share, then
    shapes, dtypes, then values when ``compare_values``), or None when they hold the same
    tensors. Cheapest first: names and shapes need no tensor data."""
    if first is other:
        return None
    a = dict(zip(strip_common_prefixes(first)[1], first.values(), strict=True))
    b = dict(zip(strip_common_prefixes(other)[1], other.values(), strict=True))
    shapes_a = {k: tuple(v.shape) for k, v in a.items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.items()}
    if shapes_a != shapes_b:
        return diff_keys(shapes_b, shapes_a)
    for key, tensor in a.items():
        if tensor.dtype != b[key].dtype:
            return f"'{key}' is {_dtype_name(b[key].dtype)}, not {_dtype_name(tensor.dtype)}"
    if compare_values:
        for key, tensor in a.items():
            if not bitwise_equal(tensor, b[key]):
                return f"'{key}' holds other values"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _different_entries(path: Path, found: list[str], first: str, other: str, why: str) -> str:
    """The error for a dict holding different state dicts under two of its entries."""
    entries = ", ".join(f"'{k}'" for k in found)
    return (
        f"'{path}' holds a state dict under each of {entries}, and they differ ('{other}' from "
        f"'{first}': {why}), as when a loop saves the model beside an EMA of it; conetool "
        "measures one network per file and will not guess which. Save the one to measure "
        f"alone, in Python: sd = torch.load('{path}', weights_only=True); "
        f"safetensors.torch.save_file(sd['{first}'], 'step_2000.safetensors', "
        f"metadata={{'step': '2000'}}) with the file's step (or sd['{other}'] for the other one)."
    )


def holds_named_tensors(obj: object, depth: int = 3) -> bool:
    """Whether ``obj`` is a mapping holding a tensor under a string key, itself or in a mapping
    under a string key (``depth`` levels down): what a state dict, or a dict wrapping one, is.
    A bare tensor, a list, a dict of numbers, an optimizer state (its tensors are under the
    parameters' numbers) are not."""
    if not isinstance(obj, Mapping):
        return False
    return any(
        isinstance(key, str)
        and (
            isinstance(value, torch.Tensor) or (depth > 0 and holds_named_tensors(value, depth - 1))
        )
        for key, value in obj.items()
    )


def several_state_dicts(obj: Mapping[Any, Any], path: Path) -> str | None:
    """What a file of several state dicts holds: a whole run saved in one file
    (``torch.save({step: model.state_dict(), ...})``, or each step's loop dict) when every key
    is a step, ``"3 state dicts, one under each key (0, 12, 24): a whole run in one file; ..."``
    with how to split it into one file per step, in Python; else several networks or a run under
    names (``{"generator": ..., "discriminator": ...}``), said as such, with both fixes. None when
    ``obj`` is not a dict of (two or more) state dicts or dicts holding one."""
    if len(obj) < 2 or not all(
        is_state_dict(v)
        or (isinstance(v, Mapping) and any(is_state_dict(v.get(k)) for k in STATE_DICT_ENTRIES))
        for v in obj.values()
    ):
        return None
    keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
    steps = all(isinstance(k, int) or (isinstance(k, str) and k.isdigit()) for k in obj)
    folder = path.with_name(path.stem + "_steps")
    name = "f'step_{key}.pt'" if steps else "f'{key}.pt'"
    # repr() quotes the paths, so that one holding a quote or a brace stays valid Python
    split = (
        f"run = torch.load({str(path)!r}, weights_only=True); os.makedirs({str(folder)!r}); "
        f"[torch.save(sd, os.path.join({str(folder)!r}, {name})) for key, sd in "
        f"run.items()], then pass '{folder}'"
    )
    if steps:
        return (
            f"{len(obj)} state dicts, one under each key ({keys}): a whole run in one file, "
            "which conetool does not read (it reads one checkpoint per file, and finds its step "
            f"in the file or its name). Save each as a file of its own, in Python: {split}"
        )
    # keys that are no steps: several networks (a GAN's generator and discriminator) as likely
    # as a run under names
    return (
        f"{len(obj)} state dicts, one under each key ({keys}): several networks, or a whole run "
        "under names that are no steps, in one file; conetool reads one network's state dict "
        "per checkpoint file, and finds its step in the file or its name. For one network of "
        "several, save its state dict alone for each checkpoint (torch.save(run[KEY], "
        "'step_2000.pt') with the file's step) into a directory of its own and pass that; for "
        f"a run, save each as a file of its own, in Python: {split}, with names that give each "
        "step (see 'Checkpoint directories')"
    )


def what_it_holds(obj: object, path: Path) -> str:
    """``"a list of 100 items"``, ``"a tensor of shape (60, 4)"``, ``"a dict without tensors
    (keys 'train', 'test')"``, ``"an optimizer state (Optimizer.state_dict())"``, a whole run's
    state dicts under its steps (:func:`several_state_dicts`): what the file ``path`` that holds
    no state dict holds, in a few words."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        if (several := several_state_dicts(obj, path)) is not None:
            return several
        if set(obj) == {"state", "param_groups"}:
            return "an optimizer state (Optimizer.state_dict())"
        keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
        return f"a dict without tensors by name (keys {keys})"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item{'s' if len(obj) != 1 else ''}"
    return f"a {type(obj).__name__}"
