"""What every public library function does at its boundary with a Python caller.

``@library_call`` wraps ``conetool.train``, ``kernels``, ``distance``, ... and
``empirical_ntk``. It does two things a notebook needs and the command line does not notice:

- **The caller's random state is left as found.** Building a model seeds PyTorch's global
  generator with the spec's ``train.seed``, and the training loop seeds it before every step (so
  that dropout and resumed runs are reproducible). Without this, ``torch.manual_seed(1);
  conetool.kernels(...); torch.randn(3)`` would give the same numbers for any seed the user chose.
  The CPU generator is restored on return (however the call ends), and so is that of every CUDA
  device that was initialized before the call.
- **Error messages name the Python arguments too.** A :class:`~conetool.errors.ConetoolError`
  names the command-line flag at fault (``--ref``, ``--overwrite``), which is what a shell user
  types. Called from Python, the outermost library call appends the argument each flag stands
  for, e.g. ``(Python: refs= for --ref; overwrite=True for --overwrite.)``. The command line
  marks its calls with :func:`command_line` (``conetool.cli``'s error handler), so its messages
  stay as they are.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

from .errors import ConetoolError

P = ParamSpec("P")
R = TypeVar("R")

_FROM_COMMAND_LINE: ContextVar[bool] = ContextVar("conetool_command_line", default=False)
_DEPTH: ContextVar[int] = ContextVar("conetool_library_depth", default=0)

_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)")

# Flags whose Python argument is not the flag's name with '-' -> '_'.
_RENAMED = {
    "ref": "refs=",
    "dt": "dts=",
    "no-noise": "noise=False",
}
_VERDICT_RULES = (
    "min-drop",
    "velocity-dt",
    "freeze-factor",
    "bounded-exponent",
    "drift-exponent",
    "plateau-tolerance",
    "lazy-level",
)


@contextmanager
def command_line() -> Iterator[None]:
    """Mark the library calls made inside as the command line's: messages keep flags only."""
    token = _FROM_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _FROM_COMMAND_LINE.reset(token)


def python_names(message: str, parameters: Mapping[str, inspect.Parameter]) -> str:
    """The note naming the Python argument of each flag in ``message`` that ``parameters`` (a
    function's signature) has, or ``""`` when there is none. Example: ``--ref 7 is not stored``
    with ``refs`` among the parameters -> ``" (Python: refs= for --ref.)"``."""
    pairs: list[str] = []
    for flag in dict.fromkeys(_FLAG.findall(message)):
        python = _argument(flag, parameters)
        if python is not None:
            pairs.append(f"{python} for --{flag}")
    return f" (Python: {'; '.join(pairs)}.)" if pairs else ""


def _argument(flag: str, parameters: Mapping[str, inspect.Parameter]) -> str | None:
    if flag in _RENAMED:
        name = _RENAMED[flag].partition("=")[0]
        return _RENAMED[flag] if name in parameters else None
    if flag in _VERDICT_RULES and "rules" in parameters:
        return f"rules=VerdictRules({flag.replace('-', '_')}=...)"
    name = flag.replace("-", "_")
    if name not in parameters:
        return None
    return f"{name}=True" if parameters[name].default is False else f"{name}="


def library_call(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a public function: the caller's random state is kept, and a ConetoolError raised
    from Python names the arguments as well as the flags (see the module docstring)."""
    parameters = inspect.signature(func).parameters

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        outermost = _DEPTH.get() == 0
        depth = _DEPTH.set(_DEPTH.get() + 1)
        try:
            with kept_global_rng():
                return func(*args, **kwargs)
        except ConetoolError as exc:
            if outermost and not _FROM_COMMAND_LINE.get():
                note = python_names(str(exc), parameters)
                if note and len(exc.args) == 1 and isinstance(exc.args[0], str):
                    exc.args = (exc.args[0] + note,)
            raise
        finally:
            _DEPTH.reset(depth)

    return wrapper


@contextmanager
def kept_global_rng() -> Iterator[None]:
    """Restore PyTorch's global random state on exit: the CPU generator's, and each CUDA
    device's that was initialized on entry (``torch.random.fork_rng``)."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
