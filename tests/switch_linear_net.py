"""A float64 network linear in its trainable parameters, as a spec's
``arch = "switch_linear_net:make"``: frozen random tanh features, then a trainable linear head.
Its linearized model is the network itself (f_lin(x; θ) = f(x; θ) for every θ), so a switch
from any step t of its run must land on the run's own checkpoint of T
(tests/test_switch_replays_run.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Net(nn.Module):
    """(batch, *shape) -> flatten -> frozen linear (12) -> tanh -> trainable linear (num_classes),
    in float64 (inputs are cast): f(x; W, b) = W tanh(A x + a) + b, linear in θ = (W, b)."""

    def __init__(self, num_classes: int, inputs: int) -> None:
        super().__init__()
        self.features = nn.Linear(inputs, 12)
        self.features.requires_grad_(False)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.features(x.flatten(1).to(torch.float64))))


def make(num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    assert input_shape is not None
    return Net(num_classes, math.prod(input_shape)).to(torch.float64)
