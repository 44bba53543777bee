"""Where one eNTK call's time goes on the CPU: rows, panel copies, contraction, and the page faults.

One call of ``empirical_ntk`` (trace kernel by default) on a built-in model with random weights,
timed by part: the engine computing rows (``rows``), the copies of a call's rows into a panel
(``copies``), and the contraction (``contraction``: the self-products of the panels and the
products with streamed blocks). Beside them: the minor page faults and the system CPU time of
the call (``getrusage``), and the process's peak resident memory.

Each configuration runs in a fresh process, alternating, ``--repeat`` times (the fastest run is
kept): with conetool's allocator setting (``kept heap``: :func:`conetool.heap.kept_freed_memory`,
what every call uses on Linux) and without it (``glibc default``: the setting switched off), so
the table shows what that setting saves beside the engine's own parts. Example::

    python benchmarks/bench_ntk_parts.py --model resnet20 --n 1024 --method jacobian --max-memory 4GiB
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ntk import MARK  # the worker's result line, as bench_ntk.py's workers write it


def worker(args: argparse.Namespace) -> None:
    import torch
    from bench_ntk import SHAPES, build

    from conetool import heap, ntk, ntk_schedule, ntk_terms
    from conetool.ntk_reference import JacobianRows
    from conetool.ntk_structured import StructuredRows

    if not args.kept:
        heap.applies = lambda: False  # glibc's own behaviour
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = {"rows": 0.0, "copies": 0.0, "contraction": 0.0}

    def timed(owner: object, name: str, part: str) -> None:
        original = getattr(owner, name)

        def wrapper(*a: object, **k: object) -> object:
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                parts[part] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(JacobianRows, "rows", "rows")
    timed(StructuredRows, "rows", "rows")
    timed(ntk_terms, "write", "copies")
    for name in ("_add_self", "_add_block", "_add_cross"):
        timed(ntk_schedule, name, "contraction")
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

    call(x[:2])  # warm-up: lazy imports and first-call costs
    for part in parts:
        parts[part] = 0.0
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    call(x)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "seconds": seconds,
        **parts,
        "faults": after.ru_minflt - before.ru_minflt,
        "system": after.ru_stime - before.ru_stime,
        "peak": after.ru_maxrss * 1024,
    }
    print(MARK + json.dumps(result))


def measure(args: argparse.Namespace, kept: bool) -> dict:
    command = [sys.executable, __file__, "--worker", *(["--kept"] if kept else [])]
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
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kept", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    labels = {True: "kept heap", False: "glibc default"}
    best: dict[bool, dict] = {}
    for rep in range(args.repeat):
        for kept in (True, False)[:: -1 if rep % 2 else 1]:
            row = measure(args, kept)
            if kept not in best or "error" in row or row["seconds"] < best[kept]["seconds"]:
                best[kept] = row
    print(
        f"{args.model} n = {args.n}, {args.kind}, --method {args.method}, "
        f"--max-memory {args.max_memory}; fastest of {args.repeat}"
    )
    header = (
        f"{'malloc':<14} {'total s':>8} {'rows s':>7} {'copies s':>9} {'contraction s':>14} "
        f"{'faults':>10} {'system s':>9} {'peak MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for kept in (True, False):
        row = best[kept]
        if "error" in row:
            print(f"{labels[kept]:<14} {row['error']}")
            continue
        print(
            f"{labels[kept]:<14} {row['seconds']:>8.2f} {row['rows']:>7.2f} {row['copies']:>9.2f} "
            f"{row['contraction']:>14.2f} {row['faults']:>10,} {row['system']:>9.2f} "
            f"{row['peak'] / 2**20:>9.0f}"
        )


if __name__ == "__main__":
    main()
