"""Copies named without a step (``final.pt``, ``last.ckpt``) that store the step of another file,
a step folder passed alone, and a step whose file fails when ``kernels`` reads it: what is read,
what is said, on real layouts in tmp_path and the real CLI.

References: the tensors the tests write, loaded by hand into the spec's model, and
:func:`conetool.ntk.empirical_ntk` on them against the kernels ``kernels`` stored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoints import write_hf, write_trainer_state
from tiny_run import SPEC_TOML
from typer.testing import CliRunner

from conetool import paths
from conetool.checkpoints import (
    _hashed_reads,
    _torch_save,
    inspect_checkpoints,
    list_checkpoints,
    load,
)
from conetool.checkpoints.discover import checkpoint_listing
from conetool.cli import app
from conetool.errors import CheckpointError
from conetool.ntk import empirical_ntk
from conetool.pipeline.resolve import model_for
from conetool.spec import spec_from_toml

runner = CliRunner()
SPEC = spec_from_toml(SPEC_TOML)


def weights(seed: int) -> dict[str, torch.Tensor]:
    """A distinct state dict of the spec's model."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in model_for(SPEC).state_dict().items()}


def loop_save(path: Path, seed: int, step: int, **extra: object) -> None:
    """A plain loop's checkpoint: its state dict and step in one torch.save dict."""
    torch.save({"model_state_dict": weights(seed), "step": step, **extra}, path)


def said(directory: Path, **kwargs: object) -> tuple[list[tuple[int, str]], list[str]]:
    """The listing's ``(step, file name)`` pairs and everything it said."""
    told: list[str] = []
    refs = list_checkpoints(directory, warn=told.append, **kwargs)  # type: ignore[arg-type]
    return [(r.step, r.file.name) for r in refs], told


def run_kernels(tmp_path: Path, ckpts: Path, *more: str) -> tuple[Path, str]:
    """``conetool kernels CKPTS`` into a fresh store (float64, CPU): the store and the output."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC_TOML)
    store = tmp_path / f"store{len(list(tmp_path.glob('store*')))}"
    args = ["kernels", str(ckpts), "--spec", str(spec), "--store", str(store)]
    result = runner.invoke(app, [*args, "--dtype", "float64", "--device", "cpu", *more])
    assert result.exit_code == 0, result.output
    return store, " ".join(result.output.split())


def files_read(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files read whole from now on, in order: hashed (``_hashed_reads``) or loaded
    (``load``, which holds its own name for ``stream_file``)."""
    streamed: list[Path] = []
    real = _hashed_reads.stream_file

    def counted(path: Path, **kwargs: bool) -> _hashed_reads.Streamed:
        streamed.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(_hashed_reads, "stream_file", counted)
    monkeypatch.setattr(load, "stream_file", counted)
    return streamed


def squeezed(text: str) -> str:
    """``text`` without whitespace: what the console said, wherever it broke its lines."""
    return "".join(text.split())


def assert_kernel_of(store: Path, step: int, seed: int) -> None:
    """The kernel stored for ``step`` is the empirical NTK of ``weights(seed)``, loaded by hand."""
    model = model_for(SPEC).double()
    model.load_state_dict(weights(seed))
    probe = load_file(str(paths.probe(store)))["inputs"].double()
    want = empirical_ntk(model, probe, kind="trace", dtype=torch.float64)
    got = load_file(str(paths.kernel(store, step)))["kernel"].double()
    assert float((got - want).norm() / want.norm()) < 1e-10, step


# ------------------------------------------------------------------------------------------------
# a copy that stores the step of another file


def test_a_copy_with_other_weights_than_its_steps_file_is_warned_of(tmp_path: Path):
    # Was: final.pt, later weights saved with a stale step counter (step 10), was left out as a
    # copy of ckpt_10.pt without a word: the run's last weights lost.
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        loop_save(run / f"ckpt_{step}.pt", step, step)
    loop_save(run / "final.pt", 20, 10)  # the weights after step 20, the counter still at 10
    listed, told = said(run)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    (warning,) = [m for m in told if "final.pt" in m]
    assert "'ckpt_10.pt' is read for step 10" in warning and "other tensors" in warning, warning
    assert f"mv '{run / 'final.pt'}' '{run / 'step_N' / 'model.pt'}'" in warning, warning
    shown: list[str] = []
    inspect_checkpoints(run, warn=shown.append)
    assert warning in shown
    store, out = run_kernels(tmp_path, run)
    assert "'final.pt'" in out and "other tensors" in out, out
    assert_kernel_of(store, 10, 10)  # step 10's own file, not the copy
    # the fix it names reads the copy as its step
    (run / "step_20").mkdir()
    shutil.move(run / "final.pt", run / "step_20" / "model.pt")
    listed, told = said(run)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt"), (20, "step_20")]
    assert not [m for m in told if "other tensors" in m], told
    store, _ = run_kernels(tmp_path, run)
    assert_kernel_of(store, 20, 20)


@pytest.mark.parametrize("copy", ["final.safetensors", "last.safetensors"])
def test_a_safetensors_copy_with_other_weights_than_its_steps_file_is_warned_of(
    tmp_path: Path, copy: str
):
    # Was: final.safetensors storing step 10 in its metadata, with other weights than
    # ckpt_10.pt, was read as a second file of step 10: both refused ('two checkpoints have
    # step 10'), and under --skip-bad both left out, step 10's own good file lost with the copy
    # (found by fuzz_cli --mode ckpts, seed 4, call 83). A torch.save copy was left out with a
    # warning; so is this one.
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        loop_save(run / f"ckpt_{step}.pt", step, step)
    save_file(weights(20), str(run / copy), metadata={"step": "10"})
    listed, told = said(run)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    (warning,) = [m for m in told if copy in m]
    assert "'ckpt_10.pt' is read for step 10" in warning and "other tensors" in warning, warning
    to = run / "step_N" / "model.safetensors"  # (was model.pt, then refused as no torch.save)
    assert f"mv '{run / copy}' '{to}'" in warning, warning
    for more in ([], ["--skip-bad"]):
        store, out = run_kernels(tmp_path, run, *more)
        assert f"'{copy}'" in out and "other tensors" in out, out
        assert_kernel_of(store, 10, 10)  # step 10's own file, not the copy
    # the same tensors again (an export of the step's weights): left out, its note as before
    save_file(weights(10), str(run / copy), metadata={"step": "10"})
    listed, told = said(run)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    assert not [m for m in told if "other tensors" in m], told


def test_a_copy_of_its_steps_tensors_stays_silent_and_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for step in (0, 10):
        loop_save(tmp_path / f"ckpt_{step}.pt", step, step)
    loop_save(tmp_path / "last.pt", 10, 10)  # the same dict saved again
    streamed = files_read(monkeypatch)
    listed, told = said(tmp_path)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    assert not [m for m in told if "last.pt" in m], told
    assert streamed == []  # told apart by their zip directories: no tensor data read
    # the same weights in another dict (an optimizer state beside them): told by the records
    # of the state dict's own tensors, silent and unread (was: both files read in full)
    loop_save(
        tmp_path / "ckpt_10.pt",
        10,
        10,
        optimizer_state_dict={"state": {0: {"momentum_buffer": torch.ones(3)}}},
    )
    listed, told = said(tmp_path)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    assert not [m for m in told if "last.pt" in m], told
    assert streamed == []
    # other weights there: read in full, and said
    loop_save(tmp_path / "last.pt", 20, 10)
    listed, told = said(tmp_path)
    assert [m for m in told if "last.pt" in m and "other tensors" in m], told
    assert streamed, "compared in full"
    # a step the selection leaves out is not compared, nor said
    loop_save(tmp_path / "last.pt", 20, 10)
    streamed.clear()
    listed, told = said(tmp_path, steps=(0, 5))
    assert listed == [(0, "ckpt_0.pt")] and streamed == []
    assert not [m for m in told if "last.pt" in m], told


def test_a_copy_beside_a_zero_size_tensor_is_told_by_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Was: a state dict holding a tensor of no elements (torch gives its empty storage an offset
    # that lands in the next record) had no records at all, so a copy of it was read in full on
    # every listing. Its record is its dtype and shape alone now: equal copies are told the same
    # unread, and a copy differing in a non-empty tensor beside it is still told apart.
    def with_empty(seed: int) -> dict[str, torch.Tensor]:
        return {**weights(seed), "empty": torch.zeros(0), "empty2": torch.zeros(0, 4)}

    optimizer = {"state": {0: {"momentum_buffer": torch.ones(3)}}}
    for step in (0, 10):
        torch.save(
            {"model_state_dict": with_empty(step), "step": step}, tmp_path / f"ckpt_{step}.pt"
        )
    # the same weights beside an optimizer state: the storage records differ, the weights' do not
    torch.save(
        {"model_state_dict": with_empty(10), "step": 10, "optimizer_state_dict": optimizer},
        tmp_path / "last.pt",
    )
    assert _torch_save.state_dict_records(tmp_path / "last.pt") is not None
    streamed = files_read(monkeypatch)
    listed, told = said(tmp_path)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    assert not [m for m in told if "last.pt" in m], told
    assert streamed == []  # told the same by the records: no tensor data read
    # one non-empty tensor differs beside the empty ones: told apart, and said
    other = with_empty(10)
    name = next(k for k, v in other.items() if v.numel())
    other[name] = other[name] + 1
    torch.save(
        {"model_state_dict": other, "step": 10, "optimizer_state_dict": optimizer},
        tmp_path / "last.pt",
    )
    assert _torch_save.state_dict_records(tmp_path / "last.pt") != _torch_save.state_dict_records(
        tmp_path / "ckpt_10.pt"
    )
    listed, told = said(tmp_path)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    assert [m for m in told if "last.pt" in m and "other tensors" in m], told


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_final_copy_storing_no_step_with_other_weights_is_warned_of(tmp_path: Path, suffix: str):
    # Was (found by scripts/fuzz_cli.py --mode ckpts): a loop's final.pt, its final weights
    # saved as a plain state dict after the last ckpt_N.pt, was left out without a word: the
    # run's last weights lost. Now a warning names it, the last file read and the fixes.
    for step in (0, 10):
        torch.save(weights(step), tmp_path / f"ckpt_{step}.pt")
    final = tmp_path / f"final{suffix}"
    if suffix == ".pt":
        torch.save(weights(20), final)
    else:
        save_file(weights(20), str(final))
    listed, told = said(tmp_path)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    (warning,) = [m for m in told if final.name in m]
    assert "stores no step" in warning and "'ckpt_10.pt'" in warning, warning
    # the folder's weights file of the copy's format (was model.pt for a safetensors copy too,
    # which is then refused: 'not a torch.save checkpoint')
    to = tmp_path / "step_N" / ("model.safetensors" if suffix == ".safetensors" else "model.pt")
    assert f"mv '{final}' '{to}'" in warning, warning
    shown: list[str] = []
    inspect_checkpoints(tmp_path, warn=shown.append)
    assert warning in shown
    _, out = run_kernels(tmp_path, tmp_path)
    assert final.name in out and "stores no step" in out, out
    # the last step's weights saved again, or a best.pt (an earlier step's): silent
    for name, seed in (("final", 10), ("best", 20)):
        final.unlink(missing_ok=True)
        torch.save(weights(seed), tmp_path / f"{name}.pt")
        listed, told = said(tmp_path)
        assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
        assert not [m for m in told if f"{name}.pt" in m], told
        (tmp_path / f"{name}.pt").unlink()
    # a selection that leaves out the last step does not compare it, nor say it
    torch.save(weights(20), tmp_path / "final.pt")
    listed, told = said(tmp_path, steps=(0, 5))
    assert listed == [(0, "ckpt_0.pt")] and not [m for m in told if "final.pt" in m], told


@pytest.mark.parametrize("entry", [None, "last"])
def test_under_step_regex_a_final_copy_with_other_weights_is_told_a_name_the_regex_reads(
    tmp_path: Path, entry: str | None
):
    # Was: under --step-regex, a final.pt holding other weights than the last step's file was
    # told it 'stores no step' (one storing {"step": "last"} too, which it had done) and to move
    # it into step_N/model.pt or save it with its step: under the regex neither is read (the
    # folder is refused as not matched, the stored step ignored). Now it is told the regex does
    # not match its name, and to rename it so that it does, or to leave --step-regex out.
    for step in (0, 10):
        torch.save(weights(step), tmp_path / f"ckpt_{step}.pt")
    final = tmp_path / "final.pt"
    torch.save(weights(20) if entry is None else {"model": weights(20), "step": entry}, final)
    regex = r"ckpt_(\d+)"
    listed, told = said(tmp_path, step_regex=regex)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    (warning,) = [m for m in told if "final.pt" in m]
    assert "stores no step" not in warning and "step_N" not in warning, warning
    assert f"--step-regex '{regex}' does not match its name" in warning, warning
    assert "rename it so that the regex reads its step" in warning, warning
    shown: list[str] = []
    inspect_checkpoints(tmp_path, step_regex=regex, warn=shown.append)
    assert warning in shown
    # the fix it gives: a name the regex reads (here step 20)
    final.rename(tmp_path / "ckpt_20.pt")
    listed, told = said(tmp_path, step_regex=regex)
    assert listed[-1] == (20, "ckpt_20.pt"), listed


def test_a_final_copy_with_an_optimizer_state_beside_the_last_steps_weights_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # Was: a final.pt saved as {"model": sd, "optimizer": ...} beside ckpt_N.pt holding sd alone
    # differs in its zip records, so every listing read both files in full to compare them
    # (seconds for big checkpoints). The records of the state dict's own tensors (told from the
    # pickle, read onto the meta device, and the zip directory) are the same: silent, unread.
    for step in (0, 10):
        torch.save(weights(step), tmp_path / f"ckpt_{step}.pt")
    momentum = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"params": [0]}]}
    torch.save({"model": weights(10), "optimizer": momentum}, tmp_path / "final.pt")
    streamed = files_read(monkeypatch)
    listed, told = said(tmp_path)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    assert not [m for m in told if "final.pt" in m], told
    assert streamed == []
    # a torch that records no storage offset on the meta device: compared in full, as before
    monkeypatch.setattr(_torch_save, "_meta_offsets", lambda: False)
    listed, told = said(tmp_path)
    assert not [m for m in told if "final.pt" in m], told
    assert {p.name for p in streamed} == {"final.pt", "ckpt_10.pt"}, streamed
    monkeypatch.undo()
    streamed = files_read(monkeypatch)
    # DDP's prefix on the final copy's keys: the same weights all the same
    wrapped = {f"module.{k}": v for k, v in weights(10).items()}
    torch.save({"model": wrapped, "optimizer": momentum}, tmp_path / "final.pt")
    listed, told = said(tmp_path)
    assert not [m for m in told if "final.pt" in m] and streamed == [], told
    # one tensor of the weights other: its record differs, so both are read in full, and said
    other = weights(10)
    first = next(iter(other))
    other[first] = other[first] + 1
    torch.save({"model": other, "optimizer": momentum}, tmp_path / "final.pt")
    listed, told = said(tmp_path)
    (warning,) = [m for m in told if "final.pt" in m]
    assert "stores no step" in warning and "other tensors" in warning, warning
    assert {p.name for p in streamed} == {"final.pt", "ckpt_10.pt"}, streamed


# ------------------------------------------------------------------------------------------------
# one folder of one step, given alone


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_one_step_folder_given_alone_is_read_as_its_step(tmp_path: Path, name: str):
    # Was: `conetool kernels run/step_0/` listed the folder as a run, and its model file gave
    # "no step recoverable"; the run folder holding only step_0/ read it as step 0.
    folder = tmp_path / "run" / "step_0"
    folder.mkdir(parents=True)
    if name.endswith(".safetensors"):
        save_file(weights(3), str(folder / name))
    else:
        torch.save(weights(3), folder / name)
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.pt")  # not read
    for given in (folder, tmp_path / "run"):
        listed, _ = said(given)
        assert listed == [(0, "step_0")], given
    store, _ = run_kernels(tmp_path, folder)
    assert_kernel_of(store, 0, 3)
    # a model file that stores another step: the folder's step all the same, as from the run's
    # directory (was: 7, the stored step, given alone), with a warning naming both
    save_file(weights(3), str(folder / "model.safetensors"), metadata={"step": "7"})
    (folder / "model.pt").unlink(missing_ok=True)
    for given in (folder, tmp_path / "run"):
        listed, told = said(given)
        assert listed == [(0, "step_0")], given
        assert any("stores step 7" in m and "gives step 0" in m for m in told), told


# ------------------------------------------------------------------------------------------------
# a step whose file fails as it is read, beside a copy of that step


def test_a_step_lost_at_load_names_its_copy_and_how_to_read_it(tmp_path: Path):
    # Was: ckpt_10.pt, refused as it was read (non-finite weights), was skipped under --skip-bad
    # without a word of final.pt, which stores step 10 too and was left out as its copy: the
    # step lost though a usable copy of it was there.
    run = tmp_path / "run"
    run.mkdir()
    loop_save(run / "ckpt_0.pt", 0, 0)
    broken = weights(10)
    next(iter(broken.values()))[0] = float("nan")  # a diverged save
    torch.save({"model_state_dict": broken, "step": 10}, run / "ckpt_10.pt")
    loop_save(run / "final.pt", 10, 10)
    _, out = run_kernels(tmp_path, run, "--skip-bad")
    assert "skipped step 10" in out and "non-finite" in out.lower(), out
    hint = f"'{run / 'final.pt'}', named without a step, stores step 10 too"
    assert hint in out and f"move '{run / 'ckpt_10.pt'}' out of the directory" in out, out
    # the fix it names: the copy is read for step 10
    (tmp_path / "aside").mkdir()
    shutil.move(run / "ckpt_10.pt", tmp_path / "aside" / "ckpt_10.pt")
    store, out = run_kernels(tmp_path, run)
    assert "skipped" not in out, out
    assert_kernel_of(store, 0, 0)
    assert_kernel_of(store, 10, 10)
    # a step read without trouble names no copy
    loop_save(run / "ckpt_10.pt", 10, 10)
    _, out = run_kernels(tmp_path, run, "--skip-bad")
    assert "named without a step" not in out, out


def test_a_step_lost_at_load_with_two_copies_says_to_move_all_but_one(tmp_path: Path):
    # Was: ckpt_10.pt refused as it was read under --skip-bad, with final.pt and last.pt both
    # storing step 10 (other weights in last.pt), said 'to read one of them for step 10, move
    # ckpt_10.pt out of the directory and rerun': done so, the rerun refused both copies ('two
    # checkpoints have step 10'). The hint says the others go too.
    run = tmp_path / "run"
    run.mkdir()
    loop_save(run / "ckpt_0.pt", 0, 0)
    broken = weights(10)
    next(iter(broken.values()))[0] = float("nan")  # a diverged save
    torch.save({"model_state_dict": broken, "step": 10}, run / "ckpt_10.pt")
    loop_save(run / "final.pt", 10, 10)
    loop_save(run / "last.pt", 20, 10)  # later weights, a stale step counter
    _, out = run_kernels(tmp_path, run, "--skip-bad")
    hint = (
        f"'{run / 'final.pt'}' and '{run / 'last.pt'}', named without a step, store step 10 too "
        f"and were left out as its copies: to read one of them for step 10, move "
        f"'{run / 'ckpt_10.pt'}' out of the directory with all of them but that one, and rerun."
    )
    assert squeezed(hint) in squeezed(out), out
    # the fix it names: final.pt is read for step 10
    (tmp_path / "aside").mkdir()
    for name in ("ckpt_10.pt", "last.pt"):
        shutil.move(run / name, tmp_path / "aside" / name)
    store, out = run_kernels(tmp_path, run)
    assert "skipped" not in out, out
    assert_kernel_of(store, 10, 10)


def test_a_trainer_folder_lost_at_load_names_the_final_model_by_its_global_step(tmp_path: Path):
    # Was: a Trainer's output directory (checkpoint-N/ folders, its final model.safetensors and
    # trainer_state.json at the top), checkpoint-10/ refused as it was read under --skip-bad:
    # the hint called the final model a copy 'named without a step' that 'stores step 10', but
    # it stores none: the global_step of the top trainer_state.json gives it.
    out = tmp_path / "out"
    for step in (5, 10):
        write_hf(out, step, weights(step))
    broken = weights(10)
    next(iter(broken.values()))[0] = float("nan")  # a diverged save
    save_file(broken, str(out / "checkpoint-10" / "model.safetensors"))
    save_file(weights(10), str(out / "model.safetensors"))  # Trainer.save_model
    write_trainer_state(out, 10)
    _, said = run_kernels(tmp_path, out, "--skip-bad")
    assert "skipped step 10" in said and "non-finite" in said.lower(), said
    assert "storesstep10" not in squeezed(said), said
    hint = (
        f"'{out / 'model.safetensors'}', the Trainer's final model (Trainer.save_model), stores "
        f"no step; the global_step of '{out / 'trainer_state.json'}' makes it step 10, which "
        f"'{out / 'checkpoint-10'}' gives, so it was left out: to read it for step 10, move "
        f"'{out / 'checkpoint-10'}' out of the directory and rerun."
    )
    assert squeezed(hint) in squeezed(said), said  # (rich breaks a long path where it wraps)
    # the fix it names: the final model is read for step 10
    shutil.move(out / "checkpoint-10", tmp_path / "checkpoint-10")
    store, said = run_kernels(tmp_path, out)
    assert "skipped" not in said, said
    assert_kernel_of(store, 5, 5)
    assert_kernel_of(store, 10, 10)
    # a final model whose own metadata stores the step is still said to store it
    shutil.move(tmp_path / "checkpoint-10", out / "checkpoint-10")
    save_file(weights(10), str(out / "model.safetensors"), metadata={"step": "10"})
    _, said = run_kernels(tmp_path, out, "--skip-bad")
    stored = f"'{out / 'model.safetensors'}', named without a step, stores step 10 too"
    assert squeezed(stored) in squeezed(said), said


def test_two_copies_of_one_step_with_other_tensors_are_each_told_to_move_the_other_too(
    tmp_path: Path,
):
    # final.pt and last.pt both store step 10 beside ckpt_10.pt, each with its own weights: the
    # advice to read one of them for step 10 named ckpt_10.pt alone, after whose move the two
    # copies were both refused as two checkpoints of step 10 (none read)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    loop_save(ckpts / "ckpt_0.pt", 0, 0)
    loop_save(ckpts / "ckpt_10.pt", 10, 10)
    loop_save(ckpts / "final.pt", 11, 10)
    loop_save(ckpts / "last.pt", 12, 10)
    listed, told = said(ckpts)
    assert listed == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]
    text = squeezed(" ".join(told))
    assert squeezed("for step 10 instead, move 'ckpt_10.pt' with 'last.pt' out of") in text
    assert squeezed("for step 10 instead, move 'ckpt_10.pt' with 'final.pt' out of") in text
    # the advice followed for final.pt: it is read as step 10
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in ("ckpt_10.pt", "last.pt"):
        shutil.move(str(ckpts / name), str(aside / name))
    store, _ = run_kernels(tmp_path, ckpts)
    assert_kernel_of(store, 10, 11)


# ------------------------------------------------------------------------------------------------
# a copy named without a step whose stored step entry is no step


NO_STEPS = [
    ({"step": "last"}, "a 'step' entry of 'last' in its torch.save dict"),
    ({"step": 2.5}, "a 'step' entry of 2.5 in its torch.save dict"),
    ({"global_step": -1}, "a 'global_step' entry of -1 in its torch.save dict"),
    ({"step": torch.tensor([10, 20])}, "a 'step' entry of a tensor of shape (2,) in its torch"),
]


def listing(directory: Path, **kwargs: object) -> tuple[list[int], list[str], list[str]]:
    """The steps listed, the warnings and the notes, as ``kernels`` and ``switch`` list."""
    warned: list[str] = []
    noted: list[str] = []
    found = checkpoint_listing(directory, warn=warned.append, note=noted.append, **kwargs)  # type: ignore[arg-type]
    return [r.step for r in found.refs], warned, noted


@pytest.mark.parametrize(("entry", "shown"), NO_STEPS)
def test_a_copy_storing_a_step_entry_that_is_no_step_is_said_with_that_entry(
    tmp_path: Path, entry: dict[str, object], shown: str
):
    # Was: final.pt storing {"step": "last"} (2.5, -1, a tensor of two values) failed to give a
    # step, and that error was dropped with the copy: with the last step's weights, not a word;
    # with other weights, 'stores no step ... save it with its step (a 'step' entry of the
    # torch.save dict ...)', which it had done.
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        loop_save(run / f"ckpt_{step}.pt", step, step)
    torch.save({"model_state_dict": weights(20), **entry}, run / "final.pt")
    steps, warned, noted = listing(run)
    assert steps == [0, 10]
    (warning,) = [m for m in warned if "final.pt" in m]
    assert f"'final.pt' in '{run}' is named without a step and stores {shown}" in warning
    assert "so its step is not known" in warning and "stores no step" not in warning, warning
    assert "other tensors than the last checkpoint read, 'ckpt_10.pt' (step 10)" in warning
    assert "re-save it with its step as an int" in warning, warning
    assert f"mv '{run / 'final.pt'}' '{run / 'step_N' / 'model.pt'}'" in warning, warning
    assert not [m for m in noted if "final.pt" in m], noted
    shown_by_inspect: list[str] = []
    inspect_checkpoints(run, warn=shown_by_inspect.append, note=lambda _: None)
    assert warning in shown_by_inspect
    # the last step's weights saved again so: nothing lost, a note naming the entry
    torch.save({"model_state_dict": weights(10), **entry}, run / "final.pt")
    steps, warned, noted = listing(run)
    assert steps == [0, 10] and not [m for m in warned if "final.pt" in m], warned
    (note,) = [m for m in noted if "final.pt" in m]
    assert f"stores {shown}" in note and "so nothing is lost" in note, note
    assert "the same tensors as the last checkpoint read, 'ckpt_10.pt' (step 10)" in note, note
    noted_by_inspect: list[str] = []
    inspect_checkpoints(run, warn=lambda _: None, note=noted_by_inspect.append)
    assert note in noted_by_inspect


def test_copies_storing_a_step_entry_that_is_no_step_agree_in_kernels_and_inspect(
    tmp_path: Path,
):
    # the commands: kernels and inspect say the warning (switch: test_switch_own_run); a best.pt
    # (an earlier step's weights by its name) and a selection without the last step are not
    # compared, and noted with the entry; a directory of such copies alone is refused naming it
    run = tmp_path / "run"
    run.mkdir()
    for step in (0, 10):
        loop_save(run / f"ckpt_{step}.pt", step, step)
    torch.save({"model_state_dict": weights(20), "step": "last"}, run / "final.pt")
    warned = listing(run)[1]
    (warning,) = [m for m in warned if "final.pt" in m]
    store, out = run_kernels(tmp_path, run)
    assert squeezed(f"warning: {warning}") in squeezed(out), out
    assert_kernel_of(store, 10, 10)
    inspected = runner.invoke(app, ["inspect", str(run)])
    assert inspected.exit_code == 0, inspected.output
    assert squeezed(warning) in squeezed(inspected.output), inspected.output
    # not compared: said as a note, with the entry and the fixes
    steps, warned, noted = listing(run, steps=(0, 5))
    assert steps == [0] and not [m for m in warned if "final.pt" in m], warned
    (note,) = [m for m in noted if "final.pt" in m]
    assert "stores a 'step' entry of 'last'" in note and "re-save it with its step" in note, note
    (run / "final.pt").rename(run / "best.pt")
    steps, warned, noted = listing(run)
    assert not [m for m in warned if "best.pt" in m], warned
    assert [m for m in noted if "'best.pt'" in m and "'step' entry of 'last'" in m], noted
    # only such copies: the refusal names the entry
    for step in (0, 10):
        (run / f"ckpt_{step}.pt").unlink()
    with pytest.raises(CheckpointError) as refused:
        list_checkpoints(run, warn=lambda _: None)
    text = str(refused.value)
    assert "no checkpoints in" in text and "'best.pt' stores a 'step' entry of 'last'" in text
    assert "re-save it with its step as an int" in text, text


def test_a_safetensors_copy_storing_metadata_that_is_no_step_names_it(tmp_path: Path):
    for step in (0, 10):
        loop_save(tmp_path / f"ckpt_{step}.pt", step, step)
    save_file(weights(20), str(tmp_path / "final.safetensors"), metadata={"step": "last"})
    steps, warned, _ = listing(tmp_path)
    assert steps == [0, 10]
    (warning,) = [m for m in warned if "final.safetensors" in m]
    assert "stores safetensors metadata step 'last', which is not a whole number" in warning
    assert "re-save it with its step," in warning, warning
    where = tmp_path / "final.safetensors"
    assert f"mv '{where}' '{tmp_path / 'step_N' / 'model.safetensors'}'" in warning, warning
