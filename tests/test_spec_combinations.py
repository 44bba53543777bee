"""Spec keys that are each valid but, together, ask for something that does not happen."""

from __future__ import annotations

from typing import Any

import pytest

from conetool import paths
from conetool import spec as spec_module
from conetool.errors import DataError
from conetool.spec import spec_from_dict
from conetool.training import train


def tiny(data: dict[str, Any] | None = None, **train_values: Any) -> spec_module.Spec:
    """A synthetic MLP run of 6 steps, saved every 3, with ``train_values`` over it."""
    raw = {
        "model": {"arch": "mlp", "num_classes": 3, "widths": [4]},
        "data": data or {"dataset": "synthetic", "shape": [4], "num_classes": 3, "train_size": 24},
        "probe": {"size": 6},
        "train": {"steps": 6, "batch_size": 8, "save_every": 3, "eval_every": 3, **train_values},
    }
    return spec_from_dict(raw, source="c.toml")


# --- found after conetool.toml was written ------------------------------------------------------


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_written(tmp_path):
    """It was refused after conetool.toml was written, so the rerun with the batch fixed was
    refused in turn: '--out already holds a run (0 checkpoints ...)'."""
    out = tmp_path / "run"
    with pytest.raises(DataError, match="'train.batch_size' = 32 is larger than the training"):
        train(tiny(batch_size=32), out)
    assert not paths.spec(out).exists()
    assert train(tiny(batch_size=8), out).steps == 6  # the fixed spec trains in the same --out
