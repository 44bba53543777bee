"""The eNTK engine on CUDA (issue 15): exact against float64 explicit Jacobians, within its budget.

Skipped where no CUDA device is present. What ``test_ntk_accuracy`` already checks on CUDA (the
built-in models' symmetric float32 kernels, ``structured`` and ``jacobian``) is not repeated; here:

- the test zoo (``test_ntk_structured.ALL_MODELS``: the models of ``test_ntk`` and the structured
  engine's own) in float32, every engine (``structured``, ``jacobian``, ``auto``) and kind, within
  1e-6 relative Frobenius of the float64 ``jacrev`` reference, and in float64 within 1e-10;
- ``auto`` on the built-in resnet20, vgg16 (an eighth of the width) and lenet5 at small inputs;
- cross kernels ``K(x1, x2)`` on the zoo and the built-ins;
- blocked schedules (budgets a few rows above the minimum the engine reports for CUDA);
- the budget: a kernel whose schedule the budget limits grows ``torch.cuda.max_memory_allocated``
  by no more than the budget, and inputs already on the device give the same kernel;
- the structured set-up's check, which runs after the blocks on a GPU, waits for the device only
  at its end (CUDA's sync debug mode).

Every float64 reference is computed on the CPU, on at most 7 examples.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_ntk import budget_named, record_plans
from test_ntk_accuracy import (
    BUILTINS,
    TOLERANCE,
    away_from_kinks,
    builtin,
    kinks,
    reference,
    rel,
)
from test_ntk_structured import ALL_MODELS, expected, make
from torch import nn

from conetool import ntk_schedule, ntk_structured
from conetool.models import resnet20
from conetool.ntk import MemoryBudgetError, empirical_ntk

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel"),
]

KINDS = ("trace", "full", "sum")
METHODS = ("structured", "jacobian", "auto")
SMALL_BUILTINS = ("resnet20", "vgg16", "lenet5")
N1, N2 = 4, 3  # a cross kernel's two sets (the built-ins' cached x is x1)


def minimum_budget(
    model: nn.Module, x: torch.Tensor, kind: str, method: str, x2: torch.Tensor | None = None
) -> int:
    """The smallest budget the engine accepts on CUDA, from its message."""
    with pytest.raises(MemoryBudgetError) as info:
        empirical_ntk(model, x, x2, kind=kind, max_memory=1, device="cuda", method=method)
    return budget_named(info.value)


def row_bytes(model: nn.Module, kind: str, c: int) -> int:
    """One example's Jacobian rows for ``kind``, in the model's dtype."""
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    size = next(model.parameters()).element_size()
    return (c if kind == "full" else 1) * p * size


@functools.cache
def zoo32(name: str) -> tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]]:
    """A zoo model and 6 inputs in float32 away from ReLU kinks on CUDA (conv_bn and residual
    have ReLUs), with the float64 jacrev reference of the three kinds."""
    model64, x64 = make(*ALL_MODELS[name], n=6)
    model = copy.deepcopy(model64).float()
    x = away_from_kinks(model, x64.float(), "cuda")
    return model, x, reference(model, x)


@functools.cache
def cross_case(
    name: str,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A float32 zoo or built-in model, x1 (4) and x2 (3), and the float64 cross kernels: the
    reference kernels of the 7 examples together, cut to the x1 rows and x2 columns."""
    if name in BUILTINS:
        model, x1, _ = builtin(name, "trained" if name != "lenet5" else "fresh", "cuda")
        torch.manual_seed(2)
        x2 = torch.randn(N2, *x1.shape[1:])
        # The engine computes the two sets as one (x1 then x2), in chunks that may span both.
        both = away_from_kinks(model, torch.cat([x1, x2]), "cuda")
        x1, x2 = both[:N1], both[N1:]
    else:
        model64, x64 = make(*ALL_MODELS[name], n=N1 + N2)
        model = copy.deepcopy(model64).float()
        x = away_from_kinks(model, x64.float(), "cuda")
        x1, x2 = x[:N1], x[N1:]
    n1 = x1.shape[0]
    both = reference(model, torch.cat([x1, x2]))
    cut = {
        "trace": both["trace"][:n1, n1:],
        "full": both["full"][:n1, :, n1:, :],
        "sum": both["sum"][:n1, n1:],
    }
    return model, x1, x2, cut


# --------------------------------------------------------------------------------------------------
# The zoo, every engine and kind


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_zoo_float32_on_cuda_within_1e6_of_float64(name: str, method: str) -> None:
    model, x, want = zoo32(name)
    for kind in KINDS:
        kernel = empirical_ntk(model, x, kind=kind, device="cuda", method=method)
        assert kernel.device.type == "cpu" and kernel.dtype == torch.float32
        assert kernel.shape == want[kind].shape
        err = rel(kernel, want[kind])
        assert err < TOLERANCE, (kind, err, kinks(model, x, "cuda"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(ALL_MODELS))
def test_zoo_float64_on_cuda_matches_explicit_jacobian(name: str, method: str) -> None:
    model, x = make(*ALL_MODELS[name], n=6)
    for kind in KINDS:
        kernel = empirical_ntk(model, x, kind=kind, device="cuda", method=method)
        assert kernel.dtype == torch.float64
        assert rel(kernel, expected(name, kind)) < 1e-10, kind


@pytest.mark.parametrize("bn", ["fresh", "trained"])
@pytest.mark.parametrize("name", SMALL_BUILTINS)
def test_builtin_auto_on_cuda_within_1e6_of_float64(name: str, bn: str) -> None:
    # test_ntk_accuracy covers "structured" and "jacobian" on CUDA; "auto" picks one of them
    # after its own set-up, which is checked here.
    if bn == "trained" and name == "lenet5":
        pytest.skip("no BatchNorm")
    model, x, want = builtin(name, bn, "cuda")
    for kind in KINDS:
        kernel = empirical_ntk(model, x, kind=kind, device="cuda", method="auto")
        err = rel(kernel, want[kind])
        assert err < TOLERANCE, (kind, err, kinks(model, x, "cuda"))


# --------------------------------------------------------------------------------------------------
# Cross kernels


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp", "conv_bn", "residual", "tied", *SMALL_BUILTINS])
def test_cross_on_cuda_within_1e6_of_float64(name: str, method: str) -> None:
    model, x1, x2, want = cross_case(name)
    for kind in KINDS:
        kernel = empirical_ntk(model, x1, x2, kind=kind, device="cuda", method=method)
        assert kernel.shape == want[kind].shape
        err = rel(kernel, want[kind])
        assert err < TOLERANCE, (kind, err, kinks(model, torch.cat([x1, x2]), "cuda"))


# --------------------------------------------------------------------------------------------------
# Blocked schedules


@pytest.mark.parametrize("method", ("structured", "jacobian"))
@pytest.mark.parametrize("name", ["conv_bn", "residual", "mlp", "resnet20", "vgg16", "lenet5"])
def test_blocked_on_cuda_within_1e6_of_float64(
    name: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name in BUILTINS:
        model, x, want = builtin(name, "fresh", "cuda")
    else:
        model, x, want = zoo32(name)
    n = x.shape[0]
    plans = record_plans(monkeypatch)
    for kind in KINDS:
        c = want["full"].shape[1]
        low = minimum_budget(model, x, kind, method)
        for extra_rows in (0, 1, 3):
            budget = low + extra_rows * row_bytes(model, kind, c)
            kernel = empirical_ntk(
                model, x, kind=kind, device="cuda", method=method, max_memory=budget
            )
            err = rel(kernel, want[kind])
            assert err < TOLERANCE, (kind, extra_rows, err, kinks(model, x, "cuda"))
        with pytest.raises(MemoryBudgetError):
            empirical_ntk(model, x, kind=kind, device="cuda", method=method, max_memory=low - 1)
    assert any(plan.panel < n for plan in plans), "no budget gave a blocked schedule"


@pytest.mark.parametrize("method", ("structured", "jacobian"))
@pytest.mark.parametrize("name", ["conv_bn", "resnet20"])
def test_cross_blocked_on_cuda_within_1e6_of_float64(name: str, method: str) -> None:
    model, x1, x2, want = cross_case(name)
    c = want["full"].shape[1]
    for kind in KINDS:
        low = minimum_budget(model, x1, kind, method, x2)
        for extra_rows in (0, 2):
            budget = low + extra_rows * row_bytes(model, kind, c)
            kernel = empirical_ntk(
                model, x1, x2, kind=kind, device="cuda", method=method, max_memory=budget
            )
            err = rel(kernel, want[kind])
            assert err < TOLERANCE, (
                kind,
                extra_rows,
                err,
                kinks(model, torch.cat([x1, x2]), "cuda"),
            )


# --------------------------------------------------------------------------------------------------
# The budget on the device


def _resnet20_case(n: int, device: str = "cuda") -> tuple[nn.Module, torch.Tensor]:
    """resnet20 at 16x16 with BatchNorm statistics of a trained network's size, and ``n`` inputs
    away from ReLU kinks for float32 on ``device``. Drawn at random, example 5 of the first 6 has
    a ReLU input of -1.8e-7 in float64 that float32 on this project's CPU computes as +3.4e-9:
    both engines' kernels are then 1.5e-6 off the float64 kernel, and a blocked kernel about as
    far off the one-pass kernel (its chunks differ)."""
    torch.manual_seed(0)
    model = resnet20((3, 16, 16), 10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.manual_seed(1)
    return model, away_from_kinks(model, torch.randn(n, 3, 16, 16), device)


@pytest.mark.parametrize("kind", ["trace", "full"])
@pytest.mark.parametrize("method", ("structured", "jacobian"))
def test_budget_limited_schedule_stays_within_budget_on_cuda(
    method: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 8 examples of resnet20 at 16x16 under the smallest budget the engine accepts and one
    # example's rows above it: the schedule is blocked (panels of 1-4 examples, checked). The
    # device memory the call allocates on top of what was there before (cuBLAS/cuDNN handles and
    # workspaces made by a first call) must stay within the budget. (This test had 160 examples
    # and budgets of at least 24 MiB: panels of one example and 128,000 row computations, which
    # ran past the GPU session's time limit.)
    model, x = _resnet20_case(8)
    device = torch.device("cuda")
    plans = record_plans(monkeypatch)
    whole = empirical_ntk(model, x, kind=kind, device=device, method=method, max_memory="8GiB")
    low = minimum_budget(model, x, kind, method)
    rows = row_bytes(model, kind, 10)
    for budget in (low, low + rows):
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        kernel = empirical_ntk(model, x, kind=kind, device=device, method=method, max_memory=budget)
        torch.cuda.synchronize(device)
        grew = torch.cuda.max_memory_allocated(device) - before
        assert plans[-1].panel < x.shape[0], "the budget did not limit the schedule"
        assert grew <= budget, f"grew {grew:,} bytes on a budget of {budget:,}"
        assert rel(kernel, whole) < TOLERANCE


def test_inputs_and_model_on_the_device_give_the_same_kernel() -> None:
    model, x = _resnet20_case(12)
    on_host = empirical_ntk(model, x, device="cuda")
    on_device = empirical_ntk(copy.deepcopy(model).cuda(), x.cuda(), device="cuda")
    assert on_device.device.type == "cpu"
    assert rel(on_device, on_host) < TOLERANCE
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model was not moved


@pytest.mark.parametrize("name", ["conv_bn", "residual", "reused_weight", "resnet20"])
def test_the_set_up_check_after_the_blocks_waits_for_the_device_only_at_its_end(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a GPU the structured engine's check runs after the blocks are dispatched, so that its
    # host time overlaps the device's work on them. Anything in it that waits for the device (a
    # copy from the host, a value read back) before its one read-back of the gaps would wait for
    # every block first: CUDA's sync debug mode makes such a call raise.
    if name == "resnet20":
        model, x = _resnet20_case(6)
        want = empirical_ntk(model, x, device="cuda", method="jacobian")
    else:
        model, x, want_kinds = zoo32(name)
        want = want_kinds["trace"]
    checks: list[str] = []
    original_check = ntk_structured.StructuredRows.check_later_found_changes
    original_gaps = ntk_structured._worst_gaps

    def check(self):  # type: ignore[no-untyped-def]
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original_check(self)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def gaps(*args):  # type: ignore[no-untyped-def]
        checks.append(torch.cuda.get_sync_debug_mode())
        torch.cuda.set_sync_debug_mode("default")  # the one read-back the check needs
        return original_gaps(*args)

    monkeypatch.setattr(ntk_structured.StructuredRows, "check_later_found_changes", check)
    monkeypatch.setattr(ntk_structured, "_worst_gaps", gaps)
    kernel = empirical_ntk(model, x, device="cuda", method="structured")
    assert checks == [2]  # the check ran after the blocks, in "error" mode until its read-back
    assert rel(kernel, want) < TOLERANCE


@pytest.mark.parametrize("name", ["conv_bn", "resnet20"])
def test_the_blocks_are_dispatched_without_waiting_for_the_device(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The schedule's loop never waits for the device (no copies from the host, no values read
    # back), so that the host stays ahead of the device and the check after the blocks overlaps
    # their computation. Several cotangent groups (a budget that splits the 10 logits), whose
    # cotangents are all copied to the device before the first block.
    if name == "resnet20":
        model, x = _resnet20_case(6)
    else:
        model, x, _ = zoo32(name)
    original_run = ntk_schedule.run

    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original_run(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(ntk_schedule, "run", run)
    plans = record_plans(monkeypatch)
    whole = empirical_ntk(model, x, device="cuda", method="structured", max_memory="8GiB")
    low = minimum_budget(model, x, "trace", "structured")
    blocked = empirical_ntk(model, x, device="cuda", method="structured", max_memory=low)
    assert len(plans[-1].groups) > 1 or plans[-1].panel < x.shape[0]
    assert rel(blocked, whole) < TOLERANCE
