"""Whether a model fits a checkpoint, from the checkpoint's headers alone (no tensor data read):
what ``conetool kernels`` asks of a second checkpoint when the first does not fit the spec's
model, to tell the model's fault (every checkpoint fails alike) from one file's; and, before
``--overwrite`` clears a store, of the first checkpoint it would load (:func:`fit_error`)."""

from __future__ import annotations

from torch import nn

from conetool.errors import CheckpointError, KeyMismatchError

from ._keys import KeyMatch, match_keys, mismatch_error
from ._safetensors_format import read_header
from ._tied import tied_keys
from ._torch_save import check_torch_file, read_torch_contents
from .load import read_checkpoint
from .records import CheckpointRef

__all__ = ["fit_error", "model_fits", "stored_shapes"]


def stored_shapes(ref: CheckpointRef) -> dict[str, tuple[int, ...]] | None:
    """Key -> shape of the tensors ``ref``'s file(s) store, keys as stored (a torch.save dict
    unwrapped as loading unwraps it): from safetensors headers, or from a zip-format torch.save
    file's pickle with its tensors memory-mapped (none of their data read). None when that
    cannot be had cheaply (a legacy, non-zip pickle is read whole) or a file cannot be read."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for path in ref.paths:
            if ref.format == "safetensors":
                shapes.update(read_header(path).shapes)
                continue
            if not check_torch_file(path):
                return None
            contents = read_torch_contents(path)
            if contents.shapes is None:
                return None
            shapes.update(contents.shapes)
    except (CheckpointError, OSError):
        return None
    return shapes


def model_fits(model: nn.Module, ref: CheckpointRef) -> bool | None:
    """Whether the keys and shapes of ``ref`` fit ``model`` as loading matches them
    (:func:`conetool.checkpoints._keys.match_keys`: wrapper prefixes, tied weights, BatchNorm's
    step counter), read cheaply (:func:`stored_shapes`); None when that cannot be told cheaply.
    Dtypes and values are not looked at."""
    shapes = stored_shapes(ref)
    if shapes is None:
        return None
    return _matched(model, shapes).ok


def fit_error(
    model: nn.Module, ref: CheckpointRef, spec: str | None = None
) -> KeyMismatchError | None:
    """The error loading ``ref`` into ``model`` would raise for its keys or shapes (the same
    message; a :class:`~conetool.errors.FactoryMismatchError` when the factory wraps the saved
    network), or None when they fit. Read by the headers when they tell (:func:`stored_shapes`),
    else in full, as loading would read it (a legacy, non-zip torch.save pickle). Dtypes and
    values are not looked at. ``spec``: the spec file that built ``model``, named in the fix.

    Raises:
        CheckpointError: ``ref`` cannot be read (the loading of it says the same).
    """
    shapes = stored_shapes(ref)
    if shapes is None:
        state = read_checkpoint(ref, check_finite=False).state_dict
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        del state
    match = _matched(model, shapes)
    return None if match.ok else mismatch_error(match, str(ref.file), type(model).__name__, spec)


def _matched(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> KeyMatch:
    """The stored keys' ``shapes`` matched to ``model``'s as loading matches them."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return match_keys(shapes, own, tied_keys(model))
