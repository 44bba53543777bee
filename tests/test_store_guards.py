"""Guards of the store's contract that a mutation check of the store and of ``conetool kernels``
found untested: what a damaged, foreign, newer or overwritten store does, what a rerun
recomputes, and the order of the writes that makes a kill lose at most the kernel in progress."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from synthetic_store import HEADER, IDENT, IDENTITY_CHANGES, record, store_with_kernels
from test_checkpoints import write_hf_sharded
from test_store import manifest_reads
from tiny_run import SPEC, STEPS, metadata, run_fixtures

from conetool import paths, store_clearing, store_manifest, store_opening
from conetool.errors import StoreError, StoreReplacedError
from conetool.pipeline import kernels
from conetool.pipeline.switch_store import SwitchStore
from conetool.store import Store, StoreIdentity
from conetool.store_lock import StoreLock, results_lock

trained, run = run_fixtures(SPEC)


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes under ``root`` (the lock file aside), by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != paths.LOCK_NAME
    }


# ------------------------------------------------------------------ manifests not to rebuild


def test_a_store_written_by_a_newer_conetool_is_refused_and_left_byte_for_byte(tmp_path):
    # guards: only a damaged manifest is rebuilt; a newer format is refused, never replaced
    root = tmp_path / "s"
    store_with_kernels(root)
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["format_version"] = 2
    paths.manifest(root).write_text(json.dumps(manifest))
    before = _files(root)
    with pytest.raises(StoreError, match=r"manifest.json was written by a newer conetool.*upgrade"):
        Store.open_for_writing(root, IDENT, HEADER)
    with pytest.raises(StoreError, match="newer conetool"):
        Store.open(root)
    assert _files(root) == before


def test_a_foreign_manifest_in_a_store_folder_is_refused_and_left_byte_for_byte(tmp_path):
    # guards: a manifest.json of another format is not conetool's to rebuild over
    root = tmp_path / "s"
    store_with_kernels(root)
    paths.manifest(root).write_text(json.dumps({"format": "other-tool", "steps": {}}))
    before = _files(root)
    with pytest.raises(StoreError, match=r"manifest.json is not a conetool store manifest"):
        Store.open_for_writing(root, IDENT, HEADER)
    assert _files(root) == before


def test_a_damaged_manifest_in_a_folder_that_is_no_store_is_refused_not_replaced(tmp_path):
    # guards: a rebuild needs a store (kernels/ or probe); a stray manifest.json is left alone
    root = tmp_path / "notes"
    root.mkdir()
    paths.manifest(root).write_text("{ someone else's file")
    with pytest.raises(StoreError, match=r"manifest.json is not a readable conetool manifest"):
        Store.open_for_writing(root, IDENT, HEADER)
    assert paths.manifest(root).read_text() == "{ someone else's file"
    assert not (root / paths.KERNELS_DIR).exists()


# ------------------------------------------------------------------ --overwrite starts afresh


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_overwrite_of_a_store_without_a_usable_manifest_deletes_its_kernels(tmp_path, damage):
    # guards: --overwrite clears the old kernel files even when the manifest is damaged or gone
    root = tmp_path / "s"
    store_with_kernels(root)
    if damage == "truncated":
        paths.manifest(root).write_text(paths.manifest(root).read_text()[:40])
    else:
        paths.manifest(root).unlink()
    fresh = Store.open_for_writing(root, IDENT, HEADER, overwrite=True)
    fresh.close()
    assert fresh.steps() == []  # not rebuilt from the kernel files; what went is said
    assert fresh.warnings == ["--overwrite removed the replaced store's 2 kernel file(s)"]
    assert not paths.kernel(root, 0).exists() and not paths.kernel(root, 10).exists()
    assert Store.open(root).steps() == []  # nothing of the old store comes back on reading


def test_overwrite_removes_every_file_conetool_wrote_and_keeps_the_users(tmp_path):
    # guards: clear() of --overwrite removes the eval set and every companion and derived folder
    root = tmp_path / "s"
    store_with_kernels(root)
    written = [
        paths.probe(root),
        paths.eval_set(root),
        paths.eval_kernel(root, 0),
        paths.layer_kernel(root, 0),
        *(root / name / "out.csv" for name in paths.DERIVED_DIRS),
    ]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old")
    (root / "notes.txt").write_text("mine")
    other = StoreIdentity(**{**IDENT.__dict__, "kind": "full"})
    replaced = Store.open_for_writing(root, other, HEADER, overwrite=True)
    replaced.close()
    # and says so: the results it removed may have been expensive (switch), and so may the eval
    # and layer kernels (--per-layer: one more kernel per group and step), which it named not
    results = ", ".join(paths.DERIVED_DIRS)
    assert replaced.warnings == [
        "--overwrite removed the replaced store's 2 kernel file(s), 1 eval kernel file(s), "
        f"1 layer kernel file(s) and its {results} results"
    ]
    assert [p for p in written if p.exists()] == []
    assert not paths.eval_kernels_dir(root).exists() and not paths.layer_kernels_dir(root).exists()
    assert not paths.kernel(root, 0).exists()
    assert (root / "notes.txt").read_text() == "mine"


def test_overwrite_counts_what_it_removes_once_it_holds_the_results_lock(tmp_path, monkeypatch):
    # guards: clear() says what it removed, counted under the results lock; a reader writing its
    # results while the clearing waits for the lock (here: a distance folder made then, and a
    # kernel file a rank wrote meanwhile) is counted, not only what was there before the wait
    root = tmp_path / "s"
    store_with_kernels(root)
    real_lock = store_clearing.results_lock

    @contextmanager
    def results_lock(where, *, exclusive):
        with real_lock(where, exclusive=exclusive):
            if exclusive:  # what the waited-for writers left by the time the lock is had
                (Path(where) / paths.DERIVED_DIRS[0]).mkdir()
                shutil.copy(paths.kernel(where, 0), paths.kernel(where, 20))
            yield

    monkeypatch.setattr(store_clearing, "results_lock", results_lock)
    message = store_clearing.clear(root)
    assert message == (
        "--overwrite removed the replaced store's 3 kernel file(s) and its "
        f"{paths.DERIVED_DIRS[0]} results"
    )
    assert not (root / paths.KERNELS_DIR).exists()


def _leftovers(root: Path) -> dict[str, Path]:
    """A temporary file of an atomic write that a killed writer left in each result folder,
    and files of the user's there that only look like one."""
    made = {}
    for name in paths.DERIVED_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
        made[name] = root / name / ".summary.json.k1ll_3d9.tmp"
        made[name].write_text("half")
    made["mine"] = root / paths.DISTANCE_DIR / ".notes.tmp"
    made["mine"].write_text("mine")
    (root / paths.EMBED_DIR / ".x.abc.tmp").mkdir(exist_ok=True)  # not a file
    return made


def test_a_reader_alone_removes_what_a_killed_writer_left_in_the_result_folders(tmp_path):
    """A distance, embed, spectrum, switch or report run killed while writing (SIGKILL) left its
    .NAME.XXXX.tmp files in the store's result folders for good: the next writer of results
    (conetool demo run again) left them there."""
    root = tmp_path / "s"
    store_with_kernels(root)
    made = _leftovers(root)
    with results_lock(root, exclusive=False):
        pass
    assert [name for name, path in made.items() if path.exists()] == ["mine"]
    assert (root / paths.EMBED_DIR / ".x.abc.tmp").is_dir()


def test_a_rank_of_a_torchrun_job_leaves_the_temporaries(tmp_path, monkeypatch):
    # its ranks may run on several machines, whose locks on a file system that holds them only
    # within one machine (NFS nolock, Lustre localflock) would let a rank alone on its machine
    # remove a temporary another machine's rank is writing (a switch point, after its training)
    root = tmp_path / "s"
    store_with_kernels(root)
    made = _leftovers(root)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with results_lock(root, exclusive=False):
        pass
    assert all(path.exists() for path in made.values())
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: removes them, as alone
    with results_lock(root, exclusive=False):
        pass
    assert [name for name, path in made.items() if path.exists()] == ["mine"]


def test_a_reader_leaves_the_temporaries_while_another_holds_the_results_lock(tmp_path):
    # guards: another reader writing its results now may be writing those files
    root = tmp_path / "s"
    store_with_kernels(root)
    made = _leftovers(root)
    other = os.open(paths.results_lock(root), os.O_RDWR | os.O_CREAT)  # another process's hold
    try:
        fcntl.flock(other, fcntl.LOCK_SH)
        with results_lock(root, exclusive=False):
            pass
    finally:
        os.close(other)
    assert all(path.exists() for path in made.values())
    with results_lock(root, exclusive=False):  # alone: removes them
        made = _leftovers(root)
        with results_lock(root, exclusive=False):  # nested in this thread: not alone
            pass
    assert all(path.exists() for path in made.values())


# A command of another process writing its results: its atomic write of distance/to_ref.csv
# holds its temporary file until the test lets it finish (GO appears).
_WRITING_RESULTS = """
import sys, time
from pathlib import Path
from conetool.io import atomic_write
from conetool.store_lock import results_lock

root, go = Path(sys.argv[1]), Path(sys.argv[2])

def write(tmp):
    tmp.write_text("mine")
    go.with_suffix(".writing").touch()
    while not go.exists():
        time.sleep(0.01)

with results_lock(root, exclusive=False):
    atomic_write(root / "distance" / "to_ref.csv", write)
"""


def test_a_reader_never_removes_the_temporary_of_a_command_writing_its_results(tmp_path):
    # Two processes: the one writing distance/to_ref.csv holds the results lock shared while its
    # temporary file exists; a reader that starts then is not alone, so it leaves that file and
    # the write completes. The next reader alone removes a temporary left by a killed writer.
    root, go = tmp_path / "s", tmp_path / "go"
    store_with_kernels(root)
    (root / paths.DISTANCE_DIR).mkdir()
    script = tmp_path / "writing_results.py"
    script.write_text(_WRITING_RESULTS)
    import conetool

    env = {**os.environ, "PYTHONPATH": str(Path(conetool.__file__).parents[1])}
    writer = subprocess.Popen([sys.executable, str(script), str(root), str(go)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not go.with_suffix(".writing").exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer stopped"
            time.sleep(0.01)
        (temporary,) = (root / paths.DISTANCE_DIR).glob(".to_ref.csv.*.tmp")
        with results_lock(root, exclusive=False):  # a reader starting now: not alone
            pass
        assert temporary.is_file()
        go.touch()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert (root / paths.DISTANCE_DIR / "to_ref.csv").read_text() == "mine"
    left = root / paths.DISTANCE_DIR / ".to_ref.csv.k1ll_3d9.tmp"
    left.write_text("half")
    with results_lock(root, exclusive=False):  # alone now
        pass
    assert not left.exists() and sorted(p.name for p in left.parent.iterdir()) == ["to_ref.csv"]


# ------------------------------------------------------------------ checking a kernel file


def _rewrite_kernel_file(path: Path, kernel=None, **meta: str) -> None:
    """Rewrite the safetensors file ``path`` with ``meta`` changed (and another ``kernel``)."""
    tensors = load_file(str(path))
    if kernel is not None:
        tensors["kernel"] = kernel
    save_file(tensors, str(path), metadata={**metadata(path), **meta})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"spec_hash": "zzzz"}, "spec_hash 'zzzz' (store: 'aaaa')"),
        ({"probe_hash": "zzzz"}, "probe_hash 'zzzz' (store: 'pppp')"),
        ({"kind": "full"}, "kind 'full' (store: 'trace')"),
        ({"dtype": "float64"}, "dtype 'float64' (store: 'float32')"),
        ({"step": "11"}, "step '11' (store: '10')"),
        (
            {"record": json.dumps({**record(10).__dict__, "fingerprint": "f9"})},
            "its embedded record differs from the manifest's",
        ),
    ],
)
def test_a_kernel_file_differing_from_its_record_in_one_header_field_is_named(
    tmp_path, change, named
):
    # guards: each header check of kernel_file_problem (README: "Nothing mixed, nothing stale")
    root = tmp_path / "s"
    store = store_with_kernels(root)
    assert store.kernel_file_problem(10) is None
    _rewrite_kernel_file(paths.kernel(root, 10), **change)
    problem = store.kernel_file_problem(10)
    assert problem is not None
    assert str(paths.kernel(root, 10)) in problem and named in problem
    assert store.kernel_file_problem(0) is None


def test_a_kernel_file_of_another_shape_than_the_probe_set_is_named(tmp_path):
    # guards: the shape check against the probe size recorded in the manifest
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, {**HEADER, "probe": {"size": 2}})
    store.write_kernel(record(0), torch.eye(2))
    store.write_kernel(record(10), torch.eye(2))
    store.close()
    _rewrite_kernel_file(paths.kernel(root, 10), kernel=torch.eye(3))
    assert store.kernel_file_problem(0) is None
    assert "shape (3, 3) (probe size 2)" in str(store.kernel_file_problem(10))


# ------------------------------------------------------------------ rebuilding the manifest


@pytest.mark.parametrize(
    ("field", "value"),
    IDENTITY_CHANGES,
)
def test_rebuilding_refuses_kernel_files_that_are_all_of_another_identity(tmp_path, field, value):
    # guards: a store whose manifest is gone is still never mixed with another identity's kernels
    root = tmp_path / "s"
    store_with_kernels(root)
    paths.manifest(root).unlink()
    before = _files(root)
    other = StoreIdentity(**{**IDENT.__dict__, field: value})
    with pytest.raises(
        StoreError, match=r"its 2 kernel file\(s\) were made with another spec.*--overwrite"
    ):
        Store.open_for_writing(root, other, HEADER)
    assert _files(root) == before and not paths.manifest(root).exists()


def test_rebuilding_counts_the_kernel_files_of_another_identity_it_leaves_out(tmp_path):
    # guards: the rebuild note says how many files were recovered and how many left out
    root = tmp_path / "s"
    store_with_kernels(root, steps=(0, 10))
    other = StoreIdentity(**{**IDENT.__dict__, "probe_hash": "qqqq"})
    foreign = tmp_path / "foreign"
    store_with_kernels(foreign, other, steps=(5,))
    paths.kernel(foreign, 5).replace(paths.kernel(root, 5))
    paths.manifest(root).unlink()
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.close()
    assert store.steps() == [0, 10]
    assert len(store.warnings) == 1 and store.notes == []
    assert "2 kernel(s) recovered" in store.warnings[0]
    assert "1 other file(s) left out and recomputed" in store.warnings[0]


def test_rebuilding_reads_each_kernel_files_header_once(tmp_path, monkeypatch):
    # the rebuild takes the store_id and the records from one read of each kernel file's header
    # (it read every header twice: once for the id, once more for the records)
    root = tmp_path / "s"
    store_with_kernels(root, steps=(0, 10, 20))
    store_id = json.loads(paths.manifest(root).read_text())["store_id"]
    paths.manifest(root).unlink()
    real_open = store_manifest.safe_open
    opened: list[str] = []

    def counted(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(store_manifest, "safe_open", counted)
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.close()
    assert sorted(opened) == [paths.kernel(root, s).name for s in (0, 10, 20)]
    assert store.steps() == [0, 10, 20] and store.record(10) == record(10)
    assert store.manifest["store_id"] == store_id
    assert "3 kernel(s) recovered" in store.warnings[0]


def test_reopening_writes_a_kernel_orphaned_by_a_kill_into_manifest_json(tmp_path):
    # guards: the adopted record reaches manifest.json on disk (notebooks read it directly)
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    manifest_before = paths.manifest(root).read_text()
    store.write_kernel(record(10), 3 * torch.eye(2))
    store.close()
    paths.manifest(root).write_text(manifest_before)  # killed before the manifest write
    Store.open_for_writing(root, IDENT, HEADER).close()
    on_disk = json.loads(paths.manifest(root).read_text())
    assert list(on_disk["steps"]) == ["0", "10"]
    assert on_disk["steps"]["10"]["fingerprint"] == "f1"


def test_a_damaged_manifest_beside_kernel_files_alone_is_rebuilt(tmp_path):
    # guards: kernels/ without probe.safetensors is enough to count as a store to rebuild
    root = tmp_path / "s"
    store_with_kernels(root)
    assert not paths.probe(root).exists()
    kernel_bytes = paths.kernel(root, 10).read_bytes()
    paths.manifest(root).write_text(paths.manifest(root).read_text()[:40])
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.close()
    assert store.steps() == [0, 10] and store.record(10) == record(10)
    assert "was damaged" in store.warnings[0] and "2 kernel(s) recovered" in store.warnings[0]
    assert paths.kernel(root, 10).read_bytes() == kernel_bytes
    assert Store.open(root).steps() == [0, 10]


#: Manifests of this format with one value of the wrong type (edited or damaged by hand): each
#: used to end a command with a TypeError, KeyError, ValueError or AttributeError traceback.
MALFORMED = [
    ("format_version is text", lambda m: m.update(format_version="1"), "'format_version' is '1'"),
    ("spec_hash missing", lambda m: m.pop("spec_hash"), "'spec_hash' is missing"),
    ("kind not a kind", lambda m: m.update(kind=5), "'kind' is 5"),
    ("steps not an object", lambda m: m.update(steps=[]), "'steps' is []"),
    ("record not an object", lambda m: m["steps"].update({"10": "x"}), "step '10'"),
    ("step key not a step", lambda m: m["steps"].update(abc=m["steps"]["10"]), "step 'abc'"),
    ("record of another step", lambda m: m["steps"].update({"7": m["steps"]["10"]}), "step '7'"),
    ("record field of a wrong type", lambda m: m["steps"]["10"].update(size="10"), "'size' '10'"),
    ("spec not an object", lambda m: m.update(spec="x"), "'spec' is 'x'"),
    ("spec section not an object", lambda m: m["spec"].update(model="x"), "'spec.model' is 'x'"),
    ("probe null", lambda m: m.update(probe=None), "'probe' is None"),
]


@pytest.mark.parametrize(
    ("damage", "named"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_a_manifest_with_a_value_of_the_wrong_type_is_damaged_and_rebuilt(tmp_path, damage, named):
    # guards: a manifest of conetool's format that is not whole is refused on reading, naming the
    # value and the fix, and rebuilt by kernels from the kernel files, which are kept
    root = tmp_path / "s"
    store_with_kernels(root)
    manifest = json.loads(paths.manifest(root).read_text())
    manifest["probe"] = {"size": 2}
    damage(manifest)
    paths.manifest(root).write_text(json.dumps(manifest))
    kernels_before = {p.name: p.read_bytes() for p in (root / paths.KERNELS_DIR).iterdir()}
    with pytest.raises(StoreError, match="not a readable conetool manifest") as refused:
        Store.open(root)
    assert named in str(refused.value) and "rebuilds the manifest" in str(refused.value)
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.close()
    assert "was damaged" in store.warnings[0] and "2 kernel(s) recovered" in store.warnings[0]
    assert store.steps() == [0, 10] and store.record(10) == record(10)
    assert {p.name: p.read_bytes() for p in (root / paths.KERNELS_DIR).iterdir()} == kernels_before


# ------------------------------------------------------------------ eval and layer kernel files

EVAL_A = {"size": 3, "split": "test", "seed": 0, "hash": "ea", "file": "eval.safetensors"}
EVAL_B = {**EVAL_A, "size": 4, "hash": "eb"}
GROUPS = {"first": ["0.weight"], "last": ["2.weight"]}


def _layer_record(groups_hash: str) -> dict:
    return {"patterns": None, "groups": GROUPS, "hash": groups_hash, "dir": "layer_kernels"}


COMPANION_CHANGES = [
    ("step", "11", "step '11' (wanted '10')"),
    ("kind", "full", "kind 'full' (wanted 'trace')"),
    ("dtype", "float64", "dtype 'float64' (wanted 'float32')"),
    ("spec_hash", "zzzz", "spec_hash 'zzzz' (wanted 'aaaa')"),
    ("probe_hash", "zzzz", "probe_hash 'zzzz' (wanted 'pppp')"),
    ("fingerprint", "f9", "fingerprint 'f9' (wanted 'f1')"),
]


@pytest.mark.parametrize(("field", "value", "named"), COMPANION_CHANGES)
def test_an_eval_kernel_differing_in_one_header_field_is_stale(tmp_path, field, value, named):
    # guards: each field of the eval kernel's metadata that makes it current is checked
    root = tmp_path / "s"
    store = store_with_kernels(root)
    store.record_eval(EVAL_A)
    for step in (0, 10):
        store.write_eval_kernel(step, torch.ones(3, 2), "ea", "f1")
    assert store.eval_kernel_problem(10, "ea", "f1") is None
    _rewrite_kernel_file(paths.eval_kernel(root, 10), **{field: value})
    problem = store.eval_kernel_problem(10, "ea", "f1")
    assert problem is not None and str(paths.eval_kernel(root, 10)) in problem
    assert named in problem
    assert store.eval_kernel_problem(0, "ea", "f1") is None
    assert "eval_hash 'ea' (wanted 'eb')" in str(store.eval_kernel_problem(0, "eb", "f1"))


def test_an_eval_kernel_whose_tensor_is_not_of_its_metadatas_dtype_is_stale(tmp_path):
    # guards: a float64 tensor under float32 metadata (re-saved outside conetool) passed the
    # header check, so kernels kept it and spectrum used it
    root = tmp_path / "s"
    store = store_with_kernels(root)
    store.record_eval(EVAL_A)
    store.write_eval_kernel(10, torch.ones(3, 2, dtype=torch.float64), "ea", "f1")
    problem = str(store.eval_kernel_problem(10, "ea", "f1"))
    assert "is stale: a float64 tensor (its metadata and the store: float32)" in problem


def test_an_eval_kernel_of_another_eval_size_is_stale(tmp_path):
    # guards: the eval kernel's rows are checked against the recorded evaluation set's size
    root = tmp_path / "s"
    store = store_with_kernels(root)
    store.record_eval(EVAL_A)
    store.write_eval_kernel(0, torch.ones(3, 2), "ea", "f1")
    store.write_eval_kernel(10, torch.ones(4, 2), "ea", "f1")
    assert store.eval_kernel_problem(0, "ea", "f1") is None
    assert "shape (4, 2) (eval size 3)" in str(store.eval_kernel_problem(10, "ea", "f1"))


@pytest.mark.parametrize(("field", "value", "named"), COMPANION_CHANGES)
def test_a_layer_file_differing_in_one_header_field_is_stale(tmp_path, field, value, named):
    # guards: each field of the layer file's metadata that makes it current is checked
    root = tmp_path / "s"
    store = store_with_kernels(root)
    store.record_layer_groups(_layer_record("ga"))
    parts = {"first": torch.eye(2), "last": torch.eye(2)}
    for step in (0, 10):
        store.write_layer_kernels(step, parts, GROUPS, "ga", "f1")
    assert store.layer_kernel_problem(10, "ga", "f1") is None
    assert store.current_layer_steps() == [0, 10]
    _rewrite_kernel_file(paths.layer_kernel(root, 10), **{field: value})
    problem = store.layer_kernel_problem(10, "ga", "f1")
    assert problem is not None and str(paths.layer_kernel(root, 10)) in problem
    assert named in problem
    assert store.current_layer_steps() == [0]


def test_a_layer_file_missing_a_group_it_names_is_stale(tmp_path):
    # guards: a layer file must hold one tensor per group its metadata names
    root = tmp_path / "s"
    store = store_with_kernels(root)
    store.record_layer_groups(_layer_record("ga"))
    store.write_layer_kernels(10, {"first": torch.eye(2)}, GROUPS, "ga", "f1")
    problem = store.layer_kernel_problem(10, "ga", "f1")
    assert "its tensors are not the groups it names" in str(problem)
    assert store.current_layer_steps() == []


def test_another_eval_set_deletes_exactly_the_eval_kernels_of_the_old_one(tmp_path):
    # guards: replacing the eval set unlinks the old set's files, keeps the new set's
    root = tmp_path / "s"
    store = store_with_kernels(root)
    assert store.record_eval(EVAL_A) == []  # the first set replaces nothing
    store.write_eval_kernel(0, torch.ones(3, 2), "ea", "f1")
    store.write_eval_kernel(10, torch.ones(4, 2), "eb", "f1")  # already of the new set
    kept = paths.eval_kernel(root, 10).read_bytes()
    notes = store.record_eval(EVAL_B)
    assert len(notes) == 1 and "its 1 eval kernel(s)" in notes[0] and "deleted" in notes[0]
    assert not paths.eval_kernel(root, 0).exists()
    assert paths.eval_kernel(root, 10).read_bytes() == kept
    assert json.loads(paths.manifest(root).read_text())["eval"] == EVAL_B
    # the same set recorded under another file name deletes nothing and says nothing
    assert store.record_eval({**EVAL_B, "file": "renamed.safetensors"}) == []
    assert paths.eval_kernel(root, 10).read_bytes() == kept


def test_another_grouping_deletes_exactly_the_layer_files_of_the_old_one(tmp_path):
    # guards: replacing the parameter groups unlinks the old grouping's files only
    root = tmp_path / "s"
    store = store_with_kernels(root)
    assert store.record_layer_groups(_layer_record("ga")) == []
    parts = {"first": torch.eye(2), "last": torch.eye(2)}
    store.write_layer_kernels(0, parts, GROUPS, "ga", "f1")
    store.write_layer_kernels(10, parts, GROUPS, "gb", "f1")
    kept = paths.layer_kernel(root, 10).read_bytes()
    notes = store.record_layer_groups(_layer_record("gb"))
    assert len(notes) == 1 and "the 1 layer kernel file(s)" in notes[0]
    assert not paths.layer_kernel(root, 0).exists()
    assert paths.layer_kernel(root, 10).read_bytes() == kept


# ------------------------------------------------------------------ what a rerun recomputes


def _kernel_bytes(root: Path) -> dict[int, bytes]:
    return {step: paths.kernel(root, step).read_bytes() for step in (0, 5, 10)}


def test_a_checkpoint_replaced_under_its_old_mtime_is_recomputed(run, tmp_path):
    # guards: the cheap skip needs both size and mtime unchanged (rsync -t keeps the mtime)
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernel_bytes(root)
    path = paths.checkpoint(run, 5)
    old = path.stat()
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata={**metadata(path), "copied_from": "another run"})
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert path.stat().st_size != old.st_size and path.stat().st_mtime_ns == old.st_mtime_ns
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [5] and again.skipped == [0, 10]
    after = _kernel_bytes(root)
    assert after[5] != before[5] and (after[0], after[10]) == (before[0], before[10])


def test_a_step_read_from_another_file_of_the_same_size_and_mtime_is_recomputed(
    run, tmp_path, monkeypatch
):
    # Was: skipped, its kernel the old file's: the cheap skip compared size and mtime only, and
    # final.safetensors (which stores step 10, read for it once step_000010 is gone: a copy
    # standing in) has both of the old file's (rsync -t, tar: times to the second).
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernel_bytes(root)
    path = paths.checkpoint(run, 10)
    old = path.stat()
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    final = run / "final.safetensors"
    save_file(state, str(final), metadata=metadata(path))
    os.utime(final, ns=(old.st_atime_ns, old.st_mtime_ns))
    path.rename(tmp_path / path.name)
    assert final.stat().st_size == old.st_size and final.stat().st_mtime_ns == old.st_mtime_ns
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [10] and again.skipped == [0, 5]
    assert _kernel_bytes(root)[10] != before[10]
    assert [Path(p).name for p in Store.open(root).record(10).source] == ["final.safetensors"]
    import conetool.pipeline.kernels_loop as loop

    read = []
    real = loop.read_checkpoint
    monkeypatch.setattr(loop, "read_checkpoint", lambda ref: read.append(ref.step) or real(ref))
    moved = tmp_path / "moved"  # the same files elsewhere: still skipped unread
    run.rename(moved)
    assert kernels(moved, store=root, device="cpu").skipped == [0, 5, 10] and read == []


def test_a_skipped_step_records_the_file_that_gives_it_now(run, tmp_path, monkeypatch):
    # Was: a step skipped as unchanged kept the record's old path: a run moved with its store
    # kept naming the old place (the noise floor of S, read from the last step's record, was
    # "not there to rebuild the model from" after kernels had just read the new place), and a
    # copy of the same bytes read in place of a file gone was read again at every rerun.
    import conetool.pipeline.kernels_loop as loop
    from conetool.pipeline.noise_estimate import estimate_noise_floor

    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernel_bytes(root)
    moved = tmp_path / "moved"
    run.rename(moved)
    read: list[int] = []
    real = loop.read_checkpoint
    monkeypatch.setattr(loop, "read_checkpoint", lambda ref: read.append(ref.step) or real(ref))
    assert kernels(moved, store=root, device="cpu").skipped == [0, 5, 10] and read == []
    records = Store.open(root).records()
    assert {s: r.source for s, r in records.items()} == {
        s: [str(paths.checkpoint(moved, s).resolve())] for s in (0, 5, 10)
    }
    noise, why = estimate_noise_floor(Store.open(root), device="cpu")
    assert why is None and noise is not None
    assert noise["checkpoint"] == str(paths.checkpoint(moved, 10).resolve())
    final = moved / "final.safetensors"  # the same bytes under another name: read once
    paths.checkpoint(moved, 10).rename(final)
    again = kernels(moved, store=root, device="cpu")
    assert again.skipped == [0, 5, 10] and again.warnings == [] and read == [10]
    assert Store.open(root).record(10).source == [str(final.resolve())]
    assert kernels(moved, store=root, device="cpu").skipped == [0, 5, 10] and read == [10]
    assert _kernel_bytes(root) == before


def test_a_trainers_final_model_of_the_same_size_and_mtime_as_its_folder_is_recomputed(
    run, tmp_path
):
    # Was: skipped, its kernel the old folder's: the cheap skip compared the file name only for
    # a flat file, and the final model.safetensors (global_step 10, read once checkpoint-10/ is
    # gone) is named as checkpoint-10/model.safetensors, with its size and mtime (rsync -t, tar).
    for step in STEPS:  # the run as a Trainer's output directory
        folder = run / f"checkpoint-{step}"
        folder.mkdir()
        paths.checkpoint(run, step).rename(folder / "model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernel_bytes(root)
    path = run / "checkpoint-10" / "model.safetensors"
    old = path.stat()
    state = {k: v + 0.05 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    final = run / "model.safetensors"
    save_file(state, str(final), metadata=metadata(path))
    os.utime(final, ns=(old.st_atime_ns, old.st_mtime_ns))
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    shutil.rmtree(path.parent)
    assert final.stat().st_size == old.st_size and final.stat().st_mtime_ns == old.st_mtime_ns
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [10] and again.skipped == [0, 5]
    assert _kernel_bytes(root)[10] != before[10]
    moved = tmp_path / "moved"  # the same files elsewhere: still skipped
    run.rename(moved)
    assert kernels(moved, store=root, device="cpu").skipped == [0, 5, 10]


def test_a_touched_checkpoint_whose_kernel_file_does_not_match_is_recomputed(run, tmp_path):
    # guards: after reading a touched checkpoint, the kernel file's header is still checked
    root, other = tmp_path / "s", tmp_path / "other"
    kernels(run, store=root, device="cpu")
    kernels(run, store=other, probe_size=4, device="cpu")
    shutil.copy(paths.kernel(other, 5), paths.kernel(root, 5))  # a 4 x 4 kernel in a 6 x 6 store
    path = paths.checkpoint(run, 5)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # `touch`
    before = _kernel_bytes(root)
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [5] and again.skipped == [0, 10]
    assert Store.open(root).load_kernel(5).shape == (6, 6)
    assert Store.open(root).kernel_file_problem(5) is None
    after = _kernel_bytes(root)
    assert (after[0], after[10]) == (before[0], before[10])


def test_a_touched_but_unchanged_checkpoint_is_not_recomputed(run, tmp_path):
    # guards: a new mtime alone only makes the checkpoint be read; its fingerprint decides
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernel_bytes(root)
    path = paths.checkpoint(run, 10)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [] and again.skipped == [0, 5, 10]
    assert _kernel_bytes(root) == before


def test_a_rewritten_shard_of_a_sharded_checkpoint_is_recomputed(run, tmp_path):
    # guards: the cheap skip compares the newest mtime of all the shards, not the oldest
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(paths.spec(run), paths.spec(sharded))
    for step in (0, 5, 10):
        state = load_file(str(paths.checkpoint(run, step)))
        keys = sorted(state)
        write_hf_sharded(sharded, state, [keys[:2], keys[2:]], prefix=f"step_{step:06d}")
    root = tmp_path / "s"
    assert kernels(sharded, store=root, device="cpu").computed == [0, 5, 10]
    before = _kernel_bytes(root)
    second = sharded / "step_000005-00002-of-00002.safetensors"
    old = second.stat()
    changed = {k: v + 0.05 for k, v in load_file(str(second)).items()}
    save_file(changed, str(second), metadata=metadata(second))
    os.utime(second, ns=(old.st_atime_ns, old.st_mtime_ns + 10**9))  # written a second later
    assert second.stat().st_size == old.st_size
    again = kernels(sharded, store=root, device="cpu")
    assert again.computed == [5] and again.skipped == [0, 10]
    assert _kernel_bytes(root)[5] != before[5]


def test_overwrite_starts_afresh_without_the_old_stores_eval_set_or_groups(run, tmp_path):
    # guards: --overwrite does not inherit the replaced store's remembered --eval-size/--per-layer
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3, per_layer=True)
    fresh = kernels(run, store=root, device="cpu", kind="sum", overwrite=True)
    assert fresh.computed == [0, 5, 10] and fresh.eval_size is None and fresh.layer_groups is None
    assert not any("keeping the store's" in said for said in fresh.notes + fresh.warnings)
    manifest = json.loads(paths.manifest(root).read_text())
    assert manifest["kind"] == "sum" and "eval" not in manifest and "layer_groups" not in manifest
    assert not paths.eval_set(root).exists() and not paths.eval_kernels_dir(root).exists()
    assert not paths.layer_kernels_dir(root).exists()


def test_a_rerun_with_nothing_to_do_reads_no_checkpoint(run, tmp_path, monkeypatch):
    # guards: the cheap pre-check of eval and layer files uses the stored record's fingerprint
    import conetool.pipeline.kernels_loop as loop

    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3, per_layer=True)
    read = []
    real = loop.read_checkpoint
    monkeypatch.setattr(loop, "read_checkpoint", lambda ref: read.append(ref.step) or real(ref))
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [] and again.eval_computed == [] and again.layer_computed == []
    assert again.skipped == [0, 5, 10] and read == []
    assert again.kernel_shape == (6, 6)  # from the store, as nothing was computed


def _rewrite_same_size(path: Path, mtime_ns: int) -> None:
    """Rewrite a checkpoint with other weights and the same size, dated ``mtime_ns``."""
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    size = path.stat().st_size
    save_file(state, str(path), metadata=metadata(path))
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert path.stat().st_size == size


def test_a_checkpoint_rewritten_while_its_kernel_is_computed_is_recomputed_next_time(
    run, tmp_path, monkeypatch
):
    # guards: the record's mtime is the one of the bytes read (taken before reading), not the
    # file's mtime after the kernel was computed: a checkpoint rewritten in between (same size,
    # as a run's checkpoints are) would otherwise be recorded as current and skipped next time
    import conetool.pipeline.kernels_loop as loop

    root = tmp_path / "s"
    path = paths.checkpoint(run, 5)
    applied: list[int] = []  # the step whose weights the model holds
    real_apply, real_ntk = loop.apply_checkpoint, loop.empirical_ntk

    def apply(model, loaded, **kwargs):
        applied.append(loaded.ref.step)
        return real_apply(model, loaded, **kwargs)

    def ntk_then_rewrite(*args, **kwargs):
        kernel = real_ntk(*args, **kwargs)
        if applied[-1] == 5 and path.stat().st_mtime_ns == old_mtime:
            _rewrite_same_size(path, old_mtime + 10**9)  # a new save of step 5 lands now
        return kernel

    old_mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(loop, "apply_checkpoint", apply)
    monkeypatch.setattr(loop, "empirical_ntk", ntk_then_rewrite)
    first = kernels(run, store=root, device="cpu")
    assert first.computed == [0, 5, 10] and path.stat().st_mtime_ns != old_mtime
    monkeypatch.undo()
    stale = Store.open(root).load_kernel(5)
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [5] and again.skipped == [0, 10]
    assert not torch.equal(Store.open(root).load_kernel(5), stale)


def test_a_touched_checkpoint_is_read_once_then_skipped_by_its_new_mtime(
    run, tmp_path, monkeypatch
):
    # a new mtime alone (cp without -p, touch) makes the checkpoint be read, its fingerprint
    # found the same, and the record's mtime refreshed: the next rerun reads nothing
    import conetool.pipeline.kernels_loop as loop

    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _kernel_bytes(root)
    for step in (0, 10):
        path = paths.checkpoint(run, step)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    read: list[int] = []
    real = loop.read_checkpoint
    monkeypatch.setattr(loop, "read_checkpoint", lambda ref: read.append(ref.step) or real(ref))
    once = kernels(run, store=root, device="cpu")
    assert once.computed == [] and sorted(read) == [0, 10]
    records = Store.open(root).records()
    for step in (0, 10):
        assert records[step].mtime_ns == paths.checkpoint(run, step).stat().st_mtime_ns
    read.clear()
    twice = kernels(run, store=root, device="cpu")
    assert twice.computed == [] and twice.skipped == [0, 5, 10] and read == []
    assert _kernel_bytes(root) == before  # the kernel files are not rewritten for this


def test_a_touched_unchanged_checkpoint_is_not_loaded_into_the_model(run, tmp_path, monkeypatch):
    # a touched checkpoint whose fingerprint is its kernel's is read (to hash it) but not loaded
    # into the model: nothing is computed from it; one whose eval kernel is missing still is
    import conetool.pipeline.kernels_loop as loop

    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=4)
    applied: list[int] = []
    real = loop.apply_checkpoint
    monkeypatch.setattr(
        loop,
        "apply_checkpoint",
        lambda model, loaded, **kw: applied.append(loaded.ref.step) or real(model, loaded, **kw),
    )
    for step in (0, 5, 10):
        path = paths.checkpoint(run, step)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    paths.eval_kernel(root, 5).unlink()
    again = kernels(run, store=root, device="cpu")
    assert again.computed == [] and again.skipped == [0, 5, 10]
    assert again.eval_computed == [5] and applied == [5]
    records = Store.open(root).records()
    for step in (0, 5, 10):
        assert records[step].mtime_ns == paths.checkpoint(run, step).stat().st_mtime_ns


def test_another_run_with_the_same_spec_is_refused_before_anything_changes(run, tmp_path):
    # guards: the identity (spec, probe, kind, dtype) does not tell two runs of one spec apart;
    # their checkpoints do: recomputing the differing steps from the other directory and keeping
    # the others would leave kernels of two runs in one store
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _files(root)
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    path = paths.checkpoint(other, 5)
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata=metadata(path))  # the same size, other weights
    for overwrite in (False, True):  # --overwrite replaces only a store of another identity
        with pytest.raises(
            StoreError, match=r"another run.*store of its own: --store OTHER_STORE.*delete"
        ) as caught:
            kernels(other, store=root, device="cpu", overwrite=overwrite)
        assert str(run.resolve()) in str(caught.value)
        assert f"(5; step 5: {path}, its bytes differ (sha256))" in str(caught.value)
        assert _files(root) == before  # nothing was changed
    assert kernels(other, store=tmp_path / "own", device="cpu").computed == [0, 5, 10]


def test_the_same_run_converted_to_other_files_is_refused_with_a_true_message(run, tmp_path):
    # the store's run converted from .safetensors to torch.save files (the same tensors) was
    # refused as 'another run, whose kernels would mix with that run's': runs are told by their
    # files' bytes (no identity of the weights is recorded), so it stays refused, --overwrite or
    # not, and the message says the files differ and how, that a converted copy is refused too,
    # and what works (a store of its own; deleting the store), not --overwrite
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    before = _files(root)
    converted = tmp_path / "converted"
    converted.mkdir()
    shutil.copy(paths.spec(run), paths.spec(converted))
    for step in STEPS:
        state = load_file(str(paths.checkpoint(run, step)))
        torch.save({"model_state_dict": state, "step": step}, converted / f"ckpt_{step}.pt")
    for overwrite in (False, True):
        with pytest.raises(StoreError) as caught:
            kernels(converted, store=root, device="cpu", overwrite=overwrite)
        said = " ".join(str(caught.value).split())
        assert "whose kernels would mix" not in said, said
        size = (converted / "ckpt_0.pt").stat().st_size
        recorded = paths.checkpoint(run, 0).stat().st_size
        assert "has other checkpoint files at 3 of the steps it holds (0, 5, 10; step 0: " in said
        assert f"ckpt_0.pt, it has {size} bytes, the record {recorded}): another run, or" in said
        assert (
            "converted to other files (.safetensors to .pt) or saved again is refused too" in said
        )
        assert "--store OTHER_STORE" in said and f"or delete {root} to compute" in said, said
        assert "(--overwrite does not: it replaces only a store of another spec" in said, said
        assert _files(root) == before  # nothing was changed
    assert kernels(converted, store=tmp_path / "own", device="cpu").computed == STEPS


def test_a_kernels_run_reads_the_manifest_once_before_opening_the_store(run, tmp_path, monkeypatch):
    # Was three reads of manifest.json per run: the plan's (the options the store recorded),
    # the mixed-run check's, and the one under the store's lock. The check now takes the plan's.
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", steps="0:5")
    reads = manifest_reads(monkeypatch)
    for overwrite in (False, True):  # the same store: --overwrite clears nothing
        reads.clear()
        result = kernels(run, store=root, device="cpu", overwrite=overwrite)
        assert result.computed == ([10] if not overwrite else []), result.computed
        assert reads == [paths.manifest(root)] * 2  # once to plan, once under the lock


def test_a_run_that_moved_is_the_same_run(run, tmp_path):
    # the same files elsewhere, with new modification times (cp without -p): read, found the
    # same, nothing recomputed
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, copy_function=shutil.copy)  # no times kept
    for step in (0, 5, 10):
        path = paths.checkpoint(moved, step)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    again = kernels(moved, store=root, device="cpu")
    assert again.computed == [] and again.skipped == [0, 5, 10]


# ------------------------------------------------------------------ a store replaced while read


OTHER = StoreIdentity(spec_hash="bbbb", probe_hash="pppp", kind="trace", dtype="float32")


def test_a_kernel_read_after_the_store_was_replaced_is_named_as_such(tmp_path):
    # kernels --overwrite clears the store under an open reader: the kernel file it looks for is
    # gone (was: "cannot be read ... Recompute it", advice about a damaged file), and once the new
    # store writes that step again the file at that path is the new store's kernel (was: returned
    # silently, a kernel of another spec)
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    with Store.open_for_writing(root, OTHER, HEADER, overwrite=True):
        pass
    with pytest.raises(StoreReplacedError, match=r"was replaced while it was read.*Open it again"):
        reader.load_kernel(0)
    store_with_kernels(root, OTHER, steps=(0,))
    with pytest.raises(StoreReplacedError, match="kernels --overwrite cleared it"):
        reader.load_kernel(0)
    assert torch.equal(Store.open(root).load_kernel(0), torch.eye(2))  # a new reader reads it


def test_a_store_cleared_and_started_again_with_the_same_identity_is_told_apart(tmp_path):
    # --overwrite of a store whose manifest is damaged starts one of the same identity: the
    # reader of the old one must not take the new kernels for its own (the store_id differs)
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    assert not reader.replaced()
    paths.manifest(root).write_text("{ damaged")
    with Store.open_for_writing(root, IDENT, HEADER, overwrite=True) as store:
        store.write_kernel(dataclasses.replace(record(0), fingerprint="f2"), 5 * torch.eye(2))
    assert reader.replaced() and not Store.open(root).replaced()
    with pytest.raises(StoreReplacedError):
        reader.load_kernel(0)


def test_opening_a_store_that_kernels_is_clearing_says_so(tmp_path, monkeypatch):
    root = tmp_path / "s"
    store_with_kernels(root)
    # the manifest goes between the check that it is there and its reading (was: "not a
    # readable conetool manifest ... edited or damaged by hand")
    real = store_opening.read_manifest

    def read_after_clearing(path):
        path.unlink()
        return real(path)

    monkeypatch.setattr(store_opening, "read_manifest", read_after_clearing)
    with pytest.raises(StoreReplacedError, match=r"manifest.json was removed while it was being"):
        Store.open(root)
    monkeypatch.undo()
    # the manifest is gone while a kernels run holds the store (was: "deleted? Rebuild it")
    lock = StoreLock.acquire(root)
    try:
        with pytest.raises(
            StoreError, match=rf"conetool kernels is writing it \(pid {os.getpid()}"
        ):
            Store.open(root)
    finally:
        lock.release()
    with pytest.raises(StoreError, match="deleted"):  # nobody writes it: rebuild it
        Store.open(root)


def test_overwrite_waits_for_a_reader_writing_its_results(tmp_path, monkeypatch):
    # the clearing and a reader's result writes exclude each other: checking the store before
    # writing is not enough, the clearing could fall between the check and the writes (and the
    # results land in the new store). Made visible by turning the wait into a refusal.
    root = tmp_path / "s"
    store_with_kernels(root)
    reader = Store.open(root)
    with reader.writing_results("distance"):
        (root / "distance").mkdir()
        (root / "distance" / "summary.json").write_text("{}")
        before = _files(root)
        real = fcntl.flock
        monkeypatch.setattr(fcntl, "flock", lambda fd, op: real(fd, op | fcntl.LOCK_NB))
        with pytest.raises(BlockingIOError):
            Store.open_for_writing(root, OTHER, HEADER, overwrite=True)
        monkeypatch.undo()
        assert _files(root) == before  # nothing cleared while the reader writes
    with Store.open_for_writing(root, OTHER, HEADER, overwrite=True):  # then it goes ahead
        assert not (root / "distance").exists()
    with pytest.raises(StoreReplacedError, match="conetool distance stopped and wrote nothing"):
        with reader.writing_results("distance"):
            raise AssertionError("a replaced store must not be written to")


def _watch_flock(monkeypatch, root: Path, seen) -> None:
    """Replace ``fcntl.flock`` by one that calls ``seen(thread name, "before"/"after", whether
    the file is the results lock, operation)`` around each call."""
    real = fcntl.flock

    def flock(fd, operation):
        is_lock = os.fstat(fd).st_ino == os.stat(paths.results_lock(root)).st_ino
        name = threading.current_thread().name
        seen(name, "before", is_lock, operation)
        real(fd, operation)
        seen(name, "after", is_lock, operation)

    monkeypatch.setattr(fcntl, "flock", flock)


def test_a_reader_arriving_while_the_clearing_waits_goes_after_it(tmp_path, monkeypatch):
    # A shared flock is granted while an exclusive one waits: readers whose holds overlap kept
    # kernels --overwrite's clearing waiting as long as they came. The clearing holds the gate
    # while it waits, and a reader passes the gate before it takes the results lock.
    root = tmp_path / "s"
    root.mkdir()
    clearing_waits = threading.Event()  # the clearing is at the results lock itself
    reader_settled = threading.Event()  # the late reader is at the gate, or holds the lock
    order: list[str] = []

    def seen(name, when, is_lock, operation):
        if name == "clearing" and when == "before" and is_lock and operation & fcntl.LOCK_EX:
            clearing_waits.set()
        if name == "late reader" and (when == "before") != is_lock:
            reader_settled.set()

    _watch_flock(monkeypatch, root, seen)

    def take(name: str, exclusive: bool) -> None:
        with results_lock(root, exclusive=exclusive):
            order.append(name)

    threads = [
        threading.Thread(target=take, args=(name, name == "clearing"), name=name, daemon=True)
        for name in ("clearing", "late reader")
    ]
    with results_lock(root, exclusive=False):  # a reader writing its results
        threads[0].start()
        assert clearing_waits.wait(60)
        threads[1].start()
        assert reader_settled.wait(60)
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert order == ["clearing", "late reader"]


def test_a_reader_holding_the_results_lock_takes_it_again_while_the_clearing_waits(
    tmp_path, monkeypatch
):
    # The gate is not for a thread that already holds the lock shared: the clearing at the gate
    # waits for that hold, so waiting at the gate would wait for itself.
    root = tmp_path / "s"
    root.mkdir()
    clearing_waits = threading.Event()

    def seen(name, when, is_lock, operation):
        if name == "clearing" and when == "before" and is_lock and operation & fcntl.LOCK_EX:
            clearing_waits.set()

    _watch_flock(monkeypatch, root, seen)
    order: list[str] = []

    def clearing() -> None:
        with results_lock(root, exclusive=True):
            order.append("clearing")

    def reader() -> None:
        with results_lock(root, exclusive=False):
            waiting = threading.Thread(target=clearing, name="clearing", daemon=True)
            waiting.start()
            assert clearing_waits.wait(60)
            with results_lock(root, exclusive=False):  # matrix_cache inside report, say
                order.append("nested")
        waiting.join(60)

    holder = threading.Thread(target=reader, name="reader", daemon=True)
    holder.start()
    holder.join(60)
    assert not holder.is_alive()
    assert order == ["nested", "clearing"]


# ------------------------------------------------------------------ a rebuilt manifest keeps the store


def test_a_manifest_rebuilt_from_the_kernel_files_is_the_same_store(tmp_path):
    # A manifest.json removed by hand (or damaged) and rebuilt by the next kernels run from the
    # kernel files: the same store, so a reader opened before and a switch sweep under way go
    # on (the rebuilt manifest had a new random store_id, taken for a kernels --overwrite).
    root = tmp_path / "s"
    store_with_kernels(root)
    manifest = json.loads(paths.manifest(root).read_text())
    for step in (0, 10):  # each kernel file carries its store's id
        with safe_open(str(paths.kernel(root, step)), framework="pt") as handle:
            assert handle.metadata()["store_id"] == manifest["store_id"]
    reader = Store.open(root)
    sweep = SwitchStore.begin(root, manifest)
    for damage in ("remove", "damage"):
        if damage == "remove":
            paths.manifest(root).unlink()
        else:
            paths.manifest(root).write_text("{ damaged")
        rebuilt = Store.open_for_writing(root, IDENT, HEADER)
        rebuilt.close()
        assert any("rebuilt it from the kernel files" in said for said in rebuilt.warnings)
        assert json.loads(paths.manifest(root).read_text())["store_id"] == manifest["store_id"]
        assert not reader.replaced() and not sweep.replaced()
        assert torch.equal(reader.load_kernel(10), 11 * torch.eye(2))
    # a store cleared by --overwrite and started again is still another store, for both
    Store.open_for_writing(root, OTHER, HEADER, overwrite=True).close()
    assert reader.replaced() and sweep.replaced()


def test_a_store_made_with_another_probe_size_names_the_probe_size_that_adds_to_it(run, tmp_path):
    """Rules out: a store made with kernels --probe-size 4, rerun without it (the spec's 6), was
    refused naming only two hashes: the message offered another --store or --overwrite (which
    deletes the kernels), never the --probe-size that adds to the store."""
    root = tmp_path / "s"
    kernels(run, store=root, probe_size=4, device="cpu")
    with pytest.raises(StoreError) as refused:
        kernels(run, store=root, device="cpu")
    assert "To add to it, pass --probe-size 4. " in str(refused.value)
    with pytest.raises(StoreError) as refused:  # and another kind: both flags
        kernels(run, store=root, kind="sum", device="cpu")
    assert "To add to it, pass --probe-size 4 --kind trace. " in str(refused.value)
    again = kernels(run, store=root, probe_size=4, device="cpu")  # the advice, followed
    assert again.computed == [] and again.skipped == STEPS
    # a spec that differs in more than the probe size: no flag makes it the store's
    stored = json.loads(paths.manifest(root).read_text())["spec"]
    wanted = json.loads(json.dumps(stored))
    wanted["probe"]["size"], wanted["train"]["lr"] = 6, 0.05
    ident = dataclasses.replace(IDENT, spec_hash="b" * 16, probe_hash="c" * 16)
    message = store_manifest.mixed_message(root, IDENT, ident, 3, (stored, wanted))
    assert "To add to it" not in message
    wanted["train"]["lr"] = stored["train"]["lr"]
    message = store_manifest.mixed_message(root, IDENT, ident, 3, (stored, wanted))
    assert "To add to it, pass --probe-size 4. " in message


def test_kernel_files_of_two_stores_give_the_rebuilt_manifest_a_new_id(tmp_path):
    # Files that disagree on the store they came from (copied in from another store of the same
    # identity) do not name one: the rebuilt manifest gets a new id, as before ids were carried.
    root, other = tmp_path / "s", tmp_path / "t"
    store_with_kernels(root, steps=(0,))
    store_with_kernels(other, steps=(10,))
    shutil.copy(paths.kernel(other, 10), paths.kernel(root, 10))
    first = json.loads(paths.manifest(root).read_text())["store_id"]
    second = json.loads(paths.manifest(other).read_text())["store_id"]
    paths.manifest(root).unlink()
    Store.open_for_writing(root, IDENT, HEADER).close()
    assert json.loads(paths.manifest(root).read_text())["store_id"] not in (first, second)


@pytest.mark.parametrize(("field", "value"), IDENTITY_CHANGES)
def test_a_refused_identity_names_the_flag_that_matches_the_store(tmp_path, field, value):
    """A store of trace kernels refused for a --kind full run: the message offered another
    --store or --overwrite (which deletes the kernels), never the flag that adds to the store."""
    root = tmp_path / "s"
    store_with_kernels(root)
    with pytest.raises(StoreError) as refused:
        Store.open_for_writing(root, dataclasses.replace(IDENT, **{field: value}), HEADER)
    message = str(refused.value)
    assert "(it deletes those 2 kernels and the results made from them)" in message
    if field in ("kind", "dtype"):  # a flag alone makes this run the store's
        assert f"To add to it, pass --{field} {getattr(IDENT, field)}. " in message
    else:  # the spec or the probe set: no flag to name
        assert "To add to it" not in message


def test_a_store_on_a_file_system_without_flock_is_opened_unlocked(tmp_path, monkeypatch):
    """NFS without its lock daemon refuses flock with ENOLCK (Lustre without the flock mount
    option, with ENOSYS): the store is written unlocked, as the readers' results lock already
    is there, not refused with a raw OSError 'No locks available'."""

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    store = Store.open_for_writing(tmp_path / "store", IDENT, HEADER)
    try:
        assert paths.manifest(tmp_path / "store").is_file()
    finally:
        store.close()
