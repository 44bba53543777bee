"""`conetool switch` replays the standard run's own recipe from step t: on a network linear in its
trainable parameters (its linearized model is itself), the continuation from any stored step t
must land on the run's checkpoint of T, weight for weight, and give the run's metrics rows at every
step in between.

This compares with the run `conetool train` actually made (not with a reference rebuilt from the
spec, as tests/test_switch_reference.py does), in float64, under a recipe where every part of the
replay shows: the learning rate of the schedule at the global step (warmup still on at t, a
milestone or the cosine decay inside t..T; a schedule restarted at t gives other updates), the
batches of the global steps t..T-1 across an epoch boundary with their seeded augmentation, the
coupled weight decay on θ, Nesterov momentum or Adam's moments and update counts from the state
saved at t (fresh ones give other updates), and a frozen parameter that neither run trains.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from conetool import paths, training
from conetool.data import load_data
from conetool.loop import TrainingLoop
from conetool.pipeline import switch_points, switch_prepare
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train

STEPS = 12  # 5 steps per epoch (40 examples, batches of 8): t..T crosses an epoch boundary

RECIPES: dict[str, dict[str, Any]] = {
    "sgd-nesterov-step-warmup": {
        "optimizer": "sgd",
        "lr": 0.3,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-3,
        "schedule": "step",
        "milestones": [6, 10],
        "gamma": 0.3,
        "warmup_steps": 6,
    },
    "adam-cosine-warmup": {
        "optimizer": "adam",
        "lr": 0.05,
        "betas": [0.8, 0.95],
        "weight_decay": 1e-2,
        "schedule": "cosine",
        "warmup_steps": 6,
    },
    "adamw-label-smoothing-cosine-warmup": {  # a torchvision-style recipe of one's own
        "optimizer": "adamw",
        "lr": 0.05,
        "weight_decay": 0.5,
        "label_smoothing": 0.1,
        "schedule": "cosine",
        "warmup_steps": 6,
    },
}


def jitter(x: Tensor, generator: torch.Generator) -> Tensor:
    """An augmentation for the synthetic data set: noise and a random sign per example."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    sign = torch.where(torch.rand(x.shape[0], generator=generator) < 0.5, -1.0, 1.0)
    return sign.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) * x + 0.3 * noise


def raw_spec(recipe: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {"arch": "switch_linear_net:make", "num_classes": 3},
        "data": {
            "dataset": "synthetic",
            "shape": [5],
            "num_classes": 3,
            "train_size": 40,
            "test_size": 30,
            "noise": 1.0,
        },
        "probe": {"size": 6},
        "train": {
            "steps": STEPS,
            "batch_size": 8,
            "seed": 3,
            "save_every": 4,
            "eval_every": 1,
            "augment": True,
            **recipe,
        },
    }


def finals(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, Tensor]]:
    """The linearized model's weights at T (its state dict, θ inside) of each point, by t."""
    seen: dict[int, dict[str, Tensor]] = {}

    class Kept(TrainingLoop):
        def run(self, start: int, until: int) -> list[dict[str, float]]:
            rows = super().run(start, until)
            seen[start] = self.model.params_state_dict()
            return rows

    monkeypatch.setattr(switch_points, "TrainingLoop", Kept)
    return seen


def metrics(run: Path) -> dict[int, dict[str, str]]:
    with open(paths.metrics(run)) as handle:
        return {int(r["step"]): r for r in csv.DictReader(handle)}


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_model_linear_in_theta_lands_on_the_runs_checkpoint_of_T(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def load(spec: Any, **options: Any) -> Any:  # (source=: the spec file, for its errors)
        return replace(load_data(spec, **options), augment=jitter)

    monkeypatch.setattr(training, "load_data", load)  # the run and the switch: the same batches
    monkeypatch.setattr(switch_prepare, "load_data", load)
    spec = spec_from_dict(raw_spec(RECIPES[name]), source=f"{name}.toml")
    ckpts = tmp_path / "ckpts"
    train(spec, ckpts, device="cpu")
    seen = finals(monkeypatch)
    result = switch([0, 4, 8], store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert [p.at for p in result.points] == [0, 4, 8]
    assert result.warnings == [] and result.notes == []
    final = load_file(str(paths.checkpoint(ckpts, STEPS)))
    standard = metrics(ckpts)
    for point in result.points:
        t = point.at
        assert point.momentum == "saved" and not point.reused
        start = load_file(str(paths.checkpoint(ckpts, t)))
        assert (final["head.weight"] - start["head.weight"]).abs().max() > 1e-2  # θ moved
        got = seen[t]
        assert sorted(got) == sorted(final)
        for key, value in final.items():  # the frozen features and θ: the run's own at T
            torch.testing.assert_close(got[key], value, rtol=1e-11, atol=1e-12, msg=key)
        rows = {int(r["step"]): r for r in point.rows}
        assert sorted(rows) == list(range(t, STEPS + 1))
        for step, row in rows.items():  # the run's metrics.csv row of every step t..T
            want = standard[step]
            assert row["lr"] == pytest.approx(float(want["lr"]), rel=1e-12), step
            assert row["test_loss"] == pytest.approx(float(want["test_loss"]), rel=1e-10), step
            assert row["test_acc"] == pytest.approx(float(want["test_acc"]), abs=1e-12), step
            if step > t:  # the batch losses of the update before it
                assert row["train_loss"] == pytest.approx(float(want["train_loss"]), rel=1e-10)
                assert row["train_acc"] == pytest.approx(float(want["train_acc"]), abs=1e-12)
        # results.csv's numbers: the linearized model at T, and the standard model at T beside
        assert point.test_loss == pytest.approx(float(standard[STEPS]["test_loss"]), rel=1e-10)
        assert point.test_acc == pytest.approx(float(standard[STEPS]["test_acc"]), abs=1e-12)
        # ... and the batches of the last eval_every (here 1) steps: the run's row of T
        assert point.train_loss == rows[STEPS]["train_loss"]
        assert point.train_acc == rows[STEPS]["train_acc"]
    assert result.reference is not None and result.reference["source"] == "checkpoint"
    assert result.reference["test_loss"] == pytest.approx(
        float(standard[STEPS]["test_loss"]), rel=1e-12
    )
    with open(paths.switch_results_csv(tmp_path / "s")) as handle:
        written = list(csv.DictReader(handle))
    assert [int(r["at"]) for r in written] == [0, 4, 8]
    for row, point in zip(written, result.points, strict=True):
        assert int(row["until"]) == STEPS and float(row["test_acc"]) == point.test_acc
        assert float(row["test_loss"]) == point.test_loss
