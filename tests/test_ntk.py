"""The eNTK engine against an explicit float64 Jacobian, its blocked schedule, and its checks."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from conetool import ntk, ntk_schedule, ntk_terms, ntk_tuning
from conetool.errors import ConetoolError, ModelError
from conetool.ntk import (
    EngineMemo,
    MemoryBudgetError,
    NonFiniteKernelError,
    check_per_example,
    default_memory_budget,
    empirical_ntk,
    parse_memory,
)

KINDS = ("trace", "full", "sum")
METHODS = ("jacobian", "structured")


# --------------------------------------------------------------------------------------------------
# Models


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.tanh(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(h + self.conv2(F.relu(self.bn(self.conv1(h)))))
        return self.fc(h.mean(dim=(2, 3)))


class UnusedFrozen(nn.Module):
    """One parameter never used, one frozen layer, one frozen bias in a trained layer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.b = nn.Linear(6, 3)
        self.b.bias.requires_grad_(False)
        self.unused = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.frozen(torch.tanh(self.a(x)))))


class Tied(nn.Module):
    """A layer applied twice, and a weight shared by two modules."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 5)
        self.first = nn.Linear(5, 4)
        self.second = nn.Linear(5, 4)
        self.second.weight = self.first.weight  # the same Parameter in two modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.shared(x))))
        return self.first(h) * torch.sigmoid(self.second(x))


class Counter:
    """Counts calls of a function while passing them through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
        self.count = 0
        original = getattr(owner, name)

        def counted(*args: object, **kwargs: object) -> object:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def conv_bn() -> nn.Module:
    model = ConvBN()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model


def residual() -> nn.Module:
    model = Residual()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


MODELS = {
    "mlp": (mlp, (5,)),
    "conv_bn": (conv_bn, (2, 5, 5)),
    "residual": (residual, (1, 5, 5)),
    "unused_frozen": (UnusedFrozen, (5,)),
    "tied": (Tied, (5,)),
}


def build(name: str, n: int = 6, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    model = factory().double().eval()
    return model, torch.randn(n, *shape, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# The reference: an explicit Jacobian, one autograd.grad per (example, logit)


def explicit_jacobian(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``(n, c, p)`` w.r.t. the unique trainable parameters, in the model's dtype (a dict
    output: its ``"logits"``)."""
    params = [p for p in model.parameters() if p.requires_grad]  # unique: tied weights once
    rows = []
    for i in range(inputs.shape[0]):
        out = model(inputs[i : i + 1])
        out = (out["logits"] if isinstance(out, dict) else out).reshape(-1)
        per_logit = []
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
            per_logit.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
        rows.append(torch.stack(per_logit))
    return torch.stack(rows)


def reference(model: nn.Module, inputs: torch.Tensor, kind: str) -> torch.Tensor:
    jac = explicit_jacobian(model.eval(), inputs)
    if kind == "trace":
        return torch.einsum("iap,jap->ij", jac, jac)
    if kind == "full":
        return torch.einsum("iap,jbp->iajb", jac, jac)
    summed = jac.sum(dim=1)
    return summed @ summed.T


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def record_plans(monkeypatch: pytest.MonkeyPatch) -> list:
    plans: list = []
    original = ntk_schedule.plan

    def spy(*args, **kwargs):
        plan = original(*args, **kwargs)
        plans.append(plan)
        return plan

    monkeypatch.setattr(ntk_schedule, "plan", spy)
    return plans


# --------------------------------------------------------------------------------------------------
# Exactness


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_explicit_jacobian_float64(name: str, kind: str, method: str) -> None:
    model, x = build(name)
    kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
    expected = reference(model, x, kind)
    assert kernel.dtype == torch.float64
    assert kernel.shape == expected.shape
    assert rel(kernel, expected) < 1e-10


def test_shapes_follow_the_documented_layout() -> None:
    model, x = build("conv_bn", n=4)  # c = 3
    assert empirical_ntk(model, x, kind="trace", device="cpu").shape == (4, 4)
    assert empirical_ntk(model, x, kind="sum", device="cpu").shape == (4, 4)
    full = empirical_ntk(model, x, kind="full", device="cpu")
    assert full.shape == (4, 3, 4, 3)
    jac = explicit_jacobian(model, x)  # example-major: H[i, a, j, b] = <J_a(x_i), J_b(x_j)>
    assert torch.allclose(full[1, 2, 3, 0], jac[1, 2] @ jac[3, 0], rtol=1e-10, atol=0)


def test_linear_model_closed_form() -> None:
    # f(x) = W x + b: ∂f_k/∂W_kl = x_l, ∂f_k/∂b_k = 1, so the trace kernel is c (x_i·x_j + 1).
    torch.manual_seed(1)
    model = nn.Linear(6, 4).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    expected = 4 * (x @ x.T + 1)
    assert rel(empirical_ntk(model, x, device="cpu"), expected) < 1e-14
    full = empirical_ntk(model, x, kind="full", device="cpu")
    eye = torch.eye(4, dtype=torch.float64)
    assert rel(full, torch.einsum("ij,ab->iajb", x @ x.T + 1, eye)) < 1e-14


@pytest.mark.parametrize("syrk", [True, False])
def test_float32_mlp_agrees_with_float64_reference(
    syrk: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_ROWS", 1 if syrk else 10**9)
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_WIDTH", 1 if syrk else 10**9)
    model64, x64 = build("mlp", n=8)
    expected = reference(model64, x64, "trace")
    model32 = mlp()
    model32.load_state_dict({k: v.float() for k, v in model64.state_dict().items()})
    kernel = empirical_ntk(model32, x64.float(), device="cpu")
    assert kernel.dtype == torch.float32
    assert rel(kernel, expected) < 1e-5
    # dtype=float64 on a float32 model computes in float64 and returns float64.
    exact = empirical_ntk(model32, x64.float(), device="cpu", dtype=torch.float64)
    assert exact.dtype == torch.float64
    expected32 = reference(model32.double(), x64.float().double(), "trace")
    assert rel(exact, expected32) < 1e-10


def test_frozen_and_unused_parameters_are_not_in_theta() -> None:
    model, x = build("unused_frozen")
    kernel = empirical_ntk(model, x, device="cpu")
    model.requires_grad_(True)  # now the frozen layer counts too: a different kernel
    assert rel(empirical_ntk(model, x, device="cpu"), kernel) > 1e-3


def test_tied_weight_is_one_parameter() -> None:
    model, x = build("tied")
    names = [name for name, _ in model.named_parameters()]
    assert "second.weight" not in names  # named_parameters lists the shared weight once
    # Untying (two independent copies with the same values) gives a different kernel: the tied
    # one is the kernel w.r.t. the single shared tensor, as in the explicit reference.
    kernel = empirical_ntk(model, x, device="cpu")
    model.second.weight = nn.Parameter(model.first.weight.detach().clone())
    assert rel(empirical_ntk(model, x, device="cpu"), kernel) > 1e-3


# --------------------------------------------------------------------------------------------------
# Identities between kinds; symmetry and PSD


def test_trace_is_the_logit_trace_of_full_and_sum_the_logit_sum() -> None:
    model, x = build("residual", n=5)
    full = empirical_ntk(model, x, kind="full", device="cpu")
    trace = empirical_ntk(model, x, kind="trace", device="cpu")
    total = empirical_ntk(model, x, kind="sum", device="cpu")
    assert rel(trace, torch.einsum("iaja->ij", full)) < 1e-12
    assert rel(total, full.sum(dim=(1, 3))) < 1e-12


def test_sum_kind_is_the_kernel_of_the_summed_output() -> None:
    model, x = build("conv_bn", n=5)
    summed = nn.Sequential()
    summed.inner = model
    summed.forward = lambda t: model(t).sum(dim=1, keepdim=True)  # g = Σ_k f_k
    expected = empirical_ntk(summed, x, kind="trace", device="cpu")
    assert rel(empirical_ntk(model, x, kind="sum", device="cpu"), expected) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_symmetric_and_positive_semidefinite(kind: str) -> None:
    model, x = build("residual", n=9)
    kernel = empirical_ntk(model, x, kind=kind, device="cpu")
    matrix = kernel.reshape(kernel.shape[0] * (kernel.shape[1] if kind == "full" else 1), -1)
    assert torch.equal(matrix, matrix.T)
    eigenvalues = torch.linalg.eigvalsh(matrix)
    assert eigenvalues.min() >= -1e-10 * eigenvalues.max()


# --------------------------------------------------------------------------------------------------
# The blocked schedule


def budget_named(error: BaseException) -> int:
    """The bytes a MemoryBudgetError's message names as the smallest budget ("(12,345 bytes)")."""
    return int(re.search(r"\(([\d,]+) bytes\)", str(error)).group(1).replace(",", ""))


def minimum_budget(
    model: nn.Module, x: torch.Tensor, kind: str, method: str = "auto", device: str = "cpu"
) -> int:
    with pytest.raises(MemoryBudgetError) as info:
        empirical_ntk(model, x, kind=kind, max_memory=1, device=device, method=method)
    return budget_named(info.value)


class Pure(nn.Module):
    """The function one call of ``net`` computes from its state, without the update or in-place
    write its forward pass makes: ``net``'s class's own ``pure(x)``, on a copy of ``net`` (the
    reference of the tests of models that update their state)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.net).pure(self.net, x)  # type: ignore[attr-defined, no-any-return]


def kernel_and_cross_kernel_match(
    model: nn.Module, x: torch.Tensor, whole: torch.Tensor, kind: str, method: str
) -> None:
    """The ``kind`` kernel of ``model`` on ``x`` (n >= 5 examples) equals ``whole`` (the
    reference on all of ``x``) within 1e-10, and the cross kernel of the first 4 examples with
    the rest equals its off-diagonal block."""
    assert rel(empirical_ntk(model, x, kind=kind, device="cpu", method=method), whole) < 1e-10
    cross = empirical_ntk(model, x[:4], x[4:], kind=kind, device="cpu", method=method)
    expected = whole[:4, 4:] if kind != "full" else whole[:4, :, 4:, :]
    assert rel(cross, expected) < 1e-10


def full_kernels_in_blocks_and_with_a_memo_match(
    model: nn.Module,
    x: torch.Tensor,
    expected: torch.Tensor,
    method: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``full`` kernel of ``model`` on ``x`` equals ``expected`` within 1e-10: twice under
    one :class:`EngineMemo` (the second call reusing the first's set-up) and at the smallest
    budget, in panels of fewer than ``n`` examples."""
    memo = EngineMemo()
    for _ in range(2):
        got = empirical_ntk(model, x, kind="full", device="cpu", method=method, memo=memo)
        assert rel(got, expected) < 1e-10
    assert memo.reused == 1
    plans = record_plans(monkeypatch)
    low = minimum_budget(model, x, "full", method)
    small = empirical_ntk(model, x, kind="full", device="cpu", method=method, max_memory=low)
    assert plans[-1].panel < x.shape[0]
    assert rel(small, expected) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_blocked_equals_unblocked(kind: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build("conv_bn", n=8)
    plans = record_plans(monkeypatch)
    whole = empirical_ntk(model, x, kind=kind, max_memory="1GiB", device="cpu", method=method)
    assert plans[-1].panel == 8 and len(plans[-1].groups) == 1  # everything at once
    low = minimum_budget(model, x, kind, method)
    p = sum(t.numel() for t in model.parameters())
    row = (3 if kind == "full" else 1) * p * 8
    seen = set()
    for extra_rows in (1, 4, 17):
        blocked = empirical_ntk(
            model, x, kind=kind, max_memory=low + extra_rows * row, device="cpu", method=method
        )
        plan = plans[-1]
        seen.add((len(plan.groups), plan.panel, plan.chunk))
        assert rel(blocked, whole) < 1e-13
    # The budgets gave several schedules, including panels smaller than n (recomputation) and,
    # for trace, logit groups.
    assert len(seen) >= 3
    assert min(panel for _, panel, _ in seen) < 8
    if kind == "trace":  # c = 3 logits, computed in more than one group under small budgets
        assert any(groups > 1 for groups, _, _ in seen)


@pytest.mark.parametrize("syrk", [True, False])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_pieces_and_sub_blocks(
    kind: str, syrk: bool, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny sub-blocks and vmap calls exercise, on a small problem, what large ones do: panels made
    # of several pieces (copied from several calls or taken as they are), sub-blocks within a
    # piece, and (syrk=False) the product path used off the CPU.
    model, x = build("residual", n=13)
    expected = reference(model, x, kind)
    plans = record_plans(monkeypatch)
    # sub-blocks of 4 rows; pieces of 6, and the syrk terms' sub-blocks
    small = dataclasses.replace(ntk_tuning.CPU, sub_rows=4, piece_rows=6, syrk_rows=6)
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_ROWS", 1 if syrk else 10**9)
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_WIDTH", 1 if syrk else 10**9)
    for activation_bytes in (1, 10**5, 10**9):
        tuning = dataclasses.replace(small, activation_bytes=activation_bytes)
        monkeypatch.setattr(ntk_tuning, "CPU", tuning)
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
        assert rel(kernel, expected) < 1e-10
        matrix = kernel.reshape(len(kernel) * (kernel.shape[1] if kind == "full" else 1), -1)
        assert torch.equal(matrix, matrix.T)
    assert len({plan.chunk for plan in plans}) == 3


def test_minimum_budget_is_exact_and_named_in_the_message() -> None:
    model, x = build("mlp", n=4)
    with pytest.raises(MemoryBudgetError, match="--max-memory") as info:
        empirical_ntk(model, x, max_memory="1KB", device="cpu")
    assert "at least" in str(info.value)
    low = minimum_budget(model, x, "trace")
    expected = reference(model, x, "trace")
    assert rel(empirical_ntk(model, x, max_memory=low, device="cpu"), expected) < 1e-10
    with pytest.raises(MemoryBudgetError):
        empirical_ntk(model, x, max_memory=low - 1, device="cpu")


def test_progress_reports_every_block(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = build("mlp", n=10)
    calls: list[tuple[int, int]] = []
    low = minimum_budget(model, x, "trace")
    empirical_ntk(
        model, x, max_memory=low + 2000, device="cpu", on_block=lambda d, t: calls.append((d, t))
    )
    totals = {t for _, t in calls}
    assert len(totals) == 1 and calls[-1][0] == calls[-1][1] > 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --------------------------------------------------------------------------------------------------
# Modes, checks and bad input


def test_model_in_train_mode_is_evaluated_in_eval_mode_and_restored() -> None:
    model, x = build("conv_bn", n=5)
    dropout = nn.Sequential(model, nn.Dropout(0.5))
    expected = reference(model, x, "trace")
    dropout.train()
    state = {k: v.clone() for k, v in dropout.state_dict().items()}
    kernel = empirical_ntk(dropout, x, device="cpu")
    assert rel(kernel, expected) < 1e-10  # running statistics used, dropout off
    assert all(m.training for m in dropout.modules())  # every module's mode is restored
    assert all(torch.equal(v, state[k]) for k, v in dropout.state_dict().items())


def test_check_per_example_flags_train_mode_batchnorm_and_dropout() -> None:
    model, x = build("conv_bn", n=3)
    check_per_example(model, x)  # eval mode: fine
    model.train()
    with pytest.raises(ConetoolError, match=r"bn1.*training mode.*model\.eval\(\)"):
        check_per_example(model)
    drop = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    with pytest.raises(ConetoolError, match="random"):
        check_per_example(drop)


def test_batchnorm_without_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ConetoolError, match="track_running_stats"):
        empirical_ntk(model, torch.randn(4, 3), device="cpu")


class BatchCentered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(dim=0, keepdim=True))


@pytest.mark.parametrize("later", [False, True], ids=["check-first", "check-later"])
@pytest.mark.parametrize("method", METHODS)
def test_explicit_batch_dependency_is_detected(
    method: str, later: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # check-later: the GPU's order (the structured set-up's check after the blocks), forced.
    if later:
        monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    model = BatchCentered()
    x = torch.randn(4, 3)
    with pytest.raises(ConetoolError, match="depends on the other examples"):
        empirical_ntk(model, x, device="cpu", method=method)
    with pytest.raises(ConetoolError, match="depends on the other examples"):
        empirical_ntk(model, x[:2], x[2:], device="cpu", method=method)  # a cross kernel
    with pytest.raises(ConetoolError, match="depends on the other examples"):
        check_per_example(model, x)
    empirical_ntk(model, x, device="cpu", check=False, method=method)  # the caller may opt out


class FunctionalDropout(nn.Module):
    """``F.dropout`` without ``training=``: on in eval mode too (64 outputs: two passes drop the
    same ones with probability 2^-128)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(x), 0.5)


@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_a_random_output_is_named_as_such_not_as_a_batch_dependency(method: str) -> None:
    model = FunctionalDropout()
    with pytest.raises(ConetoolError, match=r"random in eval mode.*F\.dropout") as caught:
        empirical_ntk(model, torch.randn(4, 3), device="cpu", method=method)
    assert "depends on the other examples" not in str(caught.value)


@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_the_independence_check_reuses_the_structured_set_up_outputs(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The structured engine's set-up evaluates the first two examples together and each alone for
    # its own check; the independence check takes those outputs and runs no forward pass. The
    # reference engine has no set-up: the check evaluates the model itself (3 passes).
    model, x = build("conv_bn", n=5)
    passes = []
    model.register_forward_hook(lambda *args: passes.append(1))
    seen = []
    original = ntk.check_independence

    def spy(forward, pair, outputs=None):  # type: ignore[no-untyped-def]
        before = len(passes)
        original(forward, pair, outputs)
        seen.append((outputs is not None, len(passes) - before))

    monkeypatch.setattr(ntk, "check_independence", spy)
    empirical_ntk(model, x, device="cpu", method=method)
    assert seen == ([(False, 3)] if method == "jacobian" else [(True, 0)])


def test_non_finite_kernel_raises() -> None:
    model, x = build("mlp", n=3)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteKernelError, match="non-finite"):
        empirical_ntk(model, x, device="cpu", check=False)


class TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), x


@pytest.mark.parametrize("check", [True, False])
def test_model_must_return_one_tensor(check: bool) -> None:
    with pytest.raises(ConetoolError, match="returned a tuple"):
        empirical_ntk(TupleOutput(), torch.randn(3, 3), device="cpu", check=check)


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 5)
        self.act = nn.PReLU()
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.lin(x)))


class RecurrentNet(nn.Module):
    """A GRU or LSTM over 3 time steps of 4 features; the last state's logits."""

    def __init__(self, cell: type[nn.GRU] | type[nn.LSTM]) -> None:
        super().__init__()
        self.rnn = cell(4, 5, batch_first=True)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.view(-1, 3, 4))[0][:, -1])


UNVMAPPABLE = {
    "prelu": (PReLUNet, (4,)),
    "gru": (lambda: RecurrentNet(nn.GRU), (12,)),
    "lstm": (lambda: RecurrentNet(nn.LSTM), (12,)),
}


@pytest.mark.parametrize("name", UNVMAPPABLE)
@pytest.mark.parametrize("method", METHODS)
def test_a_module_torch_func_cannot_vmap_has_its_exact_kernel(method: str, name: str) -> None:
    # These modules have no working vmap rule in torch 2.14: they were refused, naming a rewrite;
    # ordinary autograd computes them, one example at a time (test_ntk_recurrent.py).
    factory, shape = UNVMAPPABLE[name]
    torch.manual_seed(0)
    model = factory().double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    got = empirical_ntk(model, x, device="cpu", method=method)
    assert rel(got, reference(model, x, "trace")) < 1e-12


class Checkpointed(nn.Module):
    """Its middle layer under activation checkpointing."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        h = torch.utils.checkpoint.checkpoint(self._middle, h, use_reentrant=self.reentrant)
        return self.out(h)

    def _middle(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.b(h))


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_activation_checkpointing_is_named_with_its_fix(method: str, reentrant: bool) -> None:
    with pytest.raises(ModelError, match=r"(?i)checkpointing.*turn it off") as caught:
        empirical_ntk(Checkpointed(reentrant), torch.randn(4, 4), device="cpu", method=method)
    assert isinstance(caught.value.__cause__, RuntimeError)


class CountsCalls(nn.Module):
    """Updates a tensor held in a list in every forward pass, eval mode too: neither a buffer nor
    a tensor attribute, whose updates the engines make on copies (test_ntk_buffer_updates.py,
    test_ntk_tensor_attributes.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.counts = [torch.zeros(())]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counts[0].add_(1)
        return self.lin(x)


def test_a_tensor_in_a_list_updated_in_place_is_named_where_torch_func_cannot_run_it() -> None:
    # The reference engine (torch.func) cannot; it said 'updates a buffer', whose update it
    # computes since (on a copy), and skipping the update in eval mode as the only fix.
    with pytest.raises(ModelError, match=r"neither a buffer nor a tensor attribute") as caught:
        empirical_ntk(CountsCalls(), torch.randn(4, 4), device="cpu", method="jacobian")
    assert "self.register_buffer(name, tensor)" in str(caught.value)
    assert "if self.training" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_bad_arguments() -> None:
    model, x = build("mlp", n=3)
    with pytest.raises(ConetoolError, match="trace, full, sum"):
        empirical_ntk(model, x, kind="diag", device="cpu")
    with pytest.raises(ConetoolError, match="no trainable parameters"):
        empirical_ntk(model.requires_grad_(False), x, device="cpu")


@pytest.mark.parametrize("check", [True, False])
@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
def test_inputs_the_model_cannot_take_are_named_with_what_its_forward_pass_said(
    method: str, check: bool
) -> None:
    """x of shape (3, 5) for an nn.Linear(2, 2) raised PyTorch's RuntimeError from inside the
    engine ("mat1 and mat2 shapes cannot be multiplied"), with no word of the inputs."""
    with pytest.raises(ModelError) as caught:
        empirical_ntk(nn.Linear(2, 2), torch.randn(3, 5), device="cpu", method=method, check=check)
    message = str(caught.value)
    assert message.startswith(
        "the model cannot take inputs of shape (3, 5) (n = 3 examples of shape (5,)): its "
        "forward pass on one of them, of shape (1, 5), raised RuntimeError: mat1 and mat2 "
        "shapes cannot be multiplied (1x5 and 2x2). Pass the inputs the model takes"
    ), message
    assert isinstance(caught.value.__cause__, RuntimeError)
    # a cross kernel names x1's shape (the engine sees both sets as one)
    with pytest.raises(ModelError, match=r"^the model cannot take inputs of shape \(3, 5\) "):
        empirical_ntk(nn.Linear(2, 2), torch.randn(3, 5), torch.randn(4, 5), device="cpu")


class ChecksItsInput(nn.Module):
    """Raises a ValueError of its own on inputs of another width; one example at a time only
    when ``single`` (a RuntimeError on a batch of more, which is no fault of the inputs)."""

    def __init__(self, single: bool = False) -> None:
        super().__init__()
        self.lin, self.single = nn.Linear(4, 3), single

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 4:
            raise ValueError(f"expected 4 features, got {x.shape[-1]}")
        if self.single and x.shape[0] > 1:
            raise RuntimeError("batches of one only")
        return self.lin(x)


def test_a_models_own_refusal_of_the_inputs_is_named_and_an_engine_failure_is_not() -> None:
    with pytest.raises(ModelError, match=r"raised ValueError: expected 4 features, got 6\. Pass"):
        empirical_ntk(ChecksItsInput(), torch.randn(3, 6), device="cpu")
    # The model takes one example (the plain forward pass works): the failure is not the
    # inputs', so it is not named as theirs.
    with pytest.raises(RuntimeError, match="batches of one only"):
        empirical_ntk(ChecksItsInput(single=True), torch.randn(3, 4), device="cpu")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 * 2**30),
        ("4 gib", 4 * 2**30),
        ("500MB", 500 * 10**6),
        ("2G", 2 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("1024", 1024),
        ("64k", 65536),
        (12345, 12345),
    ],
)
def test_parse_memory(text: str | int, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize(
    "text",
    # 10**400 has no float (a raw OverflowError before), 1e30GiB and 2**63 no int64
    ["lots", "4 bananas", "-1GB", "0", "", "GB", 0, True, 1.5, 10**400, "1e30GiB", 2**63],
    ids=lambda value: repr(value)[:12],
)
def test_parse_memory_rejects_bad_sizes(text: object) -> None:
    # the Python argument by default (empirical_ntk(max_memory=...) has no flag), the flag when
    # the command line asks
    with pytest.raises(ConetoolError, match=r"^max_memory=.* is not a memory size"):
        parse_memory(text)  # type: ignore[arg-type]
    with pytest.raises(ConetoolError, match=r"^--max-memory .* is not a memory size"):
        parse_memory(text, "--max-memory")  # type: ignore[arg-type]


class _FakeMeminfo:
    """A stand-in for ``open("/proc/meminfo")`` with a given ``MemAvailable``."""

    def __init__(self, kib: int) -> None:
        self.lines = [
            "MemTotal:       999999999 kB\n",
            "MemFree:          1234567 kB\n",
            f"MemAvailable:   {kib:>10} kB\n",
        ]

    def __call__(self, path: str, *args: object) -> _FakeMeminfo:
        assert path == "/proc/meminfo"
        return self

    def __enter__(self) -> list[str]:
        return self.lines

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize(
    ("available_kib", "budget"),
    [
        (10 * 2**20, 5 * 2**30),  # 10 GiB available: half of it
        (3 * 2**20 + 1, 3 * 2**29 + 512),  # odd: half of 3 GiB + 1 KiB
        (200 * 2**20, 64 * 2**30),  # 200 GiB available: the 64 GiB cap
    ],
)
def test_default_memory_budget_on_cpu(
    available_kib: int, budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The documented rule, by hand: half of MemAvailable (kB = KiB in /proc/meminfo), at most 64 GiB.
    monkeypatch.setattr(ntk, "open", _FakeMeminfo(available_kib), raising=False)
    assert default_memory_budget("cpu") == budget


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda() -> None:
    model, x = build("mlp", n=2)
    with pytest.raises(ConetoolError, match="--device cuda"):
        empirical_ntk(model, x, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_reference(kind: str) -> None:
    model, x = build("residual", n=7)
    expected = reference(model, x, kind)
    kernel = empirical_ntk(model, x, kind=kind, device="cuda")
    assert kernel.device.type == "cpu"
    assert rel(kernel, expected) < 1e-10
    low = minimum_budget(model, x, kind, device="cuda")  # the GPU's: larger than the CPU's
    blocked = empirical_ntk(model, x, kind=kind, device="cuda", max_memory=low + 10_000)
    assert rel(blocked, expected) < 1e-10


def test_docstring_examples_run() -> None:
    import doctest

    assert doctest.testmod(ntk, raise_on_error=False).failed == 0


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_a_panel_is_freed_before_the_next_is_computed(
    method: str, stacked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two resident panels at once would double the memory the plan counts (this once held the
    # last piece of a panel alive through a loop variable: VGG-16 grew to 12 GiB on an 8 GiB
    # budget). While a panel is being filled, and when its self-product starts, every earlier
    # panel's rows must be gone: checked at each copy of a call into a panel's piece (the
    # panel being filled is not recorded yet) and at each self-product. ``stacked``: panels of 3
    # examples, one call each, made one piece each, so that each is filled call by call.
    import dataclasses
    import gc
    import weakref

    model, x = build("conv_bn", n=8)
    plans = record_plans(monkeypatch)
    panels: list[list[weakref.ref]] = []
    checks = {"filling": 0}
    add_self, write = ntk_schedule._add_self, ntk_terms.write

    def earlier_panels_gone() -> None:
        # gc.collect() (a tenth of a second with torch loaded) only where some earlier tensor is
        # still alive: a dead weak reference stays dead, so the check is the same as collecting
        # every time.
        if any(ref() is not None for earlier in panels for ref in earlier):
            gc.collect()
        for earlier in panels:
            assert all(ref() is None for ref in earlier), "an earlier panel is still alive"

    def spy_write(dest, part, first, per):
        checks["filling"] += 1
        earlier_panels_gone()
        return write(dest, part, first, per)

    def spy(kernel, pieces, sub):
        earlier_panels_gone()
        refs = []
        for _, block in pieces:
            for term in block:
                refs += [weakref.ref(t) for t in vars(term).values() if isinstance(t, torch.Tensor)]
        panels.append(refs)
        return add_self(kernel, pieces, sub)

    monkeypatch.setattr(ntk_schedule, "_add_self", spy)
    monkeypatch.setattr(ntk_terms, "write", spy_write)
    low = minimum_budget(model, x, "trace", method)
    if stacked:
        planned = ntk_schedule.plan  # (record_plans' spy)
        monkeypatch.setattr(ntk_schedule, "piece_rows", lambda device: 10**6)
        monkeypatch.setattr(
            ntk_schedule, "plan", lambda *a, **k: dataclasses.replace(planned(*a, **k), panel=3)
        )
    kernel = empirical_ntk(model, x, max_memory=low, device="cpu", method=method)
    assert plans[-1].panel < 8 and len(panels) >= 3  # several panels per logit
    if stacked:  # panels were filled call by call, and checked then
        assert checks["filling"] > len(panels)
    assert rel(kernel, reference(model, x, "trace")) < 1e-10
