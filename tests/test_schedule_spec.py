"""``--spec`` of distance and embed: a spec differing from the store's in [train] keys alone that
no kernel depends on (a researcher's own spec completed with the run's schedule) is read for the
verdict with the stored kernels as they are; one differing in a key that changes kernels is
refused, naming it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from synthetic_store import open_store
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import StoreError
from conetool.pipeline import distance, embed, kernels, report
from conetool.pipeline.schedule_spec import KERNEL_FREE_TRAIN_KEYS, verdict_spec
from conetool.spec import TrainSpec, load_spec, spec_from_dict, spec_from_toml
from conetool.store import Store, StoreIdentity
from conetool.training import train

runner = CliRunner()

RUN = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [8], "activation": "tanh"},
    "data": {
        "dataset": "synthetic",
        "shape": [4],
        "num_classes": 3,
        "train_size": 48,
        "test_size": 12,
    },
    "probe": {"size": 6},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "lr": 0.2,
        "schedule": "step",
        "milestones": [10],
        "save_every": 2,
        "eval_every": 20,
    },
}

# The researcher's own spec file: the run's keys but its schedule (their loop had one).
OWN = """\
[model]
arch = "mlp"
num_classes = 3
widths = [8]
activation = "tanh"

[data]
dataset = "synthetic"
shape = [4]
num_classes = 3
train_size = 48
test_size = 12

[probe]
size = 6

[train]
steps = 20
batch_size = 8
lr = 0.2
save_every = 2
eval_every = 20
"""
SCHEDULE = 'schedule = "step"\nmilestones = [10]\n'


@pytest.fixture(scope="module")
def own_store(tmp_path_factory):
    """A run trained with a step schedule, its kernels computed with a spec file that does not
    write it (``own.toml``); ``sched.toml`` is that file with the schedule written in."""
    root = tmp_path_factory.mktemp("own")
    train(spec_from_dict(RUN, source="run.toml"), root / "ckpts")
    (root / "own.toml").write_text(OWN)
    (root / "sched.toml").write_text(OWN + SCHEDULE)
    store = root / "store"
    kernels(root / "ckpts", store=store, device="cpu", spec=root / "own.toml")
    return root, store


def _kernel_states(store):
    return {p: p.stat().st_mtime_ns for p in sorted(store.rglob("*.safetensors"))} | {
        paths.manifest(store): paths.manifest(store).stat().st_mtime_ns
    }


def test_a_spec_completed_with_the_schedule_is_read_without_recomputing_kernels(own_store):
    """The own-run warning said to write the schedule into [train] and compute every kernel
    again into another store, since --spec had to be the store's (its hash covers [train]); no
    kernel depends on the schedule. distance --spec now reads it over the stored kernels."""
    root, store = own_store
    bare = distance(store, noise=False)
    (said,) = [w for w in bare.warnings if "does not write train.schedule" in w]
    assert "conetool distance --spec FILE" in said and "none is recomputed" in said
    assert "OTHER_STORE" not in said
    # the rates conetool train's states beside the checkpoints hold (their headers): the evidence
    assert "hold lr 0.2 at steps 0 to 8, 0.02 at steps 12 to 20 (x0.1)." in said, said
    assert "schedule" not in bare.verdict.numbers  # S per step
    before = _kernel_states(store)

    sched = root / "sched.toml"
    read = distance(store, spec=sched, noise=False)
    assert _kernel_states(store) == before  # no kernel (nor the manifest) written again
    assert read.verdict.numbers["schedule"]["schedule"] == "step"  # S per unit of rate
    assert f"falls 10x at step 10; --spec {sched} records it)" in read.verdict.explanation
    assert not [w for w in read.warnings if "does not write train.schedule" in w]
    (note,) = [n for n in read.notes if "reads [train]" in n]
    assert note.startswith(
        f"the verdict reads [train] (the learning-rate schedule) from --spec {sched}"
    )
    assert "train.schedule, train.milestones" in note
    summary = json.loads(paths.distance_summary(store).read_text())
    assert summary["schedule_spec"] == {
        "source": str(sched),
        "spec_hash": load_spec(sched).hash(),
        "differs": ["train.schedule", "train.milestones"],
    }
    assert summary["schedule_spec"]["spec_hash"] != summary["identity"]["spec_hash"]

    # the command line, and its note
    out = runner.invoke(
        app, ["distance", "--store", str(store), "--spec", str(sched), "--no-noise"]
    )
    assert out.exit_code == 0, out.output
    assert "reads [train] (the learning-rate schedule) from --spec" in " ".join(out.output.split())


def test_embed_and_report_read_the_schedule_distance_read(own_store):
    """A later embed (without --spec) takes the Phase I end distance read under the given
    schedule and says so; given the store's own spec it does not reuse that summary (read under
    another schedule); the report names the file and its distance command passes it."""
    root, store = own_store
    sched = root / "sched.toml"
    read = distance(store, spec=sched, noise=False)
    later = embed(store)
    assert later.phase1_end == read.verdict.phase1_end
    summary = json.loads(paths.embed_summary(store).read_text())
    assert summary["phase1_end_from"] == f"distance/summary.json (the schedule of {sched})"
    assert summary["schedule_spec"]["source"] == str(sched)

    embed(store, spec=root / "own.toml")  # the store's spec: its own, constant, schedule
    summary = json.loads(paths.embed_summary(store).read_text())
    assert summary["phase1_end_from"] == "verdict with default rules"
    assert summary["schedule_spec"]["differs"] == []

    out = runner.invoke(app, ["embed", "--store", str(store), "--spec", str(sched)])
    assert out.exit_code == 0, out.output
    summary = json.loads(paths.embed_summary(store).read_text())
    assert summary["phase1_end_from"] == f"distance/summary.json (the schedule of {sched})"

    md = " ".join(report(store).markdown.read_text().split())
    assert f"conetool distance --store {store}" in md
    assert f"--spec {sched}" in md
    assert f"{sched} (differs from the store's spec in train.schedule, train.milestones)" in md


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("widths = [8]", "widths = [9]", "model.widths"),
        ("size = 6", "size = 5", "probe.size"),
        ("batch_size = 8", "batch_size = 16", "train.batch_size"),
    ],
)
def test_a_spec_differing_in_a_key_that_changes_kernels_is_refused(own_store, old, new, key):
    """[model], [probe] (and train.batch_size, which sets the steps of checkpoints named by
    epoch) change the kernels: such a spec is refused as before, naming the key, with or
    without the schedule written in."""
    root, store = own_store
    other = root / f"{key}.toml"
    other.write_text((OWN + SCHEDULE).replace(old, new))
    before = _kernel_states(store)
    for run in (lambda: distance(store, spec=other, noise=False), lambda: embed(store, spec=other)):
        with pytest.raises(StoreError) as refused:
            run()
        said = " ".join(str(refused.value).split())
        assert f"--spec {other}: its hash is" in said
        assert f"The kernels depend on {key}" in said
        assert "train.schedule" in said  # the whole difference is still listed
    assert _kernel_states(store) == before


def test_every_train_key_is_judged():
    """A key added to [train] later is refused by --spec until it is judged: every key is
    either one no kernel depends on or batch_size."""
    keys = {f"train.{f.name}" for f in dataclasses.fields(TrainSpec)}
    assert keys - KERNEL_FREE_TRAIN_KEYS == {"train.batch_size"}
    assert KERNEL_FREE_TRAIN_KEYS <= keys


def test_a_key_added_after_the_store_is_no_difference(tmp_path):
    """A store made before train.label_smoothing existed records a spec without it; a spec at
    its default is the same spec (the hash leaves it out), so only the schedule differs."""
    train = {k: v for k, v in RUN["train"].items() if k not in ("schedule", "milestones")}
    bare = spec_from_dict({**RUN, "train": train}, source="own.toml")
    recorded = bare.to_dict()
    del recorded["train"]["label_smoothing"]
    identity = StoreIdentity(bare.hash(), "probe0", "trace", "float64")
    with open_store(tmp_path / "old", identity, {"checkpoints": "/ckpts", "spec": recorded}):
        pass
    sched = spec_from_dict(RUN, source="sched.toml")
    _, keys = verdict_spec(Store.open(tmp_path / "old"), sched)
    assert keys == ["train.schedule", "train.milestones"]


def test_a_relative_spec_is_recorded_where_it_is(own_store, tmp_path, monkeypatch):
    """distance --spec sched.toml, given relative to the folder distance ran in, was recorded
    as 'sched.toml', so the report's Reproduce command passed --spec sched.toml, a file the
    report's own note says to look for from the folder the report was made in (or, with
    absolute store paths, from nowhere in particular): it is recorded where it is now."""
    root, store = own_store
    monkeypatch.chdir(root)
    read = distance(store, spec="sched.toml", noise=False)
    assert read.verdict.numbers["schedule"]["schedule"] == "step"
    later = embed(store)
    where = str(root / "sched.toml")
    for summary in (paths.distance_summary(store), paths.embed_summary(store)):
        assert json.loads(summary.read_text())["schedule_spec"]["source"] == where
    assert later.phase1_end == read.verdict.phase1_end

    monkeypatch.chdir(tmp_path)  # the report made elsewhere
    md = " ".join(report(store).markdown.read_text().split())
    assert f"--no-noise --spec {where}" in md  # the Reproduce commands: distance's, embed's
    assert f"--method mds --dims 2 --seed 0 --spec {where}" in md
    assert "--no-noise --spec sched.toml" not in md
    assert f"{where} (differs from the store's spec in train.schedule, train.milestones)" in md


def test_a_record_without_the_stores_hash_is_said_to_be_why(tmp_path):
    """A manifest whose spec record does not have the store's spec hash (edited by hand, say)
    cannot tell which keys the kernels depend on, so a spec differing from it only in
    [train] is refused; the message listed those [train] keys and then said to pass the
    run's spec 'with the run's schedule written into its [train] if you like', which is what
    was refused, and not why. It says why now, and not that."""
    train = {k: v for k, v in RUN["train"].items() if k not in ("schedule", "milestones")}
    bare = spec_from_dict({**RUN, "train": train}, source="own.toml")
    recorded = bare.to_dict()
    recorded["train"]["lr"] = 0.3  # the record edited; the hash is the kernels'
    identity = StoreIdentity(bare.hash(), "probe0", "trace", "float64")
    with open_store(tmp_path / "edited", identity, {"checkpoints": "/ckpts", "spec": recorded}):
        pass
    sched = spec_from_dict(RUN, source="sched.toml")
    with pytest.raises(StoreError) as refused:
        verdict_spec(Store.open(tmp_path / "edited"), sched)
    said = " ".join(str(refused.value).split())
    manifest = paths.manifest(tmp_path / "edited")
    assert f"The spec {manifest} records does not have the store's spec hash {bare.hash()}" in said
    assert "only a spec of that hash is taken" in said
    assert "if you like" not in said
    # the record as written: the schedule is the verdict's to read
    assert verdict_spec(Store.open(tmp_path / "edited"), bare) == (bare, [])


def test_the_report_passes_a_schedule_spec_only_while_its_file_holds_it(own_store, tmp_path):
    """The report's Reproduce commands passed --spec FILE as summary.json recorded it, though
    the file had been edited since (the commands then read another schedule, silently), was
    gone, or had never been one (a Spec built in Python: --spec '<spec>'); where the file does
    not hold the spec of the recorded hash, a comment says to add it instead."""
    root, store = own_store
    edited = tmp_path / "edited.toml"
    edited.write_text(OWN + SCHEDULE)
    distance(store, spec=edited, noise=False)
    embed(store)
    edited.write_text(OWN + 'schedule = "step"\nmilestones = [15]\n')
    held = load_spec(edited).hash()
    md = " ".join(report(store).markdown.read_text().split())
    assert f"--no-noise --spec {edited}" not in md and f"--seed 0 --spec {edited}" not in md
    wanted = load_spec(root / "sched.toml").hash()
    said = (
        f"# the verdict read [train] from --spec {edited} (spec hash {wanted}), which holds "
        f"another spec now (hash {held}): add --spec with a file of that spec"
    )
    assert md.count(said) == 1  # once, for the distance and embed commands
    edited.write_text("[train\n")  # there, but no spec
    md = " ".join(report(store).markdown.read_text().split())
    assert f"from --spec {edited} (spec hash {wanted}), which cannot be read as a spec now" in md

    built = spec_from_toml(OWN + SCHEDULE)  # source "<spec>"
    distance(store, spec=built, noise=False)
    md = " ".join(report(store).markdown.read_text().split())
    assert "--spec '<spec>'" not in md
    assert f"from --spec <spec> (spec hash {wanted}), which is not there now" in md
    distance(store, spec=root / "sched.toml", noise=False)
    embed(store)  # its summary named edited.toml until it read distance's again
    md = " ".join(report(store).markdown.read_text().split())
    assert f"--no-noise --spec {root / 'sched.toml'}" in md and "# the verdict read" not in md


def test_kernels_with_the_schedule_written_in_names_the_cheaper_way(own_store):
    """kernels over the store with the spec completed by the run's schedule (what the README
    said to do before kernels) is refused as another spec, rightly, and said only to use
    another --store or --overwrite: every kernel computed again, though none depends on
    those [train] keys; it names distance --spec FILE too now. A spec differing in a key
    that changes kernels is not told so."""
    root, store = own_store
    before = _kernel_states(store)
    sched = root / "sched.toml"
    with pytest.raises(StoreError) as refused:
        kernels(root / "ckpts", store=store, device="cpu", spec=sched)
    said = " ".join(str(refused.value).split())
    assert "Use another --store, or pass --overwrite" in said
    assert (
        "No kernel depends on those [train] keys: to read the verdict under its schedule over "
        f"these kernels, pass it to conetool distance --spec {sched} (and embed --spec {sched}) "
        "instead; none is recomputed."
    ) in said
    other = root / "wider.toml"
    other.write_text((OWN + SCHEDULE).replace("widths = [8]", "widths = [9]"))
    with pytest.raises(StoreError) as refused:
        kernels(root / "ckpts", store=store, device="cpu", spec=other)
    assert "No kernel depends on" not in str(refused.value)
    assert _kernel_states(store) == before
