"""A switch point records the optimizer state file beside its checkpoint that its momentum came
from, so that a rerun computes again a point whose file was added, repaired or changed since
(was: reused, its momentum silently 'fresh' where the run's saved state is there now)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_switch_beside_state import spec_dict

from conetool import paths
from conetool.loop import TrainingLoop
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train


@pytest.fixture
def run(tmp_path):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12, the state beside each."""
    out = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(TrainingLoop, "run", refuse)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_state_file_added_or_repaired_since_recomputes_the_point(
    run, tmp_path, monkeypatch, damage
):
    store = tmp_path / "s"
    beside = paths.optimizer_state(run, 4)
    kept = beside.read_bytes()
    if damage == "missing":
        beside.unlink()
    else:
        beside.write_bytes(kept[:-5])
    first = switch([4, 8], store=store, ckpts=run, device="cpu")
    assert [p.momentum for p in first.points] == ["fresh", "saved"]
    if damage == "truncated":  # no advice to delete the point's file first
        (said,) = [w for w in first.warnings if "is not used" in w]
        assert "delete" not in said and "a rerun trains with it again" in said, said
    beside.write_bytes(kept)  # restored from the run
    again = switch([4, 8], store=store, ckpts=run, device="cpu")
    assert [(p.momentum, p.reused) for p in again.points] == [("saved", False), ("saved", True)]
    verb = "was added" if damage == "missing" else "changed"
    assert (
        f"t=4: the optimizer state beside the checkpoint (step_000004.optim.safetensors) {verb} "
        "since this point was computed: it is computed again"
    ) in again.notes, again.notes
    assert json.loads(paths.switch_point(store, 4).read_text())["momentum"] == "saved"
    with open(paths.switch_results_csv(store)) as handle:
        assert [row.split(",")[6] for row in handle.read().splitlines()[1:]] == ["saved"] * 2
    beside.unlink()  # and back: removed since, fresh again
    last = switch([4], store=store, ckpts=run, device="cpu")
    assert [(p.momentum, p.reused) for p in last.points] == [("fresh", False)]


def test_an_unchanged_rerun_reuses_every_point(run, tmp_path, monkeypatch):
    store = tmp_path / "s"
    paths.optimizer_state(run, 4).unlink()  # a fresh point and a saved one
    first = switch([4, 8], store=store, ckpts=run, device="cpu")
    recorded = [json.loads(paths.switch_point(store, t).read_text()) for t in (4, 8)]
    assert [r["momentum_source"]["state"] for r in recorded] == [
        None,
        "step_000008.optim.safetensors",
    ]
    no_training(monkeypatch)
    again = switch([4, 8], store=store, ckpts=run, device="cpu")
    assert all(p.reused for p in again.points)
    same = ("at", "test_acc", "test_loss", "train_acc", "train_loss", "momentum", "seconds")
    # the rows too, NaN where the computed point had NaN (strict JSON stores it as null):
    # compared as text, where nan == nan
    assert repr([[getattr(p, k) for k in same] + [p.rows] for p in again.points]) == repr(
        [[getattr(p, k) for k in same] + [p.rows] for p in first.points]
    )
    assert any(math.isnan(v) for p in first.points for row in p.rows for v in row.values())
    assert not any("computed again" in n for n in again.notes), again.notes


def test_a_point_of_an_older_store_without_the_record_is_reused(run, tmp_path, monkeypatch):
    store = tmp_path / "s"
    beside = paths.optimizer_state(run, 4)
    kept = beside.read_bytes()
    beside.unlink()
    first = switch([4], store=store, ckpts=run, device="cpu")
    point = paths.switch_point(store, 4)
    payload = json.loads(point.read_text())
    del payload["momentum_source"]  # as written before points recorded it
    point.write_text(json.dumps(payload))
    beside.write_bytes(kept)
    no_training(monkeypatch)
    again = switch([4], store=store, ckpts=run, device="cpu")
    assert [(p.momentum, p.reused) for p in again.points] == [("fresh", True)]
    assert again.points[0].test_loss == first.points[0].test_loss


def test_reference_train_is_trained_again_when_its_state_file_is_added(run, tmp_path):
    store = tmp_path / "s"
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    beside = paths.optimizer_state(run, 8)
    kept = beside.read_bytes()
    beside.unlink()
    first = switch([4], store=store, ckpts=run, device="cpu", reference="train")
    assert any("momentum starting at zero" in n for n in first.notes), first.notes
    beside.write_bytes(kept)
    again = switch([4], store=store, ckpts=run, device="cpu", reference="train")
    assert any("momentum from the saved optimizer state" in n for n in again.notes), again.notes
    assert again.points[0].reused


def test_a_trainer_folders_optimizer_pt_is_named_as_the_trainers() -> None:
    """A Hugging Face folder's optimizer.pt lies inside the checkpoint's folder, not beside it: the
    reason names it as the Trainer's state (the side file keeps 'beside the checkpoint')."""
    from conetool.pipeline.switch_momentum_source import SOURCE_ENTRY, source_changed

    def payload(state):
        return {SOURCE_ENTRY: {"state": state}}

    hf = "checkpoint-400/optimizer.pt"
    assert source_changed(payload(None), {"state": hf}) == (
        f"the Trainer's optimizer state ({hf}) was added"
    )
    assert source_changed(payload(hf), {"state": None}) == (
        f"the Trainer's optimizer state ({hf}) was removed"
    )
    side = "step_000400.optim.safetensors"
    assert source_changed(payload(None), {"state": side}) == (
        f"the optimizer state beside the checkpoint ({side}) was added"
    )
    assert source_changed(payload(side), {"state": side}) is None


def results_csv(store):
    """results.csv's rows as (at, momentum)."""
    with open(paths.switch_results_csv(store)) as handle:
        rows = [row.split(",") for row in handle.read().splitlines()[1:]]
    return [(int(row[0]), row[6]) for row in rows]


def test_an_earlier_point_whose_state_file_changed_is_left_out_of_results_csv(run, tmp_path):
    """A point of an earlier sweep outside this --at whose momentum's state file changed since
    kept its old momentum in results.csv until it was swept again; now it is left out, as a point
    whose checkpoint changed is, with a warning naming it, why, and the command."""
    store = tmp_path / "s"
    beside4, beside8 = paths.optimizer_state(run, 4), paths.optimizer_state(run, 8)
    kept = beside4.read_bytes()
    beside4.unlink()
    switch([0, 4, 8], store=store, ckpts=run, device="cpu")
    assert results_csv(store) == [(0, "saved"), (4, "fresh"), (8, "saved")]
    beside4.write_bytes(kept)  # restored from the run: the point at 4 would be "saved" now
    beside8.write_bytes(beside8.read_bytes()[:-5])  # damaged: the point at 8 would be "fresh"
    again = switch([0], store=store, ckpts=run, device="cpu")
    assert again.points[0].reused
    assert results_csv(store) == [(0, "saved")]
    said = [w for w in again.warnings if w.startswith("left out of results.csv")]
    assert said == [
        "left out of results.csv the points of earlier sweeps at 4 8: the optimizer state file "
        "their momentum comes from changed since they were computed (t=4: the optimizer state "
        "beside the checkpoint (step_000004.optim.safetensors) was added; t=8: the optimizer "
        "state beside the checkpoint (step_000008.optim.safetensors) changed). Recompute them: "
        "conetool switch --at 4,8."
    ], again.warnings
    summary = json.loads(paths.switch_results_json(store).read_text())
    assert [p["at"] for p in summary["points"]] == [0]
    # the command it names puts them back, with the momentum they have now
    switch([4, 8], store=store, ckpts=run, device="cpu")
    last = switch([0], store=store, ckpts=run, device="cpu")
    assert results_csv(store) == [(0, "saved"), (4, "saved"), (8, "fresh")]
    assert not any(w.startswith("left out") for w in last.warnings), last.warnings


def test_an_earlier_point_of_an_older_store_without_the_record_stays_in_results_csv(run, tmp_path):
    store = tmp_path / "s"
    switch([0, 4], store=store, ckpts=run, device="cpu")
    point = paths.switch_point(store, 4)
    payload = json.loads(point.read_text())
    del payload["momentum_source"]  # as written before points recorded it: not known, kept
    point.write_text(json.dumps(payload))
    paths.optimizer_state(run, 4).unlink()
    again = switch([0], store=store, ckpts=run, device="cpu")
    assert results_csv(store) == [(0, "saved"), (4, "saved")]
    assert not any(w.startswith("left out") for w in again.warnings), again.warnings


def state_reads(monkeypatch):
    """The state files read (a hash streamed, or a safetensors file opened), by name."""
    import conetool.optim as optim_module
    from conetool.checkpoints import _hashed_reads
    from conetool.pipeline import switch_momentum_source

    names: list[str] = []
    real_stream, real_open = _hashed_reads.stream_file, optim_module.safe_open

    def streamed(path, *, keep):
        if path.name.endswith(".optim.safetensors"):
            names.append(path.name)
        return real_stream(path, keep=keep)

    def opened(filename, *args, **kwargs):
        names.append(Path(filename).name)
        return real_open(filename, *args, **kwargs)

    monkeypatch.setattr(_hashed_reads, "stream_file", streamed)
    monkeypatch.setattr(switch_momentum_source, "stream_file", streamed, raising=False)
    monkeypatch.setattr(optim_module, "safe_open", opened)
    return names


def one_rank_switch(at, store, run):
    """``switch`` as a job of one rank over an in-process key-value store (which takes the
    several-rank path: rank 0 looks for finished points and deals the others)."""
    from torch.distributed import HashStore

    from conetool import distributed
    from conetool.pipeline import run_switch
    from conetool.progress import NullProgress, Said

    job = distributed.Job("switch", distributed.Ranks(), torch.device("cpu"), HashStore())
    assert job.is_distributed
    options = run_switch.SwitchOptions(
        at=at, until=None, store=store, ckpts=run, spec=None, reference="checkpoint",
        step_regex=None, beyond_run=False, device="cpu", threads=1,
    )  # fmt: skip
    return run_switch._switch(job, options, 1, Said(NullProgress()))


def test_a_point_to_do_reads_its_state_file_once_per_run(run, tmp_path, monkeypatch):
    """With several ranks, rank 0's look for finished points hashed each point's state file, and
    the point to do hashed it again before training; then rank 0 handed on what it found, and the
    point read the file again to load it. Now a point not in the store reads its state file once,
    hashing the bytes it loads; rank 0 hashes only where the store holds the point."""
    from conetool.pipeline import switch_momentum_source

    store = tmp_path / "s"
    switch([4], store=store, ckpts=run, device="cpu")
    read = state_reads(monkeypatch)
    result = one_rank_switch([4, 8], store, run)
    assert [(p.at, p.reused) for p in result.points] == [(4, True), (8, False)]
    # 4: rank 0 hashes it (the store's point is current); 8: its load, once
    assert sorted(read) == ["step_000004.optim.safetensors", "step_000008.optim.safetensors"]
    recorded = json.loads(paths.switch_point(store, 8).read_text())["momentum_source"]
    assert recorded == switch_momentum_source.momentum_source(run, result_ref(run, 8))
    read.clear()  # a single process: once too (its load; the earlier points, for results.csv)
    switch([0], store=store, ckpts=run, device="cpu")
    assert sorted(read) == [f"step_{t:06d}.optim.safetensors" for t in (0, 4, 8)]


def result_ref(run, step):
    from conetool.checkpoints import list_checkpoints

    return next(ref for ref in list_checkpoints(run) if ref.step == step)


def test_an_earlier_points_unreadable_state_file_does_not_stop_the_sweep(
    run, tmp_path, monkeypatch
):
    """momentum_source caught OSError, which stream_file had already turned into a
    CheckpointError: a state file of a point outside --at that could not be read now (a
    permission, a disk error) stopped the sweep in the results.csv check, where its docstring
    says such a file is 'not known now' and the point stays."""
    from conetool.errors import CheckpointError
    from conetool.pipeline import switch_momentum_source

    store = tmp_path / "s"
    switch([0, 4], store=store, ckpts=run, device="cpu")
    unreadable = paths.optimizer_state(run, 4)
    real = switch_momentum_source.files_fingerprint

    def denied(files):
        if Path(files[0]) == unreadable:
            raise CheckpointError(f"cannot read '{unreadable}': permission denied")
        return real(files)

    monkeypatch.setattr(switch_momentum_source, "files_fingerprint", denied)
    again = switch([0], store=store, ckpts=run, device="cpu")
    assert again.points[0].reused
    assert results_csv(store) == [(0, "saved"), (4, "saved")]
