"""File formats: safetensors headers, one-pass reads with a content hash, torch.save files.

Everything here works on one file and raises :class:`CheckpointError` with a message that names the
file and the fix; discovery turns those errors into per-file problems.

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + the tensor
data. The JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [start, end]}``
(offsets relative to the start of the data) and may hold ``"__metadata__": {str: str}``. Listing
parses only that header; loading reads the whole file once into one buffer, hashing it as it
streams, and builds the tensors as views of that buffer (no second copy, no second read).
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import json
import math
import numbers
import os
import pickle
import re
import sys
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from conetool.errors import CheckpointError
from conetool.io import SAFETENSORS_DTYPES as _DTYPES

from ._keys import KNOWN_PREFIXES, diff_keys, strip_common_prefixes

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_CHUNK = 8 * 2**20
_MAX_HEADER = 100 * 2**20  # safetensors itself refuses headers over 100 MB
_ZIP_MAGIC = b"PK\x03\x04"


def _open(path: Path) -> io.BufferedReader:  # indirection so tests can simulate unreadable files
    return open(path, "rb")


def _stat(path: Path) -> os.stat_result:  # indirection so tests can simulate a growing file
    return os.stat(path)


def open_error(path: Path, error: OSError) -> CheckpointError:
    """A :class:`CheckpointError` for an ``OSError`` raised while opening or reading ``path``."""
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return CheckpointError(
            f"cannot read '{path}': permission denied. Make it readable "
            f"(chmod u+r '{path}') or run as a user who may read it."
        )
    if error.errno == errno.ELOOP:
        return CheckpointError(
            f"'{path}' is a symlink loop (following its links leads back to itself). Remove the "
            f"link or point it at the real checkpoint file."
        )
    if isinstance(error, FileNotFoundError):
        return CheckpointError(
            f"'{path}' disappeared (or is a broken symlink) while conetool was reading the "
            f"directory. If a run is still writing or rotating checkpoints, wait and rerun; "
            f"otherwise remove the broken link."
        )
    return CheckpointError(
        f"cannot read '{path}': {error.strerror or error}. Check the file and the disk."
    )


def _changed_error(
    path: Path, before: os.stat_result, after: os.stat_result | None
) -> CheckpointError:
    what = "was replaced or removed"
    if after is not None and after.st_size != before.st_size:
        what = f"went from {before.st_size} to {after.st_size} bytes"
    elif after is not None:
        what = "was modified"
    return CheckpointError(
        f"'{path}' changed while conetool was reading it (it {what}): a run is probably still "
        f"writing it. Wait until the run has written it, or rerun."
    )


# --------------------------------------------------------------------------------------------------
# safetensors headers


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
    return head.startswith(_ZIP_MAGIC) or head[:1] == b"\x80"


def _header_length(path: Path, head: bytes, size: int) -> int:
    """The header length of the safetensors file at ``path`` from its first bytes ``head`` (9 where
    the file has them: the header's own first byte tells a length from a pickle's opcodes)."""
    if size < 8:
        raise _not_safetensors(path, f"it has only {size} bytes (a header needs 8)", head)
    n = int.from_bytes(head[:8], "little")
    if _looks_like_torch_save(head) or n > _MAX_HEADER:
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
        with _open(path) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            n = _header_length(path, head, size)
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


# --------------------------------------------------------------------------------------------------
# one-pass reads with a streaming hash


class Streamed(NamedTuple):
    """One file read by :func:`stream_file`."""

    data: bytearray | None  # its bytes, when kept
    size: int
    sha256: str  # hex
    mtime_ns: int  # its modification time when it was read (unchanged through the read)


def stream_file(path: Path, *, keep: bool) -> Streamed:
    """Read ``path`` once, hashing as it streams; return its bytes (if ``keep``), size, sha256
    and modification time.

    Raises :class:`CheckpointError` when the file changes while it is read (size, mtime or inode
    differ before and after, or the read ends early or runs long): it is still being written.
    """
    digest = hashlib.sha256()
    try:
        with _open(path) as f:
            before = os.fstat(f.fileno())
            size = before.st_size
            buf = bytearray(size if keep else min(size, _CHUNK))
            view = memoryview(buf)
            pos = 0
            while pos < size:
                window = view[pos : pos + _CHUNK] if keep else view[: min(_CHUNK, size - pos)]
                n = f.readinto(window)
                if not n:
                    break
                digest.update(window[:n])
                pos += n
            view.release()
            longer = bool(f.read(1))
    except OSError as e:
        raise open_error(path, e) from None
    try:
        after: os.stat_result | None = _stat(path)
    except OSError:
        after = None
    same = after is not None and (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    if pos < size or longer or not same:
        raise _changed_error(path, before, after)
    return Streamed(buf if keep else None, size, digest.hexdigest(), before.st_mtime_ns)


def combine_fingerprints(parts: list[tuple[int, str]]) -> str:
    """``"<total bytes>:<sha256>"``: a file's own sha256, or for shards the sha256 of its lines."""
    total = sum(size for size, _ in parts)
    if len(parts) == 1:
        return f"{total}:{parts[0][1]}"
    lines = "".join(f"{size}:{hexdigest}\n" for size, hexdigest in parts)
    return f"{total}:{hashlib.sha256(lines.encode()).hexdigest()}"


def files_fingerprint(files: Sequence[Path]) -> str:
    """:func:`combine_fingerprints` of ``files`` (a checkpoint's file or shards, in order),
    each streamed and hashed, nothing kept."""
    parts = []
    for path in files:
        streamed = stream_file(path, keep=False)
        parts.append((streamed.size, streamed.sha256))
    return combine_fingerprints(parts)


# --------------------------------------------------------------------------------------------------
# torch.save files (read only with weights_only=True)


def check_torch_file(path: Path) -> bool:
    """Cheap validity check of a torch.save file; True for the zip format, False for legacy pickle.

    Opens the zip central directory (at the end of the file), so a truncated file is caught
    without reading the tensor data.
    """
    try:
        with _open(path) as f:
            head = f.read(8)
            if head.startswith(_ZIP_MAGIC):
                try:
                    with zipfile.ZipFile(f) as z:
                        names = z.namelist()
                except (zipfile.BadZipFile, EOFError):
                    raise CheckpointError(
                        f"'{path}' is truncated or corrupt (its zip archive has no central "
                        f"directory). If a run is still writing it, wait and rerun; otherwise "
                        f"re-save or delete it."
                    ) from None
                if not any(n.endswith("data.pkl") for n in names):
                    raise CheckpointError(
                        f"'{path}' is a zip archive but not a torch.save file (no data.pkl "
                        f"inside); move it out of the checkpoint directory."
                    )
                return True
    except OSError as e:
        raise open_error(path, e) from None
    if head[:1] == b"\x80":
        return False
    hint = "move it out of the checkpoint directory."
    if len(head) == 8 and 0 < int.from_bytes(head, "little") <= _MAX_HEADER:
        hint = f"if it is a safetensors file, rename it to '{path.stem}.safetensors'."
    raise CheckpointError(f"'{path}' is not a torch.save checkpoint (unknown file format); {hint}")


def _unsafe_pickle_error(path: Path, error: Exception) -> CheckpointError:
    reason = next((ln.strip() for ln in str(error).splitlines() if "Unsupported" in ln), "")
    if "numpy" in reason and not _numpy_scalar_globals():
        reason += (
            " (a numpy scalar, such as a step saved as np.int64(1500), is read with torch 2.5 or "
            "later; or save the step as an int)"
        )
    return CheckpointError(
        f"'{path}' cannot be read with torch.load(weights_only=True)"
        f"{': ' + reason if reason else ''}. conetool never unpickles arbitrary objects (a pickle "
        f"can run code). If you trust the file, convert it once in Python: "
        f"sd = torch.load('{path}', weights_only=False); take the model's state dict "
        f"(sd['state_dict'] for Lightning) and save it with "
        f"safetensors.torch.save_file(sd, 'step_2000.safetensors', "
        f"metadata={{'step': '2000'}}); safetensors is the preferred format."
    )


# safe_globals changes torch's process-wide allowlist while it is open: one file at a time (a
# load in another thread meanwhile may read numpy scalars too, and nothing more)
_numpy_lock = threading.Lock()


def _numpy_scalar_globals() -> list[Any]:
    """The globals a pickled numpy integer, float or bool scalar needs, and nothing more: numpy's
    ``scalar`` (which builds the value from its dtype and bytes), ``numpy.dtype`` and the dtype
    classes of those scalars. Files written under numpy 1 name ``numpy.core.multiarray.scalar``,
    under numpy 2 ``numpy._core.multiarray.scalar``: both are allowed where torch takes a name
    with a global (2.6 and later). Empty where torch has no ``safe_globals`` (before 2.5); those
    already allowed by the user are left out (leaving the context would remove them)."""
    if not hasattr(torch.serialization, "safe_globals"):
        return []
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy before 1.26
        from numpy.core import multiarray  # type: ignore[no-redef]
    scalar = multiarray.scalar
    codes = np.typecodes["AllInteger"] + "efd?"  # integers, float16/32/64, bool
    wanted: list[Any] = [scalar, np.dtype, *{type(np.dtype(c)) for c in codes}]
    if torch.__version__ >= "2.6":
        wanted += [(scalar, f"numpy.{core}.multiarray.scalar") for core in ("core", "_core")]
    held = torch.serialization.get_safe_globals()
    return [g for g in wanted if g not in held]


def load_weights_only(source: Callable[[], str | io.BytesIO], **kwargs: Any) -> Any:
    """``torch.load(source(), weights_only=True, **kwargs)``. A pickle that holds a numpy scalar
    (a step saved as ``np.int64(1500)`` or ``np.float64(1500.0)``) is read again with only
    :func:`_numpy_scalar_globals` allowed; any other global stays refused."""
    try:
        return torch.load(source(), weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if "numpy" not in str(e):
            raise
        refused = e
    with _numpy_lock:
        allowed = _numpy_scalar_globals()
        if not allowed:  # torch before 2.5, or the user allowed them already: not numpy scalars
            raise refused
        with torch.serialization.safe_globals(allowed):
            return torch.load(source(), weights_only=True, **kwargs)


#: The entries of a dict that may hold its state dict, in the order they are read: Lightning's
#: ``"state_dict"``, a training loop's ``"model_state_dict"`` or ``"model"``. A dict that holds
#: several (a loop that saved ``model.state_dict()`` under two names, or the raw model beside its
#: DDP-wrapped copy) is read only when they hold the same tensors; then the first is taken.
STATE_DICT_ENTRIES = ("state_dict", "model_state_dict", "model")


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def unwrap_state_dict(
    obj: object, path: Path, *, compare_values: bool = True
) -> dict[str, torch.Tensor]:
    """A plain state dict from what torch.load returned.

    Accepts a mapping of tensors, or a mapping holding one under an entry of
    :data:`STATE_DICT_ENTRIES` (``"state_dict"`` (Lightning), ``"model_state_dict"``, ``"model"``).
    When it holds several, they must hold the same tensors (names, but for a wrapper prefix all
    of one entry's share, such as DDP's ``module.``; dtypes; shapes; and, with
    ``compare_values``, values bit for bit), and the first in that order is taken; tensors that
    are one in memory (one state dict saved under two names) are not compared. Without
    ``compare_values`` (a memory-mapped read of the pickle only) no tensor data is read: values
    are compared when the file is read in full.

    Raises:
        CheckpointError: no state dict in ``obj``, or entries holding different state dicts
            (naming the entries, the first difference and the fix).
    """
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        found = {key: obj[key] for key in STATE_DICT_ENTRIES if _is_state_dict(obj.get(key))}
        if found:
            first, *others = found
            for other in others:
                why = _state_dicts_differ(found[first], found[other], compare_values)
                if why is not None:
                    raise CheckpointError(_different_entries(path, list(found), first, other, why))
            return dict(found[first])
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        what = f"a dict with keys {keys}" if obj else "an empty dict"
    else:
        what = f"a {type(obj).__name__}"
    raise CheckpointError(
        f"'{path}' holds {what}, not a state dict. conetool reads a plain state dict "
        f"(torch.save(model.state_dict(), ...)) or a dict holding one under 'state_dict' "
        f"(Lightning), 'model_state_dict' or 'model'; re-save the model's state dict."
    )


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are one tensor in memory (the same storage, offset, strides, dtype
    and shape): equal without reading their values, memory-mapped ones too."""
    return bool(
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.device == b.device
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.stride() == b.stride()
    )


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same dtype, shape and bytes (NaN equals itself); two
    views of the same memory are equal without a read."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if _same_memory(a, b):
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _one_in_memory(first: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> bool:
    """Whether two state dicts that hold the same names (but for a wrapper prefix all of one's
    share), dtypes and shapes are one in memory, tensor by tensor (one state dict saved under two
    entries, the model beside its DDP-wrapped copy): their values are then equal without a read."""
    if first is other:
        return True
    a = dict(zip(strip_common_prefixes(first)[1], first.values(), strict=True))
    b = dict(zip(strip_common_prefixes(other)[1], other.values(), strict=True))
    return a.keys() == b.keys() and all(_same_memory(t, b[k]) for k, t in a.items())


def _bare_name(key: str) -> str:
    """``key`` without any known wrapper prefix at its start (``module.fc.weight`` -> ``fc.weight``)."""
    while prefix := next((p for p in KNOWN_PREFIXES if key.startswith(p)), None):
        key = key[len(prefix) :]
    return key


def other_state_dicts(obj: Mapping[Any, Any], taken: Mapping[str, torch.Tensor]) -> list[str]:
    """The entries of the dict ``obj`` that hold another state dict of the network whose state dict
    ``taken`` is (an EMA of its weights: ``"ema"``, ``"model_ema"``, ``"ema_state_dict"``, an
    averaged copy), which are not read: a mapping of tensors, under a string entry outside
    :data:`STATE_DICT_ENTRIES`, that shares a tensor name with ``taken`` (each name without its
    wrapper prefixes: timm's ``ModelEmaV2`` and ``AveragedModel`` save ``module.fc.weight``). A
    dict of metrics (``{"loss": tensor(0.3)}``) shares none; an optimizer state is no mapping of
    tensors."""
    names = {_bare_name(k) for k in taken}
    return [
        key
        for key, value in obj.items()
        if isinstance(key, str)
        and key not in STATE_DICT_ENTRIES
        and _is_state_dict(value)
        and any(isinstance(k, str) and _bare_name(k) in names for k in value)
    ]


def _state_dicts_differ(
    first: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], compare_values: bool
) -> str | None:
    """How ``other`` differs from ``first`` (names without a prefix they all share, then
    shapes, dtypes, then values when ``compare_values``), or None when they hold the same
    tensors. Cheapest first: names and shapes need no tensor data."""
    if first is other:
        return None
    a = dict(zip(strip_common_prefixes(first)[1], first.values(), strict=True))
    b = dict(zip(strip_common_prefixes(other)[1], other.values(), strict=True))
    shapes_a = {k: tuple(v.shape) for k, v in a.items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.items()}
    if shapes_a != shapes_b:
        return diff_keys(shapes_b, shapes_a)
    for key, tensor in a.items():
        if tensor.dtype != b[key].dtype:
            return f"'{key}' is {_dtype_name(b[key].dtype)}, not {_dtype_name(tensor.dtype)}"
    if compare_values:
        for key, tensor in a.items():
            if not bitwise_equal(tensor, b[key]):
                return f"'{key}' holds other values"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _different_entries(path: Path, found: list[str], first: str, other: str, why: str) -> str:
    """The error for a dict holding different state dicts under two of its entries."""
    entries = ", ".join(f"'{k}'" for k in found)
    return (
        f"'{path}' holds a state dict under each of {entries}, and they differ ('{other}' from "
        f"'{first}': {why}), as when a loop saves the model beside an EMA of it; conetool "
        "measures one network per file and will not guess which. Save the one to measure "
        f"alone, in Python: sd = torch.load('{path}', weights_only=True); "
        f"safetensors.torch.save_file(sd['{first}'], 'step_2000.safetensors', "
        f"metadata={{'step': '2000'}}) with the file's step (or sd['{other}'] for the other one)."
    )


def _holds_named_tensors(obj: object, depth: int = 3) -> bool:
    """Whether ``obj`` is a mapping holding a tensor under a string key, itself or in a mapping
    under a string key (``depth`` levels down): what a state dict, or a dict wrapping one, is.
    A bare tensor, a list, a dict of numbers, an optimizer state (its tensors are under the
    parameters' numbers) are not."""
    if not isinstance(obj, Mapping):
        return False
    return any(
        isinstance(key, str)
        and (
            isinstance(value, torch.Tensor)
            or (depth > 0 and _holds_named_tensors(value, depth - 1))
        )
        for key, value in obj.items()
    )


def _what_it_holds(obj: object) -> str:
    """``"a list of 100 items"``, ``"a tensor of shape (60, 4)"``, ``"a dict without tensors
    (keys 'train', 'test')"``, ``"an optimizer state (Optimizer.state_dict())"``: what a file
    that holds no state dict holds, in a few words."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty dict"
        if set(obj) == {"state", "param_groups"}:
            return "an optimizer state (Optimizer.state_dict())"
        keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
        return f"a dict without tensors by name (keys {keys})"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} item{'s' if len(obj) != 1 else ''}"
    return f"a {type(obj).__name__}"


#: The entries of a training loop's dict that give its step, the first present taken: a plain
#: loop's ``{"model_state_dict": ..., "step": 1500}``, Lightning's ``global_step`` (its ``epoch``
#: is no step). The same names are read from safetensors metadata. An entry that is None (a loop
#: that saved before its counter was set) is taken as absent.
STEP_KEYS = ("step", "global_step")

#: The largest step taken, 2**53: up to it float64 holds every whole number exactly (plots, numpy
#: arrays, JSON readers other than Python's), and the store's int64 step arrays hold it. No training
#: run comes near it; a larger stored "step" is another count or a corrupt entry.
MAX_STEP = 2**53

_NOT_A_COUNT = "which is not a whole number of steps (0 or more)"
#: Why a step above :data:`MAX_STEP` is refused, wherever it comes from (the file, its name).
BEYOND_MAX_STEP = (
    f"which is beyond any training run: conetool takes steps up to 2**53 = {MAX_STEP} (float64 "
    "holds every whole number up to it, and the store's step arrays are int64)"
)


@dataclass(frozen=True)
class BadStep:
    """A stored step entry that gives no step: how it reads and why, for the error that names
    its file."""

    shown: str  # "2.5", "'last'", "np.float64(nan)", "16777218.0 (a torch.float32 tensor)"
    why: str = _NOT_A_COUNT

    def __str__(self) -> str:
        return self.shown


def _count(step: int, shown: str) -> int | BadStep:
    """``step`` when it is a count of steps (0 to :data:`MAX_STEP`), else why not."""
    if step < 0:
        return BadStep(shown)
    if step > MAX_STEP:
        return BadStep(shown, BEYOND_MAX_STEP)
    return step


def _shown_int(value: int) -> str:
    # repr of a very long int is slow, and past 4300 digits Python refuses to write it
    return (
        str(value) if value.bit_length() <= 256 else f"a whole number of {value.bit_length()} bits"
    )


def _float_step(value: float, eps: float, shown: str, kind: str) -> int | BadStep:
    """A float step: its int when it is finite and whole, within the range where ``kind``
    (machine epsilon ``eps``) holds every whole number (2**53 for float64, 2**24 for float32):
    past it the step the float was made from may have been rounded to another."""
    if not (math.isfinite(value) and value.is_integer()):
        return BadStep(shown)
    exact = round(2 / eps)
    if abs(value) > exact:
        return BadStep(
            shown,
            f"which is past {exact}, beyond which {kind} does not hold every whole number: the "
            f"step it was saved from may have been rounded",
        )
    return _count(int(value), shown)


def _step_value(value: object) -> int | BadStep | None:
    """A stored step entry: an int when it is a whole number of steps (an int; a float of a whole
    value, ``float(step)``, within its type's exact range; a tensor of one element (0-dim, or
    ``torch.tensor([1500])`` as some loops save it) or numpy scalar of either), None when it is
    None (no step stored), else a :class:`BadStep`."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        shape = tuple(value.shape)
        if value.numel() != 1:
            count = f"{value.numel()} values" if value.numel() else "no value"
            return BadStep(f"a tensor of shape {shape}", f"which holds {count}, not one step")
        of_shape = f" of shape {shape}" if shape else ""
        value = value.reshape(())
        shown = f"{value.item()!r} (a {value.dtype} tensor{of_shape})"
        if value.dtype == torch.bool or value.is_complex():
            return BadStep(shown)
        if value.is_floating_point():
            kind = str(value.dtype).removeprefix("torch.")
            return _float_step(value.item(), torch.finfo(value.dtype).eps, shown, kind)
        return _count(int(value.item()), shown)
    if isinstance(value, (bool, np.bool_)):
        return BadStep(repr(value))
    if isinstance(value, numbers.Integral):  # int and numpy integers (np.int64(1500))
        return _count(int(value), _shown_int(int(value)))
    if isinstance(value, np.floating):  # before float: np.float64 is a float too
        kind = np.dtype(type(value)).name
        return _float_step(float(value), float(np.finfo(type(value)).eps), repr(value), kind)
    if isinstance(value, float):
        return _float_step(value, sys.float_info.epsilon, repr(value), "float64")
    return BadStep(repr(value))


_WHOLE_DECIMAL = re.compile(r"\s*(\d+)\.0*\s*")
#: metadata texts that say no step: str(None), json.dumps(None), an empty value
_NO_STEP_TEXTS = ("", "None", "null")


def metadata_step(text: str) -> int | BadStep | None:
    """A safetensors metadata step (always a string): ``"2000"``, or ``"2000.0"`` as
    ``str(float(step))`` writes it, gives 2000; ``"None"``, ``"null"`` or ``""`` (a loop that
    wrote ``str(step)`` before its counter was set) give None, no step stored; anything else
    (``"2.5"``, ``"-3"``, ``"last"``, ``"1e3"``) a :class:`BadStep`."""
    if text.strip() in _NO_STEP_TEXTS:
        return None
    whole = _WHOLE_DECIMAL.fullmatch(text)
    try:
        step = int(whole.group(1) if whole else text)  # int() also takes "-3", " 7 ", "1_000"
    except ValueError:
        return BadStep(f"'{text}'")
    return _count(step, f"'{text}'")


@dataclass(frozen=True)
class TorchContents:
    """What a zip-format torch.save file holds, read from its pickle with its tensors
    memory-mapped (no tensor data read)."""

    #: its state dict's key -> shape; None when it holds none that can be taken
    shapes: dict[str, tuple[int, ...]] | None
    #: why no state dict can be taken from it (:func:`unwrap_state_dict`'s message), or None
    problem: str | None
    #: what it holds when that is no tensor by name at all (``"a list of 3 items"``): not a
    #: checkpoint (a cached data tensor, a list of losses, an optimizer state); else None
    holds: str | None
    #: the :data:`STEP_KEYS` entries beside a state dict that a dict wraps, as
    #: :func:`_step_value` reads them (None: the entry is None); none for a plain state dict
    #: (its entries are tensors)
    steps: dict[str, int | BadStep | None]
    #: the entry of :data:`STATE_DICT_ENTRIES` whose state dict is taken; None for a plain state
    #: dict (or none taken)
    entry: str | None = None
    #: the other :data:`STATE_DICT_ENTRIES` that hold a state dict of the same names, dtypes and
    #: shapes, but not one in memory with the one taken: their values are compared only when the
    #: file is read in full (``kernels``, ``inspect --verify``), which refuses the file if they differ
    uncompared: tuple[str, ...] = ()
    #: other entries holding a state dict of the same network (:func:`other_state_dicts`: an EMA
    #: of the weights), which are not read
    left: tuple[str, ...] = ()


def read_torch_contents(path: Path) -> TorchContents:
    """What the zip-format torch.save file at ``path`` holds (see :class:`TorchContents`),
    memory-mapped: reads the pickle, not the tensor data. Raises :class:`CheckpointError` for a
    file ``torch.load(weights_only=True)`` cannot read."""
    try:
        obj = load_weights_only(lambda: str(path), map_location="cpu", mmap=True)
    except pickle.UnpicklingError as e:
        raise _unsafe_pickle_error(path, e) from None
    except (RuntimeError, EOFError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"'{path}' is not a readable torch checkpoint ({first}); re-save or delete it."
        ) from None
    except OSError as e:
        raise open_error(path, e) from None
    try:
        state = unwrap_state_dict(obj, path, compare_values=False)  # values: when read in full
    except CheckpointError as e:
        holds = None if _holds_named_tensors(obj) else _what_it_holds(obj)
        return TorchContents(None, str(e), holds, {})
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
        return TorchContents(shapes, None, None, {})
    steps = {key: _step_value(obj[key]) for key in STEP_KEYS if key in obj}
    first, *others = (key for key in STATE_DICT_ENTRIES if _is_state_dict(obj.get(key)))
    uncompared = tuple(key for key in others if not _one_in_memory(obj[first], obj[key]))
    left = tuple(other_state_dicts(obj, state))
    return TorchContents(shapes, None, None, steps, first, uncompared, left)


def load_torch_object(path: Path, buf: bytearray) -> Any:
    """What torch.load(weights_only=True) reads from a torch.save file whose bytes are ``buf``:
    the state dict, or the dict wrapping it with the loop's other entries
    (:func:`unwrap_state_dict` takes the state dict out of it)."""
    try:
        obj = load_weights_only(lambda: io.BytesIO(buf), map_location="cpu")
    except pickle.UnpicklingError as e:
        raise _unsafe_pickle_error(path, e) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"'{path}' is not a readable torch checkpoint ({first}). If a run is still writing "
            f"it, wait and rerun; otherwise re-save or delete it."
        ) from None
    return obj
