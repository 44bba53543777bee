"""Benchmark: three parts of ``conetool embed`` against their former code, measured in the same run.

- ``start``: the classical start of ``--method mds`` (``B = -C S C``, then coordinates from its
  top ``--dims`` eigenpairs; :func:`conetool.embedding._classical_coords`, ``new``: ARPACK's
  Lanczos from ``LANCZOS_MIN_K`` kernels on, checked, else the dense path) against ``before``,
  the dense path alone (:func:`conetool.embedding._classical_from_b`: one tridiagonal reduction,
  the code of the start before :mod:`conetool.lanczos_top`). ``path`` says which ``new`` took;
  ``max |dx|`` is the largest coordinate difference over the largest coordinate. Two S matrices
  per size: ``trajectory``, the kernels along a drifting curve of ``benchmarks/bench_embed.py``
  (top eigenvalues well apart, as for real runs), and ``random``, kernels drawn at random around
  a common one (a flat spectrum: Lanczos converges slowly, so this shows what a fall-back to the
  dense path costs).
- ``pca``: all of ``--method pca``'s work on ``B`` (coordinates, explained variance ratios and
  the refusal of an S not of kernels; :func:`conetool.embedding._pca_from_b`, ``new``: ARPACK's
  top eigenpairs and the bound of :mod:`conetool.negative_bound` from ``LANCZOS_MIN_K`` kernels
  on, else the dense path) against ``before``, the dense path alone
  (:func:`conetool.embedding._classical_from_b` with ``only_psd``, the code before), on the same
  two S matrices; ``max |dx|`` as for the start, ``ratios`` the largest relative difference of
  the explained variance ratios.
- ``stress1``: :func:`conetool.embedding.stress1` (``new``: pair differences in blocks) against
  ``before``, :func:`stress1_before` (the ``(K, K, dims)`` differences at once, the code before),
  on the start's coordinates and ``sqrt(2 S)``; ``rel diff`` is their relative difference, and
  ``peak MB`` the largest memory NumPy held during one call (``tracemalloc``, a separate call).

Each is run ``--repeat`` times in alternating order, BLAS limited to ``--threads``; the table has
the median wall and CPU seconds and their ratios to ``before``. Exit status 0 when every ``new``
agrees with ``before`` (coordinates to 1e-8 of their scale, up to the sign of each axis, the pca
ratios to ``RATIO_TOLERANCE`` (1e-9) relative, stress to 1e-12 relative).

Usage:

    OMP_NUM_THREADS=1 python benchmarks/bench_embed_parts.py --sizes 1000,5000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from conetool.embedding import (
    LANCZOS_MIN_K,
    RATIO_TOLERANCE,
    _classical_coords,
    _classical_from_b,
    _double_center,
    _pca_by_lanczos,
    _pca_from_b,
    stress1,
)
from conetool.geometry import distance_matrix
from conetool.lanczos_top import lanczos_top
from conetool.threads import limit_threads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import _commit, trajectory_s  # benchmarks/ is no package: found through sys.path


def random_s(count: int, dim: int = 400, seed: int = 0) -> np.ndarray:
    """The S matrix of ``count`` kernels of ``dim`` entries drawn at random around a common one."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim)
    kernels = 0.5 * common + rng.standard_normal((count, dim))
    return distance_matrix(lambda i: kernels[i], count)


def stress1_before(coords: np.ndarray, d: np.ndarray) -> float:
    """``stress1`` as it was: every difference in one ``(K, K, dims)`` array."""
    diff = coords[:, None, :] - coords[None, :, :]
    fitted = np.sqrt(np.sum(diff * diff, axis=-1))
    iu = np.triu_indices(d.shape[0], k=1)
    denom = float(np.sum(d[iu] ** 2))
    if denom == 0.0:
        return 0.0
    return float(np.sqrt(np.sum((fitted[iu] - d[iu]) ** 2) / denom))


def start_before(b: np.ndarray, dims: int) -> np.ndarray:
    return _classical_from_b(b, dims)[0]


def pca_before(b: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """``embed_pca``'s work on ``B`` before the ARPACK path: the dense path with the refusal."""
    return _classical_from_b(b, dims, only_psd=True)


def _coordinate_diff(got: np.ndarray, want: np.ndarray) -> float:
    """The largest coordinate difference, up to the sign of each axis, over the largest one."""
    scale = max(float(np.max(np.abs(want))), 1e-300)
    signs = np.sign(np.sum(got * want, axis=0))
    return float(np.max(np.abs(got * signs - want))) / scale


def _timed(calls: dict[str, Callable[[], Any]], repeat: int) -> dict[str, Any]:
    """Median wall and CPU seconds of each call, in rotating order; the last results."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    results: dict[str, Any] = {}
    names = list(calls)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = calls[name]()
            runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        "wall": {n: statistics.median(t[0] for t in runs[n]) for n in calls},
        "cpu": {n: statistics.median(t[1] for t in runs[n]) for n in calls},
        "results": results,
    }


def _peak_mb(call: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _ratios(row: dict[str, Any]) -> str:
    wall, cpu = row["wall"], row["cpu"]
    return f"{wall['new'] / wall['before']:7.3f} {cpu['new'] / cpu['before']:7.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="500,5000", help="comma-separated kernel counts K")
    parser.add_argument("--dims", type=int, default=2, help="embedding dimensions (1, 2 or 3)")
    parser.add_argument("--dim", type=int, default=400, help="entries per synthetic kernel")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median shown)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (limit_threads)")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.sizes.split(",")]
    print(
        f"embed parts: dims {args.dims}, kernels of {args.dim} entries, median of {args.repeat}, "
        f"threads {args.threads} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"LANCZOS_MIN_K {LANCZOS_MIN_K}, commit {_commit()}, load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    same = True
    with limit_threads(args.threads):
        warm = _double_center(-trajectory_s(20, args.dim))  # SciPy's imports, first calls
        start_before(warm, args.dims)
        _classical_coords(warm, args.dims)
        lanczos_top(warm, args.dims)
        _pca_by_lanczos(warm, args.dims)
        print(
            f"{'K':>5} {'S':>10} {'part':>7} {'before s':>9} {'new s':>8} {'wall x':>7} "
            f"{'cpu x':>7}  details"
        )
        for count in sizes:
            for name, make in (("trajectory", trajectory_s), ("random", random_s)):
                s = make(count, args.dim)
                b = _double_center(-s)
                row = _timed(
                    {
                        "before": lambda b=b: start_before(b, args.dims),
                        "new": lambda b=b: _classical_coords(b, args.dims),
                    },
                    args.repeat,
                )
                want, got = row["results"]["before"], row["results"]["new"]
                diff = _coordinate_diff(got, want)
                path = "dense"
                if count >= LANCZOS_MIN_K:
                    found = lanczos_top(0.5 * (b + b.T), args.dims)
                    path = "fallback" if found is None else "lanczos"
                print(
                    f"{count:>5} {name:>10} {'start':>7} {row['wall']['before']:9.3f} "
                    f"{row['wall']['new']:8.3f} {_ratios(row)}  path {path}, max |dx| "
                    f"{diff:.1e}",
                    flush=True,
                )
                same = same and diff < 1e-8
                row = _timed(
                    {
                        "before": lambda b=b: pca_before(b, args.dims),
                        "new": lambda b=b: _pca_from_b(b, args.dims),
                    },
                    args.repeat,
                )
                (want_x, want_r), (got_x, got_r) = row["results"]["before"], row["results"]["new"]
                diff = _coordinate_diff(got_x, want_x)
                ratios = float(np.max(np.abs(got_r / want_r - 1.0)))
                path = "dense"
                if count >= LANCZOS_MIN_K:
                    path = "fallback" if _pca_by_lanczos(b, args.dims) is None else "lanczos"
                print(
                    f"{count:>5} {name:>10} {'pca':>7} {row['wall']['before']:9.3f} "
                    f"{row['wall']['new']:8.3f} {_ratios(row)}  path {path}, max |dx| "
                    f"{diff:.1e}, ratios {ratios:.1e}",
                    flush=True,
                )
                same = same and diff < 1e-8 and ratios <= RATIO_TOLERANCE
                if name != "trajectory":
                    continue
                d = np.sqrt(2.0 * np.clip(s, 0.0, None))
                np.fill_diagonal(d, 0.0)
                row = _timed(
                    {
                        "before": lambda d=d, x=got: stress1_before(x, d),
                        "new": lambda d=d, x=got: stress1(x, d),
                    },
                    args.repeat,
                )
                old, new = row["results"]["before"], row["results"]["new"]
                rel = abs(new - old) / old if old else abs(new)
                peaks = [
                    _peak_mb(lambda f=f, d=d, x=got: f(x, d)) for f in (stress1_before, stress1)
                ]
                print(
                    f"{count:>5} {name:>10} {'stress1':>7} {row['wall']['before']:9.3f} "
                    f"{row['wall']['new']:8.3f} {_ratios(row)}  stress {new:.6f}, rel diff "
                    f"{rel:.1e}, peak MB {peaks[0]:.1f} -> {peaks[1]:.1f}",
                    flush=True,
                )
                same = same and rel < 1e-12
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        "same start and pca (coordinates to 1e-8 of their scale, up to axis signs; ratios to "
        f"{RATIO_TOLERANCE:.0e}) and stress1 (to 1e-12): {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
