"""Blocks of Jacobian rows in the two forms the eNTK engines produce, and their products.

A block holds the rows of some examples (one row per example for ``trace``/``sum``, one per
(example, logit) for ``full``) as a list of *terms*, one per parameter tensor or layer. The kernel
entry of two rows is the sum over terms of the inner product of their rows:

- :class:`Dense`: the rows themselves, a matrix ``(rows, width)``; the product of two blocks is
  ``left @ right.T``. For ``trace``/``sum`` one row is an example's gradients for the ``g``
  cotangents of its group laid side by side (``width = g·p_t``), so the product sums over them.
- :class:`FactoredGrad`: a per-example gradient kept as factors. A layer whose weight gradient is
  ``Σ_t g_t ⊗ a_t`` over positions ``t`` (a Linear layer: its tokens, or its calls when applied
  more than once; a convolution: its output pixels) keeps its factors: inputs ``a``
  ``(b, T, d_a)`` and output cotangents ``g`` ``(b, k, T, d_g)`` (``k`` cotangents per example).
  The inner product of two examples' weight gradients is
  ``Σ_{t,t'} (a_it · a_jt') (g_it · g_jt')``, which never forms a ``d_g × d_a`` gradient: for a
  Linear layer (``T = 1``) it costs ``d_a + k·d_g`` per pair instead of ``k·d_a·d_g``.

The schedule (:mod:`conetool.ntk_schedule`) contracts blocks :func:`merged`: every dense term laid
side by side as one wide matrix, so that one product (or one ``syrk`` on the CPU) covers every
parameter tensor with dense rows. Products are computed in the rows' dtype and summed in float64:
across terms, and inside a dense product wider than the tuning's ``piece_columns`` across
float32 pieces of that many columns each (4,096 on the CPU, 512 on a GPU; :func:`product`; the ``syrk`` path in
pieces of up to ``_SYRK_CHUNK`` columns), because one float32 product accumulates along its
whole inner dimension (8 rows of 368,640 columns: 3e-5 off; in pieces of 4,096: about 3e-8). :mod:`conetool.ntk_precision`
switches the pieces off for benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from . import blas_syrk, ntk_precision
from .ntk_tuning import tuning_for

# Fewest rows and columns for which a block's product with itself uses BLAS syrk (half the work of
# a product) on the CPU. Measured on a 2-core x86 CPU: SciPy's ssyrk beats torch's product (MKL)
# only on wide blocks (1024 x 110,000: 0.73 s against 1.02 s); at 30,000 columns or fewer they
# are even.
_SYRK_MIN_ROWS = 128
_SYRK_MIN_WIDTH = 65536
# Columns per float32 piece of a wide product, and the partial products held at once while
# summing them, on each device: conetool.ntk_tuning (piece_columns, piece_elements).
# Columns per piece of the syrk path when the accuracy fixes are on (256-512 rows of 368,640
# columns: 4e-7 in one call, 6e-8 in pieces of 32,768). The pieces are read in place.
_SYRK_CHUNK = 32768
# Largest intermediate (elements) of a FactoredGrad product with positions (T > 1); larger products are
# computed in slices of the left block.
_KRON_ELEMENTS = 2**24


@dataclass(frozen=True)
class Dense:
    """Rows as a matrix ``(rows, width)``."""

    mat: Tensor

    @property
    def rows(self) -> int:
        return self.mat.shape[0]

    def __getitem__(self, rows: slice) -> Dense:
        return Dense(self.mat[rows])


@dataclass(frozen=True)
class FactoredGrad:
    """A layer's rows as factors: ``a`` ``(b, T, d_a)``, ``g`` ``(b, k, T, d_g)``.

    ``full``: the block has ``b·k`` rows, row ``(i, j)`` being example ``i``'s gradient for its
    ``j``-th cotangent. Otherwise ``b`` rows, each summing over the ``k`` cotangents (the product of
    two rows is ``Σ_j`` of the per-cotangent products).
    """

    a: Tensor
    g: Tensor
    full: bool

    @property
    def rows(self) -> int:
        return self.a.shape[0] * (self.g.shape[1] if self.full else 1)

    def __getitem__(self, rows: slice) -> FactoredGrad:
        per = self.g.shape[1] if self.full else 1
        lo, hi, _ = rows.indices(self.rows)
        if lo % per or hi % per:  # pragma: no cover - the scheduler cuts at example boundaries
            raise ValueError("a FactoredGrad block is sliced at example boundaries only")
        return FactoredGrad(self.a[lo // per : hi // per], self.g[lo // per : hi // per], self.full)


Term = Dense | FactoredGrad


def merged(block: list[Term]) -> list[Term]:
    """The block with its dense terms laid side by side as one :class:`Dense` (a copy when there
    are several), followed by its factored terms in their order.

    The kernel entries are the same (the inner product of two rows is the sum over terms); one wide
    product replaces one per parameter tensor, most of them narrow (resnet20: 65 tensors, 46 of them
    at most 4,096 columns wide), and wide products run at BLAS speed (``syrk`` on the CPU, fewer
    launches on a GPU). The schedule contracts only merged blocks with each other.
    """
    dense = [term for term in block if isinstance(term, Dense)]
    factored = [term for term in block if isinstance(term, FactoredGrad)]
    if len(dense) <= 1:
        return [*dense, *factored]
    return [Dense(torch.cat([term.mat for term in dense], dim=1)), *factored]


class Spare:
    """Memory for a panel's copied pieces, kept for the next panel in its place.

    A panel's merged dense term is one large allocation (resnet20, n = 1024, 3 logits: 3.3 GB);
    glibc returns such an allocation to the system when it is freed, and the next panel's would be
    faulted in again a page at a time (measured on a 2-core CPU: 0.5 million page faults per
    group of logits, about 1.5 s of system time). Holding it between panels costs nothing the
    plan does not count: the next panel takes its place. Within
    :func:`conetool.ntk_schedule.kept_panel_memory` one ``Spare`` serves every call on the CPU
    (``conetool kernels`` holds one for its run), so a run's kernels reuse it too.
    """

    def __init__(self) -> None:
        self._flat: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held (0 when nothing is)."""
        flat = self._flat
        return 0 if flat is None else flat.numel() * flat.element_size()

    def take(self, like: Tensor, rows: int, width: int, surplus: int | None = None) -> Tensor:
        """An uninitialized contiguous ``(rows, width)`` matrix of ``like``'s dtype and device, in
        the kept memory when it is large enough (the memory is then kept for the next call).

        ``surplus``: bytes beyond the matrix's that the caller can afford to leave held. Given,
        kept memory larger than the matrix by more than that is given back first (a call that
        needs less than an earlier call kept must not exceed its own budget by the difference).
        """
        size = rows * width
        flat = self._flat
        if (
            flat is None
            or flat.numel() < size
            or flat.dtype != like.dtype
            or flat.device != like.device
            or (surplus is not None and (flat.numel() - size) * flat.element_size() > surplus)
        ):
            self._flat = None
            del flat  # the old memory goes before the new is allocated
            self._flat = flat = like.new_empty(size)
        return flat[:size].view(rows, width)


def dense_width(block: list[Term]) -> int:
    """Columns of ``block``'s dense terms side by side (its :func:`merged` dense term's width;
    0 when it has none)."""
    return sum(term.mat.shape[1] for term in block if isinstance(term, Dense))


def empty_like(
    block: list[Term], examples: int, per: int, into: Tensor | None = None
) -> list[Term]:
    """An uninitialized merged block (:func:`merged`) with the terms of ``block`` and room for
    ``examples`` examples of ``per`` rows each; its dense term is ``into`` when given (a
    contiguous ``(examples * per, dense_width(block))`` matrix, e.g. rows of a :class:`Spare`'s)."""
    out: list[Term] = []
    dense = [term.mat for term in block if isinstance(term, Dense)]
    if dense:
        rows, width = examples * per, dense_width(block)
        if into is None:
            out.append(Dense(dense[0].new_empty(rows, width)))
        else:
            assert into.shape == (rows, width) and into.is_contiguous()
            out.append(Dense(into))
    for term in block:
        if isinstance(term, FactoredGrad):
            out.append(
                FactoredGrad(
                    term.a.new_empty(examples, *term.a.shape[1:]),
                    term.g.new_empty(examples, *term.g.shape[1:]),
                    term.full,
                )
            )
    return out


def write(dest: list[Term], part: list[Term], first: int, per: int) -> None:
    """Copy the examples of ``part`` (``per`` rows each) into the merged block ``dest``
    (:func:`empty_like` of ``part``) from example ``first`` on; its dense terms go side by side
    into ``dest``'s one dense term."""
    targets = iter(dest)
    column = 0
    wide: Tensor | None = None
    for term in part:
        if isinstance(term, Dense):
            if wide is None:
                wide = cast(Dense, next(targets)).mat
            rows = slice(first * per, first * per + term.rows)
            wide[rows, column : column + term.mat.shape[1]] = term.mat
            column += term.mat.shape[1]
    for term in part:
        if isinstance(term, FactoredGrad):
            count = term.a.shape[0]
            into = cast(FactoredGrad, next(targets))
            into.a[first : first + count] = term.a
            into.g[first : first + count] = term.g


def block_examples(block: list[Term]) -> int:
    """Examples in a block (its FactoredGrad terms know; else every row is taken as one example's)."""
    for term in block:
        if isinstance(term, FactoredGrad):
            return term.a.shape[0]
    return block[0].rows


def rows_of(block: list[Term]) -> int:
    """Rows of a block (every term has the same)."""
    return block[0].rows


def contract(left: list[Term], right: list[Term]) -> Tensor:
    """``(rows(left), rows(right))`` float64: the kernel entries between two blocks."""
    total = torch.zeros(rows_of(left), rows_of(right), dtype=torch.float64, device=_device(left[0]))
    for a, b in zip(left, right, strict=True):
        if isinstance(a, Dense):  # the blocks come from one engine: the same kinds, term by term
            total += product(a.mat, cast(Dense, b).mat)
        else:
            _factored_product(a, cast(FactoredGrad, b), total)
    return total


def gram(block: list[Term]) -> Tensor:
    """``contract(block, block)``, exactly symmetric; BLAS ``syrk`` for wide dense terms on CPU."""
    size = rows_of(block)
    total = torch.zeros(size, size, dtype=torch.float64, device=_device(block[0]))
    for term in block:
        if isinstance(term, Dense):
            total += _self_product(term.mat)
        elif term.a.shape[1] == 1:
            _factored_gram(term, total)
        else:
            _factored_product(term, term, total)
    return (total + total.T) / 2


def wide_dense(term: Term) -> bool:
    """Whether a term is dense rows of at least ``_SYRK_MIN_WIDTH`` columns (its products are
    FLOP-bound: BLAS ``syrk`` on the CPU, the triangle of sub-blocks on a GPU)."""
    return isinstance(term, Dense) and term.mat.shape[1] >= _SYRK_MIN_WIDTH


def syrk_term(term: Term) -> bool:
    """Whether a term's products with itself go to BLAS ``syrk`` (:func:`use_syrk`) whenever its
    block has enough rows: dense rows on the CPU, wide enough, where the device's tuning uses
    ``syrk`` (:mod:`conetool.ntk_tuning`: the CPU's)."""
    if not wide_dense(term):
        return False
    mat = cast(Dense, term).mat
    return (
        mat.device.type == "cpu"
        and tuning_for(mat.device).syrk_rows is not None
        and mat.dtype in (torch.float32, torch.float64)
        and blas_syrk.available()
    )


def use_syrk(mat: Tensor) -> bool:
    """Whether :func:`gram` uses BLAS ``syrk`` for a dense term ``mat``: a :func:`syrk_term` with
    enough rows."""
    return mat.shape[0] >= _SYRK_MIN_ROWS and syrk_term(Dense(mat))


def product(left: Tensor, right: Tensor) -> Tensor:
    """``left @ right.T`` ``(m, n)`` in float64 from rows ``(m, w)`` and ``(n, w)`` in any dtype.

    With the accuracy fixes on (:mod:`conetool.ntk_precision`) and ``w`` wider than the
    tuning's ``piece_columns`` (:mod:`conetool.ntk_tuning`), float32 (or narrower) rows are
    multiplied in pieces of that many columns, batched, whose partial products are summed in float64; otherwise one product in the
    rows' dtype.
    """
    width = left.shape[1]
    tuning = tuning_for(left.device)
    chunk = tuning.piece_columns
    if left.dtype == torch.float64 or width <= chunk or not ntk_precision.enabled():
        return (left @ right.T).to(torch.float64)
    m, n = left.shape[0], right.shape[0]
    pieces = width // chunk
    main = pieces * chunk
    out = torch.zeros(m, n, dtype=torch.float64, device=left.device)
    lhs = left[:, :main].unflatten(1, (pieces, chunk)).transpose(0, 1)  # (pieces, m, chunk)
    rhs = right[:, :main].unflatten(1, (pieces, chunk)).permute(1, 2, 0)  # (pieces, chunk, n)
    step = max(1, tuning.piece_elements // max(1, m * n))
    for lo in range(0, pieces, step):
        out += torch.bmm(lhs[lo : lo + step], rhs[lo : lo + step]).sum(0, dtype=torch.float64)
    if main < width:
        out += (left[:, main:] @ right[:, main:].T).to(torch.float64)
    return out


def _device(term: Term) -> torch.device:
    return term.mat.device if isinstance(term, Dense) else term.a.device


def _factored_gram(term: FactoredGrad, out: Tensor) -> None:
    """:func:`_factored_product` of a block with itself when ``T = 1``, with symmetric products."""
    b, k = term.g.shape[:2]
    aa = _self_product(term.a[:, 0])
    if term.full:
        gg = _self_product(term.g.reshape(b * k, -1))
        out += (gg.view(b, k, b, k) * aa.view(b, 1, b, 1)).reshape(b * k, b * k)
    else:
        out += aa * _self_product(term.g.reshape(b, -1))


def _self_product(mat: Tensor) -> Tensor:
    """``mat @ mat.T`` in float64 (:func:`product`); BLAS ``syrk`` (half the work,
    :mod:`conetool.blas_syrk`) where it applies, in pieces of ``_SYRK_CHUNK`` columns summed in
    float64 while the accuracy fixes are on.
    """
    if not use_syrk(mat):
        return product(mat, mat)
    fixes = ntk_precision.enabled() and mat.dtype != torch.float64
    return blas_syrk.gram(mat, _SYRK_CHUNK if fixes else mat.shape[1])


def _factored_product(left: FactoredGrad, right: FactoredGrad, out: Tensor) -> None:
    """Add the kernel entries between two FactoredGrad blocks of one layer to ``out`` (float64)."""
    bl, t, da = left.a.shape
    br, u, _ = right.a.shape
    k = left.g.shape[1]
    dg = left.g.shape[3]
    if left.full:
        # Rows (i, j): Σ_{t,t'} (a_it·a_i't') (g_ijt·g_i'j't').
        if t == 1 and u == 1:
            aa = product(left.a[:, 0], right.a[:, 0])  # (bl, br)
            gg = product(left.g.reshape(bl * k, dg), right.g.reshape(br * k, dg))
            prod = gg.view(bl, k, br, k) * aa.view(bl, 1, br, 1)
            out += prod.reshape(bl * k, br * k)
            return
        step = max(1, _KRON_ELEMENTS // max(1, k * t * br * k * u))
        right_a = right.a.reshape(br * u, da)
        right_g = right.g.reshape(br * k * u, dg)
        for lo in range(0, bl, step):
            hi = min(lo + step, bl)
            m = hi - lo
            aa = (left.a[lo:hi].reshape(m * t, da) @ right_a.T).view(m, 1, t, br, 1, u)
            gg = (left.g[lo:hi].reshape(m * k * t, dg) @ right_g.T).view(m, k, t, br, k, u)
            block = (aa * gg).sum(dim=(2, 5), dtype=torch.float64)
            out[lo * k : hi * k] += block.reshape(m * k, br * k)
        return
    # Rows i: Σ_j Σ_{t,t'} (a_it·a_i't') (g_ijt·g_i'jt'); the cotangents become features.
    if t == 1 and u == 1:
        aa = product(left.a[:, 0], right.a[:, 0])
        gg = product(left.g.reshape(bl, k * dg), right.g.reshape(br, k * dg))
        out += aa * gg
        return
    step = max(1, _KRON_ELEMENTS // max(1, t * br * u))
    right_a = right.a.reshape(br * u, da)
    right_g = right.g.transpose(1, 2).reshape(br * u, k * dg)
    for lo in range(0, bl, step):
        hi = min(lo + step, bl)
        m = hi - lo
        aa = left.a[lo:hi].reshape(m * t, da) @ right_a.T
        gg = left.g[lo:hi].transpose(1, 2).reshape(m * t, k * dg) @ right_g.T
        out[lo:hi] += (aa * gg).view(m, t, br, u).sum(dim=(1, 3), dtype=torch.float64)
