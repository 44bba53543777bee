"""What the engine memo saves per kernel: ``empirical_ntk`` with and without an ``EngineMemo``.

In a ``conetool kernels`` run every checkpoint has the same architecture and probe set, so the
independence check, the structured engine's set-up (its gradient check and measurements) and
``auto``'s choice of engine need to run once (:mod:`conetool.ntk_memo`). For each model the script
computes the trace kernel of n random examples with a memo that has seen the model once, and
without one, alternating, ``--repeat`` times each (the fastest is kept), and prints their ratio;
then the number of aten calls of one kernel each way (``torch.profiler``, CPU activity), the
launch count's direction on a GPU.

Examples::

    python benchmarks/bench_memo.py                     # mlp and lenet5 at n = 64, resnet20 at 16
    python benchmarks/bench_memo.py --device cuda --n 1024
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from conetool.models import lenet5, mlp, resnet20
from conetool.ntk import EngineMemo, empirical_ntk

MODELS = {
    "mlp": (mlp, (1, 28, 28), 64),
    "lenet5": (lenet5, (1, 28, 28), 64),
    "resnet20": (resnet20, (3, 32, 32), 16),
}


def timed(
    model: torch.nn.Module, x: torch.Tensor, device: torch.device, memo: EngineMemo | None
) -> float:
    """Seconds of one trace kernel (synchronised on a GPU)."""
    began = time.perf_counter()
    empirical_ntk(model, x, device=device, memo=memo)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--n", type=int, default=None, help="examples (default per model)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    activities = [ProfilerActivity.CPU]
    print(f"device {device}, {args.threads} thread(s), torch {torch.__version__}; trace kernels")
    print("| model | n | engine | with memo | without | ratio | aten calls with / without |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        factory, shape, default_n = MODELS[name]
        n = args.n or default_n
        torch.manual_seed(0)
        model = factory(shape, 10)
        x = torch.randn(n, *shape)
        memo = EngineMemo()
        empirical_ntk(model, x, device=device, memo=memo)  # the memo sees the model once

        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeat):
            for use in (True, False):
                times[use].append(timed(model, x, device, memo if use else None))
        ops = {}
        for use in (True, False):
            with profile(activities=activities) as prof:
                empirical_ntk(model, x, device=device, memo=memo if use else None)
            ops[use] = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        fast = {use: min(t) for use, t in times.items()}
        print(
            f"| {name} | {n} | {memo.engines()[0]} | {fast[True]:.3f} s | {fast[False]:.3f} s | "
            f"{fast[True] / fast[False]:.2f} | {ops[True]:,} / {ops[False]:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
