"""The structured engine's check after the blocks (off the CPU, forced here on the CPU).

Off the CPU the set-up before the first block is one hooked pass that measures the bytes per
example; the check (reconstructed per-example gradients against each example's own) runs after
the blocks have been dispatched, while the device computes them, and a layer it moves to the
fallback path makes the engine compute the kernel again with the new layout. These tests force that
order on the CPU (``ntk._checks_later``) and check that the kernels are still exact, that the check
really runs after the blocks, and that the layers it moves still decide the result (interacting
examples are still refused: ``test_ntk.test_explicit_batch_dependency_is_detected``).
"""

from __future__ import annotations

import pytest
import torch
from test_ntk import Counter, rel
from test_ntk_cross import cross_reference
from test_ntk_structured import (
    ALL_MODELS,
    KINDS,
    expected,
    get,
    minimum_structured_budget,
    record_sources,
)
from torch import nn

from conetool import ntk
from conetool.ntk import EngineMemo, empirical_ntk
from conetool.ntk_structured import StructuredRows

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU's order on the CPU: the check after the blocks."""
    monkeypatch.setattr(ntk, "_checks_later", lambda device: True)


@pytest.mark.usefixtures("later")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_the_check_after_the_blocks_gives_the_exact_kernel_and_the_same_layout(
    name: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = get(name)
    memo = EngineMemo()
    kernel = empirical_ntk(model, x, kind=kind, device="cpu", method="structured", memo=memo)
    assert rel(kernel, expected(name, kind)) < 1e-10
    (learned,) = memo.entries.values()
    monkeypatch.undo()  # the CPU's order: the check before the blocks
    first = EngineMemo()
    empirical_ntk(model, x, kind=kind, device="cpu", method="structured", memo=first)
    (checked_first,) = first.entries.values()
    assert learned == checked_first  # what the memo keeps for the next checkpoint


def model_size(model: nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


def _order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The set-up check and the row computations, in the order they run."""
    events: list[str] = []
    for method, label in (("_check", "check"), ("_rows", "rows")):
        original = getattr(StructuredRows, method)

        def spy(self, *args, _original=original, _label=label, **kwargs):  # type: ignore[no-untyped-def]
            events.append(_label)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(StructuredRows, method, spy)
    return events


def test_off_the_cpu_the_check_runs_after_the_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = get("conv_bn", n=6)
    budget = minimum_structured_budget(model, x, "trace") + 3 * 8 * model_size(model)  # blocks
    events = _order(monkeypatch)
    empirical_ntk(model, x, device="cpu", method="structured", max_memory=budget)
    assert events[0] == "check" and events.count("check") == 1  # the CPU: before the blocks
    rows = events.count("rows")
    assert rows > 1
    events.clear()
    monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    empirical_ntk(model, x, device="cpu", method="structured", max_memory=budget)
    assert events == ["rows"] * rows + ["check"]


@pytest.mark.usefixtures("later")
def test_a_layer_the_check_moves_makes_the_kernel_computed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # reused_weight: a weight also used outside its module's forward. Before the check the layer
    # is hooked and its reconstructed rows are wrong; the check moves it, and the kernel is
    # computed again with it on the fallback path.
    model, x = get("reused_weight")
    made = record_sources(monkeypatch)
    rows = Counter(monkeypatch, StructuredRows, "_rows")
    kernel = empirical_ntk(model, x, kind="full", device="cpu", method="structured")
    assert rel(kernel, expected("reused_weight", "full")) < 1e-10
    assert made[0].fallback and made[0].checked
    assert rows.count == 2  # one block, computed twice


@pytest.mark.parametrize("kind", KINDS)
def test_a_too_small_budget_names_the_minimum_of_the_checked_layout(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # reused_weight's layer moves to the fallback path, whose rows take more memory. The minimum
    # that a too-small budget's message names must be the checked layout's, as on the CPU, not
    # that of the layout before the check (which a later call would then also refuse).
    model, x = get("reused_weight")
    checked_first = minimum_structured_budget(model, x, kind)
    monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    assert minimum_structured_budget(model, x, kind) == checked_first
    kernel = empirical_ntk(
        model, x, kind=kind, device="cpu", method="structured", max_memory=checked_first
    )
    assert rel(kernel, expected("reused_weight", kind)) < 1e-10


@pytest.mark.usefixtures("later")
@pytest.mark.parametrize("name", ["mlp", "conv_bn", "reused_weight", "tied"])
def test_cross_and_blocked_kernels_with_the_check_after_the_blocks(name: str) -> None:
    # Cross kernels, and a blocked schedule, in the GPU's order: reused_weight's kernel is then
    # computed again block by block after its layer moves.
    model, x = get(name, n=7)
    x1, x2 = x[:4], x[4:]
    for kind in KINDS:
        cross = empirical_ntk(model, x1, x2, kind=kind, device="cpu", method="structured")
        assert rel(cross, cross_reference(model, x1, x2, kind)) < 1e-10
        low = minimum_structured_budget(model, x, kind)
        blocked = empirical_ntk(
            model, x, kind=kind, device="cpu", method="structured", max_memory=low
        )
        assert rel(blocked, expected(name, kind, n=7)) < 1e-10


class _Source:
    """A stand-in for StructuredRows: what its later check finds."""

    def __init__(self, changed: bool) -> None:
        self.changed = changed
        self.pair_outputs = None

    def check_later_found_changes(self) -> bool:
        return self.changed


def _decided(changed: bool, error: Exception) -> tuple[torch.Tensor | None, int]:
    """``_computed_then_checked`` of a computation that raises ``error`` the first time and
    returns a kernel the second, with a check that finds ``changed``: the kernel (``None`` when
    it raised ``error``) and how many times it computed."""
    kernel = torch.ones(2, 2)
    calls: list[int] = []

    def computed() -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return kernel

    try:
        got = ntk._computed_then_checked(
            _Source(changed),  # type: ignore[arg-type]
            computed,
            nn.Identity(),
            kernel,
            independence=False,
        )
    except type(error) as exc:
        assert exc is error
        return None, len(calls)
    return got, len(calls)


def test_a_first_computation_that_fails_is_decided_by_the_check() -> None:
    # A layer the check would move may make the blocks fail before the check has run: when the
    # check moves layers, the kernel is computed again; when it does not, the error stands. Running
    # out of device memory is never taken for a layer's fault.
    got, calls = _decided(True, RuntimeError("per-example gradients"))
    assert got is not None and calls == 2
    assert _decided(False, RuntimeError("per-example gradients")) == (None, 1)
    assert _decided(True, torch.OutOfMemoryError("out of memory")) == (None, 1)
