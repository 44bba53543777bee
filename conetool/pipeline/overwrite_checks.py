"""What ``conetool kernels --overwrite`` checks before it clears a store that holds something, so
that bad input never costs the kernels and results already computed: the spec's model must give
one logit per class of the data (:func:`conetool.models.output_check`), and it must fit the first
checkpoint the run loads, told from that checkpoint's headers (:func:`conetool.checkpoints.fit
.fit_error`; a legacy torch.save pickle is read in full, as the run would read it).

When the first checkpoint does not fit, whose fault it is follows
:mod:`conetool.pipeline.kernels_failures`: a second checkpoint that does not fit either makes it
the spec's model's, and the run is refused; one that fits makes it the first checkpoint's own,
and the run goes on as before under ``--skip-bad`` (it leaves that checkpoint out), but is
refused without it (it would stop at that checkpoint, the store already cleared).

:mod:`conetool.pipeline.run_kernels` calls :func:`check_before_clearing` on rank 0, before
:meth:`conetool.store.Store.open_for_writing`. What these checks cannot tell (a first checkpoint
holding NaN, one that cannot be read, a memory budget too small, an interrupt) is met by the run
itself, and the run clears the store only once its first kernel is computed (under torchrun:
once every rank has computed its first or ended its share, none failing; ``defer_clearing``,
:func:`conetool.pipeline.kernels_loop.compute_all`'s ``clear_first``), so it stops with the
store as it was too.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoints import CheckpointRef
from ..checkpoints.fit import fit_error
from ..errors import CheckpointError, KeyMismatchError, ModelError
from ..models import output_check
from .kernels_failures import (
    CHECKPOINT,
    EITHER,
    MODEL,
    Fault,
    second_checkpoint,
    spec_model,
    stop_message,
)
from .kernels_loop import KernelsPlan

__all__ = ["check_before_clearing"]


def check_before_clearing(model: nn.Module, plan: KernelsPlan, store: Path, skip_bad: bool) -> None:
    """Refuse, before ``store`` is cleared, a run that would fail for a reason known now: a
    ``model`` whose output does not fit the data (:class:`ModelError`), or one that does not fit
    the first of ``plan.refs`` when the run cannot go on without it (the keys or shapes error
    loading would raise). The message says that nothing was removed.

    Raises:
        ModelError: the model's output is no ``(batch, num_classes)`` tensor of the data's classes.
        KeyMismatchError: the model does not fit the first checkpoint, and the run would stop
            there (another checkpoint does not fit it either, there is none, or no ``skip_bad``).
    """
    spec = plan.spec
    kept = (
        f"--overwrite removed nothing: {store} is as it was (a store is cleared only once the "
        "run can start)"
    )
    try:
        output_check(
            model,
            tuple(plan.data.input_shape),
            plan.data.num_classes,
            spec.model.arch,
            examples=plan.data.examples(),
        )
    except ModelError as exc:
        raise type(exc)(f"{spec_model(spec)}: {exc} {kept}.") from exc
    if not plan.refs:
        return
    first = plan.refs[0]
    error = _fit(model, first, spec.source)[1]
    if error is None:
        return  # it fits, or cannot be read: the run says what is wrong with it, as before
    if isinstance(error, ModelError):  # the factory wraps the saved network: every one fails
        fault = Fault(MODEL)
    else:
        other = second_checkpoint(first, plan.refs)
        other_fits = None if other is None else _fit(model, other, spec.source)[0]
        if skip_bad and other is not None and other_fits is not False:
            return  # this checkpoint's own fault (or not told): --skip-bad goes on without it
        if other_fits is None:
            fault = Fault(EITHER)
        else:
            fault = Fault(CHECKPOINT if other_fits else MODEL, other)
    what, fix = stop_message(error, first, fault, spec)
    raise type(error)(f"{what} {kept}; {fix}.") from error


def _fit(
    model: nn.Module, ref: CheckpointRef, spec: str
) -> tuple[bool | None, KeyMismatchError | None]:
    """Whether ``model`` (built by the spec file ``spec``) fits ``ref`` (None: ``ref`` cannot be
    read), and the error when not."""
    try:
        error = fit_error(model, ref, spec)
    except (CheckpointError, OSError):
        return None, None
    return error is None, error
