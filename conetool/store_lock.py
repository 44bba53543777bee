"""The store's writer lock: an exclusive ``fcntl.flock`` on ``STORE/.lock``, shared and counted
within one process, released by the OS when the process ends however it ends; who holds it
(:func:`writer_note`); and the results lock, ``STORE/.results.lock``, that keeps the readers'
result writes and ``kernels --overwrite``'s clearing of the store apart, with the gate
``STORE/.results.gate`` that keeps the readers from starving the clearing (:func:`results_lock`)."""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from . import paths
from .errors import StoreError
from .io import NOT_WRITABLE, create_dirs, write_error

try:
    import fcntl
except ImportError:  # Windows: no flock; the store is then not locked (documented)
    fcntl = None  # type: ignore[assignment]  # None stands for the missing module; checked first


__all__ = ["StoreLock", "results_lock", "writer_note"]

#: What ``flock`` raises on a file system that does not support it (NFS without its lock
#: daemon: ENOLCK; Lustre mounted without ``flock``, some FUSE file systems: ENOSYS or
#: EOPNOTSUPP; EINVAL): nothing is locked there, as where the folder cannot be written.
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})


class StoreLock:
    """An exclusive ``fcntl.flock`` on ``STORE/.lock`` held by the process writing the store.

    The OS drops it when the process ends, however it ends (a kill leaves no stale lock). The
    file names the holder (pid, host, command) for the refusal message. On a read-only file
    system no one can write, so no lock is needed: :meth:`acquire` returns None. Within one
    process the lock is shared (counted): the library may open a store it is writing again.
    """

    _held: ClassVar[dict[str, list[Any]]] = {}  # realpath -> [fd, count], this process's locks

    def __init__(self, path: Path, key: str) -> None:
        self.path, self._key, self._released = path, key, False

    @classmethod
    def acquire(
        cls,
        root: Path,
        refusal: Callable[[str, Path], str] | None = None,
        *,
        shared: bool = True,
    ) -> StoreLock | None:
        """Take the lock of store ``root`` (created if need be), or raise :class:`StoreError`
        naming the process that holds it: ``refusal(holder, lock_file)`` when given (another
        folder that one process at a time writes: ``train``'s ``--out``), else the store's
        message. None where locking is impossible (read-only store, no ``fcntl``, a file system
        without ``flock``: :data:`_NO_FLOCK`). ``shared=False``: refused too where this process
        holds it already (another thread's or call's ``train`` writing the folder), not counted."""
        if fcntl is None:
            return None
        root = Path(root)
        path = paths.lock(root)
        key = os.path.realpath(path)
        if key in cls._held and not shared:
            holder = f"{_read_holder(cls._held[key][0])}; this process, in another call or thread"
            raise StoreError(
                refusal(holder, path)
                if refusal is not None
                else f"store {root} is being written by {holder}; it holds the lock {path}."
            )
        if key in cls._held:
            cls._held[key][1] += 1
            return cls(path, key)
        while True:  # (again where the file locked was removed meanwhile: _is_lock_file)
            try:
                if not root.is_dir():
                    create_dirs(root)  # the store's folder, flushed into its parent
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                if exc.errno == errno.ENOENT and not root.exists():
                    continue  # a refused train removed the folder it made (train_lock): again
                if exc.errno not in NOT_WRITABLE:
                    error = write_error(path, exc)
                    if error is None:
                        raise
                    raise error from exc
                try:  # read-only: lock an existing file anyway (flock needs no write access)
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    return None  # nothing can write this store, so there is nothing to guard
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _NO_FLOCK:
                    os.close(fd)
                    return None  # a file system without flock: nothing can be locked there
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if refusal is not None:
                    raise StoreError(refusal(holder, path)) from None
                raise StoreError(
                    f"store {root} is being written by another conetool process ({holder}); it "
                    f"holds the lock {path}. conetool refuses a second writer rather than wait: two "
                    "writers would duplicate the work, and an --overwrite run would replace the "
                    "other's kernels. Wait until it ends and rerun (the rerun computes only what is "
                    "missing), or use another --store. The lock goes away with that process."
                ) from None
            if _is_lock_file(fd, path):
                break
            os.close(fd)  # a refused train removed it (train_lock): lock the one there now
        try:
            os.ftruncate(fd, 0)
            note = f"pid {os.getpid()} on {socket.gethostname()}: {_command_line()}\n"
            os.write(fd, note.encode())
        except OSError:
            pass  # the lock itself is what matters; the note is for the message only
        cls._held[key] = [fd, 1]
        return cls(path, key)

    def release(self) -> None:
        """Give the lock back (the last holder in this process unlocks the file)."""
        if self._released:
            return
        self._released = True
        entry = self._held.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del self._held[self._key]
        try:
            try:  # the note names a running writer (writer_note): this one has ended
                os.ftruncate(entry[0], 0)
            except OSError:
                pass  # read-only: the note was never written
            fcntl.flock(entry[0], fcntl.LOCK_UN)
        finally:
            os.close(entry[0])


def _command_line() -> str:
    """This process's command line for the lock's note: ``conetool kernels ...`` for the
    ``conetool`` script and for ``python -m conetool`` alike (whose ``sys.argv[0]`` is this
    package's ``__main__.py``), else the program's name (a script's, a notebook kernel's) and
    its arguments."""
    first = sys.argv[0] if sys.argv else ""
    main = os.path.join(os.path.dirname(os.path.realpath(__file__)), "__main__.py")
    name = "conetool" if first and os.path.realpath(first) == main else os.path.basename(first)
    return " ".join([name or "python", *sys.argv[1:]])


def _is_lock_file(fd: int, path: Path) -> bool:
    """Whether ``fd``, just locked, is still the file at ``path``: a train refused before it
    wrote anything removes the lock file it created (and its folder) while holding the lock, so
    a process that opened the file before that removal and locked it after holds a lock no one
    else sees; it must lock the file that is there now instead."""
    try:
        here, locked = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (locked.st_dev, locked.st_ino)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"


_NOTE = re.compile(r"pid (\d+) on (\S+): ")


def writer_note(root: Path) -> str | None:
    """The note of the process writing store ``root`` (``pid 123 on HOST: conetool kernels
    ...``) while it runs, else None. The note is read, not the lock tried: a reader's test lock
    would make a writer starting at that moment refuse to start. A writer empties the note when
    it releases the lock; a killed one leaves it, so the pid must be alive too (on another host
    it cannot be checked, and the note says so)."""
    try:
        text = paths.lock(root).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    match = _NOTE.match(text)
    if match is None:
        return None
    pid, host = int(match.group(1)), match.group(2)
    if host != socket.gethostname():
        return f"{text} (on another host: whether it still runs cannot be checked from here)"
    if pid == os.getpid():
        return text if os.path.realpath(paths.lock(root)) in StoreLock._held else None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # killed: the OS released its lock, the note stayed
    except OSError:
        pass  # alive, another user's
    return text


#: Per thread: realpath of a store's results lock -> how many shared holds this thread has on it.
_shared_held = threading.local()


@contextmanager
def results_lock(root: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``STORE/.results.lock``: shared while a command that reads the store writes its
    results there, exclusive while ``kernels --overwrite`` clears the store. Either waits for
    the other (each holds it for the seconds its writes take), so a reader's results are written
    before the clearing, which removes them, or not at all (the reader then finds the store
    replaced). Without ``fcntl``, or where the file cannot be opened, nothing is locked.

    A shared ``flock`` is granted while an exclusive one waits, so readers whose holds overlap
    could keep the clearing waiting for ever. The clearing therefore first takes
    ``STORE/.results.gate`` (exclusive, held to its end), and a reader passes through the gate
    (exclusive, for a moment) before it takes the lock shared: the readers that arrive while a
    clearing waits queue behind it. A thread that already holds the lock shared takes it again
    without the gate (waiting there would wait for itself: the clearing at the gate waits for its
    first hold).

    A reader that finds no one else holding the lock (taken exclusive without waiting, then
    lowered to shared) first removes the temporary files that a writer killed midway left in the
    result folders (:func:`~conetool.store_clearing.remove_stale_result_temporaries`): every
    result file is written under this lock, so none of them is being written then. The ranks of
    a torchrun job leave them (:func:`_in_torchrun_job`)."""
    fd = gate = None
    key = ""
    if fcntl is not None:
        fd = _open_lock_file(paths.results_lock(root))
        if fd is not None:
            key = os.path.realpath(paths.results_lock(root))
    held: dict[str, int] | None = getattr(_shared_held, "counts", None)
    if held is None:
        held = _shared_held.counts = {}
    nested = not exclusive and held.get(key, 0) > 0
    try:
        if fd is not None:
            if not nested:
                gate = _open_lock_file(paths.results_gate(root))
            if gate is not None and not _flock(gate, fcntl.LOCK_EX):
                os.close(gate)
                gate = None
            if not exclusive and not nested and not _in_torchrun_job() and _alone(fd):
                # no one writes results now: what a killed writer left is stale
                from .store_clearing import remove_stale_result_temporaries  # imports this

                remove_stale_result_temporaries(root)
            _flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)  # (from LOCK_EX: lowered)
            if gate is not None and not exclusive:  # in: let the next one through the gate
                os.close(gate)
                gate = None
        if not exclusive:
            held[key] = held.get(key, 0) + 1
        try:
            yield
        finally:
            if not exclusive:
                held[key] -= 1
                if not held[key]:
                    del held[key]
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
        if gate is not None:
            os.close(gate)


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of the lock file ``path`` (created if need be; read-only where it cannot be
    written), or None where it cannot be opened: nothing is locked."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:  # read-only: no result can be written there anyway
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


def _in_torchrun_job() -> bool:
    """Whether this process is one rank of several (torchrun's ``WORLD_SIZE`` above 1): its ranks
    may run on several machines, where a lock on a file system that holds locks only within one
    machine (NFS mounted ``nolock``, Lustre ``localflock``) does not tell a rank that a rank
    elsewhere is writing a result, so no rank removes temporaries (the next command run alone
    does)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _alone(fd: int) -> bool:
    """Whether ``flock(fd, LOCK_EX)`` was granted without waiting: no other holder now."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by another (EWOULDBLOCK), or no flock here: not known to be alone
        return False
    return True


def _flock(fd: int, operation: int) -> bool:
    """``flock(fd, operation)``, waiting; False on a file system without ``flock`` (then the
    readers' ``store_id`` check alone guards their results)."""
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        return False
    return True
