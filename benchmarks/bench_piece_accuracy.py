"""How wide a float32 piece of a wide product may be: one sequential float32 chain per entry, emulated.

:func:`conetool.ntk_terms.product` multiplies rows wider than its piece width in float32 pieces
whose partial products it sums in float64. Inside a piece the error depends on how the device
adds up each entry: MKL on the CPU blocks its sums, but cuBLAS may add up each entry of a product
of few rows as one float32 chain along the whole piece (on an NVIDIA H200 the reference engine's
full kernel of the fresh ResNet-20 test case was 1.01e-6 off with pieces of 4,096 columns, while
its rows contracted in float64 were 2.8e-7 off: ``benchmarks/cuda_accuracy_diag.py``).

This script takes the test's case (``tests/test_ntk_accuracy.py``: the built-in ResNet-20 on
3x8x8, fresh BatchNorm statistics, N = 4 inputs, 10 logits, seed 0), computes its float32 Jacobian
rows on the CPU (``torch.func.jacrev`` ``vmap``-ed over the examples), and contracts them as such a
chain would: per piece, each entry accumulated one column at a time, each step one fused
multiply-add rounded to float32 (the product of two float32 numbers is exact in float64, so
``float32(acc + a·b)`` computed in float64 is the FMA), pieces summed in float64. It prints, for
each piece width, the relative Frobenius error of the full kernel ``(40, 40)`` and the trace
kernel ``(4, 4)`` against the float64 explicit-Jacobian kernel, and the full kernel's against the
same float32 rows contracted exactly (the contraction's own share).

Example (about a minute per width on one core)::

    python benchmarks/bench_piece_accuracy.py --widths 4096,512,256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from test_ntk_accuracy import BUILTINS, N, away_from_kinks, reference, rel  # noqa: E402


def chain_product(a: np.ndarray, b: np.ndarray, width: int) -> np.ndarray:
    """``a @ b.T`` float64 from float32 rows ``(m, w)`` and ``(n, w)``: pieces of ``width``
    columns, each entry of a piece one float32 FMA chain, the pieces summed in float64."""
    out = np.zeros((a.shape[0], b.shape[0]))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    for lo in range(0, a.shape[1], width):
        acc = np.zeros((a.shape[0], b.shape[0]), np.float32)
        for k in range(lo, min(lo + width, a.shape[1])):
            acc = (acc.astype(np.float64) + np.outer(a64[:, k], b64[:, k])).astype(np.float32)
        out += acc
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="4096,512", help="piece widths, comma-separated")
    args = parser.parse_args()
    torch.manual_seed(0)
    factory, shape = BUILTINS["resnet20"]
    model = factory(shape)
    model.eval()
    x = away_from_kinks(model, torch.randn(N, *shape), "cpu")
    expected = reference(model, x)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def f(p: dict[str, torch.Tensor], example: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (example.unsqueeze(0),)).reshape(-1)

    with torch.no_grad():
        jac = vmap(jacrev(f), (None, 0))(params, x)
    c = 10
    rows = torch.cat([j.reshape(N * c, -1) for j in jac.values()], 1).numpy()  # (N·c, p) float32
    exact_rows = torch.from_numpy(rows.astype(np.float64))
    exact_full = exact_rows @ exact_rows.T
    print(f"ResNet-20 test case: {N} examples x {c} logits, {rows.shape[1]:,} parameters")
    print(
        f"float32 rows contracted in float64: full {rel(exact_full.view(N, c, N, c), expected['full']):.1e}"
    )
    print("width   full kernel   full: contraction only   trace kernel")
    by_example = rows.reshape(N, -1)  # the trace kernel's rows: (N, c·p)
    for width in (int(w) for w in args.widths.split(",")):
        full = torch.from_numpy(chain_product(rows, rows, width))
        trace = torch.from_numpy(chain_product(by_example, by_example, width))
        print(
            f"{width:>5}   {rel(full.view(N, c, N, c), expected['full']):11.1e}   "
            f"{rel(full, exact_full):22.1e}   {rel(trace, expected['trace']):12.1e}"
        )


if __name__ == "__main__":
    main()
