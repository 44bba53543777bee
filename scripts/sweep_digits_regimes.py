"""Which digits recipes give which eNTK regime? Train, compute kernels and read the verdict.

Each recipe is the demo's spec (``examples/digits_lenet.toml``: LeNet-5 on scikit-learn's 8x8
digits, probe set of 100, trace kernel) with a few ``[train]`` or ``[model]`` keys changed. For
each one the script trains into ``OUT/<name>/ckpts``, computes the kernels into
``OUT/<name>/store`` and runs ``conetool.distance`` on it, then prints one Markdown table row per
recipe: the verdict and the numbers it rests on. Finished runs and kernels are reused, so a rerun
only recomputes the verdicts.

    python scripts/sweep_digits_regimes.py --out runs/sweep            # every recipe (~15 min)
    python scripts/sweep_digits_regimes.py --out runs/sweep --only lr0.5,cosine
    python scripts/sweep_digits_regimes.py --out runs/seeds --seeds 8  # the demo, seeds 0..7

The README's table "Which recipes give which regime" is this script's output. ``--seeds`` instead
runs the demo's spec unchanged but for ``train.seed`` (the initialization and the data order; the
probe set is drawn with ``probe.seed``, which stays 0, so every seed's kernels are over the same
100 images: the table's probe column shows its hash) into ``OUT/seed<k>``, reads each verdict with
the demo's references (steps 0, 600 and 1,200) and prints one row per seed and a summary line: how
much the demo's verdict owes to its seed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
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


def seed_spec(seed: int) -> conetool.Spec:
    """The demo's spec (``examples/digits_lenet.toml``) with ``train.seed = seed``; nothing else
    changes, the probe set's ``probe.seed`` included."""
    raw = tomllib.loads(BASE.read_text())
    raw["train"]["seed"] = seed
    return spec_from_dict(raw, source=f"{BASE.name} with train.seed = {seed}")


def measure(
    spec: conetool.Spec,
    ckpts: Path,
    store: Path,
    *,
    threads: int,
    refs: list[int] | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into ``ckpts`` (or finish/reuse the run there), compute its kernels into
    ``store`` and read the verdict (``refs``: the references of ``conetool.distance``). Returns
    the verdict's numbers, or ``{"error": ...}``."""
    row: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        if not (ckpts / "conetool.toml").exists() or not (ckpts / "metrics.csv").exists():
            conetool.train(spec, ckpts, overwrite=True, threads=threads)
        trained = conetool.train(spec, ckpts, resume=True, threads=threads)
        row["test_acc"] = trained.test_acc
        conetool.kernels(ckpts, store=store, threads=threads)
        result = conetool.distance(store, refs=refs, threads=threads)
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
        references=[r for r in v.numbers.get("references", []) if "growth" in r],
        noise_floor=v.numbers.get("noise_floor"),
        probe=conetool.Store.open(store).manifest["probe"]["hash"],
        seconds=time.perf_counter() - started,
    )
    return row


def run(name: str, out: Path, threads: int = 1) -> dict[str, Any]:
    spec = recipe_spec(name)
    row: dict[str, Any] = {"name": name, "change": RECIPES[name][0], "steps": spec.train.steps}
    row.update(measure(spec, out / name / "ckpts", out / name / "store", threads=threads))
    return row


def run_seed(seed: int, out: Path, threads: int = 1) -> dict[str, Any]:
    """The demo's spec with training seed ``seed``, in ``out/seed<seed>``; the verdict reads the
    demo's references (``conetool demo``: steps 0, T/4 and T/2)."""
    spec = seed_spec(seed)
    T = spec.train.steps
    where = out / f"seed{seed}"
    row: dict[str, Any] = {"seed": seed, "steps": T}
    row.update(
        measure(spec, where / "ckpts", where / "store", threads=threads, refs=[0, T // 4, T // 2])
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
        where = _where(r)
        regime = f"`{r['regime']}`"
        if r["test_acc"] < 0.2:  # ten classes: chance level
            regime += " (training diverged)"
        lines.append(
            f"| {r['change']} | {r['steps']} | {r['test_acc']:.3f} | {regime} | {where} "
            f"| {_num(r['drop'], '.3g')}x | {_num(r['exponent'], '.2f')} "
            f"| {_num(r['trend'], '.2g')}x |"
        )
    return "\n".join(lines)


def _where(r: dict[str, Any]) -> str:
    """Phase I's end and, when it is not one step, its range: ``700 (700-800)``."""
    interval = r.get("interval")
    where = _num(r["phase1_end"], "d")
    if interval and interval[0] != interval[1]:
        where += f" ({interval[0]}-{interval[1]})"
    return where


def seed_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per seed: the verdict, the numbers it rests on, the reference curves'
    growths (last third over middle third), the noise floor of S, the final test accuracy and
    the probe set's hash (the same for every seed when the probe set is)."""
    lines = [
        "| seed | test acc | verdict | Phase I ends (range) | velocity drop | "
        "Phase II: S ~ lag^a | reference curves: growth | noise floor | probe |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | - | error: {r['error']} | | | | | | |")
            continue
        refs = ", ".join(f"{x['ref']}: {x['growth']:+.0%} ({x['status']})" for x in r["references"])
        lines.append(
            f"| {r['seed']} | {r['test_acc']:.3f} | `{r['regime']}` | {_where(r)} "
            f"| {_num(r['drop'], '.3g')}x | {_num(r['exponent'], '.2f')} | {refs or '-'} "
            f"| {_num(r['noise_floor'], '.3g')} | {r['probe'][:8]} |"
        )
    return "\n".join(lines)


def _spread(values: list[Any], fmt: str, suffix: str = "") -> str:
    """``min X, median Y, max Z`` of the values that are not None (and how many, when some are)."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    text = ", ".join(
        f"{what} {format(f(known), fmt)}{suffix}"
        for what, f in (("min", min), ("median", statistics.median), ("max", max))
    )
    if len(known) < len(values):
        text += f" (over {len(known)} of {len(values)} seeds)"
    return text


def seed_summary(rows: list[dict[str, Any]]) -> str:
    """One line: the count per verdict, then min, median and max of the end of Phase I, the
    velocity drop and the lag exponent over the seeds that have them."""
    done = [r for r in rows if "error" not in r]
    counts: dict[str, int] = {}
    for r in done:
        counts[r["regime"]] = counts.get(r["regime"], 0) + 1
    verdicts = ", ".join(f"`{k}` {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    errors = len(rows) - len(done)
    if errors:
        verdicts += f", error {errors}"
    probes = len({r["probe"] for r in done})
    return (
        f"{len(rows)} seeds: {verdicts or '-'}. "
        f"Phase I ends: {_spread([r['phase1_end'] for r in done], 'g')}. "
        f"Velocity drop: {_spread([r['drop'] for r in done], '.3g', 'x')}. "
        f"Phase II lag exponent: {_spread([r['exponent'] for r in done], '.2f')}. "
        f"Probe sets: {probes} distinct."
    )


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: a count N (seeds 0..N-1) or a comma-separated list (``3,`` is seed 3 alone)."""
    try:
        if "," in text:
            seeds = [int(x) for x in text.split(",") if x.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds takes a count (8: seeds 0..7) or a comma-separated list (0,3,5), not {text!r}"
        ) from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: give at least one seed, none negative or repeated"
        )
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--only", default="", help="comma-separated recipe names")
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        default=None,
        help="instead of the recipes, the demo with these training seeds: a count N (0..N-1) "
        "or a comma-separated list",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.seeds is not None:
        if args.only:
            parser.error("--seeds runs the demo's spec only; drop --only")
        print(
            f"the demo's spec, train.seed {', '.join(map(str, args.seeds))}; torch "
            f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{args.threads} thread(s)\n"
        )
        rows = []
        for seed in args.seeds:
            rows.append(run_seed(seed, args.out, args.threads))
            print(f"seed {seed}: {rows[-1].get('regime', rows[-1].get('error'))}", file=sys.stderr)
        print(seed_table(rows))
        print()
        print(seed_summary(rows))
        return 0
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    rows = []
    for name in names:
        rows.append(run(name, args.out, args.threads))
        print(f"{name}: {rows[-1].get('regime', rows[-1].get('error'))}", file=sys.stderr)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
