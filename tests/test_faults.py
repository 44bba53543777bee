"""Fault injection on the store and the inputs (issue 17): no lost work, no silent wrong result,
no traceback.

Every fault below is met with exit code 1 (or 2, or 0 where the tool repairs it), no traceback, a
message naming the culprit, and every byte already computed still in place. Read-only and full
file systems are simulated with mocked ``OSError(EROFS)`` / ``OSError(ENOSPC)``; the concurrent
writer is a real second process holding the store's lock.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from flushed_dirs import flushed_dirs
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_run import SPEC
from typer.testing import CliRunner

import conetool.io
from conetool import paths
from conetool.checkpoints import check_finite_tensors, load_checkpoint
from conetool.cli import app
from conetool.errors import CheckpointError, SpecError, StoreError
from conetool.pipeline import kernels
from conetool.pipeline.resolve import model_for
from conetool.spec import spec_from_dict
from conetool.store import Store
from conetool.store_lock import StoreLock, writer_note
from conetool.training import train

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """A tiny trained run (steps 0, 5, 10) and a store with its three kernels."""
    base = tmp_path_factory.mktemp("faults")
    run = base / "ckpts"
    train(spec_from_dict(SPEC, source="tiny.toml"), run)
    kernels(run, store=base / "store", device="cpu")
    return base


@pytest.fixture
def run(computed, tmp_path):
    shutil.copytree(computed / "ckpts", tmp_path / "ckpts")
    return tmp_path / "ckpts"


@pytest.fixture
def store(computed, tmp_path, run):
    shutil.copytree(computed / "store", tmp_path / "store")
    manifest = json.loads(paths.manifest(tmp_path / "store").read_text())
    manifest["checkpoints"] = str(run.resolve())  # the copied run
    paths.manifest(tmp_path / "store").write_text(json.dumps(manifest, indent=2))
    return tmp_path / "store"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every kernel file's bytes (what must survive every fault)."""
    return {p.name: p.read_bytes() for p in sorted((root / paths.KERNELS_DIR).glob("*"))}


def cli(*args: str):
    result = runner.invoke(app, [*args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------ 1. damaged manifest


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_damaged_manifest_is_rebuilt_from_the_kernel_files(run, store, damage):
    before = snapshot(store)
    if damage == "truncated":
        text = paths.manifest(store).read_text()
        paths.manifest(store).write_text(text[: len(text) // 2])
    else:
        paths.manifest(store).unlink()
    read = cli("distance", "--store", str(store), "-q")  # reading: refused, advice given
    assert read.exit_code == 1
    assert "manifest.json" in read.output and "rebuilds the manifest" in flat(read.output)
    fixed = cli("kernels", str(run), "--store", str(store), "--device", "cpu")
    assert fixed.exit_code == 0, fixed.output
    assert "rebuilt it from the kernel files" in flat(fixed.output)
    assert "3 kernel(s) recovered" in flat(fixed.output)
    assert snapshot(store) == before  # adopted, not recomputed
    assert Store.open(store).steps() == [0, 5, 10]


def test_damaged_manifest_overwrite_advice_works(run, store):
    paths.manifest(store).write_text("{ not json")
    result = cli("kernels", str(run), "--store", str(store), "--overwrite", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert Store.open(store).steps() == [0, 5, 10]


# ------------------------------------------------------------------ 2. lock, verified skips


#: Takes the lock file ``argv[1]`` as a conetool writer does, with its note (``argv[2]``, the
#: command: ``conetool kernels`` unless given), then waits to be killed.
LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
command = sys.argv[2] if len(sys.argv) > 2 else "conetool kernels"
os.write(fd, f"pid {os.getpid()} on testhost: {command}".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_while_the_first_holds_the_lock(run, store):
    before = snapshot(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(paths.lock(store))], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"locked"
        args = ["kernels", str(run), "--store", str(store), "--device", "cpu"]
        refused = cli(*args, "--probe-size", "4", "--overwrite")
        assert refused.exit_code == 1
        text = flat(refused.output)
        assert "being written by another conetool process" in text
        assert f"pid {holder.pid}" in text and ".lock" in text
        assert snapshot(store) == before  # --overwrite did not clear anything
        assert cli(*args).exit_code == 1  # a plain second run does not duplicate the work
    finally:
        holder.kill()  # the OS drops the lock with the process, however it ends
        holder.wait()
    after = cli("kernels", str(run), "--store", str(store), "--device", "cpu")
    assert after.exit_code == 0, after.output
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("program", "named"),
    [
        (str(Path(conetool.__file__).resolve().with_name("__main__.py")), "conetool"),
        ("/home/me/.venv/bin/conetool", "conetool"),
        ("/home/me/sweep.py", "sweep.py"),  # a script calling conetool.kernels
    ],
    ids=["python -m conetool", "conetool script", "a script"],
)
def test_the_lock_names_python_m_conetool_as_the_conetool_command(
    tmp_path, monkeypatch, program, named
):
    # Before: under `python -m conetool kernels` (whose sys.argv[0] is conetool/__main__.py)
    # the lock's note, and so a second writer's refusal, named the holder "__main__.py kernels"
    root = tmp_path / "s"
    monkeypatch.setattr(sys, "argv", [program, "kernels", "runs/a", "--store", str(root)])
    lock = StoreLock.acquire(root)
    assert lock is not None
    try:
        command = f"{named} kernels runs/a --store {root}"
        assert writer_note(root) == f"pid {os.getpid()} on {socket.gethostname()}: {command}"
        with pytest.raises(StoreError, match=f": {re.escape(command)}; this process"):
            StoreLock.acquire(root, shared=False)  # the refusal reads the same note
    finally:
        lock.release()


def test_lock_is_shared_by_the_library_and_released(run, store):
    result = kernels(run, store=store, device="cpu")  # the lock is taken and given back
    assert result.skipped == [0, 5, 10]
    import fcntl

    fd = os.open(paths.lock(store), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
    finally:
        os.close(fd)


def test_a_kernel_file_of_another_probe_set_is_recomputed(run, store, tmp_path):
    other = tmp_path / "other"
    kernels(run, store=other, probe_size=4, device="cpu")
    shutil.copy(paths.kernel(other, 5), paths.kernel(store, 5))  # a 4x4 kernel in a 6x6 store
    result = kernels(run, store=store, device="cpu")
    assert result.computed == [5] and result.skipped == [0, 10]
    assert any("does not match the store" in w for w in result.warnings)
    assert Store.open(store).load_kernel(5).shape == (6, 6)


def test_a_kernel_file_of_another_dtype_than_its_metadata_is_recomputed(run, store):
    """A kernel file whose tensor is float64 while its metadata (and the store) say float32, as
    a notebook re-saving it would leave it: kernels read the header only and kept it as current,
    so every later command refused it (Store.load_kernel) until the user deleted it by hand."""
    path = paths.kernel(store, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        kernel = handle.get_tensor("kernel")
    save_file({"kernel": kernel.double()}, str(path), metadata=meta)
    result = kernels(run, store=store, device="cpu")
    assert result.computed == [5] and result.skipped == [0, 10]
    assert any(
        "a float64 tensor (its metadata and the store: float32)" in w for w in result.warnings
    )
    again = Store.open(store).load_kernel(5)
    assert again.dtype == torch.float32 and torch.equal(again, kernel)


# ------------------------------------------------------------------ 3. checkpoint dtypes


def _recast(run: Path, step: int, dtype: torch.dtype) -> Path:
    path = paths.checkpoint(run, step)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("weight"))
    state[key] = (state[key] * 100).to(dtype)
    save_file(state, str(path), metadata=meta)
    return path


def test_integer_weights_are_refused(run, tmp_path):
    path = _recast(run, 5, torch.int64)
    result = cli("kernels", str(run), "--store", str(tmp_path / "s"), "--device", "cpu")
    assert result.exit_code == 1
    text = flat(result.output)
    assert path.name in text and "int64" in text and "float32" in text and "weight" in text
    verify = cli("inspect", str(run), "--verify")
    assert verify.exit_code == 1 and "int64" in flat(verify.output)


def test_lower_precision_is_accepted_with_a_warning(run, tmp_path):
    _recast(run, 5, torch.float16)
    result = kernels(run, store=tmp_path / "s", device="cpu")
    assert result.computed == [0, 5, 10]
    assert any("float16" in w and "model's dtype" in w for w in result.warnings)


# ------------------------------------------------------------------ 4. switch --until


def test_switch_until_beyond_the_run_needs_the_flag(run, store):
    result = cli("switch", "--at", "0", "--until", "999999", "--store", str(store), "-q")
    assert result.exit_code == 1
    text = flat(result.output)
    assert "--until 999999" in text and "T is 10" in text and "--beyond-run" in text
    assert not paths.switch_dir(store).exists()


# ------------------------------------------------------------------ 5. tracebacks


def test_truncated_matrix_cache_is_recomputed(store):
    assert cli("distance", "--store", str(store), "-q").exit_code == 0
    npz = paths.matrix_npz(store)
    npz.write_bytes(npz.read_bytes()[:100])
    again = cli("distance", "--store", str(store), "-q")
    assert again.exit_code == 0, again.output
    assert len(npz.read_bytes()) > 100


@pytest.fixture
def read_only(monkeypatch):
    """Make every path under the given root behave as on a read-only file system."""

    def under(root: Path):
        root = os.path.realpath(root)

        def inside(path) -> bool:
            try:
                return os.path.realpath(os.fspath(path)).startswith(root)
            except TypeError:
                return False  # a file descriptor

        def erofs(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        real_open, real_builtin_open = os.open, builtins.open

        def fake_open(path, flags, *args, **kwargs):
            if flags & writing and inside(path):
                erofs(path)
            return real_open(path, flags, *args, **kwargs)

        def fake_builtin_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and inside(file):
                erofs(file)
            return real_builtin_open(file, mode, *args, **kwargs)

        def guard(real):
            def fake(path, *args, **kwargs):
                if inside(path):
                    erofs(path)
                return real(path, *args, **kwargs)

            return fake

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(builtins, "open", fake_builtin_open)
        for name in ("mkdir", "unlink", "rmdir", "replace", "rename"):
            monkeypatch.setattr(os, name, guard(getattr(os, name)))

    return under


def test_read_only_store(run, store, read_only):
    before, manifest = snapshot(store), paths.manifest(store).read_bytes()
    paths.lock(store).unlink()  # as on a store copied to read-only media: no lock file
    read_only(store)
    nothing = cli("kernels", str(run), "--store", str(store), "--device", "cpu", "-q")
    assert nothing.exit_code == 0, nothing.output  # nothing to compute: nothing written
    assert Store.open(store).steps() == [0, 5, 10]
    for args in (
        ["distance"],
        ["embed"],
        ["spectrum"],
        ["report"],
        ["switch", "--at", "0"],
    ):
        result = cli(*args, "--store", str(store), "-q")
        assert result.exit_code == 1, (args, result.output)
        assert "read-only" in result.output and str(store) in flat(result.output), args
    assert snapshot(store) == before and paths.manifest(store).read_bytes() == manifest


def test_read_only_store_with_work_to_do(run, store, read_only):
    paths.kernel(store, 10).unlink()
    before = snapshot(store)
    read_only(store)
    result = cli("kernels", str(run), "--store", str(store), "--device", "cpu", "-q")
    assert result.exit_code == 1
    assert "read-only" in result.output and "step_000010" in flat(result.output)
    assert snapshot(store) == before


def test_opening_to_read_never_writes(store, read_only):
    record = json.loads(paths.manifest(store).read_text())
    del record["steps"]["10"]  # a kernel file the manifest does not list yet (an orphan)
    paths.manifest(store).write_text(json.dumps(record))
    read_only(store)
    assert Store.open(store).steps() == [0, 5, 10]  # adopted in memory, nothing written


def _full_disk(monkeypatch, after: int) -> None:
    """Let ``after`` atomic writes through, then fail each with ENOSPC halfway (at the fsync of
    its temporary file; the directory's, after the rename, is left alone)."""
    real = conetool.io.os.fsync
    calls = {"n": 0}

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return real(fd)
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(conetool.io.os, "fsync", fsync)


def test_an_atomic_write_flushes_the_directory_after_the_rename(tmp_path, monkeypatch):
    # the rename is an entry of the directory: without the directory's fsync after it, a power
    # loss may bring back the old file (POSIX makes the data durable with the file's own fsync)
    if os.name == "nt":
        pytest.skip("Windows cannot open a directory to flush it")
    target = tmp_path / "out" / "result.json"
    target.parent.mkdir()
    target.write_text("old")
    real = conetool.io.os.fsync
    events: list[tuple[str, str]] = []

    def fsync(fd):
        info = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
        events.append((kind, target.read_text()))  # what the target holds at that moment
        if kind == "dir":
            assert info.st_ino == os.stat(target.parent).st_ino
        return real(fd)

    monkeypatch.setattr(conetool.io.os, "fsync", fsync)
    conetool.io.atomic_write_json(target, {"new": 1})
    # the temporary file before the rename, its directory after it
    assert events == [("file", "old"), ("dir", target.read_text())]
    assert json.loads(target.read_text()) == {"new": 1}


def test_a_folder_to_make_where_a_file_is_names_the_file(tmp_path):
    """make_dir under a path that is a file (train --out FILE/run, demo --out FILE) raised
    FileExistsError with a traceback; it is a StoreError naming the file, which is kept."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    for folder in (taken / "run", taken / "run" / "ckpts"):
        with pytest.raises(StoreError, match="notes.txt is a file, not a folder") as caught:
            conetool.io.make_dir(folder)
        assert f"cannot write {folder}" in str(caught.value)
    assert taken.read_text() == "mine"


def test_a_new_folder_is_flushed_into_its_parent_once(tmp_path, monkeypatch):
    # a folder made by mkdir is an entry of its parent: unflushed, a power loss may take it away
    # with the files renamed (and flushed) into it. Was: no flush of any parent after a mkdir.
    if os.name == "nt":
        pytest.skip("Windows cannot open a directory to flush it")
    flushed = flushed_dirs(monkeypatch)
    conetool.io.make_dir(tmp_path / "a" / "b" / "c")
    inode = lambda p: os.stat(p).st_ino  # noqa: E731
    assert flushed == [inode(tmp_path), inode(tmp_path / "a"), inode(tmp_path / "a" / "b")]
    flushed.clear()
    conetool.io.make_dir(tmp_path / "a" / "b" / "c")  # there already: nothing to flush
    conetool.io.make_dir(tmp_path / "a" / "b" / "d")  # only d is new
    assert flushed == [inode(tmp_path / "a" / "b")]
    flushed.clear()
    conetool.io.atomic_write_text(tmp_path / "e" / "f.txt", "text")  # e made for the write
    assert flushed == [inode(tmp_path), inode(tmp_path / "e")]  # e's entry, then f's


def test_a_new_store_and_its_kernels_folder_are_flushed_into_their_parents(
    run, tmp_path, monkeypatch
):
    if os.name == "nt":
        pytest.skip("Windows cannot open a directory to flush it")
    flushed = flushed_dirs(monkeypatch)
    store = tmp_path / "new" / "store"
    kernels(run, store=store, steps="0:0", device="cpu")
    # new/ (never written into) and the store made by the lock, kernels/ made before its file
    for made in (store.parent, store, store / paths.KERNELS_DIR):
        assert os.stat(made.parent).st_ino in flushed, made


def test_an_atomic_write_goes_on_where_a_directory_cannot_be_flushed(tmp_path, monkeypatch):
    # some file systems refuse fsync on a directory (EINVAL): the write itself stands
    real = conetool.io.os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(conetool.io.os, "fsync", fsync)
    conetool.io.atomic_write_text(tmp_path / "a.txt", "text")
    assert (tmp_path / "a.txt").read_text() == "text"


def test_full_disk_during_kernels(run, store, monkeypatch):
    paths.kernel(store, 10).unlink()
    before = snapshot(store)
    _full_disk(monkeypatch, after=0)
    result = cli("kernels", str(run), "--store", str(store), "--device", "cpu", "-q")
    assert result.exit_code == 1
    text = flat(result.output)
    assert "no space left" in text and "step_000010.safetensors" in text and "is needed" in text
    assert snapshot(store) == before  # nothing half-written, no temporary left
    monkeypatch.undo()
    assert kernels(run, store=store, device="cpu").computed == [10]


def test_full_disk_during_train(tmp_path, monkeypatch):
    spec = tmp_path / "tiny.toml"
    spec.write_text(
        textwrap.dedent(
            """
            [model]
            arch = "mlp"
            num_classes = 3
            widths = [6]
            [data]
            dataset = "synthetic"
            shape = [4]
            num_classes = 3
            train_size = 48
            test_size = 12
            [probe]
            size = 6
            [train]
            steps = 10
            batch_size = 8
            save_every = 5
            """
        )
    )
    out = tmp_path / "out"
    _full_disk(monkeypatch, after=3)  # spec, step 0 and its optimizer state get through
    result = cli("train", str(spec), "--out", str(out), "--device", "cpu", "-q")
    assert result.exit_code == 1
    assert "no space left" in flat(result.output) and str(out) in flat(result.output)
    kept = load_file(str(paths.checkpoint(out, 0)))  # whole and readable
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    done = cli("train", str(spec), "--out", str(out), "--device", "cpu", "--resume", "-q")
    assert done.exit_code == 0, done.output
    assert paths.checkpoint(out, 10).is_file()
    first = load_file(str(paths.checkpoint(out, 0)))
    assert first.keys() == kept.keys() and all(torch.equal(first[k], kept[k]) for k in first)


def test_full_disk_during_distance(store, monkeypatch):
    before = snapshot(store)
    _full_disk(monkeypatch, after=0)
    result = cli("distance", "--store", str(store), "-q")
    assert result.exit_code == 1
    assert "no space left" in flat(result.output) and "matrix.npz" in flat(result.output)
    assert snapshot(store) == before and not paths.matrix_npz(store).exists()
    monkeypatch.undo()
    assert cli("distance", "--store", str(store), "-q").exit_code == 0


DAMAGED_STATES = {
    # (what is written over the state conetool train saved, what the warning and --resume say)
    "foreign": (
        lambda path: save_file({"x": torch.zeros(2)}, str(path), metadata={"optimizer": "SGD"}),
        "it was not written by conetool train (not enough values to unpack",
    ),
    "no metadata": (
        lambda path: save_file({"x": torch.zeros(2)}, str(path)),
        "it was not written by conetool train (its metadata has no 'optimizer' entry)",
    ),
    "truncated": (
        lambda path: path.write_bytes(path.read_bytes()[:-5]),
        "it cannot be read as safetensors (Error while deserializing header",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_STATES))
def test_foreign_optimizer_state_is_named(run, store, damage):
    """A damaged state beside a checkpoint costs its point's momentum (a warning naming the file;
    the sweep goes on, as for a loop's own file's state), not the sweep (was: exit 1)."""
    path = paths.optimizer_state(run, 5)
    write, reason = DAMAGED_STATES[damage]
    write(path)
    result = cli("switch", "--at", "0,5", "--store", str(store), "-q")
    assert result.exit_code == 0, result.output
    said = flat(result.output)
    assert (
        f"warning: t=5: the optimizer state beside the checkpoint ({path.name}) is not used: "
        in said
    )
    assert reason in said and "momentum starts at zero (once it is restored from the run" in said
    assert "delete" not in said  # a rerun notices the file restored: the point records it
    rows = (paths.switch_results_csv(store)).read_text().splitlines()
    assert [row.split(",")[6] for row in rows[1:]] == ["saved", "fresh"]


@pytest.mark.parametrize("damage", sorted(DAMAGED_STATES))
def test_train_resume_still_refuses_a_damaged_optimizer_state(run, damage):
    paths.optimizer_state(run, 10).unlink()  # resumed from step 5
    path = paths.optimizer_state(run, 5)
    write, _ = DAMAGED_STATES[damage]
    write(path)
    result = cli("train", str(paths.spec(run)), "--out", str(run), "--device", "cpu", "--resume")
    assert result.exit_code == 1
    said = flat(result.output)
    if damage == "truncated":
        assert f"{path.name} cannot be read (Error while deserializing header" in said
        assert "Delete it to restart momentum from zero, or restore it from the run." in said
    else:
        assert f"{path.name} was not written by conetool train (" in said
        assert "so its momentum cannot be restored" in said
    assert paths.checkpoint(run, 10).is_file()  # nothing written over


INTERRUPT_AT_IMPORT = """
import builtins, sys
sys.argv = ["conetool", "distance", "--store", "no-such-store"]  # loads torch in its body
real = builtins.__import__
def hook(name, *args, **kwargs):
    if name == "torch":
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = hook
from conetool.cli import main
main()
"""


def test_interrupt_during_start_up():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_IMPORT], env=env, capture_output=True, text=True
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "interrupted" in done.stderr


INTERRUPT_TURNED_INTO_ANOTHER_ERROR = """
import os, signal, time
import conetool.cli as cli

def app(prog_name):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:  # what an import interrupted half-way can leave behind
        raise RecursionError("maximum recursion depth exceeded") from None

cli.app = app
cli.main()
"""


def test_an_interrupt_that_surfaces_as_another_error_still_exits_130():
    # A real Ctrl-C during `import scipy.linalg` once ended as numpy's RecursionError, a
    # traceback and exit 1 (test_real_ctrl_c_exits_130 on a fresh checkout, imports slow).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_TURNED_INTO_ANOTHER_ERROR],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "interrupted" in done.stderr


INTERRUPT_INSIDE_AN_IMPORT = """
import sys
import conetool.cli as cli

def app(prog_name):
    sys.path.insert(0, sys.argv[1])
    import fragile

cli.app = app
cli.main()
"""

# Like PyTorch's C++ module initializers, which abort the process when a KeyboardInterrupt is
# raised in the Python code they call ("terminate called after throwing an instance of ...").
FRAGILE_MODULE = """
import os, signal, time
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except BaseException:
    os.abort()
"""


def test_ctrl_c_inside_an_import_exits_130_without_raising_into_it(tmp_path):
    (tmp_path / "fragile.py").write_text(FRAGILE_MODULE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_INSIDE_AN_IMPORT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted.\n"


# A real SIGINT while torch._C._c10d_init (run by `import torch`) calls back into Python: the
# moment test_real_ctrl_c_exits_130 hits once in a few hundred runs (exit -6, "terminate called
# after throwing an instance of 'pybind11::error_already_set'").
INTERRUPT_IN_TORCH_INIT = """
import signal, sys
in_init = []

def profile(frame, event, arg):
    if event == "c_call" and getattr(arg, "__name__", "") == "_c10d_init":
        in_init.append(arg)
    elif event in ("c_return", "c_exception") and in_init:
        in_init.pop()
    elif event == "call" and in_init:
        sys.setprofile(None)
        print("in _c10d_init", file=sys.stderr, flush=True)
        signal.raise_signal(signal.SIGINT)

class Arm:  # profile only from torch.distributed's import on (profiling all of torch's is slow)
    def find_spec(self, name, path=None, target=None):
        if name == "torch.distributed":
            sys.setprofile(profile)
        return None

sys.meta_path.insert(0, Arm())
sys.argv = ["conetool", *sys.argv[1:]]
from conetool.cli import main
main()
"""


def test_ctrl_c_inside_torchs_cpp_initializer_exits_130(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["kernels", str(run), "--store", str(tmp_path / "s"), "--device", "cpu", "-q"]
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_IN_TORCH_INIT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "in _c10d_init" not in done.stderr:
        pytest.skip("this PyTorch runs no Python code inside torch._C._c10d_init")
    assert done.returncode == 130, done.stderr
    # (kernels has begun: its first line is printed, and it says what it keeps)
    said = done.stderr.replace("\n", " ")
    assert said.startswith("in _c10d_init interrupted. Everything already written is "), said
    assert said.endswith("rerun the same command to continue. "), said


def test_real_ctrl_c_exits_130(run, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["kernels", str(run), "--store", str(tmp_path / "s"), "--device", "cpu"]
    child = subprocess.Popen(
        [sys.executable, "-m", "conetool", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.8)  # start-up: importing torch
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert "Traceback" not in err


# ------------------------------------------------------------------ 6. checks made too late


@pytest.mark.parametrize("budget", ["lots", "0", "-1GiB"])
def test_max_memory_checked_before_anything(run, tmp_path, budget):
    target = tmp_path / "s"
    result = cli("kernels", str(run), "--store", str(target), "--max-memory", budget, "--skip-bad")
    assert result.exit_code == 1 and f"--max-memory '{budget}' is not a memory" in result.output
    assert "max_memory=" not in result.output  # the flag, not the library's argument
    assert not target.exists()


def test_skip_bad_exits_1_when_every_checkpoint_failed(run, tmp_path):
    for step in (0, 5, 10):
        _recast(run, step, torch.int64)
    result = cli("kernels", str(run), "--store", str(tmp_path / "s"), "--skip-bad")
    assert result.exit_code == 1 and "every checkpoint failed" in flat(result.output)


def test_train_checks_the_probe_before_training(tmp_path):
    spec = dict(SPEC, probe={"size": 100})  # the train split has 48 examples
    out = tmp_path / "out"
    with pytest.raises(SpecError, match=r"big\.toml: \[probe\].*probe\.size' = 100"):
        train(spec_from_dict(spec, source="big.toml"), out)
    assert not out.exists()  # refused before anything was written


# ------------------------------------------------------------------ 7. advice that works


def test_switch_ignores_an_unrelated_bad_checkpoint(run, store):
    paths.checkpoint(run, 5).write_bytes(b"\x00" * 10)  # truncated, not needed by --at 0
    ok = cli("switch", "--at", "0", "--store", str(store), "-q")
    assert ok.exit_code == 0, ok.output
    bad = cli("switch", "--at", "5", "--store", str(store), "-q")
    assert bad.exit_code == 1 and "step_000005" in bad.output
    assert "--skip-bad" not in bad.output


@pytest.mark.parametrize("at_T", ["present", "missing"])
def test_switch_ignores_files_without_a_step(run, store, at_T):
    # Files whose step cannot be known (kernels --skip-bad left them out) concern no switch
    # point, with or without a checkpoint at T (the standard model's line is then left out).
    state = load_file(str(paths.checkpoint(run, 5)))
    for name in ("best", "final"):
        save_file(state, str(run / f"{name}.safetensors"))  # no step in the name or metadata
    if at_T == "missing":
        paths.checkpoint(run, 10).unlink()
    result = cli("switch", "--at", "0", "--store", str(store), "-q")
    assert result.exit_code == 0, result.output
    points = json.loads(paths.switch_results_json(store).read_text())["points"]
    assert [point["at"] for point in points] == [0]


def test_switch_on_a_run_that_moved_names_ckpts(run, store, tmp_path):
    moved = tmp_path / "moved"
    run.rename(moved)
    result = cli("switch", "--at", "0", "--store", str(store), "-q")
    assert result.exit_code == 1
    text = flat(result.output)
    assert str(run.resolve()) in text and "--ckpts DIR" in text
    again = cli("switch", "--at", "0", "--store", str(store), "--ckpts", str(moved), "-q")
    assert again.exit_code == 0, again.output


def test_switch_nan_message_has_no_skip_bad(run, store):
    path = paths.checkpoint(run, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    next(iter(state.values())).view(-1)[0] = float("nan")
    save_file(state, str(path), metadata=meta)
    result = cli("switch", "--at", "5", "--store", str(store), "-q")
    assert result.exit_code == 1 and path.name in result.output
    assert "--skip-bad" not in result.output and "--steps" not in result.output


def test_nan_at_step_zero_is_not_called_divergence():
    state = {"w": torch.tensor([float("nan")])}
    with pytest.raises(CheckpointError) as caught:
        check_finite_tensors(state, "step_000000.safetensors", 0)
    assert "diverged" not in str(caught.value) and "initial" in str(caught.value)


def test_report_on_one_kernel_store_suggests_what_works(run, tmp_path):
    target = tmp_path / "one"
    kernels(run, store=target, steps="0:0", device="cpu")
    result = cli("report", "--store", str(target), "-q")
    assert result.exit_code == 0, result.output
    text = paths.report_md(target).read_text()
    assert "conetool distance --store" not in text and "conetool embed --store" not in text
    assert "needs at least two" in text and "conetool kernels" in text
    # the spectrum is of each kernel alone: the report suggests it, and it works
    assert f"conetool spectrum --store {target}" in text
    result = cli("spectrum", "--store", str(target), "-q")
    assert result.exit_code == 0, result.output
    cli("report", "--store", str(target), "-q")
    assert "No alignment and spectrum" not in paths.report_md(target).read_text()
    # the kernels command it suggests adds the other steps (not --steps 0:0 again)
    suggested = re.search(r"conetool kernels [^`\n]*", text).group(0)
    assert "--steps" not in suggested
    more = cli(*shlex.split(suggested)[1:], "-q")
    assert more.exit_code == 0, more.output
    assert Store.open(target).steps() == [0, 5, 10]


def test_report_on_two_kernel_store_does_not_suggest_embed(run, tmp_path):
    # embed's two dimensions need three kernels: the report suggests computing more, not embed
    target = tmp_path / "two"
    kernels(run, store=target, steps="0:5", device="cpu")
    assert cli("distance", "--store", str(target), "-q").exit_code == 0
    assert cli("report", "--store", str(target), "-q").exit_code == 0
    text = paths.report_md(target).read_text()
    assert "conetool embed --store" not in text and "needs at least three" in text
    suggested = re.search(r"conetool kernels [^`\n]*", text).group(0)
    assert cli(*shlex.split(suggested)[1:], "-q").exit_code == 0
    assert cli("embed", "--store", str(target), "-q").exit_code == 0


def test_missing_kernel_file_advice(store):
    paths.kernel(store, 5).unlink()
    result = cli("distance", "--store", str(store), "-q")
    assert result.exit_code == 1 and "step_000005" in result.output
    assert "Delete that file" not in flat(result.output)
    assert "Rerun conetool kernels" in flat(result.output)


@pytest.mark.parametrize("damage", ["truncated", "not finite"])
def test_a_damaged_kernel_file_names_the_kernels_command_that_recomputes_it(run, store, damage):
    # spectrum (Store.load_kernel) advised "conetool kernels --store STORE", which lacks the
    # checkpoint directory: a usage error (exit 2)
    path = paths.kernel(store, 5)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata()
        save_file({"kernel": torch.full((6, 6), float("nan"))}, str(path), header)
    result = cli("spectrum", "--store", str(store), "-q")
    assert result.exit_code == 1 and str(path) in flat(result.output)
    assert f"conetool kernels {run.resolve()} --store {store}" in flat(result.output)


def test_probe_size_help_keeps_its_brackets():
    result = runner.invoke(app, ["kernels", "--help"], env={"COLUMNS": "200"})
    assert "[probe] size" in result.output


def test_inspect_shows_no_size_for_a_link_to_a_special_file(run):
    folder = run / "checkpoint-300"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to("/dev/zero")
    result = cli("inspect", str(run))
    assert result.exit_code == 1 and "not a regular file" in flat(result.output)
    row = next(line for line in result.output.splitlines() if "checkpoint-300/" in line)
    assert "0 B" not in row and "-" in row


def test_load_checkpoint_names_key_and_dtypes(run):
    path = _recast(run, 5, torch.int32)
    with pytest.raises(CheckpointError, match=r"int32.*float32"):
        load_checkpoint(model_for(spec_from_dict(SPEC)), path)


def test_store_error_for_write_failures_names_the_path(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device")
    error = conetool.io.write_error(tmp_path / "x.bin", exc, needed=2048)
    assert isinstance(error, StoreError) and "x.bin" in str(error) and "2.0 KiB" in str(error)
