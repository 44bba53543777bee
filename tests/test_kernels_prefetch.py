"""`conetool kernels` reads the next checkpoint and writes the last kernel in background threads
while the current kernel is computed (conetool/pipeline/prefetch.py): same store as the one-by-one
loop, real overlap, and the same errors at the same steps."""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_run import run_fixtures, tiny_spec

import conetool.io
import conetool.store_clearing
import conetool.store_records
from conetool import paths
from conetool.errors import CheckpointError, StoreError
from conetool.pipeline import kernels, kernels_loop
from conetool.pipeline.prefetch import ReadAhead, Writer
from conetool.store import Store

STEPS = [0, 2, 4, 6, 8, 10]
#: How long an instrumented thread waits for the other side before calling the overlap missing
#: (a run without overlap then fails in seconds instead of hanging).
TIMEOUT = 10.0


def _every_second_step() -> dict:
    """The tiny run with a checkpoint every 2 steps: 0, 2, ..., 10."""
    spec = tiny_spec()
    spec["train"]["save_every"] = 2
    return spec


trained, run = run_fixtures(_every_second_step())


class _InlineReads:
    """The loop as it was: each checkpoint read when its step comes."""

    def __init__(self, items: list[Any], read: Any) -> None:
        self.items, self.read = list(items), read

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return ((item, partial(self.read, item)) for item in self.items)

    def __enter__(self) -> _InlineReads:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _InlineWriter:
    """The loop as it was: each step's files written before the next step starts."""

    def submit(self, write: Any) -> None:
        write()

    def check(self) -> None:
        pass

    def join(self) -> None:
        pass

    def __enter__(self) -> _InlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@contextmanager
def one_by_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run ``kernels`` without overlap (the reference)."""
    with monkeypatch.context() as patch:
        patch.setattr(kernels_loop, "ReadAhead", _InlineReads)
        patch.setattr(kernels_loop, "Writer", _InlineWriter)
        yield


def _without_seconds(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "seconds"}


def store_contents(root: Path) -> dict[str, Any]:
    """Everything a store holds but the seconds each kernel took (and its random store_id): the
    manifest and every kernel, eval kernel and layer kernel file (tensors and metadata)."""
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["steps"] = {k: _without_seconds(v) for k, v in manifest["steps"].items()}
    store_id = manifest.pop("store_id")  # random: tells a store from one that replaced it
    files: dict[str, Any] = {}
    for path in sorted(root.glob("*kernels/*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        if "store_id" in meta:  # a kernel file carries its store's id (kept by a rebuild)
            assert meta.pop("store_id") == store_id, path
        if "record" in meta:
            meta["record"] = _without_seconds(json.loads(meta["record"]))
        files[str(path.relative_to(root))] = (load_file(str(path)), meta)
    return {"manifest": manifest, "files": files}


def assert_same_store(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["manifest"] == b["manifest"]
    assert list(a["files"]) == list(b["files"])
    for name, (tensors, meta) in a["files"].items():
        other, other_meta = b["files"][name]
        assert meta == other_meta, name
        assert list(tensors) == list(other), name
        for key, tensor in tensors.items():
            assert torch.equal(tensor, other[key]), (name, key)


def leftovers(root: Path) -> list[Path]:
    """Temporary files of interrupted writes."""
    return sorted(root.rglob("*.tmp"))


def test_same_store_as_one_by_one(run, tmp_path, monkeypatch):
    options: dict[str, Any] = {"device": "cpu", "eval_size": 4, "per_layer": True}
    with one_by_one(monkeypatch):
        reference = kernels(run, store=tmp_path / "s", **options)
    expected = store_contents(tmp_path / "s")
    result = kernels(run, store=tmp_path / "t", **options)
    assert result.computed == reference.computed == STEPS
    assert result.eval_computed == reference.eval_computed == STEPS
    assert result.layer_computed == reference.layer_computed == STEPS
    found = store_contents(tmp_path / "t")
    found["manifest"]["checkpoints"] = expected["manifest"]["checkpoints"]
    assert_same_store(expected, found)
    # the kernels differ from step to step, so a checkpoint applied at the wrong step shows
    norms = [r["norm"] for r in found["manifest"]["steps"].values()]
    assert len(set(norms)) == len(STEPS)


def test_lower_precision_is_said_once_naming_the_same_file(run, tmp_path, monkeypatch):
    for step in (4, 6):
        path = paths.checkpoint(run, step)
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        state = {k: v.half() for k, v in load_file(str(path)).items()}
        conetool.io.atomic_save_safetensors(path, state, meta)
    with one_by_one(monkeypatch):
        expected = kernels(run, store=tmp_path / "a", device="cpu").warnings
    found = kernels(run, store=tmp_path / "b", device="cpu").warnings
    assert found == expected
    assert len([w for w in found if "lower precision" in w]) == 1
    assert any("step_000004.safetensors" in w and "lower precision" in w for w in found)


def test_the_next_checkpoint_is_read_while_the_kernel_is_computed(run, tmp_path, monkeypatch):
    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    read_started = {step: threading.Event() for step in STEPS}
    missed: list[int] = []
    real_read, real_engine = kernels_loop.read_checkpoint, kernels_loop.empirical_ntk
    calls = iter(STEPS)  # one engine call per step (no eval set, no layers)

    def read(ref: Any, **options: Any) -> Any:
        with lock:
            events.append(("read starts", ref.step))
        read_started[ref.step].set()
        return real_read(ref, **options)

    def engine(*args: Any, **options: Any) -> torch.Tensor:
        step = next(calls)
        kernel = real_engine(*args, **options)
        later = STEPS[STEPS.index(step) + 1 :]
        # the engine of this step does not return before the next step's read has started
        if later and not missed and not read_started[later[0]].wait(TIMEOUT):
            missed.append(step)
        with lock:
            events.append(("engine returns", step))
        return kernel

    monkeypatch.setattr(kernels_loop, "read_checkpoint", read)
    monkeypatch.setattr(kernels_loop, "empirical_ntk", engine)
    assert kernels(run, store=tmp_path / "s", device="cpu").computed == STEPS
    assert not missed, f"the read of the step after {missed[0]} had not started"
    for i, step in enumerate(STEPS[:-1]):
        returned = events.index(("engine returns", step))
        assert events.index(("read starts", STEPS[i + 1])) < returned
        if i + 2 < len(STEPS):  # one checkpoint ahead, never two
            assert events.index(("read starts", STEPS[i + 2])) > returned


def test_a_kernel_is_written_while_the_next_is_computed(run, tmp_path, monkeypatch):
    engine_started = {step: threading.Event() for step in STEPS}
    missed: list[int] = []
    real_write, real_engine = Store.write_kernel, kernels_loop.empirical_ntk
    calls = iter(STEPS)

    def engine(*args: Any, **options: Any) -> torch.Tensor:
        engine_started[next(calls)].set()
        return real_engine(*args, **options)

    def write_kernel(self: Store, record: Any, kernel: torch.Tensor) -> None:
        later = STEPS[STEPS.index(record.step) + 1 :]
        # this step's kernel is not written before the next step's engine has started
        if later and not missed and not engine_started[later[0]].wait(TIMEOUT):
            missed.append(record.step)
        real_write(self, record, kernel)

    monkeypatch.setattr(kernels_loop, "empirical_ntk", engine)
    monkeypatch.setattr(Store, "write_kernel", write_kernel)
    assert kernels(run, store=tmp_path / "s", device="cpu").computed == STEPS
    assert not missed, f"step {missed[0]} was written before the next step was computed"
    assert Store.open(tmp_path / "s").steps() == STEPS


@pytest.mark.parametrize("damage", ["nan", "integer"])
def test_a_bad_next_checkpoint_keeps_the_kernel_before_and_says_the_same(
    run, tmp_path, monkeypatch, damage
):
    # nan: found by the read (the background thread); integer: by applying it (the loop)
    path = paths.checkpoint(run, 4)
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    first = next(k for k, v in state.items() if v.is_floating_point())
    if damage == "nan":
        state[first][0] = float("nan")
    else:
        state[first] = state[first].to(torch.int32)
    conetool.io.atomic_save_safetensors(path, state, meta)
    store = tmp_path / "s"

    with one_by_one(monkeypatch), pytest.raises(CheckpointError) as expected:
        kernels(run, store=store, device="cpu")
    reference = store_contents(store)
    assert Store.open(store).steps() == [0, 2]
    conetool.store_clearing.clear(store)

    with pytest.raises(CheckpointError) as found:
        kernels(run, store=store, device="cpu")
    assert str(found.value) == str(expected.value)
    assert str(found.value).startswith(f"step 4 ({path}): ")
    assert str(found.value.__cause__) == str(expected.value.__cause__)
    assert Store.open(store).steps() == [0, 2]  # the kernels before it are kept
    assert_same_store(reference, store_contents(store))

    with one_by_one(monkeypatch):
        skipping = kernels(run, store=tmp_path / "a", device="cpu", skip_bad=True)
    result = kernels(run, store=tmp_path / "b", device="cpu", skip_bad=True)
    assert list(result.failed) == [4] and result.failed == skipping.failed
    assert "step_000004.safetensors" in result.failed[4]
    assert result.computed == skipping.computed == [0, 2, 6, 8, 10]


def _full_disk_at(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The store's own disk-full error (and clean-up) when it writes the kernel file ``name``."""
    real = conetool.store_records.atomic_save_safetensors

    def save(path: Path, tensors: Any, metadata: Any = None) -> None:
        if path.name == name and path.parent.name == paths.KERNELS_DIR:

            def write(tmp: Path) -> None:
                tmp.write_bytes(b"half a kernel")
                raise OSError(errno.ENOSPC, "No space left on device")

            conetool.io.atomic_write(path, write, needed=4096)
        real(path, tensors, metadata)

    monkeypatch.setattr(conetool.store_records, "atomic_save_safetensors", save)


@pytest.mark.parametrize("failing", [4, 10])  # 10: the last write, joined as the loop ends
def test_a_failed_write_says_the_same_and_keeps_the_kernels_before(
    run, tmp_path, monkeypatch, failing
):
    store = tmp_path / "s"
    name = paths.kernel(store, failing).name
    _full_disk_at(monkeypatch, name)
    with one_by_one(monkeypatch), pytest.raises(StoreError) as expected:
        kernels(run, store=store, device="cpu")
    reference = store_contents(store)
    conetool.store_clearing.clear(store)

    with pytest.raises(StoreError) as found:
        kernels(run, store=store, device="cpu")
    assert str(found.value) == str(expected.value)
    assert "no space left" in str(found.value).lower()
    assert name in str(found.value)
    before = [s for s in STEPS if s < failing]
    assert Store.open(store).steps() == before  # kept; nothing after the failed write recorded
    kept = sorted(p.name for p in (store / paths.KERNELS_DIR).iterdir())
    assert kept == [paths.kernel(store, s).name for s in before]
    assert leftovers(store) == []
    assert_same_store(reference, store_contents(store))
    monkeypatch.undo()
    assert kernels(run, store=store, device="cpu").computed == [s for s in STEPS if s >= failing]


def test_ctrl_c_finishes_the_write_in_flight_and_ends_the_threads(run, tmp_path, monkeypatch):
    real_write, real_engine = Store.write_kernel, kernels_loop.empirical_ntk
    calls = iter(STEPS)

    def engine(*args: Any, **options: Any) -> torch.Tensor:
        if next(calls) == 4:
            raise KeyboardInterrupt
        return real_engine(*args, **options)

    def slow_write(self: Store, record: Any, kernel: torch.Tensor) -> None:
        time.sleep(0.3)  # still writing step 2 when step 4 is interrupted
        real_write(self, record, kernel)

    monkeypatch.setattr(kernels_loop, "empirical_ntk", engine)
    monkeypatch.setattr(Store, "write_kernel", slow_write)
    with pytest.raises(KeyboardInterrupt):
        kernels(run, store=tmp_path / "s", device="cpu")
    assert Store.open(tmp_path / "s").steps() == [0, 2]  # step 2 was computed: it is kept
    assert leftovers(tmp_path / "s") == []
    alive = [t.name for t in threading.enumerate() if t.name.startswith("conetool-")]
    assert alive == []


def test_read_ahead_raises_each_error_at_its_own_item():
    def read(item: int) -> int:
        if item == 2:
            raise ValueError("two is bad")
        return item * 10

    seen: list[Any] = []
    with ReadAhead([1, 2, 3], read) as reads:
        for item, take in reads:
            try:
                seen.append((item, take()))
            except ValueError as exc:
                seen.append((item, str(exc)))
    assert seen == [(1, 10), (2, "two is bad"), (3, 30)]


def test_writer_keeps_the_order_and_raises_at_the_next_join():
    done: list[int] = []

    def write(i: int) -> None:
        time.sleep(0.05 if i == 0 else 0)
        if i == 2:
            raise StoreError("disk full")
        done.append(i)

    writer = Writer()
    with pytest.raises(StoreError, match="disk full"):
        with writer:
            for i in range(4):
                writer.submit(partial(write, i))
    assert done == [0, 1]  # one write at a time, in order; nothing after the failed one
