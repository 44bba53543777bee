"""The store a ``switch`` sweep writes into, held against ``kernels --overwrite`` replacing it.

A sweep writes for minutes or hours: each point's files as it finishes, the standard model at T
(``--reference train``), then ``results.csv``, ``results.json`` and ``switch.png``. A ``kernels
--overwrite`` of the same store meanwhile clears it (``switch/`` with it) and starts a new one.
As the commands that read the store (:meth:`conetool.store.Store.writing_results`), the sweep
writes each file holding ``STORE/.results.lock`` shared after checking that the store is still
the one it began with, and the clearing holds that lock exclusively: a point lands before the
clearing (which then removes it, and says so) or not at all. A sweep that finds its store
replaced stops with a :class:`~conetool.errors.StoreReplacedError`; it also checks before each
point's training, so that no minutes go into a point it may not write.

"Replaced" is judged so that no point is lost in a store that was not replaced (points are
expensive): another ``store_id`` in the manifest is a replacement; a manifest gone is one only
when ``switch/`` went too (the clearing removes both; a user may remove the manifest alone); and
in a folder that had no manifest when the sweep began (``switch --ckpts`` before any
``kernels``), only ``switch/`` gone tells, as a ``kernels`` run creating the store there keeps it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import StoreReplacedError
from ..io import make_dir
from ..store import store_on_disk
from ..store_lock import results_lock
from ..store_manifest import opened_as


@dataclass(frozen=True)
class SwitchStore:
    """The store ``root`` as a sweep began with it: ``opened`` is its manifest's
    :func:`~conetool.store_manifest.opened_as` (JSON data: torchrun's rank 0 hands its own to
    every rank), None when there was no manifest. Make it with :meth:`begin`."""

    root: Path
    opened: Mapping[str, Any] | None

    @classmethod
    def begin(cls, root: Path, manifest: Mapping[str, Any] | None) -> SwitchStore:
        """The sweep's store, from the ``manifest`` it read (None: none there); creates
        ``STORE/switch``, whose disappearance is how a clearing shows without a manifest."""
        make_dir(paths.switch_dir(root))
        return cls(Path(root), None if manifest is None else opened_as(manifest))

    def replaced(self) -> bool:
        """Whether ``kernels --overwrite`` replaced the store since the sweep began (see the
        module's docstring for how it is told from a manifest or folder removed by hand)."""
        folder_gone = not paths.switch_dir(self.root).is_dir()
        if self.opened is None:
            return folder_gone
        now = store_on_disk(self.root, self.opened)
        return now == "other" or (now == "none" and folder_gone)

    def check(self) -> None:
        """Raise the sweep's :class:`StoreReplacedError` if the store was replaced (before
        expensive work whose result could not be written)."""
        if self.replaced():
            raise self.replaced_error()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store against a clearing while the sweep writes (seconds: the writes only,
        never the training), refusing when it was replaced: nothing of this sweep lands in a new
        store. ``switch/`` removed by hand (the store not replaced) is made again."""
        with results_lock(self.root, exclusive=False):
            self.check()
            make_dir(paths.switch_dir(self.root))
            yield

    def replaced_error(
        self, lost: str | None = None, rerun: str | None = None, ckpts_given: bool = False
    ) -> StoreReplacedError:
        """The sweep's error: ``lost`` says which points are not in the new store (e.g. "the point
        at t = 8 (in progress) is not written"), ``rerun`` the command that computes them there
        (``ckpts_given``: it names the checkpoints); without them, what any check can say."""
        gone = (
            f"its {paths.SWITCH_DIR} folder was removed"
            if self.opened is None
            else f"its {paths.MANIFEST_NAME} and {paths.SWITCH_DIR} folder were removed"
        )
        again = (
            f"To compute them in the new store, run: {rerun}"
            if rerun
            else "Rerun the same conetool switch command to compute the points there"
        )
        source = (
            ""
            if ckpts_given
            else " (without --ckpts it trains on the run that the new store's manifest names)"
        )
        return StoreReplacedError(
            f"store {self.root} was replaced while conetool switch was writing its points there: "
            f"a conetool kernels --overwrite cleared it, with the switch points it held, and "
            f"started a new store there (or {gone}). conetool switch stopped and wrote nothing "
            f"into the new store{': ' + lost if lost else ''}. {again}{source}."
        )
