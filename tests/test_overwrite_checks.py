"""``conetool kernels --overwrite`` refuses, before it clears a store that holds something, a run
that would fail for a reason known then (:mod:`conetool.pipeline.overwrite_checks`): a spec's
model whose output does not fit the data, or one that fits none of the run's checkpoints (nor the
first one, without --skip-bad). It cleared the store first, and the store's kernels and results
were lost to a typo in the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import RENAMED_MODELS, SPEC, STEPS, as_torch, run_fixtures
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import KeyMismatchError, ModelError
from conetool.pipeline import distance, kernels
from conetool.spec import Spec, spec_from_dict, spec_to_toml
from conetool.store import Store

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
    assert f"[model] arch = 'conetool_ow_models:make_four' in {spec}: " in text, text
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
    assert "[model] arch = 'conetool_ow_models:make' in make.toml must build" in text, text
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
