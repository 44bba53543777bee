"""The engine memo: the checks and set-up run once per architecture and input shape, and a kernel
computed from a remembered set-up equals one computed from scratch."""

from __future__ import annotations

import pytest
import torch
from test_ntk import MODELS, Counter, budget_named, build, reference, rel
from test_ntk_recurrent import _built as recurrent_model
from test_ntk_structured import Reused, ScaledMLP
from tiny_run import train_tiny
from torch import nn

from conetool import ntk, ntk_reference, ntk_schedule, ntk_structured, ntk_tuning
from conetool.ntk import EngineMemo, MemoryBudgetError, empirical_ntk
from conetool.ntk_memo import signature
from conetool.pipeline import kernels


def perturb(model: nn.Module, seed: int) -> None:
    """Other weights, the same architecture: the next checkpoint of a run."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
@pytest.mark.parametrize("kind", ["trace", "full", "sum"])
@pytest.mark.parametrize("name", list(MODELS))
def test_remembered_set_up_gives_the_exact_kernel_of_new_weights(
    name: str, kind: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The zoo includes tied weights and frozen layers (fallback parameters in the layout).
    model, x = build(name, n=5)
    memo = EngineMemo()
    checks = Counter(monkeypatch, ntk, "check_independence")
    setups = Counter(monkeypatch, ntk_structured.StructuredRows, "_check")
    measures = Counter(monkeypatch, ntk_structured.StructuredRows, "_measure")
    for seed in range(3):
        perturb(model, seed)
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method, memo=memo)
        assert rel(kernel, reference(model, x, kind)) < 1e-10
    assert (memo.calls, memo.reused) == (3, 2)
    assert checks.count == 1
    assert setups.count == measures.count == (0 if method == "jacobian" else 1)


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
@pytest.mark.parametrize("name", ["gru", "lstm_initial_state", "prelu_channels"])
def test_vmap_that_failed_on_a_signature_is_not_tried_again(
    name: str, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each call (each checkpoint of a kernels run) tried vmap over examples of vjp once more,
    # a forward (and for nn.LSTM in float32 a backward) pass of the whole probe that fails,
    # before ordinary autograd; the memo now remembers that it failed.
    model, x = recurrent_model(name)
    memo = EngineMemo()
    attempts = Counter(monkeypatch, ntk_reference, "vmap_failures_named")
    counts = []
    for seed in range(3):
        perturb(model, seed)
        before = attempts.count
        kernel = empirical_ntk(model, x, device="cpu", method=method, memo=memo)
        counts.append(attempts.count - before)
        assert rel(kernel, reference(model, x, "trace")) < 1e-10
    (learned,) = memo.entries.values()
    # the structured engine takes a PReLU's slopes from its own passes: no vmap to try
    tried = not (name == "prelu_channels" and learned.engine == "structured")
    assert counts == ([1, 0, 0] if tried else [0, 0, 0]), counts
    assert learned.looped == tried


def test_vmap_that_works_is_used_on_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build("mlp", n=5)
    memo = EngineMemo()
    attempts = Counter(monkeypatch, ntk_reference, "vmap_failures_named")
    for seed in range(3):
        perturb(model, seed)
        empirical_ntk(model, x, device="cpu", method="jacobian", memo=memo)
    assert attempts.count == 3
    (learned,) = memo.entries.values()
    assert not learned.looped


@pytest.mark.parametrize("module", [Reused, ScaledMLP])
def test_layers_that_fail_the_check_stay_on_the_fallback_path_when_remembered(
    module: type[nn.Module],
) -> None:
    # Reused: a weight used outside its module's forward (its layer fails the check and falls
    # back); ScaledMLP: a "local" module. The restored layout must keep both as they were found.
    torch.manual_seed(0)
    model = module().double()
    x = torch.randn(6, 5, dtype=torch.float64)
    memo = EngineMemo()
    first = empirical_ntk(model, x, kind="full", method="structured", device="cpu", memo=memo)
    (learned,) = memo.entries.values()
    assert learned.layout is not None
    if module is Reused:
        assert "fc.weight" in learned.layout.fallback
    else:
        assert learned.layout.modes["scale"] == "local"
    perturb(model, 1)
    second = empirical_ntk(model, x, kind="full", method="structured", device="cpu", memo=memo)
    assert memo.reused == 1
    assert rel(second, reference(model, x, "full")) < 1e-10
    assert rel(first, second) > 1e-3  # the weights did change


def test_auto_does_not_build_the_structured_engine_again_once_it_chose_jacobian(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # auto takes the reference engine when too few parameters are contracted from factors (as on
    # ResNet-20 at n >= 9); a threshold above 1 makes it do so on this small net.
    monkeypatch.setattr(ntk, "_AUTO_KRON_SHARE", 1.5)
    model, x = build("conv_bn", n=4)
    memo = EngineMemo()
    built = Counter(monkeypatch, ntk_structured.StructuredRows, "__init__")
    first = empirical_ntk(model, x, device="cpu", memo=memo)
    second = empirical_ntk(model, x, device="cpu", memo=memo)
    assert memo.engines() == ["jacobian"]
    assert built.count == 1
    assert torch.equal(first, second)


def test_another_signature_learns_its_own_entry() -> None:
    model, x = build("conv_bn", n=4)
    memo = EngineMemo()
    empirical_ntk(model, x, device="cpu", memo=memo)
    empirical_ntk(model, x[:3], device="cpu", memo=memo)  # another probe size
    empirical_ntk(model, x, kind="full", device="cpu", memo=memo)  # another kind
    empirical_ntk(model, x[:2], x[2:], device="cpu", memo=memo)  # a cross kernel
    model.fc.requires_grad_(False)  # another θ (the per-layer kernels)
    empirical_ntk(model, x, device="cpu", memo=memo)
    assert (memo.calls, memo.reused, len(memo.entries)) == (5, 0, 5)


def test_signature_sees_the_architecture_not_the_weights() -> None:
    def conv(stride: int) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3, stride=stride), nn.Flatten())

    x = torch.randn(2, 1, 7, 7)
    key = signature(conv(1), x, None, "trace", "auto", torch.device("cpu"), torch.float32)
    same = conv(1)
    perturb(same, 3)
    assert signature(same, x, None, "trace", "auto", torch.device("cpu"), torch.float32) == key
    assert signature(conv(2), x, None, "trace", "auto", torch.device("cpu"), torch.float32) != key


def test_kernels_runs_the_set_up_once_per_run(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    run = train_tiny(Path(str(tmp_path)) / "run")
    checks = Counter(monkeypatch, ntk, "check_independence")
    setups = Counter(monkeypatch, ntk_structured.StructuredRows, "_check")
    result = kernels(run, store=Path(str(tmp_path)) / "store", method="structured")
    assert len(result.computed) == 3
    assert checks.count == setups.count == 1


class _Source:
    """A row source with fixed sizes, for the schedule's plan alone."""

    c = 10
    fixed = 0

    def resident(self, g: int) -> int:
        return g * 2**20

    def transient(self, g: int) -> int:
        return g * 2**22

    def activations(self, g: int) -> int:
        return g * 2**21


def test_calls_on_a_gpu_are_as_large_as_the_budget_allows() -> None:
    # On the CPU a call holds at most activation_bytes of activations (cache-sized); on a GPU the
    # budget alone decides, so that the device is not launch-bound on small calls.
    budget = 64 * 2**30
    cpu = ntk_schedule.plan(_Source(), "trace", 1024, 10, budget, "row", torch.device("cpu"))
    gpu = ntk_schedule.plan(_Source(), "trace", 1024, 10, budget, "row", torch.device("cuda"))
    cap = ntk_tuning.CPU.activation_bytes
    assert cap is not None and cpu.chunk * _Source().activations(10) <= cap
    assert gpu.chunk == 1024 and cpu.chunk < 16
    assert gpu.panel == cpu.panel == 1024
    assert ntk_schedule.sub_rows(torch.device("cuda")) > ntk_schedule.sub_rows(torch.device("cpu"))


def test_the_gpu_plan_counts_the_partial_products_it_holds() -> None:
    # On a GPU ntk_terms.product holds up to 256 MiB of float32 partial products at once (on the
    # CPU 16 MiB, inside the 32 MiB workspace): the smallest budget the plan accepts is larger by
    # that much, and a budget just above the CPU's minimum is refused on a GPU.
    def minimum(device: str) -> int:
        with pytest.raises(MemoryBudgetError) as info:
            ntk_schedule.plan(_Source(), "trace", 64, 10, 1, "row", torch.device(device))
        return budget_named(info.value)

    held = ntk_tuning.GPU.piece_elements * 4
    assert ntk_tuning.tuning_for(torch.device("cuda")).held_partials == held == 256 * 2**20
    assert ntk_tuning.tuning_for(torch.device("cpu")).held_partials == 0
    cpu, gpu = minimum("cpu"), minimum("cuda")
    assert gpu - cpu == pytest.approx(held * 10 / 9, abs=2)
    ntk_schedule.plan(_Source(), "trace", 64, 10, cpu, "row", torch.device("cpu"))
    with pytest.raises(MemoryBudgetError):
        ntk_schedule.plan(_Source(), "trace", 64, 10, cpu + 2**20, "row", torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_takes_the_structured_engine_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ntk, "_AUTO_KRON_SHARE", 1.5)  # on the CPU: the reference engine
    model, x = build("conv_bn", n=4)
    on_cpu, on_gpu = EngineMemo(), EngineMemo()
    cpu = empirical_ntk(model, x, device="cpu", memo=on_cpu)
    gpu = empirical_ntk(model, x, device="cuda", memo=on_gpu)
    assert (on_cpu.engines(), on_gpu.engines()) == (["jacobian"], ["structured"])
    assert rel(gpu, cpu) < 1e-10


def test_the_default_gpu_budget_counts_memory_torch_holds_unused_as_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After a run's first kernel, PyTorch's caching allocator keeps its blocks: the driver reports
    # them used, but they are this process's to reuse. Without them the budget would shrink.
    gib = 2**30
    monkeypatch.setattr(ntk, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 140 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * gib)
    assert ntk.default_memory_budget("cuda") == int(14 * gib * 0.8)
