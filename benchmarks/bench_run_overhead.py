"""Benchmark: the fixed cost per checkpoint of a ``conetool kernels`` run, outside the eNTK
engine, of this tree against a baseline revision of conetool, measured in the same run.

A researcher's run often has hundreds of checkpoints of a small model and a small probe set, where
what ``kernels`` does around each kernel (listing and hashing checkpoints, reading them in a
background thread, loading them into the model, checking the store, writing each kernel file and
its record, ``manifest.json``) weighs as much as the kernel itself. The script writes K
checkpoints of a built-in model (``bench_kernels_run.write_run``: a spec and
``step_N.safetensors`` files as ``conetool train`` lays them out) and times three runs of
``conetool.kernels`` over them in one process:

- ``fresh``: into a new store, every kernel computed;
- ``rerun``: the same command again (every checkpoint skipped by its size and mtime);
- ``touched``: again after ``os.utime`` gave every checkpoint a new mtime (as ``touch`` or
  ``cp`` without ``-p``): each is read and hashed, found unchanged by its fingerprint, skipped.

With ``--engine stub`` (the default) the engine is replaced by a function returning an
``(n, n)`` tensor at once (``conetool.pipeline.kernels_loop.empirical_ntk``), so that the times
are the run's own costs alone; ``--engine real`` keeps the engine (its share then dominates and
varies with the load). Each measurement runs in its own subprocess with ``PYTHONPATH`` at one
code tree: this checkout's, and the baseline's (``--baseline REV``, exported with ``git
archive`` into a temporary folder), alternating, ``--repeat`` times; each subprocess first makes
a one-checkpoint run into a throwaway store (imports, the engine's set-up) that is not timed.
Prints, per run kind, the median wall time and process CPU time (all threads; steadier on a
shared machine) per checkpoint, and the ratios of this tree's medians to the baseline's.

Usage:

    python benchmarks/bench_run_overhead.py --model lenet5 --checkpoints 250 --n 32 --repeat 3
    python benchmarks/bench_run_overhead.py --model mlp --checkpoints 300 --n 16 --baseline 7b8a432
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
KINDS = ("fresh", "rerun", "touched")
BASELINE = "7b8a432"  # the commit before the changes this script was written to measure


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(ckpts: Path, folder: Path, n: int, engine: str) -> dict[str, Any]:
    """One measurement: the three runs of the module docstring, in this process."""
    import torch

    import conetool
    from conetool.pipeline import kernels_loop

    if engine == "stub":

        def stub(model: Any, x1: torch.Tensor, x2: Any = None, **options: Any) -> torch.Tensor:
            return torch.eye(x1.shape[0])

        kernels_loop.empirical_ntk = stub  # type: ignore[assignment]

    def run(store: Path, source: Path = ckpts) -> Any:
        return conetool.kernels(source, store=store, probe_size=n, device="cpu", threads=1)

    warm = folder / "warm"  # the spec and the first checkpoint
    warm.mkdir()
    first = min(ckpts.glob("*.safetensors"))
    for path in (ckpts / "conetool.toml", first):
        shutil.copy(path, warm / path.name)
    run(folder / "warm_store", warm)
    out: dict[str, Any] = {"conetool": conetool.__file__}
    store = folder / "store"
    for kind in KINDS:
        if kind == "touched":
            now = time.time()
            for path in ckpts.glob("*.safetensors"):
                os.utime(path, (now, now))
        cpu, wall = _cpu(), time.perf_counter()
        result = run(store)
        out[kind] = {
            "wall": time.perf_counter() - wall,
            "cpu": _cpu() - cpu,
            "computed": len(result.computed),
            "skipped": len(result.skipped),
        }
    return out


def export(revision: str, into: Path) -> Path:
    """``revision``'s ``conetool`` package (``git archive``) under ``into``; returns ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "conetool"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(tree: Path, ckpts: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement with conetool imported from ``tree``, in a subprocess."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), str(HERE)]),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, __file__, "--child", str(ckpts), str(folder), str(args.n)]
    done = subprocess.run(
        [*command, args.engine], env=env, cwd=str(folder), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"measurement with {tree} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5", help="a built-in model (default lenet5)")
    parser.add_argument("--checkpoints", type=int, default=250, help="K (default 250)")
    parser.add_argument("--n", type=int, default=32, help="probe size (default 32)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each (default 3)")
    parser.add_argument("--engine", default="stub", choices=["stub", "real"])
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision (default {BASELINE})")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ckpts, folder, n, engine = args.child
        print("RESULT " + json.dumps(child(Path(ckpts), Path(folder), int(n), engine)))
        return

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT))
    from bench_kernels_run import write_run

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "conetool"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpts = write_run(folder / "run", args.model, args.checkpoints, args.n)
        size = sum(p.stat().st_size for p in ckpts.glob("*.safetensors"))
        trees = {"baseline": export(args.baseline, folder / "baseline"), "new": ROOT}
        print(
            f"conetool kernels, the run's own costs: {args.model}, {args.checkpoints} checkpoints "
            f"({size / 2**20:.1f} MiB), n = {args.n}, engine {args.engine}, CPU, one thread "
            f"(OMP_NUM_THREADS=1), median of {args.repeat}; new: {commit}"
            f"{' + changes' if dirty else ''}, baseline: {args.baseline}; "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        times: dict[str, dict[str, dict[str, list[float]]]] = {
            name: {kind: {"wall": [], "cpu": []} for kind in KINDS} for name in trees
        }
        for round_ in range(args.repeat):
            order = ["baseline", "new"] if round_ % 2 == 0 else ["new", "baseline"]
            for name in order:
                where = folder / f"{name}_{round_}"
                where.mkdir()
                result = measure(trees[name], ckpts, where, args)
                assert Path(result["conetool"]).is_relative_to(trees[name]), result["conetool"]
                shutil.rmtree(where)
                for kind in KINDS:
                    for key in ("wall", "cpu"):
                        times[name][kind][key].append(result[kind][key])
                shown = "  ".join(
                    f"{kind} {1000 * result[kind]['wall'] / args.checkpoints:6.2f} ms"
                    for kind in KINDS
                )
                print(f"  round {round_ + 1} {name:8}  {shown}  (wall per checkpoint)", flush=True)
        print(
            f"{'run':>8} {'tree':>8} {'wall ms/ckpt':>13} {'cpu ms/ckpt':>12} "
            f"{'wall x':>7} {'cpu x':>7}"
        )
        for kind in KINDS:
            base = {key: statistics.median(times["baseline"][kind][key]) for key in ("wall", "cpu")}
            for name in trees:
                med = {key: statistics.median(times[name][kind][key]) for key in ("wall", "cpu")}
                ratios = (
                    f"{med['wall'] / base['wall']:7.3f} {med['cpu'] / base['cpu']:7.3f}"
                    if name == "new"
                    else ""
                )
                print(
                    f"{kind:>8} {name:>8} {1000 * med['wall'] / args.checkpoints:13.2f} "
                    f"{1000 * med['cpu'] / args.checkpoints:12.2f} {ratios}"
                )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
