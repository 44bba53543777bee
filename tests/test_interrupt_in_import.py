"""A Ctrl-C while a command imports a module (the data set's loader, a plotting library, ...
mid-stage) ends the process on the spot (conetool.cli.main), and says what any other interrupt
of the command says: it printed a bare "interrupted.", without "rerun the same command to
continue" (or train's "continue with: ... --resume"). So did one while the command, its first
line printed, loads PyTorch (most of a short report's time)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "digits_lenet.toml"

# SIGINT while the command, already running (inside handle_errors), imports scikit-learn: the
# digits' loader imports it when the data set is first loaded.
INTERRUPT_IN_A_COMMANDS_IMPORT = """
import signal, sys

class Arm:
    def find_spec(self, name, path=None, target=None):
        if name == ARMED:
            signal.raise_signal(signal.SIGINT)
        return None

sys.meta_path.insert(0, Arm())
sys.argv = ["conetool", *sys.argv[1:]]
from conetool.cli import main
main()
"""
MID_STAGE = 'ARMED = "sklearn"\n' + INTERRUPT_IN_A_COMMANDS_IMPORT
# SIGINT as the command, its first line printed, imports PyTorch (the CLI itself does not).
AT_START = 'ARMED = "torch"\n' + INTERRUPT_IN_A_COMMANDS_IMPORT
DEMO_KEEPS = (
    "the run's checkpoints, the store and its finished kernels, and the stages done are kept"
)


@pytest.mark.parametrize(
    ("command", "advice"),
    [
        (["demo", "--steps", "8"], f" ({DEMO_KEEPS}); rerun the same command to continue."),
        (
            ["train", str(SPEC)],
            " (the checkpoints saved so far are kept); continue with: conetool train {spec} "
            "--out {out} --resume",
        ),
    ],
    ids=["demo", "train"],
)
def test_ctrl_c_inside_a_commands_import_says_how_to_continue(tmp_path, command, advice):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", MID_STAGE, *command, "--out", str(out), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    said = advice.format(spec=shlex.quote(str(SPEC)), out=shlex.quote(str(out)))
    expected = f"interrupted. Everything already written is complete and valid{said}\n"
    assert done.stderr == expected, done.stderr


@pytest.mark.parametrize(
    ("command", "keeps"),
    [
        (["demo", "--out", "{tmp}/demo"], DEMO_KEEPS),
        (["report", "--store", "{tmp}/store"], "the store's kernels and results are as they were"),
        (["distance", "--store", "{tmp}/store"], None),  # its results are written at the end
    ],
    ids=["demo", "report", "distance"],
)
def test_ctrl_c_while_a_command_loads_pytorch_says_what_is_kept_and_how_to_continue(
    tmp_path, command, keeps
):
    # it said a bare "interrupted." (the advice was set only once the command's modules were
    # imported), which most of a short report's run is
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [part.format(tmp=tmp_path) for part in command]
    done = subprocess.run(
        [sys.executable, "-c", AT_START, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    kept = f" ({keeps})" if keeps else ""
    expected = (
        f"interrupted. Everything already written is complete and valid{kept}; rerun the same "
        "command to continue.\n"
    )
    assert done.stderr == expected, done.stderr
    assert list(tmp_path.iterdir()) == []
