"""A rebuilt manifest keeps the records of the evaluation set and the parameter groups.

A damaged or deleted ``manifest.json`` was rebuilt from the kernel files without its ``eval``
(``kernels --eval-size``) and ``layer_groups`` (``--per-layer``) records, although their files
were all in the store: the next ``distance`` deleted ``per_layer.csv`` and ``per_layer.png``, and
``spectrum`` lost its kernel-machine accuracy."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file, save_file
from tiny_run import STEPS, metadata, run_fixtures, tiny_spec

from conetool import paths
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
