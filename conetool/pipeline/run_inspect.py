"""``conetool inspect``: what a checkpoint directory holds and what is wrong with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import paths
from ..checkpoints import (
    InspectRow,
    StepRange,
    inspect_checkpoints,
    parse_step_range,
    step_range_text,
)
from ..choices import path_argument
from ..errors import StoreError
from ..folder_roles import checkpoint_contents, store_holding
from ..library_call import library_call
from ..spec import Spec
from .resolve import iterations_per_epoch, model_for, resolve_spec


@library_call
def inspect(
    ckpts: str | Path,
    *,
    spec: Spec | str | Path | None = None,
    verify: bool = False,
    step_regex: str | None = None,
    steps: StepRange | None = None,
    every: int | None = None,
    warn: Callable[[str], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> list[InspectRow]:
    """One row per checkpoint found in ``ckpts``: step, file, size, parameter count, status.

    Reads headers only, unless ``verify`` (then every tensor is loaded and checked finite, and
    shapes are checked against the spec's model). The spec (``--spec`` or ``CKPTS/conetool.toml``)
    is optional; with it, keys and shapes are checked against the model and open_lth's
    ``model_epE_itI`` names are converted to steps. ``steps``, ``every`` and ``step_regex``
    select checkpoints as :func:`conetool.kernels` does. What the directory holds but is not
    read goes to ``warn`` (checkpoints in subfolders, a stored step the name contradicts:
    default :func:`warnings.warn`) or ``note`` (information only: copies, torch.save files that
    are no checkpoints; default ``warn``), as :func:`conetool.kernels` says them; each row's own
    are in its ``notes`` and ``warnings``.

    Example::

        rows = conetool.inspect("runs/digits")
        bad = [r for r in rows if r.status != "ok"]
    """
    ckpts = path_argument(ckpts, "ckpts", "the checkpoint directory (or one checkpoint)")
    _refuse_a_store(ckpts)
    steps = step_range_text(steps)
    if spec is not None or paths.spec(ckpts).is_file():
        resolved = resolve_spec(ckpts, spec)
        model, ipe = model_for(resolved), iterations_per_epoch(resolved)
        source: str | None = resolved.source
    else:
        model, ipe, source = None, None, None
    return inspect_checkpoints(
        ckpts,
        model=model,
        verify=verify,
        step_regex=step_regex,
        iterations_per_epoch=ipe,
        steps=parse_step_range(steps) if steps else None,
        every=every,
        warn=warn,
        note=note,
        spec=source,
    )


def _refuse_a_store(ckpts: Path) -> None:
    """Refuse a store, or a store's folder of kernel files (``STORE/kernels``), given as CKPTS:
    its kernel files are named as checkpoints are (``step_000000.safetensors``), and inspect
    listed them as checkpoints, every one "ok". A store that holds checkpoints too is read (the
    listing leaves the store's own files out)."""
    held = store_holding(ckpts)
    if held is None:
        return
    root, recorded = held
    if root == ckpts and checkpoint_contents(ckpts) is not None:
        return
    what = (
        f"CKPTS {ckpts} is a conetool store"
        if root == ckpts
        else f"CKPTS {ckpts} is the {ckpts.name}/ folder of the conetool store {root}"
    )
    fix = (
        f"Its kernels were computed from {recorded}: conetool inspect {recorded}"
        if recorded is not None
        else "Pass the checkpoint directory of the run (the --out of conetool train) as CKPTS"
    )
    raise StoreError(
        f"{what} (it holds {paths.MANIFEST_NAME}), not a checkpoint directory: its files are "
        f"kernels, not model weights. {fix}."
    )
