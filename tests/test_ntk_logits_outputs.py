"""``conetool.empirical_ntk`` of a model whose forward returns its logits inside an object (a
dict's ``"logits"``, a Hugging Face ``ModelOutput``, a dataclass's ``.logits``): read for its
logits inside the call (:func:`conetool.ntk_checks.logits_of`), the caller's model left as it is,
every engine against an explicit float64 ``jacrev`` reference. It was refused ("returned a dict
... Wrap the model")."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from test_ntk import TupleOutput
from torch import nn
from torch.func import functional_call, jacrev

import conetool
from conetool.errors import MemoryBudgetError, ModelError
from conetool.ntk import check_per_example


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class ModelOutput(OrderedDict[str, Any]):
    """transformers' ModelOutput in miniature: a mapping whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Boxed(nn.Module):
    """A convolution, a linear trunk and a head; an auxiliary head whose output is returned
    beside the logits (called, but not part of them). ``box`` says how the logits come back."""

    def __init__(self, box: str) -> None:
        super().__init__()
        self.box = box
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 2 * 2, 5)
        self.head = nn.Linear(5, 3)
        self.aux = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.tanh(self.fc(torch.tanh(self.conv(x)).flatten(1)))
        logits, aux = self.head(h), self.aux(h)
        if self.box == "dict":
            return {"hidden": h, "logits": logits, "aux": aux}
        if self.box == "model_output":
            return ModelOutput(logits=logits, aux=aux)
        return Output(logits=logits, hidden=h)


BOXES = ("dict", "model_output", "dataclass")


def build(box: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = Boxed(box).double().eval()
    x1 = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    x2 = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    return model, x1, x2


def logits(out: Any) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out.logits


def jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(n, c, p)``: each example's float64 Jacobian of its logits, by ``jacrev``, one example
    at a time (nothing of conetool's engine)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    rows = []
    for i in range(x.shape[0]):

        def f(p: dict[str, torch.Tensor], i: int = i) -> torch.Tensor:
            return logits(functional_call(model, p, (x[i : i + 1],))).reshape(-1)

        jac = jacrev(f)(params)
        rows.append(torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in params], dim=1))
    return torch.stack(rows)


def reference(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, kind: str) -> Any:
    j1 = jacobian(model, x1)
    j2 = j1 if x2 is None else jacobian(model, x2)
    if kind == "trace":
        return torch.einsum("iap,jap->ij", j1, j2)
    if kind == "full":
        return torch.einsum("iap,jbp->iajb", j1, j2)
    return j1.sum(1) @ j2.sum(1).T


@pytest.mark.parametrize("method", ["jacobian", "structured", "auto"])
@pytest.mark.parametrize("box", BOXES)
def test_a_model_returning_its_logits_inside_an_object(box: str, method: str) -> None:
    model, x1, x2 = build(box)
    cls = type(model)
    for kind in ("trace", "full", "sum"):
        for second in (None, x2):
            kernel = conetool.empirical_ntk(model, x1, second, kind=kind, method=method)
            expected = reference(model, x1, second, kind)
            assert kernel.dtype == torch.float64 and kernel.shape == expected.shape
            assert float((kernel - expected).norm() / expected.norm()) < 1e-10, (kind, second)
    # the caller's model is left as it is: its class, and a forward that returns the object
    assert type(model) is cls and not isinstance(model(x1), torch.Tensor)


@pytest.mark.parametrize("method", ["jacobian", "structured"])
def test_blocks_under_a_small_budget_and_the_memo_read_the_logits_too(method: str) -> None:
    model, x1, _ = build("dict")
    expected = reference(model, x1, None, "trace")
    with pytest.raises(MemoryBudgetError) as small:
        conetool.empirical_ntk(model, x1, max_memory=1, method=method)
    low = int(re.search(r"\(([\d,]+) bytes\)", str(small.value)).group(1).replace(",", ""))
    memo = conetool.EngineMemo()
    blocks: list[int] = []
    for _ in range(2):  # the second call reuses the first's set-up
        kernel = conetool.empirical_ntk(
            model,
            x1,
            max_memory=low + 2000,
            memo=memo,
            method=method,
            on_block=lambda done, total: blocks.append(total),
        )
        assert float((kernel - expected).norm() / expected.norm()) < 1e-10
    assert min(blocks) > 1  # several blocks in each call


def test_the_checks_read_the_logits() -> None:
    model, x1, _ = build("dict")
    check_per_example(model, x1)  # was: "returned a dict ... Wrap the model"

    class Interacting(Boxed):
        def forward(self, x: torch.Tensor) -> Any:
            out = super().forward(x)
            return {**out, "logits": out["logits"] - out["logits"].mean(0)}

    torch.manual_seed(0)
    mixed = Interacting("dict").double()
    for check in (
        lambda: check_per_example(mixed, x1),
        lambda: conetool.empirical_ntk(mixed, x1),
    ):
        with pytest.raises(ModelError, match="depends on the other examples"):
            check()


def test_an_object_without_logits_is_refused_naming_what_is_taken() -> None:
    for run in (
        lambda: conetool.empirical_ntk(TupleOutput(), torch.randn(3, 3)),
        lambda: conetool.empirical_ntk(TupleOutput(), torch.randn(3, 3), check=False),
        lambda: check_per_example(TupleOutput(), torch.randn(3, 3)),
    ):
        with pytest.raises(ModelError) as refused:
            run()
        text = str(refused.value)
        assert "returned a tuple" in text and "under 'logits'" in text, text
        assert "super().forward(x)[0]" in text, text
