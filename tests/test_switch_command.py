"""`conetool switch` end to end: exactness on a model linear in θ, resume, bad input."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import (
    CheckpointError,
    ConetoolError,
    DataError,
    ModelError,
    StoreError,
    StoreReplacedError,
)
from conetool.loop import TrainingLoop
from conetool.pipeline import (
    run_switch,
    switch_points,
    switch_prepare,
    switch_reference,
    switch_replaced,
    switch_results,
)
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_kernels import kernels
from conetool.pipeline.run_switch import parse_at, switch
from conetool.pipeline.switch_options import SwitchOptions
from conetool.pipeline.switch_prepare import prepare_sweep
from conetool.spec import load_spec, save_spec, spec_from_dict
from conetool.store import Store
from conetool.training import train

runner = CliRunner()


def spec_dict(widths):
    return {
        "model": {"arch": "mlp", "num_classes": 3, "widths": widths, "activation": "tanh"},
        "data": {
            "dataset": "synthetic",
            "shape": [4],
            "num_classes": 3,
            "train_size": 48,
            "test_size": 24,
            "noise": 1.5,
        },
        "probe": {"size": 6},
        "train": {
            "steps": 12,
            "batch_size": 8,
            "lr": 0.2,
            "momentum": 0.9,
            "save_every": 4,
            "eval_every": 4,
            "weight_decay": 1e-3,
        },
    }


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    """A model linear in its parameters (one Linear layer), trained 12 steps."""
    out = tmp_path_factory.mktemp("lin") / "ckpts"
    train(spec_from_dict(spec_dict([]), source="linear.toml"), out)
    return out


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "ckpts"
    train(spec_from_dict(spec_dict([8]), source="deep.toml"), out)
    return out


def metrics(run):
    with open(paths.metrics(run)) as handle:
        return {int(r["step"]): r for r in csv.DictReader(handle)}


def test_parse_at():
    assert parse_at(["0,4", "8"]) == [0, 4, 8]
    assert parse_at(["0:12:4", "4"]) == [0, 4, 8]
    with pytest.raises(ConetoolError, match="--at 'x' is not a step list"):
        parse_at(["x"])
    with pytest.raises(ConetoolError, match="is not a step list"):
        parse_at(["0:10:0"])


def test_an_until_longer_than_a_toml_integer_is_refused(deep_run, tmp_path):
    """switch --until 99999999999999999999 --beyond-run trained without end; it is refused beyond
    2**63 - 1, as train.steps in a spec and demo --steps are, before anything is trained."""
    options = SwitchOptions([0], 2**63, tmp_path / "s", deep_run, None, "checkpoint", None, True)
    with pytest.raises(ConetoolError, match=r"^--until 9223372036854775808: T must be at most"):
        prepare_sweep(options)
    assert not (tmp_path / "s").exists()
    # 2**63 - 1 itself is a step T may be: past the run, it needs --beyond-run (no cap error)
    options = SwitchOptions(
        [0], 2**63 - 1, tmp_path / "s", deep_run, None, "checkpoint", None, False
    )
    with pytest.raises(ConetoolError) as refused:
        prepare_sweep(options)
    assert "must be at most" not in str(refused.value) and "--beyond-run" in str(refused.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("at", "fix"), [("5,,10", "--at 5,10"), ("5,", "--at 5"), (",", "--at 2000")]
)
def test_parse_at_refuses_an_empty_item(at, fix):
    """A step left out of the list ("5,,10": a typo, or a shell variable that was empty) is
    refused naming --at and the fix, not dropped (the sweep lacked the point without a word)."""
    with pytest.raises(ConetoolError, match=f"^--at '{at}' has an empty item") as err:
        parse_at([at])
    assert f"({fix})." in str(err.value), str(err.value)
    with pytest.raises(ConetoolError, match=r"^--at '' names no step"):
        parse_at(["0", ""])  # an empty --at beside a good one


def test_switch_refuses_an_empty_at_item_on_the_command_line(tmp_path):
    store = tmp_path / "store"
    result = runner.invoke(app, ["switch", "--at", "5,,10", "--store", str(store), "-q"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "--at '5,,10' has an empty item" in text and "(--at 5,10)" in text, text
    assert not store.exists()


def test_a_momentum_of_one_or_more_is_warned_about_once_per_sweep(tmp_path, linear_run):
    """switch trains with the spec's recipe: momentum >= 1 (which SGD accepts) is said once at
    its start, ahead of the slow-step warning (kept apart from it: an earlier warning in that
    list turns the slow-step watch off)."""
    raw = spec_dict([])
    raw["train"].update(momentum=1.5, steps=4, save_every=2, eval_every=2)
    run = tmp_path / "run"
    train(spec_from_dict(raw, source="fast.toml"), run)
    result = switch([0, 2], store=tmp_path / "s", ckpts=run, device="cpu")
    assert len(result.points) == 2
    said = [w for w in result.warnings if "train.momentum" in w]
    assert len(said) == 1 and result.warnings[0] == said[0], result.warnings
    assert "'train.momentum' = 1.5 is 1 or more, so SGD's updates grow without bound" in said[0]
    usual = switch([0], store=tmp_path / "t", ckpts=linear_run, device="cpu")  # momentum 0.9
    assert not any("train.momentum" in w for w in usual.warnings), usual.warnings


@pytest.mark.parametrize("at", [0, 4])
def test_linear_model_reproduces_standard_training_step_for_step(linear_run, tmp_path, at):
    result = switch([at], store=tmp_path / "s", ckpts=linear_run, device="cpu")
    (point,) = result.points
    assert point.momentum == "saved"
    standard = metrics(linear_run)
    for row in point.rows:
        ref = standard[int(row["step"])]
        assert row["test_loss"] == pytest.approx(float(ref["test_loss"]), rel=1e-5)
        assert row["test_acc"] == pytest.approx(float(ref["test_acc"]))
        if row["step"] > at:
            assert row["train_loss"] == pytest.approx(float(ref["train_loss"]), rel=1e-5)
    assert result.reference["test_loss"] == pytest.approx(point.test_loss, rel=1e-5)


def test_nonlinear_model_differs_and_everything_is_written(deep_run, tmp_path):
    store = tmp_path / "s"
    result = switch(["0,4"], store=store, ckpts=deep_run, device="cpu")
    assert [p.at for p in result.points] == [0, 4]
    standard = metrics(deep_run)
    assert result.points[0].test_loss != pytest.approx(float(standard[12]["test_loss"]), rel=1e-4)
    with open(paths.switch_results_csv(store)) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["at"]) for r in rows] == [0, 4]
    for t, summary_row in zip((0, 4), rows, strict=True):
        payload = json.loads(paths.switch_point(store, t).read_text())
        assert payload["at"] == t and payload["until"] == 12
        # The per-point CSV: one row per evaluation from t to 12 (eval_every 4), in the loop's
        # columns, holding the point JSON's rows value for value (NaN there is null here).
        with open(paths.switch_point_metrics(store, t)) as handle:
            reader = csv.DictReader(handle)
            along = [{k: float(v) for k, v in r.items()} for r in reader]
        assert reader.fieldnames == [
            "step", "epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc"
        ]  # fmt: skip
        assert [r["step"] for r in along] == list(range(t, 13, 4))
        assert [r["epoch"] for r in along] == [s / 6 for s in range(t, 13, 4)]  # 48 / batch 8
        assert all(r["lr"] == 0.2 for r in along)  # the constant schedule
        assert len(payload["rows"]) == len(along)
        for row, stored in zip(along, payload["rows"], strict=True):
            assert stored.keys() == row.keys()
            for key, value in row.items():
                assert stored[key] == (None if math.isnan(value) else value), (t, key)
        # Nothing trained at t itself; after that, train numbers on the steps since the last row.
        assert math.isnan(along[0]["train_loss"]) and math.isnan(along[0]["train_acc"])
        assert not any(math.isnan(r["train_loss"]) for r in along[1:])
        # The point's result is the CSV's last row, in the JSON and in results.csv alike.
        final = {k: along[-1][k] for k in ("test_acc", "test_loss", "train_acc", "train_loss")}
        assert {k: payload[k] for k in final} == final
        assert {k: float(summary_row[k]) for k in final} == final
        assert int(summary_row["until"]) == 12 and summary_row["momentum"] == payload["momentum"]
    assert paths.switch_png(store).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads(paths.switch_results_json(store).read_text())
    assert summary["reference"]["source"] == "checkpoint"


def test_rerun_does_no_training(deep_run, tmp_path, monkeypatch):
    store = tmp_path / "s"
    first = switch(["0,4"], store=store, ckpts=deep_run, device="cpu")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(TrainingLoop, "run", no_training)
    again = switch(["0,4"], store=store, ckpts=deep_run, device="cpu")
    assert all(p.reused for p in again.points)
    assert [p.test_acc for p in again.points] == [p.test_acc for p in first.points]
    monkeypatch.undo()
    switch([8], store=store, ckpts=deep_run, device="cpu")  # a later sweep adds a point
    with open(paths.switch_results_csv(store)) as handle:
        assert [int(r["at"]) for r in csv.DictReader(handle)] == [0, 4, 8]


def test_until_and_reference_train(deep_run, tmp_path):
    result = switch([0], until=6, store=tmp_path / "s", ckpts=deep_run, device="cpu")
    assert result.reference is None and "--reference train" in result.warnings[-1]
    trained = switch(
        [0], until=6, store=tmp_path / "s", ckpts=deep_run, device="cpu", reference="train"
    )
    assert trained.reference["source"] == "trained from step 4"
    assert trained.points[0].reused
    # with a checkpoint of T nothing is trained: the reference is that checkpoint, and says so
    # (it read "trained from step 8" for no step trained, and wrote switch/reference.json)
    at_t = switch([0], until=8, store=tmp_path / "s8", ckpts=deep_run, device="cpu")
    by_train = switch(
        [0], until=8, store=tmp_path / "s8", ckpts=deep_run, device="cpu", reference="train"
    )
    assert by_train.reference == at_t.reference
    assert by_train.reference["source"] == "checkpoint"


def test_a_diverged_reference_run_gives_trains_hint_and_keeps_the_points(
    deep_run, tmp_path, monkeypatch
):
    # Was: "standard diverged at step 8: the loss is nan. Lower train.lr or add
    # train.warmup_steps in the spec." and no more: nothing of what train says (its checkpoints
    # are valid), nor that the points just trained are kept.

    class Diverging(TrainingLoop):  # the standard run to T alone, with a learning rate far too high
        def __init__(self, spec, *args, **kwargs):
            if kwargs.get("description") == "standard":
                spec = replace(spec, train=replace(spec.train, lr=math.inf))
            super().__init__(spec, *args, **kwargs)

    monkeypatch.setattr(switch_reference, "TrainingLoop", Diverging)
    store = tmp_path / "s"
    with pytest.raises(ConetoolError) as caught:
        switch([0], until=10, store=store, ckpts=deep_run, device="cpu", reference="train")
    said = str(caught.value)
    # Was "standard diverged at step 8": the run named by the progress bar's label alone.
    assert said.startswith("the standard (non-linearized) reference run diverged at step"), said
    # Was "Lower train.lr or add train.warmup_steps in the spec." alone: a change of the spec,
    # so of the recipe every point replays, advised as if it touched this run only.
    assert "A lower train.lr or added train.warmup_steps in the spec may let it finish" in said
    assert "the spec's recipe is every switch point's too" in said, said
    assert f"The checkpoints already in {deep_run} are valid." in said  # train's own hint
    assert f"So are the switch points in {paths.switch_dir(store)}" in said, said
    assert "--reference checkpoint keeps them" in said and said.endswith("of step 10)."), said
    assert paths.switch_point(store, 0).is_file()  # the point is kept
    monkeypatch.undo()
    rerun = switch([0], until=10, store=store, ckpts=deep_run, device="cpu")
    assert rerun.points[0].reused  # as the message says


def test_a_diverged_switch_point_says_why_and_keeps_the_points_before_it(
    deep_run, tmp_path, monkeypatch
):
    # Was: "switch t=4 diverged at step 4: the loss is nan. Lower train.lr or add
    # train.warmup_steps in the spec.": advice that changes the experiment (the switch replays
    # the run's recipe), nothing on why a linearized model can diverge, nor that t=0 is kept.

    class Diverging(TrainingLoop):  # the linearized training from t=4 alone, lr far too high
        def __init__(self, spec, *args, **kwargs):
            if kwargs.get("description") == "switch t=4":
                spec = replace(spec, train=replace(spec.train, lr=math.inf))
            super().__init__(spec, *args, **kwargs)

    monkeypatch.setattr(switch_points, "TrainingLoop", Diverging)
    store = tmp_path / "s"
    with pytest.raises(ConetoolError) as caught:
        switch([0, 4], store=store, ckpts=deep_run, device="cpu")
    said = str(caught.value)
    assert re.match(r"switch t=4: the linearized model diverged at step \d+ \(the loss", said)
    assert "the spec's learning rate there is 0.2)" in said, said  # the recipe's, at step 4
    assert "kernel of step 4 fixed" in said and "large eigenvalues" in said, said
    assert "Lower train.lr" not in said and "would change the recipe" in said, said
    assert "leave 4 out of --at" in said, said
    assert f"the points already written in {paths.switch_dir(store)} are kept" in said, said
    assert "eig_1 in spectrum.csv" in said, said
    assert paths.switch_point(store, 0).is_file() and not paths.switch_point(store, 4).exists()
    monkeypatch.undo()
    rerun = switch([0], store=store, ckpts=deep_run, device="cpu")
    assert rerun.points[0].reused  # as the message says


def test_fresh_momentum_without_optimizer_state(deep_run, tmp_path):
    run = tmp_path / "ckpts"
    shutil.copytree(deep_run, run)
    paths.optimizer_state(run, 4).unlink()
    result = switch([4], store=tmp_path / "s", ckpts=run, device="cpu")
    assert result.points[0].momentum == "fresh"
    assert any("momentum starts at zero" in n for n in result.notes)
    assert not any("momentum" in w for w in result.warnings), result.warnings


def test_every_at_step_the_run_did_not_save_is_said_at_once(deep_run, tmp_path):
    """A range whose stride is not the run's saving interval (or a list of several steps it did
    not save) is refused naming every such step, each with its nearest stored steps. Was: only
    the first, so each fix met the next refusal."""
    with pytest.raises(CheckpointError) as caught:
        switch("0:12:2", store=tmp_path / "s", ckpts=deep_run, device="cpu")
    said = str(caught.value)
    assert said.startswith(f"--at 2, 6, 10: {deep_run} has no checkpoint of these 3 steps"), said
    assert "Nearest stored steps (2: 0, 4, 8; 6: 0, 4, 8; 10: 4, 8, 12)" in said, said
    assert said.endswith("Pass --at steps the run saved.")
    assert not (tmp_path / "s").exists()  # nothing written


def test_at_steps_the_run_did_not_save_are_refused_after_one_scan_of_the_folder(
    deep_run, tmp_path, monkeypatch
):
    """--at 0:12:1 (the stride forgotten) misses most steps: the folder is scanned once for the
    problems of their files, not once per step (a run of 1000 checkpoints and --at 0:20000 took
    minutes before the refusal, each of 19000 scans listing 1000 files)."""
    from conetool.checkpoints import discover

    scans: list[object] = []
    real = discover.scan_selected

    def counted(*args, **kwargs):
        scans.append(kwargs.get("steps"))
        return real(*args, **kwargs)

    monkeypatch.setattr(discover, "scan_selected", counted)
    with pytest.raises(CheckpointError) as caught:
        switch("0:12:1", store=tmp_path / "s", ckpts=deep_run, device="cpu")
    assert "has no checkpoint of these 9 steps" in str(caught.value)  # 0, 4, 8 saved
    assert len(scans) <= 2, scans  # the listing's, and one for the problems of the steps missing


def test_bad_input(deep_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 5\. Nearest: 0, 4, 8, 12"):
        switch([5], store=tmp_path / "s", ckpts=deep_run, device="cpu")
    with pytest.raises(ConetoolError, match="--at 12 is not before --until 12"):
        switch([12], store=tmp_path / "s", ckpts=deep_run, device="cpu")
    with pytest.raises(ConetoolError, match="no manifest.json.*--ckpts"):
        switch([0], store=tmp_path / "nostore", device="cpu")
    run = tmp_path / "ckpts"
    shutil.copytree(deep_run, run)
    path = paths.checkpoint(run, 4)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    state["fc.weight"][0, 0] = float("inf")
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="step_000004.safetensors"):
        switch([4], store=tmp_path / "s", ckpts=run, device="cpu")


def test_a_batch_larger_than_the_data_is_refused_naming_the_spec_file(deep_run, tmp_path):
    """switch trains with the spec's batches: a batch_size beyond the training split was refused
    at the first point's training, naming no file; now before anything, naming the spec."""
    raw = spec_dict([8])
    raw["train"]["batch_size"] = 64
    spec_file = tmp_path / "big.toml"
    save_spec(spec_from_dict(raw), spec_file)
    store = tmp_path / "s"
    with pytest.raises(DataError) as caught:
        switch([4], store=store, ckpts=deep_run, spec=spec_file, device="cpu")
    assert str(caught.value) == (
        f"{spec_file}: 'train.batch_size' = 64 is larger than the training split (48 "
        "examples). Set train.batch_size to at most 48."
    )
    assert not paths.switch_point(store, 4).exists()


def test_wrong_output_shape_is_refused(tmp_path, monkeypatch):
    module = tmp_path / "badnet.py"
    module.write_text(
        "import torch\n"
        "def make(num_classes, input_shape=None):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes + 2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "ckpts"
    run.mkdir()
    import badnet  # the module written above

    net = badnet.make(3)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()},
        str(paths.checkpoint(run, 0)),
        metadata={"step": "0"},
    )
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text(
        '[model]\narch = "badnet:make"\nnum_classes = 3\n[data]\ndataset = "synthetic"\n'
        "shape = [4]\nnum_classes = 3\ntrain_size = 48\ntest_size = 24\n[train]\nsteps = 4\n"
        "batch_size = 8\n"
    )
    with pytest.raises(ModelError, match=r"output of shape \(2, 5\), expected \(2, 3\)"):
        switch([0], store=tmp_path / "s", ckpts=run, spec=spec_file, device="cpu")


def test_cli_switch(deep_run, tmp_path):
    store = tmp_path / "s"
    ok = runner.invoke(
        app, ["switch", "--at", "0:12:4", "--store", str(store), "--ckpts", str(deep_run), "-q"]
    )
    assert ok.exit_code == 0, ok.output
    assert "standard 12" in ok.output and "results.csv" in ok.output
    png = str(paths.switch_png(store))
    assert f"wrote{png}" in re.sub(r"\s+", "", ok.output)  # rich wraps at the terminal's width
    again = runner.invoke(
        app, ["switch", "--at", "0:12:4", "--store", str(store), "--ckpts", str(deep_run), "-q"]
    )
    assert again.exit_code == 0, again.output
    assert f"kept{png}(unchanged)" in re.sub(r"\s+", "", again.output)  # was: "wrote"
    bad = runner.invoke(
        app, ["switch", "--at", "7", "--store", str(store), "--ckpts", str(deep_run), "-q"]
    )
    assert bad.exit_code == 1 and "Nearest" in bad.output and "Traceback" not in bad.output


def test_points_of_earlier_sweeps_whose_checkpoint_changed_are_left_out(deep_run, tmp_path):
    """results.csv gathered the points of earlier sweeps matched on spec and T only: a run
    replaced under the same spec kept its old points there as current."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "ckpts"
    shutil.copytree(deep_run, run)
    store = tmp_path / "s"
    switch(["0,4"], store=store, ckpts=run, device="cpu")
    changed = run / "step_000004.safetensors"
    with safe_open(str(changed), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) * 1.01 for k in handle.keys()}
    save_file(tensors, str(changed), metadata=meta)

    result = switch([8], store=store, ckpts=run, device="cpu")
    with open(paths.switch_results_csv(store)) as handle:
        assert [int(r["at"]) for r in csv.DictReader(handle)] == [0, 8]
    assert any("at 4: their checkpoints changed" in w and "--at 4" in w for w in result.warnings)


def test_an_earlier_sweeps_null_metrics_are_gathered_as_nan(deep_run, tmp_path):
    """A point file holds a NaN as null (strict JSON): its first metrics row's train loss and
    accuracy (step t, which the linearized model does not measure), and any metric that was NaN.
    A later sweep of the same T gathered the earlier points with None there, not NaN: an empty
    results.csv cell where the sweep that computed the point wrote nan, and rows unlike those
    of the point read back for reuse."""
    store = tmp_path / "s"
    switch(["0,4"], store=store, ckpts=deep_run, device="cpu")
    file = paths.switch_point(store, 4)
    payload = json.loads(file.read_text())
    assert payload["rows"][0]["train_loss"] is None  # NaN, as JSON holds it
    payload["test_loss"] = None  # a metric that was NaN
    file.write_text(json.dumps(payload))
    switch([8], store=store, ckpts=deep_run, device="cpu")  # gathers 0 and 4 from their files
    with open(paths.switch_results_csv(store)) as handle:
        rows = {r["at"]: r for r in csv.DictReader(handle)}
    assert list(rows) == ["0", "4", "8"], rows
    assert rows["4"]["test_loss"] == "nan", rows["4"]
    spec = load_spec(paths.spec(deep_run))
    gathered = {p.at: p for p in switch_points.all_points(store, spec, 12, [])}
    assert math.isnan(gathered[4].test_loss), gathered[4]
    first = gathered[4].rows[0]
    assert math.isnan(first["train_loss"]) and math.isnan(first["train_acc"]), first
    # as the point read back for reuse holds them
    key = payload["key"]
    reused = switch_points.read_point(store, 4, key)
    assert reused is not None and reused.rows[1:] == gathered[4].rows[1:]


# ------------------------------------------------------------------ a store replaced meanwhile
# `kernels --overwrite` clears the store (switch/ with it) and starts a new one while a sweep
# runs. Was: the sweep wrote its later points, reference.json and results.csv into the new store
# (a sweep of the replaced store's run there), or lost them in the clearing while reporting
# success. Now each write holds STORE/.results.lock shared after checking the store, as the
# readers' do (conetool.pipeline.switch_store).

REPLACED = "conetool switch stopped and wrote nothing into the new store"


@pytest.fixture(scope="module")
def kernel_store(deep_run, tmp_path_factory):
    """A store of deep_run's kernels (steps 0, 4, 8, 12), made once; tests copy it."""
    store = tmp_path_factory.mktemp("kstore") / "store"
    kernels(deep_run, store=store, device="cpu")
    return store


def _overwrite(store, deep_run):
    """`conetool kernels --overwrite` with another probe set: clears the store, starts anew."""
    kernels(deep_run, store=store, probe_size=4, overwrite=True, device="cpu")


def _count_training(monkeypatch, after=None):
    """Count TrainingLoop.run calls (their descriptions); ``after(n)`` runs after the n-th."""
    trained: list[str] = []
    real = TrainingLoop.run

    def counted(loop, start, until):
        rows = real(loop, start, until)
        trained.append(loop.description)
        if after is not None:
            after(len(trained))
        return rows

    monkeypatch.setattr(TrainingLoop, "run", counted)
    return trained


@pytest.mark.parametrize(
    "when",
    ["point trained", "between points", "point's own check", "before results", "reference"],
)
def test_a_sweep_writes_nothing_into_a_store_replaced_meanwhile(
    deep_run, kernel_store, tmp_path, monkeypatch, when
):
    store = tmp_path / "store"
    shutil.copytree(kernel_store, store)
    replace = lambda: _overwrite(store, deep_run)  # noqa: E731
    # after the first point's training (before its files), or the standard run's to T
    last = {"point trained": 1, "reference": 3}.get(when)
    trained = _count_training(monkeypatch, lambda n: n == last and replace())
    if when == "between points":  # the first point is written; the second must not train
        real_point = run_switch.run_point

        def then_replaced(*args, **kwargs):
            point = real_point(*args, **kwargs)
            if point.at == 0:
                assert paths.switch_point(store, 0).is_file()  # written, in the old store
                replace()
            return point

        monkeypatch.setattr(run_switch, "run_point", then_replaced)
    if when == "point's own check":  # after the sweep's check before t=0, before run_point's
        real_point = run_switch.run_point

        def replaced_before(*args, **kwargs):
            replace()
            return real_point(*args, **kwargs)

        monkeypatch.setattr(run_switch, "run_point", replaced_before)
    if when == "before results":
        real_all = run_switch.all_points

        def replaced_first(*args, **kwargs):
            replace()
            return real_all(*args, **kwargs)

        monkeypatch.setattr(run_switch, "all_points", replaced_first)
    reference = "train" if when == "reference" else "checkpoint"
    with pytest.raises(StoreReplacedError, match=REPLACED) as caught:
        switch([0, 4], until=6, store=store, device="cpu", reference=reference)
    # It names the points not written, and the command that computes the sweep in the new store
    # (was: "Rerun the same conetool switch command", whichever point was lost).
    lost = {
        "point trained": "the point at t = 0 (in progress) and the point at t = 4 (not started) "
        "are not written.",
        "between points": "the point at t = 4 (not started) is not written, and the point at "
        "t = 0 went with the old store.",
        # was "the point at t = 0 (in progress) and the point at t = 4 (not started)": t = 0
        # was refused by run_point's own check, before any training
        "point's own check": "the points at t = 0, 4 (not started) are not written.",
        "before results": "results.csv, results.json and switch.png are not written, and the "
        "points at t = 0, 4 went with the old store.",
        "reference": "reference.json, results.csv, results.json and switch.png are not written, "
        "and the points at t = 0, 4 went with the old store.",
    }
    said = str(caught.value)
    assert f"wrote nothing into the new store: {lost[when]}" in said, said
    rerun = f"conetool switch --at 0,4 --until 6 --store {store}" + (
        " --reference train" if reference == "train" else ""
    )
    rerun += " --device cpu"  # was left out, and the rerun chose the device again
    assert f"To compute them in the new store, run: {rerun} (without --ckpts" in said, said
    assert not paths.switch_dir(store).exists()  # nothing of the sweep in the new store
    assert Store.open(store).manifest["probe"]["size"] == 4  # the new store, untouched
    expected = {
        "point trained": ["switch t=0"],
        "between points": ["switch t=0"],  # t=4 was not trained for nothing
        "point's own check": [],
        "before results": ["switch t=0", "switch t=4"],
        "reference": ["switch t=0", "switch t=4", "standard"],
    }
    assert trained == expected[when]


def test_every_file_of_a_sweep_is_written_holding_the_store_against_the_clearing(
    deep_run, kernel_store, tmp_path, monkeypatch
):
    # a check of the store before writing is not enough: the clearing could fall between the
    # check and the writes. During each write the clearing's exclusive lock must be refused.
    store = tmp_path / "store"
    shutil.copytree(kernel_store, store)
    unguarded: list[str] = []

    def guarded(write):
        def checked(*args, **kwargs):
            fd = os.open(paths.results_lock(store), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the clearing takes
                unguarded.append(next(Path(a).name for a in args if isinstance(a, Path)))
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
            return write(*args, **kwargs)

        return checked

    for module, name in (
        (switch_points, "atomic_write_csv"),  # a point's files
        (switch_points, "atomic_write_json"),
        (switch_reference, "atomic_write_json"),  # --reference train's reference.json
        (switch_results, "atomic_write_csv"),  # results.csv, results.json, switch.png
        (switch_results, "atomic_write_json"),
        (switch_results, "write_figure"),
    ):
        monkeypatch.setattr(module, name, guarded(getattr(module, name)))
    switch([0, 4], until=6, store=store, device="cpu", reference="train")
    written = sorted(p.name for p in paths.switch_dir(store).iterdir())
    assert written == [
        "at_000000.csv", "at_000000.json", "at_000004.csv", "at_000004.json",
        "reference.json", "results.csv", "results.json", "switch.png",
    ]  # fmt: skip
    assert unguarded == []


@pytest.mark.parametrize(
    "meanwhile",
    ["kernels adds a step", "manifest removed", "switch folder removed", "no store: kernels"],
)
def test_a_sweep_keeps_its_points_in_a_store_not_replaced_and_stops_at_a_replacement(
    deep_run, kernel_store, tmp_path, monkeypatch, meanwhile
):
    # points cost minutes: only a replacement stops the sweep. A kernels run that keeps the
    # store (it rewrites the manifest, same store_id), a manifest or switch folder removed by
    # hand, a kernels run making the store in a folder switch began in with --ckpts: the next
    # point is still written. Then kernels --overwrite: the last point is not.
    store = tmp_path / "store"
    if meanwhile == "no store: kernels":
        store.mkdir()
    else:
        shutil.copytree(kernel_store, store)
    kept: list[list[str]] = []

    def event():
        if meanwhile == "kernels adds a step":
            paths.kernel(store, 12).unlink()
            assert kernels(deep_run, store=store, device="cpu").computed == [12]
        elif meanwhile == "manifest removed":
            paths.manifest(store).unlink()
        elif meanwhile == "switch folder removed":
            shutil.rmtree(paths.switch_dir(store))
        else:
            kernels(deep_run, store=store, device="cpu")

    def after(n):
        if n == 1:
            event()
        if n == 2:  # the second point, trained after the event, is written
            kept.append(sorted(p.name for p in paths.switch_dir(store).glob("at_*.json")))
            _overwrite(store, deep_run)

    trained = _count_training(monkeypatch)
    real_point = run_switch.run_point

    def watched(*args, **kwargs):
        point = real_point(*args, **kwargs)
        after(len(trained))
        return point

    monkeypatch.setattr(run_switch, "run_point", watched)
    with pytest.raises(StoreReplacedError, match=REPLACED) as caught:
        switch([0, 4, 8], store=store, ckpts=deep_run, device="cpu", threads=1)
    said = str(caught.value)
    assert "the point at t = 8 (not started) is not written, and the points at t = 0, 4" in said
    # --device and --threads as given (were left out)
    rerun = (
        f"conetool switch --at 0,4,8 --store {store} --ckpts {deep_run} --device cpu --threads 1"
    )
    assert said.endswith(f"run: {rerun}."), said
    expected = ["at_000004.json"] if meanwhile == "switch folder removed" else None
    assert kept == [expected or ["at_000000.json", "at_000004.json"]]
    assert trained == ["switch t=0", "switch t=4"]  # t=8 not trained: the store was replaced
    assert not paths.switch_dir(store).exists()


def test_the_rerun_command_names_the_flags_given_and_no_file_for_a_spec_object(tmp_path):
    # Was: --device and --threads left out, and a Spec object left out without a word (so the
    # rerun read another spec: CKPTS/conetool.toml or the new store's manifest).
    spec = spec_from_dict(spec_dict([8]), source="deep.toml")
    sweep = switch_prepare.Sweep([0, 4], tmp_path / "ckpts", spec, 12, {}, None, None)
    options = run_switch.SwitchOptions(
        at=[0, 4],
        until=None,
        store=tmp_path / "s",
        ckpts=None,
        spec=spec,
        reference="checkpoint",
        step_regex=None,
        beyond_run=False,
        device="cuda:1",
        threads="3",
    )
    said = switch_replaced.rerun_command(sweep, options)
    assert said == (
        f"conetool switch --at 0,4 --store {tmp_path / 's'} --spec FILE --device cuda:1 "
        "--threads 3 (FILE: the spec this sweep was given as a Spec object, which names no file; "
        "conetool.spec.save_spec(spec, FILE) writes it)"
    )
    defaults = replace(options, spec=tmp_path / "run.toml", device="auto", threads="auto")
    assert switch_replaced.rerun_command(sweep, defaults) == (
        f"conetool switch --at 0,4 --store {tmp_path / 's'} --spec {tmp_path / 'run.toml'}"
    )
    assert switch_replaced.rerun_command(sweep, replace(defaults, spec=None, threads=None)) == (
        f"conetool switch --at 0,4 --store {tmp_path / 's'}"
    )


def test_switch_says_what_the_checkpoint_listing_says_of_the_run(tmp_path):
    """A loop's .pt files holding an EMA of the weights beside the state dict read: kernels
    warned which entry it read, switch said nothing (it threw the listing's warnings away), so a
    researcher switching from them never learned which weights were linearized. switch now says
    the listing's warnings once for the sweep; the "left out" lines of files at steps it does
    not use stay unsaid (an unusable file there does not concern the sweep)."""
    spec = spec_from_dict(spec_dict([8]), source="deep.toml")
    spec_file = tmp_path / "run.toml"
    save_spec(spec, spec_file)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 4, 8):
        torch.manual_seed(step)
        model = model_for(spec)
        ema = {k: v + 0.01 for k, v in model.state_dict().items()}
        torch.save({"model": model.state_dict(), "ema": ema, "step": step}, ckpts / f"c_{step}.pt")
    (ckpts / "c_12.pt").write_bytes(b"not a checkpoint")  # unusable, at a step not used
    store = tmp_path / "s"
    args = ["switch", "--at", "0,4", "--until", "8", "--store", str(store), "--ckpts", str(ckpts)]
    ran = runner.invoke(app, [*args, "--spec", str(spec_file), "-q"])
    assert ran.exit_code == 0, ran.output
    text = " ".join(ran.output.split())
    said = (
        "warning: 'c_0.pt' and 2 other checkpoints hold a state dict under 'model', which is "
        "read, and another of the same network under 'ema' (an EMA of the weights, say), which "
        "is not"
    )
    assert text.count(said) == 1, text
    assert "c_12.pt" not in text, text
    result = switch([0, 4], until=8, store=store, ckpts=ckpts, spec=spec_file, device="cpu")
    assert sum("under 'ema'" in w for w in result.warnings) == 1, result.warnings
    assert not any("c_12.pt" in m for m in result.warnings + result.notes), result


@pytest.mark.parametrize("lost", [None, "missing", "damaged"])
def test_a_sweep_of_another_spec_than_the_stores_kernels_is_refused(
    deep_run, linear_run, tmp_path, lost
):
    # Was: --ckpts of a run trained with another [model] (its own conetool.toml) finished a sweep
    # into the store of deep_run's kernels, and --spec with other widths was accepted and failed
    # only at the checkpoint's load; refused now before anything is written, as kernels and
    # distance --spec refuse another spec, naming the keys that differ and the way round. With
    # the store's manifest.json deleted or damaged, the check read the manifest alone and let
    # both in: the kernel files carry their spec, told by it as by the manifest, naming where the
    # record comes from.
    store = tmp_path / "s"
    kernels(deep_run, store=store, device="cpu")
    if lost is not None:
        _lose_manifest(store, lost)
    with pytest.raises(StoreError, match="never mixes specs in a store") as caught:
        switch([0, 4], store=store, ckpts=linear_run, device="cpu")
    said = str(caught.value)
    assert "model.widths = [8] (now [])" in said, said
    assert f"the spec {paths.spec(linear_run)}: its hash is " in said, said
    assert "--store OTHER_STORE" in said, said
    if lost is not None:
        record = f"(the record its kernel files carry: {paths.MANIFEST_NAME} is {lost})"
        assert record in said, said
    assert not paths.switch_dir(store).exists()
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(spec_dict([6]), source=str(other)), other)
    ran = runner.invoke(app, ["switch", "--at", "0", "--store", str(store), "--spec", str(other)])
    text = " ".join(ran.output.split())
    assert ran.exit_code == 1 and "Traceback" not in ran.output, ran.output
    assert f"--spec {other}: its hash is " in text and "model.widths = [8] (now [6])" in text, text
    if lost is not None:
        assert f"{paths.MANIFEST_NAME} is {lost})" in text, text
    assert not paths.switch_dir(store).exists()
    if lost is None:  # the store's own spec, given or found, still sweeps there
        assert [p.at for p in switch([0], store=store, device="cpu").points] == [0]


def test_a_store_whose_kernels_used_another_probe_set_of_the_run_still_sweeps(deep_run, tmp_path):
    # kernels computed with a spec that differs from the run's conetool.toml in [probe] alone
    # (another probe seed): the sweep is of the same run. Was (0ff489a): refused, telling the
    # user to leave out --spec and --ckpts, which they had; with --spec of that probe set too
    probe7 = spec_dict([8])
    probe7["probe"] = {**probe7["probe"], "seed": 7}
    other = tmp_path / "probe7.toml"
    save_spec(spec_from_dict(probe7, source=str(other)), other)
    store = tmp_path / "s"
    kernels(deep_run, store=store, spec=other, device="cpu")
    assert [p.at for p in switch([0], store=store, device="cpu").points] == [0]
    assert [p.at for p in switch([4], store=store, spec=other, device="cpu").points] == [4]


def _lose_manifest(store: Path, lost: str) -> None:
    """Delete the store's manifest.json, or damage it (not JSON any more)."""
    if lost == "missing":
        paths.manifest(store).unlink()
    else:
        paths.manifest(store).write_text("{")


def _carry_no_spec(store: Path) -> None:
    """Rewrite the store's kernel files as a conetool from before they carried their spec wrote
    them (the same tensors and metadata, without ``spec``)."""
    for path in sorted((store / paths.KERNELS_DIR).glob("step_*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        assert "spec" in meta, meta  # the files kernels writes now carry it
        del meta["spec"]
        save_file(load_file(str(path)), str(path), metadata=meta)


@pytest.mark.parametrize("lost", ["missing", "damaged"])
def test_a_probe_alone_differing_spec_still_sweeps_a_store_whose_manifest_is_lost(
    deep_run, tmp_path, lost
):
    # as with the manifest (test_ckpts_of_the_run_whose_probe_alone_differs_from_the_stores_...):
    # kernels of probe seed 7, --ckpts of the run (its conetool.toml, seed 0) sweeps
    probe7 = spec_dict([8])
    probe7["probe"] = {**probe7["probe"], "seed": 7}
    other = tmp_path / "probe7.toml"
    save_spec(spec_from_dict(probe7, source=str(other)), other)
    store = tmp_path / "s"
    kernels(deep_run, store=store, spec=other, device="cpu")
    _lose_manifest(store, lost)
    assert [p.at for p in switch([0], store=store, ckpts=deep_run, device="cpu").points] == [0]


def test_kernel_files_carrying_their_spec_s_hash_alone_still_refuse_another_spec(
    deep_run, linear_run, tmp_path
):
    # kernel files from before they carried their spec: the hash tells another spec; a spec whose
    # [probe] size alone differs (kernels --probe-size) is the run's, by the store's probe file
    store = tmp_path / "s"
    kernels(deep_run, store=store, probe_size=4, device="cpu")
    paths.manifest(store).unlink()
    _carry_no_spec(store)
    with pytest.raises(StoreError, match="never mixes specs in a store") as caught:
        switch([0, 4], store=store, ckpts=linear_run, device="cpu")
    said = " ".join(str(caught.value).split())
    assert f"(the record its kernel files carry: {paths.MANIFEST_NAME} is missing)" in said, said
    assert "carry the hash of that spec, not the spec" in said, said
    assert f"conetool kernels CKPTS --store {store} --spec THAT_SPEC" in said, said
    assert not paths.switch_dir(store).exists()
    assert [p.at for p in switch([0], store=store, ckpts=deep_run, device="cpu").points] == [0]


def test_ckpts_of_the_run_whose_probe_alone_differs_from_the_stores_still_sweeps(
    deep_run, tmp_path
):
    # --ckpts of the run (its conetool.toml, probe seed 0) into a store whose kernels used probe
    # seed 7: the same run, swept; a spec differing in [model] too is refused all the same
    probe7 = spec_dict([8])
    probe7["probe"] = {**probe7["probe"], "seed": 7}
    other = tmp_path / "probe7.toml"
    save_spec(spec_from_dict(probe7, source=str(other)), other)
    store = tmp_path / "s"
    kernels(deep_run, store=store, spec=other, device="cpu")
    assert [p.at for p in switch([0], store=store, ckpts=deep_run, device="cpu").points] == [0]
    both = spec_dict([6])  # [model] and [probe] (seed 0) differ from the store's
    both_file = tmp_path / "both.toml"
    save_spec(spec_from_dict(both, source=str(both_file)), both_file)
    with pytest.raises(StoreError, match="never mixes specs in a store"):
        switch([4], store=store, spec=both_file, device="cpu")
