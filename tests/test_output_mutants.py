"""What a mutation check of the result-writing code found unpinned: the numbers of the CSV and
JSON files, the figures (their line data, not pixels) and the report, each checked against values
computed here from the kernels (the DESIGN formula for S, the README's kernel machine) or read
back from the file the output quotes.

The stores are synthetic (kernels written directly, as in tests/test_distance_command.py); the
noise floor, the per-layer kernels and the standard model of ``switch`` use the tiny trained run
of tests/tiny_run.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from safetensors.torch import load_file, save_file
from synthetic_store import make_store, open_store, write_step
from tiny_run import SPEC, STEPS, metadata, run_fixtures

from conetool import paths, plots
from conetool.errors import StoreError
from conetool.pipeline import (
    distance,
    distance_outputs,
    embed,
    kernels,
    report,
    run_distance,
    run_embed,
    run_spectrum,
    spectrum,
    switch,
    switch_points,
    switch_results,
)
from conetool.pipeline.matrix_cache import kernels_key
from conetool.pipeline.remembered import recorded_step_regex, selection_record
from conetool.pipeline.switch_points import SwitchPoint, write_sweep
from conetool.pipeline.switch_store import SwitchStore
from conetool.probe import Probe, probe_hash, save_probe
from conetool.spec import spec_from_dict
from conetool.store import Store
from conetool.verdict import VerdictRules, phase_verdict

# --------------------------------------------------------------------------- stores and helpers

CONE_STEPS = list(range(0, 1001, 20))  # 51 kernels


def cone_kernels(steps: list[int], seed: int = 1, dim: int = 12) -> list[np.ndarray]:
    """Rank-one kernels u u^T (each with its own scale) whose direction swings fast from e1 to
    e0 (time constant 40 steps) and then wanders slowly around e0: a two-phase run."""
    rng = np.random.default_rng(seed)
    out, y = [], np.zeros(dim)
    for t in steps:
        z = rng.standard_normal(dim)
        z[:2] = 0.0
        y = 0.9 * y + 0.02 * z
        v = np.eye(dim)[0] + 3.0 * np.exp(-t / 40.0) * np.eye(dim)[1] + y
        u = v / np.linalg.norm(v)
        out.append(rng.uniform(0.5, 20.0) * np.outer(u, u))
    return out


def random_kernels(count: int, n: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        a = rng.standard_normal((n, n + 2))
        out.append(a @ a.T)
    return out


def rewrite_steps(root: Path, kernels: dict[int, np.ndarray], fingerprint: str = "") -> None:
    """Replace the kernels of some steps: each a permutation P K P^T of the given kernel (another
    kernel), recorded with the norm the manifest holds for the step now (the same record but for
    ``fingerprint``: a checkpoint that changed, or with the same fingerprint a file rewritten)."""
    store = open_store(root)
    for step, kernel in kernels.items():
        record = store.record(step)
        assert record is not None
        turned = np.roll(np.roll(kernel, 1, axis=0), 1, axis=1)
        write_step(store, step, turned, fingerprint or record.fingerprint, record.norm)
    store.close()


def s_of(a: np.ndarray, b: np.ndarray) -> float:
    """DESIGN: S(H, H') = 1 - <H, H'>_F / (|H|_F |H'|_F), in float64."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def figures(monkeypatch) -> dict[str, Figure]:
    """The Figure objects the commands would save, by file name (nothing is rendered)."""
    made: dict[str, Figure] = {}

    def keep(fig: Figure, path: Path | str, **kwargs: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not rendered")
        made[path.name] = fig
        return path

    def write(path: Path | str, draw: Any, *args: Any, **kwargs: Any) -> Path:
        return keep(draw(*args, **kwargs), path)

    monkeypatch.setattr(distance_outputs, "write_figure", write)
    monkeypatch.setattr(run_embed, "write_figure", write)
    return made


def labelled(ax) -> dict[str, Any]:
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def vertical_lines(ax) -> list[float]:
    """The x of every unlabelled vertical line (axvline) of ``ax``."""
    out = []
    for ln in ax.get_lines():
        x = np.asarray(ln.get_xdata(), dtype=float)
        if ln.get_label().startswith("_") and x.size == 2 and x[0] == x[1]:
            out.append(float(x[0]))
    return out


@pytest.fixture(scope="module")
def cone_template(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path_factory.mktemp("cone") / "store"
    kernels = cone_kernels(CONE_STEPS)
    return make_store(root, CONE_STEPS, kernels), kernels


@pytest.fixture
def cone(cone_template, tmp_path) -> tuple[Path, list[np.ndarray]]:
    root, kernels = cone_template
    shutil.copytree(root, tmp_path / "store")
    return tmp_path / "store", kernels


# --------------------------------------------------------------------------- distance


FLOOR = 1e-4


def _noise(floor: float):
    record = {"step": 1000, "floor": floor, "S_against_float64": floor / 2}

    def estimate(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], None]:
        return dict(record), None

    return estimate


def test_distance_figures_draw_the_numbers_of_the_csvs_on_the_right_axes(
    cone, figures, monkeypatch
):
    root, kernels = cone
    monkeypatch.setattr(run_distance, "estimate_noise_floor", _noise(FLOOR))
    result = distance(root, refs=[0, 400], dts=[20, 40])
    summary = read_json(paths.distance_summary(root))
    end = summary["verdict"]["phase1_end"]
    assert end is not None and 0 < end < CONE_STEPS[-1]
    assert summary["noise"]["floor"] == FLOOR

    # Fig. 1a: S to each reference against t, a dotted line at t = τ, linear y without --logy
    ax = figures["to_ref.png"].axes[0]
    lines = labelled(ax)
    assert sorted(lines) == ["τ = 0", "τ = 400"]
    for ref in (0, 400):
        j = CONE_STEPS.index(ref)
        x, y = lines[f"τ = {ref}"].get_data()
        assert list(x) == CONE_STEPS
        np.testing.assert_allclose(y, [s_of(k, kernels[j]) for k in kernels], atol=1e-12)
    assert ax.get_yscale() == "linear"
    assert {0.0, 400.0, float(end)} <= set(vertical_lines(ax))  # τ markers, end of Phase I

    # Fig. 1b: S against the pair's first step, velocity S / dt; log y always; the noise floor
    # on the distance panel only
    dist_ax, vel_ax = figures["adjacent.png"].axes[:2]
    for dt in (20, 40):
        starts = [t for t in CONE_STEPS if t + dt in CONE_STEPS]
        direct = [
            s_of(kernels[CONE_STEPS.index(t)], kernels[CONE_STEPS.index(t + dt)]) for t in starts
        ]
        x, y = labelled(dist_ax)[f"dt = {dt}"].get_data()
        assert list(x) == starts
        np.testing.assert_allclose(y, direct, atol=1e-12)
        x, v = labelled(vel_ax)[f"dt = {dt}"].get_data()
        assert list(x) == starts
        np.testing.assert_allclose(v, np.array(direct) / dt, atol=1e-14)
    assert dist_ax.get_yscale() == vel_ax.get_yscale() == "log"
    floor_lines = [ln for ln in dist_ax.get_lines() if "noise floor" in ln.get_label()]
    assert len(floor_lines) == 1
    assert not [ln for ln in vel_ax.get_lines() if "noise floor" in ln.get_label()]
    for panel in (dist_ax, vel_ax):
        assert float(end) in vertical_lines(panel)

    # the S matrix: the pairwise distances, a linear colour scale without --logy
    image = figures["matrix.png"].axes[0].images[0]
    shown = np.ma.filled(image.get_array(), np.nan)
    direct_s = np.array([[s_of(a, b) for b in kernels] for a in kernels])
    np.testing.assert_allclose(shown, direct_s, atol=1e-12)
    assert not isinstance(image.norm, LogNorm)
    assert result.verdict.phase1_end == end

    # --logy: log distance axis on Fig. 1a, log colours on the S matrix
    figures.clear()
    distance(root, refs=[0, 400], dts=[20, 40], logy=True)
    assert figures["to_ref.png"].axes[0].get_yscale() == "log"
    assert isinstance(figures["matrix.png"].axes[0].images[0].norm, LogNorm)
    assert figures["adjacent.png"].axes[0].get_yscale() == "log"


def test_distance_summary_curves_are_the_extremes_of_the_kernel_distances(tmp_path):
    steps = [0, 5, 10, 15, 20, 40, 60, 80]
    kernels = random_kernels(len(steps), seed=4)
    root = make_store(tmp_path / "store", steps, kernels)
    distance(root, refs=[0, 20], dts=[5, 20], noise=False)
    summary = read_json(paths.distance_summary(root))
    index = {t: i for i, t in enumerate(steps)}
    for curve in summary["reference_curves"]:
        values = [s_of(k, kernels[index[curve["ref"]]]) for k in kernels]
        assert curve["final"] == pytest.approx(values[-1], abs=1e-12)
        assert curve["max"] == pytest.approx(max(values), abs=1e-12)
        assert curve["max_step"] == steps[int(np.argmax(values))]
    used = summary["verdict"]["numbers"]["velocity"]["dt"]
    assert summary["verdict_dt"] == used
    for curve in summary["adjacent_curves"]:
        dt = curve["dt"]
        starts = [t for t in steps if t + dt in index]
        values = [s_of(kernels[index[t]], kernels[index[t + dt]]) for t in starts]
        assert curve["pairs"] == len(starts)
        assert curve["final"] == pytest.approx(values[-1], abs=1e-12)
        assert curve["max"] == pytest.approx(max(values), abs=1e-12)
        assert curve["peak_velocity"] == pytest.approx(max(values) / dt, abs=1e-12)
        assert curve["peak_step"] == starts[int(np.argmax(values))]
        assert curve["verdict"] == (dt == used)
    # the chosen data: each extreme is somewhere else than the last point
    assert any(c["max_step"] != steps[-1] for c in summary["reference_curves"])
    assert any(c["final"] != c["max"] for c in summary["adjacent_curves"])


def test_per_layer_velocities_are_at_the_dt_the_verdict_reads(cone):
    """README: per_layer.csv holds each group's adjacent distance and velocity at the verdict's
    dt (here 40, not the smallest --dt)."""
    root, kernels = cone
    groups = {"first": ["w1"], "second": ["w2"]}
    store = open_store(root)
    store.record_layer_groups({"patterns": None, "groups": groups, "hash": "g0"})
    for step, kernel in zip(CONE_STEPS, kernels, strict=True):
        parts = {"first": torch.as_tensor(kernel), "second": torch.as_tensor(kernel) + 1.0}
        fingerprint = store.record(step).fingerprint  # type: ignore[union-attr]
        store.write_layer_kernels(step, parts, groups, "g0", fingerprint)
    store.close()
    distance(root, dts=[20, 40], rules=VerdictRules(velocity_dt=40), noise=False)
    summary = read_json(paths.distance_summary(root))
    assert summary["verdict_dt"] == summary["per_layer"]["dt"] == 40
    rows = [r for r in read_csv(paths.per_layer_csv(root)) if r["group"] == "first"]
    for row in rows:
        t = int(row["step"])
        if t + 40 > CONE_STEPS[-1]:
            assert row["velocity"] == ""
            continue
        direct = s_of(kernels[CONE_STEPS.index(t)], kernels[CONE_STEPS.index(t + 40)])
        assert float(row["S_adjacent"]) == pytest.approx(direct, abs=1e-12)
        assert float(row["velocity"]) == pytest.approx(direct / 40, abs=1e-14)


def test_distance_summary_counts_the_steps_it_used_when_one_is_left_out(tmp_path):
    steps = [0, 5, 10, 15, 20]
    kernels = random_kernels(len(steps), seed=2)
    kernels[-1] = np.full_like(kernels[-1], np.nan)
    root = make_store(tmp_path / "store", steps, kernels)
    result = distance(root, skip_bad=True, noise=False)
    assert result.steps == [0, 5, 10, 15]
    embed(root, skip_bad=True)
    for summary in (paths.distance_summary(root), paths.embed_summary(root)):
        assert read_json(summary)["steps"] == {"count": 4, "first": 0, "last": 15}
        assert list(read_json(summary)["excluded"]) == ["20"]
    reported = report(root)
    assert _stale_notes(reported) == []
    page = Page(reported.html.read_text(encoding="utf-8"))
    assert "S(t, τ=0) 4 " in page.section("distance")  # the points of the curve, not the store's


def test_the_saved_matrix_is_not_reused_once_a_kernel_file_is_rewritten(tmp_path):
    steps = [0, 5, 10, 15]
    kernels = random_kernels(len(steps), seed=3)
    root = make_store(tmp_path / "store", steps, kernels)
    distance(root, noise=False)
    assert distance(root, noise=False).matrix_reused
    rewrite_steps(root, {10: kernels[0]})  # the same record, another kernel in the file
    result = distance(root, noise=False)
    assert not result.matrix_reused
    turned = np.roll(np.roll(kernels[0], 1, axis=0), 1, axis=1)
    assert result.S[0, 2] == pytest.approx(s_of(kernels[0], turned), abs=1e-12)


def test_a_step_left_out_by_skip_bad_is_an_error_again_without_it(tmp_path):
    steps = [0, 5, 10, 15]
    kernels = random_kernels(len(steps), seed=1)
    kernels[2] = np.full_like(kernels[2], np.nan)
    root = make_store(tmp_path / "store", steps, kernels)
    assert distance(root, skip_bad=True, noise=False).excluded.keys() == {10}
    with pytest.raises(StoreError, match="step 10"):
        distance(root, noise=False)  # the saved matrix (without step 10) is not reused silently


# --------------------------------------------------------------------------- embed


def test_embed_rings_the_end_of_phase1_that_distance_found_on_these_kernels(cone, figures):
    root, _ = cone
    distance(root, noise=False)
    end = read_json(paths.distance_summary(root))["verdict"]["phase1_end"]
    assert end is not None
    result = embed(root, method="pca")
    summary = read_json(paths.embed_summary(root))
    assert summary["matrix"] == "reused" and result.matrix_reused
    assert summary["phase1_end"] == end and summary["phase1_end_from"] == "distance/summary.json"
    ax = figures["embedding.png"].axes[0]
    (ring,) = [c for c in ax.collections if c.get_label().startswith("end of Phase I")]
    assert ring.get_label() == f"end of Phase I (t = {end})"
    i = CONE_STEPS.index(end)
    np.testing.assert_allclose(ring.get_offsets()[0], result.embedding.coords[i], atol=1e-12)


def test_embed_takes_phase1_from_distance_only_when_it_ran_on_these_kernels(cone, figures):
    root, kernels = cone
    distance(root, noise=False)
    saved = read_json(paths.distance_summary(root))
    # as if distance's rules had put the end of Phase I elsewhere than the default rules do
    saved["verdict"]["phase1_end"] = 20
    paths.distance_summary(root).write_text(json.dumps(saved), encoding="utf-8")
    assert embed(root).phase1_end == 20
    # a kernel more (kernels still writing the store when distance ran): the default verdict
    store = open_store(root)
    write_step(store, 1020, kernels[-1])
    store.close()
    result = embed(root)
    summary = read_json(paths.embed_summary(root))
    assert summary["phase1_end_from"] == "verdict with default rules"
    s = np.array([[s_of(a, b) for b in [*kernels, kernels[-1]]] for a in [*kernels, kernels[-1]]])
    expected = phase_verdict([*CONE_STEPS, 1020], s).phase1_end
    assert expected is not None and result.phase1_end == summary["phase1_end"] == expected


# --------------------------------------------------------------------------- report


class Page(HTMLParser):
    """The text of each <section id=...> of the report, one piece per text node."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, list[str]] = {}
        self._section = ""
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._section = dict(attrs).get("id") or ""

    def handle_data(self, data: str) -> None:
        self.text.setdefault(self._section, []).append(data)

    def section(self, name: str) -> str:
        return " ".join(" ".join(self.text.get(name, [])).split())


def g4(value: float) -> str:
    """A number as the report's tables quote it: 4 significant digits."""
    return f"{float(value):.4g}"


LABELS = np.repeat(np.arange(3), 4)  # 12 probe examples, 3 classes


def labelled_probe(split: str, offset: int = 0) -> Probe:
    """The examples of LABELS (inputs zero: only the labels are read), at data-set positions
    ``offset`` on."""
    inputs, labels = torch.zeros(LABELS.size, 2), torch.as_tensor(LABELS)
    index = torch.arange(LABELS.size) + offset
    return Probe(inputs, labels, index, split, probe_hash(inputs, labels, index))


def add_probe_and_eval(root: Path, kernels: list[np.ndarray] | None, steps: list[int]) -> None:
    """The probe set of LABELS; with ``kernels``, an evaluation set that repeats the probe
    examples, with the cross kernel K(eval, probe) = K of each step (the same examples)."""
    store = open_store(root)
    save_probe(labelled_probe("train"), paths.probe(root))
    if kernels is not None:
        evaluated = labelled_probe("test", offset=100)
        save_probe(evaluated, paths.eval_set(root))
        record = {"size": LABELS.size, "split": "test", "seed": 0, "hash": evaluated.hash}
        store.record_eval({**record, "file": paths.EVAL_NAME})
        for step, kernel in zip(steps, kernels, strict=True):
            fingerprint = store.record(step).fingerprint  # type: ignore[union-attr]
            store.write_eval_kernel(step, torch.as_tensor(kernel), evaluated.hash, fingerprint)
    store.close()


SWITCH_POINTS = [  # at, test_acc, test_loss, train_acc, train_loss, seconds
    (0, 0.4375, 1.0625, 0.53125, 0.96875, 1.25),
    (100, 0.5625, 0.90625, 0.65625, 0.84375, 2.5),
    (400, 0.6875, 0.78125, 0.71875, 0.65625, 3.75),
]
SWITCH_REFERENCE = {"step": 1000, "test_acc": 0.8125, "test_loss": 0.40625, "source": "checkpoint"}


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, Any]:
    """The cone store with every part (distance, embed, spectrum with the kernel machine, a
    switch sweep written from known points) and its report."""
    root = tmp_path_factory.mktemp("report") / "store"
    kernels = cone_kernels(CONE_STEPS)
    make_store(root, CONE_STEPS, kernels)
    add_probe_and_eval(root, kernels, CONE_STEPS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_distance, "estimate_noise_floor", _noise(FLOOR))
        distance(root, refs=[0, 400], dts=[20, 40])
    embed(root, method="pca")
    spectrum(root, top_k=3)
    points = [
        SwitchPoint(at, 1000, acc, loss, tacc, tloss, "fresh", sec)
        for at, acc, loss, tacc, tloss, sec in SWITCH_POINTS
    ]
    write_sweep(SwitchStore.begin(root, None), points, dict(SWITCH_REFERENCE), 1000)
    return root, report(root)


def test_a_phase1_range_without_an_end_of_phase1_is_not_shown(reported, tmp_path):
    """An undetermined verdict keeps the velocity fit's candidate end (phase1_range) in its
    numbers; without an end of Phase I the report's 'its range' row read as the velocity
    drop's range (280 to 280 under 'velocity drop', the text saying there is no measured end)."""
    root = tmp_path / "store"
    shutil.copytree(reported[0], root)
    path = paths.distance_summary(root)
    summary = read_json(path)
    verdict = summary["verdict"]
    assert verdict["numbers"]["velocity"]["phase1_range"]
    verdict["phase1_end"], verdict["regime"] = None, "undetermined"
    path.write_text(json.dumps(summary))
    text = Page(report(root).html.read_text(encoding="utf-8")).section("verdict")
    assert "Phase I has no measured end." in text
    assert "velocity drop" in text
    assert "its range" not in text and "end of Phase I" not in text


def test_the_report_says_the_verdicts_velocities_are_per_unit_of_a_decaying_rate(
    reported, tmp_path
):
    """Under a step or cosine schedule the verdict's velocities and their drop are per unit of
    learning rate (numbers.schedule); the key-numbers table called them 'S per step' and left
    out the velocity's own drop, which summary.json records."""
    root = tmp_path / "store"
    shutil.copytree(reported[0], root)
    path = paths.distance_summary(root)
    summary = read_json(path)
    numbers = summary["verdict"]["numbers"]
    numbers["schedule"] = {
        "schedule": "cosine",
        "lr": 0.1,
        "milestones": [],
        "read": "per unit of learning rate",
        "raw_drop_factor": 731.5,
    }
    path.write_text(json.dumps(summary))
    text = Page(report(root).html.read_text(encoding="utf-8")).section("verdict")
    velocity = numbers["velocity"]
    for quantity, value in (
        ("early velocity (S per step, per unit of learning rate)", velocity["early_level"]),
        ("Phase II velocity (S per step, per unit of learning rate)", velocity["phase2_level"]),
        ("velocity drop (per unit of learning rate)", velocity["drop_factor"]),
        ("drop of the velocity S / dt itself", 731.5),
    ):
        assert f"{quantity} {g4(value)} " in text, quantity
    assert "S read per unit of learning rate (cosine schedule)" in text


def test_report_quotes_the_numbers_of_the_summaries_it_reads(reported):
    root, result = reported
    page = Page(result.html.read_text(encoding="utf-8"))
    summary = read_json(paths.distance_summary(root))
    verdict = summary["verdict"]
    numbers, velocity = verdict["numbers"], verdict["numbers"]["velocity"]
    end = verdict["phase1_end"]
    text = page.section("verdict")
    for quantity, value in (
        ("largest distance S", numbers["max_distance"]),
        ("velocity dt (lags fitted)", velocity["dt"]),
        ("early velocity (S per step)", velocity["early_level"]),
        ("Phase II velocity (S per step)", velocity["phase2_level"]),
        ("velocity drop", velocity["drop_factor"]),
        ("end of Phase I", end),
        ("noise floor of S", FLOOR),
    ):
        assert f"{quantity} {g4(value)} " in text, quantity
    assert f"Phase I ends at step {end}." in page.section("summary")

    # the curves table: each curve's numbers from the summary, which match the CSVs
    text = page.section("distance")
    count = summary["steps"]["count"]
    to_ref = read_csv(paths.to_ref_csv(root))
    for c in summary["reference_curves"]:
        column = [float(r[f"ref_{c['ref']}"]) for r in to_ref]
        assert (c["final"], c["max"]) == (column[-1], max(column))
        row = f"S(t, τ={c['ref']}) {count} {g4(c['final'])} {g4(c['max'])} {c['max_step']} "
        assert row in text
    adjacent = read_csv(paths.adjacent_csv(root))
    for a in summary["adjacent_curves"]:
        velocities = [float(r["velocity"]) for r in adjacent if int(r["dt"]) == a["dt"]]
        assert a["peak_velocity"] == max(velocities) and a["pairs"] == len(velocities)
        star = " *" if a["dt"] == summary["verdict_dt"] else ""
        row = (
            f"S(t, t+{a['dt']}){star} {a['pairs']} {g4(a['final'])} {g4(a['max'])} "
            f"{g4(a['peak_velocity'])} {a['peak_step']} "
        )
        assert row in text
    assert "*" in text

    # the embedding's table
    embedded = read_json(paths.embed_summary(root))
    ratio = " + ".join(f"{r:.1%}" for r in embedded["explained_variance_ratio"])
    assert f"pca 2 {len(CONE_STEPS)} {g4(embedded['stress'])} {ratio} 0 reused" in (
        page.section("embed")
    )

    # the spectrum's first and last rows, and the kernel machine's accuracy beside Fig. 2
    rows = read_csv(paths.spectrum_csv(root))
    text = page.section("spectrum")
    for r in (rows[0], rows[-1]):
        quoted = [g4(r[k]) for k in ("alignment", "effective_rank", "label_energy", "eval_acc")]
        assert f"{r['step']} {' '.join(quoted)} " in text
    first, last = rows[0], rows[-1]
    assert first["eval_acc"] != last["eval_acc"]
    assert (
        f"reaches kernel-machine test accuracy {g4(first['eval_acc'])} at step {first['step']} "
        f"and {g4(last['eval_acc'])} at step {last['step']}," in page.section("switch")
    )

    # the switch table: every point, and the standard model at T
    text = page.section("switch")
    for at, acc, loss, tacc, tloss, sec in SWITCH_POINTS:
        assert f"{at} 1000 {g4(acc)} {g4(loss)} {g4(tacc)} {g4(tloss)} fresh {sec:.3g} " in text
    ref = SWITCH_REFERENCE
    assert f"standard 1000 {g4(ref['test_acc'])} {g4(ref['test_loss'])} " in text
    assert "from t to T = 1000;" in text


def _stale_notes(result: Any) -> list[str]:
    # (not the note that the synthetic store's run is not there: its path names this test)
    return [n for n in result.warnings if "results" in n and "checkpoint directory" not in n]


def test_report_tells_results_of_other_kernels_from_current_ones(tmp_path):
    steps = [0, 5, 10, 15, 20]
    kernels = random_kernels(len(steps), seed=7)
    broken = [k.copy() for k in kernels]
    broken[2][0, 0] = np.nan
    root = tmp_path / "store"
    make_store(root, steps, broken)
    distance(root, skip_bad=True, noise=False)
    assert _stale_notes(report(root)) == []  # the left-out step is no change

    # the kernel of step 10 recomputed (its checkpoint changed): results of the old kernels
    store = open_store(root)
    write_step(store, 10, kernels[2], fingerprint="fp-10-recomputed")
    store.close()
    (note,) = _stale_notes(report(root))
    assert "conetool distance" in note and "recomputed since" in note

    distance(root, noise=False)
    assert _stale_notes(report(root)) == []
    # a kernel recomputed from a changed checkpoint, whose norm happens to be the same
    rewrite_steps(root, {15: kernels[3]}, fingerprint="fp-15-recomputed")
    (note,) = _stale_notes(report(root))
    assert "recomputed since" in note

    distance(root, noise=False)
    assert _stale_notes(report(root)) == []
    summary_path = paths.distance_summary(root)
    summary = read_json(summary_path)

    # a summary of as many steps, but other ones
    shifted = {**summary, "steps": {"count": 5, "first": 5, "last": 25}}
    summary_path.write_text(json.dumps(shifted), encoding="utf-8")
    (note,) = _stale_notes(report(root))
    assert "cover 5 steps (5 to 25)" in note

    # a summary of kernels of another kind
    other = {**summary, "identity": {**summary["identity"], "kind": "full"}}
    summary_path.write_text(json.dumps(other), encoding="utf-8")
    (note,) = _stale_notes(report(root))
    assert "another spec, probe set or kernel kind" in note


# --------------------------------------------------------------------------- a trained run

trained, run = run_fixtures()


def test_per_layer_figure_draws_the_velocities_of_the_csv(run, tmp_path, figures):
    root = tmp_path / "store"
    kernels(run, store=root, dtype="float64", device="cpu", per_layer=True)
    distance(root, refs=[0], noise=False)
    rows = [r for r in read_csv(paths.per_layer_csv(root)) if r["velocity"]]
    ax = figures["per_layer.png"].axes[0]
    lines = labelled(ax)
    groups = read_json(paths.distance_summary(root))["per_layer"]["groups"]
    assert sorted(lines) == sorted(groups)
    for group, line in lines.items():
        mine = [r for r in rows if r["group"] == group]
        x, y = line.get_data()
        assert list(x) == [int(r["step"]) for r in mine] == [0, 5]
        np.testing.assert_allclose(y, [float(r["velocity"]) for r in mine], rtol=1e-12)
        np.testing.assert_allclose(y, [float(r["S_adjacent"]) / 5 for r in mine], rtol=1e-12)
    assert ax.get_yscale() == "log"
    # Phase I shaded where distance's verdict ends it
    figures.clear()
    distance_outputs.write_per_layer(Store.open(root), STEPS, [0], 5, phase1_end=5, logx=False)
    assert 5.0 in vertical_lines(figures["per_layer.png"].axes[0])

    # a step without its layer file: named in the summary, left out of the CSV
    paths.layer_kernel(root, 10).unlink()
    distance(root, refs=[0], noise=False)
    assert read_json(paths.distance_summary(root))["per_layer"]["missing_steps"] == [10]
    assert {int(r["step"]) for r in read_csv(paths.per_layer_csv(root))} == {0, 5}


def test_the_noise_floor_is_reused_only_while_its_checkpoint_is_unchanged(run, tmp_path):
    root = tmp_path / "store"
    kernels(run, store=root, device="cpu")
    distance(root)
    noise = read_json(paths.distance_summary(root))["noise"]
    assert noise["step"] == STEPS[-1]
    assert noise["floor"] == 2 * noise["S_against_float64"] > 0  # two kernels, each with its error
    cache = read_json(paths.noise_json(root))
    cache["noise"]["floor"] = 0.125  # a value no estimate gives: shows whether it is reused
    paths.noise_json(root).write_text(json.dumps(cache), encoding="utf-8")
    distance(root)
    assert read_json(paths.distance_summary(root))["noise"]["floor"] == 0.125

    # the last checkpoint changes (its kernel is recomputed): the floor is estimated again
    checkpoint = paths.checkpoint(run, STEPS[-1])
    weights = load_file(str(checkpoint))
    name = next(iter(weights))
    weights[name] = weights[name] * 1.5
    save_file(weights, str(checkpoint), metadata=metadata(checkpoint))
    kernels(run, store=root, device="cpu")
    distance(root)
    noise = read_json(paths.distance_summary(root))["noise"]
    assert noise["floor"] != 0.125 and noise["floor"] == 2 * noise["S_against_float64"]


# --------------------------------------------------------------------------- switch


def test_switch_files_and_figure_carry_each_points_numbers(tmp_path, monkeypatch):
    made: dict[str, Figure] = {}
    monkeypatch.setattr(
        switch_results,
        "write_figure",
        lambda path, draw, *a, **kw: made.setdefault(Path(path).name, draw(*a, **kw)),
    )
    store = tmp_path / "store"
    paths.distance_summary(store).parent.mkdir(parents=True)
    paths.distance_summary(store).write_text(json.dumps({"verdict": {"phase1_end": 150}}))
    points = [
        SwitchPoint(at, 1000, acc, loss, tacc, tloss, "fresh", sec)
        for at, acc, loss, tacc, tloss, sec in SWITCH_POINTS
    ]
    write_sweep(SwitchStore.begin(store, None), points, dict(SWITCH_REFERENCE), 1000)

    rows = read_csv(paths.switch_results_csv(store))
    assert list(rows[0]) == list(switch_points.RESULT_COLUMNS)
    for row, (at, acc, loss, tacc, tloss, sec) in zip(rows, SWITCH_POINTS, strict=True):
        got = [float(row[k]) for k in ("at", "until", "test_acc", "test_loss")]
        assert got == [at, 1000, acc, loss]
        assert [float(row[k]) for k in ("train_acc", "train_loss", "seconds")] == [tacc, tloss, sec]
    saved = read_json(paths.switch_results_json(store))
    assert saved["until"] == 1000 and saved["reference"] == SWITCH_REFERENCE
    assert [p["at"] for p in saved["points"]] == [p[0] for p in SWITCH_POINTS]

    acc_ax, loss_ax = made["switch.png"].axes[:2]
    for ax, column, ref in ((acc_ax, 1, "test_acc"), (loss_ax, 2, "test_loss")):
        lines = labelled(ax)
        x, y = lines["linearized from t to T=1000"].get_data()
        assert list(x) == [p[0] for p in SWITCH_POINTS]
        assert list(y) == [p[column] for p in SWITCH_POINTS]
        standard = lines["standard training at T=1000"].get_ydata()
        assert list(standard) == [SWITCH_REFERENCE[ref]] * 2
        assert 150.0 in vertical_lines(ax)  # Phase I, from distance's verdict


def test_switch_sweep_gathers_only_points_of_its_spec_and_t(tmp_path):
    spec = spec_from_dict(SPEC, source="tiny.toml")
    store = tmp_path / "store"
    paths.switch_dir(store).mkdir(parents=True)

    def saved(at: int, until: int, acc: float) -> SwitchPoint:
        point = SwitchPoint(at, until, acc, 1.0, 0.5, 1.0, "fresh", 1.0)
        key = switch_points.point_key(spec, until, f"fp-{at}")
        payload = {**asdict(point), "key": key}
        payload.pop("rows"), payload.pop("reused")
        paths.switch_point(store, at).write_text(json.dumps(payload), encoding="utf-8")
        return point

    saved(0, 10, 0.25)  # of an earlier sweep, same T: kept
    saved(5, 10, 0.125)  # of an earlier sweep, now recomputed: this sweep's result counts
    saved(8, 20, 0.75)  # another T: left out
    fresh = SwitchPoint(5, 10, 0.5, 0.9, 0.6, 0.8, "fresh", 2.0)
    gathered = switch_points.all_points(store, spec, 10, [fresh])
    assert [(p.at, p.test_acc, p.reused) for p in gathered] == [(0, 0.25, True), (5, 0.5, False)]

    key = switch_points.point_key(spec, 10, "fp-0")
    assert switch_points.read_point(store, 0, key).test_acc == 0.25
    other = switch_points.point_key(spec, 10, "fp-changed")  # the checkpoint changed since
    assert switch_points.read_point(store, 0, other) is None


def test_the_standard_model_is_retrained_for_another_t(run, tmp_path):
    store = tmp_path / "store"
    first = switch([0], until=8, store=store, ckpts=run, device="cpu", reference="train")
    assert first.reference["source"] == "trained from step 5"
    saved = read_json(paths.switch_reference(store))
    saved["reference"]["test_acc"] = 12.5  # no accuracy: shows whether it is reused
    paths.switch_reference(store).write_text(json.dumps(saved), encoding="utf-8")
    again = switch([0], until=8, store=store, ckpts=run, device="cpu", reference="train")
    assert again.reference["test_acc"] == 12.5  # the same T and checkpoint: reused
    other = switch([0], until=9, store=store, ckpts=run, device="cpu", reference="train")
    assert other.reference["step"] == 9 and 0.0 <= other.reference["test_acc"] <= 1.0
    assert read_json(paths.switch_results_json(store))["reference"] == other.reference


# --------------------------------------------------------------------------- spectrum

SPECTRUM_PANELS = {
    "centered kernel-target alignment": "alignment",
    "effective rank": "effective_rank",
    "kernel machine test accuracy": "eval_acc",
}


def test_spectrum_figure_draws_the_csv_columns_and_the_summary_counts_its_eigenvalues(
    tmp_path, monkeypatch
):
    made: dict[str, Figure] = {}

    def write(path: Path, draw: Any, *args: Any, **kwargs: Any) -> Path:
        made[Path(path).name] = draw(*args, **kwargs)
        return Path(path)  # as write_figure

    monkeypatch.setattr(run_spectrum, "write_figure", write)
    steps = [0, 20, 40, 60]
    kernels = random_kernels(len(steps), n=LABELS.size, seed=5)
    root = make_store(tmp_path / "store", steps, kernels)
    measured = [0, 40, 60]  # no eval kernel at step 20
    add_probe_and_eval(root, [kernels[steps.index(t)] for t in measured], measured)
    spectrum(root, top_k=3)
    rows = read_csv(paths.spectrum_csv(root))
    summary = read_json(paths.spectrum_summary(root))
    assert summary["kernel_machine"]["eval"]["steps"] == len(measured)

    # the kernel machine (README: kernel ridge regression on the centered one-hot labels, ridge
    # 1e-3 tr(K)/N), here tested on the probe examples themselves: K(eval, probe) = K
    y = np.eye(3)[LABELS] - 1.0 / 3
    for row, kernel in zip(rows, kernels, strict=True):
        if int(row["step"]) not in measured:
            assert row["eval_acc"] == row["eval_loss"] == ""
            continue
        ridge = 1e-3 * np.trace(kernel) / LABELS.size
        f = kernel @ np.linalg.solve(kernel + ridge * np.eye(LABELS.size), y)
        accuracy = np.mean(np.argmax(f, axis=1) == LABELS)
        loss = np.mean(np.sum((f - y) ** 2, axis=1))
        assert float(row["eval_acc"]) == pytest.approx(accuracy, abs=1e-12)
        assert float(row["eval_loss"]) == pytest.approx(loss, rel=1e-6)

    # each panel: the column of its title, at the steps where it has a value
    axes = made["spectrum.png"].axes
    panels = {**SPECTRUM_PANELS, "label energy in the top 3 eigenvectors": "label_energy"}
    assert sorted(ax.get_title() for ax in axes) == sorted(panels)
    for ax in axes:
        x, values = ax.get_lines()[0].get_data()
        shown = [r for r in rows if r[panels[ax.get_title()]]]
        assert list(x) == [int(r["step"]) for r in shown]
        column = [float(r[panels[ax.get_title()]]) for r in shown]
        np.testing.assert_allclose(values, column, rtol=1e-12)
    assert len({r["effective_rank"] for r in rows} | {r["label_energy"] for r in rows}) == 8

    # a --top-k above the kernel's 12 eigenvalues keeps all 12, and the summary says 12
    spectrum(root, top_k=50)
    eigenvalues = [k for k in read_csv(paths.spectrum_csv(root))[0] if k.startswith("eig_")]
    assert len(eigenvalues) == LABELS.size == read_json(paths.spectrum_summary(root))["top_k"]

    # without an evaluation set: no kernel-machine panel
    made.clear()
    bare = make_store(tmp_path / "bare", steps, kernels)
    add_probe_and_eval(bare, None, steps)
    spectrum(bare, top_k=3)
    titles = [ax.get_title() for ax in made["spectrum.png"].axes]
    assert "kernel machine test accuracy" not in titles and len(titles) == 3


# --------------------------------------------------------------------------- remembered options


def test_a_recorded_step_regex_is_reused_only_for_the_directory_it_was_recorded_for(tmp_path):
    manifest = {"selection": selection_record(tmp_path / "a", r"run_(\d+)", None, None)}
    regex, note = recorded_step_regex(manifest, None, path=tmp_path / "a")
    assert regex == r"run_(\d+)" and note is not None and "recorded in the store" in note
    assert recorded_step_regex(manifest, None, path=tmp_path / "b") == (None, None)
    assert recorded_step_regex(manifest, "given", path=tmp_path / "a") == ("given", None)


# --------------------------------------------------------------------------- figures alone


def test_a_log_axis_drops_a_zero_distance_rather_than_clipping_it_to_the_bottom():
    """style: logy drops values <= 0 (S(τ, τ) = 0) instead of clipping them."""
    fig = plots.distance_to_reference_figure([0, 10, 20], {0: [0.0, 0.1, 0.2]}, logy=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    # masked: not a finite position (clipped: drawn at the bottom, -1000 decades)
    assert not np.isfinite(ax.yaxis.get_transform().transform(np.array([0.0]))).any()


def test_training_curves_pair_each_value_with_its_step_whatever_the_row_order():
    rows = [
        {"step": "10", "train_loss": "0.5", "test_acc": "0.75"},
        {"step": "0", "train_loss": "2.0", "test_acc": "0.25"},
        {"step": "5", "train_loss": "1.0", "test_acc": ""},
    ]
    loss_ax, acc_ax = plots.training_curves_figure(rows).axes[:2]
    x, y = labelled(loss_ax)["train"].get_data()
    assert list(x) == [0, 5, 10] and list(y) == [2.0, 1.0, 0.5]
    x, y = labelled(acc_ax)["test"].get_data()
    assert list(x) == [0, 10] and list(y) == [0.25, 0.75]


# --------------------------------------------------------------------------- found by the check


@pytest.mark.parametrize(("recorded", "shaded"), [("same", True), ("other", False)])
def test_switch_figure_shades_phase1_only_from_distance_on_the_kernels_held_now(
    tmp_path, monkeypatch, recorded, shaded
):
    """As the spectrum and embed figures: a verdict of other kernels (distance ran while
    kernels was still writing the store, or before a checkpoint changed) is not drawn."""
    made: dict[str, Figure] = {}
    monkeypatch.setattr(
        switch_results,
        "write_figure",
        lambda path, draw, *a, **kw: made.setdefault(Path(path).name, draw(*a, **kw)),
    )
    root = make_store(tmp_path / "store", [0, 5, 10], random_kernels(3))
    key = (
        kernels_key(Store.open(root)) if recorded == "same" else "kernels of a store being written"
    )
    summary = {"kernels_key": key, "verdict": {"phase1_end": 5}}
    paths.distance_summary(root).parent.mkdir(parents=True)
    paths.distance_summary(root).write_text(json.dumps(summary), encoding="utf-8")
    point = SwitchPoint(0, 10, 0.5, 1.0, 0.5, 1.0, "fresh", 1.0)
    write_sweep(SwitchStore.begin(root, None), [point], None, 10)
    for ax in made["switch.png"].axes[:2]:
        assert (5.0 in vertical_lines(ax)) is shaded
