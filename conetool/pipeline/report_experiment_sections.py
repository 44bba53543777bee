"""The report's sections of the two experiments beyond the distances: the alignment and spectrum
of the kernels, and the switch experiment (Fig. 2) with its kernel machine; and the figure helper
the result sections share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import paths
from ..report_html import (
    Block,
    Figure,
    Section,
    Table,
    text,
)
from .report_file_checks import csv_problem
from .report_inputs import _g, _steps_text
from .report_run_sections import RunSections
from .saved_results import summary_said
from .switch_results import RESULT_COLUMNS

__all__ = ["ExperimentSections"]


class ExperimentSections(RunSections):
    """Spectrum and switch, and :meth:`_figures`."""

    def _figures(
        self, figures: list[tuple[str, Path, str, str]], command: str, blocks: list[Block]
    ) -> list[str]:
        """Append each figure (label, PNG, alt text, caption) that exists; a missing PNG is a
        missing part with the command that makes it. A PNG that is not whole (truncated or
        damaged: it would show as a broken image) is left out with a warning naming the file and
        that command. Returns the labels shown."""
        shown = []
        for label, path, alt, caption in figures:
            if path.is_file() and not _whole_png(path):
                self.warnings.append(
                    f"{path} is not a whole PNG (truncated or damaged), so {label} is left out "
                    f"of the report; rerun {command} to draw it again"
                )
                rel = path.relative_to(self.root).as_posix()
                blocks.append(self._absent(f"{label} ({rel})", command, register=False))
            elif path.is_file():
                blocks.append(Figure(path, alt, caption))
                shown.append(label)
            else:
                rel = path.relative_to(self.root).as_posix()
                blocks.append(self._absent(f"{label} ({rel})", command))
        return shown

    def _named_files(self, files: list[tuple[Path, str | None, str]], command: str) -> None:
        """Warn about each store file a caption points the reader to (its path, what is wrong
        with it or None, the caption that names it) that is missing or not whole, naming it and
        ``command``, which rewrites it (:mod:`.report_file_checks` looks; no array is read)."""
        for path, problem, label in files:
            if problem is not None:
                self.warnings.append(
                    f"{path} {problem}, though {label} points to it for its numbers; rerun "
                    f"{command} to rewrite it"
                )

    # ----------------------------------------------------------------- spectrum
    def _spectrum_section(self) -> Section:
        title = "Alignment and spectrum"
        if not self.steps:
            return Section("spectrum", title, (text("No kernels yet."),))
        summary = self.spectrum
        if summary is None:
            return Section(
                "spectrum",
                title,
                (self._absent("alignment and spectrum", self._spectrum_command()),),
            )
        rows = self._spectrum_rows()
        top = summary.get("top_k", "k")
        machine = _kernel_machine(summary, rows)
        blocks: list[Block] = []
        if rows:
            first, last = rows[0], rows[-1]
            header: tuple[str, ...] = (
                "step",
                "alignment",
                "effective rank",
                f"label energy (top {top})",
            )
            if machine:
                header += ("kernel-machine test accuracy",)
            blocks.append(
                Table(
                    header,
                    tuple(
                        (
                            r["step"],
                            _g(float(r["alignment"])),
                            _g(float(r["effective_rank"])),
                            _g(float(r["label_energy"])),
                        )
                        + (
                            (_g(float(r["eval_acc"])) if r.get("eval_acc") else "-",)
                            if machine
                            else ()
                        )
                        for r in (first, last)
                    ),
                    (True,) * len(header),
                    caption="First and last stored step (every step: spectrum/spectrum.csv)",
                )
            )
        if machine:
            blocks.append(text(_kernel_machine_sentence(summary)))
        end = summary.get("phase1_end")
        shade = f" Phase I (to step {end}) is shaded." if end is not None else ""
        shown = self._figures(
            [
                (
                    "spectrum",
                    paths.spectrum_png(self.root),
                    "Alignment, effective rank and label energy against step",
                    "Alignment and spectrum. Centered kernel-target alignment with the probe "
                    "set's one-hot labels, the "
                    "effective rank (exp of the entropy of the normalised eigenvalues) and the "
                    f"share of the centered labels' energy in the top {top} eigenvectors "
                    "(‖U_kᵀ C Y‖²_F / ‖C Y‖²_F), per stored kernel"
                    + (
                        "; last panel: the kernel machine's test accuracy with the eNTK frozen "
                        "at each step"
                        if machine
                        else ""
                    )
                    + f".{shade}",
                )
            ],
            self._spectrum_command(),
            blocks,
        )
        self.present.add("spectrum")
        self.details["spectrum"] = ", ".join(shown) + f" (top {top})"
        return Section("spectrum", title, tuple(blocks))

    # ----------------------------------------------------------------- switch
    def _switch_section(self) -> Section:
        title = "Switch experiment (Fig. 2)"
        results = self.switch
        if results is None or not results.get("points"):
            return Section(
                "switch",
                title,
                (self._absent("switch results (Fig. 2)", self._results_command("switch")),),
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
                "f_lin(x; θ) = f(x; θ_t) + J(x; θ_t)(θ − θ_t), and trained with the spec's "
                f"recipe from t to T = {until}; its test accuracy and loss are compared with the "
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
                    f"Standard model at T = {ref.get('step')} ({ref.get('source')}): test "
                    f"accuracy {_g(ref.get('test_acc'))}, test loss {_g(ref.get('test_loss'))}."
                )
            )
        else:
            blocks.append(
                text(
                    "No standard model at T (no checkpoint of step T; --reference train trains "
                    "one)."
                )
            )
        # what the sweep said (its points' momentum among it): results.json keeps it; one that
        # an older conetool wrote keeps none
        warnings, notes = summary_said(results)
        for kind, said in (("Warning", warnings), ("Note", notes)):
            for message in said:
                end = "" if message.endswith(".") else "."
                blocks.append(text(f"{kind} from conetool switch: {message}{end}"))
        shown = self._figures(
            [
                (
                    "Fig. 2",
                    paths.switch_png(self.root),
                    "Fig. 2: test accuracy and loss of the linearized model against the switch "
                    "step",
                    f"Fig. 2. Test accuracy and loss at T = {until} of the model trained normally "
                    "to step t and linearized from t on, against t; "
                    + (
                        "the horizontal line is the standard model at T."
                        if ref
                        else "no standard model at T to draw beside them."
                    )
                    + " Numbers: switch/results.csv.",
                )
            ],
            self._results_command("switch"),
            blocks,
        )
        table = paths.switch_results_csv(self.root)
        problem = csv_problem(table, RESULT_COLUMNS, len(results["points"]), "results.json")
        self._named_files([(table, problem, "Fig. 2's caption")], self._results_command("switch"))
        self._unread_switch_points()
        machine = self._kernel_machine_beside_fig2()
        if machine is not None:
            blocks.append(text(machine))
        self.present.add("switch")
        self.details["switch"] = (
            ", ".join(shown) + f", {len(results['points'])} switch points, T = {until}"
        )
        return Section("switch", title, tuple(blocks))

    def _unread_switch_points(self) -> None:
        """Warn about the points of ``switch/results.json`` whose own ``switch/at_<t>.json`` is
        missing or cannot be read: it records the spec and checkpoint each point was trained
        from, which the note on points trained with another spec and the Reproduce block's
        ``--ckpts`` read, so those say nothing of such a point. Rerunning the sweep's command
        trains the point again and rewrites its file (the others are reused)."""
        unread = self.unread_switch_points
        if not unread:
            return
        one = len(unread) == 1
        listed = f"point {unread[0]}'s file" if one else f"points {_steps_text(unread)}' files"
        first = paths.switch_point(self.root, unread[0])
        they, it, was = ("it", "it", "was") if one else ("they", "them", "were")
        rerun = self._results_command("switch")
        self.warnings.append(
            f"switch {listed} ({first}{'' if one else ' ...'}) {'is' if one else 'are'} missing "
            f"or cannot be read, so the report cannot tell which spec and checkpoints {they} "
            f"{was} trained from (nor name {it} among points trained with another spec, nor "
            f"choose the Reproduce block's --ckpts by {it}); rerun {rerun} to "
            f"train {it} again and rewrite {'its file' if one else 'their files'} (with the "
            "--spec and --ckpts of that training, when not the store's)"
        )

    def _kernel_machine_beside_fig2(self) -> str | None:
        """One sentence naming the kernel machine's accuracy (``spectrum``) beside Fig. 2."""
        summary = self.spectrum
        if summary is None:
            return None
        rows = self._spectrum_rows()
        if not _kernel_machine(summary, rows):
            return None
        measured = [r for r in rows if r.get("eval_acc")]
        first, last = measured[0], measured[-1]
        return (
            "Beside Fig. 2: the kernel machine with the eNTK frozen at step t (Fort et al.'s "
            '"kernel at time t", kernel regression on the probe set; Alignment and spectrum, '
            f"last panel) reaches kernel-machine test accuracy {_g(float(first['eval_acc']))} at "
            f"step {first['step']} and {_g(float(last['eval_acc']))} at step {last['step']}, in "
            "seconds per checkpoint where a switch point costs a training run."
        )

    def _spectrum_rows(self) -> list[dict[str, str]]:
        """The rows of ``spectrum/spectrum.csv``, checked against ``spectrum/summary.json``
        (its steps: count, first and last) and for the numbers the report shows; a file that
        fails either (truncated, edited, from another run) gives no rows and, once, a warning
        naming it and the command that rewrites it (the spectrum figure stays: spectrum draws
        it from its own numbers, not from the file)."""
        if self.checked_spectrum_rows is not None:
            return self.checked_spectrum_rows
        path = paths.spectrum_csv(self.root)
        rows = _spectrum_rows(path)
        problem = _spectrum_problem(rows, (self.spectrum or {}).get("steps"))
        if problem is not None and path.is_file():
            self.warnings.append(
                f"{path} {problem}, so the report leaves its table out; rerun "
                f"{self._spectrum_command()} to rewrite it"
            )
        self.checked_spectrum_rows = [] if problem is not None else rows
        return self.checked_spectrum_rows

    # ----------------------------------------------------------------- checkpoints


def _kernel_machine(summary: dict[str, Any], rows: list[dict[str, str]]) -> bool:
    """True when ``spectrum`` measured the kernel machine at some step."""
    machine = summary.get("kernel_machine")
    return (
        isinstance(machine, dict)
        and bool(machine.get("eval"))
        and any(r.get("eval_acc") for r in rows)
    )


def _kernel_machine_sentence(summary: dict[str, Any]) -> str:
    machine = summary["kernel_machine"]
    evaluated = machine["eval"]
    return (
        "Kernel-machine test accuracy: kernel regression on the probe set's centered one-hot "
        "labels with the eNTK frozen at each step, ridge "
        f"{_g(machine.get('ridge'))} x tr(K)/N (stated, not tuned), tested on "
        f"{evaluated.get('size')} examples of the {evaluated.get('split')} split "
        "(eval_acc, eval_loss in spectrum/spectrum.csv)."
    )


def _spectrum_rows(path: Path) -> list[dict[str, str]]:
    """The rows of ``spectrum/spectrum.csv`` (empty when it cannot be read)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


#: The columns of ``spectrum.csv`` the report shows, each a number on every row.
_SPECTRUM_NUMBERS = ("alignment", "effective_rank", "label_energy")


def _spectrum_problem(rows: list[dict[str, str]], steps: object) -> str | None:
    """What is wrong with the rows of ``spectrum.csv`` given the summary's ``steps`` (``{"count",
    "first", "last"}``), in words; None when they are what spectrum writes."""
    if not rows:
        return "holds no rows (or cannot be read)"
    for row in rows:
        try:
            int(row["step"])
            for column in _SPECTRUM_NUMBERS:
                float(row[column])
            if row.get("eval_acc"):
                float(row["eval_acc"])
        except (KeyError, TypeError, ValueError):
            return f"has a row that is cut short or not numbers ({row.get('step')!r} ...)"
    if isinstance(steps, dict):
        found = (len(rows), int(rows[0]["step"]), int(rows[-1]["step"]))
        wanted = (steps.get("count"), steps.get("first"), steps.get("last"))
        if found != wanted:
            return (
                f"covers {found[0]} steps ({found[1]} to {found[2]}), its summary.json "
                f"{wanted[0]} ({wanted[1]} to {wanted[2]})"
            )
    return None


def _whole_png(path: Path) -> bool:
    """Whether ``path`` is a whole, undamaged PNG: every chunk's CRC up to its end (no pixel
    decoded)."""
    from PIL import Image

    try:
        with Image.open(path, formats=["PNG"]) as image:
            image.verify()
    except Exception:  # any file that cannot be read as a whole PNG
        return False
    return True
