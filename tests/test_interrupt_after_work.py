"""A Ctrl-C while a command prints its results table, its work done and written, said a bare
"interrupted." (handle_errors had cleared the advice, and the interrupt reached main): now it says
that the command had finished and that there is nothing to rerun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_distance_command import make_store, random_psd
from tiny_run import train_tiny
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app, inspect_cmd, report_cmd
from conetool.cli.app import INTERRUPT_ADVICE

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

FINISHED = (
    "The command had finished: everything it writes is complete and written; only the printing "
    "of its results was cut short (nothing to rerun)."
)
INSPECT_FINISHED = (
    "The command had finished: every checkpoint was read (inspect writes nothing); only the "
    "printing of its results was cut short: rerun it to see them."
)


def _interrupted(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["report", "inspect"])
def test_ctrl_c_while_the_results_are_printed_says_the_work_is_done(tmp_path, monkeypatch, command):
    # what main says once the interrupt reaches it (Typer turns it into exit 130 on the way)
    module = report_cmd if command == "report" else inspect_cmd
    monkeypatch.setattr(module, "print_table", _interrupted)
    if command == "report":
        store = make_store(tmp_path / "store", [0, 1, 2], random_psd([0, 1, 2]))
        argv = ["report", "--store", str(store), "-q"]
    else:
        argv = ["inspect", str(train_tiny(tmp_path)), "-q"]
    outcome = runner.invoke(app, argv)
    assert outcome.exit_code == 130, outcome.output
    assert INTERRUPT_ADVICE == [FINISHED if command == "report" else INSPECT_FINISHED]
    if command == "report":
        assert paths.report_html(store).is_file()


# The results table printed as a real SIGINT arrives (the report's work done): main says it.
INTERRUPT_AS_THE_TABLE_PRINTS = """
import signal, sys
sys.argv = ["conetool", *sys.argv[1:]]
from conetool.cli import main, report_cmd

report_cmd.print_table = lambda *args, **kwargs: signal.raise_signal(signal.SIGINT)
main()
"""


def test_a_real_ctrl_c_as_the_report_table_prints_says_the_report_was_written(tmp_path):
    store = make_store(tmp_path / "store", [0, 1, 2], random_psd([0, 1, 2]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AS_THE_TABLE_PRINTS, "report", "--store", str(store)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == f"interrupted. {FINISHED}\n", done.stderr
    assert paths.report_html(store).is_file()


# Two commands in one process (a test, a program calling main again): the first one's work done,
# a Ctrl-C before the second one's first line (as its options are read).
INTERRUPT_BEFORE_THE_SECOND_COMMAND = """
import signal, sys
from conetool.cli import main, report_cmd

args = sys.argv[1:]
sys.argv = ["conetool", *args]
try:
    main()
except SystemExit as done:
    assert done.code == 0, done.code
report_cmd.starting = lambda *a, **k: signal.raise_signal(signal.SIGINT)
sys.argv = ["conetool", *args]
main()
"""


def test_a_ctrl_c_before_a_second_command_starts_is_not_said_to_be_after_the_first(tmp_path):
    # Was: the first command's 'The command had finished: ... (nothing to rerun).' stayed in
    # INTERRUPT_ADVICE, and main said it of a second command interrupted before it had begun.
    store = make_store(tmp_path / "store", [0, 1, 2], random_psd([0, 1, 2]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            INTERRUPT_BEFORE_THE_SECOND_COMMAND,
            "report",
            "--store",
            str(store),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted.\n", done.stderr


def test_a_command_that_fails_keeps_its_own_advice(tmp_path):
    # a command ended by an error (exit 1) had not finished: a Ctrl-C after it says what it
    # keeps and how to continue, never that it had finished
    outcome = runner.invoke(app, ["report", "--store", str(tmp_path / "no-store"), "-q"])
    assert outcome.exit_code == 1, outcome.output
    assert INTERRUPT_ADVICE and "had finished" not in INTERRUPT_ADVICE[0], INTERRUPT_ADVICE


# inspect exits 1 after its listing when a checkpoint is unusable: a real SIGINT as it exits
INTERRUPT_AS_INSPECT_EXITS = """
import signal, sys
import typer
sys.argv = ["conetool", *sys.argv[1:]]
from conetool.cli import main


class Exit(typer.Exit):
    def __init__(self, code=0):
        signal.raise_signal(signal.SIGINT)
        super().__init__(code)


typer.Exit = Exit  # (as inspect_cmd raises it: typer.Exit(1))
main()
"""

INSPECT_PRINTED = (
    "The command had finished: every checkpoint was read and its listing printed in full "
    "(inspect writes nothing); nothing is lost and nothing to rerun (it exits 130, not 1 for the "
    "unusable checkpoints listed)."
)


def test_a_ctrl_c_as_inspect_exits_after_its_listing_says_nothing_was_cut_short(tmp_path):
    # inspect printed its whole listing and exited 1 (a checkpoint unusable); a Ctrl-C then said
    # 'only the printing of its results was cut short: rerun it to see them', which it was not
    run = train_tiny(tmp_path)
    cut = paths.checkpoint(run, 5)
    cut.write_bytes(cut.read_bytes()[:100])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AS_INSPECT_EXITS, "inspect", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == f"interrupted. {INSPECT_PRINTED}\n", done.stderr
    assert "checkpoints usable (headers checked)." in done.stdout, done.stdout
    # what main says of one that exits 0, all usable: nothing cut short either
    cut.unlink()
    outcome = runner.invoke(app, ["inspect", str(run), "-q"])
    assert outcome.exit_code == 0, outcome.output
    exits_0 = INSPECT_PRINTED.replace("not 1 for the unusable checkpoints listed)", "not 0)")
    assert INTERRUPT_ADVICE == [exits_0], INTERRUPT_ADVICE
