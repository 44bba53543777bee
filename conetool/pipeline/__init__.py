"""One library function per command, in ``run_<command>.py``: ``inspect``, ``kernels``,
``distance``, ``embed``, ``spectrum``, ``switch``, ``report``, ``demo`` (``train`` lives in :mod:`conetool.training`).

Each takes plain Python values, reads and writes files, reports progress through an injected
:class:`~conetool.progress.Progress`, and returns a result object; the CLI only formats it.
"""

from .run_demo import DemoResult, demo
from .run_distance import DistanceResult, distance
from .run_embed import EmbedResult, embed
from .run_inspect import inspect
from .run_kernels import KernelsResult, kernels
from .run_report import ReportResult, report
from .run_spectrum import SpectrumResult, spectrum
from .run_switch import SwitchResult, switch

__all__ = [
    "DemoResult",
    "DistanceResult",
    "EmbedResult",
    "KernelsResult",
    "ReportResult",
    "SpectrumResult",
    "SwitchResult",
    "demo",
    "distance",
    "embed",
    "inspect",
    "kernels",
    "report",
    "spectrum",
    "switch",
]
