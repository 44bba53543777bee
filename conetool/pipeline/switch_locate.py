"""Where a switch sweep's checkpoints and spec come from: ``--ckpts`` and ``--spec`` first, then
the store's manifest, and for a store whose manifest is missing or damaged (one ``kernels``
rebuilds) the records its kernel files carry, with what a damaged manifest still records where
they agree (:mod:`conetool.pipeline.remembered`). Switch leaves the manifest as it is: ``kernels``
owns it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import paths
from ..choices import path_argument
from ..errors import CheckpointError, SpecError, StoreError
from ..folder_roles import checkpoint_contents
from ..progress import Said
from ..spec import Spec, spec_from_dict
from ..store import kernel_file_headers, read_manifest, rebuilds_manifest
from .remembered import carried_directory, held_spec, manifest_json
from .resolve import resolve_spec
from .switch_recipe import recorded_written


@dataclass(frozen=True)
class Located:
    """Where a sweep's checkpoints and spec come from: ``manifest`` is the store's (None when
    there is none, or none to read), ``lost`` says how a manifest whose records the kernel files
    stand in for is lost (``"missing"``, ``"damaged"``; None otherwise), ``carried`` the kernel
    files' metadata read then (:func:`conetool.store.kernel_file_headers`, read once; empty
    otherwise), ``held`` a damaged manifest's JSON object as read (None: none, or not JSON),
    whose records switch takes where the kernel files agree (the checkpoint directory, the
    selection's step regex, the spec: :mod:`conetool.pipeline.remembered`). What switch says of
    what it took from the store is said by :func:`locate` as it comes."""

    ckpts: Path
    spec: Spec
    manifest: dict[str, Any] | None
    lost: str | None
    carried: list[dict[str, str]]
    held: dict[str, Any] | None = None
    #: the spec file ``conetool kernels`` read, when ``spec`` is the manifest's record of it
    #: (which also says which keys that file wrote); else None
    kernels_spec: str | None = None
    #: what :func:`locate` said of the manifest being lost (where it took the run and spec from
    #: instead, and that ``kernels`` rebuilds it): true of the store as the sweep found it only
    #: (``conetool report``, which refuses the store until then, is made after the rebuild)
    of_lost_manifest: tuple[str, ...] = ()


def locate(
    store: Path, ckpts: str | Path | None, spec: Spec | str | Path | None, said: Said
) -> Located:
    """The checkpoint directory and spec: flags first, then the store's manifest, and for a
    store whose manifest is missing or damaged (one ``kernels`` rebuilds: kernel files without
    it, or an unreadable one in a store) the directory ``kernels`` read as its kernel files
    record it. The spec: ``--spec``, else ``CKPTS/conetool.toml``, else the manifest's, a damaged
    one's only where it is the one the kernel files were computed from
    (:func:`~conetool.pipeline.remembered.held_spec`; said in a note). Switch leaves the
    manifest as it is (``kernels`` owns it). ``said``: where what it took from the store is said,
    as it comes (a damaged manifest's warning before a spec that then cannot be read)."""
    manifest_path = paths.manifest(store)
    of_lost: list[str] = []  # what it says of a lost manifest (Located.of_lost_manifest)
    manifest, lost = _store_manifest(store)
    carried = kernel_file_headers(store) if lost is not None else []
    # a damaged manifest's records, taken where the kernel files agree (as kernels keeps them)
    held = manifest_json(store) if lost == "damaged" else None
    if ckpts is not None:
        ckpts = path_argument(ckpts, "--ckpts", "the run's checkpoint directory")
    elif manifest is not None:
        ckpts = manifest.get("checkpoints")
        if not isinstance(ckpts, str):
            raise StoreError(
                f"{manifest_path} does not name its checkpoint directory, so it cannot say "
                "where the checkpoints are: pass --ckpts CKPTS (and --spec SPEC unless "
                f"CKPTS/conetool.toml exists), or rebuild it: conetool kernels CKPTS --store "
                f"{store} rebuilds the manifest from the kernel files."
            )
        if not Path(ckpts).exists():  # a directory, or the one file kernels was given
            raise CheckpointError(
                f"the checkpoint directory that kernels read, {ckpts} (recorded in {store}/"
                f"{paths.MANIFEST_NAME}), is not there any more. If the run moved, pass its new "
                "place: --ckpts DIR."
            )
    else:
        # the kernel files of the spec switch runs with decide, when it is given (else the
        # directory's conetool.toml gives it, and the spec most files have decides)
        if spec is not None:
            spec = resolve_spec(Path(store), spec)  # a given spec: the directory plays no part
        ckpts, differ, held_it = _carried_checkpoints(
            store, lost, carried, None if spec is None else spec.hash(), held
        )
        where = (
            f"recorded in {store}'s damaged {paths.MANIFEST_NAME}, the one its kernel files were "
            "computed from ("
            if held_it
            else f"recorded by conetool kernels in the kernel files of {store} (its "
            f"{paths.MANIFEST_NAME}, which records it, is {lost}; "
        )
        taken = f"using the checkpoint directory {ckpts}, {where}pass --ckpts to use another)"
        of_lost.append(taken)
        said.note(taken)
        if differ:  # a guess between runs: to check
            said.warn(
                f"{sentence(differ)}. Pass --ckpts CKPTS (and --spec SPEC unless "
                "CKPTS/conetool.toml exists) to use another"
            )
    ckpts_dir = Path(ckpts)
    if lost == "damaged":
        damaged = (
            f"{manifest_path} is damaged: switch read what it needs from the kernel files of "
            f"{store} (each carries its own record) and left it as it is; conetool kernels "
            f"{ckpts_dir} --store {store} rebuilds it from them (the other commands that read "
            "the store refuse it until then)"
        )
        of_lost.append(damaged)
        said.warn(damaged)
    recorded_spec = manifest.get("spec") if manifest is not None else None
    not_taken = None  # why a damaged manifest's spec is not taken
    kernels_spec: str | None = None
    if spec is None and not paths.spec(ckpts_dir).is_file():
        if isinstance(recorded_spec, dict):
            spec = spec_from_dict(recorded_spec, source=f"{manifest_path} (spec)")
            record = manifest or {}
            spec = replace(spec, written=recorded_written(record))
            kernels_spec = str(record.get("spec_source") or "the spec conetool kernels read")
        elif held is not None:  # taken where it is the one the kernel files were computed from
            spec, not_taken = held_spec(held, carried, f"{manifest_path} (spec)")
            if spec is not None:
                of_lost.append(
                    f"using the spec recorded in {store}'s damaged {paths.MANIFEST_NAME}, the one "
                    f"its kernel files were computed from ({ckpts_dir} has no "
                    f"{paths.SPEC_NAME}; pass --spec to use another)"
                )
                said.note(of_lost[-1])
    try:
        resolved = resolve_spec(ckpts_dir, spec)
    except SpecError as exc:
        if not_taken is None:
            raise
        raise SpecError(
            f"{store}'s damaged {paths.MANIFEST_NAME} records a spec, but it is not used: "
            f"{not_taken}. {exc}"
        ) from exc
    return Located(ckpts_dir, resolved, manifest, lost, carried, held, kernels_spec, tuple(of_lost))


def _store_manifest(store: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(manifest, lost)``: the store's manifest as read, or None; ``lost`` is ``"missing"``
    for kernel files without one (deleted) and ``"damaged"`` for one that cannot be read or is
    not whole, in a store: those ``kernels`` rebuilds from the kernel files
    (:func:`conetool.store.rebuilds_manifest`), whose records switch reads instead; else None
    (no store there yet). Another tool's file, or a newer conetool's manifest, is refused with
    its reason, as ``kernels`` refuses it."""
    path = paths.manifest(store)
    if not path.is_file():
        return None, "missing" if rebuilds_manifest(store) else None
    try:
        return read_manifest(path), None
    except StoreError:
        if not rebuilds_manifest(store):
            raise
        return None, "damaged"


def sentence(text: str) -> str:
    """``text`` with its first letter upper-case (a clause said as a sentence)."""
    return text[:1].upper() + text[1:]


def _carried_checkpoints(
    store: Path,
    lost: str | None,
    carried: list[dict[str, str]],
    spec_hash: str | None,
    held: dict[str, Any] | None = None,
) -> tuple[str, str | None, bool]:
    """``(directory, disagreement, held_it)``: the checkpoint directory ``kernels`` read, as the
    kernel files of ``store`` record it (their metadata ``carried``, those of the spec
    ``spec_hash`` first when it is given: :func:`~conetool.pipeline.remembered.carried_directory`;
    its manifest is ``lost``: missing, damaged, or None for no store there yet), or as its
    damaged manifest's JSON object ``held`` still records it where they agree (``held_it``),
    when it is still there, and which files decided it when those of another spec record
    another; else the error saying what to pass."""
    run = checkpoint_contents(store) if lost is None else None
    if run is not None:
        raise StoreError(
            f"store {store} has no {paths.MANIFEST_NAME} to say where the checkpoints are: it is "
            f"a checkpoint directory (it holds {run}), not a store. Pass it as --ckpts, and --store the "
            f"folder conetool kernels wrote ({paths.DEFAULT_STORE} unless it was given another) "
            f"or a new one: conetool switch --ckpts {store} --store {paths.DEFAULT_STORE} ..."
        )
    if lost is None:
        raise StoreError(
            f"store {store} has no {paths.MANIFEST_NAME} to say where the checkpoints are. "
            "Pass --ckpts CKPTS (and --spec SPEC unless CKPTS/conetool.toml exists), or run "
            f"conetool kernels CKPTS --store {store} first."
        )
    recorded, differ, held_it = carried_directory(store, carried, spec_hash, held)
    said = f"store {store}'s {paths.MANIFEST_NAME}, which says where the checkpoints are, is {lost}"
    rebuild = f"conetool kernels CKPTS --store {store} rebuilds the manifest from the kernel files"
    if recorded is None:
        raise StoreError(
            f"{said}, and no kernel file of it records where they are. Pass --ckpts CKPTS (and "
            f"--spec SPEC unless CKPTS/conetool.toml exists); {rebuild}."
        )
    if not Path(recorded).exists():
        raise CheckpointError(
            f"{said}, and the checkpoint directory its kernel files record (the one conetool "
            f"kernels read), {recorded}, is not there any more. If the run moved, pass its new "
            f"place: --ckpts CKPTS (and --spec SPEC unless CKPTS/conetool.toml exists); "
            f"{rebuild}." + (f" ({sentence(differ)}.)" if differ else "")
        )
    return recorded, differ, held_it
