"""The public eNTK entry point: :func:`empirical_ntk` checks its arguments and picks an engine.

Pure: a model, its parameters and buffers and a batch of inputs go in, a kernel tensor comes out.
Nothing here touches the disk or prints. Definitions (shared/DESIGN.md, "Definitions"):

- ``f(x; θ) ∈ R^c`` is the model's output for one example, flattened; ``θ`` is every parameter with
  ``requires_grad`` (tied weights count once, as ``named_parameters()`` lists them once); frozen
  parameters and buffers (BatchNorm running statistics) are fixed inputs.
- The model is evaluated in eval mode (BatchNorm uses running statistics, dropout is off), so each
  output depends on its example only (:func:`~conetool.ntk_checks.check_per_example` checks it
  before computing).
- ``J(x) = ∂f(x; θ)/∂θ`` has shape ``(c, p)``.
- ``kind="trace"``: ``H[i, j] = Σ_k <∂f_k(x_i)/∂θ, ∂f_k(x_j)/∂θ>``, shape ``(n, n)``; a plain sum
  over the logits, not a mean.
- ``kind="full"``: ``H[i, a, j, b] = <∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ>``, shape ``(n, c, n, c)``,
  example-major; ``H.reshape(n * c, n * c)`` is the Gram matrix of the rows of the stacked Jacobian.
- ``kind="sum"``: the kernel of the scalar ``g = Σ_k f_k``, shape ``(n, n)``.
- Cross kernels: with a second input set ``x2`` (``n2`` examples), ``x_i`` runs over ``x1`` and
  ``x_j`` over ``x2`` in the same formulas: ``(n1, n2)`` for ``trace`` and ``sum``,
  ``(n1, c, n2, c)`` for ``full``; ``K(x1, x1)`` is the symmetric kernel.

Two engines compute the rows of the Jacobian (``method``); both give the same kernel:

- ``"structured"`` (:mod:`conetool.ntk_structured`, the default through ``"auto"``): one batched
  forward pass records each layer's inputs and one batched backward pass per set of cotangents its
  output cotangents; Linear layers are contracted from those factors without forming per-example
  gradients, convolutions form them with one batched matrix product, other layers use torch.func on
  that layer alone, and anything it cannot see falls back to the reference path for exactly those
  parameters. ``"auto"`` uses it when the layers it contracts from their factors hold at least
  half of the parameters.
- ``"jacobian"`` (the reference, :mod:`conetool.ntk_reference`): ``vmap`` over examples of ``vjp``.

The cotangents are the identity rows for ``full``, groups of logits for ``trace``, the all-ones
vector for ``sum``. The rows of every parameter tensor with per-example gradients are laid side by
side and contracted in one wide product per pair of blocks, in float32 pieces summed in float64;
layers kept as factors get one product each (:mod:`conetool.ntk_terms`). For a symmetric kernel
only products on or above the block diagonal are computed, and the product of a block of 128 rows
or more with itself uses BLAS ``syrk`` on the CPU, reading the rows in place (half the work of a
product; PyTorch's own MKL where it has one, else SciPy's BLAS: :mod:`conetool.blas_syrk`). On
Linux (glibc) memory freed during the call is kept for reuse until it returns
(:mod:`conetool.heap`).

The memory budget decides the schedule (:mod:`conetool.ntk_schedule`): one pass when the rows of
all ``n`` examples fit (``trace`` splits its logits into as few groups as fit), else resident panels
of examples contracted with streamed blocks of the later examples (about ``n^2 / (2 r)`` row
computations for panels of ``r`` examples); a cross kernel keeps panels of ``x1`` and streams
``x2``. The plan uses 90% of the budget, counting the resident rows, one call in flight (its
activations, estimated from the tensors the forward pass of one example saves for the backward
pass, its rows and one transient copy of them), the kernel being accumulated and copies of the
parameters. The Python process itself (the torch library, the model, the data) is not counted: on
resnet20 with n = 1024 and ``max_memory="4GiB"`` the reference engine's process grows by 3.4 GiB
over its 0.8 GiB at the start.

Time: the structured engine is the fast path (see the README's benchmark table); the reference is
its exact check, and slow on convolutions on a CPU (:mod:`conetool.ntk_reference`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import ntk_schedule
from .attention import composite_attention
from .choices import Dtype, Kind, Method, choice
from .device import resolve_device
from .errors import ConetoolError, MemoryBudgetError, ModelError
from .heap import kept_freed_memory
from .library_call import library_call_on_model
from .low_precision import is_low_precision
from .ntk_buffers import (
    copies_by_name,
    evaluated_with,
    plain_tensors,
    unchanged_in_eval,
    updated_in_place,
    updating_buffers,
)
from .ntk_checks import (
    ExamplesInteractError,
    UnreachedParametersWarning,
    check_branches,
    check_independence,
    check_modules,
    check_per_example,
    eval_mode,
    logits_of_batch,
    perturbed,
    unreached_parameters,
    unreached_warning,
)
from .ntk_failures import FORWARD_ERRORS, explained, input_refused
from .ntk_memo import EngineMemo, Learned, signature
from .ntk_precision import no_tf32
from .ntk_range import KernelUnderflowError, NonFiniteKernelError, check_range, outputs_move
from .ntk_reference import JacobianRows
from .ntk_structured import StructuredRows
from .ntk_tuning import tuning_for
from .units import format_bytes, is_auto, parse_memory

__all__ = [
    "KINDS",
    "METHODS",
    "EngineMemo",
    "KernelUnderflowError",
    "MemoryBudgetError",
    "NonFiniteKernelError",
    "check_per_example",
    "default_memory_budget",
    "empirical_ntk",
    "is_auto",
    "parse_memory",
    "resolve_device",
]

KINDS = tuple(k.value for k in Kind)
METHODS = tuple(m.value for m in Method)

# The default CPU budget: this fraction of MemAvailable, at most _CPU_CAP bytes.
_CPU_FRACTION = 0.5
_CPU_CAP = 64 * 2**30
_CUDA_FRACTION = 0.8
# method="auto" takes the structured engine when at least this share of the parameters is
# contracted from factors (Linear layers, convolutions on small feature maps). Below, per-example
# convolution gradients dominate both engines, and the reference computes them faster (measured
# on a 2-core CPU, resnet20 at n = 1024 under 4 GiB: 46.0 s against 49.4 s, the fastest of three
# processes each, README benchmark run).
# Off the CPU auto always takes the structured engine (the GPU tuning's auto_structured, with its
# measurement: conetool.ntk_tuning).
_AUTO_KRON_SHARE = 0.5


def _refuse_meta_weights(model: nn.Module) -> None:
    """A :class:`ModelError` naming the first parameter or buffer of ``model`` on the meta device
    (shapes without values: a model built under ``torch.device("meta")``), and how to give it
    weights; nothing for a model whose tensors all hold values."""
    for what, tensors in (
        ("parameter", model.named_parameters()),
        ("buffer", model.named_buffers()),
    ):
        for name, tensor in tensors:
            if tensor.is_meta:
                raise ModelError(
                    f"the model's {what} '{name}' is on the meta device (a shape without values: "
                    "a model built under torch.device('meta') or with device='meta'), but the "
                    "eNTK needs its weights. Give it values first: model.to_empty(device='cpu') "
                    "then model.load_state_dict(weights), or build it on 'cpu'."
                )


@library_call_on_model
def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    kind: str = "trace",
    max_memory: int | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    on_block: Callable[[int, int], None] | None = None,
    check: bool = True,
    method: str = "auto",
    memo: EngineMemo | None = None,
    warn: Callable[[str], None] | None = None,
) -> Tensor:
    """The empirical NTK of ``model`` on ``x1`` (or between ``x1`` and ``x2``), exact, within a
    memory budget.

    Args:
        model: any module mapping a batch ``(m, *shape)`` to outputs ``(m, c)`` (trailing
            dimensions are flattened into ``c``). It is evaluated in eval mode; each module's mode
            is restored on return. Its parameters and buffers are not modified.
        x1: ``(n1, *shape)``, the probe examples.
        x2: ``(n2, *shape)``, a second input set for the cross kernel ``K(x1, x2)``; ``None``
            (default) for the symmetric kernel ``K(x1, x1)``, computed on its own faster path
            (half the products).
        kind: the kernel and its shape, ``n2 = n1`` without ``x2``: ``"trace"`` ->
            ``(n1, n2)``, ``"full"`` -> ``(n1, c, n2, c)``, ``"sum"`` -> ``(n1, n2)``; see the
            module docstring for the definitions.
        max_memory: budget in bytes or a string like ``"4GiB"`` (:func:`parse_memory`); ``None``
            or ``"auto"``: :func:`default_memory_budget` of the device.
        device: ``"auto"`` (default: CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:k"``.
        dtype: compute dtype, float32 or float64; default the dtype of the model's trainable
            parameters, and float32 for a model held in fewer than 32 bits (float16, bfloat16:
            its kernel in its own dtype would keep few digits, :mod:`conetool.low_precision`).
            Floating parameters, buffers and inputs are cast to it, as copies: the model keeps its
            own (``torch.float64``, or ``"float64"`` as ``kernels`` takes it, for exact
            kernels). A dtype of fewer than 32 bits is refused.
        on_block: called as ``on_block(done, total)`` after each block of the schedule (a block of
            Jacobian rows computed and contracted with every resident block it pairs with). Off
            the CPU, on a call that sets up the structured engine, the blocks are computed a
            second time (``done`` counting from 1 again) when its check, which runs after them
            there, moves layers to the fallback path.
        check: run :func:`check_per_example` (structural and numeric) before computing.
        method: ``"structured"`` (per-layer contraction, :mod:`conetool.ntk_structured`),
            ``"jacobian"`` (the reference: ``vmap`` over examples of ``vjp``, every parameter), or
            ``"auto"`` (default): structured when layers it contracts from their factors (Linear
            layers, convolutions on small feature maps) hold at least half of the parameters
            (MLPs, LeNet-5, VGG-16), else jacobian (ResNet-20, where per-example convolution
            gradients dominate and the reference computes them faster on a CPU); always
            structured on a GPU. Both give the same kernel.
        memo: an :class:`~conetool.ntk_memo.EngineMemo` shared by the calls of a run: the
            independence check, the structured engine's set-up and ``auto``'s choice run on the
            first call of each architecture and input shape only (:mod:`conetool.ntk_memo`).
        warn: receives what the call warns of; default :func:`warnings.warn` (category
            :class:`~conetool.ntk_checks.UnreachedParametersWarning`). With ``check``, on the
            first call of each signature of ``memo`` (every call without one): trainable
            parameters that no gradient of the outputs reaches (used under ``torch.no_grad()``,
            through ``.detach()`` or ``.data``, or never used), named, whose contribution the
            kernel leaves out (:func:`~conetool.ntk_checks.unreached_parameters`: one more
            forward and backward pass of two examples). Parameters with ``requires_grad=False``
            are not named, nor ones whose gradient is zero.

    Returns:
        The kernel on the CPU: float64 when computing in float64, else float32. Products are
        computed in float32 pieces of at most 4,096 columns (32,768 for the CPU's ``syrk``) and
        summed in float64 (:mod:`conetool.ntk_precision`); TF32 is off during the computation.

    Raises:
        MemoryBudgetError: the budget cannot hold even one example (the message gives the
            minimum), or CUDA ran out of memory.
        NonFiniteKernelError: the kernel has NaN or infinite entries, or, computed in float32,
            entries beyond float32's largest number (3.4e38; :mod:`conetool.ntk_range`).
        KernelUnderflowError: computed in float32, the kernel's largest entry is below the number
            of trainable parameters times 1.2e-38, float32's smallest normal number: it is made of
            subnormal products, which keep fewer digits (:mod:`conetool.ntk_range`).
        ModelError: inputs the model cannot take (``x1`` of shape ``(3, 5)`` for an
            ``nn.Linear(2, 2)``), naming their shape and what its forward pass of one raised;
            a parameter or buffer on the meta device (no weights), naming it.
        ConetoolError: an unknown ``kind`` or ``dtype`` name, a ``dtype`` that is not a
            floating-point one or has fewer than 32 bits, a ``model`` that is no ``nn.Module``,
            inputs that are no tensors (a numpy array: ``torch.as_tensor`` it) or meta tensors
            (no values), a ``memo`` that is no ``EngineMemo``, a model without trainable
            parameters, ``x2`` whose examples do not have ``x1``'s shape, or examples that
            interact (see :func:`check_per_example`).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> empirical_ntk(model, torch.randn(5, 4), device="cpu").shape
        torch.Size([5, 5])
        >>> empirical_ntk(model, torch.randn(5, 4), kind="full", device="cpu").shape
        torch.Size([5, 3, 5, 3])
        >>> x1, x2 = torch.randn(5, 4), torch.randn(2, 4)  # a cross kernel K(x1, x2)
        >>> empirical_ntk(model, x1, x2, device="cpu").shape
        torch.Size([5, 2])
        >>> empirical_ntk(model, x1, x2, kind="full", device="cpu").shape
        torch.Size([5, 3, 2, 3])
    """
    kind = choice(Kind, kind, "kind").value
    method = choice(Method, method, "--method").value
    # "float64" as kernels(dtype=...) takes it (a torch.dtype itself passes as it is).
    compute = (
        dtype
        if dtype is None or isinstance(dtype, torch.dtype)
        else {Dtype.float32: torch.float32, Dtype.float64: torch.float64}[
            choice(Dtype, dtype, "dtype")
        ]
    )
    if not isinstance(model, nn.Module):
        raise ConetoolError(
            f"empirical_ntk needs a torch.nn.Module as model, got {type(model).__name__}. Pass "
            "the network itself (a function of the inputs has no parameters to differentiate)."
        )
    if compute is not None and not compute.is_floating_point:
        raise ConetoolError(
            f"dtype={compute} is not a floating-point dtype: the eNTK is computed in one. Pass "
            "dtype=torch.float64 (or 'float64') for exact kernels, torch.float32, or leave dtype "
            "out for the dtype of the model's parameters."
        )
    if compute is not None and is_low_precision(compute):
        raise ConetoolError(
            f"dtype={compute}: the eNTK is computed in float32 or float64, not in fewer than 32 "
            "bits (whose kernels keep few digits, and are zero for small outputs). Pass "
            "dtype=torch.float32, or leave dtype out: a float16 or bfloat16 model's kernel is "
            "then computed in float32 from its weights upcast."
        )
    if memo is not None and not isinstance(memo, EngineMemo):
        raise ConetoolError(
            f"memo={memo!r} is not a conetool.EngineMemo. Pass memo=conetool.EngineMemo() (one "
            "per architecture, shared by its calls), or leave memo out."
        )
    for name, given in (("x1", x1), ("x2", x2)):
        if given is not None and not isinstance(given, Tensor):
            raise ConetoolError(
                f"empirical_ntk needs {name} as a torch.Tensor, got {type(given).__name__}. Pass "
                f"torch.as_tensor({name}) (examples along the first dimension)."
            )
    for name, given in (("x1", x1), ("x2", x2)):
        if isinstance(given, Tensor) and given.is_meta:
            raise ConetoolError(
                f"{name} is a meta tensor (shape {tuple(given.shape)}, no values), but the eNTK "
                f"needs the examples' values. Pass {name} as a tensor with data, on 'cpu' or "
                "'cuda' (not made with device='meta')."
            )
    _refuse_meta_weights(model)
    if not isinstance(x1, Tensor) or x1.dim() < 1 or x1.shape[0] < 1:
        raise ConetoolError("empirical_ntk needs inputs of shape (n, ...) with n >= 1 examples.")
    if x2 is not None:
        if not isinstance(x2, Tensor) or x2.dim() < 1 or x2.shape[0] < 1:
            raise ConetoolError(
                "empirical_ntk needs a second input set x2 of shape (n2, ...) with n2 >= 1 "
                "examples, or x2=None for the kernel of x1 with itself."
            )
        if x2.shape[1:] != x1.shape[1:]:
            raise ConetoolError(
                f"the examples of x2 have shape {tuple(x2.shape[1:])} but those of x1 have shape "
                f"{tuple(x1.shape[1:])}: a cross kernel needs two sets of the same model inputs."
            )
    device = resolve_device(device)
    budget = (
        default_memory_budget(device)
        if max_memory is None or is_auto(max_memory)
        else parse_memory(max_memory)
    )
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ConetoolError(
            "the model has no trainable parameters (every parameter has requires_grad=False), so "
            "its eNTK is zero. Unfreeze the parameters the kernel should be taken with respect to."
        )
    held = next(iter(trainable.values())).dtype
    # a float16 or bfloat16 model: computed in float32, from copies of its weights upcast (cast)
    dtype = compute if compute is not None else torch.float32 if is_low_precision(held) else held
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def cast(t: Tensor) -> Tensor:
        t = t.detach()
        t = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        # A tensor made under torch.inference_mode() cannot enter autograd: a copy can.
        return t.clone() if t.is_inference() else t

    # The engine differentiates: a caller's torch.inference_mode() is suspended for the call.
    with (
        torch.inference_mode(False),
        eval_mode(model),
        no_tf32(),
        torch.no_grad(),
        kept_freed_memory(),
        composite_attention(),
    ):
        if check:
            check_modules(model)
        params = {name: cast(p) for name, p in trainable.items()}
        consts = {name: cast(p) for name, p in model.named_parameters() if not p.requires_grad}
        # Copies of the buffers that a forward pass in eval mode might update, so that the model's
        # stay as they are (BatchNorm's, which eval mode leaves alone, are not copied).
        kept = unchanged_in_eval(model)
        consts.update(
            {
                name: cast(b) if name in kept else cast(b).clone()
                for name, b in model.named_buffers()
            }
        )
        # Tensors held as plain attributes of the modules (self.count = torch.zeros(()), not a
        # registered buffer) are state too: every evaluation is handed copies of them, so that
        # what it writes or assigns reaches neither the model nor the next evaluation.
        # (on the device, detached, of their own dtype: model.double() leaves such an attribute
        # as it was, and the model computes with it so)
        plain = copies_by_name(
            plain_tensors(model).items(), lambda t: t.detach().to(device, copy=True)
        )
        consts.update(plain)
        # A cross kernel's row source sees both sets as one: examples 0:n1 are x1, the rest x2.
        x = cast(x1) if x2 is None else torch.cat([cast(x1), cast(x2)])
        n2 = None if x2 is None else x2.shape[0]
        # The buffers and attributes a forward pass updates in place (a call counter): every
        # evaluation gets its own copy of them, so that each starts from the model's state
        # (ntk_buffers).
        updated = updated_in_place(
            lambda state, batch: functional_call(model, (params, {**consts, **state}), (batch,)),
            {
                **{name: consts[name] for name, _ in model.named_buffers() if name not in kept},
                **plain,
            },
            x[:1],
        )

        def forward(batch: Tensor, p: dict[str, Tensor] = params) -> Tensor:
            # Each evaluation gets its own copy of the examples: a model that changes its input
            # in place (x.sub_(mean)) changes neither the probe set nor the caller's tensor.
            # A forward that returns its logits inside an object (a dict's "logits", a Hugging
            # Face ModelOutput, a dataclass's .logits) is read for them here: the caller's model
            # is left as it is.
            # It must hold one row of floating-point logits per example (logits_of_batch).
            state = evaluated_with(consts, updated)
            return logits_of_batch(functional_call(model, (p, state), (batch.clone(),)), batch)

        key = signature(model, x, n2, kind, method, device, dtype) if memo is not None else None
        learned = memo.find(key) if memo is not None and key is not None else None
        try:
            with updating_buffers(updated):
                kernel, found = _compute(
                    model,
                    forward,
                    params,
                    {**params, **consts},
                    x,
                    kind,
                    budget,
                    on_block,
                    method,
                    n2,
                    learned,
                    independence=check and x.shape[0] >= 2 and learned is None,
                )
        except ExamplesInteractError as exc:
            if not updated:
                raise
            raise ModelError(f"{exc} {_updated_buffers_mix(updated, set(plain))}") from exc
        except torch.OutOfMemoryError as exc:
            raise MemoryBudgetError(
                f"the device ran out of memory computing the eNTK with a budget of "
                f"{format_bytes(budget, digits=2)} (--max-memory). Pass a smaller --max-memory, or "
                "free memory on the device."
            ) from exc
        except FORWARD_ERRORS as exc:  # one whose cause is known (activation checkpointing...)
            known = explained(exc) if isinstance(exc, RuntimeError) else None
            # else inputs the model cannot take (x of shape (3, 5) for an nn.Linear(2, 2)): one
            # plain forward pass tells, on this failure only (the engines pay for none)
            named = known or input_refused(forward, x, tuple(x1.shape))
            if named is None:
                raise
            raise named from exc
        # in the block: a float32 kernel of zeros is told from a zero eNTK by one gradient
        check_range(
            kernel,
            float32=out_dtype == torch.float32,  # the dtype returned, whatever was computed
            parameters=sum(p.numel() for p in params.values()),
            outputs_move=lambda: outputs_move(forward, params, x, kind=kind, n2=n2),
            non_finite_inputs=lambda: _non_finite_inputs(x1, x2),
        )
        # trainable parameters the kernel leaves out: once per signature, after a kernel
        if check and learned is None and (unreached := unreached_parameters(forward, params, x)):
            message = unreached_warning(unreached)
            if warn is None:
                warnings.warn(message, UnreachedParametersWarning, stacklevel=3)
            else:
                warn(message)
    # Only a call that gave a kernel teaches the memo: its checks (the independence check, which
    # NaN outputs leave undecided) run again on the next call otherwise.
    if memo is not None and key is not None and learned is None:
        memo.remember(key, found)
    return kernel.to(device="cpu", dtype=out_dtype)


def _non_finite_inputs(x1: Tensor, x2: Tensor | None) -> str | None:
    """``x1 holds NaN or infinite values (3 examples, the first at index 4)``, for the inputs
    that hold any (floating inputs only); None when they are all finite."""
    said = []
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None or not x.is_floating_point():
            continue
        bad = (~torch.isfinite(x.detach())).reshape(x.shape[0], -1).any(dim=1).nonzero()
        if bad.numel():
            count = bad.numel()
            plural = "s, the first" if count > 1 else ""
            said.append(
                f"{name} holds NaN or infinite values ({count} example{plural} at index "
                f"{int(bad[0])})"
            )
    return "; ".join(said) or None


def _compute(
    model: nn.Module,
    forward: Callable[..., Tensor],
    params: dict[str, Tensor],
    tensors: dict[str, Tensor],
    x: Tensor,
    kind: str,
    budget: int,
    on_block: Callable[[int, int], None] | None,
    method: str,
    n2: int | None,
    learned: Learned | None = None,
    independence: bool = False,
) -> tuple[Tensor, Learned]:
    """The kernel as a float64 tensor on ``x``'s device; see :func:`empirical_ntk`. With ``n2``,
    the cross kernel between ``x[:-n2]`` and ``x[-n2:]``. ``learned``: an earlier call's set-up
    and choice for this signature, reused; returned with the kernel, this call's.
    ``independence``: run :func:`check_independence` on ``x[:2]`` first (on the outputs the
    structured engine's set-up computed, where it ran)."""
    n = x.shape[0] if n2 is None else x.shape[0] - n2
    pairs = None if n2 is None else n * n2
    source: ntk_schedule.RowSource | None = None
    structured: StructuredRows | None = None
    later = False  # the structured set-up's check left for after the blocks are dispatched
    looped = learned is not None and learned.looped  # vmap failed on an earlier call: not again
    if method != "jacobian" and (learned is None or learned.engine == "structured"):
        layout = learned.layout if learned is not None else None
        # auto on a CPU chooses from the layers that pass the check; elsewhere the structured
        # engine is used whatever the check finds, so the check may come after the blocks.
        whatever_the_check = method == "structured" or tuning_for(x.device).auto_structured
        later = layout is None and _checks_later(x.device) and whatever_the_check
        structured = StructuredRows(
            model,
            forward,
            params,
            tensors,
            x,
            kind,
            pairs=pairs,
            layout=layout,
            check_later=later,
            looped=looped,
        )
        if whatever_the_check or structured.kron_share() >= _AUTO_KRON_SHARE:
            source = structured
    if independence and not later:
        _check_independence(forward, params, x, structured)
        if source is not None:  # batched passes: a branch on the batch's values changes them
            check_branches(forward, x)
    if source is None:
        source = JacobianRows(forward, params, x, kind, model, looped=looped)
    dtype = next(iter(params.values())).dtype

    def computed() -> Tensor:
        assert source is not None
        c = source.c
        what = (
            f"one example's {'Jacobian' if kind == 'full' else 'Jacobian row'} "
            f"({c if kind == 'full' else 1} x {sum(t.numel() for t in params.values()):,} "
            "parameters)"
        )
        schedule = ntk_schedule.plan(source, kind, n, c, budget, what, x.device, n2=n2)
        return ntk_schedule.run(source, schedule, kind, n, c, dtype, x.device, on_block, n2=n2)

    if later:
        assert structured is not None
        kernel = _computed_then_checked(structured, computed, forward, x, independence)
    else:
        kernel = computed()
    if source is structured and structured is not None:
        return kernel, Learned(
            engine="structured", layout=structured.layout(), looped=structured.looped
        )
    assert isinstance(source, JacobianRows)
    return kernel, Learned(engine="jacobian", looped=source.looped)


def _updated_buffers_mix(updated: list[str], plain: set[str]) -> str:
    """What an update of the buffers ``updated`` in place (those in ``plain`` tensors held as plain
    attributes) has to do with examples that interact, and the fix."""
    said = []
    for names, what in (
        ([name for name in updated if name not in plain], "buffer"),
        ([name for name in updated if name in plain], "tensor attribute"),
    ):
        if names:
            listed = ", ".join(f"'{name}'" for name in names)
            said.append(f"the {what}{'' if len(names) == 1 else 's'} {listed}")
    attribute = (
        " (a plain attribute: hold it with self.register_buffer(name, tensor) to have it saved "
        "and moved with the model)"
        if any(name in plain for name in updated)
        else ""
    )
    return (
        f"The model's forward pass updates {' and '.join(said)} in place in eval mode{attribute}: "
        "an update from the batch (a running statistic kept by hand) that the same call reads "
        "mixes the examples. Update it only in training (if self.training: ...), and read it as "
        "it is in eval mode, as BatchNorm does with its running statistics."
    )


def _check_independence(
    forward: Callable[..., Tensor],
    params: dict[str, Tensor],
    x: Tensor,
    structured: StructuredRows | None,
) -> None:
    """:func:`check_independence` of ``x[:2]`` at the perturbed weights the structured set-up
    checked (:func:`~conetool.ntk_checks.perturbed`): on the outputs that check computed where it
    ran, else from three forward passes of its own at those weights."""
    outputs = structured.pair_outputs if structured is not None else None
    if outputs is not None:
        check_independence(forward, x[:2], outputs)
        return
    at = perturbed(params)
    check_independence(lambda batch: forward(batch, at), x[:2])


def _checks_later(device: torch.device) -> bool:
    """Whether the structured engine's set-up check runs after the blocks are dispatched rather
    than before (:mod:`conetool.ntk_structured`): off the CPU, where the device computes the blocks
    while the host runs the check's few hundred small calls (the tuning's ``checks_later``,
    :mod:`conetool.ntk_tuning`)."""
    return tuning_for(device).checks_later


def _computed_then_checked(
    structured: StructuredRows,
    computed: Callable[[], Tensor],
    forward: Callable[..., Tensor],
    x: Tensor,
    independence: bool,
) -> Tensor:
    """The kernel of ``computed()`` with the set-up check run after its blocks were dispatched
    (and then the independence check, on the outputs the set-up check computed). When the check
    moves layers to the fallback path, the kernel was computed with layers this engine does not
    reconstruct exactly: it is computed again with the new layout. A layer the check would have
    moved may also make the first computation fail (per-example gradients it cannot give, or a
    budget too small for the layout before the check, whose minimum the layout after it decides);
    the check then decides."""
    failure: Exception | None = None
    try:
        kernel: Tensor | None = computed()
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, MemoryBudgetError) as exc:
        kernel, failure = None, exc
    changed = structured.check_later_found_changes()
    if independence:
        _check_independence(forward, structured.params, x, structured)
        check_branches(forward, x)
    if changed:
        del kernel
        return computed()
    if kernel is None:
        assert failure is not None
        raise failure
    return kernel


def default_memory_budget(device: str | torch.device | None = None) -> int:
    """The default ``--max-memory`` for ``device``, in bytes.

    CPU: half of ``MemAvailable`` from ``/proc/meminfo`` (elsewhere half of the free physical
    memory that ``os.sysconf`` reports, or 4 GiB when neither is known), at most 64 GiB. CUDA: 80%
    of the device's free memory (``torch.cuda.mem_get_info``), counting the memory PyTorch's
    caching allocator holds unused as free.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Memory PyTorch's caching allocator holds but does not use (a previous kernel's blocks)
        # is free to this process, though not to the driver: without it, every kernel after the
        # first of a run would get a smaller budget.
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int((free + max(0, cached)) * _CUDA_FRACTION)
    available = _available_ram()
    return int(min(available * _CPU_FRACTION, _CPU_CAP))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 8 * 2**30
