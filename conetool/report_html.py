"""The report as a small document model, rendered to one self-contained HTML page or to Markdown.

:mod:`conetool.pipeline.run_report` gathers what a store holds into a :class:`Document` (sections
of paragraphs, tables, figures, code blocks); :func:`to_html` and :func:`to_markdown` render the
same document, so the two never say different things.

HTML: one file, inline CSS, no script, no external resource of any kind (figures are embedded as
``data:image/png;base64`` URIs read from the store's PNG files, not re-rendered), every text
escaped. It opens offline in any browser. Markdown: GitHub tables, figures linked by a path
relative to the Markdown file (``../distance/to_ref.png`` from ``STORE/report/report.md``).
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Code",
    "Document",
    "Figure",
    "Items",
    "Section",
    "Table",
    "Text",
    "b",
    "code",
    "text",
    "to_html",
    "to_markdown",
]

# An inline span: (style, text), style "" (plain), "b" (bold) or "code".
Span = tuple[str, str]


@dataclass(frozen=True)
class Text:
    """A paragraph of spans; ``note`` renders it as a highlighted callout."""

    spans: tuple[Span, ...]
    note: bool = False


@dataclass(frozen=True)
class Items:
    """A bulleted list, one :class:`Text` per item."""

    items: tuple[Text, ...]


@dataclass(frozen=True)
class Table:
    """A table; ``numeric`` marks right-aligned columns; ``collapse`` (a label) folds it away in
    HTML (``<details>``) when it is long."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()
    collapse: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Figure:
    """A PNG from the store: embedded in HTML, linked in Markdown."""

    path: Path
    alt: str
    caption: str


@dataclass(frozen=True)
class Code:
    """A preformatted block (``language`` names the Markdown fence: toml, console, ...)."""

    text: str
    language: str = ""


Block = Text | Items | Table | Figure | Code


@dataclass(frozen=True)
class Section:
    """A titled section; ``anchor`` is its HTML id (and the table of contents' link)."""

    anchor: str
    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str
    sections: tuple[Section, ...] = field(default_factory=tuple)


def text(*parts: str | Span, note: bool = False) -> Text:
    """A paragraph from plain strings and styled spans: ``text("regime ", b("cone"), ".")``."""
    return Text(tuple(("", p) if isinstance(p, str) else p for p in parts), note=note)


def b(value: object) -> Span:
    return ("b", str(value))


def code(value: object) -> Span:
    return ("code", str(value))


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1f2328;
  font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 28px 32px 48px; background: #fff;
  min-height: 100vh; box-shadow: 0 0 0 1px #e3e6ea; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e6ea; }
.subtitle { color: #59636e; margin: 0 0 18px; }
nav { font-size: 13.5px; margin: 0 0 8px; color: #59636e; }
nav a { color: #0b5cad; text-decoration: none; margin-right: 14px; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
p { margin: 8px 0; }
.note { background: #fff8e6; border-left: 4px solid #e0a100; padding: 8px 12px; }
ul { margin: 8px 0; padding-left: 22px; }
code { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  background: #f0f2f4; padding: 1px 4px; border-radius: 4px; }
pre { font: 13px/1.45 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
  background: #f6f8fa; border: 1px solid #e3e6ea; border-radius: 6px; padding: 10px 12px;
  overflow-x: auto; white-space: pre; }
pre code { background: none; padding: 0; }
.table-wrap { display: inline-block; vertical-align: top; max-width: 100%; overflow-x: auto;
  margin: 8px 28px 8px 0; }
table { border-collapse: collapse; font-size: 14px; }
caption { text-align: left; color: #59636e; font-size: 13px; padding: 0 0 4px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
th { background: #f0f2f4; text-align: left; font-weight: 600; border-bottom: 1px solid #c9ced4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #fafbfc; }
details { margin: 10px 0; }
summary { cursor: pointer; color: #0b5cad; }
figure { margin: 16px 0 22px; }
figure img { display: block; max-width: 100%; max-height: 640px; width: auto; height: auto;
  margin: 0 auto;
  border: 1px solid #e3e6ea; border-radius: 4px; }
figcaption { color: #59636e; font-size: 13.5px; margin-top: 6px; }
footer { margin-top: 40px; color: #8a939c; font-size: 12.5px; }
"""


def to_html(doc: Document) -> str:
    """The whole page as a string: inline CSS, embedded figures, escaped text, no scripts."""
    nav = " ".join(f'<a href="#{_attr(s.anchor)}">{_esc(s.title)}</a>' for s in doc.sections)
    body = "\n".join(_html_section(s) for s in doc.sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(doc.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<h1>{_esc(doc.title)}</h1>\n<p class="subtitle">{_esc(doc.subtitle)}</p>\n'
        f"<nav>{nav}</nav>\n{body}\n"
        f"<footer>{_esc(doc.subtitle)}</footer>\n</main>\n</body>\n</html>\n"
    )


def _esc(value: object) -> str:
    return html.escape(str(value), quote=False)


def _attr(value: object) -> str:
    return html.escape(str(value), quote=True)


def _html_spans(spans: Sequence[Span]) -> str:
    out = []
    for style, value in spans:
        if style == "b":
            out.append(f"<strong>{_esc(value)}</strong>")
        elif style == "code":
            out.append(f"<code>{_esc(value)}</code>")
        else:
            out.append(_esc(value))
    return "".join(out)


def _html_section(section: Section) -> str:
    blocks = "\n".join(_html_block(block) for block in section.blocks)
    return f'<section id="{_attr(section.anchor)}">\n<h2>{_esc(section.title)}</h2>\n{blocks}\n</section>'


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        klass = ' class="note"' if block.note else ""
        return f"<p{klass}>{_html_spans(block.spans)}</p>"
    if isinstance(block, Items):
        items = "".join(f"<li>{_html_spans(item.spans)}</li>" for item in block.items)
        return f"<ul>{items}</ul>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(Path(block.path).read_bytes()).decode("ascii")
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{_attr(block.alt)}">'
            f"<figcaption>{_esc(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Code):
        return f"<pre><code>{_esc(block.text.rstrip())}</code></pre>"
    raise TypeError(f"unknown block {block!r}")


def _html_table(table: Table) -> str:
    numeric = list(table.numeric) + [False] * (len(table.header) - len(table.numeric))

    def cell(tag: str, value: str, i: int) -> str:
        klass = ' class="num"' if numeric[i] else ""
        return f"<{tag}{klass}>{_esc(value)}</{tag}>"

    head = "".join(cell("th", h, i) for i, h in enumerate(table.header))
    rows = "\n".join(
        "<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{_esc(table.caption)}</caption>" if table.caption else ""
    markup = (
        f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody></table></div>"
    )
    if table.collapse:
        return f"<details><summary>{_esc(table.collapse)}</summary>{markup}</details>"
    return markup


# --------------------------------------------------------------------------- Markdown

# Characters Markdown could read as markup: backslash, backtick, asterisk, '<', '|' (tables),
# and '_' where it could open or close emphasis (not inside a word: "phase1_fraction" stays).
_MD_SPECIAL = re.compile(r"([\\`*<|]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")


def to_markdown(doc: Document, base: Path) -> str:
    """The document as GitHub Markdown; figures are linked relative to ``base`` (the directory
    the Markdown file is written to)."""
    lines = [f"# {_md(doc.title)}", "", f"*{_md(doc.subtitle)}*", ""]
    for section in doc.sections:
        lines += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            lines += [*_md_block(block, Path(base)), ""]
    return "\n".join(lines).rstrip() + "\n"


def _md(value: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", value)


def _md_code_span(value: str) -> str:
    fence = "``" if "`" in value else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def _md_spans(spans: Sequence[Span]) -> str:
    out = []
    for style, value in spans:
        if style == "b":
            out.append(f"**{_md(value)}**")
        elif style == "code":
            out.append(_md_code_span(value))
        else:
            out.append(_md(value))
    return "".join(out)


def _md_block(block: Block, base: Path) -> list[str]:
    if isinstance(block, Text):
        line = _md_spans(block.spans)
        return [f"> {line}"] if block.note else [line]
    if isinstance(block, Items):
        return [f"- {_md_spans(item.spans)}" for item in block.items]
    if isinstance(block, Table):
        numeric = list(block.numeric) + [False] * (len(block.header) - len(block.numeric))
        rule = ["---:" if n else "---" for n in numeric]
        out = [f"*{_md(block.caption)}*", ""] if block.caption else []
        out.append("| " + " | ".join(_md(h) for h in block.header) + " |")
        out.append("| " + " | ".join(rule) + " |")
        out += ["| " + " | ".join(_md(v) for v in row) + " |" for row in block.rows]
        return out
    if isinstance(block, Figure):
        try:
            link = Path(os.path.relpath(Path(block.path), base)).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            link = Path(block.path).resolve().as_posix()
        if re.search(r"[\s()]", link):
            link = f"<{link}>"
        return [f"![{_md(block.alt)}]({link})", "", f"*{_md(block.caption)}*"]
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return [f"{fence}{block.language}", block.text.rstrip(), fence]
    raise TypeError(f"unknown block {block!r}")
