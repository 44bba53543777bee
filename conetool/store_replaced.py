"""A store replaced while a command reads it: ``kernels --overwrite`` clears a store and starts a
new one there, with a new ``store_id``. :func:`store_on_disk` tells from ``manifest.json`` whether
the store on disk is still the one opened; :class:`ReplacedWatch` turns a replacement into a
:class:`~conetool.errors.StoreReplacedError` naming the rerun (:meth:`ReplacedWatch.reading`), and
keeps the results of the old kernels out of the new store (:meth:`ReplacedWatch.writing_results`,
under ``STORE/.results.lock``, which the clearing holds exclusive)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from . import paths
from .errors import ConetoolError, StoreReplacedError
from .store_lock import results_lock
from .store_manifest import same_store
from .store_records import StoreRecords

__all__ = ["ReplacedWatch", "store_on_disk"]


def store_on_disk(root: Path, opened: Mapping[str, Any]) -> Literal["same", "other", "none"]:
    """What ``root``'s ``manifest.json`` says now of the store whose
    :func:`~conetool.store_manifest.opened_as` is ``opened``: ``"same"`` (also when it is
    damaged: not replaced, the command's own error says so), ``"other"`` (another ``store_id``,
    or another identity for a store made before conetool recorded one: ``kernels --overwrite``
    cleared it and started a new store), or ``"none"`` (no manifest: being replaced, or removed)."""
    try:
        now = json.loads(paths.manifest(root).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "none"
    except (OSError, UnicodeDecodeError, ValueError):
        return "same"
    return "other" if isinstance(now, dict) and not same_store(opened, now) else "same"


class ReplacedWatch(StoreRecords):
    """A store that notices being replaced on disk since it was opened (a base of
    :class:`conetool.store.Store`)."""

    def replaced(self) -> bool:
        """Whether the store on disk is no longer the one this object opened: its manifest is
        gone, or it records another ``store_id`` (another identity, for a store made before
        conetool recorded one): ``kernels --overwrite`` cleared it and started a new store."""
        return store_on_disk(self.root, self._opened_as) != "same"

    def replaced_error(self, command: str | None = None) -> StoreReplacedError:
        """The error of ``command`` (``"distance"``: ``conetool distance``; None: a Python
        caller of this object) finding the store replaced; it names the rerun."""
        if command is None:
            who, rerun = "it was read", "Open it again (conetool.Store.open)"
        else:
            who = f"conetool {command} was reading it; conetool {command} stopped and wrote nothing"
            rerun = f"Rerun conetool {command} --store {self.root}"
        return StoreReplacedError(
            f"store {self.root} was replaced while {who}: a conetool kernels --overwrite cleared "
            f"it and started a new store there (or its {paths.MANIFEST_NAME} was removed). "
            f"{rerun} once that run has stored the kernels you want."
        )

    @contextmanager
    def reading(self, command: str) -> Iterator[None]:
        """Run ``command``'s reading of the store: a file gone or unreadable because the store
        was replaced meanwhile (:meth:`replaced`) is that :class:`StoreReplacedError`, not a
        traceback or a message about a damaged file."""
        try:
            yield
        except StoreReplacedError as exc:
            raise self.replaced_error(command) from exc  # named for the command
        except (OSError, ConetoolError) as exc:
            if self.replaced():
                raise self.replaced_error(command) from exc
            raise

    @contextmanager
    def writing_results(self, command: str) -> Iterator[None]:
        """Hold the store against ``kernels --overwrite``'s clearing while ``command`` writes its
        results into it, refusing (a :class:`StoreReplacedError`, nothing written) when the
        store was replaced since it was opened: results of the old kernels never land in the
        new store. The clearing waits for the writes, then removes them."""
        with results_lock(self.root, exclusive=False):
            if self.replaced():
                raise self.replaced_error(command)
            yield
