"""`conetool kernels` and `conetool inspect` end to end on a tiny trained run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_ntk import explicit_jacobian
from tiny_run import SPEC, run_fixtures
from typer.testing import CliRunner

import conetool
from conetool import paths
from conetool.checkpoints import parse_step_range
from conetool.cli import app
from conetool.errors import CheckpointError, SpecError, StoreError
from conetool.pipeline import distance, inspect, kernels, report, switch
from conetool.pipeline import kernels_loop as kernels_loop_module
from conetool.pipeline import run_kernels as run_kernels_module
from conetool.pipeline.resolve import model_for
from conetool.pipeline.retrained_run import retrained_warning
from conetool.probe import load_probe
from conetool.spec import load_spec, save_spec, spec_from_dict
from conetool.store import Store

runner = CliRunner()


trained, run = run_fixtures(SPEC)


def explicit_trace_kernel(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """float64 reference: the explicit Jacobian (n, c, p) by autograd, then J Jᵀ traced over c."""
    jac = explicit_jacobian(model.double().eval(), inputs.double())
    return torch.einsum("ikp,jkp->ij", jac, jac)


def test_every_kernel_matches_the_explicit_reference(run, tmp_path):
    result = kernels(run, store=tmp_path / "store", dtype="float64", device="cpu")
    assert result.computed == [0, 5, 10] and result.skipped == [] and result.failed == {}
    assert result.kernel_shape == (6, 6)
    store = Store.open(tmp_path / "store")
    probe = load_probe(paths.probe(tmp_path / "store"))
    spec = spec_from_dict(SPEC)
    for step in (0, 5, 10):
        model = model_for(spec)
        model.load_state_dict(load_file(str(paths.checkpoint(run, step))))
        reference = explicit_trace_kernel(model, probe.inputs)
        stored = store.load_kernel(step)
        assert stored.dtype == torch.float64
        error = torch.linalg.norm(stored - reference) / torch.linalg.norm(reference)
        assert error < 1e-12, (step, float(error))
        assert store.record(step).norm == pytest.approx(float(torch.linalg.norm(reference)))
    assert not torch.equal(store.load_kernel(0), store.load_kernel(10))  # training moved it


def test_second_run_does_nothing_and_changed_checkpoint_is_recomputed(run, tmp_path):
    kernels(run, store=tmp_path / "s", device="cpu")
    before = Store.open(tmp_path / "s").load_kernel(5)
    again = kernels(run, store=tmp_path / "s", device="cpu")
    assert again.computed == [] and again.skipped == [0, 5, 10]
    # Change step 5's weights in place (same name, same metadata).
    path = paths.checkpoint(run, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata=meta)
    third = kernels(run, store=tmp_path / "s", device="cpu")
    assert third.computed == [5] and third.skipped == [0, 10]
    assert not torch.equal(Store.open(tmp_path / "s").load_kernel(5), before)


def _change(path) -> None:
    """Other weights in the same file (same name, same metadata): a retrained checkpoint."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata=meta)


def test_a_run_retrained_with_fewer_steps_in_its_folder_is_warned_of(run, tmp_path):
    kernels(run, store=tmp_path / "s", device="cpu")
    for step in (0, 5):
        _change(paths.checkpoint(run, step))
    paths.checkpoint(run, 10).unlink()  # the new run stopped at step 5
    again = kernels(run, store=tmp_path / "s", device="cpu")
    assert again.computed == [0, 5]
    warned = [w for w in again.warnings if "gone" in w]
    assert len(warned) == 1, again.warnings
    assert "steps 0, 5; recomputed" in warned[0] and "gone (10)" in warned[0]
    assert "earlier run" in warned[0]
    assert Store.open(tmp_path / "s").steps() == [0, 5, 10]  # a warning: nothing removed


@pytest.mark.parametrize(
    "case", ["only deleted", "only changed", "outside --steps", "kernel file lost"]
)
def test_no_retrain_warning_for_deleted_or_changed_checkpoints_alone(run, tmp_path, case):
    kernels(run, store=tmp_path / "s", device="cpu")
    steps = None
    if case != "only changed":
        paths.checkpoint(run, 10).unlink()  # checkpoints deleted once their kernels are stored
    if case in ("only changed", "outside --steps"):
        _change(paths.checkpoint(run, 5))
    if case == "outside --steps":
        steps = "0:5"  # step 10 is outside the selection: not gone from it
    if case == "kernel file lost":  # recomputed from the same checkpoint: nothing changed
        (tmp_path / "s" / paths.kernel_relative(5)).unlink()
    again = kernels(run, store=tmp_path / "s", device="cpu", steps=steps)
    assert again.computed == ([] if case == "only deleted" else [5])
    assert not [w for w in again.warnings if "gone" in w], again.warnings


def test_steps_is_parsed_once_per_run(run, tmp_path, monkeypatch):
    # the plan parses --steps and keeps it; the retrain check after the computation reads it
    # from the plan (it parsed the text a second time)
    calls: list[str] = []

    def counted(text: str) -> tuple[int | None, int | None]:
        calls.append(text)
        return parse_step_range(text)

    for module in (run_kernels_module, kernels_loop_module):
        monkeypatch.setattr(module, "parse_step_range", counted, raising=False)
    result = kernels(run, store=tmp_path / "s", device="cpu", steps=(0, 5))
    assert result.computed == [0, 5]
    assert calls == ["0:5"]


def _retrain_warnings(result: conetool.KernelsResult) -> list[str]:
    return [w for w in result.warnings if "earlier run" in w]


def test_no_retrain_warning_when_new_checkpoints_come_while_old_ones_are_deleted(
    run: Path, tmp_path: Path
) -> None:
    """A run still training: its kernels are computed as it goes and old checkpoints deleted once
    their kernels are stored. A new step is no changed checkpoint."""
    store = tmp_path / "s"
    assert conetool.kernels(run, store=store, steps=(0, 5), threads=1).computed == [0, 5]
    paths.checkpoint(run, 0).unlink()
    again = conetool.kernels(run, store=store, threads=1)
    assert again.computed == [10]
    assert _retrain_warnings(again) == [], again.warnings


def test_no_retrain_warning_for_a_step_outside_every(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    conetool.kernels(run, store=store, threads=1)
    paths.checkpoint(run, 5).unlink()  # outside --every 10: not gone from the selection
    _change(paths.checkpoint(run, 10))
    again = conetool.kernels(run, store=store, every=10, threads=1)
    assert again.computed == [10]
    assert _retrain_warnings(again) == [], again.warnings


def test_the_cli_shows_the_retrain_warning_without_quiet(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    conetool.kernels(run, store=store, threads=1)
    for step in (0, 5):
        _change(paths.checkpoint(run, step))
    paths.checkpoint(run, 10).unlink()
    result = runner.invoke(app, ["kernels", str(run), "--store", str(store), "--threads", "1"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "warning: 2 checkpoint(s) changed" in flat and "earlier run" in flat, result.output


def test_the_retrain_warning_lists_five_steps_of_each_kind() -> None:
    steps = list(range(0, 70, 10))
    note = retrained_warning(
        {s: "old" for s in steps}, {s: "new" for s in steps}, steps, range(100, 170, 10), "store"
    )
    assert note is not None
    assert "7 checkpoint(s) changed" in note
    assert "(steps 0, 10, 20, 30, 40, ...; recomputed)" in note
    assert "7 step(s) whose checkpoints are gone (100, 110, 120, 130, 140, ...)" in note


class _StopAfter:
    """Progress whose outer bar raises KeyboardInterrupt after ``k`` checkpoints."""

    def __init__(self, k: int) -> None:
        self.k, self.done = k, 0

    def task(self, description, total):
        return self if description == "kernels" else _Quiet()

    def advance(self, amount=1, **fields):
        self.done += amount
        if self.done >= self.k:
            raise KeyboardInterrupt

    def close(self):
        pass

    def log(self, message):
        pass


class _Quiet:
    def advance(self, amount=1, **fields):
        pass

    def close(self):
        pass


def test_interrupted_run_resumes_with_what_is_missing(run, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        kernels(run, store=tmp_path / "s", device="cpu", progress=_StopAfter(2))
    assert Store.open(tmp_path / "s").steps() == [0, 5]
    resumed = kernels(run, store=tmp_path / "s", device="cpu")
    assert resumed.computed == [10] and resumed.skipped == [0, 5]


def test_store_of_another_kind_or_probe_is_refused(run, tmp_path):
    kernels(run, store=tmp_path / "s", device="cpu")
    with pytest.raises(StoreError, match="another kind trace .this run: full."):
        kernels(run, store=tmp_path / "s", kind="full", device="cpu")
    with pytest.raises(StoreError, match="another spec_hash"):
        kernels(run, store=tmp_path / "s", probe_size=3, device="cpu")
    assert Store.open(tmp_path / "s").steps() == [0, 5, 10]  # nothing lost
    full = kernels(run, store=tmp_path / "s", kind="full", device="cpu", overwrite=True)
    assert full.kernel_shape == (6, 3, 6, 3)


def test_a_probe_size_beyond_the_data_names_the_flag(run, tmp_path):
    """--probe-size 1000 was refused as "'probe.size' = 1000 ... Set probe.size": the spec's
    key, which the user never wrote, and not the flag they passed."""
    store = tmp_path / "s"
    args = ["kernels", str(run), "--store", str(store), "--probe-size", "1000", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "--probe-size 1000 is larger than the train split of synthetic" in text, text
    assert "which has 48 examples. Pass --probe-size 48 or less." in text, text
    assert "probe.size" not in text and not store.exists(), text


def test_missing_spec_says_what_to_write(run, tmp_path):
    paths.spec(run).unlink()
    with pytest.raises(SpecError, match=r"(?s)no conetool.toml and no --spec.*\[model\]"):
        kernels(run, store=tmp_path / "s", device="cpu")


def test_a_checkpoint_file_for_ckpts_without_spec_names_the_directory(run, tmp_path):
    # it said "step_000005.safetensors has no conetool.toml ... save one as
    # step_000005.safetensors/conetool.toml", a path under a file
    path = paths.checkpoint(run, 5)
    with pytest.raises(SpecError, match=r"is a file, and no --spec was given") as refused:
        kernels(path, store=tmp_path / "s", device="cpu")
    assert f"Pass the directory ({run};" in str(refused.value)
    assert not (tmp_path / "s").exists()
    one = kernels(path, store=tmp_path / "s", device="cpu", spec=paths.spec(run))  # the way out
    assert one.computed == [5]


def test_a_spec_file_given_as_ckpts_is_said_to_be_a_spec(run, tmp_path):
    # `conetool kernels spec.toml` (the spec where the run's folder goes) was told "spec.toml
    # is a file, and no --spec was given ... or --spec SPEC.toml with the file", as if the
    # TOML file were a checkpoint to compute; 38a98d6 said so only of a .toml that is not there
    spec = tmp_path / "mine.toml"
    spec.write_text(paths.spec(run).read_text())
    with pytest.raises(SpecError) as refused:
        kernels(spec, store=tmp_path / "s", device="cpu")
    said = " ".join(str(refused.value).split())
    assert f"{spec} is a TOML file, a spec, not a checkpoint: pass it as --spec {spec}," in said
    assert "and as the checkpoints the run's checkpoint directory (the --out of" in said
    assert not (tmp_path / "s").exists()


def test_bad_checkpoint_stops_or_is_skipped(run, tmp_path):
    path = paths.checkpoint(run, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][0] = float("nan")
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"step 5 .*--skip-bad"):
        kernels(run, store=tmp_path / "s", device="cpu")
    assert Store.open(tmp_path / "s").steps() == [0]  # the kernel before it is kept
    result = kernels(run, store=tmp_path / "s", device="cpu", skip_bad=True)
    assert list(result.failed) == [5] and result.computed == [10] and result.skipped == [0]


def test_files_refused_while_listing_are_left_out_not_lost(run, tmp_path):
    """--skip-bad: a file the listing refuses (a warning, "skipping ..." then) was counted nowhere (the
    table said "skipped 0, failed 0" under "skipping 1 file"); it is KernelsResult.left_out,
    file -> why, and the table's "left out". ``skipped`` keeps its meaning: already stored."""
    junk = run / "step_000007.safetensors"
    junk.write_bytes(b"not a safetensors file")
    first = kernels(run, store=tmp_path / "s", device="cpu", skip_bad=True)
    assert first.computed == [0, 5, 10] and first.skipped == [] and first.failed == {}
    assert list(first.left_out) == [junk] and str(junk) in first.left_out[junk]
    assert first.left_out[junk] in " ".join(first.warnings)  # the warning's reason
    again = kernels(run, store=tmp_path / "s", device="cpu", skip_bad=True)
    assert again.skipped == [0, 5, 10] and list(again.left_out) == [junk]
    junk.unlink()
    assert kernels(run, store=tmp_path / "s", device="cpu").left_out == {}


def test_the_table_says_stored_before_and_left_out(run, tmp_path):
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu")
    (run / "step_000007.safetensors").write_bytes(b"not a safetensors file")
    args = ["kernels", str(run), "--store", str(store), "--device", "cpu", "--skip-bad"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "computed" in line and "┃" in line)
    columns = [c.strip() for c in header.strip("┃ ").split("┃")]
    assert columns[:4] == ["computed", "stored before", "left out", "failed"], header
    row = next(line for line in lines if "6 x 6" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][:4] == ["0", "3", "1", "0"], row
    # the warning says "left out", the word of the table's column (it said "skipping")
    text = " ".join(result.output.split())
    assert "warning: left out a checkpoint:" in text and "skipping" not in text, result.output


HALF_FACTORY = """
import torch


def make(num_classes, input_shape):
    return torch.nn.Sequential(
        torch.nn.Linear(input_shape[0], 6), torch.nn.Tanh(), torch.nn.Linear(6, num_classes)
    ).half()
"""


@pytest.mark.parametrize("first", [True, False])
def test_a_bfloat16_checkpoint_beyond_a_float16_models_range_is_a_checkpoint_error(
    tmp_path, monkeypatch, first
):
    """A float16 model (a user factory's) and bfloat16 checkpoints, one holding 1e5 (finite in
    bfloat16, Inf in float16): the kernel of that step was NaN (NonFiniteKernelError, advising
    --dtype float64, which does not help) or, as the first step, the model was called random in
    eval mode (a ModelError, which stops the run even with --skip-bad). Now the load names the
    tensor and the fix, and the kernels already computed stay in the store."""
    (tmp_path / "half_factory.py").write_text(HALF_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**SPEC, "model": {"arch": "half_factory:make", "num_classes": 3}}
    spec = spec_from_dict(raw, source="half.toml")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    bad = 0 if first else 5
    for step in (0, 5, 10):
        torch.manual_seed(step)
        state = {k: v.float().to(torch.bfloat16) for k, v in model_for(spec).state_dict().items()}
        if step == bad:
            state["2.weight"][1, 0] = 1e5
        save_file(state, str(paths.checkpoint(ckpts, step)))
    store = tmp_path / "store"
    with pytest.raises(CheckpointError, match=rf"step {bad} ") as stopped:
        kernels(ckpts, spec=spec, store=store, device="cpu")
    message = " ".join(str(stopped.value).split())
    assert "'2.weight' (bfloat16, up to 9.984e+04)" in message
    assert "beyond the largest float16" in message and "into a float32 model" in message
    # kernels' own advice fits the cause: the model's dtype, not a damaged file
    assert "fix this checkpoint" not in message and message.count("--skip-bad") == 1
    assert "the fix is the model's dtype (above), not this file" in message
    assert isinstance(stopped.value, conetool.CheckpointOverflowError)
    if first:  # no kernel computed: the store this run created is not left behind
        assert not store.exists()
    else:
        assert Store.open(store).steps() == [0]  # computed before it: kept
    assert ("No kernel was computed" in message) == first
    result = kernels(ckpts, spec=spec, store=store, device="cpu", skip_bad=True)
    assert list(result.failed) == [bad] and result.computed == [s for s in (5, 10) if s != bad]
    for step in Store.open(store).steps():
        assert torch.isfinite(Store.open(store).load_kernel(step)).all()


def test_a_checkpoint_that_fails_to_load_keeps_the_advice_to_fix_it(run, tmp_path):
    """The advice of the model's dtype is for values beyond its range only: a checkpoint
    holding NaN is this checkpoint's to fix."""
    path = paths.checkpoint(run, 5)
    state = load_file(str(path))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][0] = float("nan")
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="step 5 ") as stopped:
        kernels(run, store=tmp_path / "s", device="cpu")
    message = " ".join(str(stopped.value).split())
    assert "fix this checkpoint and rerun, or pass --skip-bad" in message
    assert "model's dtype" not in message


def test_skip_bad_is_advised_once_by_kernels_and_never_by_inspect_or_switch(run, tmp_path):
    """Per-file messages name no flag: kernels adds --skip-bad once, inspect has no such flag,
    and switch needs the step (its advice is another --at)."""
    kernels(run, store=tmp_path / "s", device="cpu")
    path = paths.checkpoint(run, 5)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError) as listed:
        kernels(run, store=tmp_path / "other", device="cpu")
    assert str(listed.value).count("--skip-bad") == 1, str(listed.value)
    (row,) = [r for r in inspect(run) if r.step == 5]
    assert row.status == "error" and "--skip-bad" not in (row.problem or "")
    with pytest.raises(CheckpointError) as switched:
        switch([5], store=tmp_path / "s", device="cpu")
    assert "--skip-bad" not in str(switched.value)
    assert "choose another --at step" in str(switched.value), str(switched.value)


def test_inspect_reports_each_problem(run):
    rows = inspect(run)
    assert [r.step for r in rows] == [0, 5, 10] and all(r.status == "ok" for r in rows)
    (run / "step_000007.safetensors").write_bytes(b"\x00" * 5)
    result = runner.invoke(app, ["inspect", str(run)])
    assert result.exit_code == 1
    assert "step_000007.safetensors" in result.output
    assert "3 of 4 checkpoints usable" in result.output


def test_cli_kernels_and_inspect(run, tmp_path):
    ok = runner.invoke(app, ["inspect", str(run), "--verify"])
    assert ok.exit_code == 0, ok.output
    assert "3 of 3 checkpoints usable (headers and tensors checked)" in ok.output
    store = tmp_path / "s"
    first = runner.invoke(app, ["kernels", str(run), "--store", str(store), "--device", "cpu"])
    assert first.exit_code == 0, first.output
    assert "6 x 6" in first.output
    second = runner.invoke(app, ["kernels", str(run), "--store", str(store), "-q"])
    assert second.exit_code == 0
    assert Store.open(store).steps() == [0, 5, 10]
    bad = runner.invoke(app, ["kernels", str(run), "--store", str(store), "--kind", "full"])
    assert bad.exit_code == 1 and "--overwrite" in bad.output and "Traceback" not in bad.output


def test_max_memory_auto_as_the_help_names_it_is_the_default_budget(run, tmp_path):
    """--help says "default auto"; `--max-memory auto` was refused as "not a memory size"."""
    plain, auto = tmp_path / "plain", tmp_path / "auto"
    for store, extra in ((plain, []), (auto, ["--max-memory", "auto"])):
        ran = runner.invoke(app, ["kernels", str(run), "--store", str(store), "-q", *extra])
        assert ran.exit_code == 0, ran.output
    for step in (0, 5, 10):
        same = load_file(str(paths.kernel(auto, step)))["kernel"]
        assert torch.equal(same, load_file(str(paths.kernel(plain, step)))["kernel"])
    assert kernels(run, store=tmp_path / "lib", max_memory="Auto").computed == [0, 5, 10]


def test_method_option_gives_the_same_kernels(run, tmp_path):
    stores = {}
    for method in ("structured", "jacobian"):
        stores[method] = tmp_path / method
        result = runner.invoke(
            app,
            ["kernels", str(run), "--store", str(stores[method]), "--method", method,
             "--dtype", "float64", "--device", "cpu", "--quiet"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    structured, jacobian = Store.open(stores["structured"]), Store.open(stores["jacobian"])
    assert structured.steps() == jacobian.steps() == [0, 5, 10]
    for step in structured.steps():
        a, b = structured.load_kernel(step), jacobian.load_kernel(step)
        assert torch.linalg.norm(a - b) / torch.linalg.norm(b) < 1e-12


@pytest.mark.parametrize(
    ("command", "flag", "choices"),
    [
        ("kernels", "--method", "auto, structured, jacobian"),
        ("kernels", "--kind", "trace, full, sum"),
        ("kernels", "--dtype", "float32, float64"),
        ("switch", "--reference", "checkpoint, train"),
        ("embed", "--method", "mds, pca"),
    ],
)
def test_a_bad_choice_is_a_usage_error_naming_the_choices(run, tmp_path, command, flag, choices):
    """Every choice flag is an Enum shared with the library: exit 2, the choices listed."""
    args = [command] + ([str(run)] if command == "kernels" else [])
    args += ["--store", str(tmp_path / "s"), flag, "fast"]
    if command == "switch":
        args += ["--at", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "'fast' is not one of" in flat and all(c.strip() in flat for c in choices.split(","))
    assert "Traceback" not in result.output and not (tmp_path / "s").exists()


def test_the_library_refuses_a_bad_choice_naming_it():
    from conetool.choices import Method, choice
    from conetool.errors import ConetoolError

    assert choice(Method, "jacobian", "--method") is Method.jacobian
    with pytest.raises(ConetoolError, match="--method 'fast' is unknown. Use one of: auto, "):
        choice(Method, "fast", "--method")


def test_skip_bad_quiet_still_says_which_files_were_left_out(run, tmp_path):
    (run / "step_000007.safetensors").write_bytes(b"\x00" * 5)  # truncated: not readable
    args = ["kernels", str(run), "--store", str(tmp_path / "s"), "--skip-bad", "--quiet"]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    compact = "".join(result.output.split())  # the console wraps long paths
    assert "warning:leftoutacheckpoint:" in compact and "step_000007.safetensors" in compact


# --------------------------------------------------------------------------- kernel provenance


def test_each_kernel_records_the_engine_auto_picked_and_its_device(run, tmp_path, monkeypatch):
    """The manifest's "method" is the option of the last run ("auto"); each record says which
    engine made its kernel (what auto picked) and on which device type, in the kernel file too."""
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu")  # an MLP on a CPU: auto takes the structured engine
    opened = Store.open(store)
    assert {(r.engine, r.device) for r in opened.records().values()} == {("structured", "cpu")}
    assert "Engine: structured on cpu." in report(store).markdown.read_text()
    monkeypatch.setattr(conetool.ntk, "_AUTO_KRON_SHARE", 1.01)  # now auto takes the reference
    kernels(run, store=tmp_path / "ref", device="cpu")
    again = Store.open(tmp_path / "ref")
    assert again.manifest["method"] == "auto"
    assert {r.engine for r in again.records().values()} == {"jacobian"}
    with safe_open(str(paths.kernel(tmp_path / "ref", 5)), framework="pt") as handle:
        embedded = json.loads(handle.metadata()["record"])
    assert (embedded["engine"], embedded["device"]) == ("jacobian", "cpu")


def test_a_kernel_recomputed_by_another_engine_is_recorded_and_noted(run, tmp_path):
    """A lost kernel file recomputed by a rerun with another --method: the manifest's "method"
    was the only record, so the store looked made by one engine. Now each record keeps its own
    engine (through a rebuilt manifest too), and distance and report say the store is mixed."""
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", method="structured")
    assert not [n for n in distance(store, noise=False).warnings if "more than one engine" in n]
    paths.kernel(store, 10).unlink()  # lost; recomputed by the other engine
    assert kernels(run, store=store, device="cpu", method="jacobian").computed == [10]
    paths.manifest(store).unlink()  # rebuilt from the records the kernel files carry
    assert kernels(run, store=store, device="cpu", method="jacobian").computed == []
    opened = Store.open(store)
    assert opened.manifest["method"] == "jacobian"  # the last run's option, as before
    engines = {step: (r.engine, r.device) for step, r in opened.records().items()}
    assert engines == {0: ("structured", "cpu"), 5: ("structured", "cpu"), 10: ("jacobian", "cpu")}
    line = (
        "this store's kernels were made by more than one engine or device type: steps 0, 5 by "
        "structured on cpu; step 10 by jacobian on cpu."
    )
    assert [n for n in distance(store, noise=False).warnings if n.startswith(line)]
    made = report(store)
    assert [n for n in made.warnings if n.startswith(line)]
    page = made.markdown.read_text()
    assert "Made by more than one engine or device type (see Notes)." in page
    # said once, in the Notes, not again as distance's own note
    assert page.count("made by more than one engine or device type: steps 0, 5") == 1


def test_a_store_of_another_spec_names_the_keys_that_differ(run, tmp_path):
    """kernels --spec with one key changed (found by scripts/fuzz_cli.py --mode spec: data.seed)
    was refused naming two spec hashes only, not the spec file's key that made them differ."""
    kernels(run, store=tmp_path / "s", device="cpu")
    spec = load_spec(paths.spec(run))
    edited = tmp_path / "edited.toml"
    save_spec(dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, seed=3)), edited)
    with pytest.raises(StoreError) as refused:
        kernels(run, store=tmp_path / "s", device="cpu", spec=edited)
    message = str(refused.value)
    said = f"conetool never mixes them. This run's spec, {edited}, differs from the store's in "
    assert said in message, message
    assert "probe.seed = 0 (now 3). Use another --store" in message


def test_a_store_of_another_spec_names_the_spec_file_read(run, tmp_path):
    """The run's own conetool.toml, read without --spec, emptied: kernels took it for conetool's
    defaults (LeNet-5 ...) and was refused as another spec, naming keys but not the file they
    came from (found by scripts/fuzz_cli.py --mode store, seed 12, call 23)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    kernels(copy, store=tmp_path / "s", device="cpu")
    paths.spec(copy).write_text("")
    with pytest.raises(StoreError) as refused:
        kernels(copy, store=tmp_path / "s", device="cpu")
    message = " ".join(str(refused.value).split())
    said = f"This run's spec, {paths.spec(copy)}, which sets no key (conetool's defaults all),"
    assert said + " differs from the store's in model.arch" in message, message


def test_a_spec_probe_size_beyond_the_data_names_the_spec_file(run, tmp_path):
    """kernels --spec with [probe] size beyond the split (found by scripts/fuzz_cli.py --mode
    spec) was refused naming 'probe.size' but not the file it is a key of."""
    spec = load_spec(paths.spec(run))
    edited = tmp_path / "edited.toml"
    save_spec(dataclasses.replace(spec, probe=dataclasses.replace(spec.probe, size=1000)), edited)
    with pytest.raises(conetool.errors.DataError) as refused:
        kernels(run, store=tmp_path / "s", device="cpu", spec=edited)
    assert str(refused.value).startswith(f"{edited}: 'probe.size' = 1000 is larger than the ")
    assert not (tmp_path / "s").exists()
