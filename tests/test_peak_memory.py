"""KernelsResult.peak_memory on the CPU: getrusage's ru_maxrss is KiB on Linux, bytes on macOS."""

from __future__ import annotations

import resource
import sys
from types import SimpleNamespace

import pytest
import torch

from conetool.pipeline import kernels_loop


@pytest.mark.parametrize(("platform", "expected"), [("linux", 3 * 1024**3), ("darwin", 3 * 2**20)])
def test_peak_memory_on_the_cpu_is_in_bytes_on_linux_and_macos(
    monkeypatch: pytest.MonkeyPatch, platform: str, expected: int
) -> None:
    """ru_maxrss * 1024 made a macOS peak of 3 MiB read as 3 GiB."""
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 2**20))
    assert kernels_loop._peak_memory(torch.device("cpu")) == expected
