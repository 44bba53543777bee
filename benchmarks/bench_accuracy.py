"""float32 eNTK accuracy against float64 explicit Jacobians, and the speed cost of the accuracy fixes.

For each built-in model (full size: mlp 784-512-512-10, lenet5 and lenet_300_100 on 1x28x28,
resnet20 and vgg16 on 3x32x32; 10 classes; random weights; BatchNorm statistics fresh and from
training, i.e. set by a few train-mode forward passes), each engine (``structured``, ``jacobian``)
and kind (``trace``, ``full``, ``sum``), the script prints the relative Frobenius error of the
float32 kernel of ``--n`` examples against the float64 explicit Jacobian kernel, with the accuracy
fixes of :mod:`conetool.ntk_precision` on ("after") and off ("before"), and which engine
``method="auto"`` picks.

Beside the errors, each (model, BatchNorm) row counts the ReLU inputs within float32 rounding of
zero (:func:`relu_kinks`): the float32 network is discontinuous in its gradient there, and which
side of the kink a float32 forward pass lands on is chance, so no engine can promise 1e-6 for the
examples with such a unit. A cell above 1e-6 in a row with a count is marked with a dagger, and
the last column lists the ReLU inputs that a float32 pass (batched, or ``vmap``-ed per example as
the reference engine runs it) actually puts on the other side of zero from float64.

The reference is the float64 Jacobian ``J`` ``(n·c, p)`` of the same weights cast to float64, from
``torch.func.jacrev`` ``vmap``-ed over the examples, formed a group of parameter tensors at a time
(at most ``--reference-memory`` of Jacobian per group) and contracted into ``J Jᵀ`` in float64;
the trace and sum kernels are the logit trace and logit sum of that full kernel.

On a CPU the script first says whether oneDNN's float32 convolutions are exact on it
(:func:`conetool.ntk_precision.onednn_exact`, with both errors): where they are, the structured
engine keeps oneDNN and its "after" equals its "before" in that respect.

Then the speed of each engine before and after the fixes: trace kernels of ``--speed-n`` examples,
before and after alternating in the same process, ``--repeat`` times each, the fastest kept, and
their ratio (after / before).

Examples::

    python benchmarks/bench_accuracy.py                       # CPU, every model (a few minutes)
    python benchmarks/bench_accuracy.py --device cuda         # on a GPU
    python benchmarks/bench_accuracy.py --models resnet20 --n 8 --speed-n 64 --threads 1
    python benchmarks/bench_accuracy.py --no-accuracy --models vgg16 --speed-n 8   # speed only
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.overrides import TorchFunctionMode

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


RELUS = (
    torch.nn.functional.relu,
    torch.nn.functional.relu_,
    torch.relu,
    torch.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
)
KINK_FACTOR = 4.0


class ReluInputs(TorchFunctionMode):
    """Records (a detached copy of) the input of every ReLU call in the pass it is active for.

    ``nn.ReLU`` calls ``F.relu``, so it is caught with the functional calls; the in-place variants
    are copied before they overwrite their input. Only the outermost call is seen (torch disables
    the mode inside its handler), so an ``F.relu`` that calls ``torch.relu`` is recorded once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in RELUS:
            self.inputs.append(args[0].detach().clone())
        return func(*args, **(kwargs or {}))


class Kinks(NamedTuple):
    """What :func:`relu_kinks` measured."""

    count: int  # ReLU inputs with |a64| <= bound
    examples: list[int]  # the examples that hold them
    closest: float  # the smallest |a64| / bound over every ReLU input
    crossed: list[str]  # "route, ReLU call, example" of each input a float32 pass puts across 0
    routes: set[str]  # the routes with a crossing: "batched" (structured), "vmap" (jacobian)
    values: list[str]  # each crossing's float64 and float32 values and its layer's float32 error


def relu_inputs(model: nn.Module, x: torch.Tensor, per_example: bool = False) -> list[torch.Tensor]:
    """Every ReLU input of ``model`` on ``x``: one batched forward pass, or (``per_example``) a
    ``vmap`` over the examples of a forward pass of one, as the reference engine runs it."""
    if not per_example:
        recorder = ReluInputs()
        with torch.no_grad(), recorder:
            model(x)
        return recorder.inputs

    def one(example: torch.Tensor) -> tuple[torch.Tensor, ...]:
        recorder = ReluInputs()
        with recorder:
            model(example.unsqueeze(0))
        return tuple(a.squeeze(0) for a in recorder.inputs)

    with torch.no_grad():
        return list(vmap(one)(x))


def relu_kinks(model: nn.Module, x: torch.Tensor, device: torch.device) -> Kinks:
    """ReLU inputs within float32 rounding of zero, for ``model`` (eval mode) on the examples ``x``.

    The model's batched forward pass runs in float64 and in float32 on the same ``x``, recording
    every ReLU input (:class:`ReluInputs`). For each recorded tensor the float32 error bound is
    ``KINK_FACTOR`` (4) times the largest ``|a32 - a64|`` of that tensor (the float32 error of a
    unit near zero is set by the size of the terms summed into it, not by its own value, so the
    layer's largest error is the scale, and 4 a margin for other float32 routes). A unit whose
    float64 value ``a64`` has ``|a64| <= bound`` may land on either side of the kink in a float32
    pass by another route, so its gradient is not determined to float32 accuracy; the count is of
    such units, a necessary condition for a kink error, not a sufficient one. ``closest`` is the
    smallest ``|a64| / bound`` over every unit (at most 1 exactly when the count is positive).
    ``crossed`` lists the units a float32 pass actually puts on the other side of zero from
    float64, for the batched pass and for the ``vmap``-ed per-example pass of the reference engine.
    """
    model64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    model32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    x = x.to(device)
    first = relu_inputs(model64, x.double())
    routes = {
        "batched": relu_inputs(model32, x.float()),
        "vmap": relu_inputs(model32, x.float(), per_example=True),
    }
    if any(len(inputs) != len(first) for inputs in routes.values()):
        raise RuntimeError("the passes called ReLU a different number of times")
    count, examples, closest = 0, set(), float("inf")
    crossed, crossing_routes, values = [], set(), []
    for k, a64 in enumerate(first):
        errors = {
            route: float((inputs[k].double() - a64).abs().max()) for route, inputs in routes.items()
        }
        bound = KINK_FACTOR * errors["batched"]
        near = a64.abs() <= bound
        count += int(near.sum())
        examples.update(int(i) for i in near.nonzero()[:, 0].unique())
        if bound > 0.0:
            closest = min(closest, float(a64.abs().min()) / bound)
        for route, inputs in routes.items():
            other = (inputs[k] > 0) != (a64 > 0)
            for unit in other.nonzero():
                at = tuple(int(i) for i in unit)
                crossed.append(f"{route}, ReLU call {k + 1}, example {at[0]}")
                crossing_routes.add(route)
                found = ", ".join(
                    f"{name} float32 {float(each[k][at]):+.2e} (largest error in the layer "
                    f"{errors[name]:.1e})"
                    for name, each in routes.items()
                )
                values.append(
                    f"{route} crosses at ReLU call {k + 1}, unit {list(at)}: float64 "
                    f"{float(a64[at]):+.2e}; {found}; largest |a64| in the layer "
                    f"{float(a64.abs().max()):.2g}"
                )
    return Kinks(count, sorted(examples), closest, crossed, crossing_routes, values)


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


def accuracy_table(names: list[str], args: argparse.Namespace, device: torch.device) -> None:
    """Print the accuracy table: every model, BatchNorm state, engine and kind."""
    memory = int(args.reference_memory * 2**30)
    print(
        f"float32 against float64 explicit Jacobians, n = {args.n}, device {device}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}. "
        "Cells: after the fixes (before).\n"
    )
    header = [f"{m} {k}" for m in METHODS for k in KINDS] + [
        "auto picks",
        "ReLU inputs within float32 rounding of 0",
        "smallest \\|a64\\| / bound",
        "ReLU inputs a float32 pass puts across 0",
    ]
    print("| model | BatchNorm | " + " | ".join(header) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in header) + " |")
    worst = worst_unmarked = 0.0
    marked = False
    details: list[str] = []
    for name in names:
        for bn in ("fresh", "trained"):
            model, shape = build(name, bn)
            if bn == "trained" and not has_batchnorm(model):
                continue
            torch.manual_seed(1)
            x = torch.randn(args.n, *shape)
            expected = kinds_of(reference(model, x, device, memory))
            kinks = relu_kinks(model, x, device)
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
                    route = "vmap" if method == "jacobian" else "batched"
                    dagger = "†" if route in kinks.routes and errors[True] > 1e-6 else ""
                    marked = marked or bool(dagger)
                    if not dagger:
                        worst_unmarked = max(worst_unmarked, errors[True])
                    cells.append(f"{errors[True]:.1e}{dagger} ({errors[False]:.1e})")
            label = bn if has_batchnorm(model) else "-"
            cells.append(auto_choice(model, x, device))
            where = f" (examples {', '.join(map(str, kinks.examples))})" if kinks.count else ""
            crossed = f" ({'; '.join(kinks.crossed)})" if kinks.crossed else ""
            cells += [
                f"{kinks.count}{where}",
                f"{kinks.closest:.2g}",
                f"{len(kinks.crossed)}{crossed}",
            ]
            print(f"| {name} | {label} | " + " | ".join(cells) + " |", flush=True)
            details += [f"{name} ({label}): {line}" for line in kinks.values]
    if marked:
        print(
            "\n† above 1e-6 where the engine's own float32 forward pass (the structured engine's "
            "batched one, the reference engine's vmap-ed one) puts a ReLU input on the other side "
            "of 0 from float64: the float32 network is discontinuous there, and which side of "
            "the kink a float32 pass lands on is chance. The last column is the route, the ReLU "
            "call (in order, from 1) and the example of each such input."
        )
    for line in details:
        print(line)
    print(
        f"\nLargest error after the fixes: {worst:.1e}; "
        f"of the cells not marked †: {worst_unmarked:.1e}."
    )


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
    parser.add_argument("--no-accuracy", action="store_true", help="only the speed table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [m for m in args.models.split(",") if m]

    exact = ntk_precision.onednn_exact() if device.type == "cpu" else None
    if exact is not None:
        errors = [ntk_precision._conv_stack_error(onednn=on) for on in (True, False)]
        print(
            f"oneDNN's float32 convolutions on this CPU: {'exact' if exact else 'INEXACT'} "
            f"(ntk_precision.onednn_exact: relative error {errors[0]:.1e} with oneDNN, "
            f"{errors[1]:.1e} without); the structured engine "
            f"{'keeps oneDNN' if exact else 'runs its passes outside oneDNN'}.\n"
        )
    if not args.no_accuracy:
        accuracy_table(names, args, device)
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
