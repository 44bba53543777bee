"""Overlap ``conetool kernels``' file work with its computation: read the next checkpoint and
write the last kernel in background threads while the device computes the current kernel.

- :class:`ReadAhead` reads the items of a list in order, one ahead: taking the result of item
  ``i`` starts the read of item ``i + 1`` in its one worker thread, so at most one read is in
  flight and at most one read result waits beyond the one being used (one extra state dict). An
  error of a read is raised when its item's result is taken, exactly as a read done then would.
- :class:`Writer` runs one write at a time in its one worker thread: :meth:`Writer.submit` first
  waits for the write in flight (re-raising its error, the same exception object), so the
  writes happen one after the other in the order they were submitted.

Both are context managers: leaving the block waits for the thread's work in flight (a write in
progress is finished, never cut off: a Ctrl-C loses no kernel already computed) and shuts the
thread down. The threads touch files only (no model, no device): the caller applies what was
read and hands over CPU tensors to write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class ReadAhead(Generic[T, R]):
    """``read`` of each of ``items`` in order, each started in the background once the result
    of the item before it is taken.

    Example::

        with ReadAhead(refs, read_checkpoint) as reads:
            for ref, take in reads:
                loaded = take()  # read while the previous step was computed; raises its error
    """

    def __init__(self, items: Sequence[T], read: Callable[[T], R]) -> None:
        self._items = list(items)
        self._read = read
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conetool-read")
        self._pending: tuple[int, Future[R]] | None = None
        if self._items:
            self._start(0)

    def __iter__(self) -> Iterator[tuple[T, Callable[[], R]]]:
        for index, item in enumerate(self._items):
            yield item, partial(self._take, index)

    def _start(self, index: int) -> None:
        self._pending = (index, self._pool.submit(self._read, self._items[index]))

    def _take(self, index: int) -> R:
        """The result of item ``index`` (read now if it was not read ahead), after starting the
        read of the next item."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == index:
            future = pending[1]
        else:  # not the item read ahead (the caller skipped one): read this one now
            if pending is not None:
                pending[1].cancel()
            future = self._pool.submit(self._read, self._items[index])
        try:
            result = future.result()
        except Exception:
            self._start_next(index)  # the caller may go on without this item (--skip-bad)
            raise
        self._start_next(index)
        return result

    def _start_next(self, index: int) -> None:
        if index + 1 < len(self._items):
            self._start(index + 1)

    def close(self) -> None:
        """Drop the read ahead (its result is never used) and wait for the thread to end."""
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReadAhead[T, R]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class Writer:
    """One background write at a time, in submission order.

    An error of a write is raised (the same exception) by the next :meth:`submit`,
    :meth:`check` or :meth:`join`. Leaving the ``with`` block joins too: on a normal exit a
    write's error is raised there; when an exception is already on its way out, the write in
    flight is finished and its error dropped (the exception on its way wins)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conetool-write")
        self._pending: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Wait for the write in flight (raising its error), then start ``write``."""
        self.join()
        self._pending = self._pool.submit(write)

    def check(self) -> None:
        """Raise the error of a write that has already failed; never waits."""
        if self._pending is not None and self._pending.done():
            self.join()

    def join(self) -> None:
        """Wait for the write in flight; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the write in flight, dropping its error, and end the thread."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.exception()  # waits; the error is not raised
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is None:
            try:
                self.join()
            finally:
                self.close()
        else:
            self.close()
