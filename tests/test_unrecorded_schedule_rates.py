"""distance's warning of a spec file that does not write ``train.schedule`` (a researcher's own
run, its rate read as constant) rests on the optimizer states the run saved where they tell:
one rate at every checkpoint read is a note, rates that change are the warning with them as its
evidence, and without a state the warning is today's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_store import make_store
from test_schedule_spec import OWN  # the researcher's own spec file: no train.schedule

from conetool import paths
from conetool.optim import save_optimizer_state
from conetool.pipeline import distance, kernels, saved_lr
from conetool.pipeline.resolve import model_for
from conetool.pipeline.saved_lr import SavedRates
from conetool.spec import spec_from_toml

TODAYS_END = (
    "No kernel depends on those keys, so none is recomputed, and the verdict reads S per unit "
    'of learning rate. A rate that was constant needs no change (write schedule = "constant" '
    "to say so)."
)


def own_run(root, milestones, save_state=True, warmup=0):
    """A loop of one's own: SGD at lr 0.2 for 20 steps, its rate cut 10x at ``milestones`` by
    torch's MultiStepLR (after a linear warmup from 0.1x over ``warmup`` steps), ``{"model_state_dict", "optimizer_state_dict", "step"}`` saved every 2
    steps (the optimizer's state left out without ``save_state``); kernels computed with
    ``own.toml``. Returns the store."""
    spec_file = root / "own.toml"
    spec_file.write_text(OWN)
    spec = spec_from_toml(OWN, source=str(spec_file))
    torch.manual_seed(0)
    model = model_for(spec)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    if warmup:
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, warmup), scheduler],
            [warmup],
        )
    ckpts = root / "ckpts"
    ckpts.mkdir()
    for step in range(21):
        if step % 2 == 0:
            payload = {"model_state_dict": model.state_dict(), "step": step}
            if save_state:
                payload["optimizer_state_dict"] = optimizer.state_dict()
            torch.save(payload, ckpts / f"step_{step}.pt")
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    store = root / "store"
    kernels(ckpts, store=store, device="cpu", spec=spec_file)
    return store, ckpts


def said_of_schedule(messages):
    return [m for m in messages if "does not write train.schedule" in m]


def test_a_constant_rate_the_run_saved_is_no_warning(tmp_path, monkeypatch):
    """Every own run whose spec left the schedule out was warned that its rate may have fallen,
    though its checkpoints' optimizer states said it had not: it is a note now, naming them. A
    spec that writes the schedule reads no checkpoint for it."""
    store, ckpts = own_run(tmp_path, milestones=[])
    result = distance(store, noise=False)
    assert not said_of_schedule(result.warnings), result.warnings
    (note,) = said_of_schedule(result.notes)
    assert (
        f"the optimizer states saved in {ckpts} (10 of its 11 checkpoints read) hold lr 0.2 at "
        "steps 0 to 20: one rate, the run's as the verdict reads it" in note
    ), note

    def unread(*args, **kwargs):
        raise AssertionError("read the checkpoints' rates for a spec that writes the schedule")

    monkeypatch.setattr(saved_lr, "saved_rates", unread)
    written = tmp_path / "written.toml"
    written.write_text(OWN + 'schedule = "constant"\n')
    result = distance(store, spec=written, noise=False)
    assert not said_of_schedule(result.warnings + result.notes)


def test_a_rate_the_run_cut_is_warned_of_with_the_saved_rates(tmp_path):
    """The warning said only that the rate may have fallen; with the states the run saved, it
    says that it did, where and by how much, and keeps the --spec advice."""
    store, ckpts = own_run(tmp_path, milestones=[10])
    result = distance(store, noise=False)
    (said,) = said_of_schedule(result.warnings)
    assert (
        "but the run's rate changed: the optimizer states saved in "
        f"{ckpts} (10 of its 11 checkpoints read) hold lr 0.2 at steps 0 to 8, 0.02 at steps 12 "
        "to 20 (x0.1). The slowing a falling rate makes reads as the kernel's" in said
    ), said
    assert "pass it: conetool distance --spec FILE (and embed --spec FILE)" in said
    assert "A rate that was constant needs no change" not in said
    assert not said_of_schedule(result.notes)

    moved = ckpts.rename(tmp_path / "moved")  # the run moved since kernels: --ckpts
    (said,) = said_of_schedule(distance(store, ckpts=moved, noise=False).warnings)
    assert f"saved in {moved} (10 of its 11 checkpoints read) hold lr 0.2 at steps 0 to 8" in said


def test_a_warmup_alone_is_a_note_and_a_warmup_then_a_cut_the_warning(tmp_path):
    """A warmup then one rate was warned of as "the run's rate changed ... the slowing a falling
    rate makes", though the rate never fell and the verdict reads a warmup alone as a constant
    rate (lr_clock): it is a note. A warmup followed by a cut is still the warning."""
    (tmp_path / "up").mkdir()
    store, ckpts = own_run(tmp_path / "up", milestones=[], warmup=4)
    result = distance(store, noise=False)
    assert not said_of_schedule(result.warnings), result.warnings
    (note,) = said_of_schedule(result.notes)
    assert (
        f"saved in {ckpts} (10 of its 11 checkpoints read) hold lr 0.02 at step 0 (x0.1), 0.11 at "
        "step 2 (x0.55), 0.2 at steps 4 to 20: a rate that rose (a warmup) and never fell, which "
        'the verdict reads as it reads a constant one (write schedule = "constant" with '
        "warmup_steps to say so)" in note
    ), note
    (tmp_path / "cut").mkdir()
    store, _ = own_run(tmp_path / "cut", milestones=[10], warmup=4)
    (said,) = said_of_schedule(distance(store, noise=False).warnings)
    assert (
        "but the run's rate changed" in said
        and "0.2 at steps 4 to 12, 0.02 at steps 14 to 20 (x0.1)" in said
    ), said


def test_without_a_saved_state_the_warning_is_as_before(tmp_path):
    """No optimizer state in the checkpoints: nothing tells, and the warning is the one distance
    gave before it read them (this test pins it; it passes on the old code too)."""
    store, _ = own_run(tmp_path, milestones=[10], save_state=False)
    result = distance(store, noise=False)
    (said,) = said_of_schedule(result.warnings)
    assert said.startswith(
        f"{tmp_path / 'own.toml'} does not write train.schedule, so the verdict reads the "
        "learning rate as constant (conetool's default) and S per step: if your run's rate fell"
    ), said
    assert said.endswith(TODAYS_END)


@pytest.mark.parametrize(
    ("rates", "shown"),
    [
        (
            [(0, (0.1,)), (10, (0.1,)), (20, (0.01,)), (30, (0.001,))],
            "lr 0.1 at steps 0 to 10, 0.01 at step 20 (x0.1), 0.001 at step 30 (x0.01)",
        ),
        (  # a cosine: every value its own, the middle ones left out
            [(s, (0.5 + 0.5 * (1 - s / 90),)) for s in range(0, 100, 10)],
            "lr 1 at step 0, 0.944 at step 10 (x0.944), 0.889 at step 20 (x0.889), "
            "0.833 at step 30 (x0.833), ..., 0.5 at step 90 (x0.5)",
        ),
        (  # a second group's rate changes: it is the one shown
            [(0, (0.1, 0.2)), (10, (0.1, 0.02))],
            "param_groups[1]'s lr 0.2 at step 0, 0.02 at step 10 (x0.1)",
        ),
        (  # a warmup, then a cut: each rate's factor is to the largest, not to the warmup's first
            [(0, (0.01,)), (10, (0.1,)), (20, (0.1,)), (30, (0.01,))],
            "lr 0.01 at step 0 (x0.1), 0.1 at steps 10 to 20, 0.01 at step 30 (x0.1)",
        ),
    ],
)
def test_the_saved_rates_are_shown_compactly(rates, shown):
    saved = SavedRates(tuple(rates), len(rates), "/run")
    assert not saved.constant
    assert saved.shown() == shown


def _beside_states(folder, groups_at):
    """conetool train's states beside the checkpoints of a synthetic store (``/ckpts`` moved to
    ``folder``): at each step, SGD over ``groups_at[step]`` parameter groups, each at lr 0.1."""
    folder.mkdir()
    for step, groups in groups_at.items():
        params = [[torch.nn.Parameter(torch.zeros(2))] for _ in range(groups)]
        optimizer = torch.optim.SGD([{"params": p} for p in params], lr=0.1)
        save_optimizer_state(optimizer, paths.optimizer_state(folder, step), step)
    return folder


def _synthetic_distance(root, groups_at):
    steps = sorted(groups_at)
    header = {
        "checkpoints": "/ckpts",
        "spec": {"train": {"steps": steps[-1], "lr": 0.1}},
        "spec_source": "own.toml",
        "spec_written": ["model.arch", "train.lr"],
    }
    kernels = [np.eye(3) * (1 + 0.01 * i) for i in range(len(steps))]
    store = make_store(root / "store", steps, kernels, header=header)
    ckpts = _beside_states(root / "ckpts", groups_at)
    return distance(store, ckpts=ckpts, noise=False)


def test_the_states_beside_the_checkpoints_are_read_and_groups_that_change_tell_nothing(tmp_path):
    """The state conetool train saves beside each checkpoint is read from its header; a run
    whose states hold other numbers of parameter groups at other steps (groups added midway)
    has no one rate of each group to compare: the warning is today's."""
    one = _synthetic_distance(tmp_path / "one", {s: 1 for s in range(0, 100, 10)})
    (note,) = said_of_schedule(one.notes)
    assert "(10 of its 10 checkpoints read) hold lr 0.1 at steps 0 to 90: one rate" in note
    assert not said_of_schedule(one.warnings)
    changed = _synthetic_distance(tmp_path / "two", {s: 1 + (s >= 50) for s in range(0, 100, 10)})
    (said,) = said_of_schedule(changed.warnings)
    assert said.endswith(TODAYS_END), said
