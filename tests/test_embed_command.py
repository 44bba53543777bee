"""`conetool embed` on stores of synthetic kernels: coordinates against a direct PCA, reuse of the
S matrix saved by `conetool distance`, bad input and the command line."""

from __future__ import annotations

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from synthetic_store import make_store
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.embedding import embed_kernels
from conetool.errors import ConetoolError, StoreError
from conetool.pipeline import distance, embed, matrix_cache, run_embed
from conetool.store import StepRecord, Store, StoreIdentity, kernel_norm
from conetool.store_lock import StoreLock

runner = CliRunner()
STEPS = [0, 10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 400]


def trajectory_kernels(steps: list[int], n: int = 5, seed: int = 0) -> list[np.ndarray]:
    """PSD kernels A_t A_t^T whose factor moves fast early and slowly later (a cone-like path)."""
    rng = np.random.default_rng(seed)
    a0, a1, wander = (rng.standard_normal((n, n + 1)) for _ in range(3))
    out = []
    for t in steps:
        a = a0 + (1.0 - np.exp(-t / 30.0)) * a1 + 0.05 * np.sin(t / 50.0) * wander
        out.append(a @ a.T)
    return out


def read_coords(root: Path) -> tuple[list[str], list[int], np.ndarray]:
    with open(paths.coords_csv(root), newline="") as handle:
        rows = list(csv.reader(handle))
    steps = [int(r[0]) for r in rows[1:]]
    return rows[0], steps, np.array([[float(x) for x in r[1:]] for r in rows[1:]])


@pytest.fixture
def real_figures():
    """Request this to render the PNG; other tests skip the rendering."""


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

    monkeypatch.setattr(run_embed, "write_figure", write)
    monkeypatch.setattr("conetool.pipeline.distance_outputs.write_figure", write)


@pytest.fixture
def store(tmp_path):
    kernels = trajectory_kernels(STEPS)
    return make_store(tmp_path / "store", STEPS, kernels), kernels


def test_pca_coordinates_are_the_pca_of_the_unit_kernels(store, real_figures):
    root, kernels = store
    result = embed(root, method="pca", dims=2)
    header, steps, coords = read_coords(root)
    assert header == ["step", "x", "y"] and steps == STEPS and coords.shape == (len(STEPS), 2)

    units = np.stack([k.ravel() / np.linalg.norm(k) for k in kernels])
    pca = PCA(n_components=2).fit(units)
    expected = pca.transform(units)
    for axis in range(2):  # equal up to the sign of each axis
        sign = np.sign(expected[:, axis] @ coords[:, axis])
        np.testing.assert_allclose(coords[:, axis], sign * expected[:, axis], atol=1e-9)
    np.testing.assert_allclose(
        result.embedding.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-9
    )
    summary = json.loads(paths.embed_summary(root).read_text())
    assert summary["method"] == "pca" and summary["dims"] == 2 and summary["seed"] == 0
    assert summary["explained_variance_ratio"] == pytest.approx(
        list(pca.explained_variance_ratio_), rel=1e-9
    )
    assert summary["matrix"] == "computed" and summary["identity"]["kind"] == "trace"
    assert paths.embedding_png(root).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mds_in_three_dimensions(store):
    root, _ = store
    result = embed(root, method="mds", dims=3, seed=3)
    header, steps, coords = read_coords(root)
    assert header == ["step", "x", "y", "z"] and steps == STEPS and coords.shape == (12, 3)
    np.testing.assert_allclose(coords, result.embedding.coords, atol=1e-12)
    # the same as embedding the S matrix directly, and a stress in [0, 1)
    s = distance(root).S
    direct = embed_kernels(s, method="mds", dims=3, seed=3)
    np.testing.assert_allclose(coords, direct.coords, atol=1e-8)
    summary = json.loads(paths.embed_summary(root).read_text())
    assert summary["stress"] == pytest.approx(direct.stress, abs=1e-10)
    assert 0.0 <= summary["stress"] < 1.0
    assert summary["explained_variance_ratio"] is None and summary["seed"] == 3


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_distance_or_embed_failing_midway_leaves_no_summary_of_the_run_before(store, monkeypatch):
    # a full disk at the figures: the new CSV is written, the old summary (other dts, other
    # dims) would describe it wrongly beside it; it is gone until a run writes them all again
    root, _ = store
    distance(root, dts=10)
    embed(root, dims=2)
    with monkeypatch.context() as patched:
        patched.setattr("conetool.pipeline.run_distance.write_figures", _full_disk)
        patched.setattr(run_embed, "write_figure", _full_disk)
        with pytest.raises(OSError, match="No space"):
            distance(root, dts=20)
        with pytest.raises(OSError, match="No space"):
            embed(root, dims=3)
    with open(paths.adjacent_csv(root), newline="") as handle:
        assert {row["dt"] for row in csv.DictReader(handle)} == {"20"}  # the new run's
    assert read_coords(root)[0] == ["step", "x", "y", "z"]
    assert not paths.distance_summary(root).exists() and not paths.embed_summary(root).exists()
    distance(root, dts=20)
    embed(root, dims=3)
    assert json.loads(paths.distance_summary(root).read_text())["dts"] == [20]
    assert json.loads(paths.embed_summary(root).read_text())["dims"] == 3


def test_embed_reuses_the_matrix_that_distance_saved(store, monkeypatch):
    root, _ = store
    saved = distance(root)

    def fail(*args, **kwargs):
        raise AssertionError("embed should have reused distance/matrix.npz")

    monkeypatch.setattr(matrix_cache, "distance_matrix", fail)
    result = embed(root, method="pca")
    assert result.matrix_reused and result.steps == saved.steps
    summary = json.loads(paths.embed_summary(root).read_text())
    assert summary["matrix"] == "reused"
    # the ring on the picture is the Phase I end of the saved verdict
    assert summary["phase1_end_from"] == "distance/summary.json"
    assert summary["phase1_end"] == saved.verdict.phase1_end


def test_embed_computes_and_saves_the_matrix_when_none_matches(store, monkeypatch):
    root, kernels = store
    first = embed(root, method="pca")
    # in embed's own folder: distance/ holds only distance's results
    assert not first.matrix_reused and paths.embed_matrix_npz(root).is_file()
    assert not paths.distance_dir(root).exists()
    with np.load(paths.embed_matrix_npz(root)) as data:
        assert data["steps"].tolist() == STEPS
    # a kernel changes: the saved matrix no longer matches, so it is computed again
    opened = Store.open(root)
    tensor = torch.as_tensor(kernels[0])
    record = opened.record(10)
    opened.write_kernel(
        StepRecord(**{**record.__dict__, "fingerprint": "changed", "norm": kernel_norm(tensor)}),
        tensor,
    )
    second = embed(root, method="pca")
    assert not second.matrix_reused
    assert second.embedding.coords[0] == pytest.approx(second.embedding.coords[1], abs=1e-9)

    def fail(*args, **kwargs):
        raise AssertionError("should have been reused")

    monkeypatch.setattr(matrix_cache, "distance_matrix", fail)
    assert embed(root, method="mds").matrix_reused


def test_bad_input(tmp_path, store):
    root, _ = store
    with pytest.raises(ConetoolError, match="--method 'tsne'"):
        embed(root, method="tsne")
    with pytest.raises(ConetoolError, match="--dims 4"):
        embed(root, dims=4)
    with pytest.raises(StoreError, match="does not exist"):
        embed(tmp_path / "none")
    one = make_store(tmp_path / "one", [0], trajectory_kernels([0]))
    with pytest.raises(StoreError, match=r"at least two kernels.*has 1 \(step 0\)"):
        embed(one)
    paths.kernel(root, 20).write_bytes(b"\x00" * 16)
    with pytest.raises(StoreError, match="step_000020.safetensors cannot be read"):
        embed(root)
    result = embed(root, skip_bad=True, method="pca")
    assert 20 not in result.steps and set(result.excluded) == {20}


def test_cli(store):
    root, _ = store
    result = runner.invoke(app, ["embed", "--store", str(root), "--method", "pca", "--dims", "3"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "pca" in out and "coords.csv" in out and "embedding.png" in out
    assert "computed" in out
    again = runner.invoke(app, ["embed", "--store", str(root)])
    assert again.exit_code == 0 and "reused" in again.output


@pytest.mark.parametrize(
    ("args", "code"), [(["--method", "tsne"], 2), (["--dims", "4"], 2), (["--dims", "1"], 2)]
)
def test_cli_usage_errors(store, args, code):
    root, _ = store
    result = runner.invoke(app, ["embed", "--store", str(root), *args])
    assert result.exit_code == code


def test_cli_user_error_is_one_message(tmp_path):
    result = runner.invoke(app, ["embed", "--store", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- read while written


def test_embed_after_distance_on_more_kernels_leaves_distances_matrix_that_of_its_summary(
    tmp_path, monkeypatch
):
    # distance ran while kernels was writing the store (11 kernels), embed after it (12): embed
    # rewrote distance/matrix.npz with 12 steps while distance/summary.json is of 11 (the
    # report's "Numbers: distance/matrix.npz" then were of other steps than the verdict's)
    kernels = trajectory_kernels(STEPS)
    root = make_store(tmp_path / "store", STEPS[:-1], kernels[:-1])
    distance(root, noise=False)
    saved = paths.matrix_npz(root).read_bytes()
    make_store(root, [STEPS[-1]], [kernels[-1]])  # a kernels run still writing adds one
    result = embed(root, method="pca")
    assert result.steps == STEPS and not result.matrix_reused
    assert paths.matrix_npz(root).read_bytes() == saved  # distance's, untouched
    summary = json.loads(paths.distance_summary(root).read_text())
    with np.load(paths.matrix_npz(root)) as data:
        assert data["steps"].tolist() == STEPS[:-1] and summary["steps"]["count"] == len(STEPS) - 1
        assert str(data["key"]) == summary["matrix_key"]
    with np.load(paths.embed_matrix_npz(root)) as data:
        assert data["steps"].tolist() == STEPS
        embedded = data["S"].copy()

    def fail(*args, **kwargs):
        raise AssertionError("the matrix embed saved should have been reused")

    # distance, rerun, takes embed's matrix (nothing recomputed) and keeps its own copy of it
    monkeypatch.setattr(matrix_cache, "distance_matrix", fail)
    again = distance(root, noise=False)
    assert again.matrix_reused and again.steps == STEPS
    assert paths.matrix_npz(root) in again.files
    with np.load(paths.matrix_npz(root)) as data:
        assert data["steps"].tolist() == STEPS and np.array_equal(data["S"], embedded)
    # and embed reuses it
    assert embed(root, method="mds").matrix_reused


def test_embed_writes_nothing_into_a_store_replaced_after_it_read_the_kernels(store, monkeypatch):
    root, _ = store
    real = run_embed.embed_kernels

    def embedded_then_replaced(*args, **kwargs):
        coords = real(*args, **kwargs)
        other = StoreIdentity("spec1", "probe0", "trace", "float64")
        Store.open_for_writing(root, other, {"checkpoints": "/ckpts"}, overwrite=True).close()
        return coords

    monkeypatch.setattr(run_embed, "embed_kernels", embedded_then_replaced)
    result = runner.invoke(app, ["embed", "--store", str(root), "--method", "pca"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "was replaced while conetool embed was reading it" in text and "Traceback" not in text
    assert not paths.embed_dir(root).exists() and not paths.distance_dir(root).exists()


def test_embed_says_when_kernels_is_still_writing_the_store(store):
    root, _ = store
    lock = StoreLock.acquire(root)
    try:
        result = runner.invoke(app, ["embed", "--store", str(root), "--method", "pca", "-q"])
        embedded = embed(root, method="pca")  # a Python caller hears it too
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert any("conetool kernels is still writing" in w for w in embedded.warnings)
    text = " ".join(result.output.split())  # said also with --quiet
    assert f"conetool kernels is still writing this store (pid {os.getpid()}" in text
    assert f"these results are of the {len(STEPS)} kernels stored so far" in text
    again = runner.invoke(app, ["embed", "--store", str(root), "--method", "pca"])
    assert "still writing" not in again.output


@pytest.mark.parametrize("method", ["mds", "pca"])
def test_seed_and_a_rerun_on_the_saved_matrix_leave_every_bit_of_the_coordinates(store, method):
    """--seed is recorded only (README): seeds 0 and 12345 give the same coordinates bit for bit,
    and a rerun that reads its S matrix back from embed/matrix.npz gives them again; coords.csv
    holds them to the last bit, and summary.json's stress is Kruskal's stress-1 of those
    coordinates against sqrt(2 S) of the saved matrix (a plain loop, no conetool helper)."""
    root, _ = store
    first = embed(root, method=method, dims=2, seed=0)
    assert not first.matrix_reused
    again = embed(root, method=method, dims=2, seed=12345)
    assert again.matrix_reused
    np.testing.assert_array_equal(again.embedding.coords, first.embedding.coords)
    assert again.embedding.stress == first.embedding.stress
    _, _, written = read_coords(root)
    np.testing.assert_array_equal(written, first.embedding.coords)
    summary = json.loads(paths.embed_summary(root).read_text())
    assert summary["seed"] == 12345
    with np.load(paths.embed_matrix_npz(root)) as data:
        target = np.sqrt(2.0 * np.clip(data["S"], 0.0, None))
    num = den = 0.0
    for i in range(len(written)):
        for j in range(i + 1, len(written)):
            num += (float(np.linalg.norm(written[i] - written[j])) - target[i, j]) ** 2
            den += target[i, j] ** 2
    assert summary["stress"] == pytest.approx(np.sqrt(num / den), rel=1e-12)
    assert 0.0 < summary["stress"] < 1.0
