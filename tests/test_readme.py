"""The README against the code it describes: every flag it gives a command is one of that
command's options, every script it runs exists with the flags it passes, and its map of the
code ("How the code is laid out") names every module of ``conetool/``, each in its folder, and
no module that is gone."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import typer

from conetool.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "conetool"
README = (ROOT / "README.md").read_text(encoding="utf-8")

_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _options() -> dict[str, set[str]]:
    """command name -> its long options (``--help`` included)."""
    group = typer.main.get_command(app)
    commands = getattr(group, "commands", {})
    return {
        name: {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        for name, command in commands.items()
    }


def _code(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every line of a fenced block and every inline code span."""
    found: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            found.append((number, line))
        else:
            found.extend((number, span) for span in re.findall(r"`([^`]+)`", line))
    return found


def test_every_flag_written_after_a_conetool_command_is_one_of_its_options():
    options = _options()
    wrong = []
    for number, code in _code(README):
        for match in re.finditer(r"conetool (\w+)((?:[ \t]+[^\s#|;&`]+)*)", code):
            name, rest = match.groups()
            if name in options:
                wrong += [(number, name, f) for f in _FLAG.findall(rest) if f not in options[name]]
    assert not wrong, f"README line, command, flag it does not have: {wrong}"


def test_every_flag_in_a_command_section_is_an_option_of_some_command():
    """A ``--flag`` in backticks under ``### `conetool X``` (``--ref STEP``, or another
    command's ``kernels --eval-size``) names an option that exists: a renamed one fails here."""
    every = set().union(*_options().values())
    section = None
    wrong = []
    for number, line in enumerate(README.splitlines(), 1):
        heading = re.match(r"(#+) ", line)
        if heading:
            named = re.match(r"#{2,4} `conetool (\w+)", line)
            section = named.group(1) if named else (section if len(heading.group(1)) > 3 else None)
        elif section:
            wrong += [
                (number, f) for f in re.findall(r"`(--[a-z][a-z0-9-]*)", line) if f not in every
            ]
    assert not wrong, f"README line, flag no command has: {wrong}"


def test_every_script_the_readme_runs_exists_and_takes_the_flags_given():
    wrong = []
    for number, line in enumerate(README.splitlines(), 1):
        for match in re.finditer(
            r"python ((?:benchmarks|scripts)/[\w/]+\.py)((?:[ \t]+[^\s`]+)*)", line
        ):
            script = ROOT / match.group(1)
            if not script.is_file():
                wrong.append((number, match.group(1), "missing"))
                continue
            source = script.read_text(encoding="utf-8")
            wrong += [
                (number, match.group(1), f)
                for f in _FLAG.findall(match.group(2))
                if not re.search(re.escape(f) + r"(?![\w-])", source)
            ]
    assert not wrong, f"README line, script, flag it does not take: {wrong}"


def _layout() -> dict[Path, list[str]]:
    """The "How the code is laid out" block: folder -> the module names written in it. A line
    that starts in the first column opens a group: ``cli/`` the folder conetool/cli, any other
    word (``engine``) conetool/ itself; indented lines (``  |``, ``  v``) continue it."""
    section = README.split("## How the code is laid out", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    groups: dict[Path, list[str]] = {}
    folder = PACKAGE
    for line in block.splitlines():
        if line and not line[0].isspace():
            head = line.split()[0]
            folder = PACKAGE / head.rstrip("/") if head.endswith("/") else PACKAGE
        groups.setdefault(folder, []).extend(re.findall(r"(?<![\w/.<>*])([\w<>*]+\.py)\b", line))
    return groups


def _pattern(name: str) -> re.Pattern[str]:
    """``run_<command>.py`` and ``data*.py`` as patterns over file names."""
    escaped = re.escape(name).replace(r"\*", r"\w*")
    return re.compile(re.sub(r"<\w+>", r"\\w+", escaped) + r"\Z")


def test_every_module_the_layout_names_is_in_its_folder():
    wrong = []
    for folder, names in _layout().items():
        present = [p.name for p in folder.glob("*.py")] if folder.is_dir() else []
        wrong += [
            f"{folder.relative_to(ROOT)}/{name}"
            for name in names
            if not any(_pattern(name).match(file) for file in present)
        ]
    assert not wrong, f"named in the README's layout, no such module: {wrong}"


@pytest.mark.parametrize(
    "folder",
    [PACKAGE, *sorted(p.parent for p in PACKAGE.glob("*/__init__.py"))],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_the_layout_names_every_module_of_the_folder(folder):
    names = _layout().get(folder, [])
    unnamed = [
        p.name
        for p in sorted(folder.glob("*.py"))
        if p.name not in ("__init__.py", "__main__.py")
        and not any(_pattern(name).match(p.name) for name in names)
    ]
    assert not unnamed, (
        f"modules of {folder.relative_to(ROOT)}/ the README's 'How the code is laid out' does "
        f"not name in a line of that folder: {unnamed}"
    )


def test_every_file_name_of_paths_py_is_in_the_readme():
    """The store's and the run's file names are the tool's public format (DESIGN: documented in
    the README): each name ``conetool/paths.py`` gives a file appears in the README."""
    tree = ast.parse((PACKAGE / "paths.py").read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    names = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and re.fullmatch(r"\.?\w[\w.]*\.\w+", node.value)
    }
    assert names, "paths.py gives no file name: the test reads it wrongly"
    missing = sorted(n for n in names if n not in README)
    assert not missing, f"file names of paths.py the README never gives: {missing}"


def _python_blocks() -> list[tuple[int, str]]:
    """(first line number, code) of every ```python block."""
    blocks, start, lines = [], None, []
    for number, line in enumerate(README.splitlines(), 1):
        if start is None and line.strip() == "```python":
            start, lines = number + 1, []
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines)))
            start = None
        elif start is not None:
            lines.append(line)
    return blocks


def test_every_python_block_calls_what_exists_with_its_arguments():
    """Each ```python block parses, every ``conetool.NAME`` (and ``from conetool.MOD import
    NAME``) exists, and every keyword given to a call of one is a parameter of it: a renamed
    argument or function fails here. (The blocks themselves run on the demo's store and on a
    model of your own, which a test does not have; they were run by hand on a tiny run.)"""
    import importlib

    import conetool

    blocks = _python_blocks()
    assert len(blocks) >= 5, blocks
    wrong = []
    for start, code in blocks:
        tree = ast.parse(code)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("conetool"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        wrong.append((start + node.lineno - 1, f"{node.module}.{alias.name}"))
                    else:
                        imported[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "conetool":
                    if not hasattr(conetool, node.attr):
                        wrong.append((start + node.lineno - 1, f"conetool.{node.attr}"))
            inner = node.value if isinstance(node, ast.Attribute) else None
            if (  # conetool.Store.open: the attribute of an exported class
                isinstance(node, ast.Attribute)
                and isinstance(inner, ast.Attribute)
                and isinstance(inner.value, ast.Name)
                and inner.value.id == "conetool"
                and inspect.isclass(getattr(conetool, inner.attr, None))
                and not hasattr(getattr(conetool, inner.attr), node.attr)
            ):
                wrong.append((start + node.lineno - 1, f"conetool.{inner.attr}.{node.attr}"))
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    if func.value.id == "conetool" and hasattr(conetool, func.attr):
                        target = getattr(conetool, func.attr)
                elif isinstance(func, ast.Name) and func.id in imported:
                    target = imported[func.id]
            if target is not None and callable(target):
                parameters = inspect.signature(target).parameters
                takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
                for keyword in node.keywords:
                    if keyword.arg and keyword.arg not in parameters and not takes_any:
                        wrong.append((start + node.lineno - 1, f"{keyword.arg}="))
    assert not wrong, f"README line, name or argument that does not exist: {wrong}"
