"""Benchmark: the analysis commands' PNG figures, written by :func:`conetool.plots.save.render_png`
(the layout alone, then one draw) against matplotlib's ``fig.savefig`` (the baseline, as
``save_figure`` wrote PNGs before: a whole draw with rendering off to run the constrained
layout, then the draw that renders), measured in the same run.

The figures are those ``conetool distance``, ``spectrum`` and ``embed`` make of a store: a
tiny ``conetool demo`` run in a temporary folder (``--steps`` steps, a probe set of 10, on the
CPU; about 10 s), or ``--store PATH``. Each command runs once with its figure functions wrapped
to record their arguments; then, ``--repeat`` times in alternating order, each way builds every
figure afresh (as the commands do) and writes it as a PNG to memory. The table has each
figure's median wall and CPU milliseconds (building and writing), the new way's CPU ratio to
the baseline (of the medians, and of the fastest runs: on a busy machine the steadier), and whether the two PNGs have the same pixels (decoded with Pillow). Below it, the
three commands' own wall and CPU seconds with ``save_figure`` writing each way (alternating, the
median of ``--repeat``). ``--phases`` adds where the new way's CPU time goes, per figure:
building it, the layout, the draw and the PNG encoding.

``--reruns``: a rerun of ``distance``, ``spectrum``, ``embed`` and ``report`` on the same store,
as it is now (:func:`conetool.plots.save.write_figure` finds each PNG already holds its figure
and draws nothing) against the old path (every figure drawn again: ``recorded_key`` made to find
no key), alternating, in the same run: each command's median wall and CPU seconds and the CPU
ratio, and the CPU seconds of the figures' functions in the old path.

Usage (about a minute on 2 busy cores):

    python benchmarks/bench_figures.py --repeat 5 --phases
    python benchmarks/bench_figures.py --repeat 5 --reruns
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

import conetool.plots.save as save_module
from conetool.pipeline import (
    demo,
    distance,
    distance_outputs,
    embed,
    report,
    run_embed,
    run_report,
    run_spectrum,
    spectrum,
)
from conetool.threads import limit_threads

#: The figure functions the three commands call, by the module that calls them.
FIGURE_FUNCTIONS = {
    distance_outputs: (
        "distance_to_reference_figure",
        "adjacent_figure",
        "matrix_figure",
        "per_layer_figure",
    ),
    run_spectrum: ("spectrum_figure",),
    run_embed: ("embedding_figure",),
}
COMMANDS: dict[str, Callable[[Path], Any]] = {
    "distance": distance,
    "spectrum": spectrum,
    "embed": embed,
}
DPI = 150
RENDER_PNG = save_module.render_png


def baseline(fig: Figure, target: io.BytesIO) -> None:
    fig.savefig(target, format="png", dpi=DPI)


def new(fig: Figure, target: io.BytesIO) -> None:
    RENDER_PNG(fig, target, dpi=DPI)


WAYS = {"savefig": baseline, "new": new}
FigureCall = tuple[str, Callable[..., Figure], tuple[Any, ...], dict[str, Any]]


def record_figures(store: Path) -> list[FigureCall]:
    """Run the three commands on ``store`` with their figure functions wrapped: the calls."""
    calls: list[FigureCall] = []
    saved: list[tuple[Any, str, Any]] = []
    for module, names in FIGURE_FUNCTIONS.items():
        for name in names:
            function = getattr(module, name)

            def wrapped(*args: Any, _f: Any = function, _n: str = name, **kwargs: Any) -> Figure:
                calls.append((_n, _f, args, kwargs))
                return _f(*args, **kwargs)

            saved.append((module, name, function))
            setattr(module, name, wrapped)
    try:
        for command in COMMANDS.values():
            command(store)
    finally:
        for module, name, function in saved:
            setattr(module, name, function)
    return calls


@contextmanager
def png_writer(way: Callable[[Figure, io.BytesIO], None]) -> Iterator[None]:
    """``save_figure`` writing PNGs ``way`` for the duration. The PNGs it writes record no key
    (``metadata`` is dropped), so that each command run under it draws every figure again."""

    def render(fig: Figure, target: Any, *, dpi: int = DPI, metadata: Any = None) -> None:
        way(fig, target)

    save_module.render_png = render  # type: ignore[assignment]
    try:
        yield
    finally:
        save_module.render_png = RENDER_PNG


def timed(call: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def figure_rows(calls: list[FigureCall], repeat: int) -> list[dict[str, Any]]:
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    images: dict[tuple[str, str], bytes] = {}
    for r in range(repeat):
        order = list(WAYS) if r % 2 == 0 else list(reversed(WAYS))
        for way in order:
            for name, function, args, kwargs in calls:
                buffer = io.BytesIO()
                write = WAYS[way]
                elapsed = timed(lambda: write(function(*args, **kwargs), buffer))  # noqa: B023
                times.setdefault((name, way), []).append(elapsed)
                images[(name, way)] = buffer.getvalue()
    rows = []
    for name, *_ in calls:
        old, fresh = pixels(images[(name, "savefig")]), pixels(images[(name, "new")])
        rows.append(
            {
                "figure": name,
                "pixels": f"{old.shape[1]}x{old.shape[0]}",
                "same": old.shape == fresh.shape and bool(np.array_equal(old, fresh)),
                **{
                    f"{way} {kind}": statistics.median(t[i] for t in times[(name, way)])
                    for way in WAYS
                    for i, kind in enumerate(("wall", "cpu"))
                },
                **{f"{way} min cpu": min(t[1] for t in times[(name, way)]) for way in WAYS},
            }
        )
    return rows


def command_rows(store: Path, repeat: int) -> dict[tuple[str, str], tuple[float, float]]:
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in range(repeat):
        order = list(WAYS) if r % 2 == 0 else list(reversed(WAYS))
        for way in order:
            with png_writer(WAYS[way]):
                for command, run in COMMANDS.items():
                    times.setdefault((command, way), []).append(timed(lambda: run(store)))  # noqa: B023
    return {
        key: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
        for key, ts in times.items()
    }


def phase_rows(calls: list[FigureCall], repeat: int) -> dict[str, dict[str, float]]:
    """Median CPU seconds of each part of writing each figure the new way: building it, the
    constrained layout, the one draw, and the PNG encoding (Pillow on the drawn pixels, as
    matplotlib's ``print_png`` does)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    parts: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeat):
        for name, function, args, kwargs in calls:
            clock = [time.process_time()]

            def lap(part: str, _name: str = name, _clock: list[float] = clock) -> None:
                now = time.process_time()
                parts.setdefault(_name, {}).setdefault(part, []).append(now - _clock[0])
                _clock[0] = now

            fig = function(*args, **kwargs)
            lap("build")
            canvas = FigureCanvasAgg(fig)
            fig.dpi = DPI
            engine = fig.get_layout_engine()
            if engine is not None:
                engine.execute(fig)
            fig.set_layout_engine(None)
            lap("layout")
            canvas.draw()
            lap("draw")
            Image.fromarray(np.asarray(canvas.buffer_rgba())).save(io.BytesIO(), format="png")
            lap("encode")
    return {
        name: {part: statistics.median(seconds) for part, seconds in by_part.items()}
        for name, by_part in parts.items()
    }


def print_phase_rows(phases: dict[str, dict[str, float]]) -> None:
    names = ["build", "layout", "draw", "encode"]
    print(f"{'figure':>28} " + " ".join(f"{p + ' ms':>15}" for p in names))
    for figure, by_part in phases.items():
        total = sum(by_part.values())
        cells = " ".join(f"{1e3 * by_part[p]:7.1f} ({by_part[p] / total:4.0%})" for p in names)
        print(f"{figure:>28} {cells}")


def print_figure_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'figure':>28} {'pixels':>9} {'savefig ms':>10} {'cpu ms':>7} {'new ms':>7} "
        f"{'cpu ms':>7} {'cpu x':>6} {'min x':>6} {'same pixels':>11}"
    )
    for row in rows:
        print(
            f"{row['figure']:>28} {row['pixels']:>9} {1e3 * row['savefig wall']:10.1f} "
            f"{1e3 * row['savefig cpu']:7.1f} {1e3 * row['new wall']:7.1f} "
            f"{1e3 * row['new cpu']:7.1f} {row['new cpu'] / row['savefig cpu']:6.3f} "
            f"{row['new min cpu'] / row['savefig min cpu']:6.3f} {row['same']!s:>11}"
        )
    total = {k: sum(row[k] for row in rows) for k in rows[0] if k.endswith("cpu")}
    print(
        f"{'all':>28} {'':>9} {'':>10} {1e3 * total['savefig cpu']:7.1f} {'':>7} "
        f"{1e3 * total['new cpu']:7.1f} {total['new cpu'] / total['savefig cpu']:6.3f} "
        f"{total['new min cpu'] / total['savefig min cpu']:6.3f}"
    )


def print_command_rows(commands: dict[tuple[str, str], tuple[float, float]]) -> None:
    print(f"{'command':>10} {'savefig s':>9} {'cpu s':>7} {'new s':>7} {'cpu s':>7} {'cpu x':>6}")
    for command in COMMANDS:
        (old_wall, old_cpu) = commands[(command, "savefig")]
        (new_wall, new_cpu) = commands[(command, "new")]
        print(
            f"{command:>10} {old_wall:9.3f} {old_cpu:7.3f} {new_wall:7.3f} {new_cpu:7.3f} "
            f"{new_cpu / old_cpu:6.3f}"
        )


RERUN_COMMANDS: dict[str, Callable[[Path], Any]] = {**COMMANDS, "report": report}
RECORDED_KEY = save_module.recorded_key


@contextmanager
def figures_timed(cpu: list[float]) -> Iterator[None]:
    """The figure functions of the four commands, wrapped to add their CPU seconds to
    ``cpu[0]`` (building the figure; writing it is timed by ``save_figure``'s wrapper)."""
    saved: list[tuple[Any, str, Any]] = []
    wrapped_modules = {**FIGURE_FUNCTIONS, run_report: ("training_curves_figure",)}
    targets = [(m, n) for m, names in wrapped_modules.items() for n in names]
    targets.append((save_module, "save_figure"))
    for module, name in targets:
        function = getattr(module, name)

        @functools.wraps(function)  # its module and name: the figure's key is unchanged
        def wrapped(*args: Any, _f: Any = function, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return _f(*args, **kwargs)
            finally:
                cpu[0] += time.process_time() - start

        saved.append((module, name, function))
        setattr(module, name, wrapped)
    try:
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)


def rerun_rows(store: Path, repeat: int) -> dict[str, dict[str, float]]:
    """Each command rerun on ``store``: the median wall and CPU seconds with the figures reused
    (``reuse``) and with every figure drawn again (``redraw``, the old path), alternating; and
    the median CPU seconds in the figure functions and ``save_figure`` in the old path."""
    for run in RERUN_COMMANDS.values():
        run(store)  # the PNGs record their keys (a store made before did not)
    times: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for r in range(repeat):
        order = ["reuse", "redraw"] if r % 2 == 0 else ["redraw", "reuse"]
        for way in order:
            if way == "redraw":
                save_module.recorded_key = lambda path: None  # type: ignore[assignment]
            try:
                for command, run in RERUN_COMMANDS.items():
                    drawing = [0.0]
                    with figures_timed(drawing):
                        wall, cpu = timed(lambda: run(store))  # noqa: B023
                    times.setdefault((command, way), []).append((wall, cpu, drawing[0]))
            finally:
                save_module.recorded_key = RECORDED_KEY
    return {
        f"{command} {way}": {
            part: statistics.median(t[i] for t in ts)
            for i, part in enumerate(("wall", "cpu", "figures"))
        }
        for (command, way), ts in times.items()
    }


def print_rerun_rows(rows: dict[str, dict[str, float]]) -> None:
    print(
        f"{'rerun':>10} {'redraw s':>9} {'cpu s':>7} {'figures':>8} {'share':>6} "
        f"{'reuse s':>8} {'cpu s':>7} {'cpu x':>6}"
    )
    for command in RERUN_COMMANDS:
        old, new = rows[f"{command} redraw"], rows[f"{command} reuse"]
        print(
            f"{command:>10} {old['wall']:9.3f} {old['cpu']:7.3f} {old['figures']:8.3f} "
            f"{old['figures'] / old['cpu']:6.0%} {new['wall']:8.3f} {new['cpu']:7.3f} "
            f"{new['cpu'] / old['cpu']:6.3f}"
        )
    old_cpu = sum(rows[f"{c} redraw"]["cpu"] for c in RERUN_COMMANDS)
    new_cpu = sum(rows[f"{c} reuse"]["cpu"] for c in RERUN_COMMANDS)
    print(
        f"{'all':>10} {'':>9} {old_cpu:7.3f} {'':>8} {'':>6} {'':>8} {new_cpu:7.3f} "
        f"{new_cpu / old_cpu:6.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="an existing store (default: a tiny demo)")
    parser.add_argument("--steps", type=int, default=24, help="the demo's training steps")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each way (median shown)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (limit_threads)")
    parser.add_argument("--phases", action="store_true", help="where the new way's time goes")
    parser.add_argument(
        "--reruns", action="store_true", help="only: reruns reusing the PNGs against redrawing"
    )
    args = parser.parse_args(argv)
    with limit_threads(args.threads), tempfile.TemporaryDirectory() as folder:
        store = args.store
        if store is None:
            made = demo(Path(folder) / "out", device="cpu", steps=args.steps, probe_size=10)
            store = made.store
        where = store if args.store else f"a demo of {args.steps} steps"
        if args.reruns:
            print(
                f"reruns of distance, spectrum, embed and report on {where}, median of "
                f"{args.repeat}; load average {os.getloadavg()[0]:.2f} at the start"
            )
            print_rerun_rows(rerun_rows(store, args.repeat))
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
            return 0
        calls = record_figures(store)
        print(
            f"PNG figures of distance, spectrum and embed on {where}, {DPI} dpi, median of "
            f"{args.repeat}; load average {os.getloadavg()[0]:.2f} at the start"
        )
        rows = figure_rows(calls, args.repeat)
        print_figure_rows(rows)
        print()
        print_command_rows(command_rows(store, args.repeat))
        if args.phases:
            print("\nthe new way by part, CPU ms (share):")
            print_phase_rows(phase_rows(calls, args.repeat))
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
    same = all(row["same"] for row in rows)
    print(f"same pixels in every figure: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
