"""Results that one command leaves for the next to read: Phase I's end from
``distance/summary.json``."""

from __future__ import annotations

import json
from pathlib import Path

from .. import paths

__all__ = ["saved_phase1_end"]


def saved_phase1_end(
    store: Path, matrix_key: str | None = None, kernels_key: str | None = None
) -> int | None:
    """Phase I's end from ``conetool distance``'s verdict, when it has run (and, with
    ``matrix_key``, only when it was computed from that S matrix; with ``kernels_key``, only when
    the store held the same kernels then: a summary written before distance recorded the key
    is taken); else ``None``."""
    try:
        summary = json.loads(paths.distance_summary(store).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or (
        matrix_key is not None and summary.get("matrix_key") != matrix_key
    ):
        return None
    if kernels_key is not None and summary.get("kernels_key") not in (None, kernels_key):
        return None  # distance ran on other kernels (a store still being written, say)
    value = summary.get("verdict", {}).get("phase1_end")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
