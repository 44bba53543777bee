"""`conetool distance` on stores built from synthetic kernels whose geometry is known, its bad
inputs, and distance + embed end to end on a tiny trained run."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from synthetic_store import kernel_record, open_store
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import ConetoolError, StoreError, StoreReplacedError
from conetool.geometry import GeometryError, kernel_distance
from conetool.noise_floor import NoiseEstimate
from conetool.pipeline import (
    distance,
    distance_outputs,
    embed,
    kernels,
    matrix_cache,
    noise_estimate,
    run_distance,
    run_embed,
)
from conetool.progress import NullProgress
from conetool.spec import spec_from_dict
from conetool.store import Store, StoreIdentity
from conetool.store_lock import StoreLock
from conetool.training import train
from conetool.verdict import REGIMES, VerdictRules, phase_verdict

runner = CliRunner()
CONE_STEPS = list(range(0, 2001, 25))  # 81 kernels, every 25 steps
UNEVEN_STEPS = [0, 5, 10, 15, 20, 40, 60, 80]


# --------------------------------------------------------------------------- synthetic stores


def cone_vectors(steps: list[int], seed: int = 1, level: float = 0.02, dim: int = 30) -> np.ndarray:
    """Unit vectors that swing fast from near e1 to e0 (time constant 40 steps), then wander in
    a cone around e0 (an Ornstein-Uhlenbeck walk in the other directions, correlation time 200
    steps): a two-phase trajectory whose verdict is "cone" (as in tests/test_verdict.py)."""
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(level / (dim - 2))
    axis, swing = np.eye(dim)[0], np.eye(dim)[1]

    def noise() -> np.ndarray:
        z = rng.standard_normal(dim)
        z[:2] = 0.0
        return z

    y, previous, out = sigma * noise(), steps[0], []
    for t in steps:
        keep = np.exp(-(t - previous) / 200.0)
        previous = t
        y = keep * y + np.sqrt(1.0 - keep * keep) * sigma * noise()
        v = axis + 3.0 * np.exp(-t / 40.0) * swing + y
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def psd_kernels(vectors: np.ndarray, scale_seed: int = 0) -> list[np.ndarray]:
    """Rank-one PSD kernels u u^T, each scaled by its own positive factor (S ignores scale)."""
    scales = np.random.default_rng(scale_seed).uniform(0.5, 50.0, len(vectors))
    return [a * np.outer(u, u) for a, u in zip(scales, vectors, strict=True)]


def random_psd(steps: list[int], n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in steps:
        a = rng.standard_normal((n, n + 2))
        out.append(a @ a.T)
    return out


def write_step(store: Store, step: int, kernel: np.ndarray | torch.Tensor) -> None:
    tensor = torch.as_tensor(kernel)
    fingerprint = f"fp-{step}-{float(tensor.flatten()[0]):.17g}"
    store.write_kernel(kernel_record(step, tensor, fingerprint), tensor)
    store.flush()  # into manifest.json now, as a finished kernels run leaves it


def make_store(
    root: Path, steps: list[int], kernels: list[np.ndarray], kind: str = "trace"
) -> Path:
    identity = StoreIdentity("spec0", "probe0", kind, "float64")
    store = open_store(root, identity)
    for step, kernel in zip(steps, kernels, strict=True):
        write_step(store, step, kernel)
    return root


def reference_s(kernels: list[np.ndarray]) -> np.ndarray:
    """float64 S from the definition, pair by pair (no blocking, no Gram matrix)."""
    flat = [np.asarray(k, dtype=np.float64).ravel() for k in kernels]
    k = len(flat)
    s = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if i != j:
                s[i, j] = 1.0 - flat[i] @ flat[j] / (
                    np.linalg.norm(flat[i]) * np.linalg.norm(flat[j])
                )
    return s


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def real_figures():
    """Request this to render the PNGs; other tests skip the rendering (a second a figure)."""


@pytest.fixture(autouse=True)
def _stub_figures(request, monkeypatch):
    if "real_figures" in request.fixturenames:
        return

    def save(fig, path, **kwargs):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"figure not rendered in this test")
        return path

    def write(path, draw, *args, **kwargs):
        return save(draw(*args, **kwargs), path)

    monkeypatch.setattr(distance_outputs, "write_figure", write)
    monkeypatch.setattr(run_embed, "write_figure", write)


@pytest.fixture(scope="module")
def cone_store_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("cone") / "store"
    kernels_ = psd_kernels(cone_vectors(CONE_STEPS))
    make_store(root, CONE_STEPS, kernels_)
    return root, kernels_


@pytest.fixture
def cone_store(cone_store_template, tmp_path):
    root, kernels_ = cone_store_template
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    return copy, kernels_


@pytest.fixture
def uneven_store(tmp_path):
    kernels_ = random_psd(UNEVEN_STEPS)
    return make_store(tmp_path / "uneven", UNEVEN_STEPS, kernels_), kernels_


# --------------------------------------------------------------------------- outputs vs references


def test_outputs_match_a_float64_reference_and_the_verdict_says_cone(cone_store, real_figures):
    root, kernels_ = cone_store
    result = distance(root, refs=["0", 500, "last"])
    s_ref = reference_s(kernels_)

    # the S matrix file: steps and S, against the pairwise definition
    with np.load(paths.matrix_npz(root)) as data:
        assert data["steps"].tolist() == CONE_STEPS
        np.testing.assert_allclose(data["S"], s_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.S, s_ref, rtol=0, atol=1e-12)

    # Fig. 1a: one column per reference, each value the kernel distance computed directly
    rows = read_csv(paths.to_ref_csv(root))
    assert list(rows[0]) == ["step", "ref_0", "ref_500", "ref_2000"]
    assert [int(r["step"]) for r in rows] == CONE_STEPS
    for ref in (0, 500, 2000):
        j = CONE_STEPS.index(ref)
        for i, row in enumerate(rows):
            direct = kernel_distance(kernels_[i], kernels_[j])
            assert float(row[f"ref_{ref}"]) == pytest.approx(direct, abs=1e-12)
    assert result.refs == [0, 500, 2000]

    # Fig. 1b: uniform spacing 25 -> the dts 25 (the spacing) and 50 (the verdict's: the
    # smallest multiple of 25 at least 1/50 of the 2,000 steps); every pair of stored steps
    # that far apart, in dt order, velocity = S / dt
    adjacent_rows = read_csv(paths.adjacent_csv(root))
    assert result.dts == [25, 50]
    assert [(int(r["step"]), int(r["dt"])) for r in adjacent_rows] == [
        *((t, 25) for t in CONE_STEPS[:-1]),
        *((t, 50) for t in CONE_STEPS[:-2]),
    ]
    for row in adjacent_rows:
        gap = int(row["dt"]) // 25  # the pair (i, i + gap)
        i = CONE_STEPS.index(int(row["step"]))
        assert float(row["S"]) == pytest.approx(s_ref[i, i + gap], abs=1e-12)
        assert float(row["velocity"]) == pytest.approx(s_ref[i, i + gap] / (25 * gap), abs=1e-14)

    # the verdict: the same as phase_verdict on the reference matrix, and "cone"
    summary = json.loads(paths.distance_summary(root).read_text())
    expected = phase_verdict(CONE_STEPS, s_ref, refs=[0, 500, 2000])
    assert summary["verdict"]["regime"] == expected.regime == "cone"
    assert summary["verdict"]["phase1_end"] == expected.phase1_end == result.verdict.phase1_end
    assert summary["refs"] == [0, 500, 2000] and summary["dts"] == [25, 50]
    assert summary["verdict_dt"] == 50 == expected.numbers["velocity"]["dt"]
    assert summary["identity"]["kind"] == "trace"
    assert summary["rules"]["min_drop"] == VerdictRules().min_drop
    assert summary["steps"] == {"count": 81, "first": 0, "last": 2000}
    for name in ("to_ref.png", "adjacent.png", "matrix.png"):
        assert (paths.distance_dir(root) / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the table's numbers
    curve = {c.ref: c for c in result.reference_curves}[500]
    j = CONE_STEPS.index(500)
    assert curve.final == pytest.approx(s_ref[-1, j], abs=1e-12)
    assert curve.max == pytest.approx(s_ref[:, j].max(), abs=1e-12)


def test_blocked_computation_gives_the_same_matrix(cone_store):
    root, kernels_ = cone_store
    numel = kernels_[0].size
    # room for two blocks of 2 kernels plus the one being loaded: 41 blocks
    result = distance(root, max_memory=5 * numel * 8)
    np.testing.assert_allclose(result.S, reference_s(kernels_), rtol=0, atol=1e-12)
    assert not result.matrix_reused


def test_max_memory_auto_is_the_matrix_default_as_for_kernels(cone_store):
    # kernels --max-memory auto is the device's default budget; distance and embed refused
    # "auto" as "not a memory size"
    root, kernels_ = cone_store
    result = distance(root, max_memory="auto")
    np.testing.assert_allclose(result.S, reference_s(kernels_), rtol=0, atol=1e-12)
    out = runner.invoke(app, ["distance", "--store", str(root), "--max-memory", "Auto", "-q"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["embed", "--store", str(root), "--max-memory", "auto", "-q"])
    assert out.exit_code == 0, out.output
    # a size that is none: the flag named (from Python, max_memory= is: test_library_api)
    out = runner.invoke(app, ["embed", "--store", str(root), "--max-memory", "lots", "-q"])
    said = " ".join(out.output.split())
    assert out.exit_code == 1 and "--max-memory 'lots' is not a memory size" in said, said
    assert "max_memory=" not in said


def test_uneven_steps_default_dts_and_velocities(uneven_store):
    root, kernels_ = uneven_store
    result = distance(root)
    # the smallest spacing (5) and the spacing that covers the run, which the verdict reads (20)
    assert result.dts == [5, 20]
    rows = read_csv(paths.adjacent_csv(root))
    got = [(int(r["step"]), int(r["dt"])) for r in rows]
    assert got == [(0, 5), (5, 5), (10, 5), (15, 5), (0, 20), (20, 20), (40, 20), (60, 20)]
    index = {step: i for i, step in enumerate(UNEVEN_STEPS)}
    for r in rows:
        t, dt = int(r["step"]), int(r["dt"])
        direct = kernel_distance(kernels_[index[t]], kernels_[index[t + dt]])
        assert float(r["S"]) == pytest.approx(direct, abs=1e-12)
        assert float(r["velocity"]) == pytest.approx(direct / dt, abs=1e-14)
    assert [c.verdict for c in result.adjacent_curves] == [False, True]


def test_explicit_dt_uses_every_stored_pair(uneven_store):
    root, _ = uneven_store
    result = distance(root, dts=[10])
    assert [p.step for p in result.adjacent[10]] == [0, 5, 10]  # 0-10, 5-15, 10-20
    assert result.dts == [10]


def test_the_matrix_is_reused_until_a_kernel_changes(cone_store, monkeypatch):
    root, kernels_ = cone_store
    first = distance(root)
    assert not first.matrix_reused

    def fail(*args, **kwargs):
        raise AssertionError("the S matrix should have been reused")

    monkeypatch.setattr(matrix_cache, "distance_matrix", fail)
    again = distance(root, refs=[100])
    assert again.matrix_reused
    np.testing.assert_array_equal(again.S, first.S)

    monkeypatch.undo()
    store = Store.open(root)
    write_step(store, 100, kernels_[0])  # recomputed kernel: the cache no longer applies
    changed = distance(root)
    assert not changed.matrix_reused
    i = CONE_STEPS.index(100)
    assert changed.S[0, i] == pytest.approx(0.0, abs=1e-12)


def test_default_reference_is_the_first_stored_step_when_0_is_missing(tmp_path):
    steps = [10, 20, 30, 40]
    root = make_store(tmp_path / "s", steps, random_psd(steps))
    result = distance(root)
    assert result.refs == [10]
    assert any("step 0 is not stored" in note for note in result.notes)


def test_verdict_rules_are_used_and_saved(cone_store):
    root, _ = cone_store
    rules = VerdictRules(min_drop=50.0, plateau_tolerance=0.3, lazy_level=1e-5)
    result = distance(root, rules=rules)
    summary = json.loads(paths.distance_summary(root).read_text())
    assert summary["rules"]["min_drop"] == 50.0
    assert summary["verdict"]["numbers"]["rules"]["plateau_tolerance"] == 0.3
    # the cone run's velocity falls about 18x: under a 50x rule it has no second phase
    assert result.verdict.numbers["velocity"]["drop_factor"] < 50
    assert result.verdict.regime == "no-two-phase" == summary["verdict"]["regime"]


def test_the_rules_named_by_the_messages_are_the_package_s_own(cone_store):
    """The refusal of rules='x' and the report's Reproduce comment tell the user to write
    conetool.VerdictRules(...); it was not exported (an AttributeError for who followed them)."""
    import conetool

    root, _ = cone_store
    assert conetool.VerdictRules is VerdictRules
    assert "VerdictRules" in conetool.__all__
    with pytest.raises(conetool.ConetoolError, match=r"conetool\.VerdictRules\(min_drop"):
        distance(root, rules="x")
    result = distance(root, rules=conetool.VerdictRules(min_drop=50.0))
    assert result.verdict.regime == "no-two-phase"


# --------------------------------------------------------------------------- bad input


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist.*conetool kernels"):
        distance(tmp_path / "nowhere")


def test_empty_store(tmp_path):
    root = make_store(tmp_path / "empty", [], [])
    with pytest.raises(StoreError, match="has no kernels.*conetool kernels /ckpts --store"):
        distance(root)


def test_store_with_one_kernel(tmp_path):
    root = make_store(tmp_path / "one", [0], random_psd([0]))
    with pytest.raises(StoreError, match=r"at least two kernels; store .* has 1 \(step 0\)"):
        distance(root)


def test_reference_that_is_not_stored_lists_the_nearest(uneven_store):
    root, _ = uneven_store
    with pytest.raises(GeometryError, match="step 12 has no stored kernel.*10 or 15"):
        distance(root, refs=[12])
    with pytest.raises(ConetoolError, match="--ref 'first'"):
        distance(root, refs=["first"])
    assert not paths.matrix_npz(root).exists()  # refused before any kernel was read


def test_dt_without_a_pair_lists_the_spacings(uneven_store):
    root, _ = uneven_store
    with pytest.raises(GeometryError, match="--dt 7 matches no pair") as info:
        distance(root, dts=[7])
    assert "consecutive stored steps: 5, 20" in str(info.value)
    assert "other differences that occur: 10, 15, 25" in str(info.value)


def test_a_velocity_dt_with_no_pair_is_refused_like_a_dt(uneven_store):
    # --velocity-dt 7 (no two stored steps 7 apart) gave an "undetermined" verdict and wrote
    # every file, while --dt 7 is an error listing the spacings: a typo now fails the same way,
    # before a kernel is read
    root, _ = uneven_store
    with pytest.raises(GeometryError) as info:
        distance(root, rules=VerdictRules(velocity_dt=7), noise=False)
    message = str(info.value)
    assert message.startswith("velocity_dt=7 (--velocity-dt 7) matches no pair of stored steps")
    assert "consecutive stored steps: 5, 20" in message
    assert "other differences that occur: 10, 15, 25" in message
    assert "Pass one of them as --velocity-dt" in message
    assert not paths.distance_dir(root).exists()
    # a spacing that occurs, even between non-consecutive steps, is taken
    assert distance(root, rules=VerdictRules(velocity_dt=25), noise=False).verdict is not None


def test_a_velocity_dt_whose_pairs_skip_bad_left_out_is_refused(uneven_store):
    # 25 apart: 15 and 40 only; with step 40 left out no pair is left
    root, _ = uneven_store
    paths.kernel(root, 40).write_bytes(b"not a safetensors file at all")
    with pytest.raises(GeometryError) as info:
        distance(root, rules=VerdictRules(velocity_dt=25), skip_bad=True, noise=False)
    message = str(info.value)
    assert "velocity_dt=25 (--velocity-dt 25) matches no pair" in message
    assert "(steps 40 were left out by --skip-bad)" in message
    assert not paths.distance_summary(root).exists()


def test_cli_a_velocity_dt_with_no_pair_is_one_message_and_exit_1(uneven_store):
    root, _ = uneven_store
    args = ["distance", "--store", str(root), "--velocity-dt", "7", "--no-noise"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "--velocity-dt 7) matches no pair of stored steps" in out, out
    assert "consecutive stored steps: 5, 20" in out and "Traceback" not in result.output


def test_corrupt_kernel_is_named_and_skipped_only_with_skip_bad(uneven_store):
    root, _ = uneven_store
    bad = paths.kernel(root, 15)
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(StoreError) as info:
        distance(root)
    message = str(info.value)
    assert str(bad) in message and "cannot be read" in message and "--skip-bad" in message
    result = distance(root, skip_bad=True)
    assert 15 not in result.steps and set(result.excluded) == {15}
    summary = json.loads(paths.distance_summary(root).read_text())
    assert list(summary["excluded"]) == ["15"]
    # the pairs through step 15 are gone
    assert [p.step for p in result.adjacent[5]] == [0, 5]


def test_non_finite_kernel_is_named_and_skipped_only_with_skip_bad(uneven_store):
    root, kernels_ = uneven_store
    nan = kernels_[2].copy()
    nan[0, 0] = np.nan
    write_step(Store.open(root), 10, nan)
    with pytest.raises(StoreError, match="step 10: kernel file .*step_000010.safetensors holds"):
        distance(root)
    result = distance(root, skip_bad=True)
    assert result.steps == [s for s in UNEVEN_STEPS if s != 10]
    assert "non-finite" in result.excluded[10]
    with pytest.raises(StoreError, match="left out by --skip-bad"):
        distance(root, refs=[10], skip_bad=True)


@pytest.mark.parametrize("command", [distance, embed])
def test_a_zero_kernel_is_named_as_the_models_and_skipped_only_with_skip_bad(uneven_store, command):
    """A kernel of zeros (every weight zero at that checkpoint, no bias): the advice was to
    delete the file and recompute it, which gives the same zeros and the same error."""
    root, kernels_ = uneven_store
    write_step(Store.open(root), 10, np.zeros_like(kernels_[2]))
    with pytest.raises(StoreError, match="step 10: kernel file .*step_000010.safetensors") as info:
        command(root)
    message = str(info.value)
    assert "all zeros" in message and "recomputing it gives zeros again" in message
    assert "Delete that file" not in message and "--skip-bad" in message
    result = command(root, skip_bad=True)
    assert result.steps == [s for s in UNEVEN_STEPS if s != 10]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32])
def test_kernel_of_another_dtype_is_named_and_skipped_only_with_skip_bad(uneven_store, dtype):
    """A kernel file whose tensor is not of the store's dtype (float64 here; written outside
    conetool) was read as it was: a damaged kernel, named, left out only with --skip-bad."""
    root, kernels_ = uneven_store
    write_step(Store.open(root), 10, torch.as_tensor(kernels_[2] * 100).to(dtype))
    path = paths.kernel(root, 10)
    with pytest.raises(StoreError) as info:
        distance(root)
    message = str(info.value)
    found = str(dtype).removeprefix("torch.")
    assert f"step 10: kernel file {path} holds a {found} tensor, not the float64" in message
    assert f"rerun conetool kernels /ckpts --store {root}" in message and "--skip-bad" in message
    result = distance(root, skip_bad=True)
    assert result.steps == [s for s in UNEVEN_STEPS if s != 10]
    assert f"holds a {found} tensor" in result.excluded[10]


def test_kernel_file_of_another_kind_is_refused_even_with_skip_bad(uneven_store):
    root, kernels_ = uneven_store
    path = paths.kernel(root, 20)
    metadata = {
        "step": "20",
        "kind": "full",
        "spec_hash": "spec0",
        "probe_hash": "probe0",
        "dtype": "float64",
    }
    save_file({"kernel": torch.as_tensor(kernels_[4])}, str(path), metadata=metadata)
    for skip_bad in (False, True):
        with pytest.raises(StoreError) as info:
            distance(root, skip_bad=skip_bad)
        message = str(info.value)
        assert str(path) in message and "kind 'full' (store: 'trace')" in message
        assert "never mixes" in message


def test_kernel_of_another_shape_is_refused(uneven_store):
    root, _ = uneven_store
    write_step(Store.open(root), 40, random_psd([0], n=7)[0])
    with pytest.raises(StoreError, match=r"step_000040.safetensors has shape \(7, 7\)"):
        distance(root, skip_bad=True)


def test_bad_verdict_rule_is_a_clean_error():
    # the message names the Python argument and the flag (it named min_drop= alone, which is
    # no flag of conetool distance); a rule with no flag keeps its Python name alone
    with pytest.raises(
        GeometryError, match=r"min_drop=0\.5 \(--min-drop 0\.5\): needs a finite factor > 1"
    ):
        VerdictRules(min_drop=0.5)
    with pytest.raises(
        GeometryError, match=r"lazy_level=-1\.0 \(--lazy-level -1\.0\): needs an S in \[0, 2\)"
    ):
        VerdictRules(lazy_level=-1.0)
    with pytest.raises(GeometryError, match=r"min_steps=2 \(needs >= 3\)"):
        VerdictRules(min_steps=2)


def test_a_run_saved_often_is_read_at_a_50th_of_it_and_that_curve_is_drawn(tmp_path):
    # every 10 steps over 2,000: the verdict's default dt is the smallest multiple of the
    # spacing at least 2,000 / 50 = 40: 40 itself (it was 10); the default dts are the smallest
    # spacing and that one, so that the curve the verdict reads is in adjacent.csv and starred
    steps = list(range(0, 2001, 10))
    root = make_store(tmp_path / "store", steps, psd_kernels(cone_vectors(steps)))
    result = distance(root, noise=False)
    velocity = result.verdict.numbers["velocity"]
    assert (velocity["dt"], velocity["spacing"], velocity["dt_from"]) == (
        40,
        10,
        "multiple of spacing",
    )
    assert result.verdict.regime == "cone", result.verdict.explanation
    assert result.dts == [10, 40]
    assert [c.dt for c in result.adjacent_curves if c.verdict] == [40]
    summary = json.loads(paths.distance_summary(root).read_text())
    assert summary["dts"] == [10, 40] and summary["verdict_dt"] == 40
    rows = read_csv(paths.adjacent_csv(root))
    assert sorted({int(r["dt"]) for r in rows}) == [10, 40]
    assert sum(int(r["dt"]) == 40 for r in rows) == len(steps) - 4
    out = runner.invoke(app, ["distance", "--store", str(root), "--no-noise"])
    assert out.exit_code == 0, out.output
    said = " ".join(out.output.split())
    assert "S(t, t+40) *" in said and "S(t, t+10) " in said and "S(t, t+10) *" not in said
    assert "4x the checkpoint spacing 10: the default dt is at least 1/50 of the run's 2000" in said


# --------------------------------------------------------------------------- the command line


def test_cli_prints_the_table_and_the_verdict(cone_store):
    root, _ = cone_store
    result = runner.invoke(app, ["distance", "--store", str(root), "--ref", "0", "--ref", "last"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "S(t, τ=0)" in out and "S(t, τ=2000)" in out and "S(t, t+50) *" in out
    assert "S(t, t+25) " in out and "S(t, t+25) *" not in out
    assert "verdict: cone (two phases, then a cone), Phase I ends at step" in out
    assert "Cone: in Phase II" in out
    assert "to_ref.png" in out and "summary.json" in out
    # --ref last cannot be judged (nothing after it); the verdict falls back to its defaults
    assert "the verdict does not use --ref 2000: too few stored steps" in out


def test_cli_verdict_options_reach_the_rules(cone_store):
    root, _ = cone_store
    args = [
        "distance",
        "--store",
        str(root),
        "-q",
        "--min-drop",
        "3",
        "--freeze-factor",
        "7",
        "--bounded-exponent",
        "0.2",
        "--drift-exponent",
        "0.8",
        "--lazy-level",
        "0.002",
        "--plateau-tolerance",
        "0.2",
        "--velocity-dt",
        "50",
        "--no-noise",
        "--logx",
        "--logy",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rules = json.loads(paths.distance_summary(root).read_text())["rules"]
    assert (rules["min_drop"], rules["lazy_level"], rules["plateau_tolerance"]) == (3, 0.002, 0.2)
    assert (rules["freeze_factor"], rules["bounded_exponent"], rules["drift_exponent"]) == (
        7,
        0.2,
        0.8,
    )
    assert rules["velocity_dt"] == 50
    summary = json.loads(paths.distance_summary(root).read_text())

    assert summary["dts"] == [25, 50]  # the verdict's velocity is always drawn by default


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ref", "12"], "nearest stored steps are 10 or 15"),
        (["--dt", "7"], "spacings between consecutive stored steps: 5, 20"),
        (["--min-drop", "0.5"], "min_drop=0.5"),
        # a tolerance every curve meets, a level every S is under: refused with the flag
        (["--plateau-tolerance", "2"], "(--plateau-tolerance 2.0): needs a fraction in (0, 1)"),
        (["--lazy-level", "inf"], "(--lazy-level inf): needs an S in [0, 2)"),
        (["--bounded-exponent", "-1"], "(--bounded-exponent -1.0): needs a finite exponent >= 0"),
        # the flag, as the command line has it (the library names max_memory=)
        (["--max-memory", "lots"], "--max-memory 'lots' is not a memory size"),
    ],
)
def test_cli_bad_input_is_one_message_and_exit_1(uneven_store, args, message):
    root, _ = uneven_store
    result = runner.invoke(app, ["distance", "--store", str(root), *args])
    assert result.exit_code == 1
    assert message.lower() in " ".join(result.output.split()).lower()
    assert "Traceback" not in result.output


@pytest.mark.parametrize("ref", [-10, "-10", " -10 ", np.int64(-10)])
def test_a_negative_ref_is_refused_as_negative(uneven_store, ref):
    # --ref -10 on the command line said "'-10' is not a step ... (an integer ...)", and
    # refs=-10 named the nearest stored step and `conetool kernels` to compute it: a negative
    # step is never stored, and both say so
    root, _ = uneven_store
    with pytest.raises(GeometryError) as caught:
        distance(root, refs=[0, ref], noise=False)
    message = str(caught.value)
    assert message.startswith("--ref -10: steps count from 0, so a negative step is never stored")
    assert f"this store holds steps {UNEVEN_STEPS[0]} to {UNEVEN_STEPS[-1]}" in message
    assert "conetool kernels" not in message and "not a step" not in message
    assert not paths.distance_dir(root).exists()


def test_cli_a_negative_ref_is_refused_as_negative(uneven_store):
    root, _ = uneven_store
    result = runner.invoke(app, ["distance", "--store", str(root), "--ref", "-10"])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "--ref -10: steps count from 0, so a negative step is never stored" in out, out
    assert "is not a step" not in out and "Traceback" not in result.output


def test_cli_missing_store_and_usage_errors(tmp_path):
    result = runner.invoke(app, ["distance", "--store", str(tmp_path / "none")])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(app, ["distance", "--dt", "0"]).exit_code == 2


# --------------------------------------------------------------------------- end to end


TINY = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [8], "activation": "tanh"},
    "data": {
        "dataset": "synthetic",
        "shape": [4],
        "num_classes": 3,
        "train_size": 48,
        "test_size": 12,
    },
    "probe": {"size": 6},
    "train": {
        "steps": 20,
        "batch_size": 8,
        "lr": 0.2,
        "save_every": 10,
        "dense_every": 2,
        "dense_until": 10,
        "eval_every": 20,
    },
}


def test_train_kernels_distance_embed_end_to_end(tmp_path, real_figures):
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(TINY, source="tiny.toml"), ckpts)
    store = tmp_path / "store"
    made = kernels(ckpts, store=store, dtype="float64", device="cpu")
    steps = [0, 2, 4, 6, 8, 10, 20]
    assert made.computed == steps

    result = runner.invoke(app, ["distance", "--store", str(store), "--ref", "10"])
    assert result.exit_code == 0, result.output
    assert "verdict: " in result.output and "estimating the noise floor" in result.output
    opened = Store.open(store)
    rows = read_csv(paths.to_ref_csv(store))
    for row in rows:
        direct = kernel_distance(opened.load_kernel(int(row["step"])), opened.load_kernel(10))
        assert float(row["ref_10"]) == pytest.approx(direct, abs=1e-12)
    summary = json.loads(paths.distance_summary(store).read_text())
    assert summary["dts"] == [2, 10] and summary["verdict"]["regime"] in REGIMES
    # the noise floor, measured on the run's own model at the last step against float64
    noise = summary["noise"]
    assert noise["step"] == 20 and noise["dtype"] == "float64" and noise["examples"] >= 1
    assert 0 <= noise["relative_error"] < 1e-10  # this store computes in float64
    assert noise["floor"] == pytest.approx(2 * noise["S_against_float64"])
    assert summary["verdict"]["numbers"]["noise_floor"] == noise["floor"]
    cached = paths.noise_json(store).stat().st_mtime_ns
    again = runner.invoke(app, ["distance", "--store", str(store)])
    assert again.exit_code == 0 and "estimating the noise floor" not in again.output
    assert paths.noise_json(store).stat().st_mtime_ns == cached  # reused, not recomputed
    assert (
        runner.invoke(app, ["distance", "--store", str(store), "-q", "--no-noise"]).exit_code == 0
    )
    skipped = json.loads(paths.distance_summary(store).read_text())
    assert skipped["noise"] is None and skipped["verdict"]["numbers"]["noise_floor"] is None

    embedded = embed(store, method="pca")
    assert embedded.matrix_reused and embedded.steps == steps
    coords = read_csv(paths.coords_csv(store))
    assert len(coords) == len(steps) and list(coords[0]) == ["step", "x", "y"]
    assert paths.embedding_png(store).read_bytes()[:4] == b"\x89PNG"


def test_a_moved_run_is_found_with_ckpts_and_spec(tmp_path):
    # The noise floor rebuilds the model from the last stored step's checkpoint, which the
    # manifest names: after the run moved, --ckpts says where it is now (DESIGN: --ckpts and
    # --spec override the manifest), and --spec must be the store's (but for [train] keys no
    # kernel depends on).
    spec = spec_from_dict(TINY, source="tiny.toml")
    train(spec, tmp_path / "ckpts")
    store = tmp_path / "store"
    kernels(tmp_path / "ckpts", store=store, device="cpu", steps="0:10")
    moved = shutil.move(tmp_path / "ckpts", tmp_path / "elsewhere")

    def run(*flags: str):
        return runner.invoke(app, ["distance", "--store", str(store), "-q", *flags])

    lost = run()
    assert lost.exit_code == 0 and "noise floor of S was not estimated" in lost.output
    # "estimating the noise floor ..." was said before the checkpoint was looked for, then
    # "... was not estimated": it is said only when it estimates
    said: list[str] = []
    missing = distance(store, progress=_Logged(said))
    assert any("noise floor of S was not estimated" in w for w in missing.warnings)
    assert not any("estimating the noise floor" in line for line in said), said
    assert json.loads(paths.distance_summary(store).read_text())["noise"] is None
    found = run("--ckpts", str(moved))
    assert found.exit_code == 0, found.output
    noise = json.loads(paths.distance_summary(store).read_text())["noise"]
    assert noise["step"] == 10 and noise["checkpoint"] == str(paths.checkpoint(moved, 10))
    assert noise["floor"] > 0  # float32 kernels against float64

    paths.noise_json(store).unlink()
    wrong = run("--ckpts", str(tmp_path))
    assert wrong.exit_code == 1
    assert f"--ckpts {tmp_path} has no checkpoint of step 10" in " ".join(wrong.output.split())
    assert run("--ckpts", str(tmp_path / "none")).exit_code == 1

    other = tmp_path / "other.toml"
    other.write_text(paths.spec(moved).read_text().replace("batch_size = 8", "batch_size = 16"))
    refused = run("--ckpts", str(moved), "--spec", str(other))
    assert refused.exit_code == 1 and spec.hash() in " ".join(refused.output.split())
    # which key differs (found by scripts/fuzz_cli.py --mode spec: two hashes only were said);
    # a key no kernel depends on (train.lr, the schedule) is the verdict's to read now
    said_keys = (
        "It differs from the store's in train.batch_size = 8 (now 16). The kernels depend on "
        "train.batch_size"
    )
    assert said_keys in " ".join(refused.output.split())
    other.write_text(paths.spec(moved).read_text().replace("lr = 0.2", "lr = 0.1"))
    assert run("--ckpts", str(moved), "--spec", str(other)).exit_code == 0
    assert run("--ckpts", str(moved), "--spec", str(paths.spec(moved))).exit_code == 0


def test_the_noise_floor_of_another_engine_is_not_reused(tmp_path):
    # A cached noise floor must be what a fresh estimate gives: distance/noise.json was keyed by
    # the store's identity, step and checkpoint fingerprint, none of which a kernels rerun with
    # another --method changes (a damaged kernel file is recomputed under the same fingerprint),
    # so the floor of the engine that made the store first was reported for the new engine.
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(TINY, source="tiny.toml"), ckpts)
    store = tmp_path / "store"
    kernels(ckpts, store=store, device="cpu", steps="0:10", method="jacobian")
    first = distance(store, dts=[10])
    assert json.loads(paths.distance_summary(store).read_text())["noise"]["method"] == "jacobian"
    assert first.steps == [0, 2, 4, 6, 8, 10]

    (store / paths.kernel_relative(10)).unlink()  # lost; recomputed by the other engine
    assert kernels(
        ckpts, store=store, device="cpu", steps="0:10", method="structured"
    ).computed == [10]
    assert json.loads(paths.manifest(store).read_text())["method"] == "structured"
    said: list[str] = []
    distance(store, dts=[10], progress=_Logged(said))
    cached = json.loads(paths.distance_summary(store).read_text())["noise"]
    assert any("estimating the noise floor" in line for line in said)  # not read from the cache
    paths.noise_json(store).unlink()
    distance(store, dts=[10])
    fresh = json.loads(paths.distance_summary(store).read_text())["noise"]
    assert cached == fresh and fresh["method"] == "structured"


def test_the_noise_floor_is_of_the_engine_that_made_the_last_kernel(tmp_path):
    # The estimate computed with the manifest's "method", the last kernels run's option: a
    # rerun with another --method that recomputed only a lost early kernel made the floor of
    # the last step that engine's, though its kernel was made by the first one.
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(TINY, source="tiny.toml"), ckpts)
    store = tmp_path / "store"
    kernels(ckpts, store=store, device="cpu", steps="0:4", method="jacobian")
    paths.kernel(store, 0).unlink()
    assert kernels(ckpts, store=store, device="cpu", steps="0:4", method="structured").computed == [
        0
    ]
    assert Store.open(store).manifest["method"] == "structured"
    distance(store, dts=[2])
    noise = json.loads(paths.distance_summary(store).read_text())["noise"]
    assert noise["step"] == 4 and noise["method"] == "jacobian"  # step 4's kernel's engine


def test_the_noise_floor_of_another_device_type_is_not_reused(tmp_path, monkeypatch):
    # float32 rounds differently on a GPU than on a CPU, but distance/noise.json's key had no
    # device: a floor estimated on one was reported on the other. (No GPU here: the two kernels
    # are stood in for, and a torch.device is taken as it is, so "cuda" is never used.)
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(TINY, source="tiny.toml"), ckpts)
    store = tmp_path / "store"
    kernels(ckpts, store=store, device="cpu", steps="0:4")
    opened = Store.open(store)
    estimated: list[str] = []

    def stand_in(model, inputs, *, device, **kwargs):
        estimated.append(torch.device(device).type)
        error = {"cpu": 1e-7, "cuda": 3e-7}[estimated[-1]]
        return NoiseEstimate(error, error**2, 4, "trace", kwargs["method"], "float32")

    monkeypatch.setattr(noise_estimate, "kernel_noise", stand_in)
    on_cpu, _ = noise_estimate.estimate_noise_floor(opened, device="cpu")
    on_gpu, _ = noise_estimate.estimate_noise_floor(opened, device=torch.device("cuda"))
    assert estimated == ["cpu", "cuda"]  # estimated again, not the CPU's floor
    assert on_cpu is not None and on_cpu["device"] == "cpu"
    assert on_gpu is not None and on_gpu["device"] == "cuda"
    assert json.loads(paths.noise_json(store).read_text())["key"]["device"] == "cuda"
    assert on_gpu["floor"] == pytest.approx(2 * 9e-14)
    again, _ = noise_estimate.estimate_noise_floor(opened, device=torch.device("cuda"))
    assert again == on_gpu and estimated == ["cpu", "cuda"]  # its own device's: reused


def test_the_noise_floor_is_not_estimated_on_another_file_at_the_checkpoints_path(tmp_path):
    # The floor rebuilt the model from whatever file now lies at the path the last step's record
    # names (a run re-trained into the same folder, a copy), unchecked: a floor of another model.
    # The file is checked against the record (its size, then the fingerprint of the read).
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(TINY, source="tiny.toml"), ckpts)
    store = tmp_path / "store"
    kernels(ckpts, store=store, device="cpu", steps="0:4")
    last = paths.checkpoint(ckpts, 4)
    original = last.read_bytes()
    shutil.copyfile(paths.checkpoint(ckpts, 2), last)  # the same size, other weights
    opened = Store.open(store)
    for bigger in (False, True):  # then another size (a tensor more)
        if bigger:
            save_file({**load_file(last), "extra": torch.zeros(3)}, last)
        said: list[str] = []
        noise, note = noise_estimate.estimate_noise_floor(opened, device="cpu", log=said.append)
        assert noise is None and note is not None, note
        assert str(last) in note and "conetool kernels" in note, note
        assert not paths.noise_json(store).exists()
    assert said == []  # another size: told before anything is read
    last.write_bytes(original)  # the recorded file back (another mtime): estimated
    noise, note = noise_estimate.estimate_noise_floor(opened, device="cpu")
    assert noise is not None and noise["step"] == 4, note


class _Logged(NullProgress):
    """A progress display that keeps the lines logged (tasks are not shown)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def log(self, message: str) -> None:
        self.lines.append(message)


# --------------------------------------------------------------------------- read while written


def _overwrite(root: Path) -> None:
    """What `conetool kernels --overwrite` with another spec does to the store first: clear it
    and start a new one (its first kernel not computed yet)."""
    other = StoreIdentity("spec1", "probe0", "trace", "float64")
    Store.open_for_writing(root, other, {"checkpoints": "/ckpts"}, overwrite=True).close()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_store_replaced_while_distance_reads_its_kernels_stops_it_cleanly(
    uneven_store, monkeypatch, skip_bad
):
    # was: "step 0: kernel file ... cannot be read ... Rerun conetool kernels" (advice about a
    # damaged file), and with --skip-bad every kernel left out one by one
    root, _ = uneven_store
    real = matrix_cache.distance_matrix

    def replaced_meanwhile(*args, **kwargs):
        _overwrite(root)
        return real(*args, **kwargs)

    monkeypatch.setattr(matrix_cache, "distance_matrix", replaced_meanwhile)
    args = ["distance", "--store", str(root), "--no-noise", "-q"] + ["--skip-bad"] * skip_bad
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"store {root} was replaced while conetool distance was reading it" in text
    assert f"Rerun conetool distance --store {root}" in text and "Traceback" not in text
    assert not paths.distance_dir(root).exists()  # nothing of the old kernels in the new store


def test_distance_writes_nothing_into_a_store_replaced_after_it_read_the_kernels(
    uneven_store, monkeypatch
):
    # was: to_ref.csv, adjacent.csv, the figures and summary.json of the old kernels written
    # into the new store (where the report called them results of another identity)
    root, _ = uneven_store
    real = run_distance._read_verdict

    def verdict_then_replaced(*args, **kwargs):
        verdict = real(*args, **kwargs)
        _overwrite(root)
        return verdict

    monkeypatch.setattr(run_distance, "_read_verdict", verdict_then_replaced)
    with pytest.raises(StoreReplacedError, match="stopped and wrote nothing"):
        distance(root, noise=False)
    assert not paths.distance_dir(root).exists()
    assert Store.open(root).identity.spec_hash == "spec1"


def test_distance_notes_that_kernels_is_still_writing_the_store(uneven_store):
    # a kernels run holds the store (its lock) and has stored 8 of the 10 steps it selected
    root, _ = uneven_store
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["selected_steps"] = [*UNEVEN_STEPS, 100, 120]
    paths.manifest(root).write_text(json.dumps(manifest))
    assert distance(root, noise=False).warnings == []
    lock = StoreLock.acquire(root)
    try:
        notes = distance(root, noise=False).warnings
    finally:
        lock.release()
    assert any(
        f"conetool kernels is still writing this store (pid {os.getpid()} on " in n
        and "these results are of the 8 of 10 kernels stored so far" in n
        for n in notes
    ), notes
    assert distance(root, noise=False).warnings == []  # it ended


def test_the_noise_floor_is_not_estimated_on_a_file_that_is_no_checkpoint_now(tmp_path):
    # a damaged file at the recorded path: its header cannot be read (a CheckpointError, not an
    # OSError): a note naming the file, not an error ending the command
    ckpts = tmp_path / "ckpts"
    train(spec_from_dict(TINY, source="tiny.toml"), ckpts)
    store = tmp_path / "store"
    kernels(ckpts, store=store, device="cpu", steps="0:4")
    last = paths.checkpoint(ckpts, 4)
    last.write_bytes(b"\xff" * 16)
    noise, note = noise_estimate.estimate_noise_floor(Store.open(store), device="cpu")
    assert noise is None and note is not None
    assert note.startswith("the noise floor of S was not estimated: ") and str(last) in note, note
