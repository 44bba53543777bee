"""Test loss and accuracy (train's metrics.csv, switch's standard model and points) are those of
the function conetool trains and differentiates: a token model whose nn.TransformerEncoder takes a
padding mask, and which pools over every position, is evaluated by attention's composite formula,
not by PyTorch's eval-mode fast path (taken without gradients), whose nested tensors give padded
positions zeros: its linearized model at θ_t then gives the standard model's loss."""

from __future__ import annotations

import torch
from torch import nn

from conetool.data_split import Split
from conetool.linearize import linearize
from conetool.loop import evaluate


class PaddedTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8, padding_idx=0)
        layer = nn.TransformerEncoderLayer(8, 2, 16, 0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1)  # enable_nested_tensor=True, the default
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(self.emb(x), src_key_padding_mask=x == 0)
        return self.head(h.mean(1))  # padded positions pooled too


def test_a_padded_transformer_is_evaluated_by_the_function_it_is_trained_as() -> None:
    torch.manual_seed(0)
    model = PaddedTokens().eval()
    x = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 0], [5, 6, 7, 8, 9], [2, 2, 0, 0, 0]])
    y = torch.tensor([0, 1, 2, 1])
    with torch.enable_grad():  # with gradients: the composite formula, as in training
        reference = float(nn.functional.cross_entropy(model(x), y))
    loss, _ = evaluate(model, Split.from_tensors(x, y), torch.device("cpu"))
    assert abs(loss - reference) < 1e-6
    lin_loss, _ = evaluate(linearize(model), Split.from_tensors(x, y), torch.device("cpu"))
    assert abs(lin_loss - loss) < 1e-6
