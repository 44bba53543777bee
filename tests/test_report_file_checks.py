"""csv_problem on CSV files a report's captions point to: only real damage is flagged.

References: the files are written by hand (bytes), and what ``csv.DictReader`` reads back from
each, opened with ``newline=''`` as conetool reads its CSVs, says whether they are whole.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conetool.io import atomic_write_csv
from conetool.pipeline.report_file_checks import csv_problem

HEADER = ("step", "note", "value")


def written(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "table.csv"
    path.write_bytes(data)
    return path


def read_back(path: Path) -> list[dict[str, str]]:
    """The rows as conetool reads them back."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


WHOLE = {
    # a field holding a character str.splitlines() breaks on (vertical tab, form feed, the
    # Unicode line and paragraph separators, the file and group separators, NEL)
    "splitlines_chars": "step,note,value\n0,a\x0bb,1.0\n1,c\x0cd\u2028e\u2029f\x1cg\x85h,2.0\n",
    # a quoted field holding line ends (a note written over two lines)
    "quoted_line_ends": 'step,note,value\n0,"first\nsecond",1.0\n1,"x\r\ny",2.0\n',
    # a blank line at the end (an editor's)
    "trailing_blank_line": "step,note,value\n0,a,1.0\n1,b,2.0\n\n",
    # a UTF-8 byte order mark (a spreadsheet's export)
    "utf8_bom": "\ufeffstep,note,value\n0,a,1.0\n1,b,2.0\n",
    # Windows line ends
    "crlf": "step,note,value\r\n0,a,1.0\r\n1,b,2.0\r\n",
}


@pytest.mark.parametrize("name", sorted(WHOLE))
def test_a_whole_file_is_not_flagged(tmp_path: Path, name: str):
    # Was: str.splitlines() broke rows on \x0b, \x0c, \u2028 (characters csv.writer leaves
    # unquoted: 'line 3 has 2 of 3 fields'), a trailing blank line was a row of 0 fields, and a
    # byte order mark made the header '\ufeffstep,...'.
    path = written(tmp_path, WHOLE[name].encode("utf-8"))
    assert len(read_back(path)) == 2  # (whole, as conetool reads it)
    assert csv_problem(path, HEADER, rows=2) is None
    assert csv_problem(path, None, rows=2) is None
    assert csv_problem(path, HEADER, rows=3) == "holds 2 rows, where its summary.json says 3"


def test_a_file_conetool_writes_with_such_fields_is_whole(tmp_path: Path):
    # (csv.writer quotes a field holding \n, a comma or a quote, not one holding \x0b or \u2028)
    rows = [(0, "a\nb,c", 1.0), (1, "label\x0bv2\u2028x", 2.0)]
    path = atomic_write_csv(tmp_path / "table.csv", HEADER, rows)
    assert [r["note"] for r in read_back(path)] == [r[1] for r in rows]
    assert csv_problem(path, HEADER, rows=2) is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "is empty"),
        (b"\xef\xbb\xbf\n\n", "is empty"),
        (b"step,note\n0,a\n", "has the header 'step,note', not 'step,note,value'"),
        (b"step,note,value\n0,a,1.0\n1,b\n", "line 3 has 2 of 3 fields"),
        (b'step,note,value\n0,"a\nb",1.0\n1,b\n', "line 4 has 2 of 3 fields"),
        (b"step,note,value\n0,a,1.0\n1,b,2.", "its last line has no line end"),
        # cut short inside a quoted field, just after a line end it holds
        (b'step,note,value\n0,a,1.0\n1,"first\n', "line 3: unexpected end of data"),
        (b"step,note,value\n0,a,\xff\n", "cannot be read as CSV"),
    ],
)
def test_damage_is_flagged(tmp_path: Path, data: bytes, problem: str):
    found = csv_problem(written(tmp_path, data), HEADER)
    assert found is not None and problem in found, found


def test_a_missing_file_is_named_so(tmp_path: Path):
    assert csv_problem(tmp_path / "absent.csv", HEADER) == "is missing"
