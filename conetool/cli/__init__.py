"""The command line: Typer and rich live here and nowhere else in conetool."""

from . import train_cmd  # noqa: F401  (each command module registers itself on the app)
from .app import app


def main() -> None:
    """Entry point of the ``conetool`` console script and ``python -m conetool``."""
    app(prog_name="conetool")


__all__ = ["app", "main"]
