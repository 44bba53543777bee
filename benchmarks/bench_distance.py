"""Benchmark: the S matrix of K stored n x n kernels, blocked, against computing every pair directly.

Writes K float32 kernels (n x n, a slowly drifting PSD-like trajectory) to a temporary folder as
safetensors files (tensor ``"kernel"``, like the store's ``kernels/step_XXXXXX.safetensors``), then

1. times :func:`conetool.geometry.distance_matrix` with a loader that reads one file per call
   (``safetensors.torch.load_file``), and reports the peak resident memory of the process;
2. times the naive baseline, ``kernel_distance`` on two freshly loaded kernels per pair, on a
   random subset of pairs, extrapolates it to all ``K (K - 1) / 2`` pairs, and checks that both
   agree on that subset.

Memory bound of step 1 (stated by ``distance_matrix``): two float64 blocks of ``b`` kernels plus
one kernel in flight, ``(2 b + 1) * n^2 * 8`` bytes, within ``--max-memory`` (default 1 GiB), plus
the ``K x K`` result and the interpreter. The files are read back from the page cache (they were
just written); on a cold disk add the time to read ``K * (1 + (blocks - 1) / 2)`` kernels.

Usage (the issue's size; about 1 GB of temporary files):

    python benchmarks/bench_distance.py --count 200 --side 1000

A quick check:

    python benchmarks/bench_distance.py --count 50 --side 1000 --naive-pairs 50
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from conetool.geometry import (
    DEFAULT_MAX_MEMORY,
    block_size_for,
    distance_matrix,
    kernel_distance,
)
from conetool.peak_memory import peak_resident_memory


def write_kernels(folder: Path, count: int, side: int, seed: int) -> list[Path]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(side, side, generator=generator)
    base = base + base.T
    paths = []
    for k in range(count):
        drift = torch.randn(side, side, generator=generator)
        base = base + 0.05 * (drift + drift.T)
        path = folder / f"step_{100 * k:06d}.safetensors"
        save_file({"kernel": base.contiguous()}, str(path), metadata={"step": str(100 * k)})
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="K, the number of kernels")
    parser.add_argument("--side", type=int, default=1000, help="n: kernels are n x n")
    parser.add_argument("--max-memory", type=int, default=DEFAULT_MAX_MEMORY, help="bytes")
    parser.add_argument("--naive-pairs", type=int, default=100, help="pairs timed directly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the kernels")
    args = parser.parse_args(argv)

    mib = 2**20
    numel = args.side * args.side
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        paths = write_kernels(Path(tmp), args.count, args.side, args.seed)
        written = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in paths)
        print(
            f"wrote {args.count} kernels of {args.side} x {args.side} float32 "
            f"({size / mib:.0f} MiB) in {written:.1f} s"
        )
        rss_before = peak_resident_memory()

        loads = 0

        def load(i: int) -> torch.Tensor:
            nonlocal loads
            loads += 1
            return load_file(str(paths[i]))["kernel"]

        block = min(block_size_for(numel, args.max_memory), args.count)
        blocks = -(-args.count // block)
        bound = ((2 if blocks > 1 else 1) * block + 1) * numel * 8  # one buffer if one block
        t0 = time.perf_counter()
        s = distance_matrix(load, args.count, max_memory=args.max_memory)
        blocked = time.perf_counter() - t0
        rss_blocked = peak_resident_memory()
        print(
            f"blocked S matrix ({args.count} x {args.count}): {blocked:.2f} s; block size "
            f"{block} ({blocks} blocks), {loads} kernel loads ({loads / args.count:.2f} per kernel)"
        )
        print(
            f"memory: bound for the blocks {bound / mib:.0f} MiB (max_memory "
            f"{args.max_memory / mib:.0f} MiB); peak RSS {rss_blocked / mib:.0f} MiB "
            f"(was {rss_before / mib:.0f} MiB before: +{(rss_blocked - rss_before) / mib:.0f} MiB)"
        )

        rng = np.random.default_rng(args.seed)
        all_pairs = args.count * (args.count - 1) // 2
        pairs = set()
        while len(pairs) < min(args.naive_pairs, all_pairs):
            i, j = sorted(rng.choice(args.count, size=2, replace=False).tolist())
            pairs.add((i, j))
        worst = 0.0
        t0 = time.perf_counter()
        for i, j in sorted(pairs):
            value = kernel_distance(load(i), load(j))
            worst = max(worst, abs(value - s[i, j]))
        naive = time.perf_counter() - t0
        per_pair = naive / len(pairs)
        print(
            f"naive, one pair at a time: {per_pair * 1e3:.1f} ms per pair; all {all_pairs} pairs "
            f"~ {per_pair * all_pairs:.0f} s (extrapolated from {len(pairs)}); "
            f"speed-up {per_pair * all_pairs / blocked:.0f}x; "
            f"largest difference from the blocked S {worst:.1e}"
        )


if __name__ == "__main__":
    main()
