"""The two channels of what ``distance``, ``embed``, ``spectrum``, ``report`` and ``demo`` say: a
warning changes how a result reads or asks for something to be done (``warning: ...`` as it
comes, again at the end under ``--quiet``, in a result's ``warnings``); a note is information only
(``note: ...`` as it comes, left out by ``--quiet``, in a result's ``notes``).

Before, these four commands kept one ``notes`` list, printed as ``note: ...`` after the work
(also under ``--quiet``). References: the messages each command
printed before, under the other channel; ``summary.json`` as the old code wrote it (no
``warnings`` key).
"""

from __future__ import annotations

import json

import pytest
from test_distance_command import make_store, random_psd
from tiny_run import SPEC, run_fixtures
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.pipeline import distance, embed, kernels, report, spectrum
from conetool.pipeline.run_distance import UNUSED_REF
from conetool.pipeline.saved_results import summary_said
from conetool.store_lock import StoreLock

runner = CliRunner()
trained, run = run_fixtures(SPEC)


def flat(text: str) -> str:
    return " ".join(text.split())


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
    order = [
        text.index(f"note: {default}"),
        text.index("estimating the noise floor of S"),
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
    for extra in ([], ["-q"]):
        out = runner.invoke(app, [*args, *extra])
        assert out.exit_code == 0, out.output
        text = flat(out.output)
        assert text.count(said) == 1 and f"warning: {said}" in text, text
        assert "note:" not in text, text


# ------------------------------------------------------------------------------------------------
# spectrum, embed


def test_spectrum_warns_once_that_top_k_keeps_every_eigenvalue(store):
    """'note: --top-k 1000 is not below ...': the label energy is then 1 at every step (how the
    result reads), a warning; said once as it comes, and once at the end with --quiet."""
    said = "--top-k 1000 is not below the 6 eigenvalues"
    args = ["spectrum", "--store", str(store), "--top-k", "1000"]
    for extra in ([], ["-q"]):
        out = runner.invoke(app, [*args, *extra])
        assert out.exit_code == 0, out.output
        text = flat(out.output)
        assert text.count(said) == 1 and f"warning: {said}" in text, text
        assert "note:" not in text, text
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


def test_report_warns_of_results_computed_from_other_kernels(store):
    """'note: the conetool distance results cover 2 steps ...' (rerun distance to bring them up
    to date): a warning, said once, with --quiet at the end."""
    distance(store, noise=False)
    summary_path = paths.distance_summary(store)
    summary = json.loads(summary_path.read_text())
    summary["steps"]["count"] = 2
    summary_path.write_text(json.dumps(summary))
    said = "the conetool distance results cover 2 steps"
    for extra in ([], ["-q"]):
        out = runner.invoke(app, ["report", "--store", str(store), *extra])
        assert out.exit_code == 0, out.output
        text = flat(out.output)
        assert text.count(f"warning: {said}") == 1 and "note:" not in text, text
    result = report(store)
    assert [w[: len(said)] for w in result.warnings] == [said] and result.notes == []
    markdown = flat(result.markdown.read_text())
    assert said in markdown  # the page's Notes list it as before


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
