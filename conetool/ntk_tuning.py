"""How the eNTK engine blocks its work on each kind of device: one :class:`Tuning` per kind.

The engine computes the same kernel on every device; what differs is how it cuts the work: call
sizes, panel pieces, sub-blocks of a panel's product with itself, float32 pieces of a product,
and a few choices of order and layout. All of those are here, as data: :func:`tuning_for` gives
the :data:`CPU` tuning for a CPU device and the :data:`GPU` tuning for any other. The engine reads
them (:mod:`conetool.ntk_schedule`, :mod:`conetool.ntk_terms`, :mod:`conetool.ntk_structured`,
:mod:`conetool.ntk`) instead of testing the device's type itself, once per function call, where
it tested the type before: on the CPU every number is what it was.

What is not a tuning choice stays a test of the device where it is needed: BLAS ``syrk`` and
oneDNN are CPU libraries (:mod:`conetool.blas_syrk`, :mod:`conetool.ntk_precision`), and the
default budget asks the device for its free memory (:func:`conetool.ntk.default_memory_budget`).

:func:`forced_tuning` gives every device one tuning within a block. The tests use it to run the
GPU's choices on the CPU, its sizes scaled down with :func:`dataclasses.replace` so that a small
model takes several pieces, sub-blocks and calls (tests/test_ntk_gpu_tuning_on_cpu.py): a logic
error in a GPU path then fails on the CPU, not in a GPU session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

__all__ = ["CPU", "GPU", "Tuning", "forced_tuning", "tuning_for"]


@dataclass(frozen=True)
class Tuning:
    """The engine's sizes and choices on one kind of device (every tuning gives the same kernel,
    up to the order of float32 rounding).

    Schedule (:mod:`conetool.ntk_schedule`):

    - ``activation_bytes``: most bytes of activations in flight in one call of the row source;
      ``None``: calls as large as the budget allows.
    - ``sub_rows``: rows of one diagonal sub-block of a panel's product with itself, for the terms
      not taken by ``syrk_rows`` or ``wide_rows``; only sub-block pairs on or above the diagonal
      are multiplied.
    - ``wide_rows``: rows of a sub-block for wide dense terms (:func:`ntk_terms.wide_dense`) that
      BLAS ``syrk`` does not multiply; ``None``: ``sub_rows``.
    - ``syrk_rows``: rows of a sub-block for the terms BLAS ``syrk`` multiplies; ``None``: ``syrk``
      is not used (:func:`ntk_terms.syrk_term`; a CPU routine, for CPU tensors only in any case).
    - ``piece_rows``: rows of about which a resident panel is made of pieces (calls of fewer rows
      are stacked into one piece).
    - ``keeps_panel_memory``: whether :func:`ntk_schedule.run` uses the panel memory that
      :func:`ntk_schedule.kept_panel_memory` keeps between calls.

    Products (:mod:`conetool.ntk_terms`):

    - ``piece_columns``: columns per float32 piece of :func:`ntk_terms.product`.
    - ``piece_elements``: float32 partial products (elements) held at once while summing pieces.
    - ``partials_in_workspace``: whether those fit in the schedule's 32 MiB workspace; else the
      plan counts them (:attr:`held_partials`).

    Engines (:mod:`conetool.ntk_structured`, :mod:`conetool.ntk`):

    - ``fuses_copies``: the structured engine fills its cotangent buffers with one fused copy per
      backward pass, in the ``(g, b, ...)`` layout (:meth:`StructuredRows.fuses_copies`).
    - ``checks_later``: the structured engine's set-up check runs after the blocks are
      dispatched, not before (:func:`conetool.ntk._checks_later`).
    - ``auto_structured``: ``method="auto"`` takes the structured engine whatever share of the
      parameters it contracts from factors.
    """

    activation_bytes: int | None
    sub_rows: int
    wide_rows: int | None
    syrk_rows: int | None
    piece_rows: int
    keeps_panel_memory: bool
    piece_columns: int
    piece_elements: int
    partials_in_workspace: bool
    fuses_copies: bool
    checks_later: bool
    auto_structured: bool

    @property
    def held_partials(self) -> int:
        """Bytes of float32 partial products :func:`ntk_terms.product` holds at once beyond what
        the schedule's 32 MiB workspace covers (0 where they fit in it)."""
        return 0 if self.partials_in_workspace else self.piece_elements * 4


CPU = Tuning(
    # Activations in flight in one call, on the CPU. Measured on a CPU, a vmap call's time per
    # example grows with its activations (resnet20: 16 examples per call are 30% faster per
    # example than 128, the caches); small models (lenet5) take large calls, whose rows then need
    # no copying into a panel.
    activation_bytes=2**28,
    # Rows of one diagonal sub-block of a panel's self-product: only sub-block pairs on or above
    # the diagonal are multiplied. Below about 256 rows the products become memory-bound on CPUs.
    sub_rows=512,
    # Wide dense rows go to BLAS syrk (syrk_rows), or, where it cannot take them (no syrk found,
    # another dtype), keep sub-blocks of sub_rows.
    wide_rows=None,
    # Rows of a panel piece (piece_rows), and of a sub-block for the terms multiplied by BLAS syrk
    # (the merged dense rows): one syrk is already half the work of a product, and it runs faster
    # on taller blocks (measured on a 2-core x86 CPU, resnet20's merged rows for 3 logits: 1024
    # rows in one sub-block 132 GFLOP/s, in two of 512 114; 2048 rows in one 173, in four of 512
    # 152). The other terms (factored layers, narrow dense rows) keep sub-blocks of sub_rows and
    # their triangle.
    syrk_rows=2048,
    piece_rows=2048,
    # A panel's stacked pieces are one large allocation, which glibc maps for each call and
    # returns when it is freed: kept between calls within kept_panel_memory().
    keeps_panel_memory=True,
    # Widest float32 product computed in one piece when the accuracy fixes are on
    # (ntk_precision); wider products are summed in float64 over pieces of this many columns.
    # Measured on a 2-core x86 CPU: 8 x 368,640 rows in one float32 product are 3.1e-5 off, in
    # pieces of 2,048 columns 2.7e-8 and of 8,192 1.8e-7 (as fast as one product, or faster:
    # MKL's product of few rows is slow); 512 x 368,640: 5.8e-7 in one product, 2.2e-8 in pieces
    # of 8,192, at the same speed.
    piece_columns=4096,
    # Partial products (elements) held at once while summing the pieces: 16 MiB of float32
    # (cache-sized), inside the schedule's 32 MiB workspace.
    piece_elements=2**22,
    partials_in_workspace=True,
    # One copy per layer output into the (b, g, ...) layout the rows are formed from: no copy of
    # the layout later (ntk_structured.StructuredRows.rows).
    fuses_copies=False,
    # The set-up's check before the first block: nothing to overlap it with.
    checks_later=False,
    # auto chooses from the layers that pass the check (conetool.ntk._AUTO_KRON_SHARE).
    auto_structured=False,
)

GPU = Tuning(
    # On a GPU calls are as large as the budget allows: the device is launch-bound with small
    # calls (resnet20 at n = 1024 in chunks sized for a CPU launched 75,000 kernels, issue 15).
    activation_bytes=None,
    # On a GPU the saving of the triangle is not worth the launches of more, smaller products,
    # except for wide dense rows (wide_rows).
    sub_rows=4096,
    # Rows of a sub-block for the wide dense terms (at least ntk_terms._SYRK_MIN_WIDTH columns:
    # resnet20's merged per-example gradients). Their products are FLOP-bound (resnet20 at
    # n = 1024 on an H200: 96% of a call's wall with the device busy, issue 15), and one product
    # of two sub-blocks is a single batched product over its float32 pieces
    # (ntk_terms.product), so the triangle saves FLOPs without many more launches: s sub-blocks
    # cost (s + 1) / (2 s) of the square (1024 rows in four: 62.5%). On the H200 (f9e2ea8, the
    # README's GPU table) resnet20 at n = 1024 took 0.289 s with the triangle against 0.341 s
    # with the square (benchmarks/bench_ntk.py's "+square" methods, the A/B that
    # benchmarks/gpu_session.sh runs).
    wide_rows=256,
    # BLAS syrk is a CPU routine.
    syrk_rows=None,
    piece_rows=4096,
    # PyTorch's caching allocator keeps device memory anyway.
    keeps_panel_memory=False,
    # Narrower than the CPU's: cuBLAS may accumulate each entry of a product of few rows as one
    # float32 chain along the whole piece. Measured on an NVIDIA H200 (f9e2ea8): the reference
    # engine's full kernel of the fresh ResNet-20 test case (tests/test_ntk_accuracy.py, 40 rows
    # of 272,474 columns) was 1.01e-6 off in pieces of 4,096 columns, its rows alone (contracted
    # in float64) 2.8e-7; one sequential float32 FMA chain per entry, emulated on the CPU for the
    # same rows, adds 7.8e-7 in pieces of 4,096 columns and 7.2e-8 in pieces of 512. A product of
    # 512 columns still does 128 FLOPs per byte of float32 partial products written and read, well
    # above the H200's ratio of float32 matmul rate to memory bandwidth (about 10), so the pieces
    # stay compute-bound.
    piece_columns=512,
    # 256 MiB of float32 partial products at once (fewer, larger batched products), counted by
    # the plan beyond its workspace.
    piece_elements=2**26,
    partials_in_workspace=False,
    # One torch._foreach_copy_ per backward pass (a fused kernel on CUDA, where a copy per slot
    # would launch one kernel per pass and layer output, 430 per call on resnet20 with 10 logits).
    fuses_copies=True,
    # The device computes the blocks while the host runs the check's few hundred small calls.
    checks_later=True,
    # Under vmap, cuDNN computes per-example convolution weight gradients as a grouped
    # convolution that launches a kernel per example and layer (resnet20 at n = 1024 on an H200:
    # 17,408 launches per Winograd stage, the reference engine launch-bound), where the
    # structured engine forms them with one batched matrix product per layer.
    auto_structured=True,
)

# The tuning forced on every device by forced_tuning(): set only within the block.
_FORCED: ContextVar[Tuning | None] = ContextVar("conetool_forced_tuning", default=None)


def tuning_for(device: torch.device) -> Tuning:
    """The tuning of ``device``: :data:`CPU` for a CPU, :data:`GPU` for any other device, or the
    one :func:`forced_tuning` sets. The module's ``CPU`` and ``GPU`` are read at each call (a
    benchmark may replace them for its process)."""
    forced = _FORCED.get()
    if forced is not None:
        return forced
    return CPU if device.type == "cpu" else GPU


@contextmanager
def forced_tuning(tuning: Tuning) -> Iterator[None]:
    """Within the block (and this thread or task), every device gets ``tuning``.

    For tests: ``forced_tuning(dataclasses.replace(GPU, sub_rows=4, ...))`` runs the GPU's
    choices on CPU tensors with sizes a small model reaches. Blocks nest; leaving one restores
    the tuning around it.
    """
    token = _FORCED.set(tuning)
    try:
        yield
    finally:
        _FORCED.reset(token)
