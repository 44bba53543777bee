"""CountBar: the ``(done, total)`` reports of the eNTK engine and the S matrix as bars."""

from __future__ import annotations

from typing import Any

import pytest
from test_ntk import rel
from test_ntk_structured import expected, get, minimum_structured_budget

from conetool import ntk
from conetool.ntk import empirical_ntk
from conetool.progress import CountBar


class Bar:
    def __init__(self, total: int | None) -> None:
        self.total = total
        self.steps: list[int] = []
        self.closed = False

    def advance(self, amount: int = 1, **fields: Any) -> None:
        assert not self.closed
        self.steps.append(amount)

    def close(self) -> None:
        self.closed = True


class Bars:
    def __init__(self) -> None:
        self.opened: list[Bar] = []

    def task(self, description: str, total: int | None) -> Bar:
        self.opened.append(Bar(total))
        return self.opened[-1]

    def log(self, message: str) -> None:
        pass


def test_a_count_to_its_total_fills_one_bar_and_closes_it() -> None:
    bars = Bars()
    count = CountBar(bars, "step 0")
    for done in (1, 3, 4):
        count(done, 4)
    (bar,) = bars.opened
    assert bar.steps == [1, 2, 1] and bar.total == 4 and bar.closed


def test_a_count_that_starts_again_opens_a_fresh_bar() -> None:
    # The engine computes a kernel a second time when its later check moves layers: the second
    # count must fill a bar of its own from zero, never move one backwards.
    bars = Bars()
    count = CountBar(bars, "step 0")
    for done in (1, 2, 3, 1, 2, 3):  # completed, then again
        count(done, 3)
    for done in (1, 2, 1, 2, 3):  # stopped part way, then again
        count(done, 3)
    assert [bar.steps for bar in bars.opened] == [[1, 1, 1], [1, 1, 1], [1, 1], [1, 1, 1]]
    assert all(bar.closed for bar in bars.opened)


def test_a_single_unit_opens_no_bar_when_asked() -> None:
    bars = Bars()
    CountBar(bars, "step 0", hide_single=True)(1, 1)
    assert bars.opened == []


def test_a_kernel_computed_twice_reports_two_full_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    # reused_weight's layer is moved by the check that, off the CPU, runs after the blocks (forced
    # here): the blocks are computed twice, and the bar of the second computation is full.
    monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    model, x = get("reused_weight")
    budget = minimum_structured_budget(model, x, "full")  # several blocks
    bars = Bars()
    kernel = empirical_ntk(
        model,
        x,
        kind="full",
        device="cpu",
        method="structured",
        max_memory=budget,
        on_block=CountBar(bars, "step 0"),
    )
    assert rel(kernel, expected("reused_weight", "full")) < 1e-10
    assert len(bars.opened) == 2
    for bar in bars.opened:
        assert bar.total is not None and bar.total > 1
        assert min(bar.steps) >= 0 and sum(bar.steps) == bar.total and bar.closed
