"""torch.save files, read only with ``torch.load(weights_only=True)``: a cheap validity check,
what a file holds read from its pickle alone (memory-mapped: state dict shapes, stored steps,
the entries taken and left), and the object of a file read whole. A pickle that needs a global
beyond torch's allowlist is refused, but for numpy scalars (a step saved as ``np.int64(1500)``)
and ``argparse.Namespace`` (timm's saved arguments).

Everything here works on one file and raises :class:`CheckpointError` with a message that names the
file and the fix; discovery turns those errors into per-file problems.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import io
import pickle
import threading
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conetool.errors import CheckpointError

from . import _opening
from ._keys import strip_common_prefixes
from ._opening import MAX_HEADER, ZIP_MAGIC, open_error
from ._state_dicts import (
    STATE_DICT_ENTRIES,
    holds_named_tensors,
    is_state_dict,
    one_in_memory,
    other_state_dicts,
    unwrap_state_dict,
    what_it_holds,
)
from ._stored_steps import STEP_KEYS, BadStep, step_value

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def check_torch_file(path: Path) -> bool:
    """Cheap validity check of a torch.save file; True for the zip format, False for legacy pickle.

    Opens the zip central directory (at the end of the file), so a truncated file is caught
    without reading the tensor data.
    """
    try:
        with _opening.open_file(path) as f:
            head = f.read(8)
            if head.startswith(ZIP_MAGIC):
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
    if len(head) == 8 and 0 < int.from_bytes(head, "little") <= MAX_HEADER:
        hint = f"if it is a safetensors file, rename it to '{path.stem}.safetensors'."
    raise CheckpointError(f"'{path}' is not a torch.save checkpoint (unknown file format); {hint}")


def storage_records(path: Path) -> Counter[tuple[int, int]] | None:
    """The ``(crc32, bytes)`` of each tensor storage record (``archive/data/0``, ...) of a
    zip-format torch.save file, read from its zip central directory only (no tensor data): two
    files with the same records hold the same storages, bit for bit. None when it cannot be
    read as a zip archive (a legacy pickle, a file gone)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (OSError, zipfile.BadZipFile, EOFError):
        return None
    return Counter((i.CRC, i.file_size) for i in infos if "/data/" in i.filename)


#: one tensor of a state dict as its torch.save file stores it: dtype, shape, strides, offset
#: in its storage, and the ``(crc32, bytes)`` of the zip record holding that storage
TensorRecord = tuple[str, tuple[int, ...], tuple[int, ...], int, int, int]


def state_dict_records(path: Path) -> dict[str, TensorRecord] | None:
    """Each tensor of the state dict a zip-format torch.save file holds (the one the listing
    takes: :func:`unwrap_state_dict`), under its name without a wrapper prefix all share
    (``module.``), with its storage's zip record (:data:`TensorRecord`): what the file holds of
    the weights alone, told from the pickle and the zip directory, no tensor data read. Two
    files with equal records hold the same state dict, bit for bit, whatever else they hold
    (an optimizer state beside the weights in one of them).

    The pickle is read onto the ``meta`` device, where torch records each storage's offset in
    the file. None when that cannot be told: a torch that records no offset there, a file that
    cannot be read so, an offset inside no data record. A tensor of no elements is recorded
    by its dtype and shape alone (``(dtype, shape, (), 0, 0, 0)``): it has no bytes to compare."""
    if not _meta_offsets():
        return None
    try:
        obj = load_weights_only(lambda: str(path), map_location="meta")
        state = unwrap_state_dict(obj, path, compare_values=False)
        with zipfile.ZipFile(path) as z:
            infos = sorted(z.infolist(), key=lambda i: i.header_offset)
    except (CheckpointError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        return None
    except (OSError, zipfile.BadZipFile):
        return None  # (a file gone or cut short since the listing read it)
    starts = [i.header_offset for i in infos]
    records: dict[str, TensorRecord] = {}
    for key, t in zip(strip_common_prefixes(state)[1], state.values(), strict=True):
        if t.numel() == 0:  # no bytes to compare: its dtype and shape are all it holds
            records[key] = (str(t.dtype), tuple(t.shape), (), 0, 0, 0)
            continue  # (torch gives an empty storage an offset in the next record)
        storage = t.untyped_storage()
        offset = getattr(storage, "_checkpoint_offset", None)
        if not isinstance(offset, int):
            return None
        at = bisect.bisect_right(starts, offset) - 1
        info = infos[at] if at >= 0 else None
        end = starts[at + 1] if at + 1 < len(starts) else None
        if (
            info is None
            or "/data/" not in info.filename
            or info.file_size != storage.nbytes()
            or offset < info.header_offset + 30 + len(info.orig_filename.encode())
            or (end is not None and offset + info.file_size > end)
        ):
            return None  # not where a record of this storage's data lies
        records[key] = (
            str(t.dtype),
            tuple(t.shape),
            tuple(t.stride()),
            int(t.storage_offset()),
            info.CRC,
            info.file_size,
        )
    return records


@functools.cache
def _meta_offsets() -> bool:
    """Whether this torch, loading a file onto the ``meta`` device, reads no tensor data and
    records each storage's offset in the file (``_checkpoint_offset``; torch before it read
    the data): tried once on a file of one tensor."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    buf.seek(0)
    try:
        loaded = torch.load(buf, map_location="meta", weights_only=True)
        return isinstance(getattr(loaded["w"].untyped_storage(), "_checkpoint_offset", None), int)
    except Exception:  # (any failure: no such load here)
        return False


def _unsafe_pickle_error(path: Path, error: Exception) -> CheckpointError:
    reason = next((ln.strip() for ln in str(error).splitlines() if "Unsupported" in ln), "")
    reason = reason.rstrip(".")  # (torch's ends with one: the sentence below gives its own)
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
        f"(sd.state_dict() for a whole model saved with torch.save(model), sd['state_dict'] "
        f"for Lightning) and save it with "
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
    (a step saved as ``np.int64(1500)`` or ``np.float64(1500.0)``) or an ``argparse.Namespace``
    (timm's ``train.py`` saves its arguments as ``"args"`` beside the state dict) is read again
    with only :func:`_safe_extra_globals` allowed; any other global stays refused."""
    try:
        return torch.load(source(), weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        if "numpy" not in str(e) and "argparse.Namespace" not in str(e):
            raise
        refused = e
    with _numpy_lock:
        allowed = _safe_extra_globals()
        if not allowed:  # torch before 2.5, or the user allowed them already
            raise refused
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(source(), weights_only=True, **kwargs)
            except (TypeError, AttributeError) as e:  # a Namespace built with odd state
                raise pickle.UnpicklingError(
                    f"its pickle builds an object it may not (weights_only=True): {e}"
                ) from e


def _safe_extra_globals() -> list[Any]:
    """:func:`_numpy_scalar_globals` and ``argparse.Namespace``: a plain bag of attributes,
    built by ``object.__new__`` and filled by updating its ``__dict__`` with what the
    restricted unpickler reads (its values pass the same allowlist), so no code of the file
    runs. Empty where torch has no ``safe_globals`` (before 2.5)."""
    if not hasattr(torch.serialization, "safe_globals"):
        return []
    held = torch.serialization.get_safe_globals()
    return _numpy_scalar_globals() + [g for g in (argparse.Namespace,) if g not in held]


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
    #: :func:`step_value` reads them (None: the entry is None); none for a plain state dict
    #: (its entries are tensors)
    steps: dict[str, int | BadStep | None]
    #: the entry of :data:`STATE_DICT_ENTRIES` whose state dict is taken; None for a plain state
    #: dict (or none taken)
    entry: str | None = None
    #: the other :data:`STATE_DICT_ENTRIES` that hold a state dict of the same names, dtypes and
    #: shapes, but not one in memory with the one taken: their values are compared only when the
    #: file is read in full (``kernels``, ``inspect --verify``), which refuses the file if they differ
    uncompared: tuple[str, ...] = ()
    #: where the dict holds another state dict of the same network, which is not read (an EMA
    #: of the weights): the keys leading to each (:func:`other_state_dicts`: ``("ema",)``,
    #: ``("callbacks", "EMA", "ema_state_dict")``)
    left: tuple[tuple[str, ...], ...] = ()
    #: the dict's ``epoch`` entry when it is a whole number (timm's and Lightning's dicts
    #: store one): no step, but a name whose number it is counts epochs; else None
    epoch: int | None = None


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
        holds = None if holds_named_tensors(obj) else what_it_holds(obj, path)
        return TorchContents(None, str(e), holds, {})
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
        return TorchContents(shapes, None, None, {})
    steps = {key: step_value(obj[key]) for key in STEP_KEYS if key in obj}
    first, *others = (key for key in STATE_DICT_ENTRIES if is_state_dict(obj.get(key)))
    uncompared = tuple(key for key in others if not one_in_memory(obj[first], obj[key]))
    left = tuple(other_state_dicts(obj, state))
    epoch = step_value(obj["epoch"]) if "epoch" in obj else None
    held = epoch if isinstance(epoch, int) else None
    return TorchContents(shapes, None, None, steps, first, uncompared, left, held)


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
