"""train --resume of a run whose conetool.toml was edited to another [model] since it was trained
(found by scripts/fuzz_cli.py --mode store): refused before anything in the run is touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from conetool import paths
from conetool.errors import CheckpointError, StoreError
from conetool.spec import load_spec, spec_from_dict
from conetool.training import train

TINY = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [8]},
    "data": {"dataset": "synthetic", "shape": [4], "num_classes": 3, "train_size": 40},
    "probe": {"size": 6},
    "train": {"steps": 10, "batch_size": 8, "save_every": 5, "eval_every": 5, "seed": 1},
}


def _files(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.parametrize("widths", ["[16]", "[8, 8]"])  # shapes that differ; keys missing
def test_resume_of_a_run_whose_spec_file_now_builds_another_model_is_refused(tmp_path, widths):
    out = tmp_path / "run"
    train(spec_from_dict(TINY, source="tiny.toml"), out)
    text = paths.spec(out).read_text(encoding="utf-8").replace("steps = 10", "steps = 20")
    text = text.replace("widths = [8]", f"widths = {widths}")
    paths.spec(out).write_text(text, encoding="utf-8")
    before = _files(out)
    with pytest.raises(CheckpointError) as caught:
        train(load_spec(paths.spec(out)), out, resume=True)
    message = str(caught.value)
    assert message.startswith("--resume: ")
    assert "step_000010.safetensors" in message and "does not fit the model" in message
    assert "(was conetool.toml edited since?)" in message and "--overwrite" in message
    assert _files(out) == before  # metrics.csv kept its rows (they were cut before the load failed)


def test_resume_of_a_run_whose_model_is_unchanged_goes_on(tmp_path):
    out = tmp_path / "run"
    train(spec_from_dict(TINY, source="tiny.toml"), out)
    text = paths.spec(out).read_text(encoding="utf-8").replace("steps = 10", "steps = 15")
    paths.spec(out).write_text(text, encoding="utf-8")
    assert train(load_spec(paths.spec(out)), out, resume=True).resumed_from == 10


@pytest.mark.parametrize("steps", [10, 15])  # the run finished; the run resumed
@pytest.mark.parametrize("cell", ["", "abc"])
def test_resume_with_a_damaged_metrics_file_names_its_line(tmp_path, steps, cell):
    """A metrics.csv cell that is not a number (found by scripts/fuzz_cli.py --mode store: an
    empty train_loss) ended train --resume of the finished run in float()'s ValueError and a
    traceback; it is refused naming the file, the line and the fix, the run untouched."""
    out = tmp_path / "run"
    train(spec_from_dict(TINY, source="tiny.toml"), out)
    lines = paths.metrics(out).read_text(encoding="utf-8").splitlines()
    cells = lines[1].split(",")
    cells[3] = cell
    lines[1] = ",".join(cells)
    paths.metrics(out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = paths.spec(out).read_text(encoding="utf-8").replace("steps = 10", f"steps = {steps}")
    paths.spec(out).write_text(text, encoding="utf-8")
    before = _files(out)
    with pytest.raises(StoreError) as caught:
        train(load_spec(paths.spec(out)), out, resume=True)
    message = str(caught.value)
    assert message.startswith(f"{paths.metrics(out)} line 2 is damaged: train_loss = {cell!r}")
    assert "Put back the run's metrics.csv, or remove that line" in message
    assert _files(out) == before


def test_resume_that_starts_at_step_0_loads_no_checkpoint_and_checks_none(tmp_path):
    # a new --out (no checkpoint at all), and a run without optimizer states (restarted from 0,
    # its checkpoints rewritten): no checkpoint is loaded, so none is checked against the model
    out = tmp_path / "run"
    assert train(spec_from_dict(TINY, source="tiny.toml"), out, resume=True).resumed_from is None
    for state in out.glob("*.optim.safetensors"):
        state.unlink()
    text = paths.spec(out).read_text(encoding="utf-8").replace("widths = [8]", "widths = [16]")
    paths.spec(out).write_text(text, encoding="utf-8")
    assert train(load_spec(paths.spec(out)), out, resume=True).resumed_from is None
