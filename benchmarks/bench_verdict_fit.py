"""Benchmark: the verdict's two-bend fit from shared products against the whole design (the
baseline, kept here as it was before, measured in the same run).

``fit_phase_break`` fits a line with two bends to ``log10 v`` for every pair of its (at most 80)
candidate bends: ``P = 3,160`` pairs. The baseline, ``conetool.verdict_measures._two_bend_fits``
as it was, built the ``(P, N, m + 3)`` design of all pairs and every velocity point at once (``N``
about 3 per checkpoint, ``m`` lag curves); the current one puts each pair's normal equations
together from ``(G, N)``-sized products and sums squared errors a bounded block of pairs at a
time. Both are timed through :func:`fit_phase_break` on synthetic velocity curves (checkpoints
every 100 steps, lags 100, 200 and 300, ``log10 v`` falling 3 decades over the first 30% and
flat after it, Gaussian noise of 0.2 decades), each measurement in its own subprocess: the
fastest of ``--repeat`` calls, the peak of numpy's allocations during one call (tracemalloc) and
the process's peak resident memory (``ru_maxrss``) with its growth over the process before the
calls. The two fits' ``PhaseBreak`` must be the same (bends, step and range; slopes and rms to
1e-9).

Usage (runs of 2,000 and 5,000 checkpoints; the baseline needs about 4 GB at 5,000):

    python benchmarks/bench_verdict_fit.py --checkpoints 2000,5000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

import conetool.verdict_measures as vm
from conetool.peak_memory import peak_resident_memory
from conetool.verdict_measures import PhaseBreak, VelocityPoints, fit_phase_break


def baseline_fits(
    x: np.ndarray, y: np.ndarray, onehot: np.ndarray, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The former ``_two_bend_fits``: the whole ``(P, N, m + 3)`` design at once."""
    a, b = np.triu_indices(grid.size, k=1)
    hinge = np.maximum(x[None, :] - grid[:, None], 0.0) / 1000.0  # (G, N)
    base = np.hstack([onehot, x[:, None] / 1000.0])  # (N, m + 1)
    design = np.concatenate(
        [np.broadcast_to(base, (a.size, *base.shape)), hinge[a][:, :, None], hinge[b][:, :, None]],
        axis=2,
    )  # (P, N, m + 3)
    gram = np.einsum("pni,pnj->pij", design, design)
    rhs = np.einsum("pni,n->pi", design, y)
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] * np.eye(gram.shape[1])
    coef = np.linalg.solve(gram + ridge, rhs[:, :, None])[:, :, 0]
    resid = y[None, :] - np.einsum("pni,pi->pn", design, coef)
    return a, b, np.einsum("pn,pn->p", resid, resid), coef


def curves(checkpoints: int, seed: int = 0) -> VelocityPoints:
    """Velocity points of ``checkpoints`` steps 100 apart at lags 100, 200 and 300: ``(N,)`` with
    ``N = 3 checkpoints - 6``."""
    rng = np.random.default_rng(seed)
    steps = np.arange(checkpoints) * 100.0
    knee = 0.3 * steps[-1]
    start, lag, velocity = [], [], []
    for m in (1, 2, 3):
        t = steps[: checkpoints - m]
        mid = t + 50.0 * m
        log_v = -2.0 - 3.0 * np.minimum(mid, knee) / knee + 0.05 * m
        start.append(t)
        lag.append(np.full(t.size, 100.0 * m))
        velocity.append(10.0 ** (log_v + 0.2 * rng.standard_normal(t.size)))
    dts = (100, 200, 300)
    return VelocityPoints(np.concatenate(start), np.concatenate(lag), np.concatenate(velocity), dts)


def measure(checkpoints: int, which: str, repeat: int) -> dict[str, Any]:
    """One measurement, in this process: seconds (fastest of ``repeat``), peaks, the fit."""
    points = curves(checkpoints)
    if which == "baseline":
        vm._two_bend_fits = baseline_fits
    before = peak_resident_memory()
    seconds = math.inf
    for _ in range(repeat):
        began = time.perf_counter()
        fit = fit_phase_break(points)
        seconds = min(seconds, time.perf_counter() - began)
    peak = peak_resident_memory()
    tracemalloc.start()
    fit_phase_break(points)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fit is not None
    return {
        "points": int(points.start.size),
        "seconds": seconds,
        "traced": traced,
        "rss": peak,
        "growth": peak - before,
        "fit": {k: getattr(fit, k) for k in PhaseBreak.__dataclass_fields__},
    }


def run_one(checkpoints: int, which: str, repeat: int) -> dict[str, Any]:
    """:func:`measure` in a fresh subprocess (so that its peak resident memory is its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    args = [sys.executable, __file__, "--one", f"{checkpoints}:{which}", "--repeat", str(repeat)]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def same_fit(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """The same bends, step and range; slopes and rms within 1e-9 (relative or absolute)."""
    exact = ("step", "low", "high", "bends", "points", "curves")
    if any(new[k] != old[k] for k in exact):
        return False
    return all(
        math.isclose(new[k], old[k], rel_tol=1e-9, abs_tol=1e-9)
        for k in ("slope_before", "slope_after", "rms")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="2000,5000", help="comma-separated run lengths")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per measurement")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "checkpoints:which", in a subprocess
    args = parser.parse_args(argv)
    if args.one:
        checkpoints, which = args.one.split(":")
        print(json.dumps(measure(int(checkpoints), which, args.repeat)))
        return 0
    mib = 2.0**20
    print(
        f"fit_phase_break, 3 lags, {args.repeat} timed calls each (fastest), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}"
    )
    print(
        f"{'checkpoints':>11} {'points':>6} {'fit':>9} {'seconds':>8} {'traced MiB':>10} "
        f"{'RSS MiB':>8} {'growth MiB':>10}"
    )
    ok = True
    for checkpoints in (int(c) for c in args.checkpoints.split(",")):
        rows = {which: run_one(checkpoints, which, args.repeat) for which in ("baseline", "new")}
        for which, r in rows.items():
            print(
                f"{checkpoints:>11} {r['points']:>6} {which:>9} {r['seconds']:8.3f} "
                f"{r['traced'] / mib:10.1f} {r['rss'] / mib:8.1f} "
                f"{r['growth'] / mib:10.1f}"
            )
        new, old = rows["new"], rows["baseline"]
        same = same_fit(new["fit"], old["fit"])
        ok &= same
        print(
            f"{'':>11} new / baseline: seconds {new['seconds'] / old['seconds']:.4f}"
            f", traced {new['traced'] / old['traced']:.4f}"
            f", RSS {new['rss'] / old['rss']:.3f}; same PhaseBreak: {same} "
            f"(step {new['fit']['step']}, range {new['fit']['low']}-{new['fit']['high']})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
