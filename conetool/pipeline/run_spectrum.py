"""``conetool spectrum``: how each stored kernel lines up with the probe labels, into
``STORE/spectrum/``.

Outputs (names from :mod:`conetool.paths`)::

    spectrum/spectrum.csv   step, alignment, effective_rank, label_energy, trace, eval_acc,
                            eval_loss, eig_1 ... eig_k
    spectrum/summary.json   top_k, classes, the store's identity, the steps left out, the kernel
                            machine's ridge and evaluation set, the options given (logx,
                            skip_bad: the report's Reproduce block repeats them), and what it
                            said (``notes``, ``warnings``: see saved_results)
    spectrum/spectrum.png   the three measures against step (and a 4th panel, the kernel
                            machine's test accuracy, with eval kernels), Phase I shaded

``summary.json`` is removed before the CSV and the PNG are written, and written after them: a run
that fails midway (a full disk) leaves no summary beside outputs of another run.

The measures are defined in :mod:`conetool.kernel_spectrum`. With the eval kernels of
``conetool kernels --eval-size m``, each step's kernel machine (:mod:`conetool.kernel_regression`,
kernel ridge regression on the probe set with the eNTK frozen at that step and the stated default
ridge) is evaluated on the evaluation set: ``eval_acc`` and ``eval_loss`` (empty for a step without
a current eval kernel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import paths
from .._version import __version__
from ..choices import is_count
from ..errors import ConetoolError, DataError, StoreError, StoreReplacedError
from ..geometry import ZERO_KERNEL
from ..io import atomic_write_csv, atomic_write_json
from ..kernel_regression import DEFAULT_RIDGE, kernel_regression
from ..kernel_spectrum import SpectrumPoint, spectrum_point
from ..library_call import library_call
from ..plots import spectrum_figure, write_figure
from ..probe import Probe, load_probe
from ..progress import NullProgress, Progress, Said
from ..store import Store
from ..threads import limit_threads
from .kept_files import file_states, unchanged
from .kernels_running import kernels_running
from .matrix_cache import csv_number, kernels_key, require_kernels
from .recompute_notes import DELETE, recompute_note
from .saved_results import remove_old_summary, said_in_summary, saved_phase1_end

__all__ = ["SpectrumResult", "spectrum"]


@dataclass(frozen=True, eq=False)
class SpectrumResult:
    """What :func:`spectrum` computed and wrote.

    Attributes:
        store: the store directory.
        steps: the ``K`` steps measured, ascending.
        points: one :class:`conetool.kernel_spectrum.SpectrumPoint` per step.
        top_k: eigenvalues kept per step.
        phase1_end: Phase I's end from ``distance/summary.json`` (``None`` before ``distance``).
        excluded: steps left out with ``skip_bad`` -> why.
        files: every file written.
        kept: those of ``files`` left as they were, not written: a PNG that already held
            its figure (:func:`~conetool.plots.write_figure`).
        eval_acc, eval_loss: per step, the kernel machine's accuracy and loss on the evaluation
            set (NaN for a step without a current eval kernel; all NaN without an eval set).
        eval_size: the evaluation set's size (``None`` without one).
        ridge: the kernel machine's relative ridge (:data:`conetool.kernel_regression.DEFAULT_RIDGE`).
        warnings: what changes how the numbers read or asks for a rerun: why the evaluation
            set is not used, the steps whose eval kernel could not be used, a ``kernels`` run
            still writing the store (the numbers are of the kernels stored so far), a ``top_k``
            not below the kernel's size (every eigenvalue kept: the label energy is then 1 at
            every step). Said as ``warning: ...`` through ``progress`` once measured.
        notes: information only (none at present).
    """

    store: Path
    steps: list[int]
    points: list[SpectrumPoint]
    top_k: int
    phase1_end: int | None
    excluded: dict[int, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    eval_acc: list[float] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_size: int | None = None
    ridge: float = DEFAULT_RIDGE
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


@library_call
def spectrum(
    store: str | Path = paths.DEFAULT_STORE,
    *,
    top_k: int = 10,
    logx: bool = False,
    skip_bad: bool = False,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> SpectrumResult:
    """Alignment with the labels, effective rank, label energy and top eigenvalues of every
    stored kernel (float64 eigendecomposition of the ``(n, n)`` kernel, ``(n c, n c)`` for the
    full kind).

    ``threads`` sets the CPU threads of PyTorch and BLAS for the call: a count, or ``"auto"``
    (the idle cores; :func:`conetool.limit_threads`).

    Example::

        r = conetool.spectrum("conetool-out", top_k=10)
        [p.alignment for p in r.points]          # one per stored step, in step order
    """
    with limit_threads(threads):
        if not is_count(top_k):
            raise ConetoolError(
                f"--top-k {top_k!r}: pass a positive whole number of eigenvalues, e.g. 10."
            )
        progress = progress or NullProgress()
        opened = Store.open(store)
        # a store replaced meanwhile (kernels --overwrite) stops it, and gets none of its files
        with opened.reading("spectrum"):
            steps = opened.steps()
            require_kernels(opened, steps, at_least=1, needed_by="the spectrum")
            probe = load_probe(paths.probe(opened.root))
            labels = probe.labels.numpy()
            classes = _classes(opened, labels)
            evaluated, eval_note = _eval_set(opened)
            kept, points, excluded = [], [], {}
            accuracy: list[float] = []
            losses: list[float] = []
            no_accuracy: dict[int, str] = {}  # step -> why its eval kernel cannot be used
            task = progress.task("spectrum", total=len(steps))
            for step in steps:
                try:
                    kernel = opened.load_kernel(step).numpy()
                    if not np.all(np.isfinite(kernel)):
                        raise StoreError(f"the kernel of step {step} holds NaN or inf")
                    _check_kernel(opened, step, kernel, labels.size)
                except StoreReplacedError:
                    raise  # no --skip-bad leaves out the whole store
                except StoreError as exc:
                    if not skip_bad:
                        raise
                    excluded[step] = str(exc).splitlines()[0]
                    progress.log(f"warning: step {step} left out: {excluded[step]}")
                    task.advance()
                    continue
                points.append(spectrum_point(kernel, labels, classes, top_k))
                size = int(np.prod(kernel.shape[: kernel.ndim // 2]))  # n, or n c for kind full
                kept.append(step)
                machine = _kernel_machine(opened, step, kernel, labels, evaluated, classes)
                accuracy.append(machine[0])
                losses.append(machine[1])
                if machine[2] is not None:
                    no_accuracy[step] = machine[2]
                task.advance(step=step)
            task.close()
            if not points:
                raise StoreError(
                    f"no kernel of {opened.root} could be read; see the warnings above."
                )
            running = kernels_running(opened, "conetool spectrum")
            with opened.writing_results("spectrum"):
                root = opened.root
                k = points[0].eigenvalues.size  # top_k, or every eigenvalue when there are fewer
                unusable = _unusable_eval_kernels_warning(opened, no_accuracy)
                said = Said(progress)
                for warning in (eval_note, unusable, running):
                    if warning is not None:
                        said.warn(warning)
                if top_k >= size:
                    said.warn(_all_eigenvalues_warning(top_k, size))
                header = [
                    "step",
                    "alignment",
                    "effective_rank",
                    "label_energy",
                    "trace",
                    "eval_acc",
                ]
                header += ["eval_loss"]
                header += [f"eig_{i + 1}" for i in range(k)]
                rows = [
                    [
                        step,
                        csv_number(p.alignment),
                        csv_number(p.effective_rank),
                        csv_number(p.label_energy),
                        csv_number(p.trace),
                        csv_number(acc),
                        csv_number(loss),
                        *(csv_number(v) for v in p.eigenvalues[:k]),
                    ]
                    for step, p, acc, loss in zip(kept, points, accuracy, losses, strict=True)
                ]
                has_eval = any(np.isfinite(accuracy))
                remove_old_summary(paths.spectrum_summary(root))  # written again last
                files = [atomic_write_csv(paths.spectrum_csv(root), header, rows)]
                key = kernels_key(opened)
                end = saved_phase1_end(root, kernels_key=key)  # from distance on these same kernels
                before = file_states([paths.spectrum_png(root)])
                files.append(
                    write_figure(
                        paths.spectrum_png(root),
                        spectrum_figure,
                        kept,
                        [p.alignment for p in points],
                        [p.effective_rank for p in points],
                        [p.label_energy for p in points],
                        top_k=k,
                        phase1_end=end,
                        logx=logx,
                        eval_accuracy=accuracy if has_eval else None,
                    )
                )
                summary = {
                    "command": "spectrum",
                    "conetool_version": __version__,
                    "store": str(root),
                    "identity": asdict(opened.identity),
                    "kernels_key": key,
                    "top_k": k,
                    "classes": classes,
                    "probe_size": int(labels.size),
                    "steps": {"count": len(kept), "first": kept[0], "last": kept[-1]},
                    "phase1_end": end,
                    "excluded": {str(s): why for s, why in sorted(excluded.items())},
                    "options": {"logx": logx, "skip_bad": skip_bad, "top_k": top_k},
                    "kernel_machine": {
                        "ridge": DEFAULT_RIDGE,
                        "ridge_rule": "lambda = ridge * tr(K) / N, N the rows of the probe kernel",
                        "eval": None
                        if evaluated is None
                        else {
                            "size": len(evaluated),
                            "split": evaluated.split,
                            "hash": evaluated.hash,
                            "steps": int(np.isfinite(accuracy).sum()),
                        },
                        "note": eval_note,
                    },
                    **said_in_summary(said.warnings, said.notes),
                    "definitions": "README: conetool spectrum",
                }
                atomic_write_json(paths.spectrum_summary(root), summary)
                files.append(paths.spectrum_summary(root))
        return SpectrumResult(
            root,
            kept,
            points,
            k,
            end,
            excluded,
            files,
            accuracy,
            losses,
            len(evaluated) if evaluated is not None else None,
            warnings=said.warnings,
            notes=said.notes,
            kept=unchanged(files, before),
        )


def _all_eigenvalues_warning(top_k: int, size: int) -> str:
    """Why the label energy is 1 at every step (the share in the range of a singular kernel) when
    ``top_k`` reaches the kernel's size."""
    return (
        f"--top-k {top_k} is not below the {size} eigenvalues of each kernel: all {size} are "
        f"kept, and the label energy in all the eigenvectors is 1 at every step (for a singular "
        f"kernel, the labels' share in its range). Pass a --top-k below {size} for a label "
        f"energy that can change."
    )


def _eval_set(store: Store) -> tuple[Probe | None, str | None]:
    """The store's evaluation set (``kernels --eval-size``), checked against the manifest's
    record; ``(None, why)`` when it is recorded but unusable, ``(None, None)`` without one."""
    record = store.eval_record
    if record is None:
        return None, None
    path = paths.eval_set(store.root)
    try:
        evaluated = load_probe(path)
    except DataError as exc:
        return None, f"no kernel-machine accuracy: {str(exc).splitlines()[0]}"
    if evaluated.hash != record.get("hash"):
        return None, (
            f"no kernel-machine accuracy: {path} has hash {evaluated.hash}, the manifest records "
            f"{record.get('hash')}; rerun {store.kernels_command()} --eval-size "
            f"{record.get('size')}"
        )
    return evaluated, None


def _check_kernel(store: Store, step: int, kernel: np.ndarray, n: int) -> None:
    """A :class:`StoreError` naming the kernel file of ``step`` and the fix when its kernel is
    not one of the store's ``n`` probe examples (``(n, n)``, or ``(n, c, n, c)`` for the full
    kind) or is all zeros (its spectrum and alignment are undefined)."""
    shape = kernel.shape
    if store.identity.kind == "full":
        fits = len(shape) == 4 and shape[0] == shape[2] == n and shape[1] == shape[3]
        wanted = f"(n, c, n, c) with n = {n}"
    else:
        fits = shape == (n, n)
        wanted = f"({n}, {n})"
    if fits and np.any(kernel):
        return
    problem = (
        f"has shape {shape}, not the {wanted} of the store's {n} probe examples"
        if not fits
        else "holds a kernel that is all zeros, whose spectrum and alignment are undefined"
    )
    record = store.record(step)
    path = store.root / record.kernel if record is not None else paths.kernel(store.root, step)
    if fits:  # all zeros: recomputing gives the same zeros, leaving it out is the fix
        raise StoreError(
            f"step {step}: kernel file {path} {problem}. {ZERO_KERNEL}: pass --skip-bad to leave "
            "the step out."
        )
    raise StoreError(
        f"step {step}: kernel file {path} {problem}. Delete that file and rerun "
        f"{store.kernels_command()} to recompute it, or pass --skip-bad to leave the step out."
    )


def _kernel_machine(
    store: Store,
    step: int,
    kernel: np.ndarray,
    labels: np.ndarray,
    evaluated: Probe | None,
    classes: int,
) -> tuple[float, float, str | None]:
    """``(accuracy, loss, None)`` on the evaluation set of kernel regression on the probe set
    with the kernel of ``step``; ``(NaN, NaN, why)`` when the eval kernel of that step is
    missing, stale, unreadable or not finite (``(NaN, NaN, None)`` without an evaluation set)."""
    record = store.record(step)
    if evaluated is None or record is None:
        return math.nan, math.nan, None
    problem = store.eval_kernel_problem(step, evaluated.hash, record.fingerprint)
    if problem is not None:
        return math.nan, math.nan, problem
    try:
        cross = store.load_eval_kernel(step).numpy()
    except StoreReplacedError:
        raise
    except StoreError as exc:  # its values are not finite (kernels reads only the header)
        return math.nan, math.nan, f"{str(exc).split('. ')[0]}; {DELETE}"
    result = kernel_regression(kernel, cross, labels, evaluated.labels.numpy(), classes)
    return result.accuracy, result.loss, None


def _unusable_eval_kernels_warning(store: Store, why: dict[int, str]) -> str | None:
    """The warning naming the steps whose eval kernel could not be used (``why``: step -> the
    reason), with the command that recomputes them; None when there are none."""
    if not why:
        return None
    return recompute_note(store, why, lost="kernel-machine accuracy", files="eval kernels")


def _classes(store: Store, labels: np.ndarray) -> int:
    """The number of classes: the spec's ``num_classes``, else one more than the largest label."""
    spec_classes = (store.manifest.get("spec") or {}).get("model", {}).get("num_classes")
    if isinstance(spec_classes, int) and spec_classes > int(labels.max(initial=0)):
        return spec_classes
    return int(labels.max(initial=0)) + 1
