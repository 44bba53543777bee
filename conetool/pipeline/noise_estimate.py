"""The noise floor of S on the run's own model, for ``conetool distance`` (cached in
``STORE/distance/noise.json``).

The kernel of the first 32 probe examples at the last stored step is computed twice, as the store
computed it (the engine that step's record names, and the store's dtype) and by the float64
reference engine
(:func:`conetool.noise_floor.kernel_noise`). ``S_est`` is their distance. Two kernels of the run
each carry such an error, so the floor under a measured S between two of them is
``2 * S_est`` (about ``relative_error**2`` for unstructured errors).

Rebuilding the model needs the checkpoint the manifest names and the spec it records (``ckpts``
and ``spec`` override them: a run moved since ``conetool kernels``); when the checkpoint is gone,
or the file there is not the one the kernel was computed from (its size, then the fingerprint of
the read, against the step's record: a run re-trained into the same folder), the floor is not
estimated and a note says so. The result is reused while the store's identity, that engine, that
checkpoint's fingerprint and the device type it is estimated on (``cpu``, ``cuda``: float32
rounds differently on each) stay the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..checkpoints import checkpoint_ref, load_checkpoint
from ..device import resolve_device
from ..errors import ConetoolError, StoreError
from ..io import atomic_write_json
from ..noise_floor import kernel_noise
from ..probe import load_probe
from ..spec import Spec, spec_from_dict
from ..store import Store
from .remembered import changed_imports, use_recorded_imports
from .resolve import model_for

__all__ = ["SUBSET", "estimate_noise_floor", "saved_noise_floor"]

#: Probe examples in each of the two kernels (one of them in float64).
SUBSET = 32

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def estimate_noise_floor(
    store: Store,
    *,
    device: str | torch.device = "cpu",
    ckpts: Path | None = None,
    spec: Spec | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, note)``: the noise record (JSON-ready, ``floor`` is the floor of S) and
    ``None`` (or, when it estimated the floor now, a note that it imported the model's module
    from the folder the store records: a floor read from ``noise.json`` builds no model and
    imports nothing, so it says nothing of where the module is), or ``None`` and a note saying
    why it could not be estimated.

    ``device``: where the two kernels are computed (``"auto"``: CUDA when present); its type
    (``cpu``, ``cuda``) is part of the cache's key and is recorded as the record's ``device``.
    ``ckpts``: the checkpoint directory now, when it moved (the checkpoint is looked up at the
    same place relative to it as relative to the directory the manifest names); ``spec``: the
    spec, instead of the one the manifest records (the caller checks that it is the store's);
    ``log``: told when the estimate is computed, before it starts (not when it is read from
    ``noise.json``, nor when the checkpoint is not there).

    Raises:
        StoreError: ``ckpts`` was given and does not hold the checkpoint.
    """
    steps = store.steps()
    if not steps:
        return None, "no stored kernels"
    step = steps[-1]
    record = store.record(step)
    if record is None or not record.source:
        return None, f"the manifest has no source checkpoint for step {step}"
    source = Path(record.source[0])
    if ckpts is not None:
        source = moved(source, store.manifest.get("checkpoints"), Path(ckpts))
    # The engine the estimate computes with: the one that made this step's kernel (its record's;
    # the manifest's --method for a record from before conetool kept it, which names the last
    # kernels run's option, not this kernel's). The store's identity leaves it out, and a kernels
    # rerun with another --method recomputes a damaged or missing kernel file with it under the
    # same step and fingerprint, so it keys the cache too.
    method = record.engine or str(store.manifest.get("method", "auto"))
    try:
        dev = resolve_device(device)
    except ConetoolError as exc:
        return None, f"the noise floor of S was not estimated: {str(exc).splitlines()[0]}"
    key = {
        **_kernels_key(store, step, record.fingerprint),
        "method": method,
        "subset": SUBSET,
        # float32 rounds differently on a GPU than on a CPU: a floor is reused on its own only
        "device": dev.type,
    }
    cache = paths.noise_json(store.root)
    try:
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["noise"], None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not source.exists():
        if ckpts is not None:
            raise StoreError(
                f"--ckpts {ckpts} has no checkpoint of step {step} (looked for {source}), the "
                "checkpoint the noise floor of S is estimated on. Pass the directory that now "
                "holds the run's checkpoints, or --no-noise."
            )
        return None, (
            f"the noise floor of S was not estimated: the checkpoint of step {step} ({source}) "
            "is not there to rebuild the model from"
        )
    try:
        ref = checkpoint_ref(source, step=step)
        size = ref.file_state()[0]
    except (ConetoolError, OSError) as exc:
        return None, f"the noise floor of S was not estimated: {str(exc).splitlines()[0]}"
    if size != record.size:  # another file at its path: told before reading it
        return None, _replaced(source, step)
    if log is not None:  # only when it estimates: not for a cached floor or a missing checkpoint
        log("estimating the noise floor of S on the run's model ...")
    try:
        if spec is None:
            spec = spec_from_dict(store.manifest["spec"], source=f"{paths.manifest(store.root)}")
        # A "pkg.mod:factory" model comes from where kernels imported it when it is not
        # importable now; the step is the recorded one (no --step-regex needed).
        imported = use_recorded_imports(store.manifest, spec)
        imported += changed_imports(store.manifest, spec)  # an edited model: said, not hidden
        model = model_for(spec)
        # A checkpoint of lower precision than the model was warned of by kernels, which
        # computed this step's kernel from it: not again, through Python's warnings module.
        loaded = load_checkpoint(model, ref, spec=spec.source, warn=_said_by_kernels)
        if loaded is None or loaded.fingerprint != record.fingerprint:
            return None, _replaced(source, step)  # the same size, other bytes
        inputs = load_probe(paths.probe(store.root)).inputs
        estimate = kernel_noise(
            model,
            inputs,
            kind=store.identity.kind,
            method=method,
            dtype=_DTYPES.get(store.identity.dtype, torch.float32),
            subset=SUBSET,
            device=dev,
        )
    except ConetoolError as exc:
        return None, f"the noise floor of S was not estimated: {str(exc).splitlines()[0]}"
    noise = {
        "step": step,
        "checkpoint": str(source),
        "examples": estimate.n,
        "method": estimate.method,
        "dtype": estimate.dtype,
        "device": dev.type,
        "relative_error": estimate.relative_error,
        "S_against_float64": estimate.S,
        "floor": 2.0 * estimate.S,
    }
    try:
        with store.writing_results("distance"):  # not into a store replaced meanwhile
            atomic_write_json(cache, {"key": key, "noise": noise})
    except ConetoolError:
        pass  # a read-only (or replaced) store still gets the estimate, only not the cache
    return noise, "; ".join(imported) or None


def _said_by_kernels(message: str) -> None:
    """Drop a warning of the checkpoint's dtypes: ``kernels`` said it of the same file."""


def _kernels_key(store: Store, step: int, fingerprint: Any) -> dict[str, Any]:
    """The part of ``noise.json``'s key that says which kernels its floor is about: the
    store's identity, the step it was estimated on and that step's kernel fingerprint."""
    identity = store.identity
    return {
        "identity": [identity.spec_hash, identity.probe_hash, identity.kind, identity.dtype],
        "step": step,
        "fingerprint": fingerprint,
    }


def saved_noise_floor(store: Store) -> float | None:
    """The noise floor of S that ``distance`` estimated on this store and cached in
    ``distance/noise.json``, when it is about the store's kernels as they are now
    (:func:`_kernels_key`: its identity, and the kernel of its last stored step; any engine or
    device); else None. Reads the cache only, estimates nothing. ``embed``'s own verdict reads it
    as ``distance``'s does: under a decaying learning rate, S up to the floor is not divided by
    the rate."""
    try:
        saved = json.loads(paths.noise_json(store.root).read_text(encoding="utf-8"))
        key, floor = saved["key"], float(saved["noise"]["floor"])
        steps = store.steps()
        record = store.record(steps[-1]) if steps else None
        if record is None:
            return None
        wanted = _kernels_key(store, steps[-1], record.fingerprint)
        if any(key[name] != value for name, value in wanted.items()):
            return None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return floor if floor >= 0 and math.isfinite(floor) else None


def _replaced(source: Path, step: int) -> str:
    """The note when the file at ``source`` is not the checkpoint step ``step``'s kernel was
    computed from (its size or fingerprint differs from the store's record)."""
    return (
        f"the noise floor of S was not estimated: {source} is not the checkpoint the kernel of "
        f"step {step} was computed from (its size or content differs from the store's record: "
        "re-trained or replaced since). Rerun conetool kernels on the checkpoints to recompute "
        "the changed kernels, or pass --ckpts with the directory that holds the run's own"
    )


def moved(source: Path, recorded: str | None, ckpts: Path) -> Path:
    """Where ``source`` (a checkpoint file under the recorded directory) is when the run's
    directory is now ``ckpts``: the same path relative to it (the file name when ``source`` was
    not under the recorded directory)."""
    if recorded is not None:
        try:
            return ckpts / source.relative_to(Path(recorded))
        except ValueError:
            pass
    return ckpts / source.name
