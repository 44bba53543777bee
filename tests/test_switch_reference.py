"""`conetool switch` against an independent float64 reference written with plain torch.

The reference rebuilds, without conetool's code, what shared/DESIGN.md ("Definitions", "Switch")
says the linearized continuation from step t to T is, for a float64 conv + BatchNorm + dropout
network (tests/switch_reference_net.py):

- f_lin(x; θ) = f(x; θ_t) + J(x; θ_t)(θ − θ_t), with f written out by hand in eval mode (BatchNorm
  with the running statistics of the checkpoint at t, dropout off) and J an explicit Jacobian
  (torch.autograd.functional.jacobian), so the gradient of the mean cross-entropy is Jᵀ ∂L/∂f_lin;
- SGD (momentum, Nesterov, coupled weight decay on θ) and Adam written out step by step, from the
  optimizer state saved beside the checkpoint at t (or from zero without one);
- the learning rate of the spec's schedule (warmup included) at the GLOBAL step s = t .. T-1;
- the batch of global step s: the epoch's permutation and the augmentation seeded as the spec
  says, checked first against the inputs standard training itself was given at every step.

The switch's metrics rows (every step: eval_every = 1) must agree with it step for step: the
train loss of the batch of each update, the test loss and accuracy after it, the learning rate.
"""

from __future__ import annotations

import csv
import hashlib
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import switch_reference_net
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from conetool import paths, training
from conetool.data import load_data
from conetool.pipeline import switch_prepare
from conetool.pipeline.run_switch import switch
from conetool.spec import Spec, spec_from_dict
from conetool.training import train

N_TRAIN, BATCH, STEPS, SEED = 40, 8, 12, 5  # 5 steps per epoch: the run crosses two epochs
NAMES = [
    "conv.weight",
    "conv.bias",
    "bn.weight",
    "bn.bias",
    "fc.weight",
    "fc.bias",
    "bn1.weight",
    "bn1.bias",
    "out.weight",
    "out.bias",
]
EPS_BN = 1e-5


def jitter(x: Tensor, generator: torch.Generator) -> Tensor:
    """The data set's augmentation in these tests: noise and a random sign per example."""
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    sign = torch.where(torch.rand(x.shape[0], generator=generator) < 0.5, -1.0, 1.0)
    return sign.view(-1, 1, 1, 1).to(x.dtype) * x + 0.3 * noise


def raw_spec(**train: Any) -> dict[str, Any]:
    return {
        "model": {"arch": "switch_reference_net:make", "num_classes": 3},
        "data": {
            "dataset": "synthetic",
            "shape": [1, 4, 4],
            "num_classes": 3,
            "train_size": N_TRAIN,
            "test_size": 20,
            "noise": 1.0,
        },
        "probe": {"size": 6},
        "train": {
            "steps": STEPS,
            "batch_size": BATCH,
            "seed": SEED,
            "save_every": 4,
            "eval_every": 1,
            "augment": True,
            **train,
        },
    }


CASES: dict[str, dict[str, Any]] = {
    # warmup still on at t, a milestone inside t..T, Nesterov, weight decay
    "sgd-nesterov-step": {
        "optimizer": "sgd",
        "lr": 0.2,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-3,
        "schedule": "step",
        "milestones": [6, 9],
        "gamma": 0.3,
        "warmup_steps": 6,
    },
    "adam-cosine": {
        "optimizer": "adam",
        "lr": 0.1,
        "betas": [0.8, 0.95],
        "weight_decay": 1e-2,
        "schedule": "cosine",
        "warmup_steps": 6,
    },
    "sgd-cosine": {
        "optimizer": "sgd",
        "lr": 0.3,
        "momentum": 0.5,
        "weight_decay": 1e-2,
        "schedule": "cosine",
    },
}


# ---------------------------------------------------------------------------------------------
# The reference: plain torch, none of conetool's training, data-order or linearization code
# ---------------------------------------------------------------------------------------------


def mix(*parts: object) -> int:
    """The seed of a generator as the spec's data order defines it: sha256 of the repr."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def batch_at(xs: Tensor, ys: Tensor, seed: int, step: int) -> tuple[Tensor, Tensor]:
    """The (augmented) batch of global ``step``: block step % per_epoch of the permutation of
    epoch step // per_epoch, then the augmentation seeded by (seed, step)."""
    per_epoch = len(xs) // BATCH
    epoch, position = divmod(step, per_epoch)
    perm = torch.randperm(
        len(xs), generator=torch.Generator().manual_seed(mix("epoch", seed, epoch))
    )
    index = perm[position * BATCH : (position + 1) * BATCH]
    x = jitter(xs[index], torch.Generator().manual_seed(mix("augment", seed, step)))
    return x, ys[index]


def schedule(train: dict[str, Any], step: int) -> float:
    """The learning rate of the update at global ``step``."""
    lr = float(train["lr"])
    kind = train.get("schedule", "constant")
    if kind == "step":
        lr *= train["gamma"] ** len([m for m in train["milestones"] if m <= step])
    elif kind == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * step / train["steps"]))
    if train.get("warmup_steps"):
        lr *= min(1.0, (step + 1) / train["warmup_steps"])
    return lr


def bn_eval(h: Tensor, state: dict[str, Tensor], name: str) -> Tensor:
    shape = (1, -1) + (1,) * (h.dim() - 2)
    mean = state[f"{name}.running_mean"].view(shape)
    var = state[f"{name}.running_var"].view(shape)
    weight, bias = state[f"{name}.weight"].view(shape), state[f"{name}.bias"].view(shape)
    return (h - mean) / torch.sqrt(var + EPS_BN) * weight + bias


def network(state: dict[str, Tensor], x: Tensor) -> Tensor:
    """The network in eval mode (BatchNorm on running statistics, no dropout): (B, 3) logits."""
    h = F.conv2d(x.to(torch.float64), state["conv.weight"], state["conv.bias"], padding=1)
    h = torch.tanh(bn_eval(h, state, "bn")).flatten(1)
    h = torch.tanh(bn_eval(h @ state["fc.weight"].T + state["fc.bias"], state, "bn1"))
    return h @ state["out.weight"].T + state["out.bias"]


@dataclass
class Point:
    """The linearization point: θ_t (flat, float64), the buffers at t, the shapes."""

    theta_t: Tensor
    state: dict[str, Tensor]

    @classmethod
    def load(cls, path: Path) -> Point:
        state = load_file(str(path))
        assert all(state[n].dtype == torch.float64 for n in NAMES)
        return cls(torch.cat([state[n].flatten() for n in NAMES]), state)

    def with_theta(self, theta: Tensor) -> dict[str, Tensor]:
        out, offset = dict(self.state), 0
        for name in NAMES:
            size = self.state[name].numel()
            out[name] = theta[offset : offset + size].view(self.state[name].shape)
            offset += size
        return out

    def f(self, theta: Tensor, x: Tensor) -> Tensor:
        return network(self.with_theta(theta), x)

    def jacobian(self, x: Tensor) -> Tensor:
        """J(x; θ_t): (B, 3, p)."""
        jac = torch.autograd.functional.jacobian(lambda th: self.f(th, x), self.theta_t)
        return jac.detach()

    def f_lin(self, theta: Tensor, x: Tensor, jac: Tensor) -> Tensor:
        with torch.no_grad():
            return self.f(self.theta_t, x) + jac @ (theta - self.theta_t)


def saved_state(path: Path, key: str, theta_t: Tensor) -> Tensor | None:
    """The flat per-parameter buffer ``key`` of the optimizer state saved beside a checkpoint
    (tensors ``state.<index>.<key>``, the index that of the parameter in NAMES), None without one."""
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    if not tensors:  # the state at step 0: no update yet, no buffers
        return None
    parts = [tensors[f"state.{i}.{key}"].to(torch.float64).flatten() for i in range(len(NAMES))]
    flat = torch.cat(parts)
    assert flat.shape == theta_t.shape
    return flat


def step_counts(path: Path) -> int:
    """Adam's update count in the state saved beside a checkpoint (the same for every parameter)."""
    tensors = load_file(str(path))
    counts = {int(tensors[f"state.{i}.step"]) for i in range(len(NAMES))}
    (count,) = counts
    return count


def reference_rows(
    ckpts: Path,
    train: dict[str, Any],
    xs: Tensor,
    ys: Tensor,
    test: tuple[Tensor, Tensor],
    t: int,
    T: int,
) -> dict[int, dict[str, float]]:
    """Per global step s = t .. T: the test loss and accuracy of f_lin at θ_s, the lr at s, and
    (s > t) the train loss of the batch of update s - 1 at θ_(s-1)."""
    point = Point.load(paths.checkpoint(ckpts, t))
    beside = paths.optimizer_state(ckpts, t)
    theta = point.theta_t.clone()
    test_x, test_y = test
    test_jac = point.jacobian(test_x)
    wd = float(train.get("weight_decay", 0.0))
    if train["optimizer"] == "sgd":
        buf = saved_state(beside, "momentum_buffer", theta)
    else:
        m = saved_state(beside, "exp_avg", theta)
        v = saved_state(beside, "exp_avg_sq", theta)
        k = step_counts(beside) if m is not None else 0
        m = torch.zeros_like(theta) if m is None else m
        v = torch.zeros_like(theta) if v is None else v
    rows: dict[int, dict[str, float]] = {}
    last_loss = math.nan
    for s in range(t, T + 1):
        logits = point.f_lin(theta, test_x, test_jac)
        rows[s] = {
            "test_loss": float(F.cross_entropy(logits, test_y)),
            "test_acc": float((logits.argmax(1) == test_y).double().mean()),
            "lr": schedule(train, s),
            "train_loss": last_loss,
        }
        if s == T:
            break
        x, y = batch_at(xs, ys, train["seed"], s)
        jac = point.jacobian(x)
        z = point.f_lin(theta, x, jac)
        last_loss = float(F.cross_entropy(z, y))
        dz = (torch.softmax(z, 1) - F.one_hot(y, 3).to(torch.float64)) / len(y)
        grad = torch.einsum("bc,bcp->p", dz, jac)
        lr = schedule(train, s)
        d = grad + wd * theta  # coupled weight decay on θ itself
        if train["optimizer"] == "sgd":
            mu = float(train["momentum"])
            buf = d.clone() if buf is None else mu * buf + d
            d = d + mu * buf if train.get("nesterov") else buf
            theta = theta - lr * d
        else:
            b1, b2 = train["betas"]
            k += 1
            m = b1 * m + (1 - b1) * d
            v = b2 * v + (1 - b2) * d * d
            denom = v.sqrt() / math.sqrt(1 - b2**k) + 1e-8
            theta = theta - lr / (1 - b1**k) * m / denom
    return rows


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def augmented(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], Any]:
    """Give the spec's data set the augmentation :func:`jitter` (for train and switch alike)."""

    def load(spec: Any, **options: Any) -> Any:  # (source=: the spec file, for its errors)
        return replace(load_data(spec, **options), augment=jitter)

    monkeypatch.setattr(training, "load_data", load)
    monkeypatch.setattr(switch_prepare, "load_data", load)
    return load


def train_case(folder: Path, name: str, augmented: Callable[[Any], Any]) -> tuple[Spec, Path]:
    spec = spec_from_dict(raw_spec(**CASES[name]), source=f"{name}.toml")
    out = folder / "ckpts"
    switch_reference_net.RECORD.clear()
    train(spec, out, device="cpu")
    recorded = list(switch_reference_net.RECORD)
    switch_reference_net.RECORD.clear()
    # The reference's batches are standard training's: every step's input, bit for bit.
    xs, ys = augmented(spec.data).train.batch(torch.arange(N_TRAIN))
    assert len(recorded) == STEPS
    for s, x in enumerate(recorded):
        assert torch.equal(x, batch_at(xs, ys, SEED, s)[0]), f"the batch of step {s}"
    return spec, out


def data_of(spec: Spec) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    bundle = load_data(spec.data)
    xs, ys = bundle.train.batch(torch.arange(len(bundle.train)))
    return xs, ys, bundle.test.batch(torch.arange(len(bundle.test)))


def compare(point: Any, expected: dict[int, dict[str, float]], t: int, T: int) -> None:
    rows = {int(r["step"]): r for r in point.rows}
    assert sorted(rows) == list(range(t, T + 1))
    for s in range(t, T + 1):
        got, want = rows[s], expected[s]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-12), s
        assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-9, abs=1e-12), s
        assert got["test_acc"] == want["test_acc"], s
        if s > t:
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-9), s
    assert point.test_loss == pytest.approx(expected[T]["test_loss"], rel=1e-9)


def metrics_csv(run: Path) -> dict[int, dict[str, str]]:
    with open(paths.metrics(run)) as handle:
        return {int(r["step"]): r for r in csv.DictReader(handle)}


@pytest.mark.parametrize("name", list(CASES))
def test_switch_matches_the_float64_reference(
    tmp_path: Path, augmented: Callable[[Any], Any], name: str
) -> None:
    """Switch points t = 0, 4, 8 of one sweep to T = 12 (a checkpoint): each linearized
    continuation step for step (none leaks into the next), and the standard model at T is the
    checkpoint of T, evaluated in eval mode."""
    spec, ckpts = train_case(tmp_path, name, augmented)
    xs, ys, test = data_of(spec)
    train_raw = raw_spec(**CASES[name])["train"]
    T = STEPS
    result = switch([0, 4, 8], store=tmp_path / "store", ckpts=ckpts, spec=spec, device="cpu")
    assert [p.at for p in result.points] == [0, 4, 8]
    # the saved states' lr (the schedule's at t - 1, in warmup or decay) is the spec's: unsaid
    assert result.warnings == [] and result.notes == []
    for point in result.points:
        t = point.at
        assert point.momentum == "saved"
        expected = reference_rows(ckpts, train_raw, xs, ys, test, t, T)
        compare(point, expected, t, T)
        # The linearized model went somewhere
        assert abs(expected[T]["test_loss"] - expected[t]["test_loss"]) > 1e-3
    # the standard model at T: the checkpoint of step T in eval mode
    final = load_file(str(paths.checkpoint(ckpts, T)))
    logits = network(final, test[0])
    assert result.reference is not None and result.reference["source"] == "checkpoint"
    assert result.reference["step"] == T
    assert result.reference["test_loss"] == pytest.approx(
        float(F.cross_entropy(logits, test[1])), rel=1e-12
    )
    assert result.reference["test_acc"] == float((logits.argmax(1) == test[1]).double().mean())


def test_fresh_momentum_and_a_T_that_is_no_checkpoint(
    tmp_path: Path, augmented: Callable[[Any], Any]
) -> None:
    """Without the optimizer state at t the momentum starts at zero; T = 10 is no stored step:
    the linearized run stops there, and --reference train continues the standard run from the
    checkpoint of step 8, which gives standard training's own numbers at step 10."""
    name = "sgd-nesterov-step"
    spec, ckpts = train_case(tmp_path, name, augmented)
    run = tmp_path / "fresh"
    shutil.copytree(ckpts, run)
    paths.optimizer_state(run, 4).unlink()
    xs, ys, test = data_of(spec)
    train_raw = raw_spec(**CASES[name])["train"]
    t, T = 4, 10
    result = switch(
        [t],
        until=T,
        store=tmp_path / "store",
        ckpts=run,
        spec=spec,
        device="cpu",
        reference="train",
    )
    (point,) = result.points
    assert point.momentum == "fresh" and point.until == T
    compare(point, reference_rows(run, train_raw, xs, ys, test, t, T), t, T)
    assert result.reference is not None and result.reference["source"] == "trained from step 8"
    standard = metrics_csv(run)[T]
    assert result.reference["test_loss"] == pytest.approx(float(standard["test_loss"]), rel=1e-12)
    assert result.reference["test_acc"] == pytest.approx(float(standard["test_acc"]))
    # The default reference (the checkpoint of T): none at 10, said; the point is reused.
    again = switch([t], until=T, store=tmp_path / "store", ckpts=run, spec=spec, device="cpu")
    assert again.reference is None and again.points[0].reused
    assert any("no checkpoint of step 10" in w for w in again.warnings), again.warnings


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_cosine_schedule_past_the_run_is_said_to_train_at_lr_zero(
    tmp_path: Path, schedule: str
) -> None:
    """The cosine schedule holds its end value, 0, past train.steps: with --beyond-run the
    linearized model does not move after the run's last step, so T's result is step 4's. That
    was silent (minutes of updates at lr 0); it is a warning now, and only for cosine."""
    raw = raw_spec(schedule=schedule, lr=0.2, momentum=0.9, weight_decay=1e-3)
    raw["model"] = {"arch": "mlp", "num_classes": 3, "widths": [6], "activation": "tanh"}
    raw["train"].update(steps=4, save_every=2, augment=False)
    spec = spec_from_dict(raw, source=f"{schedule}.toml")
    train(spec, tmp_path / "ckpts", device="cpu")
    result = switch(
        [2], until=6, beyond_run=True, store=tmp_path / "s", ckpts=tmp_path / "ckpts", spec=spec
    )
    rows = {int(r["step"]): r for r in result.points[0].rows}
    said = [w for w in result.warnings if "train.schedule" in w]
    if schedule == "constant":
        assert said == [] and rows[6]["test_loss"] != rows[4]["test_loss"]
        return
    assert rows[4]["lr"] == rows[5]["lr"] == 0.0
    assert rows[6]["test_loss"] == rows[4]["test_loss"]  # nothing moved after step 4
    (warning,) = said
    text = " ".join(warning.split())
    assert "--until 6 is beyond train.steps = 4" in text, text
    assert "learning rate is 0 from step 4 on" in text and "--until 4" in text, text
    within = switch([2], store=tmp_path / "t", ckpts=tmp_path / "ckpts", spec=spec)
    assert not any("train.schedule" in w for w in within.warnings), within.warnings
