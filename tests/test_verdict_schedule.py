"""The verdict under a decaying learning rate (conetool.verdict_schedule): S read per unit of
learning rate when the run's spec records a step or cosine schedule.

Reference: a labelled trajectory (conetool.trajectories) drawn in the schedule's own time,
tau(t) = sum of lr(u) / train.lr over the updates u < t, is the class's motion slowed by the
schedule and nothing else; read per unit of learning rate it must get the class's regime. Read
in steps (the verdict before), these runs read `lazy` (a cone or a drift slowed by the rate) or
`undetermined` with the advice to train about twice as long.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from synthetic_store import make_store
from tiny_run import tiny_spec, train_tiny

import conetool
from conetool.noise_floor import NoiseEstimate
from conetool.optim import learning_rate
from conetool.pipeline import noise_estimate
from conetool.spec import TrainSpec, spec_from_dict
from conetool.trajectories import CLASSES, default_steps, trajectory
from conetool.verdict import phase_verdict
from conetool.verdict_schedule import lr_clock, per_unit_lr

LAST = 5000
STEP = {"schedule": "step", "milestones": [LAST // 2], "gamma": 0.1}
COSINE = {"schedule": "cosine"}
#: classes whose motion the schedule only slows (the rate-dependence a random walk or an
#: Ornstein-Uhlenbeck walk has); `freezing` and `late-phase-I` have time scales tied to the run's
#: length in steps, `constant-velocity` moves smoothly (its S grows like the square of the rate)
SLOWED = ("bounded", "diffusive", "linear", "constant-diffusion")


def warped(name: str, seed: int, train: TrainSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, S)``: ``name`` drawn at the schedule's time of the default checkpoints."""
    steps = default_steps(LAST)
    rel = np.array([learning_rate(train, u) / train.lr for u in range(LAST)])
    tau = np.concatenate([[0.0], np.cumsum(rel)])[steps]
    return steps, trajectory(name, seed=seed, noise=1e-3, last=LAST, steps=tau).S


@pytest.mark.parametrize("schedule", [STEP, COSINE], ids=["step", "cosine"])
@pytest.mark.parametrize("name", SLOWED)
def test_a_motion_the_schedule_only_slows_gets_its_class_regime(name, schedule):
    train = TrainSpec(steps=LAST, lr=0.1, **schedule)
    clock = lr_clock(train, LAST)
    assert clock is not None
    for seed in range(3):
        steps, s = warped(name, seed, train)
        v = phase_verdict(steps, s, schedule=clock)
        assert v.regime == CLASSES[name], (seed, v.explanation)
        assert "Train longer" not in v.explanation
        assert v.explanation.startswith("Read per unit of learning rate (train.schedule = ")
        assert v.numbers["schedule"]["schedule"] == schedule["schedule"]


def test_the_step_reading_says_where_the_rate_fell_and_how_far_the_velocity_fell():
    train = TrainSpec(steps=LAST, lr=0.1, **STEP)
    steps, s = warped("bounded", 0, train)
    v = phase_verdict(steps, s, schedule=lr_clock(train, LAST))
    assert "the learning rate falls 10x at step 2500" in v.explanation
    raw = v.numbers["schedule"]["raw_drop_factor"]
    assert raw > v.numbers["velocity"]["drop_factor"]  # the milestone's fall is in the raw one
    assert f"itself falls {raw:.3g}x there" in v.explanation


def test_a_constant_rate_is_no_schedule_and_per_unit_lr_matches_its_definition():
    assert lr_clock(TrainSpec(steps=100, lr=0.1), 100) is None
    assert lr_clock(TrainSpec(steps=100, lr=0.1, warmup_steps=10), 100) is None
    assert lr_clock(TrainSpec(steps=100, lr=0.1, schedule="step", milestones=[200]), 100) is None
    train = TrainSpec(steps=100, lr=0.3, schedule="cosine", warmup_steps=7)
    steps = [0, 3, 10, 40, 99, 100]
    rng = np.random.default_rng(0)
    s = rng.uniform(0.0, 1e-3, (6, 6))
    s = s + s.T
    np.fill_diagonal(s, 0.0)
    got = per_unit_lr(steps, s, lr_clock(train, 100))
    for i, a in enumerate(steps):
        for j, b in enumerate(steps):
            lo, hi = min(a, b), max(a, b)
            want = (
                0.0
                if i == j
                else s[i, j] * (hi - lo) * 0.3 / sum(learning_rate(train, u) for u in range(lo, hi))
            )
            assert got[i, j] == pytest.approx(want, rel=1e-9)  # prefix sums


def _kernels(s: np.ndarray) -> list[np.ndarray]:
    """Kernels whose S matrix is ``s``: rows of a factor of the Gram matrix 1 - S, each
    reshaped into a square matrix (S reads only the flattened kernel)."""
    w, q = np.linalg.eigh(1.0 - s)
    v = q * np.sqrt(np.maximum(w, 0.0))
    side = int(np.ceil(np.sqrt(v.shape[1])))
    padded = np.zeros((v.shape[0], side * side))
    padded[:, : v.shape[1]] = v
    return [row.reshape(side, side) for row in padded]


def test_distance_reads_the_schedule_the_stores_spec_records(tmp_path):
    train = TrainSpec(steps=LAST, lr=0.1, **COSINE)
    steps, s = warped("bounded", 0, train)
    header = {"checkpoints": "/ckpts", "spec": {"train": {"steps": LAST, "lr": 0.1, **COSINE}}}
    root = make_store(tmp_path / "cos", steps.tolist(), _kernels(s), header=header)
    result = conetool.distance(root, noise=False)
    assert result.verdict.regime == "cone", result.verdict.explanation
    summary = json.loads((root / "distance" / "summary.json").read_text())
    assert summary["verdict"]["numbers"]["schedule"]["schedule"] == "cosine"
    # the same S with a constant rate recorded is read as it is: the schedule's slowing is lazy
    plain = {"checkpoints": "/ckpts", "spec": {"train": {"steps": LAST, "lr": 0.1}}}
    other = make_store(tmp_path / "const", steps.tolist(), _kernels(s), header=plain)
    v = conetool.distance(other, noise=False).verdict
    assert "schedule" not in v.numbers
    assert v.regime == phase_verdict(steps, s).regime == "lazy"


def test_embed_reads_phase_one_end_under_the_schedule_distance_reads(tmp_path):
    # embed without a distance summary about these kernels reads Phase I's end itself; under the
    # spec's cosine it must be the end distance reads (per unit of learning rate), not the raw one
    train = TrainSpec(steps=LAST, lr=0.1, **COSINE)
    steps, s = warped("bounded", 0, train)
    header = {"checkpoints": "/ckpts", "spec": {"train": {"steps": LAST, "lr": 0.1, **COSINE}}}
    root = make_store(tmp_path / "cos", steps.tolist(), _kernels(s), header=header)
    per_lr = phase_verdict(steps, s, schedule=lr_clock(train, LAST)).phase1_end
    raw = phase_verdict(steps, s).phase1_end
    assert per_lr != raw  # (else this test could not tell the two readings apart)
    result = conetool.embed(root)
    assert result.phase1_end == per_lr
    assert result.phase1_end == conetool.distance(root, noise=False).verdict.phase1_end


@pytest.mark.parametrize(("name", "seed"), [("frozen", 0), ("bounded", 1), ("linear", 2)])
def test_rounding_noise_is_not_divided_by_a_cosines_near_zero_rate(name, seed):
    # float32 rounding adds about the noise floor n to every S whatever the rate; divided by the
    # cosine's last rates (down to 1e-7 of train.lr at the run's end) it read as a velocity
    # climbing back (no-two-phase) for a kernel that froze, a cone or a drift. Only S above n is
    # motion the rate scales; with the floor known each class gets its regime again.
    train = TrainSpec(steps=LAST, lr=0.1, **COSINE)
    clock = lr_clock(train, LAST)
    assert clock is not None and clock.relative[LAST - 1] < 1e-6
    steps = default_steps(LAST)
    rel = np.array([learning_rate(train, u) / train.lr for u in range(LAST)])
    tau = np.concatenate([[0.0], np.cumsum(rel)])[steps]
    noise = 3e-3  # S between two noisy copies of one kernel: about noise**2
    s = trajectory(name, seed=seed, noise=noise, last=LAST, steps=tau).S
    v = phase_verdict(steps, s, schedule=clock, noise_floor=noise**2)
    assert v.regime == CLASSES[name], v.explanation


def test_per_unit_lr_divides_only_the_part_of_s_above_the_noise_floor():
    train = TrainSpec(steps=100, lr=0.3, schedule="cosine")
    clock = lr_clock(train, 100)
    steps = [0, 50, 99, 100]
    n = 1e-6
    s = np.array(
        [[0, 5e-6, 3e-6, 4e-6], [5e-6, 0, 5e-7, 2e-6], [3e-6, 5e-7, 0, 1e-6], [4e-6, 2e-6, 1e-6, 0]]
    )
    got = per_unit_lr(steps, s, clock, noise_floor=n)
    for i, a in enumerate(steps):
        for j, b in enumerate(steps):
            if i == j:
                continue
            lo, hi = min(a, b), max(a, b)
            mean = sum(learning_rate(train, u) for u in range(lo, hi)) / 0.3 / (hi - lo)
            want = min(s[i, j], n) + max(s[i, j] - n, 0.0) / mean
            assert got[i, j] == pytest.approx(want, rel=1e-9)
    # the constant rate's reading is S itself, with or without the floor
    flat = lr_clock(TrainSpec(steps=100, lr=0.3, schedule="step", milestones=[99], gamma=0.5), 100)
    assert per_unit_lr([0, 50], s[:2, :2], flat, noise_floor=n) == pytest.approx(s[:2, :2])


def test_kernels_past_a_cosines_end_are_not_read_at_its_zero_rate(tmp_path):
    # the store's spec says the cosine reaches 0 at step 4000, yet the kernels go on to 5000 (a
    # run of one's own trained past the spec's steps): its rate there is not the run's, and
    # dividing by it (clamped at 1e-12 of train.lr) multiplied those S by up to 1e12
    steps, s = warped("bounded", 0, TrainSpec(steps=LAST, lr=0.1, **COSINE))
    assert lr_clock(TrainSpec(steps=LAST - 1000, lr=0.1, **COSINE), LAST) is None
    train = {"steps": LAST - 1000, "lr": 0.1, **COSINE}
    header = {"checkpoints": "/ckpts", "spec": {"train": train}}
    root = make_store(tmp_path / "past", steps.tolist(), _kernels(s), header=header)
    result = conetool.distance(root, noise=False)
    assert "schedule" not in result.verdict.numbers
    assert not result.verdict.explanation.startswith("Read per unit of learning rate")
    assert result.verdict.regime == phase_verdict(steps, s).regime
    (said,) = [w for w in result.warnings if "train.steps = 4000" in w]
    assert "kernels are stored up to step 5000" in said and "manifest" in said


def test_a_milestone_on_the_last_stored_step_changes_no_stored_pair():
    # the update at the last stored step is after every stored kernel: no S is slowed by it
    assert lr_clock(TrainSpec(steps=100, lr=0.1, schedule="step", milestones=[100]), 100) is None
    clock = lr_clock(TrainSpec(steps=100, lr=0.1, schedule="step", milestones=[99]), 100)
    assert clock is not None and clock.milestones == ((99, 10.0),)


def test_embed_reads_the_noise_floor_distance_cached_under_a_cosine(tmp_path):
    # distance divides only the part of S above its noise floor by a cosine's near-zero rate
    # (824c692); embed's own Phase I end read every S divided, so with float32-level noise it
    # found no Phase I (the noise at the run's end read as a velocity climbing back) where
    # distance marks one. With distance's floor cached in distance/noise.json, embed reads it.
    train = TrainSpec(steps=LAST, lr=0.1, **COSINE)
    clock = lr_clock(train, LAST)
    steps = default_steps(LAST)
    rel = np.array([learning_rate(train, u) / train.lr for u in range(LAST)])
    tau = np.concatenate([[0.0], np.cumsum(rel)])[steps]
    noise = 3e-3
    s = trajectory("bounded", seed=0, noise=noise, last=LAST, steps=tau).S
    header = {"checkpoints": "/ckpts", "spec": {"train": {"steps": LAST, "lr": 0.1, **COSINE}}}
    root = make_store(tmp_path / "cos", steps.tolist(), _kernels(s), header=header)
    with_floor = phase_verdict(steps, s, schedule=clock, noise_floor=noise**2)
    assert with_floor.regime == "cone" and with_floor.phase1_end is not None
    assert phase_verdict(steps, s, schedule=clock).phase1_end != with_floor.phase1_end
    store = conetool.Store.open(root)
    ident = store.identity
    key = {
        "identity": [ident.spec_hash, ident.probe_hash, ident.kind, ident.dtype],
        "method": "auto",
        "step": int(steps[-1]),
        "fingerprint": store.record(int(steps[-1])).fingerprint,
        "subset": 0,
        "device": "cpu",
    }
    (root / "distance").mkdir(exist_ok=True)
    noise_json = {"key": key, "noise": {"floor": noise**2}}
    (root / "distance" / "noise.json").write_text(json.dumps(noise_json), encoding="utf-8")
    assert conetool.embed(root).phase1_end == with_floor.phase1_end


def test_a_milestone_at_step_zero_sets_the_starting_rate_and_scales_nothing():
    # milestones [0, 2500] at lr 1 is the run of milestones [2500] at lr 0.1: its S per unit of
    # learning rate was scaled by 1/gamma throughout (the step-0 fall counted as a slowing)
    steps = [0, 100, 1000, 2400, 2600, 4000, LAST]
    rng = np.random.default_rng(1)
    s = rng.uniform(1e-4, 1e-2, (7, 7))
    s = s + s.T
    np.fill_diagonal(s, 0.0)
    at_zero = TrainSpec(steps=LAST, lr=1.0, schedule="step", milestones=[0, 2500], gamma=0.1)
    plain = TrainSpec(steps=LAST, lr=0.1, schedule="step", milestones=[2500], gamma=0.1)
    got = per_unit_lr(steps, s, lr_clock(at_zero, LAST))
    want = per_unit_lr(steps, s, lr_clock(plain, LAST))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.abs(got - s).max() > 0  # (the milestone at 2500 still slows the later pairs)


def test_embed_before_distance_marks_the_phase_one_end_distance_marks(tmp_path, monkeypatch):
    # embed on a store that distance had not read took no noise floor (only one distance had
    # cached), so under a cosine it divided every S by the rate, rounding included, and ringed
    # another Phase I end than distance, which estimates the floor, marked afterwards on the same
    # kernels. embed now estimates it as distance does and caches it for distance: in either
    # order both mark one end. (The tiny run's float32 floor is about 1e-14, too small to move
    # anything; the two kernels of the estimate are stood in for with a floor of 1e-8.)
    spec = tiny_spec()
    spec["train"].update(steps=200, save_every=5, eval_every=200, lr=0.2, **COSINE)
    ckpts = train_tiny(tmp_path, spec)
    root = tmp_path / "store"
    conetool.kernels(ckpts, store=root, device="cpu")
    estimated: list[str] = []

    def stand_in(model, inputs, *, method, dtype, device, **kwargs):
        estimated.append(method)
        return NoiseEstimate(1e-4, 5e-9, int(inputs.shape[0]), "trace", method, "float32")

    monkeypatch.setattr(noise_estimate, "kernel_noise", stand_in)
    embed_first = conetool.embed(root)
    then_distance = conetool.distance(root)
    assert then_distance.verdict.numbers["noise_floor"] == pytest.approx(1e-8)
    assert embed_first.phase1_end == then_distance.verdict.phase1_end
    assert len(estimated) == 1  # estimated by embed, read from distance/noise.json by distance
    assert not embed_first.warnings and not embed_first.notes

    for folder in ("distance", "embed"):
        shutil.rmtree(root / folder)
    distance_first = conetool.distance(root)
    then_embed = conetool.embed(root)
    assert len(estimated) == 2
    assert then_embed.phase1_end == distance_first.verdict.phase1_end == embed_first.phase1_end

    # (the floor moves Phase I's end on these kernels: else this test could not tell)
    clock = lr_clock(spec_from_dict(spec, source="tiny.toml").train, then_embed.steps[-1])
    assert (
        then_embed.phase1_end
        != phase_verdict(then_embed.steps, distance_first.S, schedule=clock).phase1_end
    )


def test_embed_says_when_the_noise_floor_its_phase_one_end_needs_is_not_estimated(tmp_path):
    # a store whose checkpoints are gone (the synthetic store's /ckpts): embed reads Phase I's
    # end without a floor, as distance then does, and says why in a note
    train = TrainSpec(steps=LAST, lr=0.1, **COSINE)
    steps, s = warped("bounded", 0, train)
    header = {"checkpoints": "/ckpts", "spec": {"train": {"steps": LAST, "lr": 0.1, **COSINE}}}
    root = make_store(tmp_path / "cos", steps.tolist(), _kernels(s), header=header)
    result = conetool.embed(root)
    (note,) = result.notes
    assert "the noise floor of S was not estimated" in note
    assert note.endswith("Phase I's end is read without it, as distance reads it then")
    assert result.phase1_end == conetool.distance(root).verdict.phase1_end
    summary = json.loads((root / "embed" / "summary.json").read_text())
    assert summary["notes"] == [note]


def test_a_warmup_is_said_as_a_rise_before_the_fall():
    """The reading said 'falls from train.lr at step 0' under a warmup, whose rate at step 0 is
    train.lr / warmup_steps and rises first (the clock's values held it, the words did not)."""
    train = TrainSpec(steps=150, lr=1e-3, schedule="cosine", warmup_steps=50)
    said = lr_clock(train, 150).describe()
    assert "falls from train.lr at step 0" not in said
    assert said.startswith(
        'train.schedule = "cosine": the learning rate rises from 0.02x train.lr at step 0 to '
        "0.76x at step 49 (train.warmup_steps = 50), then falls to 0.5x at step 75, 0.15x at "
        "step 112, 0 at step 150"
    ), said
    step = TrainSpec(steps=150, lr=1e-3, schedule="step", milestones=[60], warmup_steps=20)
    assert lr_clock(step, 150).describe() == (
        'train.schedule = "step": the learning rate rises from 0.05x train.lr at step 0 to 1x '
        "at step 19 (train.warmup_steps = 20), then falls 10x at step 60"
    )


def test_a_spec_file_that_leaves_the_schedule_out_is_told_how_to_record_it(tmp_path):
    """A researcher's own spec that leaves train.schedule out is read as a constant rate, and
    the verdict reads S per step, so a run's own cosine read as the end of Phase I; nothing said
    so. distance now warns, naming the file, the keys and how to record them; a spec file that
    writes the schedule (constant too), and a spec whose written keys are not known, are not."""
    steps, s = warped("bounded", 0, TrainSpec(steps=LAST, lr=0.1, **COSINE))

    def swept(name: str, written: list[str] | None) -> list[str]:
        header = {
            "checkpoints": "/ckpts",
            "spec": {"train": {"steps": LAST, "lr": 0.1}},
            "spec_source": f"{name}.toml",
            "spec_written": written,
        }
        root = make_store(tmp_path / name, steps.tolist(), _kernels(s), header=header)
        return conetool.distance(root, noise=False).warnings

    (said,) = [w for w in swept("own", ["model.arch", "train.lr"]) if "train.schedule" in w]
    assert said.startswith("own.toml does not write train.schedule, so the verdict reads the ")
    assert "Write the run's schedule into the [train] of a copy of that file" in said
    assert (
        "pass it: conetool distance --spec FILE (and embed --spec FILE). No kernel depends on "
        "those keys, so none is recomputed" in said
    )
    assert not [w for w in swept("written", ["train.schedule"]) if "train.schedule" in w]
    assert not [w for w in swept("unknown", None) if "train.schedule" in w]


def test_embed_estimates_the_noise_floor_with_the_threads_it_is_given(tmp_path, monkeypatch):
    # embed's own estimate of the noise floor (051f6e4: a kernel of the run's model in float32
    # and one in float64) ran after its `with limit_threads(threads)` block, so `embed --threads
    # 1` on a shared machine computed it with every core PyTorch had; distance's runs under its
    # threads=. (The caller's count is 2 here, so that 1 inside tells.)
    spec = tiny_spec()
    spec["train"].update(steps=40, save_every=5, eval_every=40, lr=0.2, **COSINE)
    ckpts = train_tiny(tmp_path, spec)
    root = tmp_path / "store"
    conetool.kernels(ckpts, store=root, device="cpu")
    counts: list[int] = []

    def stand_in(model, inputs, *, method, dtype, device, **kwargs):
        counts.append(torch.get_num_threads())
        return NoiseEstimate(1e-4, 5e-9, int(inputs.shape[0]), "trace", method, "float32")

    monkeypatch.setattr(noise_estimate, "kernel_noise", stand_in)
    with conetool.limit_threads(2):
        conetool.embed(root, threads=1)
    assert counts == [1]
