"""Kernel distance, the blocked S matrix and the curves read off it, against float64 references."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conetool.errors import ConetoolError
from conetool.geometry import (
    AdjacentPair,
    GeometryError,
    KernelError,
    adjacent,
    block_size_for,
    check_steps,
    default_velocity_dt,
    distance_matrix,
    distance_to_reference,
    kernel_distance,
    spacings,
    step_index,
    velocity_dt,
    velocity_lag,
)

FAST = settings(max_examples=60, deadline=None)


def reference_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The definition, written out directly in float64 numpy."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return 1.0 - float(np.sum(a * b)) / (float(np.linalg.norm(a)) * float(np.linalg.norm(b)))


def reference_matrix(kernels: list[np.ndarray]) -> np.ndarray:
    return np.array([[reference_distance(a, b) for b in kernels] for a in kernels])


_entries = st.floats(-10, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def kernel_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two kernels of one shape: arbitrary matrices, or PSD ones A A^T like real eNTKs."""
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 6))
    psd = draw(st.booleans())
    shape = (n, m)
    mats = [draw(arrays(np.float64, shape, elements=_entries)) for _ in range(2)]
    if psd:
        mats = [a @ a.T for a in mats]
    for a in mats:
        # the definition needs a nonzero norm; keep clear of underflow in the reference
        if np.linalg.norm(a) < 1e-3:
            a += 1.0
    return mats[0], mats[1]


@FAST
@given(kernel_pairs())
def test_distance_matches_the_direct_float64_formula(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    assert kernel_distance(a, b) == pytest.approx(reference_distance(a, b), abs=1e-12)


@FAST
@given(kernel_pairs())
def test_distance_is_zero_on_identical_kernels_and_symmetric(
    pair: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = pair
    assert kernel_distance(a, a) == 0.0
    assert kernel_distance(a, a.copy()) == 0.0
    assert kernel_distance(a, b) == kernel_distance(b, a)


@FAST
@given(
    kernel_pairs(),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 1e3),
)
def test_distance_is_scale_invariant_and_in_range(
    pair: tuple[np.ndarray, np.ndarray], alpha: float, beta: float
) -> None:
    a, b = pair
    s = kernel_distance(a, b)
    assert 0.0 <= s <= 2.0
    assert kernel_distance(alpha * a, beta * b) == pytest.approx(s, abs=1e-12)
    # a negative scale flips the sign of the inner product: S -> 2 - S
    assert kernel_distance(-a, b) == pytest.approx(2.0 - s, abs=1e-12)


@FAST
@given(arrays(np.float64, (4, 3), elements=_entries), arrays(np.float64, (4, 3), elements=_entries))
def test_distance_between_psd_kernels_is_at_most_one(a: np.ndarray, b: np.ndarray) -> None:
    h1, h2 = a @ a.T + 1e-3 * np.eye(4), b @ b.T + 1e-3 * np.eye(4)
    assert 0.0 <= kernel_distance(h1, h2) <= 1.0 + 1e-15  # <H1, H2>_F >= 0 for PSD kernels


def test_distance_accepts_tensors_of_any_dtype_and_known_values() -> None:
    a = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    # <a, b> = 2, |a| = 2, |b| = 2: S = 1 - 2 / 4
    assert kernel_distance(a, b) == pytest.approx(0.5, abs=1e-15)
    assert kernel_distance(a.half(), b.numpy()) == pytest.approx(0.5, abs=1e-15)
    assert kernel_distance(np.eye(3), -np.eye(3)) == pytest.approx(2.0)
    assert kernel_distance(np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(1.0)


def test_distance_is_accurate_for_tiny_and_huge_kernels() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 20))
    b = a + 1e-7 * rng.standard_normal((20, 20))
    # for small S the definition is |u1 - u2|^2 / 2 to full relative precision
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    expected = 0.5 * float(np.sum((ua - ub) ** 2))
    assert kernel_distance(a, b) == pytest.approx(expected, rel=1e-9, abs=0)
    assert kernel_distance(1e200 * a, 1e-200 * b) == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize(
    ("h1", "h2", "match"),
    [
        (np.zeros((3, 3)), np.eye(3), "all zeros"),
        (np.eye(3), np.full((3, 3), np.nan), "non-finite"),
        (np.eye(3), np.eye(4), "different shapes"),
        (np.ones(9), np.ones((3, 3)), "different shapes"),
    ],
)
def test_distance_rejects_kernels_it_cannot_compare(
    h1: np.ndarray, h2: np.ndarray, match: str
) -> None:
    with pytest.raises(KernelError, match=match) as info:
        kernel_distance(h1, h2)
    assert isinstance(info.value, ConetoolError)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- the S matrix


def _trajectory(count: int, shape: tuple[int, ...] = (6, 6), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(shape)
    out = []
    for _ in range(count):
        h = h + 0.3 * rng.standard_normal(shape)
        out.append(h @ h.T if len(shape) == 2 else h.copy())
    return out


@pytest.mark.parametrize("block_size", [1, 2, 3, 6, 7, 8, 50])
def test_blocked_matrix_equals_the_direct_one(block_size: int) -> None:
    kernels = _trajectory(8)
    calls: list[int] = []

    def load(i: int) -> torch.Tensor:
        calls.append(i)
        return torch.from_numpy(kernels[i])

    s = distance_matrix(load, len(kernels), block_size=block_size)
    np.testing.assert_allclose(s, reference_matrix(kernels), rtol=0, atol=1e-14)
    assert s.dtype == np.float64
    assert np.array_equal(s, s.T)
    assert np.all(np.diag(s) == 0.0)
    # block j is read j times (block 0 once): each kernel about K / block_size times
    b = min(block_size, 8)
    blocks = math.ceil(8 / b)
    counts = np.bincount(calls, minlength=8)
    assert counts.max() <= max(1, blocks - 1)
    assert len(calls) == sum(min(b, 8 - j * b) * max(j, 1) for j in range(blocks))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 7), st.integers(1, 8), st.integers(0, 10_000))
def test_blocked_matrix_property(count: int, block_size: int, seed: int) -> None:
    kernels = _trajectory(count, shape=(3, 2, 3), seed=seed)  # any kernel shape is flattened
    s = distance_matrix(lambda i: kernels[i], count, block_size=block_size)
    np.testing.assert_allclose(s, reference_matrix(kernels), rtol=0, atol=1e-14)
    assert np.array_equal(s, s.T)
    assert np.all((s >= 0.0) & (s <= 2.0))


def test_matrix_from_float32_kernels_and_progress() -> None:
    kernels = [k.astype(np.float32) for k in _trajectory(5)]
    seen: list[tuple[int, int]] = []
    s = distance_matrix(
        lambda i: torch.from_numpy(kernels[i]),
        5,
        block_size=2,
        progress=lambda done, total: seen.append((done, total)),
    )
    # float32 kernels are converted to float64 once; the reference does the same
    np.testing.assert_allclose(s, reference_matrix(kernels), rtol=0, atol=1e-14)
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert seen[-1][0] == seen[-1][1]


def test_matrix_keeps_precision_for_tiny_distances() -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((30, 30))
    kernels = [base + eps * rng.standard_normal((30, 30)) for eps in (0.0, 1e-5, 2e-5, 1e-3)]
    s = distance_matrix(lambda i: kernels[i], 4, block_size=2)
    for i in range(4):
        for j in range(4):
            assert s[i, j] == pytest.approx(kernel_distance(kernels[i], kernels[j]), abs=1e-15)


def test_block_size_follows_the_memory_budget() -> None:
    numel = 1000 * 1000
    per_kernel = numel * 8
    # two float64 blocks of b kernels plus one kernel in flight
    assert block_size_for(numel, 1 << 30) == ((1 << 30) - per_kernel) // (2 * per_kernel) == 66
    assert block_size_for(10, 3 * 80) == 1
    with pytest.raises(GeometryError, match="max_memory"):
        block_size_for(10, 3 * 80 - 1)
    kernels = _trajectory(6)
    calls: list[int] = []

    def load(i: int) -> np.ndarray:
        calls.append(i)
        return kernels[i]

    s = distance_matrix(load, 6, max_memory=3 * 36 * 8 + 2 * 36 * 8)  # room for blocks of 2
    np.testing.assert_allclose(s, reference_matrix(kernels), rtol=0, atol=1e-14)
    assert len(calls) == 2 + 2 * 1 + 2 * 2
    with pytest.raises(GeometryError, match="max_memory"):
        distance_matrix(load, 6, max_memory=100)


def test_matrix_names_the_kernel_at_fault() -> None:
    kernels = _trajectory(5)
    bad = [*kernels[:3], np.zeros((6, 6)), kernels[4]]
    with pytest.raises(KernelError, match="kernel 3 is all zeros") as info:
        distance_matrix(lambda i: bad[i], 5, block_size=2)
    assert info.value.index == 3
    odd = [*kernels[:4], np.eye(5)]
    with pytest.raises(KernelError, match=r"kernel 4 has shape \(5, 5\)") as info:
        distance_matrix(lambda i: odd[i], 5)
    assert info.value.index == 4
    nan = [kernels[0], np.full((6, 6), np.nan)]
    with pytest.raises(KernelError, match="kernel 1 holds NaN"):
        distance_matrix(lambda i: nan[i], 2)
    with pytest.raises(GeometryError, match="at least one"):
        distance_matrix(lambda i: kernels[i], 0)
    with pytest.raises(GeometryError, match="block_size"):
        distance_matrix(lambda i: kernels[i], 3, block_size=0)


def test_single_kernel_matrix() -> None:
    s = distance_matrix(lambda i: np.eye(3), 1)
    assert s.shape == (1, 1) and s[0, 0] == 0.0


# --------------------------------------------------------------------------- curves from S

STEPS = [0, 10, 20, 30, 50, 100]


def _random_s(k: int, seed: int = 0) -> np.ndarray:
    return reference_matrix(_trajectory(k, seed=seed))


def test_spacings() -> None:
    assert spacings(STEPS) == [10, 20, 50]
    assert spacings(STEPS, consecutive=False) == [10, 20, 30, 40, 50, 70, 80, 90, 100]
    assert spacings([5]) == []


def test_adjacent_reads_pairs_off_the_matrix() -> None:
    s = _random_s(len(STEPS))
    pairs = adjacent(s, STEPS, 10)
    assert [p.step for p in pairs] == [0, 10, 20]
    assert pairs[1] == AdjacentPair(10, 10, s[1, 2], s[1, 2] / 10)
    by_20 = adjacent(s, STEPS, 20)
    assert [(p.step, p.distance) for p in by_20] == [(0, s[0, 2]), (10, s[1, 3]), (30, s[3, 4])]
    assert all(p.velocity == p.distance / 20 for p in by_20)
    assert adjacent(s, STEPS, 7) == []
    with pytest.raises(GeometryError, match="dt"):
        adjacent(s, STEPS, 0)


def test_distance_to_reference_and_step_index() -> None:
    s = _random_s(len(STEPS))
    np.testing.assert_array_equal(distance_to_reference(s, STEPS, 30), s[3])
    assert step_index(STEPS, 50) == 4
    with pytest.raises(GeometryError, match="nearest stored steps are 30 or 50"):
        distance_to_reference(s, STEPS, 40)
    with pytest.raises(GeometryError, match="nearest stored step is 100"):
        step_index(STEPS, 1000)


def test_steps_and_matrix_are_checked() -> None:
    s = _random_s(3)
    with pytest.raises(GeometryError, match="strictly increasing"):
        adjacent(s, [0, 20, 10], 10)
    with pytest.raises(GeometryError, match=r"shape \(3, 3\) but there are 4 steps"):
        adjacent(s, [0, 10, 20, 30], 10)
    with pytest.raises(GeometryError, match="integers"):
        spacings([0.5, 1.5])


def test_velocity_dt_prefers_the_spacing_that_covers_the_run() -> None:
    dense_then_sparse = list(range(0, 100)) + list(range(100, 10_001, 100))
    assert velocity_dt(dense_then_sparse) == 100
    assert velocity_dt(list(range(0, 1000, 25))) == 25
    assert velocity_dt([0, 1, 2, 4, 6, 8]) == 2
    assert velocity_dt([3]) is None


def test_a_repeated_step_is_refused() -> None:
    # reference: the definition, steps strictly increasing (a repeated step would give dt = 0)
    for steps in ([0, 10, 10], [5, 5], [0, 10, 20, 20, 30]):
        with pytest.raises(GeometryError, match="strictly increasing"):
            check_steps(steps)
        with pytest.raises(GeometryError, match="strictly increasing"):
            velocity_dt(steps)
    assert check_steps([0, 10, 11]).tolist() == [0, 10, 11]


def _velocity_dt_by_hand(steps: list[int]) -> int | None:
    """The docstring's rule, by brute force: the unit steps ``[u, u + 1]`` inside some pair
    ``(t, t + dt)`` of stored steps, counted one by one."""
    stored = set(steps)
    best = None
    for dt in sorted({b - a for a, b in itertools.pairwise(steps)}):
        covered = {u for t in steps if t + dt in stored for u in range(t, t + dt)}
        if best is None or len(covered) > best[0]:  # ascending dt: ties keep the smaller one
            best = (len(covered), dt)
    return None if best is None else best[1]


def test_velocity_dt_counts_the_steps_its_pairs_cover() -> None:
    # reference: coverage worked out by hand from the docstring, and a brute-force reading of it
    # [0, 1, 3]: dt=1 has the pair (0, 1), covers 1; dt=2 has (1, 3), covers 2 -> 2
    assert _velocity_dt_by_hand([0, 1, 3]) == 2
    assert velocity_dt([0, 1, 3]) == 2
    # [0, 2, 3, 5]: dt=2 pairs (0, 2), (3, 5), covers 4; dt=1 (2, 3), covers 1 -> 2
    assert velocity_dt([0, 2, 3, 5]) == 2
    # [0, 1, 2, 4]: dt=1 (0, 1), (1, 2), covers 2; dt=2 (0, 2), (2, 4), covers 4 -> 2
    assert velocity_dt([0, 1, 2, 4]) == 2
    # [0, 1, 2, 3, 5]: dt=1 covers 3, dt=2 (0, 2), (1, 3), (3, 5) covers 5 -> 2
    assert velocity_dt([0, 1, 2, 3, 5]) == 2
    # [0, 3, 4, 7, 8, 11]: the consecutive spacings are 3 and 1 (4, the lag of (0, 4) and
    # (3, 7), is none of them); dt=1 (3, 4), (7, 8) covers 2; dt=3 (0, 3), (4, 7), (8, 11)
    # covers 9 -> 3
    assert velocity_dt([0, 3, 4, 7, 8, 11]) == 3
    rng = np.random.default_rng(11)
    for _ in range(300):
        steps = sorted(rng.choice(40, size=int(rng.integers(2, 12)), replace=False).tolist())
        assert velocity_dt(steps) == _velocity_dt_by_hand(steps), steps


def test_velocity_dt_of_a_thinned_run_is_not_a_spacing_seen_only_at_its_two_ends() -> None:
    # every 10 steps up to 100, then every 200 from 100 to 4900, and the last step 5000: the
    # spacing 100 occurs at (0, 100) and (4900, 5000) only, which span the run from its first
    # step to its last but cover 200 of its 5000 steps; 200 covers 4800 of them
    steps = [*range(0, 100, 10), *range(100, 5000, 200), 5000]
    assert velocity_dt(steps) == 200
    assert _velocity_dt_by_hand(steps) == 200


def test_the_default_dt_is_at_least_a_50th_of_the_run_whatever_the_spacing() -> None:
    # reference: the smallest multiple of the covering spacing that is at least 1/50 of the run
    # (last step less first); the spacing itself when it is. Every 30 and 70 steps the run ends
    # at 4,980 and 4,970, so 1/50 of it is 100 (99.6 and 99.4 rounded up)
    for every, dt in (
        (10, 100),
        (20, 100),
        (25, 100),
        (30, 120),
        (40, 120),
        (50, 100),
        (70, 140),
        (100, 100),
        (250, 250),
    ):
        steps = list(range(0, 5001, every))
        assert velocity_dt(steps) == every
        assert default_velocity_dt(steps) == dt, every
    # 1/50 of 10,000 steps is 200: the paper's T, saved every 100 steps after 1,000 (every 10
    # before, as examples/cifar10_resnet20.toml does) or every 100 throughout
    assert default_velocity_dt([*range(0, 1000, 10), *range(1000, 10_001, 100)]) == 200
    assert default_velocity_dt(list(range(0, 10_001, 100))) == 200
    # and saved every 10, 20 or 50 steps throughout (1/80 read them at 130, 140 and 150)
    for every in (10, 20, 50):
        assert default_velocity_dt(list(range(0, 10_001, every))) == 200, every
    # the length is the run's, from its first stored step: 2,000 steps, not 4,000 (40, not 80)
    assert default_velocity_dt(list(range(2000, 4001, 10))) == 40
    # the fraction given, exact: 1/50 of 5,000 is 100, not 100.00000000000001 -> 120; 1/80
    # (the default before) and 1/100 give 80 and 60 every 20 steps
    assert default_velocity_dt(list(range(0, 5001, 20)), Fraction(1, 50)) == 100
    assert default_velocity_dt(list(range(0, 5001, 20)), Fraction(1, 80)) == 80
    assert default_velocity_dt(list(range(0, 5001, 30)), Fraction(1, 50)) == 120
    assert default_velocity_dt(list(range(0, 5001, 20)), Fraction(1, 100)) == 60


def test_the_default_dt_of_irregular_schedules() -> None:
    # extra early checkpoints (save_at) among checkpoints every 20: the spacing is still 20
    with_extras = sorted({1, 2, 3, 7, 13, *range(0, 5001, 20)})
    assert (velocity_dt(with_extras), default_velocity_dt(with_extras)) == (20, 100)
    # every 5 up to 100, then every 100 (the labelled trajectories): 100 covers the run, and
    # is 1/50 of it
    dense_early = [*range(0, 100, 5), *range(100, 5001, 100)]
    assert default_velocity_dt(dense_early) == 100
    # a thinned run: 200 covers it (100 only at its two ends), and is kept
    thinned = [*range(0, 100, 10), *range(100, 5000, 200), 5000]
    assert default_velocity_dt(thinned) == 200
    # a last step off the grid (training ended between two saves): pairs 100 apart cover what
    # pairs 20 apart cover, up to 4,980 (1/50 of 4,990 is 99.8, rounded up)
    assert default_velocity_dt([*range(0, 4981, 20), 4990]) == 100
    # a checkpoint lost (deleted, or left out by --skip-bad): the spacing 40 of the hole
    # covers the whole run and 20 all but the hole, so 40 is the covering spacing; but pairs
    # 100 apart (5x 20) cover the whole run too, hole included ((2380, 2480), (2420, 2520)):
    # the dt is 100, a multiple of 20, as for the same run without the hole (the multiples of
    # 40 alone gave 120)
    holed = [t for t in range(0, 5001, 20) if t != 2500]
    assert (velocity_dt(holed), default_velocity_dt(holed)) == (40, 100)
    assert velocity_lag(holed) == (100, 20)
    assert velocity_lag(list(range(0, 5001, 20))) == (100, 20)
    # two checkpoints lost far apart, and the last one: still 100, every 20
    for lost in ({1000, 3000}, {4980}, {20}):
        steps = [t for t in range(0, 5001, 20) if t not in lost]
        assert velocity_lag(steps) == (100, 20), lost
    # with a run short enough that the covering spacing is itself 1/50 of it, the hole's 40
    # stays: no lag under 40 covers the hole (1/50 of 1,000 steps is 20)
    short = [t for t in range(0, 1001, 20) if t != 500]
    assert velocity_lag(short) == (40, 40)
    # spacings 20 and 21 in turn: 21 covers the most, and no two steps are 105 (the smallest
    # multiple of 21 at least 1/50 of the 4,920 steps) apart, so the spacing stays
    alternating = list(itertools.accumulate([0] + [20, 21] * 120))
    assert velocity_dt(alternating) == 21
    assert default_velocity_dt(alternating) == 21
    # every 21 up to 2,520, then 20 and 21 in turn: pairs 105 apart cover the first half only
    # (2,520 steps), fewer than pairs 21 apart do (3,780), so the spacing stays
    half = [*range(0, 2500, 21), *itertools.accumulate([2520] + [20, 21] * 60)]
    assert (velocity_dt(half), default_velocity_dt(half)) == (21, 21)
    # fewer than two steps: no dt; two: their spacing (1/50 of 10 steps rounds up to 1)
    assert default_velocity_dt([3]) is None
    assert default_velocity_dt([0, 10]) == 10
    with pytest.raises(GeometryError, match="strictly increasing"):
        default_velocity_dt([0, 20, 20, 40])


def _exact_distance(a: np.ndarray, b: np.ndarray) -> float:
    """S = (|a|^2 |b|^2 - <a, b>^2) / (|a| |b| (|a| |b| + <a, b>)), the numerator exact."""
    fa = [Fraction(float(v)) for v in a.ravel()]
    fb = [Fraction(float(v)) for v in b.ravel()]
    p = sum((x * y for x, y in zip(fa, fb, strict=True)), Fraction(0))
    q = sum((x * x for x in fa), Fraction(0)) * sum((y * y for y in fb), Fraction(0))
    root = math.sqrt(float(q))  # correctly rounded: relative error 1e-16
    return float(q - p * p) / (root * (root + float(p)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [1e-4, 3e-4])
def test_small_distances_keep_their_relative_precision(seed: int, eps: float) -> None:
    # reference: Lagrange's identity for 1 - cos, evaluated with exact rational arithmetic
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((12, 12))
    b = a + eps * rng.standard_normal((12, 12))
    expected = _exact_distance(a, b)
    assert 1e-9 < expected < 1e-6  # where 1 - cos has lost about half its digits
    assert kernel_distance(a, b) == pytest.approx(expected, rel=1e-11, abs=0)
    assert kernel_distance(b, a) == pytest.approx(expected, rel=1e-11, abs=0)


def test_reversed_views_of_kernels_are_read_like_their_copies() -> None:
    # probe examples in the opposite order (k[::-1, ::-1], negative strides): S is unchanged;
    # torch.from_numpy refused such a view ("At least one stride ... is negative")
    rng = np.random.default_rng(3)
    kernels = [rng.standard_normal((5, 5)) for _ in range(4)]
    reversed_views = [k[::-1, ::-1] for k in kernels]
    s = distance_matrix(kernels.__getitem__, 4)
    np.testing.assert_allclose(distance_matrix(reversed_views.__getitem__, 4), s, atol=1e-15)
