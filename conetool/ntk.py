"""The eNTK engine: exact empirical Neural Tangent Kernels under a memory budget.

Pure: a model, its parameters and buffers and a batch of inputs go in, a kernel tensor comes out.
Nothing here touches the disk or prints. Definitions (shared/DESIGN.md, "Definitions"):

- ``f(x; θ) ∈ R^c`` is the model's output for one example, flattened; ``θ`` is every parameter with
  ``requires_grad`` (tied weights count once, as ``named_parameters()`` lists them once); frozen
  parameters and buffers (BatchNorm running statistics) are fixed inputs.
- The model is evaluated in eval mode (BatchNorm uses running statistics, dropout is off), so each
  output depends on its example only (:func:`check_per_example` checks it before computing).
- ``J(x) = ∂f(x; θ)/∂θ`` has shape ``(c, p)``.
- ``kind="trace"``: ``H[i, j] = Σ_k <∂f_k(x_i)/∂θ, ∂f_k(x_j)/∂θ>``, shape ``(n, n)``; a plain sum
  over the logits, not a mean.
- ``kind="full"``: ``H[i, a, j, b] = <∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ>``, shape ``(n, c, n, c)``,
  example-major; ``H.reshape(n * c, n * c)`` is the Gram matrix of the rows of the stacked Jacobian.
- ``kind="sum"``: the kernel of the scalar ``g = Σ_k f_k``, shape ``(n, n)``.

Two engines compute the rows of the Jacobian (``method``); both give the same kernel:

- ``"structured"`` (:mod:`conetool.ntk_structured`, the default through ``"auto"``): one batched
  forward pass records each layer's inputs and one batched backward pass per set of cotangents its
  output cotangents; Linear layers are contracted from those factors without forming per-example
  gradients, convolutions form them with one batched matrix product, other layers use torch.func on
  that layer alone, and anything it cannot see falls back to the reference path for exactly those
  parameters. ``"auto"`` uses it when the layers it contracts from their factors hold at least
  half of the parameters.
- ``"jacobian"`` (the reference, :class:`_JacobianRows`): ``vmap`` over examples of ``vjp`` (one
  forward pass per example, and one reverse pass ``vmap``-ed over a set of cotangent vectors), rows
  kept per parameter tensor, never concatenated into a ``p``-wide matrix.

The cotangents are the identity rows for ``full``, groups of logits for ``trace``, the all-ones
vector for ``sum``. Rows are contracted with one matrix product per parameter tensor (or layer),
summed in float64; only products on or above the block diagonal are computed, and the product of a
block of 128 rows or more with itself uses BLAS ``syrk`` on the CPU (half the work of a product;
SciPy's BLAS, which comes with scikit-learn).

The memory budget decides the schedule (:mod:`conetool.ntk_schedule`): one pass when the rows of
all ``n`` examples fit (``trace`` splits its logits into as few groups as fit), else resident panels
of examples contracted with streamed blocks of the later examples (about ``n^2 / (2 r)`` row
computations for panels of ``r`` examples). The plan uses 90% of the budget, counting the resident
rows, one call in flight (its activations, estimated from the tensors the forward pass of one
example saves for the backward pass, its rows and one transient copy of them), the kernel being
accumulated and copies of the parameters. The Python process itself (the torch library, the model,
the data) is not counted: on resnet20 with n = 1024 and ``max_memory="4GiB"`` the reference engine's
process grows by 3.4 GiB over its 0.8 GiB at the start.

Time: the reference engine costs what ``vmap(jacrev)`` costs, and on a CPU per-example gradients of
convolutions under ``vmap`` are slow (grouped convolutions): vgg16 (15M parameters) with n = 500
under an 8 GiB budget takes tens of minutes on two cores with it. The structured engine is the fast
path (see the README's benchmark table); the reference is its exact check.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from . import ntk_schedule
from .device import resolve_device
from .errors import ConetoolError
from .io import format_bytes as _format_bytes
from .ntk_schedule import MemoryBudgetError
from .ntk_structured import StructuredRows
from .ntk_terms import Dense, Term

__all__ = [
    "KINDS",
    "METHODS",
    "MemoryBudgetError",
    "NonFiniteKernelError",
    "check_per_example",
    "default_memory_budget",
    "empirical_ntk",
    "parse_memory",
    "resolve_device",
]

KINDS = ("trace", "full", "sum")
METHODS = ("auto", "structured", "jacobian")

# The default CPU budget: this fraction of MemAvailable, at most _CPU_CAP bytes.
_CPU_FRACTION = 0.5
_CPU_CAP = 64 * 2**30
_CUDA_FRACTION = 0.8


class NonFiniteKernelError(ConetoolError):
    """The kernel has NaN or infinite entries (the caller adds which checkpoint it was)."""


# --------------------------------------------------------------------------------------------------
# Memory sizes and budgets

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: int | str) -> int:
    """A memory size in bytes from ``--max-memory``: an int, or a string like ``"4GiB"``.

    Units (case-insensitive): none or ``B`` for bytes; ``KiB/MiB/GiB/TiB`` and the single letters
    ``K/M/G/T`` are powers of 1024; ``KB/MB/GB/TB`` are powers of 1000. Fractions are allowed
    (``"1.5GiB"``). Raises :class:`MemoryBudgetError` naming ``--max-memory`` on anything else.

    >>> parse_memory("4GiB"), parse_memory("500MB"), parse_memory("2G"), parse_memory(1024)
    (4294967296, 500000000, 2147483648, 1024)
    """
    if isinstance(value, bool):
        raise MemoryBudgetError(_memory_syntax_message(value))
    if isinstance(value, int):
        if value <= 0:
            raise MemoryBudgetError(_memory_syntax_message(value))
        return value
    if not isinstance(value, str):
        raise MemoryBudgetError(_memory_syntax_message(value))
    match = _SIZE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise MemoryBudgetError(_memory_syntax_message(value))
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise MemoryBudgetError(_memory_syntax_message(value))
    return size


def _memory_syntax_message(value: object) -> str:
    return (
        f"--max-memory {value!r} is not a memory size. Write a positive number with an optional "
        "unit, e.g. --max-memory 4GiB, 500MB, 2G or 1073741824 (bytes); KiB/MiB/GiB and K/M/G are "
        "powers of 1024, KB/MB/GB powers of 1000."
    )


def format_bytes(size: float) -> str:
    """``size`` bytes in a short human form, e.g. ``"1.50 GiB"``."""
    return _format_bytes(size, digits=2)


def default_memory_budget(device: str | torch.device | None = None) -> int:
    """The default ``--max-memory`` for ``device``, in bytes.

    CPU: half of ``MemAvailable`` from ``/proc/meminfo`` (elsewhere half of the free physical
    memory that ``os.sysconf`` reports, or 4 GiB when neither is known), at most 64 GiB. CUDA: 80%
    of the device's free memory (``torch.cuda.mem_get_info``).
    """
    device = resolve_device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * _CUDA_FRACTION)
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


# --------------------------------------------------------------------------------------------------
# Per-example checks


def check_per_example(model: nn.Module, inputs: Tensor | None = None) -> None:
    """Raise :class:`ConetoolError` when the model's examples would not be independent.

    The eNTK is defined per example, and the engine evaluates the model one example at a time, so
    a model whose output for one example depends on the others in the batch would get a kernel of
    a different function. Two checks:

    - structural, always: a BatchNorm module in training mode, or one without running statistics
      (``track_running_stats=False`` normalizes with batch statistics even in eval mode); a dropout
      module in training mode (the kernel would be random). Call ``model.eval()`` first;
      :func:`empirical_ntk` does, and restores each module's mode afterwards.
    - numeric, when ``inputs`` has at least 2 examples: the outputs of the first two examples as one
      batch must equal their outputs computed one at a time (to ``10·sqrt(eps)`` of the output
      scale). This catches explicit batch dependencies (``x - x.mean(0)``, attention across the
      batch). ``inputs`` must be on the model's device.
    """
    _check_modules(model)
    if inputs is not None and inputs.shape[0] >= 2:
        with torch.no_grad():
            _check_independence(model, inputs[:2])


def _check_modules(model: nn.Module) -> None:
    for name, module in model.named_modules():
        label = f"module '{name or type(model).__name__}' ({type(module).__name__})"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is None or module.running_var is None:
                raise ConetoolError(
                    f"{label} has no running statistics (track_running_stats=False), so it "
                    "normalizes with the statistics of the batch even in eval mode: each example's "
                    "output depends on the other examples and the per-example eNTK is not the "
                    "kernel of this model. Build it with track_running_stats=True (and load running "
                    "statistics), or use a per-example normalization such as GroupNorm or LayerNorm."
                )
            if module.training:
                raise ConetoolError(
                    f"{label} is in training mode: it normalizes with the statistics of the batch, "
                    "so examples interact. Call model.eval() first (conetool.empirical_ntk does "
                    "this itself and restores the mode afterwards)."
                )
        elif isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
            raise ConetoolError(
                f"{label} is in training mode, so the model's output (and its kernel) is random. "
                "Call model.eval() first (conetool.empirical_ntk does this itself and restores the "
                "mode afterwards)."
            )


def _check_independence(forward: Callable[[Tensor], Tensor], pair: Tensor) -> None:
    """``forward(pair)`` row by row must equal ``forward`` of each example alone."""
    together = forward(pair)
    if not isinstance(together, Tensor):
        raise ConetoolError(
            "the eNTK needs a model that returns one tensor of outputs (batch, c), but it "
            f"returned a {type(together).__name__}. Wrap the model in a module that returns the "
            "logits."
        )
    together = together.reshape(pair.shape[0], -1)
    alone = torch.cat([forward(pair[i : i + 1]).reshape(1, -1) for i in range(pair.shape[0])])
    scale = float(together.abs().max()) if together.numel() else 0.0
    if together.is_floating_point():
        tol = 10 * math.sqrt(torch.finfo(together.dtype).eps) * max(1.0, scale)
    else:
        tol = 0.0
    diff = float((together - alone).abs().max()) if together.numel() else 0.0
    if not diff <= tol:
        raise ConetoolError(
            "the model's output for one example depends on the other examples in the batch: in "
            f"eval mode, two examples evaluated together differ from the same examples evaluated "
            f"one at a time by up to {diff:.3g} (output scale {scale:.3g}). The eNTK is defined per "
            "example; remove the batch dependency (batch statistics, batch-wise normalization or "
            "attention across the batch) from the model's eval-mode forward pass."
        )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each module's own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 precision in CUDA matrix products and convolutions."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


# --------------------------------------------------------------------------------------------------
# The engine


def empirical_ntk(
    model: nn.Module,
    inputs: Tensor,
    *,
    kind: str = "trace",
    max_memory: int | str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    on_block: Callable[[int, int], None] | None = None,
    check: bool = True,
    method: str = "auto",
) -> Tensor:
    """The empirical NTK of ``model`` on ``inputs``, exact, within a memory budget.

    Args:
        model: any module mapping a batch ``(m, *shape)`` to outputs ``(m, c)`` (trailing
            dimensions are flattened into ``c``). It is evaluated in eval mode; each module's mode
            is restored on return. Its parameters and buffers are not modified.
        inputs: ``(n, *shape)``, the probe examples.
        kind: ``"trace"`` -> ``(n, n)``, ``"full"`` -> ``(n, c, n, c)``, ``"sum"`` -> ``(n, n)``;
            see the module docstring for the definitions.
        max_memory: budget in bytes or a string like ``"4GiB"`` (:func:`parse_memory`); ``None``
            or ``"auto"``: :func:`default_memory_budget` of the device.
        device: ``"auto"`` (default: CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:k"``.
        dtype: compute dtype; default the dtype of the model's trainable parameters. Floating
            parameters, buffers and inputs are cast to it (``torch.float64`` for exact kernels).
        on_block: called as ``on_block(done, total)`` after each block of the schedule (a block of
            Jacobian rows computed and contracted with every resident block it pairs with).
        check: run :func:`check_per_example` (structural and numeric) before computing.
        method: ``"structured"`` (per-layer contraction, :mod:`conetool.ntk_structured`),
            ``"jacobian"`` (the reference: ``vmap`` over examples of ``vjp``, every parameter), or
            ``"auto"`` (default): structured when layers it contracts from their factors (Linear
            layers, convolutions on small feature maps) hold at least half of the parameters
            (MLPs, LeNet-5, VGG-16), else jacobian (ResNet-20, where per-example convolution
            gradients dominate and the reference computes them faster). Both give the same kernel.

    Returns:
        The kernel on the CPU: float64 when computing in float64, else float32. Products are
        summed in float64 across parameter tensors and, inside a product wider than 4,096
        columns, across float32 pieces (:mod:`conetool.ntk_precision`); TF32 is off during the
        computation.

    Raises:
        MemoryBudgetError: the budget cannot hold even one example (the message gives the
            minimum), or CUDA ran out of memory.
        NonFiniteKernelError: the kernel has NaN or infinite entries.
        ConetoolError: an unknown ``kind``, a model without trainable parameters, or examples that
            interact (see :func:`check_per_example`).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> empirical_ntk(model, torch.randn(5, 4), device="cpu").shape
        torch.Size([5, 5])
        >>> empirical_ntk(model, torch.randn(5, 4), kind="full", device="cpu").shape
        torch.Size([5, 3, 5, 3])
    """
    if kind not in KINDS:
        raise ConetoolError(f"kernel kind {kind!r} is unknown. Use one of: {', '.join(KINDS)}.")
    if method not in METHODS:
        raise ConetoolError(f"--method {method!r} is unknown. Use one of: {', '.join(METHODS)}.")
    if not isinstance(inputs, Tensor) or inputs.dim() < 1 or inputs.shape[0] < 1:
        raise ConetoolError("empirical_ntk needs inputs of shape (n, ...) with n >= 1 examples.")
    device = resolve_device(device)
    budget = (
        default_memory_budget(device)
        if max_memory is None or (isinstance(max_memory, str) and max_memory.strip() == "auto")
        else parse_memory(max_memory)
    )
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ConetoolError(
            "the model has no trainable parameters (every parameter has requires_grad=False), so "
            "its eNTK is zero. Unfreeze the parameters the kernel should be taken with respect to."
        )
    if dtype is None:
        dtype = next(iter(trainable.values())).dtype

    def cast(t: Tensor) -> Tensor:
        t = t.detach()
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    with _eval_mode(model), _no_tf32(), torch.no_grad():
        if check:
            _check_modules(model)
        params = {name: cast(p) for name, p in trainable.items()}
        consts = {name: cast(p) for name, p in model.named_parameters() if not p.requires_grad}
        consts.update({name: cast(b) for name, b in model.named_buffers()})
        x = cast(inputs)

        def forward(batch: Tensor, p: dict[str, Tensor] = params) -> Tensor:
            out = functional_call(model, (p, consts), (batch,))
            if not isinstance(out, Tensor):
                raise ConetoolError(
                    "the eNTK needs a model that returns one tensor of outputs (batch, c), but "
                    f"it returned a {type(out).__name__}. Wrap the model in a module that returns "
                    "the logits."
                )
            return out

        if check and x.shape[0] >= 2:
            _check_independence(forward, x[:2])
        try:
            kernel = _compute(
                model, forward, params, {**params, **consts}, x, kind, budget, on_block, method
            )
        except torch.OutOfMemoryError as exc:
            raise MemoryBudgetError(
                f"the device ran out of memory computing the eNTK with a budget of "
                f"{format_bytes(budget)} (--max-memory). Pass a smaller --max-memory, or free "
                "memory on the device."
            ) from exc
    if not bool(torch.isfinite(kernel).all()):
        bad = int((~torch.isfinite(kernel)).sum())
        raise NonFiniteKernelError(
            f"the eNTK has {bad} non-finite entries (NaN or infinity): the model's outputs or their "
            "gradients overflow at these weights. Check the weights for NaN or huge values, or "
            "compute in float64 (--dtype float64)."
        )
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return kernel.to(device="cpu", dtype=out_dtype)


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
) -> Tensor:
    """The kernel as a float64 tensor on ``x``'s device; see :func:`empirical_ntk`."""
    source: ntk_schedule.RowSource | None = None
    if method != "jacobian":
        structured = StructuredRows(model, forward, params, tensors, x, kind)
        if method == "structured" or structured.kron_share() >= _AUTO_KRON_SHARE:
            source = structured
    if source is None:
        source = _JacobianRows(forward, params, x, kind)
    c = source.c  # type: ignore[attr-defined]
    what = (
        f"one example's {'Jacobian' if kind == 'full' else 'Jacobian row'} "
        f"({c if kind == 'full' else 1} x {sum(t.numel() for t in params.values()):,} parameters)"
    )
    dtype = next(iter(params.values())).dtype
    schedule = _plan(source, kind, x.shape[0], c, budget, what, x.device)
    return ntk_schedule.run(source, schedule, kind, x.shape[0], c, dtype, x.device, on_block)


_plan = ntk_schedule.plan  # tests watch the plans through this name
# method="auto" takes the structured engine when at least this share of the parameters is
# contracted from factors (Linear layers, convolutions on small feature maps). Below, per-example
# convolution gradients dominate both engines, and the reference computes them faster (measured
# on a 2-core CPU, resnet20 at n = 1024: 86 s against 98-116 s).
_AUTO_KRON_SHARE = 0.5


class _JacobianRows:
    """The reference engine as a row source: ``vmap`` over examples of ``vjp`` (one forward pass
    per example, one reverse pass ``vmap``-ed over the cotangents), one dense term per parameter
    tensor.

    Memory per example (measured on resnet20 and lenet5, a call peaks at about
    ``2·saved + 2·g·row`` per example): its saved activations, the gradients in flight, its rows
    and one transient copy of them; ``saved`` is estimated from the tensors the forward pass of one
    example saves for the backward pass, ``largest`` the largest of them.
    """

    def __init__(
        self, forward: Callable[..., Tensor], params: dict[str, Tensor], x: Tensor, kind: str
    ) -> None:
        self.params = params
        self.x = x
        self.full = kind == "full"
        self.c, self.saved, self.largest = _measure(forward, params, x[:1])
        self.row = sum(t.numel() * t.element_size() for t in params.values())
        self.fixed = 2 * self.row  # the parameters and a copy

        def single(p: dict[str, Tensor], example: Tensor, cot: Tensor) -> dict[str, Tensor]:
            _, pullback = vjp(lambda q: forward(example.unsqueeze(0), q).reshape(-1), p)
            return vmap(pullback)(cot)[0]  # name -> (g, *shape)

        self._rows_of = vmap(single, in_dims=(None, 0, None))

    def rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]:
        """Dense rows of examples ``lo:hi``: ``(b·g, p_t)`` for ``full``, else ``(b, g·p_t)``."""
        block = self._rows_of(self.params, self.x[lo:hi], cot)  # name -> (b, g, *shape)
        b = hi - lo
        per = cot.shape[0] if self.full else 1
        mats: list[Term] = []
        for name in list(block):
            value = block.pop(name)  # drop each vmap output once it is a matrix
            mats.append(Dense(value.contiguous().view(per * b, -1)))
            del value
        return mats

    def resident(self, g: int) -> int:
        return g * self.row

    def transient(self, g: int) -> int:
        return 3 * self.saved + g * (2 * self.row + 4 * self.largest)

    def activations(self, g: int) -> int:
        return 3 * self.saved + 4 * g * self.largest


def _measure(
    forward: Callable[..., Tensor], params: dict[str, Tensor], example: Tensor
) -> tuple[int, int, int]:
    """``(c, saved, largest)``: outputs per example, and the bytes of activations that one example's
    forward pass saves for the backward pass, in total and the largest single one.
    """
    # Parameters (and the live copies below, which share their storage) and the input are not
    # activations.
    owned = {t.untyped_storage().data_ptr() for t in params.values()}
    owned.add(example.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    live = {name: t.detach().requires_grad_() for name, t in params.items()}
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(example, live)
    sizes = list(seen.values())
    return out.numel(), sum(sizes), max(sizes, default=0)


