"""`conetool kernels --eval-size`: the cross kernels K(eval, probe) and the kernel machine's
accuracy in `conetool spectrum` (issue 19, item 4)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_ntk import explicit_jacobian
from tiny_run import SPEC, STEPS, metadata, run_fixtures
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import ConetoolError, DataError
from conetool.kernel_regression import DEFAULT_RIDGE, kernel_regression
from conetool.pipeline import kernels
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_spectrum import spectrum
from conetool.probe import load_probe
from conetool.spec import spec_from_dict
from conetool.store import Store

runner = CliRunner()


trained, run = run_fixtures(SPEC)


def _bytes(root):
    return {s: paths.kernel(root, s).read_bytes() for s in STEPS}


@pytest.mark.parametrize("kind", ["trace", "full"])
def test_eval_kernel_is_the_explicit_cross_kernel(run, tmp_path, kind):
    root = tmp_path / "s"
    result = kernels(run, store=root, dtype="float64", device="cpu", kind=kind, eval_size=5)
    assert result.computed == STEPS and result.eval_computed == STEPS and result.eval_size == 5
    store = Store.open(root)
    probe = load_probe(paths.probe(root))
    evaluated = load_probe(paths.eval_set(root))
    assert evaluated.split == "test" and len(evaluated) == 5
    assert sorted(evaluated.labels.tolist()) == [0, 0, 1, 1, 2]  # class-balanced
    assert store.manifest["eval"] == {
        "size": 5,
        "split": "test",
        "seed": 0,
        "hash": evaluated.hash,
        "file": "eval.safetensors",
    }
    for step in STEPS:
        model = model_for(spec_from_dict(SPEC)).double().eval()
        model.load_state_dict(load_file(str(paths.checkpoint(run, step))))
        j_eval, j_probe = (
            explicit_jacobian(model, evaluated.inputs.double()),
            explicit_jacobian(model, probe.inputs.double()),
        )
        if kind == "trace":
            reference = torch.einsum("ikp,jkp->ij", j_eval, j_probe)
        else:
            reference = torch.einsum("iap,jbp->iajb", j_eval, j_probe)
        stored = store.load_eval_kernel(step)
        assert stored.dtype == torch.float64 and stored.shape == reference.shape
        error = torch.linalg.norm(stored - reference) / torch.linalg.norm(reference)
        assert error < 1e-12, (step, float(error))
        meta = metadata(paths.eval_kernel(root, step))
        record = store.record(step)
        assert meta["step"] == str(step) and meta["kind"] == kind
        assert meta["eval_hash"] == evaluated.hash and meta["probe_hash"] == probe.hash
        assert meta["spec_hash"] == store.identity.spec_hash
        assert record is not None and meta["fingerprint"] == record.fingerprint


def test_rerun_computes_nothing_and_remembers_the_eval_set(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=4)
    manifest = paths.manifest(root).read_bytes()
    again = kernels(run, store=root, device="cpu", eval_size=4)
    assert again.computed == [] and again.eval_computed == [] and again.skipped == STEPS
    kept = kernels(run, store=root, device="cpu")  # no --eval-size: the store's is kept
    assert kept.computed == [] and kept.eval_computed == [] and kept.eval_size == 4
    assert any("keeping the store's evaluation set" in n for n in kept.notes)
    assert not any("keeping the store's" in w for w in kept.warnings)  # information only
    assert paths.manifest(root).read_bytes() == manifest
    # a missing eval kernel alone is recomputed, without the kernel
    paths.eval_kernel(root, 5).unlink()
    mended = kernels(run, store=root, device="cpu")
    assert mended.computed == [] and mended.eval_computed == [5]


def test_eval_size_added_later_extends_the_store(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _bytes(root)
    records = Store.open(root).records()
    assert not paths.eval_kernels_dir(root).exists() and "eval" not in Store.open(root).manifest
    added = kernels(run, store=root, device="cpu", eval_size=6)
    assert added.computed == [] and added.eval_computed == STEPS and added.skipped == STEPS
    assert _bytes(root) == before  # the kernels are untouched
    assert Store.open(root).records() == records
    assert Store.open(root).manifest["eval"]["size"] == 6


def test_another_eval_size_replaces_the_eval_kernels(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3)
    old = Store.open(root).manifest["eval"]["hash"]
    before = _bytes(root)
    other = kernels(run, store=root, device="cpu", eval_size=6)
    assert other.computed == [] and other.eval_computed == STEPS
    assert any("evaluation set changed" in w for w in other.warnings)
    assert _bytes(root) == before
    store = Store.open(root)
    new = store.manifest["eval"]["hash"]
    assert new != old and len(load_probe(paths.eval_set(root))) == 6
    for step in STEPS:
        assert store.load_eval_kernel(step).shape == (6, 6)
        assert metadata(paths.eval_kernel(root, step))["eval_hash"] == new


def test_a_replaced_eval_set_says_which_steps_a_narrower_run_leaves_without(run, tmp_path):
    """The warning said every deleted eval kernel "is recomputed" while --steps or --every
    recomputed only the selected ones."""
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3)
    narrow = kernels(run, store=root, device="cpu", eval_size=4, steps="0:5")
    assert narrow.eval_computed == [0, 5]
    [warning] = [w for w in narrow.warnings if "evaluation set changed" in w]
    assert "1 stored step(s) (10) have no eval kernels until a run selects them" in warning
    assert kernels(run, store=root, device="cpu").eval_computed == [10]
    wide = kernels(run, store=root, device="cpu", eval_size=5)
    assert not [w for w in wide.warnings if "selects them" in w]  # every step recomputed


def test_changed_checkpoint_recomputes_both(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3)
    path = paths.checkpoint(run, 5)
    meta = metadata(path)
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=meta)
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [5] and again.eval_computed == [5]


def test_bad_eval_sizes_are_refused(run, tmp_path):
    with pytest.raises(DataError, match="--eval-size 13 is larger than the test split"):
        kernels(run, store=tmp_path / "a", device="cpu", eval_size=13)
    with pytest.raises(ConetoolError, match="--eval-size must be a positive whole number"):
        kernels(run, store=tmp_path / "b", device="cpu", eval_size=0)
    on_test = {**SPEC, "probe": {"size": 6, "split": "test"}}
    overlap = r"\(\[probe\] split = \"test\"\), so the two would overlap"
    with pytest.raises(ConetoolError, match=overlap):
        kernels(
            run,
            spec=spec_from_dict(on_test, source="t.toml"),
            store=tmp_path / "c",
            device="cpu",
            eval_size=3,
        )


def test_spectrum_eval_acc_is_kernel_regression_on_the_stored_tensors(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", dtype="float64", eval_size=6)
    result = spectrum(root, top_k=3)
    store = Store.open(root)
    probe, evaluated = load_probe(paths.probe(root)), load_probe(paths.eval_set(root))
    with open(paths.spectrum_csv(root), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == STEPS
    for step, row, acc, loss in zip(STEPS, rows, result.eval_acc, result.eval_loss, strict=True):
        direct = kernel_regression(
            store.load_kernel(step).numpy(),
            store.load_eval_kernel(step).numpy(),
            probe.labels.numpy(),
            evaluated.labels.numpy(),
            3,
        )
        assert float(row["eval_acc"]) == acc == direct.accuracy
        assert float(row["eval_loss"]) == pytest.approx(direct.loss, rel=1e-12) and loss == (
            pytest.approx(direct.loss, rel=1e-12)
        )
    summary = json.loads(paths.spectrum_summary(root).read_text())
    assert summary["kernel_machine"]["ridge"] == DEFAULT_RIDGE
    assert summary["kernel_machine"]["eval"]["size"] == 6
    assert summary["kernel_machine"]["eval"]["steps"] == 3
    # a stale eval kernel (another fingerprint) is never used: its step gets empty cells
    path = paths.eval_kernel(root, 5)
    tensor = load_file(str(path))
    from safetensors.torch import save_file

    save_file(tensor, str(path), metadata={**metadata(path), "fingerprint": "other"})
    spectrum(root, top_k=3)
    with open(paths.spectrum_csv(root), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["eval_acc"] == "" for r in rows] == [False, True, False]


@pytest.mark.parametrize("damage", ["truncated", "not finite"])
def test_spectrum_names_an_eval_kernel_it_cannot_use_and_how_to_recompute_it(run, tmp_path, damage):
    # a truncated eval kernel left its step's accuracy empty without a word, and one holding NaN
    # (which kernels keeps: it reads the header only) stopped spectrum, even with --skip-bad
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=6)
    path = paths.eval_kernel(root, 5)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        from safetensors.torch import save_file

        save_file({"kernel": torch.full((6, 6), float("nan"))}, str(path), metadata(path))
    result = spectrum(root, top_k=3)
    assert [math.isnan(a) for a in result.eval_acc] == [False, True, False]
    (note,) = [n for n in result.warnings if "kernel-machine accuracy" in n]
    assert f"at 1 step(s) (5): eval kernel file {path}" in note
    assert f"conetool kernels {run.resolve()} --store {root}" in note
    assert ("delete it" in note) == (damage == "not finite")
    if damage == "not finite":
        path.unlink()  # as the note says
    kernels(run, store=root, device="cpu")
    assert not any(math.isnan(a) for a in spectrum(root, top_k=3).eval_acc)


def test_spectrum_without_eval_kernels_leaves_the_columns_empty(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    result = spectrum(root, top_k=3)
    assert result.eval_size is None and all(np.isnan(result.eval_acc))
    with open(paths.spectrum_csv(root), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["eval_acc"] == "" and r["eval_loss"] == "" for r in rows)
    assert json.loads(paths.spectrum_summary(root).read_text())["kernel_machine"]["eval"] is None


def test_cli_eval_size_end_to_end(run, tmp_path):
    root = tmp_path / "s"
    done = runner.invoke(app, ["kernels", str(run), "--store", str(root), "--eval-size", "3"])
    assert done.exit_code == 0, done.output
    assert "eval kernels K(eval, probe), 3 test examples: 3 computed" in done.output
    assert sorted(p.name for p in paths.eval_kernels_dir(root).iterdir()) == [
        f"{paths.step_name(s)}.safetensors" for s in STEPS
    ]
    shown = runner.invoke(app, ["spectrum", "--store", str(root), "--top-k", "2"])
    assert shown.exit_code == 0, shown.output
    assert "kernel machine" in shown.output
    switched = runner.invoke(app, ["switch", "--at", "5", "--store", str(root), "-q"])
    assert switched.exit_code == 0, switched.output
    report = runner.invoke(app, ["report", "--store", str(root)])
    assert report.exit_code == 0, report.output
    text = paths.report_md(root).read_text()
    spectrum_part = text[text.index("Alignment and spectrum") :]
    assert "kernel-machine test accuracy" in spectrum_part and "ridge 0.001" in spectrum_part
    switch_part = text[text.index("Switch experiment (Fig. 2)") :]
    assert "Beside Fig. 2: the kernel machine with the eNTK frozen at step t" in switch_part
    assert "at step 0 and" in switch_part and "at step 10" in switch_part
    reproduce = [line for line in text.splitlines() if line.startswith("conetool kernels")]
    assert len(reproduce) == 1 and reproduce[0].endswith("--eval-size 3")
    bad = runner.invoke(app, ["kernels", str(run), "--store", str(root), "--eval-size", "0"])
    assert bad.exit_code == 2
