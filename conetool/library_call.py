"""What every public library function does at its boundary with a Python caller.

``@library_call`` wraps ``conetool.train``, ``kernels``, ``distance``, ... and
``empirical_ntk``: **the caller's random state is left as found.** Building a model seeds
PyTorch's global generator with the spec's ``train.seed`` (or draws from it), and the training
loop seeds it before every step (so that dropout and resumed runs are reproducible). Without this,
``torch.manual_seed(1); conetool.kernels(...); torch.randn(3)`` would give the same numbers for any
seed the user chose. The CPU generator is restored on return (however the call ends), and so is
that of every CUDA device that was initialized before the call. The thread count is kept the same
way by :func:`conetool.limit_threads`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def library_call(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a public function so that the caller's random state is kept (module docstring)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with kept_global_rng():
            return func(*args, **kwargs)

    return wrapper


@contextmanager
def kept_global_rng() -> Iterator[None]:
    """Restore PyTorch's global random state on exit: the CPU generator's, and each CUDA
    device's that was initialized on entry (``torch.random.fork_rng``)."""
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield
