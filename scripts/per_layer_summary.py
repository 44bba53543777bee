"""Median kernel velocity of each parameter group before and after Phase I, from a store's
``distance/per_layer.csv`` (``conetool kernels --per-layer``, then ``conetool distance``).

    python scripts/per_layer_summary.py conetool-demo/store --early-until 700

The README's paragraph "Which layers move" quotes this script's output on the demo store.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

from conetool import paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument(
        "--early-until", type=int, required=True, help="early window: steps before this one"
    )
    args = parser.parse_args(argv)
    summary = json.loads(paths.distance_summary(args.store).read_text(encoding="utf-8"))
    end = summary["verdict"]["phase1_end"]
    if end is None:
        parser.error(f"{args.store}: the verdict found no Phase I, so there is no Phase II")
    velocity: dict[str, dict[int, float]] = defaultdict(dict)
    with open(paths.per_layer_csv(args.store), newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["velocity"]:
                velocity[row["group"]][int(row["step"])] = float(row["velocity"])
    print(
        f"| group | median velocity before step {args.early_until} | from step {end} (Phase II) | fall |"
    )
    print("| --- | --- | --- | --- |")
    for group, by_step in velocity.items():
        early = statistics.median(v for s, v in by_step.items() if s < args.early_until)
        late = statistics.median(v for s, v in by_step.items() if s >= end)
        print(f"| {group} | {early:.2g} | {late:.2g} | {early / late:.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
