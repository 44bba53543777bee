"""Models whose parameters reach the output where the structured engine's hooks do not see them:
a Linear or convolution whose module is never called (its weight used through ``F.linear``, an
unused head, ``nn.MultiheadAttention``'s ``out_proj``), and paths that the checkpoint's own weights
hide from the set-up's checks (a zero-initialised head makes every gradient behind it zero, so a
weight used twice, or a batch dependency, cannot show at step 0). Every engine must give the
float64 explicit-Jacobian kernel, at every checkpoint of a run that shares one
:class:`conetool.EngineMemo` (whose set-up is made once, at the first checkpoint)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_ntk import minimum_budget, reference, rel
from torch import nn

from conetool import ntk
from conetool.errors import ConetoolError
from conetool.ntk import empirical_ntk
from conetool.ntk_memo import EngineMemo

METHODS = ["structured", "auto", "jacobian"]


class LinearUsedFunctionally(nn.Module):
    """``lin`` is never called: its weight and bias are used through ``F.linear``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(F.linear(x, self.lin.weight, self.lin.bias)))


class UnusedHead(nn.Module):
    """A second head that the forward pass never calls: its gradient is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)
        self.spare = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


class UnusedConv(nn.Module):
    """An unused convolution beside a used one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.spare = nn.Conv2d(3, 3, 3)
        self.out = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.conv(x)).flatten(1))


class Attention(nn.Module):
    """Self-attention over 4 tokens (``out_proj`` is a Linear that is never called)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(torch.tanh(a + h).mean(1))


class BehindAZeroHead(nn.Module):
    """A hidden layer ``l`` and a head ``o`` that starts at zero: at step 0 every gradient behind
    the head is zero and every output is its bias."""

    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(6, 6)
        self.o = nn.Linear(6, 3)
        nn.init.zeros_(self.o.weight)


class ReusedBehindAZeroHead(BehindAZeroHead):
    """``l.weight`` is used by ``l`` and again through ``F.linear``: at step 0 the second use
    cannot show."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.l(x))
        return self.o(torch.tanh(F.linear(h, self.l.weight)))


class CenteredBehindAZeroHead(BehindAZeroHead):
    """Centres the hidden units over the batch (examples depend on each other): at step 0 the
    outputs are the same together and alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.l(x))
        return self.o(h - h.mean(0))


@pytest.fixture(params=["check-first", "check-later"])
def check_order(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both orders of the structured set-up: its check before the blocks (the CPU's), and after
    them (the GPU's, forced here)."""
    if request.param == "check-later":
        monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    return request.param


def _trained(model: nn.Module, seed: int) -> nn.Module:
    """A later checkpoint of ``model``: every parameter moved (the zero head too)."""
    later = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in later.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return later


NEVER_CALLED = {
    "linear_used_functionally": (LinearUsedFunctionally, (6,)),
    "unused_head": (UnusedHead, (6,)),
    "unused_conv": (UnusedConv, (2, 4, 4)),
    "attention": (Attention, (4, 3)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NEVER_CALLED)
def test_a_layer_whose_module_is_never_called_is_exact(
    name: str, method: str, check_order: str
) -> None:
    # The hooks record no call of such a layer: it goes to the reference path (its weight may be
    # used elsewhere, as F.linear and attention use theirs), which gives its exact rows.
    factory, shape = NEVER_CALLED[name]
    torch.manual_seed(0)
    model = factory().double().eval()
    x = torch.randn(5, *shape, dtype=torch.float64)
    for kind in ("trace", "full"):
        got = empirical_ntk(model, x, kind=kind, method=method, device="cpu")
        assert rel(got, reference(model, x, kind)) < 1e-12, kind


@pytest.mark.parametrize("method", ["structured", "auto"])
def test_a_weight_reuse_hidden_by_a_zero_head_at_the_first_checkpoint_is_still_found(
    method: str, check_order: str
) -> None:
    # The memo keeps the first checkpoint's set-up for the rest of the run: a check that passed
    # only because the head was zero there would give wrong kernels at every later checkpoint.
    torch.manual_seed(0)
    step0 = ReusedBehindAZeroHead().double().eval()
    run = [step0, _trained(step0, 1), _trained(step0, 2)]
    x = torch.randn(6, 6, dtype=torch.float64)
    memo = EngineMemo()
    for model in run:
        got = empirical_ntk(model, x, method=method, device="cpu", memo=memo)
        assert rel(got, reference(model, x, "trace")) < 1e-12
    assert memo.reused == len(run) - 1  # the set-up ran once


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_dependency_hidden_by_a_zero_head_is_refused_at_the_first_checkpoint(
    method: str, check_order: str
) -> None:
    # With the head at zero every output is the head's bias, together or alone; the check must
    # still see that the hidden units depend on the batch (it is not run again on later ones).
    torch.manual_seed(0)
    model = CenteredBehindAZeroHead().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(ConetoolError, match="depends on the other examples"):
        empirical_ntk(model, x, method=method, device="cpu", memo=EngineMemo())


def test_the_checks_leave_the_weights_as_they_were() -> None:
    # The checks run at the weights plus a small perturbation: on copies, not in place.
    torch.manual_seed(0)
    model = ReusedBehindAZeroHead().double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    empirical_ntk(model, torch.randn(4, 6, dtype=torch.float64), device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class NormalizesInPlace(nn.Module):
    """Normalizes its input in place and counts its calls in a buffer: side effects that must
    reach neither the caller's tensors nor the next evaluation of the same examples."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5).mul_(2.0)
        self.calls.add_(1)
        return self.out(torch.tanh(self.lin(x)))


class Normalizes(NormalizesInPlace):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.lin((x - 0.5) * 2.0)))


@pytest.mark.parametrize("method", ["structured", "auto"])
def test_a_model_that_changes_its_input_in_place_gets_the_kernel_of_its_function(
    method: str, check_order: str
) -> None:
    # Every evaluation gets its own copy of the examples: the set-up's passes, the blocks and a
    # second block of the same examples all see the probe set as given, and so does the caller.
    torch.manual_seed(0)
    model = NormalizesInPlace().double()
    pure = Normalizes().double()
    pure.load_state_dict(model.state_dict())
    x = torch.rand(5, 4, dtype=torch.float64)
    given = x.clone()
    low = minimum_budget(model, x, "trace", method)  # panels of fewer than 5 examples
    got = empirical_ntk(model, x, method=method, device="cpu", max_memory=low)
    assert torch.equal(x, given)  # the caller's tensor
    assert rel(got, reference(pure.eval(), x, "trace")) < 1e-12
    assert float(model.calls) == 0  # the model's own buffer


def test_attention_runs_by_its_composite_formula_and_the_setting_is_restored() -> None:
    # Fused attention kernels have no vmap rule (torch warns and loops over the examples); the
    # engine turns them off meanwhile and restores PyTorch's global setting afterwards.
    import warnings

    torch.manual_seed(0)
    model = Attention().double().eval()
    x = torch.randn(4, 4, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "There is a performance drop because ..."
        empirical_ntk(model, x, method="jacobian", device="cpu")
    assert torch.backends.mha.get_fastpath_enabled()
