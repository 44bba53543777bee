"""The report's sections of results: the verdict with its numbers, the kernel distance (Fig. 1a,
1b, S matrix) and the cone embedding (Fig. 1c); the spectrum and the switch experiment (Fig. 2)
are in :mod:`.report_experiment_sections`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import paths
from ..report_html import (
    Block,
    Items,
    Section,
    Table,
    b,
    text,
)
from ..store_manifest import MIXED_ENGINES
from .report_experiment_sections import ExperimentSections
from .report_file_checks import csv_problem, npz_problem
from .report_inputs import _REGIMES, _g, _pct, _rule_value
from .saved_results import summary_said

__all__ = ["ResultSections"]


class ResultSections(ExperimentSections):
    """Verdict, distance and embedding (spectrum and switch: :class:`ExperimentSections`)."""

    def _verdict_section(self) -> Section:
        if not self.steps:
            command = self._kernels_command(minimal=True)
            return Section("verdict", "Verdict", (self._absent("kernels", command),))
        if len(self.steps) == 1:
            return Section("verdict", "Verdict", (self._too_few_kernels("a verdict"),))
        summary = self.distance
        if summary is None or "verdict" not in summary:
            return Section(
                "verdict",
                "Verdict",
                (self._absent("verdict", self._results_command("distance"), register=False),),
            )
        verdict = summary["verdict"]
        numbers = verdict.get("numbers", {})
        regime = str(verdict.get("regime"))
        end = verdict.get("phase1_end")
        blocks: list[Block] = [
            text(
                "Regime: ",
                b(regime),
                f": {_REGIMES.get(regime, (regime, regime))[1]}. ",
                f"Phase I ends at step {end}."
                if end is not None
                else "Phase I has no measured end.",
            ),
            text(str(verdict.get("explanation", ""))),
        ]
        velocity = numbers.get("velocity", {})
        # the range of the end of Phase I: without an end (an undetermined verdict keeps the
        # fit's candidate) it would read as the velocity drop's range
        span = (velocity.get("phase1_range") if end is not None else None) or ["-", "-"]
        # under a decaying learning rate the verdict's velocities are per unit of it (its
        # numbers.schedule); the velocity S / dt itself falls by the schedule's own factor too
        schedule = numbers.get("schedule") or {}
        per_lr = ", per unit of learning rate" if schedule else ""
        rows = [
            ("stored steps", _g(numbers.get("stored_steps"))),
            ("steps", f"{numbers.get('first_step', '-')} to {numbers.get('last_step', '-')}"),
            ("largest distance S", _g(numbers.get("max_distance"))),
            ("S read", f"per unit of learning rate ({schedule.get('schedule')} schedule)")
            if schedule
            else ("S read", "-"),
            ("schedule read from", _schedule_file(summary)),
            ("velocity dt (lags fitted)", _g(velocity.get("dt"))),
            ("velocities fitted", _g(velocity.get("points"))),
            (f"early velocity (S per step{per_lr})", _g(velocity.get("early_level"))),
            (f"Phase II velocity (S per step{per_lr})", _g(velocity.get("phase2_level"))),
            (
                f"velocity drop{' (per unit of learning rate)' if schedule else ''}",
                _g(velocity.get("drop_factor")),
            ),
            ("drop of the velocity S / dt itself", _g(schedule.get("raw_drop_factor"))),
            ("end of Phase I", _g(end)),
            ("its range (profile likelihood)", f"{span[0]} to {span[1]}"),
            ("steps in Phase II", _g(numbers.get("phase2", {}).get("steps"))),
            ("noise floor of S", _g(numbers.get("noise_floor"))),
            ("criteria agree", {True: "yes", False: "no"}.get(numbers.get("agree"), "-")),
        ]
        rows = [(k, v) for k, v in rows if v not in ("-", "- to -")]
        blocks.append(
            Table(("quantity", "value"), tuple(rows), (False, True), caption="Key numbers")
        )
        criteria = numbers.get("criteria", [])
        if criteria:
            blocks.append(
                Table(
                    ("criterion", "value", "rests on", "reads", "at the noise floor"),
                    tuple(
                        (
                            str(c.get("name")),
                            _g(c.get("value"))
                            if not isinstance(c.get("value"), dict)
                            else ", ".join(f"{k} {v}" for k, v in c["value"].items()),
                            str(c.get("rests_on")),
                            str(c.get("reads")),
                            "yes" if c.get("at_noise_floor") else "no",
                        )
                        for c in criteria
                    ),
                    (False, True, False, False, False),
                    caption="Phase II criteria (README: How to read the verdict)",
                )
            )
        refs = numbers.get("references", [])
        refs = [r for r in refs if r.get("status") != "skipped"]
        if refs:
            blocks.append(
                Table(
                    (
                        "reference τ",
                        "level",
                        "middle third mean",
                        "growth",
                        "status",
                        "points (middle, last third)",
                    ),
                    tuple(
                        (
                            str(r.get("ref")),
                            _g(r.get("level")),
                            _g(r.get("middle_third_mean")),
                            _pct(r.get("growth")),
                            str(r.get("status")),
                            f"{r.get('middle_third_points', '-')}, "
                            f"{r.get('last_third_points', '-')}",
                        )
                        for r in refs
                    ),
                    (True, True, True, True, False, True),
                    caption="Phase II references: level = mean S(τ, t) over the last third of "
                    "[τ, T]; growth = (level − middle-third mean) / level",
                )
            )
        rules = summary.get("rules") or numbers.get("rules") or {}
        if rules:
            blocks.append(
                text(
                    "Rules: "
                    + ", ".join(f"{k} = {_rule_value(v)}" for k, v in rules.items())
                    + ". (README: How to read the verdict.)"
                )
            )
        # A summary from before warnings were kept apart has them all among its notes.
        warnings, notes = summary_said(summary)
        for kind, said in (("Warning", warnings), ("Note", notes)):
            for message in said:
                if message.startswith(
                    MIXED_ENGINES
                ):  # the report's Notes say it, for the store now
                    continue
                blocks.append(text(f"{kind} from conetool distance: {message}."))
        excluded = summary.get("excluded") or {}
        if excluded:
            blocks.append(
                Items(tuple(text(f"step {step} left out: {why}") for step, why in excluded.items()))
            )
        self.present.add("verdict")
        self.details["verdict"] = f"{regime}" + (
            f", Phase I ends at step {end}" if end is not None else ""
        )
        return Section("verdict", "Verdict", tuple(blocks))

    # ----------------------------------------------------------------- distance
    def _distance_section(self) -> Section:
        title = "Kernel distance (Fig. 1a, 1b, S matrix)"
        if not self.steps:
            return Section("distance", title, (text("No kernels yet: nothing to compare."),))
        if len(self.steps) == 1:
            return Section("distance", title, (self._too_few_kernels("a kernel distance"),))
        summary = self.distance
        if summary is None:
            return Section(
                "distance",
                title,
                (
                    self._absent(
                        "kernel distance and verdict (Fig. 1a, 1b, S matrix)",
                        self._results_command("distance"),
                    ),
                ),
            )
        blocks: list[Block] = []
        curves = []
        count = summary.get("steps", {}).get("count", "-")
        for c in summary.get("reference_curves", []):
            curves.append(
                (
                    f"S(t, τ={c['ref']})",
                    str(count),
                    _g(c["final"]),
                    _g(c["max"]),
                    "",
                    str(c.get("max_step", "")),
                )
            )
        for a in summary.get("adjacent_curves", []):
            curves.append(
                (
                    f"S(t, t+{a['dt']})" + (" *" if a.get("verdict") else ""),
                    str(a["pairs"]),
                    _g(a["final"]),
                    _g(a["max"]),
                    _g(a["peak_velocity"]),
                    str(a["peak_step"]),
                )
            )
        if curves:
            blocks.append(
                Table(
                    ("curve", "points", "final S", "max S", "peak velocity", "at step"),
                    tuple(curves),
                    (False, True, True, True, True, True),
                    caption="Curves (* the velocity the verdict reads; 'at step' is where the "
                    "maximum or the peak velocity occurs)",
                )
            )
        refs = ", ".join(str(r) for r in summary.get("refs", []))
        dts = ", ".join(str(d) for d in summary.get("dts", []))
        end = summary.get("verdict", {}).get("phase1_end")
        marked = (
            f" The dashed line marks the end of Phase I (step {end})." if end is not None else ""
        )
        figures = [
            (
                "Fig. 1a",
                paths.to_ref_png(self.root),
                "Fig. 1a: kernel distance to each reference step against training step",
                f"Fig. 1a. Kernel distance S(θ(t), θ(τ)) from each reference step τ ({refs}) "
                f"against the training step t.{marked} Numbers: distance/to_ref.csv.",
            ),
            (
                "Fig. 1b",
                paths.adjacent_png(self.root),
                "Fig. 1b: adjacent kernel distance and velocity against training step",
                f"Fig. 1b. Adjacent distance S(θ(t), θ(t+dt)) and velocity S/dt, one curve per "
                f"dt ({dts}).{marked} Numbers: distance/adjacent.csv.",
            ),
            (
                "S matrix",
                paths.matrix_png(self.root),
                "S matrix: kernel distance between every pair of stored steps",
                f"S matrix. Kernel distance between every pair of the {count} stored kernels "
                "(steps on both axes). Numbers: distance/matrix.npz.",
            ),
        ]
        per_layer = self._per_layer_shown(summary)
        if per_layer is not None:
            groups = ", ".join(str(g) for g in per_layer.get("groups", {})) or "?"
            figures.append(
                (
                    "per layer",
                    paths.per_layer_png(self.root),
                    "Kernel velocity of each parameter group against training step",
                    f"Per layer. The velocity of each parameter group's own kernel ({groups}) at "
                    f"dt = {per_layer.get('dt')}: which layers move in Phase I and which keep "
                    "moving after it. Numbers: distance/per_layer.csv.",
                )
            )
        shown = self._figures(figures, self._results_command("distance"), blocks)
        self._named_files(self._distance_files(summary), self._results_command("distance"))
        self.present.add("distance")
        self.details["distance"] = ", ".join(shown) or "tables only"
        return Section("distance", title, tuple(blocks))

    def _per_layer_shown(self, summary: dict[str, Any]) -> dict[str, Any] | None:
        """The summary's ``per_layer`` record when the report shows the per-layer figure (the
        summary records it and ``per_layer.png`` is there), else None."""
        per_layer = summary.get("per_layer")
        if isinstance(per_layer, dict) and paths.per_layer_png(self.root).is_file():
            return per_layer
        return None

    def _distance_files(self, summary: dict[str, Any]) -> list[tuple[Path, str | None, str]]:
        """The files the distance captions name, each with what is wrong with it (or None):
        ``to_ref.csv`` (a row per step the summary counts, a column per reference),
        ``adjacent.csv`` (a row per pair of the summary's curves), ``matrix.npz`` (its
        index) and, when the per-layer figure is shown, ``per_layer.csv`` (a row per group at
        each step its ``per_layer`` record counts, a column per reference)."""
        refs = summary.get("refs")
        to_ref_header = (
            ["step", *(f"ref_{r}" for r in sorted(refs))]
            if isinstance(refs, list) and all(_count(r) is not None for r in refs)
            else None  # not what distance writes there: the file's own header is checked
        )
        curves = summary.get("adjacent_curves")
        pairs = [
            _count(c.get("pairs")) if isinstance(c, dict) else None
            for c in (curves if isinstance(curves, list) else [None])
        ]
        known = [p for p in pairs if p is not None]
        to_ref, adjacent, matrix = (
            paths.to_ref_csv(self.root),
            paths.adjacent_csv(self.root),
            paths.matrix_npz(self.root),
        )
        return [
            (
                to_ref,
                csv_problem(to_ref, to_ref_header, _count(summary.get("steps", {}).get("count"))),
                "Fig. 1a's caption",
            ),
            (
                adjacent,
                csv_problem(
                    adjacent,
                    ["step", "dt", "S", "velocity"],
                    sum(known) if len(known) == len(pairs) else None,
                ),
                "Fig. 1b's caption",
            ),
            (matrix, npz_problem(matrix, ("steps", "S")), "the S matrix's caption"),
            *self._per_layer_file(summary),
        ]

    def _per_layer_file(self, summary: dict[str, Any]) -> list[tuple[Path, str | None, str]]:
        """``per_layer.csv`` with what is wrong with it, when the per-layer caption names it
        (none otherwise): its header (``step, group, S_ref_<τ> ..., S_adjacent, velocity``, the
        references of the ``per_layer`` record in their order) and its rows (one per group at
        each of the record's steps)."""
        record = self._per_layer_shown(summary)
        if record is None:
            return []
        refs, groups = record.get("refs"), record.get("groups")
        header = (
            ["step", "group", *(f"S_ref_{r}" for r in refs), "S_adjacent", "velocity"]
            if isinstance(refs, list) and all(_count(r) is not None for r in refs)
            else None  # not what distance writes there: the file's own header is checked
        )
        steps = _count(record.get("steps"))
        rows = steps * len(groups) if steps is not None and isinstance(groups, list) else None
        path = paths.per_layer_csv(self.root)
        return [(path, csv_problem(path, header, rows), "the per-layer figure's caption")]

    # ----------------------------------------------------------------- embed
    def _embed_section(self) -> Section:
        title = "Cone embedding (Fig. 1c)"
        if not self.steps:
            return Section("embed", title, (text("No kernels yet: nothing to embed."),))
        if len(self.steps) == 1:
            return Section("embed", title, (self._too_few_kernels("an embedding"),))
        summary = self.embed
        if summary is None and len(self.steps) < 3:  # embed's two dimensions need three kernels
            more = self._too_few_kernels(
                "an embedding in two dimensions", 3, ", then run conetool embed."
            )
            return Section("embed", title, (more,))
        if summary is None:
            return Section(
                "embed",
                title,
                (self._absent("cone embedding (Fig. 1c)", self._results_command("embed")),),
            )
        method = str(summary.get("method", "?"))
        ratio = summary.get("explained_variance_ratio")
        quality = " + ".join(f"{r:.1%}" for r in ratio) if ratio else "-"
        blocks: list[Block] = [
            Table(
                ("method", "dims", "kernels", "stress", "explained variance", "seed", "S matrix"),
                (
                    (
                        method,
                        _g(summary.get("dims")),
                        _g(summary.get("steps", {}).get("count")),
                        _g(summary.get("stress")),
                        quality,
                        _g(summary.get("seed")),
                        str(summary.get("matrix", "-")),
                    ),
                ),
                (False, True, True, True, True, True, False),
            ),
        ]
        how = (
            "metric MDS of the chordal distance √(2·S) between the unit-norm kernels (quality: "
            "Kruskal stress-1; 0 is perfect, 0.05 good, 0.2 poor)"
            if method == "mds"
            else "PCA of the unit-norm kernels (quality: the share of variance each axis explains)"
        )
        end = summary.get("phase1_end")
        ring = f" The red ring marks the end of Phase I (step {end})." if end is not None else ""
        space = "three dimensions" if summary.get("dims") == 3 else "the plane"
        shown = self._figures(
            [
                (
                    "Fig. 1c",
                    paths.embedding_png(self.root),
                    f"Fig. 1c: the kernel trajectory embedded in {space}",
                    f"Fig. 1c. Every stored kernel H(t) as a point, placed by {how}; H(0) black, "
                    f"later steps darker.{ring} Coordinates: embed/coords.csv.",
                )
            ],
            self._results_command("embed"),
            blocks,
        )
        coords = paths.coords_csv(self.root)
        dims = summary.get("dims")
        problem = csv_problem(
            coords,
            ["step", *"xyz"[: dims if isinstance(dims, int) else 2]],
            _count(summary.get("steps", {}).get("count")),
        )
        self._named_files([(coords, problem, "Fig. 1c's caption")], self._results_command("embed"))
        self.present.add("embed")
        stress = summary.get("stress")
        self.details["embed"] = (
            ", ".join(shown)
            + f" ({method}"
            + (f", stress {stress:.3f})" if method == "mds" and stress is not None else ")")
        )
        return Section("embed", title, tuple(blocks))


def _count(value: object) -> int | None:
    """A count a summary records (``steps.count``, a curve's ``pairs``); None when it is not a
    count (a summary written before it was recorded, or edited)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _schedule_file(summary: Mapping[str, Any]) -> str:
    """The spec file the verdict read ``[train]`` from, when it was not the store's spec (its
    ``schedule_spec``: ``distance --spec`` differing in ``[train]`` alone), with the keys it
    differs in; ``"-"`` otherwise."""
    record = summary.get("schedule_spec")
    if not isinstance(record, Mapping) or not record.get("differs"):
        return "-"
    keys = ", ".join(str(k) for k in record["differs"])
    return f"{record.get('source')} (differs from the store's spec in {keys})"
