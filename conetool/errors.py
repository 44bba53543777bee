"""The one exception family of conetool.

Every error a user can cause is a :class:`ConetoolError` whose message names the file, key or flag at
fault and says how to fix it. The CLI turns it into a one-paragraph message and exit code 1 in one
place (``conetool.cli``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConetoolError(Exception):
    """Base class: a user-facing error with a message that names the culprit and the fix."""


class SpecError(ConetoolError):
    """The TOML spec is missing, malformed, or holds an unknown key or a bad value."""


class ModelError(ConetoolError):
    """A model cannot be built (unknown architecture, bad import path, bad factory), or its
    per-example kernel is not defined or cannot be computed (examples that interact, a module in
    training mode, a module torch.func cannot vmap)."""


class DataError(ConetoolError):
    """A data set cannot be found, read or built."""


class CheckpointError(ConetoolError):
    """A checkpoint file or directory cannot be read, or does not fit the model."""


class CheckpointOverflowError(CheckpointError):
    """A checkpoint holds finite values beyond the range of the model's dtype (a bfloat16
    checkpoint's 1e5 in a float16 model): the fix is the model's dtype, not the file."""


class KeyMismatchError(CheckpointError):
    """A checkpoint's tensors do not fit the model's: missing or unexpected keys, or shapes that
    differ. The file's fault when it alone was saved from another network; the model's (the
    spec's ``[model]`` arch or factory) when the run's other checkpoints do not fit it either,
    which ``conetool kernels`` checks at a second checkpoint."""


class FactoryMismatchError(KeyMismatchError, ModelError):
    """A checkpoint fits the network it was saved from, but the spec's factory returns that
    network wrapped (every model key is a checkpoint key with one more prefix): the fix is the
    factory, and every checkpoint of the run fails alike (a :class:`ModelError` too)."""


class ExtraModulesError(KeyMismatchError):
    """A checkpoint holds the spec's network inside a wrapper: under a prefix conetool does not
    strip (``net.``), or under ``model.`` with other modules' keys beside it (a LightningModule's
    loss with a class weight). The spec's model is right; the fix is the file's (re-save the
    network's keys alone)."""


class OptimizerStateDamagedError(CheckpointError):
    """An optimizer state file that is not one ``conetool train`` wrote, whose bytes are not
    safetensors, or with a tensor of a dtype torch cannot convert to its parameter's: ``train
    --resume`` stops on it, ``switch`` starts momentum at zero and warns with ``reason`` (a
    clause: ``it cannot be read as safetensors (...)``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(ConetoolError):
    """The output store (or a training output directory) is missing, mixed or inconsistent."""


class StoreReplacedError(StoreError):
    """The store was replaced (``conetool kernels --overwrite`` started a new one there) or
    removed while a command was reading it; the command wrote nothing into the new store."""


class OptionError(ConetoolError):
    """A command-line value that cannot mean what its option takes: an empty path (the current
    folder, as a shell variable left unset gives) or one of only spaces, a file where a folder is
    wanted or a folder where a file is. Raised as the command line is read, before anything is loaded; the CLI says
    it as a usage error (exit 2, ``conetool.cli.help_format``)."""


class MemoryBudgetError(ConetoolError):
    """The memory budget (``--max-memory``) is too small, or the device ran out of memory."""


class GeometryError(ConetoolError, ValueError):
    """Kernels, steps or options that the geometry functions cannot work with.

    Also a :class:`ValueError`, so plain-Python callers can catch it the usual way.
    """


class NonFiniteKernelError(ConetoolError):
    """The kernel has NaN or infinite entries, or a float32 kernel has entries beyond float32's
    range (the caller adds which checkpoint it was)."""


class KernelUnderflowError(ConetoolError):
    """A kernel computed in float32 whose entries are all so small that the products summed into
    them are subnormal float32 numbers, which keep fewer digits (the caller adds which checkpoint
    it was)."""
