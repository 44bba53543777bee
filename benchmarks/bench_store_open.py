"""Benchmark: ``Store.open`` on a store of N small kernel files, against opening the manifest alone
(the baseline, measured in the same run).

``Store.open`` reads ``manifest.json`` and then the header of every kernel file, to adopt the
records of kernel files that ``manifest.json`` does not hold yet (a run killed between a kernel and
the manifest's next write, or a rank's file: see :mod:`conetool.store`). The baseline,
``Store(root, read_manifest(...))``, is what opening costs without that header scan: the floor that
a lazy or cheaper scan could reach at best. Both are timed warm (the files in the page cache) and
cold (each file's cached pages dropped first with ``posix_fadvise(DONTNEED)``, Linux only: the
files are read from the disk again, or from the host's cache on a virtual machine; the dropping is
not timed), ``--repeat`` times each in turn.

For scale, the same run times what every command pays before it opens a store (a fresh
``python -c "import conetool.store"``, which imports PyTorch) and what ``distance`` or
``spectrum`` pay after it (``load_kernel`` of every step, warm).

Usage (a run of 2,000 checkpoints):

    python benchmarks/bench_store_open.py --count 2000 --side 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from conetool import paths
from conetool.store import Store, read_manifest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# benchmarks/ is no package: found through sys.path. The same store identity and kernel records
# as bench_store_writes.py's run.
from bench_store_writes import IDENTITY, _record


def build(root: Path, count: int, side: int) -> None:
    """A closed store at ``root`` of ``count`` float32 ``side`` x ``side`` kernels, all in its
    ``manifest.json`` (nothing for the open to adopt: the common case)."""
    kernel = torch.rand(side, side)
    with Store.open_for_writing(root, IDENTITY, {"checkpoints": "/runs/bench"}) as out:
        for step in range(count):
            out.write_kernel(_record(step), kernel)


def open_store(root: Path) -> Store:
    """The store as conetool's commands open it (the manifest, then every kernel file's header)."""
    return Store.open(root)


def manifest_only(root: Path) -> Store:
    """The baseline: the store opened from its manifest alone, no kernel file read."""
    return Store(root, read_manifest(paths.manifest(root)))


def drop_cached(root: Path) -> bool:
    """Drop the page-cache pages of the store's files (Linux); False where that cannot be done."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in [paths.manifest(root), *sorted((root / paths.KERNELS_DIR).iterdir())]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # written pages are dropped only once clean
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def timed(call: Callable[[Path], Store], root: Path, cold: bool) -> float:
    """Seconds of one ``call(root)``: cold, after the files' cached pages are dropped; warm,
    after one untimed call has read them into the cache (a cold case may have dropped them)."""
    if cold:
        drop_cached(root)
    else:
        call(root)
    began = time.perf_counter()
    store = call(root)
    took = time.perf_counter() - began
    assert len(store.steps()) > 0
    return took


def process_start() -> float:
    """Seconds of a fresh ``python -c "import conetool.store"``."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import conetool.store"], check=True)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="kernel files in the store")
    parser.add_argument("--side", type=int, default=16, help="kernel side (probe size)")
    parser.add_argument("--repeat", type=int, default=5, help="timings of each, in turn")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = {"Store.open": open_store, "manifest only": manifest_only}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        build(root, args.count, args.side)
        can_drop = drop_cached(root)
        temperatures = ["warm", "cold"] if can_drop else ["warm"]
        times: dict[tuple[str, str], list[float]] = {
            (name, t): [] for name in cases for t in temperatures
        }
        starts = []
        for _ in range(args.repeat):
            for temperature in temperatures:
                for name, call in cases.items():
                    times[name, temperature].append(timed(call, root, temperature == "cold"))
            starts.append(process_start())
        opened = Store.open(root)
        began = time.perf_counter()
        for step in opened.steps():
            opened.load_kernel(step)
        load_all = time.perf_counter() - began
    med = {key: statistics.median(values) for key, values in times.items()}
    start = statistics.median(starts)
    print(
        f"{args.count} kernel files of {args.side} x {args.side}, median of {args.repeat} each"
        + ("" if can_drop else " (no posix_fadvise: warm only)")
    )
    print(f"{'':>14} " + " ".join(f"{t + ' ms':>9}" for t in temperatures))
    for name in cases:
        print(f"{name:>14} " + " ".join(f"{1e3 * med[name, t]:9.1f}" for t in temperatures))
    for t in temperatures:
        extra = med["Store.open", t] - med["manifest only", t]
        print(
            f"{t}: Store.open / manifest only: {med['Store.open', t] / med['manifest only', t]:.1f}; "
            f"the header scan: {1e6 * extra / args.count:.0f} us per kernel file, "
            f"{extra / start:.1%} of a command's start ({1e3 * start:.0f} ms), "
            f"{extra / load_all:.1%} of loading every kernel ({1e3 * load_all:.0f} ms, warm)"
        )


if __name__ == "__main__":
    sys.exit(main())
