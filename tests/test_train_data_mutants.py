"""Behaviour a mutation check of training, data and checkpoint reading found unpinned, each
against a reference that does not come from the code under test.

The references: SGD (momentum, Nesterov, coupled weight decay), Adam and AdamW written out by hand in
float64, learning rates written down as numbers, open_lth's normalization constants and
initialization, scikit-learn's own split of the digits, safetensors files written byte by byte.
Each test names the change to the code that it rules out.
"""

from __future__ import annotations

import csv
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from conetool import paths
from conetool.data import DataBundle, Split, batch_indices, load_data
from conetool.loop import TrainingLoop, evaluate
from conetool.optim import make_optimizer
from conetool.progress import NullProgress
from conetool.spec import DataSpec, spec_from_dict
from conetool.training import save_steps, train

# --------------------------------------------------------------------------------------------------
# Training: the weights of every checkpoint against an optimizer written out by hand

_N_TRAIN, _BATCH, _STEPS = 24, 8, 7  # 3 steps per epoch: the run crosses two epoch boundaries


def _spec(**train: Any) -> Any:
    raw = {
        "model": {"arch": "mlp", "num_classes": 3, "widths": [5]},
        "data": {
            "dataset": "synthetic",
            "shape": [4],
            "num_classes": 3,
            "train_size": _N_TRAIN,
            "test_size": 30,
            "noise": 0.7,
        },
        "probe": {"size": 6},
        "train": {
            "steps": _STEPS,
            "batch_size": _BATCH,
            "save_every": 1,
            "eval_every": 3,  # rows at 0, 3, 6 and the last step, 7
            "eval_batch_size": 7,  # does not divide the 30 test examples
            "seed": 3,
            **train,
        },
    }
    return spec_from_dict(raw, source="hand.toml")


def _forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """The mlp of widths [5]: flatten, linear, ReLU, linear."""
    h = torch.relu(x.flatten(1) @ p["fc_layers.0.weight"].T + p["fc_layers.0.bias"])
    return h @ p["fc.weight"].T + p["fc.bias"]


def _hand_run(spec: Any, lrs: list[float], init: dict[str, Tensor]) -> dict[str, Any]:
    """The run written out by hand in float64: weights after each step, batch losses, accuracies."""
    t = spec.train
    data = load_data(spec.data)
    p = {k: v.double().clone() for k, v in init.items()}
    state: dict[str, dict[str, Tensor]] = {k: {} for k in p}
    weights, losses, hits = [{k: v.clone() for k, v in p.items()}], [], []
    for s, lr in enumerate(lrs):
        x, y = data.train.batch(batch_indices(_N_TRAIN, _BATCH, t.seed, s))
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        logits = _forward(leaves, x.double())
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
        losses.append(float(loss.detach()))
        hits.append(int((logits.argmax(1) == y).sum()))
        for k, w in p.items():
            decoupled = t.optimizer == "adamw"  # AdamW: w * (1 - lr * wd), not in the gradient
            g = grads[k] + (0.0 if decoupled else t.weight_decay) * w  # coupled L2: SGD / Adam
            st = state[k]
            if t.optimizer == "sgd":
                st["buf"] = g.clone() if s == 0 else t.momentum * st["buf"] + g
                direction = g + t.momentum * st["buf"] if t.nesterov else st["buf"]
                p[k] = w - lr * direction
            else:
                b1, b2 = t.betas
                st["m"] = b1 * st.get("m", torch.zeros_like(w)) + (1 - b1) * g
                st["v"] = b2 * st.get("v", torch.zeros_like(w)) + (1 - b2) * g * g
                m_hat, v_hat = st["m"] / (1 - b1 ** (s + 1)), st["v"] / (1 - b2 ** (s + 1))
                shrunk = w * (1 - lr * t.weight_decay) if decoupled else w
                p[k] = shrunk - lr * m_hat / (v_hat.sqrt() + 1e-8)
        weights.append({k: v.clone() for k, v in p.items()})
    return {"weights": weights, "losses": losses, "hits": hits, "data": data}


# Each recipe with its learning rates at steps 0..7, written down by hand from the README's
# definitions: step schedule lr * gamma^(milestones <= step), cosine lr * (1 + cos(pi s / T)) / 2,
# warmup x min(1, (step + 1) / warmup_steps).
_COS = [0.3 * (1 + math.cos(math.pi * s / _STEPS)) / 2 for s in range(_STEPS + 1)]
_RECIPES = {
    "sgd-step-warmup": (
        {"lr": 0.3, "momentum": 0.8, "weight_decay": 0.05, "schedule": "step"}
        | {"milestones": [2, 5], "gamma": 0.5, "warmup_steps": 3},
        [0.1, 0.2, 0.15, 0.15, 0.15, 0.075, 0.075, 0.075],
    ),
    "nesterov-cosine": (
        {"lr": 0.3, "momentum": 0.7, "nesterov": True, "weight_decay": 0.02, "schedule": "cosine"},
        _COS,
    ),
    "adam": (
        {"optimizer": "adam", "lr": 0.02, "betas": [0.8, 0.95], "weight_decay": 0.05},
        [0.02] * (_STEPS + 1),
    ),
    "sgd-label-smoothing": (
        {"lr": 0.3, "momentum": 0.8, "weight_decay": 0.05, "label_smoothing": 0.2},
        [0.3] * (_STEPS + 1),
    ),
    "adamw": (
        {"optimizer": "adamw", "lr": 0.02, "betas": [0.8, 0.95], "weight_decay": 0.5},
        [0.02] * (_STEPS + 1),
    ),
}


@pytest.mark.parametrize("recipe", list(_RECIPES))
def test_every_checkpoint_holds_the_weights_of_the_hand_written_optimizer(tmp_path, recipe):
    """Rules out: the lr of step s+1 used at step s; the batch of another step; a checkpoint
    taken after its step's update; momentum, Nesterov, betas or weight decay dropped or fixed to a
    default; Adam's decoupled weight decay (AdamW) or AdamW's coupled one; label smoothing
    dropped; gradients accumulated across steps; one
    permutation reused for every epoch."""
    values, lrs = _RECIPES[recipe]
    spec = _spec(**values)
    train(spec, tmp_path / "run")
    init = load_file(str(paths.checkpoint(tmp_path / "run", 0)))
    ref = _hand_run(spec, lrs[:_STEPS], init)
    for s in range(_STEPS + 1):
        saved = load_file(str(paths.checkpoint(tmp_path / "run", s)))
        for k, w in ref["weights"][s].items():
            assert torch.allclose(saved[k].double(), w, rtol=0, atol=2e-5), (recipe, s, k)
    # metrics.csv: lr of the row's step; train numbers averaged over the steps since the last row
    with open(paths.metrics(tmp_path / "run")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 7]
    for r in rows:
        s = int(r["step"])
        assert float(r["lr"]) == pytest.approx(lrs[s], rel=1e-12)
        logits = _forward(ref["weights"][s], ref["data"].test.inputs.double())
        labels = ref["data"].test.labels()
        test_loss = float(nn.functional.cross_entropy(logits, labels))
        assert float(r["test_loss"]) == pytest.approx(test_loss, rel=1e-5)
        assert float(r["test_acc"]) == float((logits.argmax(1) == labels).double().mean())
    for r, (lo, hi) in zip(rows[1:], [(0, 3), (3, 6), (6, 7)], strict=True):
        mean_loss = sum(ref["losses"][lo:hi]) / (hi - lo)
        assert float(r["train_loss"]) == pytest.approx(mean_loss, rel=1e-5)
        assert float(r["train_acc"]) == sum(ref["hits"][lo:hi]) / ((hi - lo) * _BATCH)
    assert math.isnan(float(rows[0]["train_loss"]))  # no step before the first row


def test_step_zero_is_the_model_built_from_train_seed(tmp_path):
    """Rules out: the initialization seeded with 0 (or anything but ``train.seed``)."""
    from conetool.models import mlp

    spec = _spec(steps=1)
    train(spec, tmp_path / "run")
    torch.manual_seed(3)
    reference = mlp((4,), 3, widths=[5]).state_dict()
    saved = load_file(str(paths.checkpoint(tmp_path / "run", 0)))
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) for k in saved)


def test_dense_saves_stop_before_dense_until():
    """Rules out: ``dense_until`` itself saved (the README: every dense_every steps *before*
    dense_until)."""
    spec = _spec(steps=20, save_every=100, dense_every=2, dense_until=6, save_at=[9])
    assert save_steps(spec) == [0, 2, 4, 9, 20]


# --------------------------------------------------------------------------------------------------
# The training loop's randomness: augmentation, dropout, evaluation mode


class _Recorder(nn.Module):
    """A linear model that records, at each training forward pass, one draw of the global RNG
    (where dropout draws) and the batch it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.draws: list[float] = []
        self.batches: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.draws.append(float(torch.rand(())))
            self.batches.append(x.detach().clone())
        return self.fc(x)


def _bundle(augment: Any = None) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    train_split = Split.from_tensors(torch.randn(16, 4, generator=g), torch.arange(16) % 3)
    test_split = Split.from_tensors(torch.randn(6, 4, generator=g), torch.arange(6) % 3)
    return DataBundle("toy", train_split, test_split, (4,), 3, augment=augment)


def _loop(model: nn.Module, data: DataBundle, **train: Any) -> TrainingLoop:
    spec = _spec(batch_size=4, eval_every=100, **train)
    optimizer = make_optimizer(model.parameters(), spec.train)
    return TrainingLoop(spec, model, optimizer, data, torch.device("cpu"), NullProgress())


def _generator_draw(g: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=g))


def test_augmentation_draws_from_a_generator_of_seed_and_step():
    """Rules out: one augmentation generator for every step, one that ignores ``train.seed``,
    and augmentation applied when the spec says ``augment = false``."""
    seen: list[tuple[Tensor, int]] = []

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        seen.append((x.clone(), _generator_draw(generator)))
        return x

    data = _bundle(augment)
    _loop(_Recorder(), data, seed=3).run(0, 3)
    _loop(_Recorder(), data, seed=4).run(0, 1)
    draws = [d for _, d in seen]
    assert len(set(draws)) == 4  # each step, and each seed, its own stream
    for s, (x, _) in enumerate(seen[:3]):  # the augmentation gets the step's batch
        assert torch.equal(x, data.train.batch(batch_indices(16, 4, 3, s))[0])
    seen.clear()
    _loop(_Recorder(), data, seed=3).run(1, 2)  # a resumed run draws what the whole one drew
    assert [d for _, d in seen] == [draws[1]]

    seen.clear()
    _loop(_Recorder(), data, seed=3, augment=False).run(0, 2)
    assert seen == []


def test_randomness_of_a_step_does_not_depend_on_earlier_steps():
    """Rules out: the global RNG left as it is before each update (dropout masks of a resumed
    run, or of switch, would then differ from the uninterrupted run's)."""
    data = _bundle()
    whole = _Recorder()
    _loop(whole, data).run(0, 3)
    torch.manual_seed(12345)  # whatever ran before in the process
    resumed = _Recorder()
    _loop(resumed, data).run(2, 3)
    assert resumed.draws == whole.draws[2:]
    assert torch.equal(resumed.batches[0], whole.batches[2])


def test_evaluate_runs_the_model_in_eval_mode_on_every_example():
    """Rules out: evaluation with dropout on (training mode), the last partial batch dropped."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    data = _bundle()
    model.train()
    loss, acc = evaluate(model, data.test, torch.device("cpu"), batch_size=4)
    assert model.training  # handed back in the mode it came in
    model.eval()
    with torch.no_grad():
        logits = model(data.test.inputs)
    y = data.test.labels()
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert acc == float((logits.argmax(1) == y).double().mean())


# --------------------------------------------------------------------------------------------------
# Spec: the bounds of each value


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"lr": 0}, r"'train\.lr' must be positive, got 0"),
        ({"betas": [0.9, 1.0]}, r"'train\.betas' must be two numbers in \[0, 1\)"),
        ({"milestones": [0, 5]}, r"'train\.milestones' must be increasing positive steps"),
        ({"milestones": [5, 5]}, r"'train\.milestones' must be increasing positive steps"),
        ({"steps": True}, r"'train\.steps' must be an integer, got true\."),
        ({"lr": math.nan}, r"'train\.lr' must be a number, got nan"),
        ({"lr": math.inf}, r"'train\.lr' must be a number, got inf"),
        ({"optimizer": "sgd", "momentum": 0, "nesterov": True}, r"'train\.nesterov' needs"),
        ({"warmup_steps": -1}, r"'train\.warmup_steps' must be zero or more, got -1"),
        ({"momentum": -0.5}, r"'train\.momentum' must be zero or more, got -0\.5"),
        ({"dense_every": -2}, r"'train\.dense_every' must be zero or more, got -2"),
        ({"weight_decay": -1e-4}, r"'train\.weight_decay' must be zero or more"),
        # a step schedule's gamma: 0 froze the weights at the first milestone, and a negative
        # one made the learning rate negative (gradient ascent), both without a word
        ({"gamma": 0}, r"'train\.gamma' must be positive, got 0"),
        ({"gamma": -1.0}, r"'train\.gamma' must be positive, got -1\.0"),
    ],
)
def test_spec_refuses_values_out_of_bounds(train, match):
    """Rules out: each bound loosened by one value (lr 0, beta 1, milestone 0, a repeated
    milestone, a bool taken for an integer, NaN or Inf taken for a number, Nesterov without
    momentum, negative counts and coefficients)."""
    from conetool.errors import SpecError

    with pytest.raises(SpecError, match=match):
        spec_from_dict({"train": train}, source="bounds.toml")


def test_spec_accepts_the_values_on_each_bound():
    """Rules out: the bounds tightened (save_at = steps is the last checkpoint, beta 0, zero
    momentum and weight decay, warmup 0)."""
    spec = spec_from_dict(
        {
            "train": {"steps": 10, "save_at": [0, 10], "betas": [0.0, 0.0], "momentum": 0}
            | {"weight_decay": 0, "warmup_steps": 0, "milestones": [1, 10]}
        },
    )
    assert spec.train.save_at == [0, 10] and spec.train.betas == [0.0, 0.0]


# --------------------------------------------------------------------------------------------------
# Data: the on-disk formats and the normalization constants of the recipes


def test_cifar10_is_normalized_with_open_lths_imagenet_statistics(tmp_path, monkeypatch):
    """Rules out: CIFAR-10's own mean/std (0.4914, ... / 0.247, ...) instead of the ImageNet ones
    that open_lth's cifar10 loader uses, and height and width swapped when reading the rows.
    The files are written in the CIFAR-10 python format (a pickled dict per batch, each row the
    R, G and B planes of 32 x 32 pixels) by this test."""
    import pickle

    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks each file's md5 against the real data set's: reduced to "it exists".
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = torch.randint(0, 256, (6, 2, 3 * 32 * 32), generator=torch.Generator().manual_seed(0))
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batch = {"data": rows[i].to(torch.uint8).numpy(), "labels": [i % 10, (i + 1) % 10]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list("abcdefghij")}))
    bundle = load_data(DataSpec(dataset="cifar10", root=str(tmp_path)))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # open_lth datasets/cifar10.py
    row = rows[2, 1]  # example 5: the second row of data_batch_3
    for c, y, x in [(0, 0, 1), (1, 7, 30), (2, 31, 2)]:
        expected = (int(row[c * 1024 + y * 32 + x]) / 255 - mean[c]) / std[c]
        assert float(bundle.train.inputs[5, c, y, x]) == pytest.approx(expected, abs=1e-5)
    fill = bundle.augment.fill  # type: ignore[union-attr]
    assert fill == pytest.approx([-m / s for m, s in zip(mean, std, strict=True)])


def test_synthetic_test_split_is_not_drawn_from_the_train_stream():
    """Rules out: the test noise drawn from the train split's generator (with as many test as
    training examples, the test set would be the training set)."""
    spec = DataSpec(dataset="synthetic", shape=[3], num_classes=2, train_size=6, test_size=6)
    bundle = load_data(spec)
    assert not torch.allclose(bundle.test.inputs, bundle.train.inputs)


def test_float_labels_are_refused_not_truncated():
    """Rules out: float labels silently cast to int64 (2.7 would become class 2)."""
    from conetool.errors import DataError

    with pytest.raises(DataError, match="integer class indices"):
        Split.from_tensors(torch.zeros(3, 2), torch.tensor([0.0, 1.0, 2.7]))


def test_a_test_split_probe_comes_from_the_test_split():
    """Rules out: the probe drawn from the train split whatever ``probe.split`` says."""
    from conetool.probe import make_probe
    from conetool.spec import ProbeSpec

    train_split = Split.from_tensors(torch.arange(12.0)[:, None], torch.arange(12) % 3)
    test_split = Split.from_tensors(100 + torch.arange(6.0)[:, None], torch.arange(6) % 3)
    bundle = DataBundle("toy", train_split, test_split, (1,), 3)
    probe = make_probe(bundle, ProbeSpec(size=6, split="test"))
    assert sorted(probe.inputs[:, 0].tolist()) == [100.0 + i for i in range(6)]
    assert probe.split == "test"


# --------------------------------------------------------------------------------------------------
# Resume and the checks made before training


def _metric_steps(out: Path) -> list[int]:
    with open(paths.metrics(out)) as handle:
        return [int(r["step"]) for r in csv.DictReader(handle)]


def test_resume_starts_from_the_last_checkpoint_that_has_its_optimizer_state(tmp_path):
    """Rules out: resuming from a checkpoint whose optimizer state is gone (momentum would
    restart from zero, or the run would stop on the missing file)."""
    spec = _spec(steps=6, save_every=2, eval_every=2)
    train(spec, tmp_path / "whole")
    train(spec, tmp_path / "run")
    paths.optimizer_state(tmp_path / "run", 6).unlink()
    paths.optimizer_state(tmp_path / "run", 4).unlink()
    result = train(spec, tmp_path / "run", resume=True)
    assert result.resumed_from == 2
    for step in (4, 6):
        a, b = (
            load_file(str(paths.checkpoint(d, step)))
            for d in (tmp_path / "whole", tmp_path / "run")
        )
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metric_steps(tmp_path / "run") == [0, 2, 4, 6]


def test_a_probe_the_spec_states_is_refused_before_training_when_it_does_not_fit(tmp_path):
    """Rules out: a stated [probe] larger than its split only warned about (the run would train
    and kernels would fail afterwards); only the default [probe] gets a warning."""
    from conetool.errors import SpecError

    spec = spec_from_dict(_spec().to_dict() | {"probe": {"size": 25}}, source="big.toml")
    with pytest.raises(SpecError, match=r"\[probe\] does not fit"):
        train(spec, tmp_path / "run")
    assert not paths.checkpoint(tmp_path / "run", 0).exists()


def test_the_default_probe_that_does_not_fit_is_a_warning_of_the_result(tmp_path):
    """Rules out: the warning on a default [probe] larger than the training split said only to
    the progress display (``--quiet`` dropped it, and a Python caller's ``result.warnings``
    lacked it), while the run trains on."""
    raw = _spec().to_dict()
    del raw["probe"]
    spec = spec_from_dict(raw, source="small.toml")
    result = train(spec, tmp_path / "run")
    said = [w for w in result.warnings if "has no [probe] table" in w]
    assert len(said) == 1
    assert said[0].startswith("small.toml has no [probe] table and the default one does not fit")
    assert "--probe-size" in said[0]
    assert paths.checkpoint(tmp_path / "run", _STEPS).exists()


def test_a_label_equal_to_num_classes_is_refused():
    """Rules out: the label bound checked as ``> num_classes`` (label 3 of 3 classes would pass
    to the probe and fail later inside the cross-entropy)."""
    from conetool.errors import DataError
    from conetool.probe import make_probe
    from conetool.spec import ProbeSpec

    split = Split.from_tensors(torch.zeros(8, 1), torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]))
    with pytest.raises(DataError, match=r"labels in 0\.\.3, outside 0\.\.2"):
        make_probe(DataBundle("toy", split, split, (1,), 3), ProbeSpec(size=4))


# --------------------------------------------------------------------------------------------------
# Checkpoints: files written byte by byte in the safetensors format


def _safetensors_bytes(
    tensors: dict[str, tuple[str, list[int], bytes]],
    offsets: dict[str, list[int]] | None = None,
    tail: bytes = b"",
) -> bytes:
    """A safetensors file: u64 little-endian header length, JSON header, the data (``offsets``
    overrides the data_offsets the entries would get laid end to end)."""
    header: dict[str, Any] = {"__metadata__": {"step": "7"}}
    data, pos = b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        data, pos = data + raw, pos + len(raw)
    for name, span in (offsets or {}).items():
        header[name]["data_offsets"] = span
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # aligned data, as the writers do
    return struct.pack("<Q", len(text)) + text + data + tail


def _f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _problem(directory: Path) -> str:
    from conetool.checkpoints import list_checkpoints
    from conetool.errors import CheckpointError

    with pytest.raises(CheckpointError) as info:
        list_checkpoints(directory)
    return str(info.value)


def test_safetensors_with_overlapping_tensors_or_stray_bytes_are_refused(tmp_path):
    """Rules out: two tensors sharing bytes, or bytes after the last tensor, read as a valid
    checkpoint (the data would not be what the header says)."""
    good = {"a": ("F32", [2], _f32(1, 2)), "b": ("F32", [2], _f32(3, 4))}
    (tmp_path / "step_1.safetensors").write_bytes(
        _safetensors_bytes(good, offsets={"b": [4, 12]}, tail=b"\0" * 4)
    )
    assert "two tensors overlap" in _problem(tmp_path)
    (tmp_path / "step_1.safetensors").write_bytes(_safetensors_bytes(good, tail=b"\0" * 8))
    assert "8 stray bytes after the last tensor" in _problem(tmp_path)


def test_a_tensor_the_index_places_in_another_shard_is_refused(tmp_path):
    """Rules out: the shard check reduced to "every indexed tensor is in some shard" (shards of
    two saves whose key sets happen to agree would be mixed)."""
    for k, names in enumerate([["a", "b"], ["c"]], start=1):
        raw = {n: ("F32", [1], _f32(float(k))) for n in names}
        (tmp_path / f"model-0000{k}-of-00002.safetensors").write_bytes(_safetensors_bytes(raw))
    index = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    index["c"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    assert "do not hold what the index says" in _problem(tmp_path)


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def test_integer_weights_for_a_float_parameter_are_refused(tmp_path):
    """Rules out: integer tensors cast silently into float parameters (0.7 saved as int is 0)."""
    from conetool.checkpoints import load_checkpoint
    from conetool.errors import CheckpointError

    sd = {k: v.clone() for k, v in _bn_net().state_dict().items()}
    sd["0.weight"] = sd["0.weight"].to(torch.int32)
    with pytest.raises(CheckpointError, match=r"'0\.weight' as int32.*float32"):
        load_checkpoint(_bn_net(), sd)


def test_a_missing_batchnorm_statistic_is_refused_but_a_missing_counter_is_filled(tmp_path):
    """Rules out: missing BatchNorm running statistics accepted like the step counter
    ``num_batches_tracked`` (eval-mode outputs depend on them)."""
    from conetool.checkpoints import load_checkpoint
    from conetool.errors import CheckpointError

    sd = dict(_bn_net().state_dict())
    del sd["1.num_batches_tracked"]
    load_checkpoint(_bn_net(), sd)
    del sd["1.running_var"]
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): '1\.running_var'"):
        load_checkpoint(_bn_net(), sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nan_in_half_precision_weights_is_found(tmp_path, dtype):
    """Rules out: the finiteness check made for float32/float64 only."""
    from safetensors.torch import save_file

    from conetool.checkpoints import read_checkpoint
    from conetool.errors import CheckpointError

    save_file(
        {"w": torch.tensor([1.0, math.nan], dtype=dtype)}, str(tmp_path / "step_1.safetensors")
    )
    with pytest.raises(CheckpointError, match="non-finite values in tensor 'w'"):
        read_checkpoint(tmp_path / "step_1.safetensors")


# --------------------------------------------------------------------------------------------------
# Models


def test_lenet5_keeps_conv2_unpadded_when_its_input_is_exactly_6x6():
    """Rules out: the padding rule's bound moved (its docstring: conv2 has padding 0 when its
    input is at least 6x6). 12x12: conv1 (pad 2) 12, pool 6, conv2 (pad 0) 2, pool 1: 16 features."""
    from conetool.models import lenet5

    model = lenet5((1, 12, 12), 10)
    assert model.conv2.padding == (0, 0)
    assert model.fc1.in_features == 16
    x = torch.randn(2, 1, 12, 12)
    h = nn.functional.max_pool2d(
        torch.relu(nn.functional.conv2d(x, model.conv1.weight, padding=2)), 2
    )
    assert nn.functional.max_pool2d(nn.functional.conv2d(h, model.conv2.weight), 2).shape[1:] == (
        16,
        1,
        1,
    )


def test_a_prefix_is_not_stripped_when_that_would_merge_two_keys():
    """Rules out: stripping ``module.`` from a state dict holding both ``module.w`` and ``w``
    (one of the two tensors would silently overwrite the other)."""
    from conetool.checkpoints import load_checkpoint
    from conetool.errors import CheckpointError

    model = nn.Linear(2, 1, bias=False)
    sd = {"weight": torch.ones(1, 2), "module.weight": torch.zeros(1, 2)}
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): 'module\.weight'"):
        load_checkpoint(model, sd)


def test_step_regex_with_epoch_and_it_groups_adds_the_iteration(tmp_path):
    """Rules out: the ``it`` group ignored (every checkpoint of an epoch would get one step)."""
    from safetensors.torch import save_file

    from conetool.checkpoints import list_checkpoints

    for name in ("run_ep2_it3", "run_ep2_it7", "run_ep0_it0"):
        save_file({"w": torch.ones(1)}, str(tmp_path / f"{name}.safetensors"))
    refs = list_checkpoints(
        tmp_path, step_regex=r"ep(?P<epoch>\d+)_it(?P<it>\d+)", iterations_per_epoch=10
    )
    assert [r.step for r in refs] == [0, 23, 27]
