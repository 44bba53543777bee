"""Models held in float16 or bfloat16 (conetool.low_precision): their eNTK is computed in float32
from their weights upcast, checked against the float64 Jacobian of the same weights, and range
checked as the float32 kernel it is; `kernels` says it upcasts, `train` and `switch` refuse such a
model before writing anything, naming the spec and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_ntk import explicit_jacobian
from tiny_run import SPEC
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.errors import ConetoolError, ModelError
from conetool.ntk import KernelUnderflowError, empirical_ntk
from conetool.pipeline import switch
from conetool.pipeline.resolve import model_for
from conetool.spec import save_spec, spec_from_dict
from conetool.store import Store
from conetool.training import train

HALVES = [torch.float16, torch.bfloat16]
METHODS = ["jacobian", "structured"]


class Scaled(torch.nn.Module):
    """A small MLP whose logits are multiplied by ``scale`` (a Python float, applied in the
    forward pass's own dtype)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def _conv() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 3),
    )
    with torch.no_grad():  # running statistics away from 0 and 1: the buffers matter
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


MODELS = {"mlp": (lambda: Scaled(1.0), (6, 8)), "conv": (_conv, (5, 2, 5, 5))}


def _reference(model: torch.nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The float64 kernel of ``model``'s weights as it holds them (upcast exactly) on ``x``."""
    jac = explicit_jacobian(copy.deepcopy(model).double().eval(), x.double())
    if kind == "trace":
        return torch.einsum("iap,jap->ij", jac, jac)
    return torch.einsum("iap,jbp->iajb", jac, jac)


def _relative(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    return float((kernel.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("half", HALVES, ids=str)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_half_precision_models_kernel_is_computed_in_float32(
    name: str, half: torch.dtype, method: str
) -> None:
    """dtype=None on a float16 (bfloat16) model computed the kernel in float16 (bfloat16): 2e-4
    (2e-3) off the float64 kernel of the same weights, against 1e-6 promised for float32."""
    build, shape = MODELS[name]
    model = build().to(half)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(half)
    for kind in ("trace", "full"):
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
        assert kernel.dtype == torch.float32
        assert _relative(kernel, _reference(model, x, kind)) < 1e-6, kind
    # the upcast is a copy: the model keeps its own weights and dtype
    after = model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_small_outputs_of_a_half_precision_model_keep_their_kernel(half: torch.dtype) -> None:
    """Logits scaled by 1e-6: in float16 every product of Jacobian entries was 0 and the kernel
    all zeros, returned unchecked; in bfloat16 it was 6e-3 off."""
    model = Scaled(1e-6).to(half)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(half)
    kernel = empirical_ntk(model, x, device="cpu")
    assert _relative(kernel, _reference(model, x, "trace")) < 1e-6


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_the_range_check_runs_on_a_half_precision_models_kernel(half: torch.dtype) -> None:
    """Logits scaled by 1e-20: the float32 kernel is made of subnormal products and is refused,
    as a float32 model's is (tests/test_ntk_range.py). With dtype=None the half-precision kernel
    skipped the check (it only ran for a kernel computed in float32) and came back as zeros."""
    model = Scaled(1e-20).to(half)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(half)
    with pytest.raises(KernelUnderflowError, match="--dtype float64"):
        empirical_ntk(model, x, device="cpu")
    exact = empirical_ntk(model, x, device="cpu", dtype="float64")
    assert exact.dtype == torch.float64
    assert _relative(exact, _reference(model, x, "trace")) < 1e-12


@pytest.mark.parametrize("half", HALVES, ids=str)
def test_a_half_precision_compute_dtype_is_refused(half: torch.dtype) -> None:
    model = Scaled(1.0)
    with pytest.raises(ConetoolError, match=rf"dtype={half}: the eNTK is computed in float32"):
        empirical_ntk(model, torch.randn(4, 8), device="cpu", dtype=half)


FACTORY = """
import torch


def make(num_classes, input_shape, half="float16"):
    model = torch.nn.Sequential(
        torch.nn.Linear(input_shape[0], 6), torch.nn.Tanh(), torch.nn.Linear(6, num_classes)
    )
    return model.to(getattr(torch, half)) if half else model
"""


def _factory_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, half: str
) -> tuple[dict[str, object], Path]:
    """A spec dict whose model is ``half_factory:make`` in ``half`` (``""``: float32), and a folder
    of checkpoints of the model at steps 0, 5 and 10 (in its own dtype)."""
    (tmp_path / "half_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**SPEC, "model": {"arch": "half_factory:make", "num_classes": 3, "half": half}}
    spec = spec_from_dict(raw, source="half.toml")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 5, 10):
        torch.manual_seed(step)
        save_file(model_for(spec).state_dict(), str(paths.checkpoint(ckpts, step)))
    return raw, ckpts


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_kernels_says_it_upcasts_a_half_precision_factory_and_stores_float32_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, half: str
) -> None:
    raw, ckpts = _factory_spec(tmp_path, monkeypatch, half)
    spec_file = tmp_path / "half.toml"
    save_spec(spec_from_dict(raw, source=str(spec_file)), spec_file)
    store = tmp_path / "store"
    args = ["kernels", str(ckpts), "--spec", str(spec_file), "--store", str(store)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert (
        f'note: {spec_file}: [model] arch = "half_factory:make" builds a {half} model '
        f"(parameter '0.weight'): its kernels are computed in float32 from its {half} weights"
    ) in text, result.output
    opened = Store.open(store)
    assert opened.identity.dtype == "float32" and opened.steps() == [0, 5, 10]
    x = load_file(str(paths.probe(store)))["inputs"]
    for step in (0, 10):
        kernel = opened.load_kernel(step)
        weights = load_file(str(paths.checkpoint(ckpts, step)))
        assert next(iter(weights.values())).dtype == getattr(torch, half)
        exact = model_for(spec_from_dict({**raw, "model": {**raw["model"], "half": ""}}))
        exact.load_state_dict(weights)  # the saved half-precision weights, upcast exactly
        assert kernel.dtype == torch.float32
        assert _relative(kernel, _reference(exact, x, "trace")) < 1e-6


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_train_refuses_a_half_precision_factory_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, half: str
) -> None:
    """It failed on its first batch with PyTorch's 'mat1 and mat2 must have the same dtype'."""
    raw, _ = _factory_spec(tmp_path, monkeypatch, half)
    out = tmp_path / "run"
    with pytest.raises(ModelError) as refused:
        train(spec_from_dict(raw, source="half.toml"), out, device="cpu", threads=1)
    message = " ".join(str(refused.value).split())
    assert message.startswith(f'half.toml: [model] arch = "half_factory:make" builds a {half}')
    assert "conetool train trains in float32" in message
    assert "Make the factory return the model in float32" in message
    assert not out.exists()


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_switch_refuses_a_half_precision_factory_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, half: str
) -> None:
    """It failed in its first point with PyTorch's dtype mismatch."""
    raw, ckpts = _factory_spec(tmp_path, monkeypatch, half)
    store = tmp_path / "store"
    spec = spec_from_dict(raw, source="half.toml")
    with pytest.raises(ModelError) as refused:
        switch([0], store=store, ckpts=ckpts, spec=spec, device="cpu", threads=1)
    message = " ".join(str(refused.value).split())
    assert message.startswith(f'half.toml: [model] arch = "half_factory:make" builds a {half}')
    assert "conetool switch trains in float32" in message
    assert not store.exists()


def test_a_half_precision_parameter_after_float32_ones_is_found() -> None:
    """A float32 model whose head alone was made float16 (``model[2].half()``): training it fails
    on the first batch as a whole float16 model does, so it is refused, naming the head's weight
    (the first parameter alone is float32)."""
    from conetool.low_precision import low_precision_parameter, refuse_for_training

    model = Scaled(1.0).net
    model[2].half()
    assert next(model.parameters()).dtype == torch.float32
    assert low_precision_parameter(model) == ("2.weight", torch.float16)
    with pytest.raises(ModelError, match=r"float16 model \(parameter '2.weight'\)"):
        refuse_for_training(model, "m:make", "m.toml", "conetool train")


def test_a_frozen_half_precision_parameter_is_not_refused() -> None:
    """Only trainable parameters are stepped in their own dtype: a frozen float16 one is not
    found (``low_precision_parameter``), and training does not refuse the model for it."""
    from conetool.low_precision import low_precision_parameter, refuse_for_training

    model = Scaled(1.0).net
    model[2].half().requires_grad_(False)
    assert low_precision_parameter(model) is None
    refuse_for_training(model, "m:make", "m.toml", "conetool train")  # no error


def test_switch_checks_a_factorys_precision_leaving_the_global_rng_as_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conetool.pipeline.switch_prepare import _refuse_low_precision

    raw, _ = _factory_spec(tmp_path, monkeypatch, "")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _refuse_low_precision(spec_from_dict(raw, source="f.toml"))  # builds the model: no error
    assert torch.equal(torch.get_rng_state(), before)
