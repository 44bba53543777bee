"""A pytest plugin for the GPU session (``benchmarks/gpu_session.sh``): every test's outcome is
written to a file the moment it is known, so that a run stopped by its time limit still says
which tests failed, why, and how long each took.

Load it with ``-p pytest_live_report`` and ``benchmarks`` on ``PYTHONPATH``; set
``CONETOOL_LIVE_REPORT`` to the file. Each test gets one line (``passed``/``failed``/``skipped``,
seconds, node id); a failure adds its traceback (pytest's short form) below its line. With
pytest-xdist the controller writes the file (the workers' reports reach it as they happen).
"""

from __future__ import annotations

import os

import pytest


def _path() -> str | None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: the controller writes
        return None
    return os.environ.get("CONETOOL_LIVE_REPORT") or None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = _path()
    if path is None:
        return
    if report.when == "call" or report.failed or (report.skipped and report.when == "setup"):
        outcome = "failed" if report.failed else "skipped" if report.skipped else "passed"
        if report.when != "call" and report.failed:
            outcome += f" (in {report.when})"
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{outcome:<8} {report.duration:8.2f}s {report.nodeid}\n")
            if report.failed:
                text = report.longreprtext.rstrip()
                handle.write("\n".join("    " + line for line in text.splitlines()[-60:]) + "\n")
