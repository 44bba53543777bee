"""``train --resume`` of a run whose ``metrics.csv`` was removed (or cut) says which rows before
the resume step are missing: the resumed run writes only the rows from there on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiny_run import SPEC, train_tiny

from conetool import paths
from conetool.spec import spec_from_dict
from conetool.training import _read_metrics, _write_metrics, train


def _stopped_at_5(tmp_path: Path) -> Path:
    """The tiny run (rows at 0, 5, 10) as a run stopped after its checkpoint of step 5."""
    out = train_tiny(tmp_path)
    paths.checkpoint(out, 10).unlink()
    paths.optimizer_state(out, 10).unlink()
    return out


def _lost(warnings: list[str]) -> list[str]:
    return [" ".join(w.split()) for w in warnings if paths.METRICS_NAME in w]


def test_a_removed_metrics_file_is_said_at_resume(tmp_path: Path) -> None:
    out = _stopped_at_5(tmp_path)
    paths.metrics(out).unlink()
    result = train(spec_from_dict(SPEC, source="tiny.toml"), out, resume=True)
    assert result.resumed_from == 5
    (said,) = _lost(result.warnings)
    assert f"--resume: {paths.metrics(out)} was missing: 1 of the 1 rows" in said, said
    assert "before step 5, where it resumes, are missing (step 0)" in said, said
    assert "writes only the rows from step 5 on" in said and "--overwrite" in said, said
    assert [float(r["step"]) for r in _read_metrics(paths.metrics(out))] == [5, 10]


def _stopped_at_20(folder: Path) -> tuple[dict[str, Any], Path]:
    """A run of 40 steps evaluated every 2 (rows 0, 2, ..., 40), stopped after step 20's
    checkpoint."""
    spec = dict(SPEC, train={**SPEC["train"], "steps": 40, "eval_every": 2})
    out = train_tiny(folder, spec)
    for step in (25, 30, 35, 40):
        paths.checkpoint(out, step).unlink()
        paths.optimizer_state(out, step).unlink()
    return spec, out


def test_rows_cut_from_the_metrics_file_are_said_at_resume(tmp_path: Path) -> None:
    spec, out = _stopped_at_20(tmp_path)
    rows = _read_metrics(paths.metrics(out))
    _write_metrics(paths.metrics(out), [r for r in rows if r["step"] not in "0 2 6 8 14".split()])
    result = train(spec_from_dict(spec, source="tiny.toml"), out, resume=True)
    (said,) = _lost(result.warnings)
    assert f"--resume: {paths.metrics(out)} lacks rows: 5 of the 10 rows" in said, said
    assert "before step 20, where it resumes, are missing (steps 0, 2, 6, ..., 14)" in said, said
    steps = [int(float(r["step"])) for r in _read_metrics(paths.metrics(out))]
    assert steps == [4, 10, 12, 16, 18, *range(20, 41, 2)]


def test_a_whole_metrics_file_says_nothing_at_resume(tmp_path: Path) -> None:
    spec, out = _stopped_at_20(tmp_path)
    result = train(spec_from_dict(spec, source="tiny.toml"), out, resume=True)
    assert result.resumed_from == 20 and not _lost(result.warnings), result.warnings
