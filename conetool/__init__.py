"""conetool: how a network's empirical Neural Tangent Kernel moves during training.

The public API mirrors the command line: each ``conetool <command>`` is a thin layer over the
function of the same name here.
"""

__version__ = "0.1.0"

from .errors import (
    CheckpointError,
    ConetoolError,
    DataError,
    ModelError,
    SpecError,
    StoreError,
)
from .spec import Spec, load_spec
from .training import TrainResult, train

__all__ = [
    "CheckpointError",
    "ConetoolError",
    "DataError",
    "ModelError",
    "Spec",
    "SpecError",
    "StoreError",
    "TrainResult",
    "__version__",
    "load_spec",
    "train",
]
