"""The linearized model: a network's first-order Taylor expansion in its parameters.

At a fixed point ``θ_t`` (for the switch experiment: the checkpoint at step ``t``), the linearized
model is (shared/DESIGN.md, "Definitions")::

    f_lin(x; θ) = f(x; θ_t) + J(x; θ_t) (θ − θ_t),        J(x; θ_t) = ∂f(x; θ)/∂θ at θ_t

- ``θ`` is every parameter with ``requires_grad`` when the linearized model is built (tied weights
  count once, as ``named_parameters()`` lists them once). Frozen parameters and buffers stay
  constants at their values at ``t``.
- **The network is always evaluated in eval mode**: BatchNorm normalizes with the running statistics
  it had at ``t`` (they are never updated) and dropout is off, whatever ``.train()`` or ``.eval()``
  says. ``LinearizedModel.train()`` only sets the flag; it changes no output. This is the
  definition the kernels use: ``f_lin`` has, at every ``θ``, the eNTK that ``f`` has at ``θ_t``.
- The outputs come from one forward-mode product at ``θ_t``: a single forward pass carrying dual
  numbers returns both ``f(x; θ_t)`` and ``J(x; θ_t)(θ − θ_t)``, without ever forming ``J``.
- The gradient of a loss ``L(f_lin)`` is ``J(x; θ_t)^T ∂L/∂f_lin``: autograd differentiates the
  tangent ``J(θ_t)(θ − θ_t)``, which is linear in ``θ`` with coefficients fixed at ``θ_t``. That is
  one reverse-mode product at the fixed point; nothing is evaluated at ``θ``.

Cost. One linearized training step (forward, cross-entropy, backward, SGD step) against one
standard step of the same network in training mode, timed interleaved on a busy shared 2-core CPU
(float32; best and median of many repeats): LeNet-5 on 8x8 digits, batch 64, 1.4-1.9x; ResNet-20
on 32x32 inputs, batch 32, 1.2-1.8x. The exact ways tried: the dual-number forward pass of
:func:`f0_and_jvp` (used); differentiating through ``torch.func.jvp`` (its fallback), 20 % slower
on LeNet-5 and within the noise on ResNet-20; a custom ``autograd.Function`` with a separate
``torch.func.vjp`` at ``θ_t``, 1.4-2x slower; ``torch.func.linearize``, which traces the network
again for every batch, 4-65x slower. Evaluating ``f_lin`` without gradients costs 2-3.5 plain
forward passes.

To resume a linearized run, linearize the checkpoint at ``t`` again and load the saved ``θ``:
``lin = linearize(model_at_t); lin.load_state_dict(saved)``, where ``saved`` came from
:meth:`LinearizedModel.params_state_dict` (its buffers are those at ``t``).

Example (the neural-tangents ``linearize`` idiom)::

    import torch
    from conetool.linearize import linearize

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    lin = linearize(model)                  # a copy; `model` itself is never modified
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    loss = torch.nn.functional.cross_entropy(lin(x), y)   # lin(x): (16, 3), f_lin at θ
    loss.backward()
    opt.step()
    state = lin.params_state_dict()         # a state dict of the original architecture, θ inside
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.utils._pytree import tree_flatten, tree_unflatten

from .attention import composite_attention
from .errors import ModelError
from .linearize_reverse import (
    custom_function_refused,
    f0_and_jvp_reverse,
    forward_ad_missing,
    refused,
)
from .ntk_buffers import evaluated_with, plain_tensors, unchanged_in_eval
from .ntk_checks import recurrent_outside_cudnn

__all__ = ["LinearizedModel", "f0_and_jvp", "linearize"]

# Attribute names the linearized model itself uses; the model's own top-level names must differ.
_ANCHOR = "_conetool_anchor"
_RESERVED = frozenset(
    {
        _ANCHOR,
        "_network",
        "_trainable_names",
        "_eval_modules",
        "_unchanged_buffers",
        "_reverse",
        "anchor_parameters",
        "params_state_dict",
    }
)


def f0_and_jvp(
    model: nn.Module,
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    consts: Mapping[str, Tensor] | None = None,
) -> tuple[Any, Any]:
    """The model's output at ``primals`` and its directional derivative along ``tangents``.

    Returns ``(f, J t)``: ``f = model(*args, **kwargs)`` evaluated with the named tensors
    ``primals`` and ``consts`` in place of the model's own, and ``J t = Σ_name ∂f/∂primals[name] ·
    tangents[name]``, from one forward pass with dual numbers (``torch.autograd.forward_ad``).
    ``tangents`` has the keys and shapes of ``primals``; both outputs have the shape of the model's
    output (a tensor, or a tuple/list/dict of tensors). Autograd flows through both: through ``f`` to
    ``primals`` and the inputs, through ``J t`` to ``tangents`` (and, second order, to ``primals``).

    The model runs in whatever mode it is in; call ``model.eval()`` first for the eval-mode
    definitions of conetool. Inside a ``torch.func`` forward-mode transform (``torch.func.jvp``,
    ``jacfwd``), where ``torch.autograd.forward_ad`` cannot nest, it uses ``torch.func.jvp``, which
    gives the same numbers (up to 20 % slower when differentiated, on LeNet-5 and ResNet-20); so it
    does under ``torch.inference_mode()``, where dual numbers carry no tangent. Inside an outer
    ``torch.autograd.forward_ad.dual_level`` neither can run: PyTorch does not nest forward mode
    AD there.

    The model's recurrent layers (nn.GRU, nn.LSTM, nn.RNN) run outside oneDNN and cuDNN meanwhile
    (:func:`~conetool.ntk_checks.recurrent_outside_cudnn`): oneDNN's LSTM has no forward-mode
    derivative. Where forward mode refuses the model all the same (a custom autograd.Function
    without a ``jvp``, a PyTorch operation without a forward-mode derivative: torch.cdist,
    F.grid_sample), ``J t`` comes from two reverse passes (:mod:`conetool.linearize_reverse`).
    """
    f0, tangent, _ = _f0_and_jvp(
        model, primals, tangents, args, dict(kwargs or {}), dict(consts or {}), reverse=False
    )
    return f0, tangent


def _f0_and_jvp(
    model: nn.Module,
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    consts: dict[str, Tensor],
    reverse: bool,
) -> tuple[Any, Any, bool]:
    """:func:`f0_and_jvp` as ``(f, J t, reverse)``: ``reverse`` (given and returned) is whether
    forward mode refused the model (:func:`~conetool.linearize_reverse.custom_function_refused`,
    :func:`~conetool.linearize_reverse.forward_ad_missing`), so that the two reverse passes are
    taken at once: a :class:`LinearizedModel` keeps it for its next calls."""
    # Recurrent layers outside cuDNN and oneDNN: their RNNs have no forward-mode derivative
    # (oneDNN's LSTM, nn.LSTM in float32 on a CPU) and cuDNN's refuses a backward pass in eval
    # mode, which the reverse passes below would take; PyTorch's own RNN kernels have both.
    with (
        warnings.catch_warnings(),
        composite_attention(),
        recurrent_outside_cudnn(model, onednn=True),
    ):
        # PyTorch scripts its forward-AD decompositions on first use and warns, from inside
        # torch, that torch.jit.script is deprecated: nothing a user can act on.
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
        if reverse:
            return (*f0_and_jvp_reverse(model, primals, tangents, args, kwargs, consts), True)
        # Under torch.inference_mode() dual tensors carry no tangent: the dual path would return
        # f(x; θ_t) with a zero J t, silently. torch.func.jvp computes it there.
        try:
            if not torch.is_inference_mode_enabled():
                try:
                    return (
                        *_f0_and_jvp_dual(model, primals, tangents, args, kwargs, consts),
                        False,
                    )
                except RuntimeError as exc:
                    if forward_ad_missing(exc):  # torch.func.jvp has no derivative for it either
                        raise
                    if "forward mode AD" not in str(exc) and "forward AD" not in str(exc):
                        raise
            return (*_f0_and_jvp_func(model, primals, tangents, args, kwargs, consts), False)
        except (RuntimeError, NotImplementedError) as exc:
            # a custom autograd.Function without a jvp (or setup_context), or a PyTorch operation
            # without a forward-mode derivative (torch.cdist, F.grid_sample): two reverse passes
            if not (custom_function_refused(exc) or forward_ad_missing(exc)):
                raise
            try:
                pair = f0_and_jvp_reverse(model, primals, tangents, args, kwargs, consts)
            except RuntimeError as again:
                raise refused(exc, again) from again
            return (*pair, True)


def _f0_and_jvp_dual(
    model: nn.Module,
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    consts: dict[str, Tensor],
) -> tuple[Any, Any]:
    """:func:`f0_and_jvp` with ``torch.autograd.forward_ad`` (the fast path)."""
    with fwad.dual_level():
        tensors = dict(consts)
        for name, primal in primals.items():
            tensors[name] = fwad.make_dual(primal, tangents[name])
        leaves, spec = tree_flatten(functional_call(model, tensors, args, kwargs))
        f0: list[Any] = []
        tangent: list[Any] = []
        for leaf in leaves:
            if isinstance(leaf, Tensor):
                unpacked = fwad.unpack_dual(leaf)
                f0.append(unpacked.primal)
                # No tangent: this output does not depend on the primals.
                missing = unpacked.tangent is None
                tangent.append(torch.zeros_like(leaf) if missing else unpacked.tangent)
            else:
                f0.append(leaf)
                tangent.append(leaf)
    return tree_unflatten(f0, spec), tree_unflatten(tangent, spec)


def _f0_and_jvp_func(
    model: nn.Module,
    primals: Mapping[str, Tensor],
    tangents: Mapping[str, Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    consts: dict[str, Tensor],
) -> tuple[Any, Any]:
    """:func:`f0_and_jvp` with ``torch.func.jvp`` (composes with the other ``torch.func`` transforms)."""

    def f(p: dict[str, Tensor]) -> Any:
        return functional_call(model, {**consts, **p}, args, kwargs)

    return cast("tuple[Any, Any]", jvp(f, (dict(primals),), (dict(tangents),)))  # no has_aux


class LinearizedModel(nn.Module):
    """``f_lin(x; θ) = f(x; θ_t) + J(x; θ_t)(θ − θ_t)``, trainable like the model itself.

    Built from a copy of ``model`` (``model`` is never modified): ``θ_t`` is the copy's trainable
    parameters at construction, stored as non-persistent buffers (they follow ``.to()`` but are not
    in ``state_dict()``); the copy's parameters become ``θ``, initialized to ``θ_t``.

    Names, order and shapes are the model's: ``named_parameters()``, ``named_buffers()`` (besides
    the anchor ``_conetool_anchor.*``) and ``state_dict()`` list exactly what the model lists, so an
    optimizer built over ``parameters()`` (or over the trainable ones) indexes its state like the
    standard run's optimizer, and ``state_dict()`` / :meth:`params_state_dict` is a checkpoint of
    the original architecture with ``θ`` in place of ``θ_t`` and the buffers at ``t``.

    ``forward(*args, **kwargs)`` takes the model's inputs, e.g. ``x`` of shape ``(batch, *input)``,
    and returns ``f_lin`` with the model's output shape, e.g. ``(batch, num_classes)``.

    .. warning::
        The network is **always evaluated in eval mode**: BatchNorm uses its running statistics at
        ``t`` and never updates them, dropout is off. ``.train()`` / ``.eval()`` set only this
        module's flag (for code that checks it) and never change an output. Buffers are part of the
        linearization point: ``load_state_dict`` with other buffers moves the point. Each call
        starts from the buffers, and from the tensors held as plain attributes of the modules,
        as they are: what it writes to them in place (a call counter) or assigns is dropped.

    The parameters that are trainable (``requires_grad``) at construction are ``θ``; which ones they
    are is fixed then. Frozen parameters and all buffers are constants.
    """

    # Declared for the type checker (nn.Module.__getattr__ would give Tensor | Module); set in
    # __init__, the network outside the module tree (object.__setattr__).
    _network: nn.Module
    _trainable_names: tuple[str, ...]
    _eval_modules: tuple[nn.Module, ...]
    _unchanged_buffers: frozenset[str]
    _reverse: bool

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"linearize() needs a torch.nn.Module, got {type(model).__name__}. Pass the network "
                "itself (for example the result of conetool.models.build_model)."
            )
        network = copy.deepcopy(model)
        clashes = sorted(_RESERVED & {*network._modules, *network._parameters, *network._buffers})
        if clashes:
            raise ModelError(
                f"the model has top-level attributes named {clashes}, which the linearized model "
                "uses itself. Rename them in the model, or wrap it: nn.Sequential(model)."
            )
        # Adopt the copy's top-level children, parameters and buffers: this module then has the
        # model's names (and its state_dict keys), while forward runs the copy's own forward.
        for name, child in network._modules.items():
            self.add_module(name, child)
        for name, param in network._parameters.items():
            self.register_parameter(name, param)
        for name, buffer in network._buffers.items():
            persistent = name not in network._non_persistent_buffers_set
            self.register_buffer(name, buffer, persistent=persistent)
        network.eval()
        # Stored outside nn.Module's registries: the copy is reached through the adopted children.
        object.__setattr__(self, "_network", network)
        self._eval_modules = tuple(network.modules())
        self._trainable_names = tuple(
            name for name, param in network.named_parameters() if param.requires_grad
        )
        self._unchanged_buffers = frozenset(unchanged_in_eval(network))
        # forward mode refused the network (a custom autograd.Function without a jvp, an
        # operation without a forward-mode derivative): J t by two reverse passes at once
        self._reverse = False
        anchor = nn.Module()
        for index, name in enumerate(self._trainable_names):
            theta_t = network.get_parameter(name).detach().clone()
            anchor.register_buffer(f"p{index}", theta_t, persistent=False)
        self.add_module(_ANCHOR, anchor.eval())

    def train(self, mode: bool = True) -> LinearizedModel:
        """Set this module's flag only: the network stays in eval mode (see the class warning)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        return self

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> LinearizedModel:
        super()._apply(fn, recurse)
        # Conversions may replace top-level tensors; keep the copy's slots pointing at ours.
        network = self._network
        for name in network._parameters:
            network._parameters[name] = self._parameters[name]
        for name in network._buffers:
            network._buffers[name] = self._buffers[name]
        return self

    def anchor_parameters(self) -> dict[str, Tensor]:
        """``θ_t``: the trainable parameters at the linearization point, by name (not copies)."""
        anchor = self.get_submodule(_ANCHOR)
        return {
            name: anchor.get_buffer(f"p{index}") for index, name in enumerate(self._trainable_names)
        }

    def params_state_dict(self) -> dict[str, Tensor]:
        """The original model's state dict with ``θ`` in place of ``θ_t`` and the buffers at ``t``.

        Built by the model's own ``state_dict()`` (its hooks run), so it loads with
        ``strict=True`` into a fresh model of the same architecture; loaded there, that model
        computes ``f(x; θ)``, the nonlinear network at ``θ``. Every tensor is a detached copy
        (tied weights become separate copies, as ``safetensors`` requires).
        """
        return {name: value.detach().clone() for name, value in self._network.state_dict().items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``f_lin`` at the current ``θ``: the model's output shape, e.g. ``(batch, num_classes)``."""
        for module in self._eval_modules:
            module.training = False
        anchor = self.anchor_parameters()
        primals: dict[str, Tensor] = {}
        tangents: dict[str, Tensor] = {}
        consts: dict[str, Tensor] = {}
        # Read the tensors from this module each call: torch.func.functional_call(self, ...) (the
        # eNTK engine) swaps them here, and the anchor and buffers follow .to().
        for name, param in self.named_parameters():
            if name in anchor:
                primals[name] = anchor[name]
                tangents[name] = param - anchor[name]
            else:
                consts[name] = param
        for name, buffer in self.named_buffers():
            if not name.startswith(_ANCHOR + "."):
                # a copy of a buffer the forward pass may update in place (a call counter): the
                # buffers are part of the linearization point, and each call starts from them
                consts[name] = buffer if name in self._unchanged_buffers else buffer.clone()
        # tensors held as plain attributes of the modules (self.count = torch.zeros(()), not a
        # registered buffer) are state too: each call gets its own copies of them, so that what
        # it writes in place or assigns is dropped, as it is for a buffer
        plain = plain_tensors(self._network)
        consts.update(evaluated_with(plain, list(plain)))
        f0, tangent, self._reverse = _f0_and_jvp(
            self._network, primals, tangents, args, kwargs, consts, self._reverse
        )
        if isinstance(f0, Tensor):
            return f0 + tangent
        leaves, spec = tree_flatten(f0)
        summed = [
            a + b if isinstance(a, Tensor) else a
            for a, b in zip(leaves, tree_flatten(tangent)[0], strict=True)
        ]
        return tree_unflatten(summed, spec)

    def extra_repr(self) -> str:
        count = sum(p.numel() for p in self.anchor_parameters().values())
        return f"linearized at θ_t ({count} trainable parameters); network in eval mode"


def linearize(model: nn.Module) -> LinearizedModel:
    """The linearized model of ``model`` at its current parameters (``θ_t``).

    Like neural-tangents' ``nt.linearize(f, params)``: returns ``f_lin`` with
    ``f_lin(x; θ) = f(x; θ_t) + J(x; θ_t)(θ − θ_t)``, as a :class:`LinearizedModel` whose
    parameters ``θ`` start at ``θ_t``. ``model`` is copied, never modified. The network is evaluated
    in eval mode (BatchNorm running statistics at ``t``, dropout off), whatever its mode.
    """
    return LinearizedModel(model)
