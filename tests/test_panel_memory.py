"""The panel's memory: one matrix per panel, kept across the calls of a run on the CPU
(ntk_schedule.kept_panel_memory), never more than a call's plan allows."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from conetool import ntk_schedule, ntk_terms, ntk_tuning
from conetool.ntk import empirical_ntk


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))


def _explicit(model: nn.Module, x: Tensor) -> Tensor:
    """The trace kernel from float64 Jacobians, ``(n, n)``."""
    model64 = _copy64(model)
    params = dict(model64.named_parameters())

    def out(p: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(model64, p, (x.double(),))

    jac = torch.func.jacrev(out)(params)  # name -> (n, c, *shape)
    rows = torch.cat([j.reshape(x.shape[0], 4, -1) for j in jac.values()], dim=2)
    return torch.einsum("icp,jcp->ij", rows, rows)


def _copy64(model: nn.Module) -> nn.Module:
    copy = _model()
    copy.load_state_dict(model.state_dict())
    return copy.double()


@pytest.fixture
def stacked(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Small calls stacked into pieces (pieces of 16 rows, calls of 4 examples), and every take of
    panel memory recorded: the Spare, the surplus passed, the matrix's address and size."""
    small = dataclasses.replace(ntk_tuning.CPU, piece_rows=16, syrk_rows=16)
    monkeypatch.setattr(ntk_tuning, "CPU", small)
    monkeypatch.setattr(ntk_schedule, "_MIN_CHUNK", 1)
    original_plan = ntk_schedule.plan

    def small_calls(*args: Any, **kwargs: Any) -> ntk_schedule.Schedule:
        planned = original_plan(*args, **kwargs)
        return ntk_schedule.Schedule(
            planned.groups, panel=planned.panel, chunk=4, room=planned.room
        )

    monkeypatch.setattr(ntk_schedule, "plan", small_calls)
    takes: list[dict[str, Any]] = []
    original_take = ntk_terms.Spare.take

    def recorded(
        self: ntk_terms.Spare, like: Tensor, rows: int, width: int, surplus: int | None = None
    ) -> Tensor:
        got = original_take(self, like, rows, width, surplus)
        # "held" keeps each Spare alive while its take is recorded: two calls' Spares whose
        # lifetimes did not overlap could otherwise share an id (CPython reuses the address)
        takes.append(
            {
                "spare": id(self),
                "held": self,
                "surplus": surplus,
                "ptr": got.data_ptr(),
                "shape": got.shape,
            }
        )
        return got

    monkeypatch.setattr(ntk_terms.Spare, "take", recorded)
    return takes


def test_a_panel_of_stacked_pieces_is_one_matrix_and_the_kernel_stays_exact(
    stacked: list[dict[str, Any]],
) -> None:
    model, x = _model(), torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    got = empirical_ntk(model, x, device="cpu", method="jacobian", max_memory="1GiB")
    # One pass, one group of 4 logits (a trace row holds the 4 logits' gradients side by side,
    # 4 x 180 parameters): 40 examples in pieces of 16, 16 and 8, each of several calls of 4,
    # share one matrix of 40 rows, taken once.
    assert [take["shape"] for take in stacked] == [torch.Size([40, 4 * 180])]
    torch.testing.assert_close(got.double(), _explicit(model, x), rtol=1e-5, atol=1e-5)


def test_calls_in_kept_panel_memory_reuse_one_matrix_and_others_do_not(
    stacked: list[dict[str, Any]],
) -> None:
    model, x = _model(), torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    want = _explicit(model, x)
    with ntk_schedule.kept_panel_memory():
        first = empirical_ntk(model, x, device="cpu", method="jacobian", max_memory="1GiB")
        second = empirical_ntk(model, x, device="cpu", method="jacobian", max_memory="1GiB")
    inside = list(stacked)
    assert len(inside) == 2
    assert inside[0]["spare"] == inside[1]["spare"]  # the same kept memory ...
    assert inside[0]["ptr"] == inside[1]["ptr"]  # ... reused, not allocated again
    assert all(take["surplus"] is not None for take in inside)  # checked on each call's first take
    for kernel in (first, second):
        torch.testing.assert_close(kernel.double(), want, rtol=1e-5, atol=1e-5)
    assert ntk_schedule._KEPT_PANEL.get() is None  # given back on leaving the block
    stacked.clear()
    empirical_ntk(model, x, device="cpu", method="jacobian", max_memory="1GiB")
    empirical_ntk(model, x, device="cpu", method="jacobian", max_memory="1GiB")
    assert len(stacked) == 2 and stacked[0]["spare"] != stacked[1]["spare"]  # each its own


def test_a_nested_block_serves_from_the_outer_blocks_memory() -> None:
    assert ntk_schedule._KEPT_PANEL.get() is None
    with ntk_schedule.kept_panel_memory():
        kept = ntk_schedule._KEPT_PANEL.get()
        assert isinstance(kept, ntk_terms.Spare)
        with ntk_schedule.kept_panel_memory():
            assert ntk_schedule._KEPT_PANEL.get() is kept
        assert ntk_schedule._KEPT_PANEL.get() is kept  # the inner block gave nothing back
    assert ntk_schedule._KEPT_PANEL.get() is None


class _Sizes:
    """What the plan reads of a row source: 2 outputs, 1 MiB of rows per example and logit."""

    c = 2
    fixed = 0

    def resident(self, g: int) -> int:
        return g * 2**20

    def transient(self, g: int) -> int:
        return g * 2**21

    def activations(self, g: int) -> int:
        return 2**10


def test_kept_memory_larger_than_a_call_can_afford_is_given_back_first() -> None:
    spare = ntk_terms.Spare()
    like = torch.zeros(1)
    big = spare.take(like, 100, 10)
    assert spare.nbytes == 4000
    # 10 x 10 needed; 3,600 bytes more held. A surplus of 3,600 affords them: reused.
    assert spare.take(like, 10, 10, surplus=3600).data_ptr() == big.data_ptr()
    assert spare.nbytes == 4000
    # A surplus of 3,599 does not: the held memory goes, the call gets exactly what it needs.
    small = spare.take(like, 10, 10, surplus=3599)
    assert small.shape == (10, 10) and spare.nbytes == 400
    # Without a surplus (a later panel of the same call) larger memory is always reused.
    assert spare.take(like, 5, 10).data_ptr() == small.data_ptr()


def test_the_plan_says_the_budget_it_leaves_unused() -> None:
    source = _Sizes()
    one_pass = ntk_schedule.plan(source, "trace", 8, 2, 2**27, "x", torch.device("cpu"))
    assert one_pass.panel == 8 and one_pass.room > 0
    # Panels: the room is what the panel and a streamed call leave of the planned budget.
    n, budget = 200, 2**27
    panels = ntk_schedule.plan(source, "trace", n, 2, budget, "x", torch.device("cpu"))
    assert panels.panel < n
    fixed = (
        2 * n * n * 8
        + source.fixed
        + 32 * 2**20
        + ntk_tuning.tuning_for(torch.device("cpu")).held_partials
    )
    avail = budget * 9 // 10 - fixed
    g = len(panels.groups[0])
    used = panels.panel * source.resident(g) + panels.chunk * source.transient(g)
    assert panels.room == max(0, avail - used) and used + panels.room <= avail


def test_a_kernels_run_holds_one_panel_memory_for_all_its_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiny_run import train_tiny

    from conetool import kernels

    seen: list[int | None] = []
    original = ntk_schedule.run

    def recorded(*args: Any, **kwargs: Any) -> Tensor:
        kept = ntk_schedule._KEPT_PANEL.get()
        seen.append(None if kept is None else id(kept))
        return original(*args, **kwargs)

    monkeypatch.setattr(ntk_schedule, "run", recorded)
    kernels(train_tiny(tmp_path), store=tmp_path / "store", device="cpu")
    assert len(seen) == 3 and seen[0] is not None and len(set(seen)) == 1
    assert ntk_schedule._KEPT_PANEL.get() is None
