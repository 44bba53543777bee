"""Which digits recipes give which eNTK regime? Train, compute kernels and read the verdict.

Each recipe is the demo's spec (``examples/digits_lenet.toml``: LeNet-5 on scikit-learn's 8x8
digits, probe set of 100, trace kernel) with a few ``[train]`` or ``[model]`` keys changed. For
each one the script trains into ``OUT/<name>/ckpts``, computes the kernels into
``OUT/<name>/store`` and runs ``conetool.distance`` on it, then prints one Markdown table row per
recipe: the verdict and the numbers it rests on. Finished runs and kernels are reused, so a rerun
only recomputes the verdicts.

    python scripts/sweep_digits_regimes.py --out runs/sweep            # every recipe (~15 min)
    python scripts/sweep_digits_regimes.py --out runs/sweep --only lr0.5,cosine

The README's table "Which recipes give which regime" is this script's output.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

import conetool
from conetool.spec import spec_from_dict, tomllib

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "examples" / "digits_lenet.toml"

# name -> (what changes, overrides {section: {key: value}}). Every run keeps the demo's dense
# early checkpoints (every 5 steps up to 100) and saves about 40 more.
RECIPES: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "demo": ("the demo, 2,400 steps", {}),
    "long": ("the demo, 10,000 steps", {"train": {"steps": 10000, "save_every": 250}}),
    "lr0.01": ("lr 0.01", {"train": {"lr": 0.01}}),
    "lr0.1": ("lr 0.1", {"train": {"lr": 0.1}}),
    "lr0.12": ("lr 0.12", {"train": {"lr": 0.12}}),
    "lr0.15": ("lr 0.15", {"train": {"lr": 0.15}}),
    "lr0.2": ("lr 0.2", {"train": {"lr": 0.2}}),
    "lr0.5": ("lr 0.5", {"train": {"lr": 0.5}}),
    "bs16": ("batch 16", {"train": {"batch_size": 16}}),
    "bs256": ("batch 256", {"train": {"batch_size": 256}}),
    "bs16-lr0.01": ("batch 16, lr 0.01", {"train": {"batch_size": 16, "lr": 0.01}}),
    "sgd-plain": ("no momentum", {"train": {"momentum": 0.0}}),
    "wd0": ("no weight decay", {"train": {"weight_decay": 0.0}}),
    "wd5e-3": ("weight decay 5e-3", {"train": {"weight_decay": 5e-3}}),
    "wd1e-2": ("weight decay 1e-2", {"train": {"weight_decay": 1e-2}}),
    "wd2e-2": ("weight decay 2e-2", {"train": {"weight_decay": 2e-2}}),
    "wd5e-3-long": (
        "weight decay 5e-3, 10,000 steps",
        {"train": {"weight_decay": 5e-3, "steps": 10000, "save_every": 250}},
    ),
    "cosine": ("cosine schedule", {"train": {"schedule": "cosine"}}),
    "step": (
        "lr x0.1 at 1/2 and 3/4",
        {"train": {"schedule": "step", "milestones": [3000, 4500], "gamma": 0.1}},
    ),
    "adam": ("Adam, lr 1e-3", {"train": {"optimizer": "adam", "lr": 1e-3, "momentum": 0.0}}),
    "adam3e-3": (
        "Adam, lr 3e-3",
        {"train": {"optimizer": "adam", "lr": 3e-3, "momentum": 0.0}},
    ),
    "mlp-narrow": ("MLP 64 (instead of LeNet-5)", {"model": {"arch": "mlp", "widths": [64]}}),
    "mlp-wide": (
        "MLP 2048 (instead of LeNet-5)",
        {"model": {"arch": "mlp", "widths": [2048]}},
    ),
}
DEFAULT_STEPS = 6000


def recipe_spec(name: str) -> conetool.Spec:
    """The demo's spec with ``name``'s overrides; 6,000 steps unless the recipe says otherwise."""
    raw = tomllib.loads(BASE.read_text())
    changes = copy.deepcopy(RECIPES[name][1])
    if name != "demo":
        raw["train"]["steps"] = DEFAULT_STEPS
        raw["train"]["save_every"] = 150
    for section, values in changes.items():
        raw.setdefault(section, {}).update(values)
    return spec_from_dict(raw, source=f"recipe {name}")


def run(name: str, out: Path) -> dict[str, Any]:
    spec = recipe_spec(name)
    ckpts, store = out / name / "ckpts", out / name / "store"
    row: dict[str, Any] = {"name": name, "change": RECIPES[name][0], "steps": spec.train.steps}
    started = time.perf_counter()
    try:
        if not (ckpts / "conetool.toml").exists() or not (ckpts / "metrics.csv").exists():
            conetool.train(spec, ckpts, overwrite=True)
        trained = conetool.train(spec, ckpts, resume=True)
        row["test_acc"] = trained.test_acc
        conetool.kernels(ckpts, store=store)
        result = conetool.distance(store)
    except conetool.ConetoolError as exc:
        row["error"] = str(exc).splitlines()[0][:80]
        return row
    v = result.verdict
    velocity = v.numbers.get("velocity", {})
    criteria = {c["name"]: c["value"] for c in v.numbers.get("criteria", [])}
    row.update(
        regime=v.regime,
        phase1_end=v.phase1_end,
        interval=velocity.get("phase1_range") if v.phase1_end is not None else None,
        drop=velocity.get("drop_factor"),
        exponent=criteria.get("lag growth"),
        trend=criteria.get("velocity trend"),
        seconds=time.perf_counter() - started,
    )
    return row


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | steps | test acc | verdict | Phase I ends (range) | velocity drop | "
        "Phase II: S ~ lag^a | Phase II velocity fall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['change']} | {r['steps']} | - | error: {r['error']} | | | | |")
            continue
        interval = r.get("interval")
        where = _num(r["phase1_end"], "d")
        if interval and interval[0] != interval[1]:
            where += f" ({interval[0]}-{interval[1]})"
        regime = f"`{r['regime']}`"
        if r["test_acc"] < 0.2:  # ten classes: chance level
            regime += " (training diverged)"
        lines.append(
            f"| {r['change']} | {r['steps']} | {r['test_acc']:.3f} | {regime} | {where} "
            f"| {_num(r['drop'], '.3g')}x | {_num(r['exponent'], '.2f')} "
            f"| {_num(r['trend'], '.2g')}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    rows = []
    for name in names:
        rows.append(run(name, args.out))
        print(f"{name}: {rows[-1].get('regime', rows[-1].get('error'))}", file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
