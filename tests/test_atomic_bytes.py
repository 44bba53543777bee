"""Atomic writes through the temporary file's own descriptor (``conetool.io.atomic_write_bytes``):
the text writers and small safetensors files, the same bytes as before, the same failures."""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import conetool.io
from conetool.errors import StoreError

META = {f"key_{i:02d}": f"value {i}" for i in range(20, 0, -1)}  # out of order


def _old_way(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The file path of atomic_save_safetensors (save_file, then the header sorted in place)."""

    def write(tmp: Path) -> None:
        conetool.io.save_file(tensors, str(tmp), metadata=metadata)
        conetool.io._sort_metadata(tmp)

    conetool.io.atomic_write(path, write)


@pytest.mark.parametrize(
    "tensors",
    [
        {"kernel": torch.randn(16, 16)},
        {"kernel": torch.randn(3, 2, 3, 2, dtype=torch.float64)},
        {"a": torch.randn(5), "b": torch.arange(7), "c": torch.zeros(0)},
    ],
)
def test_small_files_are_the_bytes_save_file_writes(tmp_path, tensors):
    in_memory, on_disk = tmp_path / "m.safetensors", tmp_path / "d.safetensors"
    conetool.io.atomic_save_safetensors(in_memory, tensors, META)
    _old_way(on_disk, tensors, META)
    assert in_memory.read_bytes() == on_disk.read_bytes()
    loaded = load_file(str(in_memory))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_files_over_the_limit_go_through_save_file_with_the_same_bytes(tmp_path, monkeypatch):
    tensors = {"kernel": torch.randn(8, 8)}
    conetool.io.atomic_save_safetensors(tmp_path / "m.safetensors", tensors, META)
    monkeypatch.setattr(conetool.io, "IN_MEMORY_MAX", 8 * 8 * 4 - 1)
    calls: list[str] = []
    real = conetool.io.save_file
    monkeypatch.setattr(
        conetool.io, "save_file", lambda *a, **k: calls.append("x") or real(*a, **k)
    )
    conetool.io.atomic_save_safetensors(tmp_path / "d.safetensors", tensors, META)
    assert calls == ["x"]
    assert (tmp_path / "m.safetensors").read_bytes() == (tmp_path / "d.safetensors").read_bytes()


def test_text_and_small_kernels_are_written_through_one_descriptor(tmp_path, monkeypatch):
    # Was: the temporary file made by mkstemp, closed, opened again by name to write it (or
    # replaced by save_file's own file, whose header was then rewritten through a third open),
    # and opened once more to flush it.
    def refused(*args, **kwargs):
        raise AssertionError("the temporary file was opened again by name")

    monkeypatch.setattr(conetool.io, "save_file", refused)
    monkeypatch.setattr(Path, "write_bytes", refused)
    monkeypatch.setattr(builtins, "open", refused)
    conetool.io.atomic_write_text(tmp_path / "a.txt", "text")
    conetool.io.atomic_save_safetensors(tmp_path / "k.safetensors", {"kernel": torch.ones(4, 4)})
    monkeypatch.undo()
    assert (tmp_path / "a.txt").read_text() == "text"
    assert torch.equal(load_file(str(tmp_path / "k.safetensors"))["kernel"], torch.ones(4, 4))


def test_a_short_write_is_completed(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(conetool.io.os, "write", lambda fd, data: real(fd, bytes(data)[:3]))
    conetool.io.atomic_write_text(tmp_path / "a.txt", "0123456789" * 5)
    assert (tmp_path / "a.txt").read_text() == "0123456789" * 5


def test_a_full_disk_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    real, calls = os.write, []

    def write(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data)[:5])

    monkeypatch.setattr(conetool.io.os, "write", write)
    with pytest.raises(StoreError, match=r"(?i)no space left.*manifest\.json"):
        conetool.io.atomic_write_text(target, "new text, longer than five bytes")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
