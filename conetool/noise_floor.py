"""The numerical noise floor of the kernel distance S, measured on the run's own model.

In Phase II adjacent kernel distances are 1e-4 or smaller, so a velocity curve means something
only above the rounding noise of the kernels it compares. :func:`kernel_noise` measures that noise
directly: it computes the kernel of a subset of the probe set twice by independent routes (the
engine and dtype the run uses, and the float64 reference engine) and reports how far apart they
are, as a relative Frobenius error and as a kernel distance S.

Pure: a model and inputs go in, a :class:`NoiseEstimate` comes out; nothing is written or printed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .choices import integer
from .errors import ConetoolError
from .geometry import kernel_distance
from .ntk import empirical_ntk

__all__ = ["NoiseEstimate", "kernel_noise"]


@dataclass(frozen=True)
class NoiseEstimate:
    """How far the kernel the run computes is from the float64 reference, on ``n`` examples.

    ``relative_error``: ``‖H - H64‖_F / ‖H64‖_F``. ``S``: ``kernel_distance(H, H64)``, the distance
    between two computations of one kernel: the floor under any measured S, since a kernel that
    did not move at all still shows this much (about ``relative_error² / 2`` when the error is
    unstructured). ``kind``, ``method`` and ``dtype`` (a name such as ``"float32"``) say which
    computation was checked.
    """

    relative_error: float
    S: float
    n: int
    kind: str
    method: str
    dtype: str

    def uncertainty(self, s: float) -> float:
        """How much rounding can move a measured distance of size ``s`` between two kernels.

        With unit-norm kernels ``u`` and errors of norm at most ``ε = relative_error`` on each,
        ``S = ‖u1 - u2‖² / 2`` moves by at most ``2·sqrt(2·s)·ε + 2·ε²``; a distance smaller than
        this cannot be told from rounding noise.

        >>> round(NoiseEstimate(1e-7, 5e-15, 32, "trace", "auto", "float32").uncertainty(1e-4), 12)
        2.828e-09
        """
        eps = self.relative_error
        return 2.0 * math.sqrt(2.0 * max(s, 0.0)) * eps + 2.0 * eps * eps


def kernel_noise(
    model: nn.Module,
    inputs: Tensor,
    *,
    kind: str = "trace",
    method: str = "auto",
    dtype: torch.dtype = torch.float32,
    subset: int = 32,
    max_memory: int | str | None = None,
    device: str | torch.device | None = None,
) -> NoiseEstimate:
    """The noise of the kernel computed with ``method`` in ``dtype``, against float64.

    The kernel of the first ``subset`` examples of ``inputs`` is computed twice with
    :func:`conetool.ntk.empirical_ntk`: once as the run computes it (``method``, ``dtype``) and once
    with the reference engine (``method="jacobian"``) in float64, which is exact to about 1e-10.

    Args:
        model: the network at one checkpoint (evaluated in eval mode, as for the kernels).
        inputs: ``(n, *shape)``, the probe examples; the first ``min(n, subset)`` are used.
        kind: ``"trace"``, ``"full"`` or ``"sum"``, as the run's kernels.
        method: the run's engine (``"auto"``, ``"structured"``, ``"jacobian"``).
        dtype: the run's compute dtype.
        subset: examples to use; the cost is two kernels of this many examples, one in float64.
        max_memory: the memory budget of each kernel (see :func:`conetool.ntk.empirical_ntk`).
        device: as for :func:`conetool.ntk.empirical_ntk`.

    Returns:
        A :class:`NoiseEstimate` with ``n = min(len(inputs), subset)``.

    Raises:
        ConetoolError: ``subset`` below 1, or what :func:`conetool.ntk.empirical_ntk` raises.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> noise = kernel_noise(net, torch.randn(6, 4), device="cpu")
        >>> noise.n, noise.dtype, noise.relative_error < 1e-6, 0 <= noise.S < 1e-12
        (6, 'float32', True, True)
    """
    count = integer(subset)
    if count is None or count < 1:
        raise ConetoolError(f"subset must be a positive number of examples, got {subset!r}.")
    probe = inputs[:count]
    kernel = empirical_ntk(
        model, probe, method=method, dtype=dtype, kind=kind, max_memory=max_memory, device=device
    )
    exact = empirical_ntk(
        model,
        probe,
        method="jacobian",
        dtype=torch.float64,
        kind=kind,
        max_memory=max_memory,
        device=device,
    )
    error = float((kernel.double() - exact).norm() / exact.norm())
    return NoiseEstimate(
        relative_error=error,
        S=kernel_distance(kernel, exact),
        n=int(probe.shape[0]),
        kind=kind,
        method=method,
        dtype=str(dtype).removeprefix("torch."),
    )
