"""What the store remembers (issue 16, item 4): the checkpoint selection of `conetool kernels`
(path, --step-regex, --steps, --every) and where a "pkg.mod:factory" spec's modules were imported
from, reused by `switch` and `distance` and written into the report's Reproduce block."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_run import SPEC_TOML
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app

runner = CliRunner()

TINY_SPEC = SPEC_TOML  # 60 examples at batch 8: 8 iterations per epoch

REGEX = r"run-a_(\d+)"

MODEL_MODULE = """
from torch import nn


def make(num_classes=3, input_shape=(4,)):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, num_classes))
"""

DATA_MODULE = """
import torch
from torch.utils.data import TensorDataset


def make(seed=0, n_train=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + 20, 4, generator=g)
    y = torch.arange(n_train + 20) % 3
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])
"""


def _invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reproduce(store: Path) -> str:
    text = paths.report_md(store).read_text()
    return text[text.index("Reproduce") :]


@pytest.fixture
def named_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run saved as run-a_0000.safetensors ... with no step metadata: default discovery
    cannot read a step from these names, --step-regex 'run-a_(\\d+)' can."""
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY_SPEC)
    run = tmp_path / "run"
    _invoke("train", spec, "--out", run, "-q")
    named = tmp_path / "named"
    named.mkdir()
    for step in (0, 5, 10):
        save_file(
            load_file(str(paths.checkpoint(run, step))), named / f"run-a_{step:04d}.safetensors"
        )
    return named, spec


def test_switch_and_report_reuse_the_recorded_step_regex(
    tmp_path: Path, named_run: tuple[Path, Path]
) -> None:
    named, spec = named_run
    store = tmp_path / "store"
    assert runner.invoke(app, ["kernels", str(named), "--spec", str(spec), "-q"]).exit_code == 1
    _invoke(
        "kernels",
        named,
        "--spec",
        spec,
        "--store",
        store,
        "--step-regex",
        REGEX,
        "--every",
        "5",
        "-q",
    )
    manifest = json.loads(paths.manifest(store).read_text())
    assert manifest["selection"] == {
        "path": str(named.resolve()),
        "step_regex": REGEX,
        "steps": None,
        "every": 5,
    }
    assert manifest["imports"] == []

    again = _invoke("kernels", named, "--spec", spec, "--store", store)  # a rerun: no regex
    assert f"using --step-regex '{REGEX}', recorded in the store" in again

    out = _invoke("switch", "--at", "5", "--store", store)  # no --step-regex
    assert f"using --step-regex '{REGEX}', recorded in the store" in out
    assert json.loads(paths.switch_results_json(store).read_text())["points"][0]["at"] == 5

    # An explicit flag overrides the record.
    wrong = runner.invoke(
        app, ["switch", "--at", "5", "--store", str(store), "--step-regex", r"nope_(\d+)"]
    )
    assert wrong.exit_code == 1
    assert "recorded in the store" not in wrong.output

    _invoke("report", "--store", store, "-q")
    reproduce = _reproduce(store)
    kernels_line = next(line for line in reproduce.splitlines() if "conetool kernels" in line)
    assert f"--step-regex '{REGEX}'" in kernels_line and "--every 5" in kernels_line
    assert "PYTHONPATH" not in reproduce


def test_a_store_without_the_record_still_works(
    tmp_path: Path, named_run: tuple[Path, Path]
) -> None:
    named, spec = named_run
    store = tmp_path / "store"
    _invoke("kernels", named, "--spec", spec, "--store", store, "--step-regex", REGEX, "-q")
    manifest = json.loads(paths.manifest(store).read_text())
    for key in ("selection", "imports"):  # as conetool wrote it before the record
        manifest.pop(key, None)
    paths.manifest(store).write_text(json.dumps(manifest))

    unnamed = runner.invoke(app, ["switch", "--at", "5", "--store", str(store)])
    assert unnamed.exit_code == 1  # no recorded regex: the names' problem and its fix
    assert "no step recoverable" in unnamed.output and "--skip-bad" not in unnamed.output
    assert "recorded in the store" not in unnamed.output
    _invoke("switch", "--at", "5", "--store", store, "--step-regex", REGEX, "-q")
    _invoke("report", "--store", store, "-q")
    reproduce = _reproduce(store)
    assert "conetool kernels" in reproduce and "--step-regex" not in reproduce


def _model_spec(folder: Path) -> Path:
    """``folder / "byo.toml"``: the tiny spec with the model factory of :func:`user_modules`."""
    spec = folder / "byo.toml"
    spec.write_text(
        TINY_SPEC.replace(
            'arch = "mlp"\nnum_classes = 3\nwidths = [8]',
            'arch = "conetool_remember_model:make"\nnum_classes = 3',
        )
    )
    return spec


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A model factory and a data factory, each in its own folder on sys.path."""
    models, data = tmp_path / "models_src", tmp_path / "data_src"
    for folder, name, text in (
        (models, "conetool_remember_model", MODEL_MODULE),
        (data, "conetool_remember_data", DATA_MODULE),
    ):
        folder.mkdir()
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.delitem(sys.modules, name, raising=False)
    return models, data


def test_import_paths_are_recorded_and_reproduced_with_pythonpath(
    tmp_path: Path, user_modules: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    models, data = user_modules
    spec = tmp_path / "byo.toml"
    spec.write_text(
        TINY_SPEC.replace(
            'arch = "mlp"\nnum_classes = 3\nwidths = [8]',
            'arch = "conetool_remember_model:make"\nnum_classes = 3',
        ).replace(
            'dataset = "synthetic"\nshape = [4]\nnum_classes = 3\ntrain_size = 60\ntest_size = 30',
            'dataset = "conetool_remember_data:make"\nn_train = 40',
        )
    )
    run, store = tmp_path / "run", tmp_path / "store"
    _invoke("train", spec, "--out", run, "-q")
    _invoke("kernels", run, "--store", store, "-q")
    manifest = json.loads(paths.manifest(store).read_text())
    assert manifest["imports"] == [
        {
            "key": "[model] arch",
            "module": "conetool_remember_model",
            "path": str(models.resolve()),
            "installed": False,
            "sha256": _sha256(models / "conetool_remember_model.py"),
        },
        {
            "key": "[data] dataset",
            "module": "conetool_remember_data",
            "path": str(data.resolve()),
            "installed": False,
            "sha256": _sha256(data / "conetool_remember_data.py"),
        },
    ]

    # Later commands find the modules where kernels did, even when they are not on sys.path.
    for folder in (models, data):
        monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p) != folder])
    for name in ("conetool_remember_model", "conetool_remember_data"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    noted = f"imported 'conetool_remember_model' ([model] arch) from {models.resolve()}"
    out = _invoke("distance", "--store", store)  # its noise floor rebuilds the model
    assert noted in out and "not estimated" not in out
    noise = json.loads(paths.distance_summary(store).read_text())["noise"]
    assert noise is not None
    # A floor read from noise.json builds no model: nothing is imported, and no note says so
    # (the note tells where this run imported the module from, and how to import it elsewhere).
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p) != models])
    monkeypatch.delitem(sys.modules, "conetool_remember_model", raising=False)
    out = _invoke("distance", "--store", store)
    assert "imported 'conetool_remember_model'" not in out, out
    assert "conetool_remember_model" not in sys.modules  # not imported: the note would be false
    assert json.loads(paths.distance_summary(store).read_text())["noise"] == noise  # reused
    for name in ("conetool_remember_model", "conetool_remember_data"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p) not in (models, data)])
    out = _invoke("switch", "--at", "5", "--store", store)
    assert noted in out
    assert f"imported 'conetool_remember_data' ([data] dataset) from {data.resolve()}" in out

    _invoke("report", "--store", store, "-q")
    reproduce = _reproduce(store)
    env = f"PYTHONPATH={models.resolve()}{os.pathsep}{data.resolve()} "
    for command in ("train", "kernels", "switch"):
        line = next(
            x for x in reproduce.splitlines() if f"conetool {command} " in x and x[0] != "#"
        )
        assert line.startswith(env + f"conetool {command} "), line
    report_line = next(x for x in reproduce.splitlines() if "conetool report" in x)
    assert "PYTHONPATH" not in report_line
    assert f"# [model] arch imports 'conetool_remember_model' from {models.resolve()}" in reproduce


def test_report_of_an_old_store_names_the_module_to_make_importable(
    tmp_path: Path, user_modules: tuple[Path, Path]
) -> None:
    spec = _model_spec(tmp_path)
    run, store = tmp_path / "run", tmp_path / "store"
    _invoke("train", spec, "--out", run, "-q", "--threads", "1")
    _invoke("kernels", run, "--store", store, "-q", "--steps", "0:5")
    manifest = json.loads(paths.manifest(store).read_text())
    for key in ("selection", "imports"):
        manifest.pop(key, None)
    paths.manifest(store).write_text(json.dumps(manifest))
    _invoke("report", "--store", store, "-q")
    reproduce = _reproduce(store)
    assert "# [model] arch imports 'conetool_remember_model': make it importable" in reproduce
    assert "PYTHONPATH=" not in reproduce and "--steps" not in reproduce


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_switch_finds_the_recorded_import_folder_without_the_manifest(
    tmp_path: Path, user_modules: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Was: only manifest.json recorded where kernels imported a "pkg.mod:factory" model from, so
    # switch on a store whose manifest was deleted or damaged (which it reads around, from the
    # kernel files) could not import it. Each kernel file carries its run's imports record too.
    models, _ = user_modules
    spec = _model_spec(tmp_path)
    run, store = tmp_path / "run", tmp_path / "store"
    _invoke("train", spec, "--out", run, "-q")
    _invoke("kernels", run, "--store", store, "-q")
    recorded = json.loads(paths.manifest(store).read_text())["imports"]
    for step in (0, 5, 10):
        with safe_open(str(paths.kernel(store, step)), framework="pt") as handle:
            assert json.loads(handle.metadata()["imports"]) == recorded
    manifest = paths.manifest(store)
    if how == "deleted":
        manifest.unlink()
    else:
        manifest.write_text(manifest.read_text()[:100])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p) != models])
    monkeypatch.delitem(sys.modules, "conetool_remember_model", raising=False)
    out = _invoke("switch", "--at", "5", "--store", store)
    assert f"imported 'conetool_remember_model' ([model] arch) from {models.resolve()}" in out


def test_carried_imports_falls_back_to_the_newest_other_specs_files_as_the_directory_does():
    """Without a file of the spec in use carrying an imports record, the record comes from the
    newest other spec's files that carry one, as the checkpoint directory and the step regex
    are decided (remembered._decided: spec by spec); was: the newest file of any other spec, so
    an older file of the spec whose files are newest lost to a file of a third spec between."""
    from conetool.pipeline.remembered import carried_imports

    def meta(spec_hash, folder=None):
        record = [{"key": "[model] arch", "module": "m", "path": folder, "installed": False}]
        return {"spec_hash": spec_hash, **({"imports": json.dumps(record)} if folder else {})}

    def folder(found):
        return found["imports"][0]["path"]

    newest_first = [meta("b"), meta("c", "/c"), meta("b", "/b"), meta("a")]
    assert folder(carried_imports(newest_first, "z")) == "/b"
    assert folder(carried_imports([meta("a", "/a"), *newest_first], "a")) == "/a"  # its own
    assert carried_imports([meta("a"), meta("b")], "a") == {}  # none carries one


def test_a_module_edited_after_kernels_is_warned_of_by_kernels_distance_and_switch(
    tmp_path: Path, user_modules: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same parameters, another function (ReLU -> Tanh): the checkpoints still load, so
    nothing else would tell that the noise floor, switch or new kernels use another model."""
    models, _ = user_modules
    spec = _model_spec(tmp_path)
    run, store = tmp_path / "run", tmp_path / "store"
    _invoke("train", spec, "--out", run, "-q")
    _invoke("kernels", run, "--store", store, "--steps", "0:5")
    source = models / "conetool_remember_model.py"
    source.write_text(source.read_text().replace("nn.ReLU()", "nn.Tanh()"))
    monkeypatch.delitem(sys.modules, "conetool_remember_model", raising=False)
    changed = "the module 'conetool_remember_model' ([model] arch, "
    assert changed in _invoke("distance", "--store", store)  # its noise floor rebuilds the model
    assert changed in _invoke("switch", "--at", "5", "--store", store)
    source.write_text(source.read_text().replace("nn.Tanh()", "nn.ReLU()"))  # as it was
    monkeypatch.delitem(sys.modules, "conetool_remember_model", raising=False)
    assert changed not in _invoke("switch", "--at", "5", "--store", store)
    source.write_text(source.read_text().replace("nn.ReLU()", "nn.Tanh()"))
    monkeypatch.delitem(sys.modules, "conetool_remember_model", raising=False)
    assert changed in _invoke("kernels", run, "--store", store)  # adds steps to the old ones
