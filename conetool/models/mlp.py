"""Fully connected networks: ``mlp``, in the layout of open_lth's MNIST LeNets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..choices import is_count
from ..errors import ModelError
from ..spec import toml_text
from ._common import activation, check_bool, flat_features, open_lth_init, positive_int


class MLP(nn.Module):
    """Flatten, then ``Linear -> activation`` per hidden width, then a ``Linear`` output layer.

    The module names follow open_lth's ``mnist_lenet`` (``fc_layers.0``, ``fc_layers.1``, ...,
    ``fc``), so ``MLP(784, [300, 100], 10)`` loads an open_lth ``mnist_lenet_300_100`` state dict.

    Input ``(batch, *input_shape)``, output ``(batch, num_classes)``.
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        num_classes: int,
        act: str = "relu",
        bias: bool = True,
        arch: str = "mlp",
    ) -> None:
        super().__init__()
        layers = []
        current = in_features
        for width in widths:
            layers.append(nn.Linear(current, width, bias=bias))
            current = width
        self.fc_layers = nn.ModuleList(layers)
        self.acts = nn.ModuleList(activation(arch, act) for _ in layers)
        self.fc = nn.Linear(current, num_classes, bias=bias)
        self.apply(open_lth_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer, act in zip(self.fc_layers, self.acts, strict=True):
            x = act(layer(x))
        return self.fc(x)


def _widths(arch: str, widths: object) -> list[int]:
    if not isinstance(widths, list | tuple):
        raise ModelError(
            f"[model] widths = {toml_text(widths)} is invalid for arch '{arch}': write a list of hidden "
            "layer sizes, e.g. widths = [512, 512] (or [] for a linear model)."
        )
    for i, width in enumerate(widths):
        if not is_count(width):
            raise ModelError(
                f"[model] widths = {toml_text(list(widths))} is invalid for arch '{arch}': each hidden "
                f"layer size must be a positive integer, and the {_ordinal(i + 1)}, {toml_text(width)}, "
                "is not. Write positive sizes, e.g. widths = [512, 512] (or [] for a linear "
                "model)."
            )
    return list(widths)


def _ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ..., ``11th``, ``21st``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] = (512, 512),
    activation: str = "relu",
    bias: bool = True,
) -> MLP:
    """A multilayer perceptron on the flattened input.

    ``widths`` are the hidden layer sizes (``[]`` gives a linear model), ``activation`` is
    ``"relu"``, ``"tanh"`` or ``"gelu"``, ``bias`` switches every bias on or off. The default on
    MNIST is 784-512-512-10: 784·512 + 512 + 512·512 + 512 + 512·10 + 10 = 669,706 parameters.
    Weights are initialized as in open_lth (:func:`open_lth_init`).

    Input ``(batch, *input_shape)``, output ``(batch, num_classes)``.
    """
    arch = "mlp"
    return MLP(
        flat_features(arch, input_shape),
        _widths(arch, widths),
        positive_int(arch, "num_classes", num_classes),
        act=activation,
        bias=check_bool(arch, "bias", bias),
        arch=arch,
    )
