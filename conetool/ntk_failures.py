"""What an error PyTorch raises while the eNTK engines differentiate the user's model means, and
what to do about it: a :class:`~conetool.errors.ModelError` instead of PyTorch's own words."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from .errors import ModelError

__all__ = [
    "ACTIVATION_CHECKPOINTING",
    "FORWARD_ERRORS",
    "explained",
    "held_without_vmap_rule",
    "holds_module_without_vmap_rule",
    "input_refused",
    "loop_notes_dropped",
    "random_in_vmap",
    "untransformable_function",
    "vmap_failures_named",
    "written_in_place",
]

#: A model that uses activation checkpointing.
ACTIVATION_CHECKPOINTING = (
    "the model uses activation checkpointing (torch.utils.checkpoint), which the eNTK engines "
    "cannot differentiate through one example at a time (torch.func does not support its saved "
    "tensor hooks or its use_reentrant=True autograd.Function, and the structured engine's "
    "batched pass recomputes other shapes). Turn it off while computing the eNTK: it saves "
    "memory in training and does not change the function."
)

#: A model with a custom torch.autograd.Function that torch.func cannot transform.
CUSTOM_FUNCTION = (
    "the model uses a custom torch.autograd.Function that torch.func cannot transform (vmap over "
    "examples of vjp). Activation checkpointing with use_reentrant=True is one: turn it off while "
    "computing the eNTK (it does not change the function). Your own: give it a setup_context "
    "staticmethod (PyTorch's 'Extending torch.func with autograd.Function'), or write its "
    "forward with plain tensor operations."
)


#: A model whose forward pass updates in place a tensor it did not create that the engines do not
#: hand every evaluation a copy of (buffers and tensor attributes they do: conetool.ntk_buffers).
IN_PLACE_UPDATE = (
    "the model's forward pass updates in place a tensor it did not create that is neither a "
    "buffer nor a tensor attribute of a module (one held in a list, a dict or another object, or "
    "a global: self.counts[0] += 1), which torch.func cannot do one example at a time (the "
    "reference engine, and the structured engine's fallback path). Hold it with "
    "self.register_buffer(name, tensor), which every evaluation gets its own copy of, or skip "
    "the update in eval mode (if self.training: ...), which the eNTK is computed in."
)


def explained(exc: RuntimeError) -> ModelError | None:
    """The known cause of ``exc``, as a :class:`ModelError` naming the fix, or None."""
    message = str(exc)
    if (
        isinstance(exc, torch.utils.checkpoint.CheckpointError)
        or "saved tensor hooks" in message
        or "torch.utils.checkpoint" in message
    ):
        return ModelError(ACTIVATION_CHECKPOINTING)
    if "autograd.Function" in message and "setup_context" in message:
        return ModelError(CUSTOM_FUNCTION)
    if "mutate a captured Tensor" in message:
        return ModelError(IN_PLACE_UPDATE)
    return None


def untransformable_function(exc: BaseException | None) -> bool:
    """Whether ``exc`` (an error :func:`vmap_failures_named` turned into a
    :class:`ModelError`, or its cause) is torch.func refusing a custom
    ``torch.autograd.Function`` of the model: one without ``setup_context`` (the old style, with
    ``ctx`` in ``forward``), or one without a vmap rule (neither a ``vmap`` staticmethod nor
    ``generate_vmap_rule = True``). Ordinary autograd differentiates it all the same, one example
    at a time (:func:`conetool.ntk_reference.looped_grads`). Activation checkpointing's is not
    one of them: it refuses ``torch.autograd.grad`` too (:data:`ACTIVATION_CHECKPOINTING`)."""
    if isinstance(exc, ModelError):
        exc = exc.__cause__
    if not isinstance(exc, RuntimeError):
        return False
    known = explained(exc)
    if known is not None:
        return str(known) == CUSTOM_FUNCTION
    return "does not have vmap support" in str(exc)


#: What vmap says when a forward pass writes a value that differs between examples into a tensor
#: it made once for all of them (:func:`written_in_place`).
_WRITTEN_IN_PLACE = (
    # acc.copy_(h), out[:, :3] = h, acc.mul_(h), acc.index_add_(1, i, h), acc.masked_fill_(h > 0, 1)
    "in extra_args that has more elements than `self`",
    # acc += h: "output with shape [1, 6] doesn't match the broadcast shape [5, 1, 6]"
    "doesn't match the broadcast shape",
)


def written_in_place(exc: BaseException | None) -> bool:
    """Whether ``exc`` (an error :func:`vmap_failures_named` turned into a :class:`ModelError`,
    or its cause) is ``vmap`` refusing an in-place write of a value that differs between examples
    into a tensor the forward pass made once for all of them: ``acc = torch.zeros(x.shape[0], k)``
    (a factory that is not told of the examples, unlike ``torch.zeros_like(h)`` or
    ``h.new_zeros(...)``) then ``acc += h``, ``acc[:, 0] = h.sum(1)`` or ``acc.index_add_(...)``.
    The model is plain tensor code that ordinary autograd differentiates exactly, one
    example at a time (:func:`conetool.ntk_reference.looped_grads`); a real shape error raises
    there again, in the model's own words."""
    if isinstance(exc, ModelError):
        exc = exc.__cause__
    if not isinstance(exc, RuntimeError):
        return False
    return any(part in str(exc) for part in _WRITTEN_IN_PLACE)


def held_without_vmap_rule(exc: BaseException | None, model: nn.Module | None) -> bool:
    """Whether ``exc`` (an error :func:`vmap_failures_named` turned into a :class:`ModelError`,
    or its cause) is an error PyTorch raised inside ``vmap`` over examples of ``vjp`` of a
    ``model`` that holds a module without a working vmap rule (:data:`NO_VMAP_RULE`: nn.PReLU,
    and nn.GRU, nn.LSTM and nn.RNN, which write their hidden state in place into a tensor made
    for the whole batch), and not one of a known cause (:func:`explained`: activation
    checkpointing stays refused). In torch 2.14.1 they fail in several ways: nn.PReLU in the
    backward pass (a size mismatch, no module on the traceback), the recurrent layers in their
    forward ('doesn't match the broadcast shape'), and nn.LSTM in float32 on a CPU in the
    backward pass ('workspace'). Ordinary autograd differentiates them exactly, one example at a
    time (:func:`conetool.ntk_reference.looped_grads`); a real error of the model raises there
    again, in its own words."""
    if not holds_module_without_vmap_rule(model):
        return False
    if isinstance(exc, ModelError):
        exc = exc.__cause__
    return isinstance(exc, RuntimeError) and explained(exc) is None


def random_in_vmap(exc: BaseException | None) -> bool:
    """Whether ``exc`` (an error :func:`vmap_failures_named` turned into a :class:`ModelError`,
    or its cause) is ``vmap`` refusing a random operation in the forward pass. It is raised only
    for a model whose output passed the check that it is not random (the same examples
    evaluated twice agree, :func:`conetool.ntk_checks.check_independence`): a draw from a
    generator seeded in ``forward`` (``torch.randn(k, generator=torch.Generator().manual_seed(0))``,
    a fixed random projection made anew on each call), a deterministic function that ordinary
    autograd differentiates exactly, one example at a time
    (:func:`conetool.ntk_reference.looped_grads`)."""
    if isinstance(exc, ModelError):
        exc = exc.__cause__
    return isinstance(exc, RuntimeError) and "called random operation while in randomness" in str(
        exc
    )


#: What a model's forward pass raises on inputs it cannot take: PyTorch's shape errors are
#: RuntimeErrors; a model's own checks raise the others (an assert, a ValueError, an index).
FORWARD_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, AssertionError)


def input_refused(
    forward: Callable[[Tensor], Tensor], x: Tensor, shape: tuple[int, ...]
) -> ModelError | None:
    """Whether the model cannot take the inputs ``x`` (n, ...) at all: a :class:`ModelError`
    naming their ``shape`` (the caller's: x1's of a cross kernel, whose ``x`` holds both sets)
    and what a plain forward pass of one example (``forward(x[:1])``, outside torch.func's
    transforms) raised; None when that pass works (an engine failed elsewhere).

    Run only after an engine failed, so that computing a kernel pays for no extra forward pass.
    """
    try:
        forward(x[:1])
    except FORWARD_ERRORS as exc:
        return ModelError(
            f"the model cannot take inputs of shape {shape} (n = {shape[0]} examples of shape "
            f"{shape[1:]}): its forward pass on one of them, of shape "
            f"{tuple(x[:1].shape)}, raised {type(exc).__name__}: {_first_line(exc)}. Pass the "
            "inputs the model takes, with the examples along the first dimension (an "
            "nn.Linear(5, k) takes (n, 5)), or a model whose first layer fits the data."
        )
    return None


#: Modules that have no working vmap rule in torch 2.14.1, whose per-example gradients ordinary
#: autograd computes instead (:func:`held_without_vmap_rule`).
NO_VMAP_RULE = (nn.PReLU, nn.RNNBase)


def holds_module_without_vmap_rule(model: nn.Module | None) -> bool:
    """Whether ``model`` holds a module of :data:`NO_VMAP_RULE` (nn.PReLU, nn.GRU, nn.LSTM,
    nn.RNN), under which ``vmap`` over examples of ``vjp`` fails."""
    return model is not None and any(isinstance(m, NO_VMAP_RULE) for m in model.modules())


#: The start of torch's note that ``vmap`` loops over the examples for an operation without a
#: batching rule ('... for aten::mkldnn_rnn_layer. Please file us an issue on GitHub ...').
PERFORMANCE_DROP = (
    "There is a performance drop because we have not yet implemented the batching rule"
)


@contextlib.contextmanager
def loop_notes_dropped(drop: bool = True) -> Iterator[None]:
    """torch's :data:`PERFORMANCE_DROP` note (a UserWarning) ignored inside the block when
    ``drop``; every other warning, and the note outside the block, as they are.

    For a ``vmap`` over a model or layer holding a module without a working vmap rule
    (:func:`holds_module_without_vmap_rule`), where ``vmap`` loops over the examples through
    oneDNN's LSTM (``aten::mkldnn_rnn_layer``, nn.LSTM in float32 on a CPU) or
    ``pack_padded_sequence`` and says so. Two such uses: the engines' attempt, which then fails
    (or whose result is not used) and whose gradients ordinary autograd computes, so the note
    told users of a slowness that the kernel they get does not have; and the structured engine's
    per-layer ``vmap`` (:func:`conetool.ntk_layer_grads._local_grads`, an nn.LSTM with a state of
    its own), whose result is used and whose loop is real, but is PyTorch's missing rule, which
    a conetool user cannot act on: the note asked them to file an issue with PyTorch."""
    if not drop:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PERFORMANCE_DROP, category=UserWarning)
        yield


@contextlib.contextmanager
def vmap_failures_named() -> Iterator[None]:
    """Turn an error PyTorch raises inside ``vmap`` over examples of ``vjp`` of the model into a
    :class:`~conetool.errors.ModelError` that says what it means, where (:func:`failing_module`)
    and what to do (running out of memory stays what it is: the callers name the budget)."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        where = failing_module(exc)
        known = explained(exc)
        if known is None:
            raise _no_vmap_rule(exc, f" in {where}" if where else "") from exc
        if where:
            raise ModelError(f"{known} It was raised in {where}.") from exc
        raise known from exc


def failing_module(exc: BaseException) -> str:
    """``module 'NAME' (Type)``, or ``the forward of the model itself (Type)``: the innermost
    module whose code was running when ``exc`` was raised, named by its path in the outermost
    module on the traceback (the model); empty for an error raised in the backward pass, which
    no module's code is on.

    Read from the traceback's frames (their ``self``), so that naming it costs nothing until
    something has failed.
    """
    modules: list[nn.Module] = []
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and (not modules or modules[-1] is not owner):
            modules.append(owner)
        tb = tb.tb_next
    if not modules:
        return ""
    root, innermost = modules[0], modules[-1]
    name = next((n for n, m in root.named_modules() if m is innermost), None)
    label = type(innermost).__name__
    if name is None or name == "":
        return f"the forward of the model itself ({label})" if innermost is root else f"a {label}"
    return f"module '{name}' ({label})"


def _no_vmap_rule(exc: RuntimeError, place: str = "") -> ModelError:
    return ModelError(
        "computing the model's per-example gradients with torch.func (vmap over examples of "
        f"vjp) failed inside PyTorch{place}: {_first_line(exc)}. Some PyTorch operations have no "
        "working vmap rule (in torch 2.14 F.prelu and the recurrent functions that nn.GRU, "
        "nn.LSTM and nn.RNN call among them): write such an operation with plain tensor "
        "operations (F.prelu(x, a): torch.where(x > 0, x, a * x)), or call it through its module "
        "(nn.PReLU, nn.GRU, nn.LSTM, nn.RNN), whose per-example gradients conetool computes by "
        "ordinary autograd, one example at a time."
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(".")
