"""Ctrl-C while conetool starts (importing torch takes seconds): a message and exit 130.

Imported before anything heavy; it needs only the standard library. A library user's
``import conetool`` that is interrupted keeps Python's own KeyboardInterrupt.
"""

from __future__ import annotations

import os
import sys

INTERRUPTED = 130  # 128 + SIGINT, as shells report it
MESSAGE = "interrupted while conetool was starting; nothing was written."


def is_command_line() -> bool:
    """True when this process is the ``conetool`` command (console script or ``python -m``)."""
    first = sys.argv[0] if sys.argv else ""
    return first == "-m" or os.path.basename(first) in ("conetool", "conetool.exe")


def exit_if_command_line() -> None:
    """Called on a KeyboardInterrupt during start-up: as the command line, print one line and
    exit 130 (no traceback); as a library, return (the caller re-raises)."""
    if is_command_line():
        print(MESSAGE, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
