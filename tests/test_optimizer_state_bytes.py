"""switch reads an optimizer state file once, hashing it as it reads, and gives those bytes to
the optimizer (the point records their fingerprint): a state read from its bytes is the one, and
a damaged one's errors are those, that reading the file gives (train --resume still reads the
file: conetool.optim.read_optimizer_state; a Trainer's optimizer.pt: load_state_file)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_switch_beside_state import spec_dict

from conetool import paths
from conetool.optim import read_optimizer_state
from conetool.spec import spec_from_dict
from conetool.training import train


@pytest.fixture
def run(tmp_path):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12, the state beside each."""
    out = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


def damaged_states(path):
    """Bytes written over the state ``path`` as a damaged file would be, by name."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    foreign, bare = path.with_name("foreign"), path.with_name("bare")
    save_file({"x": torch.zeros(2)}, str(foreign), metadata={"optimizer": "SGD"})
    save_file({"x": torch.zeros(2)}, str(bare))
    return {
        "truncated": data[:-5],
        "header only": data[: 8 + length],
        "five bytes": data[:5],
        "empty": b"",
        "not json": (4).to_bytes(8, "little") + b"{{{{",
        "too long a header": (2**40).to_bytes(8, "little") + data[8:],
        "trailing bytes": data + b"xx",
        "foreign": foreign.read_bytes(),
        "no metadata": bare.read_bytes(),
        "words": b"not a state",
    }


def test_a_damaged_state_read_from_its_bytes_says_what_the_file_read_says(run):
    """switch reads a state file's bytes once (with their hash) and gives those to the optimizer;
    the errors of a damaged one are those reading the file said (train --resume still reads the
    file), messages and reasons alike."""
    from conetool.errors import CheckpointError, OptimizerStateDamagedError
    from conetool.optim import optimizer_state_from_bytes

    beside = paths.optimizer_state(run, 4)
    for name, data in damaged_states(beside).items():
        beside.write_bytes(data)
        with pytest.raises(CheckpointError) as from_file:
            read_optimizer_state(beside)
        with pytest.raises(CheckpointError) as from_bytes:
            optimizer_state_from_bytes(beside, bytearray(data))
        assert type(from_bytes.value) is type(from_file.value), name
        assert str(from_bytes.value) == str(from_file.value), name
        assert isinstance(from_file.value, OptimizerStateDamagedError), name
        assert from_bytes.value.reason == from_file.value.reason, name


def test_a_state_read_from_its_bytes_is_the_state_the_file_gives(run):
    from conetool.optim import optimizer_state_from_bytes

    beside = paths.optimizer_state(run, 8)
    from_file = read_optimizer_state(beside)
    from_bytes = optimizer_state_from_bytes(beside, bytearray(beside.read_bytes()))
    assert from_bytes["param_groups"] == from_file["param_groups"]
    assert from_bytes["state"].keys() == from_file["state"].keys()
    for index, values in from_file["state"].items():
        assert from_bytes["state"][index].keys() == values.keys()
        for key, value in values.items():
            mine = from_bytes["state"][index][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(mine, value) and mine.dtype == value.dtype, (index, key)
                mine.add_(1.0)  # its own memory, writable (the optimizer updates it in place)
            else:
                assert mine == value, (index, key)


def test_a_damaged_optimizer_pt_read_from_its_bytes_says_what_the_file_read_says(tmp_path):
    from conetool.checkpoint_optimizer import load_state_file, unreadable_reason

    path = tmp_path / "optimizer.pt"
    torch.save({"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": []}, path)
    data = path.read_bytes()
    for name, damaged in {
        "truncated": data[:-30],
        "half": data[: len(data) // 2],
        "words": b"not a state",
        "empty": b"",
    }.items():
        path.write_bytes(damaged)
        (none, from_file), (nothing, from_bytes) = (
            load_state_file(path),
            load_state_file(path, data=bytearray(damaged)),
        )
        assert none is None and nothing is None and from_file is not None, name
        assert from_bytes is not None, name
        assert unreadable_reason(from_bytes) == unreadable_reason(from_file), name
    path.write_bytes(data)
    obj, failed = load_state_file(path, data=bytearray(data))
    assert failed is None and torch.equal(obj["state"][0]["momentum_buffer"], torch.ones(3))


def test_a_state_read_from_its_bytes_lists_its_tensors_as_the_file_read_does(tmp_path):
    """The order of the state's entries decides which buffer a message names first: by name, as
    safe_open lists them, whatever order the file stores them in."""
    from conetool.optim import optimizer_state_from_bytes

    path = tmp_path / "step_000001.optim.safetensors"
    tensors = {f"state.{i}.momentum_buffer": torch.full((i + 1,), float(i)) for i in (3, 0, 2, 1)}
    metadata = {"optimizer": "SGD", "param_groups": "[]", "scalar_state": "{}", "step": "1"}
    save_file(tensors, str(path), metadata=metadata)
    from_file = read_optimizer_state(path)["state"]
    from_bytes = optimizer_state_from_bytes(path, path.read_bytes())["state"]
    assert list(from_bytes) == list(from_file)
