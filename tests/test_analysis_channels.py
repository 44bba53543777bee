"""The two channels of what ``distance``, ``embed``, ``spectrum``, ``report`` and ``demo`` say: a
warning changes how a result reads or asks for something to be done (``warning: ...`` as it
comes, again at the end under ``--quiet``, in a result's ``warnings``); a note is information only
(``note: ...`` as it comes, left out by ``--quiet``, in a result's ``notes``).

Before, these four commands kept one ``notes`` list, printed as ``note: ...`` after the work
(also under ``--quiet``), and ``demo`` said none of it. References: the messages each command
printed before, under the other channel; ``summary.json`` as the old code wrote it (no
``warnings`` key).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from demo_run import finished_demo as shared_demo
from test_distance_command import make_store, random_psd
from tiny_run import SPEC, run_fixtures
from typer.testing import CliRunner

from conetool import paths, store_manifest
from conetool.cli import app
from conetool.pipeline import demo, distance, embed, kernels, report, spectrum
from conetool.pipeline.run_distance import UNUSED_REF
from conetool.pipeline.saved_results import summary_said
from conetool.store_lock import StoreLock

runner = CliRunner()
trained, run = run_fixtures(SPEC)


def flat(text: str) -> str:
    return " ".join(text.split())


def said_once_as_a_warning(args: list[str], said: str) -> None:
    """The command ``args`` says ``said`` once, as a warning, and no note: as it comes, and with
    ``-q`` at the end."""
    for extra in ([], ["-q"]):
        out = runner.invoke(app, [*args, *extra])
        assert out.exit_code == 0, out.output
        text = flat(out.output)
        assert text.count(said) == 1 and f"warning: {said}" in text, text
        assert "note:" not in text, text


class Recorded:
    """A progress display that keeps the lines said (no bars)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def task(self, description, total):
        from conetool.progress import NullProgress

        return NullProgress().task(description, total)

    def log(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture
def store(run, tmp_path):
    """The tiny run's store, kernels at 0, 5 and 10."""
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu")
    return root


# ------------------------------------------------------------------------------------------------
# distance


def test_distance_says_a_default_reference_as_a_note_and_a_floor_not_estimated_as_a_warning(
    run, tmp_path
):
    """Both were 'note: ...' lines printed after the work, under --quiet too; the verdict read
    without a noise floor is a warning, the default reference a note. They are said as the work
    comes to them: before, the noise floor's 'estimating ...' line came first, above a note on
    the reference resolved before it."""
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", steps=[5, 10])
    paths.checkpoint(run, 10).unlink()  # the noise floor's model cannot be rebuilt
    default = "step 0 is not stored; the reference defaults to the first stored step, 5"
    lost = "the noise floor of S was not estimated: the checkpoint of step 10"
    loud = runner.invoke(app, ["distance", "--store", str(root)])
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count(default) == 1 and text.count(lost) == 1, text
    # "estimating the noise floor of S ..." is not said: it was, before the checkpoint was
    # looked for, and then "... was not estimated"
    assert "estimating the noise floor" not in text, text
    order = [
        text.index(f"note: {default}"),
        text.index(f"warning: {lost}"),
        text.index("conetool distance ->"),
    ]
    assert order == sorted(order), text
    quiet = runner.invoke(app, ["distance", "--store", str(root), "-q"])
    assert quiet.exit_code == 0, quiet.output
    text = flat(quiet.output)
    assert "note:" not in text and default not in text, text
    assert text.count(f"warning: {lost}") == 1, text
    assert text.index("verdict:") < text.index(f"warning: {lost}"), text  # at the end
    result = distance(root)
    assert result.notes == [default], result.notes
    assert len(result.warnings) == 1 and result.warnings[0].startswith(lost), result.warnings
    summary = json.loads(paths.distance_summary(root).read_text())
    # notes keeps what it held before (every message), warnings the ones that are warnings
    assert summary["warnings"] == result.warnings
    assert summary["notes"] == [*result.warnings, *result.notes]


def test_distance_warns_of_a_reference_the_verdict_does_not_use(tmp_path):
    """'note: the verdict does not use --ref 90' (the verdict reads other steps than asked): a
    warning, kept by --quiet."""
    steps = list(range(0, 100, 10))
    root = make_store(tmp_path / "s", steps, random_psd(steps))
    said = f"{UNUSED_REF} 90: too few stored steps"
    result = distance(root, refs=["last"], noise=False)
    assert [w[: len(said)] for w in result.warnings] == [said], result.warnings
    assert result.notes == [], result.notes
    args = ["distance", "--store", str(root), "--ref", "last", "--no-noise"]
    said_once_as_a_warning(args, said)


# ------------------------------------------------------------------------------------------------
# spectrum, embed


def test_spectrum_warns_once_that_top_k_keeps_every_eigenvalue(store):
    """'note: --top-k 1000 is not below ...': the label energy is then 1 at every step (how the
    result reads), a warning; said once as it comes, and once at the end with --quiet."""
    said = "--top-k 1000 is not below the 6 eigenvalues"
    args = ["spectrum", "--store", str(store), "--top-k", "1000"]
    said_once_as_a_warning(args, said)
    result = spectrum(store, top_k=1000)
    assert [w[: len(said)] for w in result.warnings] == [said] and result.notes == []
    summary = json.loads(paths.spectrum_summary(store).read_text())
    assert summary["warnings"] == summary["notes"] == result.warnings


def test_embed_warns_that_kernels_is_still_writing_and_its_summary_keeps_it(store):
    """The only thing embed says (its numbers are of the kernels stored so far) was a note, and
    embed/summary.json did not keep it."""
    lock = StoreLock.acquire(store)
    try:
        result = embed(store, method="pca")
        quiet = runner.invoke(app, ["embed", "--store", str(store), "--method", "pca", "-q"])
    finally:
        lock.release()
    (said,) = result.warnings
    assert said.startswith("conetool kernels is still writing this store") and not result.notes
    summary = json.loads(paths.embed_summary(store).read_text())
    assert summary["warnings"] == summary["notes"] == [said]
    assert quiet.exit_code == 0, quiet.output
    assert flat(quiet.output).count("warning: conetool kernels is still writing") == 1
    assert embed(store, method="pca").warnings == []  # it ended


# ------------------------------------------------------------------------------------------------
# report


def distance_results_of_two_steps(store: Path) -> None:
    """distance's results as if computed from 2 of the store's steps: the report calls them
    results of other kernels."""
    distance(store, noise=False)
    summary_path = paths.distance_summary(store)
    summary = json.loads(summary_path.read_text())
    summary["steps"]["count"] = 2
    summary_path.write_text(json.dumps(summary))
    # to_ref.csv as distance writes it with the summary: a row per step it counts (the report
    # names a file that holds another number of rows)
    to_ref = paths.to_ref_csv(store)
    to_ref.write_text("".join(to_ref.read_text().splitlines(keepends=True)[:3]))


def test_report_warns_of_results_computed_from_other_kernels(store):
    """'note: the conetool distance results cover 2 steps ...' (rerun distance to bring them up
    to date): a warning, said once, with --quiet at the end."""
    distance_results_of_two_steps(store)
    said = "the conetool distance results cover 2 steps"
    said_once_as_a_warning(["report", "--store", str(store)], said)
    result = report(store)
    assert [w[: len(said)] for w in result.warnings] == [said] and result.notes == []
    markdown = flat(result.markdown.read_text())
    assert said in markdown  # the page's Notes list it as before


def test_report_page_marks_its_warnings_and_notes(store, monkeypatch):
    """The page's Notes listed the report's warnings and notes as bare items, one list, not
    telling them apart: each is marked, "Warning: ..." or "Note: ...", as the result sections
    mark distance's ("Warning from conetool distance: ..."). (report has no note of its own at
    present: one is added to what it read.)"""
    from conetool.pipeline.run_report import ReportBuilder

    distance_results_of_two_steps(store)
    warned = "the conetool distance results cover 2 steps"
    noted = "an example of a note of the report's"
    read = ReportBuilder.read.__func__  # type: ignore[attr-defined]

    def with_a_note(cls, *args, **kwargs):
        built = read(cls, *args, **kwargs)
        built.notes.append(noted)
        return built

    monkeypatch.setattr(ReportBuilder, "read", classmethod(with_a_note))
    result = report(store)
    assert result.notes == [noted] and result.warnings[0].startswith(warned), result
    for page in (result.html.read_text(), result.markdown.read_text()):
        page = flat(page)
        assert page.count(f"Warning: {warned}") == 1, page
        assert page.count(f"Note: {noted}") == 1, page
        assert f"Note: {warned}" not in page and f"Warning: {noted}" not in page, page


def test_report_reads_distance_summaries_from_before_and_after_the_split(store):
    """A summary.json with a 'warnings' key has its warnings in 'notes' too (what 'notes' held
    before); one written by the old code has no 'warnings' key and every message in 'notes'.
    The report says the first's warnings as warnings, and every message of the second as a
    note, once each."""
    distance(store, noise=False)
    summary_path = paths.distance_summary(store)
    summary = json.loads(summary_path.read_text())
    warned, noted = "the verdict does not use --ref 10: an example", "an example of a note"
    summary_path.write_text(json.dumps({**summary, "notes": [warned, noted], "warnings": [warned]}))
    page = flat(report(store).markdown.read_text())
    assert page.count(f"Warning from conetool distance: {warned}.") == 1, page
    assert page.count(f"Note from conetool distance: {noted}.") == 1, page
    assert f"Note from conetool distance: {warned}" not in page, page
    old = {k: v for k, v in summary.items() if k != "warnings"}  # as conetool wrote it before
    summary_path.write_text(json.dumps({**old, "notes": [warned, noted]}))
    result = report(store)
    page = flat(result.markdown.read_text())
    assert page.count(f"Note from conetool distance: {warned}.") == 1, page
    assert page.count(f"Note from conetool distance: {noted}.") == 1, page
    assert "Warning from conetool distance" not in page, page
    assert "verdict" in result.sections and result.warnings == [], result.warnings
    assert summary_said(old | {"notes": [warned, noted]}) == ([], [warned, noted])
    assert summary_said({}) == ([], [])


# ------------------------------------------------------------------------------------------------
# demo


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    # demo(out, device="cpu", steps=24, probe_size=10, switch_at=[0, 8]), run once per session
    return shared_demo(tmp_path_factory).out


def _mixed_engines(monkeypatch) -> str:
    """Step 0's kernel read as made by another engine: distance and report both say so."""
    monkeypatch.setattr(
        store_manifest,
        "made_by",
        lambda record: "jacobian on cpu" if record.step == 0 else "structured on cpu",
    )
    return store_manifest.MIXED_ENGINES + " step 0 by jacobian on cpu"


def test_demo_says_its_stages_warnings_once_each(finished_demo, monkeypatch):
    """The demo said only train's, kernels' and switch's warnings: distance's warning on kernels
    made by two engines went unsaid (and report's copy of it too). Now it is said once, under
    its stage; distance's warnings on the references the demo chose itself are not."""
    mixed = _mixed_engines(monkeypatch)
    said = Recorded()
    result = demo(
        finished_demo, device="cpu", steps=24, probe_size=10, switch_at=[0, 8], progress=said
    )
    lines = said.lines
    warned = [i for i, line in enumerate(lines) if line.startswith(f"warning: {mixed}")]
    assert len(warned) == 1, lines
    assert lines.index("[3/7] distance") < warned[0] < lines.index("[4/7] embed"), lines
    assert [w[: len(mixed) + 10] for w in result.warnings] == [f"distance: {mixed}"], result
    # distance did warn of the demo's own references, Phase I steps the verdict does not use
    summary = json.loads(paths.distance_summary(result.store).read_text())
    assert any(w.startswith(UNUSED_REF) for w in summary["warnings"]), summary["warnings"]
    assert not any(UNUSED_REF in line for line in lines), lines
    assert not any(UNUSED_REF in said for said in result.warnings + result.notes), result


def test_demo_quiet_says_its_stages_warnings_at_the_end(finished_demo, monkeypatch):
    mixed = _mixed_engines(monkeypatch)
    args = ["--steps", "24", "--probe-size", "10", "--device", "cpu", "-q"]
    out = runner.invoke(app, ["demo", "--out", str(finished_demo), *args])
    assert out.exit_code == 0, out.output
    text = flat(out.output)
    assert text.count(f"warning: distance: {mixed}") == 1, text
    assert "note:" not in text and UNUSED_REF not in text, text
    assert text.index("report:") < text.index("warning: distance:"), text
