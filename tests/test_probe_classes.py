"""A probe set smaller than the class count: make_probe gives one example each to the first
``size`` classes, so the others are in no kernel. kernels computed it without a word; it warns,
naming the classes left out and the fix (the flag when --probe-size set the size)."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_run import SPEC_TOML, run_fixtures
from typer.testing import CliRunner

import conetool
from conetool.cli import app
from conetool.probe import Probe, missing_classes_warning

runner = CliRunner()
trained, run = run_fixtures()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_kernels_warns_of_a_probe_smaller_than_the_class_count(run: Path, tmp_path: Path) -> None:
    store = tmp_path / "s"
    args = ["kernels", str(run), "--store", str(store), "--probe-size", "2", "--device", "cpu"]
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert result.exit_code == 0, text
    said = (
        "warning: --probe-size 2 is smaller than the 3 classes of the data: the probe set, one "
        "example per class in class order, holds no example of class 2, so the kernels (and the "
        "distance, embedding and spectrum read from them) see only the others. Pass "
        "--probe-size 3 or more: the paper uses 500, and a multiple of 3 gives every class as "
        "many."
    )
    assert text.count(said) == 1, text  # said once
    assert conetool.Store.open(store).load_kernel(0).shape == (2, 2)  # computed as asked


def test_the_spec_s_probe_size_is_named_with_its_file(tmp_path: Path) -> None:
    spec = tmp_path / "two.toml"
    spec.write_text(SPEC_TOML.replace("size = 6", "size = 2"))
    ckpts = tmp_path / "ckpts"
    conetool.train(spec, ckpts)
    result = conetool.kernels(ckpts, store=tmp_path / "s", device="cpu")
    (said,) = [w for w in result.warnings if "classes of the data" in w]
    assert said.startswith(f"{ckpts / 'conetool.toml'}: 'probe.size' = 2 is smaller than the 3 ")
    assert "Set probe.size to 3 or more (or pass --probe-size N)" in said, said


def test_a_probe_of_every_class_is_said_nothing_of(run: Path, tmp_path: Path) -> None:
    result = conetool.kernels(run, store=tmp_path / "s", probe_size=3, device="cpu")
    assert not [w for w in result.warnings if "classes of the data" in w], result.warnings


def _probe(labels: list[int]) -> Probe:
    n = len(labels)
    inputs = torch.zeros(n, 2)
    return Probe(inputs, torch.tensor(labels), torch.arange(n), "train", "0" * 16)


def test_the_classes_left_out_are_named() -> None:
    said = missing_classes_warning(_probe([0, 1, 2, 3, 4]), 10, size_flag="--probe-size")
    assert said is not None and "holds no example of classes 5 to 9," in said, said
    said = missing_classes_warning(_probe([0, 1, 3, 4, 6]), 8, source="a.toml")
    assert said is not None and said.startswith("a.toml: 'probe.size' = 5 is smaller")
    assert "holds no example of classes 2, 5 and 7," in said, said
    assert missing_classes_warning(_probe([0, 1, 2]), 3) is None
