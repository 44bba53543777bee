"""`conetool demo` says, on a rerun, what each stage reused and what it made: a rerun said nothing
of it (apart from train's "already holds the finished run"), only the timing table showed it."""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_run import fake_demo, finished_demo
from typer.testing import CliRunner

from conetool.cli import app
from conetool.pipeline.demo_reuse import StageWork, work_of
from conetool.pipeline.kernels_loop import KernelsResult
from conetool.pipeline.run_demo import DemoResult, default_switch_points, demo, demo_spec
from conetool.spec import save_steps
from conetool.training import TrainResult

runner = CliRunner()
SAVED = len(save_steps(demo_spec(steps=24, probe_size=10)))  # the shared run's checkpoints
POINTS = len(default_switch_points(24, save_steps(demo_spec(steps=24, probe_size=10))))
STAGES = ["train", "kernels", "distance", "embed", "spectrum", "switch", "report"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    # demo(out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8]), run once per session
    return finished_demo(tmp_path_factory)


def _work(result: DemoResult) -> dict[str, tuple[int, int]]:
    return {name: (w.reused, w.made) for name, w in result.stage_work.items()}


def test_the_first_run_made_everything(finished):
    assert list(finished.stage_work) == STAGES
    assert _work(finished) == {
        "train": (0, SAVED),
        "kernels": (0, SAVED),
        "distance": (0, 1),
        "embed": (0, 1),
        "spectrum": (0, SAVED),
        "switch": (0, 2),
        "report": (0, 1),
    }


def test_a_rerun_reuses_every_result_it_can(finished):
    again = demo(finished.out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8])
    assert _work(again) == {
        "train": (SAVED, 0),
        "kernels": (SAVED, 0),
        "distance": (1, 0),
        "embed": (0, 1),  # (from distance's S matrix)
        "spectrum": (0, SAVED),  # (it keeps no spectra)
        "switch": (2, 0),
        "report": (0, 1),
    }


def test_a_cli_rerun_says_per_stage_what_it_reused(finished):
    args = ["demo", "--out", str(finished.out), "--steps", "24", "--probe-size", "10", "-q"]
    # (the CLI's default switch points: the shared run has trained only 0 and 8)
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    said = lines[lines.index(f"train: {SAVED} checkpoints reused, 0 trained") :][:7]
    assert said == [
        f"train: {SAVED} checkpoints reused, 0 trained",
        f"kernels: {SAVED} steps reused, 0 computed",
        "distance: S matrix reused",
        "embed: embedding computed",
        f"spectrum: {SAVED} spectra computed",
        f"switch: {POINTS} points reused, 0 trained",
        "report: page written",
    ], result.output


def _fake_demo(monkeypatch, tmp_path: Path, work: dict[str, StageWork]) -> None:
    fake_demo(monkeypatch, tmp_path, stage_seconds=dict.fromkeys(work, 1.0), stage_work=work)


def test_a_first_run_says_nothing_of_reuse(monkeypatch, tmp_path):
    work = {
        "train": StageWork("checkpoints", 0, 25, "trained"),
        "kernels": StageWork("steps", 0, 25, "computed"),
        "distance": StageWork("S matrix", 0, 1, "computed"),
        "report": StageWork("page", 0, 1, "written"),
    }
    _fake_demo(monkeypatch, tmp_path, work)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "-q"])
    assert result.exit_code == 0, result.output
    assert "reused" not in result.output and "trained" not in result.output, result.output
    assert not any(line.startswith("kernels:") for line in result.output.splitlines())


def test_an_interrupted_run_continued_says_what_it_reused(monkeypatch, tmp_path):
    work = {
        "train": StageWork("checkpoints", 25, 0, "trained"),
        "kernels": StageWork("steps", 10, 15, "computed"),
        "distance": StageWork("S matrix", 0, 1, "computed"),
        "report": StageWork("page", 0, 1, "written"),
    }
    _fake_demo(monkeypatch, tmp_path, work)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "-q"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("train: 25 checkpoints reused, 0 trained")
    assert lines[start : start + 4] == [
        "train: 25 checkpoints reused, 0 trained",
        "kernels: 10 steps reused, 15 computed",
        "distance: S matrix computed",
        "report: page written",
    ], result.output


def test_a_resumed_run_reuses_the_checkpoints_up_to_its_step(tmp_path):
    train = TrainResult(
        out=tmp_path,
        steps=24,
        saved_steps=[8, 16, 24],
        resumed_from=8,
        test_loss=0.1,
        test_acc=0.9,
        seconds=1.0,
        run_steps=[0, 4, 8, 16, 24],
    )
    assert work_of("train", train) == StageWork("checkpoints", 3, 2, "trained")


def test_a_step_that_got_only_its_eval_kernel_counts_as_computed(tmp_path):
    kernels = KernelsResult(
        store=tmp_path,
        computed=[8],
        skipped=[0, 4],
        failed={},
        kernel_shape=(10, 10),
        seconds_per_kernel=1.0,
        peak_memory=0,
        device="cpu",
        eval_computed=[4, 8],
        layer_computed=[8],
    )
    assert work_of("kernels", kernels) == StageWork("steps", 1, 2, "computed")
