"""What the store remembers of how ``conetool kernels`` ran, for the commands that come after it.

``conetool kernels`` records two things in ``manifest.json``:

``selection``
    the checkpoint selection: ``{"path": CKPTS, "step_regex": ..., "steps": "FIRST:LAST",
    "every": K}`` (``None`` for an option not given). ``switch`` reuses the step regex when
    none is given (and says so), as does a rerun of ``kernels`` on the same directory; the
    report's Reproduce block repeats all four.
``imports``
    for a spec that names an import path (``[model] arch`` or ``[data] dataset`` =
    ``"pkg.mod:factory"``), where each module was imported from:
    ``[{"key": "[model] arch", "module": "pkg.mod", "path": "/abs/folder", "installed": false}]``.
    ``path`` is the folder that must be on ``PYTHONPATH`` (``installed`` is true when it is a
    site-packages folder, which needs nothing). ``switch`` and ``distance`` (its noise floor
    rebuilds the model) add a recorded folder to ``sys.path`` when the module cannot be imported
    otherwise (and say so); the report puts ``PYTHONPATH=...`` on the commands that import it.

A store made before these records has neither: every reader falls back to the old behaviour.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

from .. import paths
from ..spec import Spec, is_user_dataset

__all__ = [
    "import_paths",
    "imports_record",
    "read_manifest",
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


def read_manifest(store: Path) -> dict[str, Any] | None:
    """The store's manifest as JSON, or None when there is none or it cannot be read (the
    command that opens the store says why)."""
    try:
        manifest = json.loads(paths.manifest(store).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


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
        records.append(
            {"key": key, "module": module, "path": str(folder), "installed": _installed(folder)}
        )
    return records


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
