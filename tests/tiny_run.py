"""The tiny training run several test modules share: a 4-input MLP on 48 synthetic examples,
trained 10 steps with checkpoints at 0, 5 and 10 (seconds on a CPU)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from conetool.spec import spec_from_dict
from conetool.training import train

#: The spec as a dict; ``tiny_spec`` gives a copy with other hidden widths.
SPEC: dict[str, Any] = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [6], "activation": "tanh"},
    "data": {
        "dataset": "synthetic",
        "shape": [4],
        "num_classes": 3,
        "train_size": 48,
        "test_size": 12,
    },
    "probe": {"size": 6},
    "train": {"steps": 10, "batch_size": 8, "save_every": 5, "eval_every": 5},
}
STEPS = [0, 5, 10]

#: The same kind of run as TOML text, for CLI tests that write a spec file (60 examples at batch
#: 8: 8 iterations per epoch).
SPEC_TOML = """
[model]
arch = "mlp"
num_classes = 3
widths = [8]
[data]
dataset = "synthetic"
shape = [4]
num_classes = 3
train_size = 60
test_size = 30
[probe]
size = 6
[train]
steps = 10
batch_size = 8
save_every = 5
eval_every = 5
"""


def tiny_spec(widths: list[int] | None = None) -> dict[str, Any]:
    """A copy of :data:`SPEC`, with other hidden ``widths`` if given."""
    spec = copy.deepcopy(SPEC)
    if widths is not None:
        spec["model"]["widths"] = list(widths)
    return spec


def train_tiny(folder: Path, spec: dict[str, Any] | None = None) -> Path:
    """Train ``spec`` (default :data:`SPEC`) into ``folder / "ckpts"``; returns that directory."""
    out = Path(folder) / "ckpts"
    train(spec_from_dict(SPEC if spec is None else spec, source="tiny.toml"), out)
    return out


def copy_run(trained: Path, folder: Path) -> Path:
    """A copy of a trained run a test may damage: ``folder / "ckpts"``."""
    out = Path(folder) / "ckpts"
    shutil.copytree(trained, out)
    return out


def run_fixtures(spec: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The fixture pair of a module whose tests use the tiny run of ``spec`` (default
    :data:`SPEC`): ``trained``, trained once per module, and ``run``, a copy per test::

        trained, run = run_fixtures(SPEC)
    """

    @pytest.fixture(scope="module")
    def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return train_tiny(tmp_path_factory.mktemp("run"), spec)

    @pytest.fixture
    def run(trained: Path, tmp_path: Path) -> Path:
        return copy_run(trained, tmp_path)

    return trained, run


def metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()
