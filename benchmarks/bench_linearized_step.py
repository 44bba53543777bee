"""One linearized training step against one standard training step, same model and batch.

    python benchmarks/bench_linearized_step.py                 # lenet5 (digits), resnet20 (CIFAR)
    python benchmarks/bench_linearized_step.py --repeat 50 --threads 1

A step is forward, cross-entropy, backward and an SGD (momentum) update. The standard step runs
the model in training mode; the linearized step runs :class:`conetool.linearize.LinearizedModel`
around the same weights (its network is always evaluated in eval mode). Both are timed in the same
process, alternating, after warm-up; the median of ``--repeat`` steps is reported with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from conetool.linearize import LinearizedModel
from conetool.models import build_model
from conetool.spec import ModelSpec

WARMUP = 10  # the first linearized steps also build forward-AD kernels
CASES = {
    "lenet5": ((1, 8, 8), 64),  # the digits demo's model and batch
    "resnet20": ((3, 32, 32), 128),  # the paper's CIFAR-10 model and batch
}


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def measure(arch: str, repeat: int) -> tuple[float, float]:
    """Median seconds of a standard and of a linearized step."""
    shape, batch = CASES[arch]
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch=arch, num_classes=10), shape)
    lin = LinearizedModel(model)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    runs = {
        "standard": (model.train(), torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)),
        "linearized": (lin, torch.optim.SGD(lin.parameters(), lr=0.01, momentum=0.9)),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeat + WARMUP):
        for name in runs if i % 2 == 0 else reversed(list(runs)):
            net, opt = runs[name]
            began = time.perf_counter()
            _step(net, opt, x, y)
            if i >= WARMUP:  # warm-up steps are not counted
                times[name].append(time.perf_counter() - began)
    return statistics.median(times["standard"]), statistics.median(times["linearized"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat}")
    print(f"{'model':10} {'batch':>5} {'standard':>10} {'linearized':>11} {'ratio':>6}")
    for arch in args.models.split(","):
        standard, linear = measure(arch, args.repeat)
        batch = CASES[arch][1]
        print(
            f"{arch:10} {batch:5d} {standard * 1e3:8.1f}ms {linear * 1e3:9.1f}ms "
            f"{linear / standard:6.2f}"
        )


if __name__ == "__main__":
    main()
