"""Learning-rate schedules against their closed forms; optimizer state round trips exactly."""

from __future__ import annotations

import math

import pytest
import torch

from conetool.errors import CheckpointError
from conetool.optim import (
    learning_rate,
    load_optimizer_state,
    make_optimizer,
    read_optimizer_state,
    save_optimizer_state,
)
from conetool.spec import spec_from_dict


def train_spec(**values):
    return spec_from_dict({"train": values}).train


def test_constant_schedule():
    t = train_spec(lr=0.3, steps=100)
    assert [learning_rate(t, s) for s in (0, 50, 99)] == [0.3, 0.3, 0.3]


def test_step_schedule_multiplies_by_gamma_at_each_milestone():
    t = train_spec(lr=1.0, schedule="step", milestones=[10, 20], gamma=0.5, steps=30)
    assert learning_rate(t, 9) == 1.0
    assert learning_rate(t, 10) == 0.5
    assert learning_rate(t, 19) == 0.5
    assert learning_rate(t, 20) == 0.25


def test_cosine_schedule_closed_form():
    t = train_spec(lr=2.0, schedule="cosine", steps=100)
    for s in (0, 25, 50, 99):
        assert learning_rate(t, s) == pytest.approx(1.0 + math.cos(math.pi * s / 100))


def test_linear_warmup_multiplies_any_schedule():
    t = train_spec(lr=1.0, schedule="cosine", steps=100, warmup_steps=4)
    assert learning_rate(t, 0) == pytest.approx(0.25 * 0.5 * (1 + math.cos(0)))
    assert learning_rate(t, 1) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 100)))
    assert learning_rate(t, 3) == pytest.approx(0.5 * (1 + math.cos(3 * math.pi / 100)))


@pytest.mark.parametrize(
    "values",
    [
        {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"optimizer": "sgd", "momentum": 0.0},
        {"optimizer": "adam", "lr": 1e-2, "betas": [0.8, 0.99]},
    ],
)
def test_optimizer_state_round_trip_continues_identically(tmp_path, values):
    torch.manual_seed(0)
    t = train_spec(**values)
    model = torch.nn.Linear(4, 3)
    opt = make_optimizer(model.parameters(), t)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def step(m, o):
        o.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    save_optimizer_state(opt, tmp_path / "opt.safetensors", step=3)

    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    twin_opt = make_optimizer(twin.parameters(), t)
    load_optimizer_state(twin_opt, tmp_path / "opt.safetensors")
    for _ in range(2):
        step(model, opt)
        step(twin, twin_opt)
    assert torch.equal(model.weight, twin.weight)
    assert torch.equal(model.bias, twin.bias)
    if values["optimizer"] == "sgd" and values["momentum"] == 0:
        return
    # The loaded state matters: a fresh optimizer from the same weights goes elsewhere.
    fresh = torch.nn.Linear(4, 3)
    fresh.load_state_dict(twin.state_dict())
    fresh_opt = make_optimizer(fresh.parameters(), t)
    step(fresh, fresh_opt)
    step(twin, twin_opt)
    assert not torch.equal(fresh.weight, twin.weight)


def test_optimizer_state_of_another_optimizer_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_optimizer_state(
        make_optimizer(model.parameters(), train_spec()), tmp_path / "o.safetensors", 0
    )
    adam = make_optimizer(model.parameters(), train_spec(optimizer="adam"))
    with pytest.raises(CheckpointError, match="is for SGD, but the spec's optimizer is Adam"):
        load_optimizer_state(adam, tmp_path / "o.safetensors")


def test_train_resume_takes_the_saved_hyperparameters_switch_reads_the_state(tmp_path):
    """load_optimizer_state (train --resume, the same spec) restores the parameter groups too;
    read_optimizer_state (switch, which decides what to take) gives the saved state dict."""
    from conetool.optim import read_optimizer_state  # (new: here, so the others run before)

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    saved = make_optimizer(model.parameters(), train_spec(lr=0.3, momentum=0.9))
    model(torch.randn(8, 4)).square().sum().backward()
    saved.step()
    save_optimizer_state(saved, tmp_path / "o.safetensors", 1)
    other = train_spec(lr=0.1, momentum=0.5, nesterov=True, weight_decay=1e-2)
    resumed = make_optimizer(model.parameters(), other)
    load_optimizer_state(resumed, tmp_path / "o.safetensors")
    group = resumed.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.3, 0.9, False)
    read = read_optimizer_state(tmp_path / "o.safetensors")
    whole = saved.state_dict()
    assert read["param_groups"] == whole["param_groups"]
    assert read["state"].keys() == whole["state"].keys() == {0, 1}
    for index, values in whole["state"].items():
        assert read["state"][index].keys() == values.keys() == {"momentum_buffer"}
        assert torch.equal(read["state"][index]["momentum_buffer"], values["momentum_buffer"])
    # a state over other parameters: train --resume refuses it
    wider = make_optimizer(torch.nn.Linear(4, 3, bias=False).parameters(), other)
    with pytest.raises(CheckpointError, match="was not written by conetool train"):
        load_optimizer_state(wider, tmp_path / "o.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match="x.safetensors cannot be read"):
        read_optimizer_state(tmp_path / "x.safetensors")


def test_a_state_file_is_opened_once(tmp_path, monkeypatch):
    """Reading a state opened its file twice (its metadata, then its tensors with load_file); now
    once, its metadata and tensors from one handle."""
    import safetensors
    import safetensors.torch

    import conetool.optim as optim_module

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "step_000001.optim.safetensors"
    save_optimizer_state(optimizer, path, 1)
    opened = []
    real = safetensors.safe_open

    def counting(filename, *args, **kwargs):
        opened.append(filename)
        return real(filename, *args, **kwargs)

    for module in (safetensors, safetensors.torch, optim_module):
        monkeypatch.setattr(module, "safe_open", counting, raising=False)
    state = read_optimizer_state(path)
    assert opened == [str(path)]
    assert state["param_groups"][0]["momentum"] == 0.9
    assert sorted(state["state"]) == [0, 1]
    assert torch.equal(
        state["state"][0]["momentum_buffer"], optimizer.state[model.weight]["momentum_buffer"]
    )
