"""``conetool kernels`` on a researcher's own checkpoints against an independent float64 reference.

Each test writes checkpoints the way a training loop outside conetool would (BatchNorm running
statistics moved away from their initial values, float16 and bfloat16 saves, DDP / torch.compile
/ Lightning prefixes, tied and frozen parameters, a sharded Hugging Face folder), runs the library
call ``conetool.kernels`` into a store in ``tmp_path``, and compares each stored kernel with an
explicit Jacobian computed here in float64: the model built by the factory, its state dict read
with plain ``safetensors`` / ``torch.load`` (prefixes taken off by hand), ``eval()`` mode,
``torch.func.jacrev`` per example on the probe inputs read from the store's ``probe.safetensors``.
Nothing of conetool's loading or engine is used on the reference side.

Every checkpoint directory holds two steps with other weights (and statistics), so that a value
carried from one checkpoint to the next (a cached copy of the weights) would show.
"""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn
from torch.func import functional_call, jacrev

import conetool
from conetool import paths

MODELS = '''
import torch
from torch import nn


class BNNet(nn.Module):
    """Linear -> BatchNorm1d -> tanh -> Linear -> tanh -> Linear: 4 inputs, 5 hidden units (two
    hidden layers, so that the full kernel is not symmetric in its two logits)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.mid = nn.Linear(5, 5)
        self.head = nn.Linear(5, num_classes)

    def forward(self, x):
        return self.head(torch.tanh(self.mid(torch.tanh(self.bn(self.fc(x))))))


class Tied(nn.Module):
    """One 4 x 4 weight used by two layers (a.weight is b.weight)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4, bias=False)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def bn(num_classes=3):
    return BNNet(num_classes)


def tied(num_classes=3):
    return Tied(num_classes)


def frozen(num_classes=3):
    model = BNNet(num_classes)
    model.fc.weight.requires_grad_(False)  # a frozen layer: not part of theta
    return model
'''

SPEC = """
[model]
arch = "conetool_ref_models:{factory}"
num_classes = 3
[data]
dataset = "synthetic"
shape = [4]
num_classes = 3
train_size = 30
test_size = 9
[probe]
size = 6
"""

STEPS = (10, 20)


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "conetool_ref_models.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(__import__("sys").modules, "conetool_ref_models", raising=False)
    return importlib.import_module("conetool_ref_models")


# --------------------------------------------------------------------------------------------------
# the reference: float64, explicit Jacobian, nothing of conetool's


def jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(n, c, p)``: the Jacobian of each example's logits with respect to every parameter with
    ``requires_grad`` (``named_parameters`` lists a tied one once), in float64, eval mode."""
    model = model.double().eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update({n: b for n, b in model.named_buffers()})

    def logits(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),)).squeeze(0)

    rows = []
    for xi in x.double():
        grads = jacrev(logits)(params, xi)  # name -> (c, *shape)
        rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1))
    return torch.stack(rows)


def reference_kernel(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """The DESIGN's definitions of the three kinds from the explicit Jacobian."""
    J = jacobian(model, x)
    if kind == "trace":
        return torch.einsum("iap,jap->ij", J, J)
    if kind == "sum":
        g = J.sum(dim=1)
        return g @ g.T
    assert kind == "full"
    return torch.einsum("iap,jbp->iajb", J, J)


def loaded(factory: Callable[[], nn.Module], state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The factory's model with ``state`` loaded strictly by plain PyTorch."""
    model = factory()
    model.load_state_dict(dict(state), strict=True)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def run_kernels(
    tmp_path: Path,
    ckpts: Path,
    factory: str,
    *,
    kind: str = "trace",
    dtype: str = "float64",
    method: str = "auto",
) -> tuple[Path, torch.Tensor, conetool.KernelsResult]:
    """``conetool.kernels`` on ``ckpts`` into a fresh store: (store, probe inputs, result)."""
    spec = tmp_path / f"{factory}.toml"
    spec.write_text(SPEC.format(factory=factory))
    store = tmp_path / f"store-{kind}-{dtype}-{method}"
    result = conetool.kernels(
        ckpts, spec=spec, store=store, kind=kind, dtype=dtype, device="cpu", method=method
    )
    inputs = load_file(str(paths.probe(store)))["inputs"]
    return store, inputs, result


def stored(store: Path, step: int) -> torch.Tensor:
    return load_file(str(paths.kernel(store, step)))["kernel"]


def check_against(
    store: Path,
    inputs: torch.Tensor,
    models: dict[int, nn.Module],
    kind: str,
    tolerance: float,
) -> None:
    for step, model in models.items():
        want = reference_kernel(model, inputs, kind)
        got = stored(store, step)
        assert got.shape == want.shape, step
        error = relative_error(got, want)
        assert error < tolerance, (step, error)


def moved(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every floating tensor moved from its initial value (as
    training would: weights perturbed, BatchNorm statistics away from 0 and 1), float32."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in model.state_dict().items():
        if key.endswith("running_var"):
            out[key] = 0.2 + 2 * torch.rand(t.shape, generator=g)
        elif key.endswith("running_mean"):
            out[key] = torch.randn(t.shape, generator=g)
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(100 * seed, dtype=torch.long)
        else:
            out[key] = t + 0.5 * torch.randn(t.shape, generator=g)
    return out


def two_states(factory: Callable[[], nn.Module]) -> dict[int, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = factory()
    return {step: moved(model, step) for step in STEPS}


# --------------------------------------------------------------------------------------------------
# (1) BatchNorm: the checkpoint's running statistics, eval mode


@pytest.mark.parametrize("counter", [True, False], ids=["num_batches_tracked", "no_counter"])
def test_batchnorm_running_statistics_are_the_checkpoints(
    tmp_path: Path, models: ModuleType, counter: bool
) -> None:
    states = two_states(models.bn)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in states.items():
        kept = {k: v for k, v in state.items() if counter or "num_batches_tracked" not in k}
        save_file(kept, str(ckpts / f"step_{step}.safetensors"))
    store, x, result = run_kernels(tmp_path, ckpts, "bn")
    assert result.computed == list(STEPS)
    refs = {step: loaded(models.bn, state) for step, state in states.items()}
    check_against(store, x, refs, "trace", 1e-10)

    # The statistics matter: with the initial ones (0 and 1) the kernel is another.
    fresh = {k: v for k, v in states[10].items() if "running" not in k}
    stale = models.bn()
    stale.load_state_dict(fresh, strict=False)
    assert relative_error(stored(store, 10), reference_kernel(stale, x, "trace")) > 1e-2


def test_batchnorm_float32_within_the_design_bound(tmp_path: Path, models: ModuleType) -> None:
    states = two_states(models.bn)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in states.items():
        save_file(state, str(ckpts / f"step_{step}.safetensors"))
    store, x, _ = run_kernels(tmp_path, ckpts, "bn", dtype="float32")
    assert stored(store, 10).dtype == torch.float32
    refs = {step: loaded(models.bn, state) for step, state in states.items()}
    check_against(store, x, refs, "trace", 1e-5)


# --------------------------------------------------------------------------------------------------
# (2) float16 and bfloat16 checkpoints of a float32 model: loaded into float32 with a warning,
# the kernel is that of the saved (rounded) weights


@pytest.mark.parametrize("saved", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_half_precision_checkpoints(
    tmp_path: Path, models: ModuleType, saved: torch.dtype, dtype: str
) -> None:
    states = two_states(models.bn)
    halves = {
        step: {k: v.to(saved) if v.is_floating_point() else v for k, v in state.items()}
        for step, state in states.items()
    }
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in halves.items():
        save_file(state, str(ckpts / f"step_{step}.safetensors"))
    store, x, result = run_kernels(tmp_path, ckpts, "bn", dtype=dtype)
    assert any("lower precision" in w for w in result.warnings), result.warnings
    tolerance = 1e-10 if dtype == "float64" else 1e-5
    # Upcast exactly: the reference loads the half-precision values into a float64 model.
    refs = {}
    for step, state in halves.items():
        model = models.bn().double()
        model.load_state_dict(state)
        refs[step] = model
    check_against(store, x, refs, "trace", tolerance)
    # The rounding is visible: the float32 weights give another kernel than the saved ones.
    unrounded = reference_kernel(loaded(models.bn, states[10]), x, "trace")
    assert relative_error(stored(store, 10), unrounded) > 10 * tolerance


# --------------------------------------------------------------------------------------------------
# (3) wrapper prefixes: DDP, torch.compile, both, Lightning


def _prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_safetensors(tmp_path: Path, models: ModuleType, prefix: str) -> None:
    states = two_states(models.bn)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in states.items():
        save_file(_prefixed(state, prefix), str(ckpts / f"step_{step}.safetensors"))
    store, x, _ = run_kernels(tmp_path, ckpts, "bn")
    # The reference strips the prefix by hand from what safetensors reads back.
    refs = {}
    for step in STEPS:
        raw = load_file(str(ckpts / f"step_{step}.safetensors"))
        refs[step] = loaded(models.bn, {k.removeprefix(prefix): v for k, v in raw.items()})
    check_against(store, x, refs, "trace", 1e-10)


def test_lightning_checkpoints(tmp_path: Path, models: ModuleType) -> None:
    states = two_states(models.bn)
    ckpts = tmp_path / "lightning"
    ckpts.mkdir()
    for step, state in states.items():
        torch.save(
            {
                "epoch": step // 10,
                "global_step": step,
                "state_dict": _prefixed(state, "model."),
                "optimizer_states": [],
            },
            ckpts / f"epoch={step // 10}-step={step}.ckpt",
        )
    store, x, result = run_kernels(tmp_path, ckpts, "bn")
    assert result.computed == list(STEPS)
    refs = {}
    for step in STEPS:
        raw = torch.load(
            ckpts / f"epoch={step // 10}-step={step}.ckpt", weights_only=True, map_location="cpu"
        )["state_dict"]
        refs[step] = loaded(models.bn, {k.removeprefix("model."): v for k, v in raw.items()})
    check_against(store, x, refs, "trace", 1e-10)


# --------------------------------------------------------------------------------------------------
# (4) tied weights count once; a frozen parameter is no part of theta


@pytest.mark.parametrize("method", ["auto", "structured", "jacobian"])
def test_tied_weights_torch_save(tmp_path: Path, models: ModuleType, method: str) -> None:
    """torch.save(model.state_dict()) keeps both names of the tied weight (one storage)."""
    torch.manual_seed(0)
    model = models.tied()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    refs = {}
    for step in STEPS:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        torch.save(model.state_dict(), ckpts / f"step_{step}.pt")
        sd = torch.load(ckpts / f"step_{step}.pt", weights_only=True)
        refs[step] = loaded(models.tied, sd)
    # theta counts the tied weight once: 4*4 + 4 + 3*4 + 3
    assert sum(p.numel() for p in refs[10].parameters()) == 35
    store, x, _ = run_kernels(tmp_path, ckpts, "tied", method=method)
    check_against(store, x, refs, "trace", 1e-10)


def test_tied_weights_safetensors_save_model(tmp_path: Path, models: ModuleType) -> None:
    """safetensors' save_model (as Hugging Face's save_pretrained) writes a tied weight under
    one of its names only; the model loads it under both."""
    torch.manual_seed(0)
    model = models.tied()
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    refs = {}
    for step in STEPS:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        path = ckpts / f"step_{step}.safetensors"
        save_model(model, str(path))
        reference = models.tied()
        missing, unexpected = reference.load_state_dict(load_file(str(path)), strict=False)
        assert len(missing) == 1 and not unexpected  # one name of the tied pair
        refs[step] = reference
    store, x, _ = run_kernels(tmp_path, ckpts, "tied")
    check_against(store, x, refs, "trace", 1e-10)
    # inspect agrees, from the headers and from the tensors
    for verify in (False, True):
        rows = conetool.inspect(ckpts, spec=tmp_path / "tied.toml", verify=verify)
        assert [row.status for row in rows] == ["ok", "ok"], [row.problem for row in rows]


def test_frozen_parameter_is_left_out_of_theta(tmp_path: Path, models: ModuleType) -> None:
    """The factory freezes fc.weight: the kernel is over the other parameters, with fc.weight
    (the checkpoint's value) a fixed input."""
    states = two_states(models.frozen)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in states.items():
        save_file(state, str(ckpts / f"step_{step}.safetensors"))
    store, x, _ = run_kernels(tmp_path, ckpts, "frozen")
    refs = {step: loaded(models.frozen, state) for step, state in states.items()}
    assert not refs[10].fc.weight.requires_grad
    check_against(store, x, refs, "trace", 1e-10)
    # With fc.weight in theta the kernel is another.
    everything = {step: loaded(models.bn, state) for step, state in states.items()}
    assert relative_error(stored(store, 10), reference_kernel(everything[10], x, "trace")) > 1e-3


# --------------------------------------------------------------------------------------------------
# (5) a sharded Hugging Face checkpoint with its index


def _save_sharded(folder: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Hugging Face's layout: two shards and ``model.safetensors.index.json``."""
    folder.mkdir(parents=True)
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k].contiguous() for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )


def test_sharded_hugging_face_folders(tmp_path: Path, models: ModuleType) -> None:
    states = two_states(models.bn)
    ckpts = tmp_path / "hf"
    for step, state in states.items():
        _save_sharded(ckpts / f"checkpoint-{step}", state)
    store, x, result = run_kernels(tmp_path, ckpts, "bn")
    assert result.computed == list(STEPS)
    refs = {}
    for step in STEPS:
        folder = ckpts / f"checkpoint-{step}"
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        refs[step] = loaded(models.bn, state)
    check_against(store, x, refs, "trace", 1e-10)


# --------------------------------------------------------------------------------------------------
# (6) the sum and full kinds against their definitions


@pytest.mark.parametrize("kind", ["sum", "full"])
@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_sum_and_full_kinds(tmp_path: Path, models: ModuleType, kind: str, method: str) -> None:
    states = two_states(models.bn)
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in states.items():
        save_file(_prefixed(state, "module."), str(ckpts / f"step_{step}.safetensors"))
    store, x, _ = run_kernels(tmp_path, ckpts, "bn", kind=kind, method=method)
    refs = {step: loaded(models.bn, state) for step, state in states.items()}
    check_against(store, x, refs, kind, 1e-10)
    if kind == "full":  # example-major (n, c, n, c); its trace over the logits is the trace kernel
        full = stored(store, 20)
        assert full.shape == (6, 3, 6, 3)
        trace = reference_kernel(refs[20], x, "trace")
        assert relative_error(torch.einsum("iaja->ij", full), trace) < 1e-10


def test_tied_weights_saved_apart_are_refused(tmp_path: Path, models: ModuleType) -> None:
    """A checkpoint of an untied model holds two values for the model's one tied tensor:
    loading would keep one of them silently, so the file is refused, naming both keys."""
    torch.manual_seed(0)
    state = models.tied().state_dict()
    state = {k: v.clone() for k, v in state.items()}
    state["b.weight"] += 0.5  # trained apart: not one tensor any more
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    save_file(state, str(ckpts / "step_10.safetensors"))
    with pytest.raises(conetool.ConetoolError, match="'a.weight' and 'b.weight' with different"):
        run_kernels(tmp_path, ckpts, "tied")
    spec = tmp_path / "tied.toml"
    rows = conetool.inspect(ckpts, spec=spec, verify=True)
    assert rows[0].status == "error" and "tied" in (rows[0].problem or "")


def test_float64_checkpoints_with_float64_kernels(tmp_path: Path, models: ModuleType) -> None:
    """A run trained in float64 saves float64 weights; the spec's factory builds a float32
    model, which loading rounds them into (as plain PyTorch's load_state_dict does), so the
    float64 kernel is that of the rounded weights: a warning says so and names the fix, once."""
    states = two_states(models.bn)
    g = torch.Generator().manual_seed(5)
    doubles = {
        step: {
            k: v.double() + 1e-9 * torch.randn(v.shape, dtype=torch.float64, generator=g)
            if v.is_floating_point()
            else v
            for k, v in state.items()
        }
        for step, state in states.items()
    }
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in doubles.items():
        save_file(state, str(ckpts / f"step_{step}.safetensors"))
    store, x, result = run_kernels(tmp_path, ckpts, "bn", dtype="float64")
    said = [w for w in result.warnings if "higher precision" in w]
    assert len(said) == 1 and "step_10.safetensors" in said[0], result.warnings
    assert "rounds them to float32" in said[0] and "model.to(torch.float64)" in said[0]
    rounded = {}
    exact = {}
    for step, state in doubles.items():
        rounded[step] = loaded(models.bn, state)  # a float32 model: rounded
        exact[step] = models.bn().double()
        exact[step].load_state_dict(state)
    check_against(store, x, rounded, "trace", 1e-10)
    assert relative_error(stored(store, 10), reference_kernel(exact[10], x, "trace")) > 1e-10
    # A float32 kernel rounds anyway: nothing to say.
    _, _, plain = run_kernels(tmp_path, ckpts, "bn", dtype="float32")
    assert not any("higher precision" in w for w in plain.warnings), plain.warnings


def test_every_dtype_warning_of_the_first_file_is_said(tmp_path: Path, models: ModuleType) -> None:
    """The first checkpoint with something to say of its dtypes says all of it (values below
    float32's smallest normal and float16 tensors), not its first message only; later files
    saved alike say nothing."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step, state in two_states(models.bn).items():
        state["fc.bias"] = torch.full((5,), 1e-40, dtype=torch.float64)  # 0 in float32
        state["head.weight"] = state["head.weight"].half()
        save_file(state, str(ckpts / f"step_{step}.safetensors"))
    _, _, result = run_kernels(tmp_path, ckpts, "bn", dtype="float32")
    said = [w for w in result.warnings if "step_" in w]
    assert len(said) == 2, result.warnings
    assert all("step_10.safetensors" in w for w in said), said
    assert "below the smallest normal float32" in said[0], said
    assert "'head.weight' (float16) in lower precision" in said[1], said
