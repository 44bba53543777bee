"""Guards on the eNTK engine's arithmetic and decisions, and on the switch's linearized training,
each against an independent reference: an exact hand computation, explicit float64 Jacobian
products, or the recipe's rules written out by hand.

Several tests use float32 inputs whose exact result is an odd integer above 2^24: no float32
number equals it, so a result is exact only if the float32 partial products are summed in
float64, as the engine promises (:mod:`conetool.ntk_terms`).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import re
import shutil

import pytest
import torch

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_ntk import build, reference, rel
from test_switch_command import metrics, spec_dict

from conetool import (
    blas_syrk,
    noise_floor,
    ntk_precision,
    ntk_schedule,
    ntk_terms,
    ntk_tuning,
    paths,
)
from conetool.data import load_data
from conetool.data_order import augment_generator, batch_indices
from conetool.errors import MemoryBudgetError
from conetool.linearize import LinearizedModel
from conetool.loop import TrainingLoop
from conetool.ntk import empirical_ntk
from conetool.ntk_terms import Dense, FactoredGrad
from conetool.optim import make_optimizer
from conetool.pipeline.resolve import model_for
from conetool.pipeline.run_switch import switch
from conetool.progress import NullProgress
from conetool.spec import spec_from_dict
from conetool.training import train

ODD = 2**24 + 1  # no float32 number is this


# --------------------------------------------------------------------------------------------------
# ntk_terms: float64 sums of float32 pieces


def test_a_wide_float32_product_sums_its_pieces_in_float64() -> None:
    # Reference: by hand, 2^12 · 2^12 + 1 · 1 = 2^24 + 1, the two products in different pieces.
    chunk = ntk_tuning.CPU.piece_columns
    row = torch.zeros(1, 3 * chunk)
    row[0, 0], row[0, chunk] = 2.0**12, 1.0
    got = ntk_terms.product(row, row)
    assert got.dtype == torch.float64 and got.item() == ODD


def test_the_columns_after_the_last_whole_piece_are_counted() -> None:
    # Reference: by hand, 2^12 · 2^12 from the first piece plus 1 · 1 from the one column after it.
    chunk = ntk_tuning.CPU.piece_columns
    row = torch.zeros(1, chunk + 1)
    row[0, 0], row[0, chunk] = 2.0**12, 1.0
    assert ntk_terms.product(row, row).item() == ODD
    # and against an explicit float64 product on random rows one column wider than a piece
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, chunk + 1, generator=gen), torch.rand(2, chunk + 1, generator=gen)
    assert rel(ntk_terms.product(a, b), a.double() @ b.double().T) < 1e-6  # a column: 2e-4


def test_on_a_gpu_the_pieces_are_512_columns_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    # cuBLAS may add up each entry of a product of few rows as one float32 chain along the whole
    # piece (on an H200, 4,096-column pieces left the reference engine's full kernel 1.01e-6 off),
    # so a GPU's pieces are 512 columns wide; the CPU keeps 4,096 (MKL's sums are blocked). The
    # branch, on tensors of the meta device (shapes only): every batched product's inner width.
    widths: list[int] = []
    bmm = torch.bmm

    def recorded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        widths.append(a.shape[2])
        return bmm(a, b)

    monkeypatch.setattr(torch, "bmm", recorded)
    for device, chunk in (("meta", 512), ("cpu", 4096)):
        widths.clear()
        assert ntk_tuning.tuning_for(torch.device(device)).piece_columns == chunk
        rows = torch.zeros(3, 5 * 4096 + 7, device=device)
        out = ntk_terms.product(rows, rows)
        assert out.shape == (3, 3) and out.dtype == torch.float64
        assert widths and set(widths) == {chunk}


@pytest.mark.skipif(not blas_syrk.available(), reason="no BLAS syrk")
def test_the_syrk_gram_sums_its_pieces_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reference: by hand, 2^24 + 1 on the diagonal, the two products _SYRK_CHUNK columns apart.
    monkeypatch.setattr(ntk_terms, "_SYRK_MIN_ROWS", 1)
    width = max(ntk_terms._SYRK_MIN_WIDTH, 2 * ntk_terms._SYRK_CHUNK)
    mat = torch.zeros(2, width)
    mat[0, 0], mat[0, ntk_terms._SYRK_CHUNK] = 2.0**12, 1.0
    mat[1, 0] = 1.0
    assert ntk_terms.use_syrk(mat)
    got = ntk_terms.gram([Dense(mat)])
    assert got.tolist() == [[float(ODD), 2.0**12], [2.0**12, 1.0]]


@pytest.mark.parametrize("full", [False, True])
def test_factored_products_with_positions_sum_over_positions_in_float64(full: bool) -> None:
    # Reference: by hand, Σ_{t,t'} a_t a_t' g_t g_t' = (2^12 + 1)^2 = 2^24 + 2^13 + 1 (odd).
    a = torch.tensor([[[2.0**12], [1.0]]])  # (b=1, T=2, d_a=1)
    g = torch.ones(1, 1, 2, 1)  # (b=1, k=1, T=2, d_g=1)
    term = FactoredGrad(a, g, full)
    want = (2**12 + 1) ** 2
    assert ntk_terms.contract([term], [term]).item() == want
    assert ntk_terms.gram([term]).item() == want


# --------------------------------------------------------------------------------------------------
# ntk_precision: the oneDNN check and the backend flags


def test_onednn_within_1e6_counts_as_exact_even_when_torch_is_far_better(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reference: the documented rule, by hand: exact iff error <= max(10 · torch's error, 1e-6).
    def errors(onednn_error: float, own_error: float) -> None:
        monkeypatch.setattr(
            ntk_precision,
            "_conv_stack_error",
            lambda onednn: onednn_error if onednn else own_error,
        )

    errors(5e-7, 1e-9)  # within 1e-6
    assert ntk_precision.onednn_exact.__wrapped__()
    errors(5e-6, 1e-6)  # within 10x torch's own
    assert ntk_precision.onednn_exact.__wrapped__()
    errors(2e-6, 1e-8)  # above both
    assert not ntk_precision.onednn_exact.__wrapped__()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
def test_a_onednn_convolution_inexact_only_in_its_backward_is_detected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reference: the stand-in below perturbs only the input gradient (by 1e-4, relative) while
    # oneDNN is on, as on the CPU where oneDNN's convolution backward was 7e-5 to 8.5e-4 off.
    conv2d = torch.nn.functional.conv2d

    class NoisyBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, out):  # type: ignore[no-untyped-def, override]
            return out.clone()

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
            if torch.backends.mkldnn.enabled and grad.dtype == torch.float32:
                return grad * (1 + 1e-4 * torch.randn_like(grad))
            return grad

    def inexact(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return NoisyBackward.apply(conv2d(x, *args, **kwargs))  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "conv2d", inexact)
    assert ntk_precision._conv_stack_error(onednn=True) > 1e-5
    assert not ntk_precision.onednn_exact.__wrapped__()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
def test_checking_onednn_leaves_a_disabled_onednn_disabled() -> None:
    # Reference: the flag as the user set it before the check.
    before = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
        ntk_precision.onednn_exact.__wrapped__()
        assert torch.backends.mkldnn.enabled is False
    finally:
        torch.backends.mkldnn.enabled = before  # type: ignore[assignment]


def test_no_tf32_turns_both_tf32_flags_off_inside_and_restores_them() -> None:
    # Reference: the flags as set before the block, both on.
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        with ntk_precision.no_tf32():
            assert torch.backends.cuda.matmul.allow_tf32 is False
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


# --------------------------------------------------------------------------------------------------
# ntk_schedule: the budget arithmetic


class _Source:
    """A row source that only states its sizes (the planner never asks it for rows)."""

    c = 3
    fixed = 12_347

    def resident(self, g: int) -> int:
        return 1_000 * g

    def transient(self, g: int) -> int:
        return 5_003 * g

    def activations(self, g: int) -> int:
        return 100 * g


def _fixed(n: int) -> int:
    """The planner's fixed bytes, by hand from plan()'s docstring: the float64 kernel and its
    float32 copy (with the block products: 2 · 8 bytes an entry), the source's, 32 MiB of
    workspace (none for partial products on the CPU)."""
    return 2 * n * n * 8 + _Source.fixed + 32 * 2**20


def _plan(budget: int, n: int = 10) -> ntk_schedule.Schedule:
    return ntk_schedule.plan(_Source(), "trace", n, 3, budget, "x", torch.device("cpu"))


def test_the_smallest_budget_named_is_the_smallest_that_holds_one_panel_example() -> None:
    # Reference: a search for the smallest budget whose 90% holds the fixed bytes plus one
    # example resident and one in a call, for one logit.
    source, n = _Source(), 10
    need = _fixed(n) + source.resident(1) + source.transient(1)
    smallest = need * 10 // 9 - 5
    while smallest * 9 // 10 < need:
        smallest += 1
    with pytest.raises(MemoryBudgetError) as info:
        _plan(smallest - 1, n)
    named = int(re.search(r"\(([\d,]+) bytes\)", str(info.value)).group(1).replace(",", ""))
    assert named == smallest
    assert _plan(smallest, n).panel >= 1


def test_every_plan_fits_its_estimate_in_90_percent_of_the_budget() -> None:
    # Reference: plan()'s documented estimate, by hand: resident examples · resident(g) + chunk ·
    # transient(g) + fixed <= 90% of the budget.
    source, n = _Source(), 10
    smallest = (_fixed(n) + source.resident(1) + source.transient(1)) * 10 // 9 + 2
    for budget in range(smallest, smallest + 80_000, 777):
        schedule = _plan(budget, n)
        g = schedule.groups[0].shape[0]
        peak = min(schedule.panel, n) * source.resident(g) + schedule.chunk * source.transient(g)
        assert peak + _fixed(n) <= budget * 9 // 10, (budget, schedule.panel, schedule.chunk)


# --------------------------------------------------------------------------------------------------
# noise_floor


def test_uncertainty_is_the_documented_bound() -> None:
    # Reference: 2·sqrt(2s)·ε + 2ε², by hand.
    noise = noise_floor.NoiseEstimate(1e-3, 0.0, 4, "trace", "auto", "float32")
    assert noise.uncertainty(0.0) == pytest.approx(2e-6, rel=1e-12, abs=0)
    assert noise.uncertainty(0.02) == pytest.approx(2 * 0.2 * 1e-3 + 2e-6, rel=1e-12, abs=0)


def test_relative_error_is_the_frobenius_distance_to_explicit_float64_jacobians() -> None:
    # Reference: ‖H - H64‖_F / ‖H64‖_F with H64 from explicit float64 Jacobian products.
    model, x = build("conv_bn", n=5)
    model, x = model.float(), x.float()
    noise = noise_floor.kernel_noise(model, x, method="structured", device="cpu")
    kernel = empirical_ntk(model, x, method="structured", device="cpu")
    exact = reference(copy.deepcopy(model).double(), x.double(), "trace")  # the same weights
    assert noise.relative_error > 0
    assert noise.relative_error == pytest.approx(rel(kernel, exact), rel=1e-5)


def test_the_reference_route_is_the_float64_jacobian_engine_under_the_same_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reference: the docstring's two routes, recorded as empirical_ntk is called.
    calls: list[dict[str, object]] = []

    def spy(model, inputs, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return empirical_ntk(model, inputs, **kwargs)

    monkeypatch.setattr(noise_floor, "empirical_ntk", spy)
    model, x = build("mlp", n=3)
    noise_floor.kernel_noise(
        model.float(), x.float(), method="structured", max_memory="64MiB", device="cpu"
    )
    routes = [(c["method"], c["dtype"], c["max_memory"]) for c in calls]
    assert routes == [
        ("structured", torch.float32, "64MiB"),
        ("jacobian", torch.float64, "64MiB"),
    ]


# --------------------------------------------------------------------------------------------------
# The switch: the linearized model trained from t to T


def test_linearized_training_takes_one_sgd_step_per_global_step_on_its_batch_and_rate() -> None:
    # Reference: SGD with momentum and coupled weight decay written out by hand, on the batch (and
    # augmentation) of each global step s in 1..8 and the schedule's learning rate at s, by hand.
    raw = spec_dict([8])
    raw["train"].update(schedule="step", milestones=[5, 7], gamma=0.5, warmup_steps=4)
    spec = spec_from_dict(raw, source="guard.toml")

    def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + 0.01 * torch.randn(x.shape, generator=generator)

    data = dataclasses.replace(load_data(spec.data), augment=jitter)
    torch.manual_seed(0)
    lin = LinearizedModel(model_for(spec))
    theta = {k: v.detach().clone() for k, v in lin.named_parameters()}
    optimizer = make_optimizer(lin.parameters(), spec.train)
    seen: list[tuple[float, torch.Tensor]] = []

    def record(module, args):  # type: ignore[no-untyped-def]
        if module.training:  # an update, not an evaluation
            seen.append((optimizer.param_groups[0]["lr"], args[0].clone()))

    lin.register_forward_pre_hook(record)
    TrainingLoop(spec, lin, optimizer, data, torch.device("cpu"), NullProgress()).run(1, 9)
    rates = [0.1, 0.15, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05]  # warmup (s+1)/4, then 0.5 at 5 and 7
    assert [lr for lr, _ in seen] == pytest.approx(rates, rel=1e-12)
    buffers: dict[str, torch.Tensor] = {}
    for step, lr in zip(range(1, 9), rates, strict=True):
        x, y = data.train.batch(batch_indices(len(data.train), 8, spec.train.seed, step))
        x = jitter(x, augment_generator(spec.train.seed, step))  # the augmentation of step s
        assert torch.equal(seen[step - 1][1], x), step
        params = {k: v.clone().requires_grad_() for k, v in theta.items()}
        loss = torch.nn.functional.cross_entropy(torch.func.functional_call(lin, params, (x,)), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, value), grad in zip(theta.items(), grads, strict=True):
            d = grad + spec.train.weight_decay * value
            buffers[name] = d if name not in buffers else spec.train.momentum * buffers[name] + d
            theta[name] = value - lr * buffers[name]
    for name, value in lin.named_parameters():
        torch.testing.assert_close(value.detach(), theta[name], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def run_without_last_checkpoint(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The deep run of test_switch_command (12 steps, checkpoints every 4), without step 12's
    checkpoint, and the run's own metrics."""
    whole = tmp_path_factory.mktemp("guard") / "ckpts"
    train(spec_from_dict(spec_dict([8]), source="deep.toml"), whole)
    run = whole.parent / "cut"
    shutil.copytree(whole, run)
    paths.checkpoint(run, 12).unlink()
    return run, metrics(whole)


def test_the_trained_reference_is_the_standard_model_at_T(run_without_last_checkpoint, tmp_path):  # type: ignore[no-untyped-def]
    # Reference: the standard run's own evaluation at T = 12 (resuming is bit-identical).
    run, standard = run_without_last_checkpoint
    result = switch([8], store=tmp_path / "s", ckpts=run, device="cpu", reference="train")
    assert result.reference["source"] == "trained from step 8"
    assert result.reference["step"] == 12
    assert result.reference["test_loss"] == pytest.approx(float(standard[12]["test_loss"]), 1e-6)
    assert result.reference["test_acc"] == pytest.approx(float(standard[12]["test_acc"]))


def test_a_sweep_lists_only_the_points_of_its_own_T(run_without_last_checkpoint, tmp_path):  # type: ignore[no-untyped-def]
    # Reference: the points this store holds for each T, by hand: at 8 for T = 12, at 0 for T = 6.
    run, _ = run_without_last_checkpoint
    store = tmp_path / "s"
    switch([8], store=store, ckpts=run, device="cpu")
    result = switch([0], until=6, store=store, ckpts=run, device="cpu")
    assert [p.at for p in result.points] == [0]
    with open(paths.switch_results_csv(store)) as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["at"]), int(r["until"])) for r in rows] == [(0, 6)]


def test_a_run_with_a_frozen_parameter_switches_with_its_saved_momentum(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    # Reference: the standard run's metrics; with a frozen bias the model is linear in θ (the
    # weight), so its linearized continuation from step 4 is standard training step for step.
    (tmp_path / "guard_frozen_net.py").write_text(
        "import torch\n"
        "def make(num_classes, input_shape=None):\n"
        "    net = torch.nn.Linear(4, num_classes)\n"
        "    net.bias.requires_grad_(False)\n"
        "    return net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = spec_dict([])
    raw["model"] = {"arch": "guard_frozen_net:make", "num_classes": 3}
    spec = spec_from_dict(raw, source="frozen.toml")
    train(spec, tmp_path / "ckpts")
    result = switch([4], store=tmp_path / "s", ckpts=tmp_path / "ckpts", spec=spec, device="cpu")
    (point,) = result.points
    assert point.momentum == "saved"
    standard = metrics(tmp_path / "ckpts")
    assert point.test_loss == pytest.approx(float(standard[12]["test_loss"]), rel=1e-5)
