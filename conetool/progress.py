"""Progress reporting, injected into the library so that only the CLI knows about rich.

A library function takes ``progress: Progress | None``; ``None`` means silent. The CLI passes a
rich progress display (or plain lines when stdout is not a terminal).
"""

from __future__ import annotations

from typing import Any, Protocol


class ProgressTask(Protocol):
    """One bar: ``advance`` moves it; keyword fields (loss=0.31, step=200) are shown beside it."""

    def advance(self, amount: int = 1, **fields: Any) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    """Opens bars and prints one-line messages."""

    def task(self, description: str, total: int | None) -> ProgressTask: ...

    def log(self, message: str) -> None: ...


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
