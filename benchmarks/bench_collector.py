"""The analysis commands with and without the console script's deferred garbage collection.

    python benchmarks/bench_collector.py                  # a tiny demo store, 5 rounds
    python benchmarks/bench_collector.py --rounds 9 --store conetool-demo/store

``conetool.cli.main`` turns Python's cyclic garbage collector off until the command's modules
(PyTorch, NumPy, ...) are imported, then freezes what is alive and turns it back on
(``conetool/cli/collector.py``). The baseline is the same command with that step taken out
(``defer_collection`` replaced by a no-op), which is how every command ran before.

Each round runs ``distance``, ``spectrum`` and ``embed`` on the store, each in a fresh process,
the baseline and the new way one after the other, alternating which goes first (so that a busy
moment of a shared machine hits both alike). It prints each one's median wall time and CPU time
(user + system, of the process) and the ratio new / baseline. Without ``--store`` it first makes
a tiny demo store (``conetool demo --steps 24 --probe-size 10``, about 30 s), as the tests do.
Both ways run with ``--threads 1 --quiet``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the command line, run in a fresh interpreter, with the deferral (``new``) or without it
_RUNNER = """
import sys
import conetool.cli as cli
if sys.argv[1] == "baseline":
    cli.defer_collection = lambda: None
sys.argv = ["conetool", *sys.argv[2:]]
cli.main()
"""
COMMANDS = ("distance", "spectrum", "embed")


def _run(way: str, argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``conetool ARGV`` the given way."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, way, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        raise SystemExit(f"{way} {' '.join(argv)} failed: {process.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def _demo_store(env: dict[str, str]) -> Path:
    out = Path(tempfile.mkdtemp(prefix="bench_collector_")) / "demo"
    print(f"making a tiny demo store in {out} ...", flush=True)
    demo = ["demo", "--out", str(out), "--steps", "24", "--probe-size", "10", "--device", "cpu"]
    subprocess.run(
        [sys.executable, "-m", "conetool", *demo, "--threads", "1", "--quiet"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", type=Path, help="a store to analyse (default: a tiny demo)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    store = args.store if args.store is not None else _demo_store(env)
    load = os.getloadavg()[0]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        ways = ("baseline", "new") if round_ % 2 == 0 else ("new", "baseline")
        for command in COMMANDS:
            argv = [command, "--store", str(store), "--threads", "1", "--quiet"]
            for way in ways:
                times.setdefault((command, way), []).append(_run(way, argv, env))
    print(
        f"{args.rounds} rounds, load average {load:.2f} at the start and "
        f"{os.getloadavg()[0]:.2f} at the end; medians"
    )
    print(f"{'command':<10} {'way':<9} {'wall s':>8} {'cpu s':>8}")
    for command in COMMANDS:
        medians = {}
        for way in ("baseline", "new"):
            wall = statistics.median(t[0] for t in times[(command, way)])
            cpu = statistics.median(t[1] for t in times[(command, way)])
            medians[way] = (wall, cpu)
            print(f"{command:<10} {way:<9} {wall:8.3f} {cpu:8.3f}")
        (wall0, cpu0), (wall1, cpu1) = medians["baseline"], medians["new"]
        print(f"{command:<10} {'new/base':<9} {wall1 / wall0:8.3f} {cpu1 / cpu0:8.3f}")


if __name__ == "__main__":
    main()
