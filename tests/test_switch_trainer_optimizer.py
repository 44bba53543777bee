"""`conetool switch` on a Hugging Face Trainer run (checkpoint-N/ with model.safetensors,
trainer_state.json and optimizer.pt): the Trainer's optimizer state is used when its buffers land
on their parameters in exactly one way (the Trainer's two groups rebuilt from the spec's model),
else momentum starts at zero and a warning names the file and why. Was: optimizer.pt never read.

The folders are written here as the Trainer writes them (no transformers import): its groups are
the trainable parameters that decay, then the others, each in named_parameters() order."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_switch_optimizer_state import LR, MOMENTUM, WEIGHT_DECAY, spec_dict

from conetool.loop import TrainingLoop
from conetool.optim import make_optimizer
from conetool.pipeline import switch_points
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict


def spec_of(optimizer="sgd"):
    """The loop-file tests' MLP spec (widths [8]): SGD at LR with MOMENTUM, or Adam at 0.01."""
    return spec_from_dict(spec_dict([8], optimizer), source=f"{optimizer}.toml")


SPEC = spec_of()


def trainer_groups(model, decay=WEIGHT_DECAY, **extra):
    """Trainer.create_optimizer's groups (the rule of transformers PR 10598: no decay inside
    nn.LayerNorm modules or for names holding 'bias'), each in named_parameters() order."""
    norms = [f"{n}." for n, m in model.named_modules() if n and isinstance(m, torch.nn.LayerNorm)]

    def skipped(name):
        return "bias" in name or any(name.startswith(p) for p in norms)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not skipped(n)], "weight_decay": decay},
        {"params": [p for n, p in named if skipped(n)], "weight_decay": 0.0, **extra},
    ]


def stepped(model, optimizer, steps=3, inputs=4):
    torch.manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, inputs), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return optimizer


def trained(optimizer_of, spec=SPEC):
    """The spec's MLP trained 3 steps by ``optimizer_of(model)``: (model, optimizer)."""
    torch.manual_seed(0)
    model = model_for(spec)
    return model, stepped(model, optimizer_of(model))


def hf_folder(root, model, optimizer, step=3, weights="model.safetensors"):
    """``root/checkpoint-{step}/`` as the Trainer writes it: the weights, trainer_state.json and
    optimizer.pt (``optimizer.state_dict()``); ``root``."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if weights == "model.safetensors":
        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    return root


def buffers_at_start(monkeypatch):
    """A list filled, as the linearized training starts, with {name: its optimizer state}."""
    seen = []

    class Watched(TrainingLoop):
        def update(self, step):
            if not seen:
                names = [n for n, p in self.model.named_parameters() if p.requires_grad]
                params = self.optimizer.param_groups[0]["params"]
                state = self.optimizer.state  # (cloned: the update changes it in place)
                seen.append(
                    {
                        n: {k: v.clone() for k, v in state[p].items()}
                        for n, p in zip(names, params, strict=True)
                    }
                )
            return super().update(step)

    monkeypatch.setattr(switch_points, "TrainingLoop", Watched)
    return seen


def point_says(result):
    """The one message (warning or note) of the point t=3, and whether it is a warning."""
    warned = [w for w in result.warnings if w.startswith("t=3:")]
    noted = [n for n in result.notes if n.startswith("t=3:")]
    assert len(warned) + len(noted) == 1, (warned, noted)
    return (warned or noted)[0], bool(warned)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_the_trainers_optimizer_pt_gives_each_parameter_its_own_buffers(
    tmp_path, monkeypatch, kind
):
    # Was: "Hugging Face's checkpoint-3/optimizer.pt is not read ...": momentum "fresh".
    spec = spec_of(kind)
    if kind == "sgd":
        model, theirs = trained(
            lambda m: torch.optim.SGD(trainer_groups(m), lr=LR, momentum=MOMENTUM), spec
        )
    else:  # the Trainer's default, adamw_torch (its weight decay 0.01 on the first group)
        model, theirs = trained(lambda m: torch.optim.AdamW(trainer_groups(m, 0.01), lr=0.01), spec)
    ckpts = hf_folder(tmp_path / "run", model, theirs)
    seen = buffers_at_start(monkeypatch)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert result.points[0].momentum == "saved"
    (loaded,) = seen
    saved = {n: theirs.state[p] for n, p in model.named_parameters()}
    assert (
        set(loaded)
        == set(saved)
        == {
            "fc_layers.0.weight",
            "fc_layers.0.bias",
            "fc.weight",
            "fc.bias",
        }
    )
    for name, buffers in saved.items():
        keys = {"momentum_buffer"} if kind == "sgd" else {"exp_avg", "exp_avg_sq", "step"}
        assert set(loaded[name]) == set(buffers) == keys, name
        for key in keys:
            assert torch.equal(loaded[name][key], buffers[key]), (name, key)
    message, warning = point_says(result)
    assert warning  # the no-decay group's weight decay 0 is not the spec's: a recipe to check
    assert message.startswith(
        "t=3: momentum from Hugging Face's checkpoint-3/optimizer.pt, its 2 parameter groups "
        "(2 and 2 parameters) matched to the model's trainable parameters as the Trainer splits "
        "them (weight decay, then none, by every rule transformers has had), each group in the "
        "model's order, every buffer of its parameter's shape (the run's model is taken to list "
        "its parameters in the spec's model's order: model.safetensors does not keep it); saved "
        "with "
    ), message
    assert "in param_groups[1] (2 parameters) (the spec's 0.001 for every parameter)" in message


def test_one_group_over_the_models_parameters_is_used_and_the_note_says_how(tmp_path):
    # An optimizer given to the Trainer over model.parameters(): one group, the model's order.
    # Was: "Hugging Face's checkpoint-3/optimizer.pt is not read: the Trainer lists ...".
    model, theirs = trained(
        lambda m: torch.optim.SGD(
            m.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
    )
    ckpts = hf_folder(tmp_path / "run", model, theirs)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved"
    message, warning = point_says(result)
    assert not warning  # the spec's recipe: how it was matched is information
    assert message == (
        "t=3: momentum from Hugging Face's checkpoint-3/optimizer.pt, its one parameter group "
        "taken in the model's order, every buffer of its parameter's shape (the run's model is "
        "taken to list its parameters in the spec's model's order: model.safetensors does not "
        "keep it)"
    )


def reversed_decay(model):
    """Two groups of the Trainer's sizes, the decaying weights in another order than the
    model's (a model that registered its head first)."""
    groups = trainer_groups(model)
    groups[0]["params"] = groups[0]["params"][::-1]
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)


def other_split(model):
    """A split the Trainer never makes: the first layer, then the head."""
    params = list(model.parameters())
    return torch.optim.SGD(
        [{"params": params[:3]}, {"params": params[3:]}], lr=LR, momentum=MOMENTUM
    )


@pytest.mark.parametrize(
    ("optimizer_of", "reason"),
    [
        (
            reversed_decay,
            "as the Trainer's split (by every rule transformers has had), "
            "param_groups[0]['params'][0] is 'fc_layers.0.weight' "
            "of shape (8, 4), but its buffers have shape (3, 8): it was saved over other "
            "parameters or in another order",
        ),
        (
            other_split,
            "its 2 parameter groups (3 and 1 parameters) are not the Trainer's split of the "
            "model's trainable parameters (weight decay, then none: 2 and 2 parameters, by the "
            "rules transformers' get_decay_parameter_names has had), so which parameter each "
            "buffer belongs to is not known",
        ),
        (
            lambda m: torch.optim.Adam(trainer_groups(m), lr=0.01),
            "it is the state of Adam (exp_avg, exp_avg_sq), the spec's optimizer is sgd",
        ),
    ],
)
def test_a_state_that_does_not_fit_the_trainers_groups_leaves_momentum_fresh(
    tmp_path, optimizer_of, reason
):
    model, theirs = trained(optimizer_of)
    ckpts = hf_folder(tmp_path / "run", model, theirs)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "fresh"
    message, warning = point_says(result)
    assert warning  # a state the run saved, not used
    assert message == (
        "t=3: no optimizer state beside the checkpoint (step_000003.optim.safetensors, as "
        "conetool train writes it), and Hugging Face's checkpoint-3/optimizer.pt is not used: "
        f"{reason}; momentum starts at zero"
    )


def test_learning_rates_per_group_are_said_beside_the_specs_schedule(tmp_path):
    # The Trainer's lr is the schedule's at the save (not the spec's): only the buffers are
    # taken, and the warning names each group's lr beside the spec's.
    model, theirs = trained(
        lambda m: torch.optim.SGD(
            trainer_groups(m, lr=0.05), lr=0.1, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
    )
    ckpts = hf_folder(tmp_path / "run", model, theirs)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved"
    message, warning = point_says(result)
    assert warning
    assert (
        "saved with lr 0.1 in param_groups[0] (2 parameters), 0.05 in param_groups[1] (2 "
        "parameters) (the spec's schedule: 0.2 at step 3 for every parameter), weight_decay "
    ) in message, message


class Scale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Twin(torch.nn.Module):
    """An nn.LayerNorm named ``ln`` and a module of another class named ``LayerNorm`` whose weight
    has the LayerNorm's shape: the Trainer's rules before and after PR 10598 split them into
    groups of the same sizes, the two (8,) weights swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.LayerNorm = Scale()
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.LayerNorm(self.ln(self.lin(x)))))


def restored(model, theirs, kind="sgd", **kwargs):
    """The spec's optimizer over ``model`` after restoring ``theirs`` saved as optimizer.pt."""
    from conetool.trainer_optimizer import restore_trainer_optimizer  # (new: here, so that the
    # switch tests of this file run, and fail, on the code before it)

    path = kwargs.pop("path")
    torch.save(theirs.state_dict(), path)
    mine = make_optimizer(model.parameters(), spec_of(kind).train)
    names = [n for n, _ in model.named_parameters()]
    return mine, restore_trainer_optimizer(mine, model, names, path, **kwargs)


def test_two_rules_that_fit_with_the_buffers_on_other_parameters_leave_it_fresh(tmp_path):
    from conetool.trainer_optimizer import trainer_layouts

    torch.manual_seed(0)
    model = Twin()
    layouts = trainer_layouts(model, [n for n, _ in model.named_parameters()])
    assert [tuple(len(g) for g in layout.groups) for layout in layouts] == [(3, 4), (3, 4), (2, 5)]
    theirs = stepped(model, torch.optim.SGD(trainer_groups(model), lr=0.1, momentum=0.9))
    mine, found = restored(model, theirs, path=tmp_path / "optimizer.pt")
    assert not found.used and not mine.state
    assert found.reason == (
        "the buffers of param_groups[0]['params'][1] fit 'ln.weight' as the Trainer's split by "
        "the rule before transformers PR 10598 ('bias' or 'LayerNorm.weight' in names) and "
        "'LayerNorm.weight' as the Trainer's split by the rule of PR 10598 (nn.LayerNorm "
        "modules, 'bias' in names), so which parameter each buffer belongs to is not certain"
    ), found.reason


def test_the_newest_rules_split_is_matched_by_its_sizes(tmp_path):
    # 'LayerNorm.weight' (another class) decays by the rule of PR 10598, not by PR 35927's: the
    # file's group sizes (2 and 5) tell which, and each buffer lands on its parameter.
    torch.manual_seed(0)
    model = Twin()
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if "bias" in n or n.lower().startswith(("ln.", "layernorm."))]
    decay = [p for n, p in named if all(p is not q for q in no_decay)]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    theirs = stepped(model, torch.optim.AdamW(groups, lr=0.01))
    from conetool.checkpoint_optimizer import ScheduledLr

    lr = ScheduledLr(3, (0.01, 0.01))
    mine, found = restored(model, theirs, "adam", path=tmp_path / "optimizer.pt", lr=lr)
    assert found.used, found.reason
    assert found.groups == (2, 5)
    assert found.matched == "the rule of PR 35927 and the later rule"
    for name, p in named:
        for key, value in theirs.state[p].items():
            assert torch.equal(mine.state[p][key], value), (name, key)
    assert not any(d.startswith("lr ") for d in found.differs), found.differs


def test_pytorch_model_bin_keeps_the_order_and_it_is_checked(tmp_path):
    # A Trainer folder with pytorch_model.bin (save_safetensors=False): its state dict lists the
    # parameters in the run's model's order, which is checked as for a loop's own file.
    model, theirs = trained(lambda m: torch.optim.SGD(trainer_groups(m), lr=LR, momentum=MOMENTUM))
    ckpts = hf_folder(tmp_path / "run", model, theirs, weights="pytorch_model.bin")
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved"
    message, _ = point_says(result)
    assert "every buffer of its parameter's shape; saved with" in message, message
    assert "does not keep it" not in message


def test_sharded_pytorch_model_bin_keeps_no_order_and_none_is_checked(tmp_path):
    # Its shards, as huggingface_hub's split writes them when one tensor is larger than a shard:
    # that tensor in a shard of its own ahead of the one being filled, so the shards in order
    # list 'fc.weight' first, and the index lists the names sorted. Neither is the run's model's
    # order: an order read from them would refuse this good state, so none is checked (as for
    # model.safetensors) and the note says so.
    model, theirs = trained(lambda m: torch.optim.SGD(trainer_groups(m), lr=LR, momentum=MOMENTUM))
    ckpts = hf_folder(tmp_path / "run", model, theirs, weights="pytorch_model.bin")
    folder = ckpts / "checkpoint-3"
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    (folder / "pytorch_model.bin").unlink()
    first = ["fc.weight"]
    shards = (first, [k for k in state if k not in first])
    weight_map = {}
    for k, keys in enumerate(shards, start=1):
        name = f"pytorch_model-{k:05d}-of-00002.bin"
        torch.save({key: state[key] for key in keys}, folder / name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, sort_keys=True))
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "saved"
    message, _ = point_says(result)
    assert (
        "(the run's model is taken to list its parameters in the spec's model's order: "
        "pytorch_model-00001-of-00002.bin does not keep it)"
    ) in message, message


def test_pytorch_model_bin_in_another_order_leaves_momentum_fresh(tmp_path):
    # Its state dict lists the head first (the run's model registered it first), so the
    # Trainer's groups, in that model's order, do not follow the spec's model's.
    model, theirs = trained(lambda m: torch.optim.SGD(trainer_groups(m), lr=LR, momentum=MOMENTUM))
    ckpts = hf_folder(tmp_path / "run", model, theirs, weights="pytorch_model.bin")
    weights = ckpts / "checkpoint-3" / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    torch.save({k: state[k] for k in sorted(state, key=lambda k: not k.startswith("fc."))}, weights)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=SPEC, device="cpu")
    assert result.points[0].momentum == "fresh"
    message, warning = point_says(result)
    assert warning
    assert (
        "Hugging Face's checkpoint-3/optimizer.pt is not used: its positions follow the order of "
        "the parameters in the file's state dict, whose trainable parameter 0 is 'fc.weight' "
        "where the model's is 'fc_layers.0.weight'"
    ) in message, message
