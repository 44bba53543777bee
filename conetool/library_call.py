"""What every public library function does at its boundary with a Python caller.

``@library_call`` wraps ``conetool.train``, ``kernels``, ``distance``, ... and
``empirical_ntk``: **the caller's random state is left as found.** Building a model seeds
PyTorch's global generator with the spec's ``train.seed`` (or draws from it), and the training
loop seeds it before every step (so that dropout and resumed runs are reproducible). Without this,
``torch.manual_seed(1); conetool.kernels(...); torch.randn(3)`` would give the same numbers for any
seed the user chose. The CPU generator is restored on return (however the call ends), and so is
that of every CUDA device that was initialized before the call. The thread count is kept the same
way by :func:`conetool.limit_threads`.

**The commands' functions run under PyTorch's default dtype float32**, the command line's, and
give the caller's back on return: a notebook's ``torch.set_default_dtype(torch.float64)`` would
otherwise build the spec's model in float64, so that ``train`` drew another initialization from
the same seed and saved float64 checkpoints, and ``switch`` trained a float32 run's continuations
in float64 and warned that its checkpoints were of lower precision than the model. A float64 model
is the factory's to build (``model.double()``). ``empirical_ntk`` (:func:`library_call_on_model`)
keeps the caller's default: the model is the caller's, and so is what its forward creates.

**Arguments annotated ``bool`` must be bools, those annotated ``int`` (or ``int | None``)
integers, and those annotated ``float`` (or ``float | None``) real numbers**, checked before the
function runs (:func:`conetool.choices.bool_argument`, :func:`conetool.choices.int_argument`,
:func:`conetool.choices.float_argument`). Python takes any value by its truth, so
``kernels(..., overwrite="no")`` would overwrite, and ``embed(dims=2.0)`` passed ``dims in (2, 3)``
and failed later with a raw ``TypeError``. A numpy integer (``np.int64`` from ``np.arange``) or a
0-d integer tensor (``labels.max()``) is an integer (:func:`conetool.choices.integer`, which every
integer argument of the library asks) and a numpy float a real number: the function gets them as
a plain ``int`` or ``float`` (its JSON files refuse numpy scalars); a ``bool`` or numpy bool is
neither. The annotations are
the functions' own signatures, so a new argument is checked without more code; ranges and mixed
types (``threads: int | str``, ``refs``, ``dts``, ``at``) stay with each function's own parser.
A ``progress`` argument must be None or a progress display (:class:`conetool.progress.Progress`:
``task`` and ``log`` methods); ``progress=True`` or ``progress=print`` is refused naming it,
before the function runs, instead of failing with an ``AttributeError`` once it reports.

**A call without a progress that raises gives the warnings it said before to Python's warnings
module**, a ``UserWarning`` each naming the caller's line. The result keeps a call's warnings
(``result.warnings``), but a call that raises returns none, and a silent one said them to no one:
those said before the error (a checkpoint read from a copy, recipe keys left to defaults,
checkpoints ``--skip-bad`` left out, ...) may explain it. The function runs with a
:class:`conetool.progress.Heard` for its progress, which shows nothing and keeps them, as
``--quiet`` keeps them for a command that fails (and prints them before its error). Given a
progress, or for a call that returns, nothing more is said.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from .choices import bool_argument, float_argument, int_argument
from .progress import Heard, progress_argument, warn_python

P = ParamSpec("P")
R = TypeVar("R")


def library_call(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command's public function so that the caller's random state is kept, its ``bool``,
    ``int`` and ``float`` arguments are checked and it runs under the default dtype float32
    (module docstring)."""
    return wrapped_call(func, float32_default=True)


def library_call_on_model(func: Callable[P, R]) -> Callable[P, R]:
    """:func:`library_call` for a function given the caller's model (``empirical_ntk``): the
    caller's default dtype is kept for it."""
    return wrapped_call(func, float32_default=False)


def wrapped_call(func: Callable[P, R], *, float32_default: bool) -> Callable[P, R]:
    """The wrapper of :func:`library_call` and :func:`library_call_on_model`."""
    signature = inspect.signature(func)
    typed = typed_parameters(signature)
    hears = "progress" in signature.parameters
    if hears:
        typed["progress"] = "progress"

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if typed:
            args, kwargs = check_types(signature, typed, args, kwargs)  # type: ignore[assignment]
        heard = None
        if hears:
            args, kwargs, heard = given_heard(signature, args, kwargs)  # type: ignore[assignment]
        with kept_global_rng(), default_float32(float32_default):
            if heard is None:
                return func(*args, **kwargs)
            try:
                return func(*args, **kwargs)
            except BaseException:
                warn_python(heard.warnings, stacklevel=2)  # (wrapper, the caller)
                raise

    return wrapper


def given_heard(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], Heard | None]:
    """The arguments to call with and the :class:`~conetool.progress.Heard` they pass as
    ``progress`` where the caller passed none (module docstring); ``None`` where the caller
    passed one, or the arguments do not bind (the call raises its TypeError)."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs, None
    if bound.arguments.get("progress") is not None:
        return args, kwargs, None
    heard = Heard()
    bound.arguments["progress"] = heard
    return bound.args, bound.kwargs, heard


def typed_parameters(signature: inspect.Signature) -> dict[str, str]:
    """The parameters :func:`check_types` checks: name -> ``"bool"``, ``"int"``, ``"int?"``
    (``int | None``), ``"float"`` or ``"float?"`` (``float | None``), read from the annotations
    (text under ``from __future__ import annotations``, else the types themselves)."""
    typed = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if not isinstance(annotation, str) and text not in ("bool", "int", "float"):
            text = str(annotation)  # int | None (types.UnionType)
        parts = {part.strip() for part in text.split("|")}
        for kind in ("bool", "int", "float"):
            if parts == {kind}:
                typed[name] = kind
            elif parts == {kind, "None"} and kind != "bool":
                typed[name] = f"{kind}?"
    return typed


def check_types(
    signature: inspect.Signature,
    typed: Mapping[str, str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Refuse an argument of the wrong type (:func:`typed_parameters`), naming it; return the
    arguments to call with, numpy integers and floats made a plain ``int`` and ``float``.
    Arguments that do not bind (an unknown keyword) are left to the call, which raises its
    TypeError."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs
    changed = False
    for name, value in bound.arguments.items():
        kind = typed.get(name)
        if kind is None:
            continue
        if kind == "progress":
            checked: object = progress_argument(value, name)
        elif kind == "bool":
            checked = bool_argument(value, name)
        elif kind.startswith("int"):
            checked = int_argument(value, name, optional=kind == "int?")
        else:
            checked = float_argument(value, name, optional=kind == "float?")
        if checked is not value:
            bound.arguments[name] = checked
            changed = True
    return (bound.args, bound.kwargs) if changed else (args, kwargs)


@contextmanager
def kept_global_rng() -> Iterator[None]:
    """Restore PyTorch's global random state on exit: the CPU generator's, and each CUDA
    device's that was initialized on entry (``torch.random.fork_rng``)."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def default_float32(pinned: bool = True) -> Iterator[None]:
    """Run the block under PyTorch's default dtype float32 (``pinned``) and restore the
    caller's on exit, however the block ends; with ``pinned`` False, do nothing."""
    import torch

    before = torch.get_default_dtype()
    if not pinned or before == torch.float32:
        yield
        return
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
