"""The training run: files written, exact resume, refusal to mix runs."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from flushed_dirs import flushed_dirs
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conetool import paths
from conetool.errors import ConetoolError, StoreError
from conetool.spec import spec_from_dict
from conetool.training import build_for_spec, save_steps, train

TINY = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [8]},
    "data": {
        "dataset": "synthetic",
        "shape": [4],
        "num_classes": 3,
        "train_size": 60,
        "test_size": 30,
        "noise": 0.5,
    },
    "probe": {"size": 12},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "lr": 0.1,
        "momentum": 0.9,
        "save_every": 5,
        "save_at": [3],
        "eval_every": 5,
        "seed": 1,
    },
}


def tiny_spec(**train_values):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["train"].update(train_values)
    return spec_from_dict(raw, source="tiny.toml")


def weights(directory: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(paths.checkpoint(directory, step)))


def test_writes_checkpoints_spec_and_metrics(tmp_path):
    spec = tiny_spec()
    result = train(spec, tmp_path / "run")
    out = tmp_path / "run"
    assert save_steps(spec) == [0, 3, 5, 10, 15, 20]
    for step in save_steps(spec):
        assert paths.checkpoint(out, step).exists()
        assert paths.optimizer_state(out, step).exists()
        with safe_open(str(paths.checkpoint(out, step)), framework="pt") as handle:
            meta = handle.metadata()
        assert meta["step"] == str(step)
        assert meta["spec_hash"] == spec.hash()
        assert meta["epoch"] == str(step // (60 // 8))
        assert "conetool_version" in meta
    assert paths.spec(out).exists()
    with open(paths.metrics(out)) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20]
    assert float(rows[-1]["test_acc"]) == pytest.approx(result.test_acc)
    assert result.test_acc > 0.6  # three well-separated clusters are learnable in 20 steps


def test_step_zero_is_the_seeded_initialization(tmp_path):
    spec = tiny_spec()
    train(spec, tmp_path / "run")
    model, _ = build_for_spec(spec)
    saved = weights(tmp_path / "run", 0)
    for name, value in model.state_dict().items():
        assert torch.equal(saved[name], value)
    final = weights(tmp_path / "run", 20)
    assert any(not torch.equal(saved[name], final[name]) for name in saved)


class _Interrupt:
    """A progress reporter that raises KeyboardInterrupt once the bar reaches ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.done = at, 0

    def task(self, description, total):
        return self

    def advance(self, amount=1, **fields):
        self.done += amount
        if self.done >= self.at:
            raise KeyboardInterrupt

    def close(self):
        pass

    def log(self, message):
        pass


@pytest.mark.parametrize(
    "recipe",
    [
        {},
        {"optimizer": "adam", "lr": 0.01, "schedule": "cosine", "warmup_steps": 4},
        {"nesterov": True, "schedule": "step", "milestones": [7, 14]},
    ],
)
def test_resume_gives_bit_identical_weights(tmp_path, recipe):
    spec = tiny_spec(**recipe)
    train(spec, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "cut", progress=_Interrupt(at=13))
    assert not paths.checkpoint(tmp_path / "cut", 15).exists()
    result = train(spec, tmp_path / "cut", resume=True)
    assert result.resumed_from == 10
    assert not any("restarts from step 0" in w for w in result.warnings)
    for step in (10, 15, 20):
        a, b = weights(tmp_path / "whole", step), weights(tmp_path / "cut", step)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (step, name)
    with open(paths.metrics(tmp_path / "cut")) as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle)]
    assert steps == [0, 5, 10, 15, 20]


@pytest.mark.parametrize(("cut_at", "resumed_from"), [(13, 10), (4, 3)])
def test_resume_writes_the_metrics_of_an_uninterrupted_run(tmp_path, cut_at, resumed_from):
    """metrics.csv of a resumed run is the uninterrupted run's, train numbers included. Resumed
    at an evaluation step (10) its row had train_loss and train_acc NaN (nothing trained since
    the resume); resumed between two (save_at 3) the next row (5) averaged only the steps since
    the resume (3 and 4), not since the previous row (0 to 4)."""
    spec = tiny_spec()
    train(spec, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "cut", progress=_Interrupt(at=cut_at))
    assert train(spec, tmp_path / "cut", resume=True).resumed_from == resumed_from
    assert (
        paths.metrics(tmp_path / "cut").read_text() == paths.metrics(tmp_path / "whole").read_text()
    )


def _cut_with_train_sums(spec: Any, tmp_path: Path, entry: str | None) -> Path:
    """``spec`` trained whole into ``tmp_path / "whole"`` and cut at step 13 into ``.../cut``,
    whose optimizer state of step 10 (the one a resume starts from) then has the train_sums
    entry ``entry`` (None: none, as an older conetool wrote it); that state's path."""
    train(spec, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "cut", progress=_Interrupt(at=13))
    state = paths.optimizer_state(tmp_path / "cut", 10)
    with safe_open(str(state), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    assert metadata.pop("train_sums")
    if entry is not None:
        metadata["train_sums"] = entry
    save_file(tensors, str(state), metadata=metadata)
    return state


def test_resume_from_a_state_saved_before_train_sums_keeps_the_weights_of_an_uninterrupted_run(
    tmp_path,
):
    """An optimizer state an older conetool wrote has no train_sums: the run resumes from it, its
    weights are still the uninterrupted run's, and only the train numbers of the row at the
    resume step (nothing trained since the resume) are missing, as the README says."""
    spec = tiny_spec()
    _cut_with_train_sums(spec, tmp_path, None)
    assert train(spec, tmp_path / "cut", resume=True).resumed_from == 10
    for step in (15, 20):
        a, b = weights(tmp_path / "whole", step), weights(tmp_path / "cut", step)
        assert all(torch.equal(a[name], b[name]) for name in a), step
    rows = {}
    for run in ("whole", "cut"):
        with open(paths.metrics(tmp_path / run)) as handle:
            rows[run] = {int(r["step"]): r for r in csv.DictReader(handle)}
    assert rows["cut"].keys() == rows["whole"].keys()
    assert rows["cut"][10]["train_loss"] == "nan" != rows["whole"][10]["train_loss"]
    for step in (10, 15, 20):  # evaluated on the test split from the same weights
        assert rows["cut"][step]["test_acc"] == rows["whole"][step]["test_acc"]


def test_resume_warns_of_a_damaged_train_sums_entry(tmp_path):
    """A damaged train_sums entry was ignored without a word, and the resumed row's train numbers
    covered only the steps since the resume: a warning names the file and what it means for
    metrics.csv (the weights are the uninterrupted run's all the same)."""
    spec = tiny_spec()
    state = _cut_with_train_sums(spec, tmp_path, "[1.5, -2")
    result = train(spec, tmp_path / "cut", resume=True)
    assert result.resumed_from == 10
    [warning] = [w for w in result.warnings if "train_sums" in w]
    assert warning.startswith(f"--resume: {state}: its train_sums entry '[1.5, -2' is not ")
    assert str(paths.metrics(tmp_path / "cut")) in warning and "unaffected" in warning
    a, b = weights(tmp_path / "whole", 20), weights(tmp_path / "cut", 20)
    assert all(torch.equal(a[name], b[name]) for name in a)


def _killed_while_writing(out: Path, step: int) -> list[Path]:
    """The temporary files a train killed during its atomic writes of ``step`` (SIGKILL: no
    ``finally`` removes them) leaves in ``out``, and a file of the user's named alike."""
    made = [
        out / f".{paths.checkpoint(out, step).name}.k1_x9.tmp",
        out / f".{paths.optimizer_state(out, step).name}.Zq0ab.tmp",
        out / f".{paths.metrics(out).name}.o4nkghvf.tmp",
        out / ".notes.txt.ab12.tmp",  # not train's: kept
    ]
    for path in made:
        path.write_bytes(b"half a file")
    return made


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
def test_resume_and_overwrite_remove_the_temporaries_of_a_killed_train(tmp_path, flag):
    """A train killed while writing (a job's time limit, SIGKILL) left its temporary files
    (.step_000015.safetensors.XXXX.tmp: a whole checkpoint, and its optimizer state) in --out,
    and neither --resume nor --overwrite ever removed them. A train refused removes nothing:
    another train may be writing them."""
    spec = tiny_spec()
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(spec, out, progress=_Interrupt(at=13))
    *ours, theirs = _killed_while_writing(out, 15)
    with pytest.raises(StoreError, match="already holds a run"):
        train(spec, out)
    assert all(path.exists() for path in [*ours, theirs])
    train(spec, out, **{flag: True})
    assert not any(path.exists() for path in ours)
    assert theirs.exists()
    assert paths.checkpoint(out, 20).exists()


def test_refuses_to_write_over_a_run(tmp_path):
    spec = tiny_spec()
    train(spec, tmp_path / "run")
    with pytest.raises(StoreError, match="already holds a run.*--resume.*--overwrite"):
        train(spec, tmp_path / "run")
    other = tiny_spec(lr=0.05)
    with pytest.raises(StoreError, match="another spec") as info:
        train(other, tmp_path / "run", resume=True)
    # it said only the two hashes: which key differs was left to a diff of the two files
    assert "It differs in train.lr = 0.1 (now 0.05). --resume" in str(info.value)
    result = train(other, tmp_path / "run", overwrite=True)
    assert result.resumed_from is None
    with safe_open(str(paths.checkpoint(tmp_path / "run", 20)), framework="pt") as handle:
        assert handle.metadata()["spec_hash"] == other.hash()


def test_resume_with_overwrite_is_refused_and_keeps_the_run(tmp_path):
    """--resume --overwrite deleted the run --resume asked to continue and trained it again
    from step 0, without a word: both together are refused before anything is touched."""
    spec = tiny_spec()
    train(spec, tmp_path / "run")
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    with pytest.raises(StoreError, match="--resume and --overwrite contradict") as info:
        train(spec, tmp_path / "run", resume=True, overwrite=True)
    assert "Pass only one of them" in str(info.value)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == stamps


def test_a_new_checkpoint_folder_is_flushed_into_its_parent(tmp_path, monkeypatch):
    """--out made by train is an entry of its parent: it was made by mkdir without flushing the
    parent, so a power loss could take the folder away with the checkpoints renamed into it.
    Now it is made by conetool.io.make_dir, as the store's folders are."""
    if os.name == "nt":
        pytest.skip("Windows cannot open a directory to flush it")
    flushed = flushed_dirs(monkeypatch)
    out = tmp_path / "new" / "run"
    train(tiny_spec(steps=3, save_every=3, save_at=[]), out)
    for made in (out.parent, out):  # both made by train: each flushed into its parent
        assert os.stat(made.parent).st_ino in flushed, made


def test_never_touches_foreign_checkpoints(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_ep3_it0.pth").write_bytes(b"not ours")
    with pytest.raises(StoreError, match="did not write.*model_ep3_it0.pth"):
        train(tiny_spec(), out, overwrite=True)
    assert (out / "model_ep3_it0.pth").read_bytes() == b"not ours"


@pytest.mark.parametrize("flags", [{}, {"resume": True}, {"overwrite": True}])
def test_never_touches_step_named_checkpoints_without_its_spec(tmp_path, flags):
    """step_000005.safetensors with no conetool.toml beside it (which train writes before its
    first checkpoint) is not train's: --overwrite deleted it ('conetool never deletes files it
    did not write'), and the other messages advised --overwrite or a conetool.toml not there."""
    out = tmp_path / "run"
    out.mkdir()
    mine = paths.checkpoint(out, 5)
    mine.write_bytes(b"not ours")
    with pytest.raises(StoreError, match="but no conetool.toml") as info:
        train(tiny_spec(), out, **flags)
    assert "--overwrite" not in str(info.value), info.value
    others = [p.name for p in out.iterdir() if p.name != ".lock"]  # (train's lock, held meanwhile)
    assert mine.read_bytes() == b"not ours" and others == [mine.name]


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ({"arch": "lenet"}, '[model] arch = "lenet" is not a known architecture.'),
        ({"widht": 4}, "unknown key 'widht' in [model] for arch 'mlp'."),
        ({"activation": "sigmoid"}, '[model] activation = "sigmoid" is not supported'),
    ],
)
def test_a_bad_model_key_is_an_error_naming_the_spec_file(tmp_path, model, said):
    """An invalid [model] key or choice was an error naming the key but not the spec file (the
    README: an error naming the file, the key, the value and the valid choices), in train as in
    the commands that rebuild the model from a run's conetool.toml or --spec."""
    from conetool.errors import ModelError
    from conetool.pipeline.resolve import model_for
    from conetool.spec import load_spec, save_spec

    raw = {k: dict(v) for k, v in TINY.items()}
    raw["model"].update(model)
    path = tmp_path / "run.toml"
    save_spec(spec_from_dict(raw), path)
    with pytest.raises(ModelError) as info:
        train(path, tmp_path / "run")
    assert str(info.value).startswith(f"{path}: {said}")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModelError) as info:
        model_for(load_spec(path))
    assert str(info.value).startswith(f"{path}: {said}")


def test_num_classes_mismatch_is_a_spec_error(tmp_path):
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["model"]["num_classes"] = 5
    from conetool.errors import SpecError

    with pytest.raises(SpecError, match="num_classes = 5.*has 3 classes"):
        train(spec_from_dict(raw, source="x.toml"), tmp_path / "run")


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    spec = tiny_spec()
    first = train(spec, tmp_path / "run")

    def stamps() -> dict[str, int]:  # the run's files (train's .lock names each train's pid)
        return {
            p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir() if p.name != ".lock"
        }

    before = stamps()
    again = train(spec, tmp_path / "run", resume=True)
    assert again.saved_steps == [] and again.test_acc == first.test_acc  # read back exactly
    assert again.test_loss == first.test_loss
    assert stamps() == before


def test_resume_of_a_run_stopped_before_its_last_evaluation_writes_its_last_row(
    tmp_path, monkeypatch
):
    """A run stopped after its last checkpoint but before the evaluation of its last step (a
    kill, Ctrl-C) was taken as finished by --resume: metrics.csv kept no row of the last step
    and the result (the table's final test accuracy) was the row before's."""
    from conetool.loop import TrainingLoop

    spec = tiny_spec()
    whole = train(spec, tmp_path / "whole")
    evaluate = TrainingLoop.evaluate

    def stopped(self: TrainingLoop, step: int) -> None:
        if step == spec.train.steps:
            raise KeyboardInterrupt
        evaluate(self, step)

    monkeypatch.setattr(TrainingLoop, "evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "cut")
    monkeypatch.setattr(TrainingLoop, "evaluate", evaluate)
    assert paths.optimizer_state(tmp_path / "cut", spec.train.steps).exists()
    result = train(spec, tmp_path / "cut", resume=True)
    assert (result.test_loss, result.test_acc) == (whole.test_loss, whole.test_acc)
    assert (
        paths.metrics(tmp_path / "cut").read_text() == paths.metrics(tmp_path / "whole").read_text()
    )
    for step in save_steps(spec):
        for path in (paths.checkpoint, paths.optimizer_state):
            assert (
                path(tmp_path / "cut", step).read_bytes()
                == path(tmp_path / "whole", step).read_bytes()
            )


def test_resume_without_any_optimizer_state_writes_each_metrics_row_once(tmp_path):
    """A run whose optimizer states were all deleted restarts from step 0 on --resume; its
    metrics.csv kept the old rows and appended the new ones (each step twice)."""
    spec = tiny_spec()
    train(spec, tmp_path / "run")
    for state in (tmp_path / "run").glob("*.optim.safetensors"):
        state.unlink()
    result = train(spec, tmp_path / "run", resume=True)
    assert result.resumed_from is None
    assert any("restarts from step 0" in w and "optim.safetensors" in w for w in result.warnings)
    with open(paths.metrics(tmp_path / "run")) as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [0, 5, 10, 15, 20]


def test_a_momentum_of_one_or_more_is_warned_about_before_training(tmp_path):
    """momentum = 5 trained without a word (SGD accepts it) to a test loss of 2.7e9."""
    from typer.testing import CliRunner

    from conetool.cli import app
    from conetool.progress import NullProgress
    from conetool.spec import save_spec

    class Logged(NullProgress):
        def __init__(self):
            self.lines = []

        def log(self, message):
            self.lines.append(message)

    logged = Logged()
    result = train(tiny_spec(momentum=5.0, steps=4), tmp_path / "run", progress=logged)
    (said,) = result.warnings
    assert said.startswith("tiny.toml: 'train.momentum' = 5.0 is 1 or more, so SGD's updates")
    assert f"warning: {said}" in logged.lines
    first_step = next(i for i, line in enumerate(logged.lines) if line.startswith("train step"))
    assert logged.lines.index(f"warning: {said}") < first_step  # said before it trains
    assert train(tiny_spec(momentum=0.9, steps=4), tmp_path / "ok").warnings == []
    # the command says it again after its table under --quiet
    save_spec(tiny_spec(momentum=1.0, steps=4), tmp_path / "spec.toml")
    args = ["train", str(tmp_path / "spec.toml"), "--out", str(tmp_path / "cli"), "-q"]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "'train.momentum' = 1.0 is 1 or more" in " ".join(shown.output.split()), shown.output


def test_a_diverged_run_says_what_to_change_and_that_its_checkpoints_are_valid(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConetoolError) as caught:
        train(tiny_spec(lr=1e20), out)
    said = str(caught.value)
    assert "train diverged at step" in said and "Lower train.lr" in said, said
    # Was "Lower train.lr or add train.warmup_steps in the spec.": neither the file nor the rate.
    assert "Lower train.lr (now 1e+20) or add train.warmup_steps in tiny.toml." in said, said
    assert said.endswith(f"The checkpoints already in {out} are valid."), said
    assert paths.checkpoint(out, 0).is_file()  # written before the divergence, kept


def test_a_model_the_default_arch_cannot_make_says_the_spec_sets_no_arch(tmp_path):
    """A spec without [model] arch builds lenet5, the default, which needs images: train said
    only that 'lenet5' needs them, an arch the file does not write."""
    raw = {k: dict(v) for k, v in TINY.items()}
    raw["model"] = {"num_classes": 3}
    from conetool.errors import ModelError

    with pytest.raises(ModelError) as info:
        train(spec_from_dict(raw, source="x.toml"), tmp_path / "run")
    assert str(info.value).startswith("x.toml: arch 'lenet5' is a convolutional network")
    assert str(info.value).endswith(
        'x.toml sets no [model] arch, so the default "lenet5" was built: set arch to the model '
        "meant."
    )
    assert not (tmp_path / "run").exists()
