"""An optimizer state of several parameter groups (weight decay, then none, as Hugging Face's
Trainer and the usual ``[{"params": decay}, {"params": no_decay, "weight_decay": 0}]`` write it)
restored into the spec's one-group optimizer: used when its groups, each in the model's order,
interleave into the model's trainable parameters in one way only as far as the buffers go; else
refused with the reason. Was: every state of more than one group refused."""

from __future__ import annotations

import random

import pytest
import torch

from conetool.checkpoint_optimizer import restore_checkpoint_optimizer
from conetool.optim import make_optimizer
from conetool.spec import spec_from_dict

WEIGHT_DECAY = 1e-3


class Vector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.v = torch.nn.Parameter(torch.zeros(8))


class Small(torch.nn.Module):
    """A layer, a LayerNorm-like vector pair, a head: biases and norms of one shape, (8,).
    ``unused``: also an (8,) parameter ``unused.v``, after the norm's, that the forward pass
    never touches (it gets no state)."""

    def __init__(self, unused: bool = False) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 8)
        self.norm = torch.nn.LayerNorm(8)
        if unused:
            self.unused = Vector()  # (a module: its parameter comes after the norm's)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.norm(self.lin(x))))


def spec_train(optimizer):
    raw = {
        "model": {"arch": "mlp", "num_classes": 3, "widths": [8]},
        "data": {"dataset": "synthetic", "shape": [4], "num_classes": 3},
        "probe": {"size": 6},
        "train": {"optimizer": optimizer, "lr": 0.1, "weight_decay": WEIGHT_DECAY},
    }
    return spec_from_dict(raw, source="groups.toml").train


def decay_split(model, no_decay):
    """The Trainer's two groups: the parameters whose names hold none of ``no_decay``, then the
    others, each in the model's order (a list comprehension over named_parameters())."""
    named = list(model.named_parameters())
    skipped = [p for n, p in named if any(word in n for word in no_decay)]
    kept = [p for n, p in named if not any(word in n for word in no_decay)]
    return [{"params": kept}, {"params": skipped, "weight_decay": 0.0}]


SGD = lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=WEIGHT_DECAY)  # noqa: E731
ADAM = lambda groups: torch.optim.Adam(groups, lr=0.01, weight_decay=WEIGHT_DECAY)  # noqa: E731


def trained(model, optimizer_of, no_decay, steps=3):
    """``model`` stepped ``steps`` times by ``optimizer_of``'s two groups; the optimizer."""
    torch.manual_seed(0)
    optimizer = optimizer_of(decay_split(model, no_decay))
    for _ in range(steps):
        optimizer.zero_grad()
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return optimizer


def restored(tmp_path, model, optimizer, kind):
    """The spec's optimizer over ``model`` after restoring ``optimizer``'s saved state, and what
    the restore said."""
    path = tmp_path / "step_3.pt"
    torch.save(
        {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
        path,
    )
    mine = make_optimizer(model.parameters(), spec_train(kind))
    names = [n for n, _ in model.named_parameters()]
    return mine, restore_checkpoint_optimizer(mine, names, path)


@pytest.mark.parametrize(
    ("optimizer_of", "kind", "buffers"),
    [(SGD, "sgd", {"momentum_buffer"}), (ADAM, "adam", {"exp_avg", "exp_avg_sq", "step"})],
)
@pytest.mark.parametrize(
    "no_decay",
    [
        ("bias", "norm.weight"),  # the usual no_decay = ["bias", "LayerNorm.weight"]
        ("bias", "norm"),
    ],
)
def test_a_weight_decay_split_lands_each_buffer_on_its_parameter(
    tmp_path, optimizer_of, kind, buffers, no_decay
):
    torch.manual_seed(1)
    model = Small()
    theirs = trained(model, optimizer_of, no_decay)
    mine, found = restored(tmp_path, model, theirs, kind)
    assert found.used, found.reason
    assert found.groups == (2, 4)
    for name, p in model.named_parameters():  # the run's optimizer's own state, per parameter
        assert set(mine.state[p]) == set(theirs.state[p]) == buffers, name
        for key, value in theirs.state[p].items():
            assert torch.equal(mine.state[p][key], value), (name, key)
    # the spec's recipe stays: one group, the spec's weight decay for every parameter
    assert [g["weight_decay"] for g in mine.param_groups] == [WEIGHT_DECAY]
    assert found.differs == (
        "weight_decay 0.001 in param_groups[0] (2 parameters), 0 in param_groups[1] "
        "(4 parameters) (the spec's 0.001 for every parameter)",
    )


def test_a_parameter_with_no_state_keeps_its_place_in_its_group(tmp_path):
    # 'unused' never has a gradient, so no momentum_buffer: it fits any shape, but it still
    # takes its place in the no-decay group, after norm.bias; 'head.bias' gets the last buffer.
    torch.manual_seed(1)
    model = Small(unused=True)
    theirs = trained(model, SGD, ("bias", "norm", "unused"))
    mine, found = restored(tmp_path, model, theirs, "sgd")
    assert found.used, found.reason
    assert model.unused.v not in mine.state and model.unused.v not in theirs.state
    for name, p in model.named_parameters():
        if name != "unused.v":
            assert torch.equal(mine.state[p]["momentum_buffer"], theirs.state[p]["momentum_buffer"])


@pytest.mark.parametrize(
    ("unused", "no_decay", "said"),
    [
        # a rule by name ("bias" only): the norm's weight, of the biases' shape (8,), decays, and
        # could be the parameter after lin.weight as well as the one after lin.bias
        (
            False,
            ("bias",),
            "its 2 parameter groups (3 and 3 parameters) interleave, each in the model's order, "
            "into the model's trainable parameters in more than one way that fits every buffer's "
            "shape: the buffers of param_groups[0]['params'][1] would go to 'lin.bias' in one "
            "and to 'norm.weight' in another (both (8,)), so which parameter each buffer belongs "
            "to is not certain",
        ),
        # 'unused' (no state) in the decay group could come before or after any of the (8,)
        # vectors of the other group, moving their buffers along
        (
            True,
            ("bias", "norm"),
            "the buffers of param_groups[1]['params'][0] would go to 'lin.bias' in one and to "
            "'norm.weight' in another (both (8,))",
        ),
    ],
)
def test_groups_that_fit_the_parameters_in_several_ways_are_not_used(
    tmp_path, unused, no_decay, said
):
    torch.manual_seed(1)
    model = Small(unused=unused)
    theirs = trained(model, SGD, no_decay)
    mine, found = restored(tmp_path, model, theirs, "sgd")
    assert not found.used and said in found.reason, found
    assert not mine.state  # left fresh


def test_groups_that_do_not_fit_the_shapes_are_not_used(tmp_path):
    torch.manual_seed(1)
    model = Small()
    named = dict(model.named_parameters())
    decay = [named["head.weight"], named["lin.weight"]]  # not in the model's order
    rest = [named[n] for n in ("lin.bias", "norm.weight", "norm.bias", "head.bias")]
    theirs = SGD([{"params": decay}, {"params": rest, "weight_decay": 0.0}])
    torch.nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.zeros(8).long()).backward()
    theirs.step()
    mine, found = restored(tmp_path, model, theirs, "sgd")
    assert not found.used and not mine.state
    assert found.reason == (
        "its 2 parameter groups (2 and 4 parameters) cannot be interleaved, each in the model's "
        "order, so that every buffer has its parameter's shape: none gets past the model's "
        "trainable parameter 0 ('lin.weight', shape (8, 4)); it was saved over other parameters, "
        "or a group lists them in another order than the model's"
    )


def test_a_groups_state_of_another_optimizer_or_size_is_refused_as_one_groups_is(tmp_path):
    torch.manual_seed(1)
    model = Small()
    theirs = trained(model, ADAM, ("bias",))  # Adam's buffers for an SGD spec
    _, found = restored(tmp_path, model, theirs, "sgd")
    assert found.reason.startswith("it is the state of Adam (exp_avg, exp_avg_sq), the spec's")
    theirs = SGD([{"params": [model.lin.weight]}, {"params": [model.head.bias]}])
    _, found = restored(tmp_path, model, theirs, "sgd")
    assert (
        found.reason
        == "it is over 2 parameters in 2 parameter groups, the model has 6 trainable ones"
    )


def interleavings(sizes):
    """Every sequence of group numbers with ``sizes[j]`` times ``j``."""
    if not any(sizes):
        yield ()
        return
    for j, size in enumerate(sizes):
        if size:
            rest = [*sizes[:j], size - 1, *sizes[j + 1 :]]
            yield from ((j, *order) for order in interleavings(rest))


def brute_force(sizes, needs, shapes):
    """Every interleaving of the groups (each in order) that fits, as the positions of the saved
    parameters that hold state: a set of {(group, i): position} (frozen)."""
    outcomes = set()
    for order in interleavings(sizes):
        used = [0] * len(sizes)
        placed = {}
        for position, j in enumerate(order):
            need = needs[j][used[j]]
            if need is not None and need != shapes[position]:
                break
            if need is not None:
                placed[(j, used[j])] = position
            used[j] += 1
        else:
            outcomes.add(frozenset(placed.items()))
    return outcomes


@pytest.mark.parametrize("seed", range(60))
def test_placements_agree_with_trying_every_interleaving(seed):
    from conetool.checkpoint_optimizer import _placements  # (new: here, so that the other tests
    # of this file run, and fail, on the code before it)

    rng = random.Random(seed)
    sizes = [rng.randint(0, 3) for _ in range(rng.randint(2, 3))]
    n = sum(sizes)
    shapes = [(rng.choice([2, 3]),) for _ in range(n)]
    # a saved state over some interleaving: each group parameter with no state, or a buffer of
    # its parameter's shape, or now and then of another
    order = [j for j in range(len(sizes)) for _ in range(sizes[j])]
    rng.shuffle(order)
    needs: list[list[tuple[int, ...] | None]] = [[] for _ in sizes]
    for position, j in enumerate(order):
        drawn = rng.random()
        other = (5 - shapes[position][0],)
        needs[j].append(None if drawn < 0.3 else shapes[position] if drawn < 0.9 else other)
    lists, index, state = [], 0, {}
    for j, size in enumerate(sizes):
        lists.append(list(range(index, index + size)))
        for c in range(size):
            if needs[j][c] is not None:
                state[index + c] = {"momentum_buffer": torch.zeros(needs[j][c])}
        index += size
    expected = brute_force(sizes, needs, shapes)
    got = _placements(lists, state, shapes, [f"p{i}" for i in range(n)])
    if len(expected) == 1:
        (only,) = expected
        assert got == {lists[j][c]: position for (j, c), position in only}
    else:
        assert isinstance(got, str)
        assert ("cannot be interleaved" in got) == (not expected), got
