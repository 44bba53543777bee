"""What the eNTK engine learns about a model once and reuses for every checkpoint of a run.

Before computing, :func:`conetool.ntk.empirical_ntk` checks that the model's examples are
independent (three forward passes, or none where the structured engine's check computed those
outputs), and with ``method="structured"`` or ``"auto"`` the structured engine hooks the model,
checks on two examples which layers it reconstructs exactly (one batched forward and backward
pass, one ordinary forward and backward pass per example; off the CPU after the blocks are
dispatched), measures the bytes per example and chooses each layer's kron/dense form; ``auto``
then picks an engine. None of this depends on the weights, only on the architecture, the input
shape, the kind, the device and the dtype: the checks run at the weights plus a small seeded
perturbation (:func:`conetool.ntk_checks.perturbed`), so that a first checkpoint whose weights hide
something (a zero-initialised head makes every gradient behind it zero and every output its bias)
cannot pass them for the whole run. Yet it used to run before every kernel: on a GPU it is
host time and kernel launches between kernels (issue 15), and ``auto`` built the structured set-up
only to throw it away when it picked the reference engine.

An :class:`EngineMemo` passed to every call of a run (``empirical_ntk(..., memo=memo)``) keeps
those findings per *signature* (:func:`signature`): the module tree (names, types and
``extra_repr``: a convolution's stride and padding), every
parameter's and buffer's name, shape and ``requires_grad``, the inputs' shape, the kind, the
method, the device and the dtype. A call whose signature it has seen skips the independence check,
skips the structured engine's check and measurements (its layout is restored from the memo), and
uses the engine chosen the first time, and where ``vmap`` over examples failed on the model
(nn.LSTM, a custom autograd.Function without a vmap rule) goes to ordinary autograd without
trying ``vmap`` again. A call with another signature (a new architecture, another
probe size, the cross kernel beside the probe kernel) learns its own entry. The structural check
of each module's mode (BatchNorm in training mode, dropout on) still runs on every call: it is
cheap and depends on the model object, not on its architecture.

Pure bookkeeping: no tensors are held, only names, modes and byte counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["EngineMemo", "Learned", "StructuredLayout", "signature"]

Signature = tuple[object, ...]


@dataclass(frozen=True)
class StructuredLayout:
    """The structured engine's set-up, as its check and measurements left it.

    ``modes``: hooked layer name -> how its rows are formed (``kron``, ``dense``, ``norm``,
    ``local``), for the layers that passed the check; ``fallback``: the parameters computed by the
    reference path; ``c``: outputs per example; ``sizes``: the bytes per example that the schedule
    plans with (:meth:`conetool.ntk_structured.StructuredRows.resident` and friends).
    """

    modes: dict[str, str]
    fallback: tuple[str, ...]
    c: int
    sizes: dict[str, int]
    kron_share: float


@dataclass
class Learned:
    """What one signature's first call found: ``engine`` (``structured`` or ``jacobian``),
    when the structured engine was set up its ``layout``, and ``looped``: whether ``vmap`` over
    examples of ``vjp`` failed on the model (nn.LSTM, a custom autograd.Function without a vmap
    rule: :func:`conetool.ntk_reference.vmapped_or_looped`), so that the calls after it compute
    those per-example gradients by ordinary autograd without trying ``vmap`` again."""

    engine: str
    layout: StructuredLayout | None = None
    looped: bool = False


@dataclass
class EngineMemo:
    """Findings per signature, for the calls of one run (see the module docstring).

    ``calls`` counts the calls that used it and ``reused`` those that found their signature, so a
    caller (or a test) can see that the set-up ran once. ``last_engine`` is the engine of the
    last call that completed its set-up (what ``auto`` picked for it): ``conetool kernels``
    records it with each kernel.

    >>> memo = EngineMemo()
    >>> model = torch.nn.Linear(4, 3)
    >>> from conetool.ntk import empirical_ntk
    >>> for _ in range(3):
    ...     _ = empirical_ntk(model, torch.randn(5, 4), device="cpu", memo=memo)
    >>> memo.calls, memo.reused, memo.engines()
    (3, 2, ['structured'])
    """

    entries: dict[Signature, Learned] = field(default_factory=dict)
    calls: int = 0
    reused: int = 0
    last_engine: str | None = None

    def find(self, key: Signature) -> Learned | None:
        """The entry of ``key``, counting the call (its engine is the call's: ``last_engine``)."""
        self.calls += 1
        found = self.entries.get(key)
        self.last_engine = None if found is None else found.engine
        if found is not None:
            self.reused += 1
        return found

    def remember(self, key: Signature, learned: Learned) -> None:
        """Keep what the first call of ``key`` found (its engine is the call's)."""
        self.entries[key] = learned
        self.last_engine = learned.engine

    def engines(self) -> list[str]:
        """The engines chosen, one per signature seen, in the order first seen."""
        return [learned.engine for learned in self.entries.values()]


def signature(
    model: nn.Module,
    x: Tensor,
    n2: int | None,
    kind: str,
    method: str,
    device: torch.device,
    dtype: torch.dtype,
) -> Signature:
    """The key of an :class:`EngineMemo` entry: everything the set-up depends on but the weights.

    ``x`` is the engine's whole input ``(n, *shape)`` (a cross kernel's two sets concatenated),
    ``n2`` the second set's size or ``None``.
    """
    modules = tuple(
        (name, type(module).__qualname__, module.extra_repr())  # extra_repr: stride, padding...
        for name, module in model.named_modules()
    )
    params = tuple(
        (name, tuple(p.shape), p.requires_grad, p.dtype) for name, p in model.named_parameters()
    )
    buffers = tuple((name, tuple(b.shape), b.dtype) for name, b in model.named_buffers())
    return (
        modules,
        params,
        buffers,
        tuple(x.shape),
        n2,
        kind,
        method,
        str(device),
        dtype,
    )
