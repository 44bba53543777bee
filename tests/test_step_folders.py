"""A plain loop's folder per step (``step_0/model.pt``, ``step_10/model.pt``), read as a folder of
``model.safetensors`` is: the weights file inside, the step from the folder's name. ``model.pt`` was
refused with "Pass one run's folder, such as step_0", though each subfolder is one step, and
passing it found no step; a folder per step whose file has another name is now told which name to
give it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conetool.checkpoints import (
    CheckpointRef,
    inspect_checkpoints,
    list_checkpoints,
    read_state_dict,
)
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


def _listed(given: Path) -> tuple[list[CheckpointRef], list[str]]:
    said: list[str] = []
    return list_checkpoints(given, warn=said.append), said


def test_a_folder_per_step_whose_file_stores_another_step_gives_the_folders_step_either_way(
    tmp_path: Path,
):
    # Was: step 7 read from the run's directory (the folder's name), 700 given alone (the
    # file's stored step), silently both times: one folder, two steps
    folder = tmp_path / "step_7"
    folder.mkdir()
    torch.save({"model_state_dict": _state(7), "step": 700}, folder / "model.pt")
    (from_run, said_run), (alone, said_alone) = _listed(tmp_path), _listed(folder)
    assert from_run == alone, (from_run, alone)
    assert [(r.step, r.folder, r.paths) for r in alone] == [(7, folder, (folder / "model.pt",))]
    for said in (said_run, said_alone):
        (warning,) = [w for w in said if "stores step 700" in w]
        assert "'step_7/model.pt' stores step 700 (the 'step' entry of its torch.save dict)" in (
            warning
        ), warning
        assert "its folder gives step 7 (by its name), which is taken" in warning, warning
        assert f"mv '{folder}' '{tmp_path / 'step_700'}'" in warning, warning
    for given in (tmp_path, folder):  # inspect shows the same step and says the same
        warned: list[str] = []
        rows = inspect_checkpoints(given, warn=warned.append, note=lambda _: None)
        assert [(r.step, r.file, r.status) for r in rows] == [(7, "step_7/", "ok")], rows
        assert any("stores step 700" in w and "step 7" in w for w in warned), warned


def test_a_folder_per_step_whose_file_stores_its_own_step_is_said_nothing(tmp_path: Path):
    _write(tmp_path, "model.pt", (0, 10), wrapped=True)  # {"model_state_dict": ..., "step": N}
    for given in (tmp_path, tmp_path / "step_10"):
        refs, said = _listed(given)
        assert not [w for w in said if "stores step" in w], said
    assert [r.step for r in refs] == [10]


def _sharded(folder: Path, metadata: dict[str, str] | None) -> None:
    folder.mkdir(parents=True)
    state = _state(7)
    weight_map = {}
    for k, name in enumerate(state):
        shard = f"model-0000{k + 1}-of-00002.safetensors"
        save_file({name: state[name].contiguous()}, str(folder / shard), metadata=metadata)
        weight_map[name] = shard
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")


@pytest.mark.parametrize("stored", [None, "7", "700"])
def test_a_sharded_folder_per_step_given_alone_is_read_as_its_parent_reads_it(
    tmp_path: Path, stored: str | None
):
    # Was: shards storing a step (metadata step) given alone were read as a directory of shards
    # (the index for the file, no folder) and took the stored step, 700 where the folder said 7
    folder = tmp_path / "step_7"
    _sharded(folder, None if stored is None else {"step": stored})
    (from_run, said_run), (alone, said_alone) = _listed(tmp_path), _listed(folder)
    assert from_run == alone, (from_run, alone)
    (ref,) = alone
    assert (ref.step, ref.folder, ref.index) == (7, folder, folder / "model.safetensors.index.json")
    assert ref.source == "hf-sharded"
    for said in (said_run, said_alone):
        differ = [w for w in said if "stores step" in w]
        if stored == "700":
            (warning,) = differ
            shard = "step_7/model-00001-of-00002.safetensors"
            assert f"'{shard}' stores step 700 (safetensors metadata step)" in warning, warning
        else:
            assert not differ, said
    assert read_state_dict(ref).keys() == _state(7).keys()
