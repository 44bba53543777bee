"""Progress displays for the CLI: rich bars on a terminal, plain lines in logs, or nothing
(``--quiet``: :class:`conetool.progress.Heard`, which keeps the warnings for a command that
fails)."""

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


def per_item(done: float, elapsed: float) -> str:
    """The time one item took on average, "3.2 ms each" or "12.4 s each"; "" before the first.

    A duration reads better than a rate at both ends: "890.4/s" for training steps and "0.0/s"
    for kernels that take minutes each.
    """
    if done <= 0 or elapsed <= 0:
        return ""
    each = elapsed / done
    if each < 1e-3:
        return f"{each * 1e6:.0f} µs each"
    if each < 1.0:
        return f"{each * 1e3:.1f} ms each" if each < 0.01 else f"{each * 1e3:.0f} ms each"
    if each < 120:
        return f"{each:.1f} s each"
    return f"{each / 60:.1f} min each"


class _RichTask:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress, self._task = progress, task
        self._started = time.perf_counter()
        self._first: tuple[float, float] | None = None

    def advance(self, amount: int = 1, **fields: Any) -> None:
        task = self._progress.tasks[self._task]
        if self._first is None:  # a first jump of several (a resumed run) is not timed
            jump = amount > 1
            self._first = (
                (task.completed + amount, time.perf_counter())
                if jump
                else (task.completed, self._started)
            )
        done = task.completed + amount - self._first[0]
        rate = per_item(done, time.perf_counter() - self._first[1])
        info = _fields_text(fields) if fields else task.fields.get("info", "")
        self._progress.update(self._task, advance=amount, info=info, rate=rate)

    def close(self) -> None:
        self._progress.stop_task(self._task)


class RichProgress:
    """Bars with count, time per item, elapsed and remaining time, and the task's latest fields."""

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
        each = per_item(self._done, elapsed)
        total = f"/{self._total}" if self._total else ""
        left = ""
        if self._total and self._done:
            left = f", {(self._total - self._done) * elapsed / self._done:.0f} s left"
        self._console.print(
            f"{self._description}: {self._done}{total} ({each}{left}) {_fields_text(fields)}",
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
