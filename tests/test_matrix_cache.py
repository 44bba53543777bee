"""The S matrix cache (conetool.pipeline.matrix_cache): a copied store reuses its matrix, a kernel
file rewritten with other contents never does; a store holding a step beyond 2**53 is refused
when opened, not after its S matrix is computed; SMACOF runs under the thread setting."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic_store import make_store, open_store, write_step
from threadpoolctl import threadpool_info
from typer.testing import CliRunner

from conetool import embedding, paths
from conetool.cli import app
from conetool.errors import StoreError
from conetool.pipeline import distance, embed, matrix_cache
from conetool.pipeline.matrix_cache import kernel_matrix
from conetool.progress import NullProgress, ProgressTask
from conetool.store import Store

STEPS = [0, 10, 20, 30, 40]


def _kernel(seed: int, n: int = 6) -> torch.Tensor:
    a = np.random.default_rng(seed).standard_normal((n, n + 2))
    return torch.from_numpy(a @ a.T)


def _store(root: Path, steps: list[int] = STEPS) -> Path:
    return make_store(root, steps, [_kernel(step) for step in steps], flush=True)


def _copy(source: Path, target: Path) -> Path:
    """``cp -r`` without ``-p``: the copies' modification times are new (set 5 s later here, so
    that they differ whatever the clock's resolution)."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for path in (target / paths.KERNELS_DIR).iterdir():
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    return target


def _no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the saved S matrix should have been reused")

    monkeypatch.setattr(matrix_cache, "distance_matrix", fail)


def _rewrite(path: Path, kernel: torch.Tensor) -> None:
    """Replace the tensor of a kernel file by ``kernel`` (same shape and dtype: a file of the same
    size), keeping its metadata (its record): a change the manifest does not show."""
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    size = path.stat().st_size
    save_file({"kernel": kernel.contiguous()}, str(path), metadata=meta)
    assert path.stat().st_size == size


def test_a_copied_store_reuses_its_matrix(tmp_path, monkeypatch):
    # the key held each kernel file's modification time, so a copy (cp -r, rsync without -t)
    # recomputed its S matrix: minutes for a store of 2,000 kernels
    first = kernel_matrix(Store.open(_store(tmp_path / "a")))
    copy = _copy(tmp_path / "a", tmp_path / "b")
    _no_compute(monkeypatch)
    again = kernel_matrix(Store.open(copy))
    assert again.reused and again.key == first.key
    np.testing.assert_array_equal(again.S, first.S)
    # the new times are saved with it: the next run reads no kernel at all
    assert again.saved
    monkeypatch.setattr(Store, "load_kernel", lambda *a, **k: pytest.fail("a kernel was read"))
    third = kernel_matrix(Store.open(copy))
    assert third.reused and not third.saved


def test_a_copied_store_reuses_the_matrix_in_distance_and_embed(tmp_path, monkeypatch):
    root = _store(tmp_path / "a")
    distance(root, noise=False)
    copy = _copy(root, tmp_path / "b")
    _no_compute(monkeypatch)
    assert distance(copy, noise=False).matrix_reused
    assert embed(copy).matrix_reused


def test_a_kernel_file_rewritten_with_other_contents_is_never_reused(tmp_path):
    root = _store(tmp_path / "a")
    first = kernel_matrix(Store.open(root))
    path = paths.kernel(root, 20)
    _rewrite(path, _kernel(99))  # same size, same record: only the values differ
    again = kernel_matrix(Store.open(root))
    assert not again.reused
    assert not np.allclose(again.S, first.S)
    assert again.key != first.key  # the summaries' matrix_key tells the two matrices apart


def test_a_copy_with_one_kernel_changed_is_recomputed(tmp_path):
    root = _store(tmp_path / "a")
    first = kernel_matrix(Store.open(root))
    copy = _copy(root, tmp_path / "b")
    _rewrite(paths.kernel(copy, 30), _kernel(77))
    again = kernel_matrix(Store.open(copy))
    assert not again.reused and not np.allclose(again.S, first.S)


def test_a_recomputed_kernel_or_a_new_step_is_never_reused(tmp_path):
    root = _store(tmp_path / "a")
    first = kernel_matrix(Store.open(root))
    with open_store(root) as store:
        write_step(store, 50, _kernel(50))
    added = kernel_matrix(Store.open(root))
    assert not added.reused and added.steps == [*STEPS, 50]
    np.testing.assert_array_equal(added.S[:5, :5], first.S)


def test_a_matrix_saved_before_the_files_were_recorded_is_recomputed(tmp_path):
    root = _store(tmp_path / "a")
    kernel_matrix(Store.open(root))
    saved = dict(np.load(paths.matrix_npz(root)))
    del saved["files"]
    np.savez(paths.matrix_npz(root), **saved)
    again = kernel_matrix(Store.open(root))
    assert not again.reused
    with np.load(paths.matrix_npz(root)) as data:
        files = json.loads(str(data["files"]))
    assert sorted(int(step) for step in files) == STEPS


# --------------------------------------------------------------------------- steps beyond 2**53


def test_a_store_holding_a_step_beyond_2_53_is_refused_when_opened(tmp_path, monkeypatch):
    # a store written before 18fc58d could hold such a step; distance computed the whole S
    # matrix and then died with an OverflowError traceback saving it (int64 steps)
    huge = 10**20
    root = _store(tmp_path / "s", [0, 10, huge])
    _no_compute(monkeypatch)
    message = rf"manifest\.json records step {huge}, which is beyond any training run"
    with pytest.raises(StoreError, match=message) as caught:
        distance(root, noise=False)
    text = str(caught.value)
    assert str(paths.kernel(root, huge)) in text and "conetool kernels /ckpts --store" in text
    assert not paths.matrix_npz(root).exists()
    with pytest.raises(StoreError, match=message):  # kernels too, rather than adding to it
        open_store(root)

    # the fix the message gives: the other kernels are kept, and the store reads again
    paths.kernel(root, huge).unlink()
    paths.manifest(root).unlink()
    open_store(root).close()
    monkeypatch.undo()
    assert Store.open(root).steps() == [0, 10]
    assert distance(root, noise=False).steps == [0, 10]


def test_the_command_line_says_so_with_exit_1(tmp_path):
    root = _store(tmp_path / "s", [0, 10, 10**20])
    result = CliRunner().invoke(app, ["distance", "--store", str(root), "--no-noise"])
    assert result.exit_code == 1
    assert "beyond any training run" in result.output and "Traceback" not in result.output


def test_a_kernel_file_of_such_a_step_left_out_of_the_manifest_is_refused(tmp_path):
    # a kernel file that Store.open adopts (a run killed before its manifest write)
    root = _store(tmp_path / "s", [0, 10])
    other = _store(tmp_path / "t", [0, 10**20])
    shutil.copy(paths.kernel(other, 10**20), paths.kernel(root, 10**20))
    with pytest.raises(StoreError, match=r"records step 100000000000000000000, which is beyond"):
        Store.open(root)


# --------------------------------------------------------------------------- threads


def test_smacof_runs_under_the_thread_setting(tmp_path, monkeypatch):
    # guard: embed's MDS (NumPy's BLAS only) is bounded by --threads, as the rest of NumPy
    seen: list[set[int]] = []
    real = embedding.smacof

    def watched(*args: object, **kwargs: object) -> object:
        seen.append({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embedding, "smacof", watched)
    embed(_store(tmp_path / "s"), method="mds", threads=1)
    assert seen == [{1}]


# ------------------------------------------------------------------------------------------------
# the steps --skip-bad left out, said again by a rerun that reuses the matrix

LEFT_OUT = "step 20 left out (--skip-bad): kernel file"


class Lines:
    """A progress display that keeps the lines said (no bars)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        return NullProgress().task(description, total)

    def log(self, message: str) -> None:
        self.lines.append(message)


def _bad_store(root: Path) -> Path:
    """A store whose step 20 kernel file is no safetensors file."""
    _store(root)
    paths.kernel(root, 20).write_bytes(b"not a safetensors file at all")
    return root


def test_a_rerun_reusing_the_matrix_says_the_steps_skip_bad_left_out(tmp_path, monkeypatch):
    # Was: the run that computed S warned 'step 20 left out (--skip-bad)' as it came, and a rerun
    # reading the saved matrix did not: its distances and verdict without step 20, said only
    # in the list under the table
    root = _bad_store(tmp_path / "a")
    runs = [
        ["distance", "--store", str(root), "--skip-bad", "--no-noise"],  # computes S
        ["distance", "--store", str(root), "--skip-bad", "--no-noise"],  # its own file
        ["embed", "--store", str(root), "--skip-bad"],  # distance's file, saved as its own
        ["embed", "--store", str(root), "--skip-bad"],  # its own file
    ]
    for i, args in enumerate(runs):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        text = "".join(result.output.split())
        assert text.count("".join(f"warning: {LEFT_OUT}".split())) == 1, (args, result.output)
        if i == 0:
            _no_compute(monkeypatch)  # every later run reads the saved matrix


@pytest.mark.parametrize("command", ["distance", "embed"])
def test_a_python_rerun_reusing_the_matrix_says_the_steps_skip_bad_left_out(
    tmp_path, monkeypatch, command
):
    root = _bad_store(tmp_path / "a")
    run = distance if command == "distance" else embed
    kwargs: dict[str, object] = {"noise": False} if command == "distance" else {}
    said = []
    for _ in range(2):
        shown = Lines()
        result = run(root, skip_bad=True, progress=shown, **kwargs)
        said.append([line for line in shown.lines if LEFT_OUT in line])
        assert list(result.excluded) == [20] and 20 not in result.steps, result
        _no_compute(monkeypatch)
    assert result.matrix_reused
    assert len(said[1]) == 1 and said[1] == said[0], said  # the same warning, once
