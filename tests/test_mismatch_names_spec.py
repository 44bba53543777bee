"""A spec whose [model] does not fit the checkpoints is named by its file in the fix, as other
spec errors name it (``run.toml: ...``), in kernels, inspect (headers and --verify) and switch."""

from __future__ import annotations

from pathlib import Path

from tiny_run import tiny_spec
from typer.testing import CliRunner

from conetool.cli import app
from conetool.spec import save_spec, spec_from_dict
from conetool.training import train

runner = CliRunner()


def test_a_model_that_does_not_fit_names_the_spec_file(tmp_path: Path) -> None:
    ckpts, store = tmp_path / "ckpts", tmp_path / "store"
    train(spec_from_dict(tiny_spec([8]), source="run.toml"), ckpts)  # (steps 0, 5, 10)
    assert runner.invoke(app, ["kernels", str(ckpts), "--store", str(store), "-q"]).exit_code == 0
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(tiny_spec([9]), source=str(other)), other)
    sweep = tmp_path / "sweep"
    named = f"Check that the spec's [model] arch, num_classes and options (in {other}) are"
    unnamed = []
    for args in (
        ["kernels", str(ckpts), "--spec", str(other), "--store", str(tmp_path / "new")],
        ["inspect", str(ckpts), "--spec", str(other)],
        ["inspect", str(ckpts), "--spec", str(other), "--verify"],
        # (a store of its own: in the store of the run's kernels another spec is refused first)
        ["switch", "--at", "5", "--store", str(sweep), "--ckpts", str(ckpts), "--spec", str(other)],
    ):
        result = runner.invoke(app, args)
        assert "does not fit the model (MLP)" in result.output, (args, result.output)
        if named not in " ".join(result.output.split()):
            unnamed.append((args[0], args[-1], result.output))
    assert unnamed == []
