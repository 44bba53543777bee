"""conetool: how a network's empirical Neural Tangent Kernel moves during training.

The public API mirrors the command line: each ``conetool <command>`` is a thin layer over the
function of the same name here (``conetool.train``, ``conetool.inspect``, ``conetool.kernels``,
``conetool.distance``, ``conetool.embed``, ``conetool.spectrum``, ``conetool.switch``,
``conetool.report``, ``conetool.demo``), which returns a result object and prints nothing;
``conetool.empirical_ntk(model, x)`` computes one eNTK of any module in memory. Every error they
raise for a user's mistake is a :class:`conetool.ConetoolError` (:mod:`conetool.errors`).

The names are imported on first use (PEP 562), so that ``import conetool`` and the command
line's ``--help`` do not load PyTorch.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

# Importing torch takes seconds; Ctrl-C meanwhile ends the command line cleanly (exit 130).
from ._lazy import lazy_names
from ._startup import guard_start_up
from ._version import __version__

guard_start_up()

# name -> the submodule that defines it
_EXPORTS = {
    "CheckpointError": "errors",
    "CheckpointOverflowError": "errors",
    "ExtraModulesError": "errors",
    "FactoryMismatchError": "errors",
    "KeyMismatchError": "errors",
    "ConetoolError": "errors",
    "DataError": "errors",
    "MemoryBudgetError": "errors",
    "ModelError": "errors",
    "OptimizerStateDamagedError": "errors",
    "OptionError": "errors",
    "GeometryError": "errors",
    "NonFiniteKernelError": "errors",
    "KernelUnderflowError": "errors",
    "SpecError": "errors",
    "StoreError": "errors",
    "StoreReplacedError": "errors",
    "LinearizedModel": "linearize",
    "linearize": "linearize",
    "empirical_ntk": "ntk",
    "EngineMemo": "ntk_memo",
    "DemoResult": "pipeline",
    "DistanceResult": "pipeline",
    "EmbedResult": "pipeline",
    "KernelsResult": "pipeline",
    "ReportResult": "pipeline",
    "SwitchResult": "pipeline",
    "demo": "pipeline",
    "distance": "pipeline",
    "embed": "pipeline",
    "inspect": "pipeline",
    "kernels": "pipeline",
    "report": "pipeline",
    "switch": "pipeline",
    "spectrum": "pipeline",
    "SpectrumResult": "pipeline",
    "Spec": "spec",
    "load_spec": "spec",
    "Store": "store",
    "TrainResult": "training",
    "VerdictRules": "verdict_rules",
    "train": "training",
    "limit_threads": "threads",
}

if TYPE_CHECKING:
    from .errors import (
        CheckpointError,
        CheckpointOverflowError,
        ConetoolError,
        DataError,
        ExtraModulesError,
        FactoryMismatchError,
        GeometryError,
        KernelUnderflowError,
        KeyMismatchError,
        MemoryBudgetError,
        ModelError,
        NonFiniteKernelError,
        OptimizerStateDamagedError,
        OptionError,
        SpecError,
        StoreError,
        StoreReplacedError,
    )
    from .linearize import LinearizedModel, linearize
    from .ntk import empirical_ntk
    from .ntk_memo import EngineMemo
    from .pipeline import (
        DemoResult,
        DistanceResult,
        EmbedResult,
        KernelsResult,
        ReportResult,
        SpectrumResult,
        SwitchResult,
        demo,
        distance,
        embed,
        inspect,
        kernels,
        report,
        spectrum,
        switch,
    )
    from .spec import Spec, load_spec
    from .store import Store
    from .threads import limit_threads
    from .training import TrainResult, train
    from .verdict_rules import VerdictRules


__getattr__, __dir__ = lazy_names(__name__, globals(), _EXPORTS)


class _Package(types.ModuleType):
    """Keeps ``conetool.linearize`` the function when the submodule of that name is imported
    (the import system sets a package attribute for each submodule it loads)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "CheckpointError",
    "CheckpointOverflowError",
    "ConetoolError",
    "DataError",
    "DemoResult",
    "DistanceResult",
    "EmbedResult",
    "EngineMemo",
    "ExtraModulesError",
    "FactoryMismatchError",
    "GeometryError",
    "KernelUnderflowError",
    "KernelsResult",
    "KeyMismatchError",
    "LinearizedModel",
    "MemoryBudgetError",
    "ModelError",
    "NonFiniteKernelError",
    "OptimizerStateDamagedError",
    "OptionError",
    "ReportResult",
    "Spec",
    "SpecError",
    "SpectrumResult",
    "Store",
    "StoreError",
    "StoreReplacedError",
    "SwitchResult",
    "TrainResult",
    "VerdictRules",
    "__version__",
    "demo",
    "distance",
    "embed",
    "empirical_ntk",
    "inspect",
    "kernels",
    "limit_threads",
    "linearize",
    "load_spec",
    "report",
    "spectrum",
    "switch",
    "train",
]
