"""What ``conetool kernels`` says when steps fail (:mod:`conetool.pipeline.kernels_failures`): a
spec's model that fits none of the run's checkpoints is named as the fault (not "this
checkpoint", not --skip-bad), a checkpoint alone from another network as its own, identical
problems are said once with the steps they apply to, and a store the failed run created without
a kernel is not left behind (one that was there is kept, and said so)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import RENAMED_MODELS, SPEC, STEPS, as_torch, metadata, run_fixtures
from typer.testing import CliRunner

import conetool
from conetool import paths, store_records
from conetool.cli import app
from conetool.errors import CheckpointError, ModelError, StoreError
from conetool.pipeline import kernels
from conetool.spec import Spec, spec_from_dict, spec_to_toml
from conetool.store import Store
from conetool.training import train

runner = CliRunner()
trained, run = run_fixtures()


@pytest.fixture
def renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "conetool_kf_renamed.py").write_text(RENAMED_MODELS)
    monkeypatch.syspath_prepend(str(folder))
    model = {"arch": "conetool_kf_renamed:make", "num_classes": 3}
    return spec_from_dict({**SPEC, "model": model}, source="renamed.toml")


def plain() -> Spec:
    return spec_from_dict(SPEC, source="tiny.toml")


def flat(text: str) -> str:
    return " ".join(text.split())


def as_int64(path: Path) -> None:
    """Every floating tensor of the safetensors file ``path`` saved as int64."""
    state = {k: (100 * v).to(torch.int64) for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata=metadata(path))


# --------------------------------------------------------------------------------------------------
# the spec's model, not the checkpoint


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("form", ["safetensors", "torch"])
def test_a_spec_model_that_fits_none_of_the_checkpoints_is_named_as_the_fault(
    run: Path, renamed: Spec, tmp_path: Path, form: str, skip_bad: bool
) -> None:
    # It said "fix this checkpoint and rerun, or pass --skip-bad", and with --skip-bad "every
    # checkpoint failed", the same message once per checkpoint; the store it created (manifest
    # and probe of the wrong spec) was left, and refused the rerun with the right spec.
    ckpts = run if form == "safetensors" else as_torch(run, tmp_path / "pt")
    store = tmp_path / "store"
    with pytest.raises(CheckpointError) as stopped:
        kernels(ckpts, spec=renamed, store=store, device="cpu", skip_bad=skip_bad)
    assert isinstance(stopped.value, conetool.KeyMismatchError)
    text = flat(str(stopped.value))
    assert text.startswith("step 0 ") and "4 unexpected key(s)" in text, text
    assert "does not fit it either: the spec's model does not fit this run's checkpoints" in text
    assert "so every checkpoint would fail alike and the run stops here" in text, text
    assert '[model] arch = "conetool_kf_renamed:make" in renamed.toml' in text, text
    assert "fix that arch or its factory" in text, text
    assert "fix this checkpoint" not in text and "every checkpoint failed" not in text, text
    assert text.count("--skip-bad") == 1 and "(with --skip-bad too)" in text, text
    assert "No kernel was computed;" in text and text.endswith("and rerun."), text
    assert not store.exists()  # nothing computed: the store it created is not left
    done = kernels(ckpts, spec=plain(), store=store, device="cpu")  # the fix: not refused
    assert done.computed == STEPS


def test_the_command_says_it_without_a_traceback_and_leaves_no_store(
    run: Path, renamed: Spec, tmp_path: Path
) -> None:
    spec = tmp_path / "renamed.toml"
    spec.write_text(spec_to_toml(renamed))
    paths.spec(run).unlink()  # a run of one's own: the spec comes with --spec
    store = tmp_path / "s"
    args = ["kernels", str(run), "--spec", str(spec), "--store", str(store), "--skip-bad"]
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert "the spec's model does not fit this run's checkpoints" in text, text
    assert "skipped step" not in text and "every checkpoint failed" not in text, text
    assert not store.exists()


def test_a_checkpoint_alone_from_another_network_is_its_own_fault(
    run: Path, tmp_path: Path
) -> None:
    # torch.save files: listing does not read their keys, so the loop meets the odd one
    ckpts = as_torch(run, tmp_path / "pt")
    odd = ckpts / "step_5.pt"
    state = torch.load(odd, weights_only=True)
    torch.save({"x" + k if k.startswith("fc.") else k: v for k, v in state.items()}, odd)
    store = tmp_path / "store"
    with pytest.raises(CheckpointError) as stopped:
        kernels(ckpts, spec=plain(), store=store, device="cpu")
    text = flat(str(stopped.value))
    assert text.startswith("step 5 "), text
    assert (
        f"Step 10 ({ckpts / 'step_10.pt'}) fits the model: this checkpoint alone was saved " in text
    )
    assert f"Kernels already computed are kept in {store}; move it out and rerun, or pass " in text
    assert "--skip-bad to go on without it." in text, text
    assert Store.open(store).steps() == [0]
    result = kernels(ckpts, spec=plain(), store=store, device="cpu", skip_bad=True)
    assert list(result.failed) == [5] and result.computed == [10]


def test_a_model_that_loaded_a_checkpoint_is_not_blamed_for_two_odd_ones(
    run: Path, tmp_path: Path
) -> None:
    # Steps 5 and 10 from another network, step 0 loaded and computed: step 5 was compared with
    # step 10 alone, which does not fit either, so the run stopped under --skip-bad saying that
    # the spec's model fits none of the run's checkpoints, though it had just loaded step 0's.
    ckpts = as_torch(run, tmp_path / "pt")
    for step in (5, 10):
        odd = ckpts / f"step_{step}.pt"
        state = torch.load(odd, weights_only=True)
        torch.save({"x" + k if k.startswith("fc.") else k: v for k, v in state.items()}, odd)
    store = tmp_path / "store"
    result = kernels(ckpts, spec=plain(), store=store, device="cpu", skip_bad=True)
    assert result.computed == [0] and list(result.failed) == [5, 10]
    with pytest.raises(CheckpointError) as stopped:  # without --skip-bad: step 5's own fault
        kernels(ckpts, spec=plain(), store=tmp_path / "other", device="cpu")
    text = flat(str(stopped.value))
    assert f"Step 0 ({ckpts / 'step_0.pt'}) fits the model: this checkpoint alone" in text, text
    assert "does not fit this run's checkpoints" not in text, text


# --------------------------------------------------------------------------------------------------
# every checkpoint failed: each problem once


def test_every_checkpoint_failed_says_each_problem_once(run: Path, tmp_path: Path) -> None:
    for step in STEPS:
        as_int64(paths.checkpoint(run, step))
    store = tmp_path / "s"
    result = runner.invoke(app, ["kernels", str(run), "--store", str(store), "--skip-bad"])
    text = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert "every checkpoint failed (3 of 3), so no kernel was computed:" in text, text
    names = ", ".join(paths.checkpoint(run, s).name for s in STEPS)
    assert f"- steps 0, 5, 10 ({names}): each file stores tensor " in text, text
    # said in full once as it came (the later steps name the first), and once in the error
    assert text.count("cannot hold its values") == 2, text
    assert text.count("the same problem as step 0 (above)") == 2, text
    assert "Fix the checkpoints (or the options) and rerun." in text, text
    error = text[text.index("error: ") :]
    assert ".;" not in error and ".." not in error, error
    assert not store.exists()


def test_the_steps_that_failed_alike_are_listed_once_after_the_table(
    run: Path, tmp_path: Path
) -> None:
    for step in (5, 10):
        as_int64(paths.checkpoint(run, step))
    result = runner.invoke(app, ["kernels", str(run), "--store", str(tmp_path / "s"), "--skip-bad"])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    names = ", ".join(paths.checkpoint(run, s).name for s in (5, 10))
    assert f"- failed steps 5, 10 ({names}): each file stores tensor " in text, text
    assert text.count("cannot hold its values") == 2, text  # as it came, and after the table


def test_a_legacy_pickle_run_that_fits_no_model_is_told_either_way(
    run: Path, renamed: Spec, tmp_path: Path
) -> None:
    # A legacy pickle's keys cannot be read without reading the whole file: no second
    # checkpoint tells whose fault it is, so the message gives both fixes, and with --skip-bad
    # the end says that none of them fits the spec's model.
    ckpts = as_torch(run, tmp_path / "legacy", legacy=True)
    store = tmp_path / "s"
    with pytest.raises(CheckpointError) as stopped:
        kernels(ckpts, spec=renamed, store=store, device="cpu")
    text = flat(str(stopped.value))
    assert "If the run's other checkpoints were saved like this one, the spec's model " in text
    assert "if this checkpoint alone comes from another network, move it out" in text, text
    with pytest.raises(StoreError) as failed:
        kernels(ckpts, spec=renamed, store=store, device="cpu", skip_bad=True)
    text = str(failed.value)
    assert "every checkpoint failed (3 of 3)" in text and text.count("does not fit") == 1, text
    assert "- steps 0, 5, 10 (step_0.pt, step_5.pt, step_10.pt): each file does not fit" in text
    assert 'None of them fits the spec\'s model: its [model] arch = "conetool_kf_renamed:make"' in (
        flat(text)
    )
    assert not store.exists()


# --------------------------------------------------------------------------------------------------
# what the store keeps


def test_a_store_that_was_there_is_kept_and_said_so(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", steps=(0, 5))
    as_int64(paths.checkpoint(run, 10))
    with pytest.raises(StoreError) as failed:
        kernels(run, store=store, device="cpu", steps=(10, None), skip_bad=True)
    assert f"{store} keeps the 2 kernel(s) it held before." in str(failed.value)
    assert Store.open(store).steps() == [0, 5]
    # an empty folder made for the store stays, empty: the run's files are not left in it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError):
        kernels(run, store=empty, device="cpu", steps=(10, None), skip_bad=True)
    assert empty.is_dir() and not any(empty.iterdir())
    # and a folder holding a file of the user's is left as it is
    shutil.rmtree(empty)
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    with pytest.raises(StoreError):
        kernels(run, store=empty, device="cpu", steps=(10, None), skip_bad=True)
    assert (empty / "notes.txt").read_text() == "mine" and paths.manifest(empty).is_file()


def test_a_first_checkpoint_beyond_the_dtype_leaves_the_store_overwrite_would_replace(
    run: Path, tmp_path: Path
) -> None:
    # A failure that the checks before the clearing cannot see (.overwrite_checks): values of
    # the first checkpoint beyond the model's dtype, met when it is read in full. The store is
    # cleared only once the first kernel is computed, so it is left as it was.
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", steps=(0, 0))
    kept = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    first = paths.checkpoint(run, 0)
    saved = first.read_bytes()
    as_int64(first)
    with pytest.raises(CheckpointError) as failed:
        kernels(run, store=store, device="cpu", probe_size=4, overwrite=True)
    assert f"--overwrite removed nothing: {store} is as it was" in flat(str(failed.value))
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == kept
    first.write_bytes(saved)
    result = kernels(run, spec=plain(), store=store, device="cpu")
    assert result.computed == [5, 10] and result.skipped == [0]


def test_a_store_emptied_by_overwrite_is_not_left_holding_the_wrong_spec(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first kernel computed, the store is cleared; its write fails (a full disk, say).
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", steps=(0, 0))

    def full(path: Path, *args: object, **kwargs: object) -> None:
        raise StoreError(f"no space left on the device to write {path}")

    with monkeypatch.context() as patched:
        patched.setattr(store_records, "atomic_save_safetensors", full)
        with pytest.raises(StoreError):
            kernels(run, store=store, device="cpu", probe_size=4, overwrite=True)
    # --overwrite removed the other probe set's kernel, as it does; the failed run's manifest is
    # not left in its place (a rerun with the store's own options would have needed --overwrite
    # again)
    assert store.is_dir() and not paths.manifest(store).exists()
    assert not any(p.name in ("kernels", "probe.safetensors", ".lock") for p in store.iterdir())
    assert kernels(run, spec=plain(), store=store, device="cpu").computed == STEPS


def test_a_folder_a_failed_overwrite_left_holding_only_readers_locks_is_no_store_of_it(
    run: Path, renamed: Spec, tmp_path: Path
) -> None:
    # --overwrite into a new folder clears it under the readers' lock, which leaves
    # .results.lock and .results.gate there (remove_unused keeps them: a reader may hold one).
    # That folder was then "used": the next failed run's manifest of the wrong spec was left in
    # it, and the rerun with the right spec was refused as another spec's store.
    store = tmp_path / "s"
    with pytest.raises(CheckpointError):
        kernels(run, spec=renamed, store=store, device="cpu", overwrite=True)
    assert not paths.manifest(store).exists()
    assert {p.name for p in store.iterdir()} <= {".results.lock", ".results.gate"}
    with pytest.raises(CheckpointError):
        kernels(run, spec=renamed, store=store, device="cpu")
    assert not paths.manifest(store).exists()
    assert kernels(run, spec=plain(), store=store, device="cpu").computed == STEPS


def test_a_problem_whose_numbers_are_each_checkpoints_is_said_once_then_by_step() -> None:
    """--skip-bad's warnings: the same problem at another step, with numbers of that step's
    weights (a kernel's largest entry), is said as the same as the first. Was: in full each time,
    since the messages were compared with their numbers."""
    from conetool.checkpoints import CheckpointRef
    from conetool.ntk_range import KernelUnderflowError
    from conetool.pipeline.kernels_failures import skipped_warning

    first: dict[str, int] = {}
    for step, peak in ((0, "1.13e-43"), (5, "1.33e-43")):
        file = Path(f"ckpts/step_{step:06d}.safetensors")
        ref = CheckpointRef(step=step, paths=(file,), source="safetensors")
        exc = KernelUnderflowError(f"the eNTK's largest entry is {peak}, below 2.47e-37")
        said = skipped_warning(exc, ref, first)
    assert said.endswith("the same problem as step 0 (above)"), said


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_lightning_file_with_a_loss_weight_beside_the_model_is_not_blamed_on_the_spec(
    run: Path, tmp_path: Path, skip_bad: bool
) -> None:
    # Was: a LightningModule's state_dict ('model.' keys and its loss's 'criterion.weight') was
    # said not to fit "the spec's model", with the fix "fix that arch or its factory", though
    # the arch was right and the file held more than the network.
    ckpts = tmp_path / "lightning"
    ckpts.mkdir()
    for path in sorted(run.glob("*.safetensors")):
        state = {"model." + k: v for k, v in load_file(str(path)).items()}
        state["criterion.weight"] = torch.ones(3)
        save_file(state, str(ckpts / path.name), metadata=metadata(path))
    with pytest.raises(conetool.ExtraModulesError) as stopped:
        kernels(ckpts, spec=plain(), store=tmp_path / "s", device="cpu", skip_bad=skip_bad)
    text = flat(str(stopped.value))
    assert text.startswith("step 0 ") and "1 unexpected key(s): 'criterion.weight'" in text, text
    assert "The spec's model is right: re-save each checkpoint with the keys under 'model.'" in text
    assert "fix that arch" not in text and "does not fit this run's" not in text, text
    assert "so the run stops here (with --skip-bad too)" in text, text


def test_a_file_saved_from_a_wrapper_the_prefix_of_which_is_not_stripped_is_the_files(
    run: Path, tmp_path: Path
) -> None:
    # Was: the message named the prefix 'net.' and the fix (re-save without it), then said the
    # spec's model does not fit the run and to "fix that arch or its factory".
    ckpts = tmp_path / "net"
    ckpts.mkdir()
    for path in sorted(run.glob("*.safetensors")):
        state = {"net." + k: v for k, v in load_file(str(path)).items()}
        save_file(state, str(ckpts / path.name), metadata=metadata(path))
    with pytest.raises(conetool.ExtraModulesError) as stopped:
        kernels(ckpts, spec=plain(), store=tmp_path / "s", device="cpu")
    text = flat(str(stopped.value))
    assert "re-save the file with 'net.' taken off its keys" in text, text
    assert "fix that arch" not in text and "does not fit this run's" not in text, text


def test_a_spec_without_arch_says_its_model_is_the_default(run: Path, tmp_path: Path) -> None:
    """A spec whose [model] sets no arch (as with the section removed, fuzz_cli --mode spec
    --seed 103 --only 25) builds the default lenet5, which fits no checkpoint of an mlp run; the
    message said "[model] arch = 'lenet5' in spec.toml", an arch the file does not hold. It says
    that lenet5 is the default the file left in place; and a lenet5 that cannot be built for the
    data (flat inputs) says so too."""
    images = {
        **SPEC,
        "data": {**SPEC["data"], "shape": [1, 8, 8]},
        "train": {**SPEC["train"], "steps": 2, "save_every": 1},
    }
    ckpts = tmp_path / "images"
    train(spec_from_dict(images, source="images.toml"), ckpts)
    spec = spec_from_dict({**images, "model": {"num_classes": 3}}, source="nomodel.toml")
    with pytest.raises(CheckpointError) as stopped:
        kernels(ckpts, spec=spec, store=tmp_path / "store", device="cpu")
    text = flat(str(stopped.value))
    assert '[model] arch = "lenet5" (the default: nomodel.toml sets no arch) must build' in text
    assert "in nomodel.toml must build" not in text, text
    spec = spec_from_dict({**SPEC, "model": {"num_classes": 3}}, source="flat.toml")
    with pytest.raises(ModelError) as built:
        kernels(run, spec=spec, store=tmp_path / "store2", device="cpu")
    assert str(built.value).startswith("flat.toml: arch 'lenet5' is a convolutional network")
    assert str(built.value).endswith(
        'flat.toml sets no [model] arch, so the default "lenet5" was built: set arch to the '
        "model meant."
    )
