"""What a switch sweep warned of outlives the terminal: each point's record keeps what it said of
its momentum (``switch/at_XXXXXX.json``), a rerun that reuses the point says it again, the
sweep's ``results.json`` keeps what the sweep said, and ``conetool report`` shows it in the switch
section; a record an older conetool wrote (no such entry) is reused and says nothing."""

from __future__ import annotations

import json

from test_switch_beside_state import spec_dict

from conetool import paths
from conetool.pipeline import kernels, report
from conetool.pipeline.run_switch import switch
from conetool.progress import NullProgress
from conetool.spec import spec_from_dict
from conetool.training import train

#: What the points of a run trained with momentum 0.9 say under a spec of momentum 0.5.
SAVED_WITH = "saved with momentum 0.9 (the spec's 0.5)"


class Logged(NullProgress):
    """A progress that keeps every line it is given (``warning: ...``, ``note: ...``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def swept(tmp_path):
    """A run trained with momentum 0.9 and a store of its kernels computed with a spec of
    momentum 0.5, which switch replays (``spec``): each point's saved state warns."""
    run = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), run)
    other = spec_from_dict(spec_dict(momentum=0.5), source="other.toml")
    store = tmp_path / "s"
    kernels(run, store=store, spec=other, device="cpu")
    return run, store, other


def test_a_rerun_that_reuses_every_point_warns_again_and_the_report_shows_it(tmp_path):
    # Was: the warning was said only when a point trained; a rerun that reused both points said
    # nothing of it, and results.json (so the report) never held it.
    _, store, spec = swept(tmp_path)
    first = switch([4, 8], store=store, spec=spec, device="cpu")
    (warned,) = [w for w in first.warnings if SAVED_WITH in w]
    assert warned.startswith("t=4, 8 (2 points): momentum from the optimizer states"), warned
    shown = Logged()
    again = switch([4, 8], store=store, spec=spec, device="cpu", progress=shown)
    assert [p.reused for p in again.points] == [True, True]
    assert warned in again.warnings, again.warnings
    assert [p.momentum_said is not None for p in again.points] == [True, True]
    # said as it comes, naming the first point's file, as the sweep that trained them said it
    assert any(
        line.startswith(
            "warning: t=4: momentum from the optimizer state beside the checkpoint "
            "(step_000004.optim.safetensors), " + SAVED_WITH
        )
        for line in shown.lines
    ), shown.lines
    results = json.loads(paths.switch_results_json(store).read_text())
    assert warned in results["warnings"] and warned in results["notes"], results
    made = report(store)
    for page in (made.html, made.markdown):
        assert f"Warning from conetool switch: {warned}." in page.read_text(encoding="utf-8")


def test_a_point_an_older_conetool_wrote_is_reused_and_says_nothing(tmp_path):
    _, store, spec = swept(tmp_path)
    switch([4, 8], store=store, spec=spec, device="cpu")
    older = paths.switch_point(store, 4)  # as an older conetool wrote it: no momentum_said
    record = json.loads(older.read_text())
    del record["momentum_said"]
    older.write_text(json.dumps(record))
    again = switch([4, 8], store=store, spec=spec, device="cpu")
    assert [p.reused for p in again.points] == [True, True]
    assert again.points[0].momentum_said is None
    (warned,) = [w for w in again.warnings if SAVED_WITH in w]
    assert warned.startswith("t=8: momentum from the optimizer state beside the checkpoint"), warned
    # an entry edited into another shape: the point is reused all the same, and says nothing
    edited = paths.switch_point(store, 8)
    record = json.loads(edited.read_text())
    record["momentum_said"] = {"one": 1, "many": "x", "warning": "yes"}
    edited.write_text(json.dumps(record))
    third = switch([4, 8], store=store, spec=spec, device="cpu")
    assert [p.reused for p in third.points] == [True, True]
    assert not [w for w in third.warnings if "momentum" in w], third.warnings
    # results.json of an older conetool (no warnings, no notes): the report says nothing of them
    results = paths.switch_results_json(store)
    summary = json.loads(results.read_text())
    del summary["warnings"], summary["notes"]
    results.write_text(json.dumps(summary))
    assert "from conetool switch" not in report(store).markdown.read_text(encoding="utf-8")


def test_a_rerun_reusing_the_trained_standard_model_warns_of_its_momentum_again(tmp_path):
    run, store, spec = swept(tmp_path)
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8
    said = (
        "--reference train, from the checkpoint of step 8: momentum from the optimizer state "
        f"beside the checkpoint (step_000008.optim.safetensors), {SAVED_WITH}"
    )
    first = switch([4], store=store, spec=spec, device="cpu", reference="train")
    assert any(w.startswith(said) for w in first.warnings), first.warnings
    again = switch([4], store=store, spec=spec, device="cpu", reference="train")
    assert [w for w in again.warnings if w.startswith(said)] == [
        w for w in first.warnings if w.startswith(said)
    ], again.warnings
    assert not any(n.startswith("--reference train: the run has no") for n in again.notes)


def test_results_json_keeps_what_the_points_of_earlier_sweeps_said(tmp_path):
    # Was: results.csv held the point of an earlier sweep (--at 4) beside this one's (--at 8),
    # and results.json (so the report) said nothing of what that point warned of.
    _, store, spec = swept(tmp_path)
    switch([4], store=store, spec=spec, device="cpu")
    later = switch([8], store=store, spec=spec, device="cpu")
    earlier = (
        "earlier sweeps' points in results.csv: t=4: momentum from the optimizer state beside "
        f"the checkpoint (step_000004.optim.safetensors), {SAVED_WITH}"
    )
    assert any(w.startswith(earlier) for w in later.warnings), later.warnings
    results = json.loads(paths.switch_results_json(store).read_text())
    assert [p["at"] for p in results["points"]] == [4, 8]
    assert [w for w in results["warnings"] if SAVED_WITH in w] == [
        w for w in later.warnings if SAVED_WITH in w
    ]
    assert len([w for w in later.warnings if SAVED_WITH in w]) == 2  # t=8's, t=4's


def test_what_switch_said_of_a_damaged_manifest_is_not_kept_for_the_report(tmp_path):
    # Was: results.json kept "STORE/manifest.json is damaged: ... conetool kernels ... rebuilds
    # it" and "using the checkpoint directory ..., recorded ... (its manifest.json ... is
    # damaged; ...)", and the report, which refuses the store until kernels has rebuilt it, said
    # both of a manifest that was whole again. They are said, and in the result, as before.
    run, store, spec = swept(tmp_path)
    manifest = paths.manifest(store)
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    result = switch([4], store=store, spec=spec, device="cpu")
    lost = [m for m in result.warnings + result.notes if paths.MANIFEST_NAME in m]
    assert len(lost) == 2 and any("is damaged: switch read" in m for m in lost), lost
    results = json.loads(paths.switch_results_json(store).read_text())
    assert not [m for m in results["notes"] if paths.MANIFEST_NAME in m], results["notes"]
    assert [w for w in results["warnings"] if SAVED_WITH in w] == [
        w for w in result.warnings if SAVED_WITH in w
    ]  # what it said of the sweep is kept
    kernels(run, store=store, spec=spec, device="cpu")  # rebuilds the manifest
    page = report(store).markdown.read_text(encoding="utf-8")
    assert "is damaged" not in page and "Warning from conetool switch: t=4" in page
