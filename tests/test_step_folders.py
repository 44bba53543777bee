"""A plain loop's folder per step (``step_0/model.pt``, ``step_10/model.pt``), read as a folder of
``model.safetensors`` is: the weights file inside, the step from the folder's name. ``model.pt`` was
refused with "Pass one run's folder, such as step_0", though each subfolder is one step, and
passing it found no step; a folder per step whose file has another name is now told which name to
give it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conetool.checkpoints import list_checkpoints, read_state_dict
from conetool.errors import CheckpointError


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in nn.Linear(3, 2).state_dict().items()}


def _write(run: Path, name: str, steps: tuple[int, ...], *, wrapped: bool = False) -> None:
    for step in steps:
        folder = run / f"step_{step}"
        folder.mkdir(parents=True)
        if name.endswith(".safetensors"):
            save_file(_state(step), str(folder / name))
        else:  # a loop's dict, its optimizer state beside it
            sd = _state(step)
            torch.save({"model_state_dict": sd, "step": step} if wrapped else sd, folder / name)
            torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")


@pytest.mark.parametrize(
    ("name", "wrapped"),
    [("model.pt", False), ("model.pt", True), ("model.pth", False), ("model.safetensors", False)],
)
def test_a_folder_per_step_is_read_whatever_the_format_of_its_model_file(
    tmp_path: Path, name: str, wrapped: bool
):
    _write(tmp_path, name, (0, 10, 20), wrapped=wrapped)
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.paths) for r in refs] == [
        (step, (tmp_path / f"step_{step}" / name,)) for step in (0, 10, 20)
    ]
    for ref in refs:
        read = read_state_dict(ref)
        assert all(torch.equal(read[k], v) for k, v in _state(ref.step).items())


def test_a_folder_per_step_with_another_file_name_is_told_the_name_to_give_it(tmp_path: Path):
    _write(tmp_path, "weights.pt", (0, 10))
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path)
    text = str(e.value)
    assert "one run's folder" not in text, text  # each subfolder is one step, not a run
    first = tmp_path / "step_0"
    assert f"mv '{first / 'weights.pt'}' '{first / 'model.pt'}'" in text, text
    assert "are each named for a step" in text, text
