"""One library function per command, in ``run_<command>.py``: ``inspect``, ``kernels``,
``distance``, ``embed``, ``spectrum``, ``switch``, ``report``, ``demo`` (``train`` lives in :mod:`conetool.training`).

Each takes plain Python values, reads and writes files, reports progress through an injected
:class:`~conetool.progress.Progress`, and returns a result object; the CLI only formats it.

The names are imported on first use (PEP 562): a command imports its own module only, so that
``conetool kernels`` does not load what the others need (matplotlib for the figures of
``distance``, ``embed``, ``spectrum``, ``switch`` and ``report``; SciPy for ``spectrum``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

# name -> the submodule that defines it
_EXPORTS = {
    "DemoResult": "run_demo",
    "demo": "run_demo",
    "DistanceResult": "run_distance",
    "distance": "run_distance",
    "EmbedResult": "run_embed",
    "embed": "run_embed",
    "inspect": "run_inspect",
    "KernelsResult": "run_kernels",
    "kernels": "run_kernels",
    "ReportResult": "run_report",
    "report": "run_report",
    "SpectrumResult": "run_spectrum",
    "spectrum": "run_spectrum",
    "SwitchResult": "run_switch",
    "switch": "run_switch",
}

if TYPE_CHECKING:
    from .run_demo import DemoResult, demo
    from .run_distance import DistanceResult, distance
    from .run_embed import EmbedResult, embed
    from .run_inspect import inspect
    from .run_kernels import KernelsResult, kernels
    from .run_report import ReportResult, report
    from .run_spectrum import SpectrumResult, spectrum
    from .run_switch import SwitchResult, switch


__getattr__, __dir__ = lazy_names(__name__, globals(), _EXPORTS)


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
