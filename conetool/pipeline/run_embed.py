"""``conetool embed``: a 2-D or 3-D picture of the kernel trajectory (paper Fig. 1c), into
``STORE/embed/``.

Outputs (names from :mod:`conetool.paths`)::

    embed/coords.csv       step, x, y[, z]           one row per kernel, in step order
    embed/summary.json     method, dims, seed, stress, explained variance ratio, store identity,
                           what it said (``notes``, ``warnings``: see saved_results)
    embed/embedding.png    the picture: H(first step) black, later steps darker
    embed/matrix.npz       the S matrix embedded (as distance/matrix.npz; see matrix_cache)

The S matrix is read back from ``distance/matrix.npz`` (or ``embed/matrix.npz``) when it matches
the store's kernels, else computed exactly as ``conetool distance`` does; it is saved in
``embed/matrix.npz``, never into ``distance/``, whose matrix stays that of its summary.
``summary.json`` is removed before ``coords.csv`` and the PNG are written, and written after them:
a run that fails midway (a full disk) leaves no summary beside outputs of another run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from .. import paths
from .._version import __version__
from ..choices import is_count
from ..embedding import Embedding, Method, embed_kernels
from ..errors import ConetoolError
from ..io import atomic_write_csv, atomic_write_json
from ..library_call import library_call
from ..plots import embedding_figure, write_figure
from ..progress import NullProgress, Progress, Said
from ..spec import Spec
from ..store import Store
from ..threads import limit_threads
from ..verdict import phase_verdict
from .kept_files import file_states, unchanged
from .kernels_running import kernels_running
from .matrix_cache import csv_number, kernel_matrix, kernels_key, summary_matrix_key
from .noise_estimate import estimate_noise_floor, saved_noise_floor
from .saved_results import (
    recorded_schedule,
    remove_old_summary,
    said_in_summary,
    saved_phase1_end,
)
from .schedule_spec import (
    read_from_note,
    same_schedule,
    schedule_record,
    schedule_source,
    verdict_spec,
)

__all__ = ["METHODS", "EmbedResult", "embed"]

METHODS = ("mds", "pca")


@dataclass(frozen=True, eq=False)
class EmbedResult:
    """What :func:`embed` computed and wrote.

    Attributes:
        store: the store directory.
        steps: the ``K`` embedded steps, ascending (stored steps minus ``excluded``).
        embedding: coordinates ``(K, dims)`` (row k for ``steps[k]``), stress, explained variance.
        seed: the seed given (recorded only: MDS draws nothing at random).
        phase1_end: the end of Phase I ringed on the picture (from ``distance/summary.json`` when
            it belongs to the same kernels, else the verdict with default rules, read as
            ``distance`` reads it: under a decaying learning rate the store's spec records, with
            the noise floor of S ``distance`` cached, or estimated as it estimates it and cached
            for it), or ``None``.
        excluded: steps left out with ``skip_bad`` -> why.
        matrix_reused: the S matrix was read back from ``distance/matrix.npz`` or
            ``embed/matrix.npz`` instead of computed.
        files: every file written.
        kept: those of ``files`` left as they were, not written: a PNG that already held
            its figure (:func:`~conetool.plots.write_figure`).
        warnings: what changes how the picture reads (a ``kernels`` run still writing the
            store: the embedding is of the kernels stored so far). Said as ``warning: ...``
            through ``progress`` as they come.
        notes: information only: the noise floor of S that Phase I's end needs could not be
            estimated (and why), or the model's module was imported from where ``kernels``
            found it to estimate it.
    """

    store: Path
    steps: list[int]
    embedding: Embedding
    seed: int
    phase1_end: int | None
    excluded: dict[int, str] = field(default_factory=dict)
    matrix_reused: bool = False
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


@library_call
def embed(
    store: str | Path = paths.DEFAULT_STORE,
    *,
    method: str = "mds",
    dims: int = 2,
    seed: int = 0,
    skip_bad: bool = False,
    max_memory: int | str | None = None,
    spec: str | Path | Spec | None = None,
    threads: int | str | None = "auto",
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed the store's kernels in ``dims`` dimensions from their chordal distances.

    Args:
        store: the store directory.
        method: ``"mds"``, metric MDS of the chordal distance ``sqrt(2 S)`` (the Euclidean
            distance between the unit-norm kernels; quality: Kruskal Stress-1), or ``"pca"``,
            exact PCA of the unit-norm kernels (quality: explained variance ratio).
        dims: 2 or 3.
        seed: recorded only (MDS starts from the PCA solution and draws nothing at random).
        skip_bad: leave out kernel files that cannot be read or are non-finite.
        max_memory: budget for the S matrix's kernel blocks when it must be computed (default 1 GiB).
        spec: the spec whose ``[train]`` (learning-rate schedule) Phase I's end is read under,
            as ``distance``'s ``spec``: the store's, or one differing from it only in ``[train]``
            keys no kernel depends on (:func:`conetool.pipeline.schedule_spec.verdict_spec`);
            ``distance/summary.json``'s Phase I end is then taken only when distance read the
            same spec. Default: the spec distance read (its summary names it), else the
            store's.
        threads: CPU threads (PyTorch, BLAS, the MDS's products): a count or ``"auto"``
            (:func:`conetool.limit_threads`).
        progress: progress display; default silent.

    Returns:
        An :class:`EmbedResult`; ``embed/coords.csv``, ``embed/summary.json``,
        ``embed/embedding.png`` and (unless it already held this matrix) ``embed/matrix.npz``
        are written.

    Example::

        result = conetool.embed("conetool-out", method="pca", dims=2)
        xy = result.embedding.coords                      # (K, 2), rows = result.steps
        print(result.embedding.explained_variance_ratio)  # e.g. [0.71 0.12]
    """
    progress = progress or NullProgress()
    method = str(getattr(method, "value", method)).lower()
    if method not in METHODS:
        raise ConetoolError(f"--method {method!r} is unknown. Use one of: {', '.join(METHODS)}.")
    if dims not in (2, 3):
        raise ConetoolError(f"--dims {dims} is not supported. Use 2 or 3.")
    if not is_count(seed, 0) or seed >= 2**32:
        raise ConetoolError(
            f"--seed {seed!r} is not a seed. Pass a whole number from 0 to {2**32 - 1} (recorded "
            "with the embedding), e.g. --seed 0."
        )
    opened = Store.open(store)
    # a store replaced meanwhile (kernels --overwrite) stops it, and gets none of its files
    with opened.reading("embed"):
        given_spec, train_differs = verdict_spec(opened, spec)
        with limit_threads(threads):
            matrix = kernel_matrix(
                opened, command="embed", skip_bad=skip_bad, max_memory=max_memory, progress=progress
            )
            steps, s = matrix.steps, matrix.S
            chosen = cast(Method, method)  # one of METHODS: checked above
            embedding = embed_kernels(s, method=chosen, dims=dims, seed=seed)
            said = Said(progress)
            if train_differs and given_spec is not None:
                said.note(read_from_note(given_spec, train_differs))
            # (its noise floor may be estimated here: a kernel of the run's model, on threads=)
            phase1_end, phase1_from, read_under = _phase1_end(
                opened, matrix.key, steps, s, said, progress.log, given_spec, train_differs
            )
        running = kernels_running(opened, "conetool embed")
        if running is not None:
            said.warn(running)
        with opened.writing_results("embed"):
            root = opened.root
            axes = ["x", "y", "z"][:dims]
            rows = [
                [step, *(csv_number(v) for v in embedding.coords[i])]
                for i, step in enumerate(steps)
            ]
            remove_old_summary(paths.embed_summary(root))  # written again last
            before = file_states([paths.embedding_png(root)])
            files = [atomic_write_csv(paths.coords_csv(root), ["step", *axes], rows)]
            if method == "pca":
                ratio = embedding.explained_variance_ratio
                assert ratio is not None
                quality = f"explained variance {float(np.sum(ratio)):.0%}"
            else:
                quality = f"stress {embedding.stress:.3f}"
            files.append(
                write_figure(
                    paths.embedding_png(root),
                    embedding_figure,
                    embedding.coords,
                    steps,
                    method=method,
                    quality=quality,
                    phase1_end=phase1_end,
                )
            )
            summary: dict[str, Any] = {
                "command": "embed",
                "conetool_version": __version__,
                "store": str(root),
                "identity": asdict(opened.identity),
                "matrix_key": matrix.key,
                "kernels_key": kernels_key(opened),
                "matrix": "reused" if matrix.reused else "computed",
                **embedding.to_dict(),
                "seed": seed,
                "distance": "chordal sqrt(2 S) between unit-norm kernels",
                "steps": {"count": len(steps), "first": steps[0], "last": steps[-1]},
                "excluded": {str(k): v for k, v in sorted(matrix.excluded.items())},
                "phase1_end": phase1_end,
                "phase1_end_from": phase1_from,
                "schedule_spec": read_under,
                "files": [
                    paths.coords_csv(root).name,
                    paths.embedding_png(root).name,
                    paths.embed_summary(root).name,
                    paths.embed_matrix_npz(root).name,
                ],
                **said_in_summary(said.warnings, said.notes),
            }
            summary_path = paths.embed_summary(root)
            atomic_write_json(summary_path, summary)
            files.append(summary_path)
            if matrix.saved:  # by kernel_matrix, under the results lock
                files.append(paths.embed_matrix_npz(root))
    return EmbedResult(
        store=root,
        steps=steps,
        embedding=embedding,
        seed=seed,
        phase1_end=phase1_end,
        excluded=matrix.excluded,
        matrix_reused=matrix.reused,
        files=files,
        warnings=said.warnings,
        notes=said.notes,
        kept=unchanged(files, before),
    )


def _phase1_end(
    store: Store,
    key: str,
    steps: list[int],
    s: np.ndarray,
    said: Said,
    log: Callable[[str], None],
    spec: Spec | None = None,
    differs: list[str] | None = None,
) -> tuple[int | None, str, dict[str, Any]]:
    """The end of Phase I: from ``distance/summary.json`` when it is about these kernels (so the
    user's verdict options count) and, given a ``spec``, was read under that spec's ``[train]``
    (:func:`~conetool.pipeline.schedule_spec.same_schedule`); else from the verdict with
    default rules, read as ``distance`` reads it by default: under the decaying learning rate
    ``spec`` (else the store's spec) records, with the noise floor of S (:func:`_noise_floor`).
    The second value says where it came from, and names the spec file distance read the
    schedule from when it was not the store's; the third is the record of the spec whose
    ``[train]`` it was read under (:func:`~conetool.pipeline.schedule_spec.schedule_record`,
    distance's own where its summary's is taken), for ``embed/summary.json``."""
    summary_path = paths.distance_summary(store.root)
    if summary_path.is_file():
        end = saved_phase1_end(store.root, matrix_key=key)
        summary_about_these = summary_matrix_key(summary_path) == key
        summary = _read_summary(summary_path)
        if summary_about_these and same_schedule(summary, store, spec):
            record = summary.get("schedule_spec")
            if not isinstance(record, dict):  # distance before it recorded one: the store's
                return end, "distance/summary.json", schedule_record(store, None, [])
            if record.get("differs"):
                return (
                    end,
                    f"distance/summary.json (the schedule of {record.get('source')})",
                    record,
                )
            return end, "distance/summary.json", record
    read_under = schedule_record(store, spec, differs or [])
    schedule = recorded_schedule(
        store, spec, steps[-1], recorded_in=schedule_source(spec, differs or [])
    )
    # under a schedule the floor changes which S are divided by the rate, and so Phase I's end
    floor = _noise_floor(store, said, log) if schedule is not None else None
    verdict = phase_verdict(steps, s, schedule=schedule, noise_floor=floor)
    return verdict.phase1_end, "verdict with default rules", read_under


def _read_summary(path: Path) -> dict[str, Any]:
    """``distance/summary.json`` as a dict; empty where it cannot be read as one."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _noise_floor(store: Store, said: Said, log: Callable[[str], None]) -> float | None:
    """The noise floor of S that ``distance`` reads: the one it cached in
    ``distance/noise.json`` (any engine or device: :func:`saved_noise_floor`), else estimated
    here exactly as ``distance`` estimates it (:func:`estimate_noise_floor`, on ``"auto"``'s
    device) and cached there for it, so that ``embed`` run before ``distance`` marks the Phase I
    end ``distance`` marks later. None, told to ``said`` as a note, when it cannot be estimated
    (``distance`` then reads no floor either and warns)."""
    floor = saved_noise_floor(store)
    if floor is not None:
        return floor
    record, why = estimate_noise_floor(store, device="auto", log=log)
    if record is None:
        said.note(f"{why}; Phase I's end is read without it, as distance reads it then")
        return None
    if why:  # the model's module imported from where kernels found it
        said.note(why)
    return float(record["floor"])
