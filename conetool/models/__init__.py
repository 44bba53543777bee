"""Built-in models and the model registry.

``build_model(spec, input_shape)`` turns ``[model]`` into an ``nn.Module``: a built-in
(``lenet5``, ``lenet_300_100``, ``mlp``, ``resnet20``, ``vgg16``) or the user's own
``"package.module:factory"``. ``output_check`` runs one batch to check the output shape.
"""

from __future__ import annotations

from .lenet import lenet5, lenet_300_100
from .mlp import mlp
from .registry import BUILTIN_MODELS, build_model, output_check
from .resnet import resnet20
from .vgg import vgg16

__all__ = [
    "BUILTIN_MODELS",
    "build_model",
    "lenet5",
    "lenet_300_100",
    "mlp",
    "output_check",
    "resnet20",
    "vgg16",
]
