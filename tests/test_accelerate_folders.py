"""Accelerate's ``save_state`` with automatic checkpoint naming writes ``checkpoints/checkpoint_0``,
``checkpoint_1``, ... numbered by the count of saves, not by training step. Read as steps 0, 1, 2,
3 without a word, they made the distances per step, the velocities and every step axis wrong; they
are refused, naming the folders, what the numbers are and the fixes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conetool.checkpoints import checkpoint_ref, inspect_checkpoints, list_checkpoints
from conetool.errors import CheckpointError


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in nn.Linear(3, 2).state_dict().items()}


def write_accelerate(folder: Path, seed: int, *, safetensors: bool = True) -> Path:
    """What accelerator.save_state() writes into one automatically named folder."""
    folder.mkdir(parents=True)
    if safetensors:
        save_file(_state(seed), str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(_state(seed), folder / "pytorch_model.bin")
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    torch.save({"last_epoch": 7}, folder / "scheduler.bin")
    (folder / "random_states_0.pkl").write_bytes(pickle.dumps({"random_state": 0}))
    return folder


def test_save_counted_folders_are_refused_naming_what_the_numbers_are(tmp_path: Path):
    run = tmp_path / "project" / "checkpoints"
    for i in range(4):
        write_accelerate(run / f"checkpoint_{i}", i, safetensors=i != 2)
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(run)
    text = str(e.value)
    assert "4 files (checkpoint_0, checkpoint_1, checkpoint_2, checkpoint_3)" in text, text
    assert "counts the saves" in text and "not training steps" in text, text
    assert "step_2000" in text and "--step-regex 'checkpoint_(\\d+)'" in text, text
    with pytest.raises(CheckpointError, match="counts the saves"):  # one folder given alone
        checkpoint_ref(run / "checkpoint_3")


def test_the_fixes_it_names_read_the_run(tmp_path: Path):
    run = tmp_path / "checkpoints"
    for i in range(3):
        write_accelerate(run / f"checkpoint_{i}", i)
    # the numbers are steps (the loop set project_configuration.iteration): the regex says so
    refs = list_checkpoints(run, step_regex="checkpoint_(\\d+)")
    assert [r.step for r in refs] == [0, 1, 2]
    for i, step in enumerate((500, 1000, 1500)):  # renamed for the steps they were saved at
        (run / f"checkpoint_{i}").rename(run / f"step_{step}")
    refs = list_checkpoints(run)
    assert [(r.step, r.file.name) for r in refs] == [
        (500, "step_500"),
        (1000, "step_1000"),
        (1500, "step_1500"),
    ]


def test_a_checkpoint_underscore_folder_without_accelerate_rng_states_keeps_its_name_step(
    tmp_path: Path,
):
    # conservative: only a checkpoint_N folder holding random_states_*.pkl is Accelerate's
    folder = tmp_path / "checkpoint_40"
    folder.mkdir()
    save_file(_state(0), str(folder / "model.safetensors"))
    assert [r.step for r in list_checkpoints(tmp_path)] == [40]


def test_one_save_counted_folder_given_to_kernels_or_inspect_gets_the_accelerate_error(
    tmp_path: Path,
):
    # Was: the folder's contents were listed as a run, and the error was "no step recoverable
    # from .../checkpoint_3/model.safetensors", which said nothing of the save count.
    folder = write_accelerate(tmp_path / "checkpoints" / "checkpoint_3", 3)
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(folder)
    (row,) = inspect_checkpoints(folder)
    assert row.status == "error" and row.problem is not None
    for text in (str(e.value), row.problem):
        assert "counts the saves" in text and str(folder) in text, text
        assert "model.safetensors'" not in text, text
    refs = list_checkpoints(folder, step_regex="checkpoint_(\\d+)")  # the fix it names
    assert [(r.step, r.paths) for r in refs] == [(3, (folder / "model.safetensors",))]


def test_a_save_counted_folder_with_a_trainer_state_takes_its_global_step(tmp_path: Path):
    # trainer_state.json beside the weights gives the step: no save-count error (the folder's
    # number is then checked against it, as a checkpoint-N/ folder's is)
    folder = write_accelerate(tmp_path / "checkpoint_3", 3)
    (folder / "trainer_state.json").write_text('{"global_step": 3}')
    refs = list_checkpoints(tmp_path)
    assert [(r.step, r.file) for r in refs] == [(3, folder)]
