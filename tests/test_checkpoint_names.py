"""Checkpoint names whose number is a date and time (a loop that names its files by when they were
saved): no step, refused naming the file and the fixes, unless the file stores its step or
``--step-regex`` is given. Names whose number reads as a Unix time: kept as steps, with a warning
when every step read from a name is one.

References: the steps the tests store in the files; the names' own digits for --step-regex; the
dates of the Unix times (computed apart: 1764584040 s after 1970 is 2025-12-01 10:14:00 UTC).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conetool.checkpoints import inspect_checkpoints, list_checkpoints, step_from_name
from conetool.checkpoints.discover import checkpoint_listing
from conetool.errors import CheckpointError


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"w": torch.randn(3, 2), "b": torch.randn(3)}


def _problem(directory: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(directory, warn=lambda _: None, **kwargs)  # type: ignore[arg-type]
    return " ".join(str(e.value).split())


@pytest.mark.parametrize(
    ("stem", "form"),
    [
        ("ckpt_20261201101400", "YYYYMMDDhhmmss"),
        ("model-20261201-101400", "YYYYMMDD-hhmmss"),
        ("model_20261201T1014", "YYYYMMDDThhmm"),
        ("ckpt_202612011014", "YYYYMMDDhhmm"),
        ("ckpt_20261201", "YYYYMMDD"),
        ("20261201101400", "YYYYMMDDhhmmss"),
        ("ckpt-2026-12-01", "YYYY-MM-DD"),
        ("weights_2026_02_28", "YYYY_MM_DD"),
    ],
)
def test_a_date_and_time_in_the_name_is_no_step(stem: str, form: str) -> None:
    # Was: each number taken for the step (20261201101400, 20261201, 2026, ...).
    with pytest.raises(CheckpointError) as e:
        step_from_name(stem)
    msg = " ".join(str(e.value).split())
    assert f"'{stem}' is named by a date and time ({form}), not by a training step" in msg, msg
    assert "'step': 2000" in msg, msg
    if form.isalpha() and "T" not in form:  # the date is one number: it may be the step
        assert "--step-regex '" in msg, msg
    else:  # a regex would read one part of the date (the year for ckpt-2026-12-01)
        assert "--step-regex" not in msg and "name the files by their step" in msg, msg


@pytest.mark.parametrize(
    ("stem", "step"),
    [
        ("step_2000", 2000),
        ("ckpt_2026", 2026),  # a year alone is a number like any other
        ("ckpt_20000000", 20000000),  # month 00: no day
        ("ckpt_20261301", 20261301),  # month 13
        ("ckpt_20260230", 20260230),  # 30 February
        ("iter_19991231", 19991231),  # before 2000
        ("ckpt_202612012460", 202612012460),  # 24:60 is no time of day
        ("model_100000000", 100000000),
        ("ckpt-2026-13-01", 2026),  # no month 13
    ],
)
def test_numbers_that_are_no_date_stay_steps(stem: str, step: int) -> None:
    assert step_from_name(stem) == step


def test_a_directory_named_by_date_is_one_line_with_the_fixes(tmp_path: Path) -> None:
    for i, stamp in enumerate(("20261201101400", "20261201113000", "20261201124500")):
        torch.save(_state(i), tmp_path / f"ckpt_{stamp}.pt")
    msg = _problem(tmp_path)
    assert "3 files (ckpt_20261201101400.pt, " in msg, msg
    assert "each file is named by a date and time (YYYYMMDDhhmmss), not by a training" in msg, msg
    assert "pass --step-regex 'ckpt_(\\d+)'" in msg, msg
    # the regex takes the numbers when they really are steps
    refs = list_checkpoints(tmp_path, step_regex=r"ckpt_(\d+)", warn=lambda _: None)
    assert [r.step for r in refs] == [20261201101400, 20261201113000, 20261201124500]


def test_a_file_named_by_date_that_stores_its_step_is_read_by_it(tmp_path: Path) -> None:
    """The stored step wins over the name, and the name's date is no other step to warn of."""
    torch.save({"model_state_dict": _state(0), "step": 0}, tmp_path / "ckpt_20261201101400.pt")
    torch.save({"model_state_dict": _state(1), "step": 500}, tmp_path / "ckpt_20261201113000.pt")
    meta = {"step": "1000"}
    save_file(_state(2), str(tmp_path / "model-20261201-124500.safetensors"), metadata=meta)
    said: list[str] = []
    refs = list_checkpoints(tmp_path, warn=said.append)
    assert [(r.step, r.paths[0].name) for r in refs] == [
        (0, "ckpt_20261201101400.pt"),
        (500, "ckpt_20261201113000.pt"),
        (1000, "model-20261201-124500.safetensors"),
    ]
    assert not any("stores step" in s or "date and time" in s for s in said), said


def test_a_hugging_face_folder_keeps_its_step_even_when_it_reads_as_a_date(tmp_path: Path):
    # The Trainer names checkpoint-N/ by its global step, which trainer_state.json confirms.
    folder = tmp_path / "checkpoint-20261201"
    folder.mkdir()
    save_file(_state(0), str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text('{"global_step": 20261201}')
    assert [r.step for r in list_checkpoints(tmp_path, warn=lambda _: None)] == [20261201]


# ------------------------------------------------------------------ names that read as Unix times
# 1764584040 s after 1970-01-01 UTC is 2025-12-01 10:14:00 UTC; 1,000,000,000 s is 2001-09-09
# 01:46:40 and 2,208,988,800 s is 2040-01-01 00:00:00 (the first second past the range).
TIMES = (1764584040, 1764587640, 1764591240)


def _listing_said(directory: Path, **kwargs: object) -> tuple[list[int], list[str], list[str]]:
    """``(steps, warnings, notes)`` of listing ``directory``."""
    warned: list[str] = []
    noted: list[str] = []
    listing = checkpoint_listing(directory, warn=warned.append, note=noted.append, **kwargs)  # type: ignore[arg-type]
    return [r.step for r in listing.refs], warned, noted


def _unix(said: list[str]) -> list[str]:
    return [" ".join(s.split()) for s in said if "Unix time" in s]


def test_steps_that_all_read_as_unix_times_are_kept_with_one_warning(tmp_path: Path) -> None:
    # Was: taken for steps without a word (a loop naming its files by time.time()).
    for i, stamp in enumerate(TIMES):
        torch.save(_state(i), tmp_path / f"ckpt_{stamp}.pt")
    steps, warned, noted = _listing_said(tmp_path)
    assert steps == list(TIMES)  # not refused: a long run may count that many steps
    (text,) = _unix(warned)
    assert not _unix(noted)
    assert text.startswith(
        "the steps of 3 checkpoints (ckpt_1764584040.pt, ckpt_1764587640.pt, ckpt_1764591240.pt)"
        ", read from their names, are Unix times of 2001-2039 (seconds since 1970: 1764584040 is "
        "2025-12-01 10:14:00 UTC)"
    ), text
    assert str(tmp_path) not in text, text
    assert "({'model_state_dict': ..., 'step': 2000})" in text, text  # the fixes
    assert "(metadata={'step': '2000'})" in text and "--step-regex with a group" in text, text
    assert "pass --step-regex 'ckpt_(\\d+)' to say so, which silences this warning" in text, text
    # that regex silences it and takes the same steps
    steps, warned, _ = _listing_said(tmp_path, step_regex=r"ckpt_(\d+)")
    assert steps == list(TIMES) and not _unix(warned)
    # inspect says it too, once
    said: list[str] = []
    inspect_checkpoints(tmp_path, warn=said.append)
    assert len(_unix(said)) == 1, said


def test_one_safetensors_file_named_by_a_unix_time_is_warned_of(tmp_path: Path) -> None:
    save_file(_state(0), str(tmp_path / "model-1764584040.safetensors"))
    steps, warned, _ = _listing_said(tmp_path)
    assert steps == [1764584040]
    (text,) = _unix(warned)
    assert text.startswith(
        "the step of model-1764584040.safetensors, read from its name, is a Unix time of "
        "2001-2039 (seconds since 1970: 1764584040 is 2025-12-01 10:14:00 UTC)"
    ), text
    assert "pass --step-regex 'model-(\\d+)' to say so" in text, text


@pytest.mark.parametrize(
    ("names", "warned"),
    [
        (["ckpt_1000000000"], True),  # 2001-09-09 01:46:40 UTC, the first
        (["ckpt_2208988799"], True),  # 2039-12-31 23:59:59 UTC, the last
        (["ckpt_999999999"], False),
        (["ckpt_2208988800"], False),
        (["ckpt_2000", "ckpt_1764584040"], False),  # one step that is no such time
        (["step_0001764584"], False),  # zero-padded: step 1,764,584
        (["ckpt_1000000000000"], True),  # the same times in milliseconds: the first
        (["ckpt_2208988799999"], True),  # and the last
        (["ckpt_999999999999", "ckpt_1764584040000"], False),  # one step that is no such time
        (["ckpt_2208988800000"], False),
        (["ckpt_1764584040", "ckpt_1764584040000"], False),  # seconds beside milliseconds
        (["ckpt_1000000000000000"], True),  # in microseconds: the first
        (["ckpt_2208988799999999"], True),  # and the last
        (["ckpt_999999999999999"], False),
        (["ckpt_2208988800000000"], False),
        (["ckpt_1764584040000", "ckpt_1764584040000000"], False),  # ms beside microseconds
    ],
)
def test_the_range_of_unix_times(tmp_path: Path, names: list[str], warned: bool) -> None:
    for i, name in enumerate(names):
        torch.save(_state(i), tmp_path / f"{name}.pt")
    assert bool(_unix(_listing_said(tmp_path)[1])) is warned


def test_steps_that_read_as_unix_times_in_milliseconds_are_warned_of(tmp_path: Path) -> None:
    # int(time.time() * 1000): 1764584040123 ms after 1970 is 2025-12-01 10:14:00.123 UTC
    for i, stamp in enumerate((1764584040123, 1764587640456)):
        torch.save(_state(i), tmp_path / f"ckpt_{stamp}.pt")
    steps, warned, _ = _listing_said(tmp_path)
    assert steps == [1764584040123, 1764587640456]
    (text,) = _unix(warned)
    assert text.startswith(
        "the steps of 2 checkpoints (ckpt_1764584040123.pt, ckpt_1764587640456.pt), read from "
        "their names, are Unix times of 2001-2039 (milliseconds since 1970: 1764584040123 is "
        "2025-12-01 10:14:00 UTC)"
    ), text


def test_steps_that_read_as_unix_times_in_microseconds_are_warned_of(tmp_path: Path) -> None:
    # Was: taken for steps without a word (16 digits, int(time.time() * 1e6)).
    # 1764584040123456 us after 1970 is 2025-12-01 10:14:00.123456 UTC
    for i, stamp in enumerate((1764584040123456, 1764587640456789)):
        torch.save(_state(i), tmp_path / f"ckpt_{stamp}.pt")
    steps, warned, noted = _listing_said(tmp_path)
    assert steps == [1764584040123456, 1764587640456789]  # kept: under 2**53
    (text,) = _unix(warned)
    assert not _unix(noted)
    assert text.startswith(
        "the steps of 2 checkpoints (ckpt_1764584040123456.pt, ckpt_1764587640456789.pt), read "
        "from their names, are Unix times of 2001-2039 (microseconds since 1970: "
        "1764584040123456 is 2025-12-01 10:14:00 UTC)"
    ), text
    assert "pass --step-regex 'ckpt_(\\d+)' to say so, which silences this warning" in text, text
    said: list[str] = []
    inspect_checkpoints(tmp_path, warn=said.append)
    assert len(_unix(said)) == 1, said


def test_a_name_that_reads_as_a_unix_time_in_nanoseconds_says_so(tmp_path: Path) -> None:
    # Was: refused as a step beyond 2**53 without a word of time (19 digits, time.time_ns()).
    # 1764584040123456789 ns after 1970 is 2025-12-01 10:14:00.123456789 UTC
    torch.save(_state(0), tmp_path / "ckpt_1764584040123456789.pt")
    text = _problem(tmp_path)
    assert "'ckpt_1764584040123456789.pt' gives step 1764584040123456789 (by its name)" in (
        text.replace(f"{tmp_path}/", "")
    ), text
    assert "beyond any training run" in text, text
    assert (
        "It reads as a Unix time of 2001-2039 (nanoseconds since 1970: 1764584040123456789 is "
        "2025-12-01 10:14:00 UTC)"
    ) in text, text
    assert "({'model_state_dict': ..., 'step': 2000})" in text, text  # the fixes
    assert "(metadata={'step': '2000'})" in text and "--step-regex with a group" in text, text
    (row,) = inspect_checkpoints(tmp_path, warn=lambda _: None)
    assert row.status == "error" and "nanoseconds since 1970" in (row.problem or ""), row
    # a 19-digit number past 2039 is no such time: the plain refusal
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    torch.save(_state(0), tmp_path / "ckpt_2208988800000000000.pt")
    text = _problem(tmp_path)
    assert "beyond any training run" in text and "Unix time" not in text, text
    # the file's own step is read before the name: no error
    torch.save({"model_state_dict": _state(0), "step": 7}, tmp_path / "ckpt_2208988800000000000.pt")
    assert [r.step for r in list_checkpoints(tmp_path, warn=lambda _: None)] == [7]


def test_steps_stored_in_the_files_or_given_by_the_trainer_are_no_unix_times(tmp_path: Path):
    # the file's own step: a real step count however large
    meta = {"step": "1764584040"}
    save_file(_state(0), str(tmp_path / "ckpt_1764584040.safetensors"), metadata=meta)
    torch.save({"model_state_dict": _state(1), "step": 1764587640}, tmp_path / "b.pt")
    folder = tmp_path / "hf" / "checkpoint-1764591240"  # named by the Trainer, by its step
    folder.mkdir(parents=True)
    save_file(_state(2), str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text('{"global_step": 1764591240}')
    steps, warned, _ = _listing_said(tmp_path)
    assert steps == [1764584040, 1764587640] and not _unix(warned)
    steps, warned, _ = _listing_said(tmp_path / "hf")
    assert steps == [1764591240] and not _unix(warned)
    # a file without a stored step beside them: its name's step is warned of alone
    torch.save(_state(3), tmp_path / "ckpt_1764595000.pt")
    steps, warned, _ = _listing_said(tmp_path)
    assert steps == [1764584040, 1764587640, 1764595000]
    (text,) = _unix(warned)
    assert text.startswith("the step of ckpt_1764595000.pt, read from its name, is a"), text
