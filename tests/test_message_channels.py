"""The two channels of what a command says: a warning is a possible loss or a guess to check
(``warning: ...`` as it comes, again at the end under ``--quiet``, in a result's ``warnings``); a
note is information only (``note: ...`` once as it comes, left out by ``--quiet``, in a result's
``notes``).

References: the messages each command printed before (the same text under another channel);
the store's own record of what was kept or replaced.
"""

from __future__ import annotations

import re
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_distributed import run_torchrun
from test_switch_optimizer_state import SPEC as OPTIMIZER_SPEC
from test_switch_optimizer_state import plain_loop, save_loop_checkpoint
from tiny_run import SPEC, run_fixtures
from typer.testing import CliRunner

import conetool
from conetool import paths
from conetool.cli import app
from conetool.pipeline import kernels
from conetool.pipeline.run_switch import switch
from conetool.pipeline.switch_points import FOREIGN_RUN
from conetool.progress import NullProgress, ProgressTask
from conetool.spec import save_spec

runner = CliRunner()
trained, run = run_fixtures(SPEC)


def flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------
# kernels


def test_kernels_says_what_a_rerun_keeps_as_notes_once_and_quiet_leaves_them_out(run, tmp_path):
    """A rerun keeping the store's evaluation set and groups said so in a note, and --quiet
    printed it at the end as 'warning: keeping the store's ...' (it was in the warnings)."""
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3, per_layer=True)
    args = ["kernels", str(run), "--store", str(root), "--device", "cpu"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count("keeping the store's evaluation set of 3 examples (--eval-size)") == 1, text
    assert "note: keeping the store's evaluation set of 3 examples" in text, text
    assert text.count("keeping the store's per-layer kernels") == 1, text
    assert "note: keeping the store's per-layer kernels (--per-layer; groups" in text, text
    assert "warning:" not in text, text
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "keeping" not in quiet.output and "warning:" not in quiet.output, quiet.output
    # from Python: in the result's notes, not among its warnings
    result = kernels(run, store=root, device="cpu")
    assert result.warnings == [], result.warnings
    assert [n.split(" (")[0] for n in result.notes] == [
        "keeping the store's evaluation set of 3 examples",
        "keeping the store's per-layer kernels",
    ], result.notes


def test_kernels_says_deleted_files_as_a_warning_again_under_quiet(run, tmp_path):
    """Another --eval-size deletes the eval kernels of the old evaluation set: that was said as
    'note: the evaluation set changed ...' as it came; it is a warning (files are deleted)."""
    root = tmp_path / "s"
    kernels(run, store=root, device="cpu", eval_size=3)
    args = ["kernels", str(run), "--store", str(root), "--device", "cpu"]
    loud = runner.invoke(app, [*args, "--eval-size", "4"])
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count("the evaluation set changed (size 3 -> 4") == 1, text
    assert "warning: the evaluation set changed (size 3 -> 4" in text, text
    assert "note: the evaluation set changed" not in text, text
    quiet = runner.invoke(app, [*args, "--eval-size", "3", "-q"])  # said at the end
    assert quiet.exit_code == 0, quiet.output
    assert flat(quiet.output).count("warning: the evaluation set changed (size 4 -> 3") == 1
    result = kernels(run, store=root, device="cpu", eval_size=4)
    assert [w[:39] for w in result.warnings] == ["the evaluation set changed (size 3 -> 4"]
    assert result.notes == [], result.notes


def test_a_rebuilt_manifest_says_the_rebuild_as_a_warning_and_the_recovered_records_as_a_note(
    run, tmp_path
):
    """The store's one list (Store.notes) held the rebuild, what was recovered and what was not,
    and kernels said all of it as warnings: --quiet printed 'warning: recovered the evaluation
    set ...' at the end, though nothing was lost. Recovered records are a note; the rebuild and
    a record not recovered stay warnings."""
    recovered = "recovered the evaluation set of 3 examples (--eval-size) and the parameter groups"
    for quiet in (False, True):
        root = tmp_path / f"s{quiet}"
        kernels(run, store=root, device="cpu", eval_size=3, per_layer=True)
        manifest = paths.manifest(root)
        manifest.write_text(manifest.read_text()[:40])  # damaged
        args = ["kernels", str(run), "--store", str(root), "--device", "cpu"]
        said = runner.invoke(app, [*args, *(["-q"] if quiet else [])])
        assert said.exit_code == 0, said.output
        text = flat(said.output)
        bare = "".join(said.output.split())  # the paths wrap anywhere
        assert text.count("was damaged") == 1 and f"warning:{manifest}wasdamaged" in bare, text
        if quiet:
            assert "recovered the" not in text, text
        else:
            assert text.count(recovered) == 1 and f"note: {recovered}" in text, text
        assert "warning:recovered" not in bare, text
    # from Python: in the result's notes; a record not recovered is a warning
    paths.manifest(root).unlink()
    result = kernels(run, store=root, device="cpu")
    assert [n[: len(recovered)] for n in result.notes if "recovered" in n] == [recovered]
    assert len(result.warnings) == 1 and "was missing" in result.warnings[0], result.warnings
    paths.manifest(root).unlink()
    paths.eval_set(root).unlink()  # its eval kernels have no evaluation set: not recovered
    result = kernels(run, store=root, device="cpu")
    assert [w.split(";")[0].split(":")[0] for w in result.warnings] == [
        f"{paths.manifest(root)} was missing",
        "no evaluation set was recovered",
    ], result.warnings
    assert [n.split(" (")[0] for n in result.notes if "recovered" in n] == [
        "recovered the parameter groups fc_layers.0, fc"
    ], result.notes


# ------------------------------------------------------------------------------------------------
# inspect says what the directory holds as kernels says it


def test_inspect_says_warnings_and_notes_as_kernels_does(run, tmp_path):
    """inspect printed every message of the listing as 'note:' (checkpoints in a subfolder not
    read, which kernels says as a warning, too) and --quiet left none out."""
    (run / "old").mkdir()
    shutil.copy(paths.checkpoint(run, 0), run / "old" / paths.checkpoint(run, 0).name)
    shutil.copy(paths.checkpoint(run, 5), run / "step_5.safetensors")  # a backup copy
    nested, copy = "not read: subfolder old/", "'step_5.safetensors' in"
    looked = runner.invoke(app, ["inspect", str(run)])
    assert looked.exit_code == 0, looked.output
    text = flat(looked.output)
    assert text.count(nested) == 1 and f"warning: {nested}" in text, text
    assert text.count(copy) == 1 and f"note: {copy}" in text, text
    quiet = flat(runner.invoke(app, ["inspect", str(run), "-q"]).output)
    assert f"warning: {nested}" in quiet and copy not in quiet, quiet
    args = ["kernels", str(run), "--store", str(tmp_path / "s"), "--device", "cpu"]
    computed = runner.invoke(app, args)
    assert computed.exit_code == 0, computed.output
    said = flat(computed.output)
    assert f"warning: {nested}" in said and f"note: {copy}" in said, said
    # from Python: warn= and note= as checkpoint_listing takes them; a note defaults to warn
    warned: list[str] = []
    noted: list[str] = []
    conetool.inspect(run, warn=warned.append, note=noted.append)
    assert [w[: len(nested)] for w in warned] == [nested], warned
    assert [n[: len(copy)] for n in noted] == [copy], noted
    both: list[str] = []
    conetool.inspect(run, warn=both.append)
    assert sorted(both) == sorted(warned + noted)


def test_inspect_warns_of_lower_precision_as_kernels_does(run):
    """A float16 checkpoint under a float32 model: kernels warns; inspect --verify said it as a
    note of the row, and --quiet kept it."""
    path = paths.checkpoint(run, 5)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    half = {k: v.half() for k, v in load_file(str(path)).items()}
    save_file(half, str(path), metadata=meta)
    for extra in ([], ["-q"]):
        looked = runner.invoke(app, ["inspect", str(run), "--verify", *extra])
        assert looked.exit_code == 0, looked.output
        text = flat(looked.output)
        assert text.count("lower precision") == 1 and "note:" not in text, text
        assert re.search(r"warning: '[^']*' stores 'fc.bias' \(float16\)", text), text
    (row,) = [r for r in conetool.inspect(run, verify=True) if r.step == 5]
    assert row.notes == () and len(row.warnings) == 1, row


def test_inspect_says_a_warning_every_checkpoint_shares_once_naming_the_files(run):
    """Every checkpoint of a run saved in float16 under a float32 model: inspect --verify said the
    lower-precision warning once per file (44 lines on the demo's run; kernels says it of the first
    file alone); it is one line naming the files, as a problem of several files is."""
    for step in (0, 5, 10):
        path = paths.checkpoint(run, step)
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
        save_file({k: v.half() for k, v in load_file(str(path)).items()}, str(path), metadata=meta)
    looked = runner.invoke(app, ["inspect", str(run), "--verify"])
    assert looked.exit_code == 0, looked.output
    text = flat(looked.output)
    names = "step_000000.safetensors, step_000005.safetensors, step_000010.safetensors"
    assert text.count("lower precision") == 1, text
    assert f"warning: 3 files ({names}): each file stores 'fc.bias' (float16)" in text, text
    rows = conetool.inspect(run, verify=True)  # each row keeps its own, naming its file
    assert [sum("lower precision" in w for w in r.warnings) for r in rows] == [1, 1, 1], rows
    assert all(r.file in r.warnings[0] for r in rows), rows


# ------------------------------------------------------------------------------------------------
# switch: one momentum note for the points it applies to

FRESH = (
    "no optimizer state beside their checkpoints (step_XXXXXX.optim.safetensors, as conetool "
    "train writes it); momentum starts at zero"
)


FRESH_AT_0 = (
    "t=0: no optimizer state beside the checkpoint (step_000000.optim.safetensors, as conetool "
    "train writes it); momentum starts at zero"
)


class Events(NullProgress):
    """What a command logs, and the bars it opens (``[bar] description``), in order."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def task(self, description: str, total: int | None) -> ProgressTask:
        self.lines.append(f"[bar] {description}")
        return super().task(description, total)


def test_switch_says_a_shared_reason_for_fresh_momentum_once(run, tmp_path):
    """A sweep over a run without optimizer state said 't=X: no optimizer state beside the
    checkpoint (step_0000XX.optim.safetensors, ...)' once per point; then at the first point, as
    it came, and again for all the points at the end. Now once: as it comes (the table shows each
    point's momentum); the result keeps the line for all the points."""
    for step in (0, 5, 10):
        paths.optimizer_state(run, step).unlink()
    store = tmp_path / "s"
    result = switch([0, 5], until=10, store=store, ckpts=run, device="cpu")
    assert [p.momentum for p in result.points] == ["fresh", "fresh"]
    assert [n for n in result.notes if "momentum" in n] == [f"t=0, 5 (2 points): {FRESH}"]
    args = ["switch", "--at", "0,5", "--until", "10", "--store", str(tmp_path / "c")]
    shown = runner.invoke(app, [*args, "--ckpts", str(run), "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    text = flat(shown.output)
    assert text.count("momentum starts at zero") == 1, text  # not once per point, nor at the end
    assert text.index(f"note: {FRESH_AT_0}") < text.index("conetool switch ->"), text


def test_switch_says_momentum_before_the_point_trains(run, tmp_path):
    """The momentum messages came only once every point had trained (a sweep of hours said at its
    end that no point's momentum was the run's): each reason is said before the first point it
    applies to trains, and not again at the end."""
    for step in (0, 5, 10):
        paths.optimizer_state(run, step).unlink()
    events = Events()
    result = switch([0, 5], until=10, store=tmp_path / "s", ckpts=run, progress=events)
    lines = events.lines
    assert lines.index(f"note: {FRESH_AT_0}") < lines.index("[bar] switch t=0"), lines
    assert sum("momentum" in line for line in lines) == 1, lines
    assert [n for n in result.notes if "momentum" in n] == [f"t=0, 5 (2 points): {FRESH}"]
    alone = Events()
    result = switch([5], until=10, store=tmp_path / "one", ckpts=run, progress=alone)
    fresh_at_5 = FRESH_AT_0.replace("t=0", "t=5").replace("000000", "000005")
    assert [line for line in alone.lines if "momentum" in line] == [f"note: {fresh_at_5}"]
    assert alone.lines.index(f"note: {fresh_at_5}") < alone.lines.index("[bar] switch t=5")
    assert [n for n in result.notes if "momentum" in n] == [fresh_at_5]


def test_switch_keeps_distinct_reasons_apart_naming_one_points_files(tmp_path):
    """Points without optimizer state share a note; a point whose file holds another
    optimizer's state has its own, naming its files."""
    model, adam = plain_loop(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    ckpts = save_loop_checkpoint(tmp_path / "run", model, None, step=1)
    save_loop_checkpoint(ckpts, model, None, step=2)
    save_loop_checkpoint(ckpts, model, adam, step=3)
    store = tmp_path / "s"
    result = switch([1, 2, 3], until=4, store=store, ckpts=ckpts, spec=OPTIMIZER_SPEC, device="cpu")
    said = [n for n in result.notes if "momentum" in n]  # no state: a note
    assert said == [
        "t=1, 2 (2 points): no optimizer state beside their checkpoints "
        "(step_XXXXXX.optim.safetensors, as conetool train writes it) nor in their files (no "
        "optimizer_state_dict, optimizer, optimizer_states entry); momentum starts at zero"
    ], said
    warned = [w for w in result.warnings if "momentum" in w]  # a state not used: a warning
    assert len(warned) == 1 and warned[0].startswith(
        "t=3: no optimizer state beside the checkpoint (step_000003.optim.safetensors, as "
        "conetool train writes it), and the optimizer_state_dict in step_3.pt is not used: it "
        "is the state of Adam"
    ), warned


def _foreign_run(run, tmp_path):
    """``run``'s checkpoints as a loop of one's own saves them: no optimizer state beside them
    or in them, no conetool metadata."""
    pts = tmp_path / "pts"
    pts.mkdir()
    shutil.copy(paths.spec(run), paths.spec(pts))
    for step in (0, 5, 10):
        state = load_file(str(paths.checkpoint(run, step)))
        torch.save({"model_state_dict": state, "step": step}, pts / f"ckpt_{step}.pt")
    return pts


def test_switch_says_its_notes_as_they_come_and_quiet_leaves_them_out(run, tmp_path):
    """switch printed its notes after the table, --quiet included ('note: using --step-regex
    ...', the momentum notes)."""
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", step_regex=r"step_(\d+)")
    args = ["switch", "--at", "5", "--store", str(store), "--device", "cpu"]
    regex = r"note: using --step-regex 'step_(\d+)', recorded in the store by conetool kernels"
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count("using --step-regex") == 1 and regex in text, text
    assert text.index(regex) < text.index("conetool switch ->"), text  # as it came
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "using --step-regex" not in quiet.output and "note:" not in quiet.output, quiet.output
    # a run without optimizer state: momentum starting at zero is a note, not under --quiet
    pts = _foreign_run(run, tmp_path)
    args = ["switch", "--at", "0,5", "--until", "10", "--ckpts", str(pts), "--device", "cpu"]
    loud = runner.invoke(app, [*args, "--store", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    # at the first point as it came, not again at the end
    assert text.count("momentum starts at zero") == 1 and "note: t=0: no optimizer" in text, text
    quiet = runner.invoke(app, [*args, "--store", str(tmp_path / "b"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "momentum starts at zero" not in quiet.output, quiet.output


def test_switch_warns_of_checkpoints_not_written_by_conetool_train(run, tmp_path):
    """The switch replays the spec's recipe on conetool's batch order, not the run's: a guess
    to check, said as 'note:' after the table and kept in the notes; --quiet printed it as a
    note. It is a warning: as it comes, again at the end under --quiet."""
    pts = _foreign_run(run, tmp_path)
    args = ["switch", "--at", "0,5", "--until", "10", "--ckpts", str(pts), "--device", "cpu"]
    foreign = "these checkpoints were not written by `conetool train` (no conetool metadata)"
    loud = runner.invoke(app, [*args, "--store", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count(foreign) == 1 and f"warning: {foreign}" in text, text
    assert text.index(foreign) < text.index("conetool switch ->"), text  # as it came
    quiet = runner.invoke(app, [*args, "--store", str(tmp_path / "b"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    text = flat(quiet.output)
    assert text.count(foreign) == 1 and f"warning: {foreign}" in text, text
    assert text.index(foreign) > text.index("conetool switch ->"), text  # at the end
    result = switch([0], until=10, store=tmp_path / "c", ckpts=pts, device="cpu")
    assert [w for w in result.warnings if foreign in w] == [FOREIGN_RUN], result.warnings
    assert not [n for n in result.notes if foreign in n], result.notes


def test_switch_warns_of_an_optimizer_state_it_does_not_use_under_quiet(tmp_path):
    """A loop's Adam state under an SGD spec is not used (momentum starts at zero although the
    run saved it, and the spec is perhaps not the run's recipe): it was a note --quiet printed
    after the table as 'note: t=3: ...'."""
    model, adam = plain_loop(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    ckpts = save_loop_checkpoint(tmp_path / "run", model, adam, step=3)
    save_spec(OPTIMIZER_SPEC, tmp_path / "spec.toml")
    args = ["switch", "--at", "3", "--until", "4", "--ckpts", str(ckpts), "--device", "cpu"]
    args += ["--spec", str(tmp_path / "spec.toml")]
    unused = "and the optimizer_state_dict in step_3.pt is not used: it is the state of Adam"
    for quiet in ([], ["-q"]):
        said = runner.invoke(app, [*args, "--store", str(tmp_path / f"s{quiet}"), *quiet])
        assert said.exit_code == 0, said.output
        text = flat(said.output)
        assert text.count(unused) == 1, text
        assert "warning: t=3: no optimizer state beside the checkpoint" in text, text
        assert "note: t=3" not in text, text


def test_a_warning_shared_by_several_points_is_said_once_with_and_without_quiet(tmp_path):
    """An optimizer state not used at two points was warned of twice without --quiet: 't=2: ...'
    before the first point, then 't=2, 3 (2 points): ...' at the end. Now the first only, as it
    comes; --quiet, which shows nothing as it comes, prints the line for both points at the end."""
    model, adam = plain_loop(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    ckpts = save_loop_checkpoint(tmp_path / "run", model, adam, step=2)
    save_loop_checkpoint(ckpts, model, adam, step=3)
    save_spec(OPTIMIZER_SPEC, tmp_path / "spec.toml")
    args = ["switch", "--at", "2,3", "--until", "4", "--ckpts", str(ckpts), "--device", "cpu"]
    args += ["--spec", str(tmp_path / "spec.toml")]
    unused = "is not used: it is the state of Adam"
    loud = runner.invoke(app, [*args, "--store", str(tmp_path / "loud")])
    assert loud.exit_code == 0, loud.output
    text = flat(loud.output)
    assert text.count(unused) == 1 and "(2 points)" not in text, text
    assert "warning: t=2: no optimizer state beside the checkpoint (step_000002" in text, text
    assert text.index("warning: t=2:") < text.index("conetool switch ->"), text  # as it came
    quiet = runner.invoke(app, [*args, "--store", str(tmp_path / "quiet"), "-q"])
    assert quiet.exit_code == 0, quiet.output
    text = flat(quiet.output)
    assert text.count(unused) == 1, text
    assert "warning: t=2, 3 (2 points): no optimizer state beside their checkpoints" in text, text
    assert text.index("(2 points)") > text.index("conetool switch ->"), text  # at the end


def test_switch_reference_train_says_what_it_trains_and_a_missing_reference_warns(run, tmp_path):
    """--reference train trained the standard model to T without a word; no standard model at
    T, and earlier points left out of results.csv, were notes --quiet printed after the table."""
    store = tmp_path / "s"
    args = ["switch", "--until", "8", "--store", str(store), "--ckpts", str(run)]
    args += ["--device", "cpu"]
    missing = "no checkpoint of step 8 in"
    for quiet in ([], ["-q"]):
        said = runner.invoke(app, [*args, "--at", "0", *quiet])
        assert said.exit_code == 0, said.output
        text = flat(said.output)
        assert text.count(missing) == 1 and f"warning: {missing}" in text, text
    # the checkpoint of an earlier point changed: that point is left out of results.csv
    changed = paths.checkpoint(run, 0)
    with safe_open(str(changed), framework="pt") as handle:
        meta = handle.metadata()
    save_file({k: v * 1.01 for k, v in load_file(str(changed)).items()}, str(changed), meta)
    trains = "note: --reference train: the run has no checkpoint of step 8, so the standard model"
    left = "warning: left out of results.csv the points of earlier sweeps at 0"
    for quiet in ([], ["-q"]):
        paths.switch_reference(store).unlink(missing_ok=True)  # trained again
        said = runner.invoke(app, [*args, "--at", "5", "--reference", "train", *quiet])
        assert said.exit_code == 0, said.output
        text = flat(said.output)
        assert text.count(left) == 1, text
        assert missing not in text, text
        if quiet:
            assert "--reference train:" not in text, text
        else:
            assert text.count(trains) == 1, text
            assert "from the checkpoint of step 5: 3 steps of standard training" in text, text
            assert text.index(trains) < text.index("conetool switch ->"), text  # before it trains
    paths.switch_reference(store).unlink()
    result = switch([5], until=8, store=store, ckpts=run, device="cpu", reference="train")
    assert [n[: len(trains) - 6] for n in result.notes] == [trains[6:]], result.notes
    assert not any("--reference train:" in w for w in result.warnings), result.warnings
    assert [w for w in result.warnings if w.startswith(left[9:])], result.warnings


def test_momentum_notes_list_a_long_sweep_shortly():
    from conetool.pipeline.switch_points import MomentumNote, momentum_notes

    notes = [MomentumNote(t, f"one {t}", "many") for t in range(1900, -1, -100)]
    assert momentum_notes(notes) == ["t=0, 100, 200, 300, 400, 500, ..., 1900 (20 points): many"]
    assert momentum_notes(notes[:1]) == ["t=1900: one 1900"]
    assert momentum_notes([]) == []


def test_momentum_said_as_known_gives_way_to_one_message_per_reason_for_the_job():
    """What a rank said as it came is kept as the job's message for its reason but not said
    again (it was said twice where the job's named more points); a reason this rank never met
    (only other ranks' points) is said at the end."""
    from conetool.pipeline.switch_points import MomentumNote, MomentumSaid

    events = Events()
    says = conetool.progress.Said(events)
    says.warn("before")
    momentum = MomentumSaid(says)
    mine = [MomentumNote(0, "zero alone", "fresh"), MomentumNote(4, "four alone", "unused", True)]
    for note in mine:
        momentum(note)
    assert events.lines == ["warning: before", "note: t=0: zero alone", "warning: t=4: four alone"]
    momentum.withdraw()
    assert (says.notes, says.warnings) == ([], ["before"])  # what this rank shares
    other_rank = [MomentumNote(8, "eight alone", "fresh"), MomentumNote(9, "nine", "foreign")]
    momentum.close(mine + other_rank)
    assert events.lines[3:] == ["note: t=9: nine"]
    assert says.notes == ["t=0, 8 (2 points): fresh", "t=9: nine"]
    assert says.warnings == ["before", "t=4: four alone"]  # said as it came: kept, not again


def test_torchrun_ranks_share_one_note_per_reason(run, tmp_path):
    """Under torchrun each rank said its own points' momentum notes and its own foreign-run
    note: two ranks printed the foreign-run note twice and a momentum note per point."""
    pts = tmp_path / "pts"
    pts.mkdir()
    shutil.copy(paths.spec(run), paths.spec(pts))
    for step in (0, 5, 10):  # a loop's own checkpoints: no optimizer state, no conetool metadata
        state = load_file(str(paths.checkpoint(run, step)))
        torch.save({"model_state_dict": state, "step": step}, pts / f"ckpt_{step}.pt")
    args = ["--until", "10", "--ckpts", str(pts), "--store", str(tmp_path / "s"), "--device", "cpu"]
    done = run_torchrun("switch", "--at", "0,5", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = flat(done.stdout)
    assert text.count("not written by `conetool train`") == 1, text
    assert "warning: these checkpoints were not written by `conetool train`" in text, text
    # rank 0's point as it came (the other rank's progress is not shown), not again at the end
    assert text.count("momentum starts at zero") == 1, text
    assert "note: t=0: no optimizer state beside the checkpoint (step_000000" in text, text
    assert "nor in ckpt_0.pt (no optimizer_state_dict, optimizer, optimizer_states entry)" in text
    assert "(2 points)" not in text, text
