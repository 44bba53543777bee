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

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import paths
from .._version import __version__
from ..choices import path_argument
from ..errors import ConetoolError
from ..io import atomic_write_text
from ..plots import training_curves_figure, write_figure
from ..progress import NullProgress, Progress, Said
from ..report_html import (
    Document,
    Figure,
    Section,
    to_html,
    to_markdown,
)
from ..store import Store
from .kept_files import file_states, unchanged

__all__ = ["ReportResult", "report"]

from ..library_call import library_call
from .report_result_sections import ResultSections
from .resolve import moved_run


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
        warnings: what changes how the report reads or asks for a rerun (results computed from
            other kernels than the store holds now, files that cannot be read, kernel files
            missing from the store (the steps, and the command that recomputes them), a ``kernels``
            run still writing the store, kernels made by more than one engine). Said as
            ``warning: ...`` through ``progress`` once the store is read, and listed in the
            report's Notes.
        notes: information only (none at present).
        training_png: the training curves written beside the page (``None`` when the run has no
            ``metrics.csv``).
        kept: those of the files beside the page left as they were, not written: the training
            curves when ``training_png`` already held them (:func:`~conetool.plots.write_figure`).
        removed: the report's own files from an earlier report that this one no longer links,
            removed so that the folder holds only what the report shows: ``training.png`` when
            the run's folder holds no ``metrics.csv`` now (not when the folder is not there:
            moved, unmounted; removed only when it is a figure conetool drew, which records its
            figure key; a user's own file of that name is left).
    """

    store: Path
    html: Path
    markdown: Path
    spec: Path | None
    sections: list[str]
    details: dict[str, str]
    missing: list[tuple[str, str]]
    figures: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    training_png: Path | None = None
    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


@library_call
def report(
    store: str | Path = paths.DEFAULT_STORE,
    *,
    out: str | Path | None = None,
    ckpts: str | Path | None = None,
    progress: Progress | None = None,
) -> ReportResult:
    """Write ``report.html``, ``report.md`` and ``spec.toml`` about a store (into ``STORE/report/``).

    Args:
        store: the store directory; it must hold a manifest (``conetool kernels`` made it).
            Distance, embedding and switch results are included when present.
        out: the directory to write the report to (default ``STORE/report``).
        ckpts: the run's checkpoint directory, when it is no longer where the store's manifest
            says (its ``metrics.csv`` gives the training curves, and the reproduce commands
            name it); default the manifest's.
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
    out_dir = (
        paths.report_dir(opened.root)
        if out is None
        else path_argument(out, "--out", "the directory for the report")
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConetoolError(f"--out {out_dir} is a file, not a directory. Choose a directory.")
    moved = moved_run(ckpts)
    bar = progress.task("report", total=3)
    # a store replaced meanwhile (kernels --overwrite) stops it, and gets none of its files; the
    # results it embeds are not removed while it reads them
    with opened.reading("report"), opened.writing_results("report"):
        gathered = ReportBuilder.read(opened, str(store), out_dir, moved)
        said = Said(progress)
        for message in gathered.warnings:
            said.warn(message)
        for message in gathered.notes:
            said.note(message)
        before = file_states([out_dir / paths.report_training_png(opened.root).name])
        gathered.training_png = _training_curves(gathered, out_dir)
        removed = []
        if gathered.training_png is None and _without_metrics(Path(gathered.ckpts)):
            stale = _drawn_figure(out_dir / paths.report_training_png(opened.root).name)
            removed += [stale] if stale is not None else []
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
        warnings=gathered.warnings,
        notes=gathered.notes,
        training_png=gathered.training_png,
        kept=unchanged([gathered.training_png] if gathered.training_png else [], before),
        removed=removed,
    )


def _without_metrics(ckpts: Path) -> bool:
    """Whether the run's folder ``ckpts`` is there and holds no ``metrics.csv``: only then are an
    earlier report's training curves no longer the run's. A folder that is not there (moved,
    deleted, a disk not mounted) or a metrics.csv that cannot be read tells nothing, and the
    figure may be the only copy of its curves left."""
    try:
        return ckpts.is_dir() and not paths.metrics(ckpts).exists()
    except OSError:
        return False


def _drawn_figure(path: Path) -> Path | None:
    """Remove ``path`` when it is a PNG conetool drew (it records a figure key: an earlier
    report's training curves, which this one does not link); returns it when removed, None when
    there is none or it is not conetool's (a user's file of that name is left as it is)."""
    from ..plots.figure_key import recorded_key

    if recorded_key(path) is None:
        return None
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def _training_curves(gathered: ReportBuilder, out_dir: Path) -> Path | None:
    """Draw ``CKPTS/metrics.csv`` (written by ``conetool train``) into ``training.png`` beside the
    report; ``None`` when the run has no such file (checkpoints from another training loop)."""
    metrics = paths.metrics(Path(gathered.ckpts))
    try:
        with open(metrics, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    if not rows:
        return None
    target = out_dir / paths.report_training_png(gathered.root).name
    write_figure(target, training_curves_figure, rows)
    return target


#: The results each guarded section reads (:meth:`ReportBuilder._read_through`): attribute ->
#: (its file in the store, the command that rewrites it).
_RESULTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "distance": (paths.distance_summary, "conetool distance"),
    "embed": (paths.embed_summary, "conetool embed"),
    "spectrum": (paths.spectrum_summary, "conetool spectrum"),
    "switch": (paths.switch_results_json, "conetool switch"),
}
#: What a section raises on a results file that holds a value of another type or shape than
#: conetool writes there (``"rules": 1e30`` for a table of rules).
_SHAPE_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError)


class ReportBuilder(ResultSections):
    """Reads the store once and builds the document, section by section."""

    def _read_through(self, build: Callable[[], Section], part: str) -> Section:
        """``build()``; when it fails on the results of ``part`` (``distance``, ``embed``,
        ``spectrum`` or ``switch``: a JSON file edited or damaged into another shape), that part
        is left out, as a file that cannot be read is, with a warning naming the file and the
        command that rewrites it. A failure with no such results to blame keeps its traceback."""
        try:
            return build()
        except _SHAPE_ERRORS as exc:
            if getattr(self, part) is None:
                raise
            path, command = _RESULTS[part]
            self.warnings.append(
                f"{path(self.root)} holds a value the report cannot read "
                f"({type(exc).__name__}: {exc}); rerun {command} to rewrite it"
            )
            setattr(self, part, None)
            if part == "switch":
                self.switch_points = {}
            return build()

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
            self._read_through(self._verdict_section, "distance"),
            self._training_section(),
            self._read_through(self._distance_section, "distance"),
            self._read_through(self._embed_section, "embed"),
            self._read_through(self._spectrum_section, "spectrum"),
            self._read_through(self._switch_section, "switch"),
            self._checkpoints_section(),
            self._run_section(),
            self._reproduce_section(),
        ]
        sections = [self._read_through(self._summary_section, "distance")]
        if self.missing or self.warnings or self.notes:
            sections.append(self._missing_section())
        sections += body
        return Document(title, subtitle, tuple(sections))
