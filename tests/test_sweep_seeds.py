"""``scripts/sweep_digits_regimes.py --seeds``: the demo's spec with several training seeds and a
fixed probe set, one row per seed and a summary line (the README's seed table is its output)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import conetool
from conetool.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

# The demo's spec shrunk to a few seconds: 60 steps, checkpoints every 5, a probe set of 20.
TINY = """
[model]
arch = "lenet5"
num_classes = 10

[data]
dataset = "digits"

[probe]
size = 20
split = "train"
seed = 0

[train]
steps = 60
batch_size = 64
optimizer = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 1e-4
schedule = "constant"
seed = 0
save_every = 5
eval_every = 60
"""


def _sweep() -> Any:
    path = ROOT / "scripts" / "sweep_digits_regimes.py"
    spec = importlib.util.spec_from_file_location("sweep_digits_regimes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_spec_changes_the_training_seed_only() -> None:
    sweep = _sweep()
    demo = load_spec(ROOT / "examples" / "digits_lenet.toml")
    spec = sweep.seed_spec(5)
    assert spec.train.seed == 5
    assert spec.probe == demo.probe  # probe.seed 0: the same 100 images for every seed
    assert spec.train.steps == demo.train.steps and spec.model == demo.model
    assert sweep.seed_spec(0) == demo


@pytest.mark.parametrize(("text", "seeds"), [("3", [0, 1, 2]), ("0,4,7", [0, 4, 7]), ("6,", [6])])
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert _sweep().parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["x", "0", "1,1", "-1,2", ""])
def test_parse_seeds_refuses(text: str) -> None:
    sweep = _sweep()
    with pytest.raises(sweep.argparse.ArgumentTypeError):
        sweep.parse_seeds(text)


def _row(seed: int, regime: str, end: int | None, drop: float, a: float | None) -> dict[str, Any]:
    return {
        "seed": seed,
        "steps": 2400,
        "test_acc": 0.978,
        "regime": regime,
        "phase1_end": end,
        "interval": [end, end + 100] if end is not None else None,
        "drop": drop,
        "exponent": a,
        "trend": 0.8,
        "references": [{"ref": 1200, "growth": 0.53, "status": "rising"}] if end else [],
        "noise_floor": 1.35e-14,
        "probe": "0123456789abcdef",
        "seconds": 20.0,
    }


def test_seed_table_and_summary_on_made_up_verdicts() -> None:
    sweep = _sweep()
    rows = [
        _row(0, "drift-after-phase-I", 700, 1450.0, 1.43),
        _row(1, "drift-after-phase-I", 1100, 1860.0, 1.20),
        _row(2, "no-two-phase", None, 3.2, None),
        {"seed": 3, "steps": 2400, "error": "out of memory"},
    ]
    table = sweep.seed_table(rows).splitlines()
    assert len(table) == 2 + 4
    assert table[2] == (
        "| 0 | 0.978 | `drift-after-phase-I` | 700 (700-800) | 1.45e+03x | 1.43 "
        "| 1200: +53% (rising) | 1.35e-14 | 01234567 |"
    )
    assert table[4].startswith("| 2 | 0.978 | `no-two-phase` | - | 3.2x | - | - |")
    assert table[5].startswith("| 3 | - | error: out of memory |")
    assert sweep.seed_summary(rows) == (
        "4 seeds: `drift-after-phase-I` 2, `no-two-phase` 1, error 1. "
        "Phase I ends: min 700, median 900, max 1100 (over 2 of 3 seeds). "
        "Velocity drop: min 3.2x, median 1.45e+03x, max 1.86e+03x. "
        "Phase II lag exponent: min 1.20, median 1.31, max 1.43 (over 2 of 3 seeds). "
        "Probe sets: 1 distinct."
    )


def test_seeds_option_trains_each_seed_on_the_same_probe_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _sweep()
    base = tmp_path / "tiny.toml"
    base.write_text(TINY)
    monkeypatch.setattr(sweep, "BASE", base)
    out = tmp_path / "seeds"
    assert sweep.main(["--seeds", "0,2", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("the demo's spec, train.seed 0, 2; torch ")
    assert printed[0].endswith(", 1 thread(s)")
    assert [line.split(" | ")[0] for line in printed[4:6]] == ["| 0", "| 2"]
    assert printed[6] == ""
    assert printed[7].startswith("2 seeds: ")
    assert printed[7].endswith("Probe sets: 1 distinct.")
    # each seed trained its own network (train.seed) on the same probe set (probe.seed)
    for seed in (0, 2):
        assert (
            conetool.Store.open(out / f"seed{seed}" / "store").manifest["spec"]["train"]["seed"]
            == seed
        )
    first = [load_file(out / f"seed{s}" / "ckpts" / "step_000000.safetensors") for s in (0, 2)]
    assert first[0].keys() == first[1].keys() and first[0]
    assert not all(torch.equal(first[0][k], first[1][k]) for k in first[0])
    probes = {
        conetool.Store.open(out / f"seed{s}" / "store").manifest["probe"]["hash"] for s in (0, 2)
    }
    assert len(probes) == 1


def test_seeds_and_only_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _sweep().main(["--seeds", "2", "--only", "demo"])
    assert "--seeds runs the demo's spec only; drop --only" in capsys.readouterr().err
