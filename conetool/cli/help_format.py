"""Help pages that read well.

- Typer labels every option with its type; for a flag (``--quiet``, ``--overwrite``, ``--help``)
  ``<bool>`` reads as if it took a value. :func:`tidy_help` gives every command of the app (and
  the app itself) a command class whose flags have an empty label.
- Typer keeps the docstring's own line breaks after the first paragraph, so a help page broke
  lines mid-sentence wherever the source did (and again at the terminal's width).
  :func:`reflow` joins the lines of each paragraph, keeping a line break only before a command
  line (``conetool ...``, ``torchrun ...``) and after a line that ends with a colon.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.models import DefaultPlaceholder


def _blank_flag_labels(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class FlagsCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _blank_flag_labels(super().get_params(ctx))


class FlagsGroup(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _blank_flag_labels(super().get_params(ctx))


_COMMAND_LINE = re.compile(r"^(conetool|torchrun|python|PYTHONPATH=|CONETOOL_|OMP_)")


def reflow(doc: str) -> str:
    """``doc`` with each paragraph on one line, except before command lines and after colons;
    paragraphs stay separated by a blank line."""
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        out = lines[:1]
        for line in lines[1:]:
            if _COMMAND_LINE.match(line) or out[-1].endswith(":"):
                out.append(line)
            else:
                out[-1] += " " + line
        paragraphs.append("\n".join(out))
    return "\n\n".join(paragraphs)


def tidy_help(app: typer.Typer) -> None:
    """Reflow every command's docstring (:func:`reflow`) and use :class:`FlagsCommand` for every
    command and :class:`FlagsGroup` for the app (where no other class was chosen: Typer's own, or
    its placeholder for the default)."""
    if app.info.cls is None or isinstance(app.info.cls, DefaultPlaceholder):
        app.info.cls = FlagsGroup
    for command in app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = FlagsCommand
        if command.help is None and command.callback is not None and command.callback.__doc__:
            command.help = reflow(command.callback.__doc__)
