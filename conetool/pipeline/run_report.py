"""``conetool report``: one self-contained HTML page and a Markdown twin of what a store holds.

Outputs (names from :mod:`conetool.paths`)::

    report/report.html   title and summary, the verdict with its numbers, Fig. 1a / 1b / S matrix,
                         Fig. 1c, Fig. 2 with its table, the checkpoint table, the run (spec,
                         probe set, versions, identity) and the commands that reproduce it all;
                         figures embedded as data: URIs (no network needed to view it)
    report/report.md     the same, figures linked by relative path (../distance/to_ref.png)
    report/spec.toml     the resolved spec from the manifest (the reproduce commands use it)

Only the store's manifest is required; every other part (``conetool distance``, ``embed``,
``switch``) is optional: a missing part is listed with the command that makes it. The figures are
the store's own PNG files, embedded byte for byte, never re-rendered.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import paths
from .._version import __version__
from ..errors import ConetoolError
from ..io import atomic_write_text, format_bytes
from ..progress import NullProgress, Progress
from ..report_html import (
    Block,
    Code,
    Document,
    Figure,
    Items,
    Section,
    Table,
    Text,
    b,
    code,
    text,
    to_html,
    to_markdown,
)
from ..spec import spec_from_dict, spec_to_toml
from ..store import Store
from ..verdict import REGIMES, VerdictRules
from .remembered import import_paths, selection, spec_imports

__all__ = ["ReportResult", "report"]

# A checkpoint table longer than this is folded away (HTML <details>).
COLLAPSE_ROWS = 60

# regime -> (a few words for the summary, one sentence for the verdict section)
_REGIMES = REGIMES


@dataclass(frozen=True)
class ReportResult:
    """What :func:`report` wrote.

    Attributes:
        store: the store directory.
        html: the self-contained HTML page.
        markdown: the Markdown version.
        spec: the resolved spec written beside them (``None`` when the manifest's spec could not
            be read back).
        sections: the parts the report holds, in page order: ``summary``, ``verdict``,
            ``distance``, ``embed``, ``switch``, ``checkpoints``, ``run``, ``reproduce``.
        details: section -> one line about what it holds (the CLI's table).
        missing: (part, the command that makes it), for each part the store lacks.
        figures: the PNG files embedded in the HTML, in page order.
        notes: things the user should know (outputs older than the kernels, unreadable files).
    """

    store: Path
    html: Path
    markdown: Path
    spec: Path | None
    sections: list[str]
    details: dict[str, str]
    missing: list[tuple[str, str]]
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def report(
    store: str | Path = paths.DEFAULT_STORE,
    *,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """Write ``report.html``, ``report.md`` and ``spec.toml`` about a store (into ``STORE/report/``).

    Args:
        store: the store directory; it must hold a manifest (``conetool kernels`` made it).
            Distance, embedding and switch results are included when present.
        out: the directory to write the report to (default ``STORE/report``).
        progress: progress display; default silent.

    Returns:
        A :class:`ReportResult`: the files written, the sections present and the parts missing
        with the command that makes each.

    Example::

        result = conetool.report("conetool-out")
        print(result.html)                       # conetool-out/report/report.html
        for part, command in result.missing:     # e.g. ("switch results (Fig. 2)",
            print(part, "->", command)           #       "conetool switch --at 0,30,100,300 ...")
    """
    progress = progress or NullProgress()
    opened = Store.open(store)
    out_dir = paths.report_dir(opened.root) if out is None else Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConetoolError(f"--out {out_dir} is a file, not a directory. Choose a directory.")
    bar = progress.task("report", total=3)
    gathered = _Gathered.read(opened, str(store), out_dir)
    spec_path = None
    if gathered.spec_toml is not None:
        spec_path = out_dir / paths.report_spec(opened.root).name
        atomic_write_text(spec_path, gathered.spec_toml)
    document = gathered.document()
    bar.advance(1)
    html_path = out_dir / paths.report_html(opened.root).name
    atomic_write_text(html_path, to_html(document))
    bar.advance(1)
    md_path = out_dir / paths.report_md(opened.root).name
    atomic_write_text(md_path, to_markdown(document, out_dir))
    bar.advance(1)
    bar.close()
    figures = [
        block.path
        for section in document.sections
        for block in section.blocks
        if isinstance(block, Figure)
    ]
    return ReportResult(
        store=opened.root,
        html=html_path,
        markdown=md_path,
        spec=spec_path,
        sections=[s.anchor for s in document.sections if s.anchor in gathered.present],
        details=gathered.details,
        missing=gathered.missing,
        figures=figures,
        notes=gathered.notes,
    )


# --------------------------------------------------------------------------- formatting


def _g(value: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits; ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):+.1%}"


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _steps_text(steps: list[int]) -> str:
    return ",".join(str(s) for s in steps)


# --------------------------------------------------------------------------- gathering


@dataclass
class _Gathered:
    """Everything the report says, read from the store once."""

    store: Store
    store_arg: str
    out_dir: Path
    distance: dict[str, Any] | None
    embed: dict[str, Any] | None
    switch: dict[str, Any] | None
    switch_points: dict[int, dict[str, Any]]
    spec_toml: str | None
    notes: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    details: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, store: Store, store_arg: str, out_dir: Path) -> _Gathered:
        notes: list[str] = []
        root = store.root
        distance = _read_json(paths.distance_summary(root), "conetool distance", notes)
        embed = _read_json(paths.embed_summary(root), "conetool embed", notes)
        switch = _read_json(paths.switch_results_json(root), "conetool switch", notes)
        points: dict[int, dict[str, Any]] = {}
        for point in (switch or {}).get("points", []):
            saved = _read_json(paths.switch_point(root, int(point["at"])), "", [])
            if saved is not None:
                points[int(point["at"])] = saved
        try:
            spec_toml: str | None = spec_to_toml(
                spec_from_dict(store.manifest["spec"], source=f"{paths.manifest(root)} (spec)")
            )
        except (ConetoolError, KeyError, TypeError) as exc:
            spec_toml = None
            notes.append(f"the manifest's spec cannot be read back as a spec ({exc})")
        gathered = cls(store, store_arg, out_dir, distance, embed, switch, points, spec_toml, notes)
        gathered._check_current()
        return gathered

    # ----------------------------------------------------------------- helpers
    @property
    def manifest(self) -> dict[str, Any]:
        return self.store.manifest

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def steps(self) -> list[int]:
        return self.store.steps()

    @property
    def ckpts(self) -> str:
        return str(self.manifest.get("checkpoints", "CKPTS"))

    def _store_flag(self) -> str:
        return f"--store {_q(self.store_arg)}"

    def _distance_command_default(self) -> str:
        return f"conetool distance {self._store_flag()}"

    def _embed_command_default(self) -> str:
        return f"conetool embed {self._store_flag()}"

    def _switch_command_default(self) -> str:
        return f"conetool switch --at {_steps_text(self._suggested_switch_points())} {self._store_flag()}"

    def _suggested_switch_points(self) -> list[int]:
        """A few stored steps to switch at: the start, early Phase I, its end, mid-run."""
        steps = self.steps[:-1] or [0]
        last = self.steps[-1] if self.steps else 0
        wanted = [0.0, 0.05, 0.2, 0.5]
        chosen = {min(steps, key=lambda s: abs(s - f * last)) for f in wanted}
        end = (self.distance or {}).get("verdict", {}).get("phase1_end")
        if isinstance(end, int) and end in steps:
            chosen.add(end)
        return sorted(chosen)

    def _check_current(self) -> None:
        """Note distance / embed outputs computed from other kernels than the store holds now:
        another store identity, or another set of steps. (A kernel recomputed in place, same
        steps, is not detected here: the summaries' cache key also covers file times, which a
        plain copy of the store changes, so it would raise false alarms.)
        """
        if not self.steps:
            return
        identity = asdict(self.store.identity)
        for summary, command in (
            (self.distance, "conetool distance"),
            (self.embed, "conetool embed"),
        ):
            if summary is None:
                continue
            rerun = f"rerun {command} {self._store_flag()} to bring them up to date"
            counted = summary.get("steps", {})
            excluded = {int(k) for k in summary.get("excluded", {})}
            current = [s for s in self.steps if s not in excluded]
            seen = (counted.get("count"), counted.get("first"), counted.get("last"))
            if summary.get("identity") not in (None, identity):
                self.notes.append(
                    f"the {command} results were computed from another spec, probe set or "
                    f"kernel kind than the store's kernels now: {rerun}"
                )
            elif current and seen != (len(current), current[0], current[-1]):
                self.notes.append(
                    f"the {command} results cover {seen[0]} steps ({seen[1]} to {seen[2]}), the "
                    f"store now holds {len(current)} ({current[0]} to {current[-1]}): {rerun}"
                )
        spec_hash = self.manifest.get("spec_hash")
        other = sorted(
            at
            for at, p in self.switch_points.items()
            if p.get("key", {}).get("spec_hash") not in (None, spec_hash)
        )
        if other:
            self.notes.append(
                f"switch points {_steps_text(other)} were trained with another spec than the "
                f"store's (hash {spec_hash}); their command needs that spec (--spec)."
            )

    # ----------------------------------------------------------------- document
    def document(self) -> Document:
        manifest = self.manifest
        n = manifest.get("probe", {}).get("size", "?")
        title = f"conetool report: {self._run_name()}"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        subtitle = (
            f"Store {self.store_arg} · {len(self.steps)} kernels ({manifest.get('kind')}, n = {n})"
            f" · conetool {__version__} · {stamp}"
        )
        body = [
            self._verdict_section(),
            self._distance_section(),
            self._embed_section(),
            self._switch_section(),
            self._checkpoints_section(),
            self._run_section(),
            self._reproduce_section(),
        ]
        sections = [self._summary_section()]
        if self.missing or self.notes:
            sections.append(self._missing_section())
        sections += body
        return Document(title, subtitle, tuple(sections))

    def _run_name(self) -> str:
        spec = self.manifest.get("spec", {})
        arch = spec.get("model", {}).get("arch", "?")
        dataset = spec.get("data", {}).get("dataset", "?")
        return f"{arch} on {dataset}"

    def _summary_section(self) -> Section:
        m = self.manifest
        spec = m.get("spec", {})
        probe = m.get("probe", {})
        steps = self.steps
        verdict = (self.distance or {}).get("verdict")
        parts: list[Any] = []
        if verdict:
            regime = str(verdict.get("regime"))
            end = verdict.get("phase1_end")
            parts += [
                "Verdict: ",
                b(regime),
                f" ({_REGIMES.get(regime, (regime, regime))[0]}). ",
            ]
            parts.append(
                "Phase I ends at step " + str(end) + ". "
                if end is not None
                else "Phase I has no measured end. "
            )
        elif len(steps) == 1:
            parts += [
                "No verdict: the kernel distance needs at least two kernels (",
                code(self._kernels_command(minimal=True)),
                " computes the others). ",
            ]
        else:
            parts += ["No verdict yet (", code(self._distance_command_default()), " makes it). "]
        span = f"steps {steps[0]} to {steps[-1]}" if steps else "no steps yet"
        parts.append(
            f"{str(m.get('kind', '?')).capitalize()} kernels ({m.get('dtype', '?')}) of "
            f"{probe.get('size', '?')} probe examples ({probe.get('split', '?')} split, seed "
            f"{probe.get('seed', '?')}) at {len(steps)} checkpoints, {span}, of "
            f"{self._run_name()} trained for {spec.get('train', {}).get('steps', '?')} steps."
        )
        switch = self.switch
        if switch and switch.get("points"):
            first = switch["points"][0]
            ref = switch.get("reference")
            line = (
                f" The model linearized at step {first['at']} and trained to T = "
                f"{switch.get('until')} reaches test accuracy {_g(first['test_acc'])}"
            )
            line += f", standard training {_g(ref['test_acc'])}." if ref else "."
            parts.append(line)
        self.present.add("summary")
        self.details["summary"] = f"{self._run_name()}, {len(steps)} checkpoints"
        return Section("summary", "Summary", (text(*parts),))

    def _missing_section(self) -> Section:
        blocks: list[Block] = []
        if self.missing:
            blocks.append(text("These parts are not in the store yet; each command makes one:"))
            blocks.append(
                Items(
                    tuple(text(f"No {part}: run ", code(command)) for part, command in self.missing)
                )
            )
        if self.notes:
            blocks.append(Items(tuple(text(note) for note in self.notes)))
        return Section("missing", "Missing parts" if self.missing else "Notes", tuple(blocks))

    def _one_kernel(self, what: str) -> Text:
        """A one-kernel store: distance and embed would fail; more kernels come first."""
        command = self._kernels_command(minimal=True)
        if ("second kernel", command) not in self.missing:
            self.missing.append(("second kernel", command))
        return text(
            f"The store holds one kernel (step {self.steps[0]}); {what} needs at least two. "
            "Compute more with ",
            code(command),
            " (it adds the checkpoints' missing steps), then run conetool distance and embed.",
            note=True,
        )

    def _absent(self, part: str, command: str, *, register: bool = True) -> Text:
        """A placeholder saying which command makes ``part``; listed under Missing parts."""
        if register and (part, command) not in self.missing:
            self.missing.append((part, command))
        return text(f"No {part} in this store. Run ", code(command), " to make it.", note=True)

    # ----------------------------------------------------------------- verdict
    def _verdict_section(self) -> Section:
        if not self.steps:
            command = self._kernels_command(minimal=True)
            return Section("verdict", "Verdict", (self._absent("kernels", command),))
        if len(self.steps) == 1:
            return Section("verdict", "Verdict", (self._one_kernel("a verdict"),))
        summary = self.distance
        if summary is None or "verdict" not in summary:
            return Section(
                "verdict",
                "Verdict",
                (self._absent("verdict", self._distance_command_default(), register=False),),
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
        span = velocity.get("phase1_range") or ["-", "-"]
        rows = [
            ("stored steps", _g(numbers.get("stored_steps"))),
            ("steps", f"{numbers.get('first_step', '-')} to {numbers.get('last_step', '-')}"),
            ("largest distance S", _g(numbers.get("max_distance"))),
            ("velocity dt (lags fitted)", _g(velocity.get("dt"))),
            ("velocities fitted", _g(velocity.get("points"))),
            ("early velocity (S per step)", _g(velocity.get("early_level"))),
            ("Phase II velocity (S per step)", _g(velocity.get("phase2_level"))),
            ("velocity drop", _g(velocity.get("drop_factor"))),
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
                            _g(c.get("value")) if not isinstance(c.get("value"), dict)
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
                            f"{r.get('middle_third_points', '-')}, {r.get('last_third_points', '-')}",
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
        for note in summary.get("notes", []):
            blocks.append(text(f"Note from conetool distance: {note}."))
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
            return Section("distance", title, (self._one_kernel("a kernel distance"),))
        summary = self.distance
        if summary is None:
            return Section(
                "distance",
                title,
                (
                    self._absent(
                        "kernel distance and verdict (Fig. 1a, 1b, S matrix)",
                        self._distance_command_default(),
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
        shown = self._figures(figures, self._distance_command_default(), blocks)
        self.present.add("distance")
        self.details["distance"] = ", ".join(shown) or "tables only"
        return Section("distance", title, tuple(blocks))

    def _figures(
        self, figures: list[tuple[str, Path, str, str]], command: str, blocks: list[Block]
    ) -> list[str]:
        """Append each figure (label, PNG, alt text, caption) that exists; a missing PNG is a
        missing part with the command that makes it. Returns the labels shown."""
        shown = []
        for label, path, alt, caption in figures:
            if path.is_file():
                blocks.append(Figure(path, alt, caption))
                shown.append(label)
            else:
                rel = path.relative_to(self.root).as_posix()
                blocks.append(self._absent(f"{label} ({rel})", command))
        return shown

    # ----------------------------------------------------------------- embed
    def _embed_section(self) -> Section:
        title = "Cone embedding (Fig. 1c)"
        if not self.steps:
            return Section("embed", title, (text("No kernels yet: nothing to embed."),))
        if len(self.steps) == 1:
            return Section("embed", title, (self._one_kernel("an embedding"),))
        summary = self.embed
        if summary is None:
            return Section(
                "embed",
                title,
                (self._absent("cone embedding (Fig. 1c)", self._embed_command_default()),),
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
        shown = self._figures(
            [
                (
                    "Fig. 1c",
                    paths.embedding_png(self.root),
                    "Fig. 1c: the kernel trajectory embedded in the plane",
                    f"Fig. 1c. Every stored kernel H(t) as a point, placed by {how}; H(0) black, "
                    f"later steps darker.{ring} Coordinates: embed/coords.csv.",
                )
            ],
            self._embed_command_default(),
            blocks,
        )
        self.present.add("embed")
        stress = summary.get("stress")
        self.details["embed"] = (
            ", ".join(shown)
            + f" ({method}"
            + (f", stress {stress:.3f})" if method == "mds" and stress is not None else ")")
        )
        return Section("embed", title, tuple(blocks))

    # ----------------------------------------------------------------- switch
    def _switch_section(self) -> Section:
        title = "Switch experiment (Fig. 2)"
        results = self.switch
        if results is None or not results.get("points"):
            return Section(
                "switch",
                title,
                (self._absent("switch results (Fig. 2)", self._switch_command_default()),),
            )
        until = results.get("until")
        rows = [
            (
                str(p["at"]),
                _g(p.get("until")),
                _g(p.get("test_acc")),
                _g(p.get("test_loss")),
                _g(p.get("train_acc")),
                _g(p.get("train_loss")),
                str(p.get("momentum", "-")),
                _g(p.get("seconds"), 3),
            )
            for p in results["points"]
        ]
        ref = results.get("reference")
        if ref:
            rows.append(
                (
                    f"standard {ref.get('step')}",
                    "",
                    _g(ref.get("test_acc")),
                    _g(ref.get("test_loss")),
                    "",
                    "",
                    "",
                    "",
                )
            )
        blocks: list[Block] = [
            text(
                f"For each switch step t, the checkpoint of step t was linearized, "
                "f_lin(x; θ) = f(x; θ_t) + J(x; θ_t)(θ − θ_t), and trained with the spec's recipe "
                f"from t to T = {until}; its test accuracy and loss are compared with the "
                "standard model at T."
            ),
            Table(
                (
                    "t",
                    "until",
                    "test acc",
                    "test loss",
                    "train acc",
                    "train loss",
                    "momentum",
                    "seconds",
                ),
                tuple(rows),
                (True, True, True, True, True, True, False, True),
            ),
        ]
        if ref:
            blocks.append(
                text(
                    f"Standard model at T = {ref.get('step')} ({ref.get('source')}): test accuracy "
                    f"{_g(ref.get('test_acc'))}, test loss {_g(ref.get('test_loss'))}."
                )
            )
        else:
            blocks.append(
                text(
                    "No standard model at T (no checkpoint of step T; --reference train trains one)."
                )
            )
        shown = self._figures(
            [
                (
                    "Fig. 2",
                    paths.switch_png(self.root),
                    "Fig. 2: test accuracy and loss of the linearized model against the switch step",
                    f"Fig. 2. Test accuracy and loss at T = {until} of the model trained normally "
                    "to step t and linearized from t on, against t; the horizontal line is the "
                    "standard model at T. Numbers: switch/results.csv.",
                )
            ],
            self._switch_command_default(),
            blocks,
        )
        self.present.add("switch")
        self.details["switch"] = (
            ", ".join(shown) + f", {len(results['points'])} switch points, T = {until}"
        )
        return Section("switch", title, tuple(blocks))

    # ----------------------------------------------------------------- checkpoints
    def _checkpoints_section(self) -> Section:
        records = self.store.records()
        ckpts = self.ckpts
        kind = self.manifest.get("kind")
        n = self.manifest.get("probe", {}).get("size", "?")
        c = self.manifest.get("spec", {}).get("model", {}).get("num_classes", "c")
        shape = f"({n}, {c}, {n}, {c})" if kind == "full" else f"({n}, {n})"
        total = sum(r.seconds for r in records.values())
        blocks: list[Block] = [
            text(
                "Checkpoint directory ",
                code(ckpts),
                f": {len(records)} kernels of shape {shape} ({kind}, {self.manifest.get('dtype')}), "
                f"{total:.1f} s of kernel computation in all. Layout: {self.manifest.get('layout', '-')}.",
            )
        ]
        if records:
            rows = tuple(
                (
                    str(step),
                    _source_name(r.source, ckpts),
                    format_bytes(r.size),
                    _g(r.norm, 6),
                    f"{r.seconds:.2f}",
                )
                for step, r in records.items()
            )
            blocks.append(
                Table(
                    ("step", "checkpoint", "size", "‖H‖_F", "seconds"),
                    rows,
                    (True, False, True, True, True),
                    collapse=f"Show all {len(rows)} checkpoints"
                    if len(rows) > COLLAPSE_ROWS
                    else None,
                )
            )
        self.present.add("checkpoints")
        self.details["checkpoints"] = f"{len(records)} checkpoints, kernels {shape}"
        return Section("checkpoints", "Checkpoints and kernels", tuple(blocks))

    # ----------------------------------------------------------------- run
    def _run_section(self) -> Section:
        m = self.manifest
        probe = m.get("probe", {})
        versions = m.get("versions", {})
        here = {
            "conetool": __version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }
        blocks: list[Block] = [
            text("The resolved spec (every default explicit) the kernels were computed with:"),
        ]
        if self.spec_toml is not None:
            blocks.append(Code(self.spec_toml, "toml"))
        else:
            blocks.append(Code(json.dumps(m.get("spec", {}), indent=2), "json"))
        blocks.append(
            Table(
                ("probe set", "value"),
                (
                    ("examples", _g(probe.get("size"))),
                    ("split", str(probe.get("split", "-"))),
                    ("seed", _g(probe.get("seed"))),
                    ("hash", str(probe.get("hash", "-"))),
                    ("file", str(probe.get("file", paths.PROBE_NAME))),
                ),
                (False, False),
            )
        )
        blocks.append(
            Table(
                ("store", "value"),
                (
                    ("directory", self.store_arg),
                    ("spec hash", str(m.get("spec_hash", "-"))),
                    ("spec read from", str(m.get("spec_source", "-"))),
                    ("probe hash", str(m.get("probe_hash", "-"))),
                    ("kernel kind", str(m.get("kind", "-"))),
                    ("dtype", str(m.get("dtype", "-"))),
                    ("format", f"{m.get('format', '-')} {m.get('format_version', '')}".strip()),
                ),
                (False, False),
            )
        )
        blocks.append(
            Table(
                ("versions", "kernels computed with", "report"),
                tuple(
                    (name, str(versions.get(name, "-")), here.get(name, ""))
                    for name in sorted({*versions, *here})
                ),
                (False, False, False),
            )
        )
        self.present.add("run")
        self.details["run"] = f"spec {m.get('spec_hash')}, torch {versions.get('torch', '-')}"
        return Section("run", "Run", tuple(blocks))

    # ----------------------------------------------------------------- reproduce
    def _env(self) -> str:
        """``PYTHONPATH=...`` for a command that imports the spec's "pkg.mod:factory" modules,
        from where kernels imported them (empty when none or installed)."""
        folders = import_paths(self.manifest)
        return f"PYTHONPATH={_q(os.pathsep.join(folders))} " if folders else ""

    def _import_comments(self) -> list[str]:
        """Which modules the spec imports and what makes them importable."""
        try:
            spec = spec_from_dict(self.manifest["spec"])
        except (ConetoolError, KeyError, TypeError):
            return []
        recorded = {
            r.get("module"): r for r in self.manifest.get("imports") or [] if isinstance(r, dict)
        }
        comments = []
        for key, module in spec_imports(spec):
            record = recorded.get(module)
            if record is None:  # a store made before the record, or a module not found then
                comments.append(
                    f"# {key} imports '{module}': make it importable (install it, or put its "
                    "folder on PYTHONPATH) for train, kernels, distance and switch"
                )
            elif record.get("installed"):
                comments.append(f"# {key} imports '{module}', installed in {record.get('path')}")
            else:
                comments.append(
                    f"# {key} imports '{module}' from {record.get('path')}: the commands that "
                    "build the model or the data set get PYTHONPATH"
                )
        return comments

    def _selection_flags(self) -> list[str]:
        """The checkpoint selection kernels recorded: --step-regex, --steps, --every."""
        chosen = selection(self.manifest)
        flags = []
        if chosen.get("step_regex"):
            flags.append(f"--step-regex {_q(chosen['step_regex'])}")
        if chosen.get("steps"):
            flags.append(f"--steps {_q(chosen['steps'])}")
        if chosen.get("every"):
            flags.append(f"--every {chosen['every']}")
        return flags

    def _kernels_command(self, *, minimal: bool = False) -> str:
        m = self.manifest
        parts = [f"{self._env()}conetool kernels {_q(self.ckpts)}", self._store_flag()]
        parts += self._selection_flags()
        if minimal:
            return " ".join(parts)
        if not paths.spec(Path(self.ckpts)).is_file() and self.spec_toml is not None:
            parts.append(f"--spec {_q(self.out_dir / paths.report_spec(self.root).name)}")
        parts += [
            f"--kind {m.get('kind')}",
            f"--dtype {m.get('dtype')}",
            f"--probe-size {m.get('probe', {}).get('size')}",
        ]
        return " ".join(parts)

    def _distance_command(self) -> tuple[str, list[str]]:
        s = self.distance or {}
        parts = [f"{self._env()}conetool distance", self._store_flag()]
        comments: list[str] = []
        refs = [int(r) for r in s.get("refs", [])]
        first = s.get("steps", {}).get("first")
        by_user = "user" in str(s.get("verdict", {}).get("numbers", {}).get("references_from"))
        if refs and (refs != [first] or by_user):
            parts += [f"--ref {r}" for r in refs]
        parts += [f"--dt {d}" for d in s.get("dts", [])]
        rules = s.get("rules", {})
        defaults = asdict(VerdictRules())
        flags = {
            "min_drop": "--min-drop",
            "freeze_factor": "--freeze-factor",
            "bounded_exponent": "--bounded-exponent",
            "drift_exponent": "--drift-exponent",
            "plateau_tolerance": "--plateau-tolerance",
            "lazy_level": "--lazy-level",
            "velocity_dt": "--velocity-dt",
        }
        for key, flag in flags.items():
            if key in rules and rules[key] != defaults[key]:
                parts.append(f"{flag} {rules[key]}")
        python_only = [
            k
            for k in ("reference_fractions", "min_steps", "min_phase2_steps", "min_window_points")
            if k in rules and _rule_value(rules[k]) != _rule_value(defaults[k])
        ]
        if python_only:
            comments.append(
                "# the verdict used "
                + ", ".join(f"{k} = {_rule_value(rules[k])}" for k in python_only)
                + ": set them from Python, conetool.distance(..., rules=VerdictRules(...))"
            )
        options = s.get("options", {})
        parts += [
            flag
            for key, flag in (("logx", "--logx"), ("logy", "--logy"), ("skip_bad", "--skip-bad"))
            if options.get(key)
        ]
        return " ".join(parts), comments

    def _embed_command(self) -> str:
        s = self.embed or {}
        parts = [
            "conetool embed",
            self._store_flag(),
            f"--method {s.get('method', 'mds')}",
            f"--dims {s.get('dims', 2)}",
            f"--seed {s.get('seed', 0)}",
        ]
        if s.get("excluded"):
            parts.append("--skip-bad")
        return " ".join(parts)

    def _switch_command(self) -> str:
        s = self.switch or {}
        at = [int(p["at"]) for p in s.get("points", [])]
        parts = [
            f"{self._env()}conetool switch --at {_steps_text(at)}",
            f"--until {s.get('until')}",
            self._store_flag(),
        ]
        source = str((s.get("reference") or {}).get("source", "checkpoint"))
        if source != "checkpoint":
            parts.append("--reference train")
        ckpt_dir = self._switch_checkpoint_dir()
        if ckpt_dir is not None:
            parts.append(f"--ckpts {_q(ckpt_dir)}")
        return " ".join(parts)

    def _switch_checkpoint_dir(self) -> str | None:
        """The checkpoint directory switch read, when it is not the store's (``--ckpts``)."""
        for point in self.switch_points.values():
            files = point.get("checkpoint") or []
            if not files:
                continue
            where = Path(files[0]).resolve().parent
            if where.name.startswith("checkpoint-"):  # Hugging Face layout
                where = where.parent
            if where != Path(self.ckpts).resolve():
                return str(where)
            return None
        return None

    def _reproduce_section(self) -> Section:
        lines = []
        if not Path(self.store_arg).is_absolute():
            lines.append("# relative paths are from the directory the store was made in")
        lines += self._import_comments()
        if not self.steps:
            lines.append(self._kernels_command(minimal=True))
        else:
            spec_file = self.out_dir / paths.report_spec(self.root).name
            if paths.spec(Path(self.ckpts)).is_file() and self.spec_toml is not None:
                lines.append(
                    "# conetool train refuses an --out that holds a run: to redo training, give "
                    "it a fresh --out (and kernels the same)"
                )
                lines.append(
                    f"{self._env()}conetool train {_q(spec_file)} --out {_q(self.ckpts)}"
                )
            lines.append(self._kernels_command())
            if self.distance is not None:
                command, comments = self._distance_command()
                lines += comments
                lines.append(command)
            if self.embed is not None:
                lines.append(self._embed_command())
        if self.switch is not None and self.switch.get("points"):
            lines.append(self._switch_command())
        lines.append(
            f"conetool report {self._store_flag()}"
            + ("" if self.out_dir == paths.report_dir(self.root) else f" --out {_q(self.out_dir)}")
        )
        blocks: list[Block] = [
            text(
                "These commands rebuild this store from nothing (options recorded in the store's "
                "JSON files; ",
                code(paths.report_spec(self.root).relative_to(self.root).as_posix()),
                " is the resolved spec shown above, written beside this report):",
            ),
            Code("\n".join(lines), "sh"),
        ]
        self.present.add("reproduce")
        self.details["reproduce"] = f"{len([x for x in lines if not x.startswith('#')])} commands"
        return Section("reproduce", "Reproduce", tuple(blocks))


def _rule_value(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(_g(v) for v in value) + ")"
    return _g(value)


def _source_name(source: list[str], ckpts: str) -> str:
    """The checkpoint file(s) relative to the checkpoint directory when inside it."""
    if not source:
        return "-"
    base = Path(ckpts)
    names = []
    for item in source:
        path = Path(item)
        try:
            names.append(path.relative_to(base).as_posix())
        except ValueError:
            names.append(path.name)
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} shards)"


def _read_json(path: Path, command: str, notes: list[str]) -> dict[str, Any] | None:
    """A JSON file of the store, or None when absent; a damaged one is a note naming its fix."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if command:
            notes.append(f"{path} cannot be read ({exc}); rerun {command} to rewrite it")
        return None
    return value if isinstance(value, dict) else None
