"""A factory that returns its model in float64 (``model.double()``, as in NTK studies done in
double precision): ``conetool train`` and ``switch`` feed it their float32 batches cast to float64
(conetool.model_inputs) and save float64 checkpoints, whose kernels ``conetool kernels`` computes
in --dtype. Both commands crashed on the first batch with PyTorch's "mat1 and mat2 must have the
same dtype, but got Float and Double"."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_ntk import explicit_jacobian
from tiny_run import tiny_spec
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.model_inputs import model_batch
from conetool.pipeline.resolve import model_for
from conetool.spec import load_spec, save_spec, spec_from_dict
from conetool.store import Store

FACTORY = """
import torch


def make(num_classes, input_shape):
    return torch.nn.Sequential(
        torch.nn.Linear(input_shape[0], 6), torch.nn.Tanh(), torch.nn.Linear(6, num_classes)
    ).double()
"""


CPU = ["--device", "cpu", "--threads", "1"]


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, *CPU])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the factory, the spec ``float64.toml`` and the run trained by
    ``conetool train`` in ``ckpts`` (checkpoints at steps 0, 5 and 10)."""
    folder = tmp_path_factory.mktemp("float64")
    (folder / "float64_factory.py").write_text(FACTORY)
    spec = tiny_spec()  # tests/tiny_run.py's run, its model the float64 factory's
    spec["model"] = {"arch": "float64_factory:make", "num_classes": 3}
    spec["train"]["eval_every"] = 1
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        toml = folder / "float64.toml"
        save_spec(spec_from_dict(spec, source=str(toml)), toml)
        _invoke("train", str(folder / "float64.toml"), "--out", str(folder / "ckpts"))
        yield folder


def _metrics(ckpts: Path) -> dict[int, dict[str, float]]:
    with paths.metrics(ckpts).open() as handle:
        return {
            int(row["step"]): {k: float(v) for k, v in row.items()}
            for row in csv.DictReader(handle)
        }


def test_train_trains_a_float64_model_into_float64_checkpoints(run: Path) -> None:
    ckpts = run / "ckpts"
    assert paths.checkpoint_steps(ckpts) == [0, 5, 10]
    for step in (0, 5, 10):
        weights = load_file(str(paths.checkpoint(ckpts, step)))
        assert {t.dtype for t in weights.values()} == {torch.float64}, step
        if step:  # (momentum buffers from the first update on)
            state = load_file(str(paths.optimizer_state(ckpts, step)))
            assert {t.dtype for t in state.values()} == {torch.float64}, step
    first, last = (load_file(str(paths.checkpoint(ckpts, s))) for s in (0, 10))
    assert not torch.equal(first["0.weight"], last["0.weight"])  # it trained
    rows = _metrics(ckpts)
    assert sorted(rows) == list(range(11))
    assert all(torch.isfinite(torch.tensor(row["test_loss"])) for row in rows.values())


@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-12), ("float32", 1e-6)])
def test_kernels_of_a_float64_run_match_the_float64_jacobian(
    run: Path, tmp_path: Path, dtype: str, tolerance: float
) -> None:
    store = tmp_path / "store"
    _invoke("kernels", str(run / "ckpts"), "--store", str(store), "--dtype", dtype)
    opened = Store.open(store)
    assert opened.identity.dtype == dtype and opened.steps() == [0, 5, 10]
    x = load_file(str(paths.probe(store)))["inputs"]
    model = model_for(load_spec(run / "ckpts" / "conetool.toml"))
    assert next(model.parameters()).dtype == torch.float64
    for step in (0, 5, 10):
        model.load_state_dict(load_file(str(paths.checkpoint(run / "ckpts", step))))
        jac = explicit_jacobian(model.eval(), x.double())
        reference = torch.einsum("iap,jap->ij", jac, jac)
        kernel = opened.load_kernel(step)
        assert kernel.dtype == getattr(torch, dtype)
        error = float((kernel.double() - reference).norm() / reference.norm())
        assert error < tolerance, (step, error)


def test_kernels_says_in_a_note_that_float32_rounds_a_float64_models_weights(
    run: Path, tmp_path: Path
) -> None:
    """--dtype float32 (the default) rounded a float64 model's weights without a word, where a
    float16 model's upcast is said in a note: once, left out by --quiet, none under float64."""
    spec_file = run / "ckpts" / "conetool.toml"
    note = (
        f'note: {spec_file}: [model] arch = "float64_factory:make" builds a float64 model '
        "(parameter '0.weight'): its kernels are computed in float32 (--dtype float32) from its "
        "float64 weights rounded to float32; --dtype float64 keeps them."
    )
    args = ["kernels", str(run / "ckpts"), "--store"]
    text = " ".join(_invoke(*args, str(tmp_path / "a")).split())
    assert text.count(note) == 1, text
    quiet = _invoke(*args, str(tmp_path / "b"), "--quiet")
    assert "float64 model" not in quiet and "note:" not in quiet, quiet
    exact = _invoke(*args, str(tmp_path / "c"), "--dtype", "float64")
    assert "float64 model" not in exact and "rounded" not in exact, exact


@pytest.mark.parametrize("reference", ["checkpoint", "train"])
def test_switch_trains_a_float64_model_linearized(
    run: Path, tmp_path: Path, reference: str
) -> None:
    """The standard line: the checkpoint of T = 10 evaluated (--reference checkpoint), or the run
    continued in float64 from the checkpoint of step 5 to T = 8 (--reference train): the test
    loss the run itself logged at T, to float64 rounding."""
    store = tmp_path / "store"
    until = "10" if reference == "checkpoint" else "8"
    spec = str(run / "ckpts" / "conetool.toml")
    _invoke(
        "switch", "--at", "0,5", "--until", until, "--reference", reference,
        "--store", str(store), "--ckpts", str(run / "ckpts"), "--spec", spec,
    )  # fmt: skip
    results = json.loads((store / "switch" / "results.json").read_text())
    assert [point["at"] for point in results["points"]] == [0, 5]
    for point in results["points"]:
        assert 0.0 < point["test_loss"] < 10.0 and 0.0 < point["train_loss"] < 10.0
    logged = _metrics(run / "ckpts")[int(until)]
    assert results["reference"]["test_loss"] == pytest.approx(logged["test_loss"], rel=1e-12)
    assert results["reference"]["test_acc"] == logged["test_acc"]


def test_a_batch_is_cast_to_the_models_floating_dtype_only() -> None:
    double = torch.nn.Linear(4, 2).double()
    assert model_batch(double, torch.ones(3, 4), "cpu").dtype == torch.float64
    assert model_batch(torch.nn.Linear(4, 2), torch.ones(3, 4), "cpu").dtype == torch.float32
    tokens = torch.ones(3, 4, dtype=torch.int64)  # token ids are moved, never cast
    assert model_batch(torch.nn.Embedding(5, 2).double(), tokens, "cpu").dtype == torch.int64
    assert model_batch(torch.nn.ReLU(), torch.ones(3, 4), "cpu").dtype == torch.float32


class _Buffered(torch.nn.Module):
    """A model without parameters whose first buffer is ``buffer``."""

    def __init__(self, buffer: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", buffer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_model_without_parameters_takes_its_batch_in_its_first_buffers_dtype() -> None:
    double = _Buffered(torch.zeros(2, dtype=torch.float64))
    assert model_batch(double, torch.ones(3, 4), "cpu").dtype == torch.float64
    # an integer first buffer (a lookup table of ids) gives no floating dtype: nothing is cast
    ids = _Buffered(torch.zeros(2, dtype=torch.int64))
    assert model_batch(ids, torch.ones(3, 4), "cpu").dtype == torch.float32


def test_a_float64_model_returning_its_logits_in_a_dict_is_made_to_return_the_tensor() -> None:
    from conetool.models.outputs import logits_returned

    class Dicted(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {"logits": super().forward(x)}

    model = logits_returned(Dicted(4, 2).double(), (4,))  # its check batch in float64 too
    out = model(torch.ones(3, 4, dtype=torch.float64))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_the_rounded_note_is_of_trainable_parameters_only() -> None:
    from conetool.low_precision import rounded_note

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2).double())
    model[1].requires_grad_(False)  # a frozen float64 head: no kernel is computed for it
    assert rounded_note(model, "m:make", "m.toml", torch.float32) is None
    model[1].requires_grad_(True)
    assert "parameter '1.weight'" in str(rounded_note(model, "m:make", "m.toml", torch.float32))
