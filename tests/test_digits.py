"""conetool.digits: scikit-learn's digits and stratified split, without importing scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from conetool import digits


def test_digits_arrays_are_load_digits() -> None:
    x, y = digits.digits_arrays()
    want_x, want_y = load_digits(return_X_y=True)
    assert x.dtype == want_x.dtype and y.dtype == want_y.dtype
    assert np.array_equal(x, want_x) and np.array_equal(y, want_y)


def test_digits_arrays_fall_back_to_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits, "digits_file", lambda: None)
    x, y = digits.digits_arrays()
    want_x, want_y = load_digits(return_X_y=True)
    assert np.array_equal(x, want_x) and np.array_equal(y, want_y)


@pytest.mark.parametrize(
    ("counts", "fraction", "seed"),
    [
        ((178, 182, 177, 183, 181, 182, 181, 179, 174, 180), 0.2, 0),  # the digits' classes
        ((178, 182, 177, 183, 181, 182, 181, 179, 174, 180), 0.2, 7),
        ((5, 5, 5, 5, 5, 5, 5), 0.3, 1),  # tied remainders: drawn by the generator
        ((2, 9, 4, 13, 3), 0.45, 3),
        ((50, 3, 3, 3), 0.1, 11),
    ],
)
def test_stratified_split_is_train_test_split(
    counts: tuple[int, ...], fraction: float, seed: int
) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.RandomState(seed + 100).shuffle(labels)
    train, test = digits.stratified_split(labels, fraction, seed)
    want_train, want_test = train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    assert np.array_equal(train, want_train) and np.array_equal(test, want_test)


def test_loading_the_digits_imports_no_scikit_learn() -> None:
    code = (
        "import sys\n"
        "from conetool.data import load_data\n"
        "from conetool.spec import DataSpec\n"
        "bundle = load_data(DataSpec(dataset='digits'))\n"
        "assert len(bundle.train) == 1437 and len(bundle.test) == 360\n"
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
