"""Where a float32 eNTK's error on a GPU comes from: the rows, or their contraction.

The case of ``tests/test_ntk_accuracy.py``'s ``test_builtin_float32_within_1e6_of_float64``
(the built-in ResNet-20 on 3x8x8, fresh BatchNorm statistics, N = 4 inputs away from ReLU kinks
on the device, 10 logits, seed 0), against the float64 explicit-Jacobian kernel of each kind:

1. the ReLU inputs that a float32 pass on the device (batched, or ``vmap``-ed per example as the
   reference engine runs it) puts across zero from float64, and each example's closest margin;
2. float32 Jacobian rows (``torch.func.jacrev`` ``vmap``-ed over the examples, on the device, with
   cuDNN and without) contracted in float64: the rows' own error;
3. each engine's float32 kernel (``empirical_ntk``), with cuDNN and without: rows and contraction;
4. the calls inside the schedule's loop that wait for the device (CUDA's sync debug mode "warn",
   each with its Python stack).

TF32 is off. Run on a GPU (a CPU run prints 1-3 with cuDNN only)::

    python benchmarks/cuda_accuracy_diag.py            # cuda
    python benchmarks/cuda_accuracy_diag.py cpu
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, jacrev, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_ntk_accuracy import (  # noqa: E402
    BUILTINS,
    KINDS,
    N,
    across_kinks,
    away_from_kinks,
    kinks,
    reference,
    rel,
)

from conetool import ntk_schedule  # noqa: E402
from conetool.ntk import empirical_ntk  # noqa: E402


def cudnn(enabled: bool) -> Any:
    return torch.backends.cudnn.flags(
        enabled=enabled, deterministic=False, benchmark=False, allow_tf32=False
    )


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    factory, shape = BUILTINS["resnet20"]
    model = factory(shape)
    model.eval()
    x = away_from_kinks(model, torch.randn(N, *shape), dev)
    print("vmap-route crossings at examples", across_kinks(model, x, dev, ("vmap",)))
    print(kinks(model, x, dev))
    expected = reference(model, x)
    switches = (True, False) if dev == "cuda" else (True,)

    def rows_in_float64(with_cudnn: bool) -> dict[str, float]:
        net = model.to(dev)
        params = {k: v.detach() for k, v in net.named_parameters()}
        buffers = dict(net.named_buffers())

        def f(p: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
            return functional_call(net, (p, buffers), (example.unsqueeze(0),)).reshape(-1)

        with cudnn(with_cudnn):
            jac = vmap(jacrev(f), (None, 0))(params, x.to(dev))
        n, c = x.shape[0], 10
        rows = torch.cat([j.reshape(n * c, -1).double() for j in jac.values()], 1)
        full = (rows @ rows.T).view(n, c, n, c).cpu()
        summed = rows.view(n, c, -1).sum(1)
        got = {
            "trace": torch.einsum("iaja->ij", full),
            "full": full,
            "sum": (summed @ summed.T).cpu(),
        }
        model.cpu()
        return {k: rel(got[k], expected[k]) for k in KINDS}

    for on in switches:
        print(f"float32 rows (torch.func, cuDNN {on}) contracted in float64:", rows_in_float64(on))
    for method in ("jacobian", "structured"):
        for on in switches:
            began = time.perf_counter()
            with cudnn(on):
                errors = {
                    k: rel(empirical_ntk(model, x, kind=k, device=dev, method=method), expected[k])
                    for k in KINDS
                }
            print(f"{method} cudnn={on}: {errors} ({time.perf_counter() - began:.1f}s)")
    if dev != "cuda":
        return
    original = ntk_schedule.run
    seen: list[str] = []

    def show(message: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(f"{message}\n" + "".join(traceback.format_stack(limit=6)[:-1]))

    def run(*args: Any, **kwargs: Any) -> Any:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    ntk_schedule.run = run  # type: ignore[assignment]
    warnings.showwarning = show
    warnings.simplefilter("always")
    empirical_ntk(model, x, device="cuda", method="structured", max_memory="8GiB")
    print(f"warnings inside ntk_schedule.run: {len(seen)} (the first is the mode's own notice)")
    for text in seen[:5]:
        print(text)


if __name__ == "__main__":
    main()
