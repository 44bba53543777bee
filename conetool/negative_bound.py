"""A proven bound on the sum of a symmetric matrix's negative eigenvalues, from one Cholesky
factorisation: what ``embed --method pca`` needs of ``B``'s spectrum beyond its top eigenpairs.

The explained variance ratios of ``--method pca`` divide by ``P``, the sum of the positive
eigenvalues of ``B`` ``(K, K)``, and the refusal of an S matrix not of kernels compares ``Q``,
the sum of the magnitudes of the negative ones, with ``P``
(:func:`conetool.embedding._refuse_indefinite`). Since ``P - Q = trace(B)``, which is the sum of
the diagonal, ``P = trace(B) + Q``: only ``Q`` needs the spectrum, and only a bound on it.

A Krylov method (ARPACK's ``which="SA"``) cannot give one. The negative eigenvalues of the ``B``
of kernels are rounding, about ``1e-14`` of the largest, among hundreds of others near 0: Lanczos
does not converge there (ARPACK stops at its iteration limit, ``tests/test_negative_bound.py``),
and a Ritz value bounds the smallest eigenvalue from above only, so no residual makes it a lower
bound (an eigenvalue ``-tau`` apart from 0 by ``1e-14`` of the spread takes Lanczos some
``1 / sqrt(1e-14)`` steps to see).

A Cholesky factorisation gives one, in ``K^3 / 3`` flops of matrix-matrix products (about 0.9 s
at 5,000 on one core, against some 11 s for the tridiagonal reduction, half of whose flops are
matrix-vector products). Let ``A = fl(B + delta I)`` (the shift ``delta > 0`` added to the
diagonal, rounded: ``A = B + delta I + F``, ``F`` diagonal, ``|f_ii| <= u a_ii``, ``u = 2^-53``).
Where LAPACK's ``dpotrf`` factorises ``A`` to the end, the computed ``R`` satisfies
``R^T R = A + E`` with ``|E| <= gamma_{K+1} |R^T| |R|``, ``gamma_n = n u / (1 - n u)``, for any
order of the inner products, blocked or not (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., Thm 10.3), so by Cauchy-Schwarz on the columns of ``R``
``|e_ij| <= g sqrt(a_ii a_jj)``, ``g = gamma_{K+1} / (1 - gamma_{K+1})`` (Demmel, 1989; Higham
Thm 10.5): ``||E||_F <= g trace(A)`` and the nuclear norm ``||E||_* <= sqrt(K) g trace(A)``. Then
``B = R^T R - (delta I + F + E)`` with ``R^T R`` positive semi-definite, and for ``Pi`` the
projector on ``B``'s negative eigenspace ``Q = -trace(Pi B) <= trace(Pi (delta I + F + E))``,
at most the sum of the positive eigenvalues of ``delta I + F + E`` (Ky Fan), so

    Q <= N = K delta + (u + 2 sqrt(K) g) trace(A)

(:func:`negative_sum_bound` takes ``g`` twice, to spare: for the roundings of the square roots
and divisions and for underflow, whose absolute error of ``2^-1074`` per operation is far below
``u a_ii`` once ``delta >= 2^-900``, which it requires; ``trace(A)`` is the computed sum times
``1 + 2 K u``). The second term is about ``2 K^1.5 u`` of ``trace(B)``: ``7e-12`` of it at
``K`` = 1,000, ``8e-11`` at 5,000. :func:`negative_sum_bound` takes the largest ``delta`` that keeps
``N`` within a budget; the factorisation then succeeds where ``B``'s smallest eigenvalue is above
about ``-delta`` (``B``'s of kernels: their negative eigenvalues are rounding), and fails, at
the first pivot that is not positive, where it is below (an S matrix not of kernels, or kernels
so close that rounding makes up a large share of S): the caller then takes the dense path.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["UNIT_ROUNDOFF", "negative_sum_bound"]

#: ``u``: float64's unit roundoff.
UNIT_ROUNDOFF = 2.0**-53
#: The smallest shift taken (underflow stays far below the rounding of the shifted diagonal).
_MIN_SHIFT = 2.0**-900


def _rounding_share(count: int) -> float:
    """``c`` with ``N = K delta + c trace(A)``: ``(u + 2 sqrt(K) g) (1 + 2 K u)``."""
    u = UNIT_ROUNDOFF
    gamma = (count + 1) * u / (1.0 - (count + 1) * u)
    g = gamma / (1.0 - gamma)
    return (u + 2.0 * math.sqrt(count) * g) * (1.0 + 2.0 * count * u)


def negative_sum_bound(a: np.ndarray, trace: float, budget: float) -> float | None:
    """A bound ``N`` on the sum of the magnitudes of the negative eigenvalues of the symmetric
    ``a`` (module docstring), or ``None`` where no ``N`` within ``budget`` is proven.

    Args:
        a: ``(K, K)`` float64, C-contiguous, exactly symmetric (``0.5 * (b + b.T)``). It is
            OVERWRITTEN (its diagonal shifted and its Cholesky factor written over one triangle):
            the factorisation needs a ``(K, K)`` buffer, and this spares a copy.
        trace: the sum of ``a``'s diagonal.
        budget: the largest ``N`` wanted.

    Returns:
        ``N`` (at most ``budget``), where ``dpotrf`` factorises ``a + delta I`` with ``delta``
        the largest shift that ``budget`` allows; ``None`` where ``budget`` leaves no shift of at
        least ``2^-900``, or where the factorisation stops at a pivot that is not positive.
    """
    from scipy.linalg import lapack  # SciPy: not at start-up

    count = a.shape[0]
    share = _rounding_share(count)
    if not (np.isfinite(trace) and np.isfinite(budget)) or trace <= 0.0:
        return None
    # N(delta) = K delta + share (trace + K delta), kept at 0.99 of the budget
    delta = (0.99 * budget - share * trace) / (count * (1.0 + share))
    if not delta >= _MIN_SHIFT:
        return None
    a[np.diag_indices(count)] += delta
    shifted_trace = float(np.trace(a))
    # a is symmetric, so its transpose (Fortran-ordered: no copy) is the same matrix
    _, info = lapack.dpotrf(a.T, lower=1, overwrite_a=1, clean=0)
    if info != 0:
        return None
    bound = count * delta + share * shifted_trace
    return bound if bound <= budget else None
