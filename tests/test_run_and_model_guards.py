"""Guards written against surviving mutants of the code added for mixed runs, eNTK failure
messages, user module imports, perturbed weights, kernels keys, refreshed mtimes and checkpoint
problems of one step. Each test is small and direct (no training run)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from synthetic_store import HEADER, IDENT, record
from test_store import manifest_reads

from conetool import paths
from conetool.checkpoints import CheckpointRef
from conetool.checkpoints.discover import step_problems
from conetool.errors import CheckpointError, ModelError, StoreError
from conetool.ntk_checks import perturbed
from conetool.ntk_failures import ACTIVATION_CHECKPOINTING, explained, vmap_failures_named
from conetool.pipeline.matrix_cache import kernels_key
from conetool.pipeline.mixed_runs import another_run
from conetool.pipeline.report_inputs import ReportInputs
from conetool.step_names import compile_step_regex
from conetool.store import Store
from conetool.store_manifest import same_kernel_record
from conetool.user_modules import import_user_module

#: A recorded checkpoint modification time (ns) the tests give files on purpose.
MTIME = 1_700_000_000_123_456_789


def _store(root: Path, steps=(0, 10), ident=IDENT, **changes) -> Store:
    """A store of ``ident`` with a 2 x 2 kernel per step, records as ``test_store.record`` with
    ``changes`` (e.g. another fingerprint or norm)."""
    store = Store.open_for_writing(root, ident, HEADER)
    for step in steps:
        store.write_kernel(dataclasses.replace(record(step), **changes), torch.eye(2))
    store.close()
    return store


def _other_run(tmp_path: Path, steps, size: int, mtime_ns: int) -> tuple[Path, list]:
    """A checkpoint directory with a file of ``size`` bytes and modification time ``mtime_ns``
    for each of ``steps`` (content that is no real checkpoint: only size/mtime/hash matter)."""
    ckpts = tmp_path / "other"
    ckpts.mkdir()
    refs = []
    for step in steps:
        path = ckpts / f"step_{step:06d}.safetensors"
        path.write_bytes(b"x" * size)
        os.utime(path, ns=(mtime_ns, mtime_ns))
        refs.append(CheckpointRef(step, (path,), "safetensors"))
    return ckpts, refs


# ------------------------------------------------------------------ mixed_runs.another_run


def test_another_run_whose_file_differs_in_size_under_the_recorded_mtime_is_refused(tmp_path):
    """Guards _differs: a size differing from the record means other content, even when the
    file's mtime equals the recorded one (size is checked before the cheap mtime skip)."""
    root = tmp_path / "s"
    _store(root, steps=(0, 10), mtime_ns=MTIME)
    ckpts, refs = _other_run(tmp_path, (0, 10), size=11, mtime_ns=MTIME)  # records say 10
    refused = another_run(root, ckpts, IDENT, refs)
    assert isinstance(refused, StoreError)
    assert "at 2 of the steps it holds (0, 10; step 0: " in str(refused)
    same_size = tmp_path / "same"
    same_size.mkdir()
    path = same_size / "step_000000.safetensors"
    path.write_bytes(b"y" * 10)
    os.utime(path, ns=(MTIME, MTIME))  # same size and mtime: taken as the same file, unread
    assert another_run(root, same_size, IDENT, [CheckpointRef(0, (path,), "safetensors")]) is None


def test_another_run_names_five_differing_steps_then_elides_the_rest(tmp_path):
    """Guards the message of another_run: at most five steps are listed, then ', ...'."""
    root = tmp_path / "s"
    _store(root, steps=range(7))
    ckpts, refs = _other_run(tmp_path, range(7), size=11, mtime_ns=MTIME)
    message = str(another_run(root, ckpts, IDENT, refs))
    assert "at 7 of the steps it holds (0, 1, 2, 3, 4, ...; step 0: " in message
    five = another_run(root, ckpts, IDENT, refs[:5])
    assert "(0, 1, 2, 3, 4; step 0: " in str(five)


def test_another_run_sees_kernel_files_the_manifest_does_not_list_yet(tmp_path):
    """Guards _held_records: manifest.json lags the kernel files (rewritten about once a
    second); a run killed before it listed its kernels is still the store's run, and another
    run's checkpoints at those steps are refused."""
    root = tmp_path / "s"
    _store(root, steps=(0, 10))
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["steps"] = {}  # killed before the first rewrite that listed them
    paths.manifest(root).write_text(json.dumps(manifest))
    ckpts, refs = _other_run(tmp_path, (0, 10), size=11, mtime_ns=MTIME)
    refused = another_run(root, ckpts, IDENT, refs)
    assert isinstance(refused, StoreError)
    assert "at 2 of the steps it holds (0, 10; step 0: " in str(refused)


def test_another_run_reads_the_manifest_once(tmp_path, monkeypatch):
    """another_run adopts the kernel files the manifest does not list from the manifest it read
    (it read manifest.json a second time to open the store), and the answer is the same."""
    root = tmp_path / "s"
    _store(root, steps=(0, 10))
    manifest = json.loads(paths.manifest(root).read_text())
    del manifest["steps"]["10"]  # a kernel the manifest does not list yet: adopted from its file
    paths.manifest(root).write_text(json.dumps(manifest))
    ckpts, refs = _other_run(tmp_path, (10,), size=11, mtime_ns=MTIME)
    reads = manifest_reads(monkeypatch)
    refused = another_run(root, ckpts, IDENT, refs)
    assert isinstance(refused, StoreError)
    assert "at 1 of the steps it holds (10; step 10: " in str(refused)
    assert reads == [paths.manifest(root)]


def test_another_run_of_a_manifest_from_a_newer_conetool_uses_the_steps_it_lists(tmp_path):
    """A manifest conetool would not open (a newer format) still names its steps: those are
    compared (opening it for writing then refuses it), and no kernel file is adopted."""
    root = tmp_path / "s"
    _store(root, steps=(0, 10))
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["format_version"] = 99
    del manifest["steps"]["10"]
    paths.manifest(root).write_text(json.dumps(manifest))
    ckpts, refs = _other_run(tmp_path, (0, 10), size=11, mtime_ns=MTIME)
    refused = another_run(root, ckpts, IDENT, refs)
    assert isinstance(refused, StoreError)
    assert "at 1 of the steps it holds (0; step 0: " in str(refused)


def test_another_run_leaves_a_store_of_another_identity_to_opening_it(tmp_path):
    """Guards the identity check of another_run: a store of another identity is not called
    another run (opening it refuses it, or --overwrite replaces it)."""
    root = tmp_path / "s"
    _store(root)
    ckpts, refs = _other_run(tmp_path, (0, 10), size=11, mtime_ns=MTIME)
    assert another_run(root, ckpts, IDENT, refs) is not None
    other = dataclasses.replace(IDENT, dtype="float64")
    assert another_run(root, ckpts, other, refs) is None


# ------------------------------------------------------------------ ntk_failures


def test_a_checkpoint_error_is_named_as_activation_checkpointing_whatever_its_words():
    """Guards explained: torch.utils.checkpoint.CheckpointError is recognised by its type."""
    named = explained(torch.utils.checkpoint.CheckpointError("recomputed values differ"))
    assert isinstance(named, ModelError) and str(named) == ACTIVATION_CHECKPOINTING


def test_a_custom_function_is_named_only_when_both_words_are_there():
    """Guards explained: a custom autograd.Function needs both 'autograd.Function' and
    'setup_context' in PyTorch's message; one alone is some other error."""
    assert explained(RuntimeError("autograd.Function failed")) is None
    assert explained(RuntimeError("no setup_context here")) is None
    both = explained(RuntimeError("autograd.Function without setup_context"))
    assert isinstance(both, ModelError) and "setup_context staticmethod" in str(both)


def test_out_of_memory_inside_vmap_stays_out_of_memory():
    """Guards vmap_failures_named: torch.OutOfMemoryError (a RuntimeError) is re-raised as it
    is, for the callers to name the memory budget, not turned into a ModelError."""
    with pytest.raises(torch.OutOfMemoryError), vmap_failures_named():
        raise torch.OutOfMemoryError("CUDA out of memory")


def test_an_unknown_vmap_failure_quotes_only_the_first_line_of_pytorchs_message():
    """Guards _first_line: the ModelError is one line, quoting PyTorch's first line without
    its final period."""
    with pytest.raises(ModelError) as caught, vmap_failures_named():
        raise RuntimeError("Batching rule not implemented for aten::foo.\nWe could not ...")
    message = str(caught.value)
    assert "failed inside PyTorch: Batching rule not implemented for aten::foo. Some" in message
    assert "\n" not in message and "We could not" not in message


# ------------------------------------------------------------------ user_modules


def test_a_module_missing_from_the_current_directory_too_leaves_sys_path_as_it_was(
    tmp_path, monkeypatch
):
    """Guards import_user_module: the current directory added for the retry is removed again
    when the module is not there either."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    before = list(sys.path)
    with pytest.raises(ModelError, match="Make 'no_such_module_11' importable"):
        import_user_module("no_such_module_11", "[model] arch", ModelError)
    assert sys.path == before


# ------------------------------------------------------------------ ntk_checks.perturbed


def test_perturbed_adds_noise_of_one_percent_of_each_parameters_rms():
    """Guards perturbed: the noise is PERTURBATION (0.01) times each parameter's own root mean
    square (not its norm, not an absolute size)."""
    torch.manual_seed(0)
    params = {
        "w": 3.0 * torch.randn(4000, dtype=torch.float64),
        "b": torch.full((2000,), 0.5, dtype=torch.float64),
    }
    moved = perturbed(params)
    for name, value in params.items():
        rms = value.pow(2).mean().sqrt()
        ratio = float((moved[name] - value).pow(2).mean().sqrt() / rms)
        assert 0.008 < ratio < 0.012, (name, ratio)


def test_perturbed_keeps_each_parameters_dtype_and_shape():
    """Guards perturbed: each result has its parameter's dtype (the flat vector is of the
    first parameter's dtype) and shape."""
    params = {"a": torch.ones(2, 3, dtype=torch.float32), "b": torch.ones(4, dtype=torch.float64)}
    moved = perturbed(params)
    assert {k: (v.dtype, v.shape) for k, v in moved.items()} == {
        k: (v.dtype, v.shape) for k, v in params.items()
    }


def test_perturbed_of_no_parameters_is_empty():
    """Guards perturbed's early return for no parameters."""
    assert perturbed({}) == {}


# ------------------------------------------------------------------ matrix_cache.kernels_key


def test_kernels_key_tells_fingerprint_norm_and_identity_apart_but_not_mtimes(tmp_path):
    """Guards kernels_key: it covers each step's fingerprint and norm and the identity, and not
    the checkpoint's mtime, which refresh_mtimes changes without any kernel changing."""
    base = kernels_key(_store(tmp_path / "a"))
    assert kernels_key(_store(tmp_path / "b")) == base
    assert kernels_key(_store(tmp_path / "c", fingerprint="f2")) != base
    assert kernels_key(_store(tmp_path / "d", norm=2.0)) != base
    other = dataclasses.replace(IDENT, kind="full")
    assert kernels_key(_store(tmp_path / "e", ident=other)) != base
    store = Store.open_for_writing(tmp_path / "a", IDENT, HEADER)
    store.refresh_mtimes({0: MTIME, 10: MTIME})
    store.close()
    refreshed = Store.open(tmp_path / "a")
    assert refreshed.records()[0].mtime_ns == MTIME and kernels_key(refreshed) == base


# ------------------------------------------------------------------ report_inputs._check_current


def _summarised(root: Path, **summary) -> ReportInputs:
    """The report's inputs for a store of steps 0 and 10 with a distance summary ``summary``."""
    _store(root)
    summary = {
        "identity": dataclasses.asdict(IDENT),
        "steps": {"count": 2, "first": 0, "last": 10},
        **summary,
    }
    path = paths.distance_summary(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return ReportInputs.read(Store.open(root), str(root), root)


def test_a_summary_written_before_kernels_key_was_recorded_raises_no_alarm(tmp_path):
    """Guards _check_current: a summary without kernels_key is not taken for one of other
    kernels; one with the current key neither, one with another key is."""
    assert not any("recomputed since" in n for n in _summarised(tmp_path / "old").warnings)
    current = kernels_key(_store(tmp_path / "twin"))
    notes = _summarised(tmp_path / "new", kernels_key=current).warnings
    assert not any("recomputed since" in n for n in notes)
    stale = _summarised(tmp_path / "stale", kernels_key="0" * 64).warnings
    assert any("conetool distance results were computed from kernels" in n for n in stale)


def test_results_of_other_steps_get_one_note_not_two(tmp_path):
    """Guards _check_current: the kernels_key note is an alternative to the steps note (elif),
    not said besides it."""
    inputs = _summarised(
        tmp_path / "s", steps={"count": 1, "first": 0, "last": 0}, kernels_key="0" * 64
    )
    distance_notes = [n for n in inputs.warnings if "conetool distance" in n]
    assert len(distance_notes) == 1 and "cover 1 steps" in distance_notes[0]


# ------------------------------------------------------------------ store.refresh_mtimes


def test_refresh_mtimes_writes_the_manifest_only_for_a_new_time_of_a_held_step(
    tmp_path, monkeypatch
):
    """Guards Store.refresh_mtimes: no manifest write when every time is already recorded, and
    steps the store does not hold are ignored (no KeyError, no write)."""
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    store.write_kernel(dataclasses.replace(record(0), mtime_ns=MTIME), torch.eye(2))
    writes: list[int] = []
    real = store._write_manifest
    monkeypatch.setattr(store, "_write_manifest", lambda: writes.append(1) or real())
    store.refresh_mtimes({0: MTIME, 99: 5})
    assert writes == [] and "99" not in store.manifest["steps"]
    store.refresh_mtimes({0: MTIME + 1})
    assert writes == [1] and store.manifest["steps"]["0"]["mtime_ns"] == MTIME + 1
    store.close()


def test_refresh_mtimes_of_a_joined_store_leaves_the_manifest_to_its_owner(tmp_path):
    """Guards Store.refresh_mtimes: a store opened with join (not the owner) writes nothing."""
    root = tmp_path / "s"
    _store(root)
    before = paths.manifest(root).read_bytes()
    Store.join(root).refresh_mtimes({0: MTIME, 10: MTIME})
    assert paths.manifest(root).read_bytes() == before


# ------------------------------------------------------------------ store_manifest


def test_an_embedded_record_that_is_no_dict_is_not_the_same_kernel_record():
    """Guards same_kernel_record: a kernel file without a record ('null') or with a record that
    is no object differs, without raising."""
    recorded = dataclasses.asdict(record(0))
    assert same_kernel_record(None, recorded) is False
    assert same_kernel_record([1, 2], recorded) is False
    assert same_kernel_record({**recorded, "mtime_ns": 7}, recorded) is True


# ------------------------------------------------------------------ checkpoints


def test_step_problems_is_none_for_a_good_step_and_for_a_step_without_files(tmp_path):
    """Guards step_problems: only files of the step that have a problem count (a good file is
    none), and a step with no file at all is None rather than an error."""
    save_file({"w": torch.zeros(2)}, str(tmp_path / "step_5.safetensors"))
    (tmp_path / "step_7.safetensors").write_bytes(b"not a checkpoint at all")
    assert step_problems(tmp_path, 5) is None
    assert step_problems(tmp_path, 6) is None
    bad = step_problems(tmp_path, 7)
    assert isinstance(bad, CheckpointError) and "step_7.safetensors" in str(bad)


def test_a_letter_escape_right_before_ep_still_reads_as_an_epoch_label():
    """Guards compile_step_regex: an escape such as \\d is replaced by a separator, not
    removed, so 'run\\d\\dep(\\d+)' (run07ep3.pt) still reads an epoch."""
    with pytest.raises(CheckpointError, match="reads an epoch"):
        compile_step_regex(r"run\d\dep(\d+)")
    assert compile_step_regex(r"run\d\dstep(\d+)") is not None
