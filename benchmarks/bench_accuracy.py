"""float32 eNTK accuracy against float64 explicit Jacobians, and the speed cost of the accuracy fixes.

For each built-in model (full size: mlp 784-512-512-10, lenet5 and lenet_300_100 on 1x28x28,
resnet20 and vgg16 on 3x32x32; 10 classes; random weights; BatchNorm statistics fresh and from
training, i.e. set by a few train-mode forward passes), each engine (``structured``, ``jacobian``)
and kind (``trace``, ``full``, ``sum``), the script prints the relative Frobenius error of the
float32 kernel of ``--n`` examples against the float64 explicit Jacobian kernel, with the accuracy
fixes of :mod:`conetool.ntk_precision` on ("after") and off ("before"), and which engine
``method="auto"`` picks.

The reference is the float64 Jacobian ``J`` ``(n·c, p)`` of the same weights cast to float64, from
``torch.func.jacrev`` ``vmap``-ed over the examples, formed a group of parameter tensors at a time
(at most ``--reference-memory`` of Jacobian per group) and contracted into ``J Jᵀ`` in float64;
the trace and sum kernels are the logit trace and logit sum of that full kernel.

Then the speed of each engine before and after the fixes: trace kernels of ``--speed-n`` examples,
before and after alternating in the same process, ``--repeat`` times each, the fastest kept, and
their ratio (after / before).

Examples::

    python benchmarks/bench_accuracy.py                       # CPU, every model (a few minutes)
    python benchmarks/bench_accuracy.py --device cuda         # on a GPU
    python benchmarks/bench_accuracy.py --models resnet20 --n 8 --speed-n 64 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from conetool import ntk_precision, ntk_schedule
from conetool.models import lenet5, lenet_300_100, mlp, resnet20, vgg16
from conetool.ntk import empirical_ntk
from conetool.ntk_reference import JacobianRows

MODELS = {
    "mlp": (lambda: mlp((1, 28, 28), 10), (1, 28, 28)),
    "lenet5": (lambda: lenet5((1, 28, 28), 10), (1, 28, 28)),
    "lenet_300_100": (lambda: lenet_300_100((1, 28, 28), 10), (1, 28, 28)),
    "resnet20": (lambda: resnet20((3, 32, 32), 10), (3, 32, 32)),
    "vgg16": (lambda: vgg16((3, 32, 32), 10), (3, 32, 32)),
}
KINDS = ("trace", "full", "sum")
METHODS = ("structured", "jacobian")


def build(name: str, bn: str) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    if bn == "trained":  # running statistics from a few train-mode passes on shifted inputs
        model.train()
        with torch.no_grad():
            for _ in range(4):
                model(1.5 * torch.randn(16, *shape) + 0.3)
    return model.eval(), shape


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def reference(model: nn.Module, x: torch.Tensor, device: torch.device, memory: int) -> torch.Tensor:
    """The float64 full kernel ``(n, c, n, c)`` from explicit Jacobians, a group of parameters at
    a time."""
    model64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    params = {k: v.detach() for k, v in model64.named_parameters() if v.requires_grad}
    buffers = dict(model64.named_buffers())
    x64 = x.to(device=device, dtype=torch.float64)
    n = x.shape[0]
    with torch.no_grad():
        c = model64(x64[:1]).numel()
    groups: list[list[str]] = [[]]
    size = 0
    for name, p in params.items():
        if groups[-1] and size + n * c * p.numel() * 8 > memory:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n * c * p.numel() * 8
    full = torch.zeros(n * c, n * c, dtype=torch.float64, device=device)
    for group in groups:
        fixed = {k: v for k, v in params.items() if k not in group}
        chosen = {k: params[k] for k in group}

        def f(p: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
            state = {**fixed, **p, **buffers}  # noqa: B023 - used within this iteration
            return functional_call(model64, state, (example.unsqueeze(0),)).reshape(-1)

        with torch.no_grad():
            jac = vmap(jacrev(f), (None, 0))(chosen, x64)
        rows = torch.cat([j.reshape(n * c, -1) for j in jac.values()], dim=1)
        del jac
        full += rows @ rows.T
        del rows
    return full.view(n, c, n, c).cpu()


def kinds_of(full: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "trace": torch.einsum("iaja->ij", full),
        "full": full,
        "sum": full.sum(dim=(1, 3)),
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def auto_choice(model: nn.Module, x: torch.Tensor, device: torch.device) -> str:
    """The engine ``method="auto"`` picks for ``model`` on ``x``."""
    picked: list[str] = []
    original = ntk_schedule.plan

    def spy(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        picked.append("jacobian" if isinstance(source, JacobianRows) else "structured")
        return original(source, *args, **kwargs)

    ntk_schedule.plan = spy
    try:
        empirical_ntk(model, x, device=device)
    finally:
        ntk_schedule.plan = original
    return picked[-1]


def timed(call) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--n", type=int, default=8, help="examples for the accuracy table")
    parser.add_argument("--speed-n", type=int, default=32, help="examples for the speed table")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:k")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each, fastest kept")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--reference-memory", type=float, default=2.0, help="GiB of float64 Jacobian per group"
    )
    parser.add_argument("--no-speed", action="store_true", help="only the accuracy table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [m for m in args.models.split(",") if m]
    memory = int(args.reference_memory * 2**30)

    print(
        f"float32 against float64 explicit Jacobians, n = {args.n}, device {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. "
        "Cells: after the fixes (before).\n"
    )
    header = [f"{m} {k}" for m in METHODS for k in KINDS]
    print("| model | BatchNorm | " + " | ".join(header) + " | auto picks |")
    print("| --- | --- | " + " | ".join("---" for _ in header) + " | --- |")
    worst = 0.0
    for name in names:
        for bn in ("fresh", "trained"):
            model, shape = build(name, bn)
            if bn == "trained" and not has_batchnorm(model):
                continue
            torch.manual_seed(1)
            x = torch.randn(args.n, *shape)
            expected = kinds_of(reference(model, x, device, memory))
            cells = []
            for method in METHODS:
                for kind in KINDS:
                    errors = {}
                    for on in (True, False):
                        with ntk_precision.accurate(on):
                            kernel = empirical_ntk(
                                model, x, kind=kind, method=method, device=device
                            )
                        errors[on] = rel(kernel, expected[kind])
                    worst = max(worst, errors[True])
                    cells.append(f"{errors[True]:.1e} ({errors[False]:.1e})")
            label = bn if has_batchnorm(model) else "-"
            picks = auto_choice(model, x, device)
            print(f"| {name} | {label} | " + " | ".join(cells) + f" | {picks} |", flush=True)
    print(f"\nLargest error after the fixes: {worst:.1e}.")
    if args.no_speed:
        return

    print(
        f"\nSpeed: trace kernel of n = {args.speed_n}, float32, device {device}, "
        f"fastest of {args.repeat} runs each, before and after alternating.\n"
    )
    print("| model | engine | before (s) | after (s) | after / before |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        model, shape = build(name, "trained")
        torch.manual_seed(1)
        x = torch.randn(args.speed_n, *shape)
        for method in METHODS:
            empirical_ntk(model, x[:2], method=method, device=device)  # warm-up
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeat):
                for on in (False, True):
                    with ntk_precision.accurate(on):
                        times[on].append(
                            timed(lambda: empirical_ntk(model, x, method=method, device=device))  # noqa: B023
                        )
            before, after = min(times[False]), min(times[True])
            print(
                f"| {name} | {method} | {before:.2f} | {after:.2f} | {after / before:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
