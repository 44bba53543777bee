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


@pytest.mark.parametrize("name", ["step_7", "checkpoint_7", "model_7"])
def test_one_folder_per_step_given_on_its_own_is_read_as_its_step(tmp_path: Path, name: str):
    # Was: "no step recoverable from '.../step_7/model.pt'", though its parent read the folder
    # as step 7 (and checkpoint_7/ without Accelerate's random_states_*.pkl got the same)
    folder = tmp_path / name
    folder.mkdir()
    torch.save(_state(7), folder / "model.pt")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")  # not a checkpoint
    for given in (folder, tmp_path):
        refs = list_checkpoints(given, warn=lambda _: None)
        assert [(r.step, r.paths) for r in refs] == [(7, (folder / "model.pt",))]
    read = read_state_dict(refs[0])
    assert all(torch.equal(read[k], v) for k, v in _state(7).items())


def test_a_folder_named_for_a_step_holding_other_files_is_read_as_a_directory(tmp_path: Path):
    # two checkpoint files (model.pt beside a step_ file): a directory of files, not one step
    folder = tmp_path / "step_7"
    folder.mkdir()
    torch.save(_state(7), folder / "model.pt")
    save_file(_state(3), str(folder / "step_3.safetensors"))
    with pytest.raises(CheckpointError, match="no step recoverable from .*model.pt"):
        list_checkpoints(folder, warn=lambda _: None)


def test_epoch_named_folders_are_read_with_the_iterations_per_epoch(tmp_path: Path):
    for epoch in (1, 2):
        folder = tmp_path / f"epoch_{epoch}"
        folder.mkdir()
        torch.save(_state(epoch), folder / "model.pt")
    refs = list_checkpoints(tmp_path, iterations_per_epoch=100, warn=lambda _: None)
    assert [(r.step, r.paths) for r in refs] == [
        (100 * e, (tmp_path / f"epoch_{e}" / "model.pt",)) for e in (1, 2)
    ]
    with pytest.raises(CheckpointError, match="iterations per epoch"):  # not "not read"
        list_checkpoints(tmp_path, warn=lambda _: None)


def test_the_name_to_give_a_safetensors_file_of_a_folder_per_step_is_model_safetensors(
    tmp_path: Path,
):
    _write(tmp_path, "weights.safetensors", (0, 10))
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path)
    first = tmp_path / "step_0"
    expected = f"mv '{first / 'weights.safetensors'}' '{first / 'model.safetensors'}'"
    assert expected in str(e.value), str(e.value)


def test_folders_per_step_not_each_holding_one_file_get_no_rename_advice(tmp_path: Path):
    _write(tmp_path, "weights.pt", (0,))
    _write(tmp_path, "weights.pt", (10,))
    torch.save(_state(11), tmp_path / "step_10" / "other.pt")  # two checkpoint files in step_10/
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path)
    assert "named for a step and hold" not in str(e.value), str(e.value)
    assert "mv '" not in str(e.value), str(e.value)


def test_a_trainer_output_dir_named_for_a_step_is_still_scanned_whole(tmp_path: Path):
    # its final model is its only checkpoint file, but its checkpoint-N/ and step_N/ folders
    # make it a directory of steps, not one step
    for sub in ("checkpoint-5", "step_5"):
        run = tmp_path / sub.replace("5", "x") / "step_9"
        (run / sub).mkdir(parents=True)
        save_file(_state(5), str(run / sub / "model.safetensors"))
        save_file(_state(9), str(run / "model.safetensors"))
        refs = list_checkpoints(run, warn=lambda _: None)
        assert [(r.step, r.file) for r in refs] == [(5, run / sub)], sub


def test_one_folder_per_step_given_on_its_own_whose_file_stores_a_step_keeps_that_step(
    tmp_path: Path,
):
    folder = tmp_path / "step_7"
    folder.mkdir()
    torch.save({"model_state_dict": _state(7), "step": 700}, folder / "model.pt")
    refs = list_checkpoints(folder, warn=lambda _: None)
    assert [(r.step, r.paths) for r in refs] == [(700, (folder / "model.pt",))]
