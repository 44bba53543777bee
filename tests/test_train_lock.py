"""One ``conetool train`` writes an ``--out`` at a time: a second is refused at once, naming the
folder and the process that writes it, and the lock goes away with that process."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import LOCK_HOLDER
from tiny_run import SPEC, STEPS, train_tiny

from conetool import paths
from conetool.errors import ConetoolError, SpecError, StoreError
from conetool.spec import spec_from_dict
from conetool.training import train


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def test_a_second_train_into_one_out_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    out = train_tiny(tmp_path)
    before = _files(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(paths.lock(out)), "conetool train tiny.toml"],
        stdout=subprocess.PIPE,
    )
    spec = spec_from_dict(SPEC, source="tiny.toml")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        for flags in ({"overwrite": True}, {"resume": True}, {}):
            with pytest.raises(StoreError) as refused:
                train(spec, out, **flags)
            text = " ".join(str(refused.value).split())
            assert f"--out {out} is being written by another conetool process" in text
            assert (
                f"pid {holder.pid} on testhost: conetool train" in text
                and str(paths.lock(out)) in text
            )
            assert _files(out) == before  # --overwrite cleared nothing, --resume wrote nothing
    finally:
        holder.kill()  # the OS drops the lock with the process, however it ends
        holder.wait()
    again = train(spec, out, overwrite=True)  # no stale lock after the kill
    assert again.saved_steps == STEPS
    fd = os.open(paths.lock(out), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # given back when train returned
    finally:
        os.close(fd)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_a_folder_whose_file_system_has_no_flock_is_trained_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """NFS without lockd (ENOLCK), Lustre or a FUSE file system without flock (ENOSYS,
    EOPNOTSUPP): train ran there before it locked --out, and runs there still, unlocked (as a
    store's readers' lock does on such a file system), not failing with a raw OSError."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    result = train(spec_from_dict(SPEC, source="tiny.toml"), tmp_path / "run")
    assert result.saved_steps == STEPS
    assert paths.checkpoint_steps(tmp_path / "run") == STEPS


def test_a_second_train_in_the_same_process_is_refused_too(tmp_path: Path) -> None:
    """The lock is the process's: a notebook's second train into the folder a first one (in
    another thread) is writing was let in, and its --overwrite deleted the first's files."""
    import threading

    from conetool.progress import NullProgress, ProgressTask

    out = tmp_path / "run"
    inside, release = threading.Event(), threading.Event()

    class Waits(NullProgress):  # holds the first train inside its lock, before its first step
        def task(self, description: str, total: int | None) -> ProgressTask:
            inside.set()
            release.wait(60)
            return super().task(description, total)

    spec = spec_from_dict(SPEC, source="tiny.toml")
    first: list[object] = []
    thread = threading.Thread(target=lambda: first.append(train(spec, out, progress=Waits())))
    thread.start()
    try:
        assert inside.wait(60)
        written = _files(out)
        with pytest.raises(StoreError) as refused:
            train(spec, out, overwrite=True)
        text = " ".join(str(refused.value).split())
        assert f"--out {out} is being written by another conetool process" in text
        assert f"pid {os.getpid()} " in text and "this process" in text
        assert _files(out) == written  # the first train's conetool.toml is still there
    finally:
        release.set()
        thread.join(60)
    assert len(first) == 1 and paths.checkpoint_steps(out) == STEPS  # the first one finished


@pytest.mark.parametrize(
    "failure", [SpecError("tiny.toml: a value found bad"), KeyboardInterrupt()]
)
def test_a_train_refused_before_it_writes_leaves_no_folder_nor_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """A train refused (or interrupted) inside its lock, before writing anything, left the
    folders it made for --out behind with an empty .lock in them; a folder that was there is
    kept, without the lock file this train made."""
    from conetool import training

    def refused(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(training, "make_optimizer", refused)
    spec = spec_from_dict(SPEC, source="tiny.toml")
    with pytest.raises(type(failure)):
        train(spec, tmp_path / "runs" / "new")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    with pytest.raises(type(failure)):
        train(spec, tmp_path / "mine")
    assert list((tmp_path / "mine").iterdir()) == []


@pytest.mark.parametrize(
    ("given", "made"),
    [
        ("runs/../new", "new"),  # left runs/ behind: rmdir of runs/.. failed, runs was not tried
        ("runs/a/../../new", "new"),
        ("runs/../runs2/new", "runs2/new"),
    ],
)
def test_a_refused_train_into_a_path_through_new_folders_and_dotdot_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, made: str
) -> None:
    """--out runs/../new, where runs does not exist, makes runs/ on the way (mkdir -p): a
    refused train left it, empty, since its cleanup stopped at runs/.., no folder it made."""
    from conetool import training

    def refused(*args: object, **kwargs: object) -> None:
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    monkeypatch.chdir(tmp_path)
    spec = spec_from_dict(SPEC, source="tiny.toml")
    with pytest.raises(SpecError):
        train(spec, Path(given))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()  # a folder that was there is kept
    with pytest.raises(SpecError):
        train(spec, Path(given))
    assert [p.name for p in tmp_path.iterdir()] == ["runs"] and not (tmp_path / made).exists()


@pytest.mark.parametrize("held", [(), (".lock",), (".lock", "mine.txt")])
def test_a_refused_train_through_a_new_folder_and_dotdot_keeps_a_folder_that_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: tuple[str, ...]
) -> None:
    """--out runs/../new where runs does not exist but new does: new (and a lock file it held)
    was there before the call. The checks before make_dir looked at runs/../new, which does not
    resolve while runs is missing, so a refused train took new for a folder it made (removing
    it when empty) and its lock file for its own (removing it, and leaving runs behind)."""
    from conetool import training

    def refused(*args: object, **kwargs: object) -> None:
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new").mkdir()
    for name in held:
        (tmp_path / "new" / name).write_text("x")
    with pytest.raises(SpecError):
        train(spec_from_dict(SPEC, source="tiny.toml"), Path("runs/../new"))
    assert [p.name for p in tmp_path.iterdir()] == ["new"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == sorted(held)


def test_a_refused_demo_into_a_path_through_new_folders_and_dotdot_removes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo --out runs/../new: its train makes runs/../new/ckpts, and a refusal there left runs/
    (and new/) behind, as train's own did."""
    from conetool import training
    from conetool.pipeline import demo

    def refused(*args: object, **kwargs: object) -> None:
        raise SpecError("demo: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError):
        demo(Path("runs/../new"), steps=8, probe_size=4, threads=1, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_a_train_refused_in_a_folder_of_other_files_leaves_them_without_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused train into a folder that held files of the user's (none of a run) left its
    .lock among them, where the README says a refused train leaves no .lock in --out."""
    from conetool import training

    def refused(*args: object, **kwargs: object) -> None:
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    with pytest.raises(SpecError):
        train(spec_from_dict(SPEC, source="tiny.toml"), out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_refused_train_removes_the_lock_it_created_whatever_else_its_out_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused train left the .lock it created in a folder where a file had appeared meanwhile
    (another program's): it was removed only when the folder held what it held before. The
    other files stay as they are."""
    from conetool import training

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")

    def refused(*args: object, **kwargs: object) -> None:
        (out / "log.txt").write_text("another program's")
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    with pytest.raises(SpecError):
        train(spec_from_dict(SPEC, source="tiny.toml"), out)
    assert _files(out) == {"log.txt": b"another program's", "notes.txt": b"the user's"}
    assert not paths.lock(out).exists()


def test_an_overwrite_interrupted_before_it_writes_removes_the_lock_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite of a run copied without its .lock, interrupted once it had cleared the run and
    before it wrote conetool.toml, left the .lock it created in the cleared folder."""
    from conetool import training

    out = train_tiny(tmp_path / "trained")
    paths.lock(out).unlink()
    (out / "notes.txt").write_text("the user's")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "make_optimizer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(spec_from_dict(SPEC, source="tiny.toml"), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_refused_train_keeps_a_lock_file_that_was_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file of a folder an earlier train wrote (or any there before the call) stays."""
    from conetool import training

    out = tmp_path / "mine"
    out.mkdir()
    paths.lock(out).write_text("")

    def refused(*args: object, **kwargs: object) -> None:
        (out / "log.txt").write_text("another program's")
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    with pytest.raises(SpecError):
        train(spec_from_dict(SPEC, source="tiny.toml"), out)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "log.txt"]


def test_a_train_that_fails_once_it_has_written_keeps_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once conetool.toml is written the folder is a run's (--resume continues it): kept whole."""
    from conetool import training

    def diverged(*args: object, **kwargs: object) -> None:
        raise ConetoolError("the loss diverged")

    monkeypatch.setattr(training.TrainingLoop, "run", diverged)
    out = tmp_path / "new"
    with pytest.raises(ConetoolError, match="diverged"):
        train(spec_from_dict(SPEC, source="tiny.toml"), out)
    assert sorted(p.name for p in out.iterdir()) == [".lock", paths.spec(out).name]


#: Opens the lock file ``argv[1]`` as StoreLock.acquire does, says "opened", waits for the file
#: ``argv[2]`` before its flock, then says whether it holds the lock and sleeps until killed.
_LATE_LOCKER = """
import fcntl, os, sys, time
from pathlib import Path
from conetool import store_lock
real = fcntl.flock
def late(fd, operation):
    print("opened", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.01)
    store_lock.fcntl.flock = real
    real(fd, operation)
store_lock.fcntl.flock = late
lock = store_lock.StoreLock.acquire(Path(sys.argv[1]), shared=False)
print("locked" if lock is not None else "none", flush=True)
time.sleep(120)
"""


def test_a_train_that_opened_the_lock_file_a_refused_train_removes_locks_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second train that opened --out/.lock while a refused first held it, and locked it after
    the first removed it, held a lock on a removed file: a third train (or the second, trained
    into a folder the first had removed) was let in beside it. It locks the file there now."""
    from conetool import training

    out, go = tmp_path / "new", tmp_path / "go"
    second: list[subprocess.Popen[bytes]] = []

    def refused(*args: object, **kwargs: object) -> None:
        late = subprocess.Popen(
            [sys.executable, "-c", _LATE_LOCKER, str(out), str(go)], stdout=subprocess.PIPE
        )
        second.append(late)
        assert late.stdout is not None and late.stdout.readline().strip() == b"opened"
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "make_optimizer", refused)
    try:
        with pytest.raises(SpecError):
            train(spec_from_dict(SPEC, source="tiny.toml"), out)
        go.touch()
        late = second[0]
        assert late.stdout is not None and late.stdout.readline().strip() == b"locked"
        assert out.is_dir()  # the second train's folder is there for it to write
        with pytest.raises(StoreError, match=f"pid {late.pid}"):
            train(spec_from_dict(SPEC, source="tiny.toml"), out)  # a third is refused
    finally:
        for late in second:
            late.kill()
            late.wait()


@pytest.mark.parametrize("below", [False, True])
def test_an_out_through_a_dangling_symlink_is_refused_naming_out_and_the_fix(
    tmp_path: Path, below: bool
) -> None:
    """``--out LINK`` where LINK points at a folder removed (or a disk not mounted): making the
    folder met the link and stopped with a raw FileExistsError traceback."""
    from tiny_run import SPEC_TOML
    from typer.testing import CliRunner

    from conetool.cli import app

    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(SPEC_TOML)
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "gone" / "runs")
    out = link / "run1" if below else link
    result = CliRunner().invoke(app, ["train", str(spec_file), "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in text, text
    said = f"--out {out} lies under {link}, a" if below else f"--out {out} is a"
    assert f"{said} symbolic link to {tmp_path / 'gone' / 'runs'}, which" in text, text
    assert f"mkdir -p '{tmp_path / 'gone' / 'runs'}'" in text, text
    assert link.is_symlink() and not (tmp_path / "gone").exists()  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny.toml"]


def test_write_error_names_a_dangling_symlink_in_the_path(tmp_path: Path) -> None:
    from conetool.io import write_error

    link = tmp_path / "store"
    link.symlink_to(tmp_path / "unmounted")
    exc = FileExistsError(errno.EEXIST, "File exists", str(link))
    error = write_error(link / "kernels", exc)
    assert error is not None, "a dangling link kept its traceback"
    assert f"{link} is a symbolic link to {tmp_path / 'unmounted'}" in str(error), error


def test_a_refused_train_removes_the_lock_it_created_beside_an_unchanged_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder holding a run's conetool.toml but no lock file (another copy of the run): a
    train refused inside the lock, which did not rewrite conetool.toml, removes its lock file."""
    from conetool import training

    out = tmp_path / "copy"
    out.mkdir()
    spec = spec_from_dict(SPEC, source="tiny.toml")
    paths.spec(out).write_text("# a run's spec\n")

    def refused(*args: object, **kwargs: object) -> None:
        raise SpecError("tiny.toml: a value found bad")

    monkeypatch.setattr(training, "_prepare_out", refused)
    with pytest.raises(SpecError):
        train(spec, out)
    assert sorted(p.name for p in out.iterdir()) == ["conetool.toml"]


def test_a_lock_whose_folder_a_refused_train_removed_meanwhile_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder removed between its check and the lock file's opening (a refused train's
    cleanup): the folder is made again and locked, not refused as not writable."""
    from conetool import store_lock

    out = tmp_path / "new"
    real_open = os.open
    calls: list[str] = []

    def racing_open(path: str, flags: int, *args: int) -> int:
        if not calls:  # the first open: the folder is gone, as a refused train left it
            calls.append(path)
            os.rmdir(out)
        return real_open(path, flags, *args)

    monkeypatch.setattr(store_lock.os, "open", racing_open)
    lock = store_lock.StoreLock.acquire(out, None, shared=False)
    try:
        assert lock is not None and paths.lock(out).is_file() and calls
    finally:
        if lock is not None:
            lock.release()
