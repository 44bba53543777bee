"""``kernels --overwrite`` stopped at any moment while it clears the store it replaces (a kill,
a power cut): the old store is whole, or gone entirely; nothing of it is read or kept beside the
new one. The clearing moves the old files into ``STORE/.conetool-replaced-*`` (the manifest
first: from then on the old store is gone), then deletes them; the next writer finishes it."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from synthetic_store import HEADER, IDENT, record, store_with_kernels
from tiny_run import STEPS, run_fixtures

from conetool import paths, store_clearing
from conetool.errors import StoreError
from conetool.pipeline import distance, kernels
from conetool.store import Store, StoreIdentity, clear
from conetool.store_kernel_files import kernel_files

trained, run = run_fixtures()

#: The store that replaces IDENT's (another spec).
NEW = StoreIdentity(spec_hash="bbbb", probe_hash="pppp", kind="trace", dtype="float32")

#: The calls a clearing and the writes after it change the store's folder with.
OPS = ("replace", "rename", "unlink", "remove", "rmdir")


class Killed(BaseException):
    """Stands for SIGKILL: nothing of the process runs after it (no ``except OSError``)."""


def killed_at(monkeypatch: pytest.MonkeyPatch, k: int) -> Callable[[], int]:
    """Make the ``k``-th call of :data:`OPS` (from now, 1-based) raise :class:`Killed` before
    it acts; returns how many calls were made."""
    count = [0]
    for name in OPS:
        real = getattr(os, name)

        def call(*args: object, _real: Callable[..., object] = real, **kw: object) -> object:
            count[0] += 1
            if count[0] == k:
                raise Killed
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, call)
    return lambda: count[0]


def old_store(root: Path) -> None:
    """IDENT's store of steps 0 and 10 (kernels (step + 1) I), with a probe file and results."""
    store_with_kernels(root)
    (root / paths.PROBE_NAME).write_bytes(b"old probe")
    for name in (paths.DISTANCE_DIR, paths.EMBED_DIR):
        (root / name).mkdir()
        (root / name / "summary.json").write_text('{"old": true}')


def conetool_entries(root: Path) -> set[str]:
    """What is in the store's folder, less the lock files."""
    locks = {paths.LOCK_NAME, paths.RESULTS_LOCK_NAME, paths.RESULTS_GATE_NAME}
    return {p.name for p in root.iterdir()} - locks


def check_whole_or_gone(root: Path) -> str:
    """The store after the kill: the old store whole (``"old"``), the new one just begun
    (``"new"``), or no store, whose files no command reads (``"gone"``)."""
    if paths.manifest(root).exists():
        store = Store.open(root)
        if store.identity == IDENT:
            assert store.steps() == [0, 10]
            for step in (0, 10):
                assert torch.equal(store.load_kernel(step), (step + 1) * torch.eye(2))
            assert (root / paths.DISTANCE_DIR / "summary.json").is_file()
            return "old"
        assert store.identity == NEW and store.steps() == []
        assert not {paths.DISTANCE_DIR, paths.EMBED_DIR} & conetool_entries(root)
        return "new"
    with pytest.raises(StoreError) as refused:
        Store.open(root)
    assert kernel_files(root) == []  # nothing of the replaced store is read
    if paths.replaced_folders(root):
        said = " ".join(str(refused.value).split())
        assert "a conetool kernels --overwrite was stopped while it cleared the store" in said
        assert f"conetool kernels CKPTS --store {root} --overwrite" in said
    return "gone"


@pytest.mark.parametrize("linked", [False, True], ids=["kernels", "kernels-symlink"])
def test_a_kill_at_any_moment_of_overwrite_leaves_the_old_store_whole_or_none_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool
) -> None:
    # Before: killed after the manifest was deleted, the store had the old kernel files and no
    # manifest: Store.open said to rebuild it from them, a kernels run of the new spec was
    # refused ("made with another spec"), and one killed later left the old results (distance/)
    # for the new store's next kernels run to keep beside its kernels.
    seen = set()
    for k in range(1, 200):
        root = tmp_path / f"s{k}"
        if linked:  # kernels/ on another disk: its kernel files are deleted there
            (tmp_path / f"shared{k}").mkdir()
            root.mkdir()
            (root / paths.KERNELS_DIR).symlink_to(tmp_path / f"shared{k}", target_is_directory=True)
        old_store(root)
        with monkeypatch.context() as patched:
            calls = killed_at(patched, k)
            try:
                Store.open_for_writing(root, NEW, HEADER, overwrite=True).close()
            except Killed:
                pass
            else:
                assert calls() < k  # it ended: the new store, of nothing of the old
                assert check_whole_or_gone(root) == "new"
                break
        seen.add(check_whole_or_gone(root))
        # the next run of the new spec, without --overwrite: the store of that spec, afresh
        if paths.manifest(root).exists() and Store.open(root).identity == IDENT:
            with pytest.raises(StoreError):
                Store.open_for_writing(root, NEW, HEADER)
            continue
        store = Store.open_for_writing(root, NEW, HEADER)
        store.close()
        assert Store.open(root).identity == NEW and Store.open(root).steps() == []
        assert conetool_entries(root) == {paths.MANIFEST_NAME, paths.KERNELS_DIR}
        assert not any((root / paths.KERNELS_DIR).iterdir())
        assert (root / paths.KERNELS_DIR).is_symlink() == linked
    else:
        pytest.fail("the overwrite never ended")
    assert seen == {"old", "gone"}  # (the new manifest is the last write: then it is "new")


def test_the_next_run_says_what_a_stopped_clearing_left_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    old_store(root)
    with monkeypatch.context() as patched:
        killed_at(patched, 2)  # the manifest moved aside, the rest not
        with pytest.raises(Killed):
            Store.open_for_writing(root, NEW, HEADER, overwrite=True)
    assert len(paths.replaced_folders(root)) == 1
    store = Store.open_for_writing(root, NEW, HEADER)
    store.close()
    said = " ".join(" ".join(store.warnings).split())
    assert f"a conetool kernels --overwrite was stopped while it cleared store {root}" in said
    assert (
        "removed too: probe.safetensors, kernels/ (2 kernel file(s)), distance/, embed/" in said
    ), said
    assert paths.replaced_folders(root) == []


def test_a_sigkill_during_the_clearing_then_kernels_of_the_new_spec(
    run: Path, tmp_path: Path
) -> None:
    """A real SIGKILL in another process, then the ``kernels`` pipeline on the new spec without
    ``--overwrite``: it computes every kernel, and the old store's results are gone."""
    root = tmp_path / "store"
    kernels(run, store=root, device="cpu")
    distance(root, noise=False)
    old = Store.open(root).identity
    # killed before the clearing's second move or deletion: the manifest is gone, the rest not
    script = f"""
import os, signal
from conetool.store import Store, StoreIdentity
count = [0]
def killing(real):
    def call(*a, **k):
        count[0] += 1
        if count[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return call
os.replace, os.unlink = killing(os.replace), killing(os.unlink)
Store.open_for_writing({str(root)!r}, StoreIdentity("{old.spec_hash}", "other", "trace",
                       "float32"), {{}}, overwrite=True)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert paths.distance_dir(root).is_dir() and kernel_files(root) == []
    result = kernels(run, store=root, device="cpu", probe_size=4)
    assert result.computed == STEPS
    said = " ".join(" ".join(result.warnings).split())
    assert "a conetool kernels --overwrite was stopped while it cleared store" in said, said
    assert not paths.distance_dir(root).exists()
    assert paths.replaced_folders(root) == []
    assert Store.open(root).identity.probe_hash != old.probe_hash


def test_overwrite_through_a_symlinked_kernels_folder_keeps_the_link(tmp_path: Path) -> None:
    # Before: shutil.rmtree raised "Cannot call rmtree on a symbolic link" (a traceback), after
    # the manifest and probe set were deleted.
    shared = tmp_path / "shared"
    shared.mkdir()
    root = tmp_path / "s"
    root.mkdir()
    (root / paths.KERNELS_DIR).symlink_to(shared, target_is_directory=True)
    old_store(root)
    (shared / "notes.txt").write_text("the user's")
    store = Store.open_for_writing(root, NEW, HEADER, overwrite=True)
    store.close()
    assert (root / paths.KERNELS_DIR).is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == ["notes.txt"]
    assert Store.open(root).identity == NEW
    assert conetool_entries(root) == {paths.MANIFEST_NAME, paths.KERNELS_DIR}


def test_overwrite_says_what_it_removed_in_plain_words(tmp_path: Path) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / paths.DISTANCE_DIR).mkdir()
    (root / paths.DISTANCE_DIR / "summary.json").write_text("{}")
    # before: "--overwrite removed the replaced store's its distance results"
    assert clear(root) == "--overwrite removed the replaced store's distance results"
    old_store(root)
    assert clear(root) == (
        "--overwrite removed the replaced store's 2 kernel file(s) and its distance, embed results"
    )


@pytest.mark.parametrize("linked", [False, True], ids=["kernels", "kernels-symlink"])
def test_a_failed_deletion_of_the_replaced_store_keeps_what_was_computed_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool
) -> None:
    # Before: a deletion of STORE/.conetool-replaced-* that failed (a file held open on NFS,
    # EBUSY) stopped kernels --overwrite with an OSError, the old store gone already; and such a
    # folder beside a new store meant, once its manifest.json was deleted, that the next kernels
    # removed the new store's kernel files as the replaced store's instead of rebuilding the
    # manifest from them.
    root = tmp_path / "s"
    shared = tmp_path / "shared"
    if linked:
        shared.mkdir()
        root.mkdir()
        (root / paths.KERNELS_DIR).symlink_to(shared, target_is_directory=True)
    old_store(root)
    real = shutil.rmtree

    def busy(path: Path, *args: object, **kwargs: object) -> None:
        if Path(path).name.startswith(".conetool-"):  # the replaced store's folder
            held = Path(path) / paths.KERNELS_DIR / ".nfs000001"
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(held))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_clearing.shutil, "rmtree", busy)
    with Store.open_for_writing(root, NEW, HEADER, overwrite=True) as store:
        store.write_kernel(record(20), 21 * torch.eye(2))
    [left] = paths.cleared_folders(root)
    said = " ".join(" ".join(store.warnings).split())
    assert "--overwrite removed the replaced store's 2 kernel file(s)" in said, said
    assert f"could not delete {left} (Device or resource busy: {left}/kernels/.nfs000001)" in said
    assert "The next conetool kernels on this store tries again" in said
    assert Store.open(root).steps() == [20]

    paths.manifest(root).unlink()  # by the user
    with pytest.raises(StoreError, match="has kernel files but no manifest.json"):
        Store.open(root)
    store = Store.open_for_writing(root, NEW, HEADER)  # the folder still cannot be deleted
    store.close()
    said = " ".join(" ".join(store.warnings).split())
    assert "was missing; rebuilt it from the kernel files" in said, said
    assert f"could not delete {left}" in said and "was stopped" not in said
    assert Store.open(root).steps() == [20]
    assert torch.equal(Store.open(root).load_kernel(20), 21 * torch.eye(2))
    assert (root / paths.KERNELS_DIR).is_symlink() == linked

    monkeypatch.undo()  # the file is closed: the next run deletes the folder, and only it
    Store.open_for_writing(root, NEW, HEADER).close()
    assert paths.cleared_folders(root) == [] and Store.open(root).steps() == [20]
    assert conetool_entries(root) == {paths.MANIFEST_NAME, paths.KERNELS_DIR}
    if linked:
        assert [p.name for p in shared.iterdir()] == ["step_000020.safetensors"]
