"""Loading the digits: scikit-learn's functions (the former code) against conetool.digits.

    python benchmarks/bench_digits_load.py             # 7 rounds
    python benchmarks/bench_digits_load.py --rounds 15

Every command that loads the digits (``train``, ``kernels``, ``distance``'s noise floor,
``spectrum``'s kernel machine, ``switch``) used to call scikit-learn's ``load_digits`` and
``train_test_split``, whose imports (most of scikit-learn, SciPy's ``stats``) cost as much as
importing PyTorch; ``conetool.digits`` reads the same file and draws the same split with NumPy.
Each round runs, in fresh processes and in turn (so that a busy moment of the machine hits all of
them alike), with PyTorch imported first as in a command:

- ``import torch``: the floor;
- ``old``: ``import torch`` then the old ``_digits`` body (scikit-learn's functions);
- ``new``: ``import torch`` then ``conetool.data.load_data`` of the digits.

It prints the median wall time of each, the ratio new / old, and the ratio of their costs above
the floor. Before timing it checks once that both give the same tensors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OLD = """
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    x / 16.0, y, test_size=0.2, stratify=y, random_state=0
)
mean, std = float(x_train.mean()), float(x_train.std())
old = [torch.from_numpy((xs - mean) / std).reshape(-1, 1, 8, 8).float() for xs in (x_train, x_test)]
old += [torch.from_numpy(ys) for ys in (y_train, y_test)]
"""
NEW = """
import torch
from conetool.data import load_data
from conetool.spec import DataSpec
b = load_data(DataSpec(dataset="digits"))
new = [b.train.inputs, b.test.inputs, b.train.targets, b.test.targets]
"""
CHECK = (
    OLD
    + NEW
    + "assert all(torch.equal(a, b) for a, b in zip(old, new)), 'different data'\nprint('same')"
)
CASES = {"import torch": "import torch", "old (scikit-learn)": OLD, "new (conetool.digits)": NEW}


def _time(code: str, env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    same = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True
    )
    print(f"old and new data: {same.stdout.strip()}")
    for code in CASES.values():  # warm the file cache
        _time(code, env)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, code in CASES.items():
            times[name].append(_time(code, env))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"median of {args.rounds} rounds, load average {os.getloadavg()[0]:.2f}")
    width = max(map(len, CASES))
    for name in CASES:
        print(f"{name:<{width}}  {median[name]:6.2f} s")
    floor, old, new = median.values()
    print(f"new / old: {new / old:.2f}x")
    print(f"above import torch, new / old: {(new - floor) / (old - floor):.2f}x")


if __name__ == "__main__":
    main()
