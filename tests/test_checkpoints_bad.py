"""Bad checkpoint input: each case gets a message naming the file and the fix, and nothing else lost.

Every test builds a directory with real files in tmp_path. Cases that would need a non-root user
(unreadable files) are simulated by injecting the PermissionError; the real chmod test runs only
when the tests do not run as root.
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from conetool import paths
from conetool.checkpoints import (
    _hashed_reads,
    _opening,
    _safetensors_format,
    fingerprint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    read_state_dict,
)
from conetool.errors import CheckpointError, FactoryMismatchError, ModelError


def _reads_everything() -> bool:
    """True when chmod 000 does not stop this process (root), so real permission tests skip."""
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return False
        return True


READS_EVERYTHING = _reads_everything()


class Net(nn.Module):
    def __init__(self, classes: int = 3, extra: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, classes)
        if extra:
            self.head = nn.Linear(5, 2)


def state(seed: int, classes: int = 3, extra: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Net(classes, extra).state_dict().items()}


def write(directory: Path, step: int, sd: dict[str, torch.Tensor] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = paths.checkpoint(directory, step)
    save_file(state(step) if sd is None else sd, str(path), metadata={"step": str(step)})
    return path


def good_dir(directory: Path, steps: tuple[int, ...] = (0, 100, 200)) -> None:
    for step in steps:
        write(directory, step)


def problem(directory: Path, **kwargs: object) -> str:
    """The message of the CheckpointError that listing ``directory`` raises."""
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(directory, **kwargs)  # type: ignore[arg-type]
    return str(e.value)


def skipped(directory: Path, expected_steps: list[int]) -> list[str]:
    """List with skip_bad: the good checkpoints survive, each bad one becomes one warning."""
    warnings: list[str] = []
    refs = list_checkpoints(directory, skip_bad=True, warn=warnings.append)
    assert [r.step for r in refs] == expected_steps
    return warnings


# ------------------------------------------------------------------------------------------------
# directories


def test_missing_directory(tmp_path: Path):
    msg = problem(tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg and "--out" in msg


def test_empty_directory(tmp_path: Path):
    msg = problem(tmp_path)
    assert str(tmp_path) in msg and "it is empty" in msg and "*.safetensors" in msg


def test_directory_without_checkpoints_lists_what_is_there(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "runs").mkdir()
    save_file({"m": torch.ones(2)}, str(paths.optimizer_state(tmp_path, 100)))
    msg = problem(tmp_path)
    assert "no checkpoints" in msg
    assert "notes.txt" in msg and "runs/" in msg and "step_000100.optim.safetensors" in msg
    assert "optimizer states" in msg


@pytest.mark.skipif(READS_EVERYTHING, reason="running as root (or with CAP_DAC_OVERRIDE)")
def test_unreadable_directory(tmp_path: Path):
    d = tmp_path / "ckpts"
    good_dir(d)
    d.chmod(0)
    try:
        msg = problem(d)
    finally:
        d.chmod(0o755)
    assert "permission denied" in msg and "chmod" in msg


# ------------------------------------------------------------------------------------------------
# not safetensors, truncated, not torch


def test_not_a_safetensors_file(tmp_path: Path):
    good_dir(tmp_path)
    bad = tmp_path / "step_000300.safetensors"
    bad.write_text("this is a text file, not a checkpoint at all")
    msg = problem(tmp_path)
    assert f"'{bad}' is not a safetensors file" in msg and "--skip-bad" in msg
    (w,) = skipped(tmp_path, [0, 100, 200])
    assert str(bad) in w


def test_a_torch_file_named_safetensors_is_told_to_be_renamed(tmp_path: Path):
    bad = tmp_path / "step_5.safetensors"
    torch.save(state(0), bad)
    msg = problem(tmp_path)
    assert str(bad) in msg and "torch.save" in msg and "rename it to 'step_5.pt'" in msg


def test_a_legacy_pickle_named_safetensors_is_told_to_be_renamed(tmp_path: Path):
    bad = tmp_path / "step_5.safetensors"
    torch.save(state(0), bad, _use_new_zipfile_serialization=False)  # starts with 0x80 0x02
    assert bad.read_bytes()[:1] == b"\x80"
    msg = problem(tmp_path)
    assert str(bad) in msg and "torch.save" in msg and "rename it to 'step_5.pt'" in msg


def test_a_safetensors_header_length_that_begins_like_a_pickle_is_read(tmp_path: Path):
    # A header length of 128 mod 256 puts 0x80 first, as a pickle has; the JSON header's '{' at
    # byte 8 tells them apart (1 file in 256 hit this, Hugging Face shards among them).
    sd = state(0)
    path = tmp_path / "step_7.safetensors"
    for pad in range(600):
        save_file(sd, str(path), metadata={"step": "7", "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    head = path.read_bytes()[:9]
    assert head[0] == 0x80 and head[8:9] == b"{"
    assert _safetensors_format.read_header(path).metadata["pad"] == "x" * pad
    loaded = read_checkpoint(path)
    assert loaded.state_dict.keys() == sd.keys()
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in sd.items())
    assert loaded.ref.step == 7


@pytest.mark.parametrize("keep", [4, 20, -10])
def test_truncated_safetensors(tmp_path: Path, keep: int):
    good_dir(tmp_path)
    bad = write(tmp_path, 300)
    data = bad.read_bytes()
    bad.write_bytes(data[:keep])
    msg = problem(tmp_path)
    assert str(bad) in msg
    if keep == 4:
        assert "only 4 bytes" in msg
    else:
        assert "is truncated" in msg and "still writing" in msg
    skipped(tmp_path, [0, 100, 200])


def test_truncated_and_foreign_torch_files(tmp_path: Path):
    good_dir(tmp_path)
    torch.save(state(1), tmp_path / "step_300.pt")
    data = (tmp_path / "step_300.pt").read_bytes()
    (tmp_path / "step_300.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "step_400.bin").write_text("hello")
    msg = problem(tmp_path)
    assert "step_300.pt' is truncated or corrupt" in msg
    assert "step_400.bin' is not a torch.save checkpoint" in msg
    assert msg.startswith("2 unusable checkpoint(s)")  # one error lists every problem
    assert len(skipped(tmp_path, [0, 100, 200])) == 2


def test_torch_file_that_is_not_a_state_dict(tmp_path: Path):
    """Named on its own, a torch.save file of no tensors by name is an error saying what it
    holds (in a directory it is not read, with a note: tests/test_checkpoints_torch.py)."""
    path = tmp_path / "step_3.pt"
    torch.save([torch.ones(2)], path)
    with pytest.raises(CheckpointError, match=r"step_3\.pt' holds a list, not a state dict"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match=r"step_3\.pt' holds a list, not a state dict"):
        list_checkpoints(path, warn=lambda _: None)


def test_pickles_with_arbitrary_objects_are_never_unpickled(tmp_path: Path):
    marker = tmp_path / "code_ran"

    class Evil:
        def __reduce__(self):  # would create the marker file if unpickled
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "epoch=0-step=9.ckpt"
    torch.save({"state_dict": state(0), "hyper_parameters": Evil()}, path)
    # The listing reads each torch.save file's pickle (for a stored step), so it says so at once.
    msg = problem(tmp_path, warn=lambda _: None)
    assert "epoch=0-step=9.ckpt' cannot be read with torch.load(weights_only=True)" in msg
    assert "never unpickles" in msg and "safetensors.torch.save_file" in msg
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    assert "cannot be read with torch.load(weights_only=True)" in str(e.value)
    assert not marker.exists()


def test_a_whole_model_saved_with_torch_save_is_told_how_to_take_its_state_dict(tmp_path: Path):
    # torch.save(model, path), not model.state_dict(): the advice said only "take the model's
    # state dict (sd['state_dict'] for Lightning)", and torch's reason, ending with a period,
    # was followed by another ("... if you trust this class/function.. conetool never ...")
    path = tmp_path / "step_5.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    msg = str(e.value)
    assert "torch.nn.modules.linear.Linear" in msg, msg
    assert "sd.state_dict() for a whole model saved with torch.save(model)" in msg, msg
    assert ".." not in msg, msg


# ------------------------------------------------------------------------------------------------
# steps


def test_two_files_with_the_same_step(tmp_path: Path):
    good_dir(tmp_path)
    torch.save(state(5), tmp_path / "ckpt-100.pt")
    msg = problem(tmp_path)
    assert "two checkpoints have step 100" in msg
    assert "step_000100.safetensors" in msg and "ckpt-100.pt" in msg
    assert "Keep one of them" in msg
    warnings = skipped(tmp_path, [0, 200])  # both are left out: neither can be chosen safely
    assert len(warnings) == 1 and "left out 2 files: two checkpoints have step 100" in warnings[0]


def test_four_files_with_the_same_step_are_counted_and_listed(tmp_path: Path):
    """Four files of one step read "two checkpoints have step 100: 'a' and 'b' and 'c' and 'd'"."""
    good_dir(tmp_path)
    for name in ("ckpt-100.pt", "model_100.pt", "epoch-0_step-100.pt"):
        torch.save(state(5), tmp_path / name)
    msg = problem(tmp_path)
    assert "4 checkpoints have step 100: '" in msg and "two checkpoints" not in msg
    assert msg.count(" and ") == 1 and msg.count("', '") == 2
    assert "move the others out of the directory" in msg


def test_a_copy_of_a_checkpoint_under_another_name_is_read_once_with_a_note(tmp_path: Path):
    """ckpt_0060.pt beside ckpt_60.pt, the same bytes (a backup): both were refused ("two
    checkpoints have step 60"); the first by name is read, and one note says which is a copy."""
    torch.save(state(1), tmp_path / "ckpt_60.pt")
    shutil.copyfile(tmp_path / "ckpt_60.pt", tmp_path / "ckpt_0060.pt")
    torch.save(state(2), tmp_path / "ckpt_120.pt")
    notes: list[str] = []
    refs = list_checkpoints(tmp_path, warn=notes.append)
    assert [(r.step, r.file.name) for r in refs] == [(60, "ckpt_0060.pt"), (120, "ckpt_120.pt")]
    (note,) = [n for n in notes if "sha256" in n]
    assert "'ckpt_60.pt'" in note and "same step (60)" in note and "sha256" in note
    assert "taken as a copy of 'ckpt_0060.pt' and not read" in note
    # several: one note naming each copy and what it copies
    shutil.copyfile(tmp_path / "ckpt_120.pt", tmp_path / "ckpt_0120.pt")
    notes.clear()
    refs = list_checkpoints(tmp_path, warn=notes.append)
    assert [r.file.name for r in refs] == ["ckpt_0060.pt", "ckpt_0120.pt"]
    (note,) = [n for n in notes if "sha256" in n]
    assert note.startswith("2 files in ")
    assert "'ckpt_60.pt' of 'ckpt_0060.pt' (step 60)" in note
    assert "'ckpt_120.pt' of 'ckpt_0120.pt' (step 120)" in note


def test_files_of_one_step_are_hashed_only_when_their_sizes_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Same step, same size, other bytes: still refused, after hashing both; other sizes, or
    no shared step: nothing is hashed (listing reads headers only)."""
    hashed: list[str] = []
    real = _hashed_reads.stream_file

    def counting(path: Path, *, keep: bool) -> object:
        hashed.append(path.name)
        return real(path, keep=keep)

    monkeypatch.setattr(_hashed_reads, "stream_file", counting)
    good_dir(tmp_path)
    assert [r.step for r in list_checkpoints(tmp_path)] == [0, 100, 200] and hashed == []
    same_size = {"step": "100"}  # the same shapes and metadata as step_000100's: the same size
    save_file(state(7), str(tmp_path / "ckpt-100.safetensors"), metadata=same_size)
    assert (tmp_path / "ckpt-100.safetensors").stat().st_size == paths.checkpoint(
        tmp_path, 100
    ).stat().st_size
    msg = problem(tmp_path)
    assert "two checkpoints have step 100" in msg and "Keep one of them" in msg
    assert sorted(hashed) == ["ckpt-100.safetensors", "step_000100.safetensors"]
    hashed.clear()
    (tmp_path / "ckpt-100.safetensors").unlink()
    save_file(state(7, extra=True), str(tmp_path / "ckpt-100.safetensors"))  # larger
    assert "two checkpoints have step 100" in problem(tmp_path) and hashed == []


def test_no_step_recoverable(tmp_path: Path):
    good_dir(tmp_path)
    bad = tmp_path / "weights.safetensors"
    save_file(state(0), str(bad))
    msg = problem(tmp_path)
    assert f"no step recoverable from '{bad}'" in msg
    assert "step_2000.safetensors" in msg and "'step' metadata" in msg and "--step-regex" in msg
    skipped(tmp_path, [0, 100, 200])


def test_no_step_recoverable_from_a_torch_file_advises_its_own_format(tmp_path: Path):
    """A torch.save file has no metadata: its advice names a .pt name, or a 'step' entry of its
    dict (which is read), rather than a metadata key it cannot carry."""
    good_dir(tmp_path)
    bad = tmp_path / "run_a.pt"
    torch.save({"epoch": 3, "model_state_dict": state(0)}, bad)  # an epoch alone is no step
    msg = problem(tmp_path, warn=lambda _: None)
    assert f"no step recoverable from '{bad}'" in msg
    assert "name files like step_2000.pt" in msg and "--step-regex" in msg, msg
    assert "save the step beside the state dict ({'model_state_dict': ..., 'step': 2000})" in msg
    assert "store a 'step' metadata key" not in msg, msg


def test_metadata_step_that_is_not_a_number(tmp_path: Path):
    save_file(state(0), str(tmp_path / "step_1.safetensors"), metadata={"step": "last"})
    msg = problem(tmp_path)
    assert "step_1.safetensors' has safetensors metadata step 'last'" in msg


# ------------------------------------------------------------------------------------------------
# keys and shapes


def test_missing_and_unexpected_keys_are_listed_up_to_ten(tmp_path: Path):
    sd = state(0)
    del sd["fc1.weight"], sd["fc2.bias"]
    for i in range(12):
        sd[f"aux.{i:02d}"] = torch.zeros(1)
    path = write(tmp_path, 100, sd)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), list_checkpoints(tmp_path)[0])
    msg = str(e.value)
    assert f"'{path}' does not fit the model (Net)" in msg
    assert "2 missing key(s): 'fc1.weight', 'fc2.bias'" in msg
    assert "12 unexpected key(s): 'aux.00'" in msg and "'aux.09' and 2 more" in msg
    assert "'aux.10'" not in msg
    assert "[model] arch, num_classes and options" in msg


def test_a_file_without_batchnorm_statistics_is_told_to_save_the_state_dict(tmp_path: Path):
    """Parameters saved alone (no running statistics) are the file's fault, not the spec's."""
    sd = {k: v for k, v in state(0).items() if "running" not in k and "num_batches" not in k}
    path = write(tmp_path, 100, sd)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), list_checkpoints(tmp_path)[0])
    msg = str(e.value)
    assert f"'{path}' does not fit the model (Net)" in msg
    assert "2 missing key(s): 'bn.running_mean', 'bn.running_var'" in msg
    assert "running statistics" in msg and "Save model.state_dict()" in msg, msg
    assert "[model] arch" not in msg, msg
    # Another key missing as well: the spec may be at fault, and the message says so.
    del sd["fc1.weight"]
    write(tmp_path, 100, sd)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), list_checkpoints(tmp_path)[0])
    assert "running statistics" not in str(e.value) and "[model] arch" in str(e.value)


def test_shape_mismatch_names_key_expected_and_found(tmp_path: Path):
    path = write(tmp_path, 100, state(0, classes=10))
    model = Net(classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(model, path)
    msg = str(e.value)
    assert str(path) in msg
    assert "'fc2.weight' expected (3, 5), found (10, 5)" in msg
    assert "'fc2.bias' expected (3), found (10)" in msg
    for k, v in model.state_dict().items():  # nothing half-loaded
        assert torch.equal(v, before[k])


def test_prefix_is_not_stripped_when_keys_still_do_not_match(tmp_path: Path):
    sd = {"module." + k: v for k, v in state(0).items()}
    sd["module.extra"] = torch.zeros(1)
    path = write(tmp_path, 1, sd)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), path)
    msg = str(e.value)
    assert (
        "after stripping the prefix 'module.'" in msg
        and "1 unexpected key(s): 'module.extra'" in msg
    )


def test_a_prefix_conetool_does_not_strip_is_named_with_the_fix(tmp_path: Path):
    # A wrapper of the user's own ("net.", "backbone.encoder."): conetool strips only the known
    # prefixes, and a message of 2n keys should say that one prefix is the whole difference.
    for prefix in ("net.", "backbone.encoder."):
        folder = tmp_path / prefix.strip(".")
        folder.mkdir()
        path = write(folder, 1, {prefix + k: v for k, v in state(0).items()})
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(Net(), path)
        msg = str(e.value)
        assert f"Every key of the checkpoint is the model's with the prefix '{prefix}'" in msg
        assert "strips only 'module.', 'model.', '_orig_mod.'" in msg
        assert not isinstance(e.value, ModelError)  # the file's: saved from a wrapper
    # The other way round: the factory wraps the network the checkpoint holds. That is the
    # model's fault, not the file's (every checkpoint fails alike): a ModelError too.
    path = write(tmp_path, 2, state(0))
    wrapped = torch.nn.Module()
    wrapped.inner = Net()
    with pytest.raises(FactoryMismatchError) as e:
        load_checkpoint(wrapped, path)
    assert isinstance(e.value, CheckpointError) and isinstance(e.value, ModelError)
    assert "Every key of the model is the checkpoint's with the prefix 'inner.'" in str(e.value)
    # Keys that differ otherwise get no such hint.
    sd = state(0)
    sd["head.weight"] = sd.pop("fc2.weight")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), write(tmp_path, 3, sd))
    assert "with the prefix" not in str(e.value) and "[model] arch" in str(e.value)


# ------------------------------------------------------------------------------------------------
# non-finite weights


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_at_load(tmp_path: Path, bad_value: float):
    sd = state(0)
    sd["fc2.weight"][1, 2] = bad_value
    path = write(tmp_path, 700, sd)
    (ref,) = list_checkpoints(tmp_path)  # listing reads headers only: the file looks fine
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), ref)
    msg = str(e.value)
    assert f"'{path}' holds non-finite values in tensor 'fc2.weight'" in msg
    nan = 1 if bad_value != bad_value else 0
    assert f"({nan} NaN, {1 - nan} Inf of 15)" in msg and "leave this step out" in msg
    with pytest.raises(CheckpointError, match="fc2.weight"):
        load_checkpoint(Net(), sd)  # a state dict is checked too
    raw = read_state_dict(ref, check_finite=False)  # opt-out reads it as stored
    assert torch.equal(raw["fc2.weight"].isnan(), sd["fc2.weight"].isnan())


# ------------------------------------------------------------------------------------------------
# mixed runs


def test_a_directory_mixing_two_runs(tmp_path: Path):
    good_dir(tmp_path, (0, 100, 200))
    other = write(tmp_path, 300, state(1, extra=True))
    wider = write(tmp_path, 400, state(2, classes=10))
    msg = problem(tmp_path)
    assert f"'{other}' is not from the same run as 3 other checkpoint(s)" in msg
    assert "it has extra 'head.bias', 'head.weight'" in msg  # (safetensors sorts the keys)
    assert f"'{wider}' is not from the same run" in msg
    assert "shapes differ: 'fc2.bias' (10) vs (3), 'fc2.weight' (10, 5) vs (3, 5)" in msg
    assert "mix 3 runs" in msg and "directory of its own" in msg
    assert len(skipped(tmp_path, [0, 100, 200])) == 2


def test_two_runs_of_equal_size_are_both_flagged(tmp_path: Path):
    write(tmp_path, 0, state(0))
    write(tmp_path, 100, state(1, extra=True))
    msg = problem(tmp_path)
    assert msg.startswith("2 unusable")


def test_ddp_prefix_alone_does_not_count_as_another_run(tmp_path: Path):
    write(tmp_path, 0, state(0))
    write(tmp_path, 100, {"module." + k: v for k, v in state(1).items()})
    assert [r.step for r in list_checkpoints(tmp_path)] == [0, 100]


# ------------------------------------------------------------------------------------------------
# links, permissions, files being written


def test_symlink_loop(tmp_path: Path):
    good_dir(tmp_path)
    loop = tmp_path / "step_000300.safetensors"
    os.symlink(loop.name, loop)
    folder_loop = tmp_path / "checkpoint-400"
    os.symlink(folder_loop.name, folder_loop)
    msg = problem(tmp_path)
    assert f"'{loop}' is a symlink loop" in msg and f"'{folder_loop}' is a symlink loop" in msg
    assert "Remove the link" in msg
    assert len(skipped(tmp_path, [0, 100, 200])) == 2


def test_broken_symlink(tmp_path: Path):
    good_dir(tmp_path)
    link = tmp_path / "step_000300.safetensors"
    os.symlink("/nonexistent/file.safetensors", link)
    assert f"'{link}'" in problem(tmp_path) and "broken symlink" in problem(tmp_path)
    skipped(tmp_path, [0, 100, 200])


def test_symlinked_checkpoints_are_followed(tmp_path: Path):
    real = write(tmp_path / "real", 100)
    (tmp_path / "ckpts").mkdir()
    os.symlink(real, tmp_path / "ckpts" / real.name)
    assert [r.step for r in list_checkpoints(tmp_path / "ckpts")] == [100]


def deny(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    real_open = _opening.open_file

    def fake_open(path: Path):
        if Path(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(_opening, "open_file", fake_open)


def test_unreadable_file_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    good_dir(tmp_path)
    locked = write(tmp_path, 300)
    deny(monkeypatch, locked)
    msg = problem(tmp_path)
    assert f"cannot read '{locked}': permission denied" in msg and "chmod u+r" in msg
    skipped(tmp_path, [0, 100, 200])
    with pytest.raises(CheckpointError, match="permission denied"):
        read_checkpoint(locked)


class _FailingRead(io.BytesIO):
    """A file that opens and then fails to read (a disk or network file system error)."""

    def read(self, size: int | None = -1) -> bytes:
        raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("fault", ["denied", "io_error"])
def test_a_torch_file_that_cannot_be_opened_or_read_is_named_by_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
):
    """The listing's first look at a torch.save file (check_torch_file: its first bytes and zip
    directory) opens it through _opening.open_file, the one indirection every read of a
    checkpoint goes through, and turns an OSError of opening or reading it into an error naming
    the file and the fix; a check that opened the file another way read past the fault (the
    memory-mapped pickle read opens it by name) and listed the file as usable."""
    good_dir(tmp_path)
    bad = tmp_path / "ckpt_300.pt"
    torch.save({"model_state_dict": state(3), "step": 300}, bad)
    if fault == "denied":
        deny(monkeypatch, bad)
    else:
        real_open = _opening.open_file
        monkeypatch.setattr(
            _opening,
            "open_file",
            lambda path: _FailingRead(b"") if Path(path) == bad else real_open(path),
        )
    msg = problem(tmp_path)
    if fault == "denied":
        assert f"cannot read '{bad}': permission denied" in msg and "chmod u+r" in msg, msg
    else:
        assert f"cannot read '{bad}': Input/output error. Check the file and the disk." in msg
    skipped(tmp_path, [0, 100, 200])


@pytest.mark.skipif(READS_EVERYTHING, reason="running as root (or with CAP_DAC_OVERRIDE)")
def test_unreadable_file_chmod(tmp_path: Path):
    good_dir(tmp_path)
    locked = write(tmp_path, 300)
    locked.chmod(0)
    try:
        assert "permission denied" in problem(tmp_path)
        skipped(tmp_path, [0, 100, 200])
    finally:
        locked.chmod(0o644)


def grow_while_reading(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """Append to ``target`` between the start and the end of a read, as a writing run would."""
    real_stat = _hashed_reads._stat

    def stat_after_growing(path: Path) -> os.stat_result:
        if Path(path) == target:
            with open(target, "ab") as f:
                f.write(b"\0" * 64)
        return real_stat(path)

    monkeypatch.setattr(_hashed_reads, "_stat", stat_after_growing)


def test_checkpoint_still_being_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write(tmp_path, 100)
    (ref,) = list_checkpoints(tmp_path)
    size = path.stat().st_size
    grow_while_reading(monkeypatch, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Net(), ref)
    msg = str(e.value)
    assert f"'{path}' changed while conetool was reading it" in msg
    assert f"went from {size} to {size + 64} bytes" in msg
    assert "wait until the run has written it, or rerun" in msg.lower()
    with pytest.raises(CheckpointError, match="changed while"):
        fingerprint(ref)


# ------------------------------------------------------------------------------------------------
# Hugging Face folders and shards


def test_hf_folder_without_weights(tmp_path: Path):
    good_dir(tmp_path)
    folder = tmp_path / "checkpoint-300"
    folder.mkdir()
    torch.save({}, folder / "optimizer.pt")
    msg = problem(tmp_path)
    assert f"'{folder}' holds no model weights" in msg and "optimizer.pt" in msg
    skipped(tmp_path, [0, 100, 200])


def _sharded(folder: Path, files: dict[str, list[str]], sd: dict[str, torch.Tensor]) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for name, keys in files.items():
        if keys:
            save_file({k: sd[k] for k in keys}, str(folder / name))
        weight_map.update({k: name for k in keys or ["fc2.bias"]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_sharded_checkpoint_with_a_missing_shard(tmp_path: Path):
    good_dir(tmp_path)
    sd = state(3)
    keys = list(sd)
    _sharded(
        tmp_path / "checkpoint-300",
        {"model-00001-of-00002.safetensors": keys[:-1], "model-00002-of-00002.safetensors": []},
        sd,
    )
    msg = problem(tmp_path)
    assert "model.safetensors.index.json' names shard(s) that are missing" in msg
    assert "model-00002-of-00002.safetensors" in msg
    skipped(tmp_path, [0, 100, 200])


def test_shards_that_disagree_with_their_index(tmp_path: Path):
    sd = state(3)
    keys = list(sd)
    folder = tmp_path / "checkpoint-300"
    _sharded(
        folder,
        {
            "model-00001-of-00002.safetensors": keys[:4],
            "model-00002-of-00002.safetensors": keys[4:],
        },
        sd,
    )
    save_file({k: sd[k] for k in keys[:3]}, str(folder / "model-00001-of-00002.safetensors"))
    msg = problem(tmp_path)
    assert "do not hold what the index says" in msg and f"'{keys[3]}'" in msg


def test_top_level_shard_without_index(tmp_path: Path):
    good_dir(tmp_path)
    save_file(state(0), str(tmp_path / "model-00001-of-00002.safetensors"))
    msg = problem(tmp_path)
    assert "model-00001-of-00002.safetensors' is a shard" in msg
    assert "model.safetensors.index.json' is missing" in msg


def test_problems_outside_the_selected_steps_are_not_reported(tmp_path: Path):
    good_dir(tmp_path)
    (tmp_path / "step_000900.safetensors").write_bytes(b"broken")
    assert [r.step for r in list_checkpoints(tmp_path, steps=(0, 500))] == [0, 100, 200]
    assert "step_000900" in problem(tmp_path)


def test_all_files_bad_with_skip_bad(tmp_path: Path):
    (tmp_path / "step_1.safetensors").write_bytes(b"x" * 20)
    (tmp_path / "step_2.safetensors").write_bytes(b"y" * 20)
    warnings: list[str] = []
    with pytest.raises(CheckpointError, match="no usable checkpoint left .* all 2 were left out"):
        list_checkpoints(tmp_path, skip_bad=True, warn=warnings.append)
    assert len(warnings) == 2


def test_shard_index_pointing_outside_its_folder(tmp_path: Path):
    import json

    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    save_file(state(0), str(tmp_path / "outside.safetensors"))
    index = {"weight_map": {k: "../outside.safetensors" for k in state(0)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    msg = problem(tmp_path)
    assert "model.safetensors.index.json' is not a valid shard index" in msg


def test_step_selection_is_validated(tmp_path: Path):
    good_dir(tmp_path)
    with pytest.raises(CheckpointError, match="--steps must be START:END"):
        list_checkpoints(tmp_path, steps=(500, 100))
    with pytest.raises(CheckpointError, match="--every must be a positive"):
        list_checkpoints(tmp_path, every=-3)


def test_a_best_copy_that_stores_its_step_is_the_copy_not_the_step_file(tmp_path: Path):
    """best.safetensors with its step in the metadata, the same bytes as model_69.safetensors:
    the step file is read and best.safetensors named as the copy. Was: best.safetensors read
    (first by name), and the note told to move model_69.safetensors out of the directory."""
    save_file(state(1), str(tmp_path / "model_69.safetensors"), metadata={"step": "69"})
    shutil.copyfile(tmp_path / "model_69.safetensors", tmp_path / "best.safetensors")
    notes: list[str] = []
    (ref,) = list_checkpoints(tmp_path, warn=notes.append)
    assert (ref.step, ref.file.name) == (69, "model_69.safetensors")
    (note,) = [n for n in notes if "sha256" in n]
    assert "'best.safetensors' in " in note, note
    assert "taken as a copy of 'model_69.safetensors' and not read" in note, note
