"""The top few eigenpairs of a large symmetric matrix by Lanczos (ARPACK), accepted only when checked.

``embed --method mds`` starts SMACOF from the classical solution, which needs only the top
``dims`` eigenvectors of ``B`` ``(K, K)``; the tridiagonal reduction
(:func:`conetool.embedding._tridiagonal_top`) costs about ``4/3 K^3`` flops whatever ``dims``.
ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``) needs a few
dozen products ``B x`` (``K^2`` flops each) where the top eigenvalues stand apart, as they do for
a trajectory of kernels. It can go wrong where they do not: it may stop at the iteration limit,
and a Krylov method can miss a copy of a repeated eigenvalue (and return the next one instead)
without noticing. So :func:`lanczos_top` returns its answer only after checking it, and ``None``
(the caller then takes the dense path) when

- ARPACK reports an error or does not converge within :data:`MAX_RESTARTS` restarts;
- the vectors are not orthonormal to :data:`ORTHONORMAL_TOLERANCE`;
- the deflation check fails: a second Lanczos run, from another start, on ``P B P`` (``P``
  projecting out the vectors found) gives ``mu``, the largest eigenvalue of ``B`` on the rest
  of the space (``mu`` plus its residual bounds it above, as the residuals bound the others).
  Where a copy of a top eigenvalue was missed, ``mu`` is that eigenvalue, at or above the
  smallest one returned;
- the eigenvectors are not determined to :data:`TOLERANCE`: for each pair ``(lambda_i, v_i)``
  with residual ``r_i = |B v_i - lambda_i v_i|``, the bound ``r_i / delta_i`` on the sine of its
  angle to the true eigenvector (Davis-Kahan), ``delta_i`` its distance to the other found
  eigenvalues and to ``mu``, less the residuals (where those may lie in truth). This refuses
  tied or nearly tied top eigenvalues (points evenly on a circle: any basis of their plane is an
  answer) and a tie across the cut (the ``dims``-th eigenvalue equal to the next, as for
  orthogonal kernels: the subspace is not determined), and any residual too large for the gaps.

Where it returns, each vector is within ``TOLERANCE`` (in angle) of the true eigenvector, which
the dense path computes to about ``1e-16 |B| / gap``: the coordinates ``V sqrt(lambda)`` agree
with the dense path's up to the sign of each axis, to ``TOLERANCE`` of their scale at most
(``tests/test_lanczos_top.py``; about ``1e-12`` for the S matrices of trajectories). The start
vectors are fixed (seeded by ``K``), so the same ``B`` gives the same answer (with the same BLAS
threads).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_RESTARTS", "ORTHONORMAL_TOLERANCE", "TOLERANCE", "lanczos_top"]

#: The largest bound on the angle between a returned eigenvector and the true one accepted.
TOLERANCE = 1e-8
#: ``max |V^T V - I|`` accepted.
ORTHONORMAL_TOLERANCE = 1e-10
#: ARPACK's ``maxiter`` for each run (implicit restarts, about 18 products ``B x`` each after the
#: first 20). Where the top eigenvalues stand apart, as for trajectories, it converges before the
#: first restart (21 products); kernels drawn at random (a flatter spectrum) need about 10. This
#: bounds the products made before the dense path is taken to about 2 x 110 (about a fifth of
#: the reduction's time at ``K`` = 5,000, where one product takes about 10 ms on one core).
MAX_RESTARTS = 5
#: Seeds of the two start vectors (random: ``B``'s rows sum to 0, so the vector of ones is in its
#: null space and no start).
_SEEDS = (0, 1)


def lanczos_top(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``dims`` largest eigenvalues of the symmetric ``b`` ``(K, K)`` and their eigenvectors,
    by ARPACK, or ``None`` where the checks of the module docstring fail.

    Args:
        b: ``(K, K)`` float64, symmetric up to rounding (only products ``b @ x`` are taken; the
            residuals are measured with them).
        dims: how many eigenpairs, at least 1 and below ``K - 1``.

    Returns:
        ``(values (dims,), vectors (K, dims))``, largest first, each vector of unit length and
        of either sign; or ``None``.
    """
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    count = b.shape[0]
    scale = float(np.linalg.norm(b))  # 0: nothing to find (every kernel alike)
    if not 1 <= dims < count - 1 or not np.isfinite(scale) or scale == 0.0:
        return None
    starts: list[np.ndarray] = [
        np.random.default_rng([seed, count]).standard_normal((count,)) for seed in _SEEDS
    ]
    try:
        values, vectors = eigsh(b, k=dims, which="LA", v0=starts[0], tol=0, maxiter=MAX_RESTARTS)
    except (ArpackError, ArpackNoConvergence):
        return None
    order = np.argsort(values)[::-1]
    values = np.asarray(values[order], dtype=np.float64)
    vectors = np.asarray(vectors[:, order], dtype=np.float64)
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(vectors))):
        return None
    if np.max(np.abs(vectors.T @ vectors - np.eye(dims))) > ORTHONORMAL_TOLERANCE:
        return None
    residuals = np.linalg.norm(b @ vectors - vectors * values, axis=0)

    def deflated(x: np.ndarray) -> np.ndarray:
        x = np.ravel(x)
        x = x - vectors @ (vectors.T @ x)
        y = b @ x
        return np.asarray(y - vectors @ (vectors.T @ y))

    rest = LinearOperator((count, count), matvec=deflated, dtype=np.float64)
    try:
        mu_values, mu_vectors = eigsh(
            rest, k=1, which="LA", v0=deflated(starts[1]), tol=0, maxiter=MAX_RESTARTS
        )
    except (ArpackError, ArpackNoConvergence):
        return None
    mu = float(mu_values[0])
    mu_vector = np.asarray(mu_vectors, dtype=np.float64)[:, 0]
    mu_residual = float(np.linalg.norm(deflated(mu_vector) - mu * mu_vector))
    if not np.isfinite(mu + mu_residual):
        return None
    slack = float(residuals.sum()) + mu_residual  # how far any found eigenvalue may be off
    for i in range(dims):
        others = np.delete(values, i)
        gap = min([values[i] - (mu + mu_residual), *np.abs(values[i] - others)])
        if gap - slack <= 0.0 or residuals[i] > TOLERANCE * (gap - slack):
            return None
    return values, vectors
