"""manifest.json is not rewritten in full after every kernel (that made a run of N fast kernels
O(N^2): at 2,000 tiny kernels most of the run went to rewriting it), yet a kill at any point
still loses no kernel, the store stays readable, and a finished run leaves it complete.

The clock of the write intervals (``conetool.store_records._now``) is replaced by a fake one, so the
counts below do not depend on how fast this machine is."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from synthetic_store import HEADER, IDENT, record
from tiny_run import run_fixtures, tiny_spec

import conetool.io
import conetool.store_records
from conetool import paths
from conetool.errors import CheckpointError
from conetool.pipeline import kernels
from conetool.store import Store

STEPS = [0, 2, 4, 6, 8, 10]


def _every_second_step() -> dict:
    spec = tiny_spec()
    spec["train"]["save_every"] = 2
    return spec


trained, run = run_fixtures(_every_second_step())


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    # raising=False: on a conetool that rewrites the manifest after every kernel there is no
    # clock to replace, and the counts below fail instead
    monkeypatch.setattr(conetool.store_records, "_now", fake, raising=False)
    return fake


@pytest.fixture
def writes(monkeypatch):
    """Every manifest.json write the store makes, as the number of steps written."""
    done: list[int] = []
    real = conetool.store_records.write_manifest

    def counted(root, manifest):
        done.append(len(manifest["steps"]))
        real(root, manifest)

    monkeypatch.setattr(conetool.store_records, "write_manifest", counted)
    return done


def on_disk(root) -> list[int]:
    return [int(s) for s in json.loads(paths.manifest(root).read_text())["steps"]]


def test_a_slow_manifest_write_waits_ten_times_its_duration(tmp_path, clock, monkeypatch):
    """The README: rewritten at most once a second and 10x its last write's time."""
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    real = conetool.store_records.write_manifest
    done: list[int] = []

    def slow(root, manifest):
        clock.now += 3.0  # a 3-second write
        done.append(len(manifest["steps"]))
        real(root, manifest)

    monkeypatch.setattr(conetool.store_records, "write_manifest", slow)
    clock.now += 1.0
    store.write_kernel(record(0), torch.eye(2))
    assert done == [1]
    clock.now += 29.0
    store.write_kernel(record(1), torch.eye(2))
    assert done == [1]  # 29 s after a 3 s write: not yet
    clock.now += 1.0
    store.write_kernel(record(2), torch.eye(2))
    assert done == [1, 3]
    store.close()


def test_kernels_written_within_the_interval_share_one_manifest_write(tmp_path, clock, writes):
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    assert writes == [0]  # the new store's manifest
    for step in range(50):
        store.write_kernel(record(step), torch.eye(2))
    assert writes == [0]  # not one rewrite per kernel
    assert store.steps() == list(range(50))  # recorded in memory all the same
    store.close()
    assert writes == [0, 50] and on_disk(root) == list(range(50))
    store.close()  # nothing left to write
    assert writes == [0, 50]


def test_the_manifest_is_written_again_once_the_interval_has_passed(tmp_path, clock, writes):
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    clock.now += conetool.store_records.MANIFEST_INTERVAL
    store.write_kernel(record(1), torch.eye(2))
    assert writes == [0, 2] and on_disk(root) == [0, 1]
    store.write_kernel(record(2), torch.eye(2))
    assert writes == [0, 2]
    store.flush()
    assert writes == [0, 2, 3] and on_disk(root) == [0, 1, 2]
    store.flush()
    assert writes == [0, 2, 3]
    store.close()


def test_a_slow_manifest_write_spaces_the_next_ones_further(tmp_path, clock, monkeypatch):
    """The interval is at least MANIFEST_COST_RATIO times the last write's duration, so however
    many steps the manifest holds, rewriting it takes a bounded share of the run."""
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    real = conetool.store_records.write_manifest
    took = 3.0 * conetool.store_records.MANIFEST_INTERVAL
    done: list[int] = []

    def slow(root_, manifest):
        clock.now += took
        done.append(len(manifest["steps"]))
        real(root_, manifest)

    monkeypatch.setattr(conetool.store_records, "write_manifest", slow)
    clock.now += conetool.store_records.MANIFEST_INTERVAL
    store.write_kernel(record(0), torch.eye(2))
    assert done == [1]
    clock.now += conetool.store_records.MANIFEST_COST_RATIO * took - 0.5
    store.write_kernel(record(1), torch.eye(2))
    assert done == [1]  # not yet: the last write took `took`
    clock.now += 0.5
    store.write_kernel(record(2), torch.eye(2))
    assert done == [1, 3]
    store.close()


def test_a_kill_before_the_manifest_caught_up_loses_no_kernel(tmp_path, clock):
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    for step in range(20):
        store.write_kernel(record(step), (step + 1) * torch.eye(2))
    # What a kill -9 leaves now: the files as they are, nothing flushed.
    shutil.copytree(root, tmp_path / "killed")
    store.close()
    killed = tmp_path / "killed"
    assert on_disk(killed) == []  # the manifest lags behind the kernel files ...
    again = Store.open(killed)  # ... but every kernel is there to read
    assert again.steps() == list(range(20))
    assert torch.equal(again.load_kernel(19), 20 * torch.eye(2))
    assert on_disk(killed) == []  # reading wrote nothing
    Store.open_for_writing(killed, IDENT, HEADER).close()  # what the next `kernels` does first
    assert on_disk(killed) == list(range(20))


def test_a_kernels_run_writes_the_manifest_at_start_and_end_only(run, tmp_path, clock, writes):
    store = tmp_path / "s"
    result = kernels(run, store=store, device="cpu", threads=1)
    assert result.computed == STEPS
    assert writes == [0, len(STEPS)]  # was one per kernel: 0, 1, 2, ..., 6
    assert on_disk(store) == STEPS
    again = kernels(run, store=store, device="cpu", threads=1)
    assert again.computed == [] and writes == [0, len(STEPS)]  # nothing to do: nothing written


def test_a_kernels_run_that_stops_at_a_bad_checkpoint_leaves_the_manifest_complete(
    run, tmp_path, clock
):
    path = paths.checkpoint(run, 6)  # a NaN: found when the step is read, not by discovery
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first][0] = float("nan")
    conetool.io.atomic_save_safetensors(path, state, meta)
    store = tmp_path / "s"
    with pytest.raises(CheckpointError, match="step 6"):
        kernels(run, store=store, device="cpu", threads=1)
    assert on_disk(store) == [0, 2, 4]


def test_the_store_writes_benchmark_measures_both_behaviours(capsys):
    """benchmarks/bench_store_writes.py (the README's numbers): its baseline really rewrites the
    manifest after every kernel, and its spaced run writes it a few times only."""
    from benchmark_module import load_benchmark

    bench = load_benchmark("bench_store_writes")
    bench.main(["--count", "20", "--side", "4", "--repeat", "1"])
    out = capsys.readouterr().out.splitlines()
    every = next(line.split() for line in out if line.split()[:2] == ["every", "kernel"])
    spaced = next(line.split() for line in out if line.split()[0] == "spaced")
    assert every[-1] == "21"  # the creation and one per kernel
    assert 1 <= int(spaced[-1]) <= 3
    assert conetool.store_records.MANIFEST_INTERVAL == 1.0  # the benchmark put the settings back
