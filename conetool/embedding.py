"""Low-dimensional pictures of a kernel trajectory (paper Fig. 1c), from the S matrix alone.

Both methods embed the ``K`` unit-norm kernels ``u_k = H_k / ||H_k||_F`` using the chordal
distance ``D = sqrt(2 S)`` (the Euclidean distance between the ``u_k``, a true metric):

- ``"pca"``: classical (Torgerson) MDS of ``D``. This is *exactly* PCA of the flattened unit
  kernels (the same coordinates up to the sign of each axis, the same explained variance ratio),
  computed from the ``(K, K)`` Gram matrix ``G = 1 - S`` so the kernels never need to be in
  memory: ``B = -1/2 C D^2 C = C G C`` (``C`` the centering matrix), coordinates
  ``V sqrt(lambda)`` from its top eigenpairs, explained variance ratio ``lambda / trace(B)``.
  For the S matrix of kernels ``B`` is a Gram matrix, positive semi-definite up to rounding,
  and the ratios are the PCA's, in ``[0, 1]`` and summing to at most 1; ``trace(B)`` is summed
  over ``B``'s positive eigenvalues, which is the same up to rounding and keeps the ratios so
  where rounding makes up all of S (kernels equal but for rounding, S near 1e-15, had ratios
  summing above 1). An S matrix that is not that of any kernels (a user's own, or one rounded
  to a few digits) can make ``B`` indefinite beyond rounding: there are no unit kernels to take
  the PCA of, and the ratios of the definition would exceed 1. Such an ``S`` is refused
  (:class:`~conetool.geometry.GeometryError`, naming ``"mds"``, which embeds any ``S``) when
  ``B``'s negative eigenvalues sum to more than :data:`NEGATIVE_TOLERANCE` of its positive ones
  plus ``K`` times :data:`ROUNDING` (the entries of an S of kernels are within about ``1e-15``
  of the definition, which moves the eigenvalues by at most about ``K * 1e-15``).
  :func:`classical_mds`, of any distances, leaves out the negative eigenvalues instead (see its
  docstring).
- ``"mds"``: metric MDS on ``D`` by SMACOF (:func:`conetool.smacof.smacof`: the iterations and
  stopping rule of scikit-learn's metric MDS, reimplemented for speed, equal to it up to
  rounding; :func:`_sklearn_mds` is the scikit-learn call it replaced, kept for the tests and
  ``benchmarks/bench_embed.py``), started from the classical solution, with
  :data:`MDS_MAX_ITER` and :data:`MDS_EPS`. It bends the picture to fit all
  distances in ``dims`` dimensions; its quality is Kruskal's Stress-1,
  ``sqrt(sum_{i<j} (|x_i - x_j| - D_ij)^2 / sum_{i<j} D_ij^2)`` (0 is perfect, 0.05 good,
  0.2 poor).

Coordinates are deterministic: each axis is centred and its sign chosen so that its entry of
largest magnitude is positive.

The classical solution (both methods) needs only ``B``'s top ``dims`` eigenvectors, and all its
eigenvalues for the ratios and the refusal: :func:`_top_eigenpairs` reduces ``B`` to tridiagonal
form once and takes all eigenvalues and those ``dims`` vectors from it, not every eigenvector as
``np.linalg.eigh`` did (``benchmarks/bench_embed.py --start-only`` times both). The results are
``np.linalg.eigh``'s up to rounding (``tests/test_embedding.py``), with two exceptions that no
algorithm decides: where eigenvalues among the top ``dims`` tie (points evenly on a circle), any
basis of their eigenspace is an answer, and the coordinates may differ from ``np.linalg.eigh``'s
by a rotation in it (the distances, the stress and the ratios are the same); where the
``dims``-th eigenvalue ties with the next (orthogonal kernels, every S 1), the subspace taken may
differ, with the same ratios and the same fit to ``B`` but another stress-1 (and another MDS
result from that start). Either way the same input gives the same output (with the same BLAS
threads), and an axis whose eigenvalue is rounding (``dims`` above ``B``'s rank) holds rounding,
about the square root of ``1e-16`` of the scale, as before.

The start of ``"mds"`` needs no ratios and no refusal, so from :data:`LANCZOS_MIN_K` kernels on
it takes the top ``dims`` eigenpairs from ARPACK's Lanczos (:mod:`conetool.lanczos_top`: a few
dozen products ``B x`` instead of the ``4/3 K^3`` of the reduction), accepted only where a
deflation run and the residuals show each eigenvector determined to ``1e-8`` in angle (no ties,
converged), which puts the coordinates within that of the dense path's up to the sign of each
axis (``1e-12`` or so for trajectories; ``tests/test_lanczos_top.py``); elsewhere, ties
included, it takes the dense path above, with the same result as below ``LANCZOS_MIN_K``.

The ratios and the refusal of ``"pca"`` need, of the rest of the spectrum, only ``Q``, the sum of
the magnitudes of ``B``'s negative eigenvalues: the sum of its positive ones is ``P = t + Q``,
``t = trace(B)`` the sum of its diagonal. So from ``LANCZOS_MIN_K`` kernels on ``"pca"`` takes
the top eigenpairs from ARPACK, checked as above, and a proven bound ``Q <= N`` from one Cholesky
factorisation of ``B`` shifted by the largest ``delta`` the budget below allows
(:mod:`conetool.negative_bound`: ``K^3 / 3`` flops of matrix products, about 0.9 s at 5,000
kernels against some 11 s for the reduction; ARPACK cannot bound ``Q``, that module says why).
``P`` lies in ``[max(t, l), t + N]`` (``l`` the sum of the top eigenvalues), and the ratios
divide by ``max(t, l)`` (the definition's ``trace(B)``, kept at least ``l``): at most ``P`` and
within ``N`` of it, so they sum to at most 1 and are within ``N / t + K u`` (``u = 2^-53``, the
rounding of ``t``) of ``lambda_i / P``, relative. The path is taken only where
``N <= (RATIO_TOLERANCE - 2 K u) t``, so the ratios are within :data:`RATIO_TOLERANCE`
(``1e-9``) of the exact ones for ``B``'s top eigenvalues (which both paths compute to about
``u |B|``; for kernels ``Q`` is rounding, and the two paths' ratios agree to ``1e-10`` in
``tests/test_pca_lanczos.py``, about ``5e-12`` measured), and where ``N <= NEGATIVE_TOLERANCE t
+ ROUNDING K``, so that ``Q`` is within the refusal's tolerance (``P >= t``): the dense path,
whose ``Q`` differs from the true one by its rounding (about ``5e-12`` of ``t`` for the
trajectories of the tests), would not refuse either. Elsewhere it
takes the dense path, with its result and its refusal (an S matrix not of kernels always: the
factorisation fails on an indefinite ``B``): ties, no convergence, a factorisation that fails
(``B``'s smallest eigenvalue below about ``-N / K``: an indefinite ``B``, or kernels so close
that the rounding of S is a large share of it), and from about 27,000 kernels on, where the
factorisation's own rounding (about ``2 K^1.5 u`` of ``t``) leaves no budget.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from conetool.geometry import GeometryError
from conetool.lanczos_top import lanczos_top
from conetool.negative_bound import UNIT_ROUNDOFF, negative_sum_bound
from conetool.smacof import smacof

__all__ = ["Embedding", "classical_mds", "embed_kernels", "embed_mds", "embed_pca", "stress1"]

Method = Literal["mds", "pca"]

#: SMACOF settings used by :func:`embed_mds` (and by :func:`_sklearn_mds`, explicitly).
MDS_MAX_ITER = 1000
MDS_EPS = 1e-9

#: The sum of ``B``'s negative eigenvalues :func:`embed_pca` allows, as a share of the sum of its
#: positive ones (the explained variance ratios are then off by at most this share) ...
NEGATIVE_TOLERANCE = 1e-6
#: ... plus ``K`` times this: a thousand times what rounding leaves in the S matrix of kernels
#: (entries within about 1e-15 of the definition, ``1 - S`` up to 1), so that kernels that
#: hardly move (S near rounding) are not refused.
ROUNDING = 1e-12

#: From this many kernels on, the classical start takes its top eigenpairs from
#: :func:`conetool.lanczos_top.lanczos_top`, checked, before the dense path (``"pca"`` with
#: :func:`conetool.negative_bound.negative_sum_bound` for its ratios and refusal).
LANCZOS_MIN_K = 1000

#: The largest relative error of ``"pca"``'s ratios on the ARPACK path (module docstring): a
#: thousandth of :data:`NEGATIVE_TOLERANCE`. At ``1e-10`` the factorisation's rounding alone
#: (``2 K^1.5 u``) would use up the budget from about 6,000 kernels on.
RATIO_TOLERANCE = 1e-9

#: Pairs per block of :func:`stress1` (``rows * columns``; 1 MiB of float64 per temporary).
STRESS_BLOCK_ELEMENTS = 2**17


@dataclass(frozen=True)
class Embedding:
    """Coordinates of the kernels and the quality of the picture.

    Attributes:
        coords: float64 ``(K, dims)``, row ``k`` for the ``k``-th kernel (the order of ``S``).
        method: ``"mds"`` or ``"pca"``.
        stress: Kruskal Stress-1 of ``coords`` against ``sqrt(2 S)`` (both methods).
        explained_variance_ratio: ``(dims,)`` for ``"pca"``; ``None`` for ``"mds"``.
    """

    coords: np.ndarray
    method: Method
    stress: float
    explained_variance_ratio: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the coordinates)."""
        evr = self.explained_variance_ratio
        return {
            "method": self.method,
            "dims": int(self.coords.shape[1]),
            "stress": self.stress,
            "explained_variance_ratio": None if evr is None else [float(x) for x in evr],
        }


def _check(s: np.ndarray, dims: int) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise GeometryError(f"the S matrix must be square (K, K); got shape {s.shape}.")
    if not np.all(np.isfinite(s)):
        raise GeometryError("the S matrix holds NaN or inf; recompute it (`conetool distance`).")
    if dims not in (1, 2, 3):
        raise GeometryError(f"dims must be 1, 2 or 3 (`--dims`), got {dims}.")
    if s.shape[0] < dims + 1:
        raise GeometryError(
            f"embedding in {dims} dimensions needs at least {dims + 1} kernels; the S matrix "
            f"has {s.shape[0]}. Compute kernels at more steps (`conetool kernels`)."
        )
    return 0.5 * (s + s.T)


def _orient(coords: np.ndarray) -> np.ndarray:
    coords = coords - coords.mean(axis=0)
    rows = np.argmax(np.abs(coords), axis=0)
    signs = np.sign(coords[rows, np.arange(coords.shape[1])])
    signs[signs == 0] = 1.0
    return coords * signs


def stress1(coords: np.ndarray, d: np.ndarray) -> float:
    """Kruskal's Stress-1 of ``coords`` ``(K, dims)`` against target distances ``d`` ``(K, K)``
    (its upper triangle): ``sqrt(sum_{i<j} (|x_i - x_j| - d_ij)^2 / sum_{i<j} d_ij^2)``, 0 where
    every ``d_ij`` is 0.

    Each distance is ``sqrt(sum_c (x_ic - x_jc)^2)``, from the differences, not from the Gram
    identity (whose cancellation leaves about ``1e-8`` of the scale for coincident points), in
    blocks of :data:`STRESS_BLOCK_ELEMENTS` pairs (rows ``a:b`` by columns ``a:K``, the pairs
    ``i < j`` of the upper triangle): no ``(K, K, dims)`` or ``(K, K)`` temporary. Each distance
    is that of a direct ``(K, K, dims)`` computation to the last bit; only the order of the sums
    differs (rounding).
    """
    coords = np.asarray(coords, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    count = d.shape[0]
    numerator = denominator = 0.0
    a = 0
    while a < count:
        b = a + max(1, min(STRESS_BLOCK_ELEMENTS // (count - a), count - a))
        fitted = np.zeros((b - a, count - a))
        for column in coords.T:
            diff = np.subtract.outer(column[a:b], column[a:])
            np.multiply(diff, diff, out=diff)
            fitted += diff
        np.sqrt(fitted, out=fitted)
        target = d[a:b, a:]
        pairs = np.arange(count - a)[None, :] > np.arange(b - a)[:, None]  # j > i
        fitted -= target
        numerator += float(np.sum(fitted * fitted, where=pairs))
        denominator += float(np.sum(target * target, where=pairs))
        a = b
    if denominator == 0.0:
        return 0.0
    return float(np.sqrt(numerator / denominator))


def classical_mds(d: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Classical (Torgerson) MDS of a Euclidean distance matrix.

    Args:
        d: ``(K, K)`` symmetric distances.
        dims: output dimensions.

    Returns:
        ``(coords (K, dims), explained_variance_ratio (dims,))``: coordinates ``V sqrt(lambda)``
        of the top eigenpairs of ``B = -1/2 C d^2 C``, centred, oriented as the module states;
        the ratio is ``lambda / trace(B)``, the trace summed over B's positive eigenvalues.
        For a distance matrix of points in ``dims`` dimensions the points are recovered up to
        rotation, reflection and translation. A ``d`` that is no Euclidean distance matrix
        (``B`` indefinite) is taken as the classical method does: its negative eigenvalues are
        left out, of the coordinates and of the trace, so the ratios stay in ``[0, 1]`` (the
        share of B's positive part; :func:`embed_pca` refuses an S matrix of that kind).
    """
    d = np.asarray(d, dtype=np.float64)
    return _classical_from_b(_double_center(-0.5 * d * d), dims)


def _double_center(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0, keepdims=True)
    return a - a.mean(axis=1, keepdims=True)


def _classical_from_b(
    b: np.ndarray, dims: int, *, only_psd: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates and explained variance ratios from ``B`` ``(K, K)``; with ``only_psd``, a
    ``B`` with negative eigenvalues beyond rounding is refused first (:func:`_refuse_indefinite`,
    for the ``-C S C`` of an S matrix)."""
    b = 0.5 * (b + b.T)
    values, vectors = _top_eigenpairs(b, dims)
    if only_psd:
        _refuse_indefinite(values)
    top = np.clip(values[::-1][:dims], 0.0, None)  # tiny negative eigenvalues are rounding
    coords = _orient(vectors * np.sqrt(top))
    # trace(B) of the definition, over B's positive part: for the S matrix of kernels the same
    # up to rounding, and it keeps the ratios in [0, 1] where rounding alone makes up S
    total = float(values[values > 0].sum())
    ratio = top / total if total > 0 else np.zeros_like(top)
    return coords, ratio


def _top_eigenpairs(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvalues of the symmetric ``b`` ``(K, K)``, ascending ``(K,)``, and the eigenvectors
    of the ``dims`` largest, ``(K, dims)``, largest first: what ``np.linalg.eigh`` gives, up to
    rounding and each vector's sign, in the time of its reduction to tridiagonal form alone
    (:func:`_tridiagonal_top`). Should LAPACK report a failure there (inverse iteration not
    converging on a tight cluster of eigenvalues), the full ``np.linalg.eigh`` is taken."""
    found = _tridiagonal_top(b, dims)
    if found is not None:
        return found
    values, vectors = np.linalg.eigh(b)
    return values, vectors[:, ::-1][:, :dims]


def _tridiagonal_top(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_top_eigenpairs` through one tridiagonal reduction, or ``None`` where LAPACK fails.

    ``b`` is reduced to ``T = Q^T b Q`` once (``dsytrd``, about ``4/3 K^3`` flops: nearly the
    whole cost; ``np.linalg.eigh`` goes on to every eigenvector of ``T`` and applies ``Q`` to
    all ``K`` of them); ``T``'s eigenvalues come from ``dsterf`` (what
    ``np.linalg.eigvalsh`` runs), its top ``dims`` eigenvectors from bisection and inverse
    iteration (``dstebz``, ``dstein``: what ``scipy.linalg.eigh(subset_by_index=...)`` runs), and
    ``Q`` is applied to those ``dims`` vectors only (``dormqr`` on ``dsytrd``'s reflectors, as
    ``dormtr`` does)."""
    from scipy.linalg import LinAlgError, eigh_tridiagonal, lapack  # SciPy: not at start-up

    k = b.shape[0]
    lwork = int(lapack.dsytrd_lwork(k, lower=1)[0])
    reflectors, diagonal, off_diagonal, tau, info = lapack.dsytrd(b, lower=1, lwork=lwork)
    if info != 0:
        return None
    try:
        values = eigh_tridiagonal(diagonal, off_diagonal, eigvals_only=True, lapack_driver="sterf")
        _, top_vectors = eigh_tridiagonal(
            diagonal, off_diagonal, select="i", select_range=(k - dims, k - 1)
        )
    except LinAlgError:
        return None
    vectors = np.array(top_vectors[:, ::-1], dtype=np.float64)  # largest first
    # Q = diag(1, Q'), Q' the product of the k - 1 reflectors stored below the subdiagonal
    lower = reflectors[1:, : k - 1]
    _, work, info = lapack.dormqr("L", "N", lower, tau, vectors[1:], -1)
    if info != 0:
        return None
    vectors[1:], _, info = lapack.dormqr("L", "N", lower, tau, vectors[1:], int(work[0]))
    if info != 0:
        return None
    return np.asarray(values, dtype=np.float64), vectors


def _refuse_indefinite(values: np.ndarray) -> None:
    """Raise when the eigenvalues ``values`` ``(K,)`` of ``B = -C S C`` are negative beyond
    rounding (:data:`NEGATIVE_TOLERANCE`, :data:`ROUNDING`): no kernels have that S matrix."""
    negative = float(-values[values < 0].sum())
    positive = float(values[values > 0].sum())
    if negative <= NEGATIVE_TOLERANCE * positive + ROUNDING * values.size:
        return
    share = f"{negative / positive:.3g} times" if positive > 0 else "more than"
    raise GeometryError(
        f"this S matrix is not that of any kernels: -C S C (C centres; for kernels it is the "
        f"Gram matrix of the centred unit kernels) has negative eigenvalues, down to "
        f"{values.min():.3g} and summing to {share} its positive ones. sqrt(2 S) is then no "
        "Euclidean distance, there are no unit kernels to take the PCA of, and the explained "
        "variance ratios lambda / trace(-C S C) would exceed 1. Compute S from kernels (conetool "
        "distance, conetool.geometry.distance_matrix, in float64), or embed this matrix with "
        "method='mds' (--method mds: metric MDS takes any dissimilarities)."
    )


def embed_pca(s: np.ndarray, dims: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the unit-norm kernels, from their S matrix (classical MDS of ``sqrt(2 S)``).

    Args:
        s: ``(K, K)`` S matrix.
        dims: 1, 2 or 3.

    Returns:
        ``(coords (K, dims), explained_variance_ratio (dims,))``; equal to
        ``sklearn.decomposition.PCA(dims)`` on the flattened ``H_k / ||H_k||_F`` up to the sign
        of each axis.

    Raises:
        GeometryError: ``s`` is not square, finite, or large enough for ``dims``; or it is not
            the S matrix of any kernels (``-C S C`` has negative eigenvalues beyond rounding,
            module docstring), whose ratios would exceed 1.

    From :data:`LANCZOS_MIN_K` kernels on, where ARPACK's top eigenpairs and a proven bound on
    ``B``'s negative eigenvalues are found (module docstring), the ratios are within
    :data:`RATIO_TOLERANCE` of the dense path's and the coordinates as for ``"mds"``'s start;
    elsewhere the dense path gives them (and any refusal).
    """
    s = _check(s, dims)
    # -1/2 C (2 S) C = -C S C = C G C: the Gram matrix of the centred unit kernels.
    return _pca_from_b(_double_center(-s), dims)


def _pca_from_b(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`embed_pca`'s coordinates ``(K, dims)`` and ratios ``(dims,)`` from ``B`` ``(K, K)``:
    from :data:`LANCZOS_MIN_K` kernels on by :func:`_pca_by_lanczos` where it answers, else by
    the dense path (:func:`_classical_from_b` with the refusal). A ``B`` of zeros (every kernel
    the same direction: S all 0) is one point at once, zero coordinates and zero ratios (no
    positive eigenvalue to share), what the dense path gives it after its ``O(K^3)`` reduction
    (ARPACK answers nothing there: ``B``'s trace is 0)."""
    if not np.any(b):
        return np.zeros((b.shape[0], dims)), np.zeros(dims)
    if b.shape[0] >= LANCZOS_MIN_K:
        found = _pca_by_lanczos(b, dims)
        if found is not None:
            return found
    return _classical_from_b(b, dims, only_psd=True)


def _pca_by_lanczos(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``"pca"`` from ARPACK's top eigenpairs of ``B`` ``(K, K)`` and a proven bound on the sum
    of its negative eigenvalues (module docstring), or ``None`` where either is not found within
    its tolerance. ``B`` is symmetrised as the dense path does it, into one more ``(K, K)``
    array, which the factorisation then overwrites."""
    count = b.shape[0]
    sym = 0.5 * (b + b.T)
    trace = float(np.trace(sym))
    if not (np.isfinite(trace) and trace > 0.0):
        return None
    found = lanczos_top(sym, dims)
    if found is None:
        return None
    budget = min(
        (RATIO_TOLERANCE - 2.0 * count * UNIT_ROUNDOFF) * trace,
        NEGATIVE_TOLERANCE * trace + ROUNDING * count,
    )
    if negative_sum_bound(sym, trace, budget) is None:
        return None
    values, vectors = found
    top = np.clip(values, 0.0, None)
    coords = _orient(vectors * np.sqrt(top))
    return coords, top / max(trace, float(top.sum()))


def _sklearn_mds(d: np.ndarray, init: np.ndarray, dims: int, seed: int) -> tuple[np.ndarray, int]:
    """scikit-learn's MDS as :func:`embed_mds` called it before :mod:`conetool.smacof`: the
    reference the tests and ``benchmarks/bench_embed.py`` compare against (not used otherwise).
    Every parameter explicit, for 1.3 up to 1.9+.

    SMACOF starts from ``init`` (one run, so ``n_init=1``); ``random_state`` is passed for
    completeness (it is not used with an explicit start). Parameter names changed in 1.8
    (``metric`` -> ``metric_mds``, ``dissimilarity`` -> ``metric``; new ``init``), so they are
    chosen from the installed signature to avoid FutureWarnings.
    """
    from sklearn.manifold import MDS

    accepted = inspect.signature(MDS).parameters
    kwargs: dict[str, Any] = {
        "n_components": dims,
        "n_init": 1,
        "max_iter": MDS_MAX_ITER,
        "eps": MDS_EPS,
        "verbose": 0,
        "n_jobs": None,
        "random_state": seed,
        "normalized_stress": False,
    }
    if "metric_mds" in accepted:  # scikit-learn >= 1.8
        kwargs.update(metric_mds=True, metric="precomputed", init="classical_mds")
    else:
        kwargs.update(metric=True, dissimilarity="precomputed")
    model = MDS(**kwargs)
    with warnings.catch_warnings():
        # Older versions warn that an explicit start means one run; that is intended.
        warnings.filterwarnings("ignore", message=".*Explicit initial positions.*")
        coords = model.fit_transform(d, init=init)
    return np.asarray(coords, dtype=np.float64), int(model.n_iter_)


def embed_mds(s: np.ndarray, dims: int = 2, seed: int = 0) -> tuple[np.ndarray, float]:
    """Metric MDS of the chordal distances ``sqrt(2 S)``, started from :func:`embed_pca`.

    SMACOF (:func:`conetool.smacof.smacof`, at most :data:`MDS_MAX_ITER` iterations, stopping
    at a relative decrease of the stress below :data:`MDS_EPS`) gives the coordinates
    scikit-learn's ``MDS`` gives from the same start (:func:`_sklearn_mds`), up to rounding.

    Args:
        s: ``(K, K)`` S matrix.
        dims: 1, 2 or 3.
        seed: not used: the start is the classical solution, so nothing is random (kept for
            callers and ``summary.json``; it was scikit-learn's ``random_state``, unused there
            too with an explicit start).

    Returns:
        ``(coords (K, dims), stress)``: centred, oriented coordinates and their Kruskal
        Stress-1 against ``sqrt(2 S)``.
    """
    s = _check(s, dims)
    d = _chordal(s)
    # every kernel the same direction: one point, whatever the start (SMACOF would divide by 0)
    if not np.any(d > 0):
        return np.zeros((d.shape[0], dims)), 0.0
    start = _classical_coords(_double_center(-s), dims)
    coords = _orient(smacof(d, start, max_iter=MDS_MAX_ITER, eps=MDS_EPS).coords)
    return coords, stress1(coords, d)


def _chordal(s: np.ndarray) -> np.ndarray:
    """The chordal distances ``sqrt(2 S)`` ``(K, K)`` of a checked ``s``, zero diagonal."""
    d = np.sqrt(2.0 * np.clip(s, 0.0, None))
    np.fill_diagonal(d, 0.0)
    return d


def mds_problem(s: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`embed_mds` hands to SMACOF: ``(D (K, K), start (K, dims))``, the chordal
    distances ``sqrt(2 S)`` (zero diagonal) and the classical solution of ``S``."""
    s = _check(s, dims)
    return _chordal(s), _classical_coords(_double_center(-s), dims)


def _classical_coords(b: np.ndarray, dims: int) -> np.ndarray:
    """The classical coordinates ``(K, dims)`` of ``B`` ``(K, K)`` alone (no ratios, no refusal:
    the start of ``"mds"``): from :data:`LANCZOS_MIN_K` kernels on, from ARPACK's top eigenpairs
    where :func:`~conetool.lanczos_top.lanczos_top` accepts them (within its ``TOLERANCE`` of
    the dense path's, up to the sign of each axis, which :func:`_orient` then picks), else
    from :func:`_classical_from_b`'s dense path (which symmetrises ``b``; ARPACK takes the
    products ``b x`` of the ``b`` of a symmetric ``S``, symmetric up to rounding, which the
    residuals measure: symmetrising it would add about a third to the two Lanczos runs)."""
    if b.shape[0] >= LANCZOS_MIN_K:
        found = lanczos_top(b, dims)
        if found is not None:
            values, vectors = found
            return _orient(vectors * np.sqrt(np.clip(values, 0.0, None)))
    return _classical_from_b(b, dims)[0]


def embed_kernels(
    s: np.ndarray, *, method: Method = "mds", dims: int = 2, seed: int = 0
) -> Embedding:
    """Embed the kernels of an S matrix in ``dims`` dimensions (paper Fig. 1c).

    Args:
        s: ``(K, K)`` S matrix (:func:`conetool.geometry.distance_matrix`).
        method: ``"mds"`` (metric MDS, default) or ``"pca"`` (exact PCA of the unit kernels).
        dims: 2 (default) or 3 (or 1).
        seed: recorded only (:func:`embed_mds`: its ``"mds"`` has no randomness).

    Returns:
        An :class:`Embedding` with coordinates ``(K, dims)`` and the stress (both methods) and
        explained variance ratio (``"pca"``).
    """
    if method == "pca":
        coords, ratio = embed_pca(s, dims)
        d = np.sqrt(2.0 * np.clip(_check(s, dims), 0.0, None))
        return Embedding(coords, "pca", stress1(coords, d), ratio)
    if method == "mds":
        coords, stress = embed_mds(s, dims, seed)
        return Embedding(coords, "mds", stress, None)
    raise GeometryError(f"unknown embedding method {method!r} (`--method`); use 'mds' or 'pca'.")
