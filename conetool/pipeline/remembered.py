"""What the store remembers of how ``conetool kernels`` ran, for the commands that come after it.

``conetool kernels`` records two things in ``manifest.json``:

``selection``
    the checkpoint selection: ``{"path": CKPTS, "step_regex": ..., "steps": "FIRST:LAST",
    "every": K}`` (``None`` for an option not given). ``switch`` reuses the step regex when
    none is given (and says so), as does a rerun of ``kernels`` on the same directory; the
    report's Reproduce block repeats all four. Each kernel file carries its run's too: a
    ``kernels`` run that rebuilds a damaged or deleted manifest reads it there, with the
    directory of the run whose kernels the store holds (below), and so does
    ``switch`` on a store whose manifest is missing or damaged (:func:`carried_step_regex`),
    which also takes the directory from them when no ``--ckpts`` is given
    (:func:`carried_directory`; a damaged manifest's own records of both win where they agree
    with the kernel files, as for the rebuild: :func:`held_directory`, :func:`held_selection`;
    and its spec, where it is the one they were computed from: :func:`held_spec`).
``imports``
    for a spec that names an import path (``[model] arch`` or ``[data] dataset`` =
    ``"pkg.mod:factory"``), where each module was imported from:
    ``[{"key": "[model] arch", "module": "pkg.mod", "path": "/abs/folder", "installed": false}]``.
    ``path`` is the folder that must be on ``PYTHONPATH`` (``installed`` is true when it is a
    site-packages folder, which needs nothing). ``switch`` and ``distance`` (its noise floor
    rebuilds the model) add a recorded folder to ``sys.path`` when the module cannot be imported
    otherwise (and say so); the report puts ``PYTHONPATH=...`` on the commands that import it.
    Each kernel file carries its run's too, from which ``switch`` on a store whose manifest is
    missing or damaged gets it (:func:`carried_imports`).

A store made before these records has neither: every reader falls back to the old behaviour.

A ``kernels`` run that rebuilds a damaged or deleted manifest gets the records it keeps from the
store's files instead (:func:`rebuilt_remembered`): the selection from the kernel files (each
carries its run's), the evaluation set and the parameter groups from their files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from .. import paths
from .. import store_companions as companions
from ..errors import SpecError
from ..spec import Spec, is_user_dataset, spec_from_dict
from ..store_kernel_files import kernel_files_metadata, rebuilds_manifest
from ..store_manifest import StoreIdentity, embedded_record, new_manifest

__all__ = [
    "carried_directory",
    "carried_imports",
    "carried_run",
    "carried_step_regex",
    "changed_imports",
    "held_directory",
    "held_selection",
    "held_spec",
    "import_paths",
    "imports_record",
    "manifest_json",
    "rebuilt_remembered",
    "recorded_step_regex",
    "selection",
    "selection_record",
    "spec_imports",
    "use_recorded_imports",
]


def selection_record(
    ckpts: Path, step_regex: str | None, steps: str | None, every: int | None
) -> dict[str, Any]:
    """The checkpoint selection of a ``kernels`` run, for the manifest."""
    return {
        "path": str(Path(ckpts).resolve()),
        "step_regex": step_regex,
        "steps": steps,
        "every": every,
    }


def selection(manifest: dict[str, Any]) -> dict[str, Any]:
    """The recorded selection (empty for a store made before it was recorded)."""
    value = manifest.get("selection")
    return value if isinstance(value, dict) else {}


def manifest_json(store: Path) -> dict[str, Any] | None:
    """The store's manifest as the JSON object it holds, unchecked, or None when there is none
    or it cannot be read as one (the command that opens the store says why; the checked
    manifest, or the error, is :func:`conetool.store.read_manifest`'s)."""
    try:
        manifest = json.loads(paths.manifest(store).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def rebuilt_remembered(
    store: Path,
    manifest: dict[str, Any] | None,
    spec: Spec,
    kind: str,
    dtype: str,
    ckpts: Path,
    step_regex: str | None,
) -> tuple[dict[str, Any] | None, str | None, frozenset[str]]:
    """``(manifest, note, recovered)``: the manifest a ``kernels`` run reads its kept options from,
    given ``manifest``, the store's as read (None when it cannot be). Returned as it is unless that
    run rebuilds it (damaged or deleted: :func:`conetool.store_kernel_files.rebuilds_manifest`);
    then the run, which read nothing from it, would forget the options the store recorded until the
    next run: the steps it adds would get no eval kernel or layer file, its step regex would be
    dropped, and another run's checkpoints would not be refused.

    For such a store: a manifest in memory (never written) of the identity the kernel files of
    ``spec``, ``kind`` and ``dtype`` carry, whose kept records come from the store's files:
    ``selection`` from the newest kernel file's metadata, ``eval`` and ``layer_groups`` from
    ``eval.safetensors`` and the layer files (as the rebuild recovers them), ``checkpoints``
    from the source files the kernel files record (``ckpts`` when all lie in it); a record the
    damaged manifest still holds, well typed, wins (``checkpoints`` and ``selection`` when they
    are also the ones the kernel files were computed from: :func:`held_directory`,
    :func:`held_selection`). ``note``: when no ``step_regex`` is given
    and the kernel files were written before they carried their run's selection, that the
    step regex is not known and how to pass it; else None. ``recovered``: the kept records
    (``"eval"``, ``"layer_groups"``) that are the ones the rebuild recovers from their files, and
    says so (:meth:`conetool.store.Store.open_for_writing`'s note): the run need not say them
    again; empty when nothing is rebuilt."""
    if not rebuilds_manifest(store, manifest):
        return manifest, None, frozenset()
    held = manifest or {}
    carried = kernel_files_metadata(store, spec.hash(), kind, dtype)
    probe_hash = carried[0].get("probe_hash", "") if carried else ""
    ident = StoreIdentity(spec.hash(), probe_hash, kind, dtype)
    directory = held_directory(held, carried) or _recorded_directory(carried, ckpts)
    records: dict[str, Any] = {"checkpoints": directory}
    chosen = held_selection(held, carried)
    if chosen is None:
        chosen = _carried_selection(carried)
    if chosen is not None:
        records["selection"] = chosen
    # the records as the rebuild gets them back from their files; one the damaged manifest
    # still holds, well typed, wins
    from_files = {
        "eval": companions.recovered_eval_record(store, spec.probe.seed)[0],
        "layer_groups": companions.recovered_layer_record(store, ident)[0] if carried else None,
    }
    for name, from_file in from_files.items():
        held_record = held.get(name)
        record = held_record if isinstance(held_record, dict) else from_file
        if record is not None:
            records[name] = record
    recovered = frozenset(
        name
        for name, from_file in from_files.items()
        if from_file is not None and records.get(name) == from_file
    )
    note = None
    if step_regex is None and carried and "selection" not in records:
        note = (
            f"{paths.manifest(store)} is rebuilt, and the kernel files in {store} were written "
            "before they carried the checkpoint selection, so the --step-regex that kernels "
            "was given, if any, is not known: the steps are read from the checkpoint names and "
            f"files as without one. If {ckpts} needs one, rerun with --step-regex REGEX, which "
            "records it again"
        )
    return new_manifest(ident, records), note, recovered


def held_directory(held: Mapping[str, Any] | None, carried: list[dict[str, str]]) -> str | None:
    """The checkpoint directory the damaged manifest ``held`` (its JSON object as read; None when
    it cannot be read) still records, when it is well typed (a string) and the one the kernel
    files (their metadata ``carried``, the newest first) were computed from (:func:`_fits`);
    else None. The ``kernels`` run that rebuilds the manifest (:func:`rebuilt_remembered`) and
    ``switch`` reading a damaged one (:func:`carried_directory`) take it over the directory the
    kernel files alone give."""
    directory = (held or {}).get("checkpoints")
    return directory if isinstance(directory, str) and _fits(directory, carried) else None


def held_selection(
    held: Mapping[str, Any] | None, carried: list[dict[str, str]]
) -> dict[str, Any] | None:
    """The checkpoint selection the damaged manifest ``held`` (its JSON object as read; None when
    it cannot be read) still records, when it is well typed (a ``path`` string, a ``step_regex``
    string or None, ``steps`` a string or None, ``every`` a whole number or None: as
    :func:`selection_record` writes it) and consistent with the kernel files (their metadata
    ``carried``, the newest first): its ``path`` is the directory they were computed from
    (:func:`_fits`, as for :func:`held_directory`), and its step regex the one the newest file
    carrying its run's selection records, when one does; else None. The ``kernels`` run that
    rebuilds the manifest (:func:`rebuilt_remembered`) and ``switch`` reading a damaged one
    (:func:`carried_step_regex`) take it over what the kernel files alone give (files written
    before they carried the selection give no step regex)."""
    chosen = (held or {}).get("selection")
    if not isinstance(chosen, dict):
        return None
    path, regex = chosen.get("path"), chosen.get("step_regex")
    steps, every = chosen.get("steps"), chosen.get("every")
    typed = (
        (regex is None or isinstance(regex, str))
        and (steps is None or isinstance(steps, str))
        and (every is None or (isinstance(every, int) and not isinstance(every, bool)))
    )
    if not isinstance(path, str) or not path or not typed or not _fits(path, carried):
        return None
    carried_regex = _regex_of(carried)
    if not isinstance(carried_regex, _Unknown) and carried_regex != (regex or None):
        return None
    return chosen


def held_spec(
    held: Mapping[str, Any] | None, carried: list[dict[str, str]], source: str
) -> tuple[Spec | None, str | None]:
    """``(spec, not_taken)``: the spec the damaged manifest ``held`` (its JSON object as read; None
    when it cannot be read) still records (its ``spec`` table, read as ``source``), when it is
    the one the kernel files that decide the checkpoint directory (their metadata ``carried``,
    the newest first: those of the spec most of them have, as :func:`carried_directory` takes
    them without ``--spec``) were computed from: its hash is theirs. Else ``(None, why)``: what
    the manifest records instead (not a spec, or another one), or ``(None, None)`` when it
    records no spec table. ``switch`` takes it where no ``--spec`` and no ``CKPTS/conetool.toml``
    give the spec, as it takes a readable manifest's."""
    record = (held or {}).get("spec")
    if not isinstance(record, dict):
        return None, None
    deciding = _decided(carried, _directory_of, None).deciding
    deciding = deciding or _decided(carried, _spec_hash_of, None).deciding
    theirs = deciding[0].get("spec_hash") if deciding else None
    try:
        spec = spec_from_dict(record, source=source)
    except SpecError as exc:
        return None, f"its spec is not one conetool reads ({exc})"
    if theirs is None:
        return None, "no kernel file of it records the spec it was computed from"
    if spec.hash() != theirs:
        return None, (
            f"its spec (hash {spec.hash()}) is not the one its kernel files were computed from "
            f"(hash {theirs})"
        )
    return spec, None


def _spec_hash_of(carried: list[dict[str, str]]) -> str | _Unknown:
    """The spec hash the kernel files ``carried`` (one spec's) were computed from; :data:`_UNKNOWN`
    when they record none."""
    found = carried[0].get("spec_hash") if carried else None
    return found if found else _UNKNOWN


def _fits(directory: str, carried: list[dict[str, str]]) -> bool:
    """Whether ``directory``, the checkpoint directory a damaged manifest still records, is the
    one its kernel files (their metadata ``carried``, the newest first) were computed from: the
    directory the newest file carrying its run's selection records, when one does, and the
    folder (or the one file) every source they list lies in. A manifest damaged by hand may
    hold anything there; a guess from the sources alone (files written before they carried the
    selection) may name one step's folder: the record wins over it."""
    place = Path(directory)
    given = _selection_path(carried)
    if given is not None and Path(given) != place:
        return False
    return all(source.is_relative_to(place) for source in _sources(carried))


def _recorded_directory(carried: list[dict[str, str]], ckpts: Path) -> str:
    """The checkpoint directory whose files the kernel files (their ``carried`` metadata, the
    newest first) were computed from: the directory ``kernels`` was given, as the newest file
    carrying its run's selection records it; for files written before they carried it,
    ``ckpts`` when all their sources lie in it, else the folder all lie in
    (:func:`_sources_folder`)."""
    given = _selection_path(carried)
    if given is not None:
        return given
    run = Path(ckpts).resolve()
    sources = _sources(carried)
    if all(source.is_relative_to(run) for source in sources):
        return str(run)
    return _sources_folder(sources)


def carried_directory(
    store: Path,
    carried: list[dict[str, str]],
    spec_hash: str | None = None,
    held: Mapping[str, Any] | None = None,
) -> tuple[str | None, str | None, bool]:
    """``(directory, disagreement, held_it)``: the checkpoint directory ``kernels`` read, for the
    store ``store`` whose manifest (which records it) is missing or damaged, from the metadata
    ``carried`` of its kernel files (of any identity, the newest first:
    :func:`conetool.store_kernel_files.kernel_file_headers`). The files that decide it are those
    of the spec ``spec_hash`` (the one switch runs with: ``--spec``), or without one those of the
    spec most files were made with (the store's run; stray files of another run are fewer), the
    newest group on a tie; files of another spec only when these record none
    (:func:`_decided`). From the deciding files: the directory the newest file carrying its
    run's selection records, else (files written before they carried it) the folder all their
    sources lie in (:func:`_sources_folder`); None when no kernel file records a source. The
    directory the damaged manifest ``held`` (its JSON object as read, None for none) still
    records wins when it is the one the deciding files were computed from, as for the ``kernels``
    run that rebuilds it (:func:`held_directory`): ``held_it`` says so. ``disagreement``: when
    kernel files of another spec record another directory, which files decided and which record
    what (None when they all agree)."""
    why = "the spec given by --spec" if spec_hash is not None else "the spec most of them have"
    decided = _decided(carried, _directory_of, spec_hash)
    kept = held_directory(held, decided.deciding)
    if kept is not None:
        others = [(value, files) for value, files in decided.others if value != kept]
        decided = replace(decided, value=kept, others=others)
    differ = _disagreement(store, "checkpoint directory", decided, why)
    return decided.value, differ, kept is not None


def carried_run(carried: list[dict[str, str]], spec_hash: str) -> dict[str, Any] | None:
    """What a manifest records of the run a store's kernels were computed from, as the kernel
    files of the spec ``spec_hash`` carry it (their metadata ``carried``, the newest first: the
    store's manifest is missing or damaged): ``{"steps": {step: its record (source files, size,
    fingerprint)}, "checkpoints": the directory kernels was given, or None}``, the newest file's
    record of a step where several carry one; None when none of them carries a record (no kernel
    file of that spec, or files written before they carried one). Header metadata only: no
    kernel is read."""
    steps: dict[str, dict[str, Any]] = {}
    own = [meta for meta in carried if meta.get("spec_hash") == spec_hash]
    for meta in own:
        found = embedded_record(meta)
        if found is not None and found[0].isdigit() and isinstance(found[1], dict):
            steps.setdefault(found[0], found[1])
    if not steps:
        return None
    return {"steps": steps, "checkpoints": _selection_path(own)}


def _directory_of(carried: list[dict[str, str]]) -> str | _Unknown:
    """The directory the kernel files (their metadata ``carried``, the newest first) record:
    the directory ``kernels`` was given, else the folder all their sources lie in;
    :data:`_UNKNOWN` when none records a source."""
    given = _selection_path(carried)
    if given is not None:
        return given
    sources = _sources(carried)
    return _sources_folder(sources) if sources else _UNKNOWN


V = TypeVar("V")


@dataclass(frozen=True)
class _Decided(Generic[V]):
    """What kernel files record (a directory, a step regex, the imports), as :func:`_decided`
    takes it: ``value`` from the files ``deciding`` (their metadata; empty when no file records
    it), ``own`` whether those are of the spec in use, ``others`` each other spec's files that
    record another value, with that value."""

    value: V | None
    deciding: list[dict[str, str]]
    own: bool
    others: list[tuple[V | None, list[dict[str, str]]]]


class _Unknown:
    """What a reader of kernel files returns when the files record nothing of it."""


_UNKNOWN = _Unknown()


def _decided(
    carried: list[dict[str, str]],
    read: Callable[[list[dict[str, str]]], V | _Unknown | None],
    spec_hash: str | None,
) -> _Decided[V]:
    """What the kernel files ``carried`` (the newest first) record, as ``read`` reads it from a
    group of them (:data:`_UNKNOWN`: they record nothing of it; None: they record that there is
    none), taken from the files of the spec in use: ``spec_hash``, or without one the spec most
    files have (the newest group on a tie). When those files record nothing, from the newest
    other spec's files that do (the old rule, newest first, now a fallback)."""
    groups = _by_spec(carried)
    if spec_hash is None and groups:
        spec_hash = max(groups, key=lambda h: len(groups[h]))  # first of the largest: newest
    order = [spec_hash] if spec_hash in groups else []
    order += [h for h in groups if h != spec_hash]
    for h in order:
        value = read(groups[h])
        if isinstance(value, _Unknown):
            continue
        others = []
        for other in groups:
            said = read(groups[other]) if other != h else _UNKNOWN
            if not isinstance(said, _Unknown) and said != value:
                others.append((said, groups[other]))
        return _Decided(value, groups[h], h == spec_hash, others)
    return _Decided(None, [], False, [])


def _by_spec(carried: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The kernel file metadata ``carried`` (the newest first) by spec hash, each group's files
    and the groups in that order."""
    groups: dict[str, list[dict[str, str]]] = {}
    for meta in carried:
        groups.setdefault(str(meta.get("spec_hash", "")), []).append(meta)
    return groups


def _disagreement(store: Path, what: str, decided: _Decided[str], why: str) -> str | None:
    """The sentence saying which kernel files of ``store`` decided ``what`` (``why``: of which
    spec, when ``decided.own``) and what the other specs' files record, when they disagree."""
    if not decided.others:
        return None
    whose = why if decided.own else f"the newest that record one: no file of {why} does"
    others = "; ".join(
        f"{_files(store, files)} (spec {files[0].get('spec_hash', '?')}) record {_shown(value)}"
        for value, files in decided.others
    )
    return (
        f"the kernel files of {store} are of more than one spec and record more than one "
        f"{what}: {_shown(decided.value)} is taken from {_files(store, decided.deciding)} (spec "
        f"{decided.deciding[0].get('spec_hash', '?')}, {whose}), while {others}"
    )


def _shown(value: str | None) -> str:
    return "none" if value is None else f"'{value}'"


def _files(store: Path, files: list[dict[str, str]], shown: int = 3) -> str:
    """The kernel files of ``store`` whose metadata is ``files`` (a few, then a count)."""
    names = []
    for meta in files:
        step = meta.get("step", "")
        names.append(str(paths.kernel(store, int(step))) if step.isdigit() else "?")
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _selection_path(carried: list[dict[str, str]]) -> str | None:
    """The directory ``kernels`` was given, as the newest of the ``carried`` metadata that
    records its run's selection records it (None: no file records one)."""
    chosen = _carried_selection(carried)
    path = chosen.get("path") if chosen is not None else None
    return path if isinstance(path, str) and path else None


def _sources(carried: list[dict[str, str]]) -> list[Path]:
    """The source checkpoint files the kernel files' records list."""
    sources = []
    for meta in carried:
        found = embedded_record(meta)
        listed = found[1].get("source") if found is not None else None
        if isinstance(listed, list):
            sources += [Path(s) for s in listed if isinstance(s, str)]
    return sources


def _sources_folder(sources: list[Path]) -> str:
    """The folder all ``sources`` (one or more) lie in, a Hugging Face ``checkpoint-N/`` folder
    counting as its run's (one stored step is no run of its own). A guess for kernel files that
    do not record the directory ``kernels`` was given: one step's own folder (``best/`` of
    ``best/model.safetensors``) is taken for the run."""
    return os.path.commonpath([str(_run_folder(source)) for source in sources])


def _run_folder(source: Path) -> Path:
    """The run folder of a checkpoint file: its folder, or for a file in a Hugging Face
    ``checkpoint-N/`` folder (``model.safetensors``, a shard) the folder that holds that one."""
    folder = source.parent
    return folder.parent if paths.is_hf_checkpoint_folder(folder.name) else folder


def _carried_selection(carried: list[dict[str, str]]) -> dict[str, Any] | None:
    """The checkpoint selection the newest of the ``carried`` kernel file metadata that carries
    one carries (the run that wrote it; None: files written before they carried it)."""
    found = (_json(meta.get("selection")) for meta in carried)
    return next((value for value in found if isinstance(value, dict)), None)


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None


def recorded_step_regex(
    manifest: dict[str, Any] | None, given: str | None, *, path: Path | None = None
) -> tuple[str | None, str | None]:
    """``(step_regex, note)``: ``given`` when there is one, else the one ``kernels`` recorded
    (with a note saying so; with ``path``, only when recorded for that directory), else None."""
    if given is not None or manifest is None:
        return given, None
    chosen = selection(manifest)
    regex = chosen.get("step_regex")
    if not isinstance(regex, str) or not regex:
        return None, None
    if path is not None and chosen.get("path") != str(Path(path).resolve()):
        return None, None
    return regex, (
        f"using --step-regex '{regex}', recorded in the store by conetool kernels "
        "(pass --step-regex to use another)"
    )


def carried_step_regex(
    store: Path,
    given: str | None,
    carried: list[dict[str, str]],
    *,
    spec_hash: str | None = None,
    manifest_is: str = "missing",
    held: Mapping[str, Any] | None = None,
) -> tuple[str | None, str | None, str | None]:
    """``(step_regex, note, disagreement)`` for the store ``store`` whose manifest is missing
    (deleted) or damaged (``manifest_is``, as the note says it), from the metadata ``carried`` of
    its kernel files (the newest first: :func:`conetool.store_kernel_files.kernel_file_headers`):
    ``given`` when there is one, else the step regex of the checkpoint selection that the newest
    kernel file of the spec ``spec_hash`` (the one switch runs with) carrying one carries (each
    carries its run's, as :func:`rebuilt_remembered` reads it for the ``kernels`` run that rebuilds
    the manifest; files of another spec only when none of that spec carries one: :func:`_decided`),
    with a note saying so; else None (no kernel file, none given to kernels, or files written before
    they carried the selection). The selection the damaged manifest ``held`` (its JSON object as
    read, None for none) still records wins when it is consistent with the files that decide the
    checkpoint directory (:func:`held_selection`; those of the run whose kernels the store holds),
    as for the ``kernels`` run that rebuilds it, and the note says so. ``disagreement``: when kernel
    files of another spec record another, which files decided and which record what
    (:func:`carried_directory`'s)."""
    if given is not None:
        return given, None, None
    decided = _decided(carried, _regex_of, spec_hash)
    run = _decided(carried, _directory_of, spec_hash)  # the files of the run the store holds
    kept = held_selection(held, run.deciding)
    if kept is not None:
        decided = _held_decided(kept.get("step_regex") or None, run, carried, _regex_of)
    regex = decided.value
    differ = _disagreement(store, "step regex", decided, "the spec switch runs with")
    if regex is None:  # none carried, or the run was given none
        return None, None, differ
    where = (
        f"recorded in {store}'s damaged {paths.MANIFEST_NAME}, the one its kernel files were "
        "computed from ("
        if kept is not None
        else f"recorded by conetool kernels in the kernel files of {store} (its "
        f"{paths.MANIFEST_NAME}, which records it, is {manifest_is}; "
    )
    return regex, f"using --step-regex '{regex}', {where}pass --step-regex to use another)", differ


def _held_decided(
    value: str | None,
    run: _Decided[str],
    carried: list[dict[str, str]],
    read: Callable[[list[dict[str, str]]], str | _Unknown | None],
) -> _Decided[str]:
    """``value``, which a damaged manifest records consistently with the files ``run.deciding``,
    as a :class:`_Decided` of those files: ``others``, the other specs' files (of ``carried``)
    that record another value, as ``read`` reads it."""
    own = run.deciding[0].get("spec_hash", "") if run.deciding else None
    others = []
    for spec_hash, files in _by_spec(carried).items():
        said = read(files) if spec_hash != own else _UNKNOWN
        if not isinstance(said, _Unknown) and said != value:
            others.append((said, files))
    return _Decided(value, run.deciding, run.own, others)


def _regex_of(carried: list[dict[str, str]]) -> str | _Unknown | None:
    """The step regex the newest of the kernel files ``carried`` that carries its run's
    selection records (None: that run was given none; :data:`_UNKNOWN`: no file carries one)."""
    chosen = _carried_selection(carried)
    if chosen is None:
        return _UNKNOWN
    regex = chosen.get("step_regex")
    return regex if isinstance(regex, str) and regex else None


def carried_imports(carried: list[dict[str, str]], spec_hash: str) -> dict[str, Any]:
    """The ``imports`` record a store whose manifest (which records it) is missing or damaged
    keeps in its kernel files (their metadata ``carried``, the newest first: each carries its
    run's), as a manifest for :func:`use_recorded_imports`: ``{"imports": [...]}`` from the
    newest file of the spec ``spec_hash`` (the one switch runs with) that carries one, else from
    the newest other spec's files that do (whose records of other modules it leaves alone), as
    the checkpoint directory and the step regex are decided (:func:`_decided`); ``{}`` when none
    carries one (files written before they carried it)."""
    record = _decided(carried, _imports_of, spec_hash).value
    return {} if record is None else {"imports": record}


def _imports_of(carried: list[dict[str, str]]) -> list[Any] | _Unknown:
    """The ``imports`` record the newest of the kernel files ``carried`` that carries one
    carries (:data:`_UNKNOWN`: none does)."""
    found = (_json(meta.get("imports")) for meta in carried)
    return next((record for record in found if isinstance(record, list)), _UNKNOWN)


def spec_imports(spec: Spec) -> list[tuple[str, str]]:
    """``(key, module)`` for each import path the spec names."""
    found = []
    if ":" in spec.model.arch:
        found.append(("[model] arch", spec.model.arch.partition(":")[0].strip()))
    if is_user_dataset(spec.data.dataset):
        found.append(("[data] dataset", spec.data.dataset.partition(":")[0].strip()))
    return found


def imports_record(spec: Spec) -> list[dict[str, Any]]:
    """Where each of the spec's import-path modules is imported from now (after the model and
    data were built, so that the import already succeeded); a module not found is left out."""
    records = []
    for key, module in spec_imports(spec):
        folder = _import_root(module)
        if folder is None:
            continue
        record = {
            "key": key,
            "module": module,
            "path": str(folder),
            "installed": _installed(folder),
        }
        digest = _module_digest(module)
        if digest is not None:
            record["sha256"] = digest
        records.append(record)
    return records


def changed_imports(manifest: dict[str, Any] | None, spec: Spec) -> list[str]:
    """A warning for each of the spec's modules whose file is not the one ``conetool kernels``
    imported (its recorded ``sha256``): the model or data built now may not be the ones the
    kernels were computed with. Call it after :func:`use_recorded_imports`; a record without a
    digest (a store made before conetool recorded it) says nothing."""
    if manifest is None:
        return []
    wanted = {module for _, module in spec_imports(spec)}
    warnings = []
    for record in _imports(manifest):
        module, recorded = record.get("module"), record.get("sha256")
        if module not in wanted or not isinstance(recorded, str):
            continue
        now = _module_digest(str(module))
        if now is not None and now != recorded:
            warnings.append(
                f"the module '{module}' ({record.get('key')}, {_module_file(str(module))}) "
                "changed since conetool kernels imported it: what is built from it now may not "
                "be what the kernels were computed with. Restore the file as it was, or compute "
                "the kernels again (into a new store, or with --overwrite)"
            )
    return warnings


def _module_file(module: str) -> str | None:
    """The file ``module`` is imported from now; ``None`` when it has none."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return found.origin if found is not None and found.has_location else None


def _module_digest(module: str) -> str | None:
    """SHA-256 of the file ``module`` is imported from (a package: its ``__init__.py``)."""
    origin = _module_file(module)
    if origin is None:
        return None
    try:
        return hashlib.sha256(Path(origin).read_bytes()).hexdigest()
    except OSError:
        return None


def import_paths(manifest: dict[str, Any]) -> list[str]:
    """The folders the recorded imports need on ``PYTHONPATH`` (installed ones need none)."""
    folders: list[str] = []
    for record in _imports(manifest):
        if not record.get("installed") and record.get("path") not in folders:
            folders.append(str(record["path"]))
    return folders


def use_recorded_imports(manifest: dict[str, Any] | None, spec: Spec) -> list[str]:
    """Put on ``sys.path`` the recorded folder of each of the spec's modules that cannot be
    imported now; one note per folder added. Nothing changes for a module that imports as it
    is (the user's ``PYTHONPATH`` wins) or when the store records nothing."""
    if manifest is None:
        return []
    notes = []
    wanted = {module for _, module in spec_imports(spec)}
    for record in _imports(manifest):
        module, folder = record.get("module"), record.get("path")
        if module not in wanted or not isinstance(folder, str) or _findable(str(module)):
            continue
        if not Path(folder).is_dir() or folder in sys.path:
            continue
        sys.path.insert(0, folder)
        importlib.invalidate_caches()
        if _findable(str(module)):
            notes.append(
                f"imported '{module}' ({record.get('key')}) from {folder}, where conetool "
                f"kernels found it (set PYTHONPATH to import it from elsewhere)"
            )
        else:
            sys.path.remove(folder)
    return notes


def _imports(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    value = manifest.get("imports")
    if not isinstance(value, list):
        return []
    return [r for r in value if isinstance(r, dict) and isinstance(r.get("path"), str)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _import_root(module: str) -> Path | None:
    """The ``sys.path`` folder ``module`` (dotted) is imported from: its file's folder, less one
    level per dot (and one more for a package's ``__init__.py``)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    if found.origin and found.has_location:
        where = Path(found.origin).resolve()
        levels = module.count(".") + (2 if where.name.startswith("__init__.") else 1)
    elif found.submodule_search_locations:  # a namespace package
        where = Path(next(iter(found.submodule_search_locations))).resolve()
        levels = module.count(".") + 1
    else:
        return None
    return where.parents[levels - 1] if len(where.parents) >= levels else None


def _installed(folder: Path) -> bool:
    """Whether ``folder`` is one of Python's own site-packages folders (no PYTHONPATH needed)."""
    own = {sysconfig.get_paths().get(k) for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    try:
        own.update(site.getsitepackages())
        own.add(site.getusersitepackages())
    except AttributeError:  # some virtualenv builds lack these
        pass
    resolved = {str(Path(p).resolve()) for p in own if p}
    return str(folder) in resolved
