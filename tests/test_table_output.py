"""Results tables where the output is not a terminal (a log, a pipe): printed whole, not cut to
rich's 80 columns (the kernels table's first header read ``comput…``); ``COLUMNS`` and a
terminal still fold them to their width. Messages there are one line each (a path never cut)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table
from tiny_run import run_fixtures
from typer.testing import CliRunner

from conetool.cli import app
from conetool.cli.table_output import print_table

trained, run = run_fixtures()
HEADERS = ["computed", "stored before", "left out", "failed", "kernel", "s / kernel"]
HEADERS += ["peak memory", "device", "one more header"]


def wide_table() -> Table:
    table = Table(title="a table wider than 80 columns")
    for header in HEADERS:
        table.add_column(header, justify="right")
    table.add_row(*["12345"] * len(HEADERS))
    return table


def header_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if "computed" in line]
    return line


def test_a_log_gets_the_whole_table(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    print_table(Console(file=out), wide_table())  # a StringIO is no terminal: 80 columns
    line = header_line(out.getvalue())
    assert all(header in line for header in HEADERS), line
    assert "…" not in out.getvalue()
    assert len(line) > 80


def test_columns_and_terminals_fold_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "60")
    out = io.StringIO()
    print_table(Console(file=out), wide_table())
    assert max(len(line) for line in out.getvalue().splitlines()) <= 60
    monkeypatch.delenv("COLUMNS")
    out = io.StringIO()
    terminal = Console(file=out, force_terminal=True, width=70, color_system=None)
    print_table(terminal, wide_table())
    assert max(len(line) for line in out.getvalue().splitlines()) <= 70


def test_a_narrow_table_is_printed_as_before(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    table = Table()
    table.add_column("step")
    table.add_row("10")
    printed, plain = io.StringIO(), io.StringIO()
    print_table(Console(file=printed), table)
    Console(file=plain).print(table)
    assert printed.getvalue() == plain.getvalue()


def test_the_kernels_table_of_a_log_names_every_column(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("COLUMNS", raising=False)
    result = CliRunner().invoke(
        app, ["kernels", str(run), "--store", str(tmp_path / "store"), "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    line = header_line(result.output)
    for header in ("computed", "stored before", "left out", "s / kernel", "peak memory"):
        assert header in line, line


@pytest.mark.parametrize("columns", ["0", "00"])
def test_columns_zero_loses_no_line_of_the_command_line(tmp_path: Path, columns: str):
    """COLUMNS=0 (a width unknown, as shutil reads it) made rich print every line at width 0,
    that is nothing: the error of a failing command and --help were lost, exit status alone."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": columns}
    missing = tmp_path / "missing"
    done = subprocess.run(
        [sys.executable, "-m", "conetool", "inspect", str(missing), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "does not exist" in done.stderr and "missing" in done.stderr, done.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "conetool", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert helped.returncode == 0 and "inspect" in helped.stdout, helped.stdout


def test_a_log_gets_each_message_whole_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # rich folded notes and warnings to 80 columns where there is no terminal, cutting a path
    # longer than that in two: neither copied nor found by grep in a log
    import torch

    monkeypatch.delenv("COLUMNS", raising=False)
    deep = tmp_path / ("a_folder_with_a_long_name_" * 4) / "checkpoints_of_the_run"
    deep.mkdir(parents=True)
    torch.save({"weight": torch.zeros(2)}, deep / "ckpt_10.pt")
    result = CliRunner().invoke(app, ["inspect", str(deep)])
    (line,) = [line for line in result.output.splitlines() if "torch.save" in line]
    assert line.startswith("note: ") and len(line) > 80, result.output
    assert "ckpt_10.pt is a torch.save file" in line, result.output
    # the listed folder's path, longer than 80 columns, whole on the command's first line
    assert any(str(deep) in each for each in result.output.splitlines()), result.output
