"""Where one eNTK call's time goes on the CPU: rows, panel copies, contraction, and the page faults.

One call of ``empirical_ntk`` (trace kernel by default) on a built-in model with random weights,
timed by part: the engine computing rows (``rows``), the copies of a call's rows into a panel
(``copies``), and the contraction (``contraction``: the self-products of the panels and the
products with streamed blocks). Beside them: the minor page faults and the system CPU time of
the call (``getrusage``), and the process's peak resident memory.

Each configuration runs in a fresh process, alternating, ``--repeat`` times (the fastest run is
kept): with conetool's allocator setting (``kept heap``: :func:`conetool.heap.kept_freed_memory`,
what every call uses on Linux) and without it (``glibc default``: the setting switched off), so
the table shows what that setting saves beside the engine's own parts. With ``--baseline`` a third
process per repeat times the torch.func tutorial's baseline (``bench_ntk.py``'s, glibc's default
malloc as there) by its two halves: its Jacobian (``vmap(jacrev)`` over all examples at once, the
``rows`` column) and its contraction (one einsum per parameter tensor). Below the table, for the
trace kernel: each line's rows per example and logit, and its contraction's rate (the engine's
counting the FLOPs of the distinct pairs, ``n(n+1)/2``, which BLAS ``syrk`` computes; the
baseline's every pair, ``n²``, which its einsum computes), and, in a fourth process, the rates of
the BLAS routines on this CPU for the contraction's shape: torch's float32 matrix product (MKL,
what the einsum runs), the two ``ssyrk`` the engine can run (:mod:`conetool.blas_syrk`: SciPy's,
and PyTorch's MKL's where it has one), and the triangle as torch products of four row blocks,
each with itself and the blocks after it, on an ``(n, 131,072)`` float32 matrix times its
transpose, in pieces of 32,768 columns as the engine takes them (``--probe-only``: the probe
alone). ``--syrk scipy`` adds a line: the engine with its syrk through SciPy's BLAS (the default
is :func:`conetool.blas_syrk.backend`'s choice). Example::

    python benchmarks/bench_ntk_parts.py --model resnet20 --n 1024 --method jacobian --max-memory 4GiB --baseline
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ntk import MARK  # the worker's result line, as bench_ntk.py's workers write it

from conetool.peak_memory import peak_resident_memory


def cpu_vendor() -> str | None:
    """The CPU's vendor as Linux names it (``vendor_id`` in ``/proc/cpuinfo``: ``"GenuineIntel"``,
    ``"AuthenticAMD"``, ...), None where it is not known (another system, no such line)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            return vendor_in(info)
    except OSError:
        return None


def vendor_in(lines: Iterable[str]) -> str | None:
    """The first ``vendor_id`` of ``/proc/cpuinfo``'s ``lines``, None when there is none."""
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == "vendor_id" and value.strip():
            return value.strip()
    return None


def timed(owner: object, name: str, parts: dict[str, float], part: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds each call's seconds to ``parts[part]``."""
    original = getattr(owner, name)

    def wrapper(*a: object, **k: object) -> object:
        start = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            parts[part] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def worker(args: argparse.Namespace) -> None:
    if args.baseline_worker:
        baseline_worker(args)
        return
    if args.probe_worker:
        probe_worker(args)
        return
    import torch
    from bench_ntk import SHAPES, build

    from conetool import heap, ntk, ntk_schedule, ntk_terms
    from conetool.ntk_reference import JacobianRows
    from conetool.ntk_structured import StructuredRows

    if args.syrk_worker:  # the contraction's syrk through this BLAS (see --syrk)
        from conetool import blas_syrk

        blas_syrk.backend = lambda: args.syrk_worker
    if not args.kept:
        heap.applies = lambda: False  # glibc's own behaviour
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {"rows": 0.0, "copies": 0.0, "contraction": 0.0}
    timed(JacobianRows, "rows", parts, "rows")
    timed(StructuredRows, "rows", parts, "rows")
    timed(ntk_terms, "write", parts, "copies")
    for name in ("_add_self", "_add_block", "_add_cross"):
        timed(ntk_schedule, name, parts, "contraction")
    model = build(args.model)
    torch.manual_seed(1)
    x = torch.randn(args.n, *SHAPES[args.model])

    def call(inputs: torch.Tensor) -> torch.Tensor:
        return ntk.empirical_ntk(
            model,
            inputs,
            kind=args.kind,
            max_memory=args.max_memory,
            device="cpu",
            method=args.method,
        )

    measured(call, model, x, parts)


def measured(call: Any, model: Any, x: Any, parts: dict[str, float]) -> None:
    """Time ``call(x)`` after a warm-up call on two examples (lazy imports and first-call costs),
    with ``parts`` counted from zero, and print the result line (:func:`report`)."""
    call(x[:2])
    for part in parts:
        parts[part] = 0.0
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    call(x)
    report(
        parts,
        start,
        before,
        sum(p.numel() for p in model.parameters()),
        outputs_per_example(model, x),
    )


def report(
    parts: dict[str, float], start: float, before: resource.struct_rusage, params: int, logits: int
) -> None:
    """Print a worker's result line: the call's seconds since ``start``, its ``parts``, page faults
    and system time since ``before``, the process's peak memory, the model's parameter and logit
    counts."""
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "seconds": seconds,
        **parts,
        "faults": after.ru_minflt - before.ru_minflt,
        "system": after.ru_stime - before.ru_stime,
        "peak": peak_resident_memory(),
        "params": params,
        "logits": logits,
    }
    print(MARK + json.dumps(result))


def baseline_worker(args: argparse.Namespace) -> None:
    """The baseline's call (``bench_ntk.baseline``) timed by its halves: Jacobian and contraction."""
    import bench_ntk
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {"rows": 0.0, "copies": 0.0, "contraction": 0.0}
    timed(bench_ntk, "baseline_jacobians", parts, "rows")
    timed(bench_ntk, "baseline_contraction", parts, "contraction")
    model = bench_ntk.build(args.model)
    torch.manual_seed(1)
    x = torch.randn(args.n, *bench_ntk.SHAPES[args.model])
    measured(lambda inputs: bench_ntk.baseline(model, inputs, args.kind), model, x, parts)


def probe_worker(args: argparse.Namespace) -> None:
    """The float32 rates of torch's matrix product, of SciPy's ``ssyrk``, of the triangle as
    torch products of four row blocks and of PyTorch's MKL's ``ssyrk`` (where it has one), on an
    ``(n, 131072)`` matrix times its transpose, in pieces of 32,768 columns (the best of three;
    GFLOP/s of the FLOPs of the whole product, ``2·n²·w``, for the product, of the distinct
    pairs, ``n²·w``, for the others)."""
    import torch

    from conetool import blas_syrk

    if args.threads:
        torch.set_num_threads(args.threads)
    width, step = 131072, 32768
    mat = torch.randn(args.n, width, generator=torch.Generator().manual_seed(0))

    def product() -> None:
        out = torch.zeros(args.n, args.n, dtype=torch.float64)
        for lo in range(0, width, step):
            piece = mat[:, lo : lo + step]
            out += (piece @ piece.T).double()

    def best(call: object) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            call()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return min(times)

    def triangle(blocks: int = 4) -> None:
        out = torch.zeros(args.n, args.n, dtype=torch.float64)
        rows = -(-args.n // blocks)
        for lo in range(0, width, step):
            piece = mat[:, lo : lo + step]
            for top in range(0, args.n, rows):
                block = piece[top : top + rows]
                out[top : top + rows, top:] += (block @ piece[top:].T).double()

    flops = 2 * args.n * args.n * width
    result = {
        "matmul": flops / best(product),
        "syrk": flops / 2 / best(lambda: blas_syrk.gram(mat, step, using="scipy")),
        "triangle": flops / 2 / best(triangle),
    }
    if blas_syrk._mkl_routines() is not None:
        result["mkl"] = flops / 2 / best(lambda: blas_syrk.gram(mat, step, using="mkl"))
    print(MARK + json.dumps(result))


def outputs_per_example(model: object, x: object) -> int:
    """The model's outputs per example."""
    import torch

    with torch.no_grad():
        return int(model(x[:1]).shape[-1])  # type: ignore[operator,index]


def measure(
    args: argparse.Namespace,
    kept: bool,
    baseline: bool = False,
    probe: bool = False,
    syrk: str | None = None,
) -> dict:
    command = [sys.executable, __file__, "--worker", *(["--kept"] if kept else [])]
    command += ["--syrk-worker", syrk] if syrk else []
    command += ["--baseline-worker"] if baseline else []
    command += ["--probe-worker"] if probe else []
    for flag in ("model", "n", "method", "max_memory", "kind", "threads"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="resnet20", choices=["mlp", "lenet5", "resnet20", "vgg16"]
    )
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--method", default="auto", choices=["auto", "structured", "jacobian"])
    parser.add_argument("--max-memory", default="4GiB")
    parser.add_argument("--kind", default="trace", choices=["trace", "full", "sum"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time the torch.func baseline's Jacobian and contraction (a third process)",
    )
    parser.add_argument(
        "--probe-only", action="store_true", help="only the BLAS probe (no eNTK is computed)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kept", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--syrk-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--syrk",
        default=None,
        choices=["mkl", "scipy"],
        help="also run the engine (kept heap) with its contraction's syrk through this BLAS "
        "(conetool.blas_syrk: PyTorch's MKL or SciPy's), one more line",
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.probe_only:
        print(probe_line(args))
        return
    labels = {"kept": "kept heap", "glibc": "glibc default", "baseline": "baseline"}
    configs = ["kept", "glibc", *(["baseline"] if args.baseline else [])]
    if args.syrk:
        labels["syrk"] = f"{args.syrk} syrk"
        configs.insert(1, "syrk")
    best: dict[str, dict] = {}
    for rep in range(args.repeat):
        for config in configs[:: -1 if rep % 2 else 1]:
            row = measure(
                args,
                config in ("kept", "syrk"),
                baseline=config == "baseline",
                syrk=args.syrk if config == "syrk" else None,
            )
            if config not in best or "error" in row or row["seconds"] < best[config]["seconds"]:
                best[config] = row
    from conetool import blas_syrk

    print(
        f"{args.model} n = {args.n}, {args.kind}, --method {args.method}, "
        f"--max-memory {args.max_memory}; fastest of {args.repeat}; CPU vendor "
        f"{cpu_vendor()}, the engine's syrk through {blas_syrk.backend()} by default"
    )
    header = (
        f"{'run':<14} {'total s':>8} {'rows s':>7} {'copies s':>9} {'contraction s':>14} "
        f"{'faults':>10} {'system s':>9} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for config in configs:
        row = best[config]
        if "error" in row:
            print(f"{labels[config]:<14} {row['error']}")
            continue
        print(
            f"{labels[config]:<14} {row['seconds']:>8.2f} {row['rows']:>7.2f} {row['copies']:>9.2f} "
            f"{row['contraction']:>14.2f} {row['faults']:>10,} {row['system']:>9.2f} "
            f"{row['peak'] / 2**20:>9.0f}"
        )
    if args.kind == "trace":
        print(rates(args.n, best, labels))
    if args.baseline:
        print(probe_line(args))


def rates(n: int, best: dict[str, dict], labels: dict[str, str]) -> str:
    """For the trace kernel: each line's rows per example and logit, and its contraction's rate
    (distinct pairs for the engine, every pair for the baseline)."""
    lines = []
    for config, row in best.items():
        if "error" in row or not row["rows"] or not row["contraction"]:
            continue
        width = row["logits"] * row["params"]  # values per example's row
        pairs = n * n if config == "baseline" else n * (n + 1) / 2
        flops = 2 * pairs * width
        lines.append(
            f"{labels[config]}: rows {row['rows'] / (row['logits'] * n) * 1e3:.2f} ms per example "
            "and logit, "
            f"contraction {flops / row['contraction'] / 1e9:.0f} GFLOP/s "
            f"({flops / 1e12:.2f} TFLOP, {'every pair' if config == 'baseline' else 'distinct pairs'})"
        )
    return "\n".join(lines)


def probe_line(args: argparse.Namespace) -> str:
    """The BLAS probe's line (:func:`probe_worker`, in a fresh process)."""
    probe = measure(args, kept=False, probe=True)
    if "error" in probe:
        return f"BLAS probe: {probe['error']}"
    mkl = f", PyTorch's MKL's ssyrk {probe['mkl'] / 1e9:.0f} GFLOP/s" if "mkl" in probe else ""
    return (
        f"BLAS probe, {args.n:,} x 131,072 float32 times its transpose in pieces of 32,768 "
        f"columns: torch's product {probe['matmul'] / 1e9:.0f} GFLOP/s, SciPy's ssyrk "
        f"{probe['syrk'] / 1e9:.0f} GFLOP/s, the triangle as torch products of four row blocks "
        f"{probe['triangle'] / 1e9:.0f} GFLOP/s{mkl} (all but the first: FLOPs of the distinct "
        "pairs)"
    )


if __name__ == "__main__":
    main()
