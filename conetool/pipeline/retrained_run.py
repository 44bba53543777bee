"""Saying when a store may now hold kernels of two runs: the run was retrained in its own folder.

``kernels`` recomputes a step whose checkpoint changed, and keeps the kernel of a step whose
checkpoint is gone (deleting checkpoints once their kernels are stored is fine). Both at once in
one rerun is what retraining into the same folder with fewer steps looks like (a training script
of one's own, which the spec does not describe, so the store's identity does not change): the
changed steps now hold the new run's kernels and the gone ones the old run's, and ``distance``
would compare the two runs. Neither alone is a problem, so this is a warning, not a refusal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["retrained_warning"]


def _listed(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:5])) + (", ..." if len(steps) > 5 else "")


def retrained_warning(
    before: Mapping[int, str],
    after: Mapping[int, str],
    recomputed: Iterable[int],
    gone: Iterable[int],
    store: str,
) -> str | None:
    """The warning for a rerun of ``kernels`` that replaced kernels of changed checkpoints while
    the store keeps kernels of steps whose checkpoints are gone; None otherwise.

    Args:
        before: step -> the checkpoint fingerprint each stored kernel was made from, before the
            rerun.
        after: the same after the rerun.
        recomputed: the steps the rerun computed.
        gone: the stored steps within the rerun's selection (``--steps``/``--every``) that the
            checkpoint directory no longer holds.
        store: the store's path, for the message.
    """
    changed = sorted(s for s in recomputed if before.get(s) not in (None, after.get(s)))
    gone = sorted(gone)
    if not changed or not gone:
        return None
    return (
        f"{len(changed)} checkpoint(s) changed since their kernels were computed (steps "
        f"{_listed(changed)}; recomputed) while {store} keeps the kernels of {len(gone)} step(s) "
        f"whose checkpoints are gone ({_listed(gone)}): if the run was retrained in its folder, "
        f"those {len(gone)} kernel(s) are the earlier run's and distance, embed and the verdict "
        f"would mix the two runs. Delete {store} (or pass another --store) and rerun kernels to "
        "start afresh; if you deleted those checkpoints on purpose, nothing is wrong."
    )
