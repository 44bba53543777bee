"""``distance``, ``embed`` and ``switch`` killed before each of their file operations (a SIGKILL, a job's time
limit): the store stays readable with its kernels as they were, the results written before (of
this command and of the others) are whole, a result file is the old one or the new one whole,
never a summary beside files it does not describe, and the next run completes as a run never
killed does, leaving no temporary file."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from synthetic_store import make_store, open_store, write_step
from test_embed_command import read_coords, trajectory_kernels
from test_switch_command import spec_dict

from conetool import paths
from conetool.io import atomic_write_bytes
from conetool.pipeline import (
    distance,
    distance_outputs,
    embed,
    kernels,
    run_embed,
    switch_results,
)
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.store import Store
from conetool.training import train

#: The calls that change a folder's entries (``os.open`` only when it creates or writes).
OPS = ("open", "replace", "rename", "unlink", "remove", "rmdir", "mkdir")
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

#: What a figure stub writes (the figures are tested on their own: tests/test_figure_reuse.py).
FIGURE = b"figure not rendered in this test"


class Killed(BaseException):
    """Stands for SIGKILL: raised by the k-th file operation and by every one after it, so that
    no cleanup (an ``except``, a ``finally``) changes the store once the process is "dead"."""


@contextmanager
def killed_from(k: int) -> Iterator[Callable[[], int]]:
    """Make the ``k``-th call of :data:`OPS` (1-based) and every later one raise
    :class:`Killed` before it acts; yields how many calls were made."""
    count = [0]
    saved = {name: getattr(os, name) for name in OPS}

    def wrap(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kw: object) -> object:
            flags = args[1] if name == "open" and len(args) > 1 else kw.get("flags", _WRITING)
            if not int(flags) & _WRITING:  # type: ignore[call-overload]
                return real(*args, **kw)  # opened to read: nothing changes
            count[0] += 1
            if count[0] >= k:
                raise Killed
            return real(*args, **kw)

        return call

    for name, real in saved.items():
        setattr(os, name, wrap(name, real))
    try:
        yield lambda: count[0]
    finally:
        for name, real in saved.items():
            setattr(os, name, real)


def _walk(root: Path) -> list[Path]:
    """Every file under ``root``, through a symlinked ``kernels/`` too, sorted."""
    return sorted(
        Path(folder, name) for folder, _, names in os.walk(root, followlinks=True) for name in names
    )


def files(root: Path) -> dict[str, bytes]:
    """Every file of the store (relative path -> bytes), less lock files and temporaries."""
    locks = {paths.LOCK_NAME, paths.RESULTS_LOCK_NAME, paths.RESULTS_GATE_NAME}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in _walk(root)
        if p.name not in locks and not p.name.endswith(".tmp")
    }


def temporaries(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in _walk(root) if p.name.endswith(".tmp")]


def stub_figures(monkeypatch: pytest.MonkeyPatch, *modules: object) -> None:
    """Write each figure as :data:`FIGURE`, atomically (the file operations of a real one)."""

    def write(path: Path, draw: object, *args: object, **kwargs: object) -> Path:
        atomic_write_bytes(Path(path), FIGURE)
        return Path(path)

    for module in modules:
        monkeypatch.setattr(module, "write_figure", write)


def kill_at_each_operation(
    base: Path,
    tmp_path: Path,
    command: Callable[[Path], object],
    check: Callable[[Path, dict[str, bytes]], None],
) -> tuple[int, list[Path]]:
    """Run ``command`` on a copy of the store ``base`` killed before its 1st, 2nd, ... file
    operation until it ends by itself; after each kill ``check(copy, before)`` (``before``: the
    files of ``base``). Returns the operations counted in the run that ended, and the copies."""
    before = files(base)
    copies = []
    for k in range(1, 500):
        root = tmp_path / f"k{k}"
        shutil.copytree(base, root, symlinks=True)
        copies.append(root)
        with killed_from(k) as calls:
            try:
                command(root)
            except Killed:
                pass
            else:
                assert calls() < k
                return calls(), copies
        check(root, before)
    pytest.fail("the command never ended")


def store_reads_as_before(root: Path, before: dict[str, bytes]) -> None:
    """The store opens, and its manifest, probe set and kernel files are the ones it had."""
    recorded = json.loads(before[paths.MANIFEST_NAME])["steps"]
    assert Store.open(root).steps() == sorted(int(step) for step in recorded)
    now = files(root)
    kept = [n for n in before if n == paths.MANIFEST_NAME or n.startswith(paths.KERNELS_DIR + "/")]
    assert len(kept) > len(recorded)  # the kernel files (through a symlinked kernels/ too)
    for name in kept:
        assert now[name] == before[name], name


# --------------------------------------------------------------------------------------- embed

STEPS = [0, 10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 400]


@pytest.fixture(params=[False, True], ids=["kernels", "kernels-symlink"])
def embedded_before(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A store whose distance and embed (2 dimensions) results are of its first 11 kernels,
    the 12th added since: the next embed computes the S matrix again and saves it. Its
    ``kernels/`` is a symlink to another folder (which every copy shares) with ``params`` True."""
    stub_figures(monkeypatch, run_embed, distance_outputs)
    kernels_ = trajectory_kernels(STEPS)
    root = tmp_path / "base"
    if request.param:
        (tmp_path / "shared").mkdir()
        root.mkdir()
        (root / paths.KERNELS_DIR).symlink_to(tmp_path / "shared", target_is_directory=True)
    make_store(root, STEPS[:-1], kernels_[:-1])
    distance(root, noise=False)
    embed(root, method="pca", dims=2)
    with open_store(root) as store:
        write_step(store, STEPS[-1], kernels_[-1], f"fp-{STEPS[-1]}")
    return root


def _embed_outputs_whole(root: Path, before: dict[str, bytes]) -> None:
    store_reads_as_before(root, before)
    now = files(root)
    for name, data in before.items():  # distance's results: untouched
        if name.startswith(paths.DISTANCE_DIR + "/"):
            assert now[name] == data, name
    old = {n: d for n, d in before.items() if n.startswith(paths.EMBED_DIR + "/")}
    header, steps, coords = read_coords(root)  # the old coordinates or the new ones, whole
    new_coords = header == ["step", "x", "y", "z"]
    assert steps == (STEPS if new_coords else STEPS[:-1]) and np.isfinite(coords).all()
    if not new_coords:
        assert now["embed/coords.csv"] == old["embed/coords.csv"]
    summary = paths.embed_summary(root)
    if summary.exists():  # only beside the files it describes: all of them the old ones
        assert now["embed/summary.json"] == old["embed/summary.json"] and not new_coords
        assert all(now.get(name) == data for name, data in old.items())
    with np.load(paths.embed_matrix_npz(root)) as saved:  # the old matrix or the new one
        assert saved["steps"].tolist() in (STEPS, STEPS[:-1])
    assert paths.embedding_png(root).read_bytes() == FIGURE


def test_embed_killed_at_each_file_operation_loses_nothing(
    embedded_before: Path, tmp_path: Path
) -> None:
    base = embedded_before
    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    done = embed(reference, method="mds", dims=3)
    assert not done.matrix_reused  # the run killed below writes embed/matrix.npz too
    expected = files(reference)

    ops, copies = kill_at_each_operation(
        base, tmp_path, lambda root: embed(root, method="mds", dims=3), _embed_outputs_whole
    )
    assert ops >= 10  # the lock files, the matrix, the summary removed, coords, figure, summary
    for root in copies[:-1]:
        embed(root, method="mds", dims=3)  # the next run completes ...
        assert temporaries(root) == []  # ... and removes what the killed one left
        now = files(root)
        assert now.keys() == expected.keys(), root
        for name, data in expected.items():
            if name != "embed/summary.json":  # it names the store's folder
                assert now[name] == data, (root, name)
        summary = json.loads(now["embed/summary.json"])
        assert summary["dims"] == 3 and summary["steps"]["count"] == len(STEPS)


def _distance_outputs_whole(root: Path, before: dict[str, bytes]) -> None:
    store_reads_as_before(root, before)
    now = files(root)
    for name, data in before.items():  # embed's results: untouched
        if name.startswith(paths.EMBED_DIR + "/"):
            assert now[name] == data, name
    with open(paths.adjacent_csv(root), newline="") as handle:  # old or new, whole
        pairs = list(csv.DictReader(handle))
    assert pairs and all(np.isfinite(float(row["S"])) for row in pairs)
    with np.load(paths.matrix_npz(root)) as saved:
        matrix_steps = saved["steps"].tolist()
    assert matrix_steps in (STEPS, STEPS[:-1])
    if paths.distance_summary(root).exists():  # only beside the files it describes: the old
        old = {n: d for n, d in before.items() if n.startswith(paths.DISTANCE_DIR + "/")}
        assert all(now.get(name) == data for name, data in old.items())


def test_distance_killed_at_each_file_operation_loses_nothing(
    embedded_before: Path, tmp_path: Path
) -> None:
    # Before: a kill after distance/matrix.npz was saved anew, before the outputs were written,
    # left the old summary.json (of 11 steps) beside the new matrix (of 12), which it lists
    base = embedded_before
    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    assert not distance(reference, noise=False).matrix_reused
    expected = files(reference)

    ops, copies = kill_at_each_operation(
        base, tmp_path, lambda root: distance(root, noise=False), _distance_outputs_whole
    )
    assert ops >= 12  # the lock files, the matrix, the summary removed, 2 CSVs, figures, summary
    for root in copies[:-1]:
        distance(root, noise=False)  # the next run completes ...
        assert temporaries(root) == []  # ... and removes what the killed one left
        now = files(root)
        assert now.keys() == expected.keys(), root
        for name, data in expected.items():
            if name != "distance/summary.json":  # it names the store's folder
                assert now[name] == data, (root, name)


# -------------------------------------------------------------------------------------- switch


@pytest.fixture(scope="module")
def switched_before(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of a trained run's kernels with distance results and the switch point at 0."""
    folder = tmp_path_factory.mktemp("switch")
    run = folder / "ckpts"
    train(spec_from_dict(spec_dict([8]), source="deep.toml"), run)
    root = folder / "store"
    kernels(run, store=root, device="cpu")
    with pytest.MonkeyPatch.context() as patched:
        stub_figures(patched, switch_results, distance_outputs)
        distance(root, noise=False)
        switch([0], until=6, store=root, device="cpu", reference="train")
    return root


def _switch_outputs_whole(root: Path, before: dict[str, bytes]) -> None:
    store_reads_as_before(root, before)
    now = files(root)
    for name, data in before.items():  # distance's results and the point at 0: untouched
        if name.startswith(paths.DISTANCE_DIR + "/") or "at_000000" in name:
            assert now[name] == data, name
        if name.endswith("reference.json"):
            assert now[name] == data, name
    point = paths.switch_point(root, 4)
    if point.exists():  # whole
        assert json.loads(point.read_text())["at"] == 4
    if paths.switch_point_metrics(root, 4).exists():
        with open(paths.switch_point_metrics(root, 4), newline="") as handle:
            assert [int(float(r["step"])) for r in csv.DictReader(handle)] == [4, 6]
    with open(paths.switch_results_csv(root), newline="") as handle:  # old or new, whole
        ats = [int(r["at"]) for r in csv.DictReader(handle)]
    assert ats in ([0], [0, 4])
    if ats == [0]:
        assert now["switch/results.csv"] == before["switch/results.csv"]
    summary = json.loads(paths.switch_results_json(root).read_text())
    assert [p["at"] for p in summary["points"]] in ([0], [0, 4])


def test_switch_killed_at_each_file_operation_loses_nothing(
    switched_before: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub_figures(monkeypatch, switch_results)
    base = switched_before
    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    switch([0, 4], until=6, store=reference, device="cpu", reference="train")
    expected = files(reference)

    def sweep(root: Path) -> object:
        return switch([0, 4], until=6, store=root, device="cpu", reference="train")

    ops, copies = kill_at_each_operation(base, tmp_path, sweep, _switch_outputs_whole)
    assert ops >= 8  # the lock files, the point's two files, results.csv, .json, the figure
    for root in copies[:-1]:
        result = sweep(root)  # the next run completes ...
        assert [p.at for p in result.points] == [0, 4]  # type: ignore[attr-defined]
        assert result.points[0].reused  # type: ignore[attr-defined]
        assert temporaries(root) == []  # ... and removes what the killed one left
        now = files(root)
        assert now.keys() == expected.keys(), root
        for name in ("switch/at_000004.csv", "switch/at_000000.json", "switch/at_000000.csv"):
            assert now[name] == expected[name], (root, name)
        assert _results(now) == _results(expected), root


def _results(files: dict[str, bytes]) -> list[dict[str, str]]:
    """``switch/results.csv``'s rows, less the seconds each point took."""
    rows = csv.DictReader(files["switch/results.csv"].decode().splitlines())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
