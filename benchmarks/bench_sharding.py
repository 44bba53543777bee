"""`conetool kernels` on one process against N torchrun ranks, on the same checkpoints.

    python benchmarks/bench_sharding.py                    # lenet5 on digits, 81 checkpoints, n = 1024
    python benchmarks/bench_sharding.py --quick            # check that it runs (about a minute)
    python benchmarks/bench_sharding.py --ckpts runs/digits --probe-size 100 --ranks 2

Every process uses one thread (OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1, for the single-process
baseline too, as torchrun sets for its ranks), so on a machine with at least N idle cores, N ranks
should take about 1/N of the wall time. Both runs are whole commands (`python -m conetool kernels
... --device cpu`, and the same under `python -m torch.distributed.run --standalone
--nproc-per-node N`), timed from start to exit, so process start, imports, data and probe are
included; each writes a fresh store, and the two stores' kernels are compared. Without --ckpts a
run is trained first (not timed). "kernel s" is the sum of the seconds the stored kernels took
(from manifest.json): about equal in both runs when the ranks do not slow each other down;
"rest s" is the wall time less the kernel seconds per rank: process start, imports, data, probe
(a few seconds, more for torchrun's extra processes), which no number of ranks shortens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from conetool.spec import spec_from_dict
from conetool.store import Store
from conetool.training import train


def _spec(steps: int, save_every: int) -> dict:
    """LeNet-5 on the digits (shipped with scikit-learn), checkpoints every ``save_every``."""
    return {
        "model": {"arch": "lenet5", "num_classes": 10},
        "data": {"dataset": "digits"},
        "probe": {"size": 100},
        "train": {
            "steps": steps,
            "batch_size": 64,
            "lr": 0.05,
            "momentum": 0.9,
            "save_every": save_every,
            "eval_every": steps,
        },
    }


def _timed(command: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    began = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return took


def _kernel_seconds(store: Path) -> float:
    manifest = json.loads((store / "manifest.json").read_text())
    return sum(r["seconds"] for r in manifest["steps"].values())


def _largest_difference(one: Path, two: Path) -> float:
    a, b = Store.open(one), Store.open(two)
    if a.steps() != b.steps():
        raise SystemExit(f"the stores differ: steps {a.steps()} against {b.steps()}")
    worst = 0.0
    for step in a.steps():
        x, y = a.load_kernel(step).double(), b.load_kernel(step).double()
        worst = max(worst, float(torch.linalg.norm(x - y) / torch.linalg.norm(x)))
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpts", type=Path, help="An existing run (default: train one).")
    parser.add_argument("--steps", type=int, default=400, help="Training steps of the run.")
    parser.add_argument("--save-every", type=int, default=5, help="Its checkpoint interval.")
    parser.add_argument("--probe-size", type=int, default=1024, help="Probe examples n.")
    parser.add_argument("--ranks", type=int, default=2, help="torchrun processes.")
    parser.add_argument("--quick", action="store_true", help="A tiny run: check that it works.")
    parser.add_argument("--keep", type=Path, help="Keep the run and stores in this folder.")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.save_every, args.probe_size = 50, 10, 32

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench_sharding_"))
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = args.ckpts
    if ckpts is None:
        ckpts = workdir / "ckpts"
        if not ckpts.exists():
            train(spec_from_dict(_spec(args.steps, args.save_every), source="bench.toml"), ckpts)
    ckpts = ckpts.resolve()
    count = len(list(ckpts.glob("*.safetensors"))) - len(list(ckpts.glob("*.optim.safetensors")))
    one, many = workdir / "store_1", workdir / f"store_{args.ranks}"
    for store in (one, many):
        if store.exists():
            raise SystemExit(f"{store} exists: give --keep an empty folder.")
    kernels = ["-m", "conetool", "kernels", str(ckpts), "--device", "cpu", "--quiet",
               "--probe-size", str(args.probe_size), "--store"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(args.ranks)]  # fmt: skip

    cores = os.cpu_count() or 1
    print(f"{count} checkpoints of {ckpts}, probe n = {args.probe_size}, {cores} cores")
    if cores < args.ranks:
        print(f"warning: fewer cores than ranks ({cores} < {args.ranks}): expect no speed-up")
    single = _timed([sys.executable, *kernels, str(one)], workdir)
    work = _kernel_seconds(one)
    print(f"1 process : {single:7.1f} s   kernel s {work:7.1f}   rest s {single - work:5.1f}")
    sharded = _timed([*torchrun, *kernels, str(many)], workdir)
    work = _kernel_seconds(many)
    rest = sharded - work / args.ranks
    print(f"{args.ranks} ranks   : {sharded:7.1f} s   kernel s {work:7.1f}   rest s {rest:5.1f}")
    print(f"ratio {args.ranks} ranks / 1 process: {sharded / single:.2f}")
    print(f"largest relative difference of a kernel: {_largest_difference(one, many):.1e}")
    if args.keep is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
