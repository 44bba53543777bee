"""A switch point records the fingerprint of the optimizer state bytes its momentum was loaded
from. It recorded the hash taken when it looked at the file (or, under torchrun, the one rank 0
took and handed on), and the optimizer read the file again later: a state file replaced in
between was recorded with the hash of bytes that were not used, and the point was later reused as
if computed from them. Now the file is read once, hashed as it is read, and those bytes are
loaded. Each test replaces the file where the old code had hashed it and not yet loaded it (the
output check, before the training starts). --reference train's standard run reads its state
through the same optimizer_at: its tests replace the file just after that read (which it must not
read again) and just before it (after the look that told its stored result out of date)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_switch_beside_state import spec_dict
from test_switch_momentum_source import one_rank_switch, result_ref
from test_switch_optimizer_state import LR, MOMENTUM
from test_switch_trainer_optimizer import (
    buffers_at_start,
    hf_folder,
    spec_of,
    trained,
    trainer_groups,
)

from conetool import paths
from conetool.optim import read_optimizer_state
from conetool.pipeline import switch_points
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train


@pytest.fixture
def run(tmp_path):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12, the state beside each."""
    out = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


def content(data: bytes) -> str:
    """A state file's fingerprint as a point records it."""
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()}"


def rescaled(path, factor) -> bytes:
    """The bytes of the state ``path`` with every buffer times ``factor`` (written elsewhere)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) * factor for key in handle.keys()}
    other = path.with_name("other.safetensors")
    save_file(tensors, str(other), metadata=metadata)
    data = other.read_bytes()
    other.unlink()
    return data


def replaced_before_the_load(monkeypatch, path, data):
    """Write ``data`` over ``path`` once, as the point checks its model's output (after its state
    file was hashed, before its optimizer was made, in the old code)."""
    real = switch_points.output_check
    done = []

    def replacing(*args, **kwargs):
        if not done:
            path.write_bytes(data)
            done.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(switch_points, "output_check", replacing)
    return done


def recorded(store, t):
    return json.loads(paths.switch_point(store, t).read_text())["momentum_source"]


def first_buffers(seen):
    """The momentum buffers the training started from, in the model's parameter order."""
    (state,) = seen
    return [buffers["momentum_buffer"] for buffers in state.values()]


def test_a_state_file_replaced_before_its_load_is_recorded_as_loaded(run, tmp_path, monkeypatch):
    store = tmp_path / "s"
    beside = paths.optimizer_state(run, 4)
    kept = beside.read_bytes()
    other = rescaled(beside, 2.0)
    done = replaced_before_the_load(monkeypatch, beside, other)
    seen = buffers_at_start(monkeypatch)
    first = switch([4], store=store, ckpts=run, device="cpu")
    assert done and first.points[0].momentum == "saved"
    saved = read_optimizer_state(beside)["state"]
    assert all(
        torch.equal(buffer, saved[i]["momentum_buffer"])
        for i, buffer in enumerate(first_buffers(seen))
    )  # trained from the new file's buffers
    assert recorded(store, 4) == {"state": beside.name, "fingerprint": content(other)}
    # was: the hash of the file it replaced, so restoring that one reused the point computed
    # from the other; now that is computed again
    monkeypatch.undo()
    beside.write_bytes(kept)
    again = switch([4], store=store, ckpts=run, device="cpu")
    assert [(p.momentum, p.reused) for p in again.points] == [("saved", False)]
    assert any(n.startswith("t=4: the optimizer state beside") for n in again.notes), again.notes
    assert recorded(store, 4) == {"state": beside.name, "fingerprint": content(kept)}


def test_under_torchrun_the_point_records_its_own_load_not_rank_0s_hash(run, tmp_path, monkeypatch):
    """Rank 0 hashes the state file of a point the store holds (to tell whether it is current)
    and hands the hash on; the rank that trains the point recorded it, though it read the file
    later."""
    store = tmp_path / "s"
    switch([4], store=store, ckpts=run, device="cpu")
    beside = paths.optimizer_state(run, 4)
    changed, later = rescaled(beside, 2.0), rescaled(beside, 3.0)
    beside.write_bytes(changed)  # rank 0 finds the point's state file changed: to do
    replaced_before_the_load(monkeypatch, beside, later)
    result = one_rank_switch([4], store, run)
    assert [(p.at, p.reused, p.momentum) for p in result.points] == [(4, False, "saved")]
    assert recorded(store, 4) == {"state": beside.name, "fingerprint": content(later)}
    # a point not in the store: nothing hashed before its load, which it records
    replaced_before_the_load(monkeypatch, paths.optimizer_state(run, 8), changed)
    one_rank_switch([8], store, run)
    assert recorded(store, 8)["fingerprint"] == content(changed)


def test_a_trainers_optimizer_pt_replaced_before_its_load_is_recorded_as_loaded(
    tmp_path, monkeypatch
):
    spec = spec_of()

    def sgd(model):
        return torch.optim.SGD(trainer_groups(model), lr=LR, momentum=MOMENTUM)

    model, theirs = trained(sgd, spec)
    ckpts = hf_folder(tmp_path / "run", model, theirs)
    state = ckpts / "checkpoint-3" / "optimizer.pt"
    for buffers in theirs.state.values():
        buffers["momentum_buffer"].mul_(2.0)
    torch.save(theirs.state_dict(), tmp_path / "other.pt")
    other = (tmp_path / "other.pt").read_bytes()
    done = replaced_before_the_load(monkeypatch, state, other)
    seen = buffers_at_start(monkeypatch)
    result = switch([3], until=4, store=tmp_path / "s", ckpts=ckpts, spec=spec, device="cpu")
    assert done and result.points[0].momentum == "saved"
    (loaded,) = seen
    for name, parameter in model.named_parameters():  # the doubled buffers: the new file's
        wanted = theirs.state[parameter]["momentum_buffer"]
        assert torch.equal(loaded[name]["momentum_buffer"], wanted), name
    assert recorded(tmp_path / "s", 3) == {
        "state": "checkpoint-3/optimizer.pt",
        "fingerprint": content(other),
    }


def test_the_record_is_what_momentum_source_says_of_the_file_loaded(run, tmp_path):
    """The load's record and the look's agree on an unchanged file: a rerun reuses the point."""
    from conetool.pipeline.switch_momentum_source import momentum_source, read_state

    ref = result_ref(run, 4)
    assert read_state(run, ref).source == momentum_source(run, ref)
    paths.optimizer_state(run, 4).unlink()
    assert read_state(run, ref).source == momentum_source(run, ref) == {"state": None}


def reference_buffers(seen):
    """The momentum buffers --reference train's standard run started from, in parameter order."""
    (state,) = [state for description, _, state in seen if description == "standard"]
    return [buffers["momentum_buffer"] for buffers in state]


def reference_source(store):
    return json.loads(paths.switch_reference(store).read_text())["momentum_source"]


def state_of(data: bytes, tmp_path):
    """The momentum buffers of the state file whose bytes are ``data``, in parameter order."""
    path = tmp_path / "state.safetensors"
    path.write_bytes(data)
    state = read_optimizer_state(path)["state"]
    return [state[i]["momentum_buffer"] for i in sorted(state)]


def test_reference_train_trains_from_the_state_bytes_it_hashed(run, tmp_path, monkeypatch):
    """--reference train reads the state beside its starting checkpoint once (optimizer_at, as a
    point does): a file replaced after that read is neither trained from nor recorded."""
    from test_switch_beside_state import watch_optimizers

    from conetool.pipeline import switch_optimizer

    store = tmp_path / "s"
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    beside = paths.optimizer_state(run, 8)
    kept, other = beside.read_bytes(), rescaled(beside, 2.0)
    real = switch_optimizer.read_state

    def read_then_replaced(ckpts, ref):
        read = real(ckpts, ref)
        if ref.step == 8:
            beside.write_bytes(other)
        return read

    monkeypatch.setattr(switch_optimizer, "read_state", read_then_replaced)
    seen = watch_optimizers(monkeypatch)
    result = switch([4], store=store, ckpts=run, device="cpu", reference="train")
    assert result.reference is not None and result.reference["source"] == "trained from step 8"
    assert beside.read_bytes() == other
    for mine, theirs in zip(reference_buffers(seen), state_of(kept, tmp_path), strict=True):
        assert torch.equal(mine, theirs)  # the bytes read, not the file as it is now
    assert reference_source(store) == {"state": beside.name, "fingerprint": content(kept)}
    monkeypatch.undo()  # the file now is other bytes than those recorded: trained again
    seen = watch_optimizers(monkeypatch)
    again = switch([4], store=store, ckpts=run, device="cpu", reference="train")
    assert [d for d, _, _ in seen] == ["standard"]  # the point is reused, the reference not
    assert again.points[0].reused
    for mine, theirs in zip(reference_buffers(seen), state_of(other, tmp_path), strict=True):
        assert torch.equal(mine, theirs)
    assert reference_source(store) == {"state": beside.name, "fingerprint": content(other)}


def test_reference_train_records_its_own_load_not_the_hash_it_compared(run, tmp_path, monkeypatch):
    """A stored reference whose state file changed is trained again: the file hashed to tell
    (momentum_source) and replaced before the load is recorded as loaded."""
    from test_switch_beside_state import watch_optimizers

    from conetool.pipeline import switch_reference

    store = tmp_path / "s"
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    switch([4], store=store, ckpts=run, device="cpu", reference="train")
    beside = paths.optimizer_state(run, 8)
    changed, later = rescaled(beside, 2.0), rescaled(beside, 3.0)
    beside.write_bytes(changed)  # the stored reference is found out of date: trained again
    real = switch_reference.optimizer_at

    def replaced_then_read(*args, **kwargs):
        beside.write_bytes(later)
        return real(*args, **kwargs)

    monkeypatch.setattr(switch_reference, "optimizer_at", replaced_then_read)
    seen = watch_optimizers(monkeypatch)
    switch([4], store=store, ckpts=run, device="cpu", reference="train")
    for mine, theirs in zip(reference_buffers(seen), state_of(later, tmp_path), strict=True):
        assert torch.equal(mine, theirs)
    assert reference_source(store) == {"state": beside.name, "fingerprint": content(later)}
