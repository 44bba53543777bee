"""Steps from checkpoint names named by epoch, and --step-regex groups (issue 16, item 3)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from conetool.checkpoints import inspect_checkpoints, list_checkpoints, step_from_name
from conetool.checkpoints.discover import summarize_problems
from conetool.errors import CheckpointError


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"w": torch.randn(3, 2), "b": torch.randn(3)}


@pytest.mark.parametrize(
    "stem, epoch",
    [
        ("epoch_3", 3),
        ("epoch=3", 3),
        ("epoch-3", 3),
        ("epoch3", 3),
        ("model_epoch_3", 3),
        ("ep3", 3),
        ("ep_12", 12),
        ("resnet_ep7", 7),
        ("Epoch_4", 4),
    ],
)
def test_epoch_names_convert_with_iterations_per_epoch(stem: str, epoch: int) -> None:
    assert step_from_name(stem, iterations_per_epoch=23) == epoch * 23
    with pytest.raises(CheckpointError, match="named by epoch.*give a spec"):
        step_from_name(stem)


@pytest.mark.parametrize(
    "stem", ["epoch=3-step=2000", "step_2000", "deep2000x", "model_ep0_it2000"]
)
def test_step_names_win_over_epochs(stem: str) -> None:
    expected = None if stem == "deep2000x" else 2000
    assert step_from_name(stem, iterations_per_epoch=10) == expected


def test_epoch_directory_lists_steps_and_says_so(tmp_path: Path) -> None:
    for epoch in (0, 1, 2, 10):
        torch.save(_state(epoch), tmp_path / f"epoch_{epoch}.pt")
    notes: list[str] = []
    refs = list_checkpoints(tmp_path, iterations_per_epoch=23, warn=notes.append)
    assert [r.step for r in refs] == [0, 23, 46, 230]
    assert any("4 checkpoint(s) are named by epoch: step = epoch x 23" in n for n in notes)


def test_epoch_directory_without_a_spec_is_one_line_with_count_and_fix(tmp_path: Path) -> None:
    for epoch in range(61):
        torch.save(_state(0), tmp_path / f"epoch_{epoch}.pt")
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path)
    message = str(e.value)
    assert message.count("named by epoch") == 1
    assert "61 files (epoch_0.pt, epoch_1.pt, epoch_10.pt, ..., epoch_9.pt)" in message
    assert "give a spec" in message


def test_summarize_problems_keeps_distinct_and_few_problems() -> None:
    a, b, c = Path("/d/a.pt"), Path("/d/b.pt"), Path("/d/c.pt")
    same = [(p, f"'{p}' is broken; fix it") for p in (a, b, c)]
    assert summarize_problems(same) == ["3 files (a.pt, b.pt, c.pt): each file is broken; fix it"]
    assert summarize_problems(same[:2]) == [m for _, m in same[:2]]
    assert summarize_problems([(a, "x"), (b, "y")]) == ["x", "y"]
    # both files of a duplicate step carry the one message that names them both: said once
    twice = f"two checkpoints have step 0: '{a}' and '{b}'"
    assert summarize_problems([(a, twice), (b, twice)]) == [f"2 files: {twice}"]


@pytest.mark.parametrize(
    "regex",
    [
        r"epoch_(\d+)",
        r"ep(\d+)",
        r"epoch=(\d+)\.pt",
        r"EPOCH-(\d+)",
        r"\bepoch_(\d+)",
        r"model_ep(\d+)",
    ],
)
def test_step_regex_whose_group_is_an_epoch_is_refused(tmp_path: Path, regex: str) -> None:
    torch.save(_state(0), tmp_path / "epoch_1.pt")
    with pytest.raises(CheckpointError, match="Name the group 'epoch'"):
        list_checkpoints(tmp_path, step_regex=regex, iterations_per_epoch=5)


@pytest.mark.parametrize("word", ["step_", "mystep-", "sweep", "rep_", "STEP"])
def test_step_regex_whose_group_follows_a_word_ending_in_ep_reads_steps(
    tmp_path: Path, word: str
) -> None:
    # Only "epoch" or "ep" as a word of its own reads an epoch, not "step" (which ends in "ep").
    for step in (10, 20):
        torch.save(_state(step), tmp_path / f"{word}{step}.pt")
    refs = list_checkpoints(tmp_path, step_regex=re.escape(word) + r"(\d+)", warn=print)
    assert [r.step for r in refs] == [10, 20]


def test_step_regex_named_groups(tmp_path: Path) -> None:
    for epoch in (1, 2):
        torch.save(_state(epoch), tmp_path / f"epoch_{epoch}.pt")
    as_epochs = list_checkpoints(
        tmp_path, step_regex=r"epoch_(?P<epoch>\d+)", iterations_per_epoch=5, warn=lambda m: None
    )
    assert [r.step for r in as_epochs] == [5, 10]
    as_steps = list_checkpoints(tmp_path, step_regex=r"epoch_(?P<step>\d+)", warn=print)
    assert [r.step for r in as_steps] == [1, 2]  # the user says they are steps
    plain = list_checkpoints(tmp_path, step_regex=r"_(\d+)", warn=print)  # no "epoch" before it
    assert [r.step for r in plain] == [1, 2]


@pytest.mark.parametrize("stored", [10, 20])
def test_step_regex_matching_a_copy_without_capturing_a_number_says_so(
    tmp_path: Path, stored: int
) -> None:
    # Was: 'ckpt_(\d+)|final' matched final.pt with its group empty; that error ("its group is
    # not a whole number") was dropped with final.pt, left out as a copy named without a step,
    # without a word: even final.pt storing step 20, which no other file gives, was lost.
    for step in (0, 10):
        torch.save(_state(step), tmp_path / f"ckpt_{step}.pt")
    torch.save({"model_state_dict": _state(stored), "step": stored}, tmp_path / "final.pt")
    regex = r"ckpt_(\d+)|final"
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path, step_regex=regex, warn=lambda _: None)
    text = str(e.value)
    said = f"--step-regex '{regex}' matched 'final.pt' ({tmp_path / 'final.pt'}) but captured no"
    assert said in text, text
    assert "number" in text and r"--step-regex 'it(\d+)'" in text, text
    left: list[str] = []  # --skip-bad: left out, and said so
    refs = list_checkpoints(tmp_path, step_regex=regex, skip_bad=True, warn=left.append)
    assert [r.step for r in refs] == [0, 10]
    assert any("final.pt" in m and "captured no number" in m for m in left), left
    rows = inspect_checkpoints(tmp_path, step_regex=regex, warn=lambda _: None)
    (row,) = [r for r in rows if r.file == "final.pt"]
    assert row.status == "error" and "captured no number" in (row.problem or ""), row


@pytest.mark.parametrize(
    ("regex", "group"),
    [(r"(\d+)?\.pt", "its group"), (r"it(?P<step>\d+)|ckpt", "its group 'step'")],
)
def test_step_regex_whose_group_takes_no_part_names_the_flag_the_file_and_the_fix(
    tmp_path: Path, regex: str, group: str
) -> None:
    # Was: "its group is not a whole number; put the group around the digits only", though the
    # group held nothing at all
    torch.save(_state(0), tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(tmp_path, step_regex=regex, warn=lambda _: None)
    text = str(e.value)
    assert f"--step-regex '{regex}' matched 'ckpt.pt'" in text, text
    assert f"captured no number: {group} took no part in the match" in text, text
    assert "not a whole number" not in text, text
