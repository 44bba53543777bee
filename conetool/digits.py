"""scikit-learn's 8x8 digits and their stratified split, read without importing scikit-learn.

``from sklearn.datasets import load_digits`` and ``from sklearn.model_selection import
train_test_split`` import most of scikit-learn and SciPy's ``stats`` (1.5-2 s on this project's
2-core CPU: as long as importing PyTorch), which every command that loads the digits (``train``,
``kernels``, ``distance``'s noise floor, ``spectrum``'s kernel machine, ``switch``) paid for
0.05 s of work. This module does the same work with NumPy alone:

- :func:`digits_arrays`: ``load_digits(return_X_y=True)``: the file that ships inside
  scikit-learn (``sklearn/datasets/data/digits.csv.gz``, found with
  :func:`importlib.util.find_spec`, which does not run scikit-learn's ``__init__``), read as
  ``load_digits`` reads it. Where that file is not found (a scikit-learn that moved it),
  scikit-learn's own ``load_digits`` is called.
- :func:`stratified_split`: the indices of ``train_test_split(..., test_size=f, stratify=y,
  random_state=seed)`` (its ``StratifiedShuffleSplit``: the same draws from NumPy's
  ``RandomState`` in the same order), tested equal to scikit-learn's.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

DIGITS_FILE = ("datasets", "data", "digits.csv.gz")


def digits_file() -> Path | None:
    """The digits' ``digits.csv.gz`` inside the installed scikit-learn, or None if not found."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder).joinpath(*DIGITS_FILE)
        if path.is_file():
            return path
    return None


def digits_arrays() -> tuple[NDArray[np.float64], NDArray[np.int_]]:
    """``sklearn.datasets.load_digits(return_X_y=True)``: pixels ``(1797, 64)`` float64 in
    0..16 and labels ``(1797,)`` int, in the file's order."""
    path = digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        return x, y
    with path.open("rb") as compressed, gzip.open(compressed, mode="rt", encoding="utf-8") as text:
        data = np.loadtxt(text, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def stratified_split(
    labels: NDArray[np.int_], test_fraction: float, seed: int
) -> tuple[NDArray[np.int_], NDArray[np.int_]]:
    """Train and test indices of ``train_test_split(range(N), test_size=test_fraction,
    stratify=labels, random_state=seed)``: ``ceil(test_fraction * N)`` test examples, each class
    split in proportion to its size, both index arrays in shuffled order. ``labels``: ``(N,)``."""
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.split(np.argsort(inverse.reshape(-1), kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train: list[np.int_] = []
    test: list[np.int_] = []
    for i, members in enumerate(by_class):
        shuffled = members.take(rng.permutation(counts[i]), mode="clip")
        train.extend(shuffled[: train_counts[i]])
        test.extend(shuffled[train_counts[i] : train_counts[i] + test_counts[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(
    counts: NDArray[np.int_], draws: int, rng: np.random.RandomState
) -> NDArray[np.int_]:
    """scikit-learn's ``_approximate_mode``: ``draws`` shared among classes of sizes ``counts``
    in proportion, the remainder given to the largest fractional parts (ties drawn by ``rng``)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), need)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)
