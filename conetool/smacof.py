"""Metric SMACOF from a given start: scikit-learn's iterations, computed a block at a time.

SMACOF (de Leeuw 1977; Borg & Groenen, *Modern Multidimensional Scaling*, ch. 8) minimises the
raw stress ``sigma(X) = sum_{i<j} (|x_i - x_j| - D_ij)^2`` by repeating the Guttman transform

    X <- (1/K) B(X) X,    B(X) = diag(rowsum R) - R,    R_ij = D_ij / |x_i - x_j|,

which never increases the stress. :func:`smacof` makes the iterations of scikit-learn's
``sklearn.manifold._mds._smacof_single`` (metric, explicit ``init``; read in 1.9.1, whose
stopping rule dates from 1.7):

- distances from the Gram matrix as scikit-learn's ``euclidean_distances`` computes them,
  ``|x_i|^2 + |x_j|^2 - 2 x_i . x_j``, clipped at 0, ``0`` on the diagonal; a distance that is
  exactly 0 is taken as ``1e-5`` in ``R`` (points that coincide; with ``D_ij = 0``, as on the
  diagonal and between equal kernels, ``R_ij = 0`` either way) and as 0 in the stress;
- the stress of iteration ``t`` is that of the new coordinates ``X_t``; from ``t = 2`` it stops
  when ``(sigma(X_{t-1}) - sigma(X_t)) / sum_{i<j} |x_i - x_j|^2 < eps`` (the relative decrease
  scikit-learn 1.7+ tests; its 1.7 fix divides by the squared distances of ``X_t``), returning
  ``X_t`` and ``t`` iterations; otherwise ``X_max_iter`` after ``max_iter``.

It differs from scikit-learn only in rounding. scikit-learn forms five ``(K, K)`` temporaries
per iteration (distances, the zero mask, ``R``, ``B``, the stress's differences) and passes
over them about fifteen times; here each iteration walks the upper triangle once, in blocks of
rows small enough to stay in cache (rows ``a:b`` by columns ``a:K``: the square on the diagonal,
then the rest of those rows): one BLAS product gives a block's squared distances (the Gram
matrix and both norms at once), then come the distances and ``R``, and two BLAS products add
``R [X, 1]`` and ``[X, 1]^T R`` (the Guttman product and the row sums) to the rows on both
sides of the diagonal. A block where a distance is 0 or rounding makes a squared distance
negative (its products come out non-finite) is redone with the clipping and the ``1e-5`` above.
The sum of squared distances for the stopping rule is ``S(X) = K sum_i |x_i - mean|^2``, the
same sum in closed form.

The stress is not summed pair by pair at each iteration (that was a third of the time): the
stopping rule only needs the decrease, and ``sigma(X) = sum D^2 + S(X) - 2 rho(X)`` with
``rho(X) = sum_{i<j} R_ij |x_i - x_j|^2 = sum_i r_i |x_i|^2 - sum_i x_i . (R X)_i`` (``r`` the
row sums of ``R``), which the Guttman product already holds. So the decrease is
``S(X_{t-1}) - S(X_t) - 2 (rho(X_{t-1}) - rho(X_t))``, computed from ``(K, dims)`` arrays. It
loses to cancellation what the direct sum keeps, so it only decides where it is far from the
threshold: when it is within :func:`_rounding_bound` (a worst-case bound on how far rounding
can move it from the direct sums, ``16 K u`` times the sizes of the terms, ``u`` the float64
unit roundoff; about 1-5% of the threshold at ``K`` = 1,000-5,000) of ``eps S(X_t)``, or
anything is not finite, both stresses are summed pair by pair (:meth:`_Walk.stress`) and
decide, as before. The stress returned is always summed pair by pair.

The ``1e-5`` only matters to rounding: ``R_ij`` multiplies ``x_i - x_j``, which is 0 there
(scikit-learn's value is kept so that the rounding is alike too).

Threads: the blocks are cut into :data:`CHUNKS` runs that ``threads`` Python threads share
(NumPy releases the GIL in its loops and BLAS calls), each run with a sum of its own added in a
fixed order: the result is the same to the last bit for any thread count. With more than one
thread, NumPy's BLAS runs one thread per call meanwhile (threadpoolctl); ``threads=None`` takes
the count NumPy's BLAS is limited to now, so :func:`conetool.limit_threads` bounds it as it
bounds the rest of NumPy.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from conetool.geometry import GeometryError

__all__ = ["BLOCK_ELEMENTS", "BLOCK_ROWS", "CHUNKS", "SmacofResult", "smacof"]

#: Entries of ``D`` per block of rows (``rows * columns``): 2**16 float64 (512 KiB) per buffer,
#: so that a block's buffer and its slice of ``D`` stay in a core's L2 cache ...
BLOCK_ELEMENTS = 2**16
#: ... and at most this many rows, so that the squares on the diagonal (computed whole, both
#: triangles) stay a small share of the work.
BLOCK_ROWS = 64
#: Runs of blocks that threads share out (:class:`_Walk`): fixed, so that the result does not
#: depend on the thread count; enough for a balanced load on a few dozen threads.
CHUNKS = 32
#: What scikit-learn puts in place of a distance of exactly 0 before dividing by it.
ZERO_DISTANCE = 1e-5
#: :func:`_rounding_bound`'s factor on ``K u`` (a generous worst case).
BOUND_FACTOR = 16.0

_UNIT_ROUNDOFF = float(np.finfo(np.float64).eps) / 2


@dataclass(frozen=True)
class SmacofResult:
    """The last coordinates and how they were reached.

    Attributes:
        coords: float64 ``(K, dims)``, centred as the Guttman transform leaves them (not
            oriented).
        stress: raw stress ``sum_{i<j} (|x_i - x_j| - D_ij)^2`` of ``coords`` (scikit-learn's
            ``stress_`` with ``normalized_stress=False``).
        n_iter: Guttman transforms made (scikit-learn's ``n_iter_``).
    """

    coords: np.ndarray
    stress: float
    n_iter: int


def _row_blocks(count: int, block_elements: int, block_rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` whose blocks ``(b - a, count - a)`` (the square on the diagonal and
    the rest of the rows to its right) hold about ``block_elements`` entries, in at most
    ``block_rows`` rows (more rows per block towards the end, where rows are short)."""
    blocks = []
    a = 0
    while a < count:
        rows = max(1, min(block_elements // (count - a), block_rows, count - a))
        blocks.append((a, a + rows))
        a += rows
    return blocks


def _chunks(blocks: list[tuple[int, int]], count: int, chunks: int) -> list[list[tuple[int, int]]]:
    """``blocks`` cut into at most ``chunks`` runs of consecutive blocks with about the same
    number of entries each (the units that threads share out)."""
    ends = np.cumsum([(b - a) * (count - a) for a, b in blocks])
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, chunks) / chunks) + 1
    edges = sorted({0, len(blocks), *(int(c) for c in cuts if c < len(blocks))})
    return [blocks[i:j] for i, j in itertools.pairwise(edges)]


_Block = Callable[[int, int, np.ndarray, np.ndarray, np.ndarray], float]


class _Walk:
    """Buffers and blocks for one ``D`` ``(K, K)``, block ``[a, b)`` being rows ``a:b`` by
    columns ``a:K`` of the upper triangle. :meth:`products` computes ``R [X, 1]`` (the Guttman
    product and ``R``'s row sums) for coordinates ``X``, :meth:`stress` the raw stress, each in
    one walk over the blocks.

    The blocks are cut into runs (:func:`_chunks`) fixed by ``K`` and the block sizes alone;
    each run adds its blocks' column products ``[X, 1]^T R`` (and stresses) to sums of its own,
    which are added in the runs' order, so the result is the same to the last bit whichever
    thread computes a run and however many threads there are (each row of ``R [X, 1]`` is
    written by one block)."""

    def __init__(
        self, d: np.ndarray, dims: int, block_elements: int, block_rows: int, threads: int
    ) -> None:
        count = d.shape[0]
        self.count = count
        self.dims = dims
        blocks = _row_blocks(count, block_elements, block_rows)
        self.chunks = _chunks(blocks, count, CHUNKS)
        # each block's slice of D, copied to one contiguous array in walk order (half of D's
        # size; read once per walk, it streams from memory or the L3 cache twice as fast as
        # the rows of D, which the divisions wait on)
        self.targets: dict[int, np.ndarray] = {}
        packed = np.empty(sum((b - a) * (count - a) for a, b in blocks))
        offset = 0
        for a, b in blocks:
            size = (b - a) * (count - a)
            self.targets[a] = packed[offset : offset + size].reshape(b - a, count - a)
            self.targets[a][...] = d[a:b, a:]
            offset += size
        self.packed = packed
        self.threads = max(1, min(threads, len(self.chunks)))
        largest = max((b - a) * (count - a) for a, b in blocks)
        # a pair of buffers per thread: squared distances, then distances, then R; distances - D
        self.spare: queue.SimpleQueue[tuple[np.ndarray, np.ndarray]] = queue.SimpleQueue()
        for _ in range(self.threads):
            self.spare.put((np.empty(largest), np.empty(largest)))
        self.norms = np.empty(count)  # |x|^2
        self.left = np.empty((count, dims + 2))  # [X, |x|^2, 1]
        # [-2 X, 1, |x|^2]^T and [X, 1] (and its transpose): row-major products (np.matmul of
        # C-ordered operands ran 1.5-2x faster here than np.dot of a transposed one)
        self.right = np.empty((dims + 2, count))
        self.ext = np.empty((count, dims + 1))
        self.ext_t = np.empty((dims + 1, count))
        self.product = np.empty((count, dims + 1))  # R [X, 1], from the blocks' rows
        # its transpose from the blocks' columns, a sum per run
        self.below = np.empty((len(self.chunks), dims + 1, count))
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def products(self, x: np.ndarray) -> None:
        """Set :attr:`product` to ``R [x, 1]`` for ``x`` ``(K, dims)`` (and :attr:`norms`)."""
        self._load(x)
        self._walk(self._block_products)
        np.add(self.product, self.below.sum(axis=0).T, out=self.product)

    def stress(self, x: np.ndarray) -> float:
        """The raw stress of ``x`` ``(K, dims)``, summed pair by pair."""
        self._load(x)
        return self._walk(self._block_stress)

    def _load(self, x: np.ndarray) -> None:
        p = self.dims
        np.einsum("ij,ij->i", x, x, out=self.norms)
        self.left[:, :p] = x
        self.left[:, p] = self.norms
        self.left[:, p + 1] = 1.0
        np.multiply(x.T, -2.0, out=self.right[:p])
        self.right[p] = 1.0
        self.right[p + 1] = self.norms
        self.ext[:, :p] = x
        self.ext[:, p] = 1.0
        self.ext_t[...] = self.ext.T

    def _walk(self, block: _Block) -> float:
        """``block`` over every block, run by run (on the threads); the sum of its values."""

        def run(index: int) -> float:
            work, diff = self.spare.get()
            try:
                below = self.below[index]
                below.fill(0.0)
                # a distance of 0 divides by 0 (redone then); NumPy's error state is per thread
                with np.errstate(divide="ignore", invalid="ignore"):
                    return sum(block(a, b, work, diff, below) for a, b in self.chunks[index])
            finally:
                self.spare.put((work, diff))

        indices = range(len(self.chunks))
        values = [run(i) for i in indices] if self.pool is None else self.pool.map(run, indices)
        return float(sum(values))  # in the runs' order

    def _distances(self, a: int, b: int, work: np.ndarray, clip: bool) -> np.ndarray:
        """Block ``[a, b)``'s distances (squared ones clipped at 0 if ``clip``), 1 on the
        square's diagonal (no pair; positive, so that 0 / 1 gives ``R_ii = 0``)."""
        count = self.count
        dist = work[: (b - a) * (count - a)].reshape(b - a, count - a)
        np.matmul(self.left[a:b], self.right[:, a:], out=dist)
        if clip:
            np.maximum(dist, 0.0, out=dist)
        work[_diagonal(a, b, count)] = 1.0
        return np.sqrt(dist, out=dist)

    def _block_products(
        self, a: int, b: int, work: np.ndarray, _diff: np.ndarray, below: np.ndarray
    ) -> float:
        """Block ``[a, b)``: set rows ``a:b`` of :attr:`product` to ``R [X, 1]`` (all of the
        block's columns) and, for the columns right of the square, add ``R^T [X, 1]`` to
        columns ``b:K`` of ``below`` (as its transpose)."""
        target = self.targets[a]
        ratio = self._distances(a, b, work, False)
        np.divide(target, ratio, out=ratio)
        top = np.matmul(ratio, self.ext[a:], out=self.product[a:b])
        if not np.isfinite(top[:, self.dims].sum()):  # a distance of 0, or a negative squared
            self._distances(a, b, work, True)
            ratio[ratio == 0.0] = ZERO_DISTANCE
            np.divide(target, ratio, out=ratio)
            np.matmul(ratio, self.ext[a:], out=top)
        if b < self.count:  # [X, 1]^T R (a row-major product, faster than R^T [X, 1])
            below[:, b:] += np.matmul(self.ext_t[:, a:b], ratio[:, b - a :])
        return 0.0

    def _block_stress(
        self, a: int, b: int, work: np.ndarray, diffs: np.ndarray, _below: np.ndarray
    ) -> float:
        """``sum (dist - D)^2`` over block ``[a, b)``'s pairs ``i < j``: the whole block, less
        half of its square (which holds each of its pairs twice), the diagonal left out."""
        dist = self._distances(a, b, work, True)
        diff = np.subtract(dist, self.targets[a], out=diffs[: dist.size].reshape(dist.shape))
        diffs[_diagonal(a, b, self.count)] = 0.0
        flat = diff.ravel()
        square = diff[:, : b - a]
        return float(np.dot(flat, flat)) - 0.5 * float(np.einsum("ij,ij->", square, square))


def _diagonal(a: int, b: int, count: int) -> slice:
    """Block ``[a, b)``'s diagonal ``i == j`` in its flat buffer: entries ``i (count - a + 1)``."""
    return np.s_[: (b - a - 1) * (count - a + 1) + 1 : count - a + 1]


@dataclass(frozen=True)
class _Terms:
    """What the decrease of the stress is made of at one iteration (module docstring)."""

    squared: float  # S(X) = sum_{i<j} |x_i - x_j|^2
    rho: float  # sum_{i<j} R_ij |x_i - x_j|^2
    bound: float  # how far rounding may put S - 2 rho from the direct sums (_rounding_bound)


def _terms(x: np.ndarray, walk: _Walk, d_squared: float) -> _Terms:
    """:class:`_Terms` of ``x`` ``(K, dims)``, from :meth:`_Walk.products` of ``x``."""
    count, p = x.shape
    centred = x - x.mean(axis=0)
    squared = count * float(np.einsum("ij,ij->", centred, centred))
    weighted = float(np.dot(walk.product[:, p], walk.norms))  # sum_i r_i |x_i|^2
    rho = weighted - float(np.einsum("ij,ij->", x, walk.product[:, :p]))
    scale = abs(weighted) + count * float(walk.norms.sum()) + d_squared
    return _Terms(squared, rho, _rounding_bound(count, scale))


def _rounding_bound(count: int, scale: float) -> float:
    """A worst-case bound on the rounding of a sum of ``count``-term sums of terms of total size
    ``scale``: ``16 K u scale``. ``scale`` is ``sum_i r_i |x_i|^2 + K sum_i |x_i|^2 + sum D^2``,
    which bounds the sizes of the terms of ``rho``, ``S`` and the direct sum of the stress (and
    what ``R``'s rounding moves in them)."""
    return BOUND_FACTOR * count * _UNIT_ROUNDOFF * scale


def smacof(
    d: np.ndarray,
    init: np.ndarray,
    *,
    max_iter: int = 300,
    eps: float = 1e-6,
    block_elements: int = BLOCK_ELEMENTS,
    block_rows: int = BLOCK_ROWS,
    threads: int | None = None,
) -> SmacofResult:
    """Metric SMACOF of dissimilarities ``d`` from coordinates ``init`` (module docstring).

    The same iterations and stopping rule as
    ``sklearn.manifold.smacof(d, metric=True, init=init, n_init=1, max_iter=max_iter, eps=eps,
    normalized_stress=False, return_n_iter=True)``, equal to it up to rounding.

    Args:
        d: float ``(K, K)`` dissimilarities: exactly symmetric, zero diagonal, finite (only the
            upper triangle is read).
        init: float ``(K, dims)`` start.
        max_iter: most Guttman transforms.
        eps: the stopping threshold on the relative decrease of the stress.
        block_elements, block_rows: the size of the blocks of rows (tuning knobs; any values
            >= 1 give the same iterations up to rounding).
        threads: Python threads sharing the blocks (the result is the same for any count);
            None: as many as NumPy's BLAS may use now (:func:`conetool.limit_threads`).

    Returns:
        :class:`SmacofResult`: coordinates ``(K, dims)``, raw stress, iterations.

    Raises:
        GeometryError: ``d`` is not square, symmetric with a zero diagonal and finite, or ``init``
            is not ``(K, dims)``, or ``max_iter < 1``, or ``threads < 1``.

    Example:
        >>> import numpy as np
        >>> points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> d = np.linalg.norm(points[:, None] - points[None], axis=-1)
        >>> result = smacof(d, points + 0.1, max_iter=100, eps=1e-12)
        >>> bool(result.stress < 1e-20)
        True
    """
    d = np.ascontiguousarray(d, dtype=np.float64)
    x = np.array(init, dtype=np.float64, order="C", copy=True)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise GeometryError(f"d must be square (K, K); got shape {d.shape}.")
    if not np.all(np.isfinite(d)) or np.any(np.diagonal(d) != 0) or not np.array_equal(d, d.T):
        raise GeometryError("d must be finite, exactly symmetric and zero on the diagonal.")
    if x.ndim != 2 or x.shape[0] != d.shape[0] or x.shape[1] < 1:
        raise GeometryError(f"init must be ({d.shape[0]}, dims); got shape {x.shape}.")
    if max_iter < 1:
        raise GeometryError(f"max_iter must be at least 1, got {max_iter}.")
    if threads is not None and threads < 1:
        raise GeometryError(f"threads must be at least 1, got {threads}.")
    # sum_{i<j} D_ij^2 (for the bound only; the decrease does not hold it); a D with negative
    # entries (no distances) has R of both signs, which the bound does not cover: sum directly
    d_squared = 0.5 * float(np.einsum("ij,ij->", d, d))
    direct = bool(np.any(d < 0))
    walk = _Walk(d, x.shape[1], block_elements, block_rows, threads or _blas_threads())
    try:
        with _one_blas_thread(walk.threads > 1), np.errstate(divide="ignore", invalid="ignore"):
            return _iterate(walk, x, max_iter, eps, d_squared, direct)
    finally:
        walk.close()


def _iterate(
    walk: _Walk, x: np.ndarray, max_iter: int, eps: float, d_squared: float, direct: bool
) -> SmacofResult:
    """The Guttman transforms from ``x`` until the stopping rule (module docstring).
    ``d_squared`` is ``sum_{i<j} D_ij^2``; ``direct`` makes the direct sums decide every
    iteration."""
    count, dims = x.shape
    inverse = 1.0 / count
    before: tuple[np.ndarray, _Terms] | None = None
    summed: dict[int, float] = {}  # stresses summed pair by pair, by iteration
    for t in range(max_iter + 1):
        walk.products(x)  # R(X_t) [X_t, 1]
        terms = _terms(x, walk, d_squared)
        if before is not None and t >= 2:
            previous, earlier = before
            decrease = earlier.squared - terms.squared - 2.0 * (earlier.rho - terms.rho)
            margin = earlier.bound + terms.bound
            threshold = eps * terms.squared
            if direct or not abs(decrease - threshold) > margin or terms.squared <= 0:
                # too close to call (or not finite): the direct sums decide, as scikit-learn's
                old = summed.get(t - 1)
                old = walk.stress(previous) if old is None else old
                summed[t] = walk.stress(x)
                stop = bool(np.float64(old - summed[t]) / terms.squared < eps)
            else:
                stop = decrease < threshold
            if stop:
                break
        if t == max_iter:
            break
        before = (x, terms)
        # Guttman transform: (1/K) (diag(rowsum R) - R) X
        x = inverse * (walk.product[:, dims : dims + 1] * x - walk.product[:, :dims])
    stress = summed[t] if t in summed else walk.stress(x)
    return SmacofResult(x, stress, t)


def _blas_threads() -> int:
    """The threads NumPy's BLAS may use now (as :func:`conetool.limit_threads` set them)."""
    from threadpoolctl import threadpool_info

    counts = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return max(1, min(counts, default=1))


def _one_blas_thread(parallel: bool) -> AbstractContextManager[object]:
    """While threads share out the blocks, each block's BLAS products run on its own thread."""
    if not parallel:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
