"""The linearized model (``conetool switch``) of nn.PReLU, nn.GRU, nn.LSTM and nn.RNN, and of
PyTorch operations without a forward-mode derivative.

Before, nn.LSTM in float32 on a CPU raised PyTorch's NotImplementedError from ``lin(x)``:
oneDNN's LSTM (``mkldnn_rnn_layer``) has no forward-mode derivative in torch 2.14, and neither
torch.func.jvp nor the fallback by two reverse passes was tried for it; so did torch.cdist and
F.grid_sample in any dtype. Now the recurrent layers run outside oneDNN and cuDNN during the
linearized forward pass (PyTorch's own RNN kernels: dual numbers, as for every other model), and
an operation without a forward-mode derivative gets ``J t`` from two reverse passes. References:
the explicit Jacobian by ordinary autograd and central finite differences, in float64; float32
against them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_linearize_model_parts import _explicit, _finite_differences, _moved
from test_ntk import rel
from test_ntk_recurrent import CELLS, FEATURES, MODELS, STEPS, Packed, _built
from torch import Tensor, nn

from conetool.errors import ModelError
from conetool.linearize import linearize
from conetool.ntk import empirical_ntk


def _checked(net: nn.Module, x: Tensor, reverse: bool = False) -> None:
    """``lin(x)`` and its gradient against the explicit Jacobian (1e-10) and finite differences
    (1e-8), ``net`` and ``x`` in float64; the flags of cuDNN and oneDNN as they were.
    ``reverse``: ``J t`` by the two reverse passes, the path taken where forward mode refuses
    the model (on CUDA, an RNN kernel without a forward-mode derivative would take it)."""
    flags = torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled
    lin, theta = _moved(net)
    lin._reverse = reverse
    out = lin(x)
    expected, jac = _explicit(net, theta, x)
    assert rel(out.detach(), expected) < 1e-10
    assert rel(out.detach(), _finite_differences(net, theta, x)) < 1e-8
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    (w * out).sum().backward()
    grad = torch.cat([p.grad.flatten() for p in lin.parameters()])  # type: ignore[union-attr]
    assert rel(grad, jac.T @ w.flatten()) < 1e-10
    assert (torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled) == flags


@pytest.mark.parametrize("path", ["dual", "reverse"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_module_is_linearized_exactly(name: str, path: str) -> None:
    net, x = _built(name)
    _checked(net, x, reverse=path == "reverse")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_float32_agrees_with_the_float64_linearization(name: str, mode: str) -> None:
    # nn.LSTM (every shape of it) raised NotImplementedError here: forward AD with
    # mkldnn_rnn_layer. The network is evaluated in eval mode whatever the model's mode (the
    # dropout between two layers is off).
    net, x = _built(name)
    lin, theta = _moved(net)
    expected, _ = _explicit(net, theta, x)
    getattr(net, mode)()
    lin32 = linearize(net.float())
    lin32.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    out = lin32(x.float())
    assert out.dtype == torch.float32
    assert rel(out.detach(), expected) < 1e-5
    out.sum().backward()  # a linearized training step's backward pass
    assert all(p.grad is not None for p in lin32.parameters())
    assert torch.backends.mkldnn.enabled and torch.backends.cudnn.enabled  # as they were


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_packed_sequences_of_several_lengths(cell: str) -> None:
    torch.manual_seed(0)
    net = Packed(CELLS[cell]).double()
    x = torch.randn(6, STEPS * FEATURES, dtype=torch.float64)
    for i, length in enumerate([5, 3, 1, 4, 2, 5]):
        x[i, length * FEATURES :] = 0  # the padding
    _checked(net, x)
    lin, theta = _moved(net)
    expected, _ = _explicit(net, theta, x)
    lin32 = linearize(net.float())
    lin32.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    assert rel(lin32(x.float()).detach(), expected) < 1e-5


class Distances(nn.Module):
    """torch.cdist to learned centres (``_cdist_forward``: no forward-mode derivative)."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.randn(3, 4))
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cdist(x, self.centres))


class Sampled(nn.Module):
    """F.grid_sample at a grid a convolution predicts (``grid_sampler_2d``: no forward-mode
    derivative), as a spatial transformer does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        grid = torch.tanh(self.conv(x)).permute(0, 2, 3, 1)
        return self.head(F.grid_sample(x, grid, align_corners=False).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", ["cdist", "grid_sample"])
def test_an_operation_without_a_forward_mode_derivative_takes_two_reverse_passes(
    name: str, dtype: torch.dtype
) -> None:
    # PyTorch's NotImplementedError ('Trying to use forward AD with _cdist_forward that does not
    # support it') came out of lin(x) before.
    torch.manual_seed(0)
    net, x = (
        (Distances(), torch.randn(5, 4))
        if name == "cdist"
        else (Sampled(), torch.randn(5, 1, 4, 4))
    )
    net, x = net.double(), x.double()
    _checked(net, x)
    lin, theta = _moved(net)
    expected, _ = _explicit(net, theta, x)
    lin32 = linearize(net.to(dtype))
    lin32.load_state_dict({k: v.to(dtype) for k, v in lin.state_dict().items()})
    assert rel(lin32(x.to(dtype)).detach(), expected) < (1e-10 if dtype == torch.float64 else 1e-5)


def test_forward_mode_is_tried_on_the_first_call_only() -> None:
    # Each call tried dual numbers, then torch.func.jvp, before the two reverse passes: three
    # forward passes of the network where one is needed.
    torch.manual_seed(0)
    lin = linearize(Distances().double())
    passes: list[int] = []
    lin._network.register_forward_pre_hook(lambda *_: passes.append(1))
    x = torch.randn(5, 4, dtype=torch.float64)
    counts = []
    for _ in range(3):
        before = len(passes)
        lin(x).sum().backward()
        counts.append(len(passes) - before)
    assert counts == [2, 1, 1], counts  # dual numbers and the reverse passes, then the latter


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.bag(x))


def test_an_operation_reverse_mode_cannot_differentiate_twice_is_named() -> None:
    torch.manual_seed(0)
    lin = linearize(Bag())
    with pytest.raises(ModelError) as caught:
        lin(torch.randint(0, 10, (5, 3)))
    message = str(caught.value)
    assert "PyTorch's operation '_embedding_bag' (in module 'bag' (EmbeddingBag))" in message
    assert "no forward-mode derivative" in message and "_embedding_bag_backward" in message
    assert "Write that step of the model with other torch operations." in message
    assert "\n" not in message


class SeesFlags(nn.LSTM):
    """An nn.LSTM that records whether (cuDNN, oneDNN) were on each time its forward ran."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor, hx: object = None) -> tuple[Tensor, object]:  # type: ignore[override]
        self.seen.append((torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled))
        return super().forward(x, hx)  # type: ignore[arg-type]


class Watched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = SeesFlags(FEATURES, 4, batch_first=True)
        self.head = nn.Linear(4, 3)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        out = self.rnn(x.view(-1, STEPS, FEATURES))[0][:, -1]
        self.seen.append((torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled))
        return self.head(out)


def test_only_the_recurrent_layers_leave_onednn_and_cudnn() -> None:
    torch.manual_seed(0)
    lin = linearize(Watched())
    lin(torch.randn(4, STEPS * FEATURES)).sum().backward()
    network = lin._network
    assert network.rnn.seen == [(False, False)]
    assert network.seen == [(True, True)]  # the rest of the model keeps them
    assert not network.rnn._forward_hooks and not network.rnn._forward_pre_hooks  # let go


def test_the_kernels_of_a_linearized_model_leave_the_flags_as_they_were_after_its_layer() -> None:
    # The eNTK engines hook the recurrent layers too (cuDNN off); the hooks of both, on the same
    # layer, restore in the order opposite to the one they turned off in. The restoring hooks ran
    # in the order they were registered: the rest of the model ran with cuDNN off.
    torch.manual_seed(0)
    net = Watched().double()
    lin = linearize(net)
    network = lin._network
    x = torch.randn(4, STEPS * FEATURES, dtype=torch.float64)
    kernel = empirical_ntk(lin, x, device="cpu", method="jacobian")
    assert network.rnn.seen and set(network.rnn.seen) == {(False, False)}
    assert network.seen and set(network.seen) == {(True, True)}
    assert (torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled) == (True, True)
    assert rel(kernel, empirical_ntk(net, x, device="cpu")) < 1e-10  # at θ = θ_t: the model's


class FailsInside(SeesFlags):
    """A recurrent layer whose forward raises ``error`` once it has seen the flags."""

    error: BaseException | None = None

    def forward(self, x: Tensor, hx: object = None) -> tuple[Tensor, object]:  # type: ignore[override]
        out = super().forward(x, hx)
        if self.error is not None:
            raise self.error
        return out


@pytest.mark.parametrize("error", [RuntimeError("the model's own error"), KeyboardInterrupt()])
def test_an_error_inside_the_layer_leaves_the_flags_as_they_were(error: BaseException) -> None:
    # A guard (passes on the code before too): the restoring hooks are called by torch for an
    # Exception only (always_call), not for a KeyboardInterrupt, where the blocks' own exit
    # restores the flags; the linearized model's block alone, and inside the eNTK engines'.
    torch.manual_seed(0)
    net = Watched()
    net.rnn = FailsInside(FEATURES, 4, batch_first=True)
    lin = linearize(net)
    layer = lin._network.rnn
    layer.error = error
    x = torch.randn(4, STEPS * FEATURES)
    for call in (lambda: lin(x), lambda: empirical_ntk(lin, x, device="cpu", method="jacobian")):
        seen = len(layer.seen)
        with pytest.raises(BaseException) as caught:
            call()
        assert caught.type is type(error) or isinstance(caught.value.__cause__, type(error))
        assert len(layer.seen) > seen and layer.seen[-1] == (False, False)  # it ran outside them
        assert (torch.backends.cudnn.enabled, torch.backends.mkldnn.enabled) == (True, True)
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    layer.error = None
    lin(x)  # and runs again as before
    assert lin._network.seen[-1] == (True, True)
