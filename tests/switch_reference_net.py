"""The float64 conv + BatchNorm + dropout network of tests/test_switch_reference.py, as a spec's
``arch = "switch_reference_net:make"``; it records every input it is given in training mode
(only standard training calls it so: the linearized model runs it in eval mode)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The inputs of every training-mode call, in order (standard training's batches).
RECORD: list[Tensor] = []


class Net(nn.Module):
    """(batch, 1, 4, 4) -> conv 3x3 (2 channels) -> BN -> tanh -> dropout -> linear (6) -> BN ->
    tanh -> linear (num_classes), in float64 (inputs are cast)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(32, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            RECORD.append(x.detach().clone())
        h = torch.tanh(self.bn(self.conv(x.to(torch.float64))))
        h = self.drop(h.flatten(1))
        h = torch.tanh(self.bn1(self.fc(h)))
        return self.out(h)


def make(num_classes: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    return Net(num_classes).to(torch.float64)
