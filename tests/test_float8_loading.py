"""Checkpoints holding any float8 kind (or a packed float4) loaded into a model: the range check
of ``check_dtypes`` reads them as float32, since torch's CPU has no min/max for any float8."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conetool.checkpoints import load_checkpoint, read_checkpoint
from conetool.errors import CheckpointError, CheckpointOverflowError

#: every 1-byte floating dtype of this torch that it converts to float32 (the float8 kinds)
FLOAT8 = sorted(
    (
        d
        for d in vars(torch).values()
        if isinstance(d, torch.dtype) and d.is_floating_point and d.itemsize == 1
        if d != getattr(torch, "float4_e2m1fn_x2", None)
    ),
    key=str,
)
MODELS = [torch.float32, torch.float16, torch.bfloat16]


def _saved(tmp_path: Path, weight: torch.Tensor) -> Path:
    path = tmp_path / "step_000001.pt"
    torch.save({"weight": weight}, path)
    return path


def test_every_float8_kind_of_this_torch_is_covered():
    names = {str(d) for d in FLOAT8}
    assert {"torch.float8_e4m3fn", "torch.float8_e5m2"} <= names
    if hasattr(torch, "float8_e8m0fnu"):
        assert "torch.float8_e8m0fnu" in names


@pytest.mark.parametrize("model_dtype", MODELS, ids=str)
@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
def test_a_float8_checkpoint_loads_into_a_wider_model(dtype, model_dtype, tmp_path):
    """float8_e8m0fnu (any model) and float8_e5m2fnuz (a float16 model) raised torch's
    NotImplementedError "aminmax_cpu" from the range check."""
    path = _saved(tmp_path, torch.full((3, 2), 0.5).to(dtype))
    model = nn.Linear(2, 3, bias=False).to(model_dtype)
    load_checkpoint(model, path, warn=lambda _: None)
    assert torch.equal(model.weight.float(), torch.full((3, 2), 0.5))


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fnuz"), reason="no fnuz float8 in this torch")
def test_a_checkpoint_loads_into_a_fnuz_float8_model(tmp_path):
    """Casting the largest value to the model's float8_e4m3fnuz: its isfinite is not implemented
    on the CPU either."""
    path = _saved(tmp_path, torch.full((3, 2), 0.5).to(torch.float8_e5m2))
    model = nn.Linear(2, 3, bias=False).to(torch.float8_e4m3fnuz)
    load_checkpoint(model, path, warn=lambda _: None)
    assert torch.equal(model.weight.float(), torch.full((3, 2), 0.5))


E8M0 = getattr(torch, "float8_e8m0fnu", None)


@pytest.mark.skipif(E8M0 is None, reason="no float8_e8m0fnu in this torch")
def test_e8m0_values_beyond_the_models_range_are_refused_and_tiny_ones_named(tmp_path):
    assert E8M0 is not None
    big = _saved(tmp_path, torch.full((3, 2), 2.0**100).to(E8M0))
    with pytest.raises(
        CheckpointOverflowError, match=r"'weight' \(float8_e8m0fnu, up to 1.268e\+30"
    ):
        load_checkpoint(nn.Linear(2, 3, bias=False).to(torch.float16), big)
    tiny = _saved(tmp_path, torch.full((3, 2), 2.0**-127).to(E8M0))
    said: list[str] = []
    load_checkpoint(nn.Linear(2, 3, bias=False), tiny, warn=said.append)
    assert any("'weight' (float8_e8m0fnu" in m and "smallest normal" in m for m in said)


FLOAT4 = getattr(torch, "float4_e2m1fn_x2", None)


@pytest.mark.skipif(FLOAT4 is None, reason="no float4_e2m1fn_x2 in this torch")
def test_a_packed_float4_tensor_is_refused_naming_it(tmp_path):
    """It was a NotImplementedError from the finiteness check (torch cannot convert it)."""
    assert FLOAT4 is not None
    path = _saved(tmp_path, torch.zeros(3, 2, dtype=torch.uint8).view(FLOAT4))
    assert read_checkpoint(path).state_dict["weight"].dtype == FLOAT4
    with pytest.raises(CheckpointError, match=r"'weight' as float4_e2m1fn_x2 .* Re-save"):
        load_checkpoint(nn.Linear(2, 3, bias=False), path)
