"""The measurements the phase verdict rests on, as pure functions of the S matrix.

Everything here takes the ``K`` stored steps (ascending) and the float64 ``(K, K)`` S matrix and
returns small frozen dataclasses of numbers; :mod:`conetool.verdict` turns them into a regime and
a sentence. Nothing reads files or prints.

- :func:`velocity_points`: the kernel velocity ``v = S(t, t + d) / d`` of every stored pair whose
  lag ``d`` is ``dt``, ``2 dt`` or ``3 dt`` (one curve per lag), placed at the pair's midpoint.
- :func:`fit_phase_break`: where the velocity stops falling fast. A continuous two-segment line is
  fitted to ``log10 v`` against step (one offset per curve, shared slopes), by least squares over
  every candidate break; the break with the least squared error is the end of Phase I, and the
  breaks whose error is within a profile-likelihood bound (``N ln(SSE / SSE_min) <= 3.84``, about
  95% for one parameter) give its range.
- :func:`velocity_drop`: how far the velocity fell: the early level (geometric mean of the two
  largest velocities before the break) over the Phase II level (median after it).
- :func:`lag_growth`: how S grows with the lag ``t' - t`` over every pair of Phase II steps: the
  exponent ``a`` of ``S ~ lag^a`` fitted to the median S of log-spaced lag bins between 1/5 and
  3/5 of Phase II's length, each stored pair counted for the pairs of steps it stands for (a
  stretch of dense checkpoints does not outvote a sparse one; evenly spaced ones count alike).
  About 0 when the kernel moves inside a bounded region (S saturates), 1 for a random walk
  (diffusive drift), 2 for motion in a straight line.
- :func:`velocity_trend`: the velocity's fall across Phase II, first quarter of its steps over
  the last quarter (a kernel that freezes because the loss goes to zero slows down by orders of
  magnitude).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conetool.geometry import check_steps

__all__ = [
    "LagGrowth",
    "PhaseBreak",
    "VelocityDrop",
    "VelocityPoints",
    "VelocityTrend",
    "fit_phase_break",
    "lag_growth",
    "velocity_drop",
    "velocity_points",
    "velocity_trend",
]

#: Profile-likelihood bound on ``N ln(SSE / SSE_min)`` for the range of the break (chi-square
#: with one degree of freedom at 95%).
PROFILE_BOUND = 3.84

#: Floor on velocities before taking logs: S is rounded to about 1e-16 in float64, so an S below
#: 1e-15 is zero to the precision it is computed with.
_S_FLOOR = 1e-15
_V_FLOOR = 1e-300
_TINY = 1e-300


@dataclass(frozen=True)
class VelocityPoints:
    """Velocities of the stored pairs ``(t, t + lag)``, flattened over the curves.

    Attributes:
        start: ``(N,)`` the pair's first step ``t``.
        lag: ``(N,)`` its lag (``dt``, ``2 dt`` or ``3 dt``).
        velocity: ``(N,)`` ``S(t, t + lag) / lag``.
        dts: the lags present, ascending; ``dts[0]`` is the paper's ``dt``.
    """

    start: np.ndarray
    lag: np.ndarray
    velocity: np.ndarray
    dts: tuple[int, ...]

    @property
    def middle(self) -> np.ndarray:
        """``(N,)`` the pair's midpoint ``t + lag / 2``, where its velocity is placed."""
        return self.start + self.lag / 2.0

    def curve(self, lag: int) -> tuple[np.ndarray, np.ndarray]:
        """``(start, velocity)`` of one lag's pairs, ordered by ``start``."""
        keep = self.lag == lag
        return self.start[keep], self.velocity[keep]


def velocity_points(
    steps: Sequence[int] | np.ndarray,
    s: np.ndarray,
    dt: int,
    multiples: Sequence[int] = (1, 2, 3),
) -> VelocityPoints:
    """Velocities of every stored pair whose lag is ``m * dt`` for ``m`` in ``multiples``.

    A lag with fewer than 3 pairs is left out; ``dt`` itself is always kept. An S below 1e-15
    (zero to float64 precision) counts as 1e-15, so that its logarithm is finite.
    """
    arr = check_steps(steps, s)
    position = {int(t): i for i, t in enumerate(arr)}
    start, lag, velocity, dts = [], [], [], []
    for m in multiples:
        d = int(m * dt)
        found = [
            (int(t), i, position[int(t) + d]) for i, t in enumerate(arr) if int(t) + d in position
        ]
        if m != multiples[0] and len(found) < 3:
            continue
        dts.append(d)
        for t, i, j in found:
            start.append(t)
            lag.append(d)
            velocity.append(max(float(s[i, j]), _S_FLOOR) / d)
    return VelocityPoints(
        np.asarray(start, dtype=np.float64),
        np.asarray(lag, dtype=np.float64),
        np.asarray(velocity, dtype=np.float64),
        tuple(dts),
    )


@dataclass(frozen=True)
class PhaseBreak:
    """Where the velocity stops falling: a bend of a continuous piecewise-linear fit of
    ``log10 v`` against step.

    Attributes:
        step: the bend that ends Phase I (velocities are placed at pair midpoints, so this is a
            step between stored steps).
        low, high: the range of that bend's positions within the profile-likelihood bound.
        slope_before, slope_after: fitted slopes of ``log10 v`` on either side, per 1,000 steps.
        bends: the fitted bends (one or two), ascending.
        points: velocity points fitted; curves: lags fitted (one offset each).
        rms: root-mean-square residual of the fit, in decades of velocity.
    """

    step: float
    low: float
    high: float
    slope_before: float
    slope_after: float
    bends: tuple[float, ...]
    points: int
    curves: int
    rms: float


def _candidates(x: np.ndarray, limit: int = 80) -> np.ndarray:
    """Candidate bends: the distinct midpoints and the points half-way between them, at least
    two distinct midpoints from either end; at most ``limit`` of them, evenly by rank."""
    distinct = np.unique(x)
    grid = np.unique(np.concatenate([distinct, (distinct[:-1] + distinct[1:]) / 2.0]))
    left = np.searchsorted(distinct, grid, side="left")
    right = distinct.size - np.searchsorted(distinct, grid, side="right")
    grid = grid[(left >= 2) & (right >= 2)]
    if grid.size > limit:
        grid = grid[np.unique(np.linspace(0, grid.size - 1, limit).round().astype(int))]
    return grid


#: Bound on the elements of the ``(pairs, N)`` residual blocks of :func:`_two_bend_fits` (2 MiB
#: each in float64), so that its memory does not grow with the number of pairs times points.
_RESIDUAL_BLOCK = 1 << 18


def _two_bend_fits(
    x: np.ndarray, y: np.ndarray, onehot: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least squares for every pair of bends ``grid[a] < grid[b]`` at once (normal equations).

    ``x`` and ``y`` are ``(N,)``, ``onehot`` is ``(N, m)`` (the curve of each point), ``grid`` is
    ``(G,)``. Each pair's design is ``[base, h_a, h_b]`` with ``base = [onehot, x / 1000]``
    ``(N, m + 1)`` and the hinges ``h_g = max(x - grid[g], 0) / 1000``; its ``(m + 3, m + 3)``
    normal equations are put together from products shared by all pairs (``base.T @ base``
    ``(m + 1, m + 1)``, ``H @ base`` ``(G, m + 1)``, ``H @ H.T`` ``(G, G)``, ``base.T @ y`` and
    ``H @ y`` for the hinge matrix ``H`` ``(G, N)``), and the squared errors are summed from the
    residuals of at most ``_RESIDUAL_BLOCK // N`` pairs at a time: memory ``O(G N + P m^2)``,
    not ``O(P N m)``.

    Returns ``(a, b, sse, coef)`` flattened over the ``P = G (G - 1) / 2`` pairs: ``a`` and ``b``
    ``(P,)`` index ``grid``, ``sse`` is ``(P,)``, ``coef`` is ``(P, m + 3)``: one offset per curve,
    the first slope, and the slope changes at the two bends (per 1,000 steps).
    """
    a, b = np.triu_indices(grid.size, k=1)
    hinge = np.maximum(x[None, :] - grid[:, None], 0.0) / 1000.0  # (G, N)
    base = np.hstack([onehot, x[:, None] / 1000.0])  # (N, k), k = m + 1
    k = base.shape[1]
    hb = hinge @ base  # (G, k)
    hh = hinge @ hinge.T  # (G, G)
    hy = hinge @ y  # (G,)
    gram = np.empty((a.size, k + 2, k + 2))
    gram[:, :k, :k] = base.T @ base
    gram[:, :k, k] = gram[:, k, :k] = hb[a]
    gram[:, :k, k + 1] = gram[:, k + 1, :k] = hb[b]
    gram[:, k, k] = hh[a, a]
    gram[:, k + 1, k + 1] = hh[b, b]
    gram[:, k, k + 1] = gram[:, k + 1, k] = hh[a, b]
    rhs = np.empty((a.size, k + 2))
    rhs[:, :k] = base.T @ y
    rhs[:, k] = hy[a]
    rhs[:, k + 1] = hy[b]
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(k + 2)
    coef = np.linalg.solve(gram + ridge, rhs[:, :, None])[:, :, 0]
    sse = np.empty(a.size)
    block = max(1, _RESIDUAL_BLOCK // max(x.size, 1))
    for first in range(0, a.size, block):
        rows = slice(first, first + block)
        c = coef[rows]
        resid = c[:, :k] @ base.T  # (block, N)
        resid += c[:, k, None] * hinge[a[rows]]
        resid += c[:, k + 1, None] * hinge[b[rows]]
        np.subtract(y[None, :], resid, out=resid)
        sse[rows] = np.einsum("pn,pn->p", resid, resid)
    return a, b, sse, coef


def fit_phase_break(points: VelocityPoints, min_fall: float = 0.35) -> PhaseBreak | None:
    """The end of Phase I from a continuous fit of ``log10 v`` with two bends.

    The fit has one offset per lag curve, shared slopes, and two bends, chosen by least squares
    over every pair of candidate bends. Two bends let the fit follow a velocity that first
    rises or holds (a late Phase I), then falls, then levels off. Phase I ends at the first bend
    that ends a fall: the segment before it loses at least ``min_fall`` decades of velocity,
    and the segment after it falls less than half as fast (a later fall, as a decaying learning
    rate gives, is Phase II slowing down). When no bend ends a fall, the last bend is returned,
    with a ``slope_after`` that says whether the velocity is still falling at the end. The
    range is every position at which a fit whose fall ends there is within the
    profile-likelihood bound. ``None`` with fewer than 6 distinct velocity positions.
    """
    x = points.middle
    y = np.log10(np.maximum(points.velocity, _V_FLOOR))
    lags = np.unique(points.lag)
    onehot = (points.lag[:, None] == lags[None, :]).astype(np.float64)
    grid = _candidates(x)
    if grid.size < 2 or np.unique(x).size < 6:
        return None
    a, b, sse, coef = _two_bend_fits(x, y, onehot, grid)
    m = lags.size
    slopes = np.stack(
        [coef[:, m], coef[:, m] + coef[:, m + 1], coef[:, m] + coef[:, m + 1] + coef[:, m + 2]],
        axis=1,
    )  # (P, 3) the three segments' slopes
    # decades each segment falls: a segment is a fall when it loses at least `min_fall`
    lo, hi = float(x.min()), float(x.max())
    lengths = np.stack([grid[a] - lo, grid[b] - grid[a], hi - grid[b]], axis=1) / 1000.0
    falls = -slopes * lengths >= min_fall
    # a bend ends the fall before it when the segment after it falls less than half as fast
    ends_fall = falls[:, :2] & (slopes[:, 1:] > 0.5 * slopes[:, :2])
    first_end = np.where(ends_fall[:, 0], 0, np.where(ends_fall[:, 1], 1, 2))
    stop = np.where(first_end == 0, a, np.where(first_end == 1, b, -1))
    best = int(np.argmin(sse))
    n = x.size
    sse_min = float(sse[best])
    floor = max(sse_min, 1e-12 * n)
    within = (n * np.log(np.maximum(sse, floor) / floor) <= PROFILE_BOUND) & (stop >= 0)
    which = min(int(first_end[best]), 1)
    bends = (float(grid[a[best]]), float(grid[b[best]]))
    inside = grid[np.unique(stop[within])] if np.any(within) else np.array([bends[which]])
    return PhaseBreak(
        step=bends[which],
        low=float(inside.min()),
        high=float(inside.max()),
        slope_before=float(slopes[best, which]),
        slope_after=float(slopes[best, which + 1]),
        bends=bends,
        points=int(n),
        curves=int(m),
        rms=math.sqrt(sse_min / n),
    )


@dataclass(frozen=True)
class VelocityDrop:
    """How far the velocity fell across the break (the paper's ``dt`` only).

    Attributes:
        early: geometric mean of the two largest velocities before the break (the one, if one).
        late: median velocity after the break.
        factor: ``early / late``.
        rebound: the largest 3-point running median after the break, over ``late``.
        before, after: how many velocities each level rests on.
    """

    early: float
    late: float
    factor: float
    rebound: float
    before: int
    after: int


def velocity_drop(points: VelocityPoints, break_step: float) -> VelocityDrop | None:
    """The drop of the ``dt`` curve's velocity across ``break_step``; ``None`` if a side is empty."""
    dt = points.dts[0]
    start, v = points.curve(dt)
    middle = start + dt / 2.0
    before = np.sort(v[middle <= break_step])[::-1]
    after = v[middle > break_step]
    if before.size == 0 or after.size == 0:
        return None
    top = before[:2]
    early = float(np.exp(np.mean(np.log(np.maximum(top, _TINY)))))
    late = float(np.median(after))
    window = [float(np.median(after[max(0, i - 1) : i + 2])) for i in range(after.size)]
    late_safe = max(late, _TINY)
    return VelocityDrop(
        early=early,
        late=late,
        factor=early / late_safe,
        rebound=max(window) / late_safe,
        before=int(before.size),
        after=int(after.size),
    )


@dataclass(frozen=True)
class LagGrowth:
    """How S between Phase II steps grows with their lag.

    Attributes:
        exponent: slope of ``log S`` against ``log lag`` over the lag bins (``S ~ lag^exponent``).
        pairs: Phase II pairs whose lag lies in the fitted range; bins: non-empty bins fitted.
        lag_low, lag_high: the fitted range of lags (steps).
        s_low, s_high: median S in the first and last bin (pairs counted as in
            :func:`lag_growth`).
        s_max: the largest S between any two Phase II steps.
    """

    exponent: float
    pairs: int
    bins: int
    lag_low: int
    lag_high: int
    s_low: float
    s_high: float
    s_max: float


def _cells(steps: np.ndarray) -> np.ndarray:
    """``(N,)`` int64: how many steps each of the ascending ``steps`` ``(N,)`` stands for, those
    up to the next one (the last one as many as the one before it; a single step, 1)."""
    gaps = np.diff(np.asarray(steps).astype(np.int64))
    return np.append(gaps, gaps[-1]) if gaps.size else np.ones(1, dtype=np.int64)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` ``(N,)`` with positive whole-number ``weights`` ``(N,)``
    (float64: exact while their sum is below 2**53): the value at half of the total weight, the
    mean of the two values on either side when half falls between them. Equal weights give
    ``np.median``, the mean of the two middle values included."""
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(np.asarray(weights, dtype=np.float64)[order])
    total = float(cum[-1])
    # first with 2 * cum >= total; always < N, rounded sums past 2**53 included: a binary search
    # ends at N only when the last entry is below the key, and 2 * cum[-1] = 2 * total (exact, or
    # inf) is not below total for the total >= 0 of non-negative weights
    k = int(np.searchsorted(2 * cum, total, side="left"))
    if 2 * float(cum[k]) == total and k + 1 < v.size:
        return float((v[k] + v[k + 1]) / 2.0)
    return float(v[k])


def lag_growth(
    steps: Sequence[int] | np.ndarray,
    s: np.ndarray,
    start: int,
    *,
    low: float = 0.2,
    high: float = 0.6,
    bins: int = 6,
) -> LagGrowth | None:
    """Fit ``S ~ lag^a`` over the pairs of stored steps at or after ``start``.

    Lags between ``low`` and ``high`` times Phase II's length ``T - start`` are put into ``bins``
    log-spaced bins; the median S of each non-empty bin (at its median lag) is fitted in
    log-log, each bin weighted by the square root of its pair count. Each stored step stands
    for the steps up to the next one (the last for as many as the one before it), and each
    stored pair ``(t, t')`` is counted in the medians and the counts as the pairs of steps it
    stands for, ``c(t) c(t')`` (the counts in units of the largest ``c`` squared): the median of
    a bin is that over every pair of steps, not over the stored pairs, so that checkpoints
    every 10 steps early in Phase II and every 500 later do not fill the small-lag bins with
    one dense stretch. Evenly spaced Phase II steps count every pair once: plain medians and
    pair counts. ``None`` when fewer than 3 bins hold pairs.
    """
    arr = check_steps(steps, s)
    keep = arr >= start
    t = arr[keep].astype(np.float64)
    sub = np.asarray(s, dtype=np.float64)[np.ix_(keep, keep)]
    if t.size < 3:
        return None
    length = t[-1] - t[0]
    i, j = np.triu_indices(t.size, k=1)
    lag = t[j] - t[i]
    values = sub[i, j]
    s_max = float(values.max())
    lo, hi = low * length, high * length
    sel = (lag >= lo) & (lag <= hi)
    if not np.any(sel):
        return None
    edges = np.geomspace(max(lo, lag[sel].min()), hi, bins + 1)
    edges[-1] = np.nextafter(edges[-1], np.inf)
    cells = _cells(t)
    # in units of their greatest common divisor, as float64: the products of steps a billion
    # apart overflowed int64 (a raw IndexError, or a square root of a negative sum)
    cells = (cells // np.gcd.reduce(cells)).astype(np.float64)
    weight = cells[i] * cells[j]  # (P,) the pairs of steps each stored pair stands for
    unit = float(cells.max()) ** 2
    xs, ys, ws, counts = [], [], [], 0
    for a, b in itertools.pairwise(edges):
        inbin = sel & (lag >= a) & (lag < b)
        if not np.any(inbin):
            continue
        counts += int(inbin.sum())
        xs.append(math.log(_weighted_median(lag[inbin], weight[inbin])))
        ys.append(math.log(max(_weighted_median(values[inbin], weight[inbin]), _TINY)))
        ws.append(math.sqrt(float(weight[inbin].sum()) / unit))
    if len(xs) < 3:
        return None
    x, y, w = np.array(xs), np.array(ys), np.array(ws)
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    slope = float(np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2))
    return LagGrowth(
        exponent=slope,
        pairs=counts,
        bins=len(xs),
        lag_low=round(math.exp(xs[0])),
        lag_high=round(math.exp(xs[-1])),
        s_low=math.exp(ys[0]),
        s_high=math.exp(ys[-1]),
        s_max=s_max,
    )


def _step_quarters(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, last)``, boolean ``(N,)``: the pairs in the first and the last quarter of the
    steps their ascending ``starts`` ``(N,)`` span, at least one each.

    Each pair stands for the steps up to the next pair's start (the last one for as many as the
    one before it), so that a quarter is a quarter of the steps, not of the stored pairs: with
    checkpoints every 10 steps early in Phase II and every 500 later, the last quarter of the
    pairs would lie in the dense early stretch. Evenly spaced starts give ``N // 4`` each, the
    first and the last ``N // 4`` pairs.
    """
    cells = _cells(starts)
    total = int(cells.sum())
    end = np.cumsum(cells)
    first = 4 * end <= total
    last = 4 * (end - cells) >= 3 * total
    first[0] = last[-1] = True
    return first, last


@dataclass(frozen=True)
class VelocityTrend:
    """The ``dt`` velocity's fall across Phase II.

    Attributes:
        fall: median of the velocities in the first quarter of Phase II's steps over that of
            the last quarter (above 1: slowing down).
        points: velocities in Phase II; per_quarter: how many velocities the smaller of the two
            quarters' medians rests on (the quarters are of Phase II's steps, not of its stored
            pairs: see :func:`_step_quarters`).
        head, tail: the first and last quarter's median velocity; dt: their lag.
    """

    fall: float
    points: int
    per_quarter: int
    head: float
    tail: float
    dt: int


def velocity_trend(
    steps: Sequence[int] | np.ndarray,
    s: np.ndarray,
    start: int,
    dt: int,
    noise_floor: float | None = None,
) -> VelocityTrend | None:
    """The fall of the velocity across the pairs ``(t, t + lag)`` with ``t >= start``.

    ``lag`` is ``dt``, or when the numerical noise floor of S is known, the smallest multiple of
    ``dt`` (up to a quarter of Phase II) whose median S is at least 10 times that floor, so that
    the trend is not read off rounding noise. ``None`` with fewer than 4 such pairs.
    """
    arr = check_steps(steps, s)
    position = {int(t): i for i, t in enumerate(arr)}
    length = int(arr[-1]) - int(start)
    chosen: tuple[int, np.ndarray, np.ndarray] | None = None
    for m in range(1, max(1, length // (4 * dt)) + 1):
        lag = m * dt
        pairs = [(i, int(t)) for i, t in enumerate(arr) if t >= start and int(t) + lag in position]
        v = np.array([float(s[i, position[t + lag]]) / lag for i, t in pairs])
        starts = np.array([t for _, t in pairs], dtype=np.int64)
        if v.size < 4:
            break
        if chosen is None or noise_floor is None or chosen[1].size == 0:
            chosen = (lag, v, starts)
        if noise_floor is None or float(np.median(v)) * lag >= 10.0 * noise_floor:
            chosen = (lag, v, starts)
            break
    if chosen is None:
        return None
    lag, v, t = chosen
    first, last = _step_quarters(t)
    head, tail = float(np.median(v[first])), float(np.median(v[last]))
    return VelocityTrend(
        fall=head / max(tail, _TINY),
        points=int(v.size),
        per_quarter=int(min(first.sum(), last.sum())),
        head=head,
        tail=tail,
        dt=int(lag),
    )
