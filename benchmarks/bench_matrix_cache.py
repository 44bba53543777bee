"""Benchmark: the S matrix cache of a copied store (``cp -r``: new file times), reused against
recomputed, and what the kernel digests cost the first computation.

Writes a store of K float32 n x n kernels (random PSD, through :class:`conetool.store.Store`),
then times :func:`conetool.pipeline.matrix_cache.kernel_matrix`:

1. ``compute``: the first computation (the digests of the kernels included);
2. ``digests``: :func:`~conetool.pipeline.matrix_cache.kernel_digest` of every kernel alone, the
   share of (1) the cache key's content check adds to it;
3. ``reuse in place``: the saved matrix reused where it was computed (a stat per file);
4. after copying the store with new file times (``shutil.copyfile``, as ``cp -r``):
   ``reuse of the copy`` (each file read once, its kernel's digest compared) against
   ``recompute of the copy`` (``reuse=False``: what every run on a copy did before), then
   ``reuse again`` (the copy's times were saved: a stat per file).

Files are read from the page cache (just written); on a cold disk add the time to read the
store once to (4)'s reuse and at least once to the recompute. Times are the fastest of
``--repeat``; one thread (``--threads``).

    python benchmarks/bench_matrix_cache.py --count 200 --side 300
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from conetool import paths
from conetool.pipeline.matrix_cache import kernel_digest, kernel_matrix
from conetool.store import StepRecord, Store, StoreIdentity, kernel_norm
from conetool.threads import limit_threads


def make_store(root: Path, count: int, side: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    store = Store.open_for_writing(
        root, StoreIdentity("spec", "probe", "trace", "float32"), {"checkpoints": "/ckpts"}
    )
    base = rng.standard_normal((side, side + 4))
    for k in range(count):
        a = base + 0.05 * k * rng.standard_normal(base.shape)
        kernel = torch.from_numpy((a @ a.T).astype(np.float32))
        record = StepRecord(
            step=k,
            source=[f"/ckpts/{k}"],
            size=1,
            fingerprint=f"fp{k}",
            kernel=paths.kernel_relative(k),
            norm=kernel_norm(kernel),
            seconds=0.0,
        )
        store.write_kernel(record, kernel)
    store.close()
    return root


def fastest(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="kernels (K)")
    parser.add_argument("--side", type=int, default=300, help="kernel side (n)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, limit_threads(args.threads):
        root = make_store(Path(tmp) / "a", args.count, args.side)

        def compute() -> None:
            paths.matrix_npz(root).unlink(missing_ok=True)
            assert not kernel_matrix(Store.open(root)).reused

        store = Store.open(root)
        kernels = [store.load_kernel(step) for step in store.steps()]
        rows = [("compute", fastest(args.repeat, compute))]
        rows.append(("digests", fastest(args.repeat, lambda: [kernel_digest(k) for k in kernels])))
        kernels.clear()
        rows.append(
            ("reuse in place", fastest(args.repeat, lambda: kernel_matrix(Store.open(root))))
        )

        def copy() -> Path:
            target = Path(tmp) / "b"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(root, target, copy_function=shutil.copyfile)
            for path in (target / paths.KERNELS_DIR).iterdir():  # times surely new
                stat = path.stat()
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
            return target

        reused, again = float("inf"), float("inf")
        for _ in range(args.repeat):
            target = copy()
            began = time.perf_counter()
            matrix = kernel_matrix(Store.open(target))
            reused = min(reused, time.perf_counter() - began)
            assert matrix.reused
            began = time.perf_counter()
            assert kernel_matrix(Store.open(target)).reused
            again = min(again, time.perf_counter() - began)
        target = copy()
        recompute = fastest(args.repeat, lambda: kernel_matrix(Store.open(target), reuse=False))
        rows += [
            ("reuse of the copy", reused),
            ("recompute of the copy", recompute),
            ("reuse again", again),
        ]
    size = args.count * args.side**2 * 4 / 2**20
    print(f"K = {args.count} float32 kernels of {args.side} x {args.side} ({size:.0f} MiB)")
    first = rows[0][1]
    for name, seconds in rows:
        print(f"{name:>22}  {seconds:8.3f} s  ({seconds / first:6.1%} of compute)")


if __name__ == "__main__":
    main()
