"""Spec keys that are each valid but, together, ask for something that does not happen.

``load_spec`` accepts every one of them (a run or a store made with such a spec must still load);
``conetool train`` refuses a new run whose dense checkpoints save nothing or whose synthetic split
leaves classes out (``switch`` refuses the latter too), and says the rest as warnings at its
start (``switch`` says the recipe's too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conetool import paths
from conetool import spec as spec_module
from conetool.cli import app
from conetool.data import steps_per_epoch
from conetool.errors import DataError, SpecError
from conetool.pipeline.run_demo import demo_spec
from conetool.pipeline.run_switch import switch as switch_run
from conetool.progress import NullProgress
from conetool.spec import (
    check_for_training,
    load_spec,
    recipe_warnings,
    save_count,
    save_spec,
    spec_from_dict,
    train_warnings,
)
from conetool.training import save_steps, train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def tiny(data: dict[str, Any] | None = None, **train_values: Any) -> spec_module.Spec:
    """A synthetic MLP run of 6 steps, saved every 3, with ``train_values`` over it."""
    raw = {
        "model": {"arch": "mlp", "num_classes": 3, "widths": [4]},
        "data": data or {"dataset": "synthetic", "shape": [4], "num_classes": 3, "train_size": 24},
        "probe": {"size": 6},
        "train": {"steps": 6, "batch_size": 8, "save_every": 3, "eval_every": 3, **train_values},
    }
    return spec_from_dict(raw, source="c.toml")


def flat(text: str) -> str:
    return " ".join(text.split())


# --- refused by conetool train: dense checkpoints that save nothing --------------------------------


@pytest.mark.parametrize(
    ("every", "until", "swapped"), [(10, 0, False), (5, 5, False), (1000, 10, True)]
)
def test_dense_checkpoints_saving_nothing_are_refused_naming_the_keys_and_the_fix(
    every, until, swapped
):
    """dense_every = 10 without dense_until was accepted and saved no dense checkpoint: the
    researcher found out after the run, when the early kernels were not there."""
    spec = tiny(steps=2000, save_every=100, dense_every=every, dense_until=until)
    assert spec.train.dense_every == every  # load_spec accepts it: a saved run still loads
    with pytest.raises(SpecError) as caught:
        check_for_training(spec)
    text = str(caught.value)
    assert text.startswith(
        f"c.toml: 'train.dense_every' = {every} with 'train.dense_until' = {until} saves no "
        "dense checkpoint"
    ), text
    assert "Set dense_until to the step where the dense checkpoints stop" in text, text
    assert "or dense_every = 0 for none" in text, text
    assert ("(are the two swapped?)" in text) == swapped, text


def test_train_refuses_it_before_writing_anything(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SpecError, match="saves no dense checkpoint"):
        train(tiny(dense_every=2), out)
    assert not out.exists() or not any(out.iterdir())


def test_the_command_refuses_it_with_exit_code_1(tmp_path):
    save_spec(tiny(dense_every=2, dense_until=1), tmp_path / "spec.toml")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spec.toml"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert "'train.dense_every' = 2 with 'train.dense_until' = 1 saves no dense" in text, text
    assert "(are the two swapped?)" in text, text
    assert not out.exists() or not any(out.iterdir())


def test_a_run_begun_with_such_a_spec_still_resumes(tmp_path, monkeypatch):
    """A run an earlier conetool began with dense_every and no dense_until goes on (--resume):
    refusing it would leave its checkpoints unfinished, as its spec hash must not change."""
    spec = tiny(dense_every=2)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # as an earlier conetool did: no check
        patch.setattr("conetool.training.check_for_training", lambda spec: None)
        train(spec, out)
    paths.checkpoint(out, 6).unlink()  # interrupted before its last checkpoint
    resumed = train(spec, out, resume=True)
    assert resumed.resumed_from == 3 and paths.checkpoint(out, 6).exists()
    with pytest.raises(SpecError, match="saves no dense checkpoint"):  # a new run: refused
        train(spec, out, overwrite=True)


@pytest.mark.parametrize("steps", [8, 20, 30])
def test_the_shortened_demo_drops_dense_checkpoints_scaled_to_nothing(steps):
    """demo --steps 8 scaled dense_every 5 / dense_until 100 to 1 / 0, which train refuses."""
    spec = demo_spec(steps=steps)
    check_for_training(spec)
    assert (spec.train.dense_every, spec.train.dense_until) == (0, 0)
    assert save_steps(spec) == list(range(steps + 1))  # save_every 1: every step anyway
    assert train_warnings(spec) == []


# --- said as warnings at conetool train's start ------------------------------------------------


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (
            {"dense_until": 4},
            "c.toml: 'train.dense_until' = 4 has no effect: 'train.dense_every' is 0, which "
            "turns the dense checkpoints off. Set dense_every",
        ),
        (
            {"dense_every": 3, "dense_until": 6},  # 0, 3 are saved every save_every = 3 anyway
            "c.toml: 'train.dense_every' = 3 (with 'train.dense_until' = 6) adds no checkpoint: "
            "each of its steps is saved anyway (save_every = 3, save_at, step 0 and the last "
            "step 6). Set dense_every below 3 and not a multiple of save_every",
        ),
        (
            {"dense_every": 2, "dense_until": 5, "save_at": [2, 4]},
            "'train.dense_every' = 2 (with 'train.dense_until' = 5) adds no checkpoint",
        ),
        (
            {"dense_every": 1, "dense_until": 50},
            "c.toml: 'train.dense_until' = 50 is beyond 'train.steps' = 6, so the whole run is "
            "saved every dense_every = 1 steps (7 checkpoints). Set dense_until",
        ),
        (
            {"optimizer": "adam", "lr": 1e-3, "momentum": 0.5},
            "c.toml: 'train.momentum' = 0.5 has no effect with optimizer = \"adam\": it is "
            "SGD's. Adam's momentum is the first of 'train.betas' (now [0.9, 0.999])",
        ),
        (
            {"betas": [0.5, 0.9]},
            "c.toml: 'train.betas' = [0.5, 0.9] has no effect with optimizer = \"sgd\"",
        ),
        (
            {"milestones": [3]},
            "c.toml: 'train.milestones' = [3] has no effect with schedule = \"constant\": the "
            'learning rate drops at milestones by gamma only with schedule = "step". Set '
            "schedule = \"step\" if that was meant, or remove 'train.milestones'.",
        ),
        (
            {"schedule": "cosine", "milestones": [3], "gamma": 0.5},
            "c.toml: 'train.milestones' = [3] and 'train.gamma' = 0.5 have no effect with "
            'schedule = "cosine"',
        ),
        (
            {"schedule": "step", "milestones": [3], "gamma": 1.0},
            "c.toml: 'train.gamma' = 1.0 with schedule = \"step\": the learning rate is "
            "multiplied by 1 at each milestone [3], so it never changes.",
        ),
        (
            {"warmup_steps": 12},
            "c.toml: 'train.warmup_steps' = 12 is longer than 'train.steps' = 6, so the "
            "learning rate never reaches train.lr = 0.1: it ends the run at 0.5 x lr.",
        ),
        (
            {"schedule": "step", "milestones": [6, 9], "gamma": 0.5},  # 6: no update at step 6
            "c.toml: 'train.milestones' = [6, 9] are all at or beyond 'train.steps' = 6, so "
            'schedule = "step" does nothing in this run: its learning rate never drops by gamma '
            "(its last update is at step 5); only `conetool switch --beyond-run`, which trains "
            "past train.steps, reaches them. Set a milestone below 6 for the run to decay, or "
            'schedule = "constant"',
        ),
        (
            {"schedule": "step", "milestones": [10]},
            "c.toml: 'train.milestones' = [10] is at or beyond 'train.steps' = 6",
        ),
    ],
)
def test_keys_set_to_no_effect_are_said_naming_them(values, said):
    spec = tiny(**values)
    check_for_training(spec)  # not refused: the run is sensible, probably not what was meant
    (warning,) = train_warnings(spec)
    assert said in warning, warning


@pytest.mark.parametrize(
    ("values", "recipe"),
    [
        ({"optimizer": "adam", "lr": 1e-3, "momentum": 0.5}, True),
        ({"milestones": [3]}, True),
        ({"warmup_steps": 12}, True),
        ({"dense_until": 4}, False),  # checkpoints: only train saves them
        ({"schedule": "step", "milestones": [10]}, False),  # switch --beyond-run uses them
    ],
)
def test_switch_says_the_recipe_ones_only(values, recipe):
    spec = tiny(**values)
    assert bool(recipe_warnings(spec)) == recipe


def test_synthetic_keys_with_a_built_in_data_set_are_said():
    spec = tiny(data={"dataset": "digits", "train_size": 100, "seed": 3})
    assert train_warnings(spec) == [
        "c.toml: 'data.train_size' = 100 has no effect: it applies to dataset = \"synthetic\" "
        "only, and digits is used whole, as it is. Remove data.train_size.",
        "c.toml: 'data.seed' = 3 has no effect: it applies to dataset = \"synthetic\" only, "
        "and digits is used whole, as it is. Remove data.seed.",
    ]


@pytest.mark.parametrize(
    ("dataset", "made"),
    [
        ("digits", "read from the copy inside scikit-learn"),
        ("synthetic", "generated from data.seed"),
    ],
)
def test_root_and_download_without_torchvision_files_are_said(dataset, made):
    spec = tiny(data={**synthetic(), "dataset": dataset, "root": "/data", "download": True})
    assert [w for w in train_warnings(spec) if "'data.r" in w or "'data.d" in w] == [
        f"c.toml: 'data.{key}' = {value} has no effect: it applies to dataset = \"mnist\" and "
        f'"cifar10" (torchvision\'s files under root), and {dataset} is {made}: nothing is read '
        f"from root or downloaded. Remove data.{key}."
        for key, value in (("root", "'/data'"), ("download", "true"))
    ]
    for used in ({"dataset": "mnist"}, {"dataset": "cifar10"}, {"dataset": "mod:make"}):
        spec = tiny(data={"root": "/data", "download": True, **used})
        assert not [w for w in train_warnings(spec) if "'data.r" in w or "'data.d" in w]
    assert not train_warnings(tiny(data={**synthetic(), "root": "~/data", "download": False}))


# --- a synthetic split smaller than its class count -----------------------------------------------


def synthetic(**values: Any) -> dict[str, Any]:
    return {"dataset": "synthetic", "shape": [4], "num_classes": 3, "train_size": 24, **values}


@pytest.mark.parametrize(
    ("classes", "train_size", "missing", "most"),
    [(3, 2, "class 2", 2), (10, 4, "classes 4 to 9", 4)],
)
def test_a_synthetic_training_split_without_every_class_is_refused_for_training(
    tmp_path, classes, train_size, missing, most
):
    """train_size = 4 with num_classes = 10 trained silently on classes 0-3 only: the labels are
    arange(size) % num_classes, so classes 4-9 had no example, and no error said so."""
    spec = tiny(data=synthetic(num_classes=classes, train_size=train_size), batch_size=2)
    save_spec(spec, tmp_path / "spec.toml")
    assert load_spec(tmp_path / "spec.toml").data.train_size == train_size  # a made store loads
    with pytest.raises(SpecError) as caught:
        check_for_training(spec)
    assert flat(str(caught.value)) == (
        f"c.toml: 'data.train_size' = {train_size} is smaller than 'data.num_classes' = "
        f"{classes}: the synthetic examples take the labels 0, 1, 2, ... in turn, so {missing} "
        "would have no training example and the model would never learn to predict them. Set "
        f"data.train_size to at least {classes} (usually many times it; the default is 1000), "
        f"or data.num_classes (and model.num_classes) to at most {most}."
    )
    out = tmp_path / "run"
    with pytest.raises(SpecError, match="'data.train_size' = "):
        train(spec, out)
    assert not out.exists() or not any(out.iterdir())


def test_the_command_refuses_it_naming_the_spec_file(tmp_path):
    spec = tiny(data=synthetic(train_size=2), batch_size=2)
    save_spec(spec, tmp_path / "spec.toml")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "spec.toml"), "--out", str(out)])
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert f"{tmp_path / 'spec.toml'}: 'data.train_size' = 2 is smaller than" in text, text
    assert not out.exists() or not any(out.iterdir())


def test_switch_refuses_it_too_before_it_trains_or_writes(tmp_path):
    """switch trains the linearized model on the spec's data, but did not make train's check: a
    spec whose synthetic split leaves classes out trained its points without a word."""
    run = tmp_path / "run"
    train(tiny(), run)
    bad = tiny(data=synthetic(train_size=2), batch_size=2)
    save_spec(bad, tmp_path / "bad.toml")
    store = tmp_path / "s"
    args = ["switch", "--at", "0", "--ckpts", str(run), "--spec", str(tmp_path / "bad.toml")]
    result = CliRunner().invoke(app, [*args, "--store", str(store), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    assert f"{tmp_path / 'bad.toml'}: 'data.train_size' = 2 is smaller than" in text, text
    assert "Set data.train_size to at least 3" in text, text
    assert not store.exists()  # nothing written, not even switch/
    with pytest.raises(SpecError, match=r"^c\.toml: 'data\.train_size' = 2 is smaller than"):
        switch_run(0, store=store, ckpts=run, spec=bad, device="cpu")
    assert not store.exists()


def test_switch_goes_on_with_a_sweep_begun_with_such_a_spec(tmp_path, monkeypatch):
    """As train --resume goes on with a run begun with the spec: a store holding points an
    earlier conetool computed with it takes more points of it (comparable with those); a new
    sweep, or a store whose points are another spec's, is refused."""
    run = tmp_path / "run"
    train(tiny(), run)
    bad = tiny(data=synthetic(train_size=2), batch_size=2)
    begun = tmp_path / "begun"
    with monkeypatch.context() as patch:  # as an earlier conetool did: no check
        patch.setattr("conetool.pipeline.switch_prepare.check_training_data", lambda spec: None)
        switch_run(0, store=begun, ckpts=run, spec=bad, device="cpu")
    more = switch_run([0, 3], store=begun, ckpts=run, spec=bad, device="cpu")
    assert [(p.at, p.reused) for p in more.points] == [(0, True), (3, False)]
    other = tmp_path / "other"  # points of the good spec: no sweep of the bad one begun there
    switch_run(0, store=other, ckpts=run, spec=tiny(), device="cpu")
    for store in (other, tmp_path / "new"):
        with pytest.raises(SpecError, match="'data.train_size' = 2 is smaller than"):
            switch_run(3, store=store, ckpts=run, spec=bad, device="cpu")
    assert not paths.switch_point(other, 3).exists()


def test_switch_does_not_refuse_dense_checkpoints_that_save_nothing(tmp_path):
    """Those keys concern only the checkpoints train writes: switch writes none, and a spec
    fixed for it would no longer be the run's (its hash changes)."""
    run = tmp_path / "run"
    train(tiny(), run)
    dense = tiny(dense_every=2)
    with pytest.raises(SpecError, match="saves no dense checkpoint"):
        check_for_training(dense)
    result = switch_run(0, store=tmp_path / "s", ckpts=run, spec=dense, device="cpu")
    assert [p.at for p in result.points] == [0]


@pytest.mark.parametrize(
    ("test_size", "said"), [(2, "so class 2 has no test example"), (1, "so classes 1 to 2 have")]
)
def test_a_synthetic_test_split_without_every_class_is_warned_of(test_size, said):
    spec = tiny(data=synthetic(test_size=test_size))
    check_for_training(spec)  # the run is sensible; its test accuracy leaves classes out
    (warning,) = train_warnings(spec)
    assert warning.startswith(
        f"c.toml: 'data.test_size' = {test_size} is smaller than 'data.num_classes' = 3: "
    ), warning
    assert said in warning, warning
    assert warning.endswith(
        "the test accuracy and loss measure the others only. Set data.test_size to at least 3 "
        "(the default is 500)."
    ), warning


def test_a_synthetic_split_of_one_example_per_class_is_said_nothing_of():
    spec = tiny(data=synthetic(train_size=3, test_size=3), batch_size=3)
    check_for_training(spec)
    assert train_warnings(spec) == []


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (
            {"save_every": 100},
            "c.toml: 'train.save_every' = 100 is larger than 'train.steps' = 6, so the run saves "
            "2 checkpoints only, step 0 and the last (6): their kernels give one distance, and "
            "distance reads no verdict from fewer than 8 (its min_steps). Set save_every to a "
            "part of train.steps (for example save_every = 1: 7 checkpoints), or list the steps "
            "to save in save_at.",
        ),
        ({"save_every": 6}, "'train.save_every' = 6 is equal to 'train.steps' = 6, so the run "),
        (
            {"steps": 25, "save_every": 100},
            "(for example save_every = 2: 14 checkpoints)",
        ),
    ],
)
def test_a_run_saving_only_its_first_and_last_step_is_warned_of(values, said):
    """save_every at or beyond train.steps saved step 0 and the last without a word: one S
    between them, no verdict."""
    spec = tiny(**values)
    check_for_training(spec)
    assert save_count(spec) == 2
    (warning,) = train_warnings(spec)
    assert said in warning, warning
    every = int(warning.split("for example save_every = ")[1].split(":")[0])
    fixed = tiny(**{**values, "save_every": every})
    assert f"{save_count(fixed)} checkpoints)" in warning and train_warnings(fixed) == []


@pytest.mark.parametrize(
    ("save_at", "said"),
    [
        (
            [4, 2],
            "c.toml: 'train.save_at' = [4, 2] is not in increasing order: the run saves each "
            "listed step once, in step order, whatever the order written (a step written twice "
            "may stand for another one meant). Write save_at = [2, 4], with any step missing "
            "from it.",
        ),
        ([2, 2, 4], "'train.save_at' = [2, 2, 4] lists step 2 more than once: "),
        ([5, 1, 5, 1], "lists steps 1 and 5 more than once: the run saves each listed step once"),
    ],
)
def test_save_at_out_of_order_or_repeated_is_warned_of(save_at, said):
    spec = tiny(save_at=save_at)
    check_for_training(spec)
    (warning,) = train_warnings(spec)
    assert said in warning, warning
    assert save_steps(spec) == save_steps(tiny(save_at=sorted(set(save_at))))  # as it saves


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"steps": 1, "save_every": 100},  # a one-step run: 0 and 1 are all there is
        {"save_every": 100, "save_at": [2, 4]},
        {"optimizer": "adam", "lr": 1e-3, "momentum": 0.0},  # 0: "no SGD momentum", true
        {"optimizer": "adam", "lr": 1e-3, "momentum": 0.9},  # the default, in every saved spec
        {"schedule": "step", "milestones": [3, 100], "gamma": 0.5},  # 100: switch --beyond-run
        {"warmup_steps": 6, "dense_every": 2, "dense_until": 6},
        {"save_every": 100, "save_at": [2]},  # 0, 2 and the last: as asked
        {"eval_every": 100},
    ],
)
def test_sensible_combinations_are_said_nothing_of(values):
    spec = tiny(**values)
    check_for_training(spec)
    assert train_warnings(spec) == []


def test_no_example_spec_is_refused_or_warned():
    examples = sorted(EXAMPLES.glob("*.toml"))
    assert len(examples) >= 6
    for path in examples:
        spec = load_spec(path)
        check_for_training(spec)
        assert train_warnings(spec) == [], path


def test_train_says_them_at_its_start_and_in_its_result(tmp_path):
    class Logged(NullProgress):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def log(self, message: str) -> None:
            self.lines.append(message)

    logged = Logged()
    result = train(tiny(milestones=[3]), tmp_path / "run", progress=logged)
    (said,) = result.warnings
    assert "'train.milestones' = [3] has no effect" in said
    first_step = next(i for i, line in enumerate(logged.lines) if line.startswith("train step"))
    assert logged.lines.index(f"warning: {said}") < first_step


# --- found after conetool.toml was written ------------------------------------------------------


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_written(tmp_path):
    """It was refused after conetool.toml was written, so the rerun with the batch fixed was
    refused in turn: '--out already holds a run (0 checkpoints ...)'."""
    out = tmp_path / "run"
    with pytest.raises(DataError, match="'train.batch_size' = 32 is larger than the training"):
        train(tiny(batch_size=32), out)
    assert not paths.spec(out).exists()
    assert train(tiny(batch_size=8), out).steps == 6  # the fixed spec trains in the same --out


def test_the_batch_size_error_names_the_spec_file(tmp_path):
    """It named the key and the split's size but not the file that sets the batch size."""
    spec_file = tmp_path / "spec.toml"
    save_spec(tiny(batch_size=32), spec_file)
    result = CliRunner().invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert (
        f"{spec_file}: 'train.batch_size' = 32 is larger than the training split (24 examples). "
        "Set train.batch_size to at most 24." in flat(result.output)
    ), result.output
    with pytest.raises(DataError, match=r"^c\.toml: 'train\.batch_size' = 32 is larger"):
        train(tiny(batch_size=32), tmp_path / "other")


def test_the_data_order_without_a_spec_file_names_none():
    """steps_per_epoch, a library function, is called with sizes only, and names no file."""
    with pytest.raises(DataError, match=r"^'train\.batch_size' = 32 is larger than the training"):
        steps_per_epoch(24, 32)
    with pytest.raises(DataError, match=r"^s\.toml: 'train\.batch_size' must be positive"):
        steps_per_epoch(24, 0, spec_file="s.toml")
