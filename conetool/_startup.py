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
    """True when this process is the ``conetool`` command (console script or ``python -m``).

    ``sys.argv[0]`` is ``"-m"`` while ``python -m X`` imports X's packages, whatever X is: a
    script run as ``python -m mypkg.script``, whose ``mypkg/__init__.py`` imports conetool, is
    a library user, whose Ctrl-C must stay Python's KeyboardInterrupt. The module run is read
    from the interpreter's own command line (:func:`main_module`)."""
    first = sys.argv[0] if sys.argv else ""
    if first == "-m":
        return main_module(getattr(sys, "orig_argv", [])) in ("conetool", "conetool.__main__")
    return os.path.basename(first) in ("conetool", "conetool.exe")


def main_module(orig_argv: list[str]) -> str | None:
    """The module ``python -m MODULE`` runs, read from the interpreter's arguments
    (``sys.orig_argv``: ``["python", "-X", "importtime", "-m", "conetool", ...]``, or ``-mconetool``
    and ``-Im conetool`` as Python takes them); ``None`` for a script or ``-c``."""
    args = orig_argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            return None  # a script, stdin, or the end of the options
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for j, letter in enumerate(arg[1:], start=2):
            if letter in "cmWX":  # the options that take a value, joined or the next argument
                value = arg[j:] or (args[i + 1] if i + 1 < len(args) else "")
                if letter == "c":
                    return None
                if letter == "m":
                    return value or None
                i += 0 if arg[j:] else 1
                break
        i += 1
    return None


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
