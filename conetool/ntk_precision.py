"""The eNTK engine's float32 precision: the switch for its accuracy fixes, and TF32 turned off.

A float32 kernel is computed as exactly as the network allows (within 1e-6 relative Frobenius
error of a float64 explicit-Jacobian kernel on the built-in models; see the README's accuracy table
and ``benchmarks/bench_accuracy.py``) by two fixes, both on by default:

- **Wide products** (:func:`conetool.ntk_terms.product`): the product of two blocks of rows wider
  than ``ntk_terms.piece_columns`` (4,096 on the CPU, 512 on a GPU) is computed in float32 pieces
  of that many columns whose partial products are summed in float64. A single float32 product accumulates along its whole inner
  dimension: with 8 rows of 368,640 columns (a ResNet-20 layer's gradients for 10 logits side by
  side) it is 3e-5 off, with 2.36M columns (VGG-16) 4.5e-4; in pieces, about 3e-8.
- **oneDNN on the CPU** (:func:`outside_onednn`): the structured engine's batched forward and
  backward passes run with ``torch.backends.mkldnn`` disabled on a CPU where oneDNN's float32
  convolutions are inexact (:func:`onednn_exact`, checked once per process). On some CPUs oneDNN's
  float32 convolution backward with a batch of 2 or more is 7e-5 to 8.5e-4 off (a batch of one,
  as the reference engine's ``vmap`` over single examples uses, is not); PyTorch's own convolution
  is exact to about 2e-7, but costs 1.4x on ResNet-20's structured engine, so it is used only
  where it is needed. The reference engine keeps oneDNN: it is exact there, and about five times
  slower without it.

TF32 is not one of these switches: :func:`no_tf32` turns it off for every eNTK computation.

:func:`accurate` switches both off and on, so that a benchmark can time "before" and "after" in
one process (``benchmarks/bench_accuracy.py``). The flag is process-wide, like PyTorch's own
backend flags; library users have no reason to touch it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F

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
def outside_onednn(device: torch.device, convolutions: bool = True) -> Iterator[None]:
    """Convolutions in PyTorch's own kernels instead of oneDNN's, on a CPU where oneDNN's are
    inexact (:func:`onednn_exact`), while the fixes are on.

    Only ``torch.backends.mkldnn.enabled`` is changed (not its deterministic or TF32 settings),
    and restored on exit. On CUDA, with the fixes off, for a model without ``convolutions`` (no
    check is run then) and where oneDNN is exact, nothing changes.
    """
    if (
        not _ENABLED
        or not convolutions
        or device.type != "cpu"
        or not torch.backends.mkldnn.is_available()
        or not torch.backends.mkldnn.enabled
        or onednn_exact()
    ):
        yield
        return
    with _mkldnn(False):
        yield


@contextlib.contextmanager
def _mkldnn(enabled: bool) -> Iterator[None]:
    """``torch.backends.mkldnn.enabled`` set inside the block (``torch.backends.mkldnn.flags``
    would also set oneDNN's TF32 flag, which warns on a build without Intel GPU support)."""
    previous = torch.backends.mkldnn.enabled
    # torch's stubs type the flag as its ContextProp descriptor; a bool is how it is set
    torch.backends.mkldnn.enabled = enabled  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


@functools.cache
def onednn_exact() -> bool:
    """Whether oneDNN's float32 convolutions on this CPU are as exact as PyTorch's own.

    Measured once per process (about 0.1 s): a stack of three 3x3 convolutions of 16 channels on
    a batch of 2 examples of 32x32 (ResNet-20's first stage), forward and backward to the input,
    in float32 with oneDNN and without, against float64. oneDNN is exact when its relative error
    is at most 10 times that of PyTorch's own convolutions, or 1e-6 (both are about 2e-7 to 4e-7
    where they are exact; the CPU on which oneDNN was found inexact gave 7e-5 to 8.5e-4 through
    ResNet-20).
    """
    if not torch.backends.mkldnn.is_available():
        return True
    return _conv_stack_error(onednn=True) <= max(10 * _conv_stack_error(onednn=False), 1e-6)


def _conv_stack_error(onednn: bool) -> float:
    """The larger relative error (Frobenius) of the float32 forward output and input gradient of
    :func:`onednn_exact`'s convolution stack, with or without oneDNN, against float64."""
    generator = torch.Generator().manual_seed(0)
    x64 = torch.randn(2, 16, 32, 32, generator=generator, dtype=torch.float64)
    weights = [torch.randn(16, 16, 3, 3, generator=generator, dtype=torch.float64) / 12]
    weights += [torch.randn(16, 16, 3, 3, generator=generator, dtype=torch.float64) / 12]
    weights += [torch.randn(16, 16, 3, 3, generator=generator, dtype=torch.float64) / 12]
    cot64 = torch.randn(2, 16, 32, 32, generator=generator, dtype=torch.float64)

    def run(dtype: torch.dtype, mkldnn: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = x64.to(dtype).requires_grad_()
        with torch.enable_grad(), _mkldnn(mkldnn):
            h = x
            for k, w in enumerate(weights):
                h = F.conv2d(h, w.to(dtype), padding=1)
                h = F.relu(h) if k + 1 < len(weights) else h
            (grad,) = torch.autograd.grad(h, x, cot64.to(dtype))
        return h.detach().double(), grad.double()

    out64, grad64 = run(torch.float64, False)
    out, grad = run(torch.float32, onednn)
    return max(
        float((out - out64).norm() / out64.norm()), float((grad - grad64).norm() / grad64.norm())
    )


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
