"""Read a checkpoint's tensors (one pass, hashed as it streams) and load them into a model.

Reading costs one read of each file: the bytes go into one buffer while a sha256 is computed over
them, and safetensors tensors are views of that buffer (no second copy). Pickle-based files are read
the same way and handed to ``torch.load(weights_only=True)``; nothing ever unpickles arbitrary
objects. A file whose size, modification time or inode changes during the read is reported as
still being written.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from conetool.errors import CheckpointError, CheckpointOverflowError

from ._hashed_reads import combine_fingerprints, files_fingerprint, stream_file
from ._keys import match_keys, mismatch_error
from ._safetensors_format import header_length, parse_header, read_header, tensors_from_buffer
from ._state_dicts import unwrap_state_dict
from ._tied import check_tied_values, tied_keys
from ._torch_save import load_torch_object
from .discover import CheckpointRef, checkpoint_ref, default_warn


def _one_byte_floats() -> tuple[frozenset[torch.dtype], frozenset[torch.dtype]]:
    """(the 1-byte floating dtypes of this torch that it converts to float32: every float8 kind,
    none of which has a CPU min/max, sum or, for most, isfinite; the packed ones it does not
    convert, such as float4_e2m1fn_x2, which hold two values per byte and have no finfo)."""
    found = {d for d in vars(torch).values() if isinstance(d, torch.dtype)}
    small = {d for d in found if d.is_floating_point and d.itemsize == 1}
    packed = set()
    for d in small:
        try:
            float(torch.finfo(d).max)
            torch.zeros(1, dtype=torch.uint8).view(d).float()
        except (TypeError, RuntimeError):  # NotImplementedError is a RuntimeError
            packed.add(d)
    return frozenset(small - packed), frozenset(packed)


#: every float8 kind of this torch (computed, so that a new one is not missed), and the packed
#: 1-byte floating dtypes (float4_e2m1fn_x2) that torch neither converts nor describes
_FLOAT8, _PACKED = _one_byte_floats()

#: The closing advice of :func:`check_finite_tensors`' error (kernels' and inspect's); ``switch``,
#: which needs the step, replaces it with its own (another --at or --until).
NON_FINITE_ADVICE = "kernels of such weights are meaningless; leave this step out."


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read into memory: its state dict and the fingerprint of the bytes read."""

    state_dict: dict[str, torch.Tensor]  # key -> tensor on the CPU, keys as stored in the file
    fingerprint: str  # "<total bytes>:<sha256 hex>", equal to fingerprint(ref)
    size: int  # total bytes read
    metadata: dict[str, str]  # safetensors metadata (first shard); {} for torch files
    ref: CheckpointRef
    #: the newest modification time of its files as they were read (each unchanged through its
    #: read): what a store records beside the fingerprint, so that a file rewritten later (even
    #: while its kernel is computed) has another time than the one recorded
    mtime_ns: int = 0
    #: the entries of a torch.save dict asked for by ``read_checkpoint(keep=...)`` that it has
    #: (``{"optimizer_state_dict": ...}``), read in the same pass as the weights; None when none
    #: were asked for or the checkpoint is no single torch.save file
    entries: dict[str, Any] | None = None


def _as_ref(source: CheckpointRef | str | Path) -> CheckpointRef:
    """A ref for a ref, or for one file or Hugging Face folder (step -1 when not recoverable)."""
    if isinstance(source, CheckpointRef):
        return source
    try:
        return checkpoint_ref(source)
    except CheckpointError:
        # Reading needs no step: retry without one; a problem with the file itself raises again.
        return checkpoint_ref(source, step=-1)


def check_finite_tensors(
    state_dict: Mapping[str, torch.Tensor], name: str, step: int | None = None
) -> None:
    """Raise :class:`CheckpointError` naming ``name`` and the first tensor holding NaN or Inf
    (``step``, when known, words the cause: at step 0 nothing was trained yet).

    Each tensor is summed first (one pass, no temporary): a NaN or an Inf anywhere makes the sum
    NaN or Inf (IEEE arithmetic: ``nan + x`` is NaN, ``inf + x`` is Inf or NaN), so a finite
    sum clears it, 10-40x faster than ``isfinite(x).all()``. Only a sum that is not finite
    (a non-finite value, or finite values whose sum overflows) gets the exact check."""
    for key, t in state_dict.items():
        if not (t.is_floating_point() or t.is_complex()) or t.dtype in _PACKED:
            continue  # a packed dtype holds no value torch can read: loading it is refused
        x = _summable(t)
        if bool(torch.isfinite(x.sum())):
            continue
        if not bool(torch.isfinite(x).all()):
            nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
            cause = (
                "these are the initial weights, so the initialization (or the saving) went wrong"
                if step == 0
                else "the run had diverged by this step"
            )
            raise CheckpointError(
                f"'{name}' holds non-finite values in tensor '{key}' ({nan} NaN, {inf} Inf of "
                f"{x.numel()}): {cause}, and {NON_FINITE_ADVICE}"
            )


def _summable(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it in a dtype that torch sums and checks on the CPU, holding the same
    values: float32 for a float8 (none has a CPU sum), complex64 for a complex32."""
    if t.dtype in _FLOAT8:
        return t.float()
    if t.dtype == torch.complex32:
        return t.to(torch.complex64)
    return t


def read_checkpoint(
    source: CheckpointRef | str | Path,
    *,
    check_finite: bool = True,
    keep: Collection[str] = (),
) -> LoadedCheckpoint:
    """Read every tensor of a checkpoint, and its fingerprint, in one pass over its file(s).

    ``keep``: entries of a single torch.save file's dict to keep beside the state dict (the
    optimizer state ``switch`` uses), in :attr:`LoadedCheckpoint.entries`, so that the file is
    not read twice; the others are dropped as they are read.

    Shards are merged into one state dict. Lightning's ``{"state_dict": ...}`` is unwrapped. Keys
    are returned as stored (prefixes such as ``module.`` are dealt with by :func:`load_checkpoint`).
    ``source`` may be a path to one file or Hugging Face folder; its ``ref.step`` is then -1 when
    no step can be recovered (reading needs none).

    Raises:
        CheckpointError: not safetensors / truncated / not a torch file, unreadable, changed while
            reading, a key in two shards, or (with ``check_finite``) a NaN or Inf in a tensor.
    """
    ref = _as_ref(source)
    name = ref.file
    parts: list[tuple[int, str]] = []
    state: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    mtime_ns = 0
    entries: dict[str, Any] | None = None
    for i, path in enumerate(ref.paths):
        buf, size, digest, mtime = stream_file(path, keep=True)
        assert buf is not None
        parts.append((size, digest))
        mtime_ns = max(mtime_ns, mtime)
        if ref.format == "safetensors":
            n = header_length(path, bytes(buf[:9]), size)
            header = parse_header(path, size, bytes(buf[8 : 8 + n]))
            tensors = tensors_from_buffer(header, buf)
            if i == 0:
                metadata = header.metadata
        else:
            obj = load_torch_object(path, buf)
            tensors = unwrap_state_dict(obj, path)
            if keep and len(ref.paths) == 1:
                entries = {k: obj[k] for k in keep if isinstance(obj, Mapping) and k in obj}
        twice = state.keys() & tensors.keys()
        if twice:
            raise CheckpointError(
                f"tensor '{min(twice)}' of '{name}' is in two shards (again in '{path.name}'); the "
                f"shards come from different saves: re-save the checkpoint."
            )
        state.update(tensors)
    if check_finite:
        check_finite_tensors(state, str(name), ref.step)
    return LoadedCheckpoint(
        state,
        combine_fingerprints(parts),
        sum(s for s, _ in parts),
        metadata,
        ref,
        mtime_ns,
        entries,
    )


def read_state_dict(
    source: CheckpointRef | str | Path, *, check_finite: bool = True
) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint (see :func:`read_checkpoint`): key -> CPU tensor."""
    return read_checkpoint(source, check_finite=check_finite).state_dict


def fingerprint(source: CheckpointRef | str | Path) -> str:
    """``"<total bytes>:<sha256 hex>"`` of a checkpoint's file(s), streamed (nothing kept).

    For one file the hash is the file's own sha256 (``sha256sum`` prints the same); for shards it
    is the sha256 of the lines ``"<bytes>:<sha256>\\n"`` of each shard in order. Equal to
    :attr:`LoadedCheckpoint.fingerprint`, so a store can tell later when a source file changed.
    """
    return files_fingerprint(_as_ref(source).paths)


def checkpoint_metadata(source: CheckpointRef | str | Path) -> dict[str, str]:
    """The metadata :func:`read_checkpoint` gives (:attr:`LoadedCheckpoint.metadata`) from the
    header of the first file alone, no tensor read: a safetensors checkpoint's, {} for a torch
    file's."""
    ref = _as_ref(source)
    return read_header(ref.paths[0]).metadata if ref.format == "safetensors" else {}


def check_dtypes(
    own: Mapping[str, torch.Tensor],
    state_dict: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    name: str,
    warn: Callable[[str], None] | None = None,
    compute: torch.dtype | None = None,
) -> None:
    """Refuse a tensor whose dtype cannot hold the model's (integers or booleans for a floating
    parameter, complex for a real one), naming the file, the key and both dtypes; refuse finite
    values beyond the range of the model's dtype (a bfloat16 checkpoint's 1e5 in a float16
    model), which loading would turn into Inf, naming the tensors, their largest magnitude and a
    dtype that holds them; warn once per file (through ``warn``) about floating tensors of lower
    precision than the model's, which load fine but were rounded when saved, and about tensors
    whose every value lies below the smallest normal number of the model's dtype (a float32
    tensor of 1e-6 in a float16 model), which keep few significant digits there, or none; and,
    when the kernel is computed in ``compute``, more precise than the model's dtype (``--dtype
    float64`` on a float32 model), about floating tensors more precise than the model's dtype
    (float64 weights of a run trained in float64), which loading rounds: the kernel is then that
    of the rounded weights, not the saved ones.

    Costs one min/max reduction over each tensor whose dtype has a wider range than the model's
    (no cast, no copy): casting is monotonic, so the cast of the largest magnitude tells whether
    any value overflows or whether all of them underflow."""
    lower: list[tuple[str, torch.dtype]] = []
    overflow: list[tuple[str, float, torch.dtype]] = []  # (key, largest magnitude lost, wanted)
    tiny: list[tuple[str, float, torch.dtype]] = []  # (key, largest magnitude, wanted)
    rounded: list[tuple[str, torch.dtype]] = []  # (key, wanted): more digits than the model's
    for key, tensor in state_dict.items():
        target = own.get(mapping.get(key, key))
        if target is None or not target.is_floating_point():
            continue
        found, wanted = tensor.dtype, target.dtype
        if found in _PACKED:
            raise CheckpointError(
                f"'{name}' stores tensor '{key}' as {_dtype(found)} for the model's "
                f"{_dtype(wanted)} parameter: torch cannot convert {_dtype(found)} (packed values, "
                "several to a byte) to load it. Re-save the checkpoint in the model's dtype."
            )
        if not tensor.is_floating_point() or tensor.is_complex():
            raise CheckpointError(
                f"'{name}' stores tensor '{key}' as {_dtype(found)}, but the model's parameter is "
                f"{_dtype(wanted)}: {_dtype(found)} cannot hold its values (loading would silently "
                "round or cast them, and the kernel would be wrong). Re-save the checkpoint from "
                "the model's state_dict() without converting it."
            )
        if _wider_range(found, wanted):  # may not fit
            largest, fits = _range_check(tensor, wanted)
            shown = f"'{key}' ({_dtype(found)}, up to {largest:.4g})"
            if fits == "overflow":
                overflow.append((shown, largest, wanted))
            elif fits in ("underflow", "zero"):
                zero = f", all 0 in {_dtype(wanted)}" if fits == "zero" else ""
                tiny.append((shown[:-1] + zero + ")", largest, wanted))
        if torch.finfo(found).eps > torch.finfo(wanted).eps:  # fewer significant digits (not
            lower.append((f"'{key}' ({_dtype(found)})", wanted))  # bits: bfloat16 vs float16)
        elif (
            compute is not None
            and torch.finfo(found).eps < torch.finfo(wanted).eps
            and torch.finfo(compute).eps < torch.finfo(wanted).eps
        ):  # digits the model drops, in a kernel computed with more of them
            rounded.append((f"'{key}' ({_dtype(found)})", wanted))
    if overflow:
        raise CheckpointOverflowError(_overflow_message(name, overflow))
    if tiny:
        (warn or default_warn)(_underflow_message(name, tiny))
    if lower:
        shown = ", ".join(k for k, _ in lower[:3])
        more = f" and {len(lower) - 3} more" if len(lower) > 3 else ""
        computed = "" if compute is None else f", and the kernel is computed in {_dtype(compute)}"
        (warn or default_warn)(
            f"'{name}' stores {shown}{more} in lower precision than the model's "
            f"{_dtype(lower[0][1])}; they are loaded into the model's dtype{computed} (the "
            "digits lost when saving do not come back)."
        )
    if rounded and compute is not None:
        (warn or default_warn)(_rounded_message(name, rounded, compute))


def _rounded_message(
    name: str, rounded: list[tuple[str, torch.dtype]], compute: torch.dtype
) -> str:
    """The warning of :func:`check_dtypes` for tensors more precise than the model's dtype in a
    kernel computed in a more precise one."""
    shown = ", ".join(k for k, _ in rounded[:3])
    more = f" and {len(rounded) - 3} more" if len(rounded) > 3 else ""
    wanted = rounded[0][1]
    return (
        f"'{name}' stores {shown}{more} in higher precision than the model's {_dtype(wanted)}: "
        f"loading rounds them to {_dtype(wanted)}, so the {_dtype(compute)} kernel is that of "
        "the rounded weights, not of the saved ones. For the kernel of the saved weights, "
        + _wider_model(compute)
    )


def _wider_range(found: torch.dtype, wanted: torch.dtype) -> bool:
    """Whether ``found`` holds magnitudes (large or small) that ``wanted`` does not."""
    a, b = torch.finfo(found), torch.finfo(wanted)
    return a.max > b.max or a.tiny < b.tiny


def _range_check(tensor: torch.Tensor, wanted: torch.dtype) -> tuple[float, str]:
    """(the largest magnitude of the finite values of ``tensor``, "overflow" when casting it to
    ``wanted`` makes some of them Inf (NaN for a float8 without Inf), "underflow" when it makes
    every one of them (not all 0) subnormal or 0, "zero" when it makes every one 0, else
    "fits")."""
    if tensor.numel() == 0:
        return 0.0, "fits"
    source = tensor.float() if tensor.dtype in _FLOAT8 else tensor
    low, high = torch.aminmax(source)  # one pass, no copy
    peak = torch.maximum(low.abs(), high.abs()).to(tensor.dtype)  # exact: a value of the tensor
    if not _finite(peak):  # the checkpoint's own NaN or Inf (check_finite off): look closer
        largest = _beyond_range(tensor, wanted)
        return (largest, "overflow") if largest is not None else (0.0, "fits")
    cast = peak.to(wanted)  # rounds as loading rounds each value: the largest decides
    if not _finite(cast):
        return float(peak), "overflow"
    if float(peak) != 0 and abs(float(cast)) < torch.finfo(wanted).tiny:
        return float(peak), "zero" if float(cast) == 0 else "underflow"
    return float(peak), "fits"


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float() if t.dtype in _FLOAT8 else t).all())


def _beyond_range(tensor: torch.Tensor, wanted: torch.dtype) -> float | None:
    """The largest magnitude of the finite values of ``tensor`` that casting to ``wanted`` turns
    into Inf (NaN for a float8 without Inf), or None when every finite value stays finite: the
    slow way (a cast and masks), only for a tensor that holds NaN or Inf itself."""
    source = tensor.float() if tensor.dtype in _FLOAT8 else tensor
    cast = tensor.to(wanted)
    lost = ~torch.isfinite(cast.float() if wanted in _FLOAT8 else cast) & torch.isfinite(source)
    if not bool(lost.any()):
        return None
    return float(source[lost].abs().max())


def _wider_model(holds: torch.dtype) -> str:
    """How to load the checkpoint into a model of dtype ``holds``: the spec has no dtype, so the
    factory (or the caller) sets it."""
    return (
        f'build the model in {_dtype(holds)} (a "pkg.mod:factory" arch that returns '
        f"model.to(torch.{_dtype(holds)}), or model.to(torch.{_dtype(holds)}) before loading it "
        "from Python). --dtype does not help: it sets the dtype the kernel is computed in, after "
        "the checkpoint is loaded into the model's own dtype."
    )


def _overflow_message(name: str, overflow: list[tuple[str, float, torch.dtype]]) -> str:
    """The error of :func:`check_dtypes` for values beyond the model's dtype: which tensors, how
    large, and a dtype whose range holds them (float32, or float64 beyond float32's)."""
    shown = ", ".join(text for text, _, _ in overflow[:3])
    more = f" and {len(overflow) - 3} more" if len(overflow) > 3 else ""
    wanted = overflow[0][2]
    largest = max(value for _, value, _ in overflow)
    holds = next(
        (d for d in (torch.float32, torch.float64) if torch.finfo(d).max >= largest),
        torch.float64,
    )
    return (
        f"'{name}' stores {shown}{more}: values beyond the largest {_dtype(wanted)} "
        f"({torch.finfo(wanted).max:.4g}), so loading them into the model's {_dtype(wanted)} "
        "parameters would make them Inf (and the kernel not finite). Load the checkpoint into a "
        f"{_dtype(holds)} model: {_wider_model(holds)}"
    )


def _underflow_message(name: str, tiny: list[tuple[str, float, torch.dtype]]) -> str:
    """The warning of :func:`check_dtypes` for tensors whose values all lie below the smallest
    normal number of the model's dtype: which tensors, how large, and a dtype that holds them."""
    shown = ", ".join(text for text, _, _ in tiny[:3])
    more = f" and {len(tiny) - 3} more" if len(tiny) > 3 else ""
    wanted = tiny[0][2]
    smallest = min(value for _, value, _ in tiny)
    holds = next(
        (d for d in (torch.float32, torch.float64) if torch.finfo(d).tiny <= smallest),
        torch.float64,
    )
    info = torch.finfo(wanted)
    zero = info.tiny * info.eps / 2  # half the smallest subnormal: below it, a value becomes 0
    return (
        f"'{name}' stores {shown}{more}: every value of each is below the smallest normal "
        f"{_dtype(wanted)} ({info.tiny:.4g}), so the model's {_dtype(wanted)} keeps few of their "
        f"significant digits (none below {zero:.3g}: they become 0), and the kernel is computed "
        f"with these weights. To keep them, load the checkpoint into a {_dtype(holds)} model: "
        f"{_wider_model(holds)}"
    )


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def match_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    name: str = "the state dict",
    warn: Callable[[str], None] | None = None,
    compute: torch.dtype | None = None,
    spec: str | None = None,
) -> dict[str, torch.Tensor]:
    """``state_dict`` renamed to ``model``'s keys, ready for ``model.load_state_dict(strict=True)``.

    A wrapper prefix (``module.``, ``model.``, ``_orig_mod.``) is stripped only when that makes the
    keys match. BatchNorm ``num_batches_tracked`` counters missing from old checkpoints are filled
    from the model as it is, as torch's own BatchNorm loading fills them: a model reused across
    checkpoints keeps the previous one's count. That changes no eval-mode output (the only mode
    ``kernels`` runs a reused model in); only training with ``momentum=None`` reads the count,
    and ``switch`` (``--reference train`` too) loads each checkpoint into a freshly built model,
    whose count it keeps. A tied tensor (one tensor under several
    keys of the model) saved under one of its keys (safetensors' ``save_model``, Hugging Face's
    ``save_pretrained``) fills the others; saved under several with different values it is
    refused (:mod:`conetool.checkpoints._tied`). Tensors of lower floating precision than
    the model's, and tensors whose values all lie below the smallest normal number of the model's
    dtype, are accepted with a warning through ``warn`` (default :func:`warnings.warn`); values
    beyond the range of the model's dtype are refused (:func:`check_dtypes`). ``compute``: the
    dtype the caller computes in, when it may be more precise than the model's (tensors the model's
    dtype rounds are then said through ``warn``). ``spec``: the spec file that built ``model``,
    named in a key mismatch's fix.

    Raises:
        KeyMismatchError: missing or unexpected keys (up to ten of each listed), shape
            mismatches (key, expected, found) (:class:`FactoryMismatchError` when the model is
            the checkpoint's network wrapped);
        CheckpointError: a dtype that cannot hold the parameter (key, both dtypes),
            or a tied tensor saved twice with different values, naming ``name`` and the likely
            fix; :class:`CheckpointOverflowError` for finite
            values beyond the range of the model's dtype (key, dtype, largest magnitude).
    """
    own = model.state_dict()
    tied = tied_keys(model)
    match = match_keys(
        {k: tuple(v.shape) for k, v in state_dict.items()},
        {k: tuple(v.shape) for k, v in own.items()},
        tied,
    )
    if not match.ok:  # FactoryMismatchError: the factory's, not the file's (every one fails)
        raise mismatch_error(match, name, type(model).__name__, spec)
    check_tied_values(state_dict, match.mapping, tied, name)
    check_dtypes(own, state_dict, match.mapping, name, warn, compute)
    out = {match.mapping[k]: v for k, v in state_dict.items()}
    for key in match.missing:  # only num_batches_tracked here, since match.ok
        out[key] = own[key]
    for key, saved in match.tied.items():  # the same tensor: load_state_dict sets it twice alike
        out[key] = out[saved]
    return out


class DtypeWarnings:
    """What loading says of a run's checkpoints' dtypes (lower or higher precision than the
    model's, values below its smallest normal number), told to ``say`` of the first file that
    has something to say only (a run saves its checkpoints alike), every message of that file:
    ``kernels`` and ``switch`` say it so."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.file: Path | None = None

    def of(self, ref: CheckpointRef) -> Callable[[str], None]:
        """The ``warn`` of :func:`load_checkpoint` (:func:`apply_checkpoint`) for ``ref``."""

        def warn(message: str) -> None:
            if self.file is None:
                self.file = ref.file
            if self.file == ref.file:
                self.say(message)

        return warn


def load_checkpoint(
    model: nn.Module,
    source: CheckpointRef | str | Path | Mapping[str, torch.Tensor],
    *,
    check_finite: bool = True,
    warn: Callable[[str], None] | None = None,
    keep: Collection[str] = (),
    spec: str | None = None,
) -> LoadedCheckpoint | None:
    """Load a checkpoint (a ref, a path, or a state dict) into ``model``, strictly (``keep``:
    as in :func:`read_checkpoint`; ``spec``: as in :func:`match_state_dict`).

    Keys are matched as in :func:`match_state_dict`; tensors are copied into the model's own
    parameters and buffers (keeping their device and dtype). Returns the :class:`LoadedCheckpoint`
    when a file was read (its ``fingerprint`` comes from that same read), None for a state dict.

    Raises:
        CheckpointError: unreadable file, NaN/Inf (with ``check_finite``), missing or unexpected
            keys, shape mismatches, or values beyond the range of the model's dtype
            (:class:`CheckpointOverflowError`); the message names the file and the fix.
    """
    if isinstance(source, Mapping):
        name = "the state dict"
        if check_finite:
            check_finite_tensors(source, name)
        _apply(model, source, name, warn, spec=spec)
        return None
    loaded = read_checkpoint(source, check_finite=check_finite, keep=keep)
    apply_checkpoint(model, loaded, warn=warn, spec=spec)
    return loaded


def apply_checkpoint(
    model: nn.Module,
    loaded: LoadedCheckpoint,
    *,
    warn: Callable[[str], None] | None = None,
    compute: torch.dtype | None = None,
    spec: str | None = None,
) -> None:
    """Load a checkpoint already read by :func:`read_checkpoint` into ``model``, strictly
    (``compute``, ``spec``: as in :func:`match_state_dict`).

    :func:`load_checkpoint` is :func:`read_checkpoint` (file I/O, decoding, the fingerprint and
    the finiteness check; it touches no model, so another thread may run it) followed by this
    (key matching, the dtype check and its warning, the copy into the model's tensors).

    Raises:
        CheckpointError: missing or unexpected keys, shape mismatches, a dtype that cannot
            hold a parameter, or values beyond its range (:class:`CheckpointOverflowError`); the
            message names the file and the fix.
    """
    _apply(model, loaded.state_dict, str(loaded.ref.file), warn, compute, spec)


def _apply(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    name: str,
    warn: Callable[[str], None] | None,
    compute: torch.dtype | None = None,
    spec: str | None = None,
) -> None:
    matched = match_state_dict(model, state, name=name, warn=warn, compute=compute, spec=spec)
    model.load_state_dict(matched, strict=True)
