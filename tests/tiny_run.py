"""The tiny training run several test modules share: a 4-input MLP on 48 synthetic examples,
trained 10 steps with checkpoints at 0, 5 and 10 (seconds on a CPU)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conetool import paths
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


#: The tiny run's MLP (4 -> 6 -> 3, tanh) with its layers renamed (``body``, ``head``): a model
#: rewritten by the user, whose keys none of the run's checkpoints has; ``make_four`` gives 4
#: logits whatever the data's classes. Tests write it as a module of a name of their own.
RENAMED_MODELS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, outputs)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def make(num_classes):
    return Net(num_classes)


def make_four(num_classes):
    return Net(4)
"""


def as_torch(run: Path, folder: Path, legacy: bool = False) -> Path:
    """The run's checkpoints as torch.save files ``step_N.pt`` (zip, or legacy pickles)."""
    folder.mkdir()
    for step in STEPS:
        state = load_file(str(paths.checkpoint(run, step)))
        torch.save(state, folder / f"step_{step}.pt", _use_new_zipfile_serialization=not legacy)
    return folder
