"""A module without a working vmap rule, as it is, against its hand-written vmap-able equivalent.

    python benchmarks/bench_recurrent.py                    # GRU and PReLU, n = 64, every engine
    python benchmarks/bench_recurrent.py --models gru --n 64,256 --repeat 5 --threads 1

nn.GRU and nn.PReLU have no working vmap rule in torch 2.14: ``empirical_ntk`` computes their
per-example gradients by ordinary autograd, one example and one logit at a time (the structured
engine takes a PReLU's slopes from its batched passes). The README's ``LoopGRU`` (an nn.GRU
subclass stepping ``torch.gru_cell``, same parameters) and ``torch.where(x > 0, x, a * x)``
compute the same function under ``vmap``. Both models of a pair hold the same weights; each
kernel (trace, float32, CPU) is timed in the same process, alternating the two, after a warm-up
call; the fastest of ``--repeat`` is shown with the ratio and the relative Frobenius difference
of the two kernels.

Models: ``gru``, a one-layer ``batch_first`` GRU (8 features, 12 steps, 32 hidden units) and a
10-logit head on its last state; ``prelu``, 784-256-256-10 with a PReLU (one slope) after each
hidden layer.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from conetool.ntk import empirical_ntk


class LoopGRU(nn.GRU):
    """The README's: a one-layer ``batch_first`` nn.GRU stepping ``torch.gru_cell``."""

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        state = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h[0]
        outs = []
        for t in range(x.shape[1]):
            state = torch.gru_cell(
                x[:, t],
                state,
                self.weight_ih_l0,
                self.weight_hh_l0,
                self.bias_ih_l0,
                self.bias_hh_l0,
            )
            outs.append(state)
        return torch.stack(outs, 1), state.unsqueeze(0)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.GRU]) -> None:
        super().__init__()
        self.rnn = cell(8, 32, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class WherePReLU(nn.PReLU):
    """nn.PReLU (one slope) written as ``torch.where``: the same parameter, under vmap."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, self.weight * x)


def _mlp(act: type[nn.PReLU]) -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), act(), nn.Linear(256, 256), act(), nn.Linear(256, 10))


#: name -> (as it is, its vmap-able equivalent, the input shape of one example)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = {
    "gru": (lambda: Recurrent(nn.GRU), lambda: Recurrent(LoopGRU), (12, 8)),
    "prelu": (lambda: _mlp(nn.PReLU), lambda: _mlp(WherePReLU), (784,)),
}


def measure(name: str, n: int, method: str, repeat: int) -> tuple[float, float, float]:
    """Fastest seconds of the model as it is and of its equivalent, and their kernels' relative
    difference."""
    plain_factory, rewritten_factory, shape = CASES[name]
    torch.manual_seed(0)
    plain = plain_factory()
    rewritten = rewritten_factory()
    rewritten.load_state_dict(plain.state_dict())
    x = torch.randn(n, *shape)
    models = {"plain": plain, "rewritten": rewritten}
    best = {key: float("inf") for key in models}
    kernels: dict[str, Tensor] = {}
    for key, model in models.items():  # warm-up
        kernels[key] = empirical_ntk(model, x[:4], device="cpu", method=method)
    for i in range(repeat):
        for key in models if i % 2 == 0 else reversed(list(models)):
            began = time.perf_counter()
            kernels[key] = empirical_ntk(models[key], x, device="cpu", method=method)
            best[key] = min(best[key], time.perf_counter() - began)
    a, b = kernels["plain"].double(), kernels["rewritten"].double()
    return best["plain"], best["rewritten"], float((a - b).norm() / b.norm())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gru,prelu")
    parser.add_argument("--n", default="64")
    parser.add_argument("--methods", default="auto,structured,jacobian")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # torch's note that vmap loops over the examples for torch.gru_cell (no batching rule)
    warnings.filterwarnings("ignore", message="There is a performance drop")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, trace kernel, float32, "
        f"fastest of {args.repeat}"
    )
    print(
        f"{'model':6} {'n':>5} {'method':10} {'as it is':>9} {'rewritten':>9} {'ratio':>6} "
        f"{'rel diff':>8}"
    )
    for name in args.models.split(","):
        for n in (int(v) for v in args.n.split(",")):
            for method in args.methods.split(","):
                plain, rewritten, diff = measure(name, n, method, args.repeat)
                print(
                    f"{name:6} {n:5d} {method:10} {plain:8.3f}s {rewritten:8.3f}s "
                    f"{plain / rewritten:6.1f} {diff:8.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
