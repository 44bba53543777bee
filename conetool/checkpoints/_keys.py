"""Matching a checkpoint's keys to a model's, and the messages when they do not match.

Training wrappers prefix every key: ``module.`` (DistributedDataParallel / DataParallel),
``model.`` (a LightningModule holding the network as ``self.model``), ``_orig_mod.``
(``torch.compile``), sometimes two or all three of them. A prefix is stripped only when that makes the keys
match the model exactly, so a model whose own keys start with ``model.`` is never mangled.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from conetool.errors import (
    ExtraModulesError,
    FactoryMismatchError,
    KeyMismatchError,
)

KNOWN_PREFIXES = ("module.", "model.", "_orig_mod.")
# "", each prefix, each pair of prefixes (e.g. "module._orig_mod.") and each order of all three
# (a LightningModule's compiled DDP network, "model._orig_mod.module."), simplest first.
_CHAINS = (
    "",
    *("".join(chain) for n in (1, 2, 3) for chain in itertools.permutations(KNOWN_PREFIXES, n)),
)
_LIST_AT_MOST = 10

Shapes = Mapping[str, tuple[int, ...]]


def _lenient(key: str) -> bool:
    # BatchNorm's step counter: absent from old checkpoints, unused by eval-mode forward passes.
    return key.endswith("num_batches_tracked")


@dataclass(frozen=True)
class KeyMatch:
    """The best correspondence found between checkpoint keys and model keys."""

    mapping: dict[str, str]  # checkpoint key -> model key
    stripped: str  # prefix taken off the checkpoint keys ("" when none)
    model_stripped: str  # prefix taken off the model keys (a wrapped model) ("" when none)
    missing: list[str] = field(default_factory=list)  # model keys without a checkpoint key
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: model keys without a checkpoint key that name the same tensor as one with it (tied
    #: weights saved under one name) -> that model key: loading it sets them, so none is missing
    tied: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when all keys pair up (bar BatchNorm ``num_batches_tracked``) with equal shapes."""
        return not self.unexpected and not self.mismatched and all(map(_lenient, self.missing))


def strip_common_prefixes(keys: Iterable[str]) -> tuple[str, list[str]]:
    """Strip known wrapper prefixes shared by all ``keys``; return (prefix stripped, keys)."""
    out = list(keys)
    stripped = ""
    while out:
        prefix = next((p for p in KNOWN_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = [k[len(prefix) :] for k in out]
        stripped += prefix
    return stripped, out


def match_keys(
    ckpt: Shapes, model: Shapes, tied: Mapping[str, tuple[str, ...]] | None = None
) -> KeyMatch:
    """Pair checkpoint keys with model keys, stripping a wrapper prefix only when that helps.

    Tries the identity first, then each prefix chain; the first exact match wins. When none is
    exact, the mapping that pairs the most keys is returned, so messages list the true differences.
    ``tied``: model key -> the model keys of the same tensor (``checkpoints._tied.tied_keys``); a
    model key without a checkpoint key is then not missing when another key of its tensor has one
    (it goes to :attr:`KeyMatch.tied`).
    """
    tied = tied or {}
    model_keys = list(model)
    best: tuple[int, KeyMatch] | None = None
    for chain in _CHAINS:
        if chain and not any(k.startswith(chain) for k in ckpt):
            continue
        renamed = {k: (k[len(chain) :] if chain and k.startswith(chain) else k) for k in ckpt}
        if len(set(renamed.values())) < len(renamed):
            continue  # stripping would merge two keys
        for model_chain in _CHAINS:
            if model_chain and not all(k.startswith(model_chain) for k in model_keys):
                continue
            target = {k[len(model_chain) :]: k for k in model_keys}
            mapping = {ck: target[nk] for ck, nk in renamed.items() if nk in target}
            hit = set(mapping.values())
            covered = {
                k: next((o for o in tied.get(k, ()) if o in hit), None)
                for k in model_keys
                if k not in hit
            }
            match = KeyMatch(
                mapping=mapping,
                stripped=chain,
                model_stripped=model_chain,
                missing=[k for k, o in covered.items() if o is None],
                tied={k: o for k, o in covered.items() if o is not None},
                unexpected=[k for k in ckpt if k not in mapping],
                mismatched=[
                    (mk, tuple(model[mk]), tuple(ckpt[ck]))
                    for ck, mk in mapping.items()
                    if tuple(model[mk]) != tuple(ckpt[ck])
                ],
            )
            if not match.missing and not match.unexpected:
                return match
            if best is None or len(mapping) > best[0]:
                best = (len(mapping), match)
    if best is None:  # empty checkpoint
        return KeyMatch({}, "", "", missing=model_keys, unexpected=list(ckpt))
    return best[1]


def _listed(keys: list[str]) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:_LIST_AT_MOST])
    more = len(keys) - _LIST_AT_MOST
    return shown + (f" and {more} more" if more > 0 else "")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def describe_mismatch(match: KeyMatch, name: str, model_name: str, spec: str | None = None) -> str:
    """A one-paragraph message: what does not fit, up to ten keys of each kind, and the fix
    (``spec``: the spec file that built the model, named there)."""
    missing = [k for k in match.missing if not _lenient(k)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if match.unexpected:
        parts.append(f"{len(match.unexpected)} unexpected key(s): {_listed(match.unexpected)}")
    if match.mismatched:
        shown = "; ".join(
            f"'{k}' expected {_shape(e)}, found {_shape(f)}"
            for k, e, f in match.mismatched[:_LIST_AT_MOST]
        )
        more = len(match.mismatched) - _LIST_AT_MOST
        parts.append(
            f"{len(match.mismatched)} shape mismatch(es): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    how = ""
    if match.stripped:
        how = f" (after stripping the prefix '{match.stripped}' from its keys)"
    fix = (
        _prefix_hint(match)
        or _beside_hint(match)
        or _statistics_hint(missing, match)
        or (
            "Check that the spec's [model] arch, num_classes and options"
            + (f" (in {spec})" if spec else "")
            + " are those of the run that wrote this checkpoint"
            + (
                ", and its [data] dataset too (the data set gives the model's input shape)"
                if match.mismatched
                else ""
            )
        )
    )
    return f"'{name}' does not fit the model ({model_name}){how}: " + "; ".join(parts) + f". {fix}."


def mismatch_error(
    match: KeyMatch, name: str, model_name: str, spec: str | None = None
) -> KeyMismatchError:
    """The error of keys or shapes that do not fit (:func:`describe_mismatch`): a
    :class:`FactoryMismatchError` when the spec's factory wraps the saved network (every
    checkpoint fails alike: the model's fault), an :class:`ExtraModulesError` when the model
    fits and the file holds other modules beside it (the file's), else a
    :class:`KeyMismatchError`."""
    message = describe_mismatch(match, name, model_name, spec)
    if factory_wraps(match):
        return FactoryMismatchError(message)
    if modules_beside(match) or _saved_from_wrapper(match):
        return ExtraModulesError(message)
    return KeyMismatchError(message)


def modules_beside(match: KeyMatch) -> bool:
    """Whether every model key is a checkpoint key under the stripped wrapper prefix, with equal
    shapes, and every other checkpoint key lies outside that prefix: the file holds the network
    (a LightningModule's ``self.model``) and other modules beside it (its loss's class weight)."""
    return (
        bool(match.stripped)
        and bool(match.unexpected)
        and not match.mismatched
        and all(map(_lenient, match.missing))
        and not any(k.startswith(match.stripped) for k in match.unexpected)
    )


def _saved_from_wrapper(match: KeyMatch) -> bool:
    """Whether every checkpoint key is the model's with one more dotted prefix (``net.``): the
    file was saved from a wrapper of the spec's network (the file's to re-save, not the spec's)."""
    if not match.missing or not match.unexpected:
        return False
    ckpt_keys = [*match.mapping, *match.unexpected]
    model_keys = [*match.mapping.values(), *match.missing]
    return _other_prefix(ckpt_keys, model_keys) is not None


def _beside_hint(match: KeyMatch) -> str:
    """When the file holds the model under a prefix and other modules beside it: the fix."""
    if not modules_beside(match):
        return ""
    prefix = match.stripped
    return (
        f"Every key of the model is in the file under '{prefix}'; the other keys belong to "
        "modules saved beside the network (a LightningModule's loss with a class weight, say), "
        "which conetool does not leave out. The spec's model is right: re-save each "
        f"checkpoint with the keys under '{prefix}' alone (in Python: sd = torch.load(path, "
        "weights_only=True)['state_dict']; torch.save({k: v for k, v in sd.items() if "
        f"k.startswith('{prefix}')}}, out_path) with out_path named by the step, as in "
        "step_2000.pt) into a directory of its own and point conetool at that"
    )


_STATISTICS = (".running_mean", ".running_var")


def _statistics_hint(missing: list[str], match: KeyMatch) -> str:
    """When only BatchNorm's running statistics are missing: the file holds parameters only."""
    if not missing or match.unexpected or match.mismatched:
        return ""
    if not all(k.endswith(_STATISTICS) for k in missing):
        return ""
    return (
        "Only BatchNorm's running statistics (buffers) are missing: the file holds the "
        "parameters alone (saved from model.named_parameters(), say), and the eNTK is taken in "
        "eval mode, which normalizes with them. Save model.state_dict(), which holds them"
    )


def _other_prefix(keys: list[str], others: list[str]) -> str | None:
    """A dotted prefix (``net.``) that every one of ``keys`` starts with and whose removal makes
    them exactly ``others``; None when there is none."""
    if not keys:
        return None
    wanted = {k for k in others if not _lenient(k)}
    head = keys[0].split(".")
    for length in range(1, len(head)):
        prefix = ".".join(head[:length]) + "."
        if not all(k.startswith(prefix) for k in keys):
            break
        if {k[len(prefix) :] for k in keys if not _lenient(k)} == wanted:
            return prefix
    return None


def factory_wraps(match: KeyMatch) -> bool:
    """Whether every key of the model is a checkpoint key with one more dotted prefix: the
    spec's factory wraps the network the checkpoint was saved from (and not the other way round,
    a checkpoint saved from a wrapper, which is the file's)."""
    if not match.missing or not match.unexpected:
        return False
    ckpt_keys = [*match.mapping, *match.unexpected]
    model_keys = [*match.mapping.values(), *match.missing]
    return (
        _other_prefix(ckpt_keys, model_keys) is None
        and _other_prefix(model_keys, ckpt_keys) is not None
    )


def _prefix_hint(match: KeyMatch) -> str:
    """When the keys differ only by a prefix conetool does not strip: which one, and the fix."""
    if not match.missing or not match.unexpected:
        return ""
    ckpt_keys = [*match.mapping, *match.unexpected]
    model_keys = [*match.mapping.values(), *match.missing]
    known = ", ".join(f"'{p}'" for p in KNOWN_PREFIXES)
    prefix = _other_prefix(ckpt_keys, model_keys)
    if prefix is not None:
        return (
            f"Every key of the checkpoint is the model's with the prefix '{prefix}' (conetool "
            f"strips only {known}): save the state_dict of the module inside the wrapper, or "
            f"re-save the file with '{prefix}' taken off its keys"
        )
    prefix = _other_prefix(model_keys, ckpt_keys)
    if prefix is not None:
        return (
            f"Every key of the model is the checkpoint's with the prefix '{prefix}': the factory "
            "wraps the network the checkpoint was saved from; let it return that network itself"
        )
    return ""


def diff_keys(this: Shapes, other: Shapes) -> str:
    """Short description of how key set ``this`` differs from ``other`` (for mixed-run messages)."""
    lacks = [k for k in other if k not in this]
    extra = [k for k in this if k not in other]
    shapes = [k for k in this if k in other and tuple(this[k]) != tuple(other[k])]
    parts = []
    if lacks:
        parts.append(f"it lacks {_listed(lacks)}")
    if extra:
        parts.append(f"it has extra {_listed(extra)}")
    if shapes:
        shown = ", ".join(
            f"'{k}' {_shape(this[k])} vs {_shape(other[k])}" for k in shapes[:_LIST_AT_MOST]
        )
        parts.append(f"shapes differ: {shown}")
    return "; ".join(parts)
