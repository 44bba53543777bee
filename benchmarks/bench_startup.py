"""How fast the command line answers --help and usage errors, against a bare ``import torch``.

    python benchmarks/bench_startup.py             # 7 rounds
    python benchmarks/bench_startup.py --rounds 15

Each round runs, in fresh processes and in turn (so that a busy moment of the machine hits all
of them alike): ``python -c "import torch"``, ``conetool --help``, ``conetool kernels --help``
and a usage error (``conetool kernels`` without its argument). It prints the median wall time of
each and its ratio to the bare ``import torch``. Target: at most 0.2x (issue 16); the CLI must
not import PyTorch before a command runs.

Then, not part of that target, commands that do load PyTorch and stop at once: ``conetool kernels``
and ``conetool inspect`` on an empty folder (each imports its own pipeline module only), beside
``import conetool.pipeline`` with every command's function loaded, which is what each command
imported before the pipeline package loaded its names on first use (matplotlib for the figures,
SciPy for ``spectrum``): the difference is the start-up a command no longer pays.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "conetool --help": [sys.executable, "-m", "conetool", "--help"],
    "conetool kernels --help": [sys.executable, "-m", "conetool", "kernels", "--help"],
    "conetool kernels (usage error)": [sys.executable, "-m", "conetool", "kernels"],
}
EMPTY = Path(tempfile.mkdtemp(prefix="bench_startup_"))
#: commands that load PyTorch (not in the target): name -> command
LOADING = {
    "import every command's module": [
        sys.executable,
        "-c",
        "import conetool.pipeline as p; [getattr(p, name) for name in p.__all__]",
    ],
    "conetool kernels EMPTY": [
        sys.executable,
        "-m",
        "conetool",
        "kernels",
        str(EMPTY),
        "--store",
        str(EMPTY / "store"),
    ],
    "conetool inspect EMPTY": [sys.executable, "-m", "conetool", "inspect", str(EMPTY)],
}


def _time(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cases = {**CASES, **LOADING}
    for command in cases.values():  # warm the file cache
        _time(command, env)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, command in cases.items():
            times[name].append(_time(command, env))
    base = statistics.median(times["python -c 'import torch'"])
    print(f"median of {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    width = max(map(len, cases))
    for name, values in times.items():
        if name in LOADING and name == next(iter(LOADING)):
            print("commands that load PyTorch (not in the target):")
        median = statistics.median(values)
        print(f"{name:{width}}  {median:6.3f} s  {median / base:5.2f}x import torch")
    worst = max(statistics.median(times[n]) for n in CASES if n.startswith("conetool"))
    verdict = "met" if worst <= 0.2 * base else "NOT met"
    print(f"target: at most 0.20x import torch -> {verdict} (worst {worst / base:.2f}x)")
    shutil.rmtree(EMPTY, ignore_errors=True)


if __name__ == "__main__":
    main()
