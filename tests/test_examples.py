"""The example specs load, and the regime examples are exactly the sweep's recipes whose
verdicts the README quotes (scripts/sweep_digits_regimes.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conetool.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def _sweep():
    path = ROOT / "scripts" / "sweep_digits_regimes.py"
    spec = importlib.util.spec_from_file_location("sweep_digits_regimes", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_spec_loads(path: Path) -> None:
    assert load_spec(path).train.steps > 0


@pytest.mark.parametrize(
    ("example", "recipe"),
    [
        ("digits_lenet.toml", "demo"),
        ("digits_lenet_lazy.toml", "cosine"),
        ("digits_lenet_no_two_phase.toml", "wd2e-2"),
    ],
)
def test_regime_examples_are_the_sweep_recipes(example: str, recipe: str) -> None:
    assert load_spec(ROOT / "examples" / example) == _sweep().recipe_spec(recipe)
