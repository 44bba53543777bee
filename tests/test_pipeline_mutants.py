"""What a mutation check of the pipeline modules that decide what is recomputed and what is reused
found unpinned: kernels_loop (which steps a rerun computes), matrix_cache (when the S matrix is
reused), remembered (what a rerun keeps of the last run), recompute_notes, and the checks by
which distance, embed, spectrum and report tell results of the kernels held now from others.

Each test names the mutants it kills (a one-line change the rest of the suite let through) and
checks the documented behaviour (README "The store" and each command's section, DESIGN.md), not
the code's present output. The mutants, and those left as equivalent, are listed in the
report of the session that wrote this file (helper 116).
"""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from synthetic_store import store_with_kernels
from tiny_run import SPEC, STEPS, metadata, run_fixtures

from conetool import paths
from conetool.pipeline import distance, kernels, report, spectrum
from conetool.pipeline.recompute_notes import DELETE, recompute_note
from conetool.pipeline.remembered import import_paths, use_recorded_imports
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_switch import switch
from conetool.spec import Spec, spec_from_dict
from conetool.store import Store

trained, run = run_fixtures(SPEC)


def _kernel_bytes(root: Path) -> dict[int, bytes]:
    return {step: paths.kernel(root, step).read_bytes() for step in (0, 5, 10)}


def _kernels(root: Path) -> dict[int, torch.Tensor]:
    store = Store.open(root)
    return {step: store.load_kernel(step) for step in store.steps()}


# --------------------------------------------------------------------------- kernels: the rerun


def test_a_kernel_file_deleted_as_told_is_recomputed_without_a_warning(run, tmp_path):
    # K05 (kernels_loop._unchanged without its "kernel file is there" check): a deleted kernel
    # file was taken for a damaged one, and the rerun warned "step 5: kernel file ... recomputing
    # it" to a user who did what the store's messages say ("delete that file and rerun")
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernels(root)
    paths.kernel(root, 5).unlink()
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [5] and again.skipped == [0, 10]
    assert again.warnings == []
    after = _kernels(root)
    assert all(torch.equal(after[s], before[s]) for s in before)  # the same checkpoint's kernel
    assert Store.open(root).kernel_file_problem(5) is None


# --------------------------------------------------------------------------- the S matrix


def test_a_kernel_recomputed_after_skip_bad_left_it_out_joins_the_distances(run, tmp_path):
    # Y12 (matrix_cache._current without its "a file that appeared or went" check): the kernel
    # file of a step --skip-bad left out (missing) was recomputed as the warning says, with the
    # same record values (same checkpoint), and distance --skip-bad reused the saved matrix that
    # leaves the step out, warning again that it is missing
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    paths.kernel(root, 5).unlink()
    first = distance(root, skip_bad=True, noise=False)
    assert first.steps == [0, 10] and list(first.excluded) == [5]
    assert kernels(run, store=root, device="cpu").computed == [5]
    again = distance(root, skip_bad=True, noise=False)
    assert again.steps == [0, 5, 10] and again.excluded == {} and not again.matrix_reused
    store = Store.open(root)
    flat = [store.load_kernel(s).double().flatten() for s in (0, 5, 10)]
    expected = [[1 - float(a @ b / (a.norm() * b.norm())) for b in flat] for a in flat]
    np.testing.assert_allclose(again.S, expected, atol=1e-12)


# --------------------------------------------------------------------------- a rebuilt manifest


def test_a_damaged_manifest_naming_a_folder_above_the_run_is_not_taken_for_its_directory(
    run, tmp_path
):
    # R03 (remembered._fits without comparing the directory the kernel files record): a damaged
    # manifest whose "checkpoints" names a folder that holds the run (every source lies in it)
    # was taken for the run's directory, though each kernel file records the one kernels read:
    # the rerun that rebuilds it refused the very run it holds as "another run's checkpoints",
    # and switch without --ckpts looked for the checkpoints in that folder
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    manifest = json.loads(paths.manifest(root).read_text())
    assert manifest["checkpoints"] == str(run.resolve())
    manifest["steps"] = []  # damaged: kernels rebuilds it
    manifest["checkpoints"] = str(tmp_path.resolve())  # holds the run (and the store)
    paths.manifest(root).write_text(json.dumps(manifest))
    result = switch(5, store=root, device="cpu")
    assert [p.at for p in result.points] == [5]
    (note,) = [n for n in result.notes if n.startswith("using the checkpoint directory")]
    assert note.startswith(f"using the checkpoint directory {run.resolve()}, recorded by"), note
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [] and again.skipped == STEPS
    assert json.loads(paths.manifest(root).read_text())["checkpoints"] == str(run.resolve())


def test_a_damaged_manifest_keeps_groups_its_old_layer_files_cannot_give_back(run, tmp_path):
    # R05 (remembered.rebuilt_remembered took the record recovered from the files only): a
    # manifest damaged in its steps still records the --groups of its layer files, which were
    # written before layer files carried their patterns (so the files alone give no record);
    # the run that rebuilds it dropped the groups: the manifest it wrote records none (new steps
    # get no layer file, and distance leaves its per-layer outputs as they were)
    root = tmp_path / "s"
    names = [n for n, _ in model_for(spec_from_dict(SPEC)).named_parameters()]
    groups = f"head={names[-2]}*,first={names[0].rpartition('.')[0]}.*"  # not leaf modules
    kernels(run, store=root, device="cpu", groups=groups)
    recorded = json.loads(paths.manifest(root).read_text())["layer_groups"]
    for step in STEPS:
        path = paths.layer_kernel(root, step)
        meta = {k: v for k, v in metadata(path).items() if k != "patterns"}
        save_file(load_file(str(path)), str(path), meta)  # as an older conetool wrote it
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["steps"] = []  # damaged: kernels rebuilds it
    paths.manifest(root).write_text(json.dumps(manifest))
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [] and again.layer_computed == []
    assert again.layer_groups == ["head", "first", "other"]
    assert "keeping the store's per-layer kernels (--per-layer; groups head, first, other)" in (
        again.notes
    )
    assert json.loads(paths.manifest(root).read_text())["layer_groups"] == recorded
    # and the rebuild does not ask to rerun with --groups: the run kept them (the note says so)
    assert not [w for w in again.warnings if "parameter groups" in w], again.warnings


def test_a_damaged_manifest_whose_evaluation_set_the_run_draws_again_asks_for_no_rerun(
    run, tmp_path
):
    # as for --groups above: the run kept the evaluation set the damaged manifest records (and
    # drew eval.safetensors again), but the rebuild still warned "no evaluation set was
    # recovered ... Rerun ... --eval-size 4, which draws it again"
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=4)
    paths.eval_set(root).write_bytes(b"damaged")
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["steps"] = []  # damaged: kernels rebuilds it
    paths.manifest(root).write_text(json.dumps(manifest))
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [] and again.eval_size == 4
    assert "keeping the store's evaluation set of 4 examples (--eval-size)" in again.notes
    assert not [w for w in again.warnings if "evaluation set" in w], again.warnings
    assert any("was damaged" in w for w in again.warnings)  # the rebuild itself is still said


def test_switch_without_manifest_takes_the_directory_of_the_newest_kernels_run(run, tmp_path):
    # R09 (remembered._carried_selection read the oldest kernel file's selection, not the
    # newest's): a run moved and given to kernels again (the same run: its kernels are kept, the
    # new step computed) left the store's kernel files recording two directories; with the
    # manifest deleted, switch without --ckpts took the directory the run had left
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", steps="0:5")
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    again = kernels(moved, store=root, device="cpu")
    assert again.computed == [10] and again.skipped == [0, 5]
    paths.manifest(root).unlink()
    result = switch(5, store=root, device="cpu")
    assert [p.at for p in result.points] == [5]
    (note,) = [n for n in result.notes if n.startswith("using the checkpoint directory")]
    assert note.startswith(f"using the checkpoint directory {moved.resolve()}, "), note


# --------------------------------------------------------------------------- results of other kernels


def test_report_tells_spectrum_results_of_kernels_recomputed_since(run, tmp_path):
    # C10 (run_spectrum recorded no kernels_key in spectrum/summary.json): the report presented
    # the alignment and spectrum of kernels that had been recomputed since (a checkpoint
    # changed: same steps, same identity) without a word, as it does not for distance and embed
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    spectrum(root, top_k=2)
    assert not [w for w in report(root).warnings if "conetool spectrum" in w]
    path = paths.checkpoint(run, 5)
    changed = {k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(changed, str(path), metadata=metadata(path))
    assert kernels(run, store=root, device="cpu").computed == [5]
    (stale,) = [w for w in report(root).warnings if "conetool spectrum" in w]
    assert "recomputed since" in stale
    spectrum(root, top_k=2)
    assert not [w for w in report(root).warnings if "conetool spectrum" in w]


# --------------------------------------------------------------------------- recorded imports


def _factory_spec(module: str) -> Spec:
    return spec_from_dict({**SPEC, "model": {**SPEC["model"], "arch": f"{module}:make"}})


def test_a_module_that_imports_as_it_is_is_not_taken_from_the_recorded_folder(
    tmp_path, monkeypatch
):
    # R11 (remembered.use_recorded_imports without its "imports as it is" check): the folder
    # kernels recorded was put first on sys.path even when the user's PYTHONPATH finds the
    # module, so the recorded copy shadowed the user's (and a note claimed it was needed)
    name = "conetool_h116_shadowed"
    mine, recorded = tmp_path / "mine", tmp_path / "recorded"
    for folder in (mine, recorded):
        folder.mkdir()
        (folder / f"{name}.py").write_text(f"WHERE = {str(folder)!r}\n")
    monkeypatch.syspath_prepend(str(mine))
    monkeypatch.delitem(sys.modules, name, raising=False)
    manifest = {
        "imports": [
            {"key": "[model] arch", "module": name, "path": str(recorded), "installed": False}
        ]
    }
    assert use_recorded_imports(manifest, _factory_spec(name)) == []
    assert str(recorded) not in sys.path
    assert importlib.import_module(name).WHERE == str(mine)


def test_installed_modules_need_no_pythonpath(tmp_path):
    # R12 (remembered.import_paths without its "installed" check): the report's Reproduce
    # commands put site-packages folders on PYTHONPATH
    manifest = {
        "imports": [
            {"key": "[model] arch", "module": "a", "path": "/site", "installed": True},
            {"key": "[data] dataset", "module": "b", "path": str(tmp_path), "installed": False},
        ]
    }
    assert import_paths(manifest) == [str(tmp_path)]


# --------------------------------------------------------------------------- the recompute note


def test_the_recompute_note_names_the_first_steps_and_the_first_steps_reason(tmp_path):
    # N01-N05 (recompute_notes.recompute_note): five steps shown, then "..."; the count of all;
    # the reason of the smallest step, whatever the order the steps were found in; "Delete the
    # files said to" when any one reason says to delete its file
    store = store_with_kernels(tmp_path / "s")
    why = {step: f"reason {step}" for step in (50, 40, 30, 20, 10)}
    five = recompute_note(store, why, lost="kernel-machine accuracy", files="eval kernels")
    assert five == (
        "no kernel-machine accuracy at 5 step(s) (10, 20, 30, 40, 50): reason 10. Rerun "
        f"conetool kernels /runs/x --store {store.root}, which recomputes the eval kernels "
        "that are missing, stale or unreadable."
    )
    why[60] = f"its values are not finite; {DELETE}"
    six = recompute_note(store, why, lost="per-layer numbers", files="layer files", aside=", x")
    assert six.startswith(
        "no per-layer numbers at 6 step(s) (10, 20, 30, 40, 50, ...), x: reason 10. Delete the "
        "files said to, then rerun conetool kernels /runs/x --store "
    ), six


def test_distance_never_reads_a_layer_file_of_the_checkpoint_before(run, tmp_path):
    # C18 (distance_outputs.per_layer_table took any readable layer file, without its groups hash
    # and checkpoint fingerprint): a kernels run killed between a step's kernel and its layer
    # file (the store's order) leaves the layer file of the old checkpoint, and distance put its
    # per-layer numbers beside the new kernels'
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", per_layer=True)
    old = paths.layer_kernel(root, 5).read_bytes()
    path = paths.checkpoint(run, 5)
    changed = {k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(changed, str(path), metadata=metadata(path))
    assert kernels(run, store=root, device="cpu").layer_computed == [5]
    paths.layer_kernel(root, 5).write_bytes(old)  # as the killed run left it
    distance(root, noise=False)
    per_layer = json.loads(paths.distance_summary(root).read_text())["per_layer"]
    assert per_layer["steps"] == 2 and per_layer["missing_steps"] == [5]
    with open(paths.per_layer_csv(root), newline="") as handle:
        assert {int(row["step"]) for row in csv.DictReader(handle)} == {0, 10}
