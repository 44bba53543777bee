"""Python's cyclic garbage collector while a command starts.

A command imports PyTorch, NumPy and matplotlib in its body: hundreds of thousands of objects
that live as long as the process. While they are created, the collector's full collections run
again and again (each time the long-lived objects grew by a quarter) and find nothing to free;
later, each full collection and the one at exit walk them all again. :func:`main` of the
console script defers collection (:func:`defer_collection`) until the command's modules are
imported (:func:`imports_done`, at the start of :func:`conetool.cli.app.handle_errors`), then
freezes what is alive (``gc.freeze``: left out of every later collection) and turns collection
back on. Only the console script does this: a program calling the Typer app in-process (the
tests' ``CliRunner``) keeps its collector as it is.
"""

from __future__ import annotations

import gc

_deferred: list[bool] = []


def defer_collection() -> None:
    """No automatic collection until :func:`imports_done` (when collection is on now)."""
    if gc.isenabled() and not _deferred:
        gc.disable()
        _deferred.append(True)


def imports_done() -> None:
    """After :func:`defer_collection`: freeze every object alive now and collect automatically
    again. Otherwise nothing."""
    if _deferred:
        _deferred.clear()
        gc.freeze()
        gc.enable()
