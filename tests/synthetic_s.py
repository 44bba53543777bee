"""The S matrix of synthetic kernels along a drifting curve, which the embedding and SMACOF tests
share."""

from __future__ import annotations

import numpy as np

from conetool.geometry import distance_matrix


def drifting_kernels_s(count: int, seed: int = 0, side: int = 6) -> np.ndarray:
    """The S matrix ``(count, count)`` of ``count`` kernels ``(side, side)`` along a drifting
    curve (steps shrinking as training slows down), as conetool.geometry computes it."""
    rng = np.random.default_rng(seed)
    position = rng.standard_normal(side * side)
    direction = rng.standard_normal(side * side)
    kernels = []
    for k in range(count):
        direction += 0.5 * rng.standard_normal(side * side) / side
        direction /= np.linalg.norm(direction)
        position = position + 0.1 / (1 + 10 * k / count) * direction
        kernels.append(position.reshape(side, side).copy())
    return distance_matrix(lambda i: kernels[i], count)
