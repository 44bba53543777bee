"""inspect_checkpoints (the library half of `conetool inspect`) and the headers-only guarantees."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import save_file
from torch import nn

from conetool import paths
from conetool.checkpoints import (
    _hashed_reads,
    _opening,
    inspect_checkpoints,
    list_checkpoints,
    load,
)
from conetool.errors import CheckpointError


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, classes)


def state(seed: int, classes: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Net(classes).state_dict().items()}


# fc1 4*5+5, bn 5+5+5+5+1, fc2 5*3+3: every element of every tensor, buffers included
NUM_VALUES = 25 + 21 + 18


def write(directory: Path, step: int, sd: dict[str, torch.Tensor] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = paths.checkpoint(directory, step)
    save_file(state(step) if sd is None else sd, str(path), metadata={"step": str(step)})
    return path


def forbid_data_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reads tensor data (a whole-file read or a tensor loader)."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensor data was read")

    monkeypatch.setattr(_hashed_reads, "stream_file", boom)
    monkeypatch.setattr(load, "stream_file", boom)  # read_checkpoint's own name for it
    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    monkeypatch.setattr(safetensors.torch, "load", boom)
    monkeypatch.setattr(safetensors, "safe_open", boom)
    monkeypatch.setattr(torch, "load", boom)


class CountingFile(io.FileIO):
    bytes_read = 0

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")

    def readinto(self, b):
        n = super().readinto(b)
        CountingFile.bytes_read += n or 0
        return n

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        CountingFile.bytes_read += len(data)
        return data


def header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_listing_1000_checkpoints_reads_headers_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    weights = {"w": torch.zeros(64)}  # 256 bytes of data per file, never read
    for step in range(1000):
        save_file(
            weights, str(paths.checkpoint(tmp_path, step * 10)), metadata={"step": str(step * 10)}
        )
    expected = sum(header_bytes(p) for p in tmp_path.iterdir())
    forbid_data_reads(monkeypatch)
    CountingFile.bytes_read = 0
    monkeypatch.setattr(_opening, "open_file", CountingFile)
    refs = list_checkpoints(tmp_path)
    assert [r.step for r in refs] == [10 * s for s in range(1000)]
    assert CountingFile.bytes_read == expected  # 8 + header per file, no tensor byte
    CountingFile.bytes_read = 0
    rows = inspect_checkpoints(tmp_path, model=None)
    assert len(rows) == 1000 and {r.status for r in rows} == {"ok"}
    assert CountingFile.bytes_read == expected


def test_inspect_rows_for_a_mixed_directory(tmp_path: Path):
    ok = write(tmp_path, 100)
    write(tmp_path, 200)
    hf = tmp_path / "checkpoint-300"
    hf.mkdir()
    save_file(state(3), str(hf / "model.safetensors"))
    torch.save(state(4), tmp_path / "step_400.pt")
    (tmp_path / "step_000500.safetensors").write_bytes(b"not a checkpoint")
    save_file(state(6), str(tmp_path / "weights.safetensors"))
    (tmp_path / "notes.txt").write_text("x")
    rows = inspect_checkpoints(tmp_path)
    assert [(r.step, r.file, r.status, r.source) for r in rows] == [
        (100, "step_000100.safetensors", "ok", "safetensors"),
        (200, "step_000200.safetensors", "ok", "safetensors"),
        (300, "checkpoint-300/", "ok", "hf"),
        (400, "step_400.pt", "ok", "torch"),
        (500, "step_000500.safetensors", "error", "safetensors"),
        (None, "weights.safetensors", "error", "safetensors"),
    ]
    assert rows[0].size == ok.stat().st_size
    assert rows[2].size == (hf / "model.safetensors").stat().st_size
    assert [r.num_params for r in rows] == [NUM_VALUES] * 4 + [None, NUM_VALUES]
    assert rows[3].note is not None and "safetensors is preferred" in rows[3].note
    assert rows[0].note is None and rows[0].problem is None and rows[0].fingerprint is None
    assert rows[4].problem is not None and "is not a safetensors file" in rows[4].problem
    assert rows[5].problem is not None and "no step recoverable" in rows[5].problem


def test_inspect_with_a_model_checks_keys_and_shapes_from_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    write(tmp_path, 0)
    write(tmp_path, 100, {"module." + k: v for k, v in state(1).items()})
    wrong = write(tmp_path, 200, state(2, classes=10))
    forbid_data_reads(monkeypatch)
    rows = inspect_checkpoints(tmp_path, model=Net())
    assert [r.status for r in rows[:2]] == ["ok", "ok"]
    # a wider head is both another run (by shapes) and a mismatch with the model; one verdict
    assert (
        rows[2].status == "error" and rows[2].problem is not None and str(wrong) in rows[2].problem
    )


def test_inspect_model_mismatch_for_every_file(tmp_path: Path):
    for step in (0, 100):
        write(tmp_path, step, state(step, classes=10))
    rows = inspect_checkpoints(tmp_path, model=Net(classes=3))
    assert [r.status for r in rows] == ["error", "error"]
    assert "'fc2.weight' expected (3, 5), found (10, 5)" in (rows[0].problem or "")


def test_verify_reads_tensors_checks_finiteness_and_fingerprints(tmp_path: Path):
    good = write(tmp_path, 0)
    sd = state(1)
    sd["fc1.bias"][0] = float("nan")
    write(tmp_path, 100, sd)
    cheap = inspect_checkpoints(tmp_path)
    assert [r.status for r in cheap] == ["ok", "ok"]  # headers cannot show a NaN
    rows = inspect_checkpoints(tmp_path, model=Net(), verify=True)
    assert [r.status for r in rows] == ["ok", "error"]
    assert "non-finite values in tensor 'fc1.bias' (1 NaN, 0 Inf of 5)" in (rows[1].problem or "")
    data = good.read_bytes()
    assert rows[0].fingerprint == f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
    assert rows[0].num_params == NUM_VALUES


def test_verify_reports_a_file_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path, 0)
    growing = write(tmp_path, 100)
    real_stat = _hashed_reads._stat

    def stat_after_growing(path: Path) -> os.stat_result:
        if Path(path) == growing:
            with open(growing, "ab") as f:
                f.write(b"\0")
        return real_stat(path)

    monkeypatch.setattr(_hashed_reads, "_stat", stat_after_growing)
    rows = inspect_checkpoints(tmp_path, verify=True)
    assert [r.status for r in rows] == ["ok", "error"]
    assert "changed while conetool was reading it" in (rows[1].problem or "")


class Unsafe:
    """An arbitrary object: torch.load(weights_only=True) refuses to rebuild it."""


def test_inspect_torch_files_from_their_pickle_only(tmp_path: Path):
    sd = state(1)
    torch.save(
        {"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 1},
        tmp_path / "epoch=1-step=50.ckpt",
    )

    torch.save({"state_dict": sd, "hparams": Unsafe()}, tmp_path / "epoch=2-step=99.ckpt")
    rows = inspect_checkpoints(tmp_path, model=Net())
    assert [(r.step, r.status) for r in rows] == [(50, "ok"), (99, "error")]
    assert rows[0].num_params == NUM_VALUES
    assert "weights_only=True" in (rows[1].problem or "")


def test_inspect_flags_duplicates_and_mixed_runs(tmp_path: Path):
    for step in (0, 100, 200):
        write(tmp_path, step)
    write(tmp_path, 300, state(3, classes=10))
    save_file(state(4), str(tmp_path / "ckpt-100.safetensors"))
    rows = inspect_checkpoints(tmp_path)
    verdicts = {(r.step, r.file): (r.status, r.problem or "") for r in rows}
    assert verdicts[(0, "step_000000.safetensors")][0] == "ok"
    assert "two checkpoints have step 100" in verdicts[(100, "ckpt-100.safetensors")][1]
    assert "two checkpoints have step 100" in verdicts[(100, "step_000100.safetensors")][1]
    assert "mix 2 runs" in verdicts[(300, "step_000300.safetensors")][1]


def test_inspect_reads_a_copy_of_a_checkpoint_once_and_says_so(tmp_path: Path):
    """A backup with another name and the same bytes was two "error" rows (a duplicate step);
    now the first by name is a row of its own and a note says the other is its copy."""
    for step in (0, 100):
        write(tmp_path, step)
    (tmp_path / "step_100.safetensors").write_bytes(paths.checkpoint(tmp_path, 100).read_bytes())
    notes: list[str] = []
    rows = inspect_checkpoints(tmp_path, warn=notes.append)
    assert [(r.step, r.file, r.status) for r in rows] == [
        (0, "step_000000.safetensors", "ok"),
        (100, "step_000100.safetensors", "ok"),
    ]
    (note,) = notes
    assert "'step_100.safetensors'" in note and "copy of 'step_000100.safetensors'" in note


def test_inspect_sharded_hf_counts_all_shards(tmp_path: Path):
    sd = state(1)
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    keys = list(sd)
    weight_map = {}
    for k, part in enumerate((keys[:3], keys[3:]), start=1):
        name = f"model-{k:05d}-of-00002.safetensors"
        save_file({key: sd[key] for key in part}, str(folder / name))
        weight_map.update({key: name for key in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (row,) = inspect_checkpoints(tmp_path, model=Net(), verify=True)
    assert (row.step, row.status, row.source, row.num_params) == (
        10,
        "ok",
        "hf-sharded",
        NUM_VALUES,
    )
    assert row.size == sum((folder / f).stat().st_size for f in set(weight_map.values()))


def test_inspect_raises_only_for_a_missing_or_empty_directory(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoints(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="it is empty"):
        inspect_checkpoints(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"no checkpoints .*a\.txt"):
        inspect_checkpoints(tmp_path)


@pytest.mark.parametrize("keep", [4, 40])
def test_a_file_whose_header_cannot_be_read_shows_its_size(tmp_path: Path, keep: int):
    write(tmp_path, 0)
    bad = write(tmp_path, 5)
    bad.write_bytes(bad.read_bytes()[:keep])
    rows = {row.step: row for row in inspect_checkpoints(tmp_path)}
    assert rows[5].status == "error" and rows[5].size == keep
    assert rows[0].size == paths.checkpoint(tmp_path, 0).stat().st_size


# --- conetool inspect: the torch.save note, of one file and of several ---------------------------


@pytest.mark.parametrize(
    ("steps", "said"),
    [
        ([400], "note: step_400.pt is a torch.save file, read only with"),
        ([0, 400], "note: 2 checkpoints (step_0.pt, step_400.pt) are torch.save files, read only"),
        (  # four are named: a "..." there stood for no name
            [0, 100, 200, 300],
            "note: 4 checkpoints (step_0.pt, step_100.pt, step_200.pt, step_300.pt) are "
            "torch.save files, read only with",
        ),
        (
            [0, 100, 200, 300, 400],
            "note: 5 checkpoints (step_0.pt, step_100.pt, step_200.pt, ..., step_400.pt) are "
            "torch.save files, read only with",
        ),
    ],
)
def test_the_cli_names_the_torch_save_files_of_its_note(tmp_path: Path, steps, said):
    """The rows' note said 'note: a torch.save file, read only ...' once for any number of
    files, naming none of them: for three files, 'a torch.save file'."""
    from typer.testing import CliRunner

    from conetool.cli import app

    for step in steps:
        torch.save(state(step), tmp_path / f"step_{step}.pt")
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert text.count("torch.save file") == 1, text
    assert said in text, text
    assert text.endswith(
        "torch.load(weights_only=True); safetensors is preferred (no pickle, checked from its "
        f"header) {len(steps)} of {len(steps)} checkpoints usable (headers checked)."
    ), text
    quiet = CliRunner().invoke(app, ["inspect", str(tmp_path), "-q"])
    assert quiet.exit_code == 0 and "torch.save" not in quiet.output, quiet.output


@pytest.mark.parametrize("name", ["model.pt", "model.pth"])
def test_the_torch_save_note_of_a_folder_per_step_names_the_file_inside(tmp_path: Path, name):
    """`conetool inspect run/step_0/` (and `run/`) said 'step_0/ is a torch.save file': the
    folder, where the torch.save file is the one inside it; so did kernels' listing."""
    from typer.testing import CliRunner

    from conetool.cli import app

    run = tmp_path / "run"
    for step in (0, 10):
        (run / f"step_{step}").mkdir(parents=True)
        torch.save(state(step), run / f"step_{step}" / name)
    cases = [
        (run / "step_0", f"note: step_0/{name} is a torch.save file, read only"),
        (run, f"note: 2 checkpoints (step_0/{name}, step_10/{name}) are torch.save files"),
    ]
    for given, said in cases:
        shown = CliRunner().invoke(app, ["inspect", str(given)])
        assert shown.exit_code == 0, shown.output
        text = " ".join(shown.output.split())
        assert said in text, text
        assert "step_0/ is a torch.save" not in text, text
        assert re.search(r"│ step_0/ +│", shown.output), shown.output  # the row: the folder
        notes: list[str] = []
        list_checkpoints(given, warn=notes.append)
        assert any(f"step_0/{name} is" in n or f"(step_0/{name}," in n for n in notes), notes
    (row,) = inspect_checkpoints(run / "step_0", note=lambda _: None)
    assert (row.file, row.weights_file) == ("step_0/", f"step_0/{name}"), row


def test_the_torch_save_note_counts_only_usable_checkpoints(tmp_path: Path):
    """A torch.save file with a problem (named by a date, storing no step) was counted among
    the 'N checkpoints ... are torch.save files' of the note as well as listed as a problem."""
    from typer.testing import CliRunner

    from conetool.cli import app

    for step in (0, 400):
        torch.save(state(step), tmp_path / f"step_{step}.pt")
    torch.save(state(0), tmp_path / "ckpt_20261201101400.pt")  # no stored step: an error
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert shown.exit_code == 1, shown.output
    text = " ".join(shown.output.split())
    assert "note: 2 checkpoints (step_0.pt, step_400.pt) are torch.save files" in text, text
    assert "2 of 3 checkpoints usable" in text, text
