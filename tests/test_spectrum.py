"""Alignment, spectrum and label energy against direct float64 numpy computations."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from synthetic_store import CKPTS_HEADER, make_store

from conetool import paths
from conetool.errors import StoreError
from conetool.kernel_spectrum import centered_alignment, one_hot, spectrum_point
from conetool.pipeline.run_spectrum import spectrum
from conetool.probe import Probe, probe_hash, save_probe
from conetool.store import Store


def _direct(k: np.ndarray, y: np.ndarray, top: int) -> tuple[float, float, float, np.ndarray]:
    """Textbook formulas with an explicit centering matrix and a full eigendecomposition."""
    n = k.shape[0]
    c = np.eye(n) - np.ones((n, n)) / n
    t = y @ y.T
    kc, tc = c @ k @ c, c @ t @ c
    alignment = np.sum(kc * tc) / (np.linalg.norm(kc) * np.linalg.norm(tc))
    w, v = np.linalg.eigh(k)
    w, v = w[::-1], v[:, ::-1]
    p = np.clip(w, 0, None) / np.clip(w, 0, None).sum()
    p = p[p > 0]
    erank = np.exp(-(p * np.log(p)).sum())
    yc = c @ y
    energy = np.linalg.norm(v[:, :top].T @ yc) ** 2 / np.linalg.norm(yc) ** 2
    return float(alignment), float(erank), float(energy), w[:top]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measures_match_textbook_formulas(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 30)
    a = rng.standard_normal((30, 12)) + 2.0 * one_hot(labels, 4) @ rng.standard_normal((4, 12))
    k = a @ a.T
    point = spectrum_point(k, labels, 4, top_k=5)
    alignment, erank, energy, top = _direct(k, one_hot(labels, 4), 5)
    assert point.alignment == pytest.approx(alignment, rel=1e-10)
    assert point.effective_rank == pytest.approx(erank, rel=1e-10)
    assert point.label_energy == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(point.eigenvalues, top, rtol=1e-10)
    assert point.trace == pytest.approx(np.trace(k), rel=1e-12)


@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e160, 1e300])
def test_the_measures_of_a_float64_kernel_do_not_depend_on_its_scale(scale: float) -> None:
    """A float64 kernel (--dtype float64) far from 1: the alignment's norms squared its entries,
    which overflowed beyond 1e154 (alignment 0, silently) and lost digits below 1e-154 (3.7e-5
    off at 1e-160, 0 at 1e-300)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 12)
    a = rng.standard_normal((12, 12))
    k = a @ a.T / np.abs(a @ a.T).max()
    base = spectrum_point(k, labels, 3, top_k=5)
    point = spectrum_point(k * scale, labels, 3, top_k=5)
    assert base.alignment != 0.0
    assert point.alignment == pytest.approx(base.alignment, rel=1e-12)
    assert point.effective_rank == pytest.approx(base.effective_rank, rel=1e-12)
    assert point.label_energy == pytest.approx(base.label_energy, rel=1e-12)
    np.testing.assert_allclose(point.eigenvalues / scale, base.eigenvalues, rtol=1e-12)
    assert centered_alignment(k * scale, one_hot(labels, 3)) == pytest.approx(
        base.alignment, rel=1e-12
    )


def test_closed_forms() -> None:
    labels = np.repeat(np.arange(3), 5)
    y = one_hot(labels, 3)
    # the label kernel itself: alignment 1, all label energy in its top eigenvectors
    ideal = spectrum_point(y @ y.T, labels, 3, top_k=3)
    assert ideal.alignment == pytest.approx(1.0, abs=1e-12)
    assert ideal.label_energy == pytest.approx(1.0, abs=1e-12)
    assert ideal.effective_rank == pytest.approx(3.0, abs=1e-9)
    # the identity: effective rank n, alignment of I with the labels is known in closed form
    eye = spectrum_point(np.eye(15), labels, 3, top_k=2)
    assert eye.effective_rank == pytest.approx(15.0, rel=1e-12)
    c = np.eye(15) - 1 / 15
    tc = c @ y @ y.T @ c
    assert eye.alignment == pytest.approx(np.trace(tc) / (np.linalg.norm(c) * np.linalg.norm(tc)))
    # scale invariance
    k = np.random.default_rng(3).standard_normal((15, 15))
    k = k @ k.T
    assert centered_alignment(7.5 * k, y) == pytest.approx(centered_alignment(k, y), rel=1e-12)


def test_full_kind_is_read_as_an_nc_by_nc_matrix() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 6)
    j = rng.standard_normal((6 * 3, 20))
    full = (j @ j.T).reshape(6, 3, 6, 3)
    point = spectrum_point(full, labels, 3, top_k=4)
    flat_y = one_hot(labels, 3).reshape(-1, 1)
    alignment, _, energy, top = _direct(j @ j.T, flat_y, 4)
    assert point.alignment == pytest.approx(alignment, rel=1e-10)
    assert point.label_energy == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(point.eigenvalues, top, rtol=1e-10)


def _store(root, kernels: list[np.ndarray], labels: np.ndarray):
    steps = range(0, 100 * len(kernels), 100)
    make_store(root, steps, kernels, header={**CKPTS_HEADER, "spec": {"model": {"num_classes": 3}}})
    inputs = torch.zeros(labels.size, 2)
    lab = torch.as_tensor(labels)
    idx = torch.arange(labels.size)
    save_probe(Probe(inputs, lab, idx, "train", probe_hash(inputs, lab, idx)), paths.probe(root))
    return root


def test_spectrum_command_writes_one_row_per_step(tmp_path) -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 4)
    kernels = []
    for _ in range(4):
        a = rng.standard_normal((12, 6))
        kernels.append(a @ a.T)
    root = _store(tmp_path / "store", kernels, labels)
    result = spectrum(root, top_k=3)
    with open(paths.spectrum_csv(root), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 100, 200, 300] == result.steps
    assert list(rows[0])[-3:] == ["eig_1", "eig_2", "eig_3"]
    for row, k in zip(rows, kernels, strict=True):
        alignment, erank, energy, top = _direct(k, one_hot(labels, 3), 3)
        assert float(row["alignment"]) == pytest.approx(alignment, rel=1e-9)
        assert float(row["effective_rank"]) == pytest.approx(erank, rel=1e-9)
        assert float(row["label_energy"]) == pytest.approx(energy, rel=1e-9)
        assert float(row["eig_1"]) == pytest.approx(top[0], rel=1e-9)
    summary = json.loads(paths.spectrum_summary(root).read_text())
    assert summary["top_k"] == 3 and summary["classes"] == 3
    assert paths.spectrum_png(root).read_bytes()[:4] == b"\x89PNG"


def test_a_spectrum_failing_midway_leaves_no_summary_of_the_run_before(
    tmp_path, monkeypatch
) -> None:
    # a full disk at the figure: the new CSV (top 2) is written, the old summary (top 3) would
    # describe it wrongly beside it; the summary is gone until a run writes all three again
    import errno

    from conetool.pipeline import run_spectrum

    rng = np.random.default_rng(6)
    a = rng.standard_normal((12, 6))
    root = _store(tmp_path / "store", [a @ a.T] * 2, np.repeat(np.arange(3), 4))
    spectrum(root, top_k=3)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(run_spectrum, "write_figure", full)
        with pytest.raises(OSError, match="No space"):
            spectrum(root, top_k=2)
    with open(paths.spectrum_csv(root), newline="") as handle:
        assert list(next(csv.reader(handle)))[-2:] == ["eig_1", "eig_2"]  # the new run's
    assert not paths.spectrum_summary(root).exists()
    spectrum(root, top_k=2)
    assert json.loads(paths.spectrum_summary(root).read_text())["top_k"] == 2


def test_spectrum_of_a_store_with_one_kernel(tmp_path) -> None:
    # The measures are of each kernel alone: one kernel is enough (a distance needs two).
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(3), 4)
    a = rng.standard_normal((12, 6))
    root = _store(tmp_path / "store", [a @ a.T], labels)
    result = spectrum(root, top_k=2)
    alignment, *_ = _direct(a @ a.T, one_hot(labels, 3), 2)
    assert result.steps == [0]
    assert result.points[0].alignment == pytest.approx(alignment, rel=1e-9)
    assert paths.spectrum_png(root).read_bytes()[:4] == b"\x89PNG"


def test_spectrum_of_a_store_without_kernels_says_what_to_run(tmp_path) -> None:
    root = _store(tmp_path / "store", [], np.repeat(np.arange(3), 4))
    with pytest.raises(StoreError, match=r"the spectrum needs at least one kernel.*has no kernels"):
        spectrum(root)


@pytest.mark.parametrize(
    ("odd", "said"),
    [
        (np.eye(5), r"has shape \(5, 5\), not the \(12, 12\) of the store's 12 probe examples"),
        (np.zeros((12, 12)), r"holds a kernel that is all zeros"),
        (np.eye(12, dtype=np.float32), r"holds a float32 tensor, not the float64 of the store"),
    ],
    ids=["another shape", "all zeros", "another dtype"],
)
def test_spectrum_names_a_kernel_file_it_cannot_measure_and_skip_bad_leaves_it_out(
    tmp_path, odd, said
) -> None:
    # a kernel file of another shape ended spectrum with a ValueError traceback (the labels do
    # not match its rows), and an all-zero one with scipy's LinAlgError (a singular ridge)
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 4)
    a = rng.standard_normal((12, 6))
    root = _store(tmp_path / "store", [a @ a.T, odd, a @ a.T + np.eye(12)], labels)
    with pytest.raises(StoreError, match=said) as refused:
        spectrum(root, top_k=2)
    assert f"kernel file {paths.kernel(root, 100)}" in str(refused.value)
    # a kernel of zeros is what the model gives: recomputing it would give it again
    recompute = f"Delete that file and rerun conetool kernels /ckpts --store {root}"
    assert (recompute in str(refused.value)) == (odd.any() or odd.shape != (12, 12))
    assert ("recomputing it gives zeros again" in str(refused.value)) == (not odd.any())
    assert "--skip-bad" in str(refused.value)
    result = spectrum(root, top_k=2, skip_bad=True)
    assert result.steps == [0, 200] and list(result.excluded) == [100]


# --------------------------------------------------------------------------- kernel regression


def test_kernel_regression_equals_ridge_regression_in_closed_form() -> None:
    """A linear kernel K = X X^T: kernel ridge regression is ridge regression on X, whose
    weights are W = (X^T X + lambda I)^-1 X^T Y_c (the primal closed form)."""
    from conetool.kernel_regression import kernel_regression

    rng = np.random.default_rng(6)
    centers = rng.standard_normal((3, 5)) * 3
    train_labels = np.repeat(np.arange(3), 8)
    eval_labels = np.tile(np.arange(3), 5)
    x = centers[train_labels] + rng.standard_normal((24, 5))
    xe = centers[eval_labels] + rng.standard_normal((15, 5))
    k, ke = x @ x.T, xe @ x.T
    result = kernel_regression(k, ke, train_labels, eval_labels, 3, ridge=0.05)
    lam = 0.05 * np.trace(k) / 24
    yc = one_hot(train_labels, 3) - 1 / 3
    w = np.linalg.solve(x.T @ x + lam * np.eye(5), x.T @ yc)
    np.testing.assert_allclose(result.predictions, xe @ w, rtol=1e-8, atol=1e-10)
    expected = np.mean(np.argmax(xe @ w, axis=1) == eval_labels)
    assert result.accuracy == pytest.approx(expected) and result.accuracy > 0.9
    assert result.ridge == pytest.approx(lam)
    # loss: per example, the squared error summed over classes against Y_eval - 1/c, averaged
    residual = xe @ w - (one_hot(eval_labels, 3) - 1 / 3)
    loss = sum(float(r @ r) for r in residual) / 15
    assert result.loss == pytest.approx(loss, rel=1e-9)


def test_kernel_regression_full_kind_with_a_block_diagonal_kernel_matches_trace() -> None:
    """A full kernel K ⊗ I (outputs independent, same kernel) predicts what the trace kind
    predicts with K."""
    from conetool.kernel_regression import kernel_regression

    rng = np.random.default_rng(7)
    a = rng.standard_normal((12, 6))
    b = rng.standard_normal((4, 6))
    k, ke = a @ a.T, b @ a.T
    labels, eval_labels = rng.integers(0, 3, 12), rng.integers(0, 3, 4)
    full = np.einsum("ij,ab->iajb", k, np.eye(3))
    full_eval = np.einsum("ij,ab->iajb", ke, np.eye(3))
    plain = kernel_regression(k, ke, labels, eval_labels, 3)
    blocked = kernel_regression(full, full_eval, labels, eval_labels, 3)
    np.testing.assert_allclose(blocked.predictions, plain.predictions, rtol=1e-9, atol=1e-12)


def test_negative_eigenvalues_are_sorted_below_and_left_out_of_the_effective_rank() -> None:
    # reference: eigenvalues known by construction, entropy of p = (3, 1) / 4 by hand
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    labels = np.array([0, 1, 1])
    for k in (np.diag([3.0, 1.0, -2.0]), q @ np.diag([1.0, -2.0, 3.0]) @ q.T):
        point = spectrum_point(k, labels, 2, top_k=3)
        np.testing.assert_allclose(point.eigenvalues, [3.0, 1.0, -2.0], rtol=0, atol=1e-12)
        erank = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
        assert point.effective_rank == pytest.approx(erank, rel=1e-12)
        assert point.trace == pytest.approx(2.0, rel=1e-12)
    # top 2 of diag(3, 1, -2): e1 and e2; C Y rows (2, -1, -1) / 3 and their negatives
    point = spectrum_point(np.diag([3.0, 1.0, -2.0]), labels, 2, top_k=2)
    np.testing.assert_allclose(point.eigenvalues, [3.0, 1.0], rtol=0, atol=1e-15)
    assert point.label_energy == pytest.approx((8 / 9 + 2 / 9) / (12 / 9), rel=1e-12)


def _center_both(k: np.ndarray) -> np.ndarray:
    n = k.shape[0]
    c = np.eye(n) - np.ones((n, n)) / n
    return c @ k @ c


def test_a_constant_kernel_has_zero_alignment() -> None:
    # reference: C 11^T C = 0, and the alignment is defined as 0 when a centered matrix is zero
    labels = np.array([0, 1, 2, 0, 1])
    y = one_hot(labels, 3)
    ones = np.ones((5, 5))
    assert np.linalg.norm(_center_both(ones)) < 1e-15
    assert centered_alignment(ones, y) == 0.0
    assert centered_alignment(4.5 * ones, y) == 0.0
    assert spectrum_point(ones, labels, 3, top_k=2).alignment == 0.0


def test_full_kind_alignment_takes_one_hot_rows_flattened_example_major() -> None:
    # reference: _direct on the (n c, n c) matrix with y = vec(Y) row by row (example-major)
    rng = np.random.default_rng(10)
    labels = np.array([0, 2, 1, 1, 0, 2, 2])
    y = one_hot(labels, 3)
    j = rng.standard_normal((7 * 3, 9)) + 3.0 * np.kron(y, np.eye(3))[:, :9]
    full = (j @ j.T).reshape(7, 3, 7, 3)
    flat = np.array([[y[i, a]] for i in range(7) for a in range(3)])
    alignment, *_ = _direct(j @ j.T, flat, 1)
    assert centered_alignment(full, y) == pytest.approx(alignment, rel=1e-10)
    assert centered_alignment(full, flat) == pytest.approx(alignment, rel=1e-10)
    # the class-major flattening is a different target: the check can fail
    class_major = y.T.reshape(-1, 1)
    assert abs(_direct(j @ j.T, class_major, 1)[0] - alignment) > 1e-3


@pytest.mark.parametrize("ridge", [0.0, -1.0, float("nan")])
def test_kernel_regression_refuses_a_ridge_that_is_not_positive(ridge: float) -> None:
    # reference: the documented contract, ridge must be positive (K here is invertible)
    from conetool.kernel_regression import kernel_regression

    rng = np.random.default_rng(12)
    a = rng.standard_normal((6, 10))
    k, ke = a @ a.T, rng.standard_normal((2, 10)) @ a.T
    with pytest.raises(ValueError, match="ridge must be positive"):
        kernel_regression(k, ke, np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1]), 3, ridge=ridge)


@pytest.mark.parametrize(("recorded", "shaded"), [("same", 100), ("other", None), ("absent", 100)])
def test_phase_one_is_shaded_only_from_a_distance_run_on_the_same_kernels(
    tmp_path, recorded, shaded
) -> None:
    """The spectrum figure shades Phase I from distance's verdict when distance ran on the
    kernels the store holds now (not on a store still being written); a summary written before
    distance recorded its kernels_key is taken."""
    from conetool.pipeline.matrix_cache import kernels_key

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 4)
    a = rng.standard_normal((12, 6))
    root = _store(tmp_path / "store", [a @ a.T] * 3, labels)
    summary: dict = {"verdict": {"phase1_end": 100}}
    if recorded != "absent":
        key = kernels_key(Store.open(root)) if recorded == "same" else "made from fewer kernels"
        summary["kernels_key"] = key
    paths.distance_summary(root).parent.mkdir(parents=True, exist_ok=True)
    paths.distance_summary(root).write_text(json.dumps(summary))
    spectrum(root, top_k=2)
    assert json.loads(paths.spectrum_summary(root).read_text())["phase1_end"] == shaded


def test_a_kernels_run_still_writing_is_said_from_python_and_with_quiet(tmp_path) -> None:
    """spectrum said so only on the progress display: a Python caller without one and
    `spectrum --quiet` never heard that its numbers were of the kernels stored so far."""
    import os

    from typer.testing import CliRunner

    from conetool.cli import app
    from conetool.store_lock import StoreLock

    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(3), 4)
    kernels = [a @ a.T for a in (rng.standard_normal((12, 6)) for _ in range(3))]
    root = _store(tmp_path / "store", kernels, labels)
    lock = StoreLock.acquire(root)
    try:
        result = spectrum(root, top_k=3)
        cli = CliRunner().invoke(app, ["spectrum", "--store", str(root), "--top-k", "3", "-q"])
    finally:
        lock.release()
    said = f"conetool kernels is still writing this store (pid {os.getpid()}"
    assert any(warning.startswith(said) for warning in result.warnings)
    assert cli.exit_code == 0, cli.output
    assert said in " ".join(cli.output.split())
    assert not any("still writing" in w for w in spectrum(root, top_k=3).warnings)


def test_label_energy_of_a_singular_kernel_is_its_range_s_share_not_that_of_null_vectors() -> None:
    """A kernel of rank 2 with --top-k 4: the top 4 eigenvectors were the 2 of the kernel's range
    and 2 of its null space, whichever ones the eigensolver returned, so the label energy
    changed with the kernel's scale, the order of the examples and its dtype (0.17 to 0.46 for
    one kernel). Eigenvalues zero to the kernel's precision are left out: the label energy is
    the labels' share in the span of the kernel's top eigenvectors of nonzero eigenvalue."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    a = rng.standard_normal((8, 2))
    k = a @ a.T  # rank 2
    q, _ = np.linalg.qr(a)  # its range
    yc = one_hot(labels, 3) - one_hot(labels, 3).mean(axis=0)
    want = np.linalg.norm(q.T @ yc) ** 2 / np.linalg.norm(yc) ** 2
    for scale in (1.0, 1e-3, 7.0):
        for dtype in (np.float64, np.float32):
            point = spectrum_point((scale * k).astype(dtype), labels, 3, top_k=4)
            assert point.label_energy == pytest.approx(want, rel=1e-5)
    for _ in range(3):
        order = rng.permutation(8)
        point = spectrum_point(k[np.ix_(order, order)], labels[order], 3, top_k=4)
        assert point.label_energy == pytest.approx(want, rel=1e-9)
    # every eigenvalue kept (top_k beyond n): the same share, not 1
    assert spectrum_point(k, labels, 3, top_k=20).label_energy == pytest.approx(want, rel=1e-9)
    # below the rank, the top eigenvectors as before
    _, v = np.linalg.eigh(k)
    top1 = np.linalg.norm(v[:, -1:].T @ yc) ** 2 / np.linalg.norm(yc) ** 2
    assert spectrum_point(k, labels, 3, top_k=1).label_energy == pytest.approx(top1, rel=1e-9)


def test_label_energy_keeps_the_well_measured_small_eigenvalues_of_a_float32_kernel() -> None:
    """The zero level is sqrt(N) eps max|lambda|, the size of rounding errors: a float32 kernel
    of 200 rows whose top 20 reach 1.5e-5 of the largest eigenvalue (measured to 1e-3 of
    themselves) keeps them all; numpy.linalg.matrix_rank's N eps max|lambda| (2.4e-5 here) left
    out the top 20's smallest and lowered the label energy to the top 10's."""
    rng = np.random.default_rng(1)
    n, c = 200, 10
    labels = rng.integers(0, c, n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate(
        [np.logspace(0, -1, c), np.logspace(-4.5, -4.9, 10), np.full(n - 20, 1e-6)]
    )
    k = (q * lam) @ q.T
    yc = one_hot(labels, c) - one_hot(labels, c).mean(axis=0)
    want = np.linalg.norm(q[:, :20].T @ yc) ** 2 / np.linalg.norm(yc) ** 2
    point = spectrum_point(k.astype(np.float32), labels, c, top_k=20)
    np.testing.assert_allclose(point.eigenvalues[-1], lam[19], rtol=1e-3)
    assert point.label_energy == pytest.approx(want, rel=1e-3)
    top10 = np.linalg.norm(q[:, :10].T @ yc) ** 2 / np.linalg.norm(yc) ** 2
    assert point.label_energy > top10 * 1.5
