"""Kernel distance, the S matrix, distance to references, adjacent distance and velocity.

Pure functions: kernels come in as tensors or arrays (or through a loader the caller supplies),
arrays of float64 go out. Nothing here reads files, prints or plots.

Definitions (Fort et al. 2020, eq. 4 of Zhou et al. 2025), all computed in float64:

- kernel distance ``S(H, H') = 1 - <H, H'>_F / (||H||_F ||H'||_F)``, in ``[0, 2]``;
  ``S(H, H) = 0``; ``S(aH, bH') = S(H, H')`` for ``a, b > 0``;
- ``sqrt(2 S)`` is the Euclidean (chordal) distance between the unit-norm kernels
  ``H / ||H||_F``, a true metric (used by :mod:`conetool.embedding`);
- kernel velocity ``v(t) = S(theta(t), theta(t + dt)) / dt``.

Shapes: a kernel is any array (``(n, n)`` for the trace kernel, ``(n, c, n, c)`` for the full one);
it is compared flattened. ``K`` stored steps give a ``(K, K)`` matrix ``S`` whose rows and columns
follow ``steps`` (ascending).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch

from conetool.choices import int_argument
from conetool.device import resolve_device
from conetool.errors import ConetoolError, GeometryError
from conetool.units import is_auto, parse_memory

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "ZERO_KERNEL",
    "AdjacentPair",
    "GeometryError",
    "KernelError",
    "adjacent",
    "block_size_for",
    "check_steps",
    "default_velocity_dt",
    "distance_matrix",
    "distance_to_reference",
    "kernel_distance",
    "memory_budget",
    "spacings",
    "step_index",
    "velocity_dt",
    "velocity_lag",
]

#: Default memory budget of :func:`distance_matrix` for its two float64 kernel blocks (1 GiB).
DEFAULT_MAX_MEMORY = 1 << 30

_FLOAT64_BYTES = 8


class KernelError(GeometryError):
    """One kernel cannot be compared: zero or non-finite norm, or a shape unlike the others.

    ``index`` is the loader index of the kernel at fault in :func:`distance_matrix` (``None``
    for :func:`kernel_distance`), so a caller can re-raise with the file name; ``zero``: the
    kernel is all zeros (which recomputing it gives again: :data:`ZERO_KERNEL`).
    """

    def __init__(self, message: str, index: int | None = None, zero: bool = False) -> None:
        super().__init__(message)
        self.index = index
        self.zero = zero


#: What a kernel of zeros is, for the messages that refuse one (a sentence, no final stop).
ZERO_KERNEL = (
    "A kernel of zeros is the eNTK of a model whose outputs do not depend on its parameters at "
    "that checkpoint (every weight zero, or every unit dead with no bias after it), and "
    "recomputing it gives zeros again"
)


# --------------------------------------------------------------------------- single distance


def _as_float64_vector(h: Any, name: str) -> np.ndarray:
    if isinstance(h, torch.Tensor):
        if h.is_complex():
            raise KernelError(f"{name} is a complex tensor ({h.dtype}); a kernel is real.")
        return h.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
    array = np.asarray(h)
    if array.dtype.kind not in "biuf":  # None, text, complex or objects: no kernel
        raise KernelError(
            f"{name} is not a kernel: got {type(h).__name__}"
            + (f" of dtype {array.dtype}" if isinstance(h, np.ndarray) else "")
            + ". Pass a torch.Tensor or a numpy array of real numbers (a kernel from "
            "conetool.empirical_ntk or Store.load_kernel)."
        )
    return array.astype(np.float64).reshape(-1)


# Norms in this range are computed, and multiplied in pairs, without overflow or subnormals; a
# kernel outside it is divided by its largest entry first (S does not depend on its scale).
_SAFE_NORM = (1e-140, 1e140)


def _normed(x: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """``(x', ||x'||)`` with ``x'`` = ``x`` or, when its norm is outside :data:`_SAFE_NORM` (it
    over- or underflows, or loses digits among the subnormals), ``x`` rescaled."""
    with np.errstate(over="ignore", under="ignore"):  # handled below
        norm = float(np.linalg.norm(x))
    if _SAFE_NORM[0] <= norm <= _SAFE_NORM[1]:
        return x, norm
    if not np.all(np.isfinite(x)):
        raise KernelError(
            f"{name} holds non-finite values (NaN or inf), so its kernel distance is undefined. "
            "Recompute the kernel from a checkpoint with finite weights (`conetool kernels`)."
        )
    scale = float(np.max(np.abs(x))) if x.size else 0.0
    if scale == 0.0:
        raise KernelError(
            f"{name} is all zeros (Frobenius norm 0), so its kernel distance is undefined. "
            f"{ZERO_KERNEL}; check the model and the checkpoint.",
            zero=True,
        )
    x = x / scale
    return x, float(np.linalg.norm(x))


# Below this, 1 - cos has lost relative digits: S is recomputed as |u1 - u2|^2 / 2.
_SMALL_DISTANCE = 1e-3


def kernel_distance(h1: torch.Tensor | np.ndarray, h2: torch.Tensor | np.ndarray) -> float:
    """Kernel distance ``S(H1, H2) = 1 - <H1, H2>_F / (||H1||_F ||H2||_F)`` in float64.

    Args:
        h1, h2: kernels of the same shape, any real dtype (tensors on any device, or arrays);
            they are flattened and converted to float64.

    Returns:
        ``S`` in ``[0, 2]``, exactly symmetric. Below ``1e-3`` it is recomputed as
        ``||u1 - u2||^2 / 2`` with ``u = H / ||H||_F``: the same number as the definition, to
        full relative precision for small distances, and exactly 0 for identical kernels.

    Raises:
        KernelError: the shapes differ, or a kernel is all zeros or not finite, or it is no
            array of real numbers (``None``, text, a complex tensor).

    Example:
        >>> kernel_distance(np.eye(3), 2 * np.eye(3))
        0.0
    """
    a = _as_float64_vector(h1, "h1")
    b = _as_float64_vector(h2, "h2")
    shape1 = tuple(h1.shape) if hasattr(h1, "shape") else a.shape
    shape2 = tuple(h2.shape) if hasattr(h2, "shape") else b.shape
    if shape1 != shape2:
        raise KernelError(
            f"kernels of different shapes cannot be compared: h1 has shape {shape1}, h2 has "
            f"shape {shape2}. Compute both kernels on the same probe set with the same kind."
        )
    a, norm_a = _normed(a, "h1")
    b, norm_b = _normed(b, "h2")
    distance = 1.0 - float(np.dot(a, b)) / (norm_a * norm_b)
    if distance < _SMALL_DISTANCE:
        d = a / norm_a - b / norm_b
        distance = 0.5 * float(np.dot(d, d))
    return float(min(max(distance, 0.0), 2.0))


# --------------------------------------------------------------------------- the S matrix


def memory_budget(max_memory: int | str | None) -> int:
    """``max_memory`` in bytes as :func:`distance_matrix` takes it: ``None`` or ``"auto"`` ->
    :data:`DEFAULT_MAX_MEMORY`; else a whole number of bytes or text like ``"1GiB"``, as
    ``--max-memory`` takes it (:func:`conetool.units.parse_memory`).

    Raises:
        GeometryError: anything else (``"1 gigs"``, ``0``, ``1.5``), naming ``max_memory`` and
            what to pass.
    """
    if max_memory is None or is_auto(max_memory):
        return DEFAULT_MAX_MEMORY
    with _as_geometry_error():
        return parse_memory(max_memory, "max_memory")


def block_size_for(kernel_numel: int, max_memory: int | str = DEFAULT_MAX_MEMORY) -> int:
    """Number of kernels per block so that :func:`distance_matrix` stays within ``max_memory``
    (bytes, or text like ``"1GiB"``: :func:`memory_budget`).

    The budget covers two float64 blocks of flattened kernels (``2 * b * numel * 8`` bytes) plus
    one kernel as the loader returns it (counted as float64, ``numel * 8``). The ``(K, K)``
    result and the loader's own caches are not counted.

    Raises:
        GeometryError: ``max_memory`` is no memory size, or cannot hold even one kernel per block.
    """
    budget = memory_budget(max_memory)
    per_kernel = kernel_numel * _FLOAT64_BYTES
    size = (budget - per_kernel) // (2 * per_kernel)
    if size < 1:
        need = 3 * per_kernel
        raise GeometryError(
            f"max_memory={budget} bytes is too small for kernels of {kernel_numel} "
            f"entries: the S matrix needs at least {need} bytes ({need / 2**20:.1f} MiB: two "
            "float64 kernels plus one being loaded). Raise max_memory (`--max-memory`)."
        )
    return size


def distance_matrix(
    load: Callable[[int], torch.Tensor | np.ndarray],
    count: int,
    *,
    block_size: int | None = None,
    max_memory: int | str | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The ``(K, K)`` matrix of kernel distances between ``K = count`` kernels, block by block.

    ``S = 1 - G`` where ``G`` is the Gram matrix of the unit-norm flattened kernels. Kernels are
    read through ``load(i)`` for ``i`` in ``range(count)`` (the caller reads files lazily) into
    two float64 buffers of ``block_size`` kernels each; no more than those two blocks and the
    kernel being loaded are held at once. Block ``j`` is loaded ``j`` times at most (block 0
    once), so each kernel is read about ``K / block_size`` times; the order of the blocks reuses
    the last one loaded, and a single block (``block_size >= K``) reads every kernel once.

    Args:
        load: ``load(i) -> kernel`` (a tensor or array of any shape and float dtype; all the
            same shape). Called in no particular order, possibly more than once per index. For
            kernels already in a list, pass ``kernels.__getitem__``.
        count: ``K``, the number of kernels (an int).
        block_size: kernels per block (an int); by default the largest that fits
            ``max_memory`` (see :func:`block_size_for`).
        max_memory: memory budget for the two blocks and one loaded kernel, in bytes or as
            text like ``"1GiB"`` (as ``--max-memory`` takes it); ``None`` or ``"auto"``:
            :data:`DEFAULT_MAX_MEMORY` (1 GiB). Ignored when ``block_size`` is given.
        device: where the float64 blocks live and the products run: ``"cpu"``, ``"cuda"``,
            ``"cuda:k"``, ``"auto"`` (CUDA when present) or a ``torch.device``.
        progress: called as ``progress(loaded, total)`` after each kernel load, ``total`` being
            the number of loads the whole computation makes.

    Returns:
        ``S``, float64 ``(K, K)``, exactly symmetric, diagonal exactly 0, values clipped to
        ``[0, 2]``. Entries agree with :func:`kernel_distance` to about ``1e-15`` absolute
        (``1 - G`` loses relative precision only for ``S`` below about ``1e-12``).

    Raises:
        KernelError: a kernel is all zeros or non-finite, or its shape differs from kernel 0
            (``.index`` names it).
        GeometryError: ``load`` or ``progress`` is not callable, ``count`` or ``block_size``
            is no int or below 1, ``max_memory`` is no memory size or too small, or ``device``
            is no device this machine has (``"cuda"`` without CUDA); the message names the
            argument and what to pass.
    """
    if not callable(load):
        raise GeometryError(
            f"load={type(load).__name__} is not callable: pass a function load(i) -> kernel, "
            "e.g. kernels.__getitem__ for a list of kernels."
        )
    if progress is not None and not callable(progress):
        raise GeometryError(
            f"progress={progress!r} is not callable: pass a function progress(loaded, total), "
            "or None."
        )
    count = _int_argument(count, "count")
    if count < 1:
        raise GeometryError(f"distance_matrix needs at least one kernel, got count={count}.")
    if block_size is not None:
        block_size = _int_argument(block_size, "block_size")
        if block_size < 1:
            raise GeometryError(f"block_size must be a positive integer, got {block_size}.")
    budget = memory_budget(max_memory) if block_size is None else None
    with _as_geometry_error():
        # a torch.device is checked as its name is: torch.device("cuda") on a machine without
        device = resolve_device(
            str(device) if isinstance(device, torch.device) else device, argument="device"
        )

    first = _as_tensor(load(0))
    shape = tuple(first.shape)
    numel = first.numel()
    if block_size is None:
        assert budget is not None
        block_size = block_size_for(numel, budget)
    b = min(block_size, count)
    blocks = [range(start, min(start + b, count)) for start in range(0, count, b)]
    nb = len(blocks)
    total_loads = len(blocks[0]) + sum(len(blocks[j]) * j for j in range(1, nb))
    loaded = 0

    def fill(buffer: torch.Tensor, block: range, given: torch.Tensor | None = None) -> torch.Tensor:
        nonlocal loaded
        for row, index in enumerate(block):
            kernel = given if (given is not None and index == 0) else _as_tensor(load(index))
            if tuple(kernel.shape) != shape:
                raise KernelError(
                    f"kernel {index} has shape {tuple(kernel.shape)} but kernel 0 has shape "
                    f"{shape}: all kernels must come from the same probe set and kernel kind. "
                    "Recompute the odd one out (`conetool kernels`) or start a fresh store.",
                    index,
                )
            target = buffer[row]
            target.copy_(kernel.reshape(-1))
            norm = _rescaled_norm(target)
            if not math.isfinite(norm) or norm == 0.0:
                what = "is all zeros" if norm == 0.0 else "holds NaN or inf values"
                raise KernelError(
                    f"kernel {index} {what} (Frobenius norm {norm}), so its distance to the "
                    "other kernels is undefined. Recompute it from a checkpoint with finite "
                    "weights (`conetool kernels`), or leave that step out.",
                    index,
                    zero=norm == 0.0,
                )
            target.div_(norm)
            loaded += 1
            if progress is not None:
                progress(loaded, total_loads)
        return buffer[: len(block)]

    gram = np.empty((count, count), dtype=np.float64)
    held = torch.empty((b, numel), dtype=torch.float64, device=device)
    other = torch.empty((b, numel), dtype=torch.float64, device=device) if nb > 1 else held
    rows = fill(held, blocks[0], given=first)
    del first
    for i in range(nb):
        block_i = blocks[i]
        gram[block_i.start : block_i.stop, block_i.start : block_i.stop] = (
            (rows @ rows.T).cpu().numpy()
        )
        cols = rows
        # Descending order leaves block i + 1 in `other` at the end: it becomes the next `held`.
        for j in range(nb - 1, i, -1):
            block_j = blocks[j]
            cols = fill(other, block_j)
            gram[block_i.start : block_i.stop, block_j.start : block_j.stop] = (
                (rows @ cols.T).cpu().numpy()
            )
        if i + 1 < nb:
            held, other = other, held
            rows = cols
    return _gram_to_distance(gram)


def _int_argument(value: object, name: str) -> int:
    """``value`` as an int (an int or numpy integer); else a :class:`GeometryError` naming
    ``name`` and the int to pass (``count=3.0``: pass ``count=3``)."""
    with _as_geometry_error():
        checked = int_argument(value, name)
    assert checked is not None
    return checked


@contextmanager
def _as_geometry_error() -> Iterator[None]:
    """Re-raise the :class:`ConetoolError` of a check shared with the commands (a memory size,
    a device, an int argument) as a :class:`GeometryError`, this module's error, which is also a
    ``ValueError``; its message unchanged."""
    try:
        yield
    except GeometryError:
        raise
    except ConetoolError as exc:
        raise GeometryError(str(exc)) from exc


def _rescaled_norm(target: torch.Tensor) -> float:
    """``||target||``, after dividing ``target`` in place by its largest entry when its norm is
    outside :data:`_SAFE_NORM` and it is finite and not all zeros (S does not depend on scale)."""
    norm = float(torch.linalg.vector_norm(target))
    if _SAFE_NORM[0] <= norm <= _SAFE_NORM[1] or not bool(torch.isfinite(target).all()):
        return norm
    peak = float(target.abs().max())
    if peak == 0.0:
        return 0.0
    target.div_(peak)
    return float(torch.linalg.vector_norm(target))


def _as_tensor(kernel: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(kernel, torch.Tensor):
        return kernel.detach()
    with warnings.catch_warnings():
        # A read-only array (memory-mapped file) is fine: it is only ever read from.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        arr = np.asarray(kernel)
        if any(stride < 0 for stride in arr.strides):
            # a reversed view (``k[::-1]``, the probe examples in the opposite order), which
            # torch.from_numpy refuses: copied, as only such a view is
            arr = np.ascontiguousarray(arr)
        return torch.from_numpy(arr)


def _gram_to_distance(gram: np.ndarray) -> np.ndarray:
    """``S = 1 - G`` from the upper triangle of ``G``: exactly symmetric, 0 diagonal, in [0, 2]."""
    # Only the upper triangle of ``gram`` is read: the blocked computation may leave the lower
    # one unset (uninitialized memory must not reach the arithmetic).
    upper = np.zeros_like(gram)
    rows, cols = np.triu_indices(gram.shape[0], k=1)
    upper[rows, cols] = 1.0 - gram[rows, cols]
    s = upper + upper.T
    np.clip(s, 0.0, 2.0, out=s)
    np.fill_diagonal(s, 0.0)
    return s


# --------------------------------------------------------------------------- curves from S


class AdjacentPair(NamedTuple):
    """One adjacent pair: ``distance = S(theta(step), theta(step + dt))``, ``velocity = S / dt``."""

    step: int
    dt: int
    distance: float
    velocity: float


def check_steps(steps: Sequence[int] | np.ndarray, s: np.ndarray | None = None) -> np.ndarray:
    """``steps`` as a strictly increasing int64 array, checked against ``s`` ``(K, K)`` if given."""
    arr = np.asarray(steps)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise GeometryError(f"steps must be a 1-D sequence of integers, got {steps!r}.")
    arr = arr.astype(np.int64)
    if arr.size > 1 and np.any(np.diff(arr) <= 0):
        raise GeometryError(
            "steps must be strictly increasing (one kernel per step, sorted); got "
            f"{arr.tolist()[:20]}{' ...' if arr.size > 20 else ''}."
        )
    if s is not None and (s.ndim != 2 or s.shape != (arr.size, arr.size)):
        raise GeometryError(
            f"the S matrix has shape {s.shape} but there are {arr.size} steps; it must be "
            f"({arr.size}, {arr.size}) with rows in the order of steps."
        )
    return arr


def step_index(steps: Sequence[int] | np.ndarray, step: int) -> int:
    """Position of ``step`` in the ascending ``steps``.

    Raises:
        GeometryError: ``step`` is not stored; the message names the nearest stored steps.
    """
    arr = check_steps(steps)
    pos = int(np.searchsorted(arr, step))
    if pos < arr.size and arr[pos] == step:
        return pos
    near = sorted({int(arr[p]) for p in (pos - 1, pos) if 0 <= p < arr.size})
    hint = " or ".join(str(v) for v in near) if near else "none (no steps are stored)"
    nearest = "the nearest stored step is" if len(near) == 1 else "the nearest stored steps are"
    raise GeometryError(
        f"step {step} has no stored kernel; {nearest} {hint}. Pass one of "
        "the stored steps (`--ref`), or compute the kernel at that step (`conetool kernels`)."
    )


def distance_to_reference(s: np.ndarray, steps: Sequence[int], ref: int) -> np.ndarray:
    """``S(theta(t), theta(ref))`` for every stored step ``t`` (paper Fig. 1a).

    Args:
        s: the ``(K, K)`` S matrix, rows in the order of ``steps``.
        steps: the ``K`` stored steps, ascending.
        ref: the reference step ``tau``; must be stored.

    Returns:
        float64 ``(K,)``, aligned with ``steps`` (0 at ``t = ref``; steps before ``ref`` included).
    """
    s = np.asarray(s, dtype=np.float64)
    check_steps(steps, s)
    return s[step_index(steps, ref)].copy()


def spacings(steps: Sequence[int], *, consecutive: bool = True) -> list[int]:
    """The step differences ``dt`` that occur between stored steps, ascending.

    With ``consecutive=True`` (default) only between neighbouring stored steps (the natural
    choices of ``dt`` for :func:`adjacent`); with ``False`` between any two stored steps.
    """
    arr = check_steps(steps)
    if consecutive:
        return sorted({int(d) for d in np.diff(arr)})
    diffs = arr[None, :] - arr[:, None]
    return sorted({int(d) for d in diffs[diffs > 0]})


def adjacent(s: np.ndarray, steps: Sequence[int], dt: int) -> list[AdjacentPair]:
    """Adjacent distance and velocity for one ``dt`` (paper Fig. 1b).

    Every pair ``(t, t + dt)`` with both steps stored gives one :class:`AdjacentPair`
    ``(t, dt, S(theta(t), theta(t + dt)), S / dt)``, ordered by ``t``. An empty list means no such
    pair is stored (see :func:`spacings` for the ``dt`` that occur).
    """
    if int(dt) != dt or dt <= 0:
        raise GeometryError(f"dt must be a positive integer number of steps, got {dt}.")
    dt = int(dt)
    s = np.asarray(s, dtype=np.float64)
    arr = check_steps(steps, s)
    position = {int(t): i for i, t in enumerate(arr)}
    pairs = []
    for i, t in enumerate(arr):
        j = position.get(int(t) + dt)
        if j is not None:
            dist = float(s[i, j])
            pairs.append(AdjacentPair(int(t), dt, dist, dist / dt))
    return pairs


def _covered(steps: list[int], stored: set[int], dt: int) -> int:
    """How many steps the pairs ``(t, t + dt)`` of ``steps`` (ascending, both stored) cover:
    the total length of the union of the intervals ``[t, t + dt]``."""
    covered, end = 0, None
    for t in steps:  # ascending: the intervals [t, t + dt] in order
        if t + dt in stored:
            covered += t + dt - (t if end is None else max(t, end))
            end = t + dt
    return covered


def velocity_dt(steps: Sequence[int]) -> int | None:
    """The consecutive spacing whose adjacent pairs best cover the run: the unit of the
    velocity's default ``dt`` (:func:`default_velocity_dt`).

    Among the consecutive spacings of ``steps``, the one whose pairs ``(t, t + dt)`` (both
    stored) cover the most steps: the total length of the union of the intervals
    ``[t, t + dt]``, so that a spacing found only once at the start and once at the end (a run
    thinned to every other checkpoint: ``(0, 100)`` and ``(4900, 5000)`` among pairs 200 apart)
    does not count as covering what lies between; ties go to the smaller ``dt``. With
    checkpoints every 100 steps plus extra early ones (``save_at``) this is 100, not the early
    spacing. ``None`` with fewer than two steps.
    """
    arr = check_steps(steps)
    if arr.size < 2:
        return None
    ordered = arr.tolist()
    stored = set(ordered)
    best: tuple[int, int] | None = None  # (-covered, dt)
    for dt in Counter(np.diff(arr).tolist()):
        key = (-_covered(ordered, stored, dt), dt)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[1]


#: The velocity's default ``dt`` is at least this fraction of the run (its last stored step less
#: its first). At 1/50 one 5,000-step run saved every 10, 20, 50 or 100 steps is read at
#: ``dt = 100`` at all four, and one of 10,000 steps at 200; at 1/80 (``dt`` 130, 140 and 150
#: every 10, 20 and 50 steps) a 10,000-step ``hover`` run of :mod:`conetool.trajectories` read
#: ``no-two-phase`` (tests/test_verdict_sampling.py). 1/50 keeps the ``dt`` of the labelled
#: trajectories (5,000 steps saved every 100) and of the README's digits runs (2,400 steps every
#: 100, 6,000 every 150, 10,000 every 250); the cone store of tests/test_distance_command.py
#: (2,000 steps every 25) is read at 50. The paper's T = 10^4 steps give at least 200.
VELOCITY_DT_FRACTION = Fraction(1, 50)


def default_velocity_dt(
    steps: Sequence[int], fraction: Fraction = VELOCITY_DT_FRACTION
) -> int | None:
    """The verdict's default ``dt``: a multiple of a checkpoint spacing, at least ``fraction``
    of the run, so that it does not follow how densely the checkpoints were saved (the first of
    :func:`velocity_lag`'s two numbers). ``None`` with fewer than two steps."""
    lag = velocity_lag(steps, fraction)
    return None if lag is None else lag[0]


def velocity_lag(
    steps: Sequence[int], fraction: Fraction = VELOCITY_DT_FRACTION
) -> tuple[int, int] | None:
    """``(dt, spacing)``: the verdict's default ``dt`` and the consecutive spacing it is a
    multiple of.

    The covering spacing ``b`` is :func:`velocity_dt`. When ``b`` is at least ``fraction`` of
    the run's length (last stored step less first), it is the ``dt`` (and the spacing).
    Otherwise the ``dt`` is the smallest lag, among the smallest multiple of each consecutive
    spacing that is at least ``fraction`` of the run, whose pairs ``(t, t + dt)`` cover at
    least as many steps as those of ``b`` do (checkpoints every 20 steps cover a run with
    pairs 100 apart as well as with pairs 20 apart); the spacing is the one of those that
    covers the most (``b`` when its multiple is that lag). Without such a lag, ``b`` (a
    schedule whose stored steps are seldom that multiple apart). Every consecutive spacing is a
    candidate, not ``b`` alone: a run saved every 20 steps with one checkpoint lost has the
    spacing 40 at the hole, whose pairs cover the whole run (20's all but the hole), and the
    multiples of 40 gave it dt = 120 where the whole run gets 100; pairs 100 apart cover it
    whole, so it is read at 100 too. The velocity ``S / dt`` of a smooth Phase I grows with
    ``dt`` while that of a noisy Phase II does not, and a ``dt`` that followed the checkpoint
    spacing read a cone saved every 20 steps as no two-phase pattern (its velocity fell under
    the 5x of ``min_drop`` at ``dt = 20``, 21x at 100). A 5,000-step run saved every 10, 20,
    50 or 100 steps is read at ``dt = 100`` at all four. ``None`` with fewer than two steps.
    """
    base = velocity_dt(steps)
    if base is None:
        return None
    ordered = check_steps(steps).tolist()
    target = math.ceil(fraction * (ordered[-1] - ordered[0]))  # a Fraction: exact
    if base >= target:
        return base, base
    stored = set(ordered)
    needed = _covered(ordered, stored, base)
    # each consecutive spacing, the most covering first (base among the first: velocity_dt)
    ranked = sorted(
        {int(d) for d in np.diff(ordered)}, key=lambda d: (-_covered(ordered, stored, d), d)
    )
    best: tuple[int, int] | None = None  # (dt, spacing)
    for spacing in ranked:
        multiple = -(-target // spacing) * spacing  # its smallest multiple at least target
        if (best is None or multiple < best[0]) and _covered(ordered, stored, multiple) >= needed:
            best = (multiple, spacing)
    return (base, base) if best is None else best
