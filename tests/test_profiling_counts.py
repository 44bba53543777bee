"""The benchmarks' launch proxy (benchmarks/profiling.py): outermost aten ops that compute."""

from __future__ import annotations

from types import ModuleType

import torch
from benchmark_module import load_benchmark


def _profiling() -> ModuleType:
    return load_benchmark("profiling")


def test_outer_ops_counts_outermost_computing_ops() -> None:
    outer_ops = _profiling().outer_ops
    events = [
        (1, 0, 100, "aten::stack"),  # counted; hides the cat it calls
        (1, 10, 90, "aten::cat"),
        (1, 100, 200, "aten::matmul"),  # forwards: not counted, the mm it calls is
        (1, 110, 190, "aten::mm"),
        (1, 200, 210, "aten::view"),  # a view: not counted
        (1, 210, 300, "aten::convolution_backward"),  # counted, its CPU helpers not
        (1, 220, 250, "aten::empty"),
        (1, 250, 290, "aten::slow_conv2d_backward"),
        (2, 215, 230, "aten::add"),  # another thread: its own nesting
    ]
    assert outer_ops(events) == 4
    assert outer_ops([]) == 0


def test_summarize_counts_a_real_call() -> None:
    profiling = _profiling()
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    _, summary, _ = profiling.profile_call(lambda: (a @ b).view(64).relu(), cuda=False)
    assert summary["outer"] == 2  # mm (under matmul) and relu; the view is free
    assert summary["aten"] >= 4
