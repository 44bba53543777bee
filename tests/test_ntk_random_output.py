"""A model whose output is random in eval mode is refused naming the random call its forward pass
makes: a hand-written attention's F.scaled_dot_product_attention given dropout_p whatever the mode
(nn.MultiheadAttention passes it only in training), an F.dropout without training=, a draw."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conetool import ConetoolError, empirical_ntk
from conetool.random_calls import random_calls


class AttentionDropout(nn.Module):
    """Self-attention over 3 tokens of 4 features, its dropout_p given in eval mode too."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 3)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p)
        return self.head(a.mean(1))


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x + torch.randn_like(x))


@pytest.mark.parametrize("method", ["jacobian", "structured", "auto"])
def test_attention_dropout_in_eval_mode_is_named_with_its_fix(method: str) -> None:
    torch.manual_seed(0)
    with pytest.raises(ConetoolError, match="random in eval mode") as caught:
        empirical_ntk(AttentionDropout(0.5), torch.randn(4, 3, 4), method=method)
    said = str(caught.value)
    assert "F.scaled_dot_product_attention(..., dropout_p=0.5)" in said
    assert "dropout_p=p if self.training else 0.0" in said


def test_a_draw_in_forward_is_named() -> None:
    torch.manual_seed(0)
    with pytest.raises(ConetoolError, match=r"random in eval mode.*torch\.randn_like"):
        empirical_ntk(Noisy(), torch.randn(4, 4))


def test_calls_that_draw_nothing_are_not_named() -> None:
    x = torch.randn(2, 3, 4)
    still = AttentionDropout(0.0)
    assert random_calls(lambda: still(x)) == []
    assert random_calls(lambda: F.dropout(x, 0.5, training=False)) == []
    mha = nn.MultiheadAttention(4, 2, dropout=0.5, batch_first=True).eval()
    assert random_calls(lambda: mha(x, x, x)) == []
    assert random_calls(lambda: F.dropout(x, 0.5)) == [
        "F.dropout(x, 0.5), which is on unless given training=self.training"
    ]
    assert random_calls(lambda: x.clone().normal_()) == ["Tensor.normal_"]


def test_the_kernel_of_attention_without_dropout_is_unchanged() -> None:
    # dropout_p=0: a deterministic function, computed (against a float64 explicit Jacobian)
    torch.manual_seed(0)
    model = AttentionDropout(0.0).double()
    x = torch.randn(3, 3, 4, dtype=torch.float64)
    params = dict(model.named_parameters())

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        jac = torch.func.vmap(torch.func.jacrev(f), (None, 0))(
            {k: v.detach() for k, v in params.items()}, x
        )
    rows = torch.cat([j.reshape(3, 3, -1) for j in jac.values()], 2)
    expected = torch.einsum("ikp,jkp->ij", rows, rows)
    got = empirical_ntk(model, x)
    assert float((got - expected).norm() / expected.norm()) < 1e-10
