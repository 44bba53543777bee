"""Importing the user's own modules named in a spec (``[model] arch`` and ``[data] dataset``,
``"package.module:factory"``), with one behaviour and one kind of message for both."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from types import ModuleType

from .errors import ConetoolError

__all__ = ["import_user_module", "is_import_path", "raised_at", "shadowed_note"]


def is_import_path(module_name: str, attribute: str) -> bool:
    """Whether ``module_name`` and ``attribute`` (of ``"module_name:attribute"``) are dotted
    Python identifiers (``"pkg.mod"``, ``"Factories.make"``): no relative import, no empty part."""
    return all(part.isidentifier() for part in (*module_name.split("."), *attribute.split(".")))


def import_user_module(module_name: str, what: str, error: type[ConetoolError]) -> ModuleType:
    """Import ``module_name``; when it is not on ``sys.path``, retry from the current directory.

    The retry makes ``"mymodels:net"`` work for a ``mymodels.py`` beside the user, as
    ``python -m`` would (the ``conetool`` command's own ``sys.path`` does not hold the current
    directory); the directory stays on ``sys.path`` once the import succeeds. ``what`` names the
    spec key in the message (``[model] arch = "mymodels:net"``); a failure raises ``error``, which
    says whether the module was not found (and how to make it importable) or was found but
    failed to import, and then where: the file and line of the module's own code that raised.
    """
    cwd = os.getcwd()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if not _is_missing(module_name, exc) or cwd in sys.path or "" in sys.path:
            raise _import_error(module_name, what, exc, error) from exc
        first = exc
    except Exception as exc:
        raise _import_error(module_name, what, exc, error) from exc
    sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        return importlib.import_module(module_name)
    except Exception as exc:
        sys.path.remove(cwd)
        if isinstance(exc, ModuleNotFoundError) and _is_missing(module_name, exc):
            raise _import_error(module_name, what, first, error) from first
        raise _import_error(module_name, what, exc, error) from exc


def shadowed_note(module_name: str) -> str:
    """A sentence for a name missing from the imported ``module_name`` when the current directory
    holds a file or package of the same top-level name that is not the one imported (``random.py``
    beside the spec, shadowed by Python's ``random``); empty otherwise."""
    top = module_name.split(".")[0]
    imported = getattr(sys.modules.get(top), "__file__", None)
    cwd = os.getcwd()
    for mine in (os.path.join(cwd, f"{top}.py"), os.path.join(cwd, top, "__init__.py")):
        if os.path.isfile(mine) and (
            imported is None or os.path.realpath(imported) != os.path.realpath(mine)
        ):
            return (
                f" The module '{top}' imported is {imported or 'a built-in module'}, not your "
                f"{mine}: a module of Python or of an installed package has that name and comes "
                "first. Rename your file (and the spec's module name)."
            )
    return ""


def _is_missing(module_name: str, exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` says ``module_name`` itself (or a parent package) is missing."""
    return exc.name is not None and (
        module_name == exc.name or module_name.startswith(exc.name + ".")
    )


def raised_at(exc: BaseException) -> str | None:
    """``FILE:LINE`` of the user's code where an import or a factory call failed: a syntax
    error's own place, else the innermost frame of the traceback outside Python's import
    machinery and conetool's own top-level modules."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen ")
        and os.path.dirname(frame.filename) != os.path.dirname(__file__)
    ]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _import_error(
    module_name: str, what: str, exc: BaseException, error: type[ConetoolError]
) -> ConetoolError:
    if isinstance(exc, ModuleNotFoundError) and _is_missing(module_name, exc):
        fix = (
            f"Make '{module_name}' importable: install its package (pip install -e .), add its "
            "folder to PYTHONPATH, or run conetool from the folder that contains it."
        )
    else:
        where = raised_at(exc)
        at = f" at {where}" if where else ""
        fix = (
            f"The module '{module_name}' was found but importing it failed{at}; fix it there "
            "(for a missing dependency, install it)."
        )
    return error(
        f"cannot import module '{module_name}' for {what} ({type(exc).__name__}: {exc}). {fix}"
    )
