"""Kernel regression with the eNTK frozen at one step: Fort et al.'s "kernel at time t".

Pure numpy in float64. The probe set is the training set of the kernel machine, a held-out
evaluation set is its test set:

- targets: the one-hot labels ``Y`` ``(n, c)`` of the probe set, centered per class
  (``Y - 1/c``), so that a zero prediction favours no class;
- ridge: ``lambda = ridge * tr(K) / N`` (``N`` rows of the probe kernel): a fixed fraction of the
  kernel's mean eigenvalue, stated, never tuned on the evaluation set;
- coefficients ``A = (K + lambda I)^-1 Y_c`` and predictions ``F = K_eval A``, ``(m, c)``;
- accuracy: the share of evaluation examples whose largest prediction is their label; loss: the
  mean squared error of ``F`` against the centered one-hot evaluation labels.

For the full kernel ``(n, c, n, c)`` (and its cross kernel ``(m, c, n, c)``) the same holds with
the flattened ``Y``: each of the ``c`` outputs has its own row and column.

Example::

    r = kernel_regression(k_probe, k_eval_probe, probe_labels, eval_labels, num_classes=10)
    r.accuracy, r.loss
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from conetool.geometry import GeometryError
from conetool.kernel_spectrum import one_hot

__all__ = ["DEFAULT_RIDGE", "KernelRegression", "kernel_regression"]

#: The default ridge, as a fraction of the probe kernel's mean eigenvalue ``tr(K) / N``.
DEFAULT_RIDGE = 1e-3


@dataclass(frozen=True)
class KernelRegression:
    """The kernel machine's result on the evaluation set.

    Attributes:
        accuracy: share of evaluation examples classified right.
        loss: mean squared error against the centered one-hot labels (per example, summed over
            classes).
        predictions: ``(m, c)`` the machine's outputs.
        ridge: the absolute ridge ``lambda`` used.
    """

    accuracy: float
    loss: float
    predictions: np.ndarray
    ridge: float


def _matrix(kernel: np.ndarray, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """``kernel`` as a float64 matrix, refused unless its shape is ``shape`` exactly (a reshape
    would take a transposed ``(n, m)`` cross kernel for ``(m, n)`` without a word)."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.shape != shape:
        raise GeometryError(
            f"{name} has shape {k.shape}, but {what} it must be {shape}. "
            + (
                "Pass the cross kernel with the evaluation examples first: "
                "empirical_ntk(model, x_eval, x_probe), or the transpose of K(x_probe, x_eval)."
                if name == "k_eval" and k.shape == shape[::-1] and k.ndim == 2
                else "Check that the kernels and labels are of the same examples and kind."
            )
        )
    half = len(shape) // 2
    return k.reshape(int(np.prod(shape[:half])), int(np.prod(shape[half:])))


def kernel_regression(
    k_train: np.ndarray,
    k_eval: np.ndarray,
    train_labels: np.ndarray,
    eval_labels: np.ndarray,
    num_classes: int,
    ridge: float = DEFAULT_RIDGE,
) -> KernelRegression:
    """Fit kernel ridge regression on the probe kernel, evaluate with the cross kernel.

    Args:
        k_train: ``(n, n)`` (trace or sum kind) or ``(n, c, n, c)`` (full kind).
        k_eval: ``(m, n)`` or ``(m, c, n, c)``: the kernel between evaluation and probe examples.
        train_labels, eval_labels: ``(n,)`` and ``(m,)`` integer classes.
        num_classes: ``c``.
        ridge: relative ridge (see the module docstring); must be positive.

    Raises:
        GeometryError (a ``ValueError`` too): a ridge that is not positive, labels that are no
            whole numbers in ``[0, num_classes)``, or kernels whose shapes are not those above
            for the labels given (a cross kernel ``(n, m)`` of the probe set against the
            evaluation set, as ``empirical_ntk(model, x_probe, x_eval)`` gives it, included).
    """
    if not ridge > 0.0:
        raise GeometryError(f"ridge must be positive, got {ridge}")
    n, m, c = len(train_labels), len(eval_labels), int(num_classes)
    full = np.ndim(k_train) == 4
    y = one_hot(train_labels, c, "train_labels") - 1.0 / c
    y_eval = one_hot(eval_labels, c, "eval_labels") - 1.0 / c
    labels = f"for {n} train_labels, {m} eval_labels and num_classes={c}"
    if full:
        k = _matrix(k_train, (n, c, n, c), "k_train", f"{labels} (the full kind)")
        ke = _matrix(k_eval, (m, c, n, c), "k_eval", f"{labels} (the full kind)")
        target = y.reshape(n * c, 1)
    else:
        k = _matrix(k_train, (n, n), "k_train", labels)
        ke = _matrix(k_eval, (m, n), "k_eval", labels)
        target = y
    k = (k + k.T) / 2.0
    lam = ridge * float(np.trace(k)) / k.shape[0]
    coef = scipy.linalg.solve(k + lam * np.eye(k.shape[0]), target, assume_a="pos")
    predictions = (ke @ coef).reshape(m, c)
    accuracy = float(np.mean(np.argmax(predictions, axis=1) == np.asarray(eval_labels)))
    loss = float(np.mean(np.sum((predictions - y_eval) ** 2, axis=1)))
    return KernelRegression(accuracy, loss, predictions, lam)
