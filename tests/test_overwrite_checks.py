"""``conetool kernels --overwrite`` refuses, before it clears a store that holds something, a run
that would fail for a reason known then (:mod:`conetool.pipeline.overwrite_checks`): a spec's
model whose output does not fit the data, or one that fits none of the run's checkpoints (nor the
first one, without --skip-bad). It cleared the store first, and the store's kernels and results
were lost to a typo in the spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import RENAMED_MODELS, SPEC, STEPS, as_torch, run_fixtures
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import (
    CheckpointError,
    KeyMismatchError,
    MemoryBudgetError,
    ModelError,
    StoreError,
)
from conetool.pipeline import distance, kernels, kernels_loop
from conetool.pipeline.kernels_loop import KernelsResult
from conetool.spec import Spec, spec_from_dict, spec_to_toml
from conetool.store import Store, StoreIdentity
from conetool.store_lock import writer_note

runner = CliRunner()
trained, run = run_fixtures()


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "conetool_ow_models.py").write_text(RENAMED_MODELS)
    monkeypatch.syspath_prepend(str(folder))


def spec_of(factory: str) -> Spec:
    model = {"arch": f"conetool_ow_models:{factory}", "num_classes": 3}
    return spec_from_dict({**SPEC, "model": model}, source=f"{factory}.toml")


@pytest.fixture
def store(run: Path, tmp_path: Path) -> Path:
    """A store of the run's three kernels and a distance result."""
    root = tmp_path / "store"
    kernels(run, store=root, device="cpu")
    distance(root, noise=False)
    assert paths.distance_dir(root).is_dir()
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the store, by its path in it, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def flat(text: str) -> str:
    return " ".join(text.split())


def renamed_keys(path: Path) -> None:
    """The torch.save file ``path`` saved from another network: every key renamed."""
    state = torch.load(path, weights_only=True)
    torch.save({"x" + k: v for k, v in state.items()}, path)


# --------------------------------------------------------------------------------------------------
# refused before the clearing


def test_a_model_whose_output_does_not_fit_the_data_removes_nothing(
    run: Path, store: Path, models: None, tmp_path: Path
) -> None:
    before = snapshot(store)
    spec = tmp_path / "make_four.toml"
    spec.write_text(spec_to_toml(spec_of("make_four")))
    args = ["kernels", str(run), "--spec", str(spec), "--store", str(store), "--overwrite"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    text = flat(result.output)
    assert snapshot(store) == before, text  # its kernels and results were deleted
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert f'[model] arch = "conetool_ow_models:make_four" in {spec}: ' in text, text
    assert "to an output of shape (2, 4), expected (2, 3)" in text, text
    assert f"--overwrite removed nothing: {store} is as it was" in text, text
    assert "--overwrite removed the replaced store's" not in text, text
    with pytest.raises(ModelError):  # the library says it too
        kernels(run, spec=spec_of("make_four"), store=store, device="cpu", overwrite=True)
    assert snapshot(store) == before


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("form", ["safetensors", "torch", "legacy"])
def test_a_model_that_fits_none_of_the_checkpoints_removes_nothing(
    run: Path, store: Path, models: None, tmp_path: Path, form: str, skip_bad: bool
) -> None:
    # A legacy pickle's keys are not in a header: its first checkpoint (and the second, when the
    # first does not fit) is read in full, as the run would read it.
    ckpts = run if form == "safetensors" else as_torch(run, tmp_path / form, form == "legacy")
    before = snapshot(store)
    with pytest.raises(KeyMismatchError) as refused:
        kernels(
            ckpts,
            spec=spec_of("make"),
            store=store,
            device="cpu",
            overwrite=True,
            skip_bad=skip_bad,
        )
    text = flat(str(refused.value))
    assert snapshot(store) == before, text
    first, last = (paths.checkpoint(run, s) for s in (0, 10))
    if form != "safetensors":
        first, last = ckpts / "step_0.pt", ckpts / "step_10.pt"
    assert text.startswith(f"step 0 ({first}): '{first}' does not fit the model (Net)"), text
    assert f"Step 10 ({last}) does not fit it either: the spec's model does not fit " in text
    assert '[model] arch = "conetool_ow_models:make" in make.toml must build' in text, text
    assert f"--overwrite removed nothing: {store} is as it was (a store is cleared only " in text
    assert text.endswith("and rerun."), text
    assert Store.open(store).steps() == STEPS


def test_a_first_checkpoint_alone_from_another_network_removes_nothing_without_skip_bad(
    run: Path, tmp_path: Path
) -> None:
    # The run would stop at it (the store cleared): refused, and told whose fault it is.
    ckpts = as_torch(run, tmp_path / "pt")
    store = tmp_path / "store"
    plain = spec_from_dict(SPEC, source="tiny.toml")
    kernels(ckpts, spec=plain, store=store, device="cpu")
    renamed_keys(ckpts / "step_0.pt")
    before = snapshot(store)
    again = {"spec": plain, "store": store, "device": "cpu", "overwrite": True}
    with pytest.raises(KeyMismatchError) as refused:
        kernels(ckpts, probe_size=4, **again)  # another probe set: the store is replaced
    text = flat(str(refused.value))
    assert snapshot(store) == before, text
    assert f"Step 10 ({ckpts / 'step_10.pt'}) fits the model: this checkpoint alone" in text
    assert f"--overwrite removed nothing: {store} is as it was" in text, text
    assert "move it out and rerun, or pass --skip-bad to go on without it." in text, text
    # with --skip-bad the run goes on without it, as before: the store replaced
    result = kernels(ckpts, probe_size=4, skip_bad=True, **again)
    assert result.computed == [5, 10] and list(result.failed) == [0]
    assert any("--overwrite removed the replaced store's 3 kernel" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------------
# what only the values or the engine reveal: the store is cleared once the first kernel is computed


@pytest.fixture
def full_store(run: Path, tmp_path: Path) -> Path:
    """A store of the run's three kernels, their eval and layer kernels and a distance result."""
    root = tmp_path / "full"
    kernels(run, store=root, device="cpu", eval_size=3, per_layer=True)
    distance(root, noise=False)
    for folder in ("kernels", "eval_kernels", "layer_kernels", "distance"):
        assert any((root / folder).iterdir()), folder
    return root


def nan_in(path: Path) -> None:
    """The safetensors checkpoint ``path`` with a NaN in its first tensor."""
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(path))


def replaced(root: Path, result: KernelsResult, computed: list[int]) -> None:
    """``root`` is the new store of the --overwrite run ``result``: probe size 4, the kernels,
    eval and layer kernels of ``computed``, and nothing of the old one (its 3 kernels, their
    eval and layer kernels and its distance results, said removed)."""
    store = Store.open(root)
    assert store.steps() == computed and result.computed == computed
    assert store.manifest["probe"]["size"] == 4
    assert tuple(store.load_kernel(computed[0]).shape) == (4, 4)
    assert result.eval_computed == computed and result.layer_computed == computed
    assert not paths.distance_dir(root).exists()
    removed = [w for w in result.warnings if "--overwrite removed the replaced store's" in w]
    assert removed and "3 kernel file(s), 3 eval kernel file(s), 3 layer kernel" in removed[0]
    assert len(removed) == 1, removed  # said once, not again at each kernel


AGAIN = {"device": "cpu", "overwrite": True, "probe_size": 4, "eval_size": 3, "per_layer": True}


def test_a_first_checkpoint_holding_nan_removes_nothing(run: Path, full_store: Path) -> None:
    # Its keys and shapes fit: only reading its values tells. The run stopped there, the store
    # already cleared (kernels, eval and layer kernels, results).
    nan_in(paths.checkpoint(run, 0))
    before = snapshot(full_store)
    with pytest.raises(CheckpointError) as failed:
        kernels(run, store=full_store, **AGAIN)
    text = flat(str(failed.value))
    assert snapshot(full_store) == before, text
    assert "holds non-finite values in tensor" in text, text
    assert f"--overwrite removed nothing: {full_store} is as it was" in text, text
    assert text.endswith("or pass --skip-bad to go on without it."), text
    # --skip-bad goes on without it: the store is cleared once the next step's kernel is computed
    result = kernels(run, store=full_store, skip_bad=True, **AGAIN)
    assert list(result.failed) == [0]
    replaced(full_store, result, [5, 10])


def test_every_checkpoint_holding_nan_under_skip_bad_removes_nothing(
    run: Path, full_store: Path
) -> None:
    for step in STEPS:
        nan_in(paths.checkpoint(run, step))
    before = snapshot(full_store)
    with pytest.raises(StoreError) as failed:
        kernels(run, store=full_store, skip_bad=True, **AGAIN)
    text = flat(str(failed.value))
    assert snapshot(full_store) == before, text
    assert text.startswith("every checkpoint failed (3 of 3)"), text
    assert text.endswith(
        f"--overwrite removed nothing: {full_store} is as it was (a store is "
        "cleared only once the run has computed its first kernel)."
    ), text


def test_a_first_checkpoint_cut_short_removes_nothing(run: Path, tmp_path: Path) -> None:
    # A legacy torch.save pickle whose end is missing: listing the run takes it, the checks
    # before the clearing cannot read it (and leave it to the run), and reading it fails.
    ckpts = as_torch(run, tmp_path / "legacy", legacy=True)
    store = tmp_path / "store"
    plain = spec_from_dict(SPEC, source="tiny.toml")
    kernels(ckpts, spec=plain, store=store, device="cpu")
    distance(store, noise=False)
    first = ckpts / "step_0.pt"
    saved = first.read_bytes()
    first.write_bytes(saved[:-40])
    before = snapshot(store)
    again = {"spec": plain, "store": store, "device": "cpu", "overwrite": True, "probe_size": 4}
    with pytest.raises(CheckpointError) as failed:
        kernels(ckpts, **again)
    text = flat(str(failed.value))
    assert snapshot(store) == before, text
    assert f"'{first}' is not a readable torch checkpoint" in text, text
    assert f"--overwrite removed nothing: {store} is as it was" in text, text
    first.write_bytes(saved)  # fixed: the store is replaced
    assert kernels(ckpts, **again).computed == STEPS
    assert Store.open(store).manifest["probe"]["size"] == 4
    assert not paths.distance_dir(store).exists()


def test_a_memory_budget_too_small_removes_nothing(run: Path, full_store: Path) -> None:
    # Only the engine tells (it plans the kernel's memory); it stops the run under --skip-bad too.
    before = snapshot(full_store)
    args = ["kernels", str(run), "--store", str(full_store), "--overwrite", "--device", "cpu"]
    args += ["--probe-size", "4", "--max-memory", "1KiB", "--skip-bad"]
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert snapshot(full_store) == before, text
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert "--max-memory 1.00 KiB is too small for this model" in text, text
    assert f"--overwrite removed nothing: {full_store} is as it was" in text, text
    assert "--overwrite removed the replaced store's" not in text, text
    with pytest.raises(MemoryBudgetError):  # the library too
        kernels(run, store=full_store, max_memory="1KiB", **AGAIN)
    assert snapshot(full_store) == before


def test_an_interrupt_before_the_first_kernel_removes_nothing(
    run: Path, full_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> torch.Tensor:
        raise KeyboardInterrupt

    before = snapshot(full_store)
    with monkeypatch.context() as patched:
        patched.setattr(kernels_loop, "empirical_ntk", interrupted)
        with pytest.raises(KeyboardInterrupt):
            kernels(run, store=full_store, **AGAIN)
    assert snapshot(full_store) == before
    # the lock is released: the same command replaces the store now
    replaced(full_store, kernels(run, store=full_store, **AGAIN), STEPS)


def test_the_old_store_stays_until_the_first_kernel_is_computed(
    run: Path, full_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each of the engine's calls sees what is on disk: the old store until the first kernel (with
    # its eval and layer kernels) is computed, then the new one only.
    old = Store.open(full_store).manifest["store_id"]
    seen: list[str] = []
    engine = kernels_loop.empirical_ntk

    def watched(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(json.loads(paths.manifest(full_store).read_text())["store_id"])
        return engine(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels_loop, "empirical_ntk", watched)
    result = kernels(run, store=full_store, **AGAIN)
    replaced(full_store, result, STEPS)
    new = Store.open(full_store).manifest["store_id"]
    # per step: the eval kernel, the 2 layer kernels, the kernel
    per_step = len(seen) // len(STEPS)
    assert seen[:per_step] == [old] * per_step and set(seen[per_step:]) == {new}, seen


def test_a_store_opened_with_its_clearing_deferred_writes_nothing_until_cleared(
    store: Path,
) -> None:
    # The Store side of it: the new store in memory, the old one on disk and locked, every write
    # refused (none may mix into the old store), until clear_deferred.
    before = snapshot(store)
    other = StoreIdentity("spec1", "probe0", "trace", "float64")
    header = {"checkpoints": "/ckpts"}
    for clear in (False, True):
        opened = Store.open_for_writing(store, other, header, overwrite=True, defer_clearing=True)
        try:
            assert opened.clearing_deferred and opened.steps() == [] and opened.identity == other
            assert opened.eval_kernel_problem(0, "e", "f") is not None  # no old file is its
            assert opened.layer_kernel_problem(0, "g", "f") is not None
            assert opened.adopt_kernel_files() == []
            with pytest.raises(RuntimeError, match="before the replaced store there was cleared"):
                opened.write_eval_kernel(0, torch.zeros(2, 2), "e", "f")
            # the lock is held meanwhile (its file names the writer), nothing else is touched
            assert writer_note(store) is not None
            held = {k: v for k, v in snapshot(store).items() if k != paths.LOCK_NAME}
            assert held == {k: v for k, v in before.items() if k != paths.LOCK_NAME}
            if clear:
                opened.clear_deferred()
                assert not opened.clearing_deferred
                assert any("removed the replaced store's 3 kernel" in w for w in opened.warnings)
        finally:
            opened.close()
        if not clear:  # closed before the clearing: the old store as it was, and unlocked
            assert snapshot(store) == before
    reopened = Store.open(store)
    assert reopened.identity == other and reopened.steps() == []
    assert not paths.distance_dir(store).exists()


def test_a_damaged_manifest_replaced_by_overwrite_gets_every_eval_and_layer_kernel_anew(
    run: Path, full_store: Path
) -> None:
    # A store whose manifest.json is damaged is cleared by --overwrite (deferred) even for the
    # same spec, probe set, kind and dtype: its old eval and layer files are of the same identity
    # and checkpoints, but none counts as the new store's (it would be skipped, then cleared)
    paths.manifest(full_store).write_text("{")
    again = {"device": "cpu", "overwrite": True, "eval_size": 3, "per_layer": True}
    result = kernels(run, store=full_store, **again)
    assert result.computed == STEPS
    assert result.eval_computed == STEPS and result.layer_computed == STEPS
    store = Store.open(full_store)
    assert store.current_layer_steps() == STEPS
    for step in STEPS:
        assert paths.eval_kernel(full_store, step).is_file()
        assert paths.layer_kernel(full_store, step).is_file()


def test_overwrite_clears_a_store_of_another_identity_or_without_a_readable_manifest(
    store: Path,
) -> None:
    manifest = json.loads(paths.manifest(store).read_text())
    same = Store.open(store).identity
    other = StoreIdentity("spec1", "probe0", "trace", "float64")
    assert Store.overwrite_clears(store, same, manifest) is False  # reopened, not cleared
    assert Store.overwrite_clears(store, other, manifest) is True
    assert Store.overwrite_clears(store, same, None) is True
    assert Store.overwrite_clears(store, same, {"steps": "damaged"}) is True


def test_a_deferred_clearing_leaves_what_clearing_at_opening_leaves(
    store: Path, tmp_path: Path
) -> None:
    # the same folders and files (by name) as Store.open_for_writing with overwrite alone
    import shutil

    other = StoreIdentity("spec1", "probe0", "trace", "float64")
    header = {"checkpoints": "/ckpts"}
    twin = tmp_path / "twin"
    shutil.copytree(store, twin)
    at_once = Store.open_for_writing(twin, other, header, overwrite=True)
    at_once.close()
    deferred = Store.open_for_writing(store, other, header, overwrite=True, defer_clearing=True)
    try:
        deferred.clear_deferred()
    finally:
        deferred.close()

    def names(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != paths.LOCK_NAME}

    assert names(store) == names(twin) and (store / paths.KERNELS_DIR).is_dir()
    assert at_once.warnings == deferred.warnings
    assert Store.open(store).identity == Store.open(twin).identity == other
