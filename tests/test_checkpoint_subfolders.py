"""Checkpoints in subfolders are not read; conetool says where they are instead of staying silent.

A researcher points at ``runs/`` whose runs sit in ``runs/seed0/``, or keeps some checkpoints
one level down: the empty-directory error names the subfolder to pass, and a directory with
checkpoints of its own notes the ones it does not read (``kernels``, ``inspect``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conetool import paths
from conetool.checkpoints import inspect_checkpoints, list_checkpoints
from conetool.errors import CheckpointError, SpecError
from conetool.pipeline.resolve import resolve_spec


def write(directory: Path, *steps: int) -> None:
    """What `conetool train` writes per step: the checkpoint and its optimizer state."""
    directory.mkdir(parents=True, exist_ok=True)
    for step in steps:
        save_file({"w": torch.full((2,), float(step))}, str(paths.checkpoint(directory, step)))
        save_file({"m": torch.ones(2)}, str(paths.optimizer_state(directory, step)))


def test_a_folder_of_runs_names_the_run_folder_to_pass(tmp_path: Path):
    write(tmp_path / "runs" / "seed0", 0, 10, 20)
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path / "runs")
    text = str(e.value)
    assert "its subfolder seed0/ (3 checkpoints)" in text  # optimizer states not counted
    assert f"'{tmp_path / 'runs' / 'seed0'}'" in text


def test_several_runs_are_each_named(tmp_path: Path):
    write(tmp_path / "runs" / "seed0", 0, 10)
    write(tmp_path / "runs" / "seed1", 0)
    (tmp_path / "runs" / "logs").mkdir()  # a subfolder without checkpoints is not named
    (tmp_path / "runs" / "logs" / "events.txt").write_text("x")
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path / "runs")
    text = str(e.value)
    assert "subfolders seed0/ (2 checkpoints), seed1/ (1 checkpoint)" in text
    assert "logs/ (" not in text


def test_checkpoints_beside_a_subfolder_of_checkpoints_note_the_subfolder(tmp_path: Path):
    run = tmp_path / "run"
    write(run, 0, 10)
    write(run / "old", 5, 15)
    notes: list[str] = []
    refs = list_checkpoints(run, warn=notes.append)
    assert [r.step for r in refs] == [0, 10]  # still not read
    assert len(notes) == 1
    assert "not read: subfolder old/ (2 checkpoints)" in notes[0]
    assert f"'{run / 'old'}'" in notes[0]
    rows_notes: list[str] = []
    rows = inspect_checkpoints(run, warn=rows_notes.append)
    assert [r.step for r in rows] == [0, 10]
    assert rows_notes == notes


def test_no_note_for_a_store_optimizer_states_hidden_files_or_hf_folders(tmp_path: Path):
    run = tmp_path / "run"
    write(run, 0, 10)
    store = run / "conetool-out"  # a store kept inside the run: its probe is no checkpoint
    store.mkdir()
    (store / paths.MANIFEST_NAME).write_text("{}")
    save_file({"x": torch.zeros(2)}, str(store / paths.PROBE_NAME))
    extras = run / "extras"
    extras.mkdir()
    save_file({"m": torch.ones(2)}, str(extras / "step_000001.optim.safetensors"))
    save_file({"m": torch.ones(2)}, str(extras / ".step_000002.safetensors"))
    (extras / "optimizer.pt").write_bytes(b"")
    hf = run / "checkpoint-30"  # a Hugging Face folder is a checkpoint, read as one
    hf.mkdir()
    save_file({"w": torch.zeros(2)}, str(hf / "model.safetensors"))
    (hf / "trainer_state.json").write_text(json.dumps({"global_step": 30}))
    notes: list[str] = []
    refs = list_checkpoints(run, warn=notes.append)
    assert [r.step for r in refs] == [0, 10, 30]
    assert notes == []


def test_hf_checkpoint_folders_one_level_down_are_counted(tmp_path: Path):
    hf = tmp_path / "runs" / "trainer_out" / "checkpoint-30"
    hf.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(hf / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"trainer_out/ \(1 checkpoint\)"):
        list_checkpoints(tmp_path / "runs")


def test_a_missing_spec_names_the_subfolder_that_holds_a_run(tmp_path: Path):
    runs = tmp_path / "runs"
    write(runs / "seed0", 0)
    (runs / "seed0" / paths.SPEC_NAME).write_text("[model]\n")
    with pytest.raises(SpecError) as e:
        resolve_spec(runs, None)
    assert f"its subfolder '{runs / 'seed0'}' holds a run" in str(e.value)
    assert "subfolders are not read" in str(e.value)
    with pytest.raises(SpecError, match="Pass --spec SPEC.toml"):  # no run below: as before
        resolve_spec(runs / "seed0" / "missing", None)


def test_a_subfolder_counts_its_checkpoints_not_its_own_subfolders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs / "seed0", 0, 10)
    (runs / "seed0" / "logs").mkdir()  # a folder inside the run is no checkpoint
    (runs / "seed0" / "plots").mkdir()
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(runs)
    assert "seed0/ (2 checkpoints)" in str(e.value)


def test_many_subfolders_are_listed_five_then_counted(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(7):
        write(runs / f"seed{seed}", 0)
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(runs)
    text = str(e.value)
    assert "seed4/ (1 checkpoint) and 2 more" in text
    assert "seed5/" not in text and "seed6/" not in text
    assert f"Pass one run's folder, such as '{runs / 'seed0'}'" in text


def test_one_subfolder_is_the_folder_to_pass(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write(runs / "seed0", 0)
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(runs)
    assert f"Pass that folder, '{runs / 'seed0'}'" in str(e.value)


def test_a_missing_spec_names_at_most_three_run_folders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in range(4):
        write(runs / f"seed{seed}", 0)
        (runs / f"seed{seed}" / paths.SPEC_NAME).write_text("[model]\n")
    with pytest.raises(SpecError) as e:
        resolve_spec(runs, None)
    text = str(e.value)
    assert f"subfolders '{runs / 'seed0'}', '{runs / 'seed1'}', '{runs / 'seed2'}' ... " in text
    assert "seed3" not in text and "hold runs" in text


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("old", "model.pt"),
        ("best", "model.pth"),
        ("backup", "model.pt"),
        ("old", "model.safetensors"),
        ("old", "pytorch_model.bin"),
    ],
)
def test_a_subfolder_not_named_for_a_step_is_noted_whatever_its_weights_are_named(
    tmp_path: Path, folder: str, name: str
) -> None:
    """``old/model.pt`` beside a run's flat files broke the run ("no step recoverable") once a
    folder's model.pt was read (step_N/model.pt); ``old/model.safetensors`` did before. A folder
    whose name gives no step and that holds no trainer_state.json is a subfolder not read, said
    in a warning, whatever its weights file is called; step_N/model.pt is still read."""
    run = tmp_path / "run"
    write(run, 0, 10)
    (run / folder).mkdir()
    weights = {"w": torch.full((2,), 5.0)}
    if name.endswith(".safetensors"):
        save_file(weights, str(run / folder / name))
    else:
        torch.save(weights, run / folder / name)
    notes: list[str] = []
    assert [r.step for r in list_checkpoints(run, warn=notes.append)] == [0, 10]
    assert len(notes) == 1 and f"not read: subfolder {folder}/ (1 checkpoint)" in notes[0], notes
    assert "step_N/" in notes[0], notes
    (run / "step_20").mkdir()  # a folder named for its step is one step, as before
    torch.save({"w": torch.full((2,), 20.0)}, run / "step_20" / "model.pt")
    assert [r.step for r in list_checkpoints(run, warn=notes.append)] == [0, 10, 20]


def test_a_subfolder_not_named_for_a_step_is_read_by_its_trainer_state_or_step_regex(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    write(run, 0, 10)
    (run / "final").mkdir()
    save_file({"w": torch.full((2,), 30.0)}, str(run / "final" / "model.safetensors"))
    (run / "final" / "trainer_state.json").write_text(json.dumps({"global_step": 30}))
    assert [r.step for r in list_checkpoints(run, warn=lambda _: None)] == [0, 10, 30]
    runs = tmp_path / "runs"  # a loop's run500/, read by the regex given for it
    for step in (500, 1000):
        (runs / f"run{step}").mkdir(parents=True)
        torch.save({"w": torch.full((2,), 1.0)}, runs / f"run{step}" / "model.pt")
    refs = list_checkpoints(runs, step_regex=r"run(\d+)", warn=lambda _: None)
    assert [r.step for r in refs] == [500, 1000]


def test_runs_saved_as_folders_per_step_are_counted_and_named(tmp_path: Path) -> None:
    # Was: runs/seed0/step_0/model.pt counted as no checkpoint, so `runs` got "no checkpoints
    # in 'runs' (it holds: seed0/, seed1/)" instead of the run folders to pass; a folder read by
    # its trainer_state.json was not counted either, nor named among the folders read.
    runs = tmp_path / "runs"
    for step in (0, 10):
        (runs / "seed0" / f"step_{step}").mkdir(parents=True)
        torch.save(
            {"w": torch.full((2,), float(step))}, runs / "seed0" / f"step_{step}" / "model.pt"
        )
    final = runs / "seed1" / "final"  # read by its trainer_state.json
    final.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(final / "model.safetensors"))
    (final / "trainer_state.json").write_text(json.dumps({"global_step": 30}))
    (runs / "seed1" / "logs").mkdir()  # no checkpoint
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(runs)
    text = str(e.value)
    assert "subfolders seed0/ (2 checkpoints), seed1/ (1 checkpoint)" in text, text
    assert "holding trainer_state.json" in text, text
    assert [r.step for r in list_checkpoints(runs / "seed0", warn=lambda _: None)] == [0, 10]
    assert [r.step for r in list_checkpoints(runs / "seed1", warn=lambda _: None)] == [30]
    run = tmp_path / "run"  # beside a run's own files: the warning counts them alike
    write(run, 0)
    shutil.copytree(runs / "seed0", run / "old")
    notes: list[str] = []
    assert [r.step for r in list_checkpoints(run, warn=notes.append)] == [0]
    (note,) = notes
    assert "not read: subfolder old/ (2 checkpoints)" in note, note
    assert "checkpoint-N/ and step_N/, or holding trainer_state.json" in note, note
