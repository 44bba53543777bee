"""What a report says, read from the store once: the manifest and the JSON results of
``distance``, ``embed``, ``spectrum`` and ``switch``, whether they are current, and the
number formatting every section shares.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .. import paths
from ..errors import ConetoolError, StoreError, StoreReplacedError
from ..spec import spec_from_dict, spec_to_toml
from ..store import Store
from ..store_lock import writer_note
from ..store_manifest import mixed_engines_note
from ..verdict import REGIMES
from .kernels_running import running_note, stored_so_far
from .matrix_cache import kernels_key

__all__ = ["ReportInputs"]

_Inputs = TypeVar("_Inputs", bound="ReportInputs")  # read() builds the subclass it is called on


# A checkpoint table longer than this is folded away (HTML <details>).
COLLAPSE_ROWS = 60

# regime -> (a few words for the summary, one sentence for the verdict section)
_REGIMES = REGIMES


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


def _read_json(path: Path, command: str, warnings: list[str]) -> dict[str, Any] | None:
    """A JSON file of the store, or None when absent; a damaged one is a warning naming its fix
    (its part of the report is missing)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if command:
            warnings.append(f"{path} cannot be read ({exc}); rerun {command} to rewrite it")
        return None
    return value if isinstance(value, dict) else None


@dataclass
class ReportInputs:
    """Everything the report says, read from the store once."""

    store: Store
    store_arg: str
    out_dir: Path
    distance: dict[str, Any] | None
    embed: dict[str, Any] | None
    switch: dict[str, Any] | None
    switch_points: dict[int, dict[str, Any]]
    spec_toml: str | None
    spectrum: dict[str, Any] | None = None
    #: what changes how the report reads or asks for a rerun (the report's Notes list them)
    warnings: list[str] = field(default_factory=list)
    #: information only (none at present)
    notes: list[str] = field(default_factory=list)
    training_png: Path | None = None
    missing: list[tuple[str, str]] = field(default_factory=list)
    present: set[str] = field(default_factory=set)
    details: dict[str, str] = field(default_factory=dict)
    #: the checkpoint directory given by the caller (the run moved), instead of the manifest's
    moved_ckpts: Path | None = None
    #: the ``kernels`` run still writing the store (its lock's note), else None
    writer: str | None = None
    #: the switch points of ``switch/results.json`` whose ``switch/at_<t>.json`` is missing or
    #: cannot be read (the switch section names them)
    unread_switch_points: list[int] = field(default_factory=list)
    #: the rows of ``spectrum.csv`` once read and checked (the spectrum section's)
    checked_spectrum_rows: list[dict[str, str]] | None = field(default=None, init=False)

    @classmethod
    def read(
        cls: type[_Inputs],
        store: Store,
        store_arg: str,
        out_dir: Path,
        ckpts: Path | None = None,
    ) -> _Inputs:
        warnings: list[str] = []
        root = store.root
        distance = _read_json(paths.distance_summary(root), "conetool distance", warnings)
        embed = _read_json(paths.embed_summary(root), "conetool embed", warnings)
        spectrum = _read_json(paths.spectrum_summary(root), "conetool spectrum", warnings)
        switch = _read_json(paths.switch_results_json(root), "conetool switch", warnings)
        points: dict[int, dict[str, Any]] = {}
        unread: list[int] = []  # points whose own file is missing, damaged or without its key
        try:
            for point in (switch or {}).get("points", []):
                saved = _read_json(paths.switch_point(root, int(point["at"])), "", [])
                if saved is not None and isinstance(saved.get("key"), dict):
                    points[int(point["at"])] = saved
                else:
                    unread.append(int(point["at"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # not what switch writes
            warnings.append(
                f"{paths.switch_results_json(root)} holds a value the report cannot read "
                f"({type(exc).__name__}: {exc}); rerun conetool switch to rewrite it"
            )
            switch, points, unread = None, {}, []
        try:
            spec_toml: str | None = spec_to_toml(
                spec_from_dict(store.manifest["spec"], source=f"{paths.manifest(root)} (spec)")
            )
        except (ConetoolError, KeyError, TypeError) as exc:
            spec_toml = None
            warnings.append(f"the manifest's spec cannot be read back as a spec ({exc})")
        gathered = cls(
            store,
            store_arg,
            out_dir,
            distance,
            embed,
            switch,
            points,
            spec_toml,
            spectrum,
            warnings=warnings,
            moved_ckpts=ckpts,
            unread_switch_points=unread,
        )
        gathered._check_current()
        gathered._check_kernel_files()
        gone = gathered.run_gone()
        if gone is not None:
            gathered.warnings.append(gone)
        mixed = mixed_engines_note(store.records())
        if mixed is not None:  # a kernel recomputed by another engine or on another device
            gathered.warnings.append(mixed)
        gathered.writer = writer_note(root)
        if gathered.writer is not None:
            command = f"conetool report {gathered._store_flag()}"
            note = running_note(
                gathered.writer, gathered.stored_so_far(), command, "the numbers here"
            )
            gathered.warnings.insert(0, note)
        return gathered

    def stored_so_far(self) -> str:
        """The kernels stored, ``37 of 100`` while ``kernels`` writes the store (of the
        checkpoints it selected, when the manifest says), else ``37``."""
        return stored_so_far(self.store) if self.writer is not None else str(len(self.steps))

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
    def recorded_ckpts(self) -> str:
        """The checkpoint directory ``kernels`` read (the manifest's), which the recorded
        checkpoint paths lie in: the names relative to it are also those inside a moved run."""
        return str(self.manifest.get("checkpoints", "CKPTS"))

    @property
    def ckpts(self) -> str:
        """The checkpoint directory the report names: ``--ckpts``, else the recorded one."""
        if self.moved_ckpts is not None:
            return str(self.moved_ckpts)
        return self.recorded_ckpts

    def run_gone(self) -> str | None:
        """Why the report cannot read the run, when no ``--ckpts`` was given and the checkpoint
        directory the manifest records is not there (the run moved or was deleted since
        ``kernels``): no training curves, and the commands name that directory as it was."""
        recorded = self.manifest.get("checkpoints")
        if self.moved_ckpts is not None or not isinstance(recorded, str):
            return None
        if Path(recorded).is_dir():
            return None
        again = f"conetool report {self._store_flag()} --ckpts DIR"
        if self.out_dir != paths.report_dir(self.root):
            again += f" --out {_q(self.out_dir)}"
        return (
            f"the run's checkpoint directory {recorded}, where conetool kernels read it, is not "
            "there (moved or deleted): the report has no training curves, and its Reproduce "
            f"commands name that directory. If the run moved, pass where it is now: {again}"
        )

    def _store_flag(self) -> str:
        return f"--store {_q(self.store_arg)}"

    def _spectrum_command(self) -> str:
        s = self.spectrum or {}
        options = s.get("options") or {}
        # --top-k as given (a value above the kernel's size keeps every eigenvalue, and the
        # summary's top_k is the number kept); a summary from before it was recorded has only
        # the number kept; without a summary, spectrum's default below the kernel's size
        top_k = options.get("top_k", s.get("top_k", self._default_top_k()))
        command = f"conetool spectrum {self._store_flag()} --top-k {top_k}"
        if options.get("logx"):
            command += " --logx"
        # skip_bad as given; a summary from before the options were recorded has only the
        # steps it left out
        if options.get("skip_bad") or s.get("excluded"):
            command += " --skip-bad"
        return command

    def _default_top_k(self) -> int:
        """``spectrum``'s default ``--top-k`` (10), one fewer than a probe set of 10 or less (as
        the demo does): keeping every eigenvalue makes the label energy 1 at every step, and
        ``spectrum`` warns to pass a smaller ``--top-k``."""
        probe = self.manifest.get("probe")
        size = probe.get("size") if isinstance(probe, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and 2 <= size <= 10:
            return size - 1
        return 10

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
        """Note distance / embed / spectrum outputs computed from other kernels than the store
        holds now (made while ``kernels`` was still writing it, say): another store identity,
        another set of steps, or kernels recomputed since (a changed checkpoint: the summaries'
        ``kernels_key``, which file times do not change; summaries written before it was
        recorded are not checked for this), or a step left out with ``--skip-bad`` whose kernel
        file can be used now (a damaged file recomputed: the same key and steps).
        """
        if not self.steps:
            return
        identity = asdict(self.store.identity)
        current_key = kernels_key(self.store)
        usable_now: dict[int, bool] = {}  # step -> its kernel file can be used (read once)
        for summary, part in (
            (self.distance, "distance"),
            (self.embed, "embed"),
            (self.spectrum, "spectrum"),
        ):
            if summary is None:
                continue
            command = f"conetool {part}"
            # with the options the results were made with: the default ones would change them
            rerun = f"rerun {self._results_command(part)} to bring them up to date"
            counted = summary.get("steps", {})
            excluded = {int(k) for k in summary.get("excluded", {})}
            current = [s for s in self.steps if s not in excluded]
            seen = (counted.get("count"), counted.get("first"), counted.get("last"))
            if summary.get("identity") not in (None, identity):
                self.warnings.append(
                    f"the {command} results were computed from another spec, probe set or "
                    f"kernel kind than the store's kernels now: {rerun}"
                )
            elif current and seen != (len(current), current[0], current[-1]):
                self.warnings.append(
                    f"the {command} results cover {seen[0]} steps ({seen[1]} to {seen[2]}), the "
                    f"store now holds {len(current)} ({current[0]} to {current[-1]}): {rerun}"
                )
            elif summary.get("kernels_key") not in (None, current_key):
                self.warnings.append(
                    f"the {command} results were computed from kernels that have been "
                    f"recomputed since (a checkpoint changed, or a kernel was recomputed): {rerun}"
                )
            elif usable := [
                step for step in sorted(excluded) if self._usable_now(step, usable_now)
            ]:
                # a damaged kernel file recomputed since: the same checkpoint gives the same
                # kernels key and steps, but the results still lack the step
                listed = ", ".join(str(step) for step in usable)
                self.warnings.append(
                    f"the {command} results left out step{'s' if len(usable) > 1 else ''} "
                    f"{listed} (--skip-bad), whose kernel file{'s' if len(usable) > 1 else ''} "
                    f"can be used now (recomputed since): {rerun}"
                )
        spec_hash = self.manifest.get("spec_hash")
        other = sorted(
            at
            for at, p in self.switch_points.items()
            if p.get("key", {}).get("spec_hash") not in (None, spec_hash)
        )
        if other:
            self.warnings.append(
                f"switch points {_steps_text(other)} were trained with another spec than the "
                f"store's (hash {spec_hash}); their command needs that spec (--spec)."
            )

    def _results_command(self, part: str) -> str:
        """The command that rewrites the results of ``part`` (``distance``, ``embed``,
        ``spectrum``, ``switch``): here its default options, which a report refines into the
        Reproduce block's command with the options the results recorded
        (:meth:`.report_commands.ReportCommands._results_command`)."""
        return f"conetool {part} {self._store_flag()}"

    def _check_kernel_files(self) -> None:
        """Warn about kernel files the manifest records that are not in the store (deleted):
        ``distance``, ``embed`` and ``spectrum`` stop at them. One ``stat`` per step, no
        kernel read (a damaged file is theirs to name)."""
        missing = {
            step: self.root / record.kernel
            for step, record in self.store.records().items()
            if not (self.root / record.kernel).is_file()
        }
        if not missing:
            return
        steps = list(missing)
        listed = ", ".join(str(step) for step in steps[:12]) + (" ..." if len(steps) > 12 else "")
        one = len(steps) == 1
        files, are, them = ("file", "is", "it") if one else ("files", "are", "them")
        self.warnings.append(
            f"the kernel {files} of stored step{'' if one else 's'} {listed} {are} missing "
            f"({missing[steps[0]]}{'' if one else ' ...'}): conetool distance, embed and "
            f"spectrum stop at {them} (--skip-bad leaves {them} out); recompute {them}: "
            f"{self._completing_kernels_command()}"
        )

    def _completing_kernels_command(self) -> str:
        """The ``conetool kernels`` command that recomputes what the store lacks (the report
        builder's names every option the store needs: kind, dtype, probe size, ...)."""
        return f"conetool kernels {_q(self.ckpts)} {self._store_flag()}"

    def _usable_now(self, step: int, known: dict[int, bool]) -> bool:
        """Whether the kernel of ``step``, left out of a result by ``--skip-bad``, can be used
        now: stored, readable, finite and not all zeros (``known`` caches the answer)."""
        if step not in known:
            try:
                kernel = self.store.load_kernel(step)
            except StoreReplacedError:
                raise
            except StoreError:
                known[step] = False
            else:
                known[step] = bool(kernel.any())
        return known[step]

    # ----------------------------------------------------------------- document
