"""A checkpoint directory and a store told apart, for the messages of a folder given in the
other's place: ``--store CKPTS`` (the analysis commands, ``switch``, ``kernels CKPTS --store
CKPTS``) and ``kernels STORE`` (or ``kernels STORE/kernels``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import paths
from .step_folders import read_as_one_step

__all__ = ["checkpoint_contents", "same_folder", "store_holding"]

#: The file endings ``conetool.checkpoints`` reads as checkpoints (its ``CHECKPOINT_SUFFIXES``,
#: which imports PyTorch; ``tests/test_folder_roles.py`` keeps the two equal).
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

#: The folders of a store whose files are named like checkpoints (``step_002000.safetensors``).
_KERNEL_FOLDERS = (paths.KERNELS_DIR, paths.EVAL_KERNELS_DIR, paths.LAYER_KERNELS_DIR)


def checkpoint_contents(folder: Path) -> str | None:
    """What makes ``folder`` a checkpoint directory, said in a few words (``"conetool.toml and
    25 checkpoint files such as step_000000.safetensors"``), or None when it holds neither a spec
    nor checkpoint files nor folders read as one checkpoint each (``checkpoint-N/``, a plain
    loop's ``step_N/model.pt``: :func:`conetool.step_folders.read_as_one_step`), or cannot be
    listed. A store's own files (its probe and evaluation sets) and optimizer states are not
    counted."""
    try:
        with os.scandir(folder) as entries:
            listed = [(e.name, e.is_dir(), e.is_file()) for e in entries]
    except OSError:
        return None
    store_files = (paths.PROBE_NAME, paths.EVAL_NAME)
    spec = any(name == paths.SPEC_NAME and is_file for name, _, is_file in listed)
    files = sorted(
        name
        for name, _, is_file in listed
        if is_file
        and name.lower().endswith(CHECKPOINT_SUFFIXES)
        and name not in store_files
        and not paths.is_optimizer_state(Path(name))
    )
    folders = sorted(
        name for name, is_dir, _ in listed if is_dir and read_as_one_step(Path(folder) / name)
    )
    parts = [paths.SPEC_NAME] if spec else []
    if files:
        parts.append(_some(files, "checkpoint file", ""))
    if folders:
        parts.append(_some(folders, "checkpoint folder", "/"))
    return " and ".join(parts) if parts else None


def _some(names: list[str], what: str, end: str) -> str:
    """``"25 checkpoint files such as step_000000.safetensors"``, or ``"the checkpoint file
    model.pt"`` for one."""
    if len(names) == 1:
        return f"the {what} {names[0]}{end}"
    return f"{len(names)} {what}s such as {names[0]}{end}"


def same_folder(a: Path, b: Path) -> bool:
    """Whether the paths ``a`` and ``b`` name one folder (through ``..``, links and relative
    paths; either may not exist yet)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def store_holding(folder: Path) -> tuple[Path, str | None] | None:
    """``(store, checkpoints)`` when ``folder`` is a store conetool kernels wrote (it holds
    ``manifest.json`` and ``probe.safetensors``) or one of a store's folders of kernel files
    (``STORE/kernels``, ``eval_kernels``, ``layer_kernels``): the store, and the checkpoint
    directory its manifest records (None when it records none it can be read for). Else None."""
    folder = Path(folder)
    if folder.name in _KERNEL_FOLDERS and paths.manifest(folder.parent).is_file():
        store = folder.parent
    elif paths.manifest(folder).is_file() and paths.probe(folder).is_file():
        store = folder
    else:
        return None
    try:
        recorded = json.loads(paths.manifest(store).read_text(encoding="utf-8")).get("checkpoints")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        recorded = None
    return store, recorded if isinstance(recorded, str) and recorded else None
