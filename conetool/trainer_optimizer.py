"""Hugging Face Trainer's ``checkpoint-N/optimizer.pt``, restored into the spec's optimizer only
when each of its buffers verifiably lands on the parameter it belongs to.

The Trainer saves ``optimizer.state_dict()`` (``Trainer._save_optimizer_and_scheduler``), whose
positions name no parameter (:mod:`conetool.checkpoint_optimizer`). Its optimizer
(``Trainer.create_optimizer``) has two parameter groups: the trainable (``requires_grad``)
parameters that get weight decay, then the other trainable ones (``weight_decay`` 0), each a
list comprehension over ``model.named_parameters()``, so each in the model's order. Which
parameters decay (``Trainer.get_decay_parameter_names`` since PR 26152, 2023) changed over
transformers' versions, :data:`RULES`:

- before PR 10598 (March 2021): those whose names hold neither ``bias`` nor ``LayerNorm.weight``;
- PR 10598 on: those outside ``nn.LayerNorm`` modules (``get_parameter_names(model,
  ALL_LAYERNORM_LAYERS)``) whose names hold no ``bias``;
- PR 35927 (2025) on: also not those whose lower-cased names hold ``layernorm`` or ``rmsnorm``
  (``get_parameter_names(model, ALL_LAYERNORM_LAYERS, ["bias", "layernorm", "rmsnorm"])``);
- later: also not those with a name part ``norm`` or ending ``_norm`` (the patterns
  ``(?:^|\\.)norm(?:$|\\.)`` and ``_norm(?:$|\\.)``).

So the positions are rebuilt from the spec's model: each rule's two groups (the distinct ones),
or the model's order for a state of one group (an optimizer given to the Trainer over
``model.parameters()``). Those whose groups list as many parameters as the file's, and that
give every buffer (``exp_avg``, ``momentum_buffer``, ...) its parameter's shape, fit; the state
is used only when exactly one assignment of buffers to parameters fits (several rules that put
every buffer on the same parameter are one), after the checks of
:func:`conetool.checkpoint_optimizer.saved_groups` (the spec's optimizer's buffers, as many
parameters). What cannot be checked with ``model.safetensors`` (its keys are stored sorted) is
that the run's model listed its parameters in the spec's model's order; with
``pytorch_model.bin`` it is (the order of its state dict), as for a loop's own file. Nor with
shards, ``.bin`` ones too: transformers writes the index with ``json.dumps(index,
sort_keys=True)``, so its ``weight_map`` is sorted, and the shards in order are not the state
dict's order either (huggingface_hub's ``split_torch_state_dict_into_shards`` puts a tensor
larger than a shard in a shard of its own ahead of the one being filled, and tensors sharing
storage in the shard of the first of them), so an order read from them would refuse good
states.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint_optimizer import (
    CheckpointOptimizer,
    ScheduledLr,
    groups_of,
    load_state_file,
    restore_state,
    shapes_of,
    unreadable_reason,
)

#: how the Trainer's optimizer file is named in its checkpoint-N/ folder
OPTIMIZER_FILE = "optimizer.pt"

_NORM_PARTS = (re.compile(r"(?:^|\.)norm(?:$|\.)"), re.compile(r"_norm(?:$|\.)"))


def _before_10598(name: str, in_layer_norm: bool) -> bool:
    return "bias" in name or "LayerNorm.weight" in name


def _from_10598(name: str, in_layer_norm: bool) -> bool:
    return in_layer_norm or "bias" in name


def _from_35927(name: str, in_layer_norm: bool) -> bool:
    lower = name.lower()
    return in_layer_norm or any(word in lower for word in ("bias", "layernorm", "rmsnorm"))


def _norm_parts(name: str, in_layer_norm: bool) -> bool:
    return _from_35927(name, in_layer_norm) or any(p.search(name.lower()) for p in _NORM_PARTS)


#: The Trainer's rules for the parameters that get no weight decay, oldest first: (how a message
#: names it, ``no_decay(name, inside an nn.LayerNorm module)``).
RULES: tuple[tuple[str, Callable[[str, bool], bool]], ...] = (
    (
        "the rule before transformers PR 10598 ('bias' or 'LayerNorm.weight' in names)",
        _before_10598,
    ),
    ("the rule of PR 10598 (nn.LayerNorm modules, 'bias' in names)", _from_10598),
    ("the rule of PR 35927 (also 'layernorm', 'rmsnorm' in names)", _from_35927),
    ("the later rule (also 'norm' name parts)", _norm_parts),
)


@dataclass(frozen=True)
class Layout:
    """One way the file may list the model's trainable parameters: ``groups`` of names (each in
    the model's order), and the Trainer's ``rules`` that make them (none: one group)."""

    groups: tuple[tuple[str, ...], ...]
    rules: tuple[str, ...] = ()

    @property
    def how(self) -> str:
        """How a message names it."""
        if not self.rules:
            return "one group in the model's order"
        if len(self.rules) == len(RULES):
            return "the Trainer's split (by every rule transformers has had)"
        return f"the Trainer's split by {' and '.join(self.rules)}"


def trainer_layouts(model: torch.nn.Module, names: Sequence[str]) -> list[Layout]:
    """The distinct two-group splits of the trainable parameters ``names`` (in the model's order)
    that the Trainer's :data:`RULES` make of ``model``: weight decay, then none."""
    norms = [
        f"{prefix}."
        for prefix, module in model.named_modules()
        if prefix and isinstance(module, torch.nn.LayerNorm)
    ]
    out: list[Layout] = []
    for rule, no_decay in RULES:
        skipped = {n for n in names if no_decay(n, any(n.startswith(p) for p in norms))}
        groups = (
            tuple(n for n in names if n not in skipped),
            tuple(n for n in names if n in skipped),
        )
        same = [k for k, layout in enumerate(out) if layout.groups == groups]
        if same:
            out[same[0]] = Layout(groups, (*out[same[0]].rules, rule))
        else:
            out.append(Layout(groups, (rule,)))
    return out


def restore_trainer_optimizer(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    names: Sequence[str],
    path: Path,
    *,
    saved_names: Sequence[str] | None = None,
    lr: ScheduledLr | None = None,
    data: bytes | bytearray | None = None,
) -> CheckpointOptimizer:
    """Load the Trainer's optimizer state ``path`` (``checkpoint-N/optimizer.pt``, read with
    ``torch.load(weights_only=True)``; from its bytes ``data`` where the caller read them) into
    ``optimizer`` when exactly one assignment of its buffers to ``model``'s trainable parameters
    fits (see the module docstring); otherwise ``optimizer`` is left as it was (fresh) and the
    result says why.

    ``optimizer`` has one parameter group, the model's trainable parameters in the model's order,
    named ``names``. ``saved_names``: ``names`` in the order the checkpoint's weights file lists
    them, when it keeps the model's (``pytorch_model.bin``); a state is not used when that order
    is not ``names``'. ``lr``: the spec's scheduled learning rates there, compared with the
    groups' (``differs``). The result's ``entry`` is ``"optimizer.pt"``, ``groups`` the file's
    group sizes and ``matched`` the Trainer's rules that its two groups follow (``"the rule of
    PR 35927 and the later rule"``, ``"every rule transformers has had"``; "" for one group),
    when used."""

    def place(
        lists: list[list[Any]], state: Mapping[Any, Any], shapes: list[_Shape]
    ) -> tuple[Mapping[Any, int], str] | str:
        placed = _placed(lists, state, model, names, shapes)
        if isinstance(placed, str):
            return placed
        position, rules = placed
        if len(rules) == len(RULES):
            return position, "every rule transformers has had"
        return position, " and ".join(rule.split(" (")[0] for rule in rules)

    return restore_state(
        optimizer,
        names,
        OPTIMIZER_FILE,
        _read(path, data),
        saved_names=saved_names,
        lr=lr,
        place=place,
    )


def _read(path: Path, data: bytes | bytearray | None) -> Any:
    """The object in ``path`` (of the bytes ``data``, where read), or why it cannot be read (a
    string)."""
    obj, failed = load_state_file(path, data=data)
    return obj if failed is None else unreadable_reason(failed)


_Shape = tuple[int, ...]


def _placed(
    lists: list[list[Any]],
    state: Mapping[Any, Any],
    model: torch.nn.Module,
    names: Sequence[str],
    shapes: list[_Shape],
) -> tuple[dict[Any, int], tuple[str, ...]] | str:
    """``(the model position of each saved index, the Trainer's rules that fit)`` when exactly
    one assignment of the buffers fits; else why not."""
    sizes = tuple(len(listed) for listed in lists)
    if len(lists) == 1:
        layouts = [Layout((tuple(names),))]
    elif len(lists) == 2:
        layouts = trainer_layouts(model, names)
    else:
        return (
            f"{groups_of(sizes)} are not the Trainer's two (weight decay, then none), so which "
            "parameter each buffer belongs to is not known"
        )
    sized = [layout for layout in layouts if tuple(len(g) for g in layout.groups) == sizes]
    if not sized:
        expected = " or ".join(
            " and ".join(str(len(g)) for g in layout.groups) for layout in layouts
        )
        return (
            f"{groups_of(sizes)} are not the Trainer's split of the model's trainable parameters "
            f"(weight decay, then none: {expected} parameters, by the rules transformers' "
            "get_decay_parameter_names has had), so which parameter each buffer belongs to is "
            "not known"
        )
    at = {name: i for i, name in enumerate(names)}
    fits: list[tuple[Layout, dict[Any, int]]] = []
    misfit = ""
    for layout in sized:
        position: dict[Any, int] = {}
        for j, (listed, group) in enumerate(zip(lists, layout.groups, strict=True)):
            for c, (index, name) in enumerate(zip(listed, group, strict=True)):
                need = shapes_of(state.get(index))
                i = at[name]
                if need is not None and not need <= {shapes[i]}:
                    misfit = misfit or (
                        f"as {layout.how}, param_groups[{j}]['params'][{c}] is '{name}' of shape "
                        f"{shapes[i]}, but its buffers have shape "
                        f"{', '.join(str(s) for s in sorted(need))}: it was saved over other "
                        "parameters or in another order"
                    )
                    break
                if need is not None:
                    position[index] = i
            else:
                continue
            break
        else:
            fits.append((layout, position))
    if not fits:
        return misfit
    (first, placed), *others = fits
    for layout, other in others:
        if other != placed:
            index = next(k for k in placed if other.get(k) != placed[k])
            j, c = next(
                (j, listed.index(index)) for j, listed in enumerate(lists) if index in listed
            )
            return (
                f"the buffers of param_groups[{j}]['params'][{c}] fit '{names[placed[index]]}' "
                f"as {first.how} and '{names[other[index]]}' as {layout.how}, so which "
                "parameter each buffer belongs to is not certain"
            )
    return placed, tuple(rule for layout, _ in fits for rule in layout.rules)
