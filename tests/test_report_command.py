"""`conetool report` end to end: a real (tiny) store, the page parsed back, the commands rerun."""

from __future__ import annotations

import base64
import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_distance_command import make_store, random_psd
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import StoreError, StoreReplacedError
from conetool.pipeline import distance, embed, kernels, report, run_report, spectrum, switch
from conetool.spec import spec_from_dict, spec_to_toml
from conetool.store import Store, StoreIdentity
from conetool.training import train
from conetool.verdict import VerdictRules

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()

SPEC = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [6], "activation": "tanh"},
    "data": {
        "dataset": "synthetic",
        "shape": [4],
        "num_classes": 3,
        "train_size": 48,
        "test_size": 24,
        "noise": 1.5,
    },
    "probe": {"size": 6},
    "train": {"steps": 16, "batch_size": 8, "lr": 0.2, "momentum": 0.9, "save_every": 2},
}
FIGURES = (
    paths.report_training_png,
    paths.to_ref_png,
    paths.adjacent_png,
    paths.matrix_png,
    paths.embedding_png,
    paths.spectrum_png,
    paths.switch_png,
)


class Page(HTMLParser):
    """What a test needs from the page: images, every src/href, text per section, <pre> blocks."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.pre: dict[str, list[str]] = {}
        self.captions: list[str] = []
        self._section = ""
        self._in: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self._section = a.get("id", "")
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag in ("pre", "figcaption"):
            self._in.append(tag)
            (self.pre if tag == "pre" else {}).setdefault(self._section, []).append("")
            if tag == "figcaption":
                self.captions.append("")

    def handle_endtag(self, tag):
        if tag in ("pre", "figcaption") and self._in:
            self._in.pop()

    def handle_data(self, data):
        self.text.setdefault(self._section, []).append(data)
        if "pre" in self._in:
            self.pre[self._section][-1] += data
        if "figcaption" in self._in:
            self.captions[-1] += data

    def section(self, name: str, sep: str = " ") -> str:
        """The text of a section, whitespace collapsed; ``sep`` joins the text pieces (table
        cells are separate pieces; so are the spans of one paragraph)."""
        return " ".join(sep.join(self.text.get(name, [])).split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run (9 checkpoints) and a store with every part: kernels, distance
    (non-default references, dts, a rule and --logx), embed (PCA) and switch."""
    base = tmp_path_factory.mktemp("report").resolve()
    ckpts = base / "ckpts"
    train(spec_from_dict(SPEC, source="tiny.toml"), ckpts)
    store = base / "store"
    kernels(ckpts, store=store, device="cpu")
    distance(store, refs=[0, 4], dts=[2, 4], rules=VerdictRules(min_drop=3.0), logx=True)
    embed(store, method="pca", dims=2, seed=3)
    spectrum(store, top_k=3)
    switch(["0,8"], store=store, device="cpu")
    result = report(store)
    return base, ckpts, store, result


def test_every_figure_is_embedded_byte_for_byte_with_alt_and_caption(run):
    _, _, store, result = run
    page = Page(result.html.read_text(encoding="utf-8"))
    expected = [f(store) for f in FIGURES]
    assert result.figures == expected
    assert len(page.images) == len(expected)
    for image, png in zip(page.images, expected, strict=True):
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix) :]) == png.read_bytes()
        assert len(image["alt"]) > 10
    assert [c.split(".")[0] for c in page.captions] == [
        "Training curves",
        "Fig",
        "Fig",
        "S matrix",
        "Fig",
        "Alignment and spectrum",
        "Fig",
    ]
    assert [c[:7] for c in page.captions if c.startswith("Fig")] == [
        "Fig. 1a",
        "Fig. 1b",
        "Fig. 1c",
        "Fig. 2.",
    ]


def test_page_is_self_contained_and_escaped(run):
    _, _, _, result = run
    markup = result.html.read_text(encoding="utf-8")
    page = Page(markup)
    assert page.links, "no src/href at all is suspicious"
    for link in page.links:
        assert link.startswith(("data:image/png;base64,", "#")), link
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert "url(" not in markup and "@import" not in markup
    assert "http://" not in markup and "https://" not in markup


def test_verdict_numbers_and_tables_match_the_store(run):
    _, ckpts, store, result = run
    page = Page(result.html.read_text(encoding="utf-8"))
    summary = json.loads(paths.distance_summary(store).read_text())
    verdict = summary["verdict"]
    text = page.section("verdict")
    assert f"Regime: {verdict['regime']}:" in page.section("verdict", sep="")
    assert " ".join(verdict["explanation"].split()) in text
    numbers = verdict["numbers"]
    if "peak_velocity" in numbers:
        assert f"peak velocity (S per step) {numbers['peak_velocity']:.4g}" in text
    assert f"stored steps {numbers['stored_steps']}" in text
    assert verdict["regime"] in page.section("summary")
    # the switch table holds every point's test accuracy, and the standard model at T
    results = json.loads(paths.switch_results_json(store).read_text())
    switch_text = page.section("switch")
    for point in results["points"]:
        assert f"{point['test_acc']:.4g} {point['test_loss']:.4g}" in switch_text
    assert f"standard 16 {results['reference']['test_acc']:.4g}" in switch_text
    # the checkpoint table: one row per stored step with its file, size and norm
    manifest = json.loads(paths.manifest(store).read_text())
    checkpoints_text = page.section("checkpoints")
    for step, record in manifest["steps"].items():
        name = paths.checkpoint(ckpts, int(step)).name
        assert f"{step} {name}" in checkpoints_text
        assert f"{record['norm']:.6g}" in checkpoints_text
    embed_text = page.section("embed")
    ratio = json.loads(paths.embed_summary(store).read_text())["explained_variance_ratio"]
    assert " + ".join(f"{r:.1%}" for r in ratio) in embed_text
    assert result.sections == [
        "summary",
        "verdict",
        "training",
        "distance",
        "embed",
        "spectrum",
        "switch",
        "checkpoints",
        "run",
        "reproduce",
    ]
    assert result.missing == [] and result.warnings == result.notes == []


def test_run_section_spec_round_trips(run):
    _, _, store, result = run
    manifest = json.loads(paths.manifest(store).read_text())
    page = Page(result.html.read_text(encoding="utf-8"))
    (spec_text, *_) = page.pre["run"]
    spec = spec_from_dict(tomllib.loads(spec_text))
    assert spec.hash() == manifest["spec_hash"]
    assert result.spec is not None
    assert spec_from_dict(tomllib.loads(result.spec.read_text())).hash() == manifest["spec_hash"]
    run_text = page.section("run")
    assert manifest["probe_hash"] in run_text and manifest["versions"]["torch"] in run_text


def reproduce_lines(result) -> list[str]:
    page = Page(result.html.read_text(encoding="utf-8"))
    (block,) = page.pre["reproduce"]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_reproduce_commands_are_exact(run):
    _, ckpts, store, result = run
    s, c, spec = (shlex.quote(str(p)) for p in (store, ckpts, result.spec))
    assert reproduce_lines(result) == [
        f"conetool train {spec} --out {c}",
        f"conetool kernels {c} --store {s} --kind trace --dtype float32 --probe-size 6",
        f"conetool distance --store {s} --ref 0 --ref 4 --dt 2 --dt 4 --min-drop 3.0 --logx",
        f"conetool embed --store {s} --method pca --dims 2 --seed 3",
        f"conetool spectrum --store {s} --top-k 3",
        f"conetool switch --at 0,8 --until 16 --store {s}",
        f"conetool report --store {s}",
    ]


def test_running_the_reproduce_commands_rebuilds_the_same_results(run, tmp_path):
    _, ckpts, store, result = run
    new_ckpts, new_store = tmp_path / "ckpts", tmp_path / "store"
    for line in reproduce_lines(result):
        line = line.replace(f"--store {store}", f"--store {new_store}")
        line = line.replace(f"--out {ckpts}", f"--out {new_ckpts}")
        line = line.replace(f"kernels {ckpts}", f"kernels {new_ckpts}")
        argv = shlex.split(line)
        assert argv[0] == "conetool"
        outcome = runner.invoke(app, [*argv[1:], "-q"])
        assert outcome.exit_code == 0, (line, outcome.output)
    old = json.loads(paths.distance_summary(store).read_text())
    new = json.loads(paths.distance_summary(new_store).read_text())
    for key in ("refs", "dts", "rules", "options", "identity"):
        assert new[key] == old[key], key
    assert new["verdict"]["regime"] == old["verdict"]["regime"]
    assert new["verdict"]["phase1_end"] == old["verdict"]["phase1_end"]
    assert new["reference_curves"] == old["reference_curves"]
    old_embed = json.loads(paths.embed_summary(store).read_text())
    new_embed = json.loads(paths.embed_summary(new_store).read_text())
    for key in ("method", "dims", "seed"):
        assert new_embed[key] == old_embed[key]
    old_switch = json.loads(paths.switch_results_json(store).read_text())
    new_switch = json.loads(paths.switch_results_json(new_store).read_text())
    assert [p["at"] for p in new_switch["points"]] == [p["at"] for p in old_switch["points"]]
    for a, b in zip(old_switch["points"], new_switch["points"], strict=True):
        assert {k: v for k, v in b.items() if k != "seconds"} == {
            k: v for k, v in a.items() if k != "seconds"
        }
    assert paths.report_html(new_store).is_file()


def test_markdown_links_figures_and_has_tables(run):
    _, _, store, result = run
    md = result.markdown.read_text(encoding="utf-8")
    base = result.markdown.parent
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", md)
    assert links == [
        "training.png",
        "../distance/to_ref.png",
        "../distance/adjacent.png",
        "../distance/matrix.png",
        "../embed/embedding.png",
        "../spectrum/spectrum.png",
        "../switch/switch.png",
    ]
    assert (base / links[0]).resolve() == paths.report_training_png(store).resolve()
    for link in links[1:]:
        assert (base / link).resolve() == (store / link[3:]).resolve()
    assert "| step | checkpoint | size | ‖H‖\\_F | seconds |" in md
    assert "| ---: | --- | ---: | ---: | ---: |" in md
    assert re.search(r"^\| 16 \| step\\?_000016\.safetensors \|", md, re.M) or (
        "| 16 | step_000016.safetensors |" in md
    )
    toml_block = re.search(r"```toml\n(.*?)\n```", md, re.S)
    assert toml_block is not None
    assert "[model]" in toml_block.group(1)
    verdict = json.loads(paths.distance_summary(store).read_text())["verdict"]
    assert f"**{verdict['regime']}**" in md
    assert "conetool switch --at 0,8 --until 16" in md


def test_reproduce_leaves_out_flags_whose_values_the_store_did_not_record(tmp_path):
    """A store written by other code than kernels (here the Store API, as a converter would)
    records no probe set: the block said --probe-size None, which kernels refuses."""
    steps = [0, 1, 2, 4, 8]
    store = make_store(tmp_path / "store", steps, random_psd(steps))
    distance(store, noise=False)
    lines = reproduce_lines(report(store))
    s = shlex.quote(str(store))
    assert f"conetool kernels /ckpts --store {s} --kind trace --dtype float64" in lines
    assert not [line for line in lines if "None" in line.split()], lines


def test_reproduce_names_the_directory_its_relative_paths_start_from(tmp_path, monkeypatch):
    """The block's relative paths are those given to report (the store's, and its --out), so they
    start where the report was made: a store made in one folder and reported on from another
    said "from the directory the store was made in", where `--store made/store` is no path."""
    made = tmp_path / "made"
    made.mkdir()
    monkeypatch.chdir(made)
    steps = [0, 1, 2, 4, 8]
    make_store(Path("store"), steps, random_psd(steps))
    monkeypatch.chdir(tmp_path)
    result = report("made/store")
    (block,) = Page(result.html.read_text(encoding="utf-8")).pre["reproduce"]
    first = block.splitlines()[0]
    assert first.startswith("# relative paths are from the directory this report was made in: ")
    start = Path(shlex.split(first.split(": ", 1)[1])[0])
    assert start == tmp_path
    store_arg = shlex.split(reproduce_lines(result)[0]).index("--store") + 1
    assert (start / shlex.split(reproduce_lines(result)[0])[store_arg]).resolve() == (
        made / "store"
    ).resolve()


def test_reproduce_names_the_kernels_engine_when_it_was_chosen(run, tmp_path):
    _, ckpts, _, _ = run
    store = tmp_path / "store"
    kernels(ckpts, store=store, device="cpu", method="jacobian", steps="0:4")
    (line,) = [x for x in reproduce_lines(report(store)) if x.startswith("conetool kernels")]
    assert line.endswith("--probe-size 6 --method jacobian") and "--steps 0:4" in line


def test_reproduce_gives_kernels_the_spec_of_the_store_when_the_run_s_differs(run, tmp_path):
    """kernels --spec alt.toml (another [probe] seed than the run's conetool.toml): the block's
    kernels command on the run's directory gave no --spec, so it read the run's spec and drew
    another probe set."""
    _, ckpts, _, _ = run
    raw = tomllib.loads((ckpts / "conetool.toml").read_text())
    raw["probe"] = {**raw.get("probe", {}), "seed": 7}
    alt = tmp_path / "alt.toml"
    alt.write_text(spec_to_toml(spec_from_dict(raw)))
    store = tmp_path / "store"
    kernels(ckpts, spec=alt, store=store, device="cpu", steps="0:2")
    result = report(store)
    (line,) = [x for x in reproduce_lines(result) if x.startswith("conetool kernels")]
    assert f"--spec {shlex.quote(str(result.spec))}" in line
    again = tmp_path / "again"
    line = line.replace(f"--store {shlex.quote(str(store))}", f"--store {again}")
    outcome = runner.invoke(app, [*shlex.split(line)[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output
    old, new = Store.open(store).manifest, Store.open(again).manifest
    assert new["probe_hash"] == old["probe_hash"] and new["spec_hash"] == old["spec_hash"]


def test_reproduce_gives_switch_the_spec_its_points_were_trained_with(run, tmp_path):
    """switch --spec alt.toml, the store's kernels' spec (another [probe] seed than the run's
    conetool.toml): the block's switch command gave no --spec, so it swept with the run's spec
    (accepted: it differs in [probe] alone) and replaced the points by those of another spec.
    It names the report's spec.toml; a sweep whose spec no file of the store holds (another
    [probe] seed again) gets a comment saying so, and no file made up."""
    _, ckpts, _, _ = run
    raw = tomllib.loads((ckpts / "conetool.toml").read_text())
    specs = {}
    for seed in (7, 9):
        raw["probe"] = {**raw.get("probe", {}), "seed": seed}
        specs[seed] = tmp_path / f"alt{seed}.toml"
        specs[seed].write_text(spec_to_toml(spec_from_dict(raw)))
    store = tmp_path / "store"
    kernels(ckpts, spec=specs[7], store=store, device="cpu", steps="0:2")
    switch([8], store=store, spec=specs[7], device="cpu")
    result = report(store)
    (line,) = [x for x in reproduce_lines(result) if x.startswith("conetool switch")]
    assert line.endswith(f"--spec {shlex.quote(str(result.spec))}"), line
    swept = json.loads(paths.switch_point(store, 8).read_text())["key"]["spec_hash"]
    assert swept == Store.open(store).manifest["spec_hash"]
    outcome = runner.invoke(app, [*shlex.split(line)[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(paths.switch_point(store, 8).read_text())["key"]["spec_hash"] == swept
    assert "reused" in outcome.output  # the point of that spec, not one trained anew
    # a spec that no file of the store holds: said, not invented
    switch([8], store=store, spec=specs[9], device="cpu")
    page = Page(report(store).html.read_text(encoding="utf-8"))
    (block,) = page.pre["reproduce"]
    (line,) = [x for x in block.splitlines() if x.startswith("conetool switch")]
    assert "--spec" not in line, line
    comment = block.splitlines()[block.splitlines().index(line) - 1]
    assert comment.startswith("# the switch points were trained with a spec (hash "), comment
    assert "no file the store holds has it: add --spec with that spec file" in comment, comment


def test_reproduce_repeats_the_skip_bad_of_kernels(run, tmp_path):
    """kernels --skip-bad went on without an unreadable checkpoint, but the manifest did not
    record it, so the Reproduce block's kernels command stopped at that checkpoint."""
    _, ckpts, _, _ = run
    copy = tmp_path / "ckpts"
    shutil.copytree(ckpts, copy)
    paths.checkpoint(copy, 2).write_bytes(b"\x00" * 5)  # truncated: not readable
    store = tmp_path / "store"
    assert kernels(copy, store=store, device="cpu", skip_bad=True, steps="0:4").computed == [0, 4]
    (line,) = [x for x in reproduce_lines(report(store)) if x.startswith("conetool kernels")]
    assert line.endswith("--probe-size 6 --skip-bad") and "--steps 0:4" in line
    assert json.loads(paths.manifest(store).read_text())["skip_bad"] is True


def test_the_command_that_computes_more_kernels_works_on_the_store_it_names(run, tmp_path):
    """A store with one kernel: the Summary, Verdict and Missing parts suggest a kernels command
    for the others. It gave directory, store and selection only, so on a store made with
    --skip-bad it stopped at the checkpoint that run left out, and on one of another kind or
    probe size it was refused as another store (whose message offers --overwrite)."""
    _, ckpts, _, _ = run
    copy = tmp_path / "ckpts"
    shutil.copytree(ckpts, copy)
    paths.checkpoint(copy, 2).write_bytes(b"\x00" * 5)  # truncated: not readable
    store = tmp_path / "store"
    made = kernels(
        copy, store=store, device="cpu", skip_bad=True, steps="0:0", kind="sum", probe_size=4
    )
    assert made.computed == [0]
    result = report(store)
    text = paths.report_md(store).read_text()
    (reproduce,) = [x for x in reproduce_lines(result) if x.startswith("conetool kernels")]
    suggested = {m.group(0) for m in re.finditer(r"conetool kernels [^`\n]*", text)} - {reproduce}
    s, c = shlex.quote(str(store)), shlex.quote(str(copy))
    expected = f"conetool kernels {c} --store {s} --kind sum --dtype float32 --probe-size 4"
    assert suggested == {f"{expected} --skip-bad"}, suggested
    more = runner.invoke(app, [*shlex.split(suggested.pop())[1:], "-q"])
    assert more.exit_code == 0, more.output
    assert Store.open(store).steps() == [0, *range(4, 17, 2)]  # all but the bad step 2


def test_reproduce_follows_what_the_results_recorded(run, tmp_path):
    """Switch results without their T (an older conetool's) gave --until None; a spectrum that
    left out bad kernel files (skip_bad) was reproduced without --skip-bad."""
    _, _, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    switched = json.loads(paths.switch_results_json(copy).read_text())
    del switched["until"]
    paths.switch_results_json(copy).write_text(json.dumps(switched))
    summary = json.loads(paths.spectrum_summary(copy).read_text())
    summary["excluded"] = {"4": "not finite"}  # as spectrum(skip_bad=True) records it
    paths.spectrum_summary(copy).write_text(json.dumps(summary))
    lines = reproduce_lines(report(copy))
    s = shlex.quote(str(copy))
    assert f"conetool switch --at 0,8 --store {s}" in lines
    assert f"conetool spectrum --store {s} --top-k 3 --skip-bad" in lines
    assert not [line for line in lines if "None" in line.split()], lines


def test_reproduce_repeats_spectrum_logx_and_distance_no_noise(run, tmp_path):
    """spectrum --logx and distance --no-noise were not recorded in the results, so the
    Reproduce block dropped them: the commands given, run from the command line, come back in
    it, and the defaults given next time leave them out again."""
    _, _, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    s = shlex.quote(str(copy))
    for argv in (["distance", "--no-noise", "--logy"], ["spectrum", "--top-k", "3", "--logx"]):
        outcome = runner.invoke(app, [*argv, "--store", str(copy), "-q"])
        assert outcome.exit_code == 0, outcome.output
    lines = reproduce_lines(report(copy))
    assert f"conetool distance --store {s} --dt 2 --logy --no-noise" in lines
    assert f"conetool spectrum --store {s} --top-k 3 --logx" in lines
    assert json.loads(paths.distance_summary(copy).read_text())["options"]["noise"] is False
    assert json.loads(paths.spectrum_summary(copy).read_text())["options"] == {
        "logx": True,
        "skip_bad": False,
        "top_k": 3,
    }
    for argv in (["distance"], ["spectrum", "--top-k", "3"]):
        outcome = runner.invoke(app, [*argv, "--store", str(copy), "-q"])
        assert outcome.exit_code == 0, outcome.output
    lines = reproduce_lines(report(copy))
    assert f"conetool distance --store {s} --dt 2" in lines
    assert f"conetool spectrum --store {s} --top-k 3" in lines


def test_reproduce_repeats_the_top_k_given_beyond_the_kernels_size(run, tmp_path):
    """A --top-k above the kernel's size keeps every eigenvalue, and the summary's top_k is the
    number kept: the Reproduce block showed that number, not the command that was run."""
    _, _, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    s = shlex.quote(str(copy))
    outcome = runner.invoke(app, ["spectrum", "--top-k", "1000", "--store", str(copy), "-q"])
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(paths.spectrum_summary(copy).read_text())
    assert summary["top_k"] < 1000 and summary["options"]["top_k"] == 1000
    assert f"conetool spectrum --store {s} --top-k 1000" in reproduce_lines(report(copy))


def test_reproduce_repeats_the_beyond_run_of_a_switch_past_the_run(run, tmp_path):
    """switch --until T beyond the spec's train.steps needs --beyond-run; the block gave
    --until T without it, which switch refuses ("--until 20 is beyond the standard run")."""
    _, _, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    shutil.rmtree(paths.switch_dir(copy))
    switch(["8"], store=copy, device="cpu", until=18, beyond_run=True)
    s = shlex.quote(str(copy))
    (line,) = [x for x in reproduce_lines(report(copy)) if x.startswith("conetool switch")]
    assert line == f"conetool switch --at 8 --until 18 --beyond-run --store {s}"
    shutil.rmtree(paths.switch_dir(copy))
    outcome = runner.invoke(app, [*shlex.split(line)[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output


def test_fig_2_caption_promises_no_standard_line_when_there_is_no_standard_model(run, tmp_path):
    """Switch results without a standard model at T (a T past the run, no checkpoint of T):
    the figure draws no horizontal line, but its caption said "the horizontal line is the
    standard model at T"."""
    _, _, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    assert "horizontal line is the standard model" in report(copy).markdown.read_text()
    switched = json.loads(paths.switch_results_json(copy).read_text())
    switched["reference"] = None
    paths.switch_results_json(copy).write_text(json.dumps(switched))
    (caption,) = [c for c in Page(report(copy).html.read_text()).captions if "Fig. 2" in c]
    assert "horizontal line" not in caption and "no standard model at T" in caption, caption


def test_the_spectrum_caption_says_the_label_energy_is_of_the_centered_labels(run):
    """spectrum's label energy is ‖U_kᵀ C Y‖² / ‖C Y‖² (kernel_spectrum, README); the caption
    said "the labels' energy", which a reader computes from the one-hot Y (another number)."""
    _, _, _, result = run
    (caption,) = [c for c in Page(result.html.read_text()).captions if "spectrum" in c[:30]]
    assert "share of the centered labels' energy in the top 3 eigenvectors" in caption, caption


def test_kernels_only_store_lists_missing_parts_and_their_commands(run, tmp_path):
    _, ckpts, _, _ = run
    store = tmp_path / "only-kernels"
    kernels(ckpts, store=store, device="cpu")
    result = report(store)
    s = shlex.quote(str(store))
    parts = dict(result.missing)
    assert parts["kernel distance and verdict (Fig. 1a, 1b, S matrix)"] == (
        f"conetool distance --store {s}"
    )
    assert parts["cone embedding (Fig. 1c)"] == f"conetool embed --store {s}"
    # one fewer than the probe set's 6: --top-k 10 kept every eigenvalue, and spectrum warned
    # to pass a --top-k below 6 (a label energy of 1 at every step)
    assert parts["alignment and spectrum"] == f"conetool spectrum --store {s} --top-k 5"
    switch_command = parts["switch results (Fig. 2)"]
    assert switch_command.startswith("conetool switch --at 0,") and switch_command.endswith(
        f"--store {s}"
    )
    assert result.sections == ["summary", "training", "checkpoints", "run", "reproduce"]
    page = Page(result.html.read_text(encoding="utf-8"))
    assert [image["alt"] for image in page.images] == [
        "Training and test loss and accuracy against step"
    ]  # only the training curves, drawn from metrics.csv
    missing_text = page.section("missing")
    for command in parts.values():
        assert command in missing_text
    # the suggested commands work, and the report then holds what they made
    for command in (
        parts["cone embedding (Fig. 1c)"],
        parts["alignment and spectrum"],
        switch_command,
    ):
        outcome = runner.invoke(app, [*shlex.split(command)[1:], "-q"])
        assert outcome.exit_code == 0, outcome.output
        assert "warning" not in outcome.output, outcome.output
    again = report(store)
    assert [part for part, _ in again.missing] == [
        "kernel distance and verdict (Fig. 1a, 1b, S matrix)"
    ]
    assert again.figures == [
        paths.report_training_png(store),
        paths.embedding_png(store),
        paths.spectrum_png(store),
        paths.switch_png(store),
    ]


def test_missing_figure_and_stale_results_are_reported(run, tmp_path):
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    paths.matrix_png(copy).unlink()
    summary = json.loads(paths.distance_summary(copy).read_text())
    summary["steps"]["count"] -= 1
    summary["verdict"]["explanation"] = "<b>bold?</b> & more"
    paths.distance_summary(copy).write_text(json.dumps(summary))
    result = report(copy)
    s = shlex.quote(str(copy))
    # the store's own distance command (its references, dts, rule and --logx), as the
    # Reproduce block gives it: the default one would draw other curves
    own = f"conetool distance --store {s} --ref 0 --ref 4 --dt 2 --dt 4 --min-drop 3.0 --logx"
    assert ("S matrix (distance/matrix.png)", own) in result.missing
    assert paths.matrix_png(copy) not in result.figures and len(result.figures) == 6
    stale = [n for n in result.warnings if "conetool distance results cover 8 steps" in n]
    assert len(stale) == 1 and f"rerun {own} to bring them up to date" in stale[0], stale
    markup = result.html.read_text(encoding="utf-8")
    assert "&lt;b&gt;bold?&lt;/b&gt; &amp; more" in markup and "<b>bold?" not in markup
    assert "\\<b>bold?\\</b> & more" in result.markdown.read_text(encoding="utf-8")


def test_a_truncated_figure_is_left_out_with_a_warning_naming_it(run, tmp_path):
    # a PNG cut short was embedded byte for byte: a broken image, said nowhere
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    png = paths.to_ref_png(copy)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    result = report(copy)
    said = [w for w in result.warnings if str(png) in w]
    assert said and "not a whole PNG" in said[0], result.warnings
    assert f"rerun conetool distance --store {shlex.quote(str(copy))}" in said[0], said
    assert png not in result.figures and paths.adjacent_png(copy) in result.figures
    assert f"Warning: {said[0]}" in Page(result.html.read_text(encoding="utf-8")).section("missing")


@pytest.mark.parametrize("cut", ["a row cut short", "a last row lost"])
def test_a_damaged_spectrum_csv_is_named_not_its_summary(run, tmp_path, cut):
    # the report shows spectrum.csv's first and last rows: a row cut short ended the spectrum
    # section with a warning blaming summary.json; a lost last row showed another step as the
    # last, said nowhere
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    table = paths.spectrum_csv(copy)
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    if cut == "a row cut short":
        lines[-1] = lines[-1][:5] + "\n"
    else:
        lines = lines[:-1]
    table.write_text("".join(lines), encoding="utf-8")
    result = report(copy)
    said = [w for w in result.warnings if "spectrum" in w]
    assert len(said) == 1 and said[0].startswith(f"{table} "), result.warnings
    assert "rerun conetool spectrum --store" in said[0], said
    assert "spectrum" in result.sections and paths.spectrum_png(copy) in result.figures
    page = Page(result.html.read_text(encoding="utf-8"))
    assert "First and last stored step" not in page.section("spectrum")


def test_a_deleted_kernel_file_is_named_with_the_command_that_recomputes_it(run, tmp_path):
    # distance, embed and spectrum each stop at a kernel file deleted from the store, naming
    # it; the report said nothing about it
    _, ckpts, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    paths.kernel(copy, 4).unlink()
    warnings = report(copy).warnings
    command = f"conetool kernels {shlex.quote(str(ckpts))} --store {shlex.quote(str(copy))}"
    said = [w for w in warnings if "missing" in w]
    assert len(said) == 1, warnings
    assert said[0].startswith(
        f"the kernel file of stored step 4 is missing ({paths.kernel(copy, 4)}): conetool "
        "distance, embed and spectrum stop at it (--skip-bad leaves it out); recompute it: "
        f"{command}"
    ), said
    notes = Page(paths.report_html(copy).read_text(encoding="utf-8")).section("missing")
    assert "Warning: the kernel file of stored step 4 is missing" in notes
    # the command it names recomputes the step, and the warning goes
    assert kernels(ckpts, store=copy, device="cpu").computed == [4]
    assert not any("missing" in w for w in report(copy).warnings)


def test_warnings_alone_get_a_notes_section(run, tmp_path):
    # the section of missing parts is there for the report's warnings too, titled Notes when
    # no part is missing (README: "Missing parts, or Notes when no part is missing")
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    summary = json.loads(paths.distance_summary(copy).read_text())
    summary["steps"]["count"] -= 1
    paths.distance_summary(copy).write_text(json.dumps(summary))
    result = report(copy)
    assert result.missing == [] and result.warnings
    notes = Page(result.html.read_text(encoding="utf-8")).section("missing")
    assert notes.startswith("Notes") and "Missing parts" not in notes, notes
    assert "Warning: the conetool distance results cover 8 steps" in notes


def safe_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def test_results_of_kernels_recomputed_since_are_noted_and_a_copy_raises_no_alarm(run, tmp_path):
    # distance and embed record which kernels they read (not the files' times): a copy of the
    # store reads as current, a kernel recomputed from a changed checkpoint does not
    _, ckpts, store, _ = run
    copied = tmp_path / "copied"
    shutil.copytree(store, copied, copy_function=shutil.copy)  # new file times
    assert not any("recomputed since" in n for n in report(copied).warnings)
    run_copy, changed = tmp_path / "ckpts", tmp_path / "changed"
    shutil.copytree(ckpts, run_copy)
    shutil.copytree(store, changed)
    manifest = json.loads(paths.manifest(changed).read_text())
    manifest["checkpoints"] = str(run_copy.resolve())  # the store of the copied run
    paths.manifest(changed).write_text(json.dumps(manifest, indent=2))
    path = paths.checkpoint(run_copy, 4)
    state = {k: v * 1.5 if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(state, str(path), metadata=safe_metadata(path))
    assert kernels(run_copy, store=changed, device="cpu").computed == [4]
    notes = report(changed).warnings
    for command in ("conetool distance", "conetool embed"):
        assert any(
            f"the {command} results were computed from kernels that have been recomputed since" in n
            for n in notes
        ), notes


def test_long_checkpoint_table_folds_away(run, tmp_path):
    _, _, store, _ = run
    copy = tmp_path / "many"
    shutil.copytree(store, copy)
    manifest = json.loads(paths.manifest(copy).read_text())
    record = manifest["steps"]["0"]
    for step in range(100, 100 + 60):
        manifest["steps"][str(step)] = {**record, "step": step}
    paths.manifest(copy).write_text(json.dumps(manifest))
    result = report(copy)
    markup = result.html.read_text(encoding="utf-8")
    assert "<details><summary>Show all 69 checkpoints</summary>" in markup
    assert "<details>" not in paths.report_html(store).read_text(encoding="utf-8")


def test_out_directory_keeps_markdown_links_valid(run, tmp_path):
    _, _, store, _ = run
    result = report(store, out=tmp_path / "elsewhere")
    md = result.markdown.read_text(encoding="utf-8")
    for link in re.findall(r"!\[[^\]]+\]\(([^)]+)\)", md):
        assert (result.markdown.parent / link).is_file(), link
    assert f"--out {shlex.quote(str(tmp_path / 'elsewhere'))}" in md


def test_cli_report_and_missing_store(run, tmp_path):
    _, _, store, _ = run
    outcome = runner.invoke(app, ["report", "--store", str(store)])
    assert outcome.exit_code == 0, outcome.output
    assert "verdict" in outcome.output and "report.html" in outcome.output
    wrote = " ".join(outcome.output.split())  # rich wraps the line at the terminal's width
    # the fixture's report drew training.png: this rerun leaves it, and says so apart
    assert "7 figures embedded), report.md, spec.toml; kept training.png (unchanged)" in wrote
    missing = tmp_path / "nowhere"
    outcome = runner.invoke(app, ["report", "--store", str(missing)])
    assert outcome.exit_code == 1
    assert "does not exist" in outcome.output and "conetool kernels" in outcome.output
    assert "Traceback" not in outcome.output
    with pytest.raises(StoreError):
        report(missing)
    helped = runner.invoke(app, ["report", "--help"])
    assert helped.exit_code == 0 and "Example: conetool report" in helped.output


def test_readme_documents_the_report_files():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "### `conetool report`" in readme
    for name in ("report.html", "report.md", "spec.toml"):
        assert name in readme


def test_training_curves_come_from_metrics_csv_and_are_left_out_without_it(run, tmp_path):
    _, ckpts, store, result = run
    assert "training" in result.sections and paths.report_training_png(store).is_file()
    assert result.training_png == paths.report_training_png(store)
    rows = list(csv.DictReader(open(paths.metrics(ckpts), newline="")))
    assert rows and {"train_loss", "test_acc"} <= set(rows[0])
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    paths.metrics(ckpts).rename(tmp_path / "metrics.csv")  # a run from another training loop
    try:
        again = report(copy)
    finally:
        (tmp_path / "metrics.csv").rename(paths.metrics(ckpts))
    assert "training" not in again.sections and again.training_png is None
    assert paths.report_training_png(copy) not in again.figures
    assert "No metrics.csv" in Page(again.html.read_text(encoding="utf-8")).section("training")


def test_training_curves_of_an_earlier_report_are_removed_when_no_longer_drawn(run, tmp_path):
    # report/training.png of an earlier report stayed beside a page that no longer links it
    # (the run lost its metrics.csv); a user's own file of that name is left as it is
    _, ckpts, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    drawn = paths.report_training_png(copy)
    assert drawn.is_file()
    own = tmp_path / "own"
    own.mkdir()
    (own / drawn.name).write_bytes(b"not conetool's")
    paths.metrics(ckpts).rename(tmp_path / "metrics.csv")
    try:
        again = report(copy)
        result = runner.invoke(app, ["report", "--store", str(copy), "--out", str(own)])
    finally:
        (tmp_path / "metrics.csv").rename(paths.metrics(ckpts))
    assert again.training_png is None and not drawn.exists()
    assert again.removed == [drawn]
    assert drawn.name not in (copy / "report" / "report.md").read_text(encoding="utf-8")
    assert result.exit_code == 0, result.output
    assert (own / drawn.name).read_bytes() == b"not conetool's"
    assert "removed" not in result.output
    back = runner.invoke(app, ["report", "--store", str(copy)])  # drawn again; nothing removed
    assert back.exit_code == 0 and drawn.is_file() and "removed" not in back.output


def test_training_curves_are_kept_when_the_run_is_not_there_to_tell(run, tmp_path):
    # the run's folder moved (or a disk not mounted): its metrics.csv is not known to be gone,
    # and the earlier report's training.png may be the only copy of its curves; it was removed
    _, ckpts, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    drawn = paths.report_training_png(copy)
    assert drawn.is_file()
    away = tmp_path / "away"
    ckpts.rename(away)
    try:
        again = report(copy)
    finally:
        away.rename(ckpts)
    assert again.training_png is None and again.removed == []
    assert drawn.is_file()
    assert any("is not there (moved or deleted)" in w for w in again.warnings), again.warnings


def test_a_moved_run_is_found_with_ckpts(run, tmp_path):
    # The manifest names the checkpoint directory kernels read; after the run moved, --ckpts says
    # where it is now: its metrics.csv gives the training curves, and the reproduce commands
    # name it.
    _, ckpts, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    moved = tmp_path / "moved-ckpts"
    shutil.copytree(ckpts, moved)
    paths.metrics(ckpts).rename(tmp_path / "metrics.csv")  # the old place has none
    try:
        lost = report(copy)
        found = runner.invoke(app, ["report", "--store", str(copy), "--ckpts", str(moved), "-q"])
    finally:
        (tmp_path / "metrics.csv").rename(paths.metrics(ckpts))
    assert "training" not in lost.sections
    assert found.exit_code == 0, found.output
    page = Page(paths.report_html(copy).read_text(encoding="utf-8"))
    assert "Training and test loss and accuracy against step" in [i["alt"] for i in page.images]
    assert f"conetool kernels {shlex.quote(str(moved))}" in page.section("reproduce")
    refused = runner.invoke(app, ["report", "--store", str(copy), "--ckpts", str(tmp_path / "x")])
    assert refused.exit_code == 1 and "--ckpts" in refused.output


def test_a_run_gone_from_where_kernels_read_it_is_said_with_the_ckpts_flag(run, tmp_path):
    """After the run moved (the demo's --out renamed, say), report without --ckpts said nothing:
    the training curves were gone under "No metrics.csv in the checkpoint directory (written by
    conetool train)" and the Reproduce commands named a directory that is not there."""
    _, ckpts, _, _ = run
    was = tmp_path / "run"
    shutil.copytree(ckpts, was)
    store = tmp_path / "store"
    kernels(was, store=store, device="cpu")
    moved = tmp_path / "moved"
    was.rename(moved)
    lost = report(store)
    s = shlex.quote(str(store))
    (said,) = [w for w in lost.warnings if "is not there" in w]
    assert said == (
        f"the run's checkpoint directory {was}, where conetool kernels read it, is not there "
        "(moved or deleted): the report has no training curves, and its Reproduce commands name "
        f"that directory. If the run moved, pass where it is now: conetool report --store {s} "
        "--ckpts DIR"
    )
    page = Page(lost.html.read_text(encoding="utf-8"))
    assert f"Warning: {said}" in page.section("missing")
    assert f"The checkpoint directory {was} is not there" in page.section("training")
    found = report(store, ckpts=moved)  # the command it names
    assert not [w for w in found.warnings if "is not there" in w] and found.training_png


@pytest.mark.parametrize("how", ["kernels rerun there", "report --ckpts"])
def test_the_switch_command_of_a_moved_run_names_no_old_place(run, tmp_path, how):
    # switch read the store's run; after the run moved (and kernels was rerun there, which
    # moves the manifest's record, or report was given --ckpts), the Reproduce block's switch
    # command said --ckpts <where the run was>, from the checkpoint files its points recorded
    _, ckpts, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    moved = tmp_path / "moved"
    shutil.copytree(ckpts, moved)
    if how == "kernels rerun there":
        kernels(moved, store=copy, device="cpu")
        result = report(copy)
    else:
        result = report(copy, ckpts=moved)
    reproduce = Page(result.html.read_text(encoding="utf-8")).section("reproduce")
    assert str(ckpts) not in reproduce, reproduce
    (line,) = [c for c in reproduce.split("conetool ")[1:] if c.startswith("switch ")]
    assert "--ckpts" not in line, reproduce
    assert f"conetool kernels {shlex.quote(str(moved))}" in reproduce, reproduce


def test_the_switch_command_of_a_run_gone_from_its_recorded_place_names_where_it_is(run, tmp_path):
    """report --ckpts NEW of a run moved from where kernels read it (the manifest's folder gone):
    the switch command, in the Reproduce block and in the rewrite command of a missing figure,
    had no --ckpts, so switch read the manifest's folder, and refused. It names NEW, and runs."""
    _, ckpts, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    paths.switch_png(copy).unlink()  # so that its rewrite command is given too
    moved = tmp_path / "moved"
    shutil.copytree(ckpts, moved)
    gone = tmp_path / "gone"
    ckpts.rename(gone)  # the fixture's run is not where the manifest records it
    try:
        result = report(copy, ckpts=moved)
        (own,) = [line for line in reproduce_lines(result) if line.startswith("conetool switch ")]
        outcome = runner.invoke(app, [*shlex.split(own)[1:], "-q"])
    finally:
        gone.rename(ckpts)
    assert outcome.exit_code == 0, (own, outcome.output)
    assert paths.switch_png(copy).is_file()
    s, m = shlex.quote(str(copy)), shlex.quote(str(moved))
    assert own == f"conetool switch --at 0,8 --until 16 --store {s} --ckpts {m}", own
    listed = [c for part, c in result.missing if "switch.png" in part]
    assert listed == [own], result.missing


def test_a_moved_run_keeps_its_checkpoint_names_in_folders(run, tmp_path):
    # Checkpoints in folders (the Hugging Face layout, checkpoint-N/model.safetensors): the table
    # names each file relative to the checkpoint directory, the same with --ckpts after the run
    # moved as before (the names inside the run do not change when it moves).
    _, ckpts, _, _ = run
    folders = tmp_path / "hf"
    for step in (0, 4, 8):
        folder = folders / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        shutil.copy(paths.checkpoint(ckpts, step), folder / "model.safetensors")
    shutil.copy(paths.spec(ckpts), paths.spec(folders))
    store = tmp_path / "store"
    kernels(folders, store=store, device="cpu")
    moved = tmp_path / "moved"
    folders.rename(moved)
    result = runner.invoke(app, ["report", "--store", str(store), "--ckpts", str(moved), "-q"])
    assert result.exit_code == 0, result.output
    table = Page(paths.report_html(store).read_text(encoding="utf-8")).section("checkpoints")
    assert str(moved) in table
    for step in (0, 4, 8):
        assert f"{step} checkpoint-{step}/model.safetensors" in table


def test_results_made_while_kernels_was_writing_are_noted(run, tmp_path):
    # A reader run during `kernels` sees the kernel files written so far (manifest.json lags
    # behind them); once the run has written more, the report notes every result made from the
    # partial store, the spectrum's too (its table says "first and last stored step")
    _, _, store, _ = run
    partial = tmp_path / "partial"
    shutil.copytree(store, partial)
    last = paths.kernel(partial, 16)
    held = tmp_path / "step_16.safetensors"
    shutil.move(last, held)  # not written yet
    manifest = json.loads(paths.manifest(partial).read_text())
    del manifest["steps"]["16"]
    paths.manifest(partial).write_text(json.dumps(manifest, indent=2))
    distance(partial, noise=False)
    embed(partial, method="pca", dims=2)
    spectrum(partial, top_k=3)
    assert report(partial).warnings == []
    shutil.move(held, last)  # kernels writes the file; manifest.json follows up to 1 s later
    notes = report(partial).warnings
    for command in ("conetool distance", "conetool embed", "conetool spectrum"):
        assert any(
            f"the {command} results cover 8 steps (0 to 14), the store now holds 9 (0 to 16)" in n
            for n in notes
        ), notes
    spectrum(partial, top_k=3)
    assert not any("conetool spectrum" in n for n in report(partial).warnings)


# --------------------------------------------------------------------------- read while written

_HOLD = (
    "import sys\n"
    "from conetool.store_lock import StoreLock\n"
    "lock = StoreLock.acquire(sys.argv[1])\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def _holder(store: Path) -> subprocess.Popen:
    """Another process holding the store's writer lock, as `conetool kernels` does, until its
    stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _partial(store: Path, folder: Path) -> Path:
    """A copy of ``store`` as a kernels run leaves it after 8 of the 9 checkpoints it selected."""
    partial = folder / "partial"
    shutil.copytree(store, partial)
    paths.kernel(partial, 16).unlink()
    manifest = json.loads(paths.manifest(partial).read_text())
    del manifest["steps"]["16"]
    assert manifest["selected_steps"] == list(range(0, 17, 2))  # recorded by kernels
    paths.manifest(partial).write_text(json.dumps(manifest, indent=2))
    for folder_name in paths.DERIVED_DIRS:
        shutil.rmtree(partial / folder_name, ignore_errors=True)
    return partial


def test_the_report_of_a_store_kernels_is_still_writing_says_so(run, tmp_path):
    # was: "at 8 checkpoints", as if the run had 8; nothing said kernels was running
    _, _, store, _ = run
    partial = _partial(store, tmp_path)
    holder = _holder(partial)
    try:
        result = report(partial)
    finally:
        holder.communicate("")  # ends it: the OS releases its lock
    note = result.warnings[0]
    assert note.startswith(f"conetool kernels is still writing this store (pid {holder.pid} on ")
    assert "the numbers here are of the 8 of 9 kernels stored so far" in note
    page = Page(paths.report_html(partial).read_text(encoding="utf-8"))
    assert "at the 8 of 9 checkpoints stored so far (conetool kernels is still running)" in (
        page.section("summary")
    )
    assert "8 of 9 kernels stored so far" in page.section("checkpoints")
    assert result.details["summary"].endswith("8 of 9 checkpoints so far (kernels running)")
    # it ended: the report is of the store as it is
    after = report(partial)
    assert not any("still writing" in n for n in after.warnings)
    assert "at 8 checkpoints" in Page(paths.report_html(partial).read_text()).section("summary")


def test_a_killed_kernels_run_is_not_reported_as_running(run, tmp_path):
    # a kill leaves the lock file's note (the OS releases the lock): the pid is checked
    _, _, store, _ = run
    partial = _partial(store, tmp_path)
    holder = _holder(partial)
    holder.kill()
    holder.wait()
    assert f"pid {holder.pid}" in paths.lock(partial).read_text()
    assert not any("still writing" in n for n in report(partial).warnings)


def test_report_writes_nothing_into_a_store_replaced_while_it_was_read(run, tmp_path, monkeypatch):
    _, _, store, _ = run
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    shutil.rmtree(paths.report_dir(copy))

    def moved_then_replaced(ckpts):
        other = StoreIdentity("spec1", "probe0", "trace", "float32")
        Store.open_for_writing(copy, other, {"checkpoints": "/ckpts"}, overwrite=True).close()

    monkeypatch.setattr(run_report, "moved_run", moved_then_replaced)
    with pytest.raises(StoreReplacedError, match="conetool report stopped and wrote nothing"):
        report(copy)
    assert not paths.report_dir(copy).exists()


def test_results_that_left_out_a_kernel_readable_now_are_noted(tmp_path):
    """distance --skip-bad left out step 20 (its file was damaged); kernels then recomputed it
    (same checkpoint: the same fingerprint and norm, so the same kernels key, the same steps).
    The report said nothing, though distance's verdict and curves still lack step 20 and its
    verdict section named a file that can be read now."""
    steps = [0, 10, 20, 30]
    kernels_ = random_psd(steps, n=4, seed=3)
    root = make_store(tmp_path / "s", steps, kernels_)
    kernel_file = root / "kernels" / "step_000020.safetensors"
    good = kernel_file.read_bytes()
    kernel_file.write_bytes(good[:40])  # damaged
    left = distance(root, skip_bad=True, noise=False)
    assert list(left.excluded) == [20]
    assert not any("left out" in w for w in report(root).warnings)  # it is still unreadable
    kernel_file.write_bytes(good)  # recomputed: the same kernel as before
    warnings = report(root).warnings
    assert any(
        "the conetool distance results left out step 20 (--skip-bad), whose kernel file can "
        "be used now" in w
        for w in warnings
    ), warnings
    assert distance(root, skip_bad=True, noise=False).excluded == {}
    assert not any("left out" in w for w in report(root).warnings)


def test_the_embedding_figure_s_alt_text_names_its_dimensions(run, tmp_path):
    _, _, store, result = run
    alts = [image["alt"] for image in Page(result.html.read_text(encoding="utf-8")).images]
    assert "Fig. 1c: the kernel trajectory embedded in the plane" in alts
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    embed(copy, method="pca", dims=3, seed=3)  # was: "embedded in the plane" for 3-D too
    alts = [image["alt"] for image in Page(report(copy).html.read_text(encoding="utf-8")).images]
    assert "Fig. 1c: the kernel trajectory embedded in three dimensions" in alts


@pytest.mark.parametrize(
    ("file", "key", "value", "command"),
    [
        ("distance/summary.json", "rules", 10**30, "conetool distance"),  # found by the fuzz
        ("distance/summary.json", "verdict", "x", "conetool distance"),
        ("switch/results.json", "points", [{"at": "x"}], "conetool switch"),
        ("switch/results.json", "points", 3, "conetool switch"),
    ],
)
def test_a_results_file_of_another_shape_is_a_warning_naming_it(
    run, tmp_path, file, key, value, command
):
    """A results JSON holding a value of another type than conetool writes there (found by
    scripts/fuzz_cli.py --mode store: distance/summary.json "rules": 1e30) ended the report in
    AttributeError and a traceback; it is left out, as an unreadable file is, naming its fix."""
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    data = json.loads((copy / file).read_text())
    data[key] = value
    (copy / file).write_text(json.dumps(data))
    result = report(copy)
    said = [w for w in result.warnings if str(copy / file) in w]
    assert said and f"rerun {command} to rewrite it" in said[0], result.warnings
    assert result.html.is_file()


def _cut_last_line(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _lose_last_row(path: Path) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("file", "damage", "said", "command"),
    [
        (paths.to_ref_csv, Path.unlink, "is missing", "distance"),
        (paths.adjacent_csv, _cut_last_line, "is cut short", "distance"),
        (
            paths.adjacent_csv,
            _lose_last_row,
            "holds 14 rows, where its summary.json says 15",
            "distance",
        ),
        (paths.matrix_npz, _cut_in_half, "cannot be opened as .npz", "distance"),
        (paths.coords_csv, _lose_last_row, "holds 8 rows, where its summary.json says 9", "embed"),
        (paths.switch_results_csv, Path.unlink, "is missing", "switch"),
    ],
)
def test_a_file_a_caption_points_to_that_is_missing_or_cut_short_is_named(
    run, tmp_path, file, damage, said, command
):
    # the captions send a reader to distance/to_ref.csv, adjacent.csv, matrix.npz,
    # embed/coords.csv and switch/results.csv; the report never looked at them, so it pointed
    # to a file that was not there or cut short, said nowhere
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    damage(file(copy))
    result = report(copy)
    named = [w for w in result.warnings if w.startswith(f"{file(copy)} ")]
    assert len(named) == 1 and said in named[0], result.warnings
    assert len(result.warnings) == 1, result.warnings
    assert f"Warning: {named[0]}" in Page(result.html.read_text(encoding="utf-8")).section(
        "missing"
    )
    rerun = named[0].split("; rerun ", 1)[1].removesuffix(" to rewrite it")
    argv = shlex.split(rerun)
    assert argv[:2] == ["conetool", command] and f"--store {shlex.quote(str(copy))}" in rerun
    outcome = runner.invoke(app, [*argv[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output
    assert report(copy).warnings == []  # the command named rewrote it


@pytest.mark.parametrize("damage", ["damaged", "missing", "without its key"])
def test_a_switch_point_s_own_file_that_cannot_be_read_is_named(run, tmp_path, damage):
    # switch/at_<t>.json records the spec and checkpoint a point was trained from (the note on
    # points trained with another spec and the Reproduce block's --ckpts read it); one that
    # could not be read was skipped without a word
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    point = paths.switch_point(copy, 8)
    if damage == "damaged":
        point.write_text(point.read_text()[:40])
    elif damage == "missing":
        point.unlink()
    else:
        point.write_text(json.dumps({**json.loads(point.read_text()), "key": None}))
    result = report(copy)
    assert len(result.warnings) == 1, result.warnings
    said = result.warnings[0]
    assert said.startswith(f"switch point 8's file ({point}) is missing or cannot be read"), said
    assert "trained with another spec" in said and "--ckpts" in said, said
    rerun = said.split("; rerun ", 1)[1].split(" to train it again")[0]
    assert rerun == f"conetool switch --at 0,8 --until 16 --store {shlex.quote(str(copy))}"
    outcome = runner.invoke(app, [*shlex.split(rerun)[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output
    assert report(copy).warnings == []  # the point trained again, its file rewritten


@pytest.mark.parametrize(
    ("figure", "damage", "command"),
    [
        (paths.switch_png, _cut_in_half, "switch"),
        (paths.switch_png, Path.unlink, "switch"),
        (paths.to_ref_png, Path.unlink, "distance"),
        (paths.adjacent_png, _cut_in_half, "distance"),
        (paths.embedding_png, Path.unlink, "embed"),
    ],
)
def test_a_figure_is_drawn_again_by_the_command_that_made_the_store_s_results(
    run, tmp_path, figure, damage, command
):
    # a missing or damaged figure was named with the default command (switch at suggested
    # steps, distance from step 0 at its default dts, embed by MDS), which rewrote the store's
    # results as others: now the Reproduce block's, with the store's own --at, T, references,
    # dts and options
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    png = figure(copy)
    damage(png)
    result = report(copy)
    (own,) = [line for line in reproduce_lines(result) if line.startswith(f"conetool {command} ")]
    warned = [w for w in result.warnings if str(png) in w]
    listed = [c for part, c in result.missing if png.relative_to(copy).as_posix() in part]
    named = [w.split("; rerun ", 1)[1].removesuffix(" to draw it again") for w in warned] + listed
    assert named == [own], (named, result.warnings, result.missing)
    summary = {
        "switch": paths.switch_results_json,
        "distance": paths.distance_summary,
        "embed": paths.embed_summary,
    }[command](copy)
    kept = ("points", "until", "refs", "dts", "rules", "options", "method", "dims", "seed")
    before = {k: v for k, v in json.loads(summary.read_text()).items() if k in kept}
    outcome = runner.invoke(app, [*shlex.split(own)[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output
    after = {k: v for k, v in json.loads(summary.read_text()).items() if k in kept}
    if command == "switch":  # a point's seconds are its own run's
        for points in (before["points"], after["points"]):
            for point in points:
                point.pop("seconds", None)
    assert after == before  # the same results, drawn again
    again = report(copy)
    assert again.warnings == [] and again.missing == [], (again.warnings, again.missing)


def test_a_stale_result_s_rerun_keeps_its_options(run, tmp_path):
    # results that cover other steps than the store now holds were to be brought up to date by
    # the default command (embed by MDS in two dimensions, seed 0)
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    summary = json.loads(paths.embed_summary(copy).read_text())
    summary["steps"]["count"] -= 1
    paths.embed_summary(copy).write_text(json.dumps(summary))
    result = report(copy)
    stale = [w for w in result.warnings if "conetool embed results cover" in w]
    own = f"conetool embed --store {shlex.quote(str(copy))} --method pca --dims 2 --seed 3"
    assert len(stale) == 1 and stale[0].endswith(f"rerun {own} to bring them up to date"), stale


def test_a_store_without_switch_points_is_still_given_suggested_steps(run, tmp_path):
    # the fallback where the store holds no sweep: the stored steps nearest the start, 5%, 20%
    # and 50% of the run
    _, _, store, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    shutil.rmtree(paths.switch_dir(copy))
    result = report(copy)
    s = shlex.quote(str(copy))
    assert ("switch results (Fig. 2)", f"conetool switch --at 0,4,8 --store {s}") in result.missing


def _per_layer_store(run, folder: Path) -> Path:
    """A store of the run's kernels with their per-layer kernels, and distance's results of
    them (references 4 and 0, given out of order)."""
    _, ckpts, _, _ = run
    store = folder / "layers"
    kernels(ckpts, store=store, device="cpu", per_layer=True)
    distance(store, refs=[4, 0], dts=[2])
    return store


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (Path.unlink, "is missing"),
        (_cut_last_line, "is cut short"),
        (_lose_last_row, "holds 17 rows, where its summary.json says 18"),
    ],
)
def test_the_per_layer_csv_its_caption_points_to_is_checked(run, tmp_path, damage, said):
    # the per-layer figure's caption sends a reader to distance/per_layer.csv, which the report
    # never looked at (the other CSVs the captions name are checked)
    store = _per_layer_store(run, tmp_path)
    assert report(store).warnings == []
    table = paths.per_layer_csv(store)
    damage(table)
    result = report(store)
    named = [w for w in result.warnings if w.startswith(f"{table} ")]
    assert len(named) == 1 and said in named[0], result.warnings
    assert "the per-layer figure's caption points to it" in named[0], named
    own = f"conetool distance --store {shlex.quote(str(store))} --ref 0 --ref 4 --dt 2"
    assert named[0].endswith(f"rerun {own} to rewrite it"), named
    outcome = runner.invoke(app, [*shlex.split(own)[1:], "-q"])
    assert outcome.exit_code == 0, outcome.output
    assert report(store).warnings == []
