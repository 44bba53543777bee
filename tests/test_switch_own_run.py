"""``conetool switch`` on a researcher's own run (checkpoints not written by ``conetool train``):
the recipe keys its spec file leaves to conetool's defaults are named, a run other than the
store's is refused, and ``--quiet`` keeps the warnings of a sweep that fails."""

from __future__ import annotations

import copy
import errno
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import SPEC, run_fixtures, train_tiny
from typer.testing import CliRunner

from conetool import paths
from conetool.checkpoints import _hashed_reads
from conetool.checkpoints._opening import open_error
from conetool.cli import app
from conetool.errors import ConetoolError
from conetool.loop import TrainingLoop
from conetool.pipeline.run_switch import switch
from conetool.pipeline.switch_recipe import defaulted_recipe
from conetool.progress import NullProgress
from conetool.spec import load_spec, save_spec, spec_from_dict, toml_text

runner = CliRunner()
trained, run = run_fixtures(SPEC)
#: the same spec with another seed: a second run of the same sizes, with other weights
SEED1 = copy.deepcopy(SPEC)
SEED1["train"]["seed"] = 1


@pytest.fixture(scope="module")
def seed1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:data:`SEED1` trained once for the module (tests copy it: ``own_loop_copy``)."""
    return train_tiny(tmp_path_factory.mktemp("seed1"), SEED1)


DEFAULTED = "does not write these keys of the [train] recipe"


def flat(text: str) -> str:
    return " ".join(text.split())


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    """``spec`` (a dict as :data:`tiny_run.SPEC`) written as a researcher writes a TOML spec:
    only its keys."""
    lines = []
    for section, values in spec.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_text(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def own_loop_copy(run: Path, folder: Path, steps: tuple[int, ...] = (0, 5, 10)) -> Path:
    """``run``'s checkpoints as a loop of one's own saves them (torch.save dicts, no conetool
    metadata, no optimizer state) in ``folder``, with no conetool.toml."""
    folder.mkdir()
    for step in steps:
        state = load_file(str(paths.checkpoint(run, step)))
        torch.save({"model_state_dict": state, "step": step}, folder / f"ckpt_{step}.pt")
    return folder


# --------------------------------------------------------------------------------------------------
# the recipe keys a spec file leaves to conetool's defaults


def test_the_spec_remembers_the_keys_its_file_wrote_without_changing_its_identity(tmp_path):
    """A file that leaves [train] keys out and the resolved spec of it (conetool.toml, which
    writes every key) are the same spec: equal, with the same hash and to_dict (stores made
    with either keep their identity); only ``written`` tells them apart."""
    partial = load_spec(write_spec(tmp_path / "mine.toml", SPEC))
    save_spec(partial, tmp_path / "resolved.toml")
    resolved = load_spec(tmp_path / "resolved.toml")
    assert partial == resolved and partial.hash() == resolved.hash()
    assert partial.to_dict() == resolved.to_dict()
    assert partial.written is not None and "train.steps" in partial.written
    assert "train.lr" not in partial.written and "train.lr" in (resolved.written or ())
    assert spec_from_dict(SPEC).written == partial.written


def test_switch_names_the_recipe_keys_an_own_runs_spec_leaves_to_conetools_defaults(run, tmp_path):
    """A run trained by the researcher's own loop, swept with a spec file that writes no lr,
    momentum, weight decay, ...: the sweep replayed conetool's defaults (lr 0.1, momentum 0.9,
    weight decay 1e-4) as the run's recipe and said nothing of it. It is a warning naming the
    keys, their values, the spec file and the fix, said once, before the first point trains."""
    pts = own_loop_copy(run, tmp_path / "pts")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    args = ["switch", "--at", "0,5", "--until", "10", "--ckpts", str(pts), "--spec", str(spec)]
    loud = runner.invoke(app, [*args, "--store", str(tmp_path / "a"), "--device", "cpu"])
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count(DEFAULTED) == 1, text
    warning = text[text.index(f"warning: {spec}") :]
    keys = warning.split("conetool's defaults: ")[1].split(". These")[0].split("; ")
    # batch_size is written; --until is given (T is not train.steps); the seed is no recipe key
    assert keys == [
        'optimizer = "sgd"',
        "lr = 0.1",
        "momentum = 0.9",
        "nesterov = false",
        "weight_decay = 0.0001",
        "label_smoothing = 0.0",
        'schedule = "constant"',
        "warmup_steps = 0",
    ], warning
    assert f"Write your run's recipe into [train] of {spec}" in warning
    assert text.index(DEFAULTED) < text.index("switch t=0"), text  # before the points
    # which keys count: steps where it is T (no --until) or shapes the cosine schedule, Adam's
    # betas instead of SGD's momentum, the step schedule's milestones and gamma
    nosteps = copy.deepcopy(SPEC)
    del nosteps["train"]["steps"]
    mine = spec_from_dict(nosteps, source="mine.toml")
    assert "steps = 1000" in defaulted_recipe(mine, until_given=False)
    assert "steps = 1000" not in defaulted_recipe(mine, until_given=True)
    nosteps["train"].update(optimizer="adam", schedule="step", milestones=[5])
    adam = defaulted_recipe(spec_from_dict(nosteps), until_given=True)
    assert "betas = [0.9, 0.999]" in adam and "gamma = 0.1" in adam, adam
    assert not [k for k in adam if k.startswith(("momentum", "milestones", "seed"))], adam


def test_an_own_runs_sweep_names_what_of_its_loop_no_spec_key_replays(run, tmp_path):
    """A run trained with class weights, mixup, clipping, its own scheduler or augmentation of
    its own data was swept with the spec's cross-entropy and schedule and unaugmented batches,
    and nothing said so: the warning of a run conetool did not train names them, as what is not
    replayed (label smoothing: its [train] key)."""
    pts = own_loop_copy(run, tmp_path / "pts")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    result = switch([0], until=10, store=tmp_path / "s", ckpts=pts, spec=spec, device="cpu")
    (said,) = [w for w in result.warnings if w.startswith("these checkpoints were not written")]
    assert "Its loss is cross-entropy of the logits (with [train] label_smoothing)" in said
    assert "no spec key gives it (class weights, mixup or cutmix" in said, said
    assert "a scheduler other than [train]'s schedule and warmup_steps" in said, said
    assert "a data set of your own is never augmented" in said, said


def test_no_defaults_warning_for_a_whole_recipe_or_a_run_conetool_trained(run, tmp_path):
    """A spec that writes every recipe key says nothing of defaults; nor does a run conetool
    train wrote (its checkpoints carry conetool's metadata), even swept with a partial
    --spec."""
    pts = own_loop_copy(run, tmp_path / "pts")
    whole = copy.deepcopy(SPEC)
    whole["train"].update(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        schedule="constant",
        warmup_steps=0,
    )
    spec = write_spec(tmp_path / "whole.toml", whole)
    result = switch([0], until=10, store=tmp_path / "a", ckpts=pts, spec=spec, device="cpu")
    assert not [w for w in result.warnings if DEFAULTED in w], result.warnings
    partial = write_spec(tmp_path / "mine.toml", SPEC)
    result = switch([0], until=10, store=tmp_path / "b", ckpts=run, spec=partial, device="cpu")
    assert not [w for w in result.warnings if DEFAULTED in w], result.warnings
    # the run's own conetool.toml (resolved) beside foreign checkpoints: every key written
    shutil.copy(paths.spec(run), paths.spec(pts))
    result = switch([0], until=10, store=tmp_path / "c", ckpts=pts, device="cpu")
    assert not [w for w in result.warnings if DEFAULTED in w], result.warnings


def test_a_sweep_of_the_store_names_the_keys_the_spec_kernels_read_left_out(run, tmp_path):
    """The README's flow for one's own run: kernels with --spec, then switch on the store alone,
    whose spec is the manifest's resolved record (every key in it): the keys the file kernels
    read left to conetool's defaults were not named. The manifest records them (spec_written):
    named with that file and the fix (the store's kernels are of the spec as it was)."""
    pts = own_loop_copy(run, tmp_path / "pts")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    store = tmp_path / "s"
    made = runner.invoke(app, ["kernels", str(pts), "--spec", str(spec), "--store", str(store)])
    assert made.exit_code == 0, made.output
    result = switch([0], until=10, store=store, device="cpu")
    (said,) = [w for w in result.warnings if DEFAULTED in w]
    assert said.startswith(f"{spec} (the spec conetool kernels read) does not write"), said
    assert "lr = 0.1" in said and "batch_size" not in said.split(". These")[0], said
    assert f"--spec {spec} --store OTHER_STORE" in said, said


# --------------------------------------------------------------------------------------------------
# a run other than the store's


def test_switch_refuses_another_run_of_the_same_spec_before_writing(run, seed1_run, tmp_path):
    """A second seed of the same spec trained by one's own loop (no conetool.toml), swept with
    --ckpts into the store of the first run's kernels: same spec hash, so nothing refused it,
    and its points sat beside the first run's in switch/results.csv and the figure. Refused
    before anything is written, naming both folders and the fix."""
    store = tmp_path / "s"
    first = own_loop_copy(run, tmp_path / "first")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    made = runner.invoke(app, ["kernels", str(first), "--spec", str(spec), "--store", str(store)])
    assert made.exit_code == 0, made.output
    second = own_loop_copy(seed1_run, tmp_path / "second")  # the same sizes, other weights
    args = ["switch", "--at", "5", "--until", "10", "--store", str(store), "--device", "cpu"]
    refused = runner.invoke(app, [*args, "--ckpts", str(second), "--spec", str(spec)])
    assert refused.exit_code == 1, refused.output
    text = flat(refused.output)
    assert f"--ckpts {second} holds other checkpoint files than the run the store's" in text, text
    assert f"({first.resolve()})" in text and "--store OTHER_STORE" in text, text
    assert f"{second / 'ckpt_10.pt'}" in text, text  # the latest step both hold
    assert not paths.switch_dir(store).exists()  # nothing written
    # the same files in a folder moved and renamed since kernels: the store's run, accepted
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(first, moved)
    ok = runner.invoke(app, [*args, "--ckpts", str(moved), "--spec", str(spec), "-q"])
    assert ok.exit_code == 0, ok.output
    # the same weights retrained into the store's own folder after its kernels: told as changed
    shutil.rmtree(paths.switch_dir(store))
    shutil.rmtree(moved)
    own_loop_copy(seed1_run, first)
    again = runner.invoke(app, [*args, "--ckpts", str(first), "--spec", str(spec)])
    assert again.exit_code == 1, again.output
    text = flat(again.output)
    assert f"the checkpoints in {first} changed since conetool kernels read them" in text, text
    assert "its bytes differ (sha256), against the record in" in text, text
    assert f"rerun conetool kernels {first} --store {store}" in text, text


@pytest.mark.parametrize("lost", ["missing", "damaged"])
def test_another_run_is_refused_by_the_kernel_files_records_when_the_manifest_is_lost(
    run, seed1_run, tmp_path, lost
):
    """A store whose manifest.json is deleted or damaged: the refusal of another run of the
    same spec read the manifest alone, so a second seed's sweep went in beside the kernels of
    the first run. Each kernel file carries its record (source, size, fingerprint): told by
    them, as by the manifest; the same files moved since kernels still pass."""
    store = tmp_path / "s"
    first = own_loop_copy(run, tmp_path / "first")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    made = runner.invoke(app, ["kernels", str(first), "--spec", str(spec), "--store", str(store)])
    assert made.exit_code == 0, made.output
    if lost == "missing":
        paths.manifest(store).unlink()
    else:
        paths.manifest(store).write_text("{")
    second = own_loop_copy(seed1_run, tmp_path / "second")
    args = ["switch", "--at", "5", "--until", "10", "--store", str(store), "--device", "cpu"]
    refused = runner.invoke(app, [*args, "--ckpts", str(second), "--spec", str(spec)])
    assert refused.exit_code == 1, refused.output
    text = flat(refused.output)
    assert f"--ckpts {second} holds other checkpoint files than the run the store's" in text, text
    assert f"({first.resolve()})" in text and f"{second / 'ckpt_10.pt'}" in text, text
    assert f"the record its kernel file carries ({paths.MANIFEST_NAME} is {lost})" in text, text
    assert not paths.switch_dir(store).exists()  # nothing written
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(first, moved)
    ok = runner.invoke(app, [*args, "--ckpts", str(moved), "--spec", str(spec), "-q"])
    assert ok.exit_code == 0, ok.output
    assert paths.switch_point(store, 5).is_file()


@pytest.mark.parametrize("lost", [None, "missing", "damaged"])
def test_another_run_given_with_a_spec_differing_in_probe_alone_is_refused_without_a_manifest(
    run, seed1_run, tmp_path, lost
):
    """--spec differing from the kernels' spec in [probe] alone (a probe set the sweep does not
    use) sweeps the store's run, and another run given with it is refused by the manifest's
    records. Without the manifest, the kernel files' records were looked up under the sweep's
    own spec hash, which no kernel file carries: the second run's points went in beside the
    kernels of the first. Now told by the records of the kernels' spec, as with the manifest."""
    store = tmp_path / "s"
    first = own_loop_copy(run, tmp_path / "first")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    made = runner.invoke(app, ["kernels", str(first), "--spec", str(spec), "--store", str(store)])
    assert made.exit_code == 0, made.output
    if lost == "missing":
        paths.manifest(store).unlink()
    elif lost == "damaged":
        paths.manifest(store).write_text("{")
    probe = copy.deepcopy(SPEC)
    probe["probe"]["size"] = SPEC["probe"]["size"] - 1
    other_probe = write_spec(tmp_path / "probe.toml", probe)
    second = own_loop_copy(seed1_run, tmp_path / "second")
    args = ["switch", "--at", "5", "--until", "10", "--store", str(store), "--device", "cpu"]
    refused = runner.invoke(app, [*args, "--ckpts", str(second), "--spec", str(other_probe)])
    assert refused.exit_code == 1, refused.output
    text = flat(refused.output)
    assert f"--ckpts {second} holds other checkpoint files than the run the store's" in text, text
    assert not paths.switch_dir(store).exists()  # nothing written
    ok = runner.invoke(app, [*args, "--ckpts", str(first), "--spec", str(other_probe), "-q"])
    assert ok.exit_code == 0, ok.output  # the store's own run, with that spec, still sweeps
    assert paths.switch_point(store, 5).is_file()


def test_the_same_run_converted_to_other_files_is_refused_with_a_true_message(run, tmp_path):
    """The store's run converted from .safetensors to torch.save files (the same tensors): the
    refusal said '--ckpts is another run' and 'its size or content differs', neither true. No
    identity of the weights is recorded, so it stays refused; the message says the files
    differ, that a converted or re-saved copy is refused too, and what to do (its own store,
    whose kernels the command named computes, or the store's run without --ckpts): both work."""
    store = tmp_path / "s"
    made = runner.invoke(app, ["kernels", str(run), "--store", str(store)])
    assert made.exit_code == 0, made.output
    converted = own_loop_copy(run, tmp_path / "converted")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    args = ["switch", "--at", "5", "--until", "10", "--device", "cpu"]
    given = ["--ckpts", str(converted), "--spec", str(spec)]
    refused = runner.invoke(app, [*args, *given, "--store", str(store)])
    assert refused.exit_code == 1, refused.output
    text = flat(refused.output)
    assert "another run than" not in text and "content differs" not in text, text
    assert f"--ckpts {converted} holds other checkpoint files than the run" in text, text
    assert "another run, or that run converted or saved again" in text, text
    size = (converted / "ckpt_10.pt").stat().st_size
    recorded = paths.checkpoint(run, 10).stat().st_size
    assert f"it has {size} bytes, the record {recorded}, against the record in" in text, text
    assert "converted to other files (.safetensors to .pt) or saved again is refused too" in text
    other = tmp_path / "other"
    assert f"conetool kernels {converted} --store OTHER_STORE computes its kernels" in text, text
    assert not paths.switch_dir(store).exists()  # nothing written
    # what it says to do works: kernels of the copy into a store of its own, then the sweep
    made = runner.invoke(
        app, ["kernels", str(converted), "--spec", str(spec), "--store", str(other)]
    )
    assert made.exit_code == 0, made.output
    ok = runner.invoke(app, [*args, *given, "--store", str(other), "-q"])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, [*args, "--store", str(store), "-q"])  # the store's run, no --ckpts
    assert ok.exit_code == 0, ok.output


def test_a_checkpoint_unreadable_where_the_run_is_told_is_named_with_why_it_is_read(
    run, tmp_path, monkeypatch
):
    """The checkpoint of the latest step both --ckpts and the store hold is hashed in full to
    tell the run (the listing read its header alone): an I/O error there escaped as the file's
    bare error, about a step the sweep does not use (--at 0 --until 5, step 10 read). Its
    error, naming the file and the fix, now says why switch reads it; nothing is written."""
    store = tmp_path / "s"
    made = runner.invoke(app, ["kernels", str(run), "--store", str(store)])
    assert made.exit_code == 0, made.output
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    bad = moved / paths.checkpoint(run, 10).name
    real = _hashed_reads.stream_file

    def stream_file(path: Path, *, keep: bool) -> Any:
        if Path(path) == bad:
            raise open_error(Path(path), OSError(errno.EIO, "Input/output error"))
        return real(path, keep=keep)

    monkeypatch.setattr(_hashed_reads, "stream_file", stream_file)
    args = ["switch", "--at", "0", "--until", "5", "--store", str(store), "--device", "cpu"]
    refused = runner.invoke(app, [*args, "--ckpts", str(moved)])
    assert refused.exit_code == 1, refused.output
    text = flat(refused.output)
    assert f"cannot read '{bad}': Input/output error. Check the file and the disk." in text, text
    assert f"reads the checkpoint of step 10, the latest step both --ckpts {moved}" in text, text
    assert not paths.switch_dir(store).exists()
    monkeypatch.setattr(_hashed_reads, "stream_file", real)
    ok = runner.invoke(app, [*args, "--ckpts", str(moved), "-q"])  # the same files: accepted
    assert ok.exit_code == 0, ok.output


def test_a_store_without_kernels_takes_any_run(run, seed1_run, tmp_path):
    """A store holding only switch points (no kernels) has no run to keep: another run's sweep
    goes in, as before."""
    store = tmp_path / "s"
    pts = own_loop_copy(run, tmp_path / "pts")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    switch([5], until=10, store=store, ckpts=pts, spec=spec, device="cpu")
    second = own_loop_copy(seed1_run, tmp_path / "second")
    result = switch([0], until=10, store=store, ckpts=second, spec=spec, device="cpu")
    assert [p.at for p in result.points] == [0]


# --------------------------------------------------------------------------------------------------
# --quiet and a sweep that fails


def the_point_of_step_5_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's point at step 5 raises "the point of step 5 failed" as its training starts."""
    real = TrainingLoop.run

    def run_loop(self, start, stop):
        if start == 5:
            raise ConetoolError("the point of step 5 failed")
        return real(self, start, stop)

    monkeypatch.setattr(TrainingLoop, "run", run_loop)


def test_quiet_keeps_the_warnings_of_a_sweep_that_fails(run, tmp_path, monkeypatch):
    """--quiet prints the warnings after the results: a sweep that failed at its second point
    had no results, and the warnings said before the failure (checkpoints conetool train did
    not write, the recipe keys left to defaults, which may explain it) were lost, only the error
    printed. They reach stderr before the error; the progress and the notes stay out."""
    pts = own_loop_copy(run, tmp_path / "pts")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    the_point_of_step_5_fails(monkeypatch)
    args = ["switch", "--at", "0,5", "--until", "10", "--ckpts", str(pts), "--spec", str(spec)]
    quiet = runner.invoke(app, [*args, "--store", str(tmp_path / "s"), "--device", "cpu", "-q"])
    assert quiet.exit_code == 1, quiet.output
    text = flat(quiet.stderr)
    foreign = "warning: these checkpoints were not written by `conetool train`"
    assert text.count(foreign) == 1 and text.count(DEFAULTED) == 1, text
    assert text.index(foreign) < text.index("error: the point of step 5 failed"), text
    assert text.index(DEFAULTED) < text.index("error: the point of step 5 failed"), text
    assert "note:" not in quiet.output and "switch t=" not in quiet.output, quiet.output
    assert paths.switch_point(tmp_path / "s", 0).is_file()  # the point done is kept


@pytest.mark.parametrize("quiet", [False, True], ids=["shown", "quiet"])
def test_a_warning_of_the_sweeps_preparation_is_said_before_its_refusal(run, tmp_path, quiet):
    """What prepare_sweep warned of (here a T past the run under the cosine schedule, whose
    learning rate is 0 there) was kept in a list said only once it returned: a sweep it then
    refused (--at 3, a step with no checkpoint) printed the error alone, without the warning
    that may explain it. It is said before the error, once, with and without --quiet (and once
    by a sweep that goes on)."""
    cosine = copy.deepcopy(SPEC)
    cosine["train"]["schedule"] = "cosine"
    spec = write_spec(tmp_path / "cosine.toml", cosine)
    args = ["switch", "--at", "3", "--until", "12", "--beyond-run", "--ckpts", str(run)]
    args += ["--spec", str(spec), "--store", str(tmp_path / "s"), "--device", "cpu"]
    result = runner.invoke(app, args + (["--quiet"] if quiet else []))
    assert result.exit_code == 1, result.output
    text = flat(result.output)
    warning = "warning: --until 12 is beyond train.steps = 10"
    error = f"error: --at 3: {run} has no checkpoint of step 3"
    assert text.count(warning) == 1 and text.count(error) == 1, text
    assert text.index(warning) < text.index(error), text
    assert not (tmp_path / "s" / "switch").exists()
    # a sweep that goes on says it once too (as it comes; --quiet: after the points)
    args[args.index("3")] = "5"
    done = runner.invoke(app, args + (["--quiet"] if quiet else []))
    assert done.exit_code == 0, done.output
    assert flat(done.output).count(warning) == 1, done.output


# --------------------------------------------------------------------------------------------------
# a library call that raises: its warnings through Python's warnings module


def test_a_library_sweep_that_fails_gives_its_warnings_to_python(run, tmp_path, monkeypatch):
    """conetool.switch(...) without a progress that failed at its second point raised, and the
    warnings said before (checkpoints conetool train did not write, the recipe keys left to
    defaults, which may explain it) went to the progress it was not given: lost. They reach
    the caller through Python's warnings module (a UserWarning each, naming the caller's
    line), before the error; given a progress, they are said there and not again."""
    pts = own_loop_copy(run, tmp_path / "pts")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    the_point_of_step_5_fails(monkeypatch)
    sweep = {"until": 10, "ckpts": pts, "spec": spec, "device": "cpu"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConetoolError, match="the point of step 5 failed"):
            switch([0, 5], store=tmp_path / "s", **sweep)
    ours = [w for w in caught if issubclass(w.category, UserWarning) and w.filename == __file__]
    texts = [str(w.message) for w in ours]
    assert sum(DEFAULTED in text for text in texts) == 1, texts
    foreign = "these checkpoints were not written by `conetool train`"
    assert sum(text.startswith(foreign) for text in texts) == 1, texts
    # given a progress, the warnings are said there, once, and not again through Python's
    logged: list[str] = []

    class Lines:
        def task(self, description: str, total: int | None) -> Any:
            return NullProgress().task(description, total)

        def log(self, message: str) -> None:
            logged.append(message)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConetoolError, match="the point of step 5 failed"):
            switch([0, 5], store=tmp_path / "t", progress=Lines(), **sweep)
    assert not [w for w in caught if DEFAULTED in str(w.message)], caught
    assert sum(DEFAULTED in line for line in logged) == 1, logged


def test_a_library_sweep_refused_by_its_preparation_gives_its_warnings_to_python(run, tmp_path):
    """What prepare_sweep warned of (a T past the run under the cosine schedule, whose learning
    rate is 0 there) before it refused the sweep (a step with no checkpoint) reaches a caller
    without a progress through Python's warnings module; a sweep that goes on keeps it in its
    result, not said through Python's."""
    cosine = copy.deepcopy(SPEC)
    cosine["train"]["schedule"] = "cosine"
    spec = write_spec(tmp_path / "cosine.toml", cosine)
    sweep = {"until": 12, "beyond_run": True, "ckpts": run, "spec": spec, "device": "cpu"}
    beyond = "--until 12 is beyond train.steps = 10"
    with pytest.warns(UserWarning, match=re.escape(beyond)) as caught:
        with pytest.raises(ConetoolError, match="has no checkpoint of step 3"):
            switch(3, store=tmp_path / "s", **sweep)
    assert [w.filename for w in caught if beyond in str(w.message)] == [__file__]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = switch(5, store=tmp_path / "s", **sweep)
    assert sum(beyond in message for message in result.warnings) == 1, result.warnings
    assert not [w for w in caught if beyond in str(w.message)], caught


def test_switch_says_a_copy_whose_step_entry_is_no_step_as_kernels_does(run, tmp_path):
    """A loop's final.pt saved as {"model_state_dict": ..., "step": "last"} after its last
    ckpt_N.pt, holding other weights: switch --ckpts said it 'stores no step' (or, with the last
    step's weights, nothing), as kernels did; now both name the entry and the fix."""
    pts = own_loop_copy(run, tmp_path / "pts")
    state = load_file(str(paths.checkpoint(run, 10)))
    later = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model_state_dict": later, "step": "last"}, pts / "final.pt")
    spec = write_spec(tmp_path / "mine.toml", SPEC)
    said = "is named without a step and stores a 'step' entry of 'last' in its torch.save dict"
    args = ["--spec", str(spec), "--device", "cpu"]
    made = runner.invoke(app, ["kernels", str(pts), "--store", str(tmp_path / "k"), *args])
    assert made.exit_code == 0, made.output
    swept = runner.invoke(
        app,
        [
            "switch",
            "--at",
            "5",
            "--until",
            "10",
            "--ckpts",
            str(pts),
            "--store",
            str(tmp_path / "s"),
            *args,
        ],
    )
    assert swept.exit_code == 0, swept.output
    for output in (made.output, swept.output):
        text = flat(output)
        assert text.count(said) == 1, text
        assert "other tensors than the last checkpoint read, 'ckpt_10.pt' (step 10)" in text, text


def test_augment_is_named_only_where_the_data_set_augments() -> None:
    """conetool augments CIFAR-10 alone (crop and flip); a user's factory's batches are never
    augmented, so a spec that leaves augment out replays nothing of it and the warning on the
    recipe's defaults does not name it (it read 'augment = true', as if conetool would augment
    the researcher's data)."""
    own = {"model": {"arch": "mlp", "num_classes": 10}, "train": {"batch_size": 64}}
    mine = spec_from_dict({**own, "data": {"dataset": "mypkg.data:make_datasets"}})
    cifar = spec_from_dict({**own, "data": {"dataset": "cifar10"}})
    assert not [k for k in defaulted_recipe(mine, until_given=True) if k.startswith("augment")]
    assert "augment = true" in defaulted_recipe(cifar, until_given=True)
