"""A store keeps one switch point per t (``switch/at_XXXXXX.json``) and one standard model at T
that ``--reference train`` trained (``switch/reference.json``): a sweep of another T or spec
overwrites the points of the earlier sweep at its steps, and its reference, minutes of training
a rerun of that sweep spends again. It is said before any point trains, with the command that
keeps both; the message kept for the end (what ``--quiet`` prints after the points) says what
was replaced, not to stop now."""

from __future__ import annotations

import json

import pytest
from test_switch_beside_state import spec_dict
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.pipeline.run_switch import switch
from conetool.progress import NullProgress
from conetool.spec import save_spec, spec_from_dict
from conetool.training import train

STOP_NOW = "stop now"


@pytest.fixture
def run(tmp_path):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12."""
    out = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


class Recorded:
    """A progress display that keeps the lines said and the bars opened, in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def task(self, description, total):
        self.lines.append(f"[bar] {description}")
        return NullProgress().task(description, total)

    def log(self, message: str) -> None:
        self.lines.append(message)


def replacing(result):
    """The result's warnings of another sweep's files replaced (as kept for the end)."""
    return [w for w in result.warnings if "from another sweep" in w]


def said_first(shown: Recorded) -> str:
    """The one warning of another sweep's files, as it came: before any point trained."""
    (line,) = [line for line in shown.lines if "from another sweep" in line]
    first_point = next(i for i, s in enumerate(shown.lines) if s.startswith("[bar] switch t="))
    assert shown.lines.index(line) < first_point, shown.lines
    return line


def test_a_sweep_of_another_until_says_the_points_it_replaces(run, tmp_path):
    store = tmp_path / "s"
    first = switch([0, 4], store=store, ckpts=run, device="cpu")
    assert replacing(first) == []
    again = switch([0, 4], store=store, ckpts=run, device="cpu")  # the same sweep: reused
    assert replacing(again) == []
    shown = Recorded()
    other = switch([0, 4, 8], until=10, store=store, ckpts=run, device="cpu", progress=shown)
    said = said_first(shown)
    own = f"conetool switch --at 0,4,8 --until 10 --store OTHER_STORE --ckpts {run} --device cpu"
    assert said.startswith("warning: this sweep (--until 10) would replace points that "), said
    assert f"{paths.switch_dir(store)} holds from another sweep (t=0, 4: --until 12)" in said
    assert "stop now (none is replaced yet)" in said and said.endswith(own), said
    # kept for the end as what happened: the points are replaced by then, stopping is too late
    (kept,) = replacing(other)
    assert kept.startswith("this sweep (--until 10) replaced points that "), kept
    assert f"{paths.switch_dir(store)} held from another sweep (t=0, 4: --until 12)" in kept
    assert STOP_NOW not in kept and kept.endswith(own), kept
    # as said: the earlier sweep's points are gone, a rerun of it trains them again
    assert json.loads(paths.switch_point(store, 0).read_text())["key"]["until"] == 10
    back = switch([0, 4], store=store, ckpts=run, device="cpu")
    assert [p.reused for p in back.points] == [False, False]
    assert [p.test_acc for p in back.points] == [p.test_acc for p in first.points]


def test_a_sweep_of_another_spec_says_the_points_it_replaces(run, tmp_path):
    store = tmp_path / "s"
    switch([0, 4], store=store, ckpts=run, device="cpu")
    raw = spec_dict(lr=0.05)
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(raw, source=str(other)), other)
    result = switch([4, 8], store=store, ckpts=run, spec=other, device="cpu")
    (said,) = replacing(result)
    assert "held from another sweep (t=4: another spec)" in said, said
    assert f"--store OTHER_STORE --ckpts {run} --spec {other}" in said, said


def test_reference_train_of_another_until_says_the_reference_it_replaces(run, tmp_path):
    """reference.json is one file too: --reference train with another T replaced it unsaid (a
    rerun of the first sweep trained it again), also where no point of the sweeps shares a t."""
    store = tmp_path / "s"
    first = switch([0], until=10, store=store, ckpts=run, device="cpu", reference="train")
    assert first.reference["source"] == "trained from step 8" and replacing(first) == []
    same = switch([4], until=10, store=store, ckpts=run, device="cpu", reference="train")
    assert replacing(same) == []  # the same T and spec: its reference is reused
    shown = Recorded()
    other = switch(
        [8], until=11, store=store, ckpts=run, device="cpu", reference="train", progress=shown
    )
    said = said_first(shown)
    assert said.startswith(
        "warning: this sweep (--until 11) would replace the standard model at T"
    ), said
    assert "holds from another sweep (reference.json: --until 10)" in said, said
    assert "To keep it, stop now (it is not replaced yet)" in said, said
    assert said.endswith(f"--store OTHER_STORE --ckpts {run} --reference train --device cpu"), said
    (kept,) = replacing(other)
    assert kept.startswith("this sweep (--until 11) replaced the standard model at T"), kept
    assert STOP_NOW not in kept, kept
    assert json.loads(paths.switch_reference(store).read_text())["key"]["until"] == 11
    # both, said in one warning: a point and the reference of the --until 11 sweep
    both = switch([8], until=10, store=store, ckpts=run, device="cpu", reference="train")
    (kept,) = replacing(both)
    assert "replaced points and the standard model at T that " in kept, kept
    assert "held from another sweep (t=8: --until 11; reference.json: --until 11)" in kept, kept


def test_a_sweep_that_writes_no_reference_leaves_another_sweeps_unsaid(run, tmp_path):
    store = tmp_path / "s"
    switch([0], until=10, store=store, ckpts=run, device="cpu", reference="train")
    # --reference checkpoint writes no reference.json; nor does --reference train where the run
    # has a checkpoint of T (taken as it is)
    plain = switch([4], until=11, store=store, ckpts=run, device="cpu")
    at_t = switch([8], until=12, store=store, ckpts=run, device="cpu", reference="train")
    assert replacing(plain) == replacing(at_t) == []
    assert json.loads(paths.switch_reference(store).read_text())["key"]["until"] == 10


def test_quiet_prints_what_was_replaced_not_to_stop_now(run, tmp_path):
    """--quiet prints the warnings after the points: 'stop now (none is replaced yet)' was
    printed there, when the points were replaced already."""
    store = tmp_path / "s"
    switch([0, 4], store=store, ckpts=run, device="cpu")
    args = ["switch", "--at", "0,4", "--until", "10", "--store", str(store), "--ckpts", str(run)]
    quiet = CliRunner().invoke(app, [*args, "--device", "cpu", "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    text = " ".join(quiet.output.split())
    assert "warning: this sweep (--until 10) replaced points that" in text, text
    assert STOP_NOW not in text, text
    assert text.index("replaced points") > text.index("conetool switch ->"), text
