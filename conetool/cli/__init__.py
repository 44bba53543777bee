"""The command line: Typer and rich live here and nowhere else in conetool."""

import signal
import sys

from .._startup import INTERRUPTED, exit_if_command_line

# isort: off
# Each command module registers itself on the app; --help lists them in this (pipeline) order.
try:
    from .app import app
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

    A Ctrl-C at any moment exits 130 without a traceback: inside a command the command says
    so (``handle_errors``); elsewhere (option parsing, start-up) click's "Aborted!" or our line
    is printed, and an interrupt is never turned into exit 0 or 1.
    """
    interrupted: list[int] = []

    def on_interrupt(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, on_interrupt)
    except ValueError:  # not the main thread (an embedding application): leave it alone
        pass
    try:
        app(prog_name="conetool")
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except SystemExit as done:
        from .app import INTERRUPT_ANNOUNCED

        if (interrupted or done.code == INTERRUPTED) and not INTERRUPT_ANNOUNCED:
            print("interrupted.", file=sys.stderr)  # e.g. Typer's own exit 130 says nothing
        if interrupted and done.code != INTERRUPTED:
            raise SystemExit(INTERRUPTED) from None
        raise


__all__ = ["app", "main"]
