"""LeNets: the convolutional LeNet-5 and open_lth's fully connected ``mnist_lenet_300_100``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..spec import toml_text
from ._common import activation as make_activation
from ._common import flat_features, image_shape, open_lth_init, positive_int
from .mlp import MLP

_POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _conv_out(size: int, padding: int) -> int:
    """Spatial size after a 5x5 convolution (stride 1) and then a 2x2 pool (stride 2)."""
    return (size + 2 * padding - 4) // 2


def _lenet5_paddings(arch: str, height: int, width: int) -> tuple[int, int]:
    """Paddings of conv1 and conv2; see :func:`lenet5`."""
    h1, w1 = _conv_out(height, 2), _conv_out(width, 2)
    pad2 = 0 if min(h1, w1) >= 6 else 2
    if min(_conv_out(h1, pad2), _conv_out(w1, pad2)) < 1:
        raise ModelError(
            f"arch '{arch}' needs images of at least 4x4 pixels, got {height}x{width}. "
            'Use arch = "mlp" for such small inputs.'
        )
    return 2, pad2


class LeNet5(nn.Module):
    """conv(6, 5x5) -> act -> pool -> conv(16, 5x5) -> act -> pool -> fc 120 -> act -> fc 84 ->
    act -> fc num_classes. Build it with :func:`lenet5`, which chooses the paddings.

    Input ``(batch, C, H, W)``, output ``(batch, num_classes)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        activation: str = "relu",
        pool: str = "max",
        arch: str = "lenet5",
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        pad1, pad2 = _lenet5_paddings(arch, height, width)
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5, padding=pad1)
        self.act1 = make_activation(arch, activation)
        self.pool1 = _POOLS[pool](2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=pad2)
        self.act2 = make_activation(arch, activation)
        self.pool2 = _POOLS[pool](2)
        # Flatten size from the arithmetic above, not from a dummy forward pass.
        h2 = _conv_out(_conv_out(height, pad1), pad2)
        w2 = _conv_out(_conv_out(width, pad1), pad2)
        self.fc1 = nn.Linear(16 * h2 * w2, 120)
        self.act3 = make_activation(arch, activation)
        self.fc2 = nn.Linear(120, 84)
        self.act4 = make_activation(arch, activation)
        self.fc3 = nn.Linear(84, num_classes)
        self.apply(open_lth_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        x = x.flatten(1)
        x = self.act3(self.fc1(x))
        x = self.act4(self.fc2(x))
        return self.fc3(x)


def lenet5(
    input_shape: Sequence[int],
    num_classes: int,
    activation: str = "relu",
    pool: str = "max",
) -> LeNet5:
    """The convolutional LeNet-5 (LeCun et al. 1998) for images of any size and channel count.

    conv1 always has padding 2: on MNIST (1x28x28) this is the classic network on the padded
    32x32 input, 28 -> 28 -> pool 14 -> conv2 10 -> pool 5, 16·5·5 = 400 features and
    61,706 parameters for 10 classes. conv2 has padding 0 when its input is at least 6x6 after
    the first pool (MNIST, CIFAR: 3x32x32 gives 16·6·6 = 576 features) and padding 2 otherwise,
    so that small images still fit: sklearn digits (1x8x8) go 8 -> 8 -> pool 4 -> conv2 4 ->
    pool 2, 16·2·2 = 64 features. ``activation`` is ``"relu"`` (default), ``"tanh"`` (the
    original) or ``"gelu"``; ``pool`` is ``"max"`` (default) or ``"avg"`` (the original's
    subsampling). Weights are initialized as in open_lth (:func:`open_lth_init`).

    Input ``(batch, C, H, W)`` with ``H, W >= 4``, output ``(batch, num_classes)``.
    """
    arch = "lenet5"
    if not isinstance(pool, str) or pool not in _POOLS:
        raise ModelError(
            f"[model] pool = {toml_text(pool)} is not supported by arch '{arch}'. "
            f"Use one of: {', '.join(_POOLS)}."
        )
    return LeNet5(
        image_shape(arch, input_shape),
        positive_int(arch, "num_classes", num_classes),
        activation=activation,
        pool=pool,
        arch=arch,
    )


def lenet_300_100(input_shape: Sequence[int], num_classes: int) -> MLP:
    """open_lth's ``mnist_lenet_300_100``: flatten -> fc 300 -> ReLU -> fc 100 -> ReLU -> fc.

    All layers have biases (open_lth uses ``nn.Linear`` defaults) and the module names are
    open_lth's (``fc_layers.0``, ``fc_layers.1``, ``fc``), so its checkpoints load directly.
    open_lth fixes the input at 784 features; here it is ``prod(input_shape)``. On MNIST:
    784·300 + 300 + 300·100 + 100 + 100·10 + 10 = 266,610 parameters.

    Input ``(batch, *input_shape)``, output ``(batch, num_classes)``.
    """
    arch = "lenet_300_100"
    return MLP(
        flat_features(arch, input_shape),
        [300, 100],
        positive_int(arch, "num_classes", num_classes),
        arch=arch,
    )
