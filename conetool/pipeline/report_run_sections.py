"""The report's sections about the run: the summary, the missing parts, the checkpoint table and
the run (spec, probe set, versions).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from .. import paths
from .._version import __version__
from ..report_html import (
    Block,
    Code,
    Figure,
    Items,
    Section,
    Table,
    Text,
    b,
    code,
    text,
)
from ..store_manifest import StepRecord, made_by
from ..units import format_bytes
from .report_commands import ReportCommands
from .report_inputs import _REGIMES, COLLAPSE_ROWS, _g, _source_name

__all__ = ["RunSections"]


#: What the report says to run after a one-kernel store has more kernels.
_THEN_DISTANCE = " (it adds the checkpoints' missing steps), then run conetool distance and embed."


def _engines_text(records: dict[int, StepRecord]) -> str:
    """What computed the kernels (engine and device type), when their records say."""
    made = {made_by(r) for r in records.values()}
    if len(made) > 1:
        return " Made by more than one engine or device type (see Notes)."
    if made and all(r.engine is not None for r in records.values()):
        return f" Engine: {made.pop()}."
    return ""  # none stored, or made before conetool recorded it


class RunSections(ReportCommands):
    """Summary, missing parts, checkpoints and run."""

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
                code(self._kernels_command(minimal=True, all_steps=True)),
                " computes the others). ",
            ]
        else:
            parts += ["No verdict yet (", code(self._results_command("distance")), " makes it). "]
        span = f"steps {steps[0]} to {steps[-1]}" if steps else "no steps yet"
        at = f"{len(steps)} checkpoints"
        if self.writer is not None:
            at = (
                f"the {self.stored_so_far()} checkpoints stored so far (conetool kernels is still "
                "running)"
            )
        parts.append(
            f"{str(m.get('kind', '?')).capitalize()} kernels ({m.get('dtype', '?')}) of "
            f"{probe.get('size', '?')} probe examples ({probe.get('split', '?')} split, seed "
            f"{probe.get('seed', '?')}) at {at}, {span}, of "
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
        self.details["summary"] = f"{self._run_name()}, {self.stored_so_far()} checkpoints" + (
            "" if self.writer is None else " so far (kernels running)"
        )
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
        if self.warnings or self.notes:  # each marked, as the result sections mark theirs
            said = [("Warning", m) for m in self.warnings] + [("Note", m) for m in self.notes]
            blocks.append(Items(tuple(text(f"{kind}: {message}") for kind, message in said)))
        return Section("missing", "Missing parts" if self.missing else "Notes", tuple(blocks))

    def _too_few_kernels(self, what: str, needed: int = 2, then: str = _THEN_DISTANCE) -> Text:
        """A store with fewer kernels than ``what`` needs (``needed``: two or three): the
        command that computes the run's other kernels comes first (listed under Missing parts),
        ``then`` says what to run after it."""
        command = self._kernels_command(minimal=True, all_steps=True)
        part = f"{('second', 'third')[needed - 2]} kernel"
        if (part, command) not in self.missing:
            self.missing.append((part, command))
        held = len(self.steps)
        holds = f"one kernel (step {self.steps[0]})" if held == 1 else f"{held} kernels"
        return text(
            f"The store holds {holds}; {what} needs at least {('two', 'three')[needed - 2]}. "
            "Compute more with ",
            code(command),
            then,
            note=True,
        )

    def _absent(self, part: str, command: str, *, register: bool = True) -> Text:
        """A placeholder saying which command makes ``part``; listed under Missing parts."""
        if register and (part, command) not in self.missing:
            self.missing.append((part, command))
        return text(f"No {part} in this store. Run ", code(command), " to make it.", note=True)

    # ----------------------------------------------------------------- verdict
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
                f": {self.stored_so_far()} kernels"
                f"{' stored so far (conetool kernels is still running)' if self.writer else ''}"
                f" of shape {shape} ({kind}, {self.manifest.get('dtype')}), "
                f"{total:.1f} s of kernel computation in all. Layout: "
                f"{self.manifest.get('layout', '-')}." + _engines_text(records),
            )
        ]
        if records:
            rows = tuple(
                (
                    str(step),
                    _source_name(r.source, self.recorded_ckpts),
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
        self.details["checkpoints"] = (
            f"{self.stored_so_far()} checkpoints"
            + ("" if self.writer is None else " so far (kernels running)")
            + f", kernels {shape}"
        )
        return Section("checkpoints", "Checkpoints and kernels", tuple(blocks))

    # ----------------------------------------------------------------- run
    def _training_section(self) -> Section:
        """The run's loss and accuracy (from ``metrics.csv``), when ``conetool train`` wrote it."""
        title = "Training"
        if self.training_png is None:
            if not Path(self.ckpts).is_dir():
                said = (
                    f"The checkpoint directory {self.ckpts} is not there (moved or deleted): no "
                    "metrics.csv to draw (pass --ckpts DIR where the run is now)."
                )
            else:
                said = "No metrics.csv in the checkpoint directory (written by conetool train)."
            return Section("training", title, (text(said),))
        self.present.add("training")
        self.details["training"] = "training curves"
        return Section(
            "training",
            title,
            (
                Figure(
                    self.training_png,
                    "Training and test loss and accuracy against step",
                    "Training curves. Loss (left) and accuracy (right), train and test, from "
                    f"{self.ckpts}/metrics.csv; drawn by conetool report into report/training.png.",
                ),
            ),
        )

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
