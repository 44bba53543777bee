"""Counting what a profiled call did, from torch.profiler's raw kineto events (shared by
``bench_ntk.py --profile`` and ``bench_kernels_run.py``).

The raw events (``prof.profiler.kineto_results.events()``) are read directly instead of through
``prof.events()`` / ``key_averages()``, whose Python post-processing takes long on calls that
launch 10^5 kernels. Counted:

- ``aten``: CPU events named ``aten::*`` (every dispatcher call, nested ones included: on the CPU
  this is the launch-count proxy of issue 15, fewer and larger calls being the same direction);
- ``outer``: of those, the outermost (not called by another aten op, except by a composite that
  only forwards: ``matmul``, ``reshape``, ...) that compute something (views, allocations and
  other metadata-only ops not counted): the ops the host dispatches from Python and autograd, a
  closer proxy of kernel launches than ``aten``, whose nested calls on the CPU are the CPU
  kernels' own implementation (on CUDA one cuDNN call);
- ``launches``: CUDA runtime/driver launch calls (``cudaLaunchKernel``, ``cuLaunchKernel``,
  ``cudaGraphLaunch``, ...), i.e. what the host dispatched;
- ``kernels``: device events that are kernels (not memcpy/memset), with their summed duration
  (``kernel_s``) and the union of all device intervals (``busy_s``: overlapping kernels on several
  streams counted once);
- ``top``: the device kernels (or, without CUDA, the aten ops) with the largest total time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

LAUNCH_NAMES = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cudaLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
)


def _call(event: Any, name: str, default: Any = None) -> Any:
    method = getattr(event, name, None)
    if method is None:
        return default
    try:
        return method()
    except Exception:  # an accessor missing from this torch version's binding
        return default


def _span_ns(event: Any) -> tuple[int, int]:
    start = _call(event, "start_ns")
    if start is None:
        start = int(_call(event, "start_us", 0) * 1000)
    end = _call(event, "end_ns")
    if end is None:
        duration = _call(event, "duration_ns")
        if duration is None:
            duration = int(_call(event, "duration_us", 0) * 1000)
        end = start + duration
    return int(start), int(end)


def _device(event: Any) -> str:
    kind = _call(event, "device_type")
    return str(kind).split(".")[-1].upper() if kind is not None else "CPU"


# Ops that only make views, allocate or forward to another op: not counted in ``outer``, and (the
# forwarding ones) not hiding the ops they call.
METADATA_OPS = frozenset(
    "aten::" + name
    for name in (
        "empty empty_like empty_strided new_empty as_strided as_strided_ view view_as _unsafe_view "
        "reshape _reshape_alias resize_ select slice narrow transpose transpose_ t t_ numpy_T "
        "permute movedim expand expand_as unsqueeze unsqueeze_ squeeze squeeze_ flatten unflatten "
        "unfold split split_with_sizes chunk unbind diagonal detach alias lift_fresh resolve_conj "
        "resolve_neg _conj real imag result_type to contiguous matmul einsum tensordot "
        "_remove_batch_dim _add_batch_dim"
    ).split()
)
FORWARDING_OPS = frozenset(
    "aten::" + name for name in ("matmul", "einsum", "tensordot", "to", "contiguous", "reshape")
)


def outer_ops(events: list[tuple[int, int, int, str]]) -> int:
    """The ``outer`` count of the module docstring from aten events ``(thread, start, end, name)``."""
    count = 0
    by_thread: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for thread, start, end, name in events:
        by_thread[thread].append((start, -end, name))
    for spans in by_thread.values():
        open_ends: list[int] = []  # ends of the enclosing ops that hide what they call
        for start, neg_end, name in sorted(spans):
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            if open_ends:
                continue
            if name not in METADATA_OPS:
                count += 1
            if name not in FORWARDING_OPS:
                open_ends.append(-neg_end)
    return count


def union_seconds(intervals: list[tuple[int, int]]) -> float:
    """Total length of the union of ``[start, end)`` intervals given in nanoseconds, in seconds."""
    total = 0
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total / 1e9


def raw_events(prof: Any) -> list[Any]:
    """The kineto events of a finished ``torch.profiler.profile``."""
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is None:
        return []
    return list(results.events())


def summarize(events: list[Any], top: int = 20) -> dict[str, Any]:
    """Counts, device time and the ``top`` kernels (or aten ops) by total time; see the module
    docstring."""
    aten = launches = kernels = copies = 0
    kernel_ns = 0
    device_spans: list[tuple[int, int]] = []
    by_kernel: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_op: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    aten_spans: list[tuple[int, int, int, str]] = []
    for event in events:
        name = str(_call(event, "name", ""))
        device = _device(event)
        start, end = _span_ns(event)
        if device == "CPU":
            if name.startswith("aten::"):
                aten += 1
                aten_spans.append((int(_call(event, "start_thread_id", 0) or 0), start, end, name))
                by_op[name][0] += 1
                by_op[name][1] += end - start
            elif name in LAUNCH_NAMES or (
                "Launch" in name and str(_call(event, "activity_type", "")).startswith("cuda_")
            ):
                launches += 1
            continue
        activity = str(_call(event, "activity_type", "") or "")
        device_spans.append((start, end))
        is_copy = activity in ("gpu_memcpy", "gpu_memset") or name.startswith(("Memcpy", "Memset"))
        if is_copy:
            copies += 1
            continue
        kernels += 1
        kernel_ns += end - start
        by_kernel[name][0] += 1
        by_kernel[name][1] += end - start
    table = by_kernel if by_kernel else by_op
    ranked = sorted(table.items(), key=lambda item: -item[1][1])[:top]
    return {
        "aten": aten,
        "outer": outer_ops(aten_spans),
        "launches": launches,
        "kernels": kernels,
        "copies": copies,
        "kernel_s": kernel_ns / 1e9,
        "busy_s": union_seconds(device_spans),
        "top_of": "device kernels" if by_kernel else "aten ops (CPU self+children time)",
        "top": [(name, count, ns / 1e9) for name, (count, ns) in ranked],
    }


def format_top(summary: dict[str, Any], title: str) -> str:
    """The ``top`` list of :func:`summarize` as a plain-text table."""
    lines = [f"{title}: top {len(summary['top'])} {summary['top_of']} by total time"]
    lines.append(f"{'total ms':>10} {'calls':>8} {'mean us':>9}  name")
    for name, count, seconds in summary["top"]:
        mean = 1e6 * seconds / max(count, 1)
        lines.append(f"{1e3 * seconds:>10.2f} {count:>8} {mean:>9.1f}  {name[:110]}")
    return "\n".join(lines)


def profile_call(call: Any, cuda: bool) -> tuple[Any, dict[str, Any], float]:
    """Run ``call()`` once under torch.profiler (CPU activity, plus CUDA when ``cuda``); returns
    its result, :func:`summarize` of its events and the profiled wall time (synchronised)."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        result = call()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    return result, summarize(raw_events(prof)), wall
