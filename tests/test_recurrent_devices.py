"""nn.PReLU and the recurrent layers (nn.GRU, nn.LSTM, nn.RNN) on a CUDA device: every engine's
kernel, cuDNN around the layers, and the linearized model.

Their exact kernels (ordinary autograd where vmap has no rule; the recurrent layers outside cuDNN,
whose RNN refuses a backward pass in eval mode: ntk_checks.recurrent_outside_cudnn) and their
linearized model (outside oneDNN and cuDNN; two reverse passes where an operation has no
forward-mode derivative: on CUDA PyTorch's own GRU and LSTM cells are fused kernels,
``_thnn_fused_gru_cell`` and ``_thnn_fused_lstm_cell``) are checked on a CPU by test_ntk_recurrent
and test_linearize_recurrent. Each test here runs on "cpu" and on "cuda", the latter skipped where
no CUDA device is present (benchmarks/gpu_session.sh selects it with ``-k "cuda or gpu"``: no test
name here says cuda, only the device's id), so that the bodies the GPU session runs pass here:

- every variant (test_ntk_recurrent.MODELS, packed sequences of several lengths), every engine and
  kind, float32 and float64, against the float64 explicit-Jacobian kernel computed on the CPU
  (float32 within 1e-5 relative Frobenius, float64 within 1e-10);
- cuDNN off inside the GRU only: the convolutions before and after it see it on (on CUDA, cuDNN
  accepts their inputs), torch.backends.cudnn's flags are as they were after the call, and a
  forward pass after it runs the GRU with cuDNN again; for the model and its linearized model;
- the linearized model moved to the device: ``J t = f_lin − f(θ_t)`` and the gradient against the
  CPU's (1e-10), ``J t`` against central finite differences computed on the device (1e-8), on the
  path it takes and by the two reverse passes, and in float32 within 1e-5 of float64.

Sizes: at most 6 examples of 5 steps of 3 features, hidden size 4 (the GPU session's tests have
240 s in all).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from test_linearize_model_parts import _finite_differences, _moved
from test_ntk import KINDS, reference, rel
from test_ntk_recurrent import FEATURES, HIDDEN, MODELS, STEPS, _built, _packed
from torch import Tensor, nn

from conetool.linearize import linearize
from conetool.ntk import empirical_ntk
from conetool.ntk_precision import no_tf32

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
METHODS = ("structured", "jacobian", "auto")
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
VARIANTS = [*MODELS, "packed_gru", "packed_lstm"]


def _variant(name: str) -> tuple[nn.Module, Tensor]:
    """A float64 model of test_ntk_recurrent and its inputs: ``(n, STEPS * FEATURES)``."""
    if name.startswith("packed_"):
        return _packed(name.removeprefix("packed_"))
    return _built(name)


@functools.cache
def _case(name: str) -> tuple[nn.Module, Tensor, dict[str, Tensor]]:
    """The float64 model, its inputs and the reference kernels of every kind, on the CPU."""
    model, x = _variant(name)
    return model, x, {kind: reference(model, x, kind) for kind in KINDS}


def _cudnn_flags() -> tuple[bool, bool, bool, bool]:
    cudnn = torch.backends.cudnn
    return cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
def test_every_variant_and_engine_on_the_device_against_the_float64_reference(
    device: str, name: str, method: str, dtype: torch.dtype
) -> None:
    model64, x64, want = _case(name)
    model, x = copy.deepcopy(model64).to(dtype), x64.to(dtype)
    model.train()  # evaluated in eval mode: the dropout between two layers is off
    flags = _cudnn_flags()
    # the device of each forward pass's inputs: the kernel comes back on the CPU either way
    ran_on: set[str] = set()
    model.register_forward_pre_hook(lambda _, args: ran_on.add(args[0].device.type))
    for kind in KINDS:
        ran_on.clear()
        kernel = empirical_ntk(model, x, kind=kind, device=device, method=method)
        assert ran_on == {device}, (kind, ran_on)  # computed there
        assert kernel.device.type == "cpu" and kernel.dtype == dtype
        assert kernel.shape == want[kind].shape
        err = rel(kernel, want[kind])
        assert err < TOLERANCE[dtype], (kind, err)
    assert all(module.training for module in model.modules())  # its mode restored
    assert all(p.device.type == "cpu" for p in model.parameters())  # the model was not moved
    assert _cudnn_flags() == flags


def _cudnn_seen(x: Tensor) -> tuple[bool, bool]:
    """(cuDNN on, cuDNN accepts ``x``) now."""
    return torch.backends.cudnn.enabled, bool(torch.backends.cudnn.is_acceptable(x))


class SeenGRU(nn.GRU):
    """An nn.GRU that records :func:`_cudnn_seen` each time its forward runs (inside the forward:
    conetool's forward pre-hooks, registered after any of the test's, run before it)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        self.seen.append(_cudnn_seen(x))
        return super().forward(x, h)


class Beside(nn.Module):
    """A convolution before an nn.GRU and one after it: ``(n, STEPS * FEATURES) -> (n, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.before = nn.Conv1d(FEATURES, 4, 1)
        self.rnn = SeenGRU(4, HIDDEN, batch_first=True)
        self.after = nn.Conv1d(HIDDEN, 2, 2)
        self.head = nn.Linear(2 * (STEPS - 1), 3)

    def forward(self, x: Tensor) -> Tensor:
        seq = self.before(x.view(-1, STEPS, FEATURES).transpose(1, 2))  # (n, 4, STEPS)
        out = self.rnn(seq.transpose(1, 2))[0]  # (n, STEPS, HIDDEN)
        return self.head(torch.tanh(self.after(out.transpose(1, 2))).flatten(1))


def _watched(model: nn.Module) -> dict[str, list[tuple[bool, bool]]]:
    """:func:`_cudnn_seen` each time the modules before, rnn and after start their forward: the
    convolutions' recorded by forward pre-hooks, the GRU's by itself."""
    rnn = model.get_submodule("rnn")
    assert isinstance(rnn, SeenGRU)
    rnn.seen.clear()  # the calls before
    seen = {"rnn": rnn.seen}
    for name in ("before", "after"):
        calls: list[tuple[bool, bool]] = []
        seen[name] = calls

        def hook(
            module: nn.Module, args: tuple[Tensor, ...], calls: list[tuple[bool, bool]] = calls
        ) -> None:
            calls.append(_cudnn_seen(args[0]))

        model.get_submodule(name).register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize("wrapped", ["model", "linearized"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device", DEVICES)
def test_only_the_gru_leaves_cudnn_on_the_device_and_the_flags_are_restored(
    device: str, method: str, wrapped: str
) -> None:
    # cuDNN's RNN refuses the backward pass of eval mode: the GRU runs PyTorch's own kernels,
    # the convolutions beside it keep cuDNN. The linearized model's layer has two blocks of hooks
    # around it (its own forward pass's and the engine's), which restore in the opposite order.
    torch.manual_seed(0)
    net = Beside().double()
    x = torch.randn(5, STEPS * FEATURES, dtype=torch.float64)
    want = reference(net, x, "trace")
    model: nn.Module = linearize(net) if wrapped == "linearized" else net
    seen = _watched(model)
    flags = _cudnn_flags()
    kernel = empirical_ntk(model, x, device=device, method=method)
    assert rel(kernel, want) < 1e-10
    on_cuda = device == "cuda"
    assert seen["rnn"] and set(seen["rnn"]) == {(False, False)}
    assert seen["before"] and set(seen["before"]) == {(True, on_cuda)}
    assert seen["after"] and set(seen["after"]) == {(True, on_cuda)}, seen["after"]
    assert _cudnn_flags() == flags
    rnn = model.get_submodule("rnn")
    assert not rnn._forward_pre_hooks and not rnn._forward_hooks  # let go
    # a forward pass afterwards: the model's GRU runs with cuDNN again (the linearized model's
    # own forward pass keeps it outside)
    for calls in seen.values():
        calls.clear()
    with torch.no_grad():
        model.to(device)(x.to(device))
    # (once, or twice where forward mode refuses the GRU: on CUDA its fused cells may have no
    # forward-mode derivative, and the two reverse passes run the network again)
    outside = wrapped == "linearized"
    assert seen["rnn"] and set(seen["rnn"]) == {(not outside, on_cuda and not outside)}
    assert seen["before"] and set(seen["before"]) == {(True, on_cuda)}
    assert seen["after"] and set(seen["after"]) == {(True, on_cuda)}
    assert _cudnn_flags() == flags


@pytest.mark.parametrize("path", ["taken", "reverse"])
@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("device", DEVICES)
def test_the_linearized_model_on_the_device_matches_the_cpus_and_finite_differences(
    device: str, name: str, path: str
) -> None:
    # On CUDA outside cuDNN, GRU and LSTM run PyTorch's fused cells; "taken": whichever way
    # forward mode takes (the dual numbers, or the two reverse passes where an operation has no
    # forward-mode derivative), "reverse": the two reverse passes from the first call.
    net, x = _variant(name)
    lin, theta = _moved(net)  # θ moved away from θ_t, on the CPU
    want = lin(x)
    with torch.no_grad():
        f0 = copy.deepcopy(net).eval()(x)  # f(θ_t): f_lin − f0 is J t
    w = torch.randn(want.shape, generator=torch.Generator().manual_seed(2), dtype=want.dtype)
    (w * want).sum().backward()
    want_grad = torch.cat([p.grad.flatten() for p in lin.parameters()])  # type: ignore[union-attr]

    flags = _cudnn_flags(), torch.backends.mkldnn.enabled
    on_device = linearize(copy.deepcopy(net).to(device))
    on_device.load_state_dict({k: v.to(device) for k, v in lin.state_dict().items()})
    on_device._reverse = path == "reverse"
    out = on_device(x.to(device))
    taken = "reverse" if on_device._reverse else "dual"
    assert out.device.type == device and out.dtype == torch.float64
    jt = out.detach().cpu() - f0
    assert rel(jt, want.detach() - f0) < 1e-10, taken
    differences = _finite_differences(
        copy.deepcopy(net).to(device), {k: v.to(device) for k, v in theta.items()}, x.to(device)
    )
    assert rel(jt, differences.cpu() - f0) < 1e-8, taken
    (w.to(device) * out).sum().backward()
    grad = torch.cat([p.grad.flatten() for p in on_device.parameters()])  # type: ignore[union-attr]
    assert rel(grad.cpu(), want_grad) < 1e-10, taken
    assert (_cudnn_flags(), torch.backends.mkldnn.enabled) == flags

    # float32, TF32 off for the convolution of prelu_channels (cuDNN's default on CUDA)
    lin32 = linearize(copy.deepcopy(net).float().to(device))
    lin32.load_state_dict({k: v.float().to(device) for k, v in lin.state_dict().items()})
    lin32._reverse = path == "reverse"
    with no_tf32():
        out32 = lin32(x.float().to(device))
        out32.sum().backward()  # a linearized training step's backward pass
    assert out32.dtype == torch.float32
    assert rel(out32.detach().cpu(), want.detach()) < 1e-5, taken
    assert rel(out32.detach().cpu() - f0, want.detach() - f0) < 1e-5, taken
    assert all(p.grad is not None and p.grad.isfinite().all() for p in lin32.parameters())
    assert (_cudnn_flags(), torch.backends.mkldnn.enabled) == flags
