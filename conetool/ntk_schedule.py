"""The block schedule shared by the eNTK engines: which rows are resident, and which pairs multiply.

An engine supplies a :class:`RowSource`: it computes the rows of a range of examples for a set of
cotangents (logits) as a block of terms (:mod:`conetool.ntk_terms`), and says how many bytes one
example's rows and one example's share of a call take. This module plans and runs the schedule:

- One pass, when the rows of all ``n`` examples fit: each set of cotangents is computed once and
  contracted with itself. For ``trace``, which only pairs a logit with the same logit, the logits are
  split into as few groups as fit; each further group costs one more pass of the row source.
- Panels otherwise: the examples are split into resident panels; a panel's rows are computed and
  kept, then the rows of every later example are computed in small streamed blocks and contracted
  with the whole panel while it is resident. A panel starting at example ``a`` costs ``n - a`` row
  computations, about ``n^2 / (2 r)`` in all for panels of ``r`` examples, so a larger budget means
  less recomputation. ``trace`` uses one logit at a time here (the cheapest rows), ``full`` all
  logits of an example.

Only products on or above the block diagonal are computed (``H[j, i] = H[i, j]^T``); a panel's
product with itself uses BLAS ``syrk`` for large dense terms on the CPU (half the work of a
product), and upper-triangular sub-blocks elsewhere. The plan uses 90% of the budget.

A cross kernel ``K(x1, x2)`` (``n2`` given: the source's examples ``0:n`` are ``x1``, ``n:n + n2``
are ``x2``) runs the same schedule with the panels taken from ``x1`` only and every example of
``x2`` streamed against each panel: one pass when all of ``x1``'s rows fit beside a streamed block
(each row computed once), else ``x2``'s rows are recomputed once per panel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from . import ntk_terms
from .errors import MemoryBudgetError
from .ntk_terms import Term
from .ntk_tuning import tuning_for
from .units import format_bytes

# Fewest examples per call worth computing all logits at once for (else: fewer logits).
_MIN_CHUNK = 8

# The panel memory of kept_panel_memory(): set only within the block.
_KEPT_PANEL: ContextVar[ntk_terms.Spare | None] = ContextVar("conetool_kept_panel", default=None)


def sub_rows(device: torch.device) -> int:
    """Rows of one diagonal sub-block of a self-product on ``device`` (terms not using syrk, nor
    wide dense rows where the tuning gives them their own: :func:`_gram_rows`)."""
    return tuning_for(device).sub_rows


def piece_rows(device: torch.device) -> int:
    """Rows of about which a panel is made of pieces on ``device``."""
    return tuning_for(device).piece_rows


class RowSource(Protocol):
    """What an engine gives the schedule.

    ``rows(cot, lo, hi)``: the rows of examples ``lo:hi`` for the cotangents ``cot`` ``(g, c)`` as
    a block of terms with ``(hi - lo)·g`` rows for ``full`` (example-major) and ``hi - lo`` rows
    otherwise. ``resident(g)``: bytes of one example's rows for ``g`` cotangents.
    ``transient(g)``: bytes one example adds to a call (its activations, gradients in flight, its
    rows and a copy of them). ``activations(g)``: the part of ``transient(g)`` that is activations
    (calls are kept below the tuning's ``activation_bytes`` of them: :mod:`conetool.ntk_tuning`). ``c``: outputs per example. ``fixed``:
    bytes the engine holds for the whole computation (parameter copies, workspaces).
    """

    c: int
    fixed: int

    def rows(self, cot: Tensor, lo: int, hi: int) -> list[Term]: ...

    def resident(self, g: int) -> int: ...

    def transient(self, g: int) -> int: ...

    def activations(self, g: int) -> int: ...


@dataclass(frozen=True)
class Schedule:
    """The block schedule.

    ``groups``: the cotangent sets, each ``(g, c)``; a unit is one example's ``g`` rows.
    ``panel``: examples per resident panel (``>= n``: one pass, nothing recomputed).
    ``chunk``: examples per call while filling a panel, and per streamed block.
    ``room``: bytes of the planned budget that the panel and a call leave unused (what memory
    kept from an earlier call may hold beyond this call's panel: :func:`kept_panel_memory`).
    """

    groups: tuple[Tensor, ...]
    panel: int
    chunk: int
    room: int = 0


def plan(
    source: RowSource,
    kind: str,
    n: int,
    c: int,
    budget: int,
    what: str,
    device: torch.device,
    n2: int | None = None,
) -> Schedule:
    """Choose cotangent groups, panel and chunk sizes so that the estimated peak fits ``budget``.

    Estimated bytes: ``resident examples · resident(g) + chunk · transient(g) + fixed``, where
    ``fixed`` adds the float64 kernel with its float32 copy for the caller and the block products,
    and 32 MiB of workspace to the source's own (and the float32 partial products that
    :func:`ntk_terms.product` holds at once where they do not fit in the workspace: the tuning's
    ``held_partials``, 256 MiB on a GPU, none on the CPU). ``what`` names one unit in the error
    message.
    ``n2``: the second set's examples of a cross kernel (panels come from the first ``n`` only).
    """
    tuning = tuning_for(device)
    per_unit = c if kind == "full" else 1
    size = n * per_unit
    cols = size if n2 is None else n2 * per_unit
    streamed = n if n2 is None else n2  # examples streamed against a panel in all
    calls = max(n, streamed)  # examples the chunk size is balanced over
    fixed = 2 * size * cols * 8 + source.fixed + 32 * 2**20 + tuning.held_partials
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
        """Examples per call, balanced: as many as fit in ``room``, with at most the tuning's
        ``activation_bytes`` of activations in flight where it has a cap (the CPU's: larger calls
        run slower per example)."""
        fit = room // source.transient(g)
        if tuning.activation_bytes is not None:
            fit = min(fit, tuning.activation_bytes // max(1, source.activations(g)))
        fit = max(1, fit)
        return math.ceil(rows / math.ceil(rows / min(rows, fit)))

    # One pass: every example's rows for a group of g cotangents resident at once. The largest g
    # whose calls still take a reasonable number of examples at once; then any g at all.
    for smallest in (min(streamed, _MIN_CHUNK), 1):
        for g in choices:
            room = avail - n * source.resident(g)
            if room >= smallest * source.transient(g):
                chunk = chunk_size(g, room, calls)
                left = max(0, room - chunk * source.transient(g))
                return Schedule(_groups(kind, c, g, eye), panel=n, chunk=chunk, room=left)
    # Panels: resident panel + streamed blocks, with the smallest unit.
    g = choices[-1]
    unit = source.resident(g) + source.transient(g)
    minimum = -(-(fixed + unit) * 10 // 9)  # the smallest budget with avail >= one unit
    if budget < minimum:
        raise MemoryBudgetError(
            f"--max-memory {format_bytes(budget, digits=2)} is too small for this model: {what} "
            f"with its activations and the {size} x {cols} kernel need at least "
            f"{format_bytes(minimum, digits=2)} ({minimum:,} bytes) on {device}. Raise "
            f"--max-memory to at least {format_bytes(minimum, digits=2)}."
        )
    # Streamed blocks take at most an eighth of the budget, so that most of it holds the panel
    # (the larger the panel, the less is recomputed).
    chunk = chunk_size(g, max(avail // 8, source.transient(g)), calls)
    panel = max(1, (avail - chunk * source.transient(g)) // source.resident(g))
    panels = math.ceil(n / panel)
    panel = math.ceil(n / panels)
    left = max(0, avail - chunk * source.transient(g) - panel * source.resident(g))
    return Schedule(_groups(kind, c, g, eye), panel=panel, chunk=chunk, room=left)


def _groups(kind: str, c: int, g: int, eye: Tensor) -> tuple[Tensor, ...]:
    if kind == "sum":
        return (torch.ones(1, c),)
    if kind == "full":
        return (eye,)
    count = math.ceil(c / g)
    bounds = [round(i * c / count) for i in range(count + 1)]
    groups = [eye[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    # Largest first: the first panel's memory is then large enough for every later one's
    # (ntk_terms.Spare), instead of being given back and allocated anew when a group grows.
    return tuple(sorted(groups, key=len, reverse=True))


def count_steps(schedule: Schedule, n: int, n2: int | None = None) -> int:
    """Number of ``on_block`` calls: row-source calls (panel chunks and streamed blocks)."""
    total = 0
    for start in range(0, n, schedule.panel):
        stop = min(start + schedule.panel, n)
        streamed = n - stop if n2 is None else n2
        total += math.ceil((stop - start) / schedule.chunk) + math.ceil(streamed / schedule.chunk)
    return total * len(schedule.groups)


def run(
    source: RowSource,
    schedule: Schedule,
    kind: str,
    n: int,
    c: int,
    dtype: torch.dtype,
    device: torch.device,
    on_block: Callable[[int, int], None] | None,
    n2: int | None = None,
) -> Tensor:
    """The kernel as a float64 tensor on ``device``: ``(n, n)``, or ``(n, c, n, c)`` for ``full``.

    With ``n2``, the cross kernel between the source's examples ``0:n`` and ``n:n + n2``:
    ``(n, n2)``, or ``(n, c, n2, c)`` for ``full``.
    """
    per_unit = c if kind == "full" else 1  # kernel rows per example
    cols = n if n2 is None else n2
    kernel = torch.zeros(n * per_unit, cols * per_unit, dtype=torch.float64, device=device)
    steps = count_steps(schedule, n, n2)
    done = 0
    # The memory of each panel's copied pieces: one matrix, reused by the next panel, and by the
    # next call on the CPU within kept_panel_memory() (faulted in once per run, not per kernel).
    tuning = tuning_for(device)
    kept = _KEPT_PANEL.get() if tuning.keeps_panel_memory else None
    spare = ntk_terms.Spare() if kept is None else kept
    first_take = True  # memory kept from an earlier call is checked against this call's room

    def call(cot: Tensor, lo: int, hi: int) -> list[Term]:
        nonlocal done
        block = source.rows(cot, lo, hi)
        done += 1
        return block

    def panel_pieces(cot: Tensor, start: int, stop: int) -> list[tuple[int, list[Term]]]:
        """The panel ``start:stop`` as pieces ``(first kernel row, block)``.

        A call with enough rows is a piece as it is; smaller calls are stacked into pieces of
        about ``piece_rows(device)`` rows, so that the products between pieces stay efficient.
        The stacked pieces' dense terms are consecutive rows of one matrix in ``spare``.
        """
        nonlocal first_take
        call_rows = per_unit * schedule.chunk
        units = schedule.chunk * (
            1 if 2 * call_rows >= piece_rows(device) else math.ceil(piece_rows(device) / call_rows)
        )
        bounds = [(lo, min(lo + units, stop)) for lo in range(start, stop, units)]
        stacked = sum(hi - lo for lo, hi in bounds if hi - lo > schedule.chunk) * per_unit
        arena: Tensor | None = None  # the stacked pieces' dense rows, side by side
        used = 0  # rows of arena handed out
        pieces = []
        for lo, hi in bounds:
            piece: list[Term] | None = None
            for lo2 in range(lo, hi, schedule.chunk):
                hi2 = min(lo2 + schedule.chunk, hi)
                part = call(cot, lo2, hi2)
                if hi - lo <= schedule.chunk:
                    piece = ntk_terms.merged(part)  # one call: the piece as it is, merged
                else:  # several calls: copied into one piece, one call at a time
                    if piece is None:
                        width = ntk_terms.dense_width(part)
                        if arena is None and width:
                            like = next(t.mat for t in part if isinstance(t, ntk_terms.Dense))
                            surplus = schedule.room if first_take else None
                            arena = spare.take(like, stacked, width, surplus)
                            first_take = False
                        rows = (hi - lo) * per_unit
                        into = None if arena is None else arena[used : used + rows]
                        used += rows
                        piece = ntk_terms.empty_like(part, hi - lo, per_unit, into)
                    ntk_terms.write(piece, part, lo2 - lo, per_unit)
                del part
                if on_block is not None and hi2 < stop:
                    on_block(done, steps)
            assert piece is not None
            pieces.append((lo * per_unit, piece))
        return pieces

    # Every group's cotangents go to the device before the first block, and without waiting: a
    # blocking copy from the host to a GPU waits for everything queued there (here, the set-up's
    # work), and between groups it would leave the device idle while the host dispatches the next
    # group's first calls. From pageable memory the copy is staged before the call returns, so the
    # host's tensor may go at once.
    groups = [cot.to(device=device, dtype=dtype, non_blocking=True) for cot in schedule.groups]
    for cot in groups:
        for start in range(0, n, schedule.panel):
            stop = min(start + schedule.panel, n)
            pieces = panel_pieces(cot, start, stop)
            if n2 is None:
                _add_self(kernel, pieces, device)
            if on_block is not None:
                on_block(done, steps)
            if n2 is None:
                for lo in range(stop, n, schedule.chunk):
                    hi = min(lo + schedule.chunk, n)
                    block = ntk_terms.merged(call(cot, lo, hi))
                    _add_block(kernel, pieces, block, lo * per_unit)
                    del block
                    if on_block is not None:
                        on_block(done, steps)
            else:
                for lo in range(n, n + n2, schedule.chunk):
                    hi = min(lo + schedule.chunk, n + n2)
                    block = ntk_terms.merged(call(cot, lo, hi))
                    _add_cross(kernel, pieces, block, (lo - n) * per_unit)
                    del block
                    if on_block is not None:
                        on_block(done, steps)
            # Free the panel before the next one is computed (a loop variable still holding one
            # of its pieces would keep two panels alive at once).
            del pieces
    if kind == "full":
        kernel = kernel.view(n, c, cols, c)
    return kernel


@contextmanager
def kept_panel_memory() -> Iterator[None]:
    """Within the block, calls of :func:`run` on the CPU keep their panel's memory for the next
    call instead of giving it back (``conetool kernels`` holds one block for its run).

    A panel's stacked pieces are one large allocation (resnet20, n = 1024, 4 GiB: 3.3 GB), which
    glibc maps for each call and returns when it is freed, so every kernel of a run faulted it in
    again, a page at a time. Kept, the next call reuses it where it is large enough, and gives it
    back first where it is smaller than needed or larger than the new call's panel plus the
    budget that call leaves unused (:attr:`Schedule.room`): a call never holds more than its own
    plan allows. On leaving the outermost block the memory is given back. Off the CPU nothing
    changes (PyTorch's caching allocator keeps device memory anyway).
    """
    if _KEPT_PANEL.get() is not None:
        yield
        return
    token = _KEPT_PANEL.set(ntk_terms.Spare())
    try:
        yield
    finally:
        _KEPT_PANEL.reset(token)


def _add_block(
    kernel: Tensor, pieces: list[tuple[int, list[Term]]], block: list[Term], col: int
) -> None:
    """Add the products of a streamed ``block`` (kernel rows from ``col``) with every piece of the
    resident panel to ``kernel``, and their transposes."""
    cols = slice(col, col + ntk_terms.rows_of(block))
    for row, left in pieces:
        product = ntk_terms.contract(left, block)
        rows = slice(row, row + product.shape[0])
        kernel[rows, cols] += product
        kernel[cols, rows] += product.T


def _add_cross(
    kernel: Tensor, pieces: list[tuple[int, list[Term]]], block: list[Term], col: int
) -> None:
    """Add the products of every piece of the resident panel with a streamed ``block`` of the
    second set (kernel columns from ``col``) to the cross ``kernel``."""
    cols = slice(col, col + ntk_terms.rows_of(block))
    for row, left in pieces:
        product = ntk_terms.contract(left, block)
        kernel[slice(row, row + product.shape[0]), cols] += product


def _add_self(kernel: Tensor, pieces: list[tuple[int, list[Term]]], device: torch.device) -> None:
    """Add the Gram matrix of the rows of ``pieces`` to ``kernel`` (at each piece's first row).

    The terms that BLAS ``syrk`` multiplies (wide dense rows on the CPU) go in sub-blocks of the
    tuning's ``syrk_rows``, other wide dense rows in sub-blocks of its ``wide_rows`` where it has
    them (a GPU's), the others in sub-blocks of :func:`sub_rows` (:func:`_add_gram`;
    :mod:`conetool.ntk_tuning`): the kernel is the sum over terms, so each set of terms can take
    the blocking that suits it.
    """
    first = pieces[0][1]
    by_rows: dict[int, list[int]] = {}
    for i, term in enumerate(first):
        by_rows.setdefault(_gram_rows(term, device), []).append(i)
    for sub, chosen in by_rows.items():
        _add_gram(kernel, [(row, [block[i] for i in chosen]) for row, block in pieces], sub)


def _gram_rows(term: Term, device: torch.device) -> int:
    """Rows of the sub-blocks in which ``term``'s Gram matrix is computed on ``device``."""
    tuning = tuning_for(device)
    if tuning.syrk_rows is not None and ntk_terms.syrk_term(term):
        return tuning.syrk_rows
    if tuning.wide_rows is not None and ntk_terms.wide_dense(term):
        return tuning.wide_rows
    return sub_rows(device)


def _add_gram(kernel: Tensor, pieces: list[tuple[int, list[Term]]], sub: int) -> None:
    """Add the Gram matrix of the rows of ``pieces`` to ``kernel`` (at each piece's first row).

    Only the products on or above the diagonal are computed (``H[j, i] = H[i, j]^T``): one
    product per pair of sub-blocks of about ``sub`` rows, and a sub-block with itself through
    :func:`ntk_terms.gram` (BLAS ``syrk`` for wide dense terms on the CPU).
    """
    blocks = []
    for row, block in pieces:
        size = ntk_terms.rows_of(block)
        examples = ntk_terms.block_examples(block)
        per = size // examples  # rows per example: sub-blocks start at an example
        count = max(1, size // sub)
        bounds = [round(i * examples / count) * per for i in range(count + 1)]
        blocks += [(row + lo, [t[lo:hi] for t in block]) for lo, hi in itertools.pairwise(bounds)]
    for k, (row, left) in enumerate(blocks):
        diag = ntk_terms.gram(left)
        rows = slice(row, row + diag.shape[0])
        kernel[rows, rows] += diag
        for col, right in blocks[k + 1 :]:
            product = ntk_terms.contract(left, right)
            cols = slice(col, col + product.shape[1])
            kernel[rows, cols] += product
            kernel[cols, rows] += product.T
