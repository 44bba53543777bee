"""nn.PReLU and the recurrent layers (nn.GRU, nn.LSTM, nn.RNN), which have no working vmap rule in
torch 2.14.1: every engine computes their kernel exactly, against the float64 explicit Jacobian,
with no rewrite of the model.

Before, every engine (jacobian, structured, auto; float32 and float64) refused them: nn.PReLU
fails in the backward pass under vmap (a size mismatch), the recurrent layers in their forward
(they write the hidden state in place into a tensor made for the whole batch: 'doesn't match the
broadcast shape'), nn.LSTM in float32 on a CPU in the backward pass ('workspace'). Now the vmap
path falls back to ordinary autograd, one example at a time
(ntk_failures.held_without_vmap_rule), and the recurrent layers run outside cuDNN, whose RNN
refuses a backward pass in eval mode (ntk_checks.recurrent_outside_cudnn), packed sequences
(nn.utils.rnn.pack_padded_sequence inside forward) among them."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from test_ntk import (
    KINDS,
    full_kernels_in_blocks_and_with_a_memo_match,
    kernel_and_cross_kernel_match,
    reference,
    rel,
)
from torch import Tensor, nn

from conetool.errors import ModelError
from conetool.ntk import empirical_ntk

METHODS = ("structured", "jacobian", "auto")
STEPS, FEATURES, HIDDEN = 5, 3, 4


class Recurrent(nn.Module):
    """``STEPS`` time steps of ``FEATURES`` through a recurrent layer; the last step's output to a
    head. ``initial``: a learned initial state (a parameter, expanded over the batch; a
    cell state of zeros beside it for nn.LSTM)."""

    def __init__(
        self,
        cell: type[nn.RNNBase],
        batch_first: bool = True,
        bidirectional: bool = False,
        num_layers: int = 1,
        initial: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(
            FEATURES,
            HIDDEN,
            batch_first=batch_first,
            bidirectional=bidirectional,
            num_layers=num_layers,
            dropout=dropout,
        )
        directions = 2 if bidirectional else 1
        self.h0 = (
            nn.Parameter(0.3 * torch.randn(num_layers * directions, 1, HIDDEN)) if initial else None
        )
        self.head = nn.Linear(HIDDEN * directions, 3)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.view(-1, STEPS, FEATURES)
        if not self.batch_first:
            seq = seq.transpose(0, 1)
        if self.h0 is None:
            out = self.rnn(seq)[0]
        else:
            h = self.h0.expand(-1, x.shape[0], -1).contiguous()
            state = (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h
            out = self.rnn(seq, state)[0]
        return self.head(out[:, -1] if self.batch_first else out[-1])


class Activated(nn.Module):
    """nn.PReLU between two layers: one slope, or one per channel of a convolution."""

    def __init__(self, channels: bool) -> None:
        super().__init__()
        self.channels = channels
        if channels:
            self.body: nn.Module = nn.Conv1d(FEATURES, 4, 2)
            self.act = nn.PReLU(4, init=0.1)
            self.head = nn.Linear(4 * (STEPS - 1), 3)
        else:
            self.body = nn.Linear(STEPS * FEATURES, 6)
            self.act = nn.PReLU(init=0.1)
            self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels:
            return self.head(
                self.act(self.body(x.view(-1, STEPS, FEATURES).transpose(1, 2))).flatten(1)
            )
        return self.head(self.act(self.body(x)))


CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
#: name -> keyword arguments of Recurrent (two layers: with dropout between them, which eval
#: mode turns off)
SHAPES = {
    "": {},
    "_time_first": {"batch_first": False},
    "_bidirectional": {"bidirectional": True},
    "_two_layers": {"num_layers": 2, "dropout": 0.5},
    "_initial_state": {"initial": True},
}
MODELS = {
    "prelu": lambda: Activated(channels=False),
    "prelu_channels": lambda: Activated(channels=True),
    **{
        f"{cell}{shape}": (lambda cell=cell, shape=shape: Recurrent(CELLS[cell], **SHAPES[shape]))
        for cell in CELLS
        for shape in SHAPES
    },
}


def _built(name: str, n: int = 5, dtype: torch.dtype = torch.float64) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return MODELS[name]().to(dtype), torch.randn(n, STEPS * FEATURES, dtype=dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_engine_gives_the_exact_kernel(name: str, method: str) -> None:
    model, x = _built(name)
    model.train()  # evaluated in eval mode: the dropout between two layers is off
    kernel = empirical_ntk(model, x, device="cpu", method=method)
    assert all(module.training for module in model.modules())  # its mode restored
    assert rel(kernel, reference(model, x, "trace")) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["prelu_channels", "gru_bidirectional", "lstm", "rnn_two_layers"])
def test_float32_agrees_with_the_float64_reference(name: str, method: str) -> None:
    model, x = _built(name)
    expected = reference(model, x, "trace")
    kernel = empirical_ntk(model.float(), x.float(), device="cpu", method=method)
    assert kernel.dtype == torch.float32
    assert rel(kernel, expected) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ("structured", "jacobian"))
@pytest.mark.parametrize("name", ["prelu", "lstm_initial_state"])
def test_every_kind_and_the_cross_kernel(name: str, kind: str, method: str) -> None:
    model, x = _built(name, n=6)
    kernel_and_cross_kernel_match(model, x, reference(model, x, kind), kind, method)


@pytest.mark.parametrize("method", METHODS)
def test_in_blocks_and_with_a_memo(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _built("gru_time_first", n=8)
    expected = reference(model, x, "full")
    full_kernels_in_blocks_and_with_a_memo_match(model, x, expected, method, monkeypatch)


class Packed(nn.Module):
    """Sequences of 1 to ``STEPS`` steps, padded with zero steps at the end, packed by their
    lengths (read from the padding, per example) for the recurrent layer; its last state (of
    each sequence's own last step) to a head."""

    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(FEATURES, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.view(x.shape[0], STEPS, FEATURES)
        lengths = (seq.abs().sum(2) > 0).sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            seq, lengths, batch_first=True, enforce_sorted=False
        )
        state = self.rnn(packed)[1]
        return self.head((state[0] if isinstance(state, tuple) else state)[-1])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_packed_sequences_of_several_lengths(cell: str, method: str) -> None:
    model, x = _packed(cell)
    kernel = empirical_ntk(model, x, device="cpu", method=method)
    assert rel(kernel, reference(model, x, "trace")) < 1e-10


def _packed(cell: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = Packed(CELLS[cell]).double()
    x = torch.randn(6, STEPS * FEATURES, dtype=torch.float64)
    for i, length in enumerate([5, 3, 1, 4, 2, 5]):
        x[i, length * FEATURES :] = 0  # the padding
    return model, x


def _notes(compute: object) -> list[str]:
    """torch's 'There is a performance drop' notes that ``compute()`` gives its caller."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compute()  # type: ignore[operator]
    return [str(w.message) for w in seen if "There is a performance drop" in str(w.message)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "name", ["lstm", "lstm_two_layers", "lstm_initial_state", "packed_gru", "packed_lstm"]
)
def test_no_note_of_torchs_from_the_vmap_attempt_that_fails(name: str, method: str) -> None:
    # Users saw torch's 'There is a performance drop because we have not yet implemented the
    # batching rule for aten::mkldnn_rnn_layer' (nn.LSTM in float32 on a CPU) or
    # '...aten::_pack_padded_sequence', then 'Please file us an issue on GitHub', from the vmap
    # attempt that fails before ordinary autograd computes the kernel (or from check_branches'
    # vmap, whose result is not used).
    if name.startswith("packed"):
        model, x = _packed(name.removeprefix("packed_"))
    else:
        model, x = _built(name)
    expected = reference(model, x, "trace")
    model, x = model.float(), x.float()
    kernels: list[Tensor] = []
    notes = _notes(lambda: kernels.append(empirical_ntk(model, x, device="cpu", method=method)))
    assert notes == []
    assert rel(kernels[0], expected) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_torchs_note_is_kept_where_vmap_computes_the_kernel(method: str) -> None:
    # weight_norm's backward has no batching rule: vmap loops over the examples, exactly, and
    # the kernel comes from it; the note is not conetool's to drop there.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.utils.parametrizations.weight_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 3)
    )
    notes = _notes(lambda: empirical_ntk(model, torch.randn(4, 4), device="cpu", method=method))
    assert notes and all("aten::_weight_norm" in note for note in notes), notes


class SeesCudnn(nn.GRU):
    """An nn.GRU that records whether cuDNN was on each time its forward ran."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[bool] = []

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        self.seen.append(torch.backends.cudnn.enabled)
        return super().forward(x, h)


class Watched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = SeesCudnn(FEATURES, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x: Tensor) -> Tensor:
        seen = torch.backends.cudnn.enabled
        out = self.head(self.rnn(x.view(-1, STEPS, FEATURES))[0][:, -1])
        assert torch.backends.cudnn.enabled == seen  # as it was, around the layer
        return out


@pytest.mark.parametrize("method", METHODS)
def test_recurrent_layers_run_outside_cudnn_and_the_rest_does_not(method: str) -> None:
    # cuDNN's RNN refuses a backward pass in eval mode ('cudnn RNN backward can only be called in
    # training mode'), which the eNTK is computed in: on CUDA every engine failed there, where
    # PyTorch's own RNN kernels compute the same function (checked on a CPU: cuDNN's switch).
    torch.manual_seed(0)
    model = Watched().double()
    x = torch.randn(5, STEPS * FEATURES, dtype=torch.float64)
    assert torch.backends.cudnn.enabled
    kernel = empirical_ntk(model, x, device="cpu", method=method)
    assert model.rnn.seen and not any(model.rnn.seen)
    assert torch.backends.cudnn.enabled  # as it was
    assert not model.rnn._forward_hooks and not model.rnn._forward_pre_hooks  # let go
    assert rel(kernel, reference(model, x, "trace")) < 1e-10


class DirectPReLU(nn.Module):
    """F.prelu called on a parameter of the module's own: not an nn.PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.slope = nn.Parameter(torch.full((1,), 0.25))
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.prelu(self.fc(x), self.slope))


@pytest.mark.parametrize("method", METHODS)
def test_f_prelu_called_outside_its_module_is_refused_with_the_fix(method: str) -> None:
    with pytest.raises(ModelError) as caught:
        empirical_ntk(DirectPReLU(), torch.randn(4, 4), device="cpu", method=method)
    message = str(caught.value)
    assert "no working vmap rule" in message and "\n" not in message
    assert "F.prelu(x, a): torch.where(x > 0, x, a * x)" in message, message
    assert "through its module (nn.PReLU" in message, message
    assert isinstance(caught.value.__cause__, RuntimeError)


@pytest.mark.parametrize("name", ["prelu", "prelu_channels"])
def test_the_structured_engine_takes_prelu_slopes_from_its_passes(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Σ g·min(x, 0) per slope, from the recorded input and output cotangents: no per-example
    # autograd of the whole model (its fallback), which it took for nn.PReLU before.
    from conetool import ntk_structured

    looped: list[list[str]] = []
    original = ntk_structured.looped_grads

    def spy(forward, params, names, batch, cot):  # type: ignore[no-untyped-def]
        looped.append(names)
        return original(forward, params, names, batch, cot)

    monkeypatch.setattr(ntk_structured, "looped_grads", spy)
    model, x = _built(name, n=6)
    for kind in KINDS:
        kernel = empirical_ntk(model, x, kind=kind, device="cpu", method="structured")
        assert rel(kernel, reference(model, x, kind)) < 1e-10
    assert looped == []


# torch's note that a module's full backward hook sees no input that requires a gradient
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("kind", ("trace", "full"))
@pytest.mark.parametrize("method", ("structured", "jacobian"))
def test_one_backward_pass_per_example_for_all_its_logits(method: str, kind: str) -> None:
    # Ordinary autograd ran one backward pass per example and logit (3 logits: 18 for 6
    # examples); now one per example, vmap-ed over the logits (is_grads_batched), and a few of
    # the checks'.
    model, x = _built("gru", n=6)
    passes: list[int] = []
    model.rnn.register_full_backward_hook(lambda *_: passes.append(1))
    kernel = empirical_ntk(model, x, kind=kind, device="cpu", method=method)
    assert len(passes) < 2 * x.shape[0], len(passes)
    assert rel(kernel, reference(model, x, kind)) < 1e-10
