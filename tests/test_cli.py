"""The command line end to end on tiny specs in a temporary folder (no network)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.cli.app import _check_device

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

TINY_SPEC = """
[model]
arch = "mlp"
num_classes = 3
widths = [8]
[data]
dataset = "synthetic"
shape = [4]
num_classes = 3
train_size = 60
test_size = 30
[train]
steps = 10
batch_size = 8
save_every = 5
eval_every = 5
"""


def command_names() -> list[str]:
    return sorted(c.name or c.callback.__name__ for c in app.registered_commands)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


def test_train_end_to_end(tmp_path, spec_file):
    out = tmp_path / "ckpts"
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert re.search(r"final test accuracy: \d\.\d{4}", result.output)
    assert paths.checkpoint(out, 10).exists() and paths.spec(out).exists()
    assert paths.metrics(out).exists()


def test_second_run_refused_with_exit_1_and_no_traceback(tmp_path, spec_file):
    out = tmp_path / "ckpts"
    assert runner.invoke(app, ["train", str(spec_file), "--out", str(out), "-q"]).exit_code == 0
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(out), "-q"])
    assert result.exit_code == 1
    assert "already holds a run" in result.output and "--resume" in result.output
    assert "Traceback" not in result.output
    resumed = runner.invoke(app, ["train", str(spec_file), "--out", str(out), "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output


def test_an_interrupted_train_names_the_command_that_continues_it(tmp_path, spec_file, monkeypatch):
    import shlex

    import conetool.training
    from conetool.progress import NullProgress

    real = conetool.training.train

    class Interrupt(NullProgress):
        def task(self, description, total):
            bar = super().task(description, total)

            def advance(amount=1, **fields):
                if fields.get("step") == 7:
                    raise KeyboardInterrupt

            bar.advance = advance
            return bar

    monkeypatch.setattr(
        conetool.training, "train", lambda *a, **k: real(*a, **{**k, "progress": Interrupt()})
    )
    out = tmp_path / "ckpts"
    cut = runner.invoke(app, ["train", str(spec_file), "--out", str(out)])
    assert cut.exit_code == 130 and "Traceback" not in cut.output
    command = re.search(r"continue with: (conetool train .*)", cut.output.replace("\n", " "))
    assert command is not None, cut.output
    monkeypatch.undo()
    args = shlex.split(command.group(1))[1:]
    assert args == ["train", str(spec_file), "--out", str(out), "--resume"]
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "3 (2 written)" in resumed.output  # steps 0, 5, 10; resumed from 5, 5 written again


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("steps = 10", "stepz = 10"), "unknown key 'stepz' in [train]"),
        (lambda s: s.replace('arch = "mlp"', 'arch = "resnet99"'), "resnet99"),
        (lambda s: s.replace('arch = "mlp"', 'arch = "nosuchpkg.models:make"'), "nosuchpkg"),
        (lambda s: s.replace('"synthetic"', '"imagenet"'), "imagenet"),
    ],
)
def test_bad_spec_is_one_clean_message(tmp_path, spec_file, edit, message):
    spec_file.write_text(edit(TINY_SPEC))
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_data_root_names_it(tmp_path, spec_file):
    spec_file.write_text(
        TINY_SPEC.replace(
            'dataset = "synthetic"', f'dataset = "mnist"\nroot = "{tmp_path / "nodata"}"'
        ).replace("num_classes = 3\ntrain_size", "train_size")
    )
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert str(tmp_path / "nodata") in result.output
    assert "download = true" in result.output


def test_debug_shows_the_traceback(tmp_path, spec_file):
    spec_file.write_text(TINY_SPEC.replace("steps = 10", "stepz = 10"))
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "o"), "--debug"])
    assert result.exit_code == 1
    assert "Traceback" in result.output


def test_usage_error_exits_2(spec_file):
    result = runner.invoke(app, ["train", str(spec_file)])  # --out is required
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["train", "kernels", "switch", "demo"])
def test_a_misspelt_device_is_a_usage_error_before_anything_runs(tmp_path, spec_file, command):
    args = {
        "train": ["train", str(spec_file), "--out", str(tmp_path / "o")],
        "kernels": ["kernels", str(tmp_path), "--store", str(tmp_path / "o")],
        "switch": ["switch", "--at", "0", "--store", str(tmp_path / "o")],
        "demo": ["demo", "--out", str(tmp_path / "o")],
    }[command]
    result = runner.invoke(app, [*args, "--device", "gpu"])
    assert result.exit_code == 2 and "'gpu' is not a device" in result.output
    assert not (tmp_path / "o").exists()
    for good in ("cpu", "CUDA:1", " auto "):  # spellings the library accepts pass
        assert _check_device(good) == good


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help_with_an_example(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_every_command_appears_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in command_names():
        assert f"conetool {name}" in readme, name


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "conetool", "--help"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "train" in done.stdout


def test_unknown_option_names_the_commands_that_take_it(tmp_path):
    # `--ref` belongs to distance: say so, instead of Typer's "Possible options: --store"
    result = runner.invoke(app, ["kernels", str(tmp_path), "--ref", "3"])
    assert result.exit_code == 2
    text = " ".join(result.output.replace("│", " ").split())
    assert "No such option: --ref" in text and "it is an option of conetool distance" in text
    assert "Possible options" not in text
    # `--out=...` (the joined form) is taken by three commands, named in the app's order
    result = runner.invoke(app, ["distance", f"--out={tmp_path}"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2
    assert "conetool train, conetool report and conetool demo" in text
    # an option no command takes keeps Typer's own message and suggestions
    result = runner.invoke(app, ["kernels", str(tmp_path), "--refx", "3"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "No such option: --refx" in text
    assert "is an option of" not in text


def test_an_option_of_this_command_missing_its_value_is_not_called_unknown(tmp_path):
    # `distance --store` (no value) is Click's "requires an argument", which also carries the
    # option's name: it must not be reworded as "No such option ... does not take it"
    result = runner.invoke(app, ["distance", "--store"])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2
    assert "requires an argument" in text
    assert "No such option" not in text and "does not take it" not in text
