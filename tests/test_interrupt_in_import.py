"""A Ctrl-C while a command imports a module (the data set's loader, a plotting library, ...
mid-stage) ends the process on the spot (conetool.cli.main), and says what any other interrupt
of the command says: it printed a bare "interrupted.", without "rerun the same command to
continue" (or train's "continue with: ... --resume")."""

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
        if name == "sklearn":
            signal.raise_signal(signal.SIGINT)
        return None

sys.meta_path.insert(0, Arm())
sys.argv = ["conetool", *sys.argv[1:]]
from conetool.cli import main
main()
"""


@pytest.mark.parametrize(
    ("command", "advice"),
    [
        (["demo", "--steps", "8"], "rerun the same command to continue."),
        (["train", str(SPEC)], "continue with: conetool train {spec} --out {out} --resume"),
    ],
    ids=["demo", "train"],
)
def test_ctrl_c_inside_a_commands_import_says_how_to_continue(tmp_path, command, advice):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_IN_A_COMMANDS_IMPORT, *command, "--out", str(out), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    said = advice.format(spec=shlex.quote(str(SPEC)), out=shlex.quote(str(out)))
    expected = f"interrupted. Everything already written is complete and valid; {said}\n"
    assert done.stderr == expected, done.stderr
