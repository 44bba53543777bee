"""Ctrl-C while conetool starts (importing torch takes seconds): a message and exit 130.

Imported before anything heavy; it needs only the standard library. A library user's
``import conetool`` that is interrupted keeps Python's own KeyboardInterrupt.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

INTERRUPTED = 130  # 128 + SIGINT, as shells report it
MESSAGE = "interrupted while conetool was starting; nothing was written."


def is_command_line() -> bool:
    """True when this process is the ``conetool`` command (console script or ``python -m``)."""
    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or os.path.basename(first) in ("conetool", "conetool.exe")


def speaks_for_the_job() -> bool:
    """False on a torchrun rank other than 0 (``RANK`` set and not 0): a Ctrl-C reaches every
    rank, and rank 0 alone says so. Read from the environment: nothing is imported yet."""
    return os.environ.get("RANK", "").strip() in ("", "0")


def exit_if_command_line() -> None:
    """Called on a KeyboardInterrupt during start-up: as the command line, print one line and
    exit 130 (no traceback); as a library, return (the caller re-raises)."""
    if is_command_line():
        if speaks_for_the_job():
            print(MESSAGE, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def guard_start_up() -> None:
    """As the command line, make Ctrl-C during the imports exit 130 at once with one line.

    A KeyboardInterrupt raised inside an extension module's import can surface as an unrelated
    ImportError (numpy: "cannot load module more than once"), so it is not left to propagate.
    Nothing is written during start-up, so exiting on the spot loses nothing. The command line's
    ``main`` installs the handler used from then on.
    """
    if not is_command_line() or threading.current_thread() is not threading.main_thread():
        return

    def on_interrupt(signum: int, frame: object) -> None:
        if speaks_for_the_job():
            sys.stderr.write(MESSAGE + "\n")
            sys.stderr.flush()
        os._exit(INTERRUPTED)

    signal.signal(signal.SIGINT, on_interrupt)
