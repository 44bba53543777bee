"""The tiny demo run that test_demo and test_analysis_channels share: ``conetool demo`` at 24
steps, a probe set of 10 and switch points 0 and 8 on the CPU, run once per pytest session
(about 6 s). Its tests run the demo again on it (each run reuses every result and rewrites the
same outputs); none damages it."""

from __future__ import annotations

import pytest

from conetool.pipeline import demo
from conetool.pipeline.run_demo import DemoResult

_finished: list[DemoResult] = []


def finished_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """The result of the shared demo run, run on the first call (its folder lives as long as the
    session's temporary folders)."""
    if not _finished:
        out = tmp_path_factory.mktemp("demo") / "out"
        _finished.append(demo(out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8]))
    return _finished[0]
