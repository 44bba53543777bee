"""Time two versions of conetool side by side on the CPU: the eNTK engine and a whole kernels run.

Issue 15 asks that on the CPU nothing gets slower. This script answers it for two git revisions
(default ``--old 1569881 --new HEAD``) in one run, on one machine, under the same load: it
extracts each revision into a temporary folder (``git archive REV | tar -x``; ``--new .`` is this
checkout as it is, uncommitted changes included, for the A/B of a fix) and times, in fresh
subprocesses whose ``PYTHONPATH`` points at one version, with ``--threads`` torch threads
(default 1: the steadiest on a shared machine),

- ``empirical_ntk``: ``conetool.ntk.empirical_ntk(model, x, kind="trace", device="cpu")`` of the
  built-in models (``conetool.models``: mlp, lenet5, resnet20, vgg16 at MNIST/CIFAR shapes, 10
  classes, random weights, non-trivial BatchNorm statistics) and ``lenet5+state`` (lenet5 behind
  an input normalisation reading a registered buffer and a plain tensor attribute, the state
  the engines copy for every evaluation), three calls in one process:
  ``first`` (a fresh ``EngineMemo``: the checks and the engine's set-up, as the first kernel of a
  run, plus the process's first-use costs), ``repeat`` (a lone call without a memo: what a
  library user's second call costs) and ``memo`` (the first call's memo again: the checks skipped,
  as ``conetool kernels`` computes every kernel after the first); ``repeat`` and ``memo`` are each
  the fastest of ``--inner`` calls (default 3), which filters out the moments another process
  took the core; ``--count`` adds the aten operator calls torch.profiler records in one more
  ``repeat`` and ``memo`` call (deterministic: the extra work itself, free of the load's noise);
- ``kernels``: one ``conetool.kernels`` call over a folder of ``--checkpoints`` lenet5 checkpoints
  (written once, by this checkout, with ``benchmarks/bench_kernels_run.write_run``: a synthetic
  data set, probe size ``--run-n``), as seconds per kernel (the call's wall time over the count).

Each round runs every measurement once per version, the versions' order alternating from round to
round (old, new; new, old; ...). The table gives, per measurement, the median wall time of each
version over the ``--rounds`` rounds, the ratio new/old of the medians and, in brackets, the
smallest and largest ratio within one round (the spread); the same ratio for the CPU time of the
process (``time.process_time``: steadier than wall time when other work shares the cores). Below
it, the largest difference between the two versions' kernels (the ``repeat`` call's, relative to
the largest entry): the versions must compute the same numbers. The load average before and after
says how busy the machine was.

Examples::

    python benchmarks/bench_versions.py --quick                  # under 2 minutes
    python benchmarks/bench_versions.py --rounds 5 --threads 1 --count   # all four models
    python benchmarks/bench_versions.py --old HEAD --new . --only ntk --models resnet20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

SHAPES = {
    "mlp": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "lenet5+state": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "vgg16": (3, 32, 32),
}
SIZES = {"mlp": 256, "lenet5": 256, "lenet5+state": 256, "resnet20": 32, "vgg16": 16}
QUICK_SIZES = {"mlp": 64, "lenet5": 64, "lenet5+state": 64, "resnet20": 8, "vgg16": 4}
NUM_CLASSES = 10
CALLS = ("first", "repeat", "memo")


# --------------------------------------------------------------------------------------------------
# Workers (each in a fresh process, conetool from PYTHONPATH)


def build(name: str) -> Any:
    """The built-in model ``name``, seeded, in eval mode, with non-trivial BatchNorm statistics
    (``lenet5+state``: lenet5 behind :func:`with_state`)."""
    import torch

    from conetool.models import lenet5, mlp, resnet20, vgg16

    factories = {"mlp": mlp, "lenet5": lenet5, "resnet20": resnet20, "vgg16": vgg16}
    torch.manual_seed(0)
    base = name.split("+")[0]
    model = factories[base](SHAPES[name], NUM_CLASSES)
    if name.endswith("+state"):
        model = with_state(model, SHAPES[name])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def with_state(model: Any, shape: tuple[int, ...]) -> Any:
    """``model`` behind an input normalisation that reads a registered buffer (``mean``, not
    BatchNorm's) and a tensor held as a plain attribute (``scale``), as many models of one's own
    do: the state the engines look at on every call since a70e72c and 8e6fff4 (``ntk_buffers``: one
    more forward pass of one example per kernel; the built-in models have neither)."""
    import torch
    from torch import nn

    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", 0.1 * torch.randn(1, *shape))
            self.scale = torch.full((1, *shape), 1.5)
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) * self.scale)

    return Normalised()


def timed(call: Any) -> tuple[Any, float, float]:
    """``call()``, its wall time and this process's CPU time over it."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def ntk_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The three ``empirical_ntk`` calls of the module docstring; the ``repeat`` kernel saved."""
    import torch

    import conetool
    from conetool.ntk import empirical_ntk
    from conetool.ntk_memo import EngineMemo

    torch.set_num_threads(args.threads)
    model = build(args.model)
    x = torch.randn(args.n, *SHAPES[args.model], generator=torch.Generator().manual_seed(1))
    memo = EngineMemo()
    out: dict[str, Any] = {"conetool": str(Path(conetool.__file__).parent)}
    for call in CALLS:
        with_memo = memo if call != "repeat" else None
        best: dict[str, float] = {}
        for _ in range(1 if call == "first" else args.inner):
            kernel, wall, cpu = timed(
                lambda m=with_memo: empirical_ntk(model, x, kind="trace", device="cpu", memo=m)
            )
            best = {
                "wall": min(wall, best.get("wall", wall)),
                "cpu": min(cpu, best.get("cpu", cpu)),
            }
        out[call] = best
        if call == "repeat":
            torch.save(kernel, args.save)
    if args.count:
        out["counts"] = {
            call: aten_calls(model, x, memo if call == "memo" else None)
            for call in ("repeat", "memo")
        }
    return out


def aten_calls(model: Any, x: Any, memo: Any) -> int:
    """The aten operator calls torch.profiler records in one more ``empirical_ntk`` call."""
    from torch.profiler import ProfilerActivity, profile

    from conetool.ntk import empirical_ntk

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        empirical_ntk(model, x, kind="trace", device="cpu", memo=memo)
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def kernels_worker(args: argparse.Namespace) -> dict[str, Any]:
    """One ``conetool.kernels`` call over ``args.ckpts`` into a fresh store."""
    import torch

    import conetool

    torch.set_num_threads(args.threads)
    result, wall, cpu = timed(
        lambda: conetool.kernels(
            args.ckpts, store=args.store, device="cpu", threads=args.threads, method="auto"
        )
    )
    count = len(result.computed)
    return {
        "conetool": str(Path(conetool.__file__).parent),
        "kernels": {"wall": wall / count, "cpu": cpu / count, "count": count},
    }


def write_worker(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint folder the ``kernels`` measurement reads (this checkout's writer)."""
    sys.path.insert(0, str(HERE))
    from bench_kernels_run import write_run

    ckpts = write_run(Path(args.folder), "lenet5", args.checkpoints, args.n)
    return {"ckpts": str(ckpts)}


def worker_main(args: argparse.Namespace) -> None:
    work = {"ntk": ntk_worker, "kernels": kernels_worker, "write": write_worker}[args.worker]
    print("RESULT " + json.dumps(work(args)))


# --------------------------------------------------------------------------------------------------
# The driver


def extract(rev: str, folder: Path) -> tuple[Path, str]:
    """The tree of ``rev`` under ``folder`` (``.``: this checkout itself) and its short hash."""
    if rev == ".":
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return ROOT, f"{head}{'+changes' if dirty else ''} (this checkout)"
    short = git("rev-parse", "--short", rev)
    target = folder / short
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", short], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, short


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def run_worker(tree: Path, threads: int, worker_args: list[str], timeout: float) -> dict[str, Any]:
    """This script as a worker, importing conetool from ``tree``; its RESULT line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *worker_args, "--threads", str(threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            conetool_dir = result.get("conetool")
            if conetool_dir is not None and Path(conetool_dir).parent != tree:
                raise SystemExit(f"the worker imported conetool from {conetool_dir}, not {tree}")
            return result
    raise SystemExit(f"worker {worker_args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def ratio_text(old: list[float], new: list[float]) -> str:
    """median(new) / median(old), [smallest, largest] ratio within one round."""
    paired = [b / a for a, b in zip(old, new, strict=True)]
    return (
        f"{statistics.median(new) / statistics.median(old):.3f} "
        f"[{min(paired):.2f}-{max(paired):.2f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="1569881", help="the baseline revision")
    parser.add_argument("--new", default="HEAD", help="the revision compared ('.': this checkout)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two versions")
    parser.add_argument("--models", default="mlp,lenet5,lenet5+state,resnet20,vgg16")
    parser.add_argument("--n", default=None, help="examples per model: 'mlp=256,vgg16=16'")
    parser.add_argument("--checkpoints", type=int, default=6, help="lenet5 checkpoints of the run")
    parser.add_argument("--run-n", type=int, default=128, help="the run's probe size")
    parser.add_argument("--only", choices=["ntk", "kernels"], default=None)
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (< 2 min)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker")
    parser.add_argument(
        "--inner", type=int, default=3, help="repeat and memo calls per process (fastest kept)"
    )
    parser.add_argument(
        "--count", action="store_true", help="also count aten calls per call (torch.profiler)"
    )
    # worker mode
    parser.add_argument("--worker", choices=["ntk", "kernels", "write"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--ckpts", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        args.n = int(args.n)
        worker_main(args)
        return

    sizes = dict(QUICK_SIZES if args.quick else SIZES)
    models = [m for m in args.models.split(",") if m]
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.checkpoints, args.run_n = min(args.checkpoints, 3), min(args.run_n, 32)
        if args.models == parser.get_default("models"):
            models = ["mlp", "lenet5", "lenet5+state"]
    for item in (args.n or "").split(","):
        if item:
            name, _, value = item.partition("=")
            sizes[name] = int(value)

    with tempfile.TemporaryDirectory(prefix="bench_versions_") as tmp:
        folder = Path(tmp)
        old_tree, old_name = extract(args.old, folder / "trees")
        new_tree, new_name = extract(args.new, folder / "trees")
        trees = {"old": old_tree, "new": new_tree}
        load_before = os.getloadavg()
        print(
            f"old {old_name}, new {new_name}; {args.threads} thread(s), {args.rounds} rounds, "
            f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f} "
            f"{load_before[2]:.2f}",
            flush=True,
        )
        ckpts = None
        if args.only in (None, "kernels"):
            ckpts = run_worker(
                ROOT,
                args.threads,
                [
                    "--worker",
                    "write",
                    "--folder",
                    str(folder / "run"),
                    "--checkpoints",
                    str(args.checkpoints),
                    "--n",
                    str(args.run_n),
                ],
                args.timeout,
            )["ckpts"]
        times: dict[tuple[str, str, str], dict[str, list[float]]] = {}
        counts: dict[tuple[str, str], dict[str, int] | None] = {}
        started = time.perf_counter()
        for round_ in range(args.rounds):
            order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
            jobs: list[tuple[str, list[str]]] = []
            if args.only in (None, "ntk"):
                jobs += [
                    (
                        model,
                        [
                            "--worker",
                            "ntk",
                            "--model",
                            model,
                            "--n",
                            str(sizes[model]),
                            "--save",
                            str(folder / f"{model}_{{version}}.pt"),
                            "--inner",
                            str(args.inner),
                            *(["--count"] if args.count else []),
                        ],
                    )
                    for model in models
                ]
            if ckpts is not None:
                jobs.append(("run", ["--worker", "kernels", "--ckpts", ckpts, "--n", "0"]))
            for label, worker_args in jobs:
                for version in order:
                    filled = [a.replace("{version}", version) for a in worker_args]
                    if label == "run":
                        filled += ["--store", str(folder / f"store_{version}_{round_}")]
                    result = run_worker(trees[version], args.threads, filled, args.timeout)
                    counts[(label, version)] = result.pop("counts", None)
                    for call, value in result.items():
                        if isinstance(value, dict):
                            slot = times.setdefault((label, call, version), {"wall": [], "cpu": []})
                            slot["wall"].append(value["wall"])
                            slot["cpu"].append(value["cpu"])
            print(f"round {round_ + 1}/{args.rounds} done ({time.perf_counter() - started:.0f} s)")
        load_after = os.getloadavg()

        print()
        header = (
            f"{'measurement':<36} {'old s':>9} {'new s':>9} {'wall new/old [spread]':>24} "
            f"{'CPU new/old [spread]':>24}"
        )
        print(header)
        print("-" * len(header))
        labels = [m for m in models if args.only in (None, "ntk")]
        labels += ["run"] if ckpts is not None else []
        for label in labels:
            calls = CALLS if label != "run" else ("kernels",)
            for call in calls:
                old, new = times[(label, call, "old")], times[(label, call, "new")]
                name = (
                    f"{label} n={sizes[label]} {call}"
                    if label != "run"
                    else f"kernels lenet5 x{args.checkpoints} n={args.run_n} per kernel"
                )
                print(
                    f"{name:<36} {statistics.median(old['wall']):>9.4f} "
                    f"{statistics.median(new['wall']):>9.4f} "
                    f"{ratio_text(old['wall'], new['wall']):>24} "
                    f"{ratio_text(old['cpu'], new['cpu']):>24}"
                )
        if args.only in (None, "ntk"):
            import torch

            print()
            for model in models:
                old_k = torch.load(folder / f"{model}_old.pt")
                new_k = torch.load(folder / f"{model}_new.pt")
                scale = old_k.abs().max().item()
                diff = (old_k - new_k).abs().max().item() / scale
                print(f"{model}: max |K_new - K_old| / max |K_old| = {diff:.2e}")
                if args.count:
                    old_c, new_c = counts[(model, "old")] or {}, counts[(model, "new")] or {}
                    print(
                        "  aten calls per call, old -> new: "
                        + ", ".join(f"{c} {old_c[c]} -> {new_c[c]}" for c in ("repeat", "memo"))
                    )
        print(
            f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
            f"medians of {args.rounds} alternations"
        )


if __name__ == "__main__":
    main()
