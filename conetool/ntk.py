"""The eNTK engine: exact empirical Neural Tangent Kernels under a memory budget.

Pure: a model, its parameters and buffers and a batch of inputs go in, a kernel tensor comes out.
Nothing here touches the disk or prints. Definitions (shared/DESIGN.md, "Definitions"):

- ``f(x; θ) ∈ R^c`` is the model's output for one example, flattened; ``θ`` is every parameter with
  ``requires_grad`` (tied weights count once, as ``named_parameters()`` lists them once); frozen
  parameters and buffers (BatchNorm running statistics) are fixed inputs.
- The model is evaluated in eval mode (BatchNorm uses running statistics, dropout is off), one
  example at a time under :func:`torch.func.vmap`, so each output depends on its example only.
- ``J(x) = ∂f(x; θ)/∂θ`` has shape ``(c, p)``.
- ``kind="trace"``: ``H[i, j] = Σ_k <∂f_k(x_i)/∂θ, ∂f_k(x_j)/∂θ>``, shape ``(n, n)``; a plain sum
  over the logits, not a mean.
- ``kind="full"``: ``H[i, a, j, b] = <∂f_a(x_i)/∂θ, ∂f_b(x_j)/∂θ>``, shape ``(n, c, n, c)``,
  example-major; ``H.reshape(n * c, n * c)`` is the Gram matrix of the rows of the stacked Jacobian.
- ``kind="sum"``: the kernel of the scalar ``g = Σ_k f_k``, shape ``(n, n)``.

How it is computed (the reference engine: simple and exact). Rows of the Jacobian are computed with
``vmap`` over examples of ``vjp`` (one forward pass per example, and one reverse pass ``vmap``-ed over
a set of cotangent vectors): the identity rows for ``full``, groups of logits for ``trace``, the
all-ones vector for ``sum``. Rows are kept per parameter tensor (never concatenated into a ``p``-wide
matrix) and contracted with one matrix product per parameter tensor, summed over tensors in float64.
Only products on or above the block diagonal are computed (``H[j, i] = H[i, j]^T``); the product
of a block of 128 rows or more with itself uses BLAS ``syrk`` on the CPU (half the work of a
product; SciPy's BLAS, which comes with scikit-learn), and upper-triangular sub-blocks elsewhere.

The memory budget decides the schedule:

- One pass, when the rows of all ``n`` examples fit: each set of cotangents is computed once and
  contracted with itself. For ``trace``, which only pairs a logit with the same logit, the logits are
  split into as few groups as fit; each further group costs one more forward pass, nothing else.
- Panels otherwise: the examples are split into resident panels; a panel's rows are computed and
  kept, then the rows of every later example are computed in small streamed blocks and contracted
  with the whole panel while it is resident. A panel starting at example ``a`` costs ``n - a`` row
  computations, about ``n^2 / (2 r)`` in all for panels of ``r`` examples, so a larger budget means
  less recomputation. ``trace`` uses one logit at a time here (the cheapest rows), ``full`` all
  logits of an example.

The engine plans for 90% of the budget, counting the resident rows, one vmap call in flight (its
activations, estimated from the tensors the forward pass of one example saves for the backward pass,
its rows and one transient copy of them), the kernel being accumulated and copies of the parameters.
The Python process itself (the torch library, the model, the data) is not counted: on resnet20 with
n = 1024 and ``max_memory="4GiB"`` the process grows by 3.4 GiB over its 0.8 GiB at the start.

Time: the Jacobian costs what ``vmap(jacrev)`` costs (each extra ``trace`` group adds a forward pass;
calls of a few dozen examples run faster per example than one call on all ``n``), and the contraction
about half of a full product. On a CPU, per-example gradients of convolutions under ``vmap`` are slow
(grouped convolutions): vgg16 (15M parameters) with n = 500 under an 8 GiB budget needs 5 panels
per logit and takes tens of minutes on two cores. The structured engine of a later version is the
fast path; this one is its exact reference.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from .device import resolve_device
from .errors import ConetoolError
from .io import format_bytes as _format_bytes

__all__ = [
    "KINDS",
    "MemoryBudgetError",
    "NonFiniteKernelError",
    "check_per_example",
    "default_memory_budget",
    "empirical_ntk",
    "parse_memory",
    "resolve_device",
]

KINDS = ("trace", "full", "sum")

# Activations in flight in one vmap call. Measured on a CPU, a call's time per example grows with
# its activations (resnet20: 16 examples per call are 30% faster per example than 128); small
# models (lenet5) take large calls, whose rows then need no copying into a panel.
_ACTIVATION_BYTES = 2**28
# Fewest examples per vmap call worth computing all logits at once for (else: fewer logits).
_MIN_CHUNK = 8
# Rows of one diagonal sub-block of a panel's self-product: only sub-block pairs on or above the
# diagonal are multiplied. Below about 256 rows the products become memory-bound on CPUs.
_SUB_ROWS = 512
# Fewest rows for which a block's product with itself uses BLAS syrk on the CPU: below, the
# product is memory-bound and torch's own product is faster.
_SYRK_MIN_ROWS = 128
# The default CPU budget: this fraction of MemAvailable, at most _CPU_CAP bytes.
_CPU_FRACTION = 0.5
_CPU_CAP = 64 * 2**30
_CUDA_FRACTION = 0.8


class MemoryBudgetError(ConetoolError):
    """The memory budget (``--max-memory``) is too small, or the device ran out of memory."""


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


@dataclass(frozen=True)
class _Plan:
    """The block schedule.

    ``groups``: the cotangent sets, each ``(g, c)``; a unit is one example's ``g`` rows.
    ``panel``: examples per resident panel (``>= n``: one pass, nothing recomputed).
    ``chunk``: examples per vmap call while filling a panel, and per streamed block.
    """

    groups: tuple[Tensor, ...]
    panel: int
    chunk: int


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

    Returns:
        The kernel on the CPU: float64 when computing in float64, else float32. Pair sums are
        accumulated in float64; TF32 is off during the computation.

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
            kernel = _compute(forward, params, x, kind, budget, on_block)
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
    forward: Callable[..., Tensor],
    params: dict[str, Tensor],
    x: Tensor,
    kind: str,
    budget: int,
    on_block: Callable[[int, int], None] | None,
) -> Tensor:
    """The kernel as a float64 tensor on ``x``'s device; see :func:`empirical_ntk`."""
    n = x.shape[0]
    c, saved, largest = _measure(forward, params, x[:1])
    plan = _plan(kind, n, c, params, saved, largest, budget, x.device)
    per_unit = c if kind == "full" else 1  # kernel rows per example
    kernel = torch.zeros(n * per_unit, n * per_unit, dtype=torch.float64, device=x.device)

    def single(p: dict[str, Tensor], example: Tensor, cotangents: Tensor) -> dict[str, Tensor]:
        _, pullback = vjp(lambda q: forward(example.unsqueeze(0), q).reshape(-1), p)
        return vmap(pullback)(cotangents)[0]  # name -> (g, *shape)

    rows_of = vmap(single, in_dims=(None, 0, None))
    steps = _count_steps(plan, n)
    done = 0

    def call(cot: Tensor, lo: int, hi: int) -> list[Tensor]:
        """One vmap call: the rows of examples ``lo:hi`` as matrices, one per parameter tensor.

        ``full``: ``(b·c, p_t)``, one row per (example, logit). ``trace``/``sum``: ``(b, g·p_t)``,
        so that the product of two such matrices sums over the ``g`` cotangents of the group.
        """
        nonlocal done
        block = rows_of(params, x[lo:hi], cot)  # name -> (b, g, *shape)
        mats = []
        for name in list(block):
            value = block.pop(name)  # drop each vmap output once it is a matrix
            mats.append(value.contiguous().view(per_unit * (hi - lo), -1))
            del value
        done += 1
        return mats

    def panel_pieces(cot: Tensor, start: int, stop: int) -> list[tuple[int, list[Tensor]]]:
        """The panel ``start:stop`` as pieces ``(first kernel row, matrices)``.

        A vmap call with enough rows is a piece as it is; smaller calls are copied into pieces of
        about ``_SUB_ROWS`` rows, so that the products between pieces stay efficient.
        """
        call_rows = per_unit * plan.chunk
        units = plan.chunk * (1 if 2 * call_rows >= _SUB_ROWS else math.ceil(_SUB_ROWS / call_rows))
        pieces = []
        for lo in range(start, stop, units):
            hi = min(lo + units, stop)
            if hi - lo <= plan.chunk:
                pieces.append((lo * per_unit, call(cot, lo, hi)))
                if on_block is not None and hi < stop:
                    on_block(done, steps)
                continue
            width = {
                name: (1 if kind == "full" else cot.shape[0]) * t.numel()
                for name, t in params.items()
            }
            mats = [
                torch.empty((hi - lo) * per_unit, width[name], dtype=t.dtype, device=t.device)
                for name, t in params.items()
            ]
            for lo2 in range(lo, hi, plan.chunk):
                hi2 = min(lo2 + plan.chunk, hi)
                rows = slice((lo2 - lo) * per_unit, (hi2 - lo) * per_unit)
                for mat, value in zip(mats, call(cot, lo2, hi2), strict=True):
                    mat[rows] = value
                if on_block is not None and hi2 < stop:
                    on_block(done, steps)
            pieces.append((lo * per_unit, mats))
        return pieces

    for cot in plan.groups:
        cot = cot.to(device=x.device, dtype=next(iter(params.values())).dtype)
        for start in range(0, n, plan.panel):
            stop = min(start + plan.panel, n)
            pieces = panel_pieces(cot, start, stop)
            _add_self(kernel, pieces)
            if on_block is not None:
                on_block(done, steps)
            for lo in range(stop, n, plan.chunk):
                hi = min(lo + plan.chunk, n)
                block = call(cot, lo, hi)
                cols = slice(lo * per_unit, hi * per_unit)
                for row, mats in pieces:
                    product = _contract(mats, block)
                    rows = slice(row, row + product.shape[0])
                    kernel[rows, cols] += product
                    kernel[cols, rows] += product.T
                del block, product
                if on_block is not None:
                    on_block(done, steps)
            del pieces
    if kind == "full":
        kernel = kernel.view(n, c, n, c)
    return kernel


def _contract(left: list[Tensor], right: list[Tensor]) -> Tensor:
    """``Σ_t left[t] @ right[t]^T`` accumulated in float64."""
    total = torch.zeros(
        left[0].shape[0], right[0].shape[0], dtype=torch.float64, device=left[0].device
    )
    for a, b in zip(left, right, strict=True):
        total += (a @ b.T).to(torch.float64)
    return total


def _add_self(kernel: Tensor, pieces: list[tuple[int, list[Tensor]]]) -> None:
    """Add the Gram matrix of the rows of ``pieces`` to ``kernel`` (at each piece's first row).

    Only the products on or above the diagonal are computed (``H[j, i] = H[i, j]^T``): one
    product per pair of pieces, and within a piece BLAS ``syrk`` on the CPU (half the work of a
    product), elsewhere sub-blocks of about ``_SUB_ROWS`` rows.
    """
    blocks = []
    for row, mats in pieces:
        size = mats[0].shape[0]
        count = 1 if _use_syrk(mats[0]) else max(1, size // _SUB_ROWS)
        bounds = [round(i * size / count) for i in range(count + 1)]
        blocks += [(row + lo, [m[lo:hi] for m in mats]) for lo, hi in itertools.pairwise(bounds)]
    for k, (row, left) in enumerate(blocks):
        diag = _gram(left)
        rows = slice(row, row + diag.shape[0])
        kernel[rows, rows] += diag
        for col, right in blocks[k + 1 :]:
            product = _contract(left, right)
            cols = slice(col, col + product.shape[1])
            kernel[rows, cols] += product
            kernel[cols, rows] += product.T


@functools.cache
def _blas() -> tuple[Callable[..., Any], Callable[..., Any], Any] | None:
    """SciPy's ``ssyrk`` and ``dsyrk`` and a controller of its BLAS threads, or None."""
    try:
        from scipy.linalg import blas
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - both come with scikit-learn
        return None
    return blas.ssyrk, blas.dsyrk, ThreadpoolController()


def _use_syrk(mat: Tensor) -> bool:
    """Whether :func:`_gram` uses BLAS ``syrk`` for a block whose first matrix is ``mat``."""
    return (
        mat.device.type == "cpu"
        and mat.dtype in (torch.float32, torch.float64)
        and mat.shape[0] >= _SYRK_MIN_ROWS
        and _blas() is not None
    )


def _gram(mats: list[Tensor]) -> Tensor:
    """``Σ_t mats[t] @ mats[t]^T`` accumulated in float64, exactly symmetric."""
    if not _use_syrk(mats[0]):
        total = _contract(mats, mats)
        return (total + total.T) / 2
    ssyrk, dsyrk, threads = _blas()
    size = mats[0].shape[0]
    upper = torch.zeros(size, size, dtype=torch.float64)
    # SciPy's BLAS has its own thread pool: give it torch's thread count, not every core.
    with threads.limit(limits=torch.get_num_threads(), user_api="blas"):
        for mat in mats:
            syrk = ssyrk if mat.dtype == torch.float32 else dsyrk
            # mat is a C-contiguous (m, k) matrix, so its transpose is a Fortran (k, m) array
            # that BLAS reads in place; trans=1 gives mat @ mat.T, upper triangle.
            product = syrk(1.0, mat.contiguous().numpy().T, trans=1, lower=0)
            upper += torch.from_numpy(product).triu()
    return upper + upper.triu(1).T


def _count_steps(plan: _Plan, n: int) -> int:
    """Number of ``on_block`` calls: vmap calls (panel chunks and streamed blocks)."""
    total = 0
    for start in range(0, n, plan.panel):
        stop = min(start + plan.panel, n)
        total += math.ceil((stop - start) / plan.chunk) + math.ceil((n - stop) / plan.chunk)
    return total * len(plan.groups)


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


def _plan(
    kind: str,
    n: int,
    c: int,
    params: dict[str, Tensor],
    saved: int,
    largest: int,
    budget: int,
    device: torch.device,
) -> _Plan:
    """Choose cotangent groups, panel and chunk sizes so that the estimated peak fits ``budget``.

    Estimated bytes: ``resident examples · g · row + chunk · per_example(g) + fixed``, where ``row``
    is one Jacobian row (``p`` values), ``per_example(g) = 3·saved + g·(2·row + 4·largest)`` covers
    one example in a vmap call: its saved activations, the gradients in flight, its rows and one
    transient copy of them (the vmap-ed weight gradients pass through intermediates of their own
    size; measured on resnet20 and lenet5, a call peaks at about ``2·saved + 2·g·row`` per
    example); ``fixed`` is the float64 kernel with its float32 copy for the caller and the block
    products, two copies of the parameters and 32 MiB of workspace. The plan uses 90% of the
    budget.
    """
    item = next(iter(params.values())).element_size()
    p = sum(t.numel() for t in params.values())
    row = p * item
    size = n * (c if kind == "full" else 1)
    fixed = 2 * size * size * 8 + 2 * row + 32 * 2**20

    def per_example(g: int) -> int:
        return 3 * saved + g * (2 * row + 4 * largest)

    eye = torch.eye(c)
    if kind == "sum":
        choices = [1]
    elif kind == "full":
        choices = [c]
    else:
        choices = list(range(c, 0, -1))
    # Plan for 90% of the budget: headroom for what the estimate does not see (allocator slack).
    avail = budget * 9 // 10 - fixed

    def chunk_size(g: int, room: int, rows: int) -> int:
        """Examples per vmap call, balanced: as many as fit in ``room``, with at most
        ``_ACTIVATION_BYTES`` of activations in flight (larger calls run slower per example)."""
        activations = 3 * saved + 4 * g * largest
        fit = max(1, min(room // per_example(g), _ACTIVATION_BYTES // max(1, activations)))
        return math.ceil(rows / math.ceil(rows / min(rows, fit)))

    # One pass: every example's rows for a group of g cotangents resident at once. The largest g
    # whose vmap calls still take a reasonable number of examples at once; then any g at all.
    for smallest in (min(n, _MIN_CHUNK), 1):
        for g in choices:
            room = avail - n * g * row
            if room >= smallest * per_example(g):
                return _Plan(_groups(kind, c, g, eye), panel=n, chunk=chunk_size(g, room, n))
    # Panels: resident panel + streamed blocks, with the smallest unit.
    g = choices[-1]
    minimum = -(
        -(fixed + g * row + per_example(g)) * 10 // 9
    )  # smallest budget with avail >= 1 unit
    if budget < minimum:
        raise MemoryBudgetError(
            f"--max-memory {format_bytes(budget)} is too small for this model: one example's "
            f"{'Jacobian' if kind == 'full' else 'Jacobian row'} ({g} x {p:,} parameters) with "
            f"its activations and the {size} x {size} kernel need at least {format_bytes(minimum)} "
            f"({minimum:,} bytes) on {device}. Raise --max-memory to at least "
            f"{format_bytes(minimum)}."
        )
    # Streamed blocks take at most an eighth of the budget, so that most of it holds the panel
    # (the larger the panel, the less is recomputed).
    chunk = chunk_size(g, max(avail // 8, per_example(g)), n)
    panel = max(1, (avail - chunk * per_example(g)) // (g * row))
    panels = math.ceil(n / panel)
    panel = math.ceil(n / panels)
    return _Plan(_groups(kind, c, g, eye), panel=panel, chunk=chunk)


def _groups(kind: str, c: int, g: int, eye: Tensor) -> tuple[Tensor, ...]:
    if kind == "sum":
        return (torch.ones(1, c),)
    if kind == "full":
        return (eye,)
    count = math.ceil(c / g)
    bounds = [round(i * c / count) for i in range(count + 1)]
    return tuple(eye[lo:hi] for lo, hi in itertools.pairwise(bounds))
