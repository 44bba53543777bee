"""``conetool kernels``: the eNTK of the probe set at every checkpoint, into the store."""

from __future__ import annotations

import dataclasses
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__, paths
from ..checkpoints import CheckpointRef, list_checkpoints, load_checkpoint, parse_step_range
from ..data import load_data
from ..device import resolve_device
from ..errors import ConetoolError, DataError, StoreError
from ..models import output_check
from ..ntk import KINDS, empirical_ntk
from ..probe import Probe, load_probe, make_probe, save_probe
from ..progress import NullProgress, Progress
from ..spec import Spec
from ..store import StepRecord, Store, StoreIdentity, kernel_norm
from .resolve import iterations_per_epoch, model_for, resolve_spec

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class KernelsResult:
    """What :func:`kernels` did. ``failed`` maps a step to its error (with ``skip_bad``)."""

    store: Path
    computed: list[int]
    skipped: list[int]
    failed: dict[int, str]
    kernel_shape: tuple[int, ...]
    seconds_per_kernel: float | None
    peak_memory: int
    device: str
    warnings: list[str] = field(default_factory=list)


def kernels(
    ckpts: str | Path,
    *,
    spec: Spec | str | Path | None = None,
    store: str | Path = paths.DEFAULT_STORE,
    probe_size: int | None = None,
    kind: str = "trace",
    dtype: str = "float32",
    device: str | torch.device = "auto",
    max_memory: int | str | None = None,
    steps: str | None = None,
    every: int | None = None,
    step_regex: str | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> KernelsResult:
    """Compute the eNTK of the spec's probe set at every checkpoint of ``ckpts`` into ``store``.

    Steps already in the store whose checkpoint is unchanged are skipped, so a rerun (or a run
    after a kill) computes only what is missing. The store's contract is in :mod:`conetool.store`.

    Example::

        result = conetool.kernels("runs/digits", store="conetool-out")
        H = conetool.Store.open("conetool-out").load_kernel(result.computed[-1])  # (n, n)
    """
    progress = progress or NullProgress()
    ckpts = Path(ckpts)
    if kind not in KINDS:
        raise ConetoolError(f"--kind {kind!r} is unknown. Use one of: {', '.join(KINDS)}.")
    if dtype not in DTYPES:
        raise ConetoolError(f"--dtype {dtype!r} is unknown. Use float32 or float64.")
    if not ckpts.exists():
        raise StoreError(f"checkpoint directory {ckpts} does not exist. Check the CKPTS path.")
    spec = resolve_spec(ckpts, spec)
    if probe_size is not None:
        if probe_size < 1:
            raise ConetoolError(f"--probe-size must be positive, got {probe_size}.")
        spec = dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, size=probe_size))
    dev = resolve_device(device)

    notes: list[str] = []
    refs = list_checkpoints(
        ckpts,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch(spec),
        steps=parse_step_range(steps) if steps else None,
        every=every,
        skip_bad=skip_bad,
        warn=lambda message: (notes.append(message), progress.log(f"warning: {message}")),
    )
    data = load_data(spec.data)
    probe = make_probe(data, spec.probe)
    identity = StoreIdentity(spec.hash(), probe.hash, kind, dtype)
    out = Store.open_for_writing(store, identity, _header(ckpts, spec, probe), overwrite=overwrite)
    _ensure_probe(out.root, probe)

    model = model_for(spec)
    output_check(model, tuple(data.input_shape), data.num_classes, arch=spec.model.arch)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    computed: list[int] = []
    skipped: list[int] = []
    failed: dict[int, str] = {}
    seconds: list[float] = []
    shape: tuple[int, ...] = ()
    bar = progress.task("kernels", total=len(refs))
    for ref in refs:
        if _unchanged(out, ref):
            skipped.append(ref.step)
            bar.advance(1, step=ref.step)
            continue
        try:
            began = time.perf_counter()
            loaded = load_checkpoint(model, ref)
            assert loaded is not None  # load_checkpoint returns the record for a file
            if out.is_current(ref.step, loaded.fingerprint):
                skipped.append(ref.step)
                bar.advance(1, step=ref.step)
                continue
            kernel = empirical_ntk(
                model,
                probe.inputs,
                kind=kind,
                max_memory=max_memory,
                device=dev,
                dtype=DTYPES[dtype],
                on_block=_inner_bar(progress, ref.step),
            )
        except ConetoolError as exc:
            message = f"step {ref.step} ({ref.file}): {exc}"
            if not skip_bad:
                raise type(exc)(
                    f"{message} Kernels already computed are kept in {out.root}; fix this "
                    "checkpoint and rerun, or pass --skip-bad to go on without it."
                ) from exc
            failed[ref.step] = str(exc)
            progress.log(f"warning: skipped {message}")
            bar.advance(1, step=ref.step)
            continue
        took = time.perf_counter() - began
        record = StepRecord(
            step=ref.step,
            source=[str(p.resolve()) for p in ref.paths],
            size=loaded.size,
            fingerprint=loaded.fingerprint,
            kernel=paths.kernel_relative(ref.step),
            norm=kernel_norm(kernel),
            seconds=round(took, 4),
            mtime_ns=_mtime_ns(ref),
        )
        out.write_kernel(record, kernel)
        computed.append(ref.step)
        seconds.append(took)
        shape = tuple(kernel.shape)
        bar.advance(1, step=ref.step, per_kernel=f"{took:.2f}s")
    bar.close()
    return KernelsResult(
        store=out.root,
        computed=computed,
        skipped=skipped,
        failed=failed,
        kernel_shape=shape or _stored_shape(out),
        seconds_per_kernel=sum(seconds) / len(seconds) if seconds else None,
        peak_memory=_peak_memory(dev),
        device=str(dev),
        warnings=notes,
    )


def _header(ckpts: Path, spec: Spec, probe: Probe) -> dict[str, object]:
    return {
        "checkpoints": str(ckpts.resolve()),
        "spec_source": spec.source,
        "spec": spec.to_dict(),
        "probe": {
            "size": len(probe),
            "split": probe.split,
            "seed": spec.probe.seed,
            "hash": probe.hash,
            "file": paths.PROBE_NAME,
        },
        "versions": {
            "conetool": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
    }


def _ensure_probe(root: Path, probe: Probe) -> None:
    """Write the probe set once; rewrite it only if the stored copy is damaged."""
    path = paths.probe(root)
    if path.is_file():
        try:
            if load_probe(path).hash == probe.hash:
                return
        except DataError:
            pass  # damaged: rewritten below from the data set
    save_probe(probe, path)


def _mtime_ns(ref: CheckpointRef) -> int:
    return max(p.stat().st_mtime_ns for p in ref.paths)


def _unchanged(store: Store, ref: CheckpointRef) -> bool:
    """Cheap check before reading the file: same size and modification time as when stored."""
    record = store.record(ref.step)
    if record is None or not record.mtime_ns or not (store.root / record.kernel).is_file():
        return False
    try:
        size = sum(p.stat().st_size for p in ref.paths)
        return size == record.size and _mtime_ns(ref) == record.mtime_ns
    except OSError:
        return False


def _inner_bar(progress: Progress, step: int) -> Callable[[int, int], None]:
    """An inner progress bar over the blocks of one kernel, opened on the first report."""
    state: dict[str, object] = {}

    def report(done: int, total: int) -> None:
        if total <= 1:
            return
        if "task" not in state:
            state["task"] = progress.task(f"  step {step}", total=total)
            state["done"] = 0
        task = state["task"]
        task.advance(done - state["done"])  # type: ignore[attr-defined,operator]
        state["done"] = done
        if done >= total:
            task.close()  # type: ignore[attr-defined]

    return report


def _stored_shape(store: Store) -> tuple[int, ...]:
    steps = store.steps()
    return tuple(store.load_kernel(steps[-1]).shape) if steps else ()


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
