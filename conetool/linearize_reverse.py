"""The linearized model's ``J t`` by reverse mode twice, for a model forward-mode AD cannot run.

A custom ``torch.autograd.Function`` in the model (a straight-through estimator, a fused
activation) without a ``jvp`` staticmethod has no forward-mode derivative, and one without
``setup_context`` cannot enter ``torch.func.jvp`` either; ordinary autograd calls its ``backward``
all the same. Some of PyTorch's own operations have no forward-mode derivative either
(:func:`forward_ad_missing`: torch.cdist, F.grid_sample in torch 2.14), and reverse mode
differentiates them. The directional derivative then comes from two reverse passes (the
"double-vjp trick"): with ``u`` a dummy cotangent of the outputs, ``v(u) = J^T u`` is linear in
``u``, and ``J t = ∂<v(u), t>/∂u``, the reverse pass of ``v`` with cotangent ``t``. Both passes
keep their graph, so that autograd flows through ``J t`` to the tangents (the gradient of a loss
of ``f_lin`` is ``J^T ∂L/∂f_lin``, as on the dual-number path) and, second order, to the primals.

It costs a forward pass and two reverse passes (and a training step's backward runs through both),
against one forward pass with dual numbers: a fallback, used only once forward mode refused. It
needs the Function's (or the operation's) ``backward`` to be differentiable itself (written in
torch operations, not ``@once_differentiable``); :func:`refused` names the Function (or the
operation: nn.EmbeddingBag's) and the fix where it is not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .errors import ModelError
from .ntk_failures import failing_module

__all__ = ["custom_function_refused", "f0_and_jvp_reverse", "forward_ad_missing", "refused"]

#: How PyTorch names an operation without a forward-mode derivative (group 1: the operation).
_NO_FORWARD_AD = re.compile(r"Trying to use forward AD with (\S+) that does not support it")


def custom_function_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is forward-mode AD (dual numbers or ``torch.func.jvp``) refusing a custom
    ``torch.autograd.Function``: no ``jvp`` staticmethod, or no ``setup_context``."""
    message = str(exc)
    if isinstance(exc, NotImplementedError):
        return "jvp" in message and "autograd.Function" in message
    return (
        isinstance(exc, RuntimeError)
        and "autograd.Function" in message
        and "setup_context" in message
    )


def forward_ad_missing(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch refusing forward-mode AD through one of its own operations that
    has no forward-mode derivative in this version (torch 2.14: ``_embedding_bag`` of
    nn.EmbeddingBag, ``_cdist_forward`` of torch.cdist, ``grid_sampler_2d`` of F.grid_sample,
    ``_ctc_loss``), which reverse mode differentiates."""
    return isinstance(exc, NotImplementedError) and _NO_FORWARD_AD.search(str(exc)) is not None


def f0_and_jvp_reverse(
    model: nn.Module,
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    consts: dict[str, Tensor],
) -> tuple[Any, Any]:
    """:func:`conetool.linearize.f0_and_jvp` by two reverse passes (see the module docstring):
    ``(f, J t)``, both with the shape of the model's output. Under ``torch.no_grad()`` both come
    back without a graph; under ``torch.inference_mode()`` they are computed outside it, from
    copies of the tensors made there (which autograd cannot record)."""
    outer = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    with torch.inference_mode(False), torch.enable_grad():
        primals, tangents, consts = (
            {name: _recordable(t) for name, t in d.items()} for d in (primals, tangents, consts)
        )
        args, kwargs = tree_map(_recordable, (args, kwargs))
        live = {
            n: p if p.requires_grad else p.detach().requires_grad_() for n, p in primals.items()
        }
        leaves, spec = tree_flatten(functional_call(model, {**consts, **live}, args, kwargs))
        reached = [
            i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor) and leaf.requires_grad
        ]
        pushed = _pushed([leaves[i] for i in reached], live, tangents)
    tangent = [torch.zeros_like(leaf) if isinstance(leaf, Tensor) else leaf for leaf in leaves]
    for i, value in zip(reached, pushed, strict=True):
        if value is not None:
            tangent[i] = value
    if not outer:
        leaves = [leaf.detach() if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        tangent = [t.detach() if isinstance(t, Tensor) else t for t in tangent]
    return tree_unflatten(leaves, spec), tree_unflatten(tangent, spec)


def _pushed(
    outs: list[Tensor], live: dict[str, Tensor], tangents: Mapping[str, Tensor]
) -> list[Tensor | None]:
    """``J t`` for each of ``outs`` (None: no primal reaches it): the reverse pass of ``v(u) =
    J^T u`` with cotangent ``t``."""
    if not outs:
        return []
    names = list(live)
    dummies = [torch.zeros_like(out, requires_grad=True) for out in outs]
    pulled = torch.autograd.grad(
        outs, [live[n] for n in names], dummies, create_graph=True, allow_unused=True
    )
    pairs = [(v, tangents[n]) for v, n in zip(pulled, names, strict=True) if v is not None]
    pairs = [(v, t) for v, t in pairs if v.requires_grad]  # v depends on u unless J is zero
    if _once_differentiable([v for v, _ in pairs]):
        # its graph is cut from u: the second pass would skip it, a zero J t without an error
        raise RuntimeError(
            "its backward is marked @once_differentiable, so its result has no graph to the "
            "cotangent"
        )
    if not pairs:
        return [None] * len(outs)
    return list(
        torch.autograd.grad(
            [v for v, _ in pairs],
            dummies,
            [t for _, t in pairs],
            create_graph=True,
            allow_unused=True,
        )
    )


def _once_differentiable(tensors: list[Tensor]) -> bool:
    """Whether the graph of ``tensors`` holds the node a ``@once_differentiable`` backward leaves
    (``DelayedError``), which cuts it from the cotangent: one walk over the graph's nodes."""
    seen: set[int] = set()
    stack: list[Any] = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ in ("Error", "DelayedError"):  # (its node, as torch names it)
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def _recordable(value: Any) -> Any:
    """``value``, or a copy of it made outside inference mode when it is an inference tensor
    (which autograd cannot record)."""
    if isinstance(value, Tensor) and value.is_inference():
        return value.clone()
    return value


def refused(forward_mode: BaseException, reverse: BaseException) -> ModelError:
    """The :class:`ModelError` for a custom autograd.Function (or a PyTorch operation without a
    forward-mode derivative, :func:`forward_ad_missing`) that forward mode refused
    (``forward_mode``) and whose ``backward`` the fallback could not differentiate
    (``reverse``): naming the Function (or the operation) and the module it runs in, and the
    fixes."""
    where = failing_module(forward_mode)
    place = f" (in {where})" if where else ""
    operation = _NO_FORWARD_AD.search(str(forward_mode))
    if operation is not None:
        return ModelError(
            f"the linearized model cannot differentiate PyTorch's operation "
            f"'{operation.group(1)}'{place}: it has no forward-mode derivative in torch "
            f"{torch.__version__}, and its backward cannot be differentiated again "
            f"({_first_line(reverse)}), which the fallback by two reverse passes needs. Write "
            "that step of the model with other torch operations."
        )
    function = _function_in(forward_mode)
    what = (
        f"the custom torch.autograd.Function '{function}'"
        if function
        else "a custom torch.autograd.Function"
    )
    return ModelError(
        f"the linearized model cannot differentiate {what}{place}: it has no forward-mode "
        "derivative (a jvp staticmethod, with setup_context), and its backward cannot be "
        f"differentiated again ({_first_line(reverse)}), which the fallback by two reverse "
        "passes needs. Give the Function a jvp staticmethod (PyTorch's 'Extending "
        "torch.autograd' for forward mode AD), or write its backward in differentiable torch "
        "operations (without @once_differentiable)."
    )


def _function_in(exc: BaseException) -> str:
    """The name of the custom autograd.Function that was applied where ``exc`` was raised: the
    ``cls`` of ``Function.apply``'s frame where it has one, else the Function subclasses that the
    innermost frame's code names (a global, a local, or an attribute of its ``self``, as in
    ``self.fn.apply(x)``); empty when none is found."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        cls = frame.f_locals.get("cls")
        if _is_function(cls):
            return str(cls.__qualname__)
    if not frames:
        return ""
    frame = frames[-1]
    owner = frame.f_locals.get("self")
    found = []
    for name in frame.f_code.co_names:
        for space in (frame.f_locals, frame.f_globals, getattr(owner, "__dict__", {})):
            value = space.get(name)
            if _is_function(value) and value.__qualname__ not in found:
                found.append(value.__qualname__)
    return "', '".join(found)


def _is_function(value: object) -> TypeGuard[type[torch.autograd.Function]]:
    return (
        isinstance(value, type)
        and issubclass(value, torch.autograd.Function)
        and value is not torch.autograd.Function
    )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(".")
