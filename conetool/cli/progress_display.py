"""Progress displays for the CLI: rich bars on a terminal, plain lines in logs, or nothing."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fields_text(fields: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in fields.items())


class _RichTask:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task
        self._started = time.perf_counter()

    def advance(self, amount: int = 1, **fields: Any) -> None:
        task = self._progress.tasks[self._task]
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rate = task.completed / elapsed if task.completed else 0.0
        info = _fields_text(fields) if fields else task.fields.get("info", "")
        self._progress.update(self._task, advance=amount, info=info, rate=f"{rate:.1f}/s")

    def close(self) -> None:
        self._progress.stop_task(self._task)


class RichProgress:
    """Bars with count, rate, elapsed and remaining time, and the task's latest fields."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def task(self, description: str, total: int | None) -> _RichTask:
        task = self._progress.add_task(description, total=total, info="", rate="")
        return _RichTask(self._progress, task)

    def log(self, message: str) -> None:
        self._progress.console.print(message, highlight=False, markup=False)


class _PlainTask:
    """Prints a line at about every 10% of the work (at least every 30 s), once it has run 2 s."""

    def __init__(self, console: Console, description: str, total: int | None) -> None:
        self._console, self._description, self._total = console, description, total
        self._done, self._started = 0, time.perf_counter()
        self._last_print = self._started
        self._next_fraction = 0.1

    def advance(self, amount: int = 1, **fields: Any) -> None:
        self._done += amount
        now = time.perf_counter()
        due = now - self._last_print > 30
        if self._total:
            due = due or self._done / self._total >= self._next_fraction
        if not due or now - self._started < 2.0:  # short work needs no progress lines
            return
        elapsed = now - self._started
        rate = self._done / elapsed if elapsed > 0 else 0.0
        total = f"/{self._total}" if self._total else ""
        left = ""
        if self._total and rate > 0:
            left = f", {(self._total - self._done) / rate:.0f}s left"
        self._console.print(
            f"{self._description}: {self._done}{total} ({rate:.1f}/s{left}) {_fields_text(fields)}",
            highlight=False,
            markup=False,
        )
        self._last_print = now
        if self._total:
            while self._next_fraction <= self._done / self._total:
                self._next_fraction += 0.1

    def close(self) -> None:
        pass


class PlainProgress:
    """Plain progress lines, for logs and pipes (stdout is not a terminal)."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def task(self, description: str, total: int | None) -> _PlainTask:
        return _PlainTask(self._console, description, total)

    def log(self, message: str) -> None:
        self._console.print(message, highlight=False, markup=False)
