"""A probe set of one example: its trace (or logit-sum) kernels are 1 x 1, and S of two positive
numbers is 0 whatever the training did, so the verdict read "lazy (the kernel froze)" on any
run. ``kernels`` refuses it before anything is written (``--kind full``, a c x c kernel per step,
is fine), and ``distance`` and ``embed`` refuse a store of such kernels made before."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic_store import make_store
from tiny_run import SPEC_TOML, run_fixtures
from typer.testing import CliRunner

import conetool
from conetool.cli import app
from conetool.errors import StoreError

runner = CliRunner()
trained, run = run_fixtures()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("kind", ["trace", "sum"])
def test_kernels_refuses_a_probe_of_one_example(run: Path, tmp_path: Path, kind: str) -> None:
    store = tmp_path / "s"
    args = ["kernels", str(run), "--store", str(store), "--probe-size", "1", "--kind", kind]
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in text, text
    assert "--probe-size 1: a probe set of one example gives 1 x 1 kernels" in text, text
    assert "--probe-size 2 or more" in text, text
    assert not store.exists()  # was: 3 kernels computed, then distance said "lazy"


def test_a_spec_with_a_probe_of_one_example_is_named(tmp_path: Path) -> None:
    spec = tmp_path / "one.toml"
    spec.write_text(SPEC_TOML.replace("size = 6", "size = 1"))
    ckpts = tmp_path / "ckpts"
    conetool.train(spec, ckpts)
    with pytest.raises(
        conetool.ConetoolError, match=r"\[probe\] size = 1 in .*ckpts/conetool.toml"
    ):
        conetool.kernels(ckpts, store=tmp_path / "s", device="cpu")
    assert not (tmp_path / "s").exists()


def test_a_full_kernel_of_one_example_is_computed(run: Path, tmp_path: Path) -> None:
    result = conetool.kernels(run, store=tmp_path / "s", probe_size=1, kind="full", device="cpu")
    assert result.computed == [0, 5, 10]
    assert conetool.Store.open(tmp_path / "s").load_kernel(0).shape == (1, 3, 1, 3)


def _one_by_one_store(root: Path) -> Path:
    """A store of 1 x 1 kernels of a probe set of one example, as an older conetool made it."""
    header = {"checkpoints": "/ckpts", "probe": {"size": 1}}
    kernels = [torch.tensor([[v]], dtype=torch.float64) for v in (1.0, 3.0, 9.0)]
    return make_store(root, [0, 5, 10], kernels, header=header)


@pytest.mark.parametrize("command", ["distance", "embed"])
def test_a_store_of_one_by_one_kernels_is_refused_by_what_reads_s(
    tmp_path: Path, command: str
) -> None:
    store = _one_by_one_store(tmp_path / "s")
    call = getattr(conetool, command)
    with pytest.raises(StoreError, match=r"kernels are 1 x 1 .*--probe-size 100 --overwrite"):
        call(store, noise=False) if command == "distance" else call(store)
    assert not (store / command).exists()  # was: S = 0 everywhere, the verdict "lazy"
