"""Models whose eNTK is not defined or cannot be computed are refused, on every engine, with a
message that says what the model returned or which of its modules failed, and the fix: a forward
returning a scalar (a loss) or integer outputs (argmax). Modules without a working vmap rule
(nn.LSTM, nn.PReLU), refused before naming them by their path in the model, have their exact
kernel."""

from __future__ import annotations

import pytest
import torch

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_ntk import reference, rel
from torch import nn

from conetool.errors import ModelError
from conetool.ntk import empirical_ntk

METHODS = ("auto", "structured", "jacobian")


class Summed(nn.Module):
    """Returns the sum over the batch of its logits: a scalar, as a loss would be."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).sum()


class Predicted(nn.Module):
    """Returns the predicted classes (argmax), integers without a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).argmax(dim=1, keepdim=True)


class Recurrent(nn.Module):
    """An nn.LSTM (no working vmap rule in torch 2.14) inside a ModuleDict."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 3))
        self.encoder = nn.ModuleDict({"rnn": nn.LSTM(3, 4, batch_first=True)})
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder["rnn"](self.body(x))[0][:, -1])


class Activated(nn.Module):
    """An nn.PReLU (no working vmap rule in torch 2.14; it fails in the backward pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.blocks = nn.Sequential(nn.Identity(), nn.PReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.fc(x)))


class SignOfTheBatch(nn.Module):
    """Branches on a value of the whole batch: every example's sign follows the batch's sum."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class GuardedInput(nn.Module):
    """Branches on the whole batch too, but every batch takes the same branch (a guard)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(x).all()):
            raise ValueError("non-finite input")
        return self.head(torch.tanh(self.fc(x)))


def _signed_inputs() -> torch.Tensor:
    """Six examples: the first two (what the pair check sees) and their sum positive, the
    fourth negative, so that a batch's sum and an example's differ in sign only beyond the pair."""
    torch.manual_seed(0)
    x = torch.rand(6, 4, dtype=torch.float64)  # every example's sum positive
    x[3] = -x[3]
    assert float(x[3].sum()) < 0 < float(x[:2].sum(1).min()) and float(x.sum()) > 0
    return x


@pytest.mark.parametrize("method", METHODS)
def test_a_branch_on_the_whole_batch_is_refused_not_computed_batched(method: str) -> None:
    # The structured engine's batched passes took the batch's branch for every example (a
    # kernel 72% off the per-example one); torch.func (the reference) cannot vmap the branch.
    with pytest.raises(ModelError) as caught:
        empirical_ntk(SignOfTheBatch().double(), _signed_inputs(), device="cpu", method=method)
    if method != "jacobian":
        assert "depends on the other examples in the batch" in str(caught.value)
        assert "a branch on values of the whole batch" in str(caught.value)


def test_a_branch_on_the_whole_batch_is_refused_where_the_check_comes_after_the_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Off the CPU the structured set-up's check runs after the blocks: the branch check with it.
    from conetool import ntk

    monkeypatch.setattr(ntk, "_checks_later", lambda device: True)
    with pytest.raises(ModelError, match="a branch on values of the whole batch"):
        empirical_ntk(
            SignOfTheBatch().double(), _signed_inputs(), device="cpu", method="structured"
        )


def _one_negative_among(n: int, where: int) -> torch.Tensor:
    """``n`` examples of positive sum but the one at ``where``, small and negative: every batch
    of the examples around it has a positive sum, so that example alone takes the other branch."""
    torch.manual_seed(0)
    x = torch.rand(n, 4, dtype=torch.float64) + 0.1
    x[where] = -0.01 * x[where]
    return x


@pytest.mark.parametrize("where", [63, 65])
@pytest.mark.parametrize("method", ["auto", "structured"])
def test_a_branch_is_found_at_the_end_of_each_batch_of_the_check(method: str, where: int) -> None:
    # 66 examples are checked in batches of 64 and 2 (BRANCH_CHUNK): the odd example is the last
    # of the first batch (63), or of the batch of two that ends the set (65)
    from conetool.ntk_checks import BRANCH_CHUNK

    assert BRANCH_CHUNK == 64
    x = _one_negative_among(66, where)
    assert float(x[64:].sum()) > 0 and float(x[where].sum()) < 0
    with pytest.raises(ModelError, match="depends on the other examples in the batch"):
        empirical_ntk(SignOfTheBatch().double(), x, device="cpu", method=method)


@pytest.mark.parametrize("method", ["auto", "structured"])
def test_a_branch_one_example_turns_alone_in_the_last_batch_of_the_check_is_found(
    method: str,
) -> None:
    # 65 examples are checked in batches of 64 and 1 (BRANCH_CHUNK): the last example, alone in
    # its batch, was compared with nothing, so the branch it turns for an engine pass went unseen
    from conetool.ntk_checks import BRANCH_CHUNK

    assert BRANCH_CHUNK == 64
    x = _one_negative_among(65, 64)
    assert float(x[:64].sum()) > 0 and float(x[63:].sum()) > 0 > float(x[64].sum())
    with pytest.raises(ModelError, match="depends on the other examples in the batch"):
        empirical_ntk(SignOfTheBatch().double(), x, device="cpu", method=method)


def test_a_forward_pass_without_branches_is_not_run_example_by_example() -> None:
    # one vmap over two examples tells that no branch is there: none of the n passes alone
    from conetool.ntk_checks import check_branches

    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    calls: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return model(batch)

    with torch.no_grad():
        check_branches(forward, torch.randn(5, 4, dtype=torch.float64))
    assert calls == [1]  # the vmapped pass over x[:2] (each example seen as a batch of 1)


@pytest.mark.parametrize("method", ["auto", "structured"])
def test_a_branch_every_batch_takes_alike_gives_the_exact_kernel(method: str) -> None:
    torch.manual_seed(0)
    model = GuardedInput().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    got = empirical_ntk(model, x, device="cpu", method=method)
    assert rel(got, reference(model, x, "trace")) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_a_scalar_output_is_refused_naming_its_shape(method: str) -> None:
    with pytest.raises(ModelError) as caught:
        empirical_ntk(Summed(), torch.randn(4, 4), device="cpu", method=method)
    message = str(caught.value)
    assert "to an output of shape ()" in message
    assert "one row of logits per example" in message and "not a loss" in message


@pytest.mark.parametrize("method", METHODS)
def test_integer_outputs_are_refused_not_given_a_zero_kernel(method: str) -> None:
    with pytest.raises(ModelError) as caught:
        empirical_ntk(Predicted(), torch.randn(4, 4), device="cpu", method=method)
    message = str(caught.value)
    assert "torch.int64 outputs" in message and "argmax" in message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_a_module_without_a_vmap_rule_has_its_exact_kernel(method: str, dtype: torch.dtype) -> None:
    # The LSTM fails under vmap in its forward in float64 and in the backward pass in float32,
    # the PReLU in the backward pass: these were refused, naming the module by its path and a
    # rewrite; ordinary autograd computes them now, one example at a time (test_ntk_recurrent.py).
    torch.manual_seed(0)
    cases = [(Recurrent(), torch.randn(4, 5, 3)), (Activated(), torch.randn(4, 4))]
    for model, x in cases:
        kernel = empirical_ntk(model.to(dtype), x.to(dtype), device="cpu", method=method)
        expected = reference(model.double(), x.double(), "trace")
        assert rel(kernel, expected) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_a_failure_in_the_models_own_forward_names_the_model() -> None:
    from conetool.ntk_failures import failing_module  # here: the other tests run without it

    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no rule")

    try:
        Own()(torch.zeros(1, 2))
    except RuntimeError as exc:
        assert failing_module(exc) == "the forward of the model itself (Own)"
    try:
        raise RuntimeError("outside any module")
    except RuntimeError as exc:
        assert failing_module(exc) == ""
