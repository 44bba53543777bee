"""Helpers shared by the built-in models: activations, option checks, open_lth's initializer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..choices import is_count
from ..errors import ModelError
from ..spec import toml_text

# Activation name -> module class. Modules (not functionals) so that per-layer engines can see them.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation(arch: str, name: Any) -> nn.Module:
    """A fresh activation module for ``[model] activation = name``; ModelError for unknown names."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ModelError(
            f"[model] activation = {toml_text(name)} is not supported by arch '{arch}'. "
            f"Use one of: {', '.join(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]()


def positive_int(arch: str, key: str, value: Any) -> int:
    """``value`` as a positive int, or ModelError naming ``[model] key``."""
    if not is_count(value):
        raise ModelError(
            f"[model] {key} = {toml_text(value)} is invalid for arch '{arch}': "
            "it must be a positive integer."
        )
    return value


def check_bool(arch: str, key: str, value: Any) -> bool:
    """``value`` as a bool, or ModelError naming ``[model] key``."""
    if not isinstance(value, bool):
        raise ModelError(
            f"[model] {key} = {toml_text(value)} is invalid for arch '{arch}': write true or false."
        )
    return value


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def image_shape(arch: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``; ModelError when it is not one."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(_is_size(s) for s in shape):
        raise ModelError(
            f"arch '{arch}' is a convolutional network and needs images of shape "
            f"(channels, height, width), but the data set gives examples of shape {shape}. "
            'Use a data set of images, or arch = "mlp" for flat inputs.'
        )
    return shape


def flat_features(arch: str, input_shape: Sequence[int]) -> int:
    """Number of input features after flattening one example of ``input_shape``."""
    shape = tuple(input_shape)
    if not shape or not all(_is_size(s) for s in shape):
        raise ModelError(
            f"arch '{arch}' got the example shape {shape}; it needs a non-empty tuple of positive "
            "sizes (e.g. (1, 28, 28))."
        )
    return math.prod(shape)


@torch.no_grad()
def open_lth_init(module: nn.Module) -> None:
    """open_lth's default initialization, applied with ``model.apply(open_lth_init)``.

    open_lth (models/registry.py) combines ``model_init = "kaiming_normal"`` and
    ``batchnorm_init = "uniform"``, the defaults of its mnist_lenet, cifar_resnet and cifar_vgg:

    - ``nn.Linear`` / ``nn.Conv2d`` weights: ``kaiming_normal_`` (fan_in, ReLU gain: std
      ``sqrt(2 / fan_in)``); biases keep PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``;
    - ``nn.BatchNorm2d``: weight ``~ U[0, 1)`` (``torch.rand``), bias 0.

    It draws from the global RNG in the same order as open_lth, so seeding is the caller's job
    (``torch.manual_seed`` before building the model).
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
    if isinstance(module, nn.BatchNorm2d):
        module.weight.copy_(torch.rand(module.weight.shape))
        module.bias.zero_()
