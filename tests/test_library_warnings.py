"""A library call without a progress that raises gives the warnings it said before through
Python's warnings module (:mod:`conetool.library_call`): a ``UserWarning`` each, naming the
caller's line. Before, they went to the progress the call was not given, and the result that
keeps them was never returned: lost, though they may explain the error (``see the warnings``).
Given a progress, they are said there and not again. One warning then one refusal, both real,
for each command (``switch``'s are in test_switch_own_run).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_run import finished_demo as shared_demo
from test_distance_command import make_store, random_psd
from tiny_run import SPEC, run_fixtures

from conetool import paths, store_manifest
from conetool.errors import CheckpointError, ConetoolError, StoreError
from conetool.pipeline import demo, distance, embed, kernels, report, spectrum
from conetool.progress import NullProgress, ProgressTask
from conetool.spec import spec_from_dict
from conetool.store_lock import StoreLock
from conetool.training import train

trained, run = run_fixtures(SPEC)


class Lines:
    """A progress display that keeps the lines said (no bars)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def task(self, description: str, total: int | None) -> ProgressTask:
        return NullProgress().task(description, total)

    def log(self, message: str) -> None:
        self.lines.append(message)


def warns_then_raises(
    call: Callable[..., Any], error: type[ConetoolError], match: str, *said: str
) -> None:
    """``call()`` (a library call without a progress) raises ``error`` (``match``) and gives
    each of ``said`` (the start of a warning) once, through Python's warnings module, naming
    this line; ``call(progress=...)`` raises alike, says each there once, and none through
    Python's."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(error, match=match):
            call()
    for warning in said:
        ours = [w for w in caught if str(w.message).startswith(warning)]
        assert len(ours) == 1, (warning, [str(w.message) for w in caught])
        assert ours[0].category is UserWarning and ours[0].filename == __file__, ours[0]
    shown = Lines()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(error, match=match):
            call(progress=shown)
    for warning in said:
        assert not [w for w in caught if warning in str(w.message)], caught
        assert sum(line.startswith(f"warning: {warning}") for line in shown.lines) == 1, shown


@pytest.fixture
def store(run: Path, tmp_path: Path) -> Path:
    """The tiny run's store, kernels at 0, 5 and 10."""
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    return root


@pytest.fixture
def writing(store: Path) -> Iterator[str]:
    """``store`` as a ``conetool kernels`` run still writing it holds it; what commands that
    read it warn then."""
    lock = StoreLock.acquire(store)
    try:
        yield "conetool kernels is still writing this store"
    finally:
        lock.release()


def test_kernels_gives_the_files_skip_bad_left_out_before_refusing_the_run(tmp_path):
    """kernels(skip_bad=True) on a run whose every checkpoint is damaged: 'left out ...' for
    each, then 'no usable checkpoint left ... (--skip-bad; see the warnings)'."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 5):
        paths.checkpoint(ckpts, step).write_bytes(b"not a safetensors file at all")
    spec = spec_from_dict(SPEC, source="tiny.toml")

    def call(**progress: Any) -> Any:
        store = tmp_path / "s"
        return kernels(ckpts, spec=spec, store=store, skip_bad=True, device="cpu", **progress)

    said = f"left out a checkpoint: '{paths.checkpoint(ckpts, 5)}' is not a safetensors file"
    warns_then_raises(call, CheckpointError, "no usable checkpoint left", said)


def test_train_gives_its_probe_warning_before_refusing_an_out_that_is_a_file(tmp_path):
    """A spec without [probe] whose default one does not fit its data (a warning: kernels
    --probe-size can still choose), then --out a file."""
    spec = spec_from_dict({k: v for k, v in SPEC.items() if k != "probe"}, source="tiny.toml")
    out = tmp_path / "out"
    out.write_text("a file")
    said = "tiny.toml has no [probe] table and the default one does not fit"
    match = "is a file, not a directory"
    warns_then_raises(lambda **p: train(spec, out, device="cpu", **p), StoreError, match, said)


def test_distance_gives_its_warnings_before_refusing_a_reference_skip_bad_left_out(tmp_path):
    """A kernels run still writing the store (kept in the result's warnings) and a kernel left
    out (--skip-bad), then --ref at that kernel's step."""
    steps = [0, 10, 20, 30]
    stores = iter(["s", "t"])  # one per call: the second would read the first's saved S matrix

    def call(**p: Any) -> Any:
        root = make_store(tmp_path / next(stores), steps, random_psd(steps))
        paths.kernel(root, 10).write_bytes(b"not a safetensors file at all")
        lock = StoreLock.acquire(root)
        try:
            return distance(root, refs=[10], skip_bad=True, noise=False, **p)
        finally:
            lock.release()

    match = "--ref 10: that step was left out by --skip-bad"
    running = "conetool kernels is still writing this store"
    warns_then_raises(call, StoreError, match, running, "step 10 left out")


def test_embed_gives_the_kernels_skip_bad_left_out_before_refusing_too_few(tmp_path):
    steps = [0, 10]
    root = make_store(tmp_path / "s", steps, random_psd(steps))
    paths.kernel(root, 10).write_bytes(b"not a safetensors file at all")
    call = lambda **p: embed(root, skip_bad=True, **p)  # noqa: E731
    warns_then_raises(call, StoreError, "left out by --skip-bad: steps 10", "step 10 left out")


def test_spectrum_gives_the_kernels_skip_bad_left_out_before_refusing_none_left(store):
    """'no kernel of STORE could be read; see the warnings above': a caller without a progress
    had none above."""
    for step in (0, 5, 10):
        paths.kernel(store, step).write_bytes(b"not a safetensors file at all")
    call = lambda **p: spectrum(store, skip_bad=True, **p)  # noqa: E731
    warns_then_raises(call, StoreError, "see the warnings above", "step 10 left out")


def test_report_gives_its_warnings_before_refusing_an_out_it_cannot_write(store, writing):
    """What report read (a kernels run still writing the store), then --out under a file."""
    blocking = store.parent / "a-file"
    blocking.write_text("not a folder")
    call = lambda **p: report(store, out=blocking / "report", **p)  # noqa: E731
    match = re.escape(f"{blocking} is a file, not a folder")
    warns_then_raises(call, StoreError, match, writing)


def test_demo_gives_its_stages_warnings_before_a_later_stage_refuses(tmp_path_factory, monkeypatch):
    """The distance stage's warning (kernels made by two engines), then the report stage's
    refusal (its folder is a file). The shared demo's report folder is put back after."""
    out = shared_demo(tmp_path_factory).out
    monkeypatch.setattr(
        store_manifest,
        "made_by",
        lambda record: "jacobian on cpu" if record.step == 0 else "structured on cpu",
    )
    folder = paths.report_dir(out / "store")
    kept = folder.with_name("report-kept")
    folder.rename(kept)
    try:
        folder.write_text("not a folder")

        def call(**p: Any) -> Any:
            return demo(out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8], **p)

        said = store_manifest.MIXED_ENGINES
        warns_then_raises(call, ConetoolError, "is a file, not a directory", said)
    finally:
        folder.unlink()
        kept.rename(folder)


def test_a_call_that_returns_gives_nothing_to_pythons_warnings(tmp_path):
    """The warnings of a call that returns are in its result, not said through Python's."""
    steps = [0, 10, 20, 30]
    root = make_store(tmp_path / "s", steps, random_psd(steps))
    paths.kernel(root, 10).write_bytes(b"not a safetensors file at all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = embed(root, skip_bad=True, method="pca")
    assert list(result.excluded) == [10] and np.isfinite(result.embedding.coords).all()
    assert not [w for w in caught if "left out" in str(w.message)], caught
