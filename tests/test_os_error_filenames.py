"""An ``OSError`` whose ``filename`` is bytes or a file descriptor (an int) in the command
line's error handling: said as for a str path (bytes) or as naming no path (an int), never a
``TypeError`` from ``Path(...)`` inside the handler."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import typer

from conetool.cli.app import handle_errors
from conetool.io import os_error_path, write_error


def _said(exc: OSError, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(typer.Exit) as stopped, handle_errors():
        raise exc
    assert stopped.value.exit_code == 1
    return " ".join(capsys.readouterr().err.split())


def test_a_bytes_filename_is_named_as_its_path(capsys, tmp_path):
    where = tmp_path / "store"
    exc = OSError(errno.EROFS, "Read-only file system", os.fsencode(where))
    said = _said(exc, capsys)
    assert f"{where} is on a read-only file system" in said
    assert "b'" not in said


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.ENOTDIR])
def test_a_file_descriptor_filename_names_no_path(capsys, code, monkeypatch, tmp_path):
    """os.fdopen and fd-based calls give an int: no path to name, but no TypeError either."""
    monkeypatch.chdir(tmp_path)
    exc = OSError(code, os.strerror(code), 7)
    if code == errno.ENOTDIR:  # no file blocks '.': a bug, its own traceback (not a TypeError)
        with pytest.raises(OSError) as raised, handle_errors():
            raise exc
        assert raised.value is exc
        return
    assert "error:" in _said(exc, capsys)


def test_os_error_path_reads_every_kind_of_filename():
    assert os_error_path(OSError(errno.EACCES, "x", "a/b")) == Path("a/b")
    assert os_error_path(OSError(errno.EACCES, "x", b"a/b")) == Path("a/b")
    assert os_error_path(OSError(errno.EACCES, "x", Path("a/b"))) == Path("a/b")
    assert os_error_path(OSError(errno.EACCES, "x", 3)) is None
    assert os_error_path(OSError(errno.EACCES, "x")) is None
    error = write_error(Path("out.csv"), OSError(errno.EACCES, "Permission denied", 3))
    assert error is not None and "cannot write out.csv: out.csv is not writable" in str(error)


@pytest.mark.parametrize("writer", ["text", "json", "bytes", "atomic_write"])
def test_a_folder_where_a_file_is_written_is_said_and_kept(writer, tmp_path):
    # report's index.html, embed's coords.csv...: a folder of that name was a raw
    # IsADirectoryError traceback
    from conetool import io
    from conetool.errors import StoreError

    target = tmp_path / "out" / "coords.csv"
    target.mkdir(parents=True)
    (target / "mine.txt").write_text("kept")
    write = {
        "text": lambda: io.atomic_write_text(target, "a,b\n"),
        "json": lambda: io.atomic_write_json(target, {"a": 1}),
        "bytes": lambda: io.atomic_write_bytes(target, b"a,b\n"),
        "atomic_write": lambda: io.atomic_write(target, lambda tmp: tmp.write_text("a,b\n")),
    }[writer]
    with pytest.raises(StoreError) as refused:
        write()
    said = " ".join(str(refused.value).split())
    assert f"cannot write {target}: a folder of that name is there" in said
    assert "Move or rename that folder" in said
    assert (target / "mine.txt").read_text() == "kept"
    assert sorted(p.name for p in target.parent.iterdir()) == ["coords.csv"]  # no temporary left
