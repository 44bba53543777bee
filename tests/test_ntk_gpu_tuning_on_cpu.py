"""The eNTK engine's GPU tuning, run on the CPU (:mod:`conetool.ntk_tuning`).

Every choice the engine makes differently on a GPU is data in ``ntk_tuning.GPU``: calls as large
as the budget allows (no activation cap), panel pieces of ``piece_rows``, self-products in
sub-blocks of ``sub_rows`` and, for wide dense rows that ``syrk`` does not take, of
``wide_rows``, float32 product pieces of ``piece_columns`` summed ``piece_elements`` partial
products at a time and counted by the plan, no panel memory kept between calls, the structured
engine's fused cotangent copies, its set-up check after the blocks, and ``auto`` always
structured. Here they run on CPU tensors under :func:`~conetool.ntk_tuning.forced_tuning`, their
sizes scaled down (``SMALL_GPU``) so that a few examples of the test zoo take several calls,
panels, pieces, sub-blocks and product pieces; spies count that they did, and every kernel is
compared with the float64 explicit-Jacobian reference (``test_ntk_structured.expected``): within
1e-10 in float64, 1e-5 in float32 (where the float32 product pieces run). A logic error in a GPU
path then fails here, not in a GPU session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_ntk import budget_named, rel
from test_ntk_structured import ALL_MODELS, expected, get
from torch import nn

from conetool import ntk_schedule, ntk_terms, ntk_tuning
from conetool.ntk import METHODS, MemoryBudgetError, empirical_ntk
from conetool.ntk_reference import JacobianRows
from conetool.ntk_structured import StructuredRows
from conetool.ntk_terms import Dense
from conetool.ntk_tuning import forced_tuning

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

KINDS = ("trace", "full", "sum")
# The structured engine hooks only the last layer of keyword_call (the others are called with
# keywords: fallback), whose output cotangent is an expanded view, copied as it is, not fused.
UNFUSED = {"keyword_call"}
# Linear layers as factors (with positions: sequence), convolutions as per-example gradients,
# BatchNorm and LayerNorm, and parameters on the fallback path (tied, reused_weight).
SOME_MODELS = ["mlp", "conv_bn", "residual", "tied", "sequence", "norm_mlp", "reused_weight"]
N, N1 = 9, 5  # examples of a symmetric kernel; of x1 in a cross kernel (x2: the other 4)
# The GPU's tuning at the test zoo's scale: sub-blocks of 4 rows (3 for wide dense rows), panel
# pieces of about 6 rows, float32 pieces of 4 columns summed 40 partial products at a time.
SMALL_GPU = dataclasses.replace(
    ntk_tuning.GPU, sub_rows=4, wide_rows=3, piece_rows=6, piece_columns=4, piece_elements=40
)


class Seen:
    """What the engine did in the calls made while it is installed (spies on the schedule)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sources: list[type] = []
        self.plans: list[ntk_schedule.Schedule] = []
        self.pieces: list[int] = []  # pieces of each panel's self-product
        # per _add_gram: (sub, kinds of its terms, sub-blocks made)
        self.grams: list[tuple[int, frozenset[type], int]] = []
        self.written = 0  # calls copied into a panel piece of several calls
        self.piece_widths: list[int] = []  # inner width of each float32 piece product
        self.batch_sizes: list[int] = []  # pieces per batched product within ntk_terms.product
        self.fused = 0  # torch._foreach_copy_ calls (the fused cotangent copies)
        self.checked_later = 0  # set-up checks run after the blocks
        self._grams_made = 0
        self._in_product = 0
        plan, add_self, add_gram = ntk_schedule.plan, ntk_schedule._add_self, ntk_schedule._add_gram
        gram, write, product = ntk_terms.gram, ntk_terms.write, ntk_terms.product
        bmm, foreach_copy = torch.bmm, torch._foreach_copy_
        check_later = StructuredRows.check_later_found_changes

        def spy_plan(source: Any, *args: Any, **kwargs: Any) -> ntk_schedule.Schedule:
            self.sources.append(type(source))
            self.plans.append(plan(source, *args, **kwargs))
            return self.plans[-1]

        def spy_add_self(kernel: torch.Tensor, pieces: list[Any], device: torch.device) -> None:
            self.pieces.append(len(pieces))
            add_self(kernel, pieces, device)

        def spy_add_gram(kernel: torch.Tensor, pieces: list[Any], sub: int) -> None:
            before = self._grams_made
            add_gram(kernel, pieces, sub)
            kinds = frozenset(type(term) for _, block in pieces for term in block)
            self.grams.append((sub, kinds, self._grams_made - before))

        def spy_gram(block: list[Any]) -> torch.Tensor:
            self._grams_made += 1
            return gram(block)

        def spy_write(*args: Any) -> None:
            self.written += 1
            write(*args)

        def spy_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            self._in_product += 1
            try:
                return product(left, right)
            finally:
                self._in_product -= 1

        def spy_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if self._in_product:
                self.batch_sizes.append(a.shape[0])
                self.piece_widths += [a.shape[2]] * a.shape[0]
            return bmm(a, b)

        def spy_foreach_copy(*args: Any) -> None:
            self.fused += 1
            foreach_copy(*args)

        def spy_check_later(rows: StructuredRows) -> bool:
            self.checked_later += 1
            return check_later(rows)

        monkeypatch.setattr(ntk_schedule, "plan", spy_plan)
        monkeypatch.setattr(ntk_schedule, "_add_self", spy_add_self)
        monkeypatch.setattr(ntk_schedule, "_add_gram", spy_add_gram)
        monkeypatch.setattr(ntk_terms, "gram", spy_gram)
        monkeypatch.setattr(ntk_terms, "write", spy_write)
        monkeypatch.setattr(ntk_terms, "product", spy_product)
        monkeypatch.setattr(torch, "bmm", spy_bmm)
        monkeypatch.setattr(torch, "_foreach_copy_", spy_foreach_copy)
        monkeypatch.setattr(StructuredRows, "check_later_found_changes", spy_check_later)

    def sub_blocks(self, sub: int) -> int:
        """Sub-blocks made by the self-products cut in sub-blocks of ``sub`` rows, in all."""
        return sum(made for rows, _, made in self.grams if rows == sub)

    def assert_sub_blocks(self, tuning: ntk_tuning.Tuning, wide: bool) -> None:
        """Dense terms went to sub-blocks of ``wide_rows`` if ``wide`` (else ``sub_rows``),
        factored terms to ``sub_rows``, and some self-product took several sub-blocks."""
        assert self.grams
        for rows, kinds, _ in self.grams:
            if rows == tuning.wide_rows:
                assert wide and kinds == {Dense}
            else:
                assert rows == tuning.sub_rows and (Dense not in kinds or not wide)
        assert max(made for _, _, made in self.grams) >= 2


@pytest.fixture
def small_gpu() -> Iterator[ntk_tuning.Tuning]:
    """``SMALL_GPU`` forced on every device for the test."""
    with forced_tuning(SMALL_GPU):
        yield SMALL_GPU


@pytest.fixture(params=["wide", "narrow"])
def wide(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """``wide``: every dense term counts as wide (sub-blocks of ``wide_rows``, as resnet20's merged
    per-example gradients on a GPU); ``narrow``: none does (sub-blocks of ``sub_rows``)."""
    is_wide = bool(request.param == "wide")
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_WIDTH", 1 if is_wide else 10**9)
    return is_wide


def minimum_budget(model: nn.Module, x: torch.Tensor, kind: str, method: str, **kw: Any) -> int:
    """The smallest budget the engine accepts under the tuning in force, from its message."""
    with pytest.raises(MemoryBudgetError) as info:
        empirical_ntk(model, x, kind=kind, max_memory=1, device="cpu", method=method, **kw)
    return budget_named(info.value)


def row_bytes(model: nn.Module, kind: str, c: int) -> int:
    """One example's float64 Jacobian rows for ``kind``."""
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return (c if kind == "full" else 1) * p * 8


def cross_expected(name: str, kind: str) -> torch.Tensor:
    """The reference cross kernel between the first ``N1`` of ``N`` examples and the others."""
    whole = expected(name, kind, n=N)
    return whole[:N1, :, N1:, :] if kind == "full" else whole[:N1, N1:]


def assert_symmetric(kernel: torch.Tensor, kind: str) -> None:
    matrix = kernel.reshape(kernel.shape[0] * (kernel.shape[1] if kind == "full" else 1), -1)
    assert torch.equal(matrix, matrix.T)


def assert_gpu_engine(seen: Seen, name: str, method: str, kind: str) -> None:
    """The GPU's engine choices ran: auto took the structured engine, whose set-up check ran
    after the blocks and whose calls with several cotangents copied them fused."""
    if method == "jacobian":
        assert set(seen.sources) == {JacobianRows}
        return
    assert set(seen.sources) == {StructuredRows}  # auto: whatever the share of factors
    assert seen.checked_later >= 1
    if kind != "sum" and name not in UNFUSED:  # several cotangents per call (sum has one)
        assert seen.fused > 0


# --------------------------------------------------------------------------------------------------
# Symmetric kernels: one pass, and panels


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_one_pass_under_the_gpu_tuning_matches_the_reference(
    name: str,
    method: str,
    wide: bool,
    small_gpu: ntk_tuning.Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A budget that holds every row: one call of all N examples (no activation cap), one piece,
    # sub-blocks of 4 rows (3 for wide dense rows) with only the pairs on or above the diagonal.
    model, x = get(name, N)
    for kind in KINDS:
        seen = Seen(monkeypatch)
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method, max_memory="1GiB")
        assert rel(kernel, expected(name, kind, n=N)) < 1e-10, kind
        assert_symmetric(kernel, kind)
        assert_gpu_engine(seen, name, method, kind)
        plan = seen.plans[-1]
        assert plan.panel == N and plan.chunk == N  # calls as large as the budget allows
        assert set(seen.pieces) == {1}
        seen.assert_sub_blocks(small_gpu, wide)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SOME_MODELS)
def test_panels_under_the_gpu_tuning_match_the_reference(
    name: str,
    method: str,
    wide: bool,
    small_gpu: ntk_tuning.Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Budgets a few rows above the minimum under the GPU's tuning (which counts its partial
    # products): several panels, each filled by several calls, stacked into pieces of about 6
    # rows, and streamed blocks of the later examples.
    model, x = get(name, N)
    c = expected(name, "full", n=N).shape[1]
    seen = Seen(monkeypatch)
    for kind in KINDS:
        low = minimum_budget(model, x, kind, method)
        for extra_rows in (0, 2, 5):
            budget = low + extra_rows * row_bytes(model, kind, c)
            kernel = empirical_ntk(
                model, x, kind=kind, device="cpu", method=method, max_memory=budget
            )
            assert rel(kernel, expected(name, kind, n=N)) < 1e-10, (kind, extra_rows)
            assert_symmetric(kernel, kind)
        with pytest.raises(MemoryBudgetError):
            empirical_ntk(model, x, kind=kind, device="cpu", method=method, max_memory=low - 1)
    assert_gpu_engine(seen, name, method, "trace")
    assert any(plan.panel < N for plan in seen.plans)  # several panels
    assert any(plan.chunk < plan.panel < N for plan in seen.plans)  # several calls per panel
    assert max(seen.pieces) >= 2 and seen.written > 0  # pieces, some stacked from several calls
    seen.assert_sub_blocks(small_gpu, wide)


# --------------------------------------------------------------------------------------------------
# Cross kernels: one pass, and panels of x1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SOME_MODELS)
def test_cross_kernels_under_the_gpu_tuning_match_the_reference(
    name: str, method: str, small_gpu: ntk_tuning.Tuning, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = get(name, N)
    x1, x2 = x[:N1], x[N1:]
    c = expected(name, "full", n=N).shape[1]
    seen = Seen(monkeypatch)
    for kind in KINDS:
        want = cross_expected(name, kind)
        whole = empirical_ntk(model, x1, x2, kind=kind, device="cpu", method=method)
        assert whole.shape == want.shape
        assert rel(whole, want) < 1e-10, kind
        assert seen.plans[-1].chunk == N1  # x1 in one call, x2 in one
        low = minimum_budget(model, x1, kind, method, x2=x2)
        for extra_rows in (0, 2):
            budget = low + extra_rows * row_bytes(model, kind, c)
            kernel = empirical_ntk(
                model, x1, x2, kind=kind, device="cpu", method=method, max_memory=budget
            )
            assert rel(kernel, want) < 1e-10, (kind, extra_rows)
    assert_gpu_engine(seen, name, method, "trace")
    assert not seen.pieces  # no self-product in a cross kernel
    assert any(plan.panel < N1 for plan in seen.plans)  # several panels of x1
    assert seen.written > 0  # panels stacked from several calls


# --------------------------------------------------------------------------------------------------
# float32: the product pieces


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SOME_MODELS)
def test_float32_pieces_under_the_gpu_tuning_match_the_reference(
    name: str,
    method: str,
    wide: bool,
    small_gpu: ntk_tuning.Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Products wider than 4 columns go in float32 pieces of 4, summed in float64 a few batched
    # pieces at a time (40 partial products held: one piece per batch on a 9 x 9 product, several
    # on small sub-block products). A lost, doubled or misplaced piece is O(1) off.
    model64, x64 = get(name, N)
    model = model64.float()
    x = x64.float()
    seen = Seen(monkeypatch)
    for kind in KINDS:
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
        assert kernel.dtype == torch.float32
        assert rel(kernel, expected(name, kind, n=N)) < 1e-5, kind
        low = minimum_budget(model, x, kind, method)
        blocked = empirical_ntk(model, x, kind=kind, device="cpu", method=method, max_memory=low)
        assert rel(blocked, expected(name, kind, n=N)) < 1e-5, kind
        cross = empirical_ntk(model, x[:N1], x[N1:], kind=kind, device="cpu", method=method)
        assert rel(cross, cross_expected(name, kind)) < 1e-5, kind
    assert set(seen.piece_widths) == {small_gpu.piece_columns}
    assert min(seen.batch_sizes) == 1 and max(seen.batch_sizes) > 1  # pieces one and several


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 9), (9, 9)])
@pytest.mark.parametrize("width", [4, 5, 47, 160, 163])
def test_a_float32_product_in_the_gpu_pieces_is_exact_on_integers(
    shape: tuple[int, int],
    width: int,
    small_gpu: ntk_tuning.Tuning,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small integers: every float32 partial product is exact, so the float64 sum of the pieces
    # equals the float64 product exactly, whatever the pieces and batches (40 partial products
    # held: 40, 6, 1 and 1 pieces per batch for the four shapes; 4 columns: one product, no
    # pieces; the other widths leave 0-3 columns after the last piece).
    gen = torch.Generator().manual_seed(width)
    m, n = shape
    left = torch.randint(-8, 9, (m, width), generator=gen).float()
    right = torch.randint(-8, 9, (n, width), generator=gen).float()
    seen = Seen(monkeypatch)
    got = ntk_terms.product(left, right)
    assert got.dtype == torch.float64
    assert torch.equal(got, left.double() @ right.double().T)
    pieces = width // small_gpu.piece_columns if width > small_gpu.piece_columns else 0
    assert len(seen.piece_widths) == pieces
    per_batch = max(1, small_gpu.piece_elements // (m * n))
    assert len(seen.batch_sizes) == -(-pieces // per_batch)


# --------------------------------------------------------------------------------------------------
# The tuning's other choices


def test_the_gpu_plan_counts_its_partial_products(small_gpu: ntk_tuning.Tuning) -> None:
    # The smallest budget under the GPU's tuning is larger than the CPU's by the partial products
    # it holds (piece_elements float32 numbers), as the plan's 90% share of the budget.
    model, x = get("mlp", N)
    gpu = minimum_budget(model, x, "trace", "jacobian")
    with forced_tuning(ntk_tuning.CPU):
        cpu = minimum_budget(model, x, "trace", "jacobian")
    assert small_gpu.held_partials == 4 * small_gpu.piece_elements
    assert gpu - cpu == pytest.approx(small_gpu.held_partials * 10 / 9, abs=2)


def test_the_gpu_tuning_keeps_no_panel_memory_between_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Within kept_panel_memory() the CPU's calls share one Spare for their panels' pieces; under
    # the GPU's tuning each call has its own (a device's caching allocator keeps memory anyway).
    spares: list[ntk_terms.Spare] = []
    take = ntk_terms.Spare.take

    def recorded(self: ntk_terms.Spare, *args: Any) -> torch.Tensor:
        spares.append(self)
        return take(self, *args)

    monkeypatch.setattr(ntk_terms.Spare, "take", recorded)
    model, x = get("conv_bn", N)
    for tuning, shared in ((ntk_tuning.CPU, True), (SMALL_GPU, False)):
        spares.clear()
        small = dataclasses.replace(tuning, activation_bytes=1, piece_rows=6)  # calls of 1 example
        with forced_tuning(small), ntk_schedule.kept_panel_memory():
            for _ in range(2):
                kernel = empirical_ntk(model, x, device="cpu", method="jacobian")
                assert rel(kernel, expected("conv_bn", "trace", n=N)) < 1e-10
        assert len(spares) >= 2
        assert (len({id(spare) for spare in spares}) == 1) == shared


def test_forced_tuning_applies_to_every_device_and_restores() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert ntk_tuning.tuning_for(cpu) is ntk_tuning.CPU
    assert ntk_tuning.tuning_for(cuda) is ntk_tuning.GPU
    with forced_tuning(SMALL_GPU):
        assert ntk_tuning.tuning_for(cpu) is ntk_tuning.tuning_for(cuda) is SMALL_GPU
        with forced_tuning(ntk_tuning.CPU):
            assert ntk_tuning.tuning_for(cuda) is ntk_tuning.CPU
        assert ntk_tuning.tuning_for(cpu) is SMALL_GPU
    assert ntk_tuning.tuning_for(cpu) is ntk_tuning.CPU


def test_the_tunings_hold_todays_numbers() -> None:
    # What the measurements in conetool/ntk_tuning.py chose; a change here is a tuning change.
    cpu, gpu = ntk_tuning.CPU, ntk_tuning.GPU
    assert (cpu.activation_bytes, gpu.activation_bytes) == (2**28, None)
    assert (cpu.sub_rows, gpu.sub_rows) == (512, 4096)
    assert (cpu.wide_rows, gpu.wide_rows) == (None, 256)
    assert (cpu.syrk_rows, gpu.syrk_rows) == (2048, None)
    assert (cpu.piece_rows, gpu.piece_rows) == (2048, 4096)
    assert (cpu.piece_columns, gpu.piece_columns) == (4096, 512)
    assert (cpu.piece_elements, gpu.piece_elements) == (2**22, 2**26)
    assert (cpu.held_partials, gpu.held_partials) == (0, 256 * 2**20)
    assert (cpu.keeps_panel_memory, gpu.keeps_panel_memory) == (True, False)
    assert (cpu.fuses_copies, gpu.fuses_copies) == (False, True)
    assert (cpu.checks_later, gpu.checks_later) == (False, True)
    assert (cpu.auto_structured, gpu.auto_structured) == (False, True)
