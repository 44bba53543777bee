"""A run of integer token inputs brought as the README says (a model factory with an
``nn.Embedding``, a data factory of int64 token ids with a padding id, the loop's own
``{"model": ..., "step": ..., "optimizer": ...}`` checkpoints): the ids reach the model as they
are, never cast to float, and the kernels are the float64 Jacobian products of the checkpoints'
weights in eval mode (dropout off)."""

from __future__ import annotations

import importlib
import textwrap
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.func import functional_call, jacrev
from torch.utils.data import Dataset, TensorDataset

import conetool
from conetool.data import load_data
from conetool.data_split import Split
from conetool.models import build_model, output_check
from conetool.probe import load_probe
from conetool.spec import DataSpec, ModelSpec, load_spec

MODULE = '''
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class TokNet(nn.Module):
    """Embedding (padding id 0), self-attention with dropout, LayerNorm over a residual,
    mean pooling over the non-padding tokens, a linear head."""

    def __init__(self, num_classes=2, vocab=6, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.attn = nn.MultiheadAttention(d, 2, dropout=0.5, batch_first=True)
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        pad = x == 0
        h = self.emb(x)
        a, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        h = self.ln(h + self.drop(a))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1.0))


class DictNet(TokNet):
    """The same network returning its logits Hugging Face style."""

    def forward(self, x):
        return {"logits": super().forward(x)}


def make_model(num_classes=2, vocab=6, d=4, returns="tensor"):
    return (DictNet if returns == "dict" else TokNet)(num_classes, vocab, d)


def tokens(n, seed):
    """Sequences of 5 ids in 1..5, the last ones padding (0); label: does 3 come before 5?"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 6, (n, 5), generator=g)
    x[torch.arange(n), torch.randint(3, 6, (n,), generator=g).clamp(max=4)] = 0
    first = lambda row, t: next((i for i, v in enumerate(row.tolist()) if v == t), 9)
    y = torch.tensor([int(first(r, 3) < first(r, 5)) for r in x])
    return x, y


class Items(Dataset):
    """A map-style dataset (not a TensorDataset): items read one by one."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def make_data(seed=0, kind="tensors"):
    (xa, ya), (xb, yb) = tokens(40, seed), tokens(12, seed + 1)
    wrap = Items if kind == "items" else TensorDataset
    return wrap(xa, ya), wrap(xb, yb)
'''

SPEC = """
[model]
arch = "conetool_tok_inputs:make_model"
num_classes = 2
[data]
dataset = "conetool_tok_inputs:make_data"
kind = "{kind}"
[probe]
size = 6
[train]
steps = 4
batch_size = 8
optimizer = "adam"
lr = 0.01
save_every = 2
eval_every = 2
"""


@pytest.fixture
def tok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    (tmp_path / "conetool_tok_inputs.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "conetool_tok_inputs", raising=False)
    return importlib.import_module("conetool_tok_inputs")


def _spec(tmp_path: Path, kind: str = "tensors") -> Path:
    path = tmp_path / f"spec_{kind}.toml"
    path.write_text(SPEC.format(kind=kind))
    return path


def _own_run(tok: ModuleType, folder: Path) -> None:
    """The researcher's loop: AdamW, dropout on in training, its own checkpoint format."""
    torch.manual_seed(0)
    model = tok.make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    x, y = tok.tokens(40, 0)
    folder.mkdir()
    for step in range(3):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(
            {"model": sd, "step": step, "optimizer": opt.state_dict()}, folder / f"e0_s{step}.pt"
        )
        loss = torch.nn.functional.cross_entropy(model.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _float64_kernel(tok: ModuleType, file: Path, x: torch.Tensor) -> torch.Tensor:
    """H[i, j] = sum_k <df_k(x_i)/dθ, df_k(x_j)/dθ> in float64, eval mode, by jacrev over the
    parameters only (the integer ids are not differentiated)."""
    model = tok.make_model()
    model.load_state_dict(torch.load(file, weights_only=True)["model"])
    model = model.double().eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    rows = []
    for xi in x:
        with warnings.catch_warnings():  # torch: no batching rule for CPU attention's backward
            warnings.simplefilter("ignore", UserWarning)
            jac = jacrev(f)(params, xi)
        rows.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], 1))
    jacobian = torch.stack(rows)  # (n, c, P)
    return torch.einsum("ncp,mcp->nm", jacobian, jacobian)


@pytest.mark.parametrize("kind", ["tensors", "items"])
def test_token_ids_are_held_as_integers(tok: ModuleType, kind: str) -> None:
    bundle = load_data(DataSpec(dataset="conetool_tok_inputs:make_data", options={"kind": kind}))
    x, _ = bundle.train.batch(torch.arange(4))
    assert x.dtype == torch.int64
    assert torch.equal(x, tok.tokens(40, 0)[0][:4])
    assert bundle.examples().dtype == torch.int64


def test_other_inputs_are_still_float32() -> None:
    pixels = torch.randint(0, 255, (3, 2, 2), dtype=torch.uint8)
    assert Split.from_tensors(pixels, torch.zeros(3, dtype=torch.int64)).inputs.dtype == (
        torch.float32
    )
    doubles = torch.randn(3, 2, dtype=torch.float64)
    split = Split.from_dataset(TensorDataset(doubles, torch.zeros(3, dtype=torch.int64)))
    assert split.inputs is not None and split.inputs.dtype == torch.float32

    class Lists(Dataset[tuple[list[float], int]]):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> tuple[list[float], int]:
            return [0.5, 1.5], 0

    assert Split.from_dataset(Lists()).batch(torch.arange(2))[0].dtype == torch.float32


def test_kernels_of_an_own_token_run_match_a_float64_jacobian(
    tok: ModuleType, tmp_path: Path
) -> None:
    run, store = tmp_path / "ckpt", tmp_path / "store"
    _own_run(tok, run)
    result = conetool.kernels(run, spec=_spec(tmp_path, "items"), store=store, threads=1)
    assert sorted(result.computed) == [0, 1, 2]
    opened = conetool.Store.open(store)
    probe = load_probe(store / "probe.safetensors")
    assert probe.inputs.dtype == torch.int64 and bool((probe.inputs == 0).any())
    for step in (0, 2):
        want = _float64_kernel(tok, run / f"e0_s{step}.pt", probe.inputs)
        got = opened.load_kernel(step).double()
        assert float((got - want).norm() / want.norm()) < 1e-5


def test_train_and_switch_take_token_ids(tok: ModuleType, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    run, store = tmp_path / "run", tmp_path / "store"
    conetool.train(spec, out=run, threads=1)
    conetool.kernels(run, store=store, threads=1)
    swept = conetool.switch(at=[2], store=store, threads=1)
    assert [point.at for point in swept.points] == [2]


def test_a_token_model_returning_a_dict_is_read_as_its_logits(tok: ModuleType) -> None:
    x = tok.tokens(3, 0)[0]
    spec = ModelSpec(
        arch="conetool_tok_inputs:make_model", num_classes=2, options={"returns": "dict"}
    )
    model = build_model(spec, (5,), examples=x)
    output_check(model, (5,), 2, examples=x)
    assert isinstance(model.eval()(x), torch.Tensor)


def test_a_failing_token_model_is_told_its_inputs_are_integer_ids(tok: ModuleType) -> None:
    model = torch.nn.Linear(5, 2)  # a float model given token ids
    with pytest.raises(
        conetool.ModelError, match=r"torch\.int64 inputs \(integer ids.*x\.float\(\)"
    ):
        output_check(model, (5,), 2, examples=tok.tokens(3, 0)[0])


def test_an_adamw_run_is_swept_with_optimizer_adamw_and_an_adam_spec_is_told_to_write_it(
    tok: ModuleType, tmp_path: Path
) -> None:
    """[train] had no AdamW (optimizer = "adamw" was refused), so a run trained with it was swept
    with Adam's coupled decay, and the warning said no spec key gives it. Now "adamw" is a
    choice: its sweep takes the run's AdamW state with no hyperparameter differing, and a spec
    that says "adam" is told to write "adamw"."""
    run, store = tmp_path / "ckpt", tmp_path / "store"
    _own_run(tok, run)  # AdamW, weight decay 0.01 (its default)
    spec = _spec(tmp_path).read_text().replace("lr = 0.01", "lr = 0.05\nweight_decay = 0.01")
    (tmp_path / "own.toml").write_text(spec)
    conetool.kernels(run, spec=tmp_path / "own.toml", store=store, threads=1)
    swept = conetool.switch(at=[1], until=2, store=store, threads=1)
    said = [w for w in swept.warnings if "decoupled_weight_decay True (the spec's False)" in w]
    assert len(said) == 1 and 'write optimizer = "adamw" in [train]' in said[0], said
    assert "give the spec your run's recipe (for decoupled_weight_decay" in said[0]
    adamw = spec.replace('optimizer = "adam"', 'optimizer = "adamw"')
    (tmp_path / "adamw.toml").write_text(adamw)
    assert load_spec(tmp_path / "adamw.toml").train.optimizer == "adamw"
    swept = conetool.switch(
        at=[1], until=2, store=tmp_path / "s2", ckpts=run, spec=tmp_path / "adamw.toml", threads=1
    )
    assert swept.points[0].momentum == "saved"
    assert not [w for w in swept.warnings if "decoupled_weight_decay" in w], swept.warnings


def test_a_slow_token_run_is_told_its_attention_work(
    tok: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow-step warning of an attention model said '2.0 ms for 0 MFLOP': the estimate saw
    its head only (one Linear module called as a module), not the attention's projections and
    products. Every step made implausibly slow, the warning comes, with the work counted."""
    from conetool import threads

    monkeypatch.setattr(threads, "SLOW_FLOPS_PER_SECOND", 1e30)
    monkeypatch.setattr(threads, "SLOW_OVERHEAD_SECONDS", 1e-9)
    spec = tmp_path / "spec.toml"
    spec.write_text(_spec(tmp_path).read_text().replace("steps = 4", "steps = 24"))
    model, x = tok.make_model().eval(), tok.tokens(1, 0)[0]
    made = conetool.train(spec, out=tmp_path / "run", threads=1)
    assert len(made.warnings) == 1 and made.warnings[0].startswith("training steps take")
    assert "0 MFLOP" not in made.warnings[0], made.warnings[0]
    # batch 8, 3 passes; one example: in_proj 5x4x12, out_proj 5x4x4, 2 products of 5x5x4, head
    work = 3 * 8 * 2 * (5 * 4 * 12 + 5 * 4 * 4 + 2 * 5 * 5 * 4 + 4 * 2)
    assert threads.forward_flops(model, x) == work / 24
    assert f"for {threads.flops_text(work)})" in made.warnings[0], made.warnings[0]
