"""conetool: how a network's empirical Neural Tangent Kernel moves during training.

The public API mirrors the command line: each ``conetool <command>`` is a thin layer over the
function of the same name here (``conetool.train``, ``conetool.inspect``, ``conetool.kernels``,
``conetool.distance``, ``conetool.embed``, ``conetool.switch``, ``conetool.report``).
"""

__version__ = "0.1.0"

# Importing torch takes seconds; Ctrl-C meanwhile ends the command line cleanly (exit 130).
from ._startup import guard_start_up

guard_start_up()
try:
    from .errors import (
        CheckpointError,
        ConetoolError,
        DataError,
        ModelError,
        SpecError,
        StoreError,
    )
    from .linearize import LinearizedModel, linearize
    from .ntk import empirical_ntk
    from .pipeline import (
        DemoResult,
        DistanceResult,
        EmbedResult,
        KernelsResult,
        ReportResult,
        SwitchResult,
        demo,
        distance,
        embed,
        inspect,
        kernels,
        report,
        switch,
    )
    from .spec import Spec, load_spec
    from .store import Store
    from .training import TrainResult, train
except KeyboardInterrupt:
    from ._startup import exit_if_command_line

    exit_if_command_line()
    raise

__all__ = [
    "CheckpointError",
    "ConetoolError",
    "DataError",
    "DemoResult",
    "DistanceResult",
    "EmbedResult",
    "KernelsResult",
    "LinearizedModel",
    "ModelError",
    "ReportResult",
    "Spec",
    "SpecError",
    "Store",
    "StoreError",
    "SwitchResult",
    "TrainResult",
    "__version__",
    "demo",
    "distance",
    "embed",
    "empirical_ntk",
    "inspect",
    "kernels",
    "linearize",
    "load_spec",
    "report",
    "switch",
    "train",
]
