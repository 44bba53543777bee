"""The optimizer state inside a training loop's own checkpoint file, restored into the spec's
optimizer only when it verifiably is that optimizer's state over the same parameters.

A training loop saves ``{"model_state_dict": ..., "optimizer_state_dict": optimizer.state_dict(),
"step": ...}`` (or ``"optimizer"``; Lightning's ``.ckpt`` keeps ``"optimizer_states": [...]``).
torch's ``Optimizer.state_dict()`` is ``{"state": {i: {buffer: tensor}}, "param_groups":
[{"params": [i, ...], "lr": ..., ...}]}``: the indices number the parameters in the order the
optimizer was given them, group after group, and name none of them. So the buffers can only be
matched to the model's trainable parameters by position, and they are used only when

- its groups list as many parameters as the model has trainable ones,
- its buffers are those of the spec's optimizer (SGD with momentum: ``momentum_buffer``; Adam:
  ``exp_avg``, ``exp_avg_sq``, ``step``; with no buffer at all, its groups' own keys say which),
- the positions are certain: with one group, its parameters are the model's in order; with
  several (the weight-decay / no-decay groups of Hugging Face's Trainer, or
  ``[{"params": decay}, {"params": no_decay, "weight_decay": 0}]``), each group is assumed to
  list its parameters in the model's order (a list comprehension over ``named_parameters()``
  does), so that the groups interleave into the model's order, and the buffers are used only when
  every interleaving that gives each buffer its parameter's shape puts each buffer on the same
  parameter (:func:`_placements`): one interleaving, or several that differ only in where
  parameters with no state go among themselves (one that has not stepped yet takes a place in
  its group, which moves the others, but fits any shape; nothing is loaded there). The Trainer's
  own ``optimizer.pt`` is read by :mod:`conetool.trainer_optimizer`, its two groups rebuilt from
  the spec's model by the Trainer's rules,
- every buffer has the shape of its parameter, and all are finite,
- the file's own state dict lists the model's trainable parameters in the model's order: the
  positions follow the order the loop gave the optimizer its parameters (``model.parameters()``,
  the order of the state dict), so a module that registered its layers in another order (``b``
  before ``a``, same names, same shapes) would otherwise get each layer's buffers on another.

The hyperparameters in ``param_groups`` (lr, momentum, weight decay, ...) are never taken: the
recipe is the spec's, one value of each for every parameter; those that differ from the spec's
are reported, per group where the groups differ (a weight decay of 0 for biases and norms, say).
The learning rate, which the spec's schedule sets at every step, is compared where the caller
gives the schedule's values there (:class:`ScheduledLr`; ``switch`` does, for a loop's file as for
a Trainer's ``optimizer.pt``): a loop saves the rate of its next update or of its last one, and an
optimizer that has not stepped yet the rate it was made with.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoints._keys import match_keys
from .checkpoints._torch_save import load_weights_only
from .errors import CheckpointError

#: the entries of a checkpoint dict looked in, in this order
ENTRIES = ("optimizer_state_dict", "optimizer", "optimizer_states")

#: buffer names -> the optimizer that keeps them (torch.optim's; Adam's relatives keep Adam's
#: exp_avg and exp_avg_sq besides)
_BUFFERS_OF = {
    "momentum_buffer": "SGD with momentum",
    "max_exp_avg_sq": "Adam with amsgrad",
    "square_avg": "RMSprop",
    "sum": "Adagrad",
    "acc_delta": "Adadelta",
    "exp_inf": "Adamax",
    "mu_product": "NAdam",
    "prev": "Rprop",
    "eta": "ASGD",
}

#: how :func:`_kind`'s names read in a message
_SHOWN = {
    "sgd": "SGD with momentum",
    "adam": "Adam",
    "sgd without momentum": "SGD without momentum",
}

#: the constant hyperparameters compared with the spec's (lr follows the schedule: compared with
#: its values, :class:`ScheduledLr`, where the caller gives them)
_COMPARED = (
    "momentum",
    "dampening",
    "nesterov",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "decoupled_weight_decay",  # AdamW's
)

#: the most parameter groups matched to the parameters, and the most positions (one per way of
#: having gone through each group's first parameters) visited doing it, beyond which the state
#: is not used (about ten seconds of work on one CPU core)
_MOST_GROUPS = 8
_MOST_STATES = 10**6


@dataclass(frozen=True)
class CheckpointOptimizer:
    """What a checkpoint file's own optimizer state gave: ``entry`` (``"optimizer_state_dict"``,
    ...; None when the file holds none), whether it was ``used`` (loaded into the optimizer),
    else ``reason`` (a phrase: why not), ``differs``: the saved hyperparameters that are not
    the spec's (``"momentum 0.5 (the spec's 0.9)"``), ``groups``: how many parameters each
    of its parameter groups lists, when used, and ``matched``: how its positions were matched
    to the parameters, where that is said (:mod:`conetool.trainer_optimizer`)."""

    entry: str | None
    used: bool = False
    reason: str = ""
    differs: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()
    matched: str = ""


def restore_checkpoint_optimizer(
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    path: Path,
    *,
    size: int | None = None,
    mtime_ns: int | None = None,
    saved_names: Sequence[str] | None = None,
    entries: Mapping[str, Any] | None = None,
    lr: ScheduledLr | None = None,
) -> CheckpointOptimizer:
    """Load the optimizer state inside the torch.save checkpoint ``path`` into ``optimizer`` when
    it verifiably is its state (see the module docstring); otherwise ``optimizer`` is left as it
    was (fresh) and the result says why.

    ``optimizer`` has one parameter group, the model's trainable parameters in the model's order,
    named ``names`` (for the messages). The file is read with ``torch.load(weights_only=True)``,
    memory-mapped when it is a zip archive (only the optimizer's tensors are read). ``size`` and
    ``mtime_ns``: the file's size and modification time when its weights were read; a file that
    is no longer so raises :class:`CheckpointError` (its buffers would belong to another save).
    ``saved_names``: ``names`` in the order the file's state dict lists them
    (:func:`names_in_file_order`); a state is not used when that order is not ``names``'.
    ``entries``: the file's :data:`ENTRIES` as read with its weights, in the same pass
    (``read_checkpoint(keep=ENTRIES)``); the file is then not read again (``size`` and
    ``mtime_ns`` are not needed: nothing can change between two reads). ``lr``: the spec's
    scheduled learning rates there, compared with the groups' (``differs``), as
    :func:`conetool.trainer_optimizer.restore_trainer_optimizer` compares a Trainer's.
    """
    saved = _read_entry(path, size, mtime_ns) if entries is None else entry_of(entries)
    if saved is None:
        return CheckpointOptimizer(None)
    entry, value = saved
    return restore_state(optimizer, names, entry, value, saved_names=saved_names, lr=lr)


def restore_state(
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    entry: str,
    saved: Any,
    *,
    saved_names: Sequence[str] | None = None,
    lr: ScheduledLr | None = None,
    place: Placer | None = None,
) -> CheckpointOptimizer:
    """Load the saved ``Optimizer.state_dict()`` ``saved`` (found as ``entry``) into
    ``optimizer`` (one group: the model's trainable parameters in order, named ``names``) when
    it verifiably is its state (the spec's optimizer's buffers, as many parameters, each buffer
    of its parameter's shape, all finite: see the module docstring), keeping ``optimizer``'s
    hyperparameters; otherwise ``optimizer`` is left as it was (fresh) and the result says why.
    ``saved_names`` and ``lr``: as for :func:`restore_checkpoint_optimizer`, which reads
    ``saved`` from a loop's file; ``switch`` gives the state ``conetool train`` saved beside the
    checkpoint too (:func:`conetool.optim.read_optimizer_state`). ``place``: how the saved
    indices go to the parameters (:data:`Placer`; a Trainer's two groups:
    :mod:`conetool.trainer_optimizer`), by default each group in the model's order, interleaved
    by shape (:func:`_placements`); what it says of the match is the result's ``matched``."""
    checked = _match(saved, optimizer, names, saved_names, place)
    if isinstance(checked, str):
        return CheckpointOptimizer(entry, reason=checked)
    loaded, matched = checked
    own = optimizer.state_dict()["param_groups"]  # the spec's hyperparameters, kept
    optimizer.load_state_dict({"state": loaded, "param_groups": own})
    groups = tuple(len(group["params"]) for group in saved["param_groups"])
    return CheckpointOptimizer(
        entry,
        used=True,
        differs=hyperparameters_differ(saved, optimizer, lr),
        groups=groups,
        matched=matched,
    )


def names_in_file_order(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], names: Sequence[str]
) -> list[str]:
    """The model's trainable parameter names ``names`` in the order the checkpoint's
    ``state_dict`` (as read from the file, wrapper prefixes and all) lists them: the order of
    the training loop's ``model.parameters()``, which its optimizer's positions follow. Keys
    are paired with the model's as loading pairs them (a ``model.`` or ``module.`` prefix
    stripped)."""
    match = match_keys(
        {k: tuple(v.shape) for k, v in state_dict.items()},
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
    )
    wanted = set(names)
    order = [match.mapping.get(key) for key in state_dict]
    return [name for name in order if name in wanted]


def _read_entry(path: Path, size: int | None, mtime_ns: int | None) -> tuple[str, Any] | None:
    """``(entry name, value)`` of the first of :data:`ENTRIES` in the checkpoint dict at ``path``
    that holds something (Lightning's list of one: its element); None when none does."""
    obj, failed = load_state_file(path, again=True)
    try:
        after = os.stat(path)
    except OSError:
        raise _changed(path) from None
    if (size is not None and after.st_size != size) or (
        mtime_ns is not None and after.st_mtime_ns != mtime_ns
    ):
        raise _changed(path)
    if failed is not None:
        # (a reason in place of the state: _match returns it)
        return "optimizer state", unreadable_reason(failed)
    return entry_of(obj)


def load_state_file(
    path: Path, *, again: bool = False, data: bytes | bytearray | None = None
) -> tuple[Any, Exception | None]:
    """``(object, None)``: what ``torch.load(weights_only=True)`` reads from ``path`` (memory-mapped
    when it is a zip archive), or from its bytes ``data`` where the caller read them (``switch``
    hashes what it loads); ``(None, exception)`` when it cannot unpickle it. An ``OSError`` is
    a :class:`CheckpointError` naming the file (``again``: it was read for its weights before)."""
    if data is not None:
        held = data
        try:
            return load_weights_only(lambda: io.BytesIO(held), map_location="cpu"), None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            return None, exc
    try:
        with open(path, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"
        return load_weights_only(lambda: str(path), map_location="cpu", mmap=zipped), None
    except OSError as exc:
        raise CheckpointError(
            f"cannot read '{path}'{' again' if again else ''} for its optimizer state "
            f"({exc.strerror or exc}). Check the file and the disk, and rerun."
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        return None, exc


def unreadable_reason(failed: Exception) -> str:
    """Why a state file that :func:`load_state_file` could not unpickle is not used."""
    first = str(failed).splitlines()[0] if str(failed) else type(failed).__name__
    return f"it cannot be read with torch.load(weights_only=True) ({first})"


def entry_of(obj: object) -> tuple[str, Any] | None:
    """``(entry name, value)`` of the first of :data:`ENTRIES` in a checkpoint dict ``obj`` that
    holds something (Lightning's list of one: its element); None when none does."""
    if not isinstance(obj, Mapping):
        return None
    for entry in ENTRIES:
        value = obj.get(entry)
        if entry == "optimizer_states" and isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if isinstance(value, Mapping) or (entry == "optimizer_states" and value):
            return entry, value
    return None


def _changed(path: Path) -> CheckpointError:
    return CheckpointError(
        f"'{path}' changed since its weights were read (a run is probably still writing it), so "
        "its optimizer state may be another save's. Wait until the run has written it, and rerun."
    )


def _match(
    saved: Any,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    saved_names: Sequence[str] | None = None,
    place: Placer | None = None,
) -> tuple[dict[int, dict[str, Any]], str] | str:
    """``(the saved per-parameter state re-indexed as optimizer's, how it was matched)`` (clones,
    so the file's mapped memory is never written), or why it is not ``optimizer``'s state over
    these parameters."""
    checked = saved_groups(saved, optimizer)
    if isinstance(checked, str):
        return checked
    state, lists = checked
    indices = [index for listed in lists for index in listed]
    params: list[torch.Tensor] = list(optimizer.param_groups[0]["params"])
    if saved_names is not None and list(saved_names) != list(names):
        return order_differs(saved_names, names)
    shapes = [tuple(p.shape) for p in params]
    matched = ""
    if place is not None:
        placed = place(lists, state, shapes)
        if isinstance(placed, str):
            return placed
        position, matched = placed
    elif len(lists) == 1:
        position = {index: i for i, index in enumerate(indices)}
    else:
        by_shape = _placements(lists, state, shapes, names)
        if isinstance(by_shape, str):
            return by_shape
        position = by_shape
    loaded = reindexed(state, set(indices), position, params, names)
    return loaded if isinstance(loaded, str) else (loaded, matched)


def order_differs(saved_names: Sequence[str], names: Sequence[str]) -> str:
    """Why a state is not used when the file's state dict lists the trainable parameters
    ``saved_names`` in another order than the model's ``names`` (:func:`names_in_file_order`)."""
    i, theirs, mine = next(
        (i, a, b) for i, (a, b) in enumerate(zip(saved_names, names, strict=False)) if a != b
    )
    return (
        f"its positions follow the order of the parameters in the file's state dict, whose "
        f"trainable parameter {i} is '{theirs}' where the model's is '{mine}' (the layers "
        "were registered in another order), so its buffers would go to other parameters"
    )


def saved_groups(
    saved: Any, optimizer: torch.optim.Optimizer
) -> tuple[Mapping[Any, Any], list[list[Any]]] | str:
    """``(state, each parameter group's list of indices)`` of a saved ``Optimizer.state_dict()``
    ``saved`` that is the spec's ``optimizer``'s kind over as many parameters as it has (its one
    group's), or why not (``saved`` a string: why the file could not be read)."""
    if isinstance(saved, str):
        return saved  # why the file could not be read
    if isinstance(saved, (list, tuple)):
        return f"it holds the states of {len(saved)} optimizers, not one"
    if not isinstance(saved, Mapping):
        return f"it is a {type(saved).__name__}, not an Optimizer.state_dict()"
    state, groups = saved.get("state"), saved.get("param_groups")
    if not isinstance(state, Mapping) or not isinstance(groups, list):
        keys = ", ".join(repr(k) for k in list(saved)[:6])
        return (
            f"it is not an Optimizer.state_dict() (its keys: {keys}; no 'state' and 'param_groups')"
        )
    lists = _group_params(groups)
    if isinstance(lists, str):
        return lists
    indices = [index for listed in lists for index in listed]
    params: list[torch.Tensor] = list(optimizer.param_groups[0]["params"])
    if len(indices) != len(params):
        within = f" in {len(lists)} parameter groups" if len(lists) > 1 else ""
        return (
            f"it is over {len(indices)} parameters{within}, the model has {len(params)} "
            "trainable ones"
        )
    kind, found = _kind(state, groups)
    wanted = _spec_kind(optimizer)
    if kind != wanted:
        shown = f" ({', '.join(sorted(found))})" if found else ""
        return (
            f"it is the state of {_SHOWN.get(kind, kind)}{shown}, the spec's optimizer is "
            f"{_spec_name(optimizer)}"
        )
    return state, lists


def _group_params(groups: list[Any]) -> list[list[Any]] | str:
    """Each saved parameter group's list of indices, or why they cannot be matched."""
    if not groups:
        return "it has no parameter group"
    if len(groups) > _MOST_GROUPS:
        return (
            f"it has {len(groups)} parameter groups; at most {_MOST_GROUPS} are matched to the "
            "parameters"
        )
    lists = [group.get("params") if isinstance(group, Mapping) else None for group in groups]
    for j, listed in enumerate(lists):
        if not isinstance(listed, list):
            which = "its parameter group" if len(lists) == 1 else f"its param_groups[{j}]"
            return f"{which} lists no 'params'"
    out = [listed for listed in lists if isinstance(listed, list)]
    seen: set[Any] = set()
    for index in (index for listed in out for index in listed):
        if not isinstance(index, int) or index in seen:
            why = "twice" if isinstance(index, int) else "where torch lists an index"
            return f"its parameter groups list {index!r} {why}"
        seen.add(index)
    return out


def reindexed(
    state: Mapping[Any, Any],
    listed: set[Any],
    position: Mapping[Any, int],
    params: list[torch.Tensor],
    names: Sequence[str],
) -> dict[int, dict[str, Any]] | str:
    """The saved state ``state`` keyed by the model's positions ``position[index]`` (clones; each
    buffer but ``step`` converted to its floating-point parameter's dtype, as
    ``Optimizer.load_state_dict`` converts it: bfloat16 or float8 buffers of float32 parameters,
    say), or why not: an entry for no parameter its groups list, a buffer of another shape than
    its parameter's, NaN or Inf (once converted). An entry whose index has no position holds no
    state (several groups: where it goes is not known, and nothing is loaded there)."""
    out: dict[int, dict[str, Any]] = {}
    for index, values in state.items():
        if index not in listed or not isinstance(values, Mapping):
            return f"its state has an entry ({index!r}) for no parameter its groups list"
        if index not in position:
            continue
        i = position[index]
        param, name = params[i], names[i]
        loaded: dict[str, Any] = {}
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                loaded[key] = value
                continue
            if key != "step" and tuple(value.shape) != tuple(param.shape):
                return (
                    f"its {key} of parameter {i} has shape {tuple(value.shape)}, the model's "
                    f"trainable parameter {i} ('{name}') has {tuple(param.shape)}: it was saved "
                    "over other parameters or in another order"
                )
            if key != "step" and param.is_floating_point():
                value = value.detach().to(param.dtype)
            checked = value if value.dtype.itemsize > 1 else value.float()  # (isfinite: no float8)
            if value.is_floating_point() and not bool(torch.isfinite(checked).all()):
                return f"its {key} of '{name}' holds NaN or Inf"
            loaded[key] = value.detach().clone()
        out[i] = loaded
    return out


_Shape = tuple[int, ...]

#: How a saved state's indices go to the model's parameters: ``place(lists, state, shapes)``
#: (each saved group's indices, the per-index state, the parameters' shapes) gives ``(the
#: parameter position of each index, what to say of the match: "" for nothing)``, or why not.
Placer = Callable[
    [list[list[Any]], Mapping[Any, Any], list[_Shape]], tuple[Mapping[Any, int], str] | str
]
_At = tuple[int, ...]  # how many parameters of each group come before a position


def _placements(
    lists: list[list[Any]],
    state: Mapping[Any, Any],
    shapes: list[_Shape],
    names: Sequence[str],
) -> dict[Any, int] | str:
    """The model position of each saved index that holds state, when the groups ``lists``
    (each in the model's order, together as many as ``shapes``) interleave into the model's
    trainable parameters (shapes ``shapes``, named ``names``) in exactly one way as far as the
    state goes; else why not.

    A dynamic program over positions: after the model's first i parameters, the ways there are
    the tuples of how many of each group's parameters were used (summing to i), kept where the
    next group parameter's buffers have parameter i's shape (a parameter with no state fits any).
    Forward, the tuples reachable from none used; backward, those of them that reach every
    group used up: the placements of the interleavings that fit. A parameter with state placed at
    two positions by two of them makes the buffers' parameters uncertain; parameters with no
    state may swap among themselves (nothing is loaded there)."""
    sizes = tuple(len(listed) for listed in lists)
    needs = [[shapes_of(state.get(index)) for index in listed] for listed in lists]

    def fits(j: int, c: int, i: int) -> bool:
        need = needs[j][c]
        return need is None or need <= {shapes[i]}

    def steps(at: _At, i: int) -> list[tuple[int, _At]]:
        return [
            (j, (*at[:j], c + 1, *at[j + 1 :]))
            for j, c in enumerate(at)
            if c < sizes[j] and fits(j, c, i)
        ]

    layers: list[set[_At]] = [{(0,) * len(sizes)}]
    visited = 1
    for i in range(len(shapes)):
        reached = {after for at in layers[-1] for _, after in steps(at, i)}
        if not reached:
            return (
                f"{groups_of(sizes)} cannot be "
                "interleaved, each in the model's order, so that every buffer has its "
                f"parameter's shape: none gets past the model's trainable parameter {i} "
                f"('{names[i]}', shape {shapes[i]}); it was saved over other parameters, or a "
                "group lists them in another order than the model's"
            )
        visited += len(reached)
        if visited > _MOST_STATES:
            return (
                f"matching {groups_of(sizes)} to "
                f"the parameters by shape would visit over {_MOST_STATES:,} ways"
            )
        layers.append(reached)
    alive = {sizes}  # the one way after the last parameter: every group used up
    where: dict[tuple[int, int], set[int]] = {}  # (group, its parameter) -> model positions
    for i in range(len(shapes) - 1, -1, -1):
        kept = set()
        for at in layers[i]:
            for j, after in steps(at, i):
                if after in alive:
                    kept.add(at)
                    where.setdefault((j, at[j]), set()).add(i)
        alive = kept
    placed: dict[Any, int] = {}
    for (j, c), positions in sorted(where.items(), key=lambda item: min(item[1])):
        if needs[j][c] is None:
            continue
        if len(positions) > 1:
            first, second = sorted(positions)[:2]
            return (
                f"{groups_of(sizes)} interleave, "
                "each in the model's order, into the model's trainable parameters in more than "
                "one way that fits every buffer's shape: the buffers of "
                f"param_groups[{j}]['params'][{c}] would go to '{names[first]}' in one and to "
                f"'{names[second]}' in another (both {shapes[first]}), so which parameter each "
                "buffer belongs to is not certain"
            )
        (placed[lists[j][c]],) = positions
    return placed


def shapes_of(values: Any) -> set[_Shape] | None:
    """The shapes a saved parameter's buffers give it (``step`` gives none), or None when it has
    no state (it fits any parameter)."""
    if not isinstance(values, Mapping) or not values:
        return None
    return {
        tuple(value.shape)
        for key, value in values.items()
        if isinstance(value, torch.Tensor) and key != "step"
    }


def groups_of(sizes: Sequence[int]) -> str:
    """``(2, 3, 4)`` -> ``"its 3 parameter groups (2, 3 and 4 parameters)"``: a saved state's
    groups, by how many parameters each lists."""
    shown = [str(size) for size in sizes]
    counted = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    return f"its {len(sizes)} parameter groups ({counted} parameters)"


def _kind(state: Mapping[Any, Any], groups: list[Mapping[str, Any]]) -> tuple[str, set[str]]:
    """Which optimizer a saved state is, by its buffers and its groups' keys (by the keys alone
    when it has no buffer: an optimizer that has not stepped yet, or SGD without momentum), and
    the buffer names found."""
    found = {k for values in state.values() if isinstance(values, Mapping) for k in values}
    found.discard("step")
    sgd = all("momentum" in group and "nesterov" in group for group in groups)
    # (RAdam and NAdam's groups have no amsgrad)
    adam = all("betas" in group and "amsgrad" in group for group in groups)
    if found == {"momentum_buffer"} and sgd:
        return "sgd", found
    if found == {"exp_avg", "exp_avg_sq"} and adam:
        return "adam", found
    if not found and sgd:
        momentum = any(group["momentum"] for group in groups)
        return ("sgd" if momentum else "sgd without momentum"), found
    if not found and adam:
        return "adam", found
    if found in ({"momentum_buffer"}, {"exp_avg", "exp_avg_sq"}):  # the group is not theirs
        which = "SGD" if found == {"momentum_buffer"} else "Adam"
        return f"another optimizer than {which} (with {which}'s buffers, not its group)", found
    rest = found - {"exp_avg", "exp_avg_sq"}  # what tells Adam's relatives apart
    named = {_BUFFERS_OF.get(k, "") for k in rest}
    return (named.pop() if len(named) == 1 and "" not in named else "another optimizer"), found


def _spec_kind(optimizer: torch.optim.Optimizer) -> str:
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):  # (AdamW: Adam's buffers)
        return "adam"
    return "sgd" if optimizer.defaults.get("momentum") else "sgd without momentum"


def _spec_name(optimizer: torch.optim.Optimizer) -> str:
    kind = _spec_kind(optimizer)
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    return "sgd (momentum = 0)" if kind == "sgd without momentum" else kind


@dataclass(frozen=True)
class ScheduledLr:
    """The learning rates an optimizer state saved with the checkpoint of ``step`` may hold
    under the spec's schedule: ``values[0]`` at ``step`` (the next update), ``values[1]`` at
    ``step - 1`` (the last one; a loop that saved before stepping its scheduler keeps that, as
    ``conetool train`` does), at step 0 the spec's ``train.lr`` (an optimizer that has not
    stepped yet holds the rate it was made with: ``conetool train``'s does, under warmup too).
    :func:`scheduled_lr` makes it."""

    step: int
    values: tuple[float, ...]


def scheduled_lr(step: int, at: Callable[[int], float], base: float) -> ScheduledLr:
    """The :class:`ScheduledLr` of the checkpoint of ``step`` (a negative one: 0) under the
    schedule ``at(step)`` (the learning rate of the update at a global step) whose optimizer was
    made with ``base``."""
    step = max(step, 0)
    return ScheduledLr(step, (at(step), at(step - 1) if step else base))


def hyperparameters_differ(
    saved: Mapping[str, Any], optimizer: torch.optim.Optimizer, lr: ScheduledLr | None = None
) -> tuple[str, ...]:
    """The constant hyperparameters the saved groups have otherwise than ``optimizer``'s (one
    group: its value). Where the saved groups' values differ among themselves (a weight decay of
    0 for the no-decay group), each group's, beside the spec's for every parameter, when any is
    not the spec's. With ``lr``, first the groups' learning rate when it is none of the spec's
    schedule's ``lr.values`` (a relative 1e-6 apart). ``decoupled_weight_decay`` (AdamW's, where
    the spec's optimizer is Adam, or Adam's where it is AdamW) only where a group whose flag is
    not the spec's was saved with a weight decay: with none, the two are the same update."""
    groups = saved["param_groups"]
    own = optimizer.param_groups[0]
    out = []
    said = _lr_differs(groups, lr) if lr is not None else None
    if said is not None:
        out.append(said)
    for key in _COMPARED:
        if key not in own or not all(key in group for group in groups):
            continue
        mine, theirs = own[key], [group[key] for group in groups]
        if all(_same(mine, value) for value in theirs):
            continue
        if key == "decoupled_weight_decay" and all(
            _same(mine, value) or _same(0, group.get("weight_decay"))
            for value, group in zip(theirs, groups, strict=True)
        ):
            continue  # saved with no weight decay: Adam's update and AdamW's are the same
        if all(_same(theirs[0], value) for value in theirs):
            out.append(f"{key} {_show(theirs[0])} (the spec's {_show(mine)})")
            continue
        each = ", ".join(
            f"{_show(value)} in param_groups[{j}] ({len(group['params'])} parameters)"
            for j, (value, group) in enumerate(zip(theirs, groups, strict=True))
        )
        out.append(f"{key} {each} (the spec's {_show(mine)} for every parameter)")
    return tuple(out)


def _lr_differs(groups: list[Mapping[str, Any]], lr: ScheduledLr) -> str | None:
    """``"lr 0.1 (the spec's schedule: 0.2 at step 3)"``, per group where the groups' learning
    rates differ among themselves, or None: each group's is one of the schedule's."""
    theirs = []
    for group in groups:
        value = group.get("lr")
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()  # (a tensor lr: capturable or fused optimizers)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # no learning rate to compare
        theirs.append(float(value))

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-6)

    if all(any(close(value, v) for v in lr.values) for value in theirs):
        return None
    spec = f"the spec's schedule: {_show(lr.values[0])} at step {lr.step}"
    if all(close(theirs[0], value) for value in theirs):
        return f"lr {_show(theirs[0])} ({spec})"
    each = ", ".join(
        f"{_show(value)} in param_groups[{j}] ({len(group['params'])} parameters)"
        for j, (value, group) in enumerate(zip(theirs, groups, strict=True))
    )
    return f"lr {each} ({spec} for every parameter)"


def _same(mine: Any, theirs: Any) -> bool:
    if isinstance(mine, (tuple, list)):
        return list(mine) == list(theirs) if isinstance(theirs, (tuple, list)) else False
    return bool(mine == theirs)


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)
