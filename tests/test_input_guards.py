"""Behaviour the other tests left open (found by a mutation check of the changes that added it):
inspect's note on subfolders, a budget error with --skip-bad, inference tensors, plain Python
values, threads= of distance and spectrum, inspect's notes and switch's advice (the subfolder
listing, the retrained-run warning and the manifest's write spacing are pinned beside their
other tests)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_run import run_fixtures, tiny_spec, train_tiny
from typer.testing import CliRunner

import conetool
import conetool.pipeline.matrix_cache
import conetool.pipeline.run_spectrum
from conetool import paths
from conetool.cli import app
from conetool.errors import CheckpointError
from conetool.progress import NullProgress

runner = CliRunner()
trained, run = run_fixtures()


def _write(directory: Path, *steps: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for step in steps:
        save_file({"w": torch.full((2,), float(step))}, str(paths.checkpoint(directory, step)))


# --------------------------------------------------------------------------------------------------
# checkpoints in subfolders


def test_inspect_says_which_subfolders_it_does_not_read(run: Path) -> None:
    _write(run / "old", 3, 7)
    notes: list[str] = []
    rows = conetool.inspect(run, warn=notes.append)  # the library passes warn= on
    assert [r.step for r in rows] == [0, 5, 10]
    assert len(notes) == 1 and "not read: subfolder old/ (2 checkpoints)" in notes[0]
    result = runner.invoke(app, ["inspect", str(run)])  # and the command prints it
    assert result.exit_code == 0, result.output
    # a warning, as kernels says it (checkpoints not read)
    assert "warning: not read: subfolder old/ (2 checkpoints)" in " ".join(result.output.split())


# --------------------------------------------------------------------------------------------------
# errors that are no checkpoint's stop kernels even with --skip-bad


def test_a_budget_too_small_stops_kernels_even_with_skip_bad(run: Path, tmp_path: Path) -> None:
    with pytest.raises(conetool.MemoryBudgetError) as e:
        conetool.kernels(run, store=tmp_path / "s", max_memory=1, skip_bad=True, threads=1)
    text = str(e.value)
    assert text.startswith("step 0 ") and "not this checkpoint's" in text
    assert "Raise --max-memory" in text
    # no kernel computed (no step tried after the first): the store it created is not left
    assert "No kernel was computed" in text and not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------------
# torch.inference_mode


def test_empirical_ntk_of_a_model_built_under_inference_mode() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = conetool.empirical_ntk(net.double(), x, device="cpu")
    with torch.inference_mode():
        built = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
        built.load_state_dict(net.state_dict())
        built.double()
        assert next(built.parameters()).is_inference()  # its weights are inference tensors
        found = conetool.empirical_ntk(built, x, device="cpu")
    torch.testing.assert_close(found, expected)


# --------------------------------------------------------------------------------------------------
# plain Python values


def test_steps_that_are_no_pair_are_refused(run: Path) -> None:
    for steps in ((5,), (), [0, 5, 10]):
        with pytest.raises(CheckpointError, match=r"pass a pair \(first, last\)"):
            conetool.inspect(run, steps=steps)  # type: ignore[arg-type]


def test_demo_refuses_steps_that_are_no_whole_number(tmp_path: Path) -> None:
    for steps in ("12", 12.0):  # no int: named as the Python argument, with the int to pass
        with pytest.raises(conetool.ConetoolError, match=r"^steps=.* not an int: pass steps=12 "):
            conetool.demo(tmp_path / "demo", steps=steps, threads=1)  # type: ignore[arg-type]
    assert not (tmp_path / "demo").exists()


# --------------------------------------------------------------------------------------------------
# threads= of distance and spectrum, from Python and from the command line


@pytest.fixture
def threads_seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """torch's thread count inside distance's and spectrum's computations; ``auto`` is 3 here,
    so a call that ignored its ``threads`` would be seen."""
    monkeypatch.setenv("CONETOOL_THREADS", "3")
    seen: dict[str, list[int]] = {"distance": [], "spectrum": []}
    real_matrix = conetool.pipeline.matrix_cache.distance_matrix
    real_point = conetool.pipeline.run_spectrum.spectrum_point

    def matrix(*args: Any, **kwargs: Any) -> Any:
        seen["distance"].append(torch.get_num_threads())
        return real_matrix(*args, **kwargs)

    def point(*args: Any, **kwargs: Any) -> Any:
        seen["spectrum"].append(torch.get_num_threads())
        return real_point(*args, **kwargs)

    monkeypatch.setattr(conetool.pipeline.matrix_cache, "distance_matrix", matrix)
    monkeypatch.setattr(conetool.pipeline.run_spectrum, "spectrum_point", point)
    return seen


def test_distance_and_spectrum_compute_with_the_threads_asked_for(
    run: Path, tmp_path: Path, threads_seen: dict[str, list[int]]
) -> None:
    store, fresh = tmp_path / "s", tmp_path / "fresh"
    conetool.kernels(run, store=store, threads=1)
    shutil.copytree(store, fresh)  # for the command line: nothing computed there yet
    conetool.distance(store, noise=False, threads=2)
    conetool.spectrum(store, threads=2)
    assert threads_seen["distance"] and set(threads_seen["distance"]) == {2}
    assert threads_seen["spectrum"] and set(threads_seen["spectrum"]) == {2}
    threads_seen["distance"].clear()
    threads_seen["spectrum"].clear()
    for args in (["distance", "--no-noise"], ["spectrum"]):
        result = runner.invoke(app, [*args, "--store", str(fresh), "--threads", "2", "-q"])
        assert result.exit_code == 0, result.output
    assert threads_seen["distance"] and set(threads_seen["distance"]) == {2}
    assert threads_seen["spectrum"] and set(threads_seen["spectrum"]) == {2}


# --------------------------------------------------------------------------------------------------
# inspect's notes


def test_inspect_notes_a_checkpoint_saved_in_lower_precision(run: Path) -> None:
    path = paths.checkpoint(run, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    half = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(half, str(path), metadata=meta)
    rows = {r.step: r for r in conetool.inspect(run, verify=True)}
    assert rows[5].status == "ok", rows[5].problem
    # a warning of the row, as kernels warns of it
    assert any("lower precision" in said for said in rows[5].warnings), rows[5].warnings
    assert not any("lower precision" in said for said in rows[0].warnings + rows[5].notes)


# --------------------------------------------------------------------------------------------------
# switch's advice


def test_switch_on_a_directory_of_bad_checkpoints_does_not_advise_skip_bad(
    run: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s"
    conetool.kernels(run, store=store, threads=1)
    for step in (0, 5, 10):
        path = paths.checkpoint(run, step)
        path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError) as e:
        conetool.switch(5, store=store, threads=1)
    text = str(e.value)
    assert "3 unusable checkpoint(s)" in text
    assert "--skip-bad" not in text and "choose another --at step" in text, text


@pytest.mark.parametrize(
    ("at", "options", "advice"),
    [
        # a switch point at the step
        ([5], {}, "a switch point from such weights is meaningless: choose another --at step."),
        # the standard run continued from it (the last checkpoint before --until 8)
        (
            [0],
            {"until": 8, "reference": "train"},
            "the standard run cannot be continued from such weights (--reference train "
            "continues it from this checkpoint, the last at or before --until 8): choose another "
            "--until, one whose last checkpoint at or before it has finite weights.",
        ),
        # the standard model at T = 5 the sweep compares with
        (
            [0],
            {"until": 5},
            "such weights make no standard model at T to compare the switch points with (this "
            "is the checkpoint of --until 5): choose another --until.",
        ),
    ],
)
def test_switch_on_a_non_finite_checkpoint_advises_another_at_or_until(
    run: Path, tmp_path: Path, at: list[int], options: dict[str, Any], advice: str
) -> None:
    """kernels' advice for NaN weights ("leave this step out") is not switch's: the step is
    needed, as a point or as the standard model at T, so the fix is another --at or --until."""
    path = paths.checkpoint(run, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        conetool.switch(at, store=tmp_path / "s", ckpts=run, threads=1, device="cpu", **options)
    text = " ".join(str(e.value).split())
    assert f"'{path}' holds non-finite values" in text and "the run had diverged" in text, text
    assert text.endswith(f"by this step, and {advice}"), text
    assert "leave this step out" not in text and "kernels" not in text, text
    if "until" in options:  # the standard model's checkpoint: refused before any point trained
        assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------------------------------
# spectrum's --top-k beyond the kernel's size, on the command line


def test_spectrum_command_says_when_top_k_keeps_every_eigenvalue(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    conetool.kernels(run, store=store, threads=1)
    result = runner.invoke(app, ["spectrum", "--store", str(store), "--top-k", "1000", "-q"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "label energy (top 6)" in text
    assert text.count("warning: --top-k 1000 is not below the 6 eigenvalues") == 1


# --------------------------------------------------------------------------------------------------
# switch's slow-step warning, from Python and with --quiet


def _make_steps_slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every training step "implausibly slow" for the model, so that the watch must warn."""
    from conetool import threads

    monkeypatch.setattr(threads, "SLOW_FLOPS_PER_SECOND", 1e30)
    monkeypatch.setattr(threads, "SLOW_OVERHEAD_SECONDS", 1e-9)


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    _make_steps_slow(monkeypatch)


def _long_run(folder: Path) -> Path:
    """A tiny run of 50 steps: a switch point at 0 or 10 trains at least 40 (the watch's
    window is 20)."""
    spec = tiny_spec()
    spec["train"].update(steps=50, save_every=10, eval_every=10)
    return train_tiny(folder, spec)


def test_switch_warns_of_slow_steps_once_per_sweep(tmp_path: Path, slow_steps: None) -> None:
    """The warning went only to the progress display, once per switch point: a Python caller
    without a progress and `switch --quiet` never saw it."""
    ckpts = _long_run(tmp_path)
    seen: list[str] = []

    class Logged(NullProgress):
        def log(self, message: str) -> None:
            seen.append(message)

    made = conetool.switch([0, 10], store=tmp_path / "a", ckpts=ckpts, threads=1)
    assert len(made.warnings) == 1 and made.warnings[0].startswith("training steps take")
    shown = conetool.switch(
        [0, 10], store=tmp_path / "b", ckpts=ckpts, threads=1, progress=Logged()
    )
    assert len(shown.warnings) == 1
    assert [m for m in seen if m.startswith("warning:")] == [f"warning: {shown.warnings[0]}"]
    for extra in (["-q"], []):  # said once: at the end with --quiet, as it came without
        store = tmp_path / f"cli{len(extra)}"
        args = ["switch", "--at", "0,10", "--store", str(store), "--ckpts", str(ckpts)]
        result = runner.invoke(app, [*args, "--threads", "1", *extra])
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert text.count("warning: training steps take") == 1, (extra, text)


def test_switch_watches_the_standard_run_it_trains_to_T(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`switch --reference train` trained the standard run from the last checkpoint before T
    unwatched: its slow steps went unsaid, where `train` and the switch points warn."""
    spec = tiny_spec()
    spec["train"].update(steps=50, save_every=25, eval_every=25)
    ckpts = train_tiny(tmp_path, spec)  # checkpoints at 0, 25, 50
    store = tmp_path / "s"
    conetool.switch([0], until=49, store=store, ckpts=ckpts, threads=1)  # the point, done
    _make_steps_slow(monkeypatch)
    # the point is reused; the standard run trains from 25 to 49 (the watch's window is 20)
    made = conetool.switch([0], until=49, store=store, ckpts=ckpts, threads=1, reference="train")
    assert made.points[0].reused and made.reference["source"] == "trained from step 25"
    assert len(made.warnings) == 1 and made.warnings[0].startswith("training steps take")
    # said once per sweep: a point that warned already, the standard run does not again
    again = conetool.switch(
        [0], until=49, store=tmp_path / "t", ckpts=ckpts, threads=1, reference="train"
    )
    assert not again.points[0].reused and len(again.warnings) == 1


def test_demo_keeps_its_stages_slow_step_warnings(tmp_path: Path, slow_steps: None) -> None:
    """`demo --quiet` (and a Python caller) lost the train and switch stages' slow-step warnings:
    DemoResult had no warnings and the CLI printed none at the end."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--device", "cpu", "--steps", "24", "--probe-size", "10"]
    result = runner.invoke(app, [*args, "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "warning: train: training steps take" in text
    assert "warning: switch: training steps take" in text
