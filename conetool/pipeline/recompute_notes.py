"""The note naming steps whose companion kernel files (eval kernels, layer kernels) could not be
used, and the ``conetool kernels`` command that recomputes them: one wording for ``spectrum``
and ``distance``."""

from __future__ import annotations

from ..store import Store

#: Said of a file whose header is fine and whose values are not: kernels keeps it.
DELETE = "delete it (conetool kernels reads only its header)"


def recompute_note(
    store: Store,
    why: dict[int, str],
    *,
    lost: str,
    files: str,
    aside: str = "",
    command: str | None = None,
) -> str:
    """``"no {lost} at N step(s) (s1, s2, ...){aside}: {first reason}. Rerun {command}, which
    recomputes the {files} that are missing, stale or unreadable."``, asking to delete first when
    a reason says to (:data:`DELETE`).

    Args:
        store: the store (its :meth:`~conetool.store.Store.kernels_command`).
        why: step -> the reason its file was not used; not empty.
        lost: what those steps lack, e.g. ``"kernel-machine accuracy"``.
        files: the files the command recomputes, e.g. ``"eval kernels"``.
        aside: said after the steps, e.g. ``", left out (--skip-bad)"``.
        command: the command to advise (default: the store's
            :meth:`~conetool.store.Store.kernels_command`).
    """
    steps = sorted(why)
    shown = ", ".join(str(s) for s in steps[:5]) + (", ..." if len(steps) > 5 else "")
    delete = (
        "Delete the files said to, then rerun"
        if any(DELETE in w for w in why.values())
        else "Rerun"
    )
    return (
        f"no {lost} at {len(steps)} step(s) ({shown}){aside}: {why[steps[0]]}. "
        f"{delete} {command or store.kernels_command()}, which recomputes the {files} that are "
        "missing, stale or unreadable."
    )
