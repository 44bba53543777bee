"""Attention by its composite formula while conetool differentiates a model.

PyTorch's fused attention kernels (the fast path of ``nn.MultiheadAttention`` and the Transformer
layers, which eval mode takes when no input requires a gradient, as dual numbers do not; the flash
and memory-efficient kernels of ``scaled_dot_product_attention``) have no forward-mode derivative
(the linearized model of ``switch``) and no ``vmap`` rule (the eNTK's per-example gradients, which
then loop over the examples with a warning). The composite path computes the same function with
operations that have both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["composite_attention"]


@contextlib.contextmanager
def composite_attention() -> Iterator[None]:
    """Within the block, attention runs by its composite formula (the global settings restored
    on exit)."""
    with contextlib.ExitStack() as stack:
        mha = getattr(torch.backends, "mha", None)
        if mha is not None and hasattr(mha, "set_fastpath_enabled"):
            before = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, before)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # an older torch: its fused kernels are chosen the same way
            pass
        else:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        yield
