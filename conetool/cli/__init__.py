"""The command line: Typer and rich live here and nowhere else in conetool."""

import _thread
import os
import signal
import sys
from types import FrameType
from typing import Any, NoReturn

from .._startup import INTERRUPTED, exit_if_command_line, speaks_for_the_job
from .collector import defer_collection

# isort: off
# Each command module registers itself on the app; --help lists them in this (pipeline) order.
try:
    from .app import INTERRUPT_ADVICE, app, forget_last_command
    from . import train_cmd  # noqa: F401
    from . import inspect_cmd  # noqa: F401
    from . import kernels_cmd  # noqa: F401
    from . import distance_cmd  # noqa: F401
    from . import embed_cmd  # noqa: F401
    from . import spectrum_cmd  # noqa: F401
    from . import switch_cmd  # noqa: F401
    from . import report_cmd  # noqa: F401
    from . import demo_cmd  # noqa: F401
    from .help_format import tidy_help
except KeyboardInterrupt:
    exit_if_command_line()
    raise

# isort: on

tidy_help(app)


def main() -> None:
    """Entry point of the ``conetool`` console script and ``python -m conetool``.

    A Ctrl-C at any moment exits 130 with one line and no traceback: inside a command the command
    says so (``handle_errors``); elsewhere (option parsing, start-up) this function does. An
    interrupt is never turned into exit 0 or 1. Once interrupted the process ends at once
    (``os._exit`` after flushing): every file conetool writes is atomic, and the OS releases the
    store's lock, so nothing is lost by skipping the interpreter's shutdown, where a second
    interrupt could otherwise surface as a traceback. A Ctrl-C while a module is being imported
    (a command imports PyTorch in its body) ends the process on the spot, without raising
    KeyboardInterrupt into the import (``_importing``).
    """
    forget_last_command()  # (a command run before in this process: its advice is not this one's)
    interrupted: list[int] = []

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        interrupted.append(signum)
        if len(interrupted) > 1 or _importing(frame):  # a second Ctrl-C, or inside an import
            _exit_interrupted(announce=True)
        raise KeyboardInterrupt

    def on_unraisable(unraisable: Any) -> None:
        # A KeyboardInterrupt raised inside a finalizer (__del__, weakref callback) is printed
        # and swallowed by Python; deliver it again where it can end the command.
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _thread.interrupt_main()
            return
        default_unraisable(unraisable)

    default_unraisable = sys.unraisablehook
    defer_collection()  # until the command's modules are imported (conetool.cli.collector)
    try:
        signal.signal(signal.SIGINT, on_interrupt)
        sys.unraisablehook = on_unraisable
    except ValueError:  # not the main thread (an embedding application): leave it alone
        pass
    try:
        app(prog_name="conetool")
    except KeyboardInterrupt:
        _exit_interrupted(announce=True)
    except SystemExit as done:
        from .app import INTERRUPT_ANNOUNCED

        if interrupted or done.code == INTERRUPTED:
            # e.g. Typer's own exit 130 says nothing
            _exit_interrupted(announce=not INTERRUPT_ANNOUNCED)
        raise
    except BaseException:
        # An interrupt that surfaced as another error: a Ctrl-C inside an import can leave a
        # module half-initialized (numpy's lazy attributes then recurse until a RecursionError).
        if interrupted:
            _exit_interrupted(announce=True)
        raise


#: The modules whose frames run an import (frozen into the interpreter).
_IMPORT_SYSTEM = ("importlib._bootstrap", "importlib._bootstrap_external")


def _importing(frame: FrameType | None) -> bool:
    """True when ``frame`` runs inside an import (importlib's frames are on its stack).

    A KeyboardInterrupt must not be raised there: PyTorch's C++ module initializers
    (``torch._C._c10d_init``, ``_autograd_init``, ...) call back into Python to import modules
    and let the resulting C++ exception escape, which aborts the process ("terminate called
    after throwing an instance of 'pybind11::error_already_set'", exit -6, no message of ours);
    elsewhere an interrupted import leaves a half-initialized module behind (numpy then fails
    with an unrelated error).
    """
    while frame is not None:
        if frame.f_globals.get("__name__") in _IMPORT_SYSTEM:
            return True
        frame = frame.f_back
    return False


def _exit_interrupted(*, announce: bool) -> NoReturn:
    """Say so (unless a command already did, or this is a torchrun rank other than 0), flush, and
    end the process with 130. Inside a command (an import it runs), ``interrupted.`` is followed
    by the command's advice, as the command says it (:func:`~conetool.cli.app.handle_errors`);
    before one starts, by nothing: nothing was written."""
    try:
        if announce and speaks_for_the_job():
            advice = "".join(f" {line}" for line in INTERRUPT_ADVICE)
            print(f"interrupted.{advice}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(INTERRUPTED)


__all__ = ["app", "main"]
