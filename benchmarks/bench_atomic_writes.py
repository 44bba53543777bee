"""Benchmark: conetool's atomic writes with the directory flushed after the rename (as conetool
writes), against the same writes without it (the baseline, measured in the same run).

:func:`conetool.io.atomic_write` fsyncs the temporary file, renames it into place, then fsyncs
the directory (:func:`conetool.io._fsync_dir`), so that the rename survives a power loss. The
baseline replaces that last fsync with nothing. Two kinds of write, ``--count`` of each per run:
a small JSON file (``atomic_write_json``, like a result file or the manifest of a short run) and a
kernel file of ``--side`` x ``--side`` float32 (``atomic_save_safetensors``, what
:meth:`conetool.Store.write_kernel` writes per step). After one untimed run of each, runs
alternate ``--repeat`` times, each into a fresh folder under ``--dir`` (default: a temporary
folder; the cost depends on the file system, so run it on the one the store lives on). Prints the
median milliseconds per write of each, and the ratio with / without.

Usage:

    python benchmarks/bench_atomic_writes.py --count 200 --side 256 --dir /path/on/the/store/fs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import conetool.io as conetool_io


def _no_dir_fsync(folder: Path) -> None:
    """The baseline: the directory is not flushed after the rename."""


def one_run(folder: Path, count: int, write: Callable[[Path], None], flush_dir: bool) -> float:
    """Milliseconds per write of ``count`` writes (``write(path)``) into ``folder``."""
    real = conetool_io._fsync_dir
    if not flush_dir:
        conetool_io._fsync_dir = _no_dir_fsync
    try:
        folder.mkdir(parents=True)
        began = time.perf_counter()
        for i in range(count):
            write(folder / f"file_{i:05d}")
        return 1e3 * (time.perf_counter() - began) / count
    finally:
        conetool_io._fsync_dir = real


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="writes of each kind per run")
    parser.add_argument("--side", type=int, default=256, help="the kernel file's side (float32)")
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs of each")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temp folder)")
    args = parser.parse_args(argv)

    kernel = torch.rand(args.side, args.side)
    payload = {"step": 100, "values": list(range(20))}
    kinds: dict[str, Callable[[Path], None]] = {
        "small JSON": lambda p: conetool_io.atomic_write_json(p.with_suffix(".json"), payload),
        f"kernel {args.side}x{args.side} float32": lambda p: conetool_io.atomic_save_safetensors(
            p.with_suffix(".safetensors"), {"kernel": kernel}
        ),
    }
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        print(
            f"{args.count} writes of each kind per run, {args.repeat} alternating runs, in {base}"
        )
        print(f"{'write':<28} {'with dir fsync':>15} {'without':>10} {'ratio':>7}")
        run = 0
        for name, write in kinds.items():
            times: dict[bool, list[float]] = {True: [], False: []}
            for flush_dir in (False, True):  # warm-up, not timed: first writes, page cache
                run += 1
                one_run(base / f"run_{run}", args.count, write, flush_dir)
            for _ in range(args.repeat):
                for flush_dir in (False, True):
                    run += 1
                    times[flush_dir].append(
                        one_run(base / f"run_{run}", args.count, write, flush_dir)
                    )
            with_ms, without_ms = (statistics.median(times[f]) for f in (True, False))
            print(
                f"{name:<28} {with_ms:>12.3f} ms {without_ms:>7.3f} ms "
                f"{with_ms / without_ms:>6.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
