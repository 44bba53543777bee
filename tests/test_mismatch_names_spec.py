"""A spec whose [model] does not fit the checkpoints is named by its file in the fix, as other
spec errors name it (``run.toml: ...``), in kernels, inspect (headers and --verify) and switch."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from conetool.cli import app
from conetool.spec import spec_from_toml
from conetool.training import train

runner = CliRunner()

RUN = """
[model]
arch = "mlp"
num_classes = 3
widths = [8]
activation = "tanh"
[data]
dataset = "synthetic"
shape = [4]
num_classes = 3
train_size = 48
test_size = 12
[probe]
size = 6
[train]
steps = 4
batch_size = 8
lr = 0.2
save_every = 2
"""


def test_a_model_that_does_not_fit_names_the_spec_file(tmp_path: Path) -> None:
    ckpts, store = tmp_path / "ckpts", tmp_path / "store"
    train(spec_from_toml(RUN, source="run.toml"), ckpts)
    assert runner.invoke(app, ["kernels", str(ckpts), "--store", str(store), "-q"]).exit_code == 0
    other = tmp_path / "other.toml"
    other.write_text(RUN.replace("widths = [8]", "widths = [9]"))
    sweep = tmp_path / "sweep"
    named = f"Check that the spec's [model] arch, num_classes and options (in {other}) are"
    unnamed = []
    for args in (
        ["kernels", str(ckpts), "--spec", str(other), "--store", str(tmp_path / "new")],
        ["inspect", str(ckpts), "--spec", str(other)],
        ["inspect", str(ckpts), "--spec", str(other), "--verify"],
        # (a store of its own: in the store of the run's kernels another spec is refused first)
        ["switch", "--at", "2", "--store", str(sweep), "--ckpts", str(ckpts), "--spec", str(other)],
    ):
        result = runner.invoke(app, args)
        assert "does not fit the model (MLP)" in result.output, (args, result.output)
        if named not in " ".join(result.output.split()):
            unnamed.append((args[0], args[-1], result.output))
    assert unnamed == []
