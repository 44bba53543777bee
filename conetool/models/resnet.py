"""ResNet-20 for CIFAR-10, as open_lth's ``cifar_resnet_20`` (He et al. 2016, section 4.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..spec import toml_text
from ._common import image_shape, open_lth_init, positive_int


class Block(nn.Module):
    """A basic residual block: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, -> ReLU.

    As in open_lth, the shortcut is the identity when the shape is kept and otherwise a 1x1
    convolution with stride 2 followed by BatchNorm (option B of He et al., not zero padding).
    No convolution has a bias.
    """

    def __init__(self, f_in: int, f_out: int, downsample: bool = False) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, kernel_size=1, stride=2, bias=False),
                nn.BatchNorm2d(f_out),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # open_lth adds in place (out += ...); out-of-place is the same value and safer for
        # torch.func transforms.
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """open_lth's CIFAR ResNet: conv3x3 -> BN -> ReLU, the blocks, global average pool, linear.

    ``plan`` is a list of ``(filters, blocks)`` per stage; ResNet-20 is
    ``[(W, 3), (2W, 3), (4W, 3)]`` with ``W = 16``. Module names follow open_lth (``conv``,
    ``bn``, ``blocks.i.conv1`` ..., ``blocks.i.shortcut.0``, ``fc``), so its checkpoints load.

    Input ``(batch, C, H, W)``, output ``(batch, num_classes)``.
    """

    def __init__(
        self, plan: Sequence[tuple[int, int]], num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        current = plan[0][0]
        self.conv = nn.Conv2d(in_channels, current, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(current)
        blocks = []
        for stage, (filters, num_blocks) in enumerate(plan):
            for index in range(num_blocks):
                blocks.append(Block(current, filters, downsample=stage > 0 and index == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(plan[-1][0], num_classes)
        self.apply(open_lth_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        # open_lth: F.avg_pool2d(out, out.size(3)), the global average for square inputs.
        out = out.mean(dim=(2, 3))
        return self.fc(out)


def resnet20(input_shape: Sequence[int], num_classes: int, width: float = 1) -> CifarResNet:
    """open_lth's ``cifar_resnet_20``: 3 stages of 3 basic blocks with 16, 32, 64 filters.

    ``width`` multiplies the filter counts: the stages have ``W, 2W, 4W`` filters with
    ``W = 16 * width``, which must be a whole number. open_lth names this ``cifar_resnet_20_W``
    (``W`` = filters of the first stage), so ``cifar_resnet_20_64`` is ``width = 4`` and
    ``cifar_resnet_20_8`` is ``width = 0.5``. Convolutions have no bias; downsampling shortcuts
    are 1x1 stride-2 convolutions with BatchNorm. 272,474 parameters for width 1 and 10
    classes. Weights are initialized as in open_lth (:func:`open_lth_init`: kaiming normal,
    BatchNorm weight ``U[0, 1)``). open_lth fixes 3 input channels; here the input has any
    channel count and size (at least 1x1; the stride-2 stages round up).

    Input ``(batch, C, H, W)``, output ``(batch, num_classes)``.
    """
    arch = "resnet20"
    channels, _, _ = image_shape(arch, input_shape)
    filters = width * 16 if isinstance(width, int | float) and not isinstance(width, bool) else 0
    if not (filters >= 1 and float(filters).is_integer()):
        raise ModelError(
            f"[model] width = {toml_text(width)} is invalid for arch '{arch}': the first stage has "
            "16 * width filters, which must be a positive whole number (e.g. width = 1, 2, 4, "
            "or 0.5)."
        )
    w = int(filters)
    plan = [(w, 3), (2 * w, 3), (4 * w, 3)]
    return CifarResNet(plan, positive_int(arch, "num_classes", num_classes), in_channels=channels)
