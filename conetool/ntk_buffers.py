"""The buffers a model's forward pass updates in place, and the copies the eNTK engines evaluate it
with; tensors held as plain attributes of its modules (not registered buffers) likewise.

A forward pass that updates a buffer in place in eval mode (a call counter ``self.calls += 1``, a
running statistic kept by hand and not gated by ``if self.training:``, a monitor of its largest
activation) would make the function change from one evaluation to the next: the engines evaluate
the model many times (one example at a time, in batches, at perturbed weights for their checks).
The eNTK is that of the function one call of the model computes from its state as given, the
buffers at their values in the model; what a call writes to them is dropped. So every evaluation
gets its own copy of each buffer a forward pass updates (:func:`evaluated_with`), found once per
kernel by one forward pass of one example (:func:`updated_in_place`); the model's own buffers are
never written to.

``vmap`` cannot write a value that differs between examples into such a copy, which is the same
for all of them (``self.peak.copy_(h.max())``): where the model updates a buffer, the engines'
``vmap`` path computes the per-example gradients it refuses by ordinary autograd instead, one
example at a time (:func:`conetool.ntk_reference.vmapped_or_looped`; exact, slower).

A tensor held as a plain attribute of a module (``self.count = torch.zeros(())`` in
``__init__``, not ``register_buffer``) is state all the same: the engines hand every evaluation
the attributes :func:`plain_tensors` finds in place of the module's own (``functional_call`` puts
the module's back after the call), so that an update in place (``self.count += 1``) is made to a
copy, as a buffer's is, and one that replaces the attribute (``self.mean = 0.9 * self.mean +
...``) is undone after each evaluation. A tensor held inside a list, a dict or another object is
not found.

The one-off forward passes conetool makes of a model outside the engines (the output check, the
look at what forward returns, :func:`conetool.ntk.check_per_example`, the slow-step warning's
count) run it the same way (:func:`called_on_copies`): a model that counts its calls is left
with the count it had.

An update that mixes the examples (a statistic of the batch, read in the same call) makes each
output depend on the others: the independence check refuses it, naming the buffers found here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from .ntk_failures import FORWARD_ERRORS

__all__ = [
    "called_on_copies",
    "copies_by_name",
    "evaluated_with",
    "plain_tensors",
    "state_copies",
    "unchanged_in_eval",
    "updated_in_place",
    "updates_buffers",
    "updating_buffers",
]

#: The buffers the model of the eNTK being computed updates in place (:func:`updating_buffers`).
_UPDATED: ContextVar[tuple[str, ...]] = ContextVar("conetool_updated_buffers", default=())


def unchanged_in_eval(model: nn.Module) -> set[str]:
    """The names of the buffers that a forward pass in eval mode does not change: the running
    statistics and batch count of PyTorch's own BatchNorm (a subclass with a forward of its own
    may update them)."""
    batchnorm = nn.modules.batchnorm._BatchNorm
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, batchnorm) and type(module).forward is batchnorm.forward
        for name, buffer in module.named_buffers(recurse=False)
        if buffer is not None
    }


def plain_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The tensors held as plain attributes of ``model``'s modules, by their dotted names
    (``block.count`` for ``self.count = torch.zeros(())`` in ``block``'s ``__init__``): tensors in a
    module's ``__dict__``, where neither ``register_buffer`` nor ``nn.Parameter`` puts them. A
    module reached by several names is listed under the first, as ``named_buffers`` does."""
    return {
        f"{prefix}.{name}" if prefix else name: value
        for prefix, module in model.named_modules()
        for name, value in vars(module).items()
        if isinstance(value, Tensor)
    }


def copies_by_name(
    tensors: Iterable[tuple[str, Tensor]], copy: Callable[[Tensor], Tensor] = Tensor.clone
) -> dict[str, Tensor]:
    """``copy`` of each of ``tensors``, by name: one copy per tensor (names that hold one tensor
    share it, as they shared the tensor)."""
    copies: dict[int, Tensor] = {}
    state: dict[str, Tensor] = {}
    for name, held in tensors:
        if id(held) not in copies:
            copies[id(held)] = copy(held)
        state[name] = copies[id(held)]
    return state


def state_copies(model: nn.Module) -> dict[str, Tensor]:
    """Copies of ``model``'s buffers and of the tensors held as plain attributes of its modules
    (:func:`plain_tensors`), by name: one copy per tensor (names that hold one tensor share it)."""
    return copies_by_name([*model.named_buffers(), *plain_tensors(model).items()])


def called_on_copies(model: nn.Module, *args: object) -> object:
    """``model(*args)`` with :func:`state_copies` in place of its buffers and tensor attributes
    (``torch.func.functional_call``): what the call writes to them, in place (``self.count +=
    1``) or by assignment (``self.mean = ...``), is dropped, and the model keeps its own tensors
    with their values. For the one-off passes conetool makes of a model (its checks), not for
    training, whose updates are the model's."""
    from torch.func import functional_call

    return functional_call(model, state_copies(model), args)


def updated_in_place(
    call: Callable[[dict[str, Tensor], Tensor], object],
    buffers: dict[str, Tensor],
    example: Tensor,
) -> list[str]:
    """The names of ``buffers`` (buffers, or tensors held as plain attributes) that one forward
    pass ``call(state, example)`` (``example`` ``(1, *shape)``, ``state`` copies of ``buffers`` by
    name) updates in place, in their order; none when the pass fails (the engine that runs it next
    says why).

    Told by each copy's version counter, which every in-place operation moves (even one that
    writes the value the buffer held). A buffer the forward pass replaces (``self.calls =
    self.calls + 1``) is not one: ``functional_call`` puts the given tensor back after the call.
    """
    if not buffers:
        return []
    trial = {name: buffer.clone() for name, buffer in buffers.items()}
    versions = {name: copy._version for name, copy in trial.items()}
    try:
        with torch.no_grad():
            call(trial, example.clone())
    except FORWARD_ERRORS:
        return []
    return [name for name, copy in trial.items() if copy._version != versions[name]]


def evaluated_with(consts: dict[str, Tensor], updated: list[str]) -> dict[str, Tensor]:
    """``consts`` with a fresh copy of each buffer named in ``updated``, for one evaluation of the
    model: each starts from the buffers as given, and what it writes to them reaches no other.
    Names that hold one tensor (an attribute that is another module's too) get one copy."""
    if not updated:
        return consts
    copies: dict[int, Tensor] = {}
    state = dict(consts)
    for name in updated:
        held = consts[name]
        if id(held) not in copies:
            copies[id(held)] = held.clone()
        state[name] = copies[id(held)]
    return state


@contextlib.contextmanager
def updating_buffers(names: list[str]) -> Iterator[None]:
    """Within: the model whose eNTK is computed updates the buffers ``names`` in place
    (:func:`updates_buffers`)."""
    token = _UPDATED.set(tuple(names))
    try:
        yield
    finally:
        _UPDATED.reset(token)


def updates_buffers() -> tuple[str, ...]:
    """The buffers that the model whose eNTK is being computed updates in place (none outside
    :func:`updating_buffers`)."""
    return _UPDATED.get()
