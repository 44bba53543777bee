"""The files conetool writes are the same bytes for the same content, whichever process writes
them: a checkpoint's fingerprint is the sha256 of its bytes, so a run retrained bit for bit, or a
kernel recomputed, must not look changed because of the writer's hash-map order."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conetool.io import atomic_save_safetensors

METADATA = {
    "step": "1200",
    "kind": "trace",
    "format": "conetool",
    "spec_hash": "86913a7329a63f1e",
    "probe_hash": "0123456789abcdef",
    "record": '{"step": 1200, "source": ["/runs/a/step_1200.safetensors"], "note": "z\\u00e9"}',
    "dtype": "float32",
    "label": 'quote " and \u00e9 and tab\t',
}

_WRITE = """
import sys, torch
from pathlib import Path
from conetool.io import atomic_save_safetensors
meta = {meta!r}
tensors = {{"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, dtype=torch.float64)}}
atomic_save_safetensors(Path(sys.argv[1]), tensors, meta)
"""


def test_the_same_checkpoint_written_by_two_processes_is_the_same_bytes(tmp_path: Path) -> None:
    """safetensors' Rust writer orders the metadata by a hash map seeded per process: the same
    checkpoint saved twice had other bytes (and another fingerprint) nearly every time."""
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.safetensors"]
    code = _WRITE.format(meta=METADATA)
    # Three processes, each seeding its own hash map: this one and two others at once (one torch
    # import fewer, and the other two side by side).
    writers = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for path in files[1:]]
    try:
        tensors = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(3, dtype=torch.float64)}
        atomic_save_safetensors(files[0], tensors, METADATA)  # as _WRITE does
        assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    assert len(digests) == 1
    # and the file reads back as written: tensors, metadata (the header kept its length)
    loaded = load_file(files[0])
    assert torch.equal(loaded["w"], torch.arange(12.0).reshape(3, 4))
    assert torch.equal(loaded["b"], torch.ones(3, dtype=torch.float64))
    with safe_open(files[0], framework="pt") as handle:
        assert handle.metadata() == METADATA


def test_the_metadata_is_written_in_sorted_order(tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    atomic_save_safetensors(path, {"kernel": torch.eye(3)}, METADATA)
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = raw[8 : 8 + size].decode("utf-8")
    positions = [header.index(f'"{key}":') for key in sorted(METADATA)]
    assert positions == sorted(positions)
    assert size % 8 == 0  # the data still starts where the writer aligned it
    assert torch.equal(load_file(path)["kernel"], torch.eye(3))
