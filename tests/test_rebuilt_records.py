"""A rebuilt manifest keeps the records of the evaluation set and the parameter groups, and a bad
layer file is named, as a bad kernel file is.

A damaged or deleted ``manifest.json`` was rebuilt from the kernel files without its ``eval``
(``kernels --eval-size``) and ``layer_groups`` (``--per-layer``) records, although their files
were all in the store: the next ``distance`` deleted ``per_layer.csv`` and ``per_layer.png``, and
``spectrum`` lost its kernel-machine accuracy. A layer file that was truncated, held NaN or a
kernel of another shape left its step's per-layer cells empty without a word."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import STEPS, metadata, run_fixtures, tiny_spec, train_tiny
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import CheckpointError, SpecError, StoreError
from conetool.pipeline import distance, kernels
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_spectrum import spectrum
from conetool.pipeline.run_switch import switch
from conetool.spec import load_spec, spec_from_dict

runner = CliRunner()

SPEC = tiny_spec([6, 5])  # two hidden layers: three leaf modules
trained, run = run_fixtures(SPEC)


def _mapping():
    """A --groups mapping whose groups are not leaf modules."""
    names = [n for n, _ in model_for(spec_from_dict(SPEC)).named_parameters()]
    return f"head={names[-2]}*,first={names[0].rpartition('.')[0]}.*"


def _manifest(root):
    return json.loads(paths.manifest(root).read_text())


def _damage_manifest(root, how):
    path = paths.manifest(root)
    if how == "deleted":
        path.unlink()
    else:
        text = path.read_text()
        path.write_text(text[: len(text) // 2])


def _rows(root):
    with paths.per_layer_csv(root).open(newline="") as handle:
        return list(csv.DictReader(handle))


def _rewrite_layer_file(path, change=None, drop=()):
    """Rewrite the layer file ``path`` with ``change`` applied to its tensors and the metadata
    keys ``drop`` left out (a file of an older conetool, or a damaged one)."""
    meta = {k: v for k, v in metadata(path).items() if k not in drop}
    tensors = load_file(str(path))
    save_file(change(tensors) if change else tensors, str(path), meta)


@pytest.fixture(scope="module")
def analysed(trained, tmp_path_factory):
    """``analysed(grouping)``: a store of the module's run with kernels (``--eval-size 6``, and
    ``--per-layer`` or ``--groups``), distance and spectrum done, made once per grouping, and
    spectrum's kernel-machine accuracies. Tests damage a copy of it."""
    made = {}

    def make(grouping):
        if grouping not in made:
            root = tmp_path_factory.mktemp(grouping) / "s"
            groups = {"per_layer": True} if grouping == "per-layer" else {"groups": _mapping()}
            kernels(trained, store=root, device="cpu", eval_size=6, **groups)
            distance(root, noise=False)
            made[grouping] = root, spectrum(root, top_k=3).eval_acc
        return made[grouping]

    return make


@pytest.mark.parametrize("how", ["truncated", "deleted"])
@pytest.mark.parametrize("grouping", ["per-layer", "groups"])
def test_a_rebuilt_manifest_keeps_the_eval_set_and_the_parameter_groups(
    trained, analysed, tmp_path, how, grouping
):
    run, root = trained, tmp_path / "s"  # the checkpoints are only read
    analysed_store, accuracy = analysed(grouping)
    shutil.copytree(analysed_store, root)
    assert not any(math.isnan(a) for a in accuracy)
    table = paths.per_layer_csv(root).read_text()
    before = _manifest(root)
    files = {p: p.read_bytes() for p in sorted(root.glob("*_kernels/*.safetensors"))}

    _damage_manifest(root, how)
    again = kernels(run, store=root, device="cpu")  # as the refusal advises: no flags
    assert again.computed == []
    distance(root, noise=False)
    assert paths.per_layer_csv(root).is_file() and paths.per_layer_png(root).is_file()
    assert paths.per_layer_csv(root).read_text() == table
    assert json.loads(paths.distance_summary(root).read_text())["per_layer"]["steps"] == 3
    assert spectrum(root, top_k=3).eval_acc == accuracy
    # the records as kernels wrote them, and said once
    rebuilt = _manifest(root)
    assert rebuilt["eval"] == before["eval"]
    assert rebuilt["layer_groups"] == before["layer_groups"]
    (note,) = [n for n in again.notes if n.startswith("recovered")]
    assert not any(w.startswith("recovered") for w in again.warnings), again.warnings
    assert "evaluation set of 6 examples" in note and "parameter groups" in note
    said = again.notes + again.warnings  # the plan's "keeping the store's ..." said them too
    assert sum("evaluation set" in m for m in said) == 1, said
    assert sum("per-layer" in m for m in said) == 1, said
    # later runs keep both, and recompute none of their files
    later = kernels(run, store=root, device="cpu")
    assert later.eval_computed == [] and later.layer_computed == []
    assert later.eval_size == 6 and later.layer_groups is not None
    assert {p: p.read_bytes() for p in files} == files


def test_old_layer_files_of_leaf_modules_give_the_per_layer_record(run, tmp_path):
    # layer files written before they carried their --groups patterns: leaf-module groups are
    # those of --per-layer
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", per_layer=True)
    before = _manifest(root)["layer_groups"]
    for step in STEPS:
        _rewrite_layer_file(paths.layer_kernel(root, step), drop=("patterns",))
    _damage_manifest(root, "truncated")
    kernels(run, store=root, device="cpu")
    assert _manifest(root)["layer_groups"] == before
    assert kernels(run, store=root, device="cpu").layer_computed == []


def test_groups_that_cannot_be_recovered_keep_the_per_layer_outputs(run, tmp_path):
    # old layer files of --groups: their patterns are lost; distance keeps its per-layer outputs
    # and says how to record the groups again, which keeps the layer files
    root = tmp_path / "s"
    mapping = _mapping()
    kernels(run, store=root, device="cpu", groups=mapping)
    distance(root, noise=False)
    outputs = {p(root): p(root).read_bytes() for p in (paths.per_layer_csv, paths.per_layer_png)}
    for step in STEPS:
        _rewrite_layer_file(paths.layer_kernel(root, step), drop=("patterns",))
    _damage_manifest(root, "truncated")
    again = kernels(run, store=root, device="cpu")
    assert "layer_groups" not in _manifest(root)
    (note,) = [n for n in again.warnings if "no parameter groups were recovered" in n]
    assert "head, first, other" in note and "--groups 'NAME=PATTERN,...'" in note
    assert f"conetool kernels {run.resolve()} --store {root}" in note
    result = distance(root, noise=False)
    assert {p: p.read_bytes() for p in outputs} == outputs
    (kept,) = [n for n in result.warnings if "records no parameter groups" in n]
    assert kept.startswith("kept per_layer.csv and per_layer.png as they were")
    restored = kernels(run, store=root, device="cpu", groups=mapping)
    assert restored.layer_computed == []
    result = distance(root, noise=False)
    assert not any("parameter groups" in n for n in result.warnings)
    assert json.loads(paths.distance_summary(root).read_text())["per_layer"]["steps"] == 3


def test_eval_kernels_without_their_eval_set_name_the_size_to_rerun(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=6)
    paths.eval_set(root).unlink()
    _damage_manifest(root, "truncated")
    again = kernels(run, store=root, device="cpu")
    assert "eval" not in _manifest(root)
    (note,) = [n for n in again.warnings if "no evaluation set was recovered" in n]
    assert f"conetool kernels {run.resolve()} --store {root} --eval-size 6" in note
    restored = kernels(run, store=root, device="cpu", eval_size=6)
    assert restored.eval_computed == []  # drawn again alike: the eval kernels are current
    assert not any(math.isnan(a) for a in spectrum(root, top_k=3).eval_acc)


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-8])


def _not_finite(path):
    _rewrite_layer_file(
        path,
        lambda t: {
            g: k if i else torch.full_like(k, math.nan) for i, (g, k) in enumerate(t.items())
        },
    )


def _wrong_shape(path):
    _rewrite_layer_file(path, lambda t: {g: k[:-1, :-1].clone() for g, k in t.items()})


@pytest.fixture(scope="module")
def per_layer_store(trained, tmp_path_factory):
    """A store of the module's run with kernels ``--per-layer`` and distance done (once per
    module); tests damage a copy of it."""
    root = tmp_path_factory.mktemp("per_layer") / "s"
    kernels(trained, store=root, device="cpu", per_layer=True)
    distance(root, noise=False)
    return root


@pytest.mark.parametrize("damage", [_truncated, _not_finite, _wrong_shape])
def test_a_bad_layer_file_is_named_or_left_out_with_skip_bad(
    trained, per_layer_store, tmp_path, damage
):
    run, root = trained, tmp_path / "s"  # the checkpoints are only read
    shutil.copytree(per_layer_store, root)
    written = {p: p.read_bytes() for p in sorted(paths.distance_dir(root).iterdir())}
    path = paths.layer_kernel(root, 5)
    damage(path)
    # as a bad kernel file: an error naming it and the fix, and nothing written
    with pytest.raises(StoreError) as refused:
        distance(root, noise=False)
    message = str(refused.value)
    assert message.startswith(f"step 5: layer kernel file {path}")
    assert f"conetool kernels {run.resolve()} --store {root} to recompute it" in message
    assert "--skip-bad" in message
    assert ("Delete that file" in message) == (damage is not _truncated)
    assert {p: p.read_bytes() for p in sorted(paths.distance_dir(root).iterdir())} == written
    # with --skip-bad: the step is left out of the per-layer outputs, and one note says so
    result = distance(root, noise=False, skip_bad=True)
    assert result.steps == STEPS  # the kernels are all used
    (note,) = [n for n in result.warnings if "per-layer" in n]
    assert note.startswith(
        f"no per-layer distances at 1 step(s) (5), left out (--skip-bad): layer kernel file {path}"
    )
    assert f"conetool kernels {run.resolve()} --store {root}, which recomputes" in note
    rows = _rows(root)
    assert {int(r["step"]) for r in rows} == {0, 10}
    assert all(r["S_adjacent"] == "" and r["S_ref_0"] != "" for r in rows)  # 5 is step 0's t + dt
    summary = json.loads(paths.distance_summary(root).read_text())["per_layer"]
    assert list(summary["left_out"]) == ["5"] and summary["missing_steps"] == []
    # the fix the note gives
    if "Delete the files said to" in note:
        path.unlink()
    assert kernels(run, store=root, device="cpu").layer_computed == [5]
    result = distance(root, noise=False)
    assert not any("per-layer" in n for n in result.warnings)
    assert {int(r["step"]) for r in _rows(root)} == set(STEPS)


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_the_rebuilding_run_gives_new_steps_their_eval_and_layer_files(run, tmp_path, how):
    # The run that rebuilds the manifest read the recorded options from the damaged manifest,
    # i.e. not at all: the checkpoint added since the last run got its kernel only, and no eval
    # kernel or layer file until the next run.
    root = tmp_path / "s"
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    newest = paths.checkpoint(run, 10)
    newest.rename(hidden / newest.name)
    kernels(run, store=root, device="cpu", eval_size=6, per_layer=True)
    record = _manifest(root)
    (hidden / newest.name).rename(newest)  # a checkpoint written since
    _damage_manifest(root, how)

    # as the refusal advises: no flags
    out = runner.invoke(app, ["kernels", str(run), "--store", str(root), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert paths.eval_kernel(root, 10).is_file() and paths.layer_kernel(root, 10).is_file()
    said = " ".join(out.output.split())
    # each record said once, by the rebuild that got it back (the plan said "keeping the
    # store's evaluation set of 6 examples", then the rebuild "recovered the evaluation set
    # of 6 examples")
    assert said.count("evaluation set of 6 examples") == 1, said
    assert said.count("(--per-layer") == 1, said
    assert "recovered the evaluation set of 6 examples (--eval-size) and the parameter " in said
    assert "kernels runs keep them, this one included" in said
    assert "keeping the store's" not in said
    assert "--step-regex" not in said  # none was given: none lost
    rebuilt = _manifest(root)
    assert rebuilt["eval"] == record["eval"]
    assert rebuilt["layer_groups"] == record["layer_groups"]
    assert sorted(rebuilt["steps"], key=int) == [str(s) for s in STEPS]
    # the new step in the per-layer outputs and the kernel machine's accuracy
    distance(root, noise=False)
    assert {int(r["step"]) for r in _rows(root)} == set(STEPS)
    result = spectrum(root, top_k=3)
    assert result.steps == STEPS and not any(math.isnan(a) for a in result.eval_acc)
    # nothing left for the next run
    later = kernels(run, store=root, device="cpu")
    assert later.computed == [] and later.eval_computed == [] and later.layer_computed == []


REGEX = r"run-a_(\d+)"


def _named_run(run, folder, steps):
    """The checkpoints of ``run`` at ``steps`` saved as run-a_0005.safetensors, without their
    step metadata: only --step-regex REGEX reads their steps."""
    named = folder / "named"
    named.mkdir(exist_ok=True)
    shutil.copy(paths.spec(run), paths.spec(named))
    for step in steps:
        tensors = load_file(str(paths.checkpoint(run, step)))
        save_file(tensors, str(named / f"run-a_{step:04d}.safetensors"))
    return named


def test_the_rebuilding_run_keeps_the_step_regex_its_kernel_files_carry(run, tmp_path):
    root = tmp_path / "s"
    named = _named_run(run, tmp_path, [0, 5])
    kernels(named, store=root, device="cpu", step_regex=REGEX, eval_size=6)
    _named_run(run, tmp_path, [10])
    _damage_manifest(root, "truncated")
    again = kernels(named, store=root, device="cpu")  # no --step-regex: the files give it
    assert again.computed == [10] and again.eval_computed == [10]
    assert any(f"using --step-regex '{REGEX}', recorded in the store" in n for n in again.notes)
    assert _manifest(root)["selection"]["step_regex"] == REGEX  # recorded again


def test_switch_on_a_store_without_manifest_uses_the_step_regex_its_kernel_files_carry(
    run, tmp_path
):
    """switch --ckpts on a store whose manifest.json was deleted listed the checkpoints without
    the --step-regex kernels was given, and failed on names only that regex reads (kernels
    rerun there gets it back from the kernel files)."""
    root = tmp_path / "s"
    named = _named_run(run, tmp_path, STEPS)
    kernels(named, store=root, device="cpu", step_regex=REGEX)
    _damage_manifest(root, "deleted")
    said = f"using --step-regex '{REGEX}', recorded by conetool kernels in the kernel files of"
    result = switch(5, store=root, ckpts=named, device="cpu")
    assert [p.at for p in result.points] == [5]
    (note,) = [n for n in result.notes if "--step-regex" in n]
    assert note.startswith(f"{said} {root}") and "manifest.json" in note, note
    assert not paths.manifest(root).exists()  # switch rebuilds nothing: kernels does
    args = ["switch", "--at", "0", "--store", str(root), "--ckpts", str(named), "--device", "cpu"]
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert f"note: {said}" in " ".join(shown.output.split()), shown.output
    given = switch(0, store=root, ckpts=named, device="cpu", step_regex=REGEX)  # the flag: no note
    assert not any("--step-regex" in n for n in given.notes), given.notes


def _said(text):
    return " ".join(text.split())


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_switch_without_ckpts_takes_the_directory_the_kernel_files_record(run, tmp_path, how):
    """switch without --ckpts on a store whose manifest.json was deleted said to run kernels
    first, though each kernel file records the directory kernels read; a damaged (truncated)
    one was refused even with --ckpts, though kernels rebuilds it. Both read what they need
    from the kernel files, say so, and leave manifest.json as it is (kernels owns it)."""
    root = tmp_path / "s"
    named = _named_run(run, tmp_path, STEPS)
    kernels(named, store=root, device="cpu", step_regex=REGEX)
    _damage_manifest(root, how)
    left = paths.manifest(root).read_bytes() if how == "truncated" else None
    lost = "missing" if how == "deleted" else "damaged"
    taken = (
        f"using the checkpoint directory {named.resolve()}, recorded by conetool kernels in the "
        f"kernel files of {root} (its manifest.json, which records it, is {lost}; pass --ckpts "
        "to use another)"
    )
    regex = f"using --step-regex '{REGEX}', recorded by conetool kernels in the kernel files of"
    result = switch(5, store=root, device="cpu")
    assert [p.at for p in result.points] == [5]
    assert taken in result.notes, result.notes
    (note,) = [n for n in result.notes if n.startswith(regex)]
    assert f"which records it, is {lost};" in note, note
    damaged = [w for w in result.warnings if "manifest.json is damaged" in w]
    if how == "truncated":
        (warning,) = damaged
        assert warning.startswith(f"{paths.manifest(root)} is damaged: switch read what it")
        assert f"conetool kernels {named.resolve()} --store {root} rebuilds it" in warning
    else:
        assert damaged == [], result.warnings
    # not kept for the report, which reads the store once kernels has rebuilt its manifest
    kept = json.loads(paths.switch_results_json(root).read_text())
    assert not [m for m in kept["notes"] if paths.MANIFEST_NAME in m], kept["notes"]
    # with --ckpts (which a damaged manifest refused): no note on the directory
    given = switch(0, store=root, ckpts=named, device="cpu")
    assert [p.at for p in given.points] == [0]
    assert not any("checkpoint directory" in n for n in given.notes), given.notes
    assert len([w for w in given.warnings if "manifest.json is damaged" in w]) == len(damaged)
    shown = runner.invoke(app, ["switch", "--at", "0", "--store", str(root), "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    assert f"note: {taken}" in _said(shown.output), shown.output
    if how == "truncated":
        assert f"warning: {paths.manifest(root)} is damaged" in _said(shown.output)
    # manifest.json left as it was; kernels rebuilds it from the kernel files, computing nothing
    if how == "deleted":
        assert not paths.manifest(root).exists()
    else:
        assert paths.manifest(root).read_bytes() == left
    assert kernels(named, store=root, device="cpu").computed == []
    assert _manifest(root)["checkpoints"] == str(named.resolve())


def test_switch_without_ckpts_names_the_recorded_directory_that_is_gone(run, tmp_path):
    root = tmp_path / "s"
    named = _named_run(run, tmp_path, STEPS)
    kernels(named, store=root, device="cpu", step_regex=REGEX)
    _damage_manifest(root, "deleted")
    moved = tmp_path / "moved"
    shutil.move(named, moved)
    with pytest.raises(CheckpointError) as gone:
        switch(5, store=root, device="cpu")
    message = str(gone.value)
    assert f"store {root}'s manifest.json, which says where the checkpoints are, is missing" in (
        message
    )
    assert f"record (the one conetool kernels read), {named.resolve()}, is not there" in message
    assert "If the run moved, pass its new place: --ckpts CKPTS" in message
    assert f"conetool kernels CKPTS --store {root} rebuilds the manifest" in message
    shown = runner.invoke(app, ["switch", "--at", "5", "--store", str(root), "--device", "cpu"])
    assert shown.exit_code == 1 and "is not there any more" in _said(shown.output), shown.output
    assert [p.at for p in switch(5, store=root, ckpts=moved, device="cpu").points] == [5]


@pytest.mark.parametrize("how", [None, "deleted"])
def test_switch_without_ckpts_on_a_store_of_one_checkpoint_file(run, tmp_path, how):
    # kernels FILE --spec SPEC records the file as its checkpoints: switch said that it "is not
    # there any more" (it looked for a directory)
    root = tmp_path / "s"
    weights = paths.checkpoint(run, 5)
    kernels(weights, store=root, spec=paths.spec(run), device="cpu")
    if how is not None:
        _damage_manifest(root, how)
    result = switch(5, store=root, spec=paths.spec(run), device="cpu")
    assert [p.at for p in result.points] == [5]
    # the optimizer state train saved beside the file is used (it was looked for inside FILE/)
    assert paths.optimizer_state(run, 5).is_file()
    assert [p.momentum for p in result.points] == ["saved"], result.notes


def test_switch_still_refuses_a_manifest_that_kernels_does_not_rebuild(run, tmp_path):
    # another tool's manifest.json (or a newer conetool's) is no damaged one: refused, as
    # kernels refuses it, with --ckpts too
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    paths.manifest(root).write_text('{"format": "something-else"}')
    for ckpts in (None, run):
        with pytest.raises(StoreError, match="is not a conetool store manifest"):
            switch(5, store=root, ckpts=ckpts, device="cpu")
    with pytest.raises(StoreError, match="is not a conetool store manifest"):
        kernels(run, store=root, device="cpu")


def test_a_manifest_naming_no_checkpoint_directory_needs_ckpts_only_without_it(run, tmp_path):
    # it was refused even with --ckpts, which the refusal advised
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    manifest = _manifest(root)
    del manifest["checkpoints"]
    paths.manifest(root).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="does not name its checkpoint directory.*--ckpts"):
        switch(5, store=root, device="cpu")
    assert [p.at for p in switch(5, store=root, ckpts=run, device="cpu").points] == [5]


def test_kernel_files_without_the_selection_say_the_step_regex_is_not_known(run, tmp_path):
    # kernel files written before they carried their run's checkpoint selection
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    for step in STEPS:
        path = paths.kernel(root, step)
        meta = metadata(path)
        assert json.loads(meta.pop("selection"))["path"] == str(run.resolve())
        save_file(load_file(str(path)), str(path), meta)
    _damage_manifest(root, "deleted")
    again = kernels(run, store=root, device="cpu")
    assert again.computed == []
    (note,) = [n for n in again.warnings if "--step-regex" in n]
    assert "is not known" in note and f"If {run} needs one, rerun with --step-regex" in note
    _damage_manifest(root, "deleted")
    given = kernels(run, store=root, device="cpu", step_regex=r"step_(\d+)")
    assert not any("is not known" in n for n in given.warnings)


def test_the_rebuilding_run_refuses_another_runs_checkpoints(run, tmp_path):
    # as on an intact manifest: a run with the same spec and other checkpoints is refused, not
    # mixed with the run whose kernels the store holds
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    other = tmp_path / "other"
    shutil.copytree(run, other)
    path = paths.checkpoint(other, 5)
    save_file({k: v + 1 for k, v in load_file(str(path)).items()}, str(path), metadata(path))
    files = {p: p.read_bytes() for p in sorted(root.glob("kernels/*.safetensors"))}
    _damage_manifest(root, "truncated")
    with pytest.raises(StoreError) as refused:
        kernels(other, store=root, device="cpu")
    message = str(refused.value)
    assert f"holds kernels of the checkpoints in {run.resolve()}" in message
    assert f"{other} has other checkpoint files at 1 of the steps it holds (5; step 5: " in message
    assert {p: p.read_bytes() for p in files} == files
    assert kernels(run, store=root, device="cpu").computed == []  # its own run rebuilds it


@pytest.mark.parametrize(
    ("folder", "carried"), [("checkpoint-5", True), ("best", True), ("checkpoint-5", False)]
)
def test_a_run_of_one_stored_step_in_a_subfolder_is_named_by_its_run_folder(
    run, tmp_path, folder, carried
):
    # Was: the rebuilding run named the store's run by the one folder its kernel files were
    # computed from (checkpoint-5/ of a Hugging Face run until 281b7c5; best/ of
    # best/model.safetensors still), as if that step were a run of its own. Each kernel file
    # records the directory kernels was given (its run's selection): that one is the run; files
    # written before they carried it fall back to the folder their sources lie in.
    hf = tmp_path / "hf"
    (hf / folder).mkdir(parents=True)
    shutil.copy(paths.spec(run), paths.spec(hf))
    shutil.copy(paths.checkpoint(run, 5), hf / folder / "model.safetensors")
    (hf / folder / "trainer_state.json").write_text('{"global_step": 5}')  # best/'s step
    root = tmp_path / "s"
    kernels(hf, store=root, device="cpu")
    if not carried:  # kernel files written before they carried their run's selection
        path = paths.kernel(root, 5)
        meta = metadata(path)
        assert json.loads(meta.pop("selection"))["path"] == str(hf.resolve())
        save_file(load_file(str(path)), str(path), meta)
    other = tmp_path / "other"
    shutil.copytree(hf, other)
    weights = other / folder / "model.safetensors"
    save_file({k: v + 1 for k, v in load_file(str(weights)).items()}, str(weights))
    _damage_manifest(root, "deleted")
    with pytest.raises(StoreError) as refused:
        kernels(other, store=root, device="cpu")
    message = str(refused.value)
    assert f"holds kernels of the checkpoints in {hf.resolve()}, and {other} has" in message


@pytest.fixture(scope="module")
def stray(tmp_path_factory):
    """``(run, kernel file)``: a run of another spec (other widths) and its kernel of step 10,
    the stray file a test copies into a store of the module's run."""
    folder = tmp_path_factory.mktemp("stray")
    other = train_tiny(folder, tiny_spec([7]))
    kernels(other, store=folder / "s", device="cpu", steps="10:10")
    return other, paths.kernel(folder / "s", 10)


def _stray_in(root, stray):
    """Copy the stray kernel file into ``root``, the newest file of the store."""
    copied = paths.kernel(root, 10)
    shutil.copy(stray[1], copied)
    newest = max(p.stat().st_mtime_ns for p in root.glob("kernels/*.safetensors"))
    os.utime(copied, ns=(newest + 10**9, newest + 10**9))
    return copied


def _taken(result):
    """The note saying which checkpoint directory switch took, and the warning naming the kernel
    files of other specs that record another (None: they all agree)."""
    (note,) = [n for n in result.notes if n.startswith("using the checkpoint directory")]
    differ = [w for w in result.warnings if "record more than one checkpoint directory" in w]
    assert len(differ) <= 1, differ
    return note, differ[0] if differ else None


def test_switch_without_manifest_takes_the_directory_of_the_stores_own_kernel_files(
    run, tmp_path, stray
):
    # Was: the newest kernel file of any spec decided the directory, so that one stray file of
    # another run (another spec) sent switch to that run's checkpoints and spec, without a word.
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", steps="0:5")
    copied = _stray_in(root, stray)
    _damage_manifest(root, "deleted")
    note, differ = _taken(switch(5, store=root, device="cpu"))
    assert note.startswith(f"using the checkpoint directory {run.resolve()}, recorded"), note
    # a warning names the files that decided, and the stray one with the directory it records
    assert differ.startswith(f"The kernel files of {root} are of more than one spec"), differ
    deciding = f"{paths.kernel(root, 5)}, {paths.kernel(root, 0)} (spec "
    assert f"'{run.resolve()}' is taken from {deciding}" in differ, differ
    assert "the spec most of them have" in differ, differ
    assert f"while {copied} (spec " in differ, differ
    assert f") record '{stray[0].resolve()}'. Pass --ckpts CKPTS (and" in differ, differ
    assert differ.endswith(
        "Pass --ckpts CKPTS (and --spec SPEC unless CKPTS/conetool.toml exists) to use another"
    ), differ
    # the spec switch runs with decides: --spec of the other run takes its files' directory
    note, differ = _taken(switch(5, store=root, spec=paths.spec(stray[0]), device="cpu"))
    assert note.startswith(f"using the checkpoint directory {stray[0].resolve()}, "), note
    assert f"taken from {copied} (spec " in differ and "the spec given by --spec" in differ
    # one spec's files only: no warning
    copied.unlink()
    assert _taken(switch(5, store=root, device="cpu"))[1] is None


def test_switch_without_manifest_takes_the_step_regex_of_its_specs_kernel_files(
    run, tmp_path, stray
):
    # Was: the newest kernel file of any spec decided the step regex: a stray file of a run
    # given none made switch list the named checkpoints without it (no step in their names).
    root = tmp_path / "s"
    named = _named_run(run, tmp_path, STEPS)
    kernels(named, store=root, device="cpu", step_regex=REGEX, steps="0:5")
    copied = _stray_in(root, stray)
    _damage_manifest(root, "deleted")
    for ckpts in (named, None):
        result = switch(5, store=root, ckpts=ckpts, device="cpu")
        assert [p.at for p in result.points] == [5]
        (note,) = [n for n in result.notes if "--step-regex" in n]
        assert note.startswith(f"using --step-regex '{REGEX}', recorded by conetool"), note
        (differ,) = [w for w in result.warnings if "more than one step regex" in w]
        assert f"'{REGEX}' is taken from {paths.kernel(root, 5)}" in differ, differ
        assert "the spec switch runs with" in differ, differ
        assert f"while {copied} (spec " in differ and ") record none. Pass" in differ, differ


def _best_only_store(run, tmp_path, held):
    """``(hf, other, root)``: a run of one stored step in ``hf/best/`` (its spec in ``hf/``), a
    copy ``other`` with other weights, and a store of ``hf`` whose kernel file was written before
    kernel files carried their run's selection (the sources alone give ``hf/best``), its
    manifest damaged in its steps and recording as its checkpoints ``held``: ``"kept"`` (``hf``,
    as kernels wrote it), ``"another"`` (``other``) or ``"not a string"``."""
    hf = tmp_path / "hf"
    (hf / "best").mkdir(parents=True)
    shutil.copy(paths.spec(run), paths.spec(hf))
    shutil.copy(paths.checkpoint(run, 5), hf / "best" / "model.safetensors")
    (hf / "best" / "trainer_state.json").write_text('{"global_step": 5}')
    root = tmp_path / "s"
    kernels(hf, store=root, device="cpu")
    path = paths.kernel(root, 5)
    meta = metadata(path)
    del meta["selection"]  # written before kernel files carried it
    save_file(load_file(str(path)), str(path), meta)
    other = tmp_path / "other"
    shutil.copytree(hf, other)
    weights = other / "best" / "model.safetensors"
    save_file({k: v + 1 for k, v in load_file(str(weights)).items()}, str(weights))
    manifest = _manifest(root)
    assert manifest["checkpoints"] == str(hf.resolve())
    manifest["steps"] = []  # damaged: kernels rebuilds it
    manifest["checkpoints"] = {"another": str(other.resolve()), "not a string": 5}.get(
        held, manifest["checkpoints"]
    )
    paths.manifest(root).write_text(json.dumps(manifest))
    return hf, other, root


@pytest.mark.parametrize("held", ["kept", "another", "not a string"])
def test_the_rebuilding_run_keeps_the_directory_a_damaged_manifest_still_records(
    run, tmp_path, held
):
    # Was: a manifest damaged in another value (its steps) kept its well-typed "checkpoints",
    # but the rebuilding run took the directory from the kernel files alone: for files written
    # before they carried their run's selection, the folder their sources lie in (best/ of
    # best/model.safetensors), as if that step were a run of its own. A directory that is not
    # the one the kernel files were computed from, or not a string, is not taken.
    hf, other, root = _best_only_store(run, tmp_path, held)
    with pytest.raises(StoreError) as refused:
        kernels(other, store=root, device="cpu")
    named = hf if held == "kept" else hf / "best"  # else: the guess from the sources
    assert f"holds kernels of the checkpoints in {named.resolve()}, and {other} has" in str(
        refused.value
    )


@pytest.mark.parametrize("held", ["kept", "another", "not a string"])
def test_switch_takes_the_directory_a_damaged_manifest_still_records(run, tmp_path, held):
    # Was: switch without --ckpts ignored a damaged manifest whole and took the directory from
    # the kernel files alone (best/, the guess from the sources, where no conetool.toml gives
    # the spec), while kernels rebuilding it kept its well-typed "checkpoints" where the kernel
    # files agree. The same rule now (remembered.held_directory).
    hf, _, root = _best_only_store(run, tmp_path, held)
    left = paths.manifest(root).read_bytes()
    if held != "kept":  # the guess from the sources, as before
        result = switch(5, store=root, spec=paths.spec(hf), device="cpu")
        (note,) = [n for n in result.notes if n.startswith("using the checkpoint directory")]
        assert note.startswith(f"using the checkpoint directory {(hf / 'best').resolve()}, "), note
        assert "recorded by conetool kernels in the kernel files of" in note, note
        # best/ has no conetool.toml: the damaged manifest's spec, the kernel files', gives it
        # (was a SpecError asking for --spec: test_switch_takes_the_spec_of_a_damaged_manifest...)
        alone = switch(5, store=root, device="cpu")
        assert [p.at for p in alone.points] == [5]
        assert any(
            n.startswith(f"using the spec recorded in {root}'s damaged") for n in alone.notes
        )
        return
    result = switch(5, store=root, device="cpu")  # the spec: hf/conetool.toml
    assert [p.at for p in result.points] == [5]
    assert (
        f"using the checkpoint directory {hf.resolve()}, recorded in {root}'s damaged "
        "manifest.json, the one its kernel files were computed from (pass --ckpts to use another)"
    ) in result.notes, result.notes
    (warning,) = [w for w in result.warnings if "manifest.json is damaged" in w]
    assert f"conetool kernels {hf.resolve()} --store {root} rebuilds it" in warning
    assert paths.manifest(root).read_bytes() == left  # left as it is (kernels owns it)


def _held_selection_store(run, tmp_path, held, *, carried=False):
    """``(named, root)``: a store of the named run (``REGEX`` reads its steps) whose kernel files
    were written before they carried their run's selection (unless ``carried``), its manifest
    damaged in its steps and recording as its selection ``held``: ``"kept"`` (as kernels wrote
    it), ``"another"`` (another directory's), ``"not well typed"`` (a step regex that is a
    number) or ``"other regex"`` (``a_(\\d+)``, which reads the same steps)."""
    named = _named_run(run, tmp_path, STEPS)
    root = tmp_path / "s"
    kernels(named, store=root, device="cpu", step_regex=REGEX)
    if not carried:
        for step in STEPS:
            path = paths.kernel(root, step)
            meta = metadata(path)
            del meta["selection"]  # written before kernel files carried it
            save_file(load_file(str(path)), str(path), meta)
    manifest = _manifest(root)
    assert manifest["selection"]["step_regex"] == REGEX
    manifest["steps"] = []  # damaged: kernels rebuilds it
    chosen = manifest["selection"]
    if held == "another":
        chosen["path"] = str((tmp_path / "other").resolve())
    elif held == "not well typed":
        chosen["step_regex"] = 5
    elif held == "other regex":
        chosen["step_regex"] = r"a_(\d+)"
    paths.manifest(root).write_text(json.dumps(manifest))
    return named, root


@pytest.mark.parametrize("held", ["kept", "another", "not well typed"])
def test_switch_takes_the_step_regex_of_a_damaged_manifests_consistent_selection(
    run, tmp_path, held
):
    # Was: switch on a damaged manifest took its checkpoint directory where the kernel files
    # agree, but never its selection: kernel files written before they carried their run's
    # selection gave no step regex, and the run's names could not be read. Its selection is
    # taken only when well typed and of the directory the kernel files were computed from
    # (remembered.held_selection, the rule of held_directory).
    _, root = _held_selection_store(run, tmp_path, held)
    if held != "kept":
        with pytest.raises(CheckpointError):
            switch(5, store=root, device="cpu")
        assert switch(5, store=root, device="cpu", step_regex=REGEX).points[0].at == 5
        return
    result = switch(5, store=root, device="cpu")
    assert [p.at for p in result.points] == [5]
    (note,) = [n for n in result.notes if "--step-regex" in n]
    assert note == (
        f"using --step-regex '{REGEX}', recorded in {root}'s damaged manifest.json, the one its "
        "kernel files were computed from (pass --step-regex to use another)"
    ), note


def test_switch_keeps_the_kernel_files_step_regex_over_a_damaged_manifests_other_one(run, tmp_path):
    # a selection whose step regex is not the one the kernel files carry is not the run's
    _, root = _held_selection_store(run, tmp_path, "other regex", carried=True)
    result = switch(5, store=root, device="cpu")
    (note,) = [n for n in result.notes if "--step-regex" in n]
    assert note.startswith(f"using --step-regex '{REGEX}', recorded by conetool kernels in the")


@pytest.mark.parametrize("held", ["kept", "other regex", "another"])
def test_the_rebuilding_run_keeps_a_damaged_manifests_selection_only_where_consistent(
    run, tmp_path, held
):
    # Was: the kernels run that rebuilds a damaged manifest kept its well-typed selection
    # whatever it recorded: a step regex other than the one the kernel files carry read the
    # steps with it (and recorded it again). Now only a selection consistent with the kernel
    # files is kept (remembered.held_selection); else the files' own is taken.
    named, root = _held_selection_store(run, tmp_path, held, carried=True)
    again = kernels(named, store=root, device="cpu")
    assert again.computed == []
    assert any(f"using --step-regex '{REGEX}', recorded in the store" in n for n in again.notes)
    assert _manifest(root)["selection"]["step_regex"] == REGEX


def test_the_rebuilding_run_keeps_a_damaged_manifests_selection_its_old_kernel_files_lack(
    run, tmp_path
):
    # Mutant R07 (remembered.rebuilt_remembered took the selection from the kernel files only):
    # kernel files written before they carried their run's selection give no step regex, and
    # the rebuilding run forgot the one its damaged manifest still records (consistent with
    # them): the run's names could not be read without --step-regex again
    named, root = _held_selection_store(run, tmp_path, "kept")
    again = kernels(named, store=root, device="cpu")
    assert again.computed == [] and again.skipped == STEPS
    assert any(f"using --step-regex '{REGEX}', recorded in the store" in n for n in again.notes)
    assert _manifest(root)["selection"]["step_regex"] == REGEX


def _spec_less_store(run, tmp_path, held):
    """``(spec_file, root)``: a store of ``run`` whose spec was given to kernels as ``--spec``
    (the run has no conetool.toml), its manifest damaged in its steps and recording as its spec
    ``held``: ``"kept"`` (as kernels wrote it), ``"another"`` (another learning rate: another
    hash) or ``"not a spec"`` (a ``model`` that is no table)."""
    spec_file = tmp_path / "run.toml"
    shutil.move(paths.spec(run), spec_file)
    root = tmp_path / "s"
    kernels(run, store=root, spec=spec_file, device="cpu")
    manifest = _manifest(root)
    manifest["steps"] = []  # damaged: kernels rebuilds it
    if held == "another":
        manifest["spec"]["train"]["lr"] *= 2
    elif held == "not a spec":
        manifest["spec"]["model"] = 5
    paths.manifest(root).write_text(json.dumps(manifest))
    return spec_file, root


@pytest.mark.parametrize("ckpts", [False, True])
def test_switch_takes_the_spec_of_a_damaged_manifest_where_its_kernel_files_agree(
    run, tmp_path, ckpts
):
    # Was: switch on a damaged manifest took its checkpoint directory and selection where the
    # kernel files agree, but never its spec: a run without conetool.toml needed --spec again,
    # though the manifest records the spec the kernel files were computed from (their hash),
    # and a readable manifest's spec is taken. Now it is, with a note (remembered.held_spec).
    spec_file, root = _spec_less_store(run, tmp_path, "kept")
    left = paths.manifest(root).read_bytes()
    result = switch(5, store=root, ckpts=run if ckpts else None, device="cpu")
    assert [p.at for p in result.points] == [5]
    ckpts_dir = run if ckpts else run.resolve()
    assert (
        f"using the spec recorded in {root}'s damaged manifest.json, the one its kernel files "
        f"were computed from ({ckpts_dir} has no conetool.toml; pass --spec to use another)"
    ) in result.notes, result.notes
    key = json.loads(paths.switch_point(root, 5).read_text())["key"]
    assert key["spec_hash"] == load_spec(spec_file).hash()  # the kernels run's spec
    assert paths.manifest(root).read_bytes() == left  # left as it is (kernels owns it)
    # --spec wins, and no note says a spec was taken from the manifest
    given = switch(0, store=root, spec=spec_file, device="cpu")
    assert not any("using the spec" in n for n in given.notes), given.notes


@pytest.mark.parametrize("held", ["another", "not a spec"])
def test_switch_leaves_a_damaged_manifests_spec_that_is_not_its_kernel_files(run, tmp_path, held):
    # a spec whose hash is not the kernel files' is not the run's (edited, or of another run):
    # not taken, and the error that asks for --spec says why (was: no word of the manifest)
    spec_file, root = _spec_less_store(run, tmp_path, held)
    with pytest.raises(SpecError) as refused:
        switch(5, store=root, device="cpu")
    said = str(refused.value)
    why = (
        f"its spec (hash {spec_from_dict(_manifest(root)['spec']).hash()}) is not the one its "
        f"kernel files were computed from (hash {load_spec(spec_file).hash()})"
        if held == "another"
        else "its spec is not one conetool reads ("
    )
    assert said.startswith(
        f"{root}'s damaged manifest.json records a spec, but it is not used: {why}"
    ), said
    assert "has no conetool.toml and no --spec was given" in said, said
    result = switch(5, store=root, spec=spec_file, device="cpu")
    assert [p.at for p in result.points] == [5]
    assert not any("using the spec" in n for n in result.notes), result.notes
