"""conetool from a researcher's script or notebook: what the caller set up around a call is
neither changed by it nor read into its results (the default dtype)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import SPEC, run_fixtures

import conetool
from conetool.spec import spec_from_dict

trained, run = run_fixtures()


@pytest.fixture
def float64_default() -> Iterator[None]:
    """A notebook that computes in float64: ``torch.set_default_dtype(torch.float64)``."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def test_train_under_a_float64_default_trains_the_specs_float32_run(
    trained: Path, tmp_path: Path, float64_default: None
) -> None:
    """The spec alone decides the run: under the caller's float64 default, LeNet/MLP specs were
    built in float64, so that the same seed drew another initialization and the checkpoints
    were float64. The caller's default is given back."""
    out = tmp_path / "run"
    conetool.train(spec_from_dict(SPEC, source="tiny.toml"), out, threads=1)
    assert torch.get_default_dtype() == torch.float64
    for name in ("step_000000.safetensors", "step_000010.safetensors"):
        ours, cli = load_file(out / name), load_file(trained / name)
        assert {t.dtype for t in ours.values()} == {torch.float32}, name
        assert ours.keys() == cli.keys()
        assert all(torch.equal(ours[k], cli[k]) for k in cli), name


def test_switch_under_a_float64_default_trains_as_the_command_does(
    run: Path, tmp_path: Path, float64_default: None
) -> None:
    """switch built the float32 run's model in float64: the continuation trained in float64 and
    the checkpoints were warned of as of lower precision than the model."""
    store = tmp_path / "store"
    conetool.kernels(run, store=store, threads=1)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ours = conetool.switch([5], store=store, threads=1)
    assert not [w for w in said if "lower precision" in str(w.message)]
    assert torch.get_default_dtype() == torch.float64
    assert not [w for w in ours.warnings if "lower precision" in w]
    torch.set_default_dtype(torch.float32)
    other = tmp_path / "store32"
    conetool.kernels(run, store=other, threads=1)
    theirs = conetool.switch([5], store=other, threads=1)
    assert [(p.at, p.test_loss, p.test_acc) for p in ours.points] == [
        (p.at, p.test_loss, p.test_acc) for p in theirs.points
    ]


def test_a_failed_call_gives_the_default_dtype_back(tmp_path: Path, float64_default: None) -> None:
    with pytest.raises(conetool.ConetoolError):
        conetool.distance(tmp_path / "missing")
    assert torch.get_default_dtype() == torch.float64


def test_empirical_ntk_keeps_the_callers_default_dtype(float64_default: None) -> None:
    """The model is the caller's: what its forward creates follows the caller's default."""
    seen = []

    class Net(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_default_dtype())
            return super().forward(x)

    net = Net(3, 2)
    kernel = conetool.empirical_ntk(net, torch.randn(4, 3), device="cpu")
    assert kernel.dtype == torch.float64 and set(seen) == {torch.float64}
