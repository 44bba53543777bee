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

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_run import STEPS, metadata, run_fixtures, tiny_spec

from conetool import paths
from conetool.errors import StoreError
from conetool.pipeline import distance, kernels
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_spectrum import spectrum
from conetool.spec import spec_from_dict

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


@pytest.mark.parametrize("how", ["truncated", "deleted"])
@pytest.mark.parametrize("grouping", ["per-layer", "groups"])
def test_a_rebuilt_manifest_keeps_the_eval_set_and_the_parameter_groups(
    run, tmp_path, how, grouping
):
    root = tmp_path / "s"
    groups = {"per_layer": True} if grouping == "per-layer" else {"groups": _mapping()}
    kernels(run, store=root, device="cpu", eval_size=6, **groups)
    distance(root, noise=False)
    accuracy = spectrum(root, top_k=3).eval_acc
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
    (note,) = [n for n in again.warnings if n.startswith("recovered")]
    assert "evaluation set of 6 examples" in note and "parameter groups" in note
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
    (kept,) = [n for n in result.notes if "records no parameter groups" in n]
    assert kept.startswith("kept per_layer.csv and per_layer.png as they were")
    restored = kernels(run, store=root, device="cpu", groups=mapping)
    assert restored.layer_computed == []
    result = distance(root, noise=False)
    assert not any("parameter groups" in n for n in result.notes)
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


@pytest.mark.parametrize("damage", [_truncated, _not_finite, _wrong_shape])
def test_a_bad_layer_file_is_named_or_left_out_with_skip_bad(run, tmp_path, damage):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", per_layer=True)
    distance(root, noise=False)
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
    (note,) = [n for n in result.notes if "per-layer" in n]
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
    assert not any("per-layer" in n for n in result.notes)
    assert {int(r["step"]) for r in _rows(root)} == set(STEPS)
