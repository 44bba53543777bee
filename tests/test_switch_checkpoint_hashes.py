"""A switch point's checkpoint is hashed once per run, and so is the standard model's at T: read
before any point trains, for NaN or Inf, and kept for the standard model after the sweep (it was
read again there from 703c9bb on). Under torchrun, rank 0's
look for finished points hashed every point's checkpoint, and the point to do hashed it again
when it loaded it;
now rank 0 hashes a checkpoint only where the store holds a point that its hash decides (of the
sweep's spec and T, from a checkpoint of its size, whose momentum's state file is unchanged),
and the point to do records its load's hash (of the bytes it trained from). A job of one rank
over an in-process key-value store takes the several-rank path."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_switch_beside_state import spec_dict
from test_switch_momentum_source import one_rank_switch

from conetool import paths
from conetool.checkpoints import fingerprint
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train


@pytest.fixture
def run(tmp_path):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12, the state beside each."""
    out = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


@pytest.fixture
def hashed(monkeypatch):
    """The checkpoint files hashed (a fingerprint streamed, or a load), by name, in order."""
    from conetool.checkpoints import _hashed_reads, load

    names: list[str] = []
    real = _hashed_reads.stream_file

    def counting(path, *, keep):
        if not path.name.endswith(".optim.safetensors"):  # the state files: their own test
            names.append(path.name)
        return real(path, keep=keep)

    monkeypatch.setattr(_hashed_reads, "stream_file", counting)
    monkeypatch.setattr(load, "stream_file", counting)
    return names


def recorded_fingerprint(store, t):
    return json.loads(paths.switch_point(store, t).read_text())["key"]["source_fingerprint"]


def test_each_checkpoint_is_hashed_once_per_run(run, tmp_path, hashed):
    store = tmp_path / "s"
    switch([4], store=store, ckpts=run, device="cpu")
    hashed.clear()
    result = one_rank_switch([4, 8], store, run)
    assert [(p.at, p.reused) for p in result.points] == [(4, True), (8, False)]
    # 4: rank 0's look finds it done; 8: no point of it in the store, only its load hashes it
    # (was: rank 0's look, then the load); 12: the standard model at T, read before any point
    # trains (NaN or Inf there would waste the sweep: 703c9bb), not again after the sweep
    standard = ["step_000012.safetensors"]
    assert sorted(hashed) == [f"step_{t:06d}.safetensors" for t in (4, 8)] + standard
    assert recorded_fingerprint(store, 8) == fingerprint(paths.checkpoint(run, 8))
    hashed.clear()  # a single process: once too (its load; the earlier points for results.csv)
    switch([0], store=store, ckpts=run, device="cpu")
    assert sorted(hashed) == [f"step_{t:06d}.safetensors" for t in (0, 4, 8)] + standard


def rewrite(path, *, extra_metadata=False):
    """Another checkpoint of the same tensors' names and shapes in ``path``: its first float
    tensor changed (the same size), or with a metadata entry more (another size)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    name = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[name] = tensors[name] + 0.01
    if extra_metadata:
        metadata["rewritten"] = "yes"
    save_file(tensors, str(path), metadata=metadata)


def test_points_whose_files_changed_are_computed_again_their_checkpoints_hashed_once_mostly(
    run, tmp_path, hashed
):
    """Rank 0's look leaves a checkpoint unread where the store's point was computed from a
    checkpoint of another size, or its state file changed; it hashes one of the same size,
    which it needs to tell whether the point is done (then the load hashes it too, recording
    the bytes it trained from)."""
    store = tmp_path / "s"
    switch([0, 4, 8], store=store, ckpts=run, device="cpu")
    before = {t: paths.checkpoint(run, t).stat().st_size for t in (0, 4)}
    rewrite(paths.checkpoint(run, 0))  # the same size
    rewrite(paths.checkpoint(run, 4), extra_metadata=True)  # another size
    assert paths.checkpoint(run, 0).stat().st_size == before[0]
    assert paths.checkpoint(run, 4).stat().st_size != before[4]
    paths.optimizer_state(run, 8).unlink()  # the point's momentum would start at zero now
    hashed.clear()
    result = one_rank_switch([0, 4, 8], store, run)
    assert [(p.at, p.reused) for p in result.points] == [(0, False), (4, False), (8, False)]
    assert result.points[2].momentum == "fresh"
    assert sorted(hashed) == [
        "step_000000.safetensors",  # rank 0: the point's checkpoint had this size
        "step_000000.safetensors",  # its load
        "step_000004.safetensors",
        "step_000008.safetensors",
        "step_000012.safetensors",  # the standard model at T, read before the points train
    ]
    for t in (0, 4, 8):  # each records the checkpoint it trained from
        assert recorded_fingerprint(store, t) == fingerprint(paths.checkpoint(run, t))


def test_reference_train_reads_the_checkpoint_it_continues_from_once(run, tmp_path, hashed):
    """--reference train's checkpoint (the last before T) is read before any point trains, for
    NaN or Inf, and that read is the one it trains from, or whose hash finds the stored
    reference current. Was: read again after the sweep (twice per run, in a rerun too)."""
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    store = tmp_path / "s"
    result = switch([0], store=store, ckpts=run, device="cpu", reference="train")
    assert result.reference is not None and result.reference["source"] == "trained from step 8"
    assert sorted(hashed) == ["step_000000.safetensors", "step_000008.safetensors"]
    hashed.clear()
    again = switch([0], store=store, ckpts=run, device="cpu", reference="train")
    assert again.reference == result.reference  # reference.json reused: nothing trained
    assert sorted(hashed) == ["step_000000.safetensors", "step_000008.safetensors"]


@pytest.mark.parametrize("reference", ["checkpoint", "train"])
def test_the_standard_model_from_the_read_before_the_sweep_is_bit_identical(
    run, tmp_path, monkeypatch, reference
):
    """The standard model at T made from the checkpoint read before the sweep gives the very
    results (and reference.json) of one read again after it, as before."""
    from conetool.pipeline import switch_prepare

    if reference == "train":
        paths.checkpoint(run, 12).unlink()  # continued from step 8, its state beside it
    kept = switch([0], store=tmp_path / "kept", ckpts=run, device="cpu", reference=reference)
    real = switch_prepare._read_reference

    def checked_then_dropped(*args):
        real(*args)  # the NaN check as before; the standard model reads its checkpoint itself
        return None

    monkeypatch.setattr(switch_prepare, "_read_reference", checked_then_dropped)
    again = switch([0], store=tmp_path / "read", ckpts=run, device="cpu", reference=reference)
    assert kept.reference is not None and kept.reference == again.reference
    results = [
        json.loads(paths.switch_results_json(tmp_path / s).read_text()) for s in ("kept", "read")
    ]
    assert results[0]["reference"] == results[1]["reference"]
    if reference == "train":
        stored = [paths.switch_reference(tmp_path / s).read_bytes() for s in ("kept", "read")]
        assert stored[0] == stored[1]


def copied_run(run, tmp_path, how):
    """``run`` as it is ("conetool"), or its checkpoints re-saved by a loop of one's own: as
    safetensors without conetool's metadata, or torch.save files (neither with a state)."""
    if how == "conetool":
        return run
    out = tmp_path / how
    out.mkdir()
    shutil.copy(paths.spec(run), paths.spec(out))
    for step in (0, 4, 8, 12):
        state = load_file(str(paths.checkpoint(run, step)))
        if how == "safetensors":
            save_file(state, str(out / checkpoint_name(how, step)))
        else:
            torch.save({"model_state_dict": state, "step": step}, out / checkpoint_name(how, step))
    return out


def checkpoint_name(how, step):
    """The name of the checkpoint of ``step`` in :func:`copied_run`'s run ``how``."""
    if how == "conetool":
        return f"step_{step:06d}.safetensors"
    return f"ckpt_{step}.{'safetensors' if how == 'safetensors' else 'pt'}"


@pytest.mark.parametrize("how", ["conetool", "safetensors", "torch"])
def test_a_reused_point_is_hashed_not_loaded(run, tmp_path, monkeypatch, hashed, how):
    """A finished point of the same spec, T, checkpoint bytes and state file is reused from its
    checkpoint's hash (streamed) and header: no model is built, nothing is loaded into one, and
    what the sweep says is what it said when the point loaded its checkpoint (the warning of
    checkpoints conetool train did not write). Was: loaded in full (its tensors kept, checked
    finite, matched to a model built for it, a loop's optimizer state kept) only for the hash."""
    from conetool.pipeline import switch_points
    from conetool.pipeline.switch_points import FOREIGN_RUN

    ckpts = copied_run(run, tmp_path, how)
    store = tmp_path / "s"
    first = switch([0, 4], store=store, ckpts=ckpts, device="cpu")
    loads: list[int] = []
    real_load, real_build = switch_points.load_checkpoint, switch_points.model_for

    def load(model, ref, *args, **kwargs):
        loads.append(ref.step)
        return real_load(model, ref, *args, **kwargs)

    def build(spec):
        loads.append(-1)
        return real_build(spec)

    monkeypatch.setattr(switch_points, "load_checkpoint", load)
    monkeypatch.setattr(switch_points, "model_for", build)
    hashed.clear()
    again = switch([0, 4], store=store, ckpts=ckpts, device="cpu")
    assert [p.reused for p in again.points] == [True, True]
    assert loads == []
    # the points' checkpoints and the standard model's at T, once each
    assert sorted(hashed) == sorted(checkpoint_name(how, t) for t in (0, 4, 12))
    fields = ["at", "until", "test_acc", "test_loss", "train_acc", "train_loss", "momentum"]
    for mine, theirs in zip(again.points, first.points, strict=True):
        assert {f: getattr(mine, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert again.reference == first.reference
    assert (FOREIGN_RUN in again.warnings) == (how != "conetool") == (FOREIGN_RUN in first.warnings)


@pytest.mark.parametrize("how", ["conetool", "safetensors", "torch"])
def test_reused_points_under_torchrun_warn_of_a_foreign_run_as_one_process_does(run, tmp_path, how):
    """Checkpoints conetool train did not write are warned of once per sweep, also when every
    point is reused: a single process said so from each point it read back, but with several
    ranks rank 0 found the store's points itself and nothing said it (only points a rank
    trained did)."""
    from conetool.pipeline.switch_points import FOREIGN_RUN

    ckpts = copied_run(run, tmp_path, how)
    store = tmp_path / "s"
    switch([0, 4], store=store, ckpts=ckpts, device="cpu")
    single = switch([0, 4], store=store, ckpts=ckpts, device="cpu")
    ranks = one_rank_switch([0, 4], store, ckpts)
    assert [p.reused for p in single.points] == [p.reused for p in ranks.points] == [True, True]
    assert single.warnings.count(FOREIGN_RUN) == (how != "conetool")
    assert ranks.warnings.count(FOREIGN_RUN) == (how != "conetool"), ranks.warnings
