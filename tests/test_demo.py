"""`conetool demo` end to end at a tiny size: every artifact, and a second run reuses them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from demo_run import fake_demo, finished_demo
from safetensors.torch import save_file
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import ConetoolError, StoreError
from conetool.loop import TrainingLoop
from conetool.pipeline import demo
from conetool.pipeline.run_demo import default_switch_points, demo_spec
from conetool.spec import load_spec, save_spec, save_steps

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_packaged_demo_spec_is_the_example():
    assert demo_spec() == load_spec(ROOT / "examples" / "digits_lenet.toml")


def test_shortened_spec_scales_the_checkpoints():
    spec = demo_spec(steps=240, probe_size=10)
    assert spec.train.steps == 240 and spec.probe.size == 10
    assert spec.train.save_every == 10 and spec.train.dense_until == 10
    assert default_switch_points(2400) == [0, 100, 400, 1200]


def test_a_run_longer_than_a_toml_integer_is_refused():
    """demo --steps 99999999999999999999 trained without end; a spec's train.steps is refused
    beyond 2**63 - 1 (TOML's largest integer), and --steps is too, naming the flag."""
    with pytest.raises(ConetoolError, match=r"^--steps 9223372036854775808: .* at most 9223"):
        demo_spec(steps=2**63)
    assert demo_spec(steps=2**63 - 1).train.steps == 2**63 - 1


@pytest.mark.parametrize("size", [400, 2000])
def test_a_probe_size_beyond_the_digits_is_refused_before_training(tmp_path, size):
    """demo --probe-size 400 trained the whole run, then failed naming --eval-size (never
    passed: the demo's evaluation set, as large as the probe set, comes from the 360 test
    images); --probe-size 2000 was refused as the spec's [probe] and "Set probe.size"."""
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo", "--out", str(out), "--steps", "8", "--probe-size", str(size)]
    )
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"--probe-size {size} is larger than the demo's data allows" in text, text
    assert "Pass --probe-size 360 or less." in text, text
    assert "--eval-size" not in text and "probe.size" not in text, text
    assert not out.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    # demo(out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8]), run once per session
    return finished_demo(tmp_path_factory)


def test_demo_writes_every_artifact(finished):
    store = finished.store
    assert paths.checkpoint(finished.ckpts, 24).exists()
    assert paths.manifest(store).exists() and paths.probe(store).exists()
    assert len(list((store / paths.KERNELS_DIR).glob("*.safetensors"))) >= 8
    for path in (
        paths.to_ref_csv(store),
        paths.adjacent_csv(store),
        paths.matrix_npz(store),
        paths.distance_summary(store),
        paths.coords_csv(store),
        paths.embedding_png(store),
        paths.switch_results_csv(store),
        paths.switch_png(store),
        finished.report_html,
        finished.report_md,
    ):
        assert path.exists() and path.stat().st_size > 0, path
    summary = json.loads(paths.distance_summary(store).read_text())
    assert len(summary["refs"]) >= 2  # several references
    html = finished.report_html.read_text()
    assert finished.verdict["regime"] in html
    assert html.count("data:image/png;base64,") >= 6  # Fig. 1a, 1b, 1c, 2, S matrix, spectrum
    assert set(finished.stage_seconds) == {
        "train",
        "kernels",
        "distance",
        "embed",
        "spectrum",
        "switch",
        "report",
    }


def test_second_run_reuses_everything(finished, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the demo trained again")

    monkeypatch.setattr(TrainingLoop, "run", no_training)
    again = demo(finished.out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8])
    assert again.verdict == finished.verdict


def test_cli_demo(finished):
    result = CliRunner().invoke(
        app,
        ["demo", "--out", str(finished.out), "--steps", "24", "--probe-size", "10", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert "verdict:" in result.output and "report.html" in result.output


def test_every_stage_runs_with_the_demos_threads(finished, monkeypatch):
    """demo(threads=N) resolves N once and hands it to every stage: a stage left at "auto" would
    count the cores again (here CONETOOL_THREADS makes "auto" 3)."""
    import conetool.pipeline.run_distance as run_distance
    import conetool.pipeline.run_spectrum as run_spectrum

    monkeypatch.setenv("CONETOOL_THREADS", "3")
    seen: dict[str, list[int]] = {"distance": [], "spectrum": []}

    def spy(name, real):
        def call(*args, **kwargs):
            seen[name].append(torch.get_num_threads())
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(run_distance, "phase_verdict", spy("distance", run_distance.phase_verdict))
    monkeypatch.setattr(
        run_spectrum, "spectrum_point", spy("spectrum", run_spectrum.spectrum_point)
    )
    demo(finished.out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8], threads=2)
    assert seen["distance"] and set(seen["distance"]) == {2}, seen
    assert seen["spectrum"] and set(seen["spectrum"]) == {2}, seen


@pytest.mark.parametrize(
    ("end", "span", "shown"),
    [
        (0, [0, 0], ", Phase I ends at step 0"),
        (700, [700, 800], ", Phase I ends at step 700 (range 700 to 800)"),
        (None, None, ""),
    ],
)
def test_the_demo_prints_the_verdict_line_distance_prints(monkeypatch, tmp_path, end, span, shown):
    """demo's verdict line dropped a Phase I ending at step 0 (``if phase1_end``) and the fit's
    range that distance prints: both now come from one function."""
    numbers = {"velocity": {"phase1_range": span}} if span else {}
    verdict = {"regime": "lazy", "phase1_end": end, "numbers": numbers, "explanation": ""}
    fake_demo(monkeypatch, tmp_path, verdict=verdict, stage_seconds={"train": 1.0})
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "-q"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("verdict: ")]
    assert line.split(")", 1)[1] == shown, line


@pytest.mark.parametrize("steps", [24, 40, 48, 100, 130, 240, 1000, 2400])
def test_default_switch_points_are_saved_steps(steps):
    """demo --steps 40 (checkpoints every 2 steps) failed at its switch stage, after training
    and the kernels: 40 / 6 rounds to 7, a step with no checkpoint."""
    spec = demo_spec(steps=steps)
    saved = save_steps(spec)
    points = default_switch_points(steps, saved)
    assert points[0] == 0 and set(points) <= set(saved), (points, saved)
    assert all(t < steps for t in points)
    if steps == 2400:
        assert points == [0, 100, 400, 1200]  # the demo's own, as the README shows them


def test_switch_at_a_step_the_demo_does_not_save_is_refused_before_training(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(ConetoolError, match=r"saves no checkpoint at step 7.*such as 6 or 8"):
        demo(out, steps=40, switch_at=[0, 7], threads=1)
    assert not (out / "ckpts").exists()  # nothing trained


def test_a_rerun_with_other_settings_names_the_flags_that_reuse_the_run(tmp_path):
    """demo --steps 24 into the --out of a demo --steps 40 --probe-size 20 run failed with conetool
    train's message, which names --resume and --overwrite (flags the demo has not) and
    '--out DIR/ckpts'; it names the demo's --out, what differs and the flags that reuse the run."""
    out = tmp_path / "demo"
    paths.spec(out / "ckpts").parent.mkdir(parents=True)
    save_spec(demo_spec(steps=40, probe_size=20), paths.spec(out / "ckpts"))
    with pytest.raises(StoreError) as caught:
        demo(out, device="cpu", steps=24, probe_size=10)
    text = str(caught.value)
    assert f"--out {out} holds a run made with other settings" in text, text
    assert "train.steps = 40 (now 24)" in text, text
    assert "Pass --steps 40 --probe-size 20 to reuse it" in text, text
    assert "--resume" not in text and "--overwrite" not in text, text
    assert not paths.checkpoint_steps(out / "ckpts")  # nothing trained


def test_checkpoints_the_demo_did_not_write_are_refused_naming_its_out(tmp_path):
    """Checkpoints without the demo's conetool.toml in DIR/ckpts: the demo names --out, keeps the
    files and does not advise conetool train's --resume or --overwrite (which deletes them)."""
    out = tmp_path / "demo"
    (out / "ckpts").mkdir(parents=True)
    mine = paths.checkpoint(out / "ckpts", 5)
    save_file({"w": torch.ones(2)}, str(mine))
    before = mine.read_bytes()
    with pytest.raises(StoreError) as caught:
        demo(out, device="cpu", steps=24, probe_size=10)
    text = str(caught.value)
    assert f"--out {out} holds 1 checkpoint(s) in {out / 'ckpts'}" in text, text
    assert "Pass another --out" in text, text
    assert "--resume" not in text and "--overwrite" not in text, text
    assert mine.read_bytes() == before and sorted(p.name for p in (out / "ckpts").iterdir()) == [
        mine.name
    ]


def test_an_out_that_is_a_file_is_refused_naming_it(tmp_path, monkeypatch):
    """demo --out FILE (and train --out FILE/sub) stopped with FileExistsError's traceback."""
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    # a relative path: the usage error's box folds at 80 columns, and a long temporary path
    # folded inside the file's name ('not es.txt') on some runs
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["demo", "--out", "notes.txt", "--steps", "8", "--probe-size", "4"])
    # refused as the command line is read (a usage error, exit 2), naming the flag and the fix
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "--out notes.txt is a file, not a folder: --out takes the demo's folder" in text, text
    assert "Traceback" not in text and taken.read_text() == "mine"
    with pytest.raises(ConetoolError) as caught:  # the library says it too, at the write
        demo(taken, steps=8, probe_size=4, device="cpu")
    text = " ".join(str(caught.value).split())
    assert f"cannot write {taken / 'ckpts'}: {taken} is a file, not a folder" in text, text
    assert taken.read_text() == "mine"


def test_a_rerun_removes_what_a_killed_demo_left_in_the_result_folders(finished):
    """A demo killed (SIGKILL) while distance, spectrum or report wrote left .NAME.XXXX.tmp
    files in the store's result folders, and the rerun that finished the report kept them."""
    store = finished.store
    left = [
        store / paths.DISTANCE_DIR / ".to_ref.csv.cgreee55.tmp",
        store / paths.SPECTRUM_DIR / ".spectrum.png.4gggt_2v.tmp",
        store / paths.REPORT_DIR / ".training.png.7fihwrzg.tmp",
    ]
    for path in left:
        path.write_bytes(b"half")
    demo(finished.out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8])
    assert not [path for path in left if path.exists()]
    assert not list(store.glob("*/.*.tmp"))


def test_a_store_of_another_run_in_its_out_is_refused_before_training(finished, tmp_path):
    """demo --out DIR whose DIR/store held kernels of another spec (and no DIR/ckpts) trained
    the whole run, then failed with kernels' message advising --store and --overwrite (flags the
    demo has not; --overwrite deletes those kernels)."""
    out = tmp_path / "demo"
    shutil.copytree(finished.store, out / "store")
    before = sorted(p.name for p in (out / "store" / paths.KERNELS_DIR).iterdir())
    with pytest.raises(StoreError) as caught:
        demo(out, device="cpu", steps=32, probe_size=10, switch_at=[0, 8])
    text = str(caught.value)
    assert f"--out {out} holds a store, {out / 'store'}, of kernels made with another spec" in text
    assert "Pass another --out." in text and "--overwrite" not in text, text
    assert not (out / "ckpts").exists()  # nothing trained
    assert sorted(p.name for p in (out / "store" / paths.KERNELS_DIR).iterdir()) == before


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` -> (size, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(
    ("copied", "given", "said"),
    [
        ("store", ".", "is a store (it holds kernels conetool kernels wrote)"),
        ("store", paths.KERNELS_DIR, "is a folder of the store "),
        ("ckpts", ".", "is a checkpoint directory (it holds conetool.toml and "),
    ],
)
def test_an_out_that_is_itself_a_store_or_a_run_is_refused_untouched(
    finished, tmp_path, copied, given, said
):
    """demo --out STORE (conetool-out) or --out CKPTS trained into DIR/ckpts and computed into
    DIR/store, two runs mixed in one folder."""
    folder = tmp_path / copied
    shutil.copytree(getattr(finished, copied), folder)
    out = folder / given
    before = _listing(folder)
    with pytest.raises(StoreError) as caught:
        demo(out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8])
    text = str(caught.value)
    assert text.startswith(f"--out {out} {said}"), text
    assert "mixing two runs in one folder. Pass another --out" in text, text
    assert _listing(folder) == before
