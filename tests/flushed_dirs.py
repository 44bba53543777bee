"""Which directories ``conetool.io`` flushes: a probe the durability tests share."""

from __future__ import annotations

import os
import stat

import pytest

import conetool.io


def flushed_dirs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the inode of every directory that conetool.io flushes (os.fsync on it), in order,
    for the rest of the test."""
    real = conetool.io.os.fsync
    flushed: list[int] = []

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            flushed.append(info.st_ino)
        real(fd)

    monkeypatch.setattr(conetool.io.os, "fsync", fsync)
    return flushed
