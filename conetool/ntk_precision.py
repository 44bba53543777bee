"""The eNTK engine's float32 precision: the switch for its accuracy fixes, and TF32 turned off.

A float32 kernel is computed as exactly as the network allows (within 1e-6 relative Frobenius
error of a float64 explicit-Jacobian kernel on the built-in models; see the README's accuracy table
and ``benchmarks/bench_accuracy.py``) by two fixes, both on by default:

- **Wide products** (:func:`conetool.ntk_terms.product`): the product of two blocks of rows wider
  than ``ntk_terms._CHUNK`` is computed in float32 pieces of that many columns whose partial
  products are summed in float64. A single float32 product accumulates along its whole inner
  dimension: with 8 rows of 368,640 columns (a ResNet-20 layer's gradients for 10 logits side by
  side) it is 3e-5 off, with 2.36M columns (VGG-16) 4.5e-4; in pieces, about 3e-8.
- **oneDNN on the CPU** (:func:`outside_onednn`): the structured engine's batched forward and
  backward passes run with ``torch.backends.mkldnn`` disabled on the CPU. On some CPUs oneDNN's
  float32 convolution backward with a batch of 2 or more is 7e-5 to 8.5e-4 off (a batch of one,
  as the reference engine's ``vmap`` over single examples uses, is not); PyTorch's own convolution
  is exact to about 2e-7. The reference engine keeps oneDNN: it is exact there, and about five
  times slower without it.

TF32 is not one of these switches: :func:`no_tf32` turns it off for every eNTK computation.

:func:`accurate` switches both off and on, so that a benchmark can time "before" and "after" in
one process (``benchmarks/bench_accuracy.py``). The flag is process-wide, like PyTorch's own
backend flags; library users have no reason to touch it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_ENABLED = True


def enabled() -> bool:
    """Whether the accuracy fixes are on (the default)."""
    return _ENABLED


@contextlib.contextmanager
def accurate(on: bool = True) -> Iterator[None]:
    """Turn the accuracy fixes on (default) or off inside the block, restoring the setting after.

    >>> with accurate(False):  # the float32 fast paths as they were before the fixes
    ...     enabled()
    False
    """
    global _ENABLED
    previous = _ENABLED
    _ENABLED = on
    try:
        yield
    finally:
        _ENABLED = previous


@contextlib.contextmanager
def outside_onednn(device: torch.device) -> Iterator[None]:
    """Convolutions in PyTorch's own kernels instead of oneDNN's, on the CPU, while the fixes are on.

    Only ``torch.backends.mkldnn.enabled`` is changed (not its deterministic or TF32 settings),
    and restored on exit. On CUDA, and with the fixes off, nothing changes.
    """
    if not _ENABLED or device.type != "cpu" or not torch.backends.mkldnn.is_available():
        yield
        return
    previous = torch.backends.mkldnn.enabled
    # torch's stubs type the flag as its ContextProp descriptor; a bool is how it is set
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 precision in CUDA matrix products and convolutions."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
