"""``switch --at`` with a range of more steps than a sweep can hold (a stride left out, a typo'd
stop) is refused naming --at and the fix, before the range is expanded: expanding
``0:99999999999999999999:1`` filled the memory in a C loop that Ctrl-C could not stop."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conetool.errors import ConetoolError
from conetool.pipeline.switch_options import parse_at

ROOT = Path(__file__).resolve().parents[1]
MAX_POINTS = 100_000  # conetool.pipeline.switch_options.MAX_POINTS


def test_parse_at_refuses_more_points_than_it_takes():
    stop = MAX_POINTS + 1
    with pytest.raises(ConetoolError, match=rf"^--at '0:{stop}:1' names {stop} switch points"):
        parse_at([f"0:{stop}:1"])
    with pytest.raises(ConetoolError, match=r"stride.*\(--at 0:10000:1000\)"):
        parse_at([f"0:{MAX_POINTS}", f"{MAX_POINTS}:{stop}"])  # together past the bound


def test_a_range_past_the_bound_with_the_points_before_it_says_their_total():
    """The second range names 60000 points, under the bound: the message says the total it
    makes with the first's, not only its own count beside the bound it does not pass alone;
    and a range that has a stride of 1 is asked for a larger one, not for "a stride"."""
    with pytest.raises(ConetoolError) as raised:
        parse_at(["0:60000", "60000:120000"])
    message = str(raised.value)
    assert "names 60000 switch points (120000 with the 60000 named before it)" in message
    assert "a larger stride" in message
    assert len(parse_at([f"0:{MAX_POINTS}"])) == MAX_POINTS
    assert parse_at(range(0, 12, 4)) == [0, 4, 8]


#: Runs in a child whose address space is capped 2 GiB above what its imports took, so that a
#: range expanded in memory fails there (MemoryError) instead of filling the machine.
CHILD = """
import resource, sys
from typer.testing import CliRunner
from conetool.cli import app
import conetool.pipeline.run_switch
from conetool.pipeline.switch_options import parse_at
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**31, vm + 2**31))
try:
    parse_at(range(0, 10**20))
except Exception as error:
    print("range:", type(error).__name__, error)
at, store = sys.argv[1], sys.argv[2]
result = CliRunner().invoke(app, ["switch", "--at", at, "--store", store, "-q"])
print("exit", result.exit_code)
print(result.output)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_a_huge_at_range_is_refused_at_once(tmp_path):
    store = tmp_path / "store"
    at = "0:99999999999999999999:1"
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), at, str(store)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    out = " ".join(child.stdout.split())
    assert f"range: ConetoolError --at {range(0, 10**20)!r} names more than" in out, out
    assert "exit 1" in out and f"--at '{at}' names more than {MAX_POINTS} switch points" in out
    assert "Traceback" not in child.stdout + child.stderr, child.stderr
    assert not store.exists()
