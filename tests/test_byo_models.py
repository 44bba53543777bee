"""Bring your own run, with the kinds of models and checkpoint files researchers bring.

Each test trains a small user model with a plain PyTorch loop (no conetool), saves it the way a
real project does (Lightning ``epoch=E-step=S.ckpt``, Hugging Face ``checkpoint-N/`` folders,
``epoch_E.pt``, a loop's ``{"model_state_dict", "optimizer_state_dict", "step"}`` dict, a whole
run in one file), runs the README's chain on it from the command line (``inspect``, ``kernels``,
and for some ``distance``, ``embed``, ``switch --at``), and compares every stored kernel with an
explicit float64 Jacobian product computed here: the factory's model loaded by plain
``load_state_dict``, eval mode, ``torch.func.jacrev`` one probe example at a time (the probe
inputs read from the store). Nothing of conetool's loading or engine is on the reference side.

Models: a Transformer encoder classifier (attention, LayerNorm, a positional-embedding
parameter), forwards returning a dict or a dataclass with ``.logits`` (Hugging Face style), a
frozen trunk, a non-persistent buffer and parameters forward never uses, and ``nn.GRU`` and
``nn.LSTM`` (no vmap rule in torch 2.14: computed by ordinary autograd) as they are, and with the
README's faster name-keeping subclass.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
import textwrap
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call, jacrev
from typer.testing import CliRunner

import conetool
from conetool import paths
from conetool.cli import app

runner = CliRunner()

MODELS = '''
from dataclasses import dataclass

import torch
from torch import nn


class Encoder(nn.Module):
    """4 tokens of 3 features: embedding, a positional parameter, one Transformer encoder layer
    (attention, LayerNorm, dropout), a final LayerNorm, mean pooling, a linear head."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.pos = nn.Parameter(0.1 * torch.randn(1, 4, 8))
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.norm(self.encoder(self.embed(x) + self.pos)).mean(1))


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class HFStyle(nn.Module):
    def __init__(self, num_classes=3, as_dataclass=False):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, num_classes)
        self.as_dataclass = as_dataclass

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        if self.as_dataclass:
            return Output(logits=self.head(h), hidden=h)
        return {"logits": self.head(h), "hidden_states": h}


class TupleOut(HFStyle):
    def forward(self, x):
        h = torch.tanh(self.fc(x))
        return self.head(h), h


class Frozen(nn.Module):
    """A frozen trunk (Linear, GELU, LayerNorm) and a trained head."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.LayerNorm(5))
        self.trunk.requires_grad_(False)
        self.head = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.head(self.trunk(x))


class Buffers(nn.Module):
    """A non-persistent buffer (no part of the state dict), a persistent one, and parameters
    forward never uses (a whole module and a bare parameter)."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 6), persistent=False)
        self.register_buffer("shift", torch.zeros(6))
        self.fc = nn.Linear(6, 5)
        self.head = nn.Linear(5, num_classes)
        self.unused = nn.Linear(2, 2)
        self.aux = nn.Parameter(torch.randn(num_classes, 5))

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x * self.scale + self.shift)))


class AuxHead(nn.Module):
    """An auxiliary head that forward calls every time but adds to the logits only in training
    mode (as GoogLeNet's), after a BatchNorm, and a parameter forward never uses: in eval mode
    neither reaches the logits."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = nn.BatchNorm1d(5)
        self.head = nn.Linear(5, num_classes)
        self.aux = nn.Linear(5, num_classes)
        self.spare = nn.Parameter(torch.randn(num_classes))

    def forward(self, x):
        h = torch.tanh(self.bn(self.fc(x)))
        out, aux = self.head(h), self.aux(h)
        return out + 0.3 * aux if self.training else out


class Recurrent(nn.Module):
    """6 time steps of 1 feature through a one-layer nn.GRU (or nn.LSTM); the last hidden state
    to a head."""

    def __init__(self, num_classes=3, loop=False, cell=nn.GRU):
        super().__init__()
        self.rnn = (LoopGRU if loop else cell)(1, 4, batch_first=True)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        out, _ = self.rnn(x.unsqueeze(-1))
        return self.head(out[:, -1])


class LoopGRU(nn.GRU):  # the README's, as written there
    def forward(self, x, h=None):
        h = x.new_zeros(x.shape[0], self.hidden_size) if h is None else h[0]
        outs = []
        for t in range(x.shape[1]):
            h = torch.gru_cell(x[:, t], h, self.weight_ih_l0, self.weight_hh_l0,
                               self.bias_ih_l0, self.bias_hh_l0)
            outs.append(h)
        return torch.stack(outs, 1), h.unsqueeze(0)


def encoder(num_classes=3):
    return Encoder(num_classes)


def hf_dict(num_classes=3):
    return HFStyle(num_classes)


def hf_dataclass(num_classes=3):
    return HFStyle(num_classes, as_dataclass=True)


def tuple_out(num_classes=3):
    return TupleOut(num_classes)


def frozen(num_classes=3):
    return Frozen(num_classes)


def buffers(num_classes=3):
    return Buffers(num_classes)


def aux_head(num_classes=3):
    return AuxHead(num_classes)


def gru(num_classes=3):
    return Recurrent(num_classes)


def loop_gru(num_classes=3):
    return Recurrent(num_classes, loop=True)


def lstm(num_classes=3):
    return Recurrent(num_classes, cell=nn.LSTM)
'''

SPEC = """
[model]
arch = "conetool_byo_models:{factory}"
num_classes = 3
[data]
dataset = "synthetic"
shape = {shape}
num_classes = 3
train_size = 24
test_size = 9
[probe]
size = 6
[train]
steps = 6
batch_size = 8
lr = 0.05
momentum = 0.9
weight_decay = 0.0
eval_every = 3
"""

SHAPES = {"encoder": [4, 3]}  # the others: [6]

#: 24 training examples at batch 8: 3 iterations per epoch; the loops save after epochs 0, 1, 2.
ITERATIONS_PER_EPOCH = 3
STEPS = (0, 3, 6)


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "conetool_byo_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "conetool_byo_models", raising=False)
    return importlib.import_module("conetool_byo_models")


def spec_file(tmp_path: Path, factory: str) -> Path:
    path = tmp_path / f"{factory}.toml"
    path.write_text(SPEC.format(factory=factory, shape=SHAPES.get(factory, [6])))
    return path


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return " ".join(result.output.split())


def refused(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 1, (args, result.output)
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


# --------------------------------------------------------------------------------------------------
# the user's side: a plain training loop, and the reference


def logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, Mapping):
        out = out["logits"]
    return out.logits if hasattr(out, "logits") else out


def plain_run(
    factory: Callable[[], nn.Module], shape: list[int], save: Callable[[nn.Module, Any, int], None]
) -> None:
    """Two epochs of SGD with momentum on the user's own data (not conetool's), ``save(model,
    optimizer, step)`` after every epoch and before the first (the training loop's own)."""
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(24, *shape)
    y = torch.arange(24) % 3
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.2, momentum=0.9
    )
    save(model, optimizer, 0)
    step = 0
    for _ in range(2):
        model.train()
        for i in range(ITERATIONS_PER_EPOCH):
            loss = nn.functional.cross_entropy(
                logits_of(model(x[8 * i : 8 * i + 8])), y[8 * i : 8 * i + 8]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        save(model, optimizer, step)


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference_kernel(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` trace kernel Σ_k <∂f_k(x_i)/∂θ, ∂f_k(x_j)/∂θ> over the parameters with
    ``requires_grad``, float64, eval mode, from an explicit Jacobian per example."""
    model = model.double().eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def logits(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return logits_of(functional_call(model, {**fixed, **p}, (xi.unsqueeze(0),))).squeeze(0)

    rows = []
    for xi in x.double():
        with warnings.catch_warnings():  # torch's note that attention's backward has no vmap rule
            warnings.filterwarnings("ignore", message="There is a performance drop")
            grads = jacrev(logits)(params, xi)
        rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1))
    J = torch.stack(rows)
    return torch.einsum("iap,jap->ij", J, J)


def loaded(factory: Callable[[], nn.Module], state: Mapping[str, torch.Tensor]) -> nn.Module:
    model = factory()
    model.load_state_dict(dict(state), strict=True)
    return model


def check_kernels(
    store: Path, refs: Mapping[int, nn.Module], tolerance: float = 1e-10
) -> dict[int, torch.Tensor]:
    x = load_file(str(paths.probe(store)))["inputs"]
    kernels = {}
    for step, model in refs.items():
        got = load_file(str(paths.kernel(store, step)))["kernel"].double()
        want = reference_kernel(model, x)
        error = float((got - want).norm() / want.norm())
        assert error < tolerance, (step, error)
        kernels[step] = got
    # the steps hold other weights: a kernel carried over from another step would show
    assert float((kernels[STEPS[0]] - kernels[STEPS[-1]]).norm() / kernels[STEPS[-1]].norm()) > 1e-3
    return kernels


# --------------------------------------------------------------------------------------------------
# a Transformer encoder, saved by Lightning


def test_a_transformer_encoder_saved_by_lightning_end_to_end(
    tmp_path: Path, models: ModuleType
) -> None:
    ckpts = tmp_path / "lightning"
    ckpts.mkdir()

    def save(model: nn.Module, optimizer: Any, step: int) -> None:
        epoch = step // ITERATIONS_PER_EPOCH
        torch.save(
            {
                "epoch": epoch,
                "global_step": step,
                "state_dict": {"model." + k: v for k, v in state_of(model).items()},
                "optimizer_states": [optimizer.state_dict()],
                "lr_schedulers": [],
            },
            ckpts / f"epoch={epoch}-step={step}.ckpt",
        )

    plain_run(models.encoder, [4, 3], save)
    spec, store = spec_file(tmp_path, "encoder"), tmp_path / "store"
    listed = invoke("inspect", str(ckpts), "--spec", str(spec), "--verify")
    assert "3 of 3 checkpoints usable" in listed, listed
    invoke("kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", "float64")
    refs = {}
    for step in STEPS:
        name = f"epoch={step // ITERATIONS_PER_EPOCH}-step={step}.ckpt"
        raw = torch.load(ckpts / name, weights_only=True)["state_dict"]
        refs[step] = loaded(models.encoder, {k.removeprefix("model."): v for k, v in raw.items()})
    check_kernels(store, refs)
    invoke("distance", "--store", str(store), "--ref", "0", "--no-noise", "-q")
    invoke("embed", "--store", str(store), "-q")
    swept = invoke("switch", "--at", "0,3", "--store", str(store))
    assert "not written by `conetool train`" in swept, swept
    results = json.loads((store / "switch" / "results.json").read_text())
    assert "0" in json.dumps(results) and "3" in json.dumps(results)


# --------------------------------------------------------------------------------------------------
# Hugging Face style: the logits inside a dict or a dataclass, in checkpoint-N/ folders


@pytest.mark.parametrize("factory", ["hf_dict", "hf_dataclass"])
def test_a_forward_returning_its_logits_inside_an_object(
    tmp_path: Path, models: ModuleType, factory: str
) -> None:
    """Was refused ("returned dict ... Wrap the model"), and a module around the model would
    have put a prefix before every checkpoint key."""
    ckpts = tmp_path / "hf"
    build = getattr(models, factory)

    def save(model: nn.Module, optimizer: Any, step: int) -> None:
        folder = ckpts / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(state_of(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    plain_run(build, [6], save)
    spec, store = spec_file(tmp_path, factory), tmp_path / "store"
    invoke("kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", "float64")
    refs = {
        step: loaded(build, load_file(str(ckpts / f"checkpoint-{step}" / "model.safetensors")))
        for step in STEPS
    }
    check_kernels(store, refs)
    swept = invoke("switch", "--at", "0,3", "--store", str(store), "--until", "6")
    assert "momentum" in swept, swept
    # conetool train takes such a model too, and its own checkpoints keep the model's names
    run = tmp_path / "run"
    invoke("train", str(spec), "--out", str(run), "-q")
    assert set(load_file(str(paths.checkpoint(run, 6)))) == set(build().state_dict())


def test_a_tuple_output_is_refused_with_a_fix_that_keeps_the_names(
    tmp_path: Path, models: ModuleType
) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    plain_run(
        models.tuple_out,
        [6],
        lambda model, _, step: torch.save(state_of(model), ckpts / f"step_{step}.pt"),
    )
    spec = spec_file(tmp_path, "tuple_out")
    text = refused("kernels", str(ckpts), "--spec", str(spec), "--store", str(tmp_path / "s"))
    assert "returned tuple" in text, text
    assert "under 'logits'" in text and "return super().forward(x)[0]" in text, text
    assert "not a module around it, which puts a prefix" in text, text


# --------------------------------------------------------------------------------------------------
# frozen, unused and non-persistent


def test_a_frozen_trunk_in_hugging_face_pytorch_model_bin_folders(
    tmp_path: Path, models: ModuleType
) -> None:
    """The optimizer holds the head's parameters only; the trunk's values come from the
    checkpoint and are no part of θ."""
    ckpts = tmp_path / "hf"

    def save(model: nn.Module, optimizer: Any, step: int) -> None:
        folder = ckpts / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        torch.save(state_of(model), folder / "pytorch_model.bin")
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    plain_run(models.frozen, [6], save)
    spec, store = spec_file(tmp_path, "frozen"), tmp_path / "store"
    ran = invoke(
        "kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", "float64"
    )
    assert "get no gradient" not in ran, ran  # frozen on purpose: requires_grad=False says so
    refs = {}
    for step in STEPS:
        state = torch.load(ckpts / f"checkpoint-{step}" / "pytorch_model.bin", weights_only=True)
        refs[step] = loaded(models.frozen, state)
    kernels = check_kernels(store, refs)
    # the trunk frozen: with it in θ the kernel would be another
    thawed = refs[6].requires_grad_(True)
    x = load_file(str(paths.probe(store)))["inputs"]
    assert float((kernels[6] - reference_kernel(thawed, x)).norm() / kernels[6].norm()) > 1e-2
    swept = invoke("switch", "--at", "3", "--store", str(store), "--until", "6")
    assert "momentum from Hugging Face's checkpoint-3/optimizer.pt" in swept, swept


def test_non_persistent_buffers_and_unused_parameters_from_a_loops_dicts(
    tmp_path: Path, models: ModuleType
) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()

    def save(model: nn.Module, optimizer: Any, step: int) -> None:
        torch.save(
            {
                "model_state_dict": state_of(model),
                "optimizer_state_dict": optimizer.state_dict(),
                "step": step,
                "epoch": step // ITERATIONS_PER_EPOCH,
            },
            ckpts / f"ckpt_{step}.pt",
        )

    plain_run(models.buffers, [6], save)
    assert "scale" not in models.buffers().state_dict()
    spec, store = spec_file(tmp_path, "buffers"), tmp_path / "store"
    listed = invoke("inspect", str(ckpts), "--spec", str(spec), "--verify")
    assert "3 of 3 checkpoints usable" in listed, listed
    ran = invoke(
        "kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", "float64"
    )
    assert ran.count("get no gradient") == 1, ran
    assert "3 trainable parameter tensors" in ran, ran
    assert "leaves their contribution out: 'aux', 'unused.weight', 'unused.bias'." in ran, ran
    result = conetool.kernels(ckpts, spec=spec, store=tmp_path / "again", dtype="float64")
    assert [w for w in result.warnings if "get no gradient" in w] == [
        next(w for w in result.warnings if "'aux', 'unused.weight'" in w)
    ]
    refs = {}
    for step in STEPS:
        raw = torch.load(ckpts / f"ckpt_{step}.pt", weights_only=True)["model_state_dict"]
        refs[step] = loaded(models.buffers, raw)
    check_kernels(store, refs)


def test_per_layer_kernels_of_parameters_that_do_not_reach_the_logits_are_zero(
    tmp_path: Path, models: ModuleType
) -> None:
    """kernels --per-layer on a model whose auxiliary head (called, its output discarded in eval
    mode) and spare parameter (never used) do not reach the logits: their groups' kernels are
    zero, every other group's is its explicit Jacobian product, and the groups sum to the kernel.
    The structured engine raised autograd's "element 0 of tensors does not require grad" on a
    group whose outputs no trainable parameter reaches."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()

    def save(model: nn.Module, optimizer: Any, step: int) -> None:
        save_file(state_of(model), str(ckpts / f"step_{step}.safetensors"))

    plain_run(models.aux_head, [6], save)
    spec, store = spec_file(tmp_path, "aux_head"), tmp_path / "store"
    ran = invoke(
        "kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", "float64",
        "--per-layer",
    )  # fmt: skip
    assert "groups root, fc, bn, head, aux: 3 computed" in ran, ran
    # said once for the run (not per checkpoint, nor per group with only its own parameters)
    assert ran.count("get no gradient") == 1, ran
    assert (
        "warning: 3 trainable parameter tensors (requires_grad=True) get no gradient from the "
        "model's outputs, so the eNTK leaves their contribution out: 'spare', 'aux.weight', "
        "'aux.bias'. "
    ) in ran, ran
    x = load_file(str(paths.probe(store)))["inputs"]
    for step in STEPS:
        state = load_file(str(ckpts / f"step_{step}.safetensors"))
        kernel = load_file(str(paths.kernel(store, step)))["kernel"]
        layers = load_file(str(paths.layer_kernel(store, step)))
        assert torch.equal(layers["root"], torch.zeros_like(kernel))
        assert torch.equal(layers["aux"], torch.zeros_like(kernel))
        for group in ("fc", "bn", "head"):
            model = loaded(models.aux_head, state)
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(f"{group}."))
            want = reference_kernel(model, x)
            error = float((layers[group] - want).norm() / want.norm())
            assert error < 1e-10, (step, group, error)
        total = sum(layers.values())
        assert float((total - kernel).norm() / kernel.norm()) < 1e-10


def epoch_run(
    tmp_path: Path, factory: Callable[[], nn.Module]
) -> tuple[Path, dict[int, nn.Module]]:
    """A loop's run of ``factory``'s model saved by epoch (``epochs/epoch_E.pt``, state dicts
    alone), and each stored step's model loaded from its file for the reference kernel."""
    ckpts = tmp_path / "epochs"
    ckpts.mkdir()
    plain_run(
        factory,
        [6],
        lambda model, _, step: torch.save(
            state_of(model), ckpts / f"epoch_{step // ITERATIONS_PER_EPOCH}.pt"
        ),
    )
    refs = {
        step: loaded(
            factory,
            torch.load(ckpts / f"epoch_{step // ITERATIONS_PER_EPOCH}.pt", weights_only=True),
        )
        for step in STEPS
    }
    return ckpts, refs


# --------------------------------------------------------------------------------------------------
# nn.GRU and nn.LSTM as they are, and the README's faster subclass on the same checkpoints


@pytest.mark.parametrize("factory", ["gru", "lstm"])
def test_a_recurrent_run_is_measured_as_it_is(
    tmp_path: Path, models: ModuleType, factory: str
) -> None:
    # Refused before (no working vmap rule in torch 2.14), naming a rewrite; now computed by
    # ordinary autograd one example at a time, in float64 and in the default float32.
    ckpts, refs = epoch_run(tmp_path, getattr(models, factory))
    spec = spec_file(tmp_path, factory)
    for dtype, tolerance in (("float64", 1e-10), ("float32", 1e-5)):
        store = tmp_path / f"store_{dtype}"
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            ran = invoke(
                "kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", dtype
            )  # fmt: skip
        # torch's note from the vmap attempt that fails (oneDNN's LSTM in float32) is not said
        assert not [w for w in seen if "performance drop" in str(w.message)]
        assert "performance drop" not in ran, ran
        check_kernels(store, refs, tolerance)


@pytest.mark.parametrize("factory", ["gru", "lstm"])
def test_a_recurrent_run_is_switched_to_its_linearized_model(
    tmp_path: Path, models: ModuleType, factory: str
) -> None:
    # nn.LSTM in float32 (the default) stopped switch with PyTorch's NotImplementedError (forward
    # AD with mkldnn_rnn_layer); the recurrent layers run outside oneDNN in the linearized model.
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    plain_run(
        getattr(models, factory),
        [6],
        lambda model, _, step: torch.save(state_of(model), ckpts / f"step_{step}.pt"),
    )
    spec, store = spec_file(tmp_path, factory), tmp_path / "store"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        swept = invoke(
            "switch", "--at", "0,3", "--until", "6", "--ckpts", str(ckpts), "--spec", str(spec),
            "--store", str(store),
        )  # fmt: skip
    assert not [w for w in seen if "performance drop" in str(w.message)]
    assert "performance drop" not in swept and "Traceback" not in swept, swept
    results = json.loads((store / "switch" / "results.json").read_text())
    points = {point["at"]: point for point in results["points"]}
    assert sorted(points) == [0, 3], results
    for point in points.values():
        assert 0.0 <= point["test_acc"] <= 1.0 and math.isfinite(point["test_loss"]), point


def test_a_gru_run_is_measured_with_the_readmes_subclass(
    tmp_path: Path, models: ModuleType
) -> None:
    # the reference is the plain nn.GRU model (jacrev one example at a time needs no vmap rule)
    ckpts, refs = epoch_run(tmp_path, models.gru)
    store = tmp_path / "store"
    spec = spec_file(tmp_path, "loop_gru")
    invoke("kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", "float64")
    check_kernels(store, refs)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
        ),
    ],
)
def test_a_gru_run_is_measured_on_the_device_it_names(
    tmp_path: Path, models: ModuleType, device: str
) -> None:
    # `conetool kernels --device cuda` on nn.GRU as it is: the layer runs outside cuDNN (whose
    # RNN refuses the backward pass of eval mode), every kernel against the float64 reference
    # computed here on the CPU. The "cpu" case checks this test's body where no GPU is.
    ckpts, refs = epoch_run(tmp_path, models.gru)
    spec = spec_file(tmp_path, "gru")
    flags = torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32
    for dtype, tolerance in (("float64", 1e-10), ("float32", 1e-5)):
        store = tmp_path / f"store_{dtype}"
        invoke(
            "kernels", str(ckpts), "--spec", str(spec), "--store", str(store), "--dtype", dtype,
            "--device", device,
        )  # fmt: skip
        check_kernels(store, refs, tolerance)
        records = json.loads(paths.manifest(store).read_text())["steps"].values()
        assert sorted(r["step"] for r in records) == list(STEPS)
        assert {r["device"] for r in records} == {device}, records  # computed there
    assert (torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32) == flags


# --------------------------------------------------------------------------------------------------
# a whole run in one file


@pytest.mark.parametrize("keys", ["int", "str"])
def test_a_whole_run_in_one_file_is_refused_with_how_to_split_it(
    tmp_path: Path, models: ModuleType, keys: str
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    states: dict[Any, dict[str, torch.Tensor]] = {}
    plain_run(
        models.buffers,
        [6],
        lambda model, _, step: states.__setitem__(
            step if keys == "int" else str(step), state_of(model)
        ),
    )
    torch.save(states, folder / "run.pt")
    spec = spec_file(tmp_path, "buffers")
    text = refused("kernels", str(folder), "--spec", str(spec), "--store", str(tmp_path / "s"))
    assert "3 state dicts, one under each key" in text, text
    assert "a whole run in one file" in text, text
    split = folder / "run_steps"
    assert f"then pass '{split}'" in text, text
    listed = refused("inspect", str(folder / "run.pt"), "--spec", str(spec))
    assert "a whole run in one file" in listed, listed

    # the Python the message gives splits it; conetool then reads every step
    code = text.split("in Python: ")[1].split(", then pass")[0]
    exec(textwrap.dedent(code), {"torch": torch, "os": __import__("os")})
    store = tmp_path / "store"
    invoke("kernels", str(split), "--spec", str(spec), "--store", str(store), "--dtype", "float64")
    by_step = {int(key): state for key, state in states.items()}
    check_kernels(store, {step: loaded(models.buffers, by_step[step]) for step in STEPS})


def test_the_logits_forward_keeps_the_model_as_it_was(models: ModuleType) -> None:
    """The class swap: same names, same class name, isinstance, deepcopy, training flag and
    global random state as before; a model returning a tensor is left alone."""
    import copy

    from conetool.models.outputs import logits_returned

    torch.manual_seed(0)
    model = models.hf_dict().train()
    before = torch.get_rng_state()
    made = logits_returned(model, (6,))
    assert torch.equal(torch.get_rng_state(), before) and made.training
    assert made is model and isinstance(model, models.HFStyle)
    assert type(model).__name__ == "HFStyle" and type(model) is not models.HFStyle
    assert list(model.state_dict()) == ["fc.weight", "fc.bias", "head.weight", "head.bias"]
    x = torch.randn(4, 6)
    assert torch.equal(model(x), models.HFStyle.forward(model, x)["logits"])
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.head.bias.add_(1.0)
    assert torch.allclose(twin(x), model(x) + 1.0)  # its own weights, not the original's
    assert type(logits_returned(models.hf_dict(), (6,))) is type(model)  # one subclass
    plain = models.buffers()
    assert type(logits_returned(plain, (6,))) is models.Buffers


def test_the_readmes_loop_gru_is_the_one_tested_here() -> None:
    """The README's LoopGRU is the one in MODELS, line for line (bar the comments), so the kernels
    checked here against the float64 reference are of the code the README gives."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("class LoopGRU(nn.GRU):", 1)[1].split("```", 1)[0]

    def code(text: str) -> list[str]:
        return [s for s in (re.sub(r"#.*", "", line).rstrip() for line in text.splitlines()) if s]

    tested = MODELS.split("class LoopGRU(nn.GRU):", 1)[1].split("\n\n\n", 1)[0]
    assert len(code(tested)) == 8
    assert code(block) == code(tested)


def test_several_networks_in_one_file_are_not_called_a_run_and_the_python_given_runs(
    tmp_path: Path,
) -> None:
    """A GAN's {"generator", "discriminator"} was called 'a whole run in one file'; and the Python
    the message gives broke on a path holding a quote or a brace (its paths were pasted in
    quotes, not repr'd)."""
    from conetool.checkpoints._state_dicts import several_state_dicts

    sd = {"w": torch.arange(3.0)}
    gan = several_state_dicts({"generator": sd, "discriminator": sd}, tmp_path / "gan.pt")
    assert gan is not None and "several networks" in gan and "a whole run in one file" not in gan
    assert "torch.save(run[KEY], 'step_2000.pt')" in gan, gan

    odd = tmp_path / "it's {a} run"
    odd.mkdir()
    torch.save({0: sd, 12: sd}, odd / "run.pt")
    text = several_state_dicts(torch.load(odd / "run.pt", weights_only=True), odd / "run.pt")
    assert text is not None and "a whole run in one file" in text
    code = text.split("in Python: ")[1].split(", then pass")[0]
    exec(code, {"torch": torch, "os": __import__("os")})
    assert sorted(p.name for p in (odd / "run_steps").iterdir()) == ["step_0.pt", "step_12.pt"]
