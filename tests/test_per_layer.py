"""`conetool kernels --per-layer` / `--groups`: the kernel of each parameter group, and the
per-group distances of `conetool distance` (issue 19, item 2)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from tiny_run import STEPS, metadata, run_fixtures, tiny_spec
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import ConetoolError
from conetool.geometry import kernel_distance
from conetool.layer_groups import OTHER, parameter_groups, parse_groups
from conetool.pipeline import distance, kernels
from conetool.pipeline.resolve import model_for
from conetool.spec import spec_from_dict
from conetool.store import Store

runner = CliRunner()
SPEC = tiny_spec([6, 5])  # two hidden layers


trained, run = run_fixtures(SPEC)


def _names():
    return [n for n, _ in model_for(spec_from_dict(SPEC)).named_parameters()]


def _check_sums(root, groups):
    store = Store.open(root)
    for step in STEPS:
        total = store.load_kernel(step)
        parts = store.load_layer_kernels(step)
        assert list(parts) == list(groups)
        summed = sum(parts.values())
        assert isinstance(summed, torch.Tensor) and summed.dtype == torch.float64
        error = torch.linalg.norm(summed - total) / torch.linalg.norm(total)
        assert error < 1e-10, (step, float(error))


@pytest.mark.parametrize("kind", ["trace", "full"])
def test_leaf_module_groups_sum_to_the_kernel(run, tmp_path, kind):
    root = tmp_path / "s"
    result = kernels(run, store=root, dtype="float64", device="cpu", kind=kind, per_layer=True)
    names = _names()
    leaves = parameter_groups(model_for(spec_from_dict(SPEC)))
    assert len(leaves) >= 3 and [n for m in leaves.values() for n in m] == names
    assert result.layer_computed == STEPS and result.layer_groups == list(leaves)
    _check_sums(root, leaves)
    store = Store.open(root)
    record = store.layer_record
    assert record is not None and record["groups"] == leaves and record["patterns"] is None
    for step in STEPS:
        meta = metadata(paths.layer_kernel(root, step))
        rec = store.record(step)
        assert rec is not None and meta["fingerprint"] == rec.fingerprint
        assert meta["step"] == str(step) and meta["kind"] == kind and meta["dtype"] == "float64"
        assert json.loads(meta["groups"]) == leaves and meta["groups_hash"] == record["hash"]
        assert meta["probe_hash"] == store.identity.probe_hash
    for p in model_for(spec_from_dict(SPEC)).parameters():
        assert p.requires_grad


def test_groups_mapping_with_other(run, tmp_path):
    names = _names()
    first = names[0].rpartition(".")[0]  # the first leaf module, e.g. "layers.0"
    root = tmp_path / "s"
    mapping = f"head={names[-2]}*,first={first}.*"
    result = kernels(run, store=root, dtype="float64", device="cpu", groups=mapping)
    assert result.layer_groups == ["head", "first", OTHER]
    groups = Store.open(root).layer_record["groups"]  # type: ignore[index]
    assert groups["head"] == [names[-2]]
    assert groups["first"] == [n for n in names if n.startswith(first + ".")]
    assert set(groups[OTHER]) == set(names) - set(groups["head"]) - set(groups["first"])
    assert Store.open(root).layer_record["patterns"] == parse_groups(mapping)  # type: ignore[index]
    _check_sums(root, groups)


def test_bad_groups_are_refused_before_writing(run, tmp_path):
    with pytest.raises(ConetoolError, match="NAME=PATTERN"):
        kernels(run, store=tmp_path / "a", device="cpu", groups="nothing")
    with pytest.raises(ConetoolError, match="matches no parameter"):
        kernels(run, store=tmp_path / "b", device="cpu", groups="x=nope.*")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rerun_computes_nothing_and_keeps_the_groups(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", per_layer=True)
    layer_bytes = {s: paths.layer_kernel(root, s).read_bytes() for s in STEPS}
    again = kernels(run, store=root, device="cpu", per_layer=True)
    assert again.computed == [] and again.layer_computed == [] and again.skipped == STEPS
    plain = kernels(run, store=root, device="cpu")  # without --per-layer: kept, nothing computed
    assert plain.computed == [] and plain.layer_computed == [] and plain.layer_groups is not None
    assert any("keeping the store's per-layer kernels" in n for n in plain.notes)
    assert not any("keeping the store's" in w for w in plain.warnings)  # information only
    assert {s: paths.layer_kernel(root, s).read_bytes() for s in STEPS} == layer_bytes
    paths.layer_kernel(root, 5).unlink()  # a missing layer file: only it is computed
    fixed = kernels(run, store=root, device="cpu")
    assert fixed.computed == [] and fixed.layer_computed == [5]


def test_adding_per_layer_later_keeps_the_kernels_and_regrouping_replaces(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, dtype="float64", device="cpu")
    before = {s: paths.kernel(root, s).read_bytes() for s in STEPS}
    added = kernels(run, store=root, dtype="float64", device="cpu", per_layer=True)
    assert added.computed == [] and added.layer_computed == STEPS
    assert {s: paths.kernel(root, s).read_bytes() for s in STEPS} == before
    _check_sums(root, Store.open(root).layer_record["groups"])  # type: ignore[index]
    names = _names()
    other = kernels(run, store=root, dtype="float64", device="cpu", groups=f"last={names[-1]}")
    assert other.computed == [] and other.layer_computed == STEPS
    assert any("parameter groups changed" in n for n in other.warnings)
    assert other.layer_groups == ["last", OTHER]
    assert not [w for w in other.warnings if "selects them" in w]  # every step recomputed
    assert {s: paths.kernel(root, s).read_bytes() for s in STEPS} == before
    _check_sums(root, Store.open(root).layer_record["groups"])  # type: ignore[index]
    # regrouped by a run that selects some steps: the warning names the steps it leaves
    narrow = kernels(run, store=root, dtype="float64", device="cpu", per_layer=True, every=5)
    assert narrow.layer_computed == [0, 5, 10]
    narrow = kernels(run, store=root, dtype="float64", device="cpu", groups="a=*", steps="5:")
    assert narrow.layer_computed == [5, 10]
    [warning] = [w for w in narrow.warnings if "parameter groups changed" in w]
    assert "1 stored step(s) (0) have no layer files until a run selects them" in warning


def test_distance_per_layer_csv_matches_kernel_distance(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, dtype="float64", device="cpu", per_layer=True)
    result = distance(root, refs=[0, 10], noise=False)
    csv_path, png = paths.per_layer_csv(root), paths.per_layer_png(root)
    assert csv_path in result.files and png in result.files and png.stat().st_size > 0
    summary = json.loads(paths.distance_summary(root).read_text())
    assert "per_layer.csv" in summary["files"] and "per_layer.png" in summary["files"]
    dt = summary["per_layer"]["dt"]
    assert dt == 5
    store = Store.open(root)
    loaded = {s: store.load_layer_kernels(s) for s in STEPS}
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "group", "S_ref_0", "S_ref_10", "S_adjacent", "velocity"]
    groups = list(loaded[0])
    assert [(int(r["step"]), r["group"]) for r in rows] == [(s, g) for s in STEPS for g in groups]
    for row in rows:
        step, group = int(row["step"]), row["group"]
        for ref in (0, 10):
            expected = kernel_distance(loaded[step][group], loaded[ref][group])
            assert float(row[f"S_ref_{ref}"]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        if step + dt in loaded:
            s = kernel_distance(loaded[step][group], loaded[step + dt][group])
            assert float(row["S_adjacent"]) == pytest.approx(s, rel=1e-12, abs=1e-15)
            assert float(row["velocity"]) == pytest.approx(s / dt, rel=1e-12, abs=1e-15)
        else:
            assert row["S_adjacent"] == "" and row["velocity"] == ""


def test_distance_without_layer_files_writes_no_per_layer(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    result = distance(root, noise=False)
    assert not paths.per_layer_csv(root).exists() and not paths.per_layer_png(root).exists()
    assert all("per_layer" not in p.name for p in result.files)
    summary = json.loads(paths.distance_summary(root).read_text())
    assert "per_layer" not in summary and "per_layer.csv" not in summary["files"]


def test_cli_per_layer_end_to_end(run, tmp_path):
    root = tmp_path / "s"
    names = _names()
    out = runner.invoke(
        app,
        [
            "kernels",
            str(run),
            "--store",
            str(root),
            "--device",
            "cpu",
            "--quiet",
            "--groups",
            f"head={names[-2]}*",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "per-layer kernels" in out.output and "head, other" in out.output
    assert all(paths.layer_kernel(root, s).is_file() for s in STEPS)
    out = runner.invoke(app, ["distance", "--store", str(root), "--no-noise", "--quiet"])
    assert out.exit_code == 0, out.output
    assert paths.per_layer_csv(root).is_file() and paths.per_layer_png(root).is_file()
    # the report shows the figure and its reproduce block asks for the same groups
    out = runner.invoke(app, ["report", "--store", str(root), "--quiet"])
    assert out.exit_code == 0, out.output
    text = paths.report_md(root).read_text()
    assert "../distance/per_layer.png" in text and "Per layer. The velocity" in text
    line = next(x for x in text.splitlines() if x.startswith("conetool kernels"))
    assert f"--groups 'head={names[-2]}*'" in line


def test_report_reproduces_plain_per_layer(run, tmp_path):
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", per_layer=True)
    assert runner.invoke(app, ["report", "--store", str(root), "--quiet"]).exit_code == 0
    text = paths.report_md(root).read_text()
    line = next(x for x in text.splitlines() if x.startswith("conetool kernels"))
    assert line.endswith("--per-layer")


@pytest.mark.parametrize("text", ["a=fc1.*,,b=fc2.*", "a=fc1.*,", ","])
def test_groups_with_an_empty_item_are_refused(text: str) -> None:
    """'a=x,,b=y' dropped the empty item without a word, as --at did (a group meant there and
    left out); it is refused naming --groups and the list without it."""
    with pytest.raises(ConetoolError, match=r"^--groups .* has an empty item") as info:
        parse_groups(text)
    kept = ",".join(item for item in text.split(",") if item)
    assert (f"(--groups '{kept}')" in str(info.value)) == bool(kept)


def test_distance_warns_of_steps_without_a_current_layer_file(run, tmp_path):
    # a missing layer file and one of another grouping went silently into missing_steps, where
    # spectrum warns of the steps without a current eval kernel, naming them and the command
    root, other = tmp_path / "s", tmp_path / "other"
    names = _names()
    text = f"head={names[-2]}*"
    kernels(run, store=root, device="cpu", groups=text)
    kernels(run, store=other, device="cpu", per_layer=True)  # leaf modules: another grouping
    paths.layer_kernel(root, 5).unlink()
    paths.layer_kernel(root, 10).write_bytes(paths.layer_kernel(other, 10).read_bytes())
    result = distance(root, noise=False)
    [warning] = [w for w in result.warnings if "per-layer distances" in w]
    command = f"conetool kernels {run} --store {root} --groups '{text}'"
    assert warning == (
        f"no per-layer distances at 2 step(s) (5, 10): no layer kernel file "
        f"{paths.layer_kernel(root, 5)}. Rerun {command}, which recomputes the layer kernels "
        "that are missing, stale or unreadable."
    )
    summary = json.loads(paths.distance_summary(root).read_text())
    assert summary["per_layer"]["missing_steps"] == [5, 10] and warning in summary["warnings"]
    # the command it names recomputes just those, with the store's groups
    again = kernels(run, store=root, device="cpu", groups=text)
    assert again.computed == [] and again.layer_computed == [5, 10]
    assert not [w for w in distance(root, noise=False).warnings if "per-layer" in w]
    # leaf-module groups: --per-layer (a bare rerun would keep them too)
    paths.layer_kernel(other, 0).unlink()
    [warning] = [w for w in distance(other, noise=False).warnings if "per-layer" in w]
    assert f"(0): no layer kernel file {paths.layer_kernel(other, 0)}" in warning
    assert f"Rerun conetool kernels {run} --store {other} --per-layer, which" in warning
