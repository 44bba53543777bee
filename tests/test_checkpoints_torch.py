"""A researcher's own checkpoints: the step a file stores (safetensors metadata ``step`` or
``global_step``, a torch.save dict's ``step`` or ``global_step`` entry), the other torch.save files
of a run folder (losses, cached data: not checkpoints), and the torch.save note of ``kernels``.

References: the steps and tensors the tests write; the listing's own errors for what stays a
checkpoint (a wrong architecture, an unreadable file).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import SPEC, run_fixtures
from torch import nn
from typer.testing import CliRunner

from conetool import paths
from conetool.checkpoints import list_checkpoints
from conetool.cli import app
from conetool.errors import CheckpointError
from conetool.pipeline import kernels

runner = CliRunner()
trained, run = run_fixtures(SPEC)


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, classes)


def state(seed: int, classes: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Net(classes).state_dict().items()}


def listed(directory: Path, **kwargs: object) -> list[tuple[int, str]]:
    refs = list_checkpoints(directory, warn=lambda _: None, **kwargs)  # type: ignore[arg-type]
    return [(r.step, r.paths[0].name) for r in refs]


def problem(directory: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(directory, warn=lambda _: None, **kwargs)  # type: ignore[arg-type]
    return str(e.value)


# ------------------------------------------------------------------------------------------------
# conetool kernels on a run folder of torch.save files


def _torch_run(run: Path, tmp_path: Path, *, losses: bool = True) -> Path:
    """The tiny run as a plain loop would save it: ckpt_N.pt dicts, losses.pt beside them."""
    pts = tmp_path / "pts"
    pts.mkdir()
    shutil.copy(paths.spec(run), paths.spec(pts))
    for step in paths.checkpoint_steps(run):
        sd = load_file(str(paths.checkpoint(run, step)))
        torch.save({"model_state_dict": sd, "step": step}, pts / f"ckpt_{step}.pt")
    if losses:
        torch.save([0.5, 0.25], pts / "losses.pt")
    return pts


def test_the_torch_save_note_is_said_once_and_quiet_drops_it(run, tmp_path):
    """The note on torch.save files was a warning: printed on every kernels run, --quiet
    included (at the end). It is a note: once, as it comes, and not with --quiet, which keeps
    warnings of loss only."""
    pts = _torch_run(run, tmp_path, losses=False)
    args = ["kernels", str(pts), "--store", str(tmp_path / "s"), "--device", "cpu"]
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    text = " ".join(loud.output.split())
    assert text.count("are torch.save files") == 1, text
    assert "note: 3 checkpoint(s) such as" in text, text
    assert "warning: 3 checkpoint(s)" not in text, text
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert "torch.save" not in quiet.output, quiet.output
    # and not among a Python caller's warnings
    result = kernels(pts, store=tmp_path / "s2", device="cpu")
    assert not any("torch.save" in w for w in result.warnings), result.warnings
