"""A researcher's own checkpoints: the step a file stores (safetensors metadata ``step`` or
``global_step``, a torch.save dict's ``step`` or ``global_step`` entry), the other torch.save files
of a run folder (losses, cached data: not checkpoints), and the torch.save note of ``kernels``.

References: the steps and tensors the tests write; the listing's own errors for what stays a
checkpoint (a wrong architecture, an unreadable file).
"""

from __future__ import annotations

import json
import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import SPEC, run_fixtures
from torch import nn
from typer.testing import CliRunner

from conetool import paths
from conetool.checkpoints import (
    _hashed_reads,
    _torch_save,
    inspect_checkpoints,
    list_checkpoints,
    read_state_dict,
)
from conetool.checkpoints import load as checkpoint_load
from conetool.checkpoints.discover import checkpoint_listing
from conetool.cli import app
from conetool.errors import CheckpointError
from conetool.pipeline import kernels

runner = CliRunner()
trained, run = run_fixtures(SPEC)


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, classes)


def state(seed: int, classes: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Net(classes).state_dict().items()}


def listed(directory: Path, **kwargs: object) -> list[tuple[int, str]]:
    refs = list_checkpoints(directory, warn=lambda _: None, **kwargs)  # type: ignore[arg-type]
    return [(r.step, r.paths[0].name) for r in refs]


def problem(directory: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(directory, warn=lambda _: None, **kwargs)  # type: ignore[arg-type]
    return str(e.value)


# ------------------------------------------------------------------------------------------------
# the step a file stores


def test_a_safetensors_global_step_key_gives_the_step(tmp_path: Path):
    # Was: "no step recoverable" (only the metadata key `step` was read).
    save_file(state(0), str(tmp_path / "weights_a.safetensors"), metadata={"global_step": "300"})
    save_file(state(1), str(tmp_path / "weights_b.safetensors"), metadata={"global_step": "600"})
    assert listed(tmp_path) == [(300, "weights_a.safetensors"), (600, "weights_b.safetensors")]
    # `step` first when both are there
    both = {"step": "7", "global_step": "8"}
    save_file(state(2), str(tmp_path / "weights_c.safetensors"), metadata=both)
    assert listed(tmp_path)[0] == (7, "weights_c.safetensors")


def test_a_torch_dict_step_or_global_step_entry_gives_the_step(tmp_path: Path):
    """A plain loop's {"model_state_dict": ..., "step": 1500}, Lightning's .ckpt with a top-level
    global_step (and epoch, which is no step), a 0-dim integer tensor: each is the file's step
    when its name has none. Was: "no step recoverable" for each."""
    torch.save({"model_state_dict": state(0), "step": 1500}, tmp_path / "run_a.pt")
    lightning = {"state_dict": {f"model.{k}": v for k, v in state(1).items()}, "epoch": 2}
    torch.save({**lightning, "global_step": 40}, tmp_path / "run_b.ckpt")
    torch.save({"model": state(2), "global_step": torch.tensor(90)}, tmp_path / "run_c.pth")
    torch.save({"model_state_dict": state(3), "step": 5, "global_step": 6}, tmp_path / "run_d.pt")
    assert listed(tmp_path) == [
        (5, "run_d.pt"),  # `step` before `global_step`, as for safetensors metadata
        (40, "run_b.ckpt"),
        (90, "run_c.pth"),
        (1500, "run_a.pt"),
    ]
    (ref,) = [r for r in list_checkpoints(tmp_path, warn=lambda _: None) if r.step == 1500]
    torch.testing.assert_close(read_state_dict(ref), state(0))


def test_a_stored_step_needs_no_iterations_per_epoch_for_an_epoch_name(tmp_path: Path):
    # Lightning's epoch=2.ckpt (a filename without the step) stores its global_step: no spec
    # needed. Was: the epoch-name error asking for the iterations per epoch.
    sd = {"state_dict": state(0), "epoch": 2, "global_step": 45}
    torch.save(sd, tmp_path / "epoch=2.ckpt")
    assert listed(tmp_path) == [(45, "epoch=2.ckpt")]


def test_an_epoch_entry_alone_and_a_state_dict_tensor_named_step_are_no_step(tmp_path: Path):
    torch.save({"model_state_dict": state(0), "epoch": 3}, tmp_path / "run_a.pt")
    assert "no step recoverable from" in problem(tmp_path)
    (tmp_path / "run_a.pt").unlink()
    # A plain state dict's entries are the model's tensors: one named `step` is no step.
    torch.save({**state(0), "step": torch.tensor(7)}, tmp_path / "ckpt_100.pt")
    assert listed(tmp_path) == [(100, "ckpt_100.pt")]


@pytest.mark.parametrize(
    ("value", "shown"), [(-3, "-3"), (2.5, "2.5"), ("last", "'last'"), (True, "True")]
)
def test_a_stored_step_that_is_not_a_count_is_refused_naming_the_file(
    tmp_path: Path, value: object, shown: str
):
    path = tmp_path / "ckpt_100.pt"
    torch.save({"model_state_dict": state(0), "step": value}, path)
    msg = problem(tmp_path)
    assert f"'{path}' has a 'step' entry of {shown} in its torch.save dict" in msg, msg
    assert "not a whole number of steps" in msg and "--step-regex" in msg, msg
    # --step-regex takes the name's step instead
    assert listed(tmp_path, step_regex=r"ckpt_(\d+)") == [(100, "ckpt_100.pt")]


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), -3.0, torch.tensor(2.5), np.float64(2.5), np.int64(-3), np.True_],
)
def test_a_float_or_numpy_step_that_is_not_a_count_is_refused(tmp_path: Path, value: object):
    path = tmp_path / "ckpt_100.pt"
    torch.save({"model_state_dict": state(0), "step": value}, path)
    msg = problem(tmp_path)
    assert f"'{path}' has a 'step' entry of " in msg and "not a whole number of steps" in msg, msg


def test_a_whole_float_step_is_the_step(tmp_path: Path):
    """float(step) in a torch.save dict, a 0-dim float tensor of it, "2000.0" in safetensors
    metadata (str(float(step))): each is that step. Was: "not a whole number of steps"."""
    torch.save({"model_state_dict": state(0), "step": 69.0}, tmp_path / "run_a.pt")
    torch.save({"model": state(1), "step": torch.tensor(70.0)}, tmp_path / "run_b.pt")
    lightning = {"state_dict": state(2), "global_step": torch.tensor(71.0, dtype=torch.float64)}
    torch.save(lightning, tmp_path / "run_c.ckpt")
    save_file(state(3), str(tmp_path / "run_d.safetensors"), metadata={"step": "72.0"})
    save_file(state(4), str(tmp_path / "run_e.safetensors"), metadata={"global_step": "73.00"})
    assert listed(tmp_path) == [
        (69, "run_a.pt"),
        (70, "run_b.pt"),
        (71, "run_c.ckpt"),
        (72, "run_d.safetensors"),
        (73, "run_e.safetensors"),
    ]
    # metadata that is no whole number stays refused, naming the text
    for text in ("72.5", "1e3", "nan", "-72.0"):
        save_file(state(3), str(tmp_path / "run_d.safetensors"), metadata={"step": text})
        msg = problem(tmp_path)
        assert f"has safetensors metadata step '{text}', which is not a whole number" in msg, msg


def test_a_float_step_past_its_exact_range_is_refused(tmp_path: Path):
    # float32 holds every whole number only up to 2**24: 16777218.0 may be a rounded 16777217
    torch.save({"model_state_dict": state(0), "step": torch.tensor(16777216.0)}, tmp_path / "a.pt")
    assert listed(tmp_path) == [(16777216, "a.pt")]
    torch.save({"model_state_dict": state(1), "step": torch.tensor(16777218.0)}, tmp_path / "b.pt")
    msg = " ".join(problem(tmp_path).split())
    assert "'step' entry of 16777218.0 (a torch.float32 tensor)" in msg, msg
    assert "past 16777216, beyond which float32 does not hold every whole number" in msg, msg
    assert "may have been rounded" in msg and "re-save it with its step as an int" in msg, msg


def test_a_one_element_tensor_step_is_the_step(tmp_path: Path):
    """Some loops save the step as torch.tensor([1500]) (a counter kept as a 1-element tensor):
    it reads as a 0-dim one does, under the same rules. Was: "not a whole number of steps"."""
    torch.save({"model_state_dict": state(0), "step": torch.tensor([1500])}, tmp_path / "a.pt")
    torch.save({"model": state(1), "global_step": torch.tensor([[40.0]])}, tmp_path / "b.ckpt")
    assert listed(tmp_path) == [(40, "b.ckpt"), (1500, "a.pt")]
    # the same rules as a 0-dim tensor: whole, not negative, within float32's exact range
    for value, why in [
        (torch.tensor([2.5]), "which is not a whole number of steps"),
        (torch.tensor([-3]), "which is not a whole number of steps"),
        (torch.tensor([16777218.0]), "past 16777216, beyond which float32"),
        (torch.tensor([2**53 + 2], dtype=torch.int64), "beyond any training run"),
    ]:
        path = tmp_path / "a.pt"
        torch.save({"model_state_dict": state(0), "step": value}, path)
        msg = " ".join(problem(tmp_path).split())
        assert f"'{path}' has a 'step' entry of " in msg and why in msg, (value, msg)
        assert "tensor of shape (1,))" in msg, msg


@pytest.mark.parametrize("value", [torch.tensor([1500, 1600]), torch.zeros(0, dtype=torch.long)])
def test_a_tensor_step_of_other_than_one_element_is_refused_naming_file_and_key(
    tmp_path: Path, value: torch.Tensor
):
    path = tmp_path / "run_a.pt"
    torch.save({"model_state_dict": state(0), "global_step": value}, path)
    msg = " ".join(problem(tmp_path).split())
    shape = tuple(value.shape)
    assert f"'{path}' has a 'global_step' entry of a tensor of shape {shape} in its" in msg, msg
    assert "not one step" in msg and "re-save it with its step as an int" in msg, msg


def test_a_step_entry_of_none_is_no_stored_step(tmp_path: Path):
    """A loop that saves before its counter is set: "step": None (or metadata "None") is no
    stored step; global_step or the name gives it. Was: "not a whole number of steps"."""
    torch.save({"model_state_dict": state(0), "step": None}, tmp_path / "ckpt_100.pt")
    torch.save({"state_dict": state(1), "step": None, "global_step": 40}, tmp_path / "run_b.ckpt")
    save_file(state(2), str(tmp_path / "step_300.safetensors"), metadata={"step": "None"})
    both = {"step": "None", "global_step": "310"}
    save_file(state(3), str(tmp_path / "run_d.safetensors"), metadata=both)
    assert listed(tmp_path) == [
        (40, "run_b.ckpt"),
        (100, "ckpt_100.pt"),
        (300, "step_300.safetensors"),
        (310, "run_d.safetensors"),
    ]
    # no other step: the usual error, saying what the entry holds
    torch.save({"model_state_dict": state(4), "step": None}, tmp_path / "run_e.pt")
    msg = " ".join(problem(tmp_path).split())
    assert "no step recoverable from '" in msg, msg
    assert "run_e.pt' (its dict's 'step' entry is None): name files like" in msg, msg


class Recipe:  # an arbitrary object: never unpickled
    lr = 0.1


def test_a_numpy_step_is_read_weights_only(tmp_path: Path):
    """np.int64(1500), np.float64(...): torch.load(weights_only=True) refused them ("Unsupported
    global: numpy._core.multiarray.scalar"); they are read with only numpy's scalar globals
    allowed, and the step is taken as for an int or a float."""
    torch.save({"model_state_dict": state(0), "step": np.int64(1500)}, tmp_path / "run_a.pt")
    torch.save({"model": state(1), "step": np.float64(1600.0)}, tmp_path / "run_b.pt")
    torch.save({"model": state(2), "global_step": np.int32(1700)}, tmp_path / "run_c.pt")
    torch.save({"model": state(3), "step": np.float32(1800.0)}, tmp_path / "run_d.pt")
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.file.name) for r in refs] == [
        (1500, "run_a.pt"),
        (1600, "run_b.pt"),
        (1700, "run_c.pt"),
        (1800, "run_d.pt"),
    ]
    torch.testing.assert_close(read_state_dict(refs[0]), state(0))  # the full load, too
    # only while the file is read: no numpy global stays allowed in the process
    assert not [g for g in torch.serialization.get_safe_globals() if "numpy" in str(g)]
    with torch.serialization.safe_globals([np.dtype]):  # one the user allowed stays allowed
        assert listed(tmp_path)[0] == (1500, "run_a.pt")
        assert np.dtype in torch.serialization.get_safe_globals()
    # any other global stays refused, beside a numpy step or in place of one
    torch.save({"model": state(0), "step": np.int64(5), "recipe": Recipe()}, tmp_path / "run_a.pt")
    torch.save({"model": state(1), "step": np.array(1600)}, tmp_path / "run_b.pt")
    msg = " ".join(problem(tmp_path).split())
    assert msg.count("cannot be read with torch.load(weights_only=True)") == 2, msg
    assert "test_checkpoints_torch.Recipe" in msg and "_reconstruct" in msg, msg


def test_timms_saved_arguments_are_read_weights_only(tmp_path: Path):
    """timm's train.py saves {"epoch", "arch", "state_dict", "optimizer", "version", "args":
    argparse.Namespace(...), ...}: the Namespace made every such file "cannot be read with
    torch.load(weights_only=True)", and the run had no checkpoint. A Namespace is a bag of
    attributes whose values pass the same allowlist: it is read, its state dict taken."""
    import argparse

    args = argparse.Namespace(model="net", lr=0.1, batch_size=25, sched="cosine", aa=None)
    for step in (0, 10):
        torch.save(
            {"state_dict": state(step), "step": step, "args": args, "version": 2},
            tmp_path / f"run_{step}.pt",
        )
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.file.name) for r in refs] == [(0, "run_0.pt"), (10, "run_10.pt")]
    torch.testing.assert_close(read_state_dict(refs[1]), state(10))  # the full load, too
    assert argparse.Namespace not in torch.serialization.get_safe_globals()  # not left allowed
    # a Namespace holding any other object is still refused, naming that object
    args.recipe = Recipe()
    torch.save({"state_dict": state(0), "step": 0, "args": args}, tmp_path / "run_0.pt")
    msg = " ".join(problem(tmp_path).split())
    assert "cannot be read with torch.load(weights_only=True)" in msg, msg
    assert "test_checkpoints_torch.Recipe" in msg, msg


class _NamespaceWithAClass:
    """Pickles as an argparse.Namespace whose build state sets ``__class__`` (a crafted file)."""

    def __reduce__(self):
        import argparse
        import collections

        return (argparse.Namespace, (), (None, {"__class__": collections.OrderedDict, "x": 1}))


def test_a_namespace_built_with_odd_state_is_refused_naming_the_file(tmp_path: Path):
    """A Namespace whose pickled state sets ``__class__`` escaped the retry of
    load_weights_only as a bare TypeError (a traceback, no file named); it is a file that
    cannot be read with weights_only=True, said like any other, and builds nothing."""
    torch.save(
        {"state_dict": state(0), "step": 0, "args": _NamespaceWithAClass()}, tmp_path / "a.pt"
    )
    torch.save({"state_dict": state(1), "step": 1}, tmp_path / "b.pt")
    msg = " ".join(problem(tmp_path).split())
    assert "a.pt" in msg and "cannot be read with torch.load(weights_only=True)" in msg, msg


def test_timms_pth_tar_files_are_named_with_what_their_numbers_count(tmp_path: Path):
    """A timm run folder (checkpoint-0.pth.tar, ..., last.pth.tar) was "no checkpoints" with
    the list of suffixes read: renamed to .pth, checkpoint-3.pth would be read as step 3, while
    it holds the weights after epoch 4. The error now says so and how to save each with its
    step."""
    for epoch in (0, 1):
        torch.save(
            {"epoch": epoch, "state_dict": state(epoch)}, tmp_path / f"checkpoint-{epoch}.pth.tar"
        )
    torch.save({"epoch": 1, "state_dict": state(1)}, tmp_path / "last.pth.tar")
    msg = " ".join(problem(tmp_path).split())
    assert (
        "'checkpoint-0.pth.tar', 'checkpoint-1.pth.tar', 'last.pth.tar' are .pth.tar files" in msg
    ), msg
    assert "renaming is not enough, as their numbers count epochs, not steps" in msg, msg
    assert "after epoch E + 1, E counting from 0, under 'state_dict'" in msg, msg
    assert f"sd = torch.load('{tmp_path / 'checkpoint-0.pth.tar'}', weights_only=True)" in msg, msg
    assert "N = (E + 1) x iterations per epoch" in msg, msg


def test_an_ema_file_beside_each_checkpoint_is_named_as_such(tmp_path: Path):
    """torch.save(model.state_dict(), f"ep{E}.pth") with torch.save(ema.state_dict(),
    f"ep{E}_ema.pth"): two files of one step were "keep one of them, or pass --step-regex",
    and no regex can leave the EMA files out. The message now says which is the EMA and to
    move those files into a folder of their own."""
    torch.save({"model": state(1), "step": 10}, tmp_path / "run_10.pt")
    torch.save({"model": state(2), "step": 10}, tmp_path / "run_10_ema.pt")
    msg = " ".join(problem(tmp_path).split())
    assert "two checkpoints have step 10" in msg, msg
    assert "'run_10_ema.pt' is named as an EMA of the weights" in msg, msg
    assert "move the EMA files (each step's) into a folder of their own" in msg, msg
    (tmp_path / "run_10_ema.pt").rename(tmp_path / "run_10_theme.pt")  # no EMA by its name
    assert "EMA" not in problem(tmp_path)


def test_names_that_are_the_epoch_each_file_stores_are_warned_of(tmp_path: Path):
    """timm's {"epoch": 3, "state_dict": ...} saved as checkpoint-3.pth was read as step 3
    without a word: the step axis counted epochs, and switch would start its points at the
    wrong place of the schedule. A warning now says so, with the regex that reads epochs."""
    for epoch in (0, 1, 2):
        torch.save(
            {"epoch": epoch, "state_dict": state(epoch)}, tmp_path / f"checkpoint-{epoch}.pth"
        )
    said: list[str] = []
    refs = list_checkpoints(tmp_path, warn=said.append)
    assert [r.step for r in refs] == [0, 1, 2]  # the names' numbers, as before
    msg = " ".join(" ".join(said).split())
    assert "checkpoint-2.pth) are numbered by epoch, not by step" in msg, msg
    assert "('checkpoint-2.pth' stores 'epoch': 2)" in msg, msg
    assert "pass --step-regex 'checkpoint-(?P<epoch>\\d+)'" in msg, msg
    # the regex given: steps from the epochs, and nothing said
    said.clear()
    refs = list_checkpoints(
        tmp_path, warn=said.append, step_regex=r"checkpoint-(?P<epoch>\d+)", iterations_per_epoch=8
    )
    assert [r.step for r in refs] == [0, 8, 16] and not any("numbered by epoch" in w for w in said)
    # a loop naming its files by step, with the epoch beside: nothing said
    for path in tmp_path.iterdir():
        path.unlink()
    for epoch in (0, 1, 2):
        torch.save({"epoch": epoch, "state_dict": state(epoch)}, tmp_path / f"ckpt_{10 * epoch}.pt")
    said.clear()
    assert [r.step for r in list_checkpoints(tmp_path, warn=said.append)] == [0, 10, 20]
    assert not any("numbered by epoch" in w for w in said), said


try:
    from numpy._core import multiarray as np_multiarray
except ImportError:  # numpy before 1.26
    from numpy.core import multiarray as np_multiarray  # type: ignore[no-redef]


class _Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes numpy's scalar global as numpy 1 named it, numpy.core.multiarray.scalar."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is np_multiarray.scalar:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


@pytest.mark.skipif(torch.__version__ < "2.6", reason="torch 2.6 takes a name with a global")
def test_a_numpy_step_saved_under_numpy_1_is_read(tmp_path: Path):
    numpy1 = types.ModuleType("numpy1_pickle")
    numpy1.Pickler = _Numpy1Pickler  # type: ignore[attr-defined]
    payload = {"model_state_dict": state(0), "step": np.int64(1500)}
    torch.save(payload, tmp_path / "run_a.pt", pickle_module=numpy1)
    globs = torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "run_a.pt"))
    assert "numpy.core.multiarray.scalar" in globs, globs
    assert listed(tmp_path) == [(1500, "run_a.pt")]


def test_a_numpy_step_with_a_torch_before_2_5_says_what_reads_it(tmp_path, monkeypatch):
    monkeypatch.delattr(torch.serialization, "safe_globals")  # torch before 2.5 has none
    torch.save({"model_state_dict": state(0), "step": np.int64(1500)}, tmp_path / "run_a.pt")
    msg = " ".join(problem(tmp_path).split())
    assert "cannot be read with torch.load(weights_only=True)" in msg, msg
    assert "is read with torch 2.5 or later; or save the step as an int" in msg, msg


def test_a_step_beyond_any_run_is_refused_naming_the_file(tmp_path: Path):
    """10**30 in a dict was taken, and `distance` then failed with an OverflowError traceback
    (the store's step arrays are int64); past 2**53 a step is refused, wherever it comes from."""
    path = tmp_path / "ckpt_100.pt"
    torch.save({"model_state_dict": state(0), "step": 10**30}, path)
    msg = " ".join(problem(tmp_path).split())
    assert f"'{path}' has a 'step' entry of {10**30} in its torch.save dict" in msg, msg
    assert "beyond any training run: conetool takes steps up to 2**53" in msg, msg
    assert "pass --step-regex 'ckpt_(\\d+)'" in msg, msg
    torch.save({"model_state_dict": state(0), "step": 2**2000}, path)  # no 603-digit message
    assert "has a 'step' entry of a whole number of 2001 bits in its" in problem(tmp_path)
    torch.save({"model_state_dict": state(0), "step": 2**53}, path)  # the largest taken
    assert listed(tmp_path) == [(2**53, "ckpt_100.pt")]
    path.unlink()
    big = str(10**20)
    save_file(state(1), str(tmp_path / "run.safetensors"), metadata={"step": big})
    assert f"has safetensors metadata step '{big}', which is beyond any" in problem(tmp_path)
    (tmp_path / "run.safetensors").unlink()
    save_file(state(1), str(tmp_path / f"step_{big}.safetensors"))  # by the name
    msg = " ".join(problem(tmp_path).split())
    assert f"gives step {big} (by its name), which is beyond any training run" in msg, msg
    assert "rename it for its step (step_2000), or pass --step-regex with a group" in msg, msg
    msg = " ".join(problem(tmp_path, step_regex=r"(\d+)").split())
    assert "(by --step-regex)" in msg and "so that its group holds the step only" in msg, msg


def test_the_stored_step_wins_over_the_name_with_a_warning(tmp_path: Path):
    """As the safetensors metadata `step` always did, a stored step is taken over the name's;
    where the two differ (an old Lightning saved global_step + 1 beside the name's step) a
    warning names the file, both steps and --step-regex. Was: the name's step for torch.save
    files, and no word when metadata overrode a name."""
    torch.save({"state_dict": state(0), "global_step": 100}, tmp_path / "epoch=0-step=99.ckpt")
    save_file(state(1), str(tmp_path / "step_300.safetensors"), metadata={"step": "301"})
    torch.save({"model_state_dict": state(2), "step": 500}, tmp_path / "step_500.pt")  # agrees
    warnings: list[str] = []
    refs = list_checkpoints(tmp_path, warn=warnings.append)
    assert [r.step for r in refs] == [100, 301, 500]
    (said,) = [w for w in warnings if "name" in w]
    text = " ".join(said.split())
    assert "2 checkpoints store a step other than their name's" in text, text
    stored = (
        "such as: 'epoch=0-step=99.ckpt' stores step 100 (the 'global_step' entry of its "
        "torch.save dict)"
    )
    assert stored in text, text
    assert str(tmp_path) not in text, text  # named relative to the directory, as every note is
    assert "its name says 99" in text and "--step-regex" in text, text
    by_name = list_checkpoints(tmp_path, step_regex=r"step=?_?(\d+)", warn=lambda _: None)
    assert [r.step for r in by_name] == [
        99,
        300,
        500,
    ]
    # inspect says the same, once
    notes: list[str] = []
    inspect_checkpoints(tmp_path, warn=notes.append)
    assert sum("other than their name's" in n for n in notes) == 1


def test_one_stored_step_that_its_name_contradicts_is_named_relative_to_the_directory(
    tmp_path: Path,
):
    # Was: the file's full path, where the other notes of a listing name it as in the directory.
    save_file(state(0), str(tmp_path / "step_100.safetensors"), metadata={"step": "4242"})
    for said in (list_checkpoints, inspect_checkpoints):
        warnings: list[str] = []
        said(tmp_path, warn=warnings.append)
        (text,) = [" ".join(w.split()) for w in warnings if "stores step" in w]
        assert text.startswith(
            "'step_100.safetensors' stores step 4242 (safetensors metadata step), its name says "
            "100. The step stored in a file is taken."
        ), text
        assert str(tmp_path) not in text, text


def test_names_counting_epochs_beside_their_stored_steps_are_a_note(tmp_path: Path):
    """A loop saving ckpt_{epoch}.pt with its step inside: every stored step is the name's number
    x the spec's iterations per epoch, so the stored steps are confirmed and a note (which
    --quiet leaves out) says so. Was: a warning on every run, suggesting --step-regex 'it(\\d+)',
    which matches none of these names."""
    for epoch in (0, 1, 2):
        payload = {"model_state_dict": state(epoch), "step": 23 * epoch, "epoch": epoch}
        torch.save(payload, tmp_path / f"ckpt_{epoch}.pt")
    warnings: list[str] = []
    notes: list[str] = []
    listing = checkpoint_listing(
        tmp_path, iterations_per_epoch=23, warn=warnings.append, note=notes.append
    )
    assert [r.step for r in listing.refs] == [0, 23, 46]
    assert not [w for w in warnings if "ckpt_" in w], warnings
    (said,) = [n for n in notes if "by epoch" in n]
    text = " ".join(said.split())
    # named as the torch.save note names them (was "2 checkpoints such as '<full path>' are")
    assert text.startswith("2 checkpoints (ckpt_1.pt, ckpt_2.pt) are numbered by epoch"), text
    assert str(tmp_path) not in text, text
    assert "(ckpt_1.pt: the 'step' entry" in text, text
    assert "23 = 1 x 23 iterations per epoch from the spec" in text, text
    # one file: named alone, relative to its directory
    (tmp_path / "ckpt_2.pt").unlink()
    notes.clear()
    checkpoint_listing(tmp_path, iterations_per_epoch=23, warn=warnings.append, note=notes.append)
    (said,) = [n for n in notes if "by epoch" in n]
    assert " ".join(said.split()).startswith(
        "ckpt_1.pt is numbered by epoch, not by step: it stores its step (the 'step' entry"
    ), said
    torch.save({"model_state_dict": state(2), "step": 46, "epoch": 2}, tmp_path / "ckpt_2.pt")
    # Another batch size (or no spec): the names may be steps; the warning names the regex
    # that reads them, and that regex does.
    for ipe in (22, None):
        warnings.clear()
        checkpoint_listing(tmp_path, iterations_per_epoch=ipe, warn=warnings.append)
        (said,) = [w for w in warnings if "other than their name's" in w]
        assert "pass --step-regex 'ckpt_(\\d+)' (a regex" in " ".join(said.split()), said
    assert listed(tmp_path, step_regex=r"ckpt_(\d+)") == [
        (0, "ckpt_0.pt"),
        (1, "ckpt_1.pt"),
        (2, "ckpt_2.pt"),
    ]


def test_a_name_without_a_step_rule_gets_a_regex_that_reads_it(tmp_path: Path):
    # Was: --step-regex 'it(\d+)', which matches no such name.
    torch.save({"model_state_dict": state(0)}, tmp_path / "run_a_40.pt")
    msg = problem(tmp_path)
    assert "no step recoverable from" in msg and "pass --step-regex 'run_a_(\\d+)'" in msg, msg
    assert listed(tmp_path, step_regex=r"run_a_(\d+)") == [(40, "run_a_40.pt")]
    # a stored step that is no count: the regex of its own name
    torch.save({"model_state_dict": state(0), "step": "last"}, tmp_path / "run_a_40.pt")
    assert "or pass --step-regex 'run_a_(\\d+)' to take the step" in problem(tmp_path)


def test_a_legacy_pickle_storing_its_step_is_told_why_it_is_not_read(tmp_path: Path):
    # Was: "save the step beside the state dict", which this file does.
    payload = {"model_state_dict": state(0), "step": 40}
    torch.save(payload, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(state(1), tmp_path / "run.pt")  # zip format, no step: the usual advice
    msg = " ".join(problem(tmp_path).split())
    legacy, plain = sorted(msg.split("no step recoverable from")[1:])
    assert "legacy.pt': it is a legacy torch.save pickle" in legacy, msg
    assert "whose dict's step is not read" in legacy and "torch.save's default format" in legacy
    assert "save the step beside the state dict" in plain and "legacy torch" not in plain, msg


def test_a_torch_alias_storing_its_step_is_still_a_copy_left_out(tmp_path: Path):
    # last.pt holds the dict of a step saved under its own name too, with other bytes (torch.save
    # writes the file name into the archive): taking its stored step would make two files of
    # that step and refuse both. It is left out as before.
    for step in (0, 10):
        torch.save({"model_state_dict": state(step), "step": step}, tmp_path / f"ckpt_{step}.pt")
    torch.save({"model_state_dict": state(10), "step": 10}, tmp_path / "last.pt")
    assert listed(tmp_path) == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    # named on its own, its stored step is read
    assert listed(tmp_path / "last.pt") == [(10, "last.pt")]


def test_a_torch_alias_storing_a_step_no_other_file_gives_is_read(tmp_path: Path):
    # Was: final.pt, the loop's last step saved under no other name, was left out without a
    # word, and the run lost its last kernel.
    for step in (0, 10):
        torch.save({"model_state_dict": state(step), "step": step}, tmp_path / f"ckpt_{step}.pt")
    torch.save({"model_state_dict": state(20), "step": 20}, tmp_path / "final.pt")
    torch.save({"model_state_dict": state(10), "step": 10}, tmp_path / "best.pt")  # a copy
    assert listed(tmp_path) == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt"), (20, "final.pt")]


def test_an_alias_stands_in_for_its_step_when_the_file_of_that_step_is_unusable(tmp_path: Path):
    # Was: --skip-bad left out the truncated ckpt_20.pt, and final.pt, which stores step 20,
    # stayed left out as its copy: step 20 lost though final.pt held its weights.
    for step in (0, 10, 20):
        torch.save({"model_state_dict": state(step), "step": step}, tmp_path / f"ckpt_{step}.pt")
    whole = (tmp_path / "ckpt_20.pt").read_bytes()
    (tmp_path / "ckpt_20.pt").write_bytes(whole[: len(whole) // 2])  # a copy cut short
    torch.save({"model_state_dict": state(20), "step": 20}, tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match="ckpt_20.pt"):  # without --skip-bad: its error
        list_checkpoints(tmp_path, warn=lambda _: None)
    said: list[str] = []
    refs = list_checkpoints(tmp_path, skip_bad=True, warn=said.append)
    assert [(r.step, r.paths[0].name) for r in refs] == [
        (0, "ckpt_0.pt"),
        (10, "ckpt_10.pt"),
        (20, "final.pt"),
    ]
    read = read_state_dict(refs[2])
    assert all(torch.equal(read[k], v) for k, v in state(20).items())
    (stand_in,) = [m for m in said if "in place of" in m]
    assert "'final.pt'" in stand_in and "'ckpt_20.pt'" in stand_in and "step 20" in stand_in
    notes: list[str] = []
    rows = inspect_checkpoints(tmp_path, warn=notes.append)  # both rows of step 20, and why
    assert [(r.step, r.file, r.status) for r in rows if r.step == 20] == [
        (20, "ckpt_20.pt", "error"),
        (20, "final.pt", "ok"),
    ]
    assert stand_in in notes


def test_the_listing_reads_a_torch_file_memory_mapped_and_weights_only(tmp_path, monkeypatch):
    """Reading the stored step costs the pickle only: torch.load with mmap and weights_only,
    never a full read of the file (stream_file) nor a load without weights_only."""
    torch.save({"model_state_dict": state(0), "step": 1500}, tmp_path / "run_a.pt")
    torch.save([1.0, 2.0], tmp_path / "losses.pt")
    calls: list[dict[str, object]] = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(_torch_save.torch, "load", load)
    streamed: list[Path] = []
    for module in (_hashed_reads, checkpoint_load):  # (load.py holds its own name for it)
        monkeypatch.setattr(module, "stream_file", lambda path, **kw: streamed.append(path))
    assert listed(tmp_path) == [(1500, "run_a.pt")]
    assert len(calls) == 2 and streamed == []
    assert all(c.get("mmap") is True and c.get("weights_only") is True for c in calls), calls


# ------------------------------------------------------------------------------------------------
# other torch.save files of a run folder


def _run_folder_extras(directory: Path) -> None:
    """What a plain loop leaves beside its checkpoints: none of them is a state dict."""
    torch.save([0.9, 0.5, 0.31], directory / "losses.pt")
    torch.save({"train": [0.9, 0.5], "test": [1.0, 0.7]}, directory / "history.pt")
    torch.save({"epochs": 3, "lr": 0.1}, directory / "config.pt")
    torch.save(torch.randn(60, 4), directory / "cached_inputs.pt")
    net = Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.fc2(net.fc1(torch.randn(2, 4))).sum().backward()
    optimizer.step()  # momentum buffers: tensors, under the parameters' numbers
    torch.save(optimizer.state_dict(), directory / "sgd_state.pt")
    torch.save({}, directory / "empty.pt")


def test_torch_files_that_hold_no_state_dict_are_not_read_with_a_note(tmp_path: Path):
    """Was: each one a "no step recoverable" error, so `kernels` refused the folder without
    --skip-bad and `inspect` exited 1."""
    for step in (0, 10):
        torch.save(state(step), tmp_path / f"ckpt_{step}.pt")
    _run_folder_extras(tmp_path)
    warnings: list[str] = []
    notes: list[str] = []
    listing = checkpoint_listing(tmp_path, warn=warnings.append, note=notes.append)
    assert [(r.step, r.paths[0].name) for r in listing.refs] == [
        (0, "ckpt_0.pt"),
        (10, "ckpt_10.pt"),
    ]
    assert listing.left_out == {} and warnings == []
    (said,) = [n for n in notes if "not read" in n]
    text = " ".join(said.split())
    assert "not read: 6 torch.save files" in text and "hold no state dict" in text, text
    for shown in (
        "losses.pt (a list of 3 items)",
        "cached_inputs.pt (a tensor of shape (60, 4))",
        "config.pt (a dict without tensors by name (keys 'epochs', 'lr'))",
        "empty.pt (an empty dict)",
    ):
        assert shown in text, text
    assert "and 1 more" in text  # five named, the sixth counted
    # the sixth alone: an optimizer state says so (was: "a dict without tensors by name (keys
    # 'state', 'param_groups')")
    alone = tmp_path / "alone"
    alone.mkdir()
    torch.save(state(0), alone / "ckpt_0.pt")
    shutil.copyfile(tmp_path / "sgd_state.pt", alone / "optim_100.pt")
    notes.clear()
    checkpoint_listing(alone, warn=warnings.append, note=notes.append)
    (said,) = [n for n in notes if "not read" in n]
    assert "'optim_100.pt' in " in said and "holds an optimizer state (Optimizer.state_dict())" in (
        " ".join(said.split())
    ), said

    rows = inspect_checkpoints(tmp_path, warn=notes.append)
    assert [(r.file, r.status) for r in rows] == [("ckpt_0.pt", "ok"), ("ckpt_10.pt", "ok")]


def test_a_lone_file_that_holds_no_state_dict_is_named_with_what_it_holds(tmp_path: Path):
    torch.save([0.9, 0.5], tmp_path / "losses.pt")
    notes: list[str] = []
    torch.save(state(0), tmp_path / "ckpt_0.pt")
    checkpoint_listing(tmp_path, warn=lambda _: None, note=notes.append)
    assert any(
        f"not read: 'losses.pt' in '{tmp_path}' holds a list of 2 items, not a state dict" in n
        for n in notes
    ), notes
    (tmp_path / "ckpt_0.pt").unlink()
    # a folder of nothing else: the error says what each file holds
    msg = problem(tmp_path)
    assert "no checkpoints in" in msg and "losses.pt (a list of 2 items)" in msg, msg


def test_files_that_hold_tensors_by_name_stay_checkpoints_with_their_errors(tmp_path: Path):
    """A wrong architecture, a dict wrapping a state dict under an unknown key, a dict of data
    tensors, an unreadable file: each still refused, naming the file (only files with no tensor
    by name at all are not checkpoints)."""
    torch.save(state(0), tmp_path / "ckpt_0.pt")
    torch.save(state(1), tmp_path / "ckpt_10.pt")
    torch.save(state(2, classes=10), tmp_path / "ckpt_20.pt")  # another run's architecture
    torch.save({"net": state(3)}, tmp_path / "ckpt_30.pt")
    torch.save({"inputs": torch.randn(6, 4), "labels": torch.arange(6)}, tmp_path / "data.pt")
    whole = (tmp_path / "ckpt_0.pt").read_bytes()
    (tmp_path / "ckpt_40.pt").write_bytes(whole[: len(whole) // 2])  # truncated
    rows = {r.file: r for r in inspect_checkpoints(tmp_path, model=Net(), warn=lambda _: None)}
    assert set(rows) == {f"ckpt_{s}.pt" for s in (0, 10, 20, 30, 40)} | {"data.pt"}
    assert rows["ckpt_0.pt"].status == rows["ckpt_10.pt"].status == "ok"
    assert "fc2.weight" in (rows["ckpt_20.pt"].problem or "")
    assert "holds a dict with keys 'net', not a state dict" in (rows["ckpt_30.pt"].problem or "")
    assert "no step recoverable" in (rows["data.pt"].problem or "")
    assert "truncated or corrupt" in (rows["ckpt_40.pt"].problem or "")
    msg = problem(tmp_path)
    assert "ckpt_30.pt' holds a dict with keys 'net'" in msg and "data.pt" in msg, msg


# ------------------------------------------------------------------------------------------------
# conetool kernels / inspect on a run folder of torch.save files


def _torch_run(run: Path, tmp_path: Path, *, losses: bool = True) -> Path:
    """The tiny run as a plain loop would save it: ckpt_N.pt dicts, losses.pt beside them."""
    pts = tmp_path / "pts"
    pts.mkdir()
    shutil.copy(paths.spec(run), paths.spec(pts))
    for step in paths.checkpoint_steps(run):
        sd = load_file(str(paths.checkpoint(run, step)))
        torch.save({"model_state_dict": sd, "step": step}, pts / f"ckpt_{step}.pt")
    if losses:
        torch.save([0.5, 0.25], pts / "losses.pt")
    return pts


def test_kernels_and_inspect_read_a_folder_with_other_torch_files(run, tmp_path):
    pts = _torch_run(run, tmp_path)
    looked = runner.invoke(app, ["inspect", str(pts)])
    assert looked.exit_code == 0, looked.output
    assert "not read: 'losses.pt'" in " ".join(looked.output.split())
    args = ["kernels", str(pts), "--store", str(tmp_path / "s"), "--device", "cpu"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert " ".join(done.output.split()).count("note: not read: 'losses.pt'") == 1, done.output
    assert sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "s/kernels").iterdir()) == [
        0,
        5,
        10,
    ]
    quiet = runner.invoke(app, [*args, "-q"])  # a note, not a warning of loss
    assert quiet.exit_code == 0 and "losses.pt" not in quiet.output, quiet.output


@pytest.mark.parametrize(
    ("steps", "named"),
    [
        ([400], "step_400.pt is a torch.save file, read only with"),
        ([0, 400], "2 checkpoints (step_0.pt, step_400.pt) are torch.save files, read only"),
        (
            [0, 100, 200, 300, 400],
            "5 checkpoints (step_0.pt, step_100.pt, step_200.pt, ..., step_400.pt) are "
            "torch.save files, read only with",
        ),
    ],
)
def test_the_listing_names_the_torch_save_files_of_its_note(tmp_path: Path, steps, named):
    """The listing's note (what kernels says) said "N checkpoint(s) such as '<full path of the
    first>'": it names them as inspect does, the first three, ..., the last; a safetensors
    checkpoint beside them is not among them."""
    for step in steps:
        torch.save(state(step), tmp_path / f"step_{step}.pt")
    save_file(state(999), str(tmp_path / "step_999.safetensors"))
    notes: list[str] = []
    checkpoint_listing(tmp_path, note=notes.append, warn=notes.append)
    assert len(notes) == 1, notes
    assert notes[0].startswith(named), notes
    assert "safetensors is preferred" in notes[0] and "step_999" not in notes[0], notes


def test_the_torch_save_note_is_said_once_and_quiet_drops_it(run, tmp_path):
    """The note on torch.save files was a warning: printed on every kernels run, --quiet
    included (at the end). It is a note: once, as it comes, and not with --quiet, which keeps
    warnings of loss only."""
    pts = _torch_run(run, tmp_path, losses=False)
    args = ["kernels", str(pts), "--store", str(tmp_path / "s"), "--device", "cpu"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    text = " ".join(loud.output.split())
    assert text.count("are torch.save files") == 1, text
    # named as conetool inspect names them (was "3 checkpoint(s) such as '.../ckpt_0.pt'")
    steps = paths.checkpoint_steps(run)
    assert len(steps) == 3, steps
    named = ", ".join(f"ckpt_{step}.pt" for step in steps)
    assert f"note: 3 checkpoints ({named}) are torch.save files, read only with" in text, text
    notes: list[str] = []
    checkpoint_listing(pts, note=notes.append, warn=lambda said: None)
    (said,) = [n for n in notes if "torch.save files" in n]
    assert f"note: {said}" in text, (said, text)  # the whole note, the same word for word as
    looked = " ".join(runner.invoke(app, ["inspect", str(pts)]).output.split())
    assert f"note: {said}" in looked, (said, looked)  # inspect's
    assert "warning: 3 checkpoint(s)" not in text, text
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "torch.save" not in quiet.output, quiet.output
    # and not among a Python caller's warnings
    result = kernels(pts, store=tmp_path / "s2", device="cpu")
    assert not any("torch.save" in w for w in result.warnings), result.warnings


def test_a_copy_of_a_checkpoint_is_a_note_that_quiet_leaves_out(run, tmp_path):
    """A file with the same step and bytes as one read (a backup copy) loses nothing: its line
    was a warning, printed under --quiet and returned among a Python caller's warnings."""
    pts = _torch_run(run, tmp_path, losses=False)
    shutil.copyfile(pts / "ckpt_5.pt", pts / "ckpt_0005.pt")
    args = ["kernels", str(pts), "--store", str(tmp_path / "s"), "--device", "cpu"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    text = " ".join(loud.output.split())
    assert text.count("taken as a copy of") == 1 and "note: 'ckpt_" in text, text
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "taken as a copy" not in " ".join(quiet.output.split()), quiet.output
    result = kernels(pts, store=tmp_path / "s2", device="cpu")
    assert not any("taken as a copy" in w for w in result.warnings), result.warnings


# ------------------------------------------------------------------------------------------------
# one state dict saved twice: the same tensors in other bytes


def test_one_state_dict_saved_under_two_names_is_one_checkpoint_with_a_note(tmp_path: Path):
    """torch.save writes the file's name into the archive, so the same dict saved as ckpt_60.pt
    and ckpt_0060.pt is other bytes: both were refused ("two checkpoints have step 60"). The
    same tensors, bit for bit, are one checkpoint: the first by name is read, a note names the
    other."""
    torch.save({"model_state_dict": state(1), "step": 60}, tmp_path / "ckpt_60.pt")
    torch.save({"model_state_dict": state(1), "step": 60}, tmp_path / "ckpt_0060.pt")
    torch.save(state(2), tmp_path / "ckpt_120.pt")
    assert (tmp_path / "ckpt_60.pt").read_bytes() != (tmp_path / "ckpt_0060.pt").read_bytes()
    notes: list[str] = []
    refs = list_checkpoints(tmp_path, warn=notes.append)
    assert [(r.step, r.file.name) for r in refs] == [(60, "ckpt_0060.pt"), (120, "ckpt_120.pt")]
    (note,) = [" ".join(n.split()) for n in notes if "copy" in n]
    assert "'ckpt_60.pt' in '" in note and "has the same step (60) and the same tensors" in note
    assert "bit for bit) as 'ckpt_0060.pt': it is taken as a copy of 'ckpt_0060.pt'" in note


def test_a_torch_file_and_a_safetensors_export_of_one_step_keep_the_torch_file(tmp_path: Path):
    """step_100.pt (a loop's dict with its optimizer state, keys under DDP's module.) beside its
    safetensors export step_100.safetensors: the same tensors. The torch.save file is read (its
    optimizer state is what switch can use), the export is the copy."""
    sd = state(3)
    optim = {"state": {}, "param_groups": [{"params": [0, 1, 2, 3], "lr": 0.1}]}
    ddp = {f"module.{k}": v for k, v in sd.items()}
    torch.save({"model_state_dict": ddp, "optimizer_state_dict": optim}, tmp_path / "step_100.pt")
    save_file(sd, str(tmp_path / "step_100.safetensors"))
    save_file(state(4), str(tmp_path / "step_200.safetensors"))
    notes: list[str] = []
    refs = list_checkpoints(tmp_path, warn=notes.append)
    assert [(r.step, r.file.name) for r in refs] == [
        (100, "step_100.pt"),
        (200, "step_200.safetensors"),
    ]
    (note,) = [" ".join(n.split()) for n in notes if "copy" in n]
    assert "'step_100.safetensors' in '" in note and "the same tensors" in note, note
    assert "taken as a copy of 'step_100.pt'" in note, note


def _one_ulp_more(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    w = out["fc1.weight"].clone()
    w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    out["fc1.weight"] = w
    return out


@pytest.mark.parametrize(
    "other",
    [
        _one_ulp_more,  # one value one ulp away
        lambda sd: {k: v.half() for k, v in sd.items()},  # a float16 export
        lambda sd: {**sd, "extra": torch.zeros(1)},  # one tensor more
        lambda sd: {k.replace("fc1", "fc0"): v for k, v in sd.items()},  # other names
    ],
)
def test_files_of_one_step_with_other_tensors_stay_refused(tmp_path: Path, other) -> None:
    torch.save({"model_state_dict": state(1), "step": 60}, tmp_path / "ckpt_60.pt")
    save_file(other(state(1)), str(tmp_path / "ckpt_60.safetensors"))
    msg = problem(tmp_path)
    assert "two checkpoints have step 60" in msg and "Keep one of them" in msg, msg


# ------------------------------------------------------------------------------------------------
# a dict holding a state dict under several entries


def test_two_entries_with_different_values_are_refused_naming_both_and_the_fix(tmp_path: Path):
    """A loop that saved the raw model under 'model' and an EMA under 'model_state_dict' (same
    keys and shapes, other values): the reader took 'model_state_dict', the first it looked
    for, without a word. The full read refuses it, naming both entries, the first tensor that
    differs and how to save the one to measure alone; inspect --verify says so too."""
    path = tmp_path / "ckpt_100.pt"
    torch.save({"model": state(0), "model_state_dict": state(1), "step": 100}, path)
    with pytest.raises(CheckpointError) as refused:
        read_state_dict(path)
    message = str(refused.value)
    assert f"'{path}' holds a state dict under each of 'model_state_dict', 'model'" in message
    assert "('model' from 'model_state_dict': 'fc1.weight' holds other values)" in message
    assert f"sd = torch.load('{path}', weights_only=True)" in message
    assert "save_file(sd['model_state_dict']" in message and "sd['model']" in message
    # listing reads the pickle only (tensors memory-mapped): values are compared on the full read
    assert listed(tmp_path) == [(100, "ckpt_100.pt")]
    [row] = inspect_checkpoints(tmp_path, verify=True, warn=lambda _: None)
    assert row.status == "error" and row.problem is not None and "they differ" in row.problem


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (state(0, classes=4), "shapes differ: 'fc2.weight' (4, 5) vs (3, 5)"),
        ({"fc1.weight": state(0)["fc1.weight"]}, "it lacks 'fc1.bias', 'fc2.weight', 'fc2.bias'"),
        ({k: v.half() for k, v in state(0).items()}, "'fc1.weight' is float16, not float32"),
    ],
)
def test_two_entries_with_other_keys_shapes_or_dtypes_are_refused_when_listed(
    tmp_path: Path, other: dict[str, torch.Tensor], why: str
):
    """Names, shapes and dtypes need no tensor data: the listing (which reads the pickle only)
    refuses the file already, as list_checkpoints refuses any unreadable file."""
    torch.save({"model_state_dict": state(0), "model": other}, tmp_path / "ckpt_100.pt")
    message = problem(tmp_path)
    assert "ckpt_100.pt" in message and "'model_state_dict', 'model'" in message
    assert why in message


def test_entries_holding_the_same_tensors_are_read_and_the_first_is_taken(tmp_path: Path):
    """One state dict saved under two names (one object, or a copy in other memory), the raw
    model beside its DDP-wrapped copy, Lightning's 'state_dict' beside the plain 'model': the
    same tensors, so the file is read; the entry taken is the first of 'state_dict',
    'model_state_dict', 'model' (the README's order). A NaN equals itself here (bit for bit)."""
    sd = state(0)
    sd["fc2.bias"][0] = float("nan")
    cases = {
        "ckpt_1.pt": {"model": sd, "model_state_dict": sd},
        "ckpt_2.pt": {"model": sd, "model_state_dict": {k: v.clone() for k, v in sd.items()}},
        "ckpt_3.pt": {"model": sd, "model_state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "ckpt_4.pt": {"model": sd, "state_dict": {f"model.{k}": v for k, v in sd.items()}},
    }
    for name, saved in cases.items():
        torch.save({**saved, "step": int(name[5])}, tmp_path / name)
    first = {"ckpt_3.pt": "module.", "ckpt_4.pt": "model."}
    for name in cases:
        got = read_state_dict(tmp_path / name, check_finite=False)
        prefix = first.get(name, "")
        assert list(got) == [prefix + k for k in sd], name
        for key, tensor in sd.items():
            assert torch.equal(got[prefix + key].view(torch.uint8), tensor.view(torch.uint8))
    assert [step for step, _ in listed(tmp_path)] == [1, 2, 3, 4]


def _unsaid(said: list[str]) -> list[str]:
    return [" ".join(s.split()) for s in said if "not compared" in s]


def test_inspect_without_verify_says_entries_it_did_not_compare(tmp_path: Path):
    """Two entries of one file holding the same tensor names (one through DDP's prefix), shapes
    and dtypes but other values (the model beside an EMA of it): kernels, switch and inspect
    --verify refuse the file; plain inspect, which reads the pickle only (no tensor data),
    showed it ok without a word. Comparing the values there would read the tensor data the
    headers-only inspect does not, so it says, once for the run, that it did not compare them
    and that --verify does."""
    for step in (100, 200, 300):
        wrapped = {f"module.{k}": v for k, v in state(step).items()}
        torch.save({"state_dict": wrapped, "model": state(step + 1)}, tmp_path / f"ckpt_{step}.pt")
    said: list[str] = []
    rows = inspect_checkpoints(tmp_path, warn=said.append, note=lambda _: None)
    assert [r.status for r in rows] == ["ok", "ok", "ok"]  # names, shapes, dtypes agree
    (text,) = _unsaid(said)
    assert text.startswith(
        "'ckpt_100.pt' and 2 other checkpoints hold a state dict under each of 'state_dict' and "
        "'model' (the first is read) with the same names, dtypes and shapes, but their values "
        "were not compared: inspect reads no tensor data without --verify."
    ), text
    assert "kernels reads each file in full and refuses it if they differ" in text, text
    assert text.endswith("--verify compares them now."), text
    # with --verify they are compared: errors, and no such warning
    said.clear()
    rows = inspect_checkpoints(tmp_path, verify=True, warn=said.append, note=lambda _: None)
    assert all(r.status == "error" and "they differ" in (r.problem or "") for r in rows), rows
    assert not _unsaid(said), said
    # the CLI says it once, as a warning
    looked = runner.invoke(app, ["inspect", str(tmp_path)])
    assert looked.exit_code == 0, looked.output
    text = " ".join(looked.output.split())
    assert text.count("warning: 'ckpt_100.pt' and 2 other checkpoints hold a state dict") == 1, text
    verified = runner.invoke(app, ["inspect", str(tmp_path), "--verify"])
    assert verified.exit_code == 1 and "not compared" not in verified.output, verified.output


def test_entries_that_are_one_state_dict_in_memory_need_no_comparing(tmp_path: Path):
    """One state dict saved under two entries (or beside its DDP-wrapped copy, the same tensors)
    is stored once: the entries are one in memory, equal without a read, and nothing is said. A
    copy in other memory is not known equal without its values: one file, so it is named."""
    sd = state(0)
    torch.save({"model": sd, "model_state_dict": sd}, tmp_path / "ckpt_1.pt")
    module = {f"module.{k}": v for k, v in sd.items()}
    torch.save({"model": sd, "state_dict": module}, tmp_path / "ckpt_2.pt")
    said: list[str] = []
    rows = inspect_checkpoints(tmp_path, warn=said.append, note=lambda _: None)
    assert [r.status for r in rows] == ["ok", "ok"] and not _unsaid(said), said
    copy = {k: v.clone() for k, v in sd.items()}
    torch.save({"model": sd, "model_state_dict": copy}, tmp_path / "ckpt_3.pt")
    rows = inspect_checkpoints(tmp_path, warn=said.append, note=lambda _: None)
    (text,) = _unsaid(said)
    assert text.startswith(
        "'ckpt_3.pt' holds a state dict under each of 'model_state_dict' and 'model' (the first is "
        "read) with the same names"
    ), text
    said.clear()
    rows = inspect_checkpoints(tmp_path, verify=True, warn=said.append, note=lambda _: None)
    assert [r.status for r in rows] == ["ok", "ok", "ok"] and not _unsaid(said), rows


# ------------------------------------------------------------------------------------------------
# another state dict of the network beside the one read (an EMA)


def _left(said: list[str]) -> list[str]:
    return [" ".join(s.split()) for s in said if "which is not" in s]


def test_an_ema_beside_the_state_dict_read_is_named_once(tmp_path: Path):
    """{"model": ..., "ema": ...}: the reader took 'model' without a word, and a researcher who
    meant the EMA weights never learned. The listing (kernels) and inspect say which entry is
    read and which are left, once for the run (the first file and the count), and how to
    measure one of those (save it alone; no flag or spec key chooses an entry)."""
    for step in (0, 5, 10):
        ema = {f"module.{k}": v for k, v in state(step + 100).items()}  # timm's ModelEmaV2
        saved = {"model": state(step), "ema": ema, "step": step, "metrics": {"loss": 0.5}}
        torch.save(saved, tmp_path / f"ckpt_{step}.pt")
    warned: list[str] = []
    listing = checkpoint_listing(tmp_path, warn=warned.append, note=lambda _: None)
    assert [r.step for r in listing.refs] == [0, 5, 10]
    (text,) = _left(warned)
    path = tmp_path / "ckpt_0.pt"
    assert text.startswith(
        "'ckpt_0.pt' and 2 other checkpoints hold a state dict under 'model', which is read, "
        "and another of the same network under 'ema' (an EMA of the weights, say), which is "
        "not: conetool reads the entry 'state_dict', 'model_state_dict' or 'model', the first "
        "present."
    ), text
    assert f"sd = torch.load('{path}', weights_only=True)" in text, text
    assert "save_file(sd['ema'], 'step_2000.safetensors'" in text, text
    said: list[str] = []
    inspect_checkpoints(tmp_path, warn=said.append, note=lambda _: None)
    assert _left(said) == [text], said
    # the CLI's kernels and inspect say it as a warning, once
    looked = " ".join(runner.invoke(app, ["inspect", str(tmp_path)]).output.split())
    assert looked.count("warning: 'ckpt_0.pt' and 2 other checkpoints hold") == 1, looked


@pytest.mark.parametrize("name", ["model_ema", "ema_model", "ema_state_dict", "swa"])
def test_any_entry_holding_the_networks_tensors_is_named(tmp_path: Path, name: str):
    torch.save({"model_state_dict": state(0), name: state(1), "step": 3}, tmp_path / "a.pt")
    warned: list[str] = []
    checkpoint_listing(tmp_path, warn=warned.append, note=lambda _: None)
    (text,) = _left(warned)
    assert text.startswith(
        f"'a.pt' holds a state dict under 'model_state_dict', which is read, and another of the "
        f"same network under '{name}'"
    ), text


@pytest.mark.parametrize("sharded", [False, True], ids=["pytorch_model.bin", "shards"])
def test_an_ema_in_a_hugging_face_folders_bin_is_named_by_the_listing_kernels_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sharded: bool
):
    """kernels' listing read the pickle of flat files only: an EMA beside the state dict in a
    Hugging Face folder's pytorch_model.bin, or in its shards, was named by inspect and not by
    kernels. The listing reads their pickles as a flat file's (memory-mapped: no tensor data,
    no full read of the file), and names the file to read the EMA from."""
    for step in (10, 20):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        sd, ema = state(step), state(step + 100)
        if not sharded:
            torch.save({"model": sd, "ema": ema}, folder / "pytorch_model.bin")
            continue
        keys, weight_map = list(sd), {}
        for k, part in enumerate((keys[:2], keys[2:]), start=1):
            name = f"pytorch_model-{k:05d}-of-00002.bin"
            halves = {"model": {n: sd[n] for n in part}, "ema": {n: ema[n] for n in part}}
            torch.save(halves, folder / name)
            weight_map.update(dict.fromkeys(part, name))
        index = {"metadata": {}, "weight_map": weight_map}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    streamed: list[Path] = []
    for module in (_hashed_reads, checkpoint_load):  # (load.py holds its own name for it)
        monkeypatch.setattr(module, "stream_file", lambda path, **kw: streamed.append(path))
    warned: list[str] = []
    listing = checkpoint_listing(tmp_path, warn=warned.append, note=lambda _: None)
    assert [(r.step, r.source) for r in listing.refs] == [
        (10, "hf-sharded" if sharded else "hf"),
        (20, "hf-sharded" if sharded else "hf"),
    ]
    assert streamed == []  # the listing read no file in full
    (text,) = _left(warned)
    assert text.startswith(
        "'checkpoint-10/' and 1 other checkpoint hold a state dict under 'model', which is read, "
        "and another of the same network under 'ema' (an EMA of the weights, say), which is not"
    ), text
    weights = "pytorch_model-00001-of-00002.bin" if sharded else "pytorch_model.bin"
    path = tmp_path / "checkpoint-10" / weights
    assert f"sd = torch.load('{path}', weights_only=True)" in text, text
    said: list[str] = []
    inspect_checkpoints(tmp_path, warn=said.append, note=lambda _: None)
    assert _left(said) == [text], said


def _lightning(step: int, ema_key: str) -> dict[str, object]:
    """What Lightning's ``Trainer.save_checkpoint`` writes for a LightningModule holding the
    network as ``self.net``, trained with an EMA callback whose ``state_dict()`` is
    ``{"ema_state_dict": ..., ...}`` (Lightning keeps it under the callback's state key in
    ``"callbacks"``, beside ModelCheckpoint's, whose key holds quotes)."""
    return {
        "epoch": 0,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"net.{k}": v for k, v in state(step).items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "",
            },
            ema_key: {
                "ema_state_dict": {f"net.{k}": v for k, v in state(step + 100).items()},
                "decay": 0.999,
                "num_updates": step,
            },
        },
        "optimizer_states": [],
        "lr_schedulers": [],
    }


def test_an_ema_a_lightning_callback_saved_is_named_once(tmp_path: Path):
    """A Lightning .ckpt keeps an EMA callback's weights under sd['callbacks'][its state key],
    not at the top of the dict: the reader took 'state_dict' and only an EMA at the top was
    named. One nested further down is named the same way, once for the run, where it is (as
    Python subscripts) and how to save it alone, with a line of Python that reads it."""
    key = "EMA{'decay': 0.999}"  # a state key with quotes: the fix must still be Python
    for step in (0, 5, 10):
        torch.save(_lightning(step, key), tmp_path / f"epoch=0-step={step}.ckpt")
    warned: list[str] = []
    listing = checkpoint_listing(tmp_path, warn=warned.append, note=lambda _: None)
    assert [r.step for r in listing.refs] == [0, 5, 10]
    (text,) = _left(warned)
    where = "['callbacks'][\"EMA{'decay': 0.999}\"]['ema_state_dict']"
    assert text.startswith(
        "'epoch=0-step=0.ckpt' and 2 other checkpoints hold a state dict under 'state_dict', "
        f"which is read, and another of the same network under {where} (an EMA of the "
        f"weights, say), which is not"
    ), text
    assert f"To measure {where} instead" in text, text
    # the line of Python the warning gives reads the EMA's state dict
    path = tmp_path / "epoch=0-step=0.ckpt"
    assert f"sd = torch.load('{path}', weights_only=True)" in text, text
    taken = text.split("safetensors.torch.save_file(")[1].split(", 'step_2000")[0]
    sd = torch.load(path, weights_only=True)
    ema = eval(taken, {"sd": sd})  # the warning's own expression
    assert ema.keys() == {f"net.{k}" for k in state(0)}
    assert all(torch.equal(ema[f"net.{k}"], v) for k, v in state(100).items())
    said: list[str] = []
    inspect_checkpoints(tmp_path, warn=said.append, note=lambda _: None)
    assert _left(said) == [text], said


def test_a_nested_state_dict_beside_a_top_level_ema_is_named_too(tmp_path: Path):
    """Both an averaged copy a callback keeps and an EMA at the top of the dict are left: both
    are named, in the dict's order, in one warning."""
    saved = _lightning(3, "StochasticWeightAveraging")
    saved["ema"] = {f"net.{k}": v for k, v in state(7).items()}
    torch.save(saved, tmp_path / "a.ckpt")
    warned: list[str] = []
    checkpoint_listing(tmp_path, warn=warned.append, note=lambda _: None)
    (text,) = _left(warned)
    assert (
        "another of the same network under ['callbacks']['StochasticWeightAveraging']"
        "['ema_state_dict'] and 'ema' (an EMA"
    ) in text, text


def test_entries_of_no_network_tensors_are_not_named(tmp_path: Path):
    """Metrics kept as tensors, an optimizer state, the same state dict under 'state_dict'
    (read and compared, not left): no other state dict of the network."""
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.fc2(net.fc1(torch.zeros(1, 4))).sum().backward()
    opt.step()  # its state holds a momentum buffer per parameter, under the parameter's number
    assert opt.state_dict()["state"], opt.state_dict()
    saved = {
        "state_dict": state(0),
        "model": state(0),
        "metrics": {"loss": torch.tensor(0.3), "acc": torch.tensor(0.9)},
        "optimizer_state_dict": opt.state_dict(),
        "step": 4,
    }
    torch.save(saved, tmp_path / "a.pt")
    warned: list[str] = []
    checkpoint_listing(tmp_path, warn=warned.append, note=lambda _: None)
    assert not _left(warned), warned


def test_no_stand_in_is_said_of_a_copy_that_is_not_read(tmp_path: Path):
    # Was: "'final.pt' ... is read for step 20 in place of 'ckpt_20.pt'" under --steps 0:10,
    # which leaves step 20 out, and of a final.pt from another run, which inspect shows as an
    # error row: neither is read.
    for step in (0, 10, 20):
        torch.save({"model_state_dict": state(step), "step": step}, tmp_path / f"ckpt_{step}.pt")
    whole = (tmp_path / "ckpt_20.pt").read_bytes()
    (tmp_path / "ckpt_20.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"model_state_dict": state(20), "step": 20}, tmp_path / "final.pt")
    said: list[str] = []
    refs = list_checkpoints(tmp_path, skip_bad=True, steps=(0, 10), warn=said.append)
    assert [r.step for r in refs] == [0, 10]
    assert not [m for m in said if "in place of" in m], said
    torch.save({"model_state_dict": state(20, classes=7), "step": 20}, tmp_path / "final.pt")
    notes: list[str] = []
    rows = inspect_checkpoints(tmp_path, warn=notes.append)
    assert [(r.file, r.status) for r in rows if r.step == 20] == [
        ("ckpt_20.pt", "error"),
        ("final.pt", "error"),
    ]
    assert not [m for m in notes if "in place of" in m], notes


def test_a_copy_of_a_step_no_file_gives_that_step_regex_does_not_match_is_warned_of(
    tmp_path: Path,
):
    # Was: left out without a word under --step-regex 'ckpt_(\d+)', the run's last step (kept
    # only in final.pt, read as step 20 without the regex) lost.
    for step in (0, 10):
        torch.save(state(step), tmp_path / f"ckpt_{step}.pt")
    torch.save({"model_state_dict": state(20), "step": 20}, tmp_path / "final.pt")
    torch.save({"model_state_dict": state(10), "step": 10}, tmp_path / "best.pt")  # step 10's
    said: list[str] = []
    refs = list_checkpoints(tmp_path, step_regex=r"ckpt_(\d+)", warn=said.append)
    assert [(r.step, r.paths[0].name) for r in refs] == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    (left,) = [m for m in said if "--step-regex" in m]
    assert "'final.pt'" in left and "step 20" in left and "rename it" in left
    assert "best.pt" not in left
    notes: list[str] = []
    inspect_checkpoints(tmp_path, step_regex=r"ckpt_(\d+)", warn=notes.append)
    assert left in notes
    quiet: list[str] = []  # step 20 not selected: nothing lost
    list_checkpoints(tmp_path, step_regex=r"ckpt_(\d+)", steps=(0, 10), warn=quiet.append)
    assert not [m for m in quiet if "--step-regex" in m], quiet


def test_a_copy_named_without_a_step_that_cannot_be_read_is_warned_of(tmp_path: Path):
    # Was: a truncated final.pt (its step, stored inside, unknown) was left out without a word,
    # by kernels (--skip-bad or not) and inspect: a loop's last step, kept only there, lost.
    for step in (0, 10):
        torch.save(state(step), tmp_path / f"ckpt_{step}.pt")
    torch.save({"model_state_dict": state(20), "step": 20}, tmp_path / "final.pt")
    data = (tmp_path / "final.pt").read_bytes()
    (tmp_path / "final.pt").write_bytes(data[: len(data) // 2])
    torch.save(state(10), tmp_path / "best.pt")  # readable, no step stored: a copy, unsaid
    for skip_bad in (False, True):
        said: list[str] = []
        refs = list_checkpoints(tmp_path, skip_bad=skip_bad, warn=said.append)
        assert [r.step for r in refs] == [0, 10]
        (left,) = [m for m in said if "final.pt" in m]
        assert "not read" in left and "truncated or corrupt" in left and "re-save" in left
        assert not [m for m in said if "best.pt" in m], said
    shown: list[str] = []
    rows = inspect_checkpoints(tmp_path, warn=shown.append)
    assert [r.file for r in rows] == ["ckpt_0.pt", "ckpt_10.pt"]
    assert left in shown
