"""Benchmark: writing N small kernels into a store, manifest.json spaced out against rewritten
after every kernel (the baseline, measured in the same run).

Each kernel is a ``--side`` x ``--side`` float32 tensor written with :meth:`Store.write_kernel`
(its file, then its record), as ``conetool kernels`` does once a kernel is computed; the eNTK
itself is left out, so what is timed is the store's own cost per kernel, which is what grows with
the number of steps. The baseline sets :data:`conetool.store_records.MANIFEST_INTERVAL` and
:data:`~conetool.store_records.MANIFEST_COST_RATIO` to 0, which rewrites manifest.json in full
after every kernel (conetool's behaviour before the spacing). Both runs alternate ``--repeat``
times on fresh stores in one temporary folder; the script prints the median seconds, the ratio,
the per-kernel milliseconds of the first and last tenth of the run, the manifest's size and its
number of writes.

Usage (a run of 2,000 checkpoints):

    python benchmarks/bench_store_writes.py --count 2000 --side 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import conetool.store_records as store_module
from conetool import paths
from conetool.store import StepRecord, Store, StoreIdentity

IDENTITY = StoreIdentity(spec_hash="bench", probe_hash="bench", kind="trace", dtype="float32")


def _record(step: int) -> StepRecord:
    source = f"/runs/bench/step_{step:06d}.safetensors"  # the length of a real record's path
    return StepRecord(
        step=step,
        source=[source],
        size=85_000,
        fingerprint=f"85000:{step:064x}",
        kernel=paths.kernel_relative(step),
        norm=1.0,
        seconds=0.01,
        mtime_ns=1_700_000_000_000_000_000 + step,
    )


def one_run(root: Path, count: int, side: int, spaced: bool) -> dict[str, float]:
    """Write ``count`` kernels into a fresh store at ``root``; seconds and per-kernel times."""
    saved = store_module.MANIFEST_INTERVAL, store_module.MANIFEST_COST_RATIO
    if not spaced:
        store_module.MANIFEST_INTERVAL, store_module.MANIFEST_COST_RATIO = 0.0, 0.0
    writes = 0
    real_write = store_module.write_manifest

    def counted(where: Path, manifest: dict) -> None:
        nonlocal writes
        writes += 1
        real_write(where, manifest)

    store_module.write_manifest = counted  # type: ignore[assignment]
    kernel = torch.rand(side, side)
    each: list[float] = []
    try:
        began = time.perf_counter()
        with Store.open_for_writing(root, IDENTITY, {"checkpoints": "/runs/bench"}) as out:
            for step in range(count):
                t = time.perf_counter()
                out.write_kernel(_record(step), kernel)
                each.append(time.perf_counter() - t)
        total = time.perf_counter() - began
    finally:
        store_module.MANIFEST_INTERVAL, store_module.MANIFEST_COST_RATIO = saved
        store_module.write_manifest = real_write
    tenth = max(1, count // 10)
    return {
        "seconds": total,
        "first_ms": 1e3 * statistics.mean(each[:tenth]),
        "last_ms": 1e3 * statistics.mean(each[-tenth:]),
        "writes": float(writes),
        "manifest_bytes": float(paths.manifest(root).stat().st_size),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="kernels per run")
    parser.add_argument("--side", type=int, default=16, help="kernel side (probe size)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, list[dict[str, float]]] = {"every kernel": [], "spaced": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for name in results:
                root = Path(tmp) / f"{name.replace(' ', '_')}_{r}"
                results[name].append(one_run(root, args.count, args.side, name == "spaced"))
    print(f"{args.count} kernels of {args.side} x {args.side}, median of {args.repeat} runs each")
    print(f"{'manifest.json':>14} {'seconds':>8} {'first ms':>9} {'last ms':>8} {'writes':>7}")
    medians = {}
    for name, runs in results.items():
        med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        medians[name] = med
        print(
            f"{name:>14} {med['seconds']:8.2f} {med['first_ms']:9.2f} {med['last_ms']:8.2f} "
            f"{int(med['writes']):7d}"
        )
    ratio = medians["spaced"]["seconds"] / medians["every kernel"]["seconds"]
    size = medians["spaced"]["manifest_bytes"] / 1e6
    print(f"spaced / every kernel: {ratio:.2f}; manifest.json at the end: {size:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
