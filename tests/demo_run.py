"""The tiny demo run that test_demo and test_analysis_channels share: ``conetool demo`` at 24
steps, a probe set of 10 and switch points 0 and 8 on the CPU, run once per pytest session
(about 6 s). Its tests run the demo again on it (each run reuses every result and rewrites the
same outputs); none damages it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def fake_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **fields: Any) -> None:
    """Replace ``run_demo.demo`` (what the CLI's demo command calls) by one that returns at once
    a :class:`DemoResult` of files under ``tmp_path``, a lazy verdict whose Phase I ends at step 5
    and a test accuracy of 0.9, with ``fields`` over those: for the tests of what the CLI prints
    of a result."""
    import conetool.pipeline.run_demo as run_demo

    def fake(out: Path, **_: Any) -> DemoResult:
        given: dict[str, Any] = {
            "out": Path(out),
            "ckpts": tmp_path,
            "store": tmp_path,
            "report_html": tmp_path / "report.html",
            "report_md": tmp_path / "report.md",
            "verdict": {"regime": "lazy", "phase1_end": 5, "numbers": {}, "explanation": ""},
            "test_acc": 0.9,
        }
        return run_demo.DemoResult(**{**given, **fields})

    monkeypatch.setattr(run_demo, "demo", fake)
