"""The peak resident memory of this process, in bytes, on Linux and macOS alike.

``getrusage``'s ``ru_maxrss`` is in KiB on Linux (and the BSDs) but in bytes on macOS, so
``ru_maxrss * 1024`` is 1024 times too large there.
"""

from __future__ import annotations

import resource
import sys

__all__ = ["peak_resident_memory"]


def peak_resident_memory() -> int:
    """The most resident memory this process has held since it started, in bytes
    (``getrusage(RUSAGE_SELF).ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024
