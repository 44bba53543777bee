"""Progress reporting, injected into the library so that only the CLI knows about rich.

A library function takes ``progress: Progress | None``; ``None`` means silent. The CLI passes a
rich progress display (or plain lines when stdout is not a terminal). A call given ``None`` runs
with a :class:`Heard` instead (:func:`conetool.library_call.library_call`), which shows nothing
and keeps the warnings, for the caller to get through :func:`warn_python` if the call raises.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Protocol


class ProgressTask(Protocol):
    """One bar: ``advance`` moves it; keyword fields (loss=0.31, step=200) are shown beside it."""

    def advance(self, amount: int = 1, **fields: Any) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    """Opens bars and prints one-line messages."""

    def task(self, description: str, total: int | None) -> ProgressTask: ...

    def log(self, message: str) -> None: ...


def progress_argument(value: object, name: str = "progress") -> Progress | None:
    """``value`` when it is None or a :class:`Progress` (an object with ``task`` and ``log``
    methods); ``name`` is the Python argument.

    Raises:
        ConetoolError: anything else (``True``, ``print``, a tqdm bar), naming ``name`` and what
            to pass, rather than an ``AttributeError`` at the first report.
    """
    if value is None or all(callable(getattr(value, m, None)) for m in ("task", "log")):
        return value  # type: ignore[return-value]
    from .errors import ConetoolError

    raise ConetoolError(
        f"{name}={value!r} is not a progress display: pass an object with the methods "
        "task(description, total) -> a bar with advance(amount, **fields) and close(), and "
        f"log(message) (conetool.progress.Progress), or leave {name} out (None: silent)."
    )


class _NullTask:
    def advance(self, amount: int = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    """Reports nothing (the default of every library function)."""

    def task(self, description: str, total: int | None) -> ProgressTask:
        return _NullTask()

    def log(self, message: str) -> None:
        pass


class CountBar:
    """Adapts a ``(done, total)`` callback (what the eNTK engine and the S matrix report) to a
    bar of ``progress``, opened on the first report; ``close()`` ends it (also done at
    ``total``). With ``hide_single``, a job of one unit opens no bar. A count that starts again
    (``done`` below the last report: the eNTK engine computing a kernel a second time, see
    :func:`~conetool.ntk.empirical_ntk`'s ``on_block``) opens a fresh bar."""

    def __init__(self, progress: Progress, description: str, *, hide_single: bool = False):
        self.progress = progress
        self.description = description
        self.hide_single = hide_single
        self.task: ProgressTask | None = None
        self.shown = 0

    def __call__(self, done: int, total: int) -> None:
        if self.hide_single and total <= 1:
            return
        if self.task is not None and done < self.shown:
            self.close()
        if self.task is None:
            self.task = self.progress.task(self.description, total=total)
            self.shown = 0
        self.task.advance(done - self.shown)
        self.shown = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None


class Said:
    """What a command says along the way, in the two channels of every command: :meth:`warn` (a
    possible loss or a guess to check: ``warning: ...`` as it comes, kept in ``warnings``, which
    the CLI says again at the end under ``--quiet``) and :meth:`note` (information only:
    ``note: ...`` as it comes, kept in ``notes``; ``--quiet`` shows no progress, so none)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.warnings: list[str] = []
        self.notes: list[str] = []

    def warn(self, message: str, *, as_it_comes: str | None = None) -> None:
        """Say ``message``; ``as_it_comes``: the text shown now in its place, where advice holds
        only while the command runs ("stop now"), which ``message``, kept for the end (what
        ``--quiet`` prints after the results, and the caller reads), does not give."""
        self.warnings.append(message)
        self.progress.log(f"warning: {message if as_it_comes is None else as_it_comes}")

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.progress.log(f"note: {message}")


#: What begins each warning line a :class:`Progress` is given (:meth:`Said.warn`).
WARNING = "warning: "


class Heard(NullProgress):
    """The progress of a library call given none: shows nothing, and keeps the warnings said
    along the way (the lines that begin with ``warning: ``, as :class:`Said` says them, the
    ``warning: `` cut off), in order and each once, as ``--quiet`` keeps them for a command
    that fails. A call that raises has no result to keep them:
    :func:`~conetool.library_call.library_call` gives them to the caller through
    :func:`warn_python`."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._heard: set[str] = set()  # (a --skip-bad run may leave out thousands of files)

    def log(self, message: str) -> None:
        if message.startswith(WARNING):
            told = message[len(WARNING) :]
            if told not in self._heard:
                self._heard.add(told)
                self.warnings.append(told)


def warn_python(messages: Iterable[str], *, stacklevel: int) -> None:
    """Give ``messages`` (what a call warned of, :attr:`Heard.warnings`) to a Python caller that
    passed no ``progress``, through :func:`warnings.warn` (a ``UserWarning`` each): for a call
    that raises, whose result, which keeps them, the caller never gets. ``stacklevel``: as the
    function calling this one would pass it to :func:`warnings.warn` (1: that function's line),
    so that the warning names the user's line."""
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
