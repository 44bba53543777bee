"""Benchmark: ``conetool embed --method mds``'s SMACOF (:mod:`conetool.smacof`) against its
former code and against scikit-learn's, and the classical start both methods compute (all of
``--method pca``'s work) against its former code, measured in the same run.

The baselines: ``before``, ``benchmarks/baseline_smacof.py`` (``conetool/smacof.py`` as it was at
5f07b49: the stress summed pair by pair at every iteration, one thread); and ``sklearn``,
scikit-learn's ``MDS`` as ``embed_mds`` called it before either
(:func:`conetool.embedding._sklearn_mds`; only up to ``--sklearn-max`` kernels, it is slow).

For each size ``K`` the S matrix of ``K`` kernels along a synthetic trajectory: vectors of
``--dim`` entries (a ``sqrt(dim)`` square kernel, flattened) moving along a curve whose direction
drifts and whose speed falls a thousandfold over the run (training slowing down), with noise
at every step; S from :func:`conetool.geometry.distance_matrix` (``1 - <H, H'> / (|H| |H'|)``).
All start from the classical solution of ``sqrt(2 S)`` in ``--dims`` dimensions, with
``embed``'s settings (``max_iter`` 1000, ``eps`` 1e-9), in rotating order, ``--repeat`` times
each; the table has the median wall and CPU seconds, their ratios to ``before``, the iterations
each made, the Kruskal stress-1 of each result and the largest coordinate difference from
``before``'s (relative to its largest coordinate). The new code runs ``--threads`` threads
(its result is the same for any count); the baselines run as they did (BLAS limited to
``--threads``). The load average is printed before and after.

``--profile`` adds, per size, where scikit-learn's time goes: its loop body
(``sklearn.manifold._mds._smacof_single``, metric, as in 1.9) re-run with a timer around each
part for ``--profile-iters`` iterations from the same start: Euclidean distances, the ``B``
matrix (the zero distances, ``R = D / d``, ``B = -R`` plus its row sums on the diagonal), ``B X``,
the stress and the convergence check; milliseconds per iteration and shares.

The classical start, first (``--start-only``: nothing else): ``B = -C S C`` and its top
``--dims`` eigenpairs as :func:`conetool.embedding.embed_pca`'s dense path computes them (the
explained variance ratios and the refusal of an S not of kernels included; all of its work below
``LANCZOS_MIN_K`` kernels, ``benchmarks/bench_embed_parts.py`` times its ARPACK path from there
on), ``new``, against ``before``, the same from a full ``np.linalg.eigh``
(:func:`classical_before`, the code before :func:`conetool.embedding._top_eigenpairs`), in
rotating order, ``--repeat`` times each, BLAS limited to ``--threads``: median wall and CPU
seconds, their ratios, the largest coordinate difference (over the largest coordinate) and the
largest difference of the explained variance ratios.

Usage (a few minutes on 2 busy cores; the former start at 5,000 kernels takes most of a
minute a run, scikit-learn at 2,000 half a minute):

    python benchmarks/bench_embed.py --sizes 1000,2000,5000 --repeat 3
    python benchmarks/bench_embed.py --sizes 1000,2000,5000 --repeat 3 --start-only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from conetool.embedding import (
    MDS_EPS,
    MDS_MAX_ITER,
    _classical_from_b,
    _double_center,
    _orient,
    _refuse_indefinite,
    _sklearn_mds,
    mds_problem,
    stress1,
)
from conetool.geometry import distance_matrix
from conetool.smacof import smacof
from conetool.threads import limit_threads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baseline_smacof  # benchmarks/ is no package: found through sys.path above

METHODS = ("sklearn", "before", "new")


def trajectory_s(count: int, dim: int = 400, seed: int = 0) -> np.ndarray:
    """The ``(count, count)`` S matrix of ``count`` kernels of ``dim`` entries along a drifting
    curve: the speed falls a thousandfold (``0.05 (1e-3 + exp(-k / (0.1 count)))`` per step, a
    short Phase I and a slow drift, as the velocity of real runs falls 500-1500x), the
    direction turns by about 17 degrees per step, and each step has noise of half its length."""
    rng = np.random.default_rng(seed)
    kernels = np.empty((count, dim))
    position = rng.standard_normal(dim)
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    for k in range(count):
        direction += 0.3 * rng.standard_normal(dim) / np.sqrt(dim)
        direction /= np.linalg.norm(direction)
        speed = 0.05 * (1e-3 + np.exp(-k / (0.1 * count)))
        noise = 0.5 * speed * rng.standard_normal(dim) / np.sqrt(dim)
        position = position + speed * direction + noise
        kernels[k] = position
    return distance_matrix(lambda i: kernels[i], count)


def sklearn(d: np.ndarray, start: np.ndarray, threads: int) -> tuple[np.ndarray, int]:
    return _sklearn_mds(d, start, start.shape[1], 0)


def before(d: np.ndarray, start: np.ndarray, threads: int) -> tuple[np.ndarray, int]:
    result = baseline_smacof.smacof(d, start, max_iter=MDS_MAX_ITER, eps=MDS_EPS)
    return result.coords, result.n_iter


def new(d: np.ndarray, start: np.ndarray, threads: int) -> tuple[np.ndarray, int]:
    result = smacof(d, start, max_iter=MDS_MAX_ITER, eps=MDS_EPS, threads=threads)
    return result.coords, result.n_iter


CALLS = {"sklearn": sklearn, "before": before, "new": new}


def classical_before(s: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """``embed_pca``'s work as it was before ``_top_eigenpairs`` (f29fdab): the full
    ``np.linalg.eigh`` of ``B = -C S C``, ``(coords (K, dims), explained variance ratio)``."""
    b = _double_center(-s)
    b = 0.5 * (b + b.T)
    values, vectors = np.linalg.eigh(b)
    _refuse_indefinite(values)
    order = np.argsort(values)[::-1][:dims]
    top = np.clip(values[order], 0.0, None)
    coords = _orient(vectors[:, order] * np.sqrt(top))
    total = float(values[values > 0].sum())
    return coords, top / total if total > 0 else np.zeros_like(top)


def classical_new(s: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """``embed_pca``'s dense path (``_check``'s symmetrisation aside): all its work below
    ``LANCZOS_MIN_K`` kernels."""
    return _classical_from_b(_double_center(-s), dims, only_psd=True)


STARTS = {"before": classical_before, "new": classical_new}


def measure_start(s: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Median wall and CPU seconds of each classical start on ``s``, and the new one's
    differences from the former's coordinates and ratios."""
    runs: dict[str, list[tuple[float, float]]] = {which: [] for which in STARTS}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    names = list(STARTS)
    for r in range(args.repeat):
        for which in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[which] = STARTS[which](s, args.dims)
            runs[which].append((time.perf_counter() - wall, time.process_time() - cpu))
    (coords, ratio), (ref_coords, ref_ratio) = results["new"], results["before"]
    return {
        "wall": {w: statistics.median(t[0] for t in runs[w]) for w in STARTS},
        "cpu": {w: statistics.median(t[1] for t in runs[w]) for w in STARTS},
        "diff": float(np.max(np.abs(coords - ref_coords)) / np.max(np.abs(ref_coords))),
        "ratio_diff": float(np.max(np.abs(ratio - ref_ratio))),
        "ratio": ref_ratio,
    }


def report_starts(sizes: list[int], args: argparse.Namespace) -> bool:
    """Print the classical starts' table; whether the new start equals the former to 1e-9."""
    print(
        f"classical start (B = -C S C, top {args.dims} eigenpairs, ratios, refusal check): "
        "before (full np.linalg.eigh) against new (_top_eigenpairs)"
    )
    print(
        f"{'K':>5} {'start':>8} {'wall s':>8} {'cpu s':>8} {'wall x':>7} {'cpu x':>7} "
        f"{'max |dx|':>9} {'max |dr|':>9}  ratios"
    )
    same = True
    for count in sizes:
        row = measure_start(trajectory_s(count, args.dim), args)
        for which in STARTS:
            wall, cpu = row["wall"][which], row["cpu"][which]
            if which == "before":
                rest = f"{'':>7} {'':>7} {'':>9} {'':>9}  " + " ".join(
                    f"{x:.6f}" for x in row["ratio"]
                )
            else:
                rest = (
                    f"{wall / row['wall']['before']:7.3f} {cpu / row['cpu']['before']:7.3f} "
                    f"{row['diff']:9.1e} {row['ratio_diff']:9.1e}"
                )
            print(f"{count:>5} {which:>8} {wall:8.3f} {cpu:8.3f} {rest}", flush=True)
        same = same and row["diff"] < 1e-9 and row["ratio_diff"] < 1e-12
    print(f"same coordinates (to 1e-9 of their scale) and ratios (to 1e-12): {same}\n")
    return same


def timed(call: Callable[[], tuple[np.ndarray, int]]) -> tuple[float, float, np.ndarray, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    coords, n_iter = call()
    return time.perf_counter() - wall, time.process_time() - cpu, coords, n_iter


def profile_sklearn(d: np.ndarray, start: np.ndarray, iterations: int) -> dict[str, float]:
    """Seconds per iteration of each part of scikit-learn's metric SMACOF loop body."""
    from sklearn.metrics import euclidean_distances

    n = d.shape[0]
    x = start.copy()
    parts = {"distances": 0.0, "B matrix": 0.0, "B X": 0.0, "stress+check": 0.0}
    distances = euclidean_distances(x)
    old_stress = None
    for _ in range(iterations):
        t0 = time.perf_counter()
        distances[distances == 0] = 1e-5
        ratio = d / distances
        b = -ratio
        b[np.arange(len(b)), np.arange(len(b))] += ratio.sum(axis=1)
        t1 = time.perf_counter()
        x = 1.0 / n * np.dot(b, x)
        t2 = time.perf_counter()
        distances = euclidean_distances(x)
        t3 = time.perf_counter()
        stress = ((distances.ravel() - d.ravel()) ** 2).sum() / 2
        if old_stress is not None:
            sum_squared_distances = (distances.ravel() ** 2).sum()
            _ = ((old_stress - stress) / (sum_squared_distances / 2)) < MDS_EPS
        old_stress = stress
        t4 = time.perf_counter()
        parts["B matrix"] += t1 - t0
        parts["B X"] += t2 - t1
        parts["distances"] += t3 - t2
        parts["stress+check"] += t4 - t3
    return {k: v / iterations for k, v in parts.items()}


def measure(count: int, args: argparse.Namespace) -> dict[str, Any]:
    d, start = mds_problem(trajectory_s(count, args.dim), args.dims)
    methods = [m for m in METHODS if m != "sklearn" or count <= args.sklearn_max]
    runs: dict[str, list[tuple[float, float, np.ndarray, int]]] = {m: [] for m in methods}
    for r in range(args.repeat):
        for which in methods[r % len(methods) :] + methods[: r % len(methods)]:
            call = CALLS[which]
            runs[which].append(timed(lambda call=call: call(d, start, args.threads)))
    row: dict[str, Any] = {"K": count, "methods": methods}
    for which, results in runs.items():
        row[which] = {
            "wall": statistics.median(r[0] for r in results),
            "cpu": statistics.median(r[1] for r in results),
            "iters": results[-1][3],
            "stress1": stress1(results[-1][2], d),
            "coords": results[-1][2],
        }
    reference = row["before"]["coords"]
    scale = np.max(np.abs(reference))
    for which in methods:
        row[which]["diff"] = float(np.max(np.abs(row[which]["coords"] - reference)) / scale)
    if args.profile and "sklearn" in methods:
        row["profile"] = profile_sklearn(d, start, min(args.profile_iters, row["sklearn"]["iters"]))
    return row


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,2000,5000", help="comma-separated kernel counts K")
    parser.add_argument("--dims", type=int, default=2, help="embedding dimensions (2 or 3)")
    parser.add_argument("--dim", type=int, default=400, help="entries per synthetic kernel")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median shown)")
    parser.add_argument("--threads", type=int, default=1, help="threads (limit_threads; new's)")
    parser.add_argument(
        "--sklearn-max", type=int, default=2000, help="largest K scikit-learn runs at"
    )
    parser.add_argument("--profile", action="store_true", help="where scikit-learn's time goes")
    parser.add_argument("--profile-iters", type=int, default=20, help="iterations profiled")
    parser.add_argument(
        "--start-only", action="store_true", help="only the classical starts, no SMACOF"
    )
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.sizes.split(",")]
    if args.start_only:
        print(
            f"embed: the classical start, dims {args.dims}, kernels of {args.dim} entries, median "
            f"of {args.repeat}, threads {args.threads} (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), commit {_commit()}, load average "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        )
        with limit_threads(args.threads):
            for start in STARTS.values():  # warm-up: SciPy's import, first calls
                start(trajectory_s(20, args.dim), args.dims)
            same_start = report_starts(sizes, args)
        print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return 0 if same_start else 1
    print(
        f"embed --method mds: SMACOF, max_iter {MDS_MAX_ITER}, eps {MDS_EPS:g}, dims {args.dims}, "
        f"kernels of {args.dim} entries, median of {args.repeat}, threads {args.threads} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), commit {_commit()}, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    header = (
        f"{'K':>5} {'method':>8} {'wall s':>8} {'cpu s':>8} {'wall x':>7} {'cpu x':>7} "
        f"{'iters':>5} {'ms/iter':>8} {'stress-1':>10} {'max |dx|':>9}"
    )
    rows = []
    with limit_threads(args.threads):
        d, start = mds_problem(trajectory_s(20, args.dim), args.dims)
        for call in CALLS.values():  # warm-up: scikit-learn's imports, first calls
            call(d, start, args.threads)
        same_start = report_starts(sizes, args)
        print("SMACOF (x: against before; max |dx|: from before's coordinates, over their largest)")
        print(header)
        for count in sizes:
            row = measure(count, args)
            rows.append(row)
            base = row["before"]
            for which in row["methods"]:
                r = row[which]
                ratios = (
                    f"{r['wall'] / base['wall']:7.3f} {r['cpu'] / base['cpu']:7.3f}"
                    if which != "before"
                    else f"{'':>7} {'':>7}"
                )
                diff = f"{r['diff']:9.1e}" if which != "before" else f"{'':>9}"
                print(
                    f"{count:>5} {which:>8} {r['wall']:8.3f} {r['cpu']:8.3f} {ratios} "
                    f"{r['iters']:>5} {1e3 * r['wall'] / r['iters']:8.2f} {r['stress1']:10.6f} "
                    f"{diff}",
                    flush=True,
                )
    profiled = [row for row in rows if "profile" in row]
    if profiled:
        print("\nscikit-learn's loop body, ms per iteration (share):")
        parts = list(profiled[0]["profile"])
        print(f"{'K':>5} " + " ".join(f"{p:>18}" for p in parts) + f" {'total':>8}")
        for row in profiled:
            prof = row["profile"]
            total = sum(prof.values())
            cells = " ".join(f"{1e3 * prof[p]:9.2f} ({prof[p] / total:4.0%})" for p in parts)
            print(f"{row['K']:>5} {cells} {1e3 * total:8.2f}")
    same = all(
        row[m]["iters"] == row["before"]["iters"] and row[m]["diff"] < 1e-9
        for row in rows
        for m in row["methods"]
    )
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"same iterations and coordinates (to 1e-9 of their scale): {same}")
    return 0 if same and same_start else 1


if __name__ == "__main__":
    raise SystemExit(main())
