"""The SMACOF of ``conetool/smacof.py`` as it was at commit 5f07b49 (before its blocks were
shared out over threads and its iterations made cheaper), kept unchanged below this paragraph
as the baseline of ``benchmarks/bench_embed.py`` and of ``tests/test_smacof.py``'s comparison.
Not part of the package; do not edit (apart from this paragraph, the file is that commit's).

Metric SMACOF from a given start: scikit-learn's iterations, computed a block at a time.

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
matrix and both norms at once), then come the distances, the block's stress and ``R``, and two
BLAS products add ``R [X, 1]`` and ``[X, 1]^T R`` (the Guttman product and the row sums) to the
rows on both sides of the diagonal. A block where a distance is 0 or rounding makes a squared
distance negative (its products come out non-finite) is redone with the clipping and the
``1e-5`` above. The sum of squared distances for the stopping rule is
``K sum_i |x_i - mean|^2``, the same sum in closed form.

The ``1e-5`` only matters to rounding: ``R_ij`` multiplies ``x_i - x_j``, which is 0 there
(scikit-learn's value is kept so that the rounding is alike too).

Threads: only NumPy's BLAS computes in parallel here (the three products per block), so
:func:`conetool.limit_threads` (threadpoolctl) bounds it as it bounds the rest of NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conetool.geometry import GeometryError

__all__ = ["BLOCK_ELEMENTS", "BLOCK_ROWS", "SmacofResult", "smacof"]

#: Entries of ``D`` per block of rows (``rows * columns``): 2**16 float64 (512 KiB) per buffer,
#: so that a block's two buffers and its slice of ``D`` stay in a core's L2 cache ...
BLOCK_ELEMENTS = 2**16
#: ... and at most this many rows, so that the squares on the diagonal (computed whole, both
#: triangles) stay a small share of the work.
BLOCK_ROWS = 64

#: What scikit-learn puts in place of a distance of exactly 0 before dividing by it.
ZERO_DISTANCE = 1e-5


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


class _Walk:
    """Buffers and blocks for one ``D`` ``(K, K)``: :meth:`run` computes, for coordinates
    ``X``, the raw stress and ``R [X, 1]`` (the Guttman product and ``R``'s row sums) in one
    walk over the upper triangle, block ``[a, b)`` being rows ``a:b`` by columns ``a:K``."""

    def __init__(self, d: np.ndarray, dims: int, block_elements: int, block_rows: int) -> None:
        count = d.shape[0]
        self.d = d
        self.dims = dims
        self.blocks = _row_blocks(count, block_elements, block_rows)
        largest = max((b - a) * (count - a) for a, b in self.blocks)
        self.work = np.empty(largest)  # squared distances, then distances, then R
        self.diff = np.empty(largest)  # distances - D, for the stress
        self.left = np.empty((count, dims + 2))  # [X, |x|^2, 1]
        # [-2 X, 1, |x|^2]^T and [X, 1] (and its transpose): row-major products (np.matmul of
        # C-ordered operands ran 1.5-2x faster here than np.dot of a transposed one)
        self.right = np.empty((dims + 2, count))
        self.ext = np.empty((count, dims + 1))
        self.ext_t = np.empty((dims + 1, count))
        self.product = np.empty((count, dims + 1))  # R [X, 1], from the blocks' rows
        self.below = np.empty((dims + 1, count))  # its transpose, from the blocks' columns

    def run(self, x: np.ndarray) -> float:
        """The raw stress of ``x`` ``(K, dims)``; :attr:`product` holds ``R [x, 1]`` after."""
        p = self.dims
        norms = np.einsum("ij,ij->i", x, x)
        self.left[:, :p] = x
        self.left[:, p] = norms
        self.left[:, p + 1] = 1.0
        np.multiply(x.T, -2.0, out=self.right[:p])
        self.right[p] = 1.0
        self.right[p + 1] = norms
        self.ext[:, :p] = x
        self.ext[:, p] = 1.0
        self.ext_t[...] = self.ext.T
        self.product.fill(0.0)
        self.below.fill(0.0)
        stress = sum(self._block(a, b) for a, b in self.blocks)
        self.product += self.below.T
        return stress

    def _block(self, a: int, b: int) -> float:
        """Block ``[a, b)``: add ``R [X, 1]`` to rows ``a:b`` (all of its columns) and, for the
        columns right of the square, ``R^T [X, 1]`` to rows ``b:K`` (as its transpose); return
        the stress of the pairs ``i < j`` in it."""
        count, p, rows = self.d.shape[0], self.dims, b - a
        shape = (rows, count - a)
        size = shape[0] * shape[1]
        dist = self.work[:size].reshape(shape)
        diff = self.diff[:size].reshape(shape)
        # the square's diagonal (i == j) in the flat buffers: entries i * (count - a + 1)
        diagonal = np.s_[: (rows - 1) * (count - a + 1) + 1 : count - a + 1]
        target = self.d[a:b, a:]
        np.matmul(self.left[a:b], self.right[:, a:], out=dist)  # squared distances
        self.work[diagonal] = 1.0  # no pair; positive, so that 0 / 1 gives R_ii = 0 below
        np.sqrt(dist, out=dist)
        stress = self._stress(dist, diff, target, diagonal)
        np.divide(target, dist, out=dist)  # R
        top = np.matmul(dist, self.ext[a:])
        if not np.isfinite(top[:, p].sum()):  # a distance of 0, or a negative squared one
            stress = self._careful(dist, diff, target, diagonal, a, b)
            top = np.matmul(dist, self.ext[a:])
        self.product[a:b] += top
        if b < count:  # [X, 1]^T R (a row-major product, faster than R^T [X, 1])
            self.below[:, b:] += np.matmul(self.ext_t[:, a:b], dist[:, rows:])
        return stress

    def _stress(
        self, dist: np.ndarray, diff: np.ndarray, target: np.ndarray, diagonal: slice
    ) -> float:
        """``sum (dist - D)^2`` over the block's pairs ``i < j``: the whole block, less half of
        its square (which holds each of its pairs twice), the diagonal left out."""
        rows = dist.shape[0]
        np.subtract(dist, target, out=diff)
        self.diff[diagonal] = 0.0
        flat = diff.ravel()
        square = diff[:, :rows]
        return float(np.dot(flat, flat)) - 0.5 * float(np.einsum("ij,ij->", square, square))

    def _careful(
        self,
        dist: np.ndarray,
        diff: np.ndarray,
        target: np.ndarray,
        diagonal: slice,
        a: int,
        b: int,
    ) -> float:
        """The block as scikit-learn computes it: squared distances clipped at 0, the stress
        with those, then ``R`` with a distance of 0 taken as 1e-5. Leaves ``R`` in ``dist``;
        returns the stress of the block's pairs. (The diagonal, 0 in scikit-learn, is whatever
        rounding leaves here: its ``R_ii = 0 / d_ii`` is 0 either way and :meth:`_stress`
        leaves it out.)"""
        np.matmul(self.left[a:b], self.right[:, a:], out=dist)
        np.maximum(dist, 0.0, out=dist)
        np.sqrt(dist, out=dist)
        stress = self._stress(dist, diff, target, diagonal)
        dist[dist == 0.0] = ZERO_DISTANCE
        np.divide(target, dist, out=dist)
        return stress


def smacof(
    d: np.ndarray,
    init: np.ndarray,
    *,
    max_iter: int = 300,
    eps: float = 1e-6,
    block_elements: int = BLOCK_ELEMENTS,
    block_rows: int = BLOCK_ROWS,
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

    Returns:
        :class:`SmacofResult`: coordinates ``(K, dims)``, raw stress, iterations.

    Raises:
        GeometryError: ``d`` is not square, symmetric with a zero diagonal and finite, or ``init``
            is not ``(K, dims)``, or ``max_iter < 1``.

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
    count, dims = x.shape
    walk = _Walk(d, dims, block_elements, block_rows)
    inverse = 1.0 / count
    previous = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        for t in range(max_iter + 1):
            stress = walk.run(x)  # the stress of X_t; walk.product = R(X_t) [X_t, 1]
            if t >= 2:
                centred = x - x.mean(axis=0)
                squared = count * float(np.einsum("ij,ij->", centred, centred))
                # numpy's division, as scikit-learn's: 0 squared gives inf or nan, not an error
                if np.float64(previous - stress) / squared < eps:
                    break
            if t == max_iter:
                break
            previous = stress
            # Guttman transform: (1/K) (diag(rowsum R) - R) X
            x = inverse * (walk.product[:, dims : dims + 1] * x - walk.product[:, :dims])
    return SmacofResult(x, stress, t)
