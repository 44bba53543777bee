"""The step a checkpoint file stores: the entries that give it (:data:`STEP_KEYS`), the values
taken (a whole number of steps up to :data:`MAX_STEP`: an int, a float of a whole value, a tensor
of one element, a numpy scalar, or a safetensors metadata text), and why any other is refused
(:class:`BadStep`, for the error that names the file)."""

from __future__ import annotations

import math
import numbers
import re
import sys
from dataclasses import dataclass

import numpy as np
import torch

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


def step_value(value: object) -> int | BadStep | None:
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
