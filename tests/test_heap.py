"""Freed memory kept in the process during an eNTK computation (:mod:`conetool.heap`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conetool import heap

glibc = pytest.mark.skipif(heap._glibc() is None, reason="needs glibc's malloc")
_PROBE = """
import resource, sys
import torch
from conetool import heap

SIZE = 64 * 2**20 // 4  # 64 MiB of float32: above glibc's largest dynamic mmap threshold


def faults_of_second_allocation():
    # Minor page faults while allocating and touching 64 MiB again, after freeing it.
    first = torch.ones(SIZE)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(SIZE)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


out = [faults_of_second_allocation()]
with heap.kept_freed_memory():
    with heap.kept_freed_memory():  # nested: the outer block's settings hold
        pass
    out.append(faults_of_second_allocation())
out.append(faults_of_second_allocation())
print(*out, SIZE * 4 // resource.getpagesize())
"""


@glibc
def test_freed_memory_is_reused_inside_the_block_and_returned_after() -> None:
    # In a fresh process: a long-lived one may have a free chunk of 64 MiB in its heap already.
    env = {k: v for k, v in os.environ.items() if k not in (*heap._USER_SETTINGS, "GLIBC_TUNABLES")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    before, inside, after, pages = map(int, done.stdout.split())
    assert before > pages // 2  # glibc's default: faulted in again, a page at a time
    assert inside < pages // 10  # kept: reused
    assert after > pages // 2  # put back on leaving the block


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad, 0))
        return 1


def test_settings_change_on_the_outermost_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*heap._USER_SETTINGS, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    libc = _Recorder()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    with heap.kept_freed_memory():
        with heap.kept_freed_memory():
            assert len(libc.calls) == 2
        assert len(libc.calls) == 2
    assert libc.calls == [
        ("mallopt", heap._M_MMAP_THRESHOLD, heap._HELD),
        ("mallopt", heap._M_TRIM_THRESHOLD, heap._HELD),
        ("mallopt", heap._M_MMAP_THRESHOLD, heap._RESTORED_MMAP),
        ("mallopt", heap._M_TRIM_THRESHOLD, heap._RESTORED_TRIM),
        ("trim", 0, 0),
    ]
    with pytest.raises(RuntimeError), heap.kept_freed_memory():  # an error still puts them back
        raise RuntimeError
    assert libc.calls[-1] == ("trim", 0, 0) and len(libc.calls) == 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "1000000"),
        ("MALLOC_MMAP_THRESHOLD_", "1000000"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000"),
    ],
)
def test_a_users_own_malloc_settings_stand(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    libc = _Recorder()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    monkeypatch.setenv(name, value)
    with heap.kept_freed_memory():
        pass
    assert libc.calls == []


def test_empirical_ntk_runs_inside_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from conetool import ntk

    depths: list[int] = []
    original = ntk._compute

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        depths.append(heap._depth)
        return original(*args, **kwargs)

    for name in (*heap._USER_SETTINGS, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(heap, "_glibc", lambda: _Recorder())
    monkeypatch.setattr(ntk, "_compute", spy)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    ntk.empirical_ntk(model, torch.randn(3, 3), device="cpu")
    assert depths == [1] and heap._depth == 0
