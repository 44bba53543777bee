"""The one-off forward passes conetool makes of a model outside the eNTK engines leave the state
that its forward pass updates (a call counter, a running mean kept by hand, a peak monitor: a
registered buffer or a tensor held as a plain attribute) as it was, as the engines do: the
independence check of ``check_per_example``, the output check and the look at what forward
returns that ``build_model`` and ``kernels``/``train``/``switch`` make, the slow-step count.

Before, each called the model itself: ``check_per_example`` moved a counter by three and called
a model whose output reads its count random (its passes each one count further on), and
``kernels`` computed a spec model's kernels from a count its two checks had moved, not from the
model as built (3^2 = 9 times the kernel of a model whose outputs scale by count + 1)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file
from test_ntk import reference, rel
from test_ntk_buffer_updates import MODELS as BUFFER_MODELS
from test_ntk_buffer_updates import _built as buffer_model
from test_ntk_tensor_attributes import MODELS as ATTRIBUTE_MODELS
from test_ntk_tensor_attributes import Pure
from test_ntk_tensor_attributes import _built as attribute_model
from torch import Tensor, nn

import conetool
from conetool import paths
from conetool.models import build_model, output_check
from conetool.ntk import check_per_example, empirical_ntk
from conetool.probe import load_probe
from conetool.spec import ModelSpec


def _held(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """Every buffer and tensor attribute of ``model``: the tensor itself, and a copy of its values."""
    from conetool.ntk_buffers import plain_tensors

    found = {**dict(model.named_buffers()), **plain_tensors(model)}
    return {name: (tensor, tensor.clone()) for name, tensor in found.items()}


def _unchanged(model: nn.Module, held: dict[str, tuple[Tensor, Tensor]]) -> None:
    now = _held(model)
    assert now.keys() == held.keys()
    for name, (tensor, values) in held.items():
        assert now[name][0] is tensor, f"{name} replaced"
        assert torch.equal(tensor, values), f"{name} written to: {values} -> {tensor}"


def _stateful(kind: str, name: str) -> tuple[nn.Module, Tensor]:
    return buffer_model(name) if kind == "buffer" else attribute_model(name)


CASES = [("buffer", name) for name in BUFFER_MODELS] + [
    ("attribute", name) for name in ATTRIBUTE_MODELS
]


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_check_per_example_leaves_the_state_and_passes(kind: str, name: str) -> None:
    """The check passes (each of its passes starts from the model's state, so that a count the
    output reads is no randomness) and leaves the state as it was; so does empirical_ntk after."""
    model, x = _stateful(kind, name)
    held = _held(model)
    check_per_example(model.eval(), x)
    _unchanged(model, held)
    empirical_ntk(model, x, device="cpu")
    _unchanged(model, held)


@pytest.mark.parametrize(("kind", "name"), CASES)
def test_the_output_check_leaves_the_state(kind: str, name: str) -> None:
    model, _ = _stateful(kind, name)
    held = _held(model)
    output_check(model, (4,), 3)
    _unchanged(model, held)


MODULE = '''
import torch
from torch import nn


class Counted(nn.Module):
    """Counts its calls in a plain attribute and scales its outputs by the count: one call from
    the model as built gives the outputs of count 1."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, num_classes)
        self.count = torch.zeros(())

    def forward(self, x):
        self.count += 1
        return self.b(torch.tanh(self.a(x))) * self.count

    def pure(self, x):
        return self.b(torch.tanh(self.a(x))) * (self.count + 1)


def make_model(num_classes=3):
    return Counted(num_classes)
'''

SPEC = """
[model]
arch = "conetool_counted_model:make_model"
num_classes = 3
[data]
dataset = "synthetic"
shape = [4]
num_classes = 3
train_size = 24
test_size = 12
[probe]
size = 5
[train]
steps = 2
batch_size = 8
save_every = 2
eval_every = 2
"""


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    (tmp_path / "conetool_counted_model.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conetool_counted_model", raising=False)
    return importlib.import_module("conetool_counted_model")


def test_build_model_leaves_a_spec_models_count(counted: ModuleType) -> None:
    """build_model's look at what forward returns, and the output check after it."""
    model = build_model(ModelSpec(arch="conetool_counted_model:make_model", num_classes=3), (4,))
    assert float(model.count) == 0
    output_check(model, (4,), 3)
    assert float(model.count) == 0


def test_kernels_of_a_spec_model_are_those_of_the_model_as_built(
    counted: ModuleType, tmp_path: Path
) -> None:
    """A model whose output reads the count it updates: the kernel is that of one call from the
    count as built (0, so outputs of count 1), against the float64 explicit Jacobian of a twin
    without the update; before, the two checks had moved it to 2 (a kernel 9 times that)."""
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    run, store = tmp_path / "run", tmp_path / "store"
    conetool.train(spec, out=run, threads=1)
    conetool.kernels(run, store=store, threads=1)
    opened = conetool.Store.open(store)
    probe = load_probe(store / "probe.safetensors")
    for step in (0, 2):
        model = counted.make_model()
        model.load_state_dict(load_file(str(paths.checkpoint(run, step))))
        want = reference(Pure(model).double().eval(), probe.inputs.double(), "trace")
        got = opened.load_kernel(step).double()
        assert rel(got, want) < 1e-5, (step, float(got.norm() / want.norm()))
