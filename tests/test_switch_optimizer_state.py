"""`conetool switch` with the optimizer state inside a training loop's own checkpoint file
(`{"model_state_dict": ..., "optimizer_state_dict": ..., "step": ...}`): used when it verifiably
is the spec's optimizer over the same parameters, else fresh momentum with a note saying why."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conetool import paths
from conetool.errors import CheckpointError
from conetool.loop import TrainingLoop
from conetool.optim import load_optimizer_state, make_optimizer
from conetool.pipeline import switch_points
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train

LR, MOMENTUM, WEIGHT_DECAY = 0.2, 0.9, 1e-3


def spec_dict(widths, optimizer="sgd"):
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
            "optimizer": optimizer,
            "steps": 12,
            "batch_size": 8,
            "lr": LR if optimizer == "sgd" else 0.01,
            "momentum": MOMENTUM,
            "save_every": 4,
            "eval_every": 4,
            "weight_decay": WEIGHT_DECAY,
        },
    }


SPEC = spec_from_dict(spec_dict([8]), source="deep.toml")


def plain_loop(optimizer_of, steps=3):
    """A researcher's own loop: the spec's MLP trained ``steps`` steps on its own random batches
    by the optimizer ``optimizer_of(model)``; returns the model and the optimizer."""
    torch.manual_seed(0)
    model = model_for(SPEC)
    optimizer = optimizer_of(model)
    for _ in range(steps):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def save_loop_checkpoint(folder, model, optimizer, entry="optimizer_state_dict", step=3):
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model_state_dict": model.state_dict(), "step": step}
    if optimizer is not None:
        payload[entry] = optimizer.state_dict()
    torch.save(payload, folder / f"step_{step}.pt")
    return folder


def test_the_first_linearized_update_uses_the_saved_momentum_buffer(tmp_path, monkeypatch):
    # Was: momentum "fresh" and the note "one inside your own checkpoint file, such as its
    # optimizer_state_dict, ... is not read": the first update was θ - lr (g + wd θ), as if the
    # run had just started, not θ - lr (μ buf + g + wd θ).
    model, optimizer = plain_loop(sgd)
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    saved = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    updates = []

    class Watched(TrainingLoop):  # records the parameters around each update, and the gradients
        def update(self, step):
            params = self.optimizer.param_groups[0]["params"]
            before = [p.detach().clone() for p in params]
            loss = super().update(step)
            after = [p.detach().clone() for p in params]
            updates.append((step, before, after, [p.grad.clone() for p in params]))
            return loss

    monkeypatch.setattr(switch_points, "TrainingLoop", Watched)
    result = switch([3], until=5, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    (point,) = result.points
    assert point.momentum == "saved"
    assert not any("momentum" in said for said in result.notes + result.warnings), result
    step, before, after, grads = updates[0]
    assert step == 3 and len(before) == len(saved) == 4  # two Linear layers' weight and bias
    for theta, new, g, buf in zip(before, after, grads, saved, strict=True):
        # torch.optim.SGD with momentum and coupled weight decay, by hand
        d = g + WEIGHT_DECAY * theta
        expected = theta - LR * (MOMENTUM * buf + d)
        torch.testing.assert_close(new, expected, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(new, theta - LR * d)  # what fresh momentum gives
    assert torch.equal(before[0], next(model.parameters()))  # θ_t: the file's


def test_a_conetool_run_resaved_as_loop_checkpoints_is_reproduced_step_for_step(tmp_path):
    # A model linear in its parameters is its own linearization: switching at t with the run's
    # momentum replays the standard run exactly, here from the state inside the .pt files.
    # Was: momentum "fresh" at t = 4, and the losses drifted from the run's.
    spec = spec_from_dict(spec_dict([]), source="linear.toml")
    run = tmp_path / "conetool_run"
    train(spec, run)
    ckpts = tmp_path / "loop_run"
    ckpts.mkdir()
    for step in (0, 4, 8):  # no checkpoint of T = 12: --reference train continues from 8
        model = model_for(spec)
        model.load_state_dict(load_file(paths.checkpoint(run, step)))
        optimizer = make_optimizer(model.parameters(), spec.train)
        load_optimizer_state(optimizer, paths.optimizer_state(run, step))
        save_loop_checkpoint(ckpts, model, optimizer, step=step)
    result = switch(
        [4], store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu", reference="train"
    )
    (point,) = result.points
    assert point.momentum == "saved"
    with open(paths.metrics(run)) as handle:
        standard = {int(r["step"]): r for r in csv.DictReader(handle)}
    for row in point.rows:
        ref = standard[int(row["step"])]
        assert row["test_loss"] == pytest.approx(float(ref["test_loss"]), rel=1e-5)
        if row["step"] > 4:
            assert row["train_loss"] == pytest.approx(float(ref["train_loss"]), rel=1e-5)
    # The standard run continued from step 8 with the momentum of step_8.pt: the run's step 12.
    assert result.reference["source"] == "trained from step 8"
    assert result.reference["test_loss"] == pytest.approx(float(standard[12]["test_loss"]), 1e-5)


def test_other_entries_and_lightnings_list_are_read(tmp_path):
    model, optimizer = plain_loop(sgd)
    for entry, value in (
        ("optimizer", optimizer.state_dict()),
        ("optimizer_states", [optimizer.state_dict()]),  # Lightning's .ckpt
    ):
        folder = tmp_path / entry
        folder.mkdir()
        torch.save({"state_dict": model.state_dict(), entry: value}, folder / "step_3.pt")
        result = switch(
            [3], until=4, store=tmp_path / f"s_{entry}", ckpts=folder, spec=SPEC, device="cpu"
        )
        assert result.points[0].momentum == "saved", (entry, result.notes)


def test_the_state_beside_a_numpy_step_is_read(tmp_path):
    # "step": np.int64(3) made torch.load(weights_only=True) refuse the file: fresh momentum
    model, optimizer = plain_loop(sgd)
    folder = save_loop_checkpoint(tmp_path / "ckpts", model, optimizer, step=np.int64(3))
    result = switch([3], until=4, store=tmp_path / "s", ckpts=folder, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved", result.notes


def two_groups(model, no_decay=0.0):  # weights, then biases, each in the model's order
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return torch.optim.SGD(
        [{"params": weights}, {"params": biases, "weight_decay": no_decay}],
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
    )


def reordered(model):  # one group, the layers in reverse order
    params = list(model.parameters())
    return torch.optim.SGD(params[2:] + params[:2], lr=LR, momentum=MOMENTUM)


def last_layer(model):
    return torch.optim.SGD(list(model.parameters())[2:], lr=LR, momentum=MOMENTUM)


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=0.01)


@pytest.mark.parametrize(
    ("optimizer_of", "said"),
    [
        (
            adam,
            "the optimizer_state_dict in step_3.pt is not used: it is the state of Adam "
            "(exp_avg, exp_avg_sq), the spec's optimizer is sgd",
        ),
        (reordered, "its momentum_buffer of parameter 0 has shape (3, 8), the model's trainable "),
        (last_layer, "it is over 2 parameters, the model has 4 trainable ones"),
        (None, "nor in step_3.pt (no optimizer_state_dict, optimizer, optimizer_states entry)"),
    ],
)
def test_a_state_not_verifiably_the_specs_optimizer_is_left_and_the_note_says_why(
    tmp_path, optimizer_of, said
):
    model, optimizer = plain_loop(optimizer_of or sgd)
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer if optimizer_of else None)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "fresh"
    # a state in the file, not used, is a warning; no state there at all, a note
    channel, other = (
        (result.warnings, result.notes) if optimizer_of else (result.notes, result.warnings)
    )
    assert not [n for n in other if n.startswith("t=3:")], other
    (note,) = [n for n in channel if n.startswith("t=3:")]
    assert said in note, note
    assert "no optimizer state beside the checkpoint (step_000003.optim.safetensors" in note
    assert note.endswith("; momentum starts at zero"), note


@pytest.mark.parametrize("no_decay", [0.0, WEIGHT_DECAY])
def test_a_state_of_two_groups_in_the_models_order_is_used_and_the_note_says_so(
    tmp_path, monkeypatch, no_decay
):
    # Was: "it has 2 parameter groups, which may list the parameters in another order than the
    # model's ...": momentum "fresh". The MLP's weights (8, 4), (3, 8) and biases (8,), (3,)
    # interleave into the model's order in one way only.
    model, optimizer = plain_loop(lambda m: two_groups(m, no_decay))
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    loaded = []

    class Watched(TrainingLoop):  # the optimizer's state as the linearized training starts
        def update(self, step):
            if not loaded:
                params = self.optimizer.param_groups[0]["params"]
                loaded.extend(self.optimizer.state[p]["momentum_buffer"].clone() for p in params)
            return super().update(step)

    monkeypatch.setattr(switch_points, "TrainingLoop", Watched)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved"
    for got, p in zip(loaded, model.parameters(), strict=True):
        assert torch.equal(got, optimizer.state[p]["momentum_buffer"])
    matched = (
        "t=3: momentum from the optimizer_state_dict in step_3.pt, its 2 parameter groups (2 and "
        "2 parameters) matched to the model's trainable parameters by shape: each group taken to "
        "list them in the model's order, every buffer fits one parameter only"
    )
    if no_decay == WEIGHT_DECAY:  # the spec's recipe: information, a note
        assert [n for n in result.notes if n.startswith("t=3:")] == [matched], result.notes
        assert not [w for w in result.warnings if w.startswith("t=3:")], result.warnings
        return
    (warning,) = [w for w in result.warnings if w.startswith("t=3:")]  # a recipe to check
    assert warning.startswith(
        f"{matched}; saved with weight_decay 0.001 in param_groups[0] (2 parameters), 0 in "
        "param_groups[1] (2 parameters) (the spec's 0.001 for every parameter): the model "
        "trains with the spec's values"
    ), warning


def _square_mlp():
    """A spec of an MLP whose layers 0 and 1 have the same shapes (8 -> 8 -> 8), its model (seed
    0) and the model's parameters by name."""
    raw = spec_dict([8, 8])
    raw["data"]["shape"] = [8]
    spec = spec_from_dict(raw, source="square.toml")
    torch.manual_seed(0)
    model = model_for(spec)
    return spec, model, dict(model.named_parameters())


def test_groups_that_fit_the_parameters_in_two_ways_leave_momentum_fresh(tmp_path):
    # Layers 0 and 1 of a square MLP have the same shapes: a group [fc_layers.0, fc] and a group
    # [fc_layers.1] fit the parameters as well as [fc_layers.1, fc] and [fc_layers.0] do.
    spec, model, params = _square_mlp()
    first = [params[n] for n in ("fc_layers.0.weight", "fc_layers.0.bias", "fc.weight")]
    second = [params[n] for n in ("fc_layers.1.weight", "fc_layers.1.bias", "fc.bias")]
    optimizer = torch.optim.SGD(
        [{"params": first}, {"params": second}], lr=LR, momentum=MOMENTUM, weight_decay=0.0
    )
    torch.nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.tensor([0] * 8)).backward()
    optimizer.step()
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert result.points[0].momentum == "fresh"
    (note,) = [n for n in result.warnings if n.startswith("t=3:")]
    assert (
        "the optimizer_state_dict in step_3.pt is not used: its 2 parameter groups (3 and 3 "
        "parameters) interleave, each in the model's order, into the model's trainable "
        "parameters in more than one way that fits every buffer's shape: the buffers of "
        "param_groups[0]['params'][0] would go to 'fc_layers.0.weight' in one and to "
        "'fc_layers.1.weight' in another (both (8, 8)), so which parameter each buffer belongs "
        "to is not certain; momentum starts at zero"
    ) in note, note


def test_adam_state_for_an_adam_spec_and_other_hyperparameters_noted(tmp_path):
    spec = spec_from_dict(spec_dict([8], optimizer="adam"), source="adam.toml")
    model, optimizer = plain_loop(lambda m: torch.optim.AdamW(m.parameters(), lr=0.01))
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert result.points[0].momentum == "saved"
    (note,) = [n for n in result.warnings if n.startswith("t=3:")]  # a recipe to check
    # AdamW's decoupled weight decay 0.01 where the spec has Adam's coupled 0.001: the buffers
    # are used, the hyperparameters are the spec's, and the note names the difference.
    assert "momentum from the optimizer_state_dict in step_3.pt, saved with weight_decay 0.01 " in (
        note
    )
    assert "decoupled_weight_decay True (the spec's False)" in note
    assert "trains with the spec's values" in note


def test_buffers_are_loaded_into_the_optimizer_and_the_hyperparameters_stay(tmp_path):
    from conetool.checkpoint_optimizer import restore_checkpoint_optimizer  # (new: here, so
    # that the other tests of this file run, and fail, on the code before it)

    model, optimizer = plain_loop(
        lambda m: torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.5, nesterov=True)
    )
    path = save_loop_checkpoint(tmp_path, model, optimizer) / "step_3.pt"
    mine = make_optimizer(model.parameters(), SPEC.train)
    names = [n for n, _ in model.named_parameters()]
    found = restore_checkpoint_optimizer(mine, names, path)
    assert found.used and found.entry == "optimizer_state_dict"
    assert found.differs == (
        "momentum 0.5 (the spec's 0.9)",
        "nesterov True (the spec's False)",
        "weight_decay 0 (the spec's 0.001)",
    )
    group = mine.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (LR, MOMENTUM, False)
    for p in model.parameters():
        assert torch.equal(mine.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])
    # a file rewritten since its weights were read: its buffers may be another save's
    with pytest.raises(CheckpointError, match="changed since its weights were read"):
        restore_checkpoint_optimizer(mine, names, path, size=path.stat().st_size + 1)


def test_hugging_faces_optimizer_pt_is_read_when_its_positions_fit(tmp_path):
    # Was: momentum "fresh" and the warning "Hugging Face's checkpoint-3/optimizer.pt is not
    # read: the Trainer lists the parameters in two groups ..." (the Trainer's two groups:
    # tests/test_switch_trainer_optimizer.py).
    model, optimizer = plain_loop(sgd)
    folder = tmp_path / "run" / "checkpoint-3"
    folder.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    result = switch(
        [3], until=4, store=tmp_path / "s", ckpts=tmp_path / "run", spec=SPEC, device="cpu"
    )
    assert result.points[0].momentum == "saved"
    assert not [w for w in result.warnings if w.startswith("t=3:")], result.warnings
    (note,) = [n for n in result.notes if n.startswith("t=3:")]  # how it was matched
    assert note.startswith(
        "t=3: momentum from Hugging Face's checkpoint-3/optimizer.pt, its one parameter group "
        "taken in the model's order"
    ), note


def test_a_spec_without_momentum_refuses_momentum_buffers(tmp_path):
    spec = replace(SPEC, train=replace(SPEC.train, momentum=0.0))
    model, optimizer = plain_loop(sgd)
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    (note,) = [n for n in result.warnings if n.startswith("t=3:")]
    assert "it is the state of SGD with momentum (momentum_buffer), the spec's optimizer is " in (
        note
    )
    assert "sgd (momentum = 0)" in note


@pytest.mark.parametrize(
    ("optimizer_of", "said"),
    [
        (lambda m: torch.optim.Adam(m.parameters(), amsgrad=True), "Adam with amsgrad"),
        (lambda m: torch.optim.NAdam(m.parameters()), "NAdam"),
        (
            lambda m: torch.optim.RAdam(m.parameters()),
            "another optimizer than Adam (with Adam's buffers, not its group)",
        ),
        (lambda m: torch.optim.RMSprop(m.parameters(), momentum=0.9), "another optimizer"),
        (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), "SGD with momentum"),
    ],
)
def test_an_adam_spec_takes_adams_buffers_only(tmp_path, optimizer_of, said):
    from conetool.checkpoint_optimizer import restore_checkpoint_optimizer

    spec = spec_from_dict(spec_dict([8], optimizer="adam"), source="adam.toml")
    model, optimizer = plain_loop(optimizer_of, steps=1)
    path = save_loop_checkpoint(tmp_path, model, optimizer) / "step_3.pt"
    mine = make_optimizer(model.parameters(), spec.train)
    found = restore_checkpoint_optimizer(mine, [n for n, _ in model.named_parameters()], path)
    assert not found.used and found.reason.startswith(f"it is the state of {said} ("), found
    assert found.reason.endswith("the spec's optimizer is adam"), found
    assert not mine.state  # left fresh


def test_a_state_over_layers_registered_in_another_order_is_not_used(tmp_path):
    # The researcher's module registers fc_layers.1 before fc_layers.0 (same names, same
    # shapes), and its optimizer follows that order (model.parameters()): the buffers' positions
    # are not the spec's model's. Was: momentum "saved", each layer given the other's buffers.
    spec, model, params = _square_mlp()
    order = [f"fc_layers.1.{w}" for w in ("weight", "bias")]
    order += [f"fc_layers.0.{w}" for w in ("weight", "bias")] + ["fc.weight", "fc.bias"]
    optimizer = torch.optim.SGD([params[n] for n in order], lr=LR, momentum=MOMENTUM)
    for _ in range(3):
        optimizer.zero_grad()
        x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    state = {n: model.state_dict()[n] for n in order}  # the file lists them in its order
    folder = tmp_path / "run"
    folder.mkdir()
    payload = {"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(), "step": 3}
    torch.save(payload, folder / "step_3.pt")
    result = switch([3], until=4, store=tmp_path / "s", ckpts=folder, spec=spec, device="cpu")
    assert result.points[0].momentum == "fresh"
    (note,) = [n for n in result.warnings if n.startswith("t=3:")]
    assert "trainable parameter 0 is 'fc_layers.1.weight' where the model's is " in note, note
    assert "'fc_layers.0.weight' (the layers were registered in another order)" in note, note
    # a loop over model.parameters() (the file's keys prefixed, as Lightning's): used
    ordered = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    torch.nn.functional.cross_entropy(model(torch.randn(8, 8)), torch.tensor([0] * 8)).backward()
    ordered.step()
    lightning = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"state_dict": lightning, "optimizer_states": [ordered.state_dict()], "global_step": 3},
        folder / "step_3.pt",
    )
    result = switch([3], until=4, store=tmp_path / "s2", ckpts=folder, spec=spec, device="cpu")
    assert result.points[0].momentum == "saved", result.notes


@pytest.mark.parametrize("optimizer_of", [adam, sgd])
def test_reference_train_warns_of_a_state_at_its_start_that_it_does_not_use(tmp_path, optimizer_of):
    """--reference train continues the standard run from the last checkpoint before T: a state
    saved there that it cannot use (Adam's, for an SGD spec) is a warning naming that checkpoint,
    as it is for a switch point (was: said nowhere; its note said only 'starting at zero'). A
    state it uses says nothing more."""
    model, optimizer = plain_loop(optimizer_of)
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)  # step 3
    result = switch(
        [3], until=5, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu", reference="train"
    )
    assert result.reference["source"] == "trained from step 3"
    warned = [w for w in result.warnings if w.startswith("--reference train")]
    (note,) = [n for n in result.notes if n.startswith("--reference train")]
    if optimizer_of is sgd:
        assert warned == [] and "momentum from the saved optimizer state" in note, note
        return
    (warning,) = warned
    assert "from the checkpoint of step 3:" in warning, warning
    assert "the optimizer_state_dict in step_3.pt is not used: it is the state of Adam" in warning
    assert "momentum starting at zero" in note, note


def test_the_checkpoint_file_is_read_once_for_weights_and_optimizer_state(tmp_path, monkeypatch):
    """A switch point and the --reference train continuation read a loop's step_3.pt once: the
    optimizer state comes from the same read as the weights. Was: the file was loaded again
    (torch.load, memory-mapped) for its optimizer_state_dict."""
    from conetool import checkpoint_optimizer
    from conetool.checkpoints import _torch_save

    model, optimizer = plain_loop(sgd)
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)  # step 3
    again: list[object] = []
    real = _torch_save.load_weights_only

    def counted(source, **kwargs):
        again.append(source())
        return real(source, **kwargs)

    monkeypatch.setattr(checkpoint_optimizer, "load_weights_only", counted)
    result = switch(
        [3], until=5, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu", reference="train"
    )
    assert result.points[0].momentum == "saved"
    (note,) = [n for n in result.notes if n.startswith("--reference train")]
    assert "momentum from the saved optimizer state" in note, note
    assert again == []


@pytest.mark.parametrize(
    "schedule",
    [
        {"schedule": "cosine", "warmup_steps": 6},
        {"schedule": "step", "milestones": [4, 8], "gamma": 0.5, "warmup_steps": 2},
    ],
)
def test_a_conetool_run_resaved_as_loop_checkpoints_gives_no_lr_warning(tmp_path, schedule):
    """conetool train's optimizer state at step t holds the learning rate of the update at t - 1
    (its loop sets it before each update and saves before the update of t), and at step 0 the
    spec's train.lr, the optimizer's own before any update (not the warmup's first value): the
    loop file's learning rate, now compared with the spec's schedule as a Trainer's is, must
    never be said of a run that followed it, under warmup, cosine decay or milestones alike."""
    raw = spec_dict([])
    raw["train"].update(schedule)
    spec = spec_from_dict(raw, source="scheduled.toml")
    run = tmp_path / "conetool_run"
    train(spec, run)
    ckpts = tmp_path / "loop_run"
    ckpts.mkdir()
    for step in (0, 4, 8, 12):
        model = model_for(spec)
        model.load_state_dict(load_file(paths.checkpoint(run, step)))
        optimizer = make_optimizer(model.parameters(), spec.train)
        load_optimizer_state(optimizer, paths.optimizer_state(run, step))
        save_loop_checkpoint(ckpts, model, optimizer, step=step)
    saved_at_0 = torch.load(ckpts / "step_0.pt", weights_only=True)["optimizer_state_dict"]
    assert saved_at_0["param_groups"][0]["lr"] == LR  # not the schedule's value at step 0
    result = switch([0, 4, 8], store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert [p.momentum for p in result.points] == ["saved"] * 3
    assert not any("momentum" in m for m in result.warnings + result.notes), result


def test_a_loop_state_saved_with_another_learning_rate_is_a_warning_naming_the_file(tmp_path):
    """A loop that trained with lr 0.05 where the spec says 0.2: the switch replays 0.2, and the
    researcher learns it (was: the loop file's learning rate was never compared; only a
    Trainer's optimizer.pt's was)."""
    model, optimizer = plain_loop(
        lambda m: torch.optim.SGD(
            m.parameters(), lr=0.05, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
    )
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved"
    (warning,) = [w for w in result.warnings if w.startswith("t=3:")]
    assert (
        "momentum from the optimizer_state_dict in step_3.pt, saved with lr 0.05 (the spec's "
        "schedule: 0.2 at step 3): the model trains with the spec's values" in warning
    ), warning


@pytest.mark.parametrize("suffix", ["pth", "bin", "ckpt"])
def test_the_state_inside_any_torch_save_checkpoint_is_read(tmp_path, suffix):
    """README: the state inside your own torch.save checkpoint (.pt, .pth, .bin, .ckpt)."""
    model, optimizer = plain_loop(sgd)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    torch.save({**state, "step": 3}, folder / f"step_3.{suffix}")
    result = switch([3], until=4, store=tmp_path / "s", ckpts=folder, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved", result.notes


@pytest.mark.parametrize("name", ["step_3.optim.pt", "step_3.optim.safetensors"])
def test_a_state_file_of_ones_own_beside_the_checkpoint_is_not_read(tmp_path, name):
    """README: switch looks beside the checkpoint only under conetool's name for the step
    (step_000003.optim.safetensors, whatever the checkpoint's name), and the note names it."""
    from conetool.optim import save_optimizer_state

    model, optimizer = plain_loop(sgd)
    folder = tmp_path / "ckpts"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "step_3.safetensors"
    )
    if name.endswith(".pt"):
        torch.save(optimizer.state_dict(), folder / name)
    else:
        save_optimizer_state(optimizer, folder / name, 3)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=folder, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "fresh"
    looked = "t=3: no optimizer state beside the checkpoint (step_000003.optim.safetensors, as"
    assert any(note.startswith(looked) for note in result.notes), result.notes
    if name.endswith(".safetensors"):  # as conetool train writes it: used under its name
        (folder / name).rename(folder / "step_000003.optim.safetensors")
        again = switch([3], until=4, store=tmp_path / "t", ckpts=folder, spec=SPEC, device="cpu")
        assert again.points[0].momentum == "saved", again.notes


def test_an_adam_count_other_than_the_files_step_is_told_as_an_epoch_early(tmp_path):
    """A loop that names each file by the epoch just finished, counting from 0 (epoch_0 after the
    first epoch), has every step read one epoch early: the sweep trained from the wrong step of
    the schedule, and said only that the saved learning rate was not the spec's (or nothing, under
    a constant rate). Adam's step count in the file's state says how many updates the run took:
    a count other than the file's step is a warning naming both and the fixes; a count equal to
    it (the file named by the epochs done) says nothing of it."""
    spec = spec_from_dict(spec_dict([8], optimizer="adam"), source="adam.toml")  # 6 steps/epoch
    model, optimizer = plain_loop(lambda m: torch.optim.Adam(m.parameters(), lr=0.01), steps=6)
    late, done = tmp_path / "late", tmp_path / "done"
    for folder, epoch in ((late, 0), (done, 1)):  # the weights after the first epoch
        folder.mkdir()
        state = {"model_state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save(state, folder / f"epoch_{epoch}.pt")
    result = switch([0], until=4, store=tmp_path / "a", ckpts=late, spec=spec, device="cpu")
    (said,) = [w for w in result.warnings if w.startswith("t=0:")]
    took = "its step count says the run's optimizer took 6 updates, but epoch_0.pt reads as step 0"
    assert took in said, said
    assert "every step reads one epoch early" in said and "(epoch_1 after the first)" in said
    assert result.points[0].momentum == "saved"
    result = switch([6], until=8, store=tmp_path / "b", ckpts=done, spec=spec, device="cpu")
    assert not [w for w in result.warnings if "step count" in w], result.warnings


def test_an_adam_state_for_an_adamw_spec_names_the_optimizer_to_write(tmp_path):
    """optimizer = "adamw" (e123277) over a loop's plain Adam state: the note said only 'saved
    with decoupled_weight_decay False (the spec's True) ... give the spec your run's recipe',
    where an "adam" spec over an AdamW state is told to write "adamw"; it names "adam" now."""
    spec = spec_from_dict(spec_dict([8], optimizer="adamw"), source="adamw.toml")
    # (with a weight decay: with none, Adam's update is AdamW's, and nothing is said of it below)
    model, optimizer = plain_loop(
        lambda m: torch.optim.Adam(m.parameters(), lr=0.01, weight_decay=WEIGHT_DECAY)
    )
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert result.points[0].momentum == "saved"
    (note,) = [n for n in result.warnings if n.startswith("t=3:")]
    assert "decoupled_weight_decay False (the spec's True)" in note, note
    assert "your run used Adam, whose weight decay is the coupled L2 term" in note, note
    assert 'write optimizer = "adam" in [train]' in note, note


@pytest.mark.parametrize(
    ("spec_optimizer", "run_optimizer"),
    [("adam", torch.optim.AdamW), ("adamw", torch.optim.Adam)],
)
def test_adam_and_adamw_saved_with_no_weight_decay_are_not_told_apart(
    tmp_path, spec_optimizer, run_optimizer
):
    """An optimizer = "adam" spec over an AdamW state saved with weight_decay 0 was told 'your
    run used AdamW ... write optimizer = "adamw"' (and an "adamw" spec over such an Adam state
    to write "adam"): with no decay the two are the same update, so only the weight decay the
    spec adds (the spec's 0.001, the run's 0) is said."""
    spec = spec_from_dict(spec_dict([8], optimizer=spec_optimizer), source="run.toml")
    model, optimizer = plain_loop(lambda m: run_optimizer(m.parameters(), lr=0.01, weight_decay=0))
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert result.points[0].momentum == "saved"
    (note,) = [n for n in result.warnings if n.startswith("t=3:")]
    assert "saved with weight_decay 0 (the spec's 0.001): the model trains with" in note, note
    assert "decoupled_weight_decay" not in note and "write optimizer" not in note, note


def test_an_adam_count_below_the_files_step_is_no_epoch_warning(tmp_path):
    """An Adam state whose step count is below the file's step (a mixed-precision GradScaler
    skipped a few steps, or the run resumed with a fresh optimizer) was warned of as a loop that
    names its files one epoch early, a warning that every point of such a run got; only a count
    above the file's step means that (tests above: 6 updates in epoch_0.pt)."""
    spec = spec_from_dict(spec_dict([8], optimizer="adam"), source="adam.toml")
    model, optimizer = plain_loop(lambda m: torch.optim.Adam(m.parameters(), lr=0.01), steps=3)
    ckpts = save_loop_checkpoint(tmp_path / "run", model, optimizer, step=5)  # 2 steps skipped
    result = switch([5], until=6, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert result.points[0].momentum == "saved"
    said = [*result.warnings, *result.notes]
    assert not [w for w in said if "step count" in w or "epoch early" in w], said
