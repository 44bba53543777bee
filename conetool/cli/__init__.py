"""The command line: Typer and rich live here and nowhere else in conetool."""

# isort: off
# Each command module registers itself on the app; --help lists them in this (pipeline) order.
from .app import app
from . import train_cmd  # noqa: F401
from . import inspect_cmd  # noqa: F401
from . import kernels_cmd  # noqa: F401
from . import distance_cmd  # noqa: F401
from . import embed_cmd  # noqa: F401
from . import switch_cmd  # noqa: F401
from . import report_cmd  # noqa: F401
from . import demo_cmd  # noqa: F401
from .help_format import tidy_help

# isort: on

tidy_help(app)


def main() -> None:
    """Entry point of the ``conetool`` console script and ``python -m conetool``."""
    app(prog_name="conetool")


__all__ = ["app", "main"]
