"""The error of a switch sweep whose store a ``kernels --overwrite`` replaced meanwhile
(:mod:`conetool.pipeline.switch_store`): the points not written, those that went with the old
store, and the ``conetool switch`` command that computes the sweep in the new one."""

from __future__ import annotations

import shlex
from pathlib import Path

from .. import paths
from ..choices import Reference, choice
from ..errors import StoreReplacedError
from ..spec import Spec
from ..threads import parse_threads
from .switch_finished_points import SwitchPoint
from .switch_options import SwitchOptions
from .switch_prepare import Sweep
from .switch_store import SwitchStore


def replaced_error(
    target: SwitchStore,
    sweep: Sweep,
    options: SwitchOptions,
    points: list[SwitchPoint],
    in_progress: list[int],
    todo: list[int],
) -> StoreReplacedError:
    """The sweep's error when its store was replaced, naming the points not written (those
    ``in_progress`` on the ranks that found it, those of ``todo`` not started) and those that
    went with the old store (``points``, done), and the command that computes the sweep in the
    new store: every point of it, since the new store has none."""
    done = {p.at for p in points}
    waiting = [t for t in todo if t not in done and t not in in_progress]

    def steps(label: str, ats: list[int]) -> str:
        return f"the {label}{'s' if len(ats) > 1 else ''} at t = {', '.join(map(str, ats))}"

    parts = []
    if in_progress:
        parts.append(f"{steps('point', in_progress)} (in progress)")
    if waiting:
        parts.append(f"{steps('point', waiting)} (not started)")
    if parts:
        lost = (
            " and ".join(parts)
            + f" {'are' if len(in_progress + waiting) > 1 else 'is'} not written"
        )
    else:
        files = [paths.switch_results_csv, paths.switch_results_json, paths.switch_png]
        if choice(Reference, options.reference, "--reference") is Reference.train:
            files.insert(0, paths.switch_reference)
        names = [f(target.root).name for f in files]
        lost = f"{', '.join(names[:-1])} and {names[-1]} are not written"
    if done:
        lost += f", and {steps('point', sorted(done))} went with the old store"
    return target.replaced_error(lost, rerun_command(sweep, options), options.ckpts is not None)


def rerun_command(sweep: Sweep, options: SwitchOptions) -> str:
    """The ``conetool switch`` command of this sweep: its points, T, store and the flags given
    (``--device`` and ``--threads`` too; a spec given as a :class:`Spec` object, which names no
    file, as ``--spec FILE`` and a note on writing it)."""
    parts = ["conetool switch --at", ",".join(map(str, sweep.points_at))]
    if options.until is not None:
        parts += ["--until", str(sweep.until)]
    if options.beyond_run:
        parts.append("--beyond-run")
    parts += ["--store", shlex.quote(str(options.store))]
    if options.ckpts is not None:
        parts += ["--ckpts", shlex.quote(str(sweep.ckpts))]
    if isinstance(options.spec, (str, Path)):
        parts += ["--spec", shlex.quote(str(options.spec))]
    elif options.spec is not None:
        parts += ["--spec", "FILE"]  # a Spec object: no file to name (said below)
    reference = choice(Reference, options.reference, "--reference").value
    if reference != Reference.checkpoint.value:
        parts += ["--reference", reference]
    if options.step_regex is not None:
        parts += ["--step-regex", shlex.quote(options.step_regex)]
    if str(options.device).strip().lower() != "auto":
        parts += ["--device", shlex.quote(str(options.device))]
    threads = parse_threads(options.threads)  # a count; None for "auto" and None, the default
    if threads is not None:
        parts += ["--threads", str(threads)]
    command = " ".join(parts)
    if isinstance(options.spec, Spec):
        command += (
            " (FILE: the spec this sweep was given as a Spec object, which names no file; "
            "conetool.spec.save_spec(spec, FILE) writes it)"
        )
    return command
