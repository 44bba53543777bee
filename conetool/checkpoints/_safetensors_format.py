"""safetensors files: their headers (read and checked without the tensor data) and the tensors
of a file read whole, as views of its bytes.

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + the tensor
data. The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [start, end]}``
(offsets relative to the start of the data) and may hold ``"__metadata__": {str: str}``. Listing
parses only that header; loading reads the whole file once into one buffer, hashing it as it
streams (:mod:`._hashed_reads`), and builds the tensors as views of that buffer (no second copy,
no second read).

Everything here works on one file and raises :class:`CheckpointError` with a message that names the
file and the fix; discovery turns those errors into per-file problems.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from conetool.errors import CheckpointError
from conetool.io import SAFETENSORS_DTYPES as _DTYPES

from . import _opening
from ._opening import MAX_HEADER, ZIP_MAGIC, open_error

SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a safetensors header; ``start``/``end`` are offsets into the data."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one safetensors file (no tensor data)."""

    path: Path
    size: int  # bytes of the whole file
    data_start: int  # 8 + header length
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape."""
        return {k: v.shape for k, v in self.tensors.items()}


def _not_safetensors(path: Path, why: str, head: bytes = b"") -> CheckpointError:
    hint = "Re-save it with safetensors.torch.save_file, or delete it."
    if _looks_like_torch_save(head):
        hint = (
            f"It looks like a torch.save file: rename it to '{path.stem}.pt' (conetool reads it "
            f"with torch.load(weights_only=True)) or convert it to safetensors."
        )
    return CheckpointError(f"'{path}' is not a safetensors file: {why}. {hint}")


def _truncated(path: Path, size: int, needed: int) -> CheckpointError:
    return CheckpointError(
        f"'{path}' is truncated: it has {size} bytes but its safetensors header describes "
        f"{needed}. If a run is still writing it, wait and rerun; otherwise re-save or delete it."
    )


def _looks_like_torch_save(head: bytes) -> bool:
    """Whether a file's first bytes (at least 9 where it has them) are a torch.save file's: a zip
    archive, or a pickle (0x80, its protocol byte). A safetensors file's header length can begin
    with the same bytes (0x80 is the low byte of any length of 128 mod 256), but its JSON header
    then opens with '{' at byte 8."""
    if head[8:9] == b"{":
        return False
    return head.startswith(ZIP_MAGIC) or head[:1] == b"\x80"


def header_length(path: Path, head: bytes, size: int) -> int:
    """The header length of the safetensors file at ``path`` from its first bytes ``head`` (9 where
    the file has them: the header's own first byte tells a length from a pickle's opcodes)."""
    if size < 8:
        raise _not_safetensors(path, f"it has only {size} bytes (a header needs 8)", head)
    n = int.from_bytes(head[:8], "little")
    if _looks_like_torch_save(head) or n > MAX_HEADER:
        raise _not_safetensors(path, "its first 8 bytes are not a header length", head)
    if n > size - 8:
        raise _truncated(path, size, 8 + n)
    return n


def parse_header(path: Path, size: int, header: bytes) -> SafetensorsHeader:
    """Validate the JSON ``header`` of a safetensors file of ``size`` bytes at ``path``."""
    try:
        raw = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_safetensors(path, f"its header is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise _not_safetensors(path, "its header is not a JSON object")
    meta = raw.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _not_safetensors(path, "its __metadata__ is not a map of strings")
    data_start = 8 + len(header)
    tensors: dict[str, TensorInfo] = {}
    for name, entry in raw.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(s) for s in shape)
            start, end = int(start), int(end)
        except (TypeError, KeyError, ValueError):
            why = f"the header entry of tensor '{name}' is malformed"
            raise _not_safetensors(path, why) from None
        if dtype not in _DTYPES:
            raise CheckpointError(
                f"'{path}' holds tensor '{name}' of dtype {dtype}, which this torch build cannot "
                f"represent; re-save the checkpoint in float32."
            )
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if min(shape, default=0) < 0 or start < 0 or end - start != nbytes:
            raise _not_safetensors(path, f"tensor '{name}' has inconsistent shape and offsets")
        tensors[name] = TensorInfo(dtype, shape, start, end)
    spans = sorted((t.start, t.end) for t in tensors.values())
    for (_, end0), (start1, _) in itertools.pairwise(spans):
        if start1 < end0:
            raise _not_safetensors(path, "two tensors overlap in the data")
    data_end = data_start + max((e for _, e in spans), default=0)
    if data_end > size:
        raise _truncated(path, size, data_end)
    if data_end < size:
        raise _not_safetensors(path, f"it has {size - data_end} stray bytes after the last tensor")
    return SafetensorsHeader(path, size, data_start, dict(meta), tensors)


def read_header(path: Path) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file at ``path``; reads no tensor data."""
    try:
        with _opening.open_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            n = header_length(path, head, size)
            header = head[8 : 8 + n] + f.read(max(n - 1, 0))
    except OSError as e:
        raise open_error(path, e) from None
    if len(header) < n:
        raise _truncated(path, 8 + len(header), 8 + n)
    return parse_header(path, size, header)


def tensors_from_buffer(header: SafetensorsHeader, buf: bytearray) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose bytes are ``buf``, as views of ``buf`` (no copy)."""
    out: dict[str, torch.Tensor] = {}
    for name, info in header.tensors.items():
        dtype = _DTYPES[info.dtype]
        numel = math.prod(info.shape)
        offset = header.data_start + info.start
        if numel == 0:
            t = torch.empty(info.shape, dtype=dtype)
        elif offset % dtype.itemsize:  # writers align the data; copy in the rare case they did not
            t = torch.frombuffer(
                bytearray(buf[offset : offset + info.end - info.start]), dtype=dtype
            )
        else:
            t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=offset)
        out[name] = t.reshape(info.shape)
    return out
