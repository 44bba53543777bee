"""VGG-16 with BatchNorm for CIFAR-10, as open_lth's ``cifar_vgg_16``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ._common import image_shape, open_lth_init, positive_int

# open_lth models/cifar_vgg.py, num = 16.
VGG16_PLAN: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
]  # fmt: skip


class ConvModule(nn.Module):
    """conv3x3 (padding 1, with bias, as open_lth) -> BatchNorm -> ReLU."""

    def __init__(self, in_filters: int, out_filters: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_filters, out_filters, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(out_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """open_lth's CIFAR VGG: the plan's conv modules and 2x2 max pools, a 2x2 average pool, linear.

    Module names follow open_lth (``layers.0.conv``, ``layers.0.bn``, ..., ``fc``), so its
    checkpoints load. On 32x32 inputs the four max pools leave 2x2, the average pool 1x1, and
    the linear layer sees 512 features, as in open_lth; other sizes give
    ``512 * (H // 16 // 2) * (W // 16 // 2)`` features.

    Input ``(batch, C, H, W)``, output ``(batch, num_classes)``.
    """

    def __init__(
        self,
        plan: Sequence[int | str],
        num_classes: int,
        input_shape: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        filters, height, width = input_shape
        layers: list[nn.Module] = []
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                height, width = height // 2, width // 2
            else:
                layers.append(ConvModule(filters, int(spec)))
                filters = int(spec)
        self.layers = nn.Sequential(*layers)
        height, width = height // 2, width // 2  # the final nn.AvgPool2d(2)
        if min(height, width) < 1:
            raise ModelError(
                f"arch 'vgg16' needs images of at least 32x32 pixels (four 2x2 max pools and a "
                f"2x2 average pool), got {input_shape[1]}x{input_shape[2]}. Use arch = "
                '"resnet20" or "lenet5" for smaller images.'
            )
        self.fc = nn.Linear(filters * height * width, num_classes)
        self.apply(open_lth_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        x = F.avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


def vgg16(input_shape: Sequence[int], num_classes: int) -> CifarVGG:
    """open_lth's ``cifar_vgg_16``: 13 conv3x3 + BatchNorm + ReLU modules, linear 512 -> classes.

    Plan ``[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512]``; the
    convolutions have biases (open_lth leaves ``nn.Conv2d``'s default); after the last conv comes
    a 2x2 average pool, then the linear layer. 14,728,266 parameters for 3x32x32 inputs and 10
    classes. Weights are initialized as in open_lth (:func:`open_lth_init`).

    Input ``(batch, C, H, W)`` with ``H, W >= 32``, output ``(batch, num_classes)``.
    """
    arch = "vgg16"
    return CifarVGG(
        VGG16_PLAN,
        positive_int(arch, "num_classes", num_classes),
        input_shape=image_shape(arch, input_shape),
    )
