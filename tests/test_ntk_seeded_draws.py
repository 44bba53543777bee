"""A forward pass that draws from a generator it seeds itself (a fixed random projection made anew
on every call) is a deterministic function: vmap refuses its random operation, and the
per-example gradients it touches come from ordinary autograd instead, exactly (against a float64
Jacobian by plain autograd). A draw that is really random is still refused, also where no check of
two examples runs before (one example, check=False)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conetool import ConetoolError, empirical_ntk


class SeededProjection(nn.Module):
    """Linear, a random 4x4 projection drawn from a generator seeded in forward, tanh, a scale
    used outside any module (the structured engine's torch.func fallback), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(4, 4, generator=g).to(x.dtype)
        return self.head(torch.tanh(self.scale * (self.lin(x) @ w)))


class Dropped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(F.dropout(x, 0.5))


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trace kernel from a float64 Jacobian by plain autograd, one example and logit at a time."""
    params = list(model.parameters())
    rows = []
    for example in x:
        out = model(example.unsqueeze(0))[0]
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows).reshape(x.shape[0], -1, rows[0].numel())
    return torch.einsum("ikp,jkp->ij", jac, jac)


@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_a_draw_the_model_seeds_itself_gets_the_exact_kernel(method: str) -> None:
    torch.manual_seed(0)
    model = SeededProjection().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    got = empirical_ntk(model, x, method=method)
    expected = _reference(model, x)
    assert float((got - expected).norm() / expected.norm()) < 1e-12


@pytest.mark.parametrize("method", ["jacobian", "structured"])
@pytest.mark.parametrize(("n", "check"), [(1, True), (3, False)])
def test_a_random_draw_is_still_refused_without_a_check_of_two_examples(
    method: str, n: int, check: bool
) -> None:
    torch.manual_seed(0)
    with pytest.raises(ConetoolError, match="random in eval mode"):
        empirical_ntk(Dropped(), torch.randn(n, 4), method=method, kind="full", check=check)
