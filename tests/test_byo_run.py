"""Bring your own run (issue 16): epoch-named checkpoints, [data] keys for a user factory,
switch on checkpoints from another loop, --threads and the slow-step warning, end to end."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import SPEC_TOML
from typer.testing import CliRunner

import conetool
from conetool import paths
from conetool.cli import app
from conetool.data import load_data
from conetool.errors import DataError
from conetool.spec import load_spec, spec_from_dict, spec_to_toml

runner = CliRunner()

TINY_SPEC = SPEC_TOML  # 60 examples at batch 8: 8 iterations per epoch

FACTORY = """
import torch
from torch.utils.data import TensorDataset

calls = []


def make(seed=0, n_train=40):
    calls.append({"seed": seed, "n_train": n_train})
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + 20, 4, generator=g)
    y = torch.arange(n_train + 20) % 3
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "conetool_byo_data.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("conetool_byo_data")
    module.calls.clear()
    return module


def _epoch_dir(tmp_path: Path, tiny: Path) -> Path:
    """A run saved by a plain loop as epoch_N.pt (torch.save state dicts, no conetool metadata)."""
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(tiny), "--out", str(run), "-q"]).exit_code == 0
    epochs = tmp_path / "epochs"
    epochs.mkdir()
    for epoch, step in ((0, 0), (1, 5), (2, 10)):
        torch.save(load_file(str(paths.checkpoint(run, step))), epochs / f"epoch_{epoch}.pt")
    return epochs


# --------------------------------------------------------------------------------------------------
# checkpoints named by epoch


def test_epoch_named_directory_end_to_end(tmp_path: Path, tiny: Path) -> None:
    epochs = _epoch_dir(tmp_path, tiny)
    for n in range(3, 9):  # enough files for identical problems to collapse
        (epochs / f"epoch_{n}.pt").write_bytes((epochs / "epoch_0.pt").read_bytes())

    alone = runner.invoke(app, ["inspect", str(epochs)])  # no spec: no iterations per epoch
    assert alone.exit_code == 1
    assert alone.output.count("named by epoch") == 1
    assert "9 files (epoch_0.pt, epoch_1.pt, epoch_2.pt, ..., epoch_8.pt)" in alone.output
    assert "give a spec" in alone.output

    listed = runner.invoke(app, ["inspect", str(epochs), "--spec", str(tiny)])
    assert listed.exit_code == 0, listed.output
    # A warning (steps from epoch names, as kernels warns) and a note (torch.save files), each
    # on a line of its own.
    flat = " ".join(listed.output.split())
    assert "step = epoch x 8 iterations per epoch" in flat, listed.output
    assert "warning: 9 checkpoint(s) are named by epoch" in flat, listed.output
    assert flat.count("torch.save file") == 1, listed.output
    torch_note = (
        "note: 9 checkpoints (epoch_0.pt, epoch_1.pt, epoch_2.pt, ..., epoch_8.pt) are "
        "torch.save files, read only with torch.load(weights_only=True)"
    )
    assert torch_note in flat, listed.output
    rows = conetool.inspect(epochs, spec=tiny)
    assert [(len(row.notes), len(row.warnings)) for row in rows] == [(1, 1)] * 9
    assert rows[0].note == " ".join(rows[0].notes)

    store = tmp_path / "store"
    done = runner.invoke(
        app,
        ["kernels", str(epochs), "--spec", str(tiny), "--store", str(store), "--steps", ":16"],
    )
    assert done.exit_code == 0, done.output
    assert "named by epoch: step = epoch x 8" in done.output
    assert sorted(int(p.stem.split("_")[1]) for p in (store / "kernels").glob("*.safetensors")) == [
        0,
        8,
        16,
    ]

    as_steps = runner.invoke(
        app,
        [
            "kernels",
            str(epochs),
            "--spec",
            str(tiny),
            "--store",
            str(tmp_path / "s2"),
            "-q",
            "--step-regex",
            r"epoch_(\d+)",
        ],
    )
    assert as_steps.exit_code == 1
    assert "Name the group 'epoch'" in as_steps.output


def test_the_epoch_note_shows_the_numbers_and_a_batch_size_left_to_the_default(
    tmp_path: Path, tiny: Path
) -> None:
    """The note said 'step = epoch x 8 iterations per epoch (from the spec: ceil(training
    examples / batch size))' without the two numbers, so a spec that left batch_size to the
    default 128 (another number of steps per epoch than the run's loader) read as right. It shows
    the examples and the batch size, and says when the spec file does not write batch_size."""
    epochs = _epoch_dir(tmp_path, tiny)
    said = " ".join(w for row in conetool.inspect(epochs, spec=tiny) for w in row.warnings)
    shown = "step = epoch x 8 iterations per epoch (from the spec: ceil(60 training examples / "
    assert shown + "train.batch_size 8))" in said, said
    unset = tmp_path / "unset.toml"
    unset.write_text(tiny.read_text().replace("batch_size = 8\n", ""))
    said = " ".join(w for row in conetool.inspect(epochs, spec=unset) for w in row.warnings)
    shown = (
        "step = epoch x 1 iterations per epoch (from the spec: ceil(60 training examples / "
        "train.batch_size 128, which the spec file does not write: conetool's default; set it "
        "to your loader's))"
    )
    assert shown in said, said


def test_switch_on_foreign_checkpoints_says_it_replays_conetools_batches(
    tmp_path: Path, tiny: Path
) -> None:
    epochs = _epoch_dir(tmp_path, tiny)
    store = tmp_path / "store"
    made = runner.invoke(app, ["kernels", str(epochs), "--spec", str(tiny), "--store", str(store)])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["switch", "--at", "0", "--until", "8", "--store", str(store)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not written by `conetool train`" in text
    assert "conetool's seeded batch order" in text and "not on the batches of the loop" in text
    # The momentum note names the file it looked for, and the checkpoint file it looked in.
    assert "no optimizer state beside the checkpoint (step_000000.optim.safetensors" in text, text
    assert "nor in epoch_0.pt (no optimizer_state_dict, optimizer, optimizer_states entry)" in text


def test_switch_on_conetool_checkpoints_has_no_such_note(tmp_path: Path, tiny: Path) -> None:
    run, store = tmp_path / "run", tmp_path / "store"
    assert runner.invoke(app, ["train", str(tiny), "--out", str(run), "-q"]).exit_code == 0
    assert runner.invoke(app, ["kernels", str(run), "--store", str(store), "-q"]).exit_code == 0
    result = runner.invoke(app, ["switch", "--at", "5", "--store", str(store), "-q"])
    assert result.exit_code == 0, result.output
    assert "not written by `conetool train`" not in result.output


def test_switch_names_until_and_reference_for_a_broken_checkpoint_at_T(
    tmp_path: Path, tiny: Path
) -> None:
    """A half-written last checkpoint is the standard model at T, not a switch point: the advice
    is --until or --reference train, not another --at."""
    run, store = tmp_path / "run", tmp_path / "store"
    assert runner.invoke(app, ["train", str(tiny), "--out", str(run), "-q"]).exit_code == 0
    assert runner.invoke(app, ["kernels", str(run), "--store", str(store), "-q"]).exit_code == 0
    last = paths.checkpoint(run, 10)
    last.write_bytes(last.read_bytes()[:100])  # the run died while writing it
    result = runner.invoke(app, ["switch", "--at", "0", "--store", str(store), "-q"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert str(last.name) in text and "standard model at T" in text, text
    assert "--until 5" in text and "--reference train" in text, text
    assert "choose another --at" not in text and "delete it ." not in text, text
    ok = runner.invoke(app, ["switch", "--at", "0", "--until", "5", "--store", str(store), "-q"])
    assert ok.exit_code == 0, ok.output


def test_switch_says_when_the_spec_T_is_beyond_the_runs_last_checkpoint(
    tmp_path: Path, tiny: Path
) -> None:
    """A spec whose [train] steps is not the run's (left at its default, say) trains every point
    past the run's end: the warning says so and names --until with the run's last step, rather than
    only --reference train (which would train the standard run past its end too)."""
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(tiny), "--out", str(run), "-q"]).exit_code == 0
    mine = tmp_path / "mine"  # a plain loop's run of 5 steps
    mine.mkdir()
    for step in (0, 5):
        torch.save(load_file(str(paths.checkpoint(run, step))), mine / f"ckpt_{step}.pt")
    store = tmp_path / "store"
    made = runner.invoke(app, ["kernels", str(mine), "--spec", str(tiny), "--store", str(store)])
    assert made.exit_code == 0, made.output
    swept = runner.invoke(app, ["switch", "--at", "0", "--store", str(store)])
    assert swept.exit_code == 0, swept.output
    text = " ".join(swept.output.split())
    assert "the run's checkpoints end at step 5, before T = 10" in text, text
    assert "trained past the run's end" in text and "rerun with --until 5" in text, text
    again = runner.invoke(app, ["switch", "--at", "0", "--until", "5", "--store", str(store)])
    assert again.exit_code == 0 and "no checkpoint of step" not in again.output, again.output


ATTENTION_MODEL = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(torch.tanh(a + h).mean(1))


def make(num_classes):
    return Net(num_classes)
"""


def test_an_attention_model_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nn.MultiheadAttention never calls its out_proj module (the structured engine's hooks see
    # no call: the reference path), and in eval mode takes a fused path without a forward-mode
    # derivative (switch's linearized model): train, kernels, distance and switch all run.
    (tmp_path / "conetool_byo_attention.py").write_text(textwrap.dedent(ATTENTION_MODEL))
    monkeypatch.chdir(tmp_path)  # found beside the user, as the README says
    spec = tmp_path / "attention.toml"
    spec.write_text(
        TINY_SPEC.replace('arch = "mlp"', 'arch = "conetool_byo_attention:make"')
        .replace("widths = [8]\n", "")
        .replace("shape = [4]", "shape = [4, 3]")
    )
    run, store = tmp_path / "run", tmp_path / "store"
    for args in (
        ["train", str(spec), "--out", str(run)],
        ["kernels", str(run), "--store", str(store)],
        ["distance", "--store", str(store), "--no-noise"],
        ["switch", "--at", "0,5", "--store", str(store)],
    ):
        result = runner.invoke(app, [*args, "-q"])
        assert result.exit_code == 0, (args, result.output)
    results = (store / "switch" / "results.json").read_text()
    assert '"at": 0' in results and '"at": 5' in results


BATCH_MEAN_MODEL = """
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.out = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.out(x - x.mean(0, keepdim=True))  # each example's output depends on the batch


def make(num_classes):
    return Net(num_classes)
"""


def test_a_model_error_stops_kernels_at_once_even_with_skip_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model whose examples interact (or a module without a vmap rule) fails at every
    # checkpoint alike: the message blames the model, not "this checkpoint", and --skip-bad does
    # not try every checkpoint in turn only to end with "every checkpoint failed".
    (tmp_path / "conetool_byo_batch_mean.py").write_text(textwrap.dedent(BATCH_MEAN_MODEL))
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "batch_mean.toml"
    spec.write_text(
        TINY_SPEC.replace('arch = "mlp"', 'arch = "conetool_byo_batch_mean:make"').replace(
            "widths = [8]\n", ""
        )
    )
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(spec), "--out", str(run), "-q"]).exit_code == 0
    for skip_bad in ([], ["--skip-bad"]):
        result = runner.invoke(
            app, ["kernels", str(run), "--store", str(tmp_path / "store"), "-q", *skip_bad]
        )
        text = " ".join(result.output.split())
        assert result.exit_code == 1, text
        assert "depends on the other examples" in text, text
        assert "step 0 " in text and "not this checkpoint's" in text, text
        assert "fix this checkpoint" not in text and "every checkpoint failed" not in text, text
        assert "skipped step" not in text, text


WRAPPING_MODEL = """
from torch import nn

from conetool.models import mlp


class Wrapper(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.inner = mlp((4,), num_classes, widths=[8])

    def forward(self, x):
        return self.inner(x)


def make(num_classes):
    return Wrapper(num_classes)
"""


def test_a_factory_that_wraps_the_saved_network_stops_kernels_at_once_even_with_skip_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every key of the model is the checkpoint's with "inner.": the factory's fault, which every
    # checkpoint shares. It said "fix this checkpoint and rerun, or pass --skip-bad", and with
    # --skip-bad warned once per checkpoint before "every checkpoint failed".
    (tmp_path / "conetool_byo_wrapper.py").write_text(textwrap.dedent(WRAPPING_MODEL))
    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain.toml"
    plain.write_text(TINY_SPEC)
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(plain), "--out", str(run), "-q"]).exit_code == 0
    paths.spec(run).unlink()  # a run of one's own: the spec comes with --spec
    wrapping = tmp_path / "wrapping.toml"
    wrapping.write_text(
        TINY_SPEC.replace('arch = "mlp"', 'arch = "conetool_byo_wrapper:make"').replace(
            "widths = [8]\n", ""
        )
    )
    for skip_bad in ([], ["--skip-bad"]):
        result = runner.invoke(
            app,
            [
                "kernels",
                str(run),
                "--spec",
                str(wrapping),
                "--store",
                str(tmp_path / "s"),
                "-q",
                *skip_bad,
            ],
        )
        text = " ".join(result.output.split())
        assert result.exit_code == 1, text
        assert "with the prefix 'inner.': the factory wraps the network" in text, text
        assert "step 0 " in text and "not this checkpoint's" in text, text
        assert "fix this checkpoint" not in text and "every checkpoint failed" not in text, text
        assert "skipped step" not in text, text


# --------------------------------------------------------------------------------------------------
# [data] keys for a user factory


def test_every_data_key_reaches_the_factory(factory) -> None:
    spec = spec_from_dict(
        {
            "model": {"arch": "mlp", "num_classes": 3},
            "data": {"dataset": "conetool_byo_data:make", "seed": 7, "n_train": 30},
        }
    )
    assert spec.data.options == {"seed": 7, "n_train": 30}
    load_data(spec.data)
    assert factory.calls == [{"seed": 7, "n_train": 30}]
    resolved = spec.to_dict()["data"]
    assert resolved == {"dataset": "conetool_byo_data:make", "seed": 7, "n_train": 30}
    assert spec_from_dict({**spec.to_dict()}) == spec  # the resolved spec reads back the same
    assert "train_size" not in spec_to_toml(spec) and "shape" not in spec_to_toml(spec)


def test_a_data_key_the_factory_does_not_accept_is_refused(factory) -> None:
    spec = spec_from_dict(
        {"data": {"dataset": "conetool_byo_data:make", "seed": 7, "colour": "red"}}
    )
    with pytest.raises(DataError) as e:
        load_data(spec.data)
    message = str(e.value)
    assert "'colour' is not a parameter" in message and "accepts: n_train, seed" in message
    assert factory.calls == []  # refused before the factory runs


def test_cli_data_keys_end_to_end(tmp_path: Path, factory) -> None:
    spec = tmp_path / "byo.toml"
    spec.write_text(
        TINY_SPEC.replace(
            'dataset = "synthetic"\nshape = [4]\nnum_classes = 3\ntrain_size = 60\ntest_size = 30',
            'dataset = "conetool_byo_data:make"\nseed = 7\nn_train = 40',
        )
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(spec), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert {"seed": 7, "n_train": 40} in factory.calls
    saved = load_spec(paths.spec(out))
    assert saved.to_dict()["data"] == {
        "dataset": "conetool_byo_data:make",
        "seed": 7,
        "n_train": 40,
    }

    spec.write_text(spec.read_text().replace("seed = 7", "seed = 7\ncolour = 1"))
    refused = runner.invoke(app, ["train", str(spec), "--out", str(tmp_path / "r2"), "-q"])
    assert refused.exit_code == 1
    assert "'colour' is not a parameter" in refused.output and "Traceback" not in refused.output


# --------------------------------------------------------------------------------------------------
# threads


def test_threads_option_and_slow_step_warning(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conetool import threads

    # Make every step "implausibly slow" for the model, so that the warning must show.
    monkeypatch.setattr(threads, "SLOW_FLOPS_PER_SECOND", 1e30)
    monkeypatch.setattr(threads, "SLOW_OVERHEAD_SECONDS", 1e-9)
    tiny.write_text(TINY_SPEC.replace("steps = 10", "steps = 30"))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tiny), "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("warning: training steps take") == 1
    assert "1 thread(s): stop the other work (conetool already runs one thread)" in text
    assert (
        runner.invoke(app, ["train", str(tiny), "--out", str(out), "--threads", "0"]).exit_code == 2
    )
    # --quiet says it once at the end; from Python it is in the result (no progress needed)
    quiet = runner.invoke(
        app, ["train", str(tiny), "--out", str(tmp_path / "q"), "--threads", "1", "-q"]
    )
    assert " ".join(quiet.output.split()).count("warning: training steps take") == 1
    made = conetool.train(tiny, tmp_path / "lib", threads=1)
    assert len(made.warnings) == 1 and made.warnings[0].startswith("training steps take")
