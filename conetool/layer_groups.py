"""Per-layer kernels (``conetool kernels --per-layer``): the parameters in groups, and the eNTK
of each group.

The eNTK is a sum over parameters, ``H = sum_p J_p J_p^T``, so splitting the trainable
parameters into disjoint groups splits the kernel into one kernel per group that sum to it
(exactly, up to rounding). A group's kernel is :func:`conetool.empirical_ntk` computed with only
that group's parameters trainable (``requires_grad``), which is how the engines define θ; the
model's ``requires_grad`` flags are restored afterwards, whatever happens.

A group is a leaf module by default (the module prefix of the parameter names: ``conv1.weight``
and ``conv1.bias`` make the group ``conv1``; a parameter of the top-level module makes the group
``root``). ``--groups 'stage1=layer1.*,stage2=layer2.*'`` names groups by ``fnmatch`` patterns
over parameter names instead (the first pattern that matches wins); a parameter that no pattern
matches goes to the group ``other``.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from .errors import ConetoolError
from .ntk_range import KernelUnderflowError, NonFiniteKernelError

#: The group of the parameters that no ``--groups`` pattern matches.
OTHER = "other"
#: The leaf-module group of a parameter that belongs to the top-level module itself.
ROOT = "root"


def parse_groups(text: str) -> dict[str, str]:
    """``'stage1=layer1.*,stage2=layer2.*'`` -> ``{"stage1": "layer1.*", "stage2": "layer2.*"}``
    (a :class:`ConetoolError` naming ``--groups`` on anything else)."""
    mapping: dict[str, str] = {}
    items = [item.strip() for item in text.split(",")]
    if "" in items and len(items) > 1:  # "a=x,,b=y" or "a=x,": a group left out, not to drop
        kept = ",".join(item for item in items if item)
        raise ConetoolError(
            f"--groups {text!r} has an empty item: each comma-separated item must be "
            "NAME=PATTERN. Write the group that was meant there, or remove the extra comma"
            + (f" (--groups '{kept}')." if kept else ".")
        )
    for item in items:
        if not item:
            continue
        name, sep, pattern = item.partition("=")
        name, pattern = name.strip(), pattern.strip()
        if not sep or not name or not pattern:
            raise ConetoolError(
                f"--groups item {item!r} is not NAME=PATTERN. Pass e.g. "
                "--groups 'stage1=layer1.*,stage2=layer2.*' (fnmatch patterns over parameter "
                "names)."
            )
        if name in mapping:
            raise ConetoolError(f"--groups names the group {name!r} twice; name each group once.")
        mapping[name] = pattern
    if not mapping:
        raise ConetoolError("--groups is empty. Pass e.g. --groups 'stage1=layer1.*'.")
    return mapping


def groups_flag(record: Mapping[str, Any]) -> str:
    """The ``conetool kernels`` flag that makes the grouping of a ``layer_groups`` record again:
    ``--groups 'NAME=PATTERN,...'`` with its patterns (what :func:`parse_groups` reads back), or
    ``--per-layer`` for leaf modules (a record without patterns)."""
    patterns = record.get("patterns")
    if isinstance(patterns, Mapping) and patterns:
        text = ",".join(f"{name}={pattern}" for name, pattern in patterns.items())
        return f"--groups {shlex.quote(text)}"
    return "--per-layer"


def parameter_groups(
    model: nn.Module, patterns: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """The model's trainable parameters by group: group name -> parameter names, in the order of
    ``named_parameters()`` (groups in the order of their first parameter; ``other`` last).

    Without ``patterns`` a group is a leaf module; with them, the first pattern that matches a
    name gives its group and ``other`` collects the rest. A pattern that matches no parameter is
    an error that lists the names."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ConetoolError(
            "the model has no trainable parameters, so it has no per-layer kernels."
        )
    groups: dict[str, list[str]] = {}
    if patterns is None:
        for name in names:
            module = name.rpartition(".")[0] or ROOT
            groups.setdefault(module, []).append(name)
        return groups
    for group in patterns:
        groups[group] = []
    rest: list[str] = []
    for name in names:
        found = next((g for g, pattern in patterns.items() if fnmatchcase(name, pattern)), None)
        if found is None:
            rest.append(name)
        else:
            groups[found].append(name)
    empty = [g for g, members in groups.items() if not members]
    if empty:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ConetoolError(
            f"--groups: {', '.join(f'{g}={patterns[g]}' for g in empty)} matches no parameter "
            f"(or only parameters an earlier pattern took). The model's parameters: {shown}."
        )
    if rest:
        groups.setdefault(OTHER, []).extend(rest)
    return groups


def groups_hash(groups: Mapping[str, list[str]]) -> str:
    """A content hash of a grouping (names and members, in order): what a layer file is made
    with."""
    text = json.dumps([[g, list(m)] for g, m in groups.items()], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def group_kernels(
    model: nn.Module,
    groups: Mapping[str, list[str]],
    compute: Callable[[], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The kernel of each group: ``compute()`` (an :func:`conetool.empirical_ntk` call on
    ``model``) with only that group's parameters trainable. Every parameter's ``requires_grad``
    is restored afterwards.

    Raises:
        KernelUnderflowError, NonFiniteKernelError: a group's kernel is beyond what float32
            holds (:mod:`conetool.ntk_range`), checked against that group's own parameters: the
            same error, naming the group (the model's kernel may be fine).
    """
    params = dict(model.named_parameters())
    saved = {name: p.requires_grad for name, p in params.items()}
    out: dict[str, torch.Tensor] = {}
    try:
        for group, members in groups.items():
            chosen = set(members)
            for name, p in params.items():
                p.requires_grad_(name in chosen)
            try:
                out[group] = compute()
            except (KernelUnderflowError, NonFiniteKernelError) as exc:
                count = sum(params[name].numel() for name in members)
                raise type(exc)(
                    f"the per-layer kernel of group '{group}' (--per-layer: the eNTK with only "
                    f"its {count:,} parameters as θ): {exc}"
                ) from exc
    finally:
        for name, p in params.items():
            p.requires_grad_(saved[name])
    return out
