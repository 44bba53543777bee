"""How a kernel lines up with the labels: centered alignment, spectrum, label energy.

Pure numpy in float64: one kernel and the probe set's labels go in, numbers come out.

Definitions (``n`` probe examples, ``c`` classes, ``Y`` the ``(n, c)`` one-hot labels,
``C = I - 11^T / N`` the centering matrix of the ``N`` kernel rows):

- the kernel as a matrix ``K``: ``(n, n)`` for the trace and sum kinds; the full kind
  ``(n, c, n, c)`` is reshaped to ``(n c, n c)`` and its target is the flattened ``Y``
  (``n c`` values, example-major, as the kernel);
- **centered kernel-target alignment** (Cortes, Mohri and Rostamizadeh 2012):
  ``A = <C K C, C T C>_F / (||C K C||_F ||C T C||_F)`` with ``T = Y Y^T`` (``y y^T`` for the full
  kind), in ``[-1, 1]``; 1 when the centered kernel is a positive multiple of the centered label
  kernel;
- **spectrum**: the eigenvalues of ``K`` in descending order; the **effective rank** is
  ``exp(-sum p_i log p_i)`` with ``p = lambda / sum(lambda)`` over the non-negative eigenvalues
  (Roy and Vetterli 2007): ``N`` for a multiple of the identity, 1 for rank one;
- **label energy in the top k**: the share of the centered labels' energy in the span of the top
  ``k`` eigenvectors, ``||U_k^T C Y||_F^2 / ||C Y||_F^2``, in ``[0, 1]`` (Kopitkov and Indelman
  2020 follow how fast it grows during training). Eigenvectors whose eigenvalue is zero to the
  kernel's precision (:func:`zero_level`: ``|lambda|`` at most ``sqrt(N) eps max|lambda|``,
  ``eps`` of the kernel's dtype) are left out of ``U_k``: they are any basis of the null space the
  eigensolver returns, so a singular kernel's label energy would depend on the scale, the order
  of the examples and the dtype; it is the labels' share in the kernel's range when ``k``
  reaches its rank.

Example::

    point = spectrum_point(kernel, labels, num_classes=10, top_k=10)
    point.alignment, point.effective_rank, point.label_energy, point.eigenvalues[:3]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SpectrumPoint", "as_matrix", "centered_alignment", "one_hot", "spectrum_point"]


@dataclass(frozen=True)
class SpectrumPoint:
    """The measurements of one kernel.

    Attributes:
        alignment: centered kernel-target alignment.
        effective_rank: ``exp`` of the entropy of the normalised eigenvalues.
        label_energy: share of the centered labels' energy in the top ``top_k`` eigenvectors
            (those of eigenvalue zero to the kernel's precision left out).
        eigenvalues: ``(top_k,)`` the largest eigenvalues, descending.
        trace: the sum of all eigenvalues (the kernel's trace).
    """

    alignment: float
    effective_rank: float
    label_energy: float
    eigenvalues: np.ndarray
    trace: float


def one_hot(labels: np.ndarray, num_classes: int, name: str = "labels") -> np.ndarray:
    """``(n, num_classes)`` float64 one-hot rows of the integer ``labels`` ``(n,)`` (``name``:
    the argument they came as, for the error).

    Raises:
        GeometryError: a label that is no whole number in ``[0, num_classes)`` (``-1`` would
            index the last class, ``0.5`` be cut to ``0``).
    """
    given = np.asarray(labels)
    wrong = given.dtype.kind not in "biuf" or (
        given.size > 0
        and not bool(np.all((given == np.round(given)) & (given >= 0) & (given < int(num_classes))))
    )
    if wrong:
        from .geometry import GeometryError  # imports torch: only on this error

        shown = given.reshape(-1)[:8].tolist() if given.dtype.kind in "biuf" else given
        raise GeometryError(
            f"{name} must be whole numbers in [0, {int(num_classes)}) (num_classes="
            f"{int(num_classes)}), got {shown}{' ...' if given.size > 8 else ''}. Pass the "
            "integer classes of the examples, as conetool's probe set holds them."
        )
    labels = given.astype(np.int64)
    out = np.zeros((labels.size, num_classes))
    out[np.arange(labels.size), labels] = 1.0
    return out


def as_matrix(kernel: np.ndarray) -> np.ndarray:
    """The kernel as a square float64 matrix: ``(n, n)`` as it is, ``(n, c, n, c)`` reshaped to
    ``(n c, n c)``, symmetrised (it is symmetric up to rounding).

    Raises:
        GeometryError: any other shape (a cross kernel ``(n, m)``, ``(n, c, m, c)``), or no
            array of real numbers; the message names ``kernel`` and what to pass.
    """
    try:
        k = np.asarray(kernel, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        from .geometry import GeometryError  # imports torch: only on this error

        raise GeometryError(
            f"kernel={type(kernel).__name__} is not an array of real numbers ({exc}). Pass the "
            "(n, n) or (n, c, n, c) kernel as a numpy array or a CPU tensor (Store.load_kernel)."
        ) from exc
    shape = k.shape
    square = (k.ndim == 2 and shape[0] == shape[1]) or (k.ndim == 4 and shape[:2] == shape[2:])
    if not square:
        from .geometry import GeometryError  # imports torch: only on this error

        raise GeometryError(
            f"kernel has shape {shape}, but a kernel here is the square (n, n) of the trace or "
            "sum kind or (n, c, n, c) of the full kind: the kernel of the probe set with itself. "
            "A cross kernel (n, m) of two example sets has no spectrum; pass the probe kernel "
            "(Store.load_kernel(step))."
        )
    if k.ndim == 4:
        n, c = shape[0], shape[1]
        k = k.reshape(n * c, n * c)
    return (k + k.T) / 2.0


def _target(y: np.ndarray, size: int) -> np.ndarray:
    """``(size, m)`` label columns matching the kernel's rows: ``Y`` or the flattened ``Y``."""
    if y.shape[0] == size:
        return y
    if y.size == size:
        return y.reshape(size, 1)
    from .geometry import GeometryError  # imports torch: only on this error

    raise GeometryError(
        f"labels of shape {y.shape} do not match a kernel with {size} rows: pass one label per "
        "probe example, in the kernel's order (the probe set's labels)."
    )


def _center(m: np.ndarray) -> np.ndarray:
    """``C M`` for a matrix with ``N`` rows (subtract the column means)."""
    return m - m.mean(axis=0, keepdims=True)


def centered_alignment(kernel: np.ndarray, y: np.ndarray) -> float:
    """Centered alignment of ``kernel`` with ``T = y y^T``; ``y`` is ``(n, c)`` one-hot rows (or
    already flattened for the full kind). 0 when either centered matrix is zero."""
    k = as_matrix(kernel)
    t = _target(np.asarray(y, dtype=np.float64), k.shape[0])
    kc = _center(_center(k).T)  # C K C (K symmetric)
    peak = float(np.max(np.abs(kc))) if kc.size else 0.0
    if 0.0 < peak < math.inf:
        # Rescaled by a power of two, exactly (A does not depend on the scale): the squares behind the
        # norm and the inner product of a float64 kernel beyond 1e154 overflowed (A was 0) and
        # below 1e-154 fell among the subnormals.
        kc = np.ldexp(kc, -math.frexp(peak)[1])
    tc = _center(t)  # C Y; C T C = (C Y)(C Y)^T
    inner = float(np.sum(tc * (kc @ tc)))  # <C K C, C Y Y^T C> = tr(Y^T C K C Y)
    norm_t = float(np.linalg.norm(tc.T @ tc))  # ||C Y Y^T C||_F = ||Y^T C Y||_F
    norm_k = float(np.linalg.norm(kc))
    if norm_t == 0.0 or norm_k == 0.0:
        return 0.0
    return inner / (norm_k * norm_t)


def zero_level(values: np.ndarray, eps: float) -> float:
    """The size at or below which an eigenvalue of a kernel is zero to its precision:
    ``sqrt(N) eps max|lambda|``, the spectral norm of independent rounding errors of relative
    size ``eps`` in the ``N x N`` entries of a kernel whose entries are at most ``max|lambda|``.
    (``numpy.linalg.matrix_rank``'s ``N eps max|lambda|`` bounds errors that all line up; on a
    float32 kernel of ``N`` = 10,000 rows that is 1.2e-3 of the largest eigenvalue, where the
    top k of a real eNTK still has eigenvalues it measures well.)

    Args:
        values: ``(N,)`` every eigenvalue of the kernel.
        eps: the machine epsilon of the dtype the kernel was stored in."""
    if values.size == 0:
        return 0.0
    return math.sqrt(values.size) * eps * float(np.max(np.abs(values)))


def _int_argument(value: object, name: str) -> int:
    """``value`` as an int (an int or numpy integer: :func:`conetool.choices.int_argument`);
    else a :class:`~conetool.geometry.GeometryError` naming ``name`` and the int to pass, as
    :func:`conetool.geometry.distance_matrix` refuses its ``count``."""
    from .choices import int_argument
    from .errors import ConetoolError

    try:
        checked = int_argument(value, name)
    except ConetoolError as exc:
        from .geometry import GeometryError  # imports torch: only on this error

        raise GeometryError(str(exc)) from exc
    assert checked is not None
    return checked


def spectrum_point(
    kernel: np.ndarray, labels: np.ndarray, num_classes: int, top_k: int = 10
) -> SpectrumPoint:
    """Alignment, effective rank, label energy and top eigenvalues of one kernel.

    Args:
        kernel: ``(n, n)`` or ``(n, c, n, c)``.
        labels: ``(n,)`` integer classes of the probe examples.
        num_classes: ``c``.
        top_k: how many eigenvalues (and eigenvectors, for the label energy) to keep, at least 1
            (all of them when the kernel has fewer).

    Raises:
        GeometryError: a kernel that is not square (``(n, m)``), labels that are not one per
            example or not whole numbers in ``[0, num_classes)``, a ``num_classes`` or
            ``top_k`` that is no int (``top_k="3"``, ``2.5``, ``True``), a ``top_k`` below 1.
    """
    num_classes = _int_argument(num_classes, "num_classes")
    top_k = _int_argument(top_k, "top_k")
    if top_k < 1:
        from .geometry import GeometryError  # imports torch: only on this error

        raise GeometryError(
            f"top_k={top_k}: pass a positive number of eigenvalues to keep, e.g. top_k=10."
        )
    k = as_matrix(kernel)
    given = np.asarray(kernel).dtype
    eps = (
        float(np.finfo(given).eps)
        if np.issubdtype(given, np.floating)
        else float(np.finfo(float).eps)
    )
    y = one_hot(labels, num_classes)
    if k.shape[0] != y.shape[0]:
        y = y.reshape(-1, 1)
    t = _target(y, k.shape[0])
    values, vectors = np.linalg.eigh(k)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    top = min(top_k, values.size)
    positive = np.clip(values, 0.0, None)
    total = float(positive.sum())
    if total > 0.0:
        p = positive[positive > 0.0] / total
        effective_rank = float(np.exp(-np.sum(p * np.log(p))))
    else:
        effective_rank = 0.0
    tc = _center(t)
    energy = float(np.sum(tc * tc))
    # eigenvectors of eigenvalue zero to the kernel's precision: an arbitrary null-space basis
    zero = zero_level(values, eps)
    spanned = vectors[:, :top][:, np.abs(values[:top]) > zero]
    captured = float(np.sum((spanned.T @ tc) ** 2))
    return SpectrumPoint(
        alignment=centered_alignment(k, t),
        effective_rank=effective_rank,
        label_energy=captured / energy if energy > 0.0 else 0.0,
        eigenvalues=values[:top].copy(),
        trace=float(np.trace(k)),
    )
