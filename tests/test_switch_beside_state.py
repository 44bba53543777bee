"""`conetool switch` with the optimizer state beside the checkpoint (`step_XXXXXX.optim.safetensors`,
as `conetool train` writes it): only its buffers (and step counts) are taken, the hyperparameters
stay the spec's, and a warning names those it was saved with otherwise."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_switch_optimizer_state import spec_dict as loop_spec_dict

from conetool import paths
from conetool.loop import TrainingLoop
from conetool.optim import load_optimizer_state, make_optimizer, save_optimizer_state
from conetool.pipeline import switch_optimizer, switch_points, switch_reference
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train


def spec_dict(optimizer="sgd", **train_values):
    """The loop-file tests' MLP spec (widths [8]) with ``train_values`` over its train table."""
    raw = loop_spec_dict([8], optimizer)
    raw["train"].update(train_values)
    return raw


def watch_optimizers(monkeypatch):
    """The optimizer each switch point (and --reference train) trains with, as the loop gets it:
    ``[(description, param_groups without params, state)]``, copied before any update."""
    seen = []

    class Watched(TrainingLoop):
        def run(self, start, until):
            groups = [
                {k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups
            ]
            params = self.optimizer.param_groups[0]["params"]
            state = [{k: v.clone() for k, v in self.optimizer.state[p].items()} for p in params]
            seen.append((self.description, groups, state))
            return super().run(start, until)

    monkeypatch.setattr(switch_points, "TrainingLoop", Watched)  # the points
    monkeypatch.setattr(switch_reference, "TrainingLoop", Watched)  # --reference train's
    return seen


def saved_state(run, step):
    """The per-parameter tensors of conetool train's state beside the checkpoint of ``step``,
    as ``[{name: tensor}]`` by parameter position."""
    tensors = load_file(str(paths.optimizer_state(run, step)))
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        out.setdefault(int(index), {})[name] = value
    return [out[i] for i in sorted(out)]


def test_a_spec_of_other_momentum_trains_with_the_specs_and_warns_of_the_saved(
    tmp_path, monkeypatch
):
    # Was: the state's param_groups were loaded with its buffers, so the switch silently
    # continued at the run's momentum 0.9 where the spec said 0.5, and nothing was said.
    run = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), run)
    spec = spec_from_dict(spec_dict(momentum=0.5), source="other.toml")
    seen = watch_optimizers(monkeypatch)
    result = switch([4, 8], store=tmp_path / "s", ckpts=run, spec=spec, device="cpu")
    assert [p.momentum for p in result.points] == ["saved", "saved"]
    assert [description for description, _, _ in seen] == ["switch t=4", "switch t=8"]
    for (_, groups, state), step in zip(seen, (4, 8), strict=True):
        (group,) = groups
        assert group["momentum"] == 0.5 and group["weight_decay"] == 1e-3
        saved = saved_state(run, step)
        assert len(state) == len(saved) == 4
        for mine, theirs in zip(state, saved, strict=True):
            assert mine.keys() == theirs.keys() == {"momentum_buffer"}
            assert torch.equal(mine["momentum_buffer"], theirs["momentum_buffer"])
    (warning,) = [w for w in result.warnings if "momentum from" in w]
    assert warning == (
        "t=4, 8 (2 points): momentum from the optimizer states beside their checkpoints "
        "(step_XXXXXX.optim.safetensors), saved with momentum 0.9 (the spec's 0.5): the model "
        "trains with the spec's values (its recipe); if your run used the saved ones, give the "
        "spec your run's recipe"
    ), result.warnings


def test_one_point_names_its_file_and_reference_train_warns_too(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), run)
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    spec = spec_from_dict(spec_dict(nesterov=True, weight_decay=0.0), source="other.toml")
    seen = watch_optimizers(monkeypatch)
    result = switch(
        [4], store=tmp_path / "s", ckpts=run, spec=spec, device="cpu", reference="train"
    )
    assert [(d, g[0]["nesterov"], g[0]["weight_decay"]) for d, g, _ in seen] == [
        ("switch t=4", True, 0.0),
        ("standard", True, 0.0),
    ]
    differs = "saved with nesterov False (the spec's True), weight_decay 0.001 (the spec's 0)"
    assert (
        f"t=4: momentum from the optimizer state beside the checkpoint "
        f"(step_000004.optim.safetensors), {differs}: the model trains with the spec's values"
    ) in "\n".join(result.warnings), result.warnings
    assert (
        "--reference train, from the checkpoint of step 8: momentum from the optimizer state "
        f"beside the checkpoint (step_000008.optim.safetensors), {differs}"
    ) in "\n".join(result.warnings), result.warnings


@pytest.mark.parametrize(
    "recipe",
    [
        {},
        {"schedule": "cosine", "warmup_steps": 6},
        {"schedule": "step", "milestones": [4, 8], "gamma": 0.5, "warmup_steps": 2},
        {"optimizer": "adam", "schedule": "cosine", "warmup_steps": 3},
    ],
)
def test_a_run_of_the_same_spec_gives_no_warning_and_the_same_results(
    tmp_path, monkeypatch, recipe
):
    """conetool train's state holds the learning rate of the update before its step (and at
    step 0 the spec's train.lr, under warmup too): never said of a run that followed the spec.
    The buffers (Adam's step counts too) are the file's, and every point is bit for bit what
    loading the whole state (its param_groups too, the code before) gives."""
    spec = spec_from_dict(spec_dict(**recipe), source="same.toml")
    run = tmp_path / "run"
    train(spec, run)
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    seen = watch_optimizers(monkeypatch)
    result = switch([0, 4, 8], store=tmp_path / "s", ckpts=run, device="cpu", reference="train")
    assert [p.momentum for p in result.points] == ["saved"] * 3
    assert result.warnings == [], result.warnings
    assert not any(n.startswith("t=") for n in result.notes), result.notes  # no momentum note
    spec_groups = [
        {k: v for k, v in g.items() if k != "params"}
        for g in make_optimizer(torch.nn.Linear(1, 1).parameters(), spec.train).param_groups
    ]
    for (_, groups, state), step in zip(seen, (0, 4, 8, 8), strict=True):
        assert groups == spec_groups  # the spec's, lr included (the loop sets it each step)
        saved = saved_state(run, step)
        assert len(state) == 4 and (len(saved) == 4 or (step == 0 and not saved))
        for mine, theirs in zip(state, saved, strict=False):
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    if spec.train.optimizer == "adam":
        assert float(state[0]["step"]) == 8  # its step count

    def whole_state(optimizer, names, path, data, t, lr):  # the code before: param_groups too
        load_optimizer_state(optimizer, path)
        return "saved", None

    monkeypatch.setattr(switch_optimizer, "_from_beside", whole_state)
    before = switch(
        [0, 4, 8], store=tmp_path / "before", ckpts=run, device="cpu", reference="train"
    )
    assert [p.rows for p in before.points] == [p.rows for p in result.points]
    assert [p.test_loss for p in before.points] == [p.test_loss for p in result.points]
    assert before.reference == result.reference


NOT_USED = (
    "t=4, 8 (2 points): the optimizer states beside their checkpoints "
    "(step_XXXXXX.optim.safetensors) are not used: {}; momentum starts at zero"
)


@pytest.mark.parametrize(
    ("run_recipe", "spec_recipe", "reason"),
    [
        (  # was: a CheckpointError that stopped the sweep ("is for Adam, but ... is SGD")
            {"optimizer": "adam"},
            {},
            "it is the state of Adam (exp_avg, exp_avg_sq), the spec's optimizer is sgd",
        ),
        (
            {},
            {"optimizer": "adam"},
            "it is the state of SGD with momentum (momentum_buffer), the spec's optimizer is adam",
        ),
        (  # was: buffers SGD never uses loaded, and the points said momentum 'saved'
            {},
            {"momentum": 0.0},
            "it is the state of SGD with momentum (momentum_buffer), the spec's optimizer is sgd "
            "(momentum = 0)",
        ),
        (  # was: 'saved' (no buffer to load) and a warning of momentum 0 (the spec's 0.9)
            {"momentum": 0.0},
            {},
            "it is the state of SGD without momentum, the spec's optimizer is sgd",
        ),
    ],
)
def test_a_state_of_another_optimizer_is_not_used_and_the_sweep_goes_on(
    tmp_path, monkeypatch, run_recipe, spec_recipe, reason
):
    """As for a loop's own file (conetool.checkpoint_optimizer.saved_groups decides both): the
    state is used only when it holds the spec's optimizer's buffers; else momentum starts at zero
    and a warning says why, once for the sweep's points."""
    run = tmp_path / "run"
    train(spec_from_dict(spec_dict(**run_recipe), source="run.toml"), run)
    spec = spec_from_dict(spec_dict(**spec_recipe), source="other.toml")
    seen = watch_optimizers(monkeypatch)
    result = switch([4, 8], store=tmp_path / "s", ckpts=run, spec=spec, device="cpu")
    assert [p.momentum for p in result.points] == ["fresh", "fresh"]
    assert [state for _, _, state in seen] == [[{}] * 4] * 2  # nothing loaded
    assert [w for w in result.warnings if "momentum" in w] == [NOT_USED.format(reason)]


def _fake_state(run, step, spec, shapes):
    """Replace conetool train's state beside the checkpoint of ``step`` with one of the spec's
    optimizer, one step taken, over parameters of ``shapes`` (in that order)."""
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
    optimizer = make_optimizer(params, spec.train)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    save_optimizer_state(optimizer, paths.optimizer_state(run, step), step)


@pytest.mark.parametrize(
    ("shapes", "reason"),
    [
        (  # was: loaded (torch checks only the count), then a RuntimeError at the first update
            [(3,), (3, 8), (8,), (8, 4)],
            "its momentum_buffer of parameter 0 has shape (3,), the model's trainable parameter "
            "0 ('{}') has (8, 4): it was saved over other parameters or in another order",
        ),
        (  # was: a CheckpointError that stopped the sweep
            [(8, 4), (8,), (3, 8)],
            "it is over 3 parameters, the model has 4 trainable ones",
        ),
    ],
)
def test_a_state_over_other_parameters_is_not_used(tmp_path, monkeypatch, shapes, reason):
    """Each buffer must have its parameter's shape, as for a loop's file (reindexed): a state
    saved over other parameters leaves momentum at zero, and the warning says which."""
    spec = spec_from_dict(spec_dict(), source="run.toml")
    run = tmp_path / "run"
    train(spec, run)
    for step in (4, 8):
        _fake_state(run, step, spec, shapes)
    seen = watch_optimizers(monkeypatch)
    result = switch([4, 8], store=tmp_path / "s", ckpts=run, device="cpu")
    assert [p.momentum for p in result.points] == ["fresh", "fresh"]
    assert [state for _, _, state in seen] == [[{}] * 4] * 2
    lin = switch_points.LinearizedModel(switch_points.model_for(spec))
    first = next(name for name, p in lin.named_parameters() if p.requires_grad)
    assert [w for w in result.warnings if "momentum" in w] == [
        NOT_USED.format(reason.format(first))
    ]


def test_reference_train_warns_of_a_state_not_used(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(spec_from_dict(spec_dict(optimizer="adam"), source="run.toml"), run)
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    spec = spec_from_dict(spec_dict(), source="other.toml")
    seen = watch_optimizers(monkeypatch)
    result = switch(
        [4], store=tmp_path / "s", ckpts=run, spec=spec, device="cpu", reference="train"
    )
    assert [(d, s) for d, _, s in seen] == [("switch t=4", [{}] * 4), ("standard", [{}] * 4)]
    assert (
        "--reference train, from the checkpoint of step 8: the optimizer state beside the "
        "checkpoint (step_000008.optim.safetensors) is not used: it is the state of Adam "
        "(exp_avg, exp_avg_sq), the spec's optimizer is sgd; momentum starts at zero"
    ) in result.warnings, result.warnings
    assert any("momentum starting at zero" in n for n in result.notes), result.notes


def test_a_state_holding_nan_is_not_used(tmp_path, monkeypatch):
    """Was: loaded, and the linearized model diverged at its first update (a NaN momentum)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    spec = spec_from_dict(spec_dict(), source="run.toml")
    run = tmp_path / "run"
    train(spec, run)
    for step in (4, 8):
        path = paths.optimizer_state(run, step)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
        tensors["state.1.momentum_buffer"][0] = float("nan")
        save_file(tensors, str(path), metadata=metadata)
    seen = watch_optimizers(monkeypatch)
    result = switch([4, 8], store=tmp_path / "s", ckpts=run, device="cpu")
    assert [p.momentum for p in result.points] == ["fresh", "fresh"]
    assert [state for _, _, state in seen] == [[{}] * 4] * 2
    lin = switch_points.LinearizedModel(switch_points.model_for(spec))
    second = [name for name, p in lin.named_parameters() if p.requires_grad][1]
    assert [w for w in result.warnings if "momentum" in w] == [
        NOT_USED.format(f"its momentum_buffer of '{second}' holds NaN or Inf")
    ]
