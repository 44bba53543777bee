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
import resource
import torch
from conetool import heap

SIZE = 8 * 2**20 // 4  # 8 MiB of float32, four at a time: more than glibc's trim threshold


def faults_of_allocations():
    # Minor page faults while allocating and touching 4 x 8 MiB, and freeing them, eight times.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        blocks = [torch.ones(SIZE) for _ in range(4)]
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1])  # pages


out = [faults_of_allocations()]
with heap.kept_freed_memory():
    with heap.kept_freed_memory():  # nested: the outer block's settings hold
        pass
    faults_of_allocations()  # the heap grows to hold the blocks (glibc's aligned allocations
    faults_of_allocations()  # leave gaps at first; they coalesce)
    out.append(faults_of_allocations())
    out.append(resident())  # freed, and kept
out.append(resident())  # given back on leaving
print(*out, 4 * SIZE * 4 // resource.getpagesize())
"""


@glibc
def test_freed_memory_is_reused_inside_the_block_and_returned_after() -> None:
    # In a fresh process: a long-lived one may have free chunks of 32 MiB in its heap already.
    env = {k: v for k, v in os.environ.items() if k not in (*heap._USER_SETTINGS, "GLIBC_TUNABLES")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    before, inside, kept, after, pages = map(int, done.stdout.split())
    # glibc's default: faulted in again, a page at a time (in 3 to 8 of the 8 rounds, measured)
    assert before > 2 * pages
    assert inside < pages // 2  # kept: reused
    assert kept - after > 0.9 * pages  # and returned to the system on leaving the block


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
        ("mallopt", heap._M_MMAP_THRESHOLD, heap._MMAP),
        ("mallopt", heap._M_TRIM_THRESHOLD, heap._HELD),
        ("mallopt", heap._M_MMAP_THRESHOLD, heap._MMAP),
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
