"""What every public library function does at its boundary with a Python caller.

``@library_call`` wraps ``conetool.train``, ``kernels``, ``distance``, ... and
``empirical_ntk``: **the caller's random state is left as found.** Building a model seeds
PyTorch's global generator with the spec's ``train.seed`` (or draws from it), and the training
loop seeds it before every step (so that dropout and resumed runs are reproducible). Without this,
``torch.manual_seed(1); conetool.kernels(...); torch.randn(3)`` would give the same numbers for any
seed the user chose. The CPU generator is restored on return (however the call ends), and so is
that of every CUDA device that was initialized before the call. The thread count is kept the same
way by :func:`conetool.limit_threads`.

**Arguments annotated ``bool`` must be bools, and those annotated ``int`` (or ``int | None``)
ints**, checked before the function runs (:func:`conetool.choices.bool_argument`,
:func:`conetool.choices.int_argument`). Python takes any value by its truth, so
``kernels(..., overwrite="no")`` would overwrite, and ``embed(dims=2.0)`` passed ``dims in (2, 3)``
and failed later with a raw ``TypeError``. The annotations are the functions' own signatures, so
a new argument is checked without more code; ranges and mixed types (``threads: int | str``)
stay with each function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from .choices import bool_argument, int_argument

P = ParamSpec("P")
R = TypeVar("R")


def library_call(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a public function so that the caller's random state is kept and its ``bool`` and
    ``int`` arguments are checked (module docstring)."""
    signature = inspect.signature(func)
    typed = typed_parameters(signature)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if typed:
            check_types(signature, typed, args, kwargs)
        with kept_global_rng():
            return func(*args, **kwargs)

    return wrapper


def typed_parameters(signature: inspect.Signature) -> dict[str, str]:
    """The parameters :func:`check_types` checks: name -> ``"bool"``, ``"int"`` or ``"int?"``
    (``int | None``), read from the annotations (text under ``from __future__ import
    annotations``, else the types themselves)."""
    typed = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if not isinstance(annotation, str) and text not in ("bool", "int"):
            text = str(annotation)  # int | None (types.UnionType)
        parts = {part.strip() for part in text.split("|")}
        if parts == {"bool"}:
            typed[name] = "bool"
        elif parts == {"int"}:
            typed[name] = "int"
        elif parts == {"int", "None"}:
            typed[name] = "int?"
    return typed


def check_types(
    signature: inspect.Signature,
    typed: Mapping[str, str],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> None:
    """Refuse an argument of the wrong type (:func:`typed_parameters`), naming it. Arguments
    that do not bind (an unknown keyword) are left to the call, which raises its TypeError."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return
    for name, value in bound.arguments.items():
        kind = typed.get(name)
        if kind == "bool":
            bool_argument(value, name)
        elif kind is not None:
            int_argument(value, name, optional=kind == "int?")


@contextmanager
def kept_global_rng() -> Iterator[None]:
    """Restore PyTorch's global random state on exit: the CPU generator's, and each CUDA
    device's that was initialized on entry (``torch.random.fork_rng``)."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
