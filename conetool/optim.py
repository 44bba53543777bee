"""The spec's optimizer and learning-rate schedule, and optimizer state on disk.

The schedule is a pure function of the global step, so a resumed run and the switch experiment
evaluate exactly the learning rate the standard run used at that step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, deserialize, safe_open

from .errors import CheckpointError, OptimizerStateDamagedError
from .io import SAFETENSORS_DTYPES, atomic_save_safetensors
from .spec import TrainSpec

#: The dtypes of a state file's tensors that are read (safetensors' codes): those torch converts
#: to a parameter's dtype, as ``Optimizer.load_state_dict`` converts a buffer (the checkpoints',
#: and the float8 kinds safetensors reads besides); not its 4-bit floats (two to a byte: a buffer
#: of half its parameter's size, which torch cannot convert) nor its 6-bit ones (no torch dtype).
STATE_DTYPES: dict[str, torch.dtype] = dict(SAFETENSORS_DTYPES)
for _code, _attr in [
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", "float8_e5m2fnuz"),
    ("F8_E8M0", "float8_e8m0fnu"),
]:
    if hasattr(torch, _attr):  # newer dtypes, absent from older torch builds
        STATE_DTYPES[_code] = getattr(torch, _attr)


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainSpec) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW with the spec's hyperparameters.

    Weight decay is the coupled L2 penalty of ``torch.optim.SGD``/``Adam`` (open_lth's choice),
    and AdamW's decoupled decay (each update also multiplies θ by ``1 - lr · weight_decay``) with
    ``optimizer = "adamw"``.
    """
    params = list(params)
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=train.lr,
            momentum=train.momentum,
            nesterov=train.nesterov,
            weight_decay=train.weight_decay,
        )
    adam = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    return adam(
        params,
        lr=train.lr,
        betas=cast("tuple[float, float]", tuple(train.betas)),  # two: the spec checks it
        weight_decay=train.weight_decay,
    )


def learning_rate(train: TrainSpec, step: int) -> float:
    """The learning rate used for the update at global ``step`` (0-based).

    ``constant``: lr. ``step``: lr · gamma^(number of milestones <= step). ``cosine``:
    lr · (1 + cos(π · step / steps)) / 2. A linear warmup multiplies any of them by
    min(1, (step + 1) / warmup_steps).
    """
    if train.schedule == "step":
        factor = train.gamma ** sum(1 for m in train.milestones if m <= step)
    elif train.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, train.steps) / train.steps))
    else:
        factor = 1.0
    if train.warmup_steps:
        factor *= min(1.0, (step + 1) / train.warmup_steps)
    return train.lr * factor


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def save_optimizer_state(
    optimizer: torch.optim.Optimizer, path: Path, step: int, extra: Mapping[str, str] | None = None
) -> None:
    """Write the optimizer's state dict as safetensors: tensors ``state.<param>.<name>``, the
    parameter groups and any non-tensor state as JSON metadata; ``extra`` adds metadata entries
    (``conetool train``: its running train sums, :data:`conetool.training.TRAIN_SUMS`)."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in state_dict["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        "step": str(step),
        "optimizer": type(optimizer).__name__,
        "param_groups": json.dumps(state_dict["param_groups"]),
        "scalar_state": json.dumps(scalars),
        **(extra or {}),
    }
    atomic_save_safetensors(path, tensors, metadata)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load a state written by :func:`save_optimizer_state` into ``optimizer``: its buffers and
    its parameter groups' hyperparameters (``train --resume``: the same spec's). A state of
    another optimizer class, or over other parameter counts, is a :class:`CheckpointError`."""
    metadata, tensors = _read(path)
    if metadata.get("optimizer") != type(optimizer).__name__:
        raise CheckpointError(
            f"optimizer state {path} is for {metadata.get('optimizer')}, but the spec's optimizer "
            f"is {type(optimizer).__name__}. Use the spec the run was trained with."
        )
    saved = _state_dict(path, metadata, tensors)
    try:
        # (torch checks that each group lists as many parameters as the optimizer's)
        optimizer.load_state_dict(saved)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _not_conetools(path, _what_failed(exc)) from exc


def read_optimizer_state(path: Path) -> dict[str, Any]:
    """A state written by :func:`save_optimizer_state`, as ``Optimizer.state_dict()`` gives it:
    ``{"state": {index: {name: tensor or value}}, "param_groups": [{"params": [index, ...],
    "lr": ..., ...}]}`` (``momentum_buffer`` or ``exp_avg``/``exp_avg_sq`` of each parameter's
    shape, Adam's ``step`` counts), checked by nothing but its format: ``switch`` decides
    whether it is the spec's optimizer's (:func:`conetool.checkpoint_optimizer.restore_state`).
    A file whose bytes are not safetensors, that was not written by :func:`save_optimizer_state`,
    or with a tensor of a dtype not in :data:`STATE_DTYPES` (4-bit floats, ...: torch cannot
    convert it to its parameter's) is an :class:`OptimizerStateDamagedError` (its ``reason`` says
    which); one the disk cannot read (an ``OSError``), a :class:`CheckpointError`. Tensors of
    other dtypes than the parameters' are kept as stored (loading converts them)."""
    metadata, tensors = _read(path)
    return _state_dict(path, metadata, tensors)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of the state ``path``, which has an ``optimizer`` entry (the file
    opened once: its metadata and tensors from one handle, as ``load_file`` reads the tensors)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            codes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
            refused = next(((k, c) for k, c in codes.items() if c not in STATE_DTYPES), None)
            tensors = {} if refused else {key: handle.get_tensor(key) for key in codes}
    except OSError as exc:  # the disk, not the file's bytes
        raise CheckpointError(_cannot_read(path, exc)) from exc
    except SafetensorError as exc:
        raise OptimizerStateDamagedError(
            _cannot_read(path, exc), f"it cannot be read as safetensors ({exc})"
        ) from exc
    if "optimizer" not in metadata:
        raise _not_conetools(path, "its metadata has no 'optimizer' entry")
    if refused is not None:
        raise _refused_dtype(path, *refused)
    return metadata, tensors


def optimizer_state_from_bytes(path: Path, data: bytes | bytearray) -> dict[str, Any]:
    """:func:`read_optimizer_state` of the bytes ``data`` read from ``path`` (which messages name):
    ``switch`` reads a state file once, hashing it as it reads, and records the fingerprint of the
    bytes its momentum came from. The same errors, with the same messages: a file whose bytes are
    not safetensors, or that was not written by :func:`save_optimizer_state`, is an
    :class:`OptimizerStateDamagedError`. The tensors own their memory (``data`` is not kept)."""
    try:
        flat = deserialize(bytes(data) if isinstance(data, bytearray) else data)
    except SafetensorError as exc:
        raise _damaged_bytes(path, exc) from exc
    length = int.from_bytes(data[:8], "little")  # (checked by deserialize, as the JSON after it)
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
    if "optimizer" not in metadata:
        raise _not_conetools(path, "its metadata has no 'optimizer' entry")
    tensors: dict[str, torch.Tensor] = {}
    flat.sort(key=lambda item: item[0], reverse=True)  # popped by name, as safe_open lists them
    while flat:  # each tensor's bytes copied into its own writable buffer (the optimizer updates
        name, view = flat.pop()  # its buffers in place), and the library's copy let go
        dtype = STATE_DTYPES.get(view["dtype"])
        if dtype is None:
            raise _refused_dtype(path, name, view["dtype"])
        raw = bytearray(view["data"])
        shape = view["shape"]
        tensors[name] = (
            torch.frombuffer(raw, dtype=dtype).reshape(shape)
            if raw
            else torch.empty(shape, dtype=dtype)
        )
    return _state_dict(path, metadata, tensors)


def _damaged_bytes(path: Path, exc: SafetensorError) -> OptimizerStateDamagedError:
    """:func:`_read`'s error for a file ``safe_open`` refuses, from the error of safetensors'
    ``deserialize`` of its bytes: the same check of the same header, said as ``"Error while
    deserializing: ..."`` where ``safe_open`` says ``"Error while deserializing header: ..."``
    (the words messages have always quoted)."""
    said = str(exc)
    bytes_words, file_words = "Error while deserializing: ", "Error while deserializing header: "
    if said.startswith(bytes_words):
        said = file_words + said[len(bytes_words) :]
    return OptimizerStateDamagedError(
        _cannot_read(path, said), f"it cannot be read as safetensors ({said})"
    )


def _cannot_read(path: Path, exc: Exception | str) -> str:
    return (
        f"optimizer state {path} cannot be read ({exc}). Delete it to restart momentum from "
        "zero, or restore it from the run."
    )


def _state_dict(
    path: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The ``Optimizer.state_dict()`` that :func:`save_optimizer_state` flattened into
    ``tensors`` and ``metadata`` (read from ``path``)."""
    try:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        for index, values in json.loads(metadata["scalar_state"]).items():
            state.setdefault(int(index), {}).update(values)
        groups: list[dict[str, Any]] = json.loads(metadata["param_groups"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _not_conetools(path, _what_failed(exc)) from exc
    return {"state": state, "param_groups": groups}


def _what_failed(exc: Exception) -> str:
    """What about a state file ``exc`` found wrong: ``no 'param_groups' entry``, or its text."""
    return f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) else str(exc)


def _refused_dtype(path: Path, name: str, code: str) -> OptimizerStateDamagedError:
    """The error of a state file whose tensor ``name`` is of the safetensors dtype ``code``, not
    one of :data:`STATE_DTYPES` (``F4``, ``F6_E2M3``, ...): torch cannot convert it to its
    parameter's dtype."""
    what = (
        f"its tensor {name!r} is of dtype {code}, which torch cannot convert to its parameter's "
        "dtype"
    )
    return OptimizerStateDamagedError(
        f"optimizer state {path}: {what}, so its momentum cannot be restored. Save the state "
        "with float32 buffers (or another dtype torch converts: float64, float16, bfloat16, "
        "float8), or move the file away to restart momentum from zero.",
        f"{what} (save its buffers as float32 to use them)",
    )


def _not_conetools(path: Path, what: str) -> OptimizerStateDamagedError:
    """The error of a state file that ``conetool train`` did not write (``what`` says why)."""
    return OptimizerStateDamagedError(
        f"optimizer state {path} was not written by conetool train ({what}), so its momentum "
        "cannot be restored. Move or delete it to restart momentum from zero, or restore the "
        "file conetool train wrote.",
        f"it was not written by conetool train ({what})",
    )
