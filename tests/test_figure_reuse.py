"""A rerun draws a PNG figure again only when something it shows could differ
(conetool.plots.write_figure, the key of conetool.plots.figure_key): its data, its options, the
plot code, matplotlib's settings, conetool's version; a missing, truncated or damaged file."""

from __future__ import annotations

import functools
import re
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from synthetic_store import make_store
from test_output_mutants import add_probe_and_eval, random_kernels
from tiny_run import run_fixtures
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.pipeline import (
    distance,
    distance_outputs,
    embed,
    kernels,
    report,
    run_embed,
    run_report,
    run_spectrum,
    spectrum,
)

STEPS = [0, 5, 10, 20, 40]
trained, run = run_fixtures()


def line_figure(y: Any, *, title: str = "") -> Figure:
    """A small figure (the drawing function the unit tests write)."""
    fig = Figure(figsize=(2.0, 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(np.asarray(y, dtype=float))
    ax.set_title(title)
    return fig


@pytest.fixture
def drawn(monkeypatch) -> Counter[str]:
    """How many times each figure function of the pipeline was called, by name (each still
    draws: it is wrapped, with its own module and name, so that its key is as in a real run)."""
    calls: Counter[str] = Counter()
    for module, name in (
        (distance_outputs, "distance_to_reference_figure"),
        (distance_outputs, "adjacent_figure"),
        (distance_outputs, "matrix_figure"),
        (run_embed, "embedding_figure"),
        (run_spectrum, "spectrum_figure"),
        (run_report, "training_curves_figure"),
    ):
        function = getattr(module, name)

        @functools.wraps(function)
        def counted(*args: Any, _f: Any = function, _n: str = name, **kwargs: Any) -> Figure:
            calls[_n] += 1
            return _f(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return calls


def counting(calls: list[Any]) -> Any:
    @functools.wraps(line_figure)
    def draw(*args: Any, **kwargs: Any) -> Figure:
        calls.append(args)
        return line_figure(*args, **kwargs)

    return draw


# --- write_figure ---------------------------------------------------------------------------


def test_the_same_figure_is_drawn_once_and_its_file_left_as_it_is(tmp_path):
    from conetool.plots import write_figure

    calls: list[Any] = []
    draw, target = counting(calls), tmp_path / "f.png"
    assert write_figure(target, draw, [1.0, 2.0, 4.0], title="a") == target
    first = target.read_bytes()
    assert write_figure(target, draw, [1.0, 2.0, 4.0], title="a") == target
    assert write_figure(target, draw, np.array([1.0, 2.0, 4.0]), title="a") == target
    assert len(calls) == 2  # the array is another argument than the list: drawn again
    write_figure(target, draw, np.array([1.0, 2.0, 4.0]), title="a")
    assert len(calls) == 2
    assert target.read_bytes()[:8] == first[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (([1.0, 2.0, 5.0],), {"title": "a"}),  # another value
        (([1.0, 2.0],), {"title": "a"}),  # fewer values
        (([1, 2, 4],), {"title": "a"}),  # ints, not floats
        (([1.0, 2.0, 4.0],), {"title": "b"}),  # another option
        (([1.0, 2.0, 4.0],), {}),  # the option left to its default
    ],
)
def test_another_argument_or_option_draws_again(tmp_path, args, kwargs):
    from conetool.plots import write_figure

    calls: list[Any] = []
    draw, target = counting(calls), tmp_path / "f.png"
    write_figure(target, draw, [1.0, 2.0, 4.0], title="a")
    write_figure(target, draw, *args, **kwargs)
    assert len(calls) == 2


def test_mappings_are_keyed_in_their_order(tmp_path):
    from conetool.plots.figure_key import figure_key

    one = figure_key(line_figure, ({1: [1.0], 2: [2.0]},), {}, dpi=150)
    other = figure_key(line_figure, ({2: [2.0], 1: [1.0]},), {}, dpi=150)
    assert one is not None and other is not None and one != other
    assert figure_key(line_figure, ([1.0],), {}, dpi=150) != figure_key(
        line_figure, ([1.0],), {}, dpi=300
    )


@pytest.mark.parametrize("damage", ["missing", "truncated", "a flipped bit", "no key", "not png"])
def test_a_missing_damaged_or_unkeyed_file_is_drawn_again(tmp_path, damage):
    from conetool.plots import save_figure, write_figure
    from conetool.plots.figure_key import recorded_key

    calls: list[Any] = []
    draw, target = counting(calls), tmp_path / "f.png"
    write_figure(target, draw, [1.0, 2.0, 4.0])
    data = target.read_bytes()
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":  # as a copy that stopped part way
        target.write_bytes(data[: len(data) - 30])
    elif damage == "a flipped bit":
        changed = bytearray(data)
        changed[len(data) // 2] ^= 0x10
        target.write_bytes(bytes(changed))
    elif damage == "no key":  # as conetool wrote PNGs before
        save_figure(line_figure([1.0, 2.0, 4.0]), target)
    else:
        target.write_text("not a PNG")
    assert recorded_key(target) is None
    write_figure(target, draw, [1.0, 2.0, 4.0])
    assert len(calls) == 2
    assert recorded_key(target) is not None


def test_conetool_version_plot_code_and_matplotlib_settings_draw_again(tmp_path, monkeypatch):
    from conetool.plots import figure_key, write_figure

    calls: list[Any] = []
    draw, target = counting(calls), tmp_path / "f.png"
    write_figure(target, draw, [1.0, 2.0])
    monkeypatch.setattr(figure_key, "__version__", "0.0.0-other")
    write_figure(target, draw, [1.0, 2.0])
    assert len(calls) == 2
    monkeypatch.setattr(figure_key, "_plot_code", lambda: "other plot code")
    write_figure(target, draw, [1.0, 2.0])
    assert len(calls) == 3
    with matplotlib.rc_context({"lines.linewidth": 4.0}):
        write_figure(target, draw, [1.0, 2.0])
    assert len(calls) == 4
    write_figure(target, draw, [1.0, 2.0])  # settings back: another key again
    assert len(calls) == 5
    write_figure(target, draw, [1.0, 2.0])
    assert len(calls) == 5


def test_the_plot_code_key_changes_with_a_module_of_plots(tmp_path, monkeypatch):
    from conetool.plots import figure_key

    monkeypatch.setattr(figure_key, "__file__", str(tmp_path / "figure_key.py"))
    (tmp_path / "style.py").write_text("LINE = 1\n")
    figure_key._plot_code.cache_clear()
    try:
        before = figure_key._plot_code()
        figure_key._plot_code.cache_clear()
        (tmp_path / "style.py").write_text("LINE = 2\n")
        assert figure_key._plot_code() != before
    finally:
        figure_key._plot_code.cache_clear()


def test_an_argument_without_a_key_or_another_format_is_always_drawn(tmp_path):
    from conetool.plots import write_figure
    from conetool.plots.figure_key import recorded_key

    calls: list[Any] = []
    draw = counting(calls)

    for _ in range(2):
        write_figure(tmp_path / "f.png", lambda y: draw(list(y)), iter([1.0, 2.0]))
        write_figure(tmp_path / "f.pdf", draw, [1.0, 2.0])
    assert len(calls) == 4
    assert recorded_key(tmp_path / "f.png") is None
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")


def test_a_figure_whose_writing_is_killed_leaves_the_old_file_and_is_drawn_next_time(
    tmp_path, monkeypatch
):
    from conetool.plots import save, write_figure
    from conetool.plots.figure_key import recorded_key

    calls: list[Any] = []
    draw, target = counting(calls), tmp_path / "f.png"
    write_figure(target, draw, [1.0, 2.0])
    old, old_key = target.read_bytes(), recorded_key(target)

    def killed(fig: Figure, tmp: Any, **kwargs: Any) -> None:
        Path(tmp).write_bytes(b"\x89PNG\r\n\x1a\npart")
        raise KeyboardInterrupt

    monkeypatch.setattr(save, "render_png", killed)
    with pytest.raises(KeyboardInterrupt):
        write_figure(target, draw, [3.0, 4.0])
    monkeypatch.undo()
    assert target.read_bytes() == old and recorded_key(target) == old_key
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    write_figure(target, draw, [3.0, 4.0])
    assert len(calls) == 3 and recorded_key(target) not in (None, old_key)


# --- the commands -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Path:
    kernels_ = random_kernels(len(STEPS), n=12, seed=3)
    root = make_store(tmp_path / "store", STEPS, kernels_)
    add_probe_and_eval(root, None, STEPS)
    return root


def test_distance_rerun_draws_only_the_figures_whose_inputs_changed(store, drawn):
    distance(store)
    assert drawn == Counter(
        distance_to_reference_figure=1, adjacent_figure=1, matrix_figure=1
    )  # fmt: skip
    drawn.clear()
    distance(store)
    assert drawn == Counter()
    distance(store, logx=True)  # the step axes; matrix.png's colours follow --logy only
    assert drawn == Counter(distance_to_reference_figure=1, adjacent_figure=1)
    drawn.clear()
    paths.matrix_png(store).unlink()
    distance(store, logx=True)
    assert drawn == Counter(matrix_figure=1)
    assert paths.matrix_png(store).read_bytes().startswith(b"\x89PNG")


def test_distance_redraws_when_a_kernel_changed(store, drawn):
    distance(store)
    drawn.clear()
    changed = random_kernels(len(STEPS), n=12, seed=4)
    make_store(store, STEPS, changed, tag="other", overwrite=True)
    add_probe_and_eval(store, None, STEPS)
    distance(store)
    assert drawn == Counter(
        distance_to_reference_figure=1, adjacent_figure=1, matrix_figure=1
    )  # fmt: skip


def test_embed_and_spectrum_reruns_draw_nothing_and_another_option_draws(store, drawn):
    embed(store)
    spectrum(store, top_k=3)
    assert drawn == Counter(embedding_figure=1, spectrum_figure=1)
    embed(store)
    spectrum(store, top_k=3)
    assert drawn == Counter(embedding_figure=1, spectrum_figure=1)
    embed(store, method="pca")
    spectrum(store, top_k=2)
    assert drawn == Counter(embedding_figure=2, spectrum_figure=2)


_RERUNS = """
import json, sys
from conetool.cli import main

store, emptied = sys.argv[1:]

def run(*args):
    sys.argv = ["conetool", *args, "--store", store, "-q"]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
    return sorted(m for m in sys.modules if m.startswith("matplotlib"))

for command in ("distance", "embed", "spectrum", "report"):
    loaded = run(command)
print("loaded:", json.dumps(loaded))
open(emptied, "wb").close()
print("loaded:", json.dumps(run("spectrum")))
"""

#: What drawing loads, and a rerun that draws nothing need not (0.5-1 s).
_DRAWING = ("matplotlib.figure", "matplotlib.axes", "matplotlib.backends.backend_agg")


def test_reruns_that_draw_nothing_do_not_load_matplotlibs_drawing_modules(store):
    # only matplotlib itself, whose version and settings the figures' key reads; a PNG made
    # empty is drawn again, loading them (so the names checked are the ones drawing loads)
    import json
    import os
    import subprocess
    import sys

    distance(store)
    embed(store)
    spectrum(store)
    report(store)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", _RERUNS, str(store), str(paths.spectrum_png(store))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if line.startswith("loaded: ")]
    rerun, drawn_again = (json.loads(line.removeprefix("loaded: ")) for line in said)
    assert "matplotlib" in rerun and [m for m in _DRAWING if m in rerun] == []
    assert [m for m in _DRAWING if m not in drawn_again] == []


def test_the_command_line_says_kept_for_a_figure_a_rerun_left_as_it_was(store):
    # was: "wrote to_ref.csv, ..., to_ref.png, adjacent.png, matrix.png" on every rerun
    def said(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--store", str(store), "-q"])
        assert result.exit_code == 0, result.output
        return re.sub(r"\s+", "", result.output)  # rich wraps lines at the terminal's width

    figures = {
        "distance": "to_ref.png,adjacent.png,matrix.png",
        "embed": "embedding.png",
        "spectrum": "spectrum.png",
    }
    for command, pngs in figures.items():
        assert "(unchanged)" not in said(command)
        again = said(command)
        assert f"kept{pngs}(unchanged)" in again, (command, again)
        assert not re.search(r"wrote[^;]*\.png", again), (command, again)
    paths.matrix_png(store).unlink()
    redrawn = said("distance")
    assert re.search(r"wrote[^;]*matrix\.png", redrawn)  # drawn again
    assert "keptto_ref.png,adjacent.png(unchanged)" in redrawn
    assert "keptmatrix.png(unchanged)" in said("distance", "--logx")  # to_ref, adjacent drawn


def test_report_rerun_draws_the_training_curves_once(run, tmp_path, drawn):
    store = tmp_path / "store"
    kernels(run, store=store, device="cpu")
    assert report(store).kept == []
    assert drawn["training_curves_figure"] == 1
    assert report(store).kept == [paths.report_training_png(store)]
    assert drawn["training_curves_figure"] == 1
    said = CliRunner().invoke(app, ["report", "--store", str(store), "-q"])
    assert said.exit_code == 0, said.output
    assert "kepttraining.png(unchanged)" in re.sub(r"\s+", "", said.output)  # was: under wrote
    png = paths.report_training_png(store)
    png.write_bytes(png.read_bytes()[:100])  # truncated
    report(store)
    assert drawn["training_curves_figure"] == 2
    rows = paths.metrics(run).read_text(encoding="utf-8").splitlines()
    paths.metrics(run).write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")  # a row less
    report(store)
    assert drawn["training_curves_figure"] == 3


def test_switch_rerun_draws_its_figure_only_when_a_point_changed(tmp_path, monkeypatch):
    """switch.png was drawn on every switch run; now as the other figures: a sweep whose
    points are the same leaves it, another point's number draws it again."""
    from test_output_mutants import SWITCH_POINTS, SWITCH_REFERENCE

    from conetool.pipeline import switch_results
    from conetool.pipeline.switch_finished_points import SwitchPoint
    from conetool.pipeline.switch_store import SwitchStore

    calls: Counter[str] = Counter()
    function = switch_results.switch_figure

    @functools.wraps(function)
    def counted(*args: Any, **kwargs: Any) -> Figure:
        calls["switch_figure"] += 1
        return function(*args, **kwargs)

    monkeypatch.setattr(switch_results, "switch_figure", counted)
    store = tmp_path / "store"
    points = [
        SwitchPoint(at, 1000, acc, loss, tacc, tloss, "fresh", sec)
        for at, acc, loss, tacc, tloss, sec in SWITCH_POINTS
    ]
    for _ in range(2):
        switch_results.write_sweep(
            SwitchStore.begin(store, None), points, dict(SWITCH_REFERENCE), 1000
        )
    assert calls["switch_figure"] == 1
    assert paths.switch_png(store).is_file()
    changed = [*points[:-1], SwitchPoint(points[-1].at, 1000, 0.5, 1.0, 0.5, 1.0, "fresh", 1.0)]
    switch_results.write_sweep(
        SwitchStore.begin(store, None), changed, dict(SWITCH_REFERENCE), 1000
    )
    assert calls["switch_figure"] == 2
