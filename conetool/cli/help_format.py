"""Help pages that read well.

- Typer labels every option with its type; for a flag (``--quiet``, ``--overwrite``, ``--help``)
  ``<bool>`` reads as if it took a value. :func:`tidy_help` gives every command of the app (and
  the app itself) a command class whose flags have an empty label.
- An option given to a command that does not take it gets Typer's "No such option"; when another
  command takes it (``conetool kernels --ref 3``), :class:`FlagsCommand` says which one
  (:func:`_name_other_commands`), instead of suggesting an unrelated option of this command.
- A path option's value that cannot be what the option takes (``--store ''``, a file given to
  ``--store``: :class:`~conetool.errors.OptionError`, raised by its parser) is a usage error
  (exit 2), said as conetool words it, naming the flag and the fix; so is a number option's
  value that Typer refused (``--top-k abc``: :func:`~conetool.cli.number_options.number_problem`).
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

from ..errors import OptionError
from .number_options import number_problem


def _blank_flag_labels(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_bool_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class FlagsCommand(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _blank_flag_labels(super().get_params(ctx))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except OptionError as error:  # a path option's value (conetool.cli.options.path_problem)
            raise typer.BadParameter(str(error), ctx=ctx) from None
        except typer.BadParameter as error:  # a number option's, as Typer checked it
            said = number_problem(error)
            if said is None:
                raise
            raise typer.BadParameter(said, ctx=ctx) from None
        except Exception as error:
            _name_other_commands(error, ctx)
            raise


def _name_other_commands(error: Exception, ctx: Any) -> None:
    """Reword Typer's "No such option" (``error``, raised while parsing ``ctx``'s command line) to
    name the commands of the app that take the option, in the app's order, when there are any.

    The error is recognised by its ``option_name`` (Typer's exception class is private); its type,
    and so its exit code (2), stay Typer's. An option this command takes is left alone: its
    error (``--store`` given no value: "requires an argument") carries the name too."""
    option = getattr(error, "option_name", None)
    group = getattr(ctx.parent, "command", None)
    if not isinstance(option, str) or not option.startswith("--") or group is None:
        return
    if any(option in (*param.opts, *param.secondary_opts) for param in ctx.command.params):
        return
    owners = [
        f"conetool {name}"
        for name, command in getattr(group, "commands", {}).items()
        if name != ctx.info_name
        and any(option in (*param.opts, *param.secondary_opts) for param in command.params)
    ]
    if not owners or not hasattr(error, "message"):
        return
    listed = owners[0] if len(owners) == 1 else ", ".join(owners[:-1]) + " and " + owners[-1]
    error.message = (
        f"No such option: {option}. conetool {ctx.info_name} does not take it; it is an "
        f"option of {listed} (see conetool {ctx.info_name} --help for this command's options)."
    )
    error.possibilities = None  # type: ignore[attr-defined]


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
