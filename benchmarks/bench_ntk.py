"""Time conetool's eNTK engine against the torch.func tutorial's vmap(jacrev) contraction.

Every measurement runs in a fresh subprocess, so that its peak memory (``ru_maxrss``) is its own.
For each (model, n) the script measures the baseline once and the engine once per method
(``--methods``: ``structured``, the per-layer engine; ``jacobian``, the reference engine; ``auto``)
and ``--max-memory`` budget, checks that both give the same kernel, and prints one table: wall time, peak resident memory
of the process (and its growth during the call, after a small warm-up call), their ratios to the
baseline, and the ratio of the engine's time to a FLOP floor.

The FLOP floor is the matrix-multiply and convolution FLOPs that any Jacobian-contraction method
must do (counted with ``torch.utils.flop_counter`` on one example): one forward pass and ``c``
backward passes per example for the Jacobian, plus the contraction of the ``n(n+1)/2`` distinct
pairs of examples (``trace``: ``c·p`` multiply-adds per pair; ``full``: ``c²·p``; ``sum``: ``p``),
divided by the rate of a large float32 matrix product measured on this machine with the same
number of threads.

The baseline is the tutorial's ``empirical_ntk_jacobian_contraction``
(https://pytorch.org/tutorials/intermediate/neural_tangent_kernels.html), written out below. When
``x1 is x2`` it computes the Jacobian once (the tutorial computes it twice), which makes the baseline
faster and smaller than the tutorial's own code.

Examples::

    python benchmarks/bench_ntk.py --quick
    python benchmarks/bench_ntk.py                                   # the full suite
    python benchmarks/bench_ntk.py --models mlp --n 256 --methods structured,jacobian
    python benchmarks/bench_ntk.py --models resnet20 --n 1024 --max-memory auto,4GiB
    python benchmarks/bench_ntk.py --models vgg16 --n 500 --max-memory 8GiB --no-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {"mlp": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16": (3, 32, 32)}
DEFAULT_N = {"mlp": [64, 256], "lenet5": [256, 1024], "resnet20": [256, 1024], "vgg16": [8, 500]}
QUICK_N = {"mlp": [16], "lenet5": [64], "resnet20": [32], "vgg16": [2]}
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------------
# Worker side: one measurement per process


def build(name: str):
    import torch

    from conetool.models import lenet5, mlp, resnet20, vgg16

    factories = {"mlp": mlp, "lenet5": lenet5, "resnet20": resnet20, "vgg16": vgg16}
    torch.manual_seed(0)
    model = factories[name](SHAPES[name], NUM_CLASSES)
    # Non-trivial BatchNorm statistics, as in a trained checkpoint.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def empirical_ntk_jacobian_contraction(fnet_single, params, x1, x2, compute):
    """The torch.func tutorial's baseline (``compute``: full, trace; plus sum)."""
    import torch
    from torch.func import jacrev, vmap

    # Compute J(x1)
    jac1 = vmap(jacrev(fnet_single), (None, 0))(params, x1)
    jac1 = jac1.values()
    jac1 = [j.flatten(2) for j in jac1]

    # Compute J(x2); the tutorial always recomputes it, here it is reused when x2 is x1.
    if x2 is x1:
        jac2 = jac1
    else:
        jac2 = vmap(jacrev(fnet_single), (None, 0))(params, x2)
        jac2 = jac2.values()
        jac2 = [j.flatten(2) for j in jac2]

    # Compute J(x1) @ J(x2).T
    einsum_expr = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM", "sum": "Naf,Mbf->NM"}[compute]
    result = torch.stack(
        [torch.einsum(einsum_expr, j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]
    )
    result = result.sum(0)
    return result


def baseline(model, x, kind):
    from torch.func import functional_call

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def fnet_single(params, x):
        return functional_call(model, (params, buffers), (x.unsqueeze(0),)).squeeze(0)

    result = empirical_ntk_jacobian_contraction(fnet_single, params, x, x, kind)
    return result.permute(0, 2, 1, 3) if kind == "full" else result  # (n, c, n, c)


def engine(model, x, kind, max_memory, method):
    from conetool.ntk import empirical_ntk

    return empirical_ntk(model, x, kind=kind, max_memory=max_memory, device="cpu", method=method)


def worker(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.model)
    torch.manual_seed(1)
    x = torch.randn(args.n, *SHAPES[args.model])
    budget = None if args.budget == "auto" else args.budget

    def run(inputs):
        if args.method == "baseline":
            return baseline(model, inputs, args.kind)
        return engine(model, inputs, args.kind, budget, args.method)

    with torch.no_grad():
        if args.method != "baseline":
            from conetool import ntk_terms

            ntk_terms._blas()  # SciPy's BLAS, imported once per process on first use
        run(x[:2])  # warm-up: lazy imports and first-call costs
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start, cpu = time.perf_counter(), time.process_time()
        kernel = run(x)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(kernel.to(torch.float64).contiguous(), args.out)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak": peak, "before": before}))


# --------------------------------------------------------------------------------------------------
# Parent side: FLOP floor, measurements, table


def probe(model_name: str, kind: str, threads: int | None) -> dict:
    """Parameters, logits, forward and backward FLOPs of one example, and the matmul rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if threads:
        torch.set_num_threads(threads)
    model = build(model_name)
    x = torch.randn(1, *SHAPES[model_name])
    params = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False) as counter:
        out = model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(out[0, 0], params)
    backward = counter.get_total_flops()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return {
        "p": sum(p.numel() for p in params),
        "c": out.shape[1],
        "forward": forward,
        "backward": backward,
        "rate": 2 * 2048**3 / best,
    }


def floor_seconds(info: dict, n: int, kind: str) -> float:
    c, p = info["c"], info["p"]
    jacobian = n * (info["forward"] + (1 if kind == "sum" else c) * info["backward"])
    pairs = n * (n + 1) / 2
    per_pair = {"trace": c * p, "full": c * c * p, "sum": p}[kind]
    return (jacobian + 2 * pairs * per_pair) / info["rate"]


def measure(
    model: str, n: int, kind: str, method: str, budget: str, args, out: Path
) -> dict | None:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--models", model,
        "--n", str(n),
        "--kind", kind,
        "--method", method,
        "--budget", budget,
        "--out", str(out),
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {done.returncode}: {tail[0][:100]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_ram() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,lenet5,resnet20,vgg16")
    parser.add_argument("--n", default=None, help="comma-separated probe sizes (default per model)")
    parser.add_argument("--kind", default="trace", choices=["trace", "full", "sum"])
    parser.add_argument(
        "--max-memory",
        default="auto",
        help="comma-separated engine budgets, one engine row each (e.g. auto,4GiB)",
    )
    parser.add_argument(
        "--methods",
        default="structured",
        help="comma-separated engine methods, one row each per budget (structured, jacobian, auto)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="time the engine only")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per measurement, in alternating order; best kept",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    # Worker-only arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="structured", help=argparse.SUPPRESS)
    parser.add_argument("--budget", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.model, args.n = args.models, int(args.n)
        worker(args)
        return

    import torch

    sys.path.insert(0, str(ROOT))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SHAPES]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(SHAPES)}")
    budgets = [b.strip() for b in args.max_memory.split(",") if b.strip()]
    engine_methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    header = (
        f"{'model':<9} {'params':>10} {'n':>5} {'method':<20} {'time s':>8} {'x base':>7} {'cpu s':>8} "
        f"{'peak MiB':>9} {'growth':>8} {'x base':>7} {'floor s':>8} {'x floor':>8} {'rel err':>9}"
    )
    print(f"kind = {args.kind}, threads = {args.threads or torch.get_num_threads()}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            info = probe(model, args.kind, args.threads)
            sizes = (
                [int(v) for v in args.n.split(",")]
                if args.n
                else (QUICK_N if args.quick else DEFAULT_N)[model]
            )
            for n in sizes:
                floor = floor_seconds(info, n, args.kind)
                need = n * info["c"] * info["p"] * 4
                methods = [] if args.no_baseline else [("baseline", "baseline", "auto")]
                skipped = None
                if methods and 1.5 * need > 0.8 * available_ram():  # resnet20: peak 1.46 x J
                    skipped = f"skipped: needs about {1.5 * need / 2**30:.1f} GiB"
                    methods = []
                methods += [(f"{m} {b}", m, b) for m in engine_methods for b in budgets]
                results: dict[str, dict] = {}
                for rep in range(args.repeat):  # alternate the order, keep the fastest run
                    for label, method, budget in methods[:: -1 if rep % 2 else 1]:
                        out = Path(tmp, f"{label.replace(' ', '_')}.pt")
                        row = measure(model, n, args.kind, method, budget, args, out)
                        best = results.get(label)
                        if best is None or "error" in row or row["seconds"] < best["seconds"]:
                            if best is not None and "peak" in best and "peak" in row:
                                row["peak"] = max(row["peak"], best["peak"])
                            results[label] = row
                rows = [(label, results[label]) for label, _, _ in methods]
                if skipped:
                    rows.insert(0, ("baseline", {"error": skipped}))
                base = results.get("baseline")
                reference = (
                    torch.load(Path(tmp, "baseline.pt"))
                    if base is not None and "error" not in base
                    else None
                )
                for label, row in rows:
                    prefix = f"{model:<9} {info['p']:>10,} {n:>5} {label:<20}"
                    if "error" in row:
                        print(f"{prefix} {row['error']}")
                        continue
                    fast = slow = err = "-"
                    if reference is not None and label != "baseline":
                        fast = f"{row['seconds'] / base['seconds']:.2f}"
                        slow = f"{row['peak'] / base['peak']:.2f}"
                        kernel = torch.load(Path(tmp, f"{label.replace(' ', '_')}.pt"))
                        err = f"{float((kernel - reference).norm() / reference.norm()):.1e}"
                    print(
                        f"{prefix} {row['seconds']:>8.2f} {fast:>7} {row['cpu']:>8.1f} "
                        f"{row['peak'] / 2**20:>9.0f} "
                        f"{(row['peak'] - row['before']) / 2**20:>8.0f} {slow:>7} {floor:>8.2f} "
                        f"{row['seconds'] / floor:>8.1f} {err:>9}"
                    )
                sys.stdout.flush()
    print(
        "\ntime: wall seconds; cpu: CPU seconds of all threads (steadier on a shared machine). "
        "peak: the process's peak resident memory (ru_maxrss); growth: its increase during the "
        "timed call, after a warm-up call on 2 examples (the largest over --repeat runs; times are "
        "the fastest). x base: ratio to the baseline. floor: "
        "FLOPs of the Jacobians and of the contraction of distinct pairs, over the measured "
        f"float32 matmul rate ({info['rate'] / 1e9:.0f} GFLOP/s for the last model's run)."
    )


if __name__ == "__main__":
    main()
