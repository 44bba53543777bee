"""The store's guarantees that a mutation check of the store found unpinned by the other tests.

Each test names the mutants it kills (a one-line or one-block change of conetool that the rest
of the suite let through) and checks the documented guarantee (DESIGN.md "The store", README
"The store", the modules' docstrings), not the code's present output.

What was mutated: 145 hand-written mutants of conetool/store.py (58), store_manifest.py (26),
store_lock.py (14), store_companions.py (8), pipeline/matrix_cache.py (20),
pipeline/switch_store.py (8) and io.py (11): comparisons flipped or loosened, checks and
branches removed, the manifest write, the lock release, the flush, the fsync, the rename and the
temporary file's removal dropped, the kernel written after its record, identity and metadata
keys swapped or left out, the writer lock taken shared and the results locks swapped, the
replaced/damaged/gone readings of the manifest exchanged, cache key fields dropped, errno lists
shortened, a joined rank made owner. Each ran against the tests that execute its lines (a line
map of the suite) plus tests/test_faults.py, with ``-x``.

Killed by the tests that existed: 93. Killed by the tests here: 47 (IDs in each test's comment:
S store, M store_manifest, L store_lock, C store_companions, X matrix_cache, W switch_store,
I io). Equivalent, 5:

* M25 (the header spread after the identity in a new manifest): the header never holds an
  identity key (run_kernels._header), so only the order of the JSON keys changes;
* C07 (no "no eval kernel" check for a missing file): the safetensors header read then names the
  file as unreadable, and every caller only asks whether there is a problem;
* X04 (the kernel path left out of the S matrix key): a record's kernel path is
  ``paths.kernel_relative(step)``, a function of the step, which the key holds;
* X05 (the identity left out of the key): the identity changes only with ``--overwrite``, which
  removes the kernel files; the new ones change the files' size and kernel digest in the key,
  and S depends on the files' content alone;
* W06 (``switch/`` not made again before a sweep's writes): every one of those writes goes
  through ``io.atomic_write``, which creates the parent folder itself.

Left: none. No mutant showed the code breaking a documented guarantee (every test here passes
on the code as it was).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from synthetic_store import (
    HEADER,
    IDENT,
    IDENTITY_CHANGES,
    make_store,
    record,
    store_with_kernels,
)

import conetool.io
from conetool import paths, store_clearing
from conetool.errors import StoreError, StoreReplacedError
from conetool.io import atomic_save_safetensors, atomic_write
from conetool.pipeline import matrix_cache
from conetool.pipeline.matrix_cache import kernel_matrix
from conetool.pipeline.switch_store import SwitchStore
from conetool.store import Store, StoreIdentity, kernel_norm, store_on_disk
from conetool.store_lock import StoreLock, writer_note
from conetool.store_manifest import opened_as

OTHER = StoreIdentity(spec_hash="bbbb", probe_hash="pppp", kind="trace", dtype="float32")


def _manifest(root: Path) -> dict:
    return json.loads(paths.manifest(root).read_text())


def _write_manifest(root: Path, manifest: dict) -> None:
    paths.manifest(root).write_text(json.dumps(manifest))


def _without_store_id(root: Path) -> None:
    """Make ``root``'s manifest one written before conetool recorded a ``store_id``."""
    manifest = _manifest(root)
    del manifest["store_id"]
    _write_manifest(root, manifest)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _resave(path: Path, meta: dict[str, str], kernel: torch.Tensor | None = None) -> None:
    tensors = load_file(str(path))
    if kernel is not None:
        tensors["kernel"] = kernel
    save_file(tensors, str(path), metadata=meta)


def _lock_is_free(root: Path) -> bool:
    """Whether another process could take the store's writer lock now (a new open file
    description conflicts with this process's own flock as another process's would)."""
    fd = os.open(paths.lock(root), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the test's own lock


# ------------------------------------------------------------------ opening and reopening


def test_a_store_path_that_is_a_file_is_refused_with_the_fix(tmp_path):
    # S10: the check removed, the lock's mkdir met the file: a FileExistsError traceback
    target = tmp_path / "out"
    target.write_text("my notes")
    with pytest.raises(StoreError, match=r"--store .*out is a file, not a directory"):
        Store.open_for_writing(target, IDENT, HEADER)
    assert target.read_text() == "my notes"


def test_a_refused_open_gives_the_writer_lock_back(tmp_path):
    # S11: a refused open (another identity) kept the lock: the next kernels run, in another
    # process, was refused as "being written by another conetool process"
    root = tmp_path / "s"
    store_with_kernels(root)
    with pytest.raises(StoreError, match="never mixes them"):
        Store.open_for_writing(root, OTHER, HEADER)
    assert _lock_is_free(root)


def test_a_rerun_records_its_own_provenance(tmp_path):
    # S17: the manifest kept the first run's header (checkpoint directory, selection) although
    # "the record is of the latest kernels run that computed a kernel" (README)
    root = tmp_path / "s"
    store_with_kernels(root)
    moved = {**HEADER, "checkpoints": "/runs/moved", "selection": {"every": 5}}
    with Store.open_for_writing(root, IDENT, moved) as store:
        store.write_kernel(record(20), torch.eye(2))
    manifest = _manifest(root)
    assert manifest["checkpoints"] == "/runs/moved" and manifest["selection"] == {"every": 5}
    assert list(manifest["steps"]) == ["0", "10", "20"]


def test_a_store_made_before_store_ids_gets_one_so_its_replacement_is_told(tmp_path):
    # S18: a store made before conetool recorded a store_id kept none when a kernels run added
    # to it; a reader of it then took a store cleared and started again with the same identity
    # (--overwrite of a damaged manifest) for its own
    root = tmp_path / "s"
    store_with_kernels(root)
    _without_store_id(root)
    with Store.open_for_writing(root, IDENT, HEADER) as store:
        store.write_kernel(record(20), torch.eye(2))
    reader = Store.open(root)
    assert not reader.replaced()
    paths.manifest(root).write_text("{ damaged")
    Store.open_for_writing(root, IDENT, HEADER, overwrite=True).close()
    assert reader.replaced()
    with pytest.raises(StoreReplacedError):
        reader.load_kernel(0)


@pytest.mark.parametrize(
    ("field", "value"),
    IDENTITY_CHANGES,
)
def test_a_store_without_a_store_id_is_replaced_by_any_other_identity(tmp_path, field, value):
    # M08: for a store made before store ids, "replaced" compared the identity without dtype
    root = tmp_path / "s"
    store_with_kernels(root)
    _without_store_id(root)
    reader = Store.open(root)
    other = StoreIdentity(**{**IDENT.__dict__, field: value})
    Store.open_for_writing(root, other, HEADER, overwrite=True).close()
    assert reader.replaced()
    with pytest.raises(StoreReplacedError):
        reader.load_kernel(0)


def test_a_manifest_that_lost_its_store_id_is_another_store(tmp_path):
    # M26: a manifest without a store_id (an older conetool's --overwrite started it) counted
    # as the store the reader opened (store_on_disk: "other": another store_id)
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    _without_store_id(root)
    assert reader.replaced()


def test_a_store_being_cleared_is_replaced_not_damaged(tmp_path):
    # S30, S47: with the manifest gone (kernels --overwrite between its clearing and its new
    # manifest), a reader's missing kernel was "cannot be read ... Recompute it", not "replaced"
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    paths.manifest(root).unlink()
    shutil.rmtree(root / paths.KERNELS_DIR)
    assert store_on_disk(root, opened_as(reader.manifest)) == "none"
    assert reader.replaced()
    with pytest.raises(StoreReplacedError, match="was replaced while it was read"):
        reader.load_kernel(0)


def test_a_damaged_manifest_is_not_a_replaced_store(tmp_path):
    # S46: a manifest damaged under a reader was taken for a replacement ("other"): the reader
    # stopped with "kernels --overwrite cleared it" and wrote nothing (store_on_disk: "same"
    # also when it is damaged; the command's own error says what is wrong)
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    sweep = SwitchStore.begin(root, _manifest(root))
    paths.manifest(root).write_text("{ damaged")
    assert store_on_disk(root, opened_as(reader.manifest)) == "same"
    assert not reader.replaced() and not sweep.replaced()
    with reader.writing_results("distance"):
        pass
    assert torch.equal(reader.load_kernel(10), 11 * torch.eye(2))


def test_an_error_of_a_replaced_store_is_named_for_the_command(tmp_path):
    # S31: inside Store.reading, a file gone with the replaced store was a bare OSError
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    with pytest.raises(FileNotFoundError):  # not replaced: the error is the command's own
        with reader.reading("spectrum"):
            (root / "missing.safetensors").read_bytes()
    Store.open_for_writing(root, OTHER, HEADER, overwrite=True).close()
    with pytest.raises(StoreReplacedError, match="conetool spectrum was reading it"):
        with reader.reading("spectrum"):
            paths.kernel(root, 0).read_bytes()


def test_a_legacy_kernel_file_is_judged_by_its_identity(tmp_path):
    # S53: a kernel file written before kernel files carried their record is the store's own
    # when its identity matches (it cannot be a newer store's: those write records); with the
    # manifest removed by hand the reader read current files but refused legacy ones
    root = tmp_path / "s"
    store_with_kernels(root)
    path = paths.kernel(root, 10)
    meta = _metadata(path)
    del meta["record"]
    _resave(path, meta)
    reader = Store.open(root)
    paths.manifest(root).unlink()
    assert torch.equal(reader.load_kernel(10), 11 * torch.eye(2))
    assert torch.equal(reader.load_kernel(0), torch.eye(2))  # a current file, the same way


def test_a_missing_step_names_the_nearest_stored_steps(tmp_path):
    # S54: "nearest" was the smallest steps (the distance's sign dropped)
    root = tmp_path / "s"
    store_with_kernels(root, steps=range(0, 1001, 100))
    with pytest.raises(StoreError, match=r"stored steps: 300, 400, 500, 600, 700\.$"):
        Store.open(root).load_kernel(460)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_kernel_norm_is_refused(bad):
    # S55: a non-finite norm went into the record (manifest.json is strict JSON: its write
    # then failed with a ValueError traceback)
    with pytest.raises(StoreError, match="not finite"):
        kernel_norm(torch.tensor([[1.0, bad], [0.0, 1.0]]))
    # in float64: a float32 kernel whose float32 norm would overflow has a finite one
    assert kernel_norm(torch.full((2, 2), 3e38)) == pytest.approx(6e38, rel=1e-7)


def test_overwrite_and_the_next_writer_clean_the_layer_kernel_folder_too(tmp_path):
    # S56: layer_kernels/ was not among the writer's folders: --overwrite left the replaced
    # store's layer files, and a killed writer's temporary files there stayed forever
    root = tmp_path / "s"
    store = store_with_kernels(root)
    groups = {"first": ["0.weight"]}
    store.record_layer_groups({"patterns": None, "groups": groups, "hash": "ga", "dir": "x"})
    store.write_layer_kernels(0, {"first": torch.eye(2)}, groups, "ga", "f1")
    stale = root / paths.LAYER_KERNELS_DIR / ".step_000010.safetensors.q1w2.tmp"
    stale.write_bytes(b"partial")
    Store.open_for_writing(root, IDENT, HEADER).close()
    assert not stale.exists() and paths.layer_kernel(root, 0).is_file()
    Store.open_for_writing(root, OTHER, HEADER, overwrite=True).close()
    assert not (root / paths.LAYER_KERNELS_DIR).exists()


def test_a_damaged_manifest_beside_the_probe_set_alone_is_rebuilt(tmp_path):
    # S57: probe.safetensors alone (kernels/ removed) no longer made the folder a store: the
    # damaged manifest was refused as foreign instead of rebuilt
    root = tmp_path / "s"
    store_with_kernels(root, steps=())
    save_file({"inputs": torch.zeros(2, 4)}, str(paths.probe(root)))
    shutil.rmtree(root / paths.KERNELS_DIR)
    paths.manifest(root).write_text("{ damaged")
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.close()
    assert "was damaged" in store.warnings[0] and store.steps() == []
    assert Store.open(root).identity == IDENT


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1, 2]", "not a readable conetool manifest"),
        # of conetool's format, so damaged (kernels rebuilds it), not another tool's file
        ('{"format": "conetool-store", "steps": []}', "not a readable conetool manifest"),
    ],
    ids=["a list", "steps a list"],
)
def test_a_manifest_of_the_wrong_shape_is_refused_with_the_fix(tmp_path, text, said):
    # M03 (a JSON list), M02 (steps not an object): a traceback instead of the refusal
    root = tmp_path / "s"
    store_with_kernels(root)
    paths.manifest(root).write_text(text)
    with pytest.raises(StoreError, match=said):
        Store.open(root)


def test_a_joined_store_never_writes_the_manifest_when_it_adopts(tmp_path):
    # S44: a rank's adopt_kernel_files wrote manifest.json, which rank 0 owns
    root = tmp_path / "s"
    store_with_kernels(root)
    rank1, rank2 = Store.join(root), Store.join(root)
    rank2.write_kernel(record(20), torch.eye(2))
    before = paths.manifest(root).read_bytes()
    assert rank1.adopt_kernel_files() == [20]
    assert paths.manifest(root).read_bytes() == before


# ------------------------------------------------------------------ kernel files


def test_a_full_kernel_of_the_probe_set_matches_its_record(tmp_path):
    # M15: the probe size was compared with the last axis: every full kernel (n, c, n, c) was
    # "of another shape" and recomputed at each rerun
    root = tmp_path / "s"
    full = StoreIdentity(**{**IDENT.__dict__, "kind": "full"})
    store = Store.open_for_writing(root, full, {**HEADER, "probe": {"size": 3}})
    store.write_kernel(record(0), torch.ones(3, 2, 3, 2))
    store.close()
    assert store.kernel_file_problem(0) is None


def test_a_one_dimensional_kernel_file_is_named(tmp_path):
    # M16: a vector of the probe size passed the shape check
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, {**HEADER, "probe": {"size": 3}})
    store.write_kernel(record(0), torch.ones(3, 3))
    store.write_kernel(record(10), torch.ones(3))
    store.close()
    assert store.kernel_file_problem(0) is None
    assert "shape (3,) (probe size 3)" in str(store.kernel_file_problem(10))


def test_a_kernel_file_from_before_the_dtype_was_recorded_is_adopted(tmp_path):
    # M21: a kernel file without "dtype" metadata no longer counted as the store's dtype: a
    # kill before its manifest write lost it
    root = tmp_path / "s"
    store_with_kernels(root)
    path = paths.kernel(root, 10)
    meta = _metadata(path)
    del meta["dtype"]
    _resave(path, meta)
    manifest = _manifest(root)
    del manifest["steps"]["10"]  # killed before the manifest write
    _write_manifest(root, manifest)
    store = Store.open(root)
    assert store.steps() == [0, 10] and store.record(10) == record(10)


def test_a_kernel_file_without_its_step_is_left_out_when_adopting(tmp_path):
    # M23: a file carrying a record but no step made opening the store fail (KeyError)
    root = tmp_path / "s"
    store_with_kernels(root)
    stray = root / paths.KERNELS_DIR / "step_000020.safetensors"
    shutil.copy(paths.kernel(root, 10), stray)
    meta = _metadata(stray)
    del meta["step"]
    _resave(stray, meta)
    assert Store.open(root).steps() == [0, 10]


def test_a_layer_file_holding_a_tensor_of_no_group_is_stale(tmp_path):
    # C04: extra tensors passed (only a missing group was caught)
    root = tmp_path / "s"
    store = store_with_kernels(root)
    groups = {"first": ["0.weight"], "last": ["2.weight"]}
    store.record_layer_groups({"patterns": None, "groups": groups, "hash": "ga", "dir": "x"})
    parts = {"first": torch.eye(2), "last": torch.eye(2), "extra": torch.eye(2)}
    store.write_layer_kernels(10, parts, groups, "ga", "f1")
    problem = store.layer_kernel_problem(10, "ga", "f1")
    assert problem is not None and "its tensors are not the groups it names" in problem


# ------------------------------------------------------------------ clearing and locks


def test_overwrite_is_not_stopped_by_a_file_appearing_while_it_removes_a_folder(
    tmp_path, monkeypatch
):
    # S50: rmtree's "directory not empty" (a reader's file renamed into place after rmtree
    # listed the folder) stopped --overwrite with an OSError instead of starting over. The
    # clearing moves the store's folders into STORE/.conetool-replaced-*, renames that
    # STORE/.conetool-cleared-*, then removes it.
    root = tmp_path / "s"
    store_with_kernels(root)
    (root / "distance").mkdir()
    (root / "distance" / "summary.json").write_text("{}")
    real = shutil.rmtree
    raced: list[Path] = []

    def rmtree(path, *args, **kwargs):
        if Path(path).name.startswith(paths.CLEARED_PREFIX) and not raced:
            raced.append(Path(path))
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store_clearing.shutil, "rmtree", rmtree)
    with Store.open_for_writing(root, OTHER, HEADER, overwrite=True) as store:
        assert any("distance" in said for said in store.warnings)
    assert raced and not (root / "distance").exists()


def test_readers_write_their_results_side_by_side(tmp_path, monkeypatch):
    # S32, L10, W04: the results lock is shared among readers (README: held shared while a
    # reader writes, exclusive only while --overwrite clears); a reader, or a switch sweep,
    # waited for another reader's writes. The wait is made a refusal to see it.
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    sweep = SwitchStore.begin(root, _manifest(root))
    fd = os.open(paths.results_lock(root), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # another reader writing its results now
        real = fcntl.flock
        monkeypatch.setattr(fcntl, "flock", lambda f, op: real(f, op | fcntl.LOCK_NB))
        with reader.writing_results("embed"):
            pass
        with sweep.writing():
            pass
        monkeypatch.undo()
    finally:
        os.close(fd)


def test_a_second_writer_process_is_refused(tmp_path, monkeypatch):
    # L01: the writer's lock taken shared: a second kernels process got it too
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    try:
        monkeypatch.setattr(StoreLock, "_held", {})  # another process: no lock of its own
        with pytest.raises(StoreError, match=rf"another conetool process \(pid {os.getpid()} "):
            Store.open_for_writing(root, IDENT, HEADER)
    finally:
        monkeypatch.undo()
        store.close()


def test_the_lock_is_released_although_a_forked_child_holds_its_descriptor(tmp_path):
    # L06: close() only closed the descriptor; a child forked meanwhile (a data loader
    # worker) shares it, and the lock stayed held until the child ended
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child waits for the parent, then ends without cleaning up
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        store.close()
        assert _lock_is_free(root)
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)


def test_a_writer_empties_its_note_when_it_releases_the_lock(tmp_path):
    # L05: the note stayed: readers in other processes said "kernels is writing" while this
    # (still running) process had closed its store
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    assert writer_note(root) is not None
    store.close()
    assert paths.lock(root).read_text() == ""
    assert writer_note(root) is None


def test_a_writer_replaces_a_killed_writers_note(tmp_path):
    # L12: the note was written over the old one without emptying the file first: the killed
    # writer's longer note showed through behind it
    root = tmp_path / "s"
    root.mkdir()
    paths.lock(root).write_text("pid 999999 on elsewhere.example: " + "x" * 5000 + " old-run")
    with Store.open_for_writing(root, IDENT, HEADER):
        note = writer_note(root)
        assert note is not None and note.startswith(f"pid {os.getpid()} on ")
        assert "old-run" not in note


def test_the_writer_note_names_a_writer_on_another_host(tmp_path):
    # L08: a note from another host had its pid looked up here (this process's pid: "not ours")
    root = tmp_path / "s"
    root.mkdir()
    paths.lock(root).write_text(f"pid {os.getpid()} on elsewhere.example: conetool kernels x\n")
    note = writer_note(root)
    assert note is not None and "(on another host" in note


@pytest.mark.parametrize("stale", ["pid {pid} on {host}: conetool kernels x\n", "not a note\n"])
def test_a_note_of_no_running_writer_is_none(tmp_path, stale):
    # L09: a stale note naming this process's pid (reused) made it "the writer" without the lock;
    # L13: text that is no note was reported as the writer
    root = tmp_path / "s"
    root.mkdir()
    paths.lock(root).write_text(stale.format(pid=os.getpid(), host=socket.gethostname()))
    assert writer_note(root) is None


# ------------------------------------------------------------------ atomic writes


def _raise_in_write(code: int):
    def write(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError(code, os.strerror(code), str(tmp))

    return write


@pytest.mark.parametrize(
    ("code", "said"),
    [
        (errno.EDQUOT, "no space left on the device while writing"),
        (errno.EPERM, "is not writable"),
    ],
)
def test_a_full_quota_or_a_forbidden_folder_is_one_paragraph(tmp_path, code, said):
    # I08 (EDQUOT), I09 (EPERM): an OSError traceback instead of the one-paragraph error
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(StoreError, match=said):
        atomic_write(target, _raise_in_write(code))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_full_disk_met_by_the_safetensors_writer_is_one_paragraph(tmp_path, monkeypatch):
    # I06: the Rust writer's I/O error (its message as safetensors 0.8 words it) stayed a
    # SafetensorError traceback instead of the full-disk paragraph
    def full(tensors, filename, metadata=None):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28) at "
            f'path "{filename}"'
        )

    monkeypatch.setattr(conetool.io, "save_file", full)
    # the path of files above IN_MEMORY_MAX (smaller ones are written through the temporary
    # file's descriptor: tests/test_atomic_bytes.py gives them a full disk)
    monkeypatch.setattr(conetool.io, "IN_MEMORY_MAX", 0)
    with pytest.raises(StoreError, match=r"no space left on the device while writing .*k\.st"):
        atomic_save_safetensors(tmp_path / "k.st", {"kernel": torch.eye(2)})
    assert list(tmp_path.iterdir()) == []


def test_tensors_sharing_storage_are_saved(tmp_path):
    # I07: without the copy, tensors sharing storage (one kernel under two names) were refused
    kernel = torch.arange(4.0).reshape(2, 2)
    atomic_save_safetensors(tmp_path / "k.st", {"a": kernel, "b": kernel, "c": kernel[1]})
    back = load_file(str(tmp_path / "k.st"))
    assert torch.equal(back["a"], kernel) and torch.equal(back["b"], kernel)
    assert torch.equal(back["c"], kernel[1])


# ------------------------------------------------------------------ the S matrix cache


def _psd(seed: int, n: int = 4) -> torch.Tensor:
    a = torch.as_tensor(np.random.default_rng(seed).standard_normal((n, n + 1)))
    return a @ a.T


def _s_store(root: Path, steps=(0, 10, 20), tag: str = "a", overwrite: bool = False) -> Path:
    return make_store(root, steps, [_psd(step) for step in steps], tag=tag, overwrite=overwrite)


def _reference_s(steps) -> np.ndarray:
    flat = [_psd(step).numpy().ravel() for step in steps]
    return np.array(
        [[1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in flat] for a in flat]
    )


@pytest.mark.parametrize(("field", "value"), [("dtype", "float32"), ("step", "20")])
def test_a_kernel_file_of_another_dtype_or_step_is_never_mixed_in(tmp_path, field, value):
    # X07 (dtype), X08 (step): the header check skipped that field, and the S matrix used the
    # file (a kernel of another dtype, or step 20's kernel copied over step 10's)
    root = _s_store(tmp_path / "s")
    path = paths.kernel(root, 10)
    if field == "step":
        shutil.copy(paths.kernel(root, 20), path)
    else:
        _resave(path, {**_metadata(path), "dtype": value}, _psd(10).float())
    with pytest.raises(StoreError, match=rf"{field} '{value}' \(store: .*never mixes kernels"):
        kernel_matrix(Store.open(root))


@pytest.mark.parametrize("damage", ["non-finite", "shape"])
def test_a_saved_matrix_that_cannot_be_the_stores_is_recomputed(tmp_path, damage):
    # X12 (a NaN in S), X13 (S not K x K): the saved matrix was reused as it was
    root = _s_store(tmp_path / "s")
    first = kernel_matrix(Store.open(root))
    saved = dict(np.load(paths.matrix_npz(root)))
    if damage == "non-finite":
        saved["S"][0, 1] = np.nan
    else:
        saved["S"] = saved["S"][:2, :2]
    np.savez(paths.matrix_npz(root), **saved)
    again = kernel_matrix(Store.open(root))
    assert not again.reused and again.key == first.key
    np.testing.assert_allclose(again.S, _reference_s([0, 10, 20]), atol=1e-12)


def test_the_matrix_is_never_saved_into_a_store_replaced_while_it_was_computed(
    tmp_path, monkeypatch
):
    # X14: the matrix of the old kernels was written into the new store
    root = _s_store(tmp_path / "s")
    real = matrix_cache.distance_matrix

    def computed_then_replaced(*args, **kwargs):
        s = real(*args, **kwargs)
        Store.open_for_writing(root, OTHER, {}, overwrite=True).close()  # kernels --overwrite
        return s

    reader = Store.open(root)
    monkeypatch.setattr(matrix_cache, "distance_matrix", computed_then_replaced)
    with pytest.raises(StoreReplacedError):
        kernel_matrix(reader)
    assert not paths.matrix_npz(root).exists()


def test_skip_bad_never_leaves_out_the_kernels_of_a_replaced_store(tmp_path):
    # X15: with skip_bad, a kernel found replaced was "left out" like a damaged file, and the
    # error said the store has too few usable kernels instead of that it was replaced
    root = _s_store(tmp_path / "s")
    reader = Store.open(root)
    paths.manifest(root).write_text("{ damaged")
    _s_store(root, tag="new", overwrite=True)  # the same identity and steps, recomputed
    with pytest.raises(StoreReplacedError):
        kernel_matrix(reader, skip_bad=True)


def test_a_matrix_with_steps_left_out_is_reused_with_them(tmp_path):
    # X18: the left-out steps were not saved: the matrix was never reused with --skip-bad
    root = _s_store(tmp_path / "s", steps=(0, 10, 20, 30))
    paths.kernel(root, 20).write_bytes(b"damaged")
    first = kernel_matrix(Store.open(root), skip_bad=True)
    again = kernel_matrix(Store.open(root), skip_bad=True)
    assert list(first.excluded) == [20] and not first.reused
    assert again.reused and again.excluded == first.excluded and again.steps == [0, 10, 30]
    np.testing.assert_allclose(again.S, _reference_s([0, 10, 30]), atol=1e-12)


def test_reuse_false_recomputes_the_matrix(tmp_path):
    # X19: reuse=False read the saved matrix back anyway
    root = _s_store(tmp_path / "s")
    assert not kernel_matrix(Store.open(root)).reused
    assert kernel_matrix(Store.open(root)).reused
    fresh = kernel_matrix(Store.open(root), reuse=False)
    assert not fresh.reused and fresh.saved


# ------------------------------------------------------------------ a switch sweep's store


def test_a_sweep_finds_its_store_replaced_while_it_is_being_cleared(tmp_path):
    # W01: with the manifest and switch/ both gone (the clearing removes both, before the new
    # manifest), the sweep wrote its point into the store being replaced
    root = tmp_path / "s"
    store_with_kernels(root)
    sweep = SwitchStore.begin(root, _manifest(root))
    paths.manifest(root).unlink()
    shutil.rmtree(paths.switch_dir(root))
    assert sweep.replaced()
    with pytest.raises(StoreReplacedError, match="conetool switch stopped and wrote nothing"):
        with sweep.writing():
            raise AssertionError("a replaced store must not be written to")
    assert not paths.switch_dir(root).exists()
