"""What the commands that read a store say when ``conetool kernels`` is still writing it: its
numbers are then of the kernels stored so far, not of the run's."""

from __future__ import annotations

from ..store import Store
from ..store_lock import writer_note

__all__ = ["kernels_running", "running_note", "stored_so_far"]


def stored_so_far(store: Store) -> str:
    """How many kernels ``store`` holds, against how many checkpoints the ``kernels`` run
    writing it selected (its manifest's ``selected_steps``) when that is known: ``37 of 100``,
    else ``37``."""
    stored = store.steps()
    selected = store.manifest.get("selected_steps")
    if not isinstance(selected, list) or not selected:
        return str(len(stored))
    chosen = {int(step) for step in selected}
    if set(stored) <= chosen:
        return f"{len(stored)} of {len(chosen)}"
    done = len(chosen.intersection(stored))
    return f"{len(stored)} ({done} of the {len(chosen)} checkpoints it selected)"


def kernels_running(store: Store, command: str) -> str | None:
    """One line for ``command``'s output when a ``conetool kernels`` run holds ``store``'s lock
    (:func:`conetool.store_lock.writer_note`), else None."""
    holder = writer_note(store.root)
    return None if holder is None else running_note(holder, stored_so_far(store), command)


def running_note(holder: str, so_far: str, command: str, what: str = "these results") -> str:
    """The note of :func:`kernels_running`, from the writer's lock note ``holder`` and the
    kernels ``so_far`` (:func:`stored_so_far`); ``what`` names the numbers it is about."""
    return (
        f"conetool kernels is still writing this store ({holder}): {what} are of the "
        f"{so_far} kernels stored so far; rerun {command} once it ends"
    )
