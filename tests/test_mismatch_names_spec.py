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


def test_data_and_model_class_counts_that_differ_name_both_keys(tmp_path: Path) -> None:
    """A spec whose synthetic [data] num_classes is not its [model] num_classes got, from
    kernels, inspect and switch, the model's output-shape message naming neither the spec file
    nor data.num_classes (fuzz_cli --mode spec --seed 43 --only 7); now each names the file,
    both keys and values, and how to make them agree, before reading any checkpoint."""
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(tiny_spec(), source="run.toml"), ckpts)  # 3 classes, steps 0, 5, 10
    raw = tiny_spec()
    raw["data"]["num_classes"] = 2
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(raw, source=str(other)), other)
    said = (
        f"{other}: [model] num_classes = 3, but [data] num_classes = 2: the synthetic data set "
        "has 2 classes"
    )
    fix = "set [model] num_classes = 2, or [data] num_classes = 3."
    for args in (
        ["kernels", str(ckpts), "--spec", str(other), "--store", str(tmp_path / "new")],
        ["inspect", str(ckpts), "--spec", str(other)],
        [
            "switch",
            "--at",
            "5",
            "--store",
            str(tmp_path / "sw"),
            "--ckpts",
            str(ckpts),
            "--spec",
            str(other),
        ],
        ["train", str(other), "--out", str(tmp_path / "run2")],
    ):
        result = runner.invoke(app, args)
        text = " ".join(result.output.split())
        assert result.exit_code == 1, (args, result.output)
        assert said in text and fix in text, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "new").exists() and not (tmp_path / "run2").exists()


def test_a_built_in_model_of_another_class_count_than_the_data_names_the_key(
    tmp_path: Path,
) -> None:
    """[model] num_classes = 5 for a built-in model on 3-class data: kernels says so, naming
    the spec file and the data set's count, not the checkpoints' tensor shapes."""
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(tiny_spec(), source="run.toml"), ckpts)
    raw = tiny_spec()
    raw["model"]["num_classes"] = 5
    raw["data"] = {"dataset": "digits"}
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(raw, source=str(other)), other)
    result = runner.invoke(app, ["inspect", str(ckpts), "--spec", str(other)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"{other}: [model] num_classes = 5, but data set 'digits' has 10 classes" in text, (
        result.output
    )
    assert "Set num_classes = 10 in [model]." in text


def test_a_spec_of_another_data_set_names_the_data_set_among_the_causes(tmp_path: Path) -> None:
    """A spec of the run but with another data set (inputs of shape (1, 28, 28) for MNIST
    instead of the run's 4 features) builds a model whose first layer does not fit the
    checkpoints; the message named [model] only (fuzz_cli --mode semantic --seed 0 --only 23),
    though the model's [model] keys were those of the run. It names [data] dataset too."""
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(tiny_spec(), source="run.toml"), ckpts)
    raw = tiny_spec()
    raw["data"] = {"dataset": "mnist", "root": str(tmp_path / "nowhere")}
    raw["model"]["num_classes"] = 10
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(raw, source=str(other)), other)
    result = runner.invoke(app, ["inspect", str(ckpts), "--spec", str(other)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "'fc_layers.0.weight' expected (6, 784), found (6, 4)" in text, text
    assert (
        "are those of the run that wrote this checkpoint, and its [data] dataset too (the data "
        "set gives the model's input shape)" in text
    ), text
