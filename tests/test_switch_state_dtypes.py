"""An optimizer state file beside the checkpoint whose buffers are in a dtype other than the
run's (bfloat16 or float8 momentum written by another tool): its buffers are used as torch's
``Optimizer.load_state_dict`` uses them, converted to their parameter's dtype, for every dtype
safetensors reads that torch can convert; one it cannot (4-bit floats, whose pairs share a byte,
or 6-bit ones safetensors cannot read into torch) is not used, and the warning names the file, the
tensor, its dtype and the fix."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_switch_beside_state import spec_dict
from test_switch_trainer_optimizer import buffers_at_start

from conetool import paths
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12, the state beside each."""
    out = tmp_path_factory.mktemp("dtypes") / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


@pytest.fixture
def run(trained_run, tmp_path):
    """A copy of the run, its state files free to be rewritten."""
    import shutil

    return shutil.copytree(trained_run, tmp_path / "run")


def rewritten(path, dtype):
    """Rewrite the state ``path`` with its buffers in ``dtype``; the buffers as stored now."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key).to(dtype) for key in handle.keys()}
    save_file(tensors, str(path), metadata=metadata)
    return tensors


DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int32]
DTYPES += [
    getattr(torch, name)
    for name in (
        "float8_e4m3fn",
        "float8_e5m2",
        "float8_e4m3fnuz",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if hasattr(torch, name)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_buffers_of_another_float_dtype_are_used_converted(run, tmp_path, monkeypatch, dtype):
    # Was: float8 buffers of the e4m3 kinds stopped the sweep with torch's RuntimeError
    # ("isfinite" not implemented), and those of dtypes safetensors reads but conetool did not
    # list (F8_E4M3FNUZ, F8_E5M2FNUZ) were refused as "not written by conetool train".
    beside = paths.optimizer_state(run, 4)
    stored = rewritten(beside, dtype)
    seen = buffers_at_start(monkeypatch)
    result = switch([4], store=tmp_path / "s", ckpts=run, device="cpu")
    assert [p.momentum for p in result.points] == ["saved"], result.warnings
    assert not [w for w in result.warnings if "t=4" in w], result.warnings
    (state,) = seen
    buffers = [values["momentum_buffer"] for values in state.values()]
    wanted = [stored[f"state.{i}.momentum_buffer"] for i in range(len(buffers))]
    for mine, theirs in zip(buffers, wanted, strict=True):
        assert mine.dtype == torch.float32  # the parameter's, as load_state_dict converts
        assert torch.equal(mine, theirs.to(torch.float32))


#: bits per element of the safetensors dtypes torch cannot convert
BITS = {"F4": 4, "F6_E2M3": 6}


def unreadable_dtype_state(path, code):
    """Rewrite the state ``path`` with its first buffer stored as dtype ``code`` (zeros; the other
    tensors and the metadata as they were)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    header: dict[str, object] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for key in sorted(tensors):
        value = tensors[key]
        if key == "state.0.momentum_buffer":
            data, dtype, shape = (
                b"\x00" * (value.numel() * BITS[code] // 8),
                code,
                list(value.shape),
            )
        else:
            data, dtype, shape = value.numpy().tobytes(), "F32", list(value.shape)
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.mark.parametrize("code", list(BITS))
def test_buffers_of_a_dtype_torch_cannot_convert_are_not_used_and_named(
    run, tmp_path, monkeypatch, code
):
    beside = paths.optimizer_state(run, 4)
    unreadable_dtype_state(beside, code)
    result = switch([4], store=tmp_path / "s", ckpts=run, device="cpu")
    assert [p.momentum for p in result.points] == ["fresh"]
    (warning,) = [w for w in result.warnings if w.startswith("t=4:")]
    assert beside.name in warning
    assert f"'state.0.momentum_buffer' is of dtype {code}" in warning
    assert "float32" in warning  # the fix: buffers of a dtype torch converts
    assert "not written by conetool train" not in warning


@pytest.mark.parametrize("code", list(BITS))
def test_the_file_and_its_bytes_refuse_such_a_dtype_alike(run, code):
    """train --resume reads the file, switch its bytes: the same error (was: the file's read said
    F6 "cannot be read as safetensors", its bytes' "not written by conetool train", and F4 was
    read into a tensor torch cannot convert)."""
    from conetool.errors import OptimizerStateDamagedError
    from conetool.optim import optimizer_state_from_bytes, read_optimizer_state

    beside = paths.optimizer_state(run, 4)
    unreadable_dtype_state(beside, code)
    with pytest.raises(OptimizerStateDamagedError) as from_file:
        read_optimizer_state(beside)
    with pytest.raises(OptimizerStateDamagedError) as from_bytes:
        optimizer_state_from_bytes(beside, beside.read_bytes())
    assert str(from_file.value) == str(from_bytes.value)
    assert from_file.value.reason == from_bytes.value.reason
    message = str(from_file.value)
    assert str(beside) in message and f"is of dtype {code}" in message
    assert "Save the state with float32 buffers" in message


def test_a_loops_float8_buffers_are_converted_not_a_crash():
    """The state inside a training loop's checkpoint file goes through the same check: float8
    buffers are converted to the parameters' dtype (was: torch's NotImplementedError from
    "isfinite"), and a buffer whose conversion overflows is NaN or Inf, not used."""
    from conetool.checkpoint_optimizer import restore_state

    model = torch.nn.Linear(3, 2)
    names = [name for name, _ in model.named_parameters()]
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()
    buffers = [torch.full(tuple(p.shape), 0.5) for p in model.parameters()]
    saved["state"] = {
        i: {"momentum_buffer": b.to(torch.float8_e4m3fn)} for i, b in enumerate(buffers)
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    found = restore_state(optimizer, names, "optimizer_state_dict", saved)
    assert found.used, found.reason
    for p, wanted in zip(model.parameters(), buffers, strict=True):
        mine = optimizer.state[p]["momentum_buffer"]
        assert mine.dtype == torch.float32 and torch.equal(mine, wanted)
    saved["state"][0]["momentum_buffer"] = torch.full((2, 3), 1e300, dtype=torch.float64)
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    found = restore_state(fresh, names, "optimizer_state_dict", saved)
    assert not found.used and "NaN or Inf" in found.reason
