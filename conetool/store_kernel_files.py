"""The store's kernel files read by their headers, without opening the store: the files of
``STORE/kernels/``, their metadata (which identity made each, the record it carries), and whether
:meth:`conetool.store.Store.open_for_writing` rebuilds a damaged or deleted ``manifest.json`` from
them. The ``kernels`` run that rebuilds a manifest reads them, and the step regex the kernel files
carry, before it opens the store (:func:`rebuilds_manifest`, :func:`kernel_files_metadata`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import paths
from .errors import StoreError
from .store_manifest import (
    StepRecord,
    StoreIdentity,
    checked_manifest,
    file_metadata,
    made_with,
    metadata_made_with,
    read_manifest,
    same_kernel_record,
)

__all__ = [
    "clearing_stopped",
    "damaged",
    "is_kernel_of",
    "kernel_file_headers",
    "kernel_files",
    "kernel_files_made_with",
    "kernel_files_metadata",
    "rebuilds_manifest",
]


def is_kernel_of(meta: Mapping[str, str], ident: StoreIdentity, record: StepRecord) -> bool:
    """Whether a kernel file's metadata ``meta`` says it is the kernel ``record`` describes, in a
    store of ``ident`` (its identity, and the record it carries: a file written before kernel
    files carried one is judged by its identity alone)."""
    if not made_with(meta, ident):
        return False
    if "record" not in meta:
        return True
    try:
        return same_kernel_record(json.loads(meta["record"]), asdict(record))
    except json.JSONDecodeError:
        return False


def rebuilds_manifest(root: str | Path, read: Mapping[str, Any] | None = None) -> bool:
    """Whether :meth:`~conetool.store.Store.open_for_writing` (without ``overwrite``) rebuilds
    the manifest of the store ``root`` from its files: it is damaged (unreadable, or not whole)
    in a directory that holds a store, or it is missing beside kernel files. ``read``: the
    manifest's JSON object as the caller read it, checked here instead of reading it again."""
    root = Path(root)
    path = paths.manifest(root)
    if not path.is_file():
        return bool(kernel_files(root))
    try:
        read_manifest(path) if read is None else checked_manifest(path, dict(read))
    except StoreError as exc:
        return damaged(exc, root)
    return False


def kernel_files_metadata(
    root: str | Path, spec_hash: str, kind: str, dtype: str
) -> list[dict[str, str]]:
    """The metadata of each readable kernel file of the store ``root`` made with ``spec_hash``,
    ``kind`` and ``dtype`` (of any probe set), the newest written first (header only): what a
    manifest about to be rebuilt can still tell before the probe set is drawn."""
    return [
        meta
        for meta in kernel_file_headers(root)
        if made_with(meta, StoreIdentity(spec_hash, meta.get("probe_hash", ""), kind, dtype))
    ]


def kernel_file_headers(root: str | Path) -> list[dict[str, str]]:
    """The metadata of each readable kernel file of the store ``root``, whatever it was made
    with, the newest written first (header only)."""
    found = []
    for path in kernel_files(Path(root)):
        meta = file_metadata(path)
        if meta is None:
            continue
        try:
            written = path.stat().st_mtime_ns
        except OSError:
            continue
        found.append((written, meta))
    return [meta for _, meta in sorted(found, key=lambda pair: -pair[0])]


def damaged(exc: StoreError, root: Path) -> bool:
    """Whether a manifest that :func:`~conetool.store_manifest.read_manifest` refused with
    ``exc`` is a damaged one of the store ``root``, which a writer rebuilds from the kernel files
    (a cause, in a folder that looks like a store), not another tool's file or a newer format's
    (no cause)."""
    return isinstance(exc.__cause__, Exception) and _looks_like_store(root)


def _looks_like_store(root: Path) -> bool:
    return (Path(root) / paths.KERNELS_DIR).is_dir() or paths.probe(root).is_file()


def kernel_files(root: Path) -> list[Path]:
    """The kernel files of the store ``root`` (``kernels/step_*.safetensors``), sorted. None
    where a ``kernels --overwrite`` was stopped while it cleared the store
    (:func:`clearing_stopped`): those files are the replaced store's, which is gone."""
    folder = Path(root) / paths.KERNELS_DIR
    if not folder.is_dir() or clearing_stopped(root):
        return []
    # by name: the order of the paths themselves (one folder's), without comparing Path objects
    return sorted(folder.glob("step_*.safetensors"), key=_path_order)


def clearing_stopped(root: Path) -> bool:
    """Whether a clearing (:func:`conetool.store_clearing.clear`) was stopped after it moved the
    replaced store's ``manifest.json`` aside (into ``STORE/.conetool-replaced-*``) and before a
    new one was written: the conetool files left in ``root`` are the replaced store's, which no
    command may read (the next writer removes them:
    :func:`conetool.store_clearing.finish_clearing`)."""
    manifest = paths.manifest(root)
    return not (manifest.is_symlink() or manifest.exists()) and bool(paths.replaced_folders(root))


def _path_order(path: Path) -> str:
    """What orders paths of one folder as ``Path`` objects compare: their names, lower-cased
    on Windows (whose paths compare case-insensitively)."""
    return path.name.lower() if os.name == "nt" else path.name


def kernel_files_made_with(root: Path, ident: StoreIdentity) -> dict[Path, dict[str, str] | None]:
    """Each kernel file of store ``root`` (sorted) -> its metadata when it is readable and made
    with ``ident``, else None (:func:`~conetool.store_manifest.metadata_made_with`; header only)."""
    return {path: metadata_made_with(path, ident) for path in kernel_files(root)}
