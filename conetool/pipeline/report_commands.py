"""The report's Reproduce block: the exact shell commands, with every option the store's JSON
files recorded, that rebuild the store from nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ConetoolError
from ..layer_groups import groups_flag
from ..report_html import (
    Block,
    Code,
    Section,
    code,
    text,
)
from ..spec import load_spec, spec_from_dict
from ..verdict import VerdictRules
from .remembered import import_paths, selection, spec_imports
from .report_inputs import ReportInputs, _q, _rule_value, _steps_text

__all__ = ["ReportCommands"]


class ReportCommands(ReportInputs):
    """The commands of the Reproduce block (mixed into the report builder)."""

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

    def _selection_flags(self, *, all_steps: bool = False) -> list[str]:
        """The checkpoint selection kernels recorded: --step-regex, --steps, --every (with
        ``all_steps``, the step regex alone: every checkpoint of the run)."""
        chosen = selection(self.manifest)
        flags = []
        if chosen.get("step_regex"):
            flags.append(f"--step-regex {_q(chosen['step_regex'])}")
        if all_steps:
            return flags
        if chosen.get("steps"):
            flags.append(f"--steps {_q(chosen['steps'])}")
        if chosen.get("every"):
            flags.append(f"--every {chosen['every']}")
        return flags

    def _kernels_command(self, *, minimal: bool = False, all_steps: bool = False) -> str:
        """The kernels command that made the store (``minimal``: what a command adding kernels
        to this store needs, no more: directory, store, selection, the spec, kind, dtype and
        probe size of its kernels (any other is refused as another store) and --skip-bad (else
        it stops at the checkpoint that run left out); not the engine, nor the evaluation set
        and layer groups, which the store keeps by itself. ``all_steps``: of every checkpoint,
        for a store with too few kernels, whose recorded --steps/--every would select the same
        ones again)."""
        m = self.manifest
        parts = [f"{self._env()}conetool kernels {_q(self.ckpts)}", self._store_flag()]
        parts += self._selection_flags(all_steps=all_steps)
        if self.spec_toml is not None and not self._run_spec_is_the_stores():
            parts.append(f"--spec {_q(self.out_dir / paths.report_spec(self.root).name)}")
        probe = m.get("probe")
        parts += _flag("--kind", m.get("kind"))
        parts += _flag("--dtype", m.get("dtype"))
        parts += _flag("--probe-size", probe.get("size") if isinstance(probe, dict) else None)
        if m.get("skip_bad") is True:  # it went on without the checkpoints it could not use
            parts.append("--skip-bad")
        if minimal:
            return " ".join(parts)
        if m.get("method") not in (None, "auto"):  # the engine of a kernels --method run
            parts += _flag("--method", m.get("method"))
        evaluation = m.get("eval")
        if isinstance(evaluation, dict) and evaluation.get("size"):
            parts.append(f"--eval-size {evaluation['size']}")
        layers = m.get("layer_groups")
        if isinstance(layers, dict):
            parts.append(groups_flag(layers))
        return " ".join(parts)

    def _run_spec_is_the_stores(self) -> bool:
        """Whether the run's CKPTS/conetool.toml, which kernels reads without --spec, is the
        spec the store's kernels were computed with (kernels --spec another.toml, with another
        [probe] for instance, makes a store whose spec is not the run's)."""
        try:
            run_spec = load_spec(paths.spec(Path(self.ckpts)))
        except ConetoolError:  # absent or unreadable: kernels would not find the store's spec
            return False
        probe = self.manifest.get("probe")
        size = probe.get("size") if isinstance(probe, dict) else None
        if isinstance(size, int):  # --probe-size, which the command carries, is not the spec's
            run_spec = replace(run_spec, probe=replace(run_spec.probe, size=size))
        return bool(run_spec.hash() == self.manifest.get("spec_hash"))

    def _completing_kernels_command(self) -> str:
        return self._kernels_command(minimal=True)

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
                + ": set them from Python, conetool.distance(..., rules=conetool.VerdictRules(...))"
            )
        options = s.get("options", {})
        parts += [
            flag
            for key, flag in (("logx", "--logx"), ("logy", "--logy"), ("skip_bad", "--skip-bad"))
            if options.get(key)
        ]
        if options.get("noise") is False:  # not recorded before: the default, the estimate
            parts.append("--no-noise")
        schedule, unnamed = _schedule_flag(s)
        parts += schedule
        comments += [unnamed] if unnamed is not None else []
        return " ".join(parts), comments

    def _embed_command(self) -> str:
        s = self.embed or {}
        parts = ["conetool embed", self._store_flag()]
        for key, flag in (("method", "--method"), ("dims", "--dims"), ("seed", "--seed")):
            parts += _flag(flag, s.get(key))
        if s.get("excluded"):
            parts.append("--skip-bad")
        parts += _schedule_flag(s)[0]
        return " ".join(parts)

    def _results_command(self, part: str) -> str:
        """The command that rewrites the results of ``part`` as the store holds them: the one
        of the Reproduce block, with the options they recorded (a figure, a file or results
        rewritten with the default options would be other results); the default where the store
        holds none, or results of another shape than conetool writes (their section says so)."""
        commands = {
            "distance": lambda: self._distance_command()[0],
            "embed": self._embed_command,
            "spectrum": self._spectrum_command,
            "switch": self._switch_command,
        }
        try:
            return commands[part]()
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return super()._results_command(part)

    def _switch_command(self) -> str:
        """The sweep that made the store's switch points: their --at steps, T, reference,
        checkpoint directory and spec (:meth:`_switch_spec`); for a store without points, a few
        suggested steps (:meth:`_suggested_switch_points`)."""
        s = self.switch or {}
        at = [int(p["at"]) for p in s.get("points", [])] or self._suggested_switch_points()
        parts = [f"{self._env()}conetool switch --at {_steps_text(at)}"]
        parts += _flag("--until", s.get("until"))
        if self._beyond_run(s.get("until")):  # else switch refuses that T
            parts.append("--beyond-run")
        parts.append(self._store_flag())
        source = str((s.get("reference") or {}).get("source", "checkpoint"))
        if source != "checkpoint":
            parts.append("--reference train")
        ckpt_dir = self._switch_checkpoint_dir()
        if ckpt_dir is not None:
            parts.append(f"--ckpts {_q(ckpt_dir)}")
        spec_file, _ = self._switch_spec(ckpt_dir)
        if spec_file is not None:
            parts.append(f"--spec {_q(spec_file)}")
        return " ".join(parts)

    def _switch_spec(self, ckpt_dir: str | None) -> tuple[str | None, str | None]:
        """The spec file the switch command needs (``--spec``), or why none can be named: the
        points' spec (their ``key.spec_hash``), where it is not the one switch reads without
        ``--spec`` (``CKPTS/conetool.toml`` of the directory the command names, else the
        manifest's spec). The store's kernels' spec is the report's own spec.toml; another
        (``switch --spec`` with another ``[probe]``) is in no file the store holds: the comment
        (second) says so. ``(None, None)``: no --spec needed, or the points' spec not known."""
        keys = [point["key"] for point in self.switch_points.values()]  # (each a dict)
        hashes = {key.get("spec_hash") for key in keys} - {None}
        if len(hashes) != 1:
            return None, None
        (swept,) = hashes
        folder = Path(ckpt_dir if ckpt_dir is not None else self.ckpts)
        stores = self.manifest.get("spec_hash")
        read = None  # the hash of the spec switch reads without --spec (None: none it can read)
        if paths.spec(folder).is_file():
            try:
                read = load_spec(paths.spec(folder)).hash()
            except ConetoolError:  # unreadable: switch refuses it without --spec
                pass
        elif isinstance(self.manifest.get("spec"), dict):
            read = stores  # (no conetool.toml there: switch takes the manifest's spec)
        if swept == read:
            return None, None
        if swept == stores and self.spec_toml is not None:
            return str(self.out_dir / paths.report_spec(self.root).name), None
        which = (
            "the store's kernels' spec, which its manifest does not hold as a spec the report "
            "can write out"
            if swept == stores
            else f"neither the store's kernels' spec nor {paths.spec(folder)}, and no file the "
            "store holds has it"
        )
        return None, (
            f"# the switch points were trained with a spec (hash {swept}) that is {which}: add "
            "--spec with that spec file to the switch command"
        )

    def _beyond_run(self, until: object) -> bool:
        """Whether the switch's T is past the spec's train.steps (switch --beyond-run)."""
        train = (self.manifest.get("spec") or {}).get("train") or {}
        steps = train.get("steps") if isinstance(train, dict) else None
        return isinstance(until, int) and isinstance(steps, int) and until > steps

    def _switch_checkpoint_dir(self) -> str | None:
        """The checkpoint directory switch read, when it is not the store's (``--ckpts``). A
        point trained from the very checkpoint the store's kernel of its step was computed from
        (the same fingerprint) read the store's run, wherever that lies now: a run moved since
        switch (kernels rerun there, or report --ckpts) is named where it is, not where it was.
        Where switch would read the store's run, which is gone from where the manifest records
        it, the directory given to report (``--ckpts``, where the run moved) is named: switch
        without ``--ckpts`` reads the manifest's, and would find no checkpoint."""
        read = self._switch_read_dir()
        return read if read is not None else self._moved_run_dir()

    def _moved_run_dir(self) -> str | None:
        """``report --ckpts``'s directory, when the checkpoint directory the manifest records
        is another that is not there (the run moved); else None."""
        recorded = self.manifest.get("checkpoints")
        if self.moved_ckpts is None or not isinstance(recorded, str) or Path(recorded).is_dir():
            return None
        if Path(recorded).resolve() == Path(self.moved_ckpts).resolve():
            return None
        return str(self.moved_ckpts)

    def _switch_read_dir(self) -> str | None:
        """The checkpoint directory the store's switch points were trained from, when it is not
        the store's run (:meth:`_switch_checkpoint_dir`); else None."""
        records = self.store.records()
        for at, point in self.switch_points.items():
            files = point.get("checkpoint") or []
            if not files:
                continue
            key = point.get("key")
            used = key.get("source_fingerprint") if isinstance(key, dict) else None
            record = records.get(at)
            if used is not None and record is not None and used == record.fingerprint:
                return None
            where = Path(files[0]).resolve().parent
            if where.name.startswith("checkpoint-"):  # Hugging Face layout
                where = where.parent
            if where != Path(self.ckpts).resolve():
                return str(where)
            return None
        return None

    def _reproduce_section(self) -> Section:
        lines = []
        if not (Path(self.store_arg).is_absolute() and Path(self.out_dir).is_absolute()):
            # The paths are the ones given to report (the store's, and its --out), so they
            # start where the report was made, not where kernels made the store.
            here = _q(str(Path.cwd()))
            lines.append(f"# relative paths are from the directory this report was made in: {here}")
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
                lines.append(f"{self._env()}conetool train {_q(spec_file)} --out {_q(self.ckpts)}")
            lines.append(self._kernels_command())
            if self.distance is not None:
                command, comments = self._distance_command()
                lines += comments
                lines.append(command)
            if self.embed is not None:
                unnamed = _schedule_flag(self.embed)[1]
                lines += [unnamed] if unnamed is not None and unnamed not in lines else []
                lines.append(self._embed_command())
            if self.spectrum is not None:
                lines.append(self._spectrum_command())
        if self.switch is not None and self.switch.get("points"):
            _, unnamed = self._switch_spec(self._switch_checkpoint_dir())
            lines += [unnamed] if unnamed is not None else []
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


def _flag(flag: str, value: object) -> list[str]:
    """``[flag value]``, or nothing when the store's files did not record the value (a store
    written by other code than kernels, or an older conetool): the command then takes the
    default, where ``--probe-size None`` would be refused."""
    return [] if value is None else [f"{flag} {_q(value)}"]


def _schedule_flag(summary: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """``(["--spec FILE"], None)`` when the command's summary read the schedule from a spec
    that differs from the store's in ``[train]`` (its ``schedule_spec``), so that the command
    reproduces the verdict it read; ``([], comment)`` when no file there holds that spec now
    (moved, edited since, or a spec built in Python: the command would read another schedule,
    or fail), the comment saying to add it; else ``([], None)``."""
    record = summary.get("schedule_spec")
    if not isinstance(record, Mapping) or not record.get("differs"):
        return [], None
    source, wanted = record.get("source"), record.get("spec_hash")
    held, now = None, "is not there now"
    if Path(str(source)).is_file():
        try:
            held = load_spec(str(source)).hash()
            now = f"holds another spec now (hash {held})"
        except (ConetoolError, OSError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            now = f"cannot be read as a spec now ({first})"
    if held is not None and held == wanted:
        return [f"--spec {_q(source)}"], None
    return [], (
        f"# the verdict read [train] from --spec {source} (spec hash {wanted}), which {now}: "
        "add --spec with a file of that spec (the store's with the schedule the verdict read "
        "in its [train]) to the distance and embed commands"
    )
