"""What one call of an eNTK engine's row source costs, by the call's size, and where its time goes.

The engine computes a kernel's rows in calls of ``b`` examples and ``g`` logits (the schedule
chooses both from the memory budget: ResNet-20 at n = 1024 under 4 GiB takes calls of 38 examples
and 3 logits). This script builds the engine as :func:`conetool.ntk.empirical_ntk` does (the same
forward function, set-up and context: eval mode, no gradients outside the engine, the kept heap),
then, instead of computing the kernel, times the row source's calls for each ``b`` and ``g`` given:
the fastest of ``--repeat`` calls, in milliseconds per example and logit. With ``--profile B,G``
it also prints ``torch.profiler``'s table of one call of that size (three calls, by operator,
sorted by self CPU time) and each operator's share of the calls' time.

Examples::

    python benchmarks/bench_ntk_rows.py --model resnet20 --method jacobian --examples 16,38,76,152 --logits 3,10
    python benchmarks/bench_ntk_rows.py --model resnet20 --method structured --examples 38 --logits 3 --profile 38,3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def measure(source: object, c: int, args: argparse.Namespace) -> None:
    """Time (and profile) the calls of ``source``, a row source with ``c`` logits."""
    import torch

    eye = torch.eye(c)
    print(f"{'examples':>8} {'logits':>6} {'call s':>8} {'ms per example and logit':>25}")
    for b in args.examples:
        for g in args.logits:
            cot = eye[:g]
            source.rows(cot, 0, b)  # type: ignore[attr-defined]  # warm-up
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                rows = source.rows(cot, 0, b)  # type: ignore[attr-defined]
                best = min(best, time.perf_counter() - start)
                del rows
            print(f"{b:>8} {g:>6} {best:>8.3f} {best / (b * g) * 1e3:>25.2f}", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        b, g = args.profile
        cot = eye[:g]
        source.rows(cot, 0, b)  # type: ignore[attr-defined]
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(3):
                source.rows(cot, 0, b)  # type: ignore[attr-defined]
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"\ntorch.profiler, 3 calls of {b} examples and {g} logits, by operator:")
        for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            share = event.self_cpu_time_total / total
            print(f"  {event.key:<45} {share:>6.1%} of self CPU time, {event.count:>6} calls")
        grouped = prof.key_averages(group_by_input_shape=True)
        print(
            grouped.table(
                sort_by="self_cpu_time_total",
                row_limit=args.top,
                max_name_column_width=40,
                max_shapes_column_width=100,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="resnet20", choices=["mlp", "lenet5", "resnet20", "vgg16"]
    )
    parser.add_argument("--method", default="jacobian", choices=["jacobian", "structured"])
    parser.add_argument("--kind", default="trace", choices=["trace", "full", "sum"])
    parser.add_argument("--examples", default="16,38,76", help="comma-separated examples per call")
    parser.add_argument("--logits", default="3,10", help="comma-separated logits per call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--profile", default=None, help="B,G: profile calls of B examples, G logits"
    )
    parser.add_argument("--top", type=int, default=20, help="operators in the profile")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    args.examples = [int(v) for v in args.examples.split(",")]
    args.logits = [int(v) for v in args.logits.split(",")]
    if args.profile:
        args.profile = tuple(int(v) for v in args.profile.split(","))

    import torch
    from bench_ntk import SHAPES, build

    from conetool import ntk, ntk_schedule

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.model)
    torch.manual_seed(1)
    n = max([*args.examples, *(args.profile[:1] if args.profile else ())])
    x = torch.randn(n, *SHAPES[args.model])

    def run_instead(
        source: object, schedule: object, kind: str, n: int, c: int, *rest: object, **kw: object
    ) -> torch.Tensor:
        measure(source, c, args)
        per = c if kind == "full" else 1
        return torch.zeros(n * per, n * per, dtype=torch.float64)

    ntk_schedule.run = run_instead  # type: ignore[assignment]
    print(
        f"{args.model}, --method {args.method}, {args.kind} kernel, "
        f"{torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
    )
    ntk.empirical_ntk(model, x, kind=args.kind, device="cpu", method=args.method, check=False)


if __name__ == "__main__":
    main()
