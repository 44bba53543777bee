"""Whether a computed kernel can be returned as float32: finite, within float32's range, and not so
small that float32 holds it with fewer digits than its usual 24 bits.

The engines sum their float32 products in float64 (:mod:`conetool.ntk_precision`), so a kernel
whose entries reach past float32's largest number (3.4e38) is finite until it is returned as
float32, where those entries become infinite. At the other end, float32 numbers below its smallest
normal number (1.2e-38) are subnormal: they keep fewer digits the smaller they are, down to 0
below 1.4e-45. A kernel entry is a sum of products of Jacobian entries, one per parameter (per
logit for the trace kernel); when the largest entry, shared evenly among the ``p`` parameters, is
below 1.2e-38, those products are subnormal and the float32 kernel is off by more than float32's
usual rounding (a tiny MLP's outputs scaled by 1e-20, a largest entry of 1.8e-39: 3e-5 relative
Frobenius error; scaled by 1e-25: every entry 0). When it is at least ``p`` times 1.2e-38, the
rounding of the products that add up to it is at most float32's own (each subnormal product is
off by at most 2^-150, ``p`` of them by at most the largest entry times 2^-24). Both ends are
refused with the fix, the float64 kernel (``--dtype float64``), which holds either.

A float32 kernel that is exactly zero is the eNTK of a model whose outputs do not depend on its
parameters (every weight zero, no bias), or a cross kernel between examples whose Jacobians are
orthogonal (they move other parameters), which float64 gives too, or one whose products all fell
below 1.4e-45: :func:`outputs_move` tells them apart (one gradient of a random combination of the
first examples' outputs per side, and their dot product in float64, which is zero when the
kernel is, and almost surely not otherwise), and the last is refused too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import KernelUnderflowError, NonFiniteKernelError

__all__ = [
    "KernelUnderflowError",
    "NonFiniteKernelError",
    "check_range",
    "outputs_move",
    "smallest_float32_kernel",
]

#: How many examples :func:`outputs_move` differentiates.
MOVING_EXAMPLES = 8

_FLOAT32 = torch.finfo(torch.float32)


def smallest_float32_kernel(parameters: int) -> float:
    """The smallest largest-entry of a float32 kernel that is returned, for a model of
    ``parameters`` trainable values: that many times float32's smallest normal number (1.2e-38)."""
    return max(int(parameters), 1) * float(_FLOAT32.tiny)


def outputs_move(
    forward: Callable[[Tensor, dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    x: Tensor,
    *,
    kind: str = "trace",
    n2: int | None = None,
) -> bool:
    """Whether the ``kind`` eNTK of the first :data:`MOVING_EXAMPLES` examples of ``x``
    ``(n, ...)`` (with ``n2``: of ``x[:-n2]`` against those of ``x[-n2:]``, the cross kernel) is
    not zero in exact arithmetic, told from one gradient per side: ``g = J^T w`` for seeded
    Gaussian weights ``w`` of the outputs (for ``"sum"``, one weight per example, shared by its
    logits), and ``g1 . g2`` summed in float64. With ``J1 J2^T`` zero (every output constant, or
    a cross kernel between examples that move other parameters) it is zero; otherwise it is
    almost surely not (for a ``"trace"`` cross kernel, whose logits are paired, ``w`` couples the
    logits too: a block of ``J1 J2^T`` off its diagonal alone counts as moving)."""

    def gradient(examples: Tensor) -> dict[str, Tensor]:
        def combined(p: dict[str, Tensor]) -> Tensor:
            out = forward(examples, p)
            shape = out.shape if kind != "sum" else out.shape[:1] + (1,) * (out.dim() - 1)
            seeded = torch.Generator().manual_seed(0)
            weights = torch.randn(shape, generator=seeded, dtype=torch.float64)
            return (out * weights.to(device=out.device, dtype=out.dtype)).sum()

        return dict(torch.func.grad(combined)(params))

    first = gradient(x[:MOVING_EXAMPLES] if n2 is None else x[:-n2][:MOVING_EXAMPLES])
    second = first if n2 is None else gradient(x[-n2:][:MOVING_EXAMPLES])
    dot = sum((first[name].double() * second[name].double()).sum().cpu().item() for name in first)
    return dot != 0.0


def check_range(
    kernel: Tensor,
    *,
    float32: bool,
    parameters: int,
    outputs_move: Callable[[], bool] | None = None,
    non_finite_inputs: Callable[[], str | None] | None = None,
) -> None:
    """Raise when ``kernel`` (any shape, as the engine computed it, usually float64) is not finite,
    or, for a kernel computed and returned in float32 (``float32``), when it is beyond float32's
    range or so small that it is made of subnormal float32 products (see the module docstring).

    Args:
        kernel: the kernel, any shape and device.
        float32: whether it was computed in float32 and is returned as float32.
        parameters: ``p``, the number of trainable values of the model.
        outputs_move: for a float32 kernel that is all zeros, whether that kernel is not zero in
            exact arithmetic (:func:`outputs_move`); ``None``: such a kernel is returned.
        non_finite_inputs: for a kernel that is not finite, which inputs hold NaN or infinite
            values (``"x1 holds NaN or infinite values (1 example at index 4)"``), named as its
            cause; ``None`` (or no callable): the weights are blamed.

    Raises:
        NonFiniteKernelError: NaN or infinite entries, or (``float32``) entries beyond 3.4e38.
        KernelUnderflowError: (``float32``) a largest entry below :func:`smallest_float32_kernel`
            of ``parameters``, not 0 or 0 while ``outputs_move()``.

    Example:
        >>> check_range(torch.eye(2, dtype=torch.float64) * 1e39, float32=False, parameters=10)
        >>> try:
        ...     check_range(torch.eye(2, dtype=torch.float64) * 1e-40, float32=True, parameters=10)
        ... except KernelUnderflowError as exc:
        ...     str(exc)[:36]
        "the eNTK's largest entry is 1e-40, b"
    """
    if not bool(torch.isfinite(kernel).all()):
        bad = int((~torch.isfinite(kernel)).sum())
        inputs = non_finite_inputs() if non_finite_inputs is not None else None
        raise NonFiniteKernelError(
            f"the eNTK has {bad} non-finite entries (NaN or infinity): "
            + (
                f"{inputs}. Fix the inputs (or leave those examples out)."
                if inputs
                else "the model's outputs or their gradients overflow at these weights. Check the "
                "weights for NaN or huge values, or compute in float64 (--dtype float64)."
            )
        )
    if not float32 or kernel.numel() == 0:
        return
    peak = float(kernel.abs().max())
    if peak > _FLOAT32.max:
        raise NonFiniteKernelError(
            f"the eNTK has entries up to {peak:.3g}, beyond the largest float32 number "
            f"({_FLOAT32.max:.3g}): as a float32 kernel they would be infinite. The model's "
            "outputs or their gradients are huge at these weights; compute the kernels in float64 "
            "(--dtype float64, which holds them), or check the weights for huge values."
        )
    if peak == 0.0 and outputs_move is not None and outputs_move():
        raise KernelUnderflowError(
            "the eNTK computed in float32 is all zeros, but the model's outputs do depend on its "
            "parameters (their gradient is not zero): every product of Jacobian entries fell below "
            "float32's smallest number (1.4e-45). The model's outputs hardly depend on its "
            "parameters at these weights; compute the kernels in float64 (--dtype float64, "
            "which holds them)."
        )
    smallest = smallest_float32_kernel(parameters)
    if 0.0 < peak < smallest:
        raise KernelUnderflowError(
            f"the eNTK's largest entry is {peak:.3g}, below {smallest:.3g} ({parameters:,} "
            f"parameters times float32's smallest normal number, {_FLOAT32.tiny:.3g}): the "
            "products of Jacobian entries that add up to it are subnormal float32 numbers, which "
            "keep fewer digits (none below 1.4e-45), so this float32 kernel would be off by more "
            "than float32's rounding. The model's outputs hardly depend on its parameters at "
            "these weights; compute the kernels in float64 (--dtype float64, which holds them)."
        )
