"""The console script defers Python's garbage collection until the command's modules are
imported, then freezes them out of later collections (conetool/cli/collector.py). Each test runs
in a fresh interpreter: freezing the pytest process's objects would keep their cycles forever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_WATCH = """
import atexit, gc, sys
full = []
gc.callbacks.append(
    lambda phase, info: full.append(1) if phase == "stop" and info["generation"] == 2 else None
)
atexit.register(
    lambda: print(f"full={len(full)} enabled={gc.isenabled()} frozen={gc.get_freeze_count()}")
)
import conetool.cli as cli
sys.argv = ["conetool", *sys.argv[1:]]
cli.main()
"""


def _watched(*argv: str) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _WATCH, *argv], capture_output=True, text=True, timeout=300
    )
    line = done.stdout.strip().splitlines()[-1]
    return dict(item.split("=") for item in line.split())


def test_a_command_imports_pytorch_without_a_full_collection_and_then_collects_again(
    tmp_path: Path,
) -> None:
    # Was: importing PyTorch set off full collections (three in `distance`, 34-73 ms each,
    # finding nothing to free), and each later one walked PyTorch's objects again.
    said = _watched("inspect", str(tmp_path))  # (an empty folder: PyTorch loaded, then exit 1)
    assert said["full"] == "0", said
    assert said["enabled"] == "True", said  # collection is back on for the command's work
    assert int(said["frozen"]) > 100_000, said  # PyTorch's objects, out of later collections


def test_the_typer_app_called_in_process_keeps_its_collector() -> None:
    code = """
import gc
from typer.testing import CliRunner
from conetool.cli.app import app
CliRunner().invoke(app, ["inspect", "/nonexistent-folder"])
print(f"enabled={gc.isenabled()} frozen={gc.get_freeze_count()}")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "enabled=True frozen=0", done.stdout
