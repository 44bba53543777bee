"""Help pages and progress lines read as a user expects (issue 16, item 7)."""

from __future__ import annotations

import pytest
from demo_run import finished_demo
from typer.testing import CliRunner

from conetool.cli import app
from conetool.cli.help_format import reflow
from conetool.cli.progress_display import per_item

runner = CliRunner()
COMMANDS = [
    "train",
    "inspect",
    "kernels",
    "distance",
    "embed",
    "spectrum",
    "switch",
    "report",
    "demo",
]


@pytest.mark.parametrize("command", [*COMMANDS, None])
def test_flags_show_no_bool_type(command: str | None) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = runner.invoke(app, args, env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "<bool>" not in result.output


def test_help_paragraphs_do_not_break_mid_sentence() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "(plus the optimizer state beside each), conetool.toml (the resolved spec)" in (
        result.output
    )
    kernels = runner.invoke(app, ["kernels", "--help"], env={"COLUMNS": "200"})
    # a command line keeps its own line
    assert "\n torchrun --nproc-per-node 4 -m conetool kernels" in kernels.output
    assert "spec's [probe] size" in kernels.output  # not eaten as rich markup


def test_reflow_joins_lines_but_keeps_commands() -> None:
    doc = "Title.\n\n    Writes a and\n    b.\n\n    Run it:\n    conetool x --y\n"
    assert reflow(doc) == "Title.\n\nWrites a and b.\n\nRun it:\nconetool x --y"


@pytest.mark.parametrize(
    "done, seconds, text",
    [
        (0, 5.0, ""),
        (890, 1.0, "1.1 ms each"),
        (10, 1.0, "100 ms each"),
        (1, 42.0, "42.0 s each"),
        (2, 600.0, "5.0 min each"),
        (1_000_000, 1.0, "1 µs each"),
    ],
)
def test_progress_shows_time_per_item(done: int, seconds: float, text: str) -> None:
    assert per_item(done, seconds) == text


def test_a_command_prints_its_first_line_before_loading(tmp_path) -> None:
    result = runner.invoke(app, ["embed", "--store", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert result.output.startswith("conetool embed: loading PyTorch ...")
    quiet = runner.invoke(app, ["embed", "--store", str(tmp_path / "none"), "-q"])
    assert "loading PyTorch" not in quiet.output


def test_demo_help_names_every_stage_the_demo_runs(tmp_path_factory) -> None:
    """The demo's help says what it runs (it left out the spectrum stage)."""
    stages = finished_demo(tmp_path_factory).stage_seconds
    assert len(stages) == 7
    said = {"train": "Trains", "distance": "distances", "embed": "embedding"}
    text = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    assert [s for s in stages if said.get(s, s) not in text] == []


def test_distance_help_names_every_file_distance_writes(tmp_path_factory) -> None:
    """distance's help listed what it writes but left out noise.json (the demo's distance
    stage estimates the noise floor, so its folder holds one)."""
    folder = finished_demo(tmp_path_factory).store / "distance"
    written = {p.name for p in folder.iterdir() if p.suffix in (".csv", ".json", ".npz")}
    assert "noise.json" in written
    text = runner.invoke(app, ["distance", "--help"], env={"COLUMNS": "200"}).output
    assert sorted(name for name in written if name not in text) == []
