"""The recipe keys a switch sweep of a researcher's own run takes from conetool's defaults.

A run not written by ``conetool train`` has no resolved ``conetool.toml``: its spec is the
researcher's file, and any ``[train]`` key it leaves out is conetool's default (lr 0.1, momentum
0.9, weight decay 1e-4, batch 128, 1000 steps, ...), which the sweep replays as if it were the
run's recipe. :func:`defaults_warning` names those keys, with their values, once per sweep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import paths
from ..checkpoints import CheckpointRef, checkpoint_metadata
from ..errors import ConetoolError
from ..spec import Spec, toml_text

__all__ = ["defaulted_recipe", "defaults_warning", "is_foreign_run", "recorded_written"]


def defaulted_recipe(spec: Spec, *, until_given: bool) -> list[str]:
    """The keys of ``spec``'s ``[train]`` that the sweep trains with and its file did not write
    (so conetool's defaults), each as ``"lr = 0.1"``, in :class:`~conetool.spec.TrainSpec`'s
    order; ``[]`` for a spec whose written keys are not known (built in Python).

    Only the keys the linearized training uses count: the optimizer, lr, weight decay, label
    smoothing, batch size, schedule and warmup; SGD's momentum and nesterov, Adam's betas; the step schedule's milestones
    and gamma; ``steps`` where it is T (no ``--until``: ``until_given`` False) or shapes the
    cosine schedule; ``augment`` where the data set augments (cifar10 alone: a user's factory's batches never are). Not
    ``seed``: the batches are conetool's seeded order whatever it is, never the run's."""
    if spec.written is None:
        return []
    t = spec.train
    used = ["batch_size", "optimizer", "lr", "weight_decay", "label_smoothing", "schedule"]
    used.append("warmup_steps")
    if not until_given or t.schedule == "cosine":
        used.append("steps")
    used += ["momentum", "nesterov"] if t.optimizer == "sgd" else ["betas"]
    if t.schedule == "step":
        used += ["milestones", "gamma"]
    if spec.data.dataset == "cifar10":  # the one data set conetool augments (a factory's: never)
        used.append("augment")
    order = list(type(t).__dataclass_fields__)
    left = sorted((k for k in used if f"train.{k}" not in spec.written), key=order.index)
    return [f"{key} = {toml_text(getattr(t, key))}" for key in left]


def defaults_warning(spec: Spec, *, until_given: bool, read_from: str | None = None) -> str | None:
    """The warning of a sweep over checkpoints ``conetool train`` did not write whose spec leaves
    recipe keys to conetool's defaults (:func:`defaulted_recipe`), naming them with their values,
    the spec file and the fix; None when it writes them all (or they are not known).
    ``read_from``: the spec file ``conetool kernels`` read, when ``spec`` is the store manifest's
    record of it (the store's kernels are of that spec: a sweep with the file completed needs a
    store of its own, or the kernels again)."""
    left = defaulted_recipe(spec, until_given=until_given)
    if not left:
        return None
    one = len(left) == 1
    file = spec.source if read_from is None else read_from
    named = file if read_from is None else f"{file} (the spec conetool kernels read)"
    fix = f"Write your run's recipe into [train] of {file}"
    if read_from is not None:
        fix += (
            f" and sweep with it: --spec {file} --store OTHER_STORE (the store's kernels were "
            "computed with the spec as it was, and conetool never mixes specs in a store; or run "
            "conetool kernels with it into a new store first, for a sweep beside its kernels)"
        )
    return (
        f"{named} does not write {'this key' if one else 'these keys'} of the [train] recipe, so "
        f"{'it is' if one else 'they are'} conetool's default{'' if one else 's'}: "
        f"{'; '.join(left)}. These checkpoints were not written by `conetool train` (whose "
        f"{paths.SPEC_NAME} writes every key), and the sweep replays "
        f"{'it' if one else 'them'} as your run's recipe: every point trains with "
        f"{'this value' if one else 'these values'}, whatever your run used. {fix} (the README's "
        "'The spec' section lists every key)."
    )


def recorded_written(manifest: Mapping[str, Any]) -> frozenset[str] | None:
    """The keys the spec file ``conetool kernels`` read wrote, as its store ``manifest`` records
    them (``spec_written``); None for a store that does not record them (an older conetool's,
    or a spec built in Python)."""
    keys = manifest.get("spec_written")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        return None
    return frozenset(keys)


def is_foreign_run(refs: Iterable[CheckpointRef]) -> bool:
    """Whether any of ``refs`` was not written by ``conetool train`` (its metadata, from the
    header alone: a torch file has none), as :func:`~conetool.pipeline.switch_points.
    said_if_foreign` tells it; a file whose header cannot be read is left to its point's load,
    which says why."""
    for ref in refs:
        try:
            metadata: Mapping[str, str] = checkpoint_metadata(ref)
        except (ConetoolError, OSError):
            continue
        if metadata.get("format") != "conetool":
            return True
    return False
