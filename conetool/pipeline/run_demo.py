"""``conetool demo``: the whole paper on the embedded digits data, in one command.

It is the pipeline a user would run by hand, through the same library functions: ``train`` the
small conv net of ``examples/digits_lenet.toml`` (shipped inside the package as ``demo.toml``),
``kernels``, ``distance`` (several references, several dt), ``embed``, ``spectrum``, a ``switch``
sweep, then
``report``. Every stage skips what is already done, so a second run only rewrites the report
(and recomputes the embedding and the spectra, which are quick); :attr:`DemoResult.stage_work`
says what each stage reused.

Each stage says its warnings and notes through the demo's ``progress`` as the stand-alone command
does (after the stage's ``[3/7] distance`` line), except a message an earlier stage already said
and ``distance``'s warnings on the references the verdict does not use (see :func:`_said`).
:class:`DemoResult` keeps the same messages, each named by its stage.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..choices import is_count, path_argument
from ..data import load_data
from ..errors import ConetoolError, DataError, StoreError
from ..folder_roles import checkpoint_contents, same_folder, store_holding
from ..library_call import library_call
from ..progress import NullProgress, Progress, ProgressTask
from ..spec import (
    MAX_STEPS,
    Spec,
    dense_only_count,
    load_spec,
    save_steps,
    spec_differences,
    spec_from_dict,
)
from ..store_manifest import FORMAT, read_manifest
from ..threads import limit_threads
from ..training import train
from .demo_reuse import StageWork, work_of
from .run_distance import UNUSED_REF, distance
from .run_embed import embed
from .run_kernels import EVAL_SPLIT, kernels
from .run_report import report
from .run_spectrum import spectrum
from .run_switch import parse_at, switch

DEMO_SPEC = "demo.toml"
MIN_STEPS = 8  # the shortest run whose checkpoint schedule still scales (conetool demo --steps)


def demo_spec(*, steps: int | None = None, probe_size: int | None = None) -> Spec:
    """The demo's spec (``conetool/demo.toml``, the same as ``examples/digits_lenet.toml``),
    optionally shortened: ``steps`` scales the checkpoint schedule with the run."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    for flag, value, least in (("--steps", steps, MIN_STEPS), ("--probe-size", probe_size, 2)):
        if value is not None and not is_count(value, least):
            raise ConetoolError(
                f"{flag} {value!r}: the demo needs a whole number of at least {least}."
            )
    if steps is not None and steps > MAX_STEPS:  # (it trained without end)
        raise ConetoolError(
            f"--steps {steps}: the demo needs a whole number of at most {MAX_STEPS} (the longest "
            "run conetool trains, as for train.steps in a spec)."
        )
    text = resources.files("conetool").joinpath(DEMO_SPEC).read_text(encoding="utf-8")
    spec = spec_from_dict(tomllib.loads(text), source=f"conetool/{DEMO_SPEC}")
    t = spec.train
    if steps is not None:
        scale = steps / t.steps
        t = dataclasses.replace(
            t,
            steps=steps,
            save_every=max(1, round(t.save_every * scale)),
            eval_every=max(1, round(t.eval_every * scale)),
            dense_every=max(1, round(t.dense_every * scale)) if t.dense_every else 0,
            dense_until=round(t.dense_until * scale),
        )
        if not dense_only_count(t):  # scaled down to nothing: conetool train would say so
            t = dataclasses.replace(t, dense_every=0, dense_until=0)
    probe = spec.probe if probe_size is None else dataclasses.replace(spec.probe, size=probe_size)
    return dataclasses.replace(spec, train=t, probe=probe)


def default_switch_points(steps: int, saved: Sequence[int] | None = None) -> list[int]:
    """Switch steps across the run: at initialization, in Phase I, at its end, and mid-run
    (0, 100, 400, 1200 for the demo's 2,400 steps). With ``saved`` (the steps the run saves),
    each is the saved step before ``steps`` nearest to it (the earlier of two as near): a switch
    point needs a checkpoint (``--steps 40`` saves every 2 steps, and 40 / 24 rounds to 2, but
    40 / 6 to 7)."""
    targets = [0, round(steps / 24), round(steps / 6), steps // 2]
    if saved is None:
        return sorted(set(targets))
    return sorted({(_saved_near(t, saved, steps) or [0])[0] for t in targets})


def _saved_near(t: int, saved: Sequence[int], steps: int) -> list[int]:
    """The steps of ``saved`` before ``steps``, nearest to ``t`` first (the earlier of two as
    near)."""
    return sorted((s for s in saved if s < steps), key=lambda s: (abs(s - t), s))


@dataclass(frozen=True)
class DemoResult:
    """Where everything went, the verdict, the seconds each stage took, and what the stages said.

    Attributes:
        out: the demo's folder (``--out``).
        ckpts: the trained run's checkpoint directory, ``out/ckpts``.
        store: the store, ``out/store``.
        report_html: the report's HTML page (:attr:`ReportResult.html`).
        report_md: its Markdown version (:attr:`ReportResult.markdown`).
        verdict: the phase verdict of ``distance`` as a JSON-ready dict: ``regime``,
            ``phase1_end``, ``numbers``, ``explanation`` (:meth:`conetool.verdict.Verdict.to_dict`).
        test_acc: the trained model's test accuracy at the run's last step, a fraction in
            ``[0, 1]`` (:attr:`TrainResult.test_acc`).
        stage_seconds: stage name (``train``, ``kernels``, ``distance``, ``embed``, ``spectrum``,
            ``switch``, ``report``) -> wall-clock seconds it took, rounded to 0.01.
        stage_work: stage name -> what it reused from an earlier run into ``out`` and what it
            made now (:class:`~conetool.pipeline.demo_reuse.StageWork`, read from the stage's
            result by :func:`~conetool.pipeline.demo_reuse.work_of`). A first run reuses
            nothing; a second one every checkpoint, step's kernels, the S matrix and every
            switch point, computing the embedding and the spectra and writing the report again.
        warnings, notes: what the stages said, ``"stage: message"`` each, a message said by an
            earlier stage left out (see the module's docstring).
    """

    out: Path
    ckpts: Path
    store: Path
    report_html: Path
    report_md: Path
    verdict: dict[str, Any]
    test_acc: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_work: dict[str, StageWork] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@library_call
def demo(
    out: str | Path = "conetool-demo",
    *,
    device: str | torch.device = "auto",
    steps: int | None = None,
    probe_size: int | None = None,
    switch_at: Sequence[int] | None = None,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> DemoResult:
    """Train, compute kernels, distances, the embedding and a switch sweep, and write the report.

    ``steps``, ``probe_size`` and ``switch_at`` shrink the demo (tests use them); by default it
    runs ``examples/digits_lenet.toml`` as it is. ``threads`` (a count or ``"auto"``) is resolved
    once, before training, so that the later stages do not count the demo's own load.

    Example::

        result = conetool.demo("conetool-demo")
        print(result.report_html, result.verdict["regime"])
    """
    with limit_threads(threads) as count:
        return _demo(out, device, steps, probe_size, switch_at, count, progress)


def _demo(
    out: str | Path,
    device: str | torch.device,
    steps: int | None,
    probe_size: int | None,
    switch_at: Sequence[int] | None,
    threads: int,
    progress: Progress | None,
) -> DemoResult:
    progress = _StagesSay(progress or NullProgress())
    out = path_argument(out, "--out", "the folder for the demo's run, store and report")
    ckpts, store = out / "ckpts", out / "store"
    spec = demo_spec(steps=steps, probe_size=probe_size)
    if probe_size is not None:
        _check_probe_size(spec)
    _check_out_itself(out)
    _check_earlier_run(out, ckpts, spec)
    _check_earlier_store(out, store, spec)
    T = spec.train.steps
    saved = save_steps(spec)
    points = (
        default_switch_points(T, saved)
        if switch_at is None
        else _switch_points(switch_at, T, saved)
    )
    seconds: dict[str, float] = {}
    stages: list[tuple[str, Callable[[], Any]]] = [
        (
            "train",
            lambda: train(
                spec, ckpts, device=device, resume=True, threads=threads, progress=progress
            ),
        ),
        (
            "kernels",
            lambda: kernels(
                ckpts,
                store=store,
                device=device,
                eval_size=spec.probe.size,  # K(eval, probe): the kernel machine in spectrum
                per_layer=True,  # one kernel per leaf module: distance/per_layer.csv
                threads=threads,
                progress=progress,
            ),
        ),
        (
            "distance",
            lambda: distance(store, refs=_refs(T), threads=threads, progress=progress),
        ),
        ("embed", lambda: embed(store, threads=threads, progress=progress)),
        (
            "spectrum",
            # eigenvalues below the kernel's size: with every one kept, the label energy is 1
            lambda: spectrum(
                store, top_k=min(10, spec.probe.size - 1), threads=threads, progress=progress
            ),
        ),
        (
            "switch",
            lambda: switch(points, store=store, device=device, threads=threads, progress=progress),
        ),
        ("report", lambda: report(store, progress=progress)),
    ]
    results: dict[str, Any] = {}
    for number, (name, run) in enumerate(stages, start=1):
        progress.log(f"[{number}/{len(stages)}] {name}")
        began = time.perf_counter()
        results[name] = run()
        seconds[name] = round(time.perf_counter() - began, 2)
    warnings, notes = _stages_said(results)
    return DemoResult(
        out=out,
        ckpts=ckpts,
        store=store,
        report_html=results["report"].html,
        report_md=results["report"].markdown,
        verdict=results["distance"].verdict.to_dict(),
        test_acc=results["train"].test_acc,
        stage_seconds=seconds,
        stage_work={name: work_of(name, result) for name, result in results.items()},
        warnings=warnings,
        notes=notes,
    )


def _said(message: str) -> bool:
    """Whether the demo says a stage's message: not ``distance``'s on a reference the verdict does
    not use (the demo chose its references, :func:`_refs`, for Fig. 1a; the user passed no
    ``--ref``, and the verdict's explanation names the steps it read)."""
    return not message.startswith(UNUSED_REF)


class _StagesSay:
    """The demo's ``progress`` as its stages see it: their ``warning: ...`` and ``note: ...``
    lines (:class:`~conetool.progress.Said`) as :func:`_said` lets through, each message once
    (``distance`` and ``report`` both name kernels made by more than one engine); all else as
    it is."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.said: set[str] = set()

    def task(self, description: str, total: int | None) -> ProgressTask:
        return self.progress.task(description, total)

    def log(self, message: str) -> None:
        for channel in ("warning: ", "note: "):
            if message.startswith(channel):
                told = message[len(channel) :]
                if told in self.said or not _said(told):
                    return
                self.said.add(told)
        self.progress.log(message)


def _stages_said(results: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(warnings, notes)`` of the stages, ``"stage: message"`` each, as :class:`_StagesSay`
    let them through (``train`` keeps no notes)."""
    warnings: list[str] = []
    notes: list[str] = []
    seen: set[str] = set()
    for name, result in results.items():
        for into, said in ((warnings, result.warnings), (notes, getattr(result, "notes", []))):
            for message in said:
                if message not in seen and _said(message):
                    seen.add(message)
                    into.append(f"{name}: {message}")
    return warnings, notes


def _switch_points(switch_at: object, steps: int, saved: Sequence[int]) -> list[int]:
    """``switch_at`` as :func:`conetool.switch` takes ``at``, checked before anything is trained
    (the switch stage comes after training and the kernels): before the last step, and each a
    step the run saves (``saved``)."""
    try:
        points = parse_at(switch_at)  # type: ignore[arg-type]  # checked there
    except ConetoolError as exc:
        raise ConetoolError(f"switch_at={switch_at!r}: {exc}") from None
    late = [t for t in points if t >= steps]
    if late:
        raise ConetoolError(
            f"switch_at={switch_at!r}: step {late[0]} is not before the demo's last step "
            f"{steps}; the linearized model trains from t to the end. Pass steps before {steps}."
        )
    kept = set(saved)
    unsaved = [t for t in points if t not in kept]
    if unsaved:
        t = unsaved[0]
        near = _saved_near(t, saved, steps)[:2]
        raise ConetoolError(
            f"switch_at={switch_at!r}: the demo's run saves no checkpoint at step {t}, and a "
            f"switch point starts from one. Pass saved steps, such as "
            f"{' or '.join(str(s) for s in sorted(near))}."
        )
    return points


def _check_probe_size(spec: Spec) -> None:
    """``--probe-size`` must fit the digits twice over, checked before anything is trained: the
    probe set is drawn from the train split, and kernels' evaluation set, of the same size, from
    the test split (both named by ``--probe-size``, the flag the user passed)."""
    data = load_data(spec.data, source=spec.source)
    splits = (spec.probe.split, EVAL_SPLIT)
    sizes = {name: int(data.split(name).labels().shape[0]) for name in splits}
    most = min(sizes.values())
    if spec.probe.size > most:
        raise DataError(
            f"--probe-size {spec.probe.size} is larger than the demo's data allows: it draws "
            f"the probe set from the {spec.probe.split} split of {data.name} "
            f"({sizes[spec.probe.split]} examples) and an evaluation set of the same size from "
            f"its {EVAL_SPLIT} split ({sizes[EVAL_SPLIT]} examples). Pass --probe-size {most} "
            "or less."
        )


def _check_out_itself(out: Path) -> None:
    """Refuse, before anything is written, an ``--out`` that is itself a store (it holds a store
    manifest, or is one of a store's folders of kernel files) or a run's checkpoint directory:
    the demo would add its ``ckpts/`` and ``store/`` inside it, two runs in one folder. Nothing
    in ``out`` is touched."""
    held = store_holding(out)
    if held is None and _holds_store_manifest(out):
        held = (out, None)
    if held is not None:
        store = held[0]
        what = "a store" if same_folder(store, out) else f"a folder of the store {store}"
        raise StoreError(
            f"--out {out} is {what} (it holds kernels conetool kernels wrote): the demo would "
            "write its run and its store into ckpts/ and store/ inside it, mixing two runs in "
            "one folder. Pass another --out: a new or empty folder (or an earlier demo's)."
        )
    run = checkpoint_contents(out)
    if run is not None:
        raise StoreError(
            f"--out {out} is a checkpoint directory (it holds {run}): the demo would write its "
            "run and its store into ckpts/ and store/ inside it, mixing two runs in one folder. "
            "Pass another --out: a new or empty folder (or an earlier demo's)."
        )


def _holds_store_manifest(folder: Path) -> bool:
    """Whether ``folder`` holds a ``manifest.json`` of conetool's store format (readable as JSON;
    a store whose probe set is gone is still a store)."""
    try:
        manifest = json.loads(paths.manifest(folder).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _check_earlier_run(out: Path, ckpts: Path, spec: Spec) -> None:
    """Refuse, before anything is trained, an ``--out`` whose run the demo cannot reuse: a run of
    other settings (another ``--steps`` or ``--probe-size``), naming the differences and the flags
    that reuse it, or checkpoints the demo did not write (no ``conetool.toml`` beside them). The
    demo has no ``--resume`` or ``--overwrite`` (what ``conetool train`` would advise) and never
    deletes a run."""
    spec_file = paths.spec(ckpts)
    if spec_file.is_file():
        earlier = load_spec(spec_file)
        if earlier.hash() == spec.hash():
            return
        default = demo_spec()
        given = [
            f"{flag} {value}"
            for flag, value, usual in (
                ("--steps", earlier.train.steps, default.train.steps),
                ("--probe-size", earlier.probe.size, default.probe.size),
            )
            if value != usual
        ]
        flags = " ".join(given) if given else "no --steps or --probe-size"
        try:
            ours = (
                earlier.hash()
                == demo_spec(steps=earlier.train.steps, probe_size=earlier.probe.size).hash()
            )
        except ConetoolError:
            ours = False
        reuse = f"Pass {flags} to reuse it, or" if ours else "Pass"
        raise StoreError(
            f"--out {out} holds a run made with other settings than this demo's "
            f"({'; '.join(spec_differences(earlier, spec))}; see {spec_file}). {reuse} another "
            "--out for a new run: the demo never deletes a run."
        )
    steps = paths.checkpoint_steps(ckpts) if ckpts.is_dir() else []
    if steps:
        raise StoreError(
            f"--out {out} holds {len(steps)} checkpoint(s) in {ckpts} without the conetool.toml "
            "the demo writes beside its run: not a run of this demo, which it does not reuse "
            "or delete. Pass another --out."
        )


def _check_earlier_store(out: Path, store: Path, spec: Spec) -> None:
    """Refuse, before anything is trained, an ``--out`` whose ``store/`` holds kernels of another
    spec (a store copied or made there by hand): ``kernels`` would refuse it after training,
    advising ``--store`` and ``--overwrite``, flags the demo has not. A store without a readable
    manifest is left to ``kernels`` (which rebuilds a damaged one)."""
    try:
        held = read_manifest(paths.manifest(store)).get("spec_hash")
    except (ConetoolError, OSError):
        return
    if isinstance(held, str) and held != spec.hash():
        raise StoreError(
            f"--out {out} holds a store, {store}, of kernels made with another spec "
            f"(spec_hash {held}; this demo's run: {spec.hash()}): the demo neither mixes nor "
            "deletes them. Pass another --out."
        )


def _refs(steps: int) -> list[int | str]:
    """Several references for Fig. 1a: initialization, a quarter and half of the run."""
    return [0, steps // 4, steps // 2]
