"""The store contract: atomic kernels, exact round trips, no mixing, recovery after a kill."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from synthetic_store import HEADER, IDENT, IDENTITY_CHANGES, record, store_with_kernels

from conetool import paths
from conetool.errors import StoreError
from conetool.store import Store, StoreIdentity
from conetool.store_manifest import mixed_engines_note


def manifest_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths of every manifest.json read through ``Path.read_text`` from now on (the list
    fills as they are read; clear it to count again)."""
    real_read_text = Path.read_text
    reads: list[Path] = []

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == paths.MANIFEST_NAME:
            reads.append(self)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


def test_round_trip_is_exact(tmp_path):
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    kernel = torch.randn(5, 5, dtype=torch.float32)
    store.write_kernel(record(200), kernel)
    store.write_kernel(record(100), kernel * 2)
    again = Store.open(tmp_path / "s")
    assert again.steps() == [100, 200]
    assert torch.equal(again.load_kernel(200), kernel)
    assert again.identity == IDENT
    assert again.record(100) == record(100)
    store.close()  # writes what write_kernel left out of manifest.json
    manifest = json.loads(paths.manifest(tmp_path / "s").read_text())
    assert list(manifest["steps"]) == ["100", "200"]
    assert manifest["checkpoints"] == "/runs/x" and manifest["layout"].startswith("(n, n)")


def test_is_current_follows_fingerprint_and_kernel_file(tmp_path):
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    store.write_kernel(record(0, "f1"), torch.eye(3))
    assert store.is_current(0, "f1")
    assert not store.is_current(0, "f2")  # the checkpoint changed
    assert not store.is_current(5, "f1")  # never computed
    paths.kernel(tmp_path / "s", 0).unlink()
    assert not store.is_current(0, "f1")  # kernel file lost


@pytest.mark.parametrize(
    ("field", "value"),
    IDENTITY_CHANGES,
)
def test_another_identity_is_refused_then_overwritten(tmp_path, field, value):
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    (tmp_path / "s" / "notes.txt").write_text("mine")
    other = StoreIdentity(**{**IDENT.__dict__, field: value})
    with pytest.raises(
        StoreError, match=rf"holds 1 kernels made with another {field} .*--overwrite"
    ):
        Store.open_for_writing(tmp_path / "s", other, HEADER)
    assert paths.kernel(tmp_path / "s", 0).exists()  # refusing lost nothing
    fresh = Store.open_for_writing(tmp_path / "s", other, HEADER, overwrite=True)
    assert fresh.steps() == [] and not paths.kernel(tmp_path / "s", 0).exists()
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"  # not conetool's: kept


def test_kernel_written_before_a_kill_is_adopted(tmp_path):
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    manifest_before = paths.manifest(tmp_path / "s").read_text()
    store.write_kernel(record(10), 3 * torch.eye(2))
    # Simulate a kill between the kernel write and the manifest write.
    paths.manifest(tmp_path / "s").write_text(manifest_before)
    again = Store.open(tmp_path / "s")
    assert again.steps() == [0, 10]
    assert again.record(10) == record(10)
    assert torch.equal(again.load_kernel(10), 3 * torch.eye(2))


def _as_written_before_engines_were_recorded(root: Path) -> None:
    """Strip ``engine`` and ``device`` from the manifest's records and the kernel files' own,
    as a conetool before them wrote both."""
    manifest = json.loads(paths.manifest(root).read_text())
    for raw in manifest["steps"].values():
        del raw["engine"], raw["device"]
    paths.manifest(root).write_text(json.dumps(manifest))
    for path in sorted((root / paths.KERNELS_DIR).glob("step_*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            meta, kernel = handle.metadata(), handle.get_tensor("kernel")
        embedded = json.loads(meta["record"])
        del embedded["engine"], embedded["device"]
        save_file({"kernel": kernel}, str(path), metadata={**meta, "record": json.dumps(embedded)})


def test_kernels_from_before_engines_were_recorded_still_match_their_records(tmp_path):
    """Records without ``engine`` and ``device`` read back with None; their kernel files still
    match them (not recomputed as damaged), with the manifest as written or rebuilt; a kernel
    added with them makes the store mixed, and the note names the unrecorded ones."""
    root = tmp_path / "s"
    store_with_kernels(root, steps=(0, 10))
    _as_written_before_engines_were_recorded(root)
    old = Store.open(root)
    assert old.record(10) == record(10) and old.record(10).engine is None
    assert old.kernel_file_problem(0) is None and old.kernel_file_problem(10) is None
    assert mixed_engines_note(old.records()) is None  # one kind (unknown): nothing to say
    paths.manifest(root).unlink()
    rebuilt = Store.open_for_writing(root, IDENT, HEADER)
    assert rebuilt.steps() == [0, 10] and rebuilt.kernel_file_problem(10) is None
    made = dataclasses.replace(record(20), engine="jacobian", device="cuda")
    rebuilt.write_kernel(made, torch.eye(2))
    rebuilt.close()
    again = Store.open(root)
    assert again.record(20) == made and again.kernel_file_problem(20) is None
    assert mixed_engines_note(again.records()) == (
        "this store's kernels were made by more than one engine or device type: steps 0, 10 by "
        "an unrecorded engine; step 20 by jacobian on cuda. They agree to about 1e-6 relative "
        "in float32 (closer in float64), so a distance that small between kernels of two groups "
        "may come from the engines, not the run; to make them alike, delete one group's kernel "
        "files and rerun conetool kernels with the other's --method and --device"
    )


def test_missing_and_damaged_stores_name_the_fix(tmp_path):
    with pytest.raises(StoreError, match="does not exist.*conetool kernels CKPTS --store"):
        Store.open(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="has no manifest.json"):
        Store.open(tmp_path / "empty")
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    paths.kernel(tmp_path / "s", 0).write_bytes(b"garbage")
    with pytest.raises(StoreError, match=r"step_000000.safetensors cannot be read"):
        store.load_kernel(0)
    with pytest.raises(StoreError, match=r"step 7 is not in store .*stored steps: 0"):
        store.load_kernel(7)
    paths.manifest(tmp_path / "s").write_text("{not json")
    with pytest.raises(StoreError, match="not a readable conetool manifest"):
        Store.open(tmp_path / "s")


def test_non_finite_kernel_file_is_named(tmp_path):
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    store.write_kernel(record(0), torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(StoreError, match="step_000000.safetensors holds non-finite values"):
        store.load_kernel(0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_kernel_file_of_another_dtype_is_named(tmp_path, dtype):
    """A kernel file holding a tensor of another dtype than the store's (float32 here) was
    returned as it was; it is a damaged kernel file, named with the command that recomputes it."""
    store = Store.open_for_writing(tmp_path / "s", IDENT, {"checkpoints": "/ckpts"})
    store.write_kernel(record(0), torch.eye(2, dtype=dtype))
    store.write_kernel(record(5), torch.eye(2))
    with pytest.raises(StoreError) as info:
        store.load_kernel(0)
    found = str(dtype).removeprefix("torch.")
    assert str(info.value) == (
        f"kernel file {paths.kernel(tmp_path / 's', 0)} holds a {found} tensor, not the float32 "
        "of the store's kernels (manifest.json: dtype float32). Delete that file and rerun "
        f"conetool kernels /ckpts --store {tmp_path / 's'} to recompute it, or pass --skip-bad "
        "to leave the step out."
    )
    assert store.load_kernel(5).dtype == torch.float32


def test_no_temporary_files_left_behind(tmp_path):
    store = Store.open_for_writing(tmp_path / "s", IDENT, HEADER)
    for step in range(3):
        store.write_kernel(record(step), torch.eye(2))
    leftovers = [p.name for p in (tmp_path / "s").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_writer(tmp_path):
    root = tmp_path / "s"
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    store.close()
    left = [  # what a kill -9 during atomic writes leaves
        root / paths.KERNELS_DIR / ".step_000010.safetensors.k3j2h1.tmp",
        root / ".manifest.json.a1b2c3.tmp",
        root / ".probe.safetensors.zz9.tmp",
    ]
    (root / paths.EVAL_KERNELS_DIR).mkdir()
    left.append(root / paths.EVAL_KERNELS_DIR / ".step_000010.safetensors.q.tmp")
    kept = [root / "my_notes.tmp", root / ".editor.swp.tmp", root / "distance" / ".x.tmp"]
    (root / "distance").mkdir()
    for path in left + kept:
        path.write_bytes(b"partial")
    assert Store.open(root).steps() == [0]  # a reader leaves them (a writer may be running)
    assert all(path.exists() for path in left)
    Store.open_for_writing(root, IDENT, HEADER).close()
    assert [path.name for path in left if path.exists()] == []
    assert all(path.exists() for path in kept)  # not conetool's, or another command's folder


def test_temporaries_are_removed_through_a_symlinked_kernels_folder_and_nothing_else(tmp_path):
    # kernels/ on a shared disk (a symlink) is the store's: a killed writer's temporary there
    # goes, but not another program's .*.tmp beside it, a file nested below it, or a symlink
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"the user's")
    root = tmp_path / "s"
    root.mkdir()
    (root / paths.KERNELS_DIR).symlink_to(shared, target_is_directory=True)
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    store.close()
    stale = shared / ".step_000010.safetensors.k3j2h1.tmp"
    kept = [
        shared / "sub" / ".step_000020.safetensors.abc.tmp",  # nested: not a store's folder
        shared / ".notes.tmp",  # another program's temporaries
        shared / ".data.csv.x1y2.tmp",
        shared / ".step_000010.safetensors.tmp",  # no random part: not mkstemp's name
        shared / "readme.txt",
        root / ".my.manifest.json.a1.tmp",
    ]
    for path in [stale, *kept]:
        path.write_bytes(b"partial")
    link = shared / ".step_000030.safetensors.lnk.tmp"
    link.symlink_to(outside)
    Store.open_for_writing(root, IDENT, HEADER).close()
    assert not stale.exists()
    assert [path.name for path in kept if not path.exists()] == []
    assert link.is_symlink() and outside.read_bytes() == b"the user's"
    assert Store.open(root).steps() == [0]


def test_kernel_files_are_in_the_order_of_their_paths(tmp_path, monkeypatch):
    # sorted by name (faster than comparing Path objects): the same order, padded or not
    import types
    from pathlib import PureWindowsPath

    from conetool import store_kernel_files

    names = [
        "step_000100.safetensors",
        "step_1000000.safetensors",
        "step_999999.safetensors",
        "step_10.safetensors",
        "step_000010.safetensors",
        "step_B.safetensors",
        "step_a.safetensors",
        "step__.safetensors",
    ]
    folder = tmp_path / "s" / paths.KERNELS_DIR
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")
    found = store_kernel_files.kernel_files(tmp_path / "s")
    assert found == sorted(folder.iterdir()) and [p.name for p in found] == sorted(names)
    # Windows paths compare lower-cased: step__ < step_a < step_B there
    monkeypatch.setattr(store_kernel_files, "os", types.SimpleNamespace(name="nt"))
    windows = [p.name for p in sorted(PureWindowsPath(folder / name) for name in names)]
    assert [p.name for p in store_kernel_files.kernel_files(tmp_path / "s")] == windows
    assert windows != sorted(names)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    from conetool.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_files_get_the_umask_mode_even_when_the_writer_replaces_them(tmp_path):
    # safetensors' save_file replaces the temporary file; the mode must still follow the umask
    # (mkstemp's 0600 would hide kernels from the other users of a shared cluster store).
    from conetool import io

    io.atomic_save_safetensors(tmp_path / "k.safetensors", {"kernel": torch.zeros(2, 2)})
    io.atomic_write_text(tmp_path / "m.json", "{}")
    expected = 0o666 & ~io._UMASK
    assert expected != 0o600  # the usual umasks (022, 002) make the check meaningful
    assert (tmp_path / "k.safetensors").stat().st_mode & 0o777 == expected
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == expected


def test_overwrite_is_not_stopped_by_a_reader_writing_its_results_meanwhile(tmp_path, monkeypatch):
    # `distance` run while `kernels --overwrite` clears the store writes in distance/ meanwhile:
    # a temporary file made after rmtree listed the folder left it not empty (ENOTEMPTY), and
    # kernels --overwrite stopped with a traceback
    root = tmp_path / "s"
    Store.open_for_writing(root, IDENT, HEADER).close()
    results = root / "distance"
    results.mkdir()
    (results / "to_ref.csv").write_text("step\n")
    (results / ".summary.json.ab12.tmp").write_text("{")
    real_unlink, calls = os.unlink, []

    def unlink(path, *args, **kwargs):
        calls.append(str(path))
        if str(path).endswith(".summary.json.ab12.tmp"):
            # the reader renamed its temporary file into place before rmtree's turn ...
            real_unlink(path, *args, **kwargs)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        real_unlink(path, *args, **kwargs)
        if str(path).endswith("to_ref.csv") and len(calls) < 4:
            # ... and began its next atomic write after rmtree listed the folder
            fd, _ = tempfile.mkstemp(prefix=".adjacent.csv.", suffix=".tmp", dir=results)
            os.close(fd)

    monkeypatch.setattr(os, "unlink", unlink)
    assert shutil.rmtree.avoids_symlink_attacks  # the dir_fd walk, which calls os.unlink
    other = StoreIdentity(spec_hash="bbbb", probe_hash="pppp", kind="trace", dtype="float32")
    with Store.open_for_writing(root, other, HEADER, overwrite=True) as store:
        assert not results.exists() and store.identity == other


def test_the_store_open_benchmark_times_the_header_scan_against_none(tmp_path, monkeypatch, capsys):
    """benchmarks/bench_store_open.py: what it times as Store.open reads every kernel file's
    header once, its baseline none (the scan is the difference it reports), and both open the
    same steps."""
    from benchmark_module import load_benchmark

    from conetool import store_manifest

    bench = load_benchmark("bench_store_open")
    root = tmp_path / "s"
    bench.build(root, 4, 3)
    real_open = store_manifest.safe_open
    opened: list[str] = []

    def counted(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(store_manifest, "safe_open", counted)
    assert bench.manifest_only(root).steps() == [0, 1, 2, 3] and opened == []
    assert bench.open_store(root).steps() == [0, 1, 2, 3]
    assert sorted(opened) == [paths.kernel(root, s).name for s in range(4)]
    monkeypatch.setattr(bench, "process_start", lambda: 1.0)  # no fresh interpreter here
    bench.main(["--count", "6", "--side", "3", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "Store.open / manifest only:" in out and "us per kernel file" in out


def test_a_temporary_that_cannot_be_removed_does_not_stop_the_writer(tmp_path, monkeypatch):
    # a folder the writer may not change (another user's kernels/ on a shared disk): the
    # killed writer's temporary is left, and the store opens as before (was: a raw
    # PermissionError from the clean-up, before anything was written)
    root = tmp_path / "s"
    Store.open_for_writing(root, IDENT, HEADER).close()
    stale = root / paths.KERNELS_DIR / ".step_000010.safetensors.k3j2h1.tmp"
    stale.write_bytes(b"partial")
    unlink = Path.unlink

    def refused(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(self))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    store = Store.open_for_writing(root, IDENT, HEADER)
    store.write_kernel(record(0), torch.eye(2))
    store.close()
    assert stale.exists() and Store.open(root).steps() == [0]
