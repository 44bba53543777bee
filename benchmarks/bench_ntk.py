"""Time conetool's eNTK engine against the torch.func tutorial's vmap(jacrev) contraction.

Every measurement runs in a fresh subprocess, so that its peak memory (``ru_maxrss``) is its own.
For each (model, n) the script measures the baseline once and the engine once per method
(``--methods``: ``structured``, the per-layer engine; ``jacobian``, the reference engine; ``auto``)
and ``--max-memory`` budget, checks that both give the same kernel, and prints one table: wall time, peak resident memory
of the process (and its growth during the call, after a small warm-up call), their ratios to the
baseline, and the ratio of the engine's time to a FLOP floor.

The FLOP floor is the matrix-multiply and convolution FLOPs that any Jacobian-contraction method
must do (counted with ``torch.utils.flop_counter`` on one example): one forward pass and ``c``
backward passes per example for the Jacobian, plus the contraction of the ``n(n+1)/2`` distinct
pairs of examples (``trace``: ``c·p`` multiply-adds per pair; ``full``: ``c²·p``; ``sum``: ``p``),
divided by the rate of a large float32 matrix product measured on this machine with the same
number of threads.

The baseline is the tutorial's ``empirical_ntk_jacobian_contraction``
(https://pytorch.org/tutorials/intermediate/neural_tangent_kernels.html), written out below. When
``x1 is x2`` it computes the Jacobian once (the tutorial computes it twice), which makes the baseline
faster and smaller than the tutorial's own code. ``--baseline-kept-heap`` adds a row: the same
baseline inside :func:`conetool.heap.kept_freed_memory`, the allocator setting every conetool eNTK
call runs under on the CPU (glibc keeps freed memory for reuse instead of faulting it in again),
so that the table shows how much of a ratio is that setting and how much the engine.

On CUDA (``--device cuda``) the worker moves the model and inputs to the device, sets
``torch.backends.cuda.matmul.allow_tf32 = False`` and ``torch.backends.cudnn.allow_tf32 = False``
(the engine turns TF32 off itself; the baseline gets the same full float32 precision), makes one
warm-up call (on all ``n`` examples: ``--warmup full``, the default there), then ``--repeat``
timed calls (default 2) in the same process, each between ``torch.cuda.synchronize()`` calls, and
reports their median. Peak GPU memory is ``torch.cuda.max_memory_allocated()`` after
``torch.cuda.reset_peak_memory_stats()`` (the largest over the timed calls; "growth" subtracts
what was allocated before the call: the model and the inputs). A baseline that runs out of device
memory is reported as ``OOM``; it is skipped, with the memory it would need, when 1.5 times its
Jacobian (``n·c·p`` float32) exceeds 90% of the device's free memory (vgg16 at n = 500). The FLOP
floor uses the device's float32 matmul rate (TF32 off), measured once in a subprocess that also
reports the device's name and memory. The engine's budget (``auto``: 80% of the free device memory
at the call) is printed beside its peak. The CPU table and its defaults (a warm-up on 2 examples,
one run, ``--repeat`` as separate alternating processes with the fastest kept) are unchanged.

``--profile`` adds, for one more call per measurement (after the timed ones), a line with what
torch.profiler saw (``benchmarks/profiling.py``): aten op calls, CUDA launch calls and device
kernels, the summed kernel time and the device's busy time (union of its kernel and copy
intervals) over the timed wall time (the profiled call itself runs slower). On the CPU only the
aten count shows; fewer, larger calls is the direction the CUDA launch count must go.
A method with ``+square`` (``auto+square``, ``auto+square+memo``) computes the Gram matrix of
wide dense rows on a GPU as one square product per piece, as before the triangle of sub-blocks
(``ntk_tuning.GPU.wide_rows``): the A/B of that change.
A method with ``+memo`` (``auto+memo``, ``structured+memo``) times a kernel as ``conetool kernels``
computes each one after the first: every call of the measurement shares one
:class:`conetool.EngineMemo`, filled by one more untimed call on all ``n`` examples, so the timed
call skips the independence check, the structured engine's set-up and ``auto``'s choice (once per
run, issue 15). Without it each timed call is a lone ``empirical_ntk`` call, set-up included.
CUDA only (on the CPU the extra call would be counted in the process's peak memory).

``--gpu-calls`` (CPU only) lifts the CPU's cap on the activations of one call
(``ntk_tuning.CPU.activation_bytes``), so that calls are as large as the budget allows, as on a GPU,
and has the structured engine copy its backward passes' output cotangents as on a GPU
(``ntk_tuning.CPU.fuses_copies``; on the CPU the "fused" copy is still one per tensor): with
``--profile`` it shows on the CPU the aten calls a GPU would dispatch per call. The profile line gives all aten calls and, in brackets, the outermost ones
that compute something (``benchmarks/profiling.py``), the closer proxy of kernel launches. The profile
line of an engine row also gives its calls of the row source (the schedule's blocks).
``--exact`` (CUDA) computes the kernel once more in float64 (``auto``, itself checked against
explicit float64 Jacobians by the tests) and prints under each row its relative Frobenius
difference from that kernel: which of the baseline and the engine a "rel err" comes from.
``--profile-top FILE`` appends the top 20 kernels (by total device time; on the CPU, aten ops) of
each profiled call to FILE.

Examples::

    python benchmarks/bench_ntk.py --quick
    python benchmarks/bench_ntk.py                                   # the full suite
    python benchmarks/bench_ntk.py --models mlp --n 256 --methods structured,jacobian
    python benchmarks/bench_ntk.py --models resnet20 --n 1024 --max-memory auto,4GiB
    python benchmarks/bench_ntk.py --models vgg16 --n 500 --max-memory 8GiB --no-baseline
    python benchmarks/bench_ntk.py --device cuda --models resnet20 --n 1024 --methods auto,jacobian
    python benchmarks/bench_ntk.py --device cuda --models resnet20 --n 1024 --profile
    python benchmarks/bench_ntk.py --device cuda --models lenet5 --n 1024 --methods auto,auto+memo
    python benchmarks/bench_ntk.py --models resnet20 --n 256 --max-memory 16GiB --profile --gpu-calls
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {"mlp": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16": (3, 32, 32)}
DEFAULT_N = {"mlp": [64, 256], "lenet5": [256, 1024], "resnet20": [256, 1024], "vgg16": [8, 500]}
QUICK_N = {"mlp": [16], "lenet5": [64], "resnet20": [32], "vgg16": [2]}
NUM_CLASSES = 10
MARK = "RESULT "  # the worker's result line on stdout starts with this
GIB = 2**30


# --------------------------------------------------------------------------------------------------
# Worker side: one measurement per process


def build(name: str):
    import torch

    from conetool.models import lenet5, mlp, resnet20, vgg16

    factories = {"mlp": mlp, "lenet5": lenet5, "resnet20": resnet20, "vgg16": vgg16}
    torch.manual_seed(0)
    model = factories[name](SHAPES[name], NUM_CLASSES)
    # Non-trivial BatchNorm statistics, as in a trained checkpoint.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def empirical_ntk_jacobian_contraction(fnet_single, params, x1, x2, compute):
    """The torch.func tutorial's baseline (``compute``: full, trace; plus sum)."""
    jac1 = baseline_jacobians(fnet_single, params, x1)
    # The tutorial always recomputes J(x2); here it is reused when x2 is x1.
    jac2 = jac1 if x2 is x1 else baseline_jacobians(fnet_single, params, x2)
    return baseline_contraction(jac1, jac2, compute)


def baseline_jacobians(fnet_single, params, x):
    """The baseline's first half: ``J(x)`` by ``vmap(jacrev)``, one ``(n, c, p_t)`` tensor per
    parameter tensor."""
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(fnet_single), (None, 0))(params, x)
    return [j.flatten(2) for j in jac.values()]


def baseline_contraction(jac1, jac2, compute):
    """The baseline's second half: ``J(x1) @ J(x2).T``, one einsum per parameter tensor, summed."""
    import torch

    einsum_expr = {"full": "Naf,Mbf->NMab", "trace": "Naf,Maf->NM", "sum": "Naf,Mbf->NM"}[compute]
    result = torch.stack(
        [torch.einsum(einsum_expr, j1, j2) for j1, j2 in zip(jac1, jac2, strict=True)]
    )
    return result.sum(0)


def baseline(model, x, kind):
    from torch.func import functional_call

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def fnet_single(params, x):
        return functional_call(model, (params, buffers), (x.unsqueeze(0),)).squeeze(0)

    result = empirical_ntk_jacobian_contraction(fnet_single, params, x, x, kind)
    return result.permute(0, 2, 1, 3) if kind == "full" else result  # (n, c, n, c)


def engine(model, x, kind, max_memory, method, device="cpu", memo=None, on_block=None, dtype=None):
    from conetool.ntk import empirical_ntk

    return empirical_ntk(
        model,
        x,
        kind=kind,
        max_memory=max_memory,
        device=device,
        method=method,
        memo=memo,
        on_block=on_block,
        dtype=dtype,
    )


def worker(args: argparse.Namespace) -> None:
    import torch

    from conetool.peak_memory import peak_resident_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device != "cpu"
    if cuda:  # full float32 for the baseline too (the engine turns TF32 off itself)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = build(args.model)
    torch.manual_seed(1)
    x = torch.randn(args.n, *SHAPES[args.model])
    if cuda:
        model, x = model.to(args.device), x.to(args.device)
    budget = None if args.budget == "auto" else args.budget
    if args.gpu_calls:  # calls as large as the budget allows, as on a GPU
        import dataclasses

        from conetool import ntk_tuning

        # and the cotangents of several backward passes copied as on a GPU
        ntk_tuning.CPU = dataclasses.replace(
            ntk_tuning.CPU, activation_bytes=None, fuses_copies=True
        )

    method, memo = args.method, None
    if "+square" in method:  # the pre-triangle GPU schedule for wide dense rows (A/B)
        import dataclasses

        from conetool import ntk_tuning

        ntk_tuning.GPU = dataclasses.replace(ntk_tuning.GPU, wide_rows=None)  # sub_rows for all
        method = method.replace("+square", "")
    if method.endswith("+memo"):  # the calls share one memo, as a `kernels` run's do
        from conetool.ntk_memo import EngineMemo

        method, memo = method.removesuffix("+memo"), EngineMemo()

    def run(inputs):
        if args.method == "baseline":
            return baseline(model, inputs, args.kind)
        if args.method == "baseline-kept":  # the baseline with conetool's allocator setting
            from conetool.heap import kept_freed_memory

            with kept_freed_memory():
                return baseline(model, inputs, args.kind)
        if args.method == "float64":  # --exact: the reference kernel, computed in float64
            return engine(
                model, inputs, args.kind, budget, "auto", args.device, dtype=torch.float64
            )
        return engine(model, inputs, args.kind, budget, method, args.device, memo, on_block=count)

    def count(done: int, total: int) -> None:  # the engine's calls of its row source
        run.engine_calls += 1

    run.engine_calls = 0

    if memo is not None:  # fill the memo: the set-up of the timed calls' signature, untimed
        with torch.no_grad():
            run(x)
        if cuda:
            torch.cuda.synchronize(x.device)

    if cuda:
        worker_cuda(args, run, x)
        return
    with torch.no_grad():
        if not args.method.startswith("baseline"):
            from conetool import blas_syrk

            blas_syrk.available()  # SciPy's BLAS, imported once per process on first use
        run(x[:2])  # warm-up: lazy imports and first-call costs
        before = peak_resident_memory()
        start, cpu = time.perf_counter(), time.process_time()
        kernel = run(x)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = peak_resident_memory()
    torch.save(kernel.to(torch.float64).contiguous(), args.out)
    result = {"seconds": seconds, "cpu": cpu, "peak": peak, "before": before}
    if args.profile:
        result["profile"] = profiled(args, run, x, cuda=False)
    print(MARK + json.dumps(result))


def profiled(args: argparse.Namespace, run, x, cuda: bool) -> dict:
    """One more call under torch.profiler: counts (benchmarks/profiling.py) and its wall time."""
    import torch
    from profiling import format_top, profile_call

    run.engine_calls = 0
    with torch.no_grad():
        _, summary, wall = profile_call(lambda: run(x), cuda)
    if not args.method.startswith("baseline"):
        summary["engine_calls"] = run.engine_calls
    if args.profile_top:
        title = f"{args.model} n={args.n} {args.method} {args.budget} ({args.device})"
        with open(args.profile_top, "a") as handle:
            handle.write(format_top(summary, title) + "\n\n")
    summary.pop("top")
    summary["wall"] = wall
    return summary


def is_oom(exc: BaseException) -> bool:
    import torch

    from conetool.errors import MemoryBudgetError

    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryBudgetError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def worker_cuda(args: argparse.Namespace, run, x) -> None:
    """Warm-up, then ``--repeat`` synchronised timed calls; median time, peak allocated memory."""
    import torch

    from conetool.ntk import default_memory_budget

    device = x.device
    budget = default_memory_budget(device) if args.budget == "auto" else parse_size(args.budget)
    times: list[float] = []
    peaks: list[int] = []
    before = torch.cuda.memory_allocated(device)
    kernel = None
    try:
        with torch.no_grad():
            if args.method != "baseline":
                from conetool import blas_syrk

                blas_syrk.available()
            warm = run(x if args.warmup == "full" else x[:2])
            del warm
            for _ in range(args.repeat):
                kernel = None  # the last call's kernel is not counted in this one's peak
                torch.cuda.synchronize(device)
                before = torch.cuda.memory_allocated(device)
                if args.budget == "auto":
                    budget = min(budget, default_memory_budget(device))
                torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                kernel = run(x)
                torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
                peaks.append(torch.cuda.max_memory_allocated(device))
    except Exception as exc:
        if not is_oom(exc):
            raise
        peak = torch.cuda.max_memory_allocated(device)
        print(MARK + json.dumps({"error": "OOM", "peak": peak, "before": before}))
        return
    torch.save(kernel.to(device="cpu", dtype=torch.float64).contiguous(), args.out)
    result = {
        "seconds": statistics.median(times),
        "times": times,
        "peak": max(peaks),
        "before": before,
        "budget": budget,
        "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
    }
    if args.profile:
        kernel = None
        result["profile"] = profiled(args, run, x, cuda=True)
    print(MARK + json.dumps(result))


def parse_size(text: str) -> int:
    from conetool.units import parse_memory

    return parse_memory(text)


def device_info(args: argparse.Namespace) -> None:
    """The device's name, memory and float32 matmul rate (TF32 off), for the parent's header."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device(args.device)
    free, total = torch.cuda.mem_get_info(device)
    a = torch.randn(8192, 8192, device=device)
    b = torch.randn(8192, 8192, device=device)
    a @ b
    torch.cuda.synchronize(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    info = {
        "name": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "free": free,
        "total": total,
        "rate": 2 * 8192**3 / best,
    }
    print(MARK + json.dumps(info))


# --------------------------------------------------------------------------------------------------
# Parent side: FLOP floor, measurements, table


def probe(model_name: str, kind: str, threads: int | None) -> dict:
    """Parameters, logits, forward and backward FLOPs of one example, and the matmul rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if threads:
        torch.set_num_threads(threads)
    model = build(model_name)
    x = torch.randn(1, *SHAPES[model_name])
    params = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False) as counter:
        out = model(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(out[0, 0], params)
    backward = counter.get_total_flops()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return {
        "p": sum(p.numel() for p in params),
        "c": out.shape[1],
        "forward": forward,
        "backward": backward,
        "rate": 2 * 2048**3 / best,
    }


def floor_seconds(info: dict, n: int, kind: str) -> float:
    c, p = info["c"], info["p"]
    jacobian = n * (info["forward"] + (1 if kind == "sum" else c) * info["backward"])
    pairs = n * (n + 1) / 2
    per_pair = {"trace": c * p, "full": c * c * p, "sum": p}[kind]
    return (jacobian + 2 * pairs * per_pair) / info["rate"]


def measure(
    model: str, n: int, kind: str, method: str, budget: str, args, out: Path
) -> dict | None:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--models", model,
        "--n", str(n),
        "--kind", kind,
        "--method", method,
        "--budget", budget,
        "--out", str(out),
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.device != "cpu":
        command += ["--device", args.device, "--repeat", str(args.repeat)]
    if args.warmup:
        command += ["--warmup", args.warmup]
    if args.profile:
        command += ["--profile"]
    if args.gpu_calls:
        command += ["--gpu-calls"]
    if args.profile_top:
        command += ["--profile-top", str(Path(args.profile_top).resolve())]
    return run_worker(command, args.timeout)


def run_worker(command: list[str], timeout: float | None) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        oom = any("out of memory" in line.lower() for line in lines[-20:])
        tail = lines[-1:] or ["?"]
        return {"error": ("OOM: " if oom else "") + f"exit {done.returncode}: {tail[0][:100]}"}
    results = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if not results:
        return {"error": "no result line from the worker"}
    return json.loads(results[-1][len(MARK) :])


def available_ram() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def profile_line(row: dict) -> str | None:
    """The ``--profile`` line under a row: what one more (profiled) call did."""
    prof = row.get("profile")
    if prof is None:
        return None
    text = f"    profile: {prof['aten']:,} aten calls"
    if "outer" in prof:  # the ops dispatched from Python and autograd (benchmarks/profiling.py)
        text += f" ({prof['outer']:,} outermost computing)"
    if "engine_calls" in prof:  # row-source calls of the engine's schedule
        text += f" in {prof['engine_calls']} engine call{'s' * (prof['engine_calls'] != 1)}"
    if prof["kernels"] or prof["launches"]:
        busy = prof["busy_s"] / row["seconds"] if row.get("seconds") else float("nan")
        text += (
            f", {prof['launches']:,} launch calls, {prof['kernels']:,} device kernels "
            f"(+{prof['copies']:,} copies), kernels {prof['kernel_s']:.3f} s, device busy "
            f"{prof['busy_s']:.3f} s = {100 * busy:.0f}% of the timed {row['seconds']:.3f} s"
        )
    return text + f"; profiled call {prof['wall']:.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,lenet5,resnet20,vgg16")
    parser.add_argument("--n", default=None, help="comma-separated probe sizes (default per model)")
    parser.add_argument("--kind", default="trace", choices=["trace", "full", "sum"])
    parser.add_argument(
        "--max-memory",
        default="auto",
        help="comma-separated engine budgets, one engine row each (e.g. auto,4GiB)",
    )
    parser.add_argument(
        "--methods",
        default="structured",
        help="comma-separated engine methods, one row each per budget (structured, jacobian, auto; "
        "with +memo: the set-up done once before, as in a kernels run)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:k")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-baseline", action="store_true", help="time the engine only")
    parser.add_argument(
        "--baseline-kept-heap",
        action="store_true",
        help="also time the baseline inside conetool.heap.kept_freed_memory (CPU), the allocator "
        "setting conetool's own calls use, to show how much of a ratio that setting is",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="CPU (default 1): runs per measurement in separate processes, in alternating order, "
        "fastest kept; CUDA (default 2): timed calls in the measurement's process, median kept",
    )
    parser.add_argument(
        "--warmup",
        choices=["small", "full"],
        default=None,
        help="the untimed first call: on 2 examples (CPU default) or on all n (CUDA default)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more call per measurement under torch.profiler: aten calls, CUDA launches, "
        "device busy time",
    )
    parser.add_argument(
        "--gpu-calls",
        action="store_true",
        help="CPU: no cap on a call's activations, so that calls are as large as the budget "
        "allows, and cotangents copied, as on a GPU (with --profile: the aten calls a GPU "
        "would dispatch)",
    )
    parser.add_argument(
        "--profile-top",
        default=None,
        metavar="FILE",
        help="with --profile: append each profiled call's top 20 kernels to FILE",
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="CUDA: also compute the kernel in float64 (auto) and print each row's relative "
        "difference from it",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    # Worker-only arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device-info", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="structured", help=argparse.SUPPRESS)
    parser.add_argument("--budget", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile_top:
        args.profile = True
    cuda = args.device != "cpu"
    if args.repeat is None:
        args.repeat = 2 if cuda else 1
    if args.worker:
        args.model, args.n = args.models, int(args.n)
        if args.warmup is None:
            args.warmup = "full" if cuda else "small"
        worker(args)
        return
    if args.device_info:
        device_info(args)
        return

    import torch

    sys.path.insert(0, str(ROOT))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SHAPES]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(SHAPES)}")
    budgets = [b.strip() for b in args.max_memory.split(",") if b.strip()]
    engine_methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not cuda and any(m.endswith("+memo") for m in engine_methods):
        parser.error("--methods ...+memo needs --device cuda (on the CPU use conetool kernels)")
    if cuda:
        main_cuda(args, models, budgets, engine_methods)
        return
    header = (
        f"{'model':<9} {'params':>10} {'n':>5} {'method':<20} {'time s':>8} {'x base':>7} {'cpu s':>8} "
        f"{'peak MiB':>9} {'growth':>8} {'x base':>7} {'floor s':>8} {'x floor':>8} {'rel err':>9}"
    )
    calls = (
        ", calls as large as the budget allows and cotangents copied, as on a GPU (--gpu-calls)"
        if args.gpu_calls
        else ""
    )
    print(f"kind = {args.kind}, threads = {args.threads or torch.get_num_threads()}{calls}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            info = probe(model, args.kind, args.threads)
            for n in sizes_of(args, model):
                floor = floor_seconds(info, n, args.kind)
                need = n * info["c"] * info["p"] * 4
                methods = [] if args.no_baseline else [("baseline", "baseline", "auto")]
                if methods and args.baseline_kept_heap:
                    methods.append(("baseline kept heap", "baseline-kept", "auto"))
                skipped = None
                if methods and 1.5 * need > 0.8 * available_ram():  # resnet20: peak 1.46 x J
                    skipped = f"skipped: needs about {1.5 * need / 2**30:.1f} GiB"
                    methods = []
                methods += [(f"{m} {b}", m, b) for m in engine_methods for b in budgets]
                results: dict[str, dict] = {}
                for rep in range(args.repeat):  # alternate the order, keep the fastest run
                    for label, method, budget in methods[:: -1 if rep % 2 else 1]:
                        out = kernel_path(tmp, label)
                        row = measure(model, n, args.kind, method, budget, args, out)
                        best = results.get(label)
                        if best is None or "error" in row or row["seconds"] < best["seconds"]:
                            if best is not None and "peak" in best and "peak" in row:
                                row["peak"] = max(row["peak"], best["peak"])
                            results[label] = row
                rows = [(label, results[label]) for label, _, _ in methods]
                if skipped:
                    rows.insert(0, ("baseline", {"error": skipped}))
                base = results.get("baseline")
                for label, row in rows:
                    prefix = f"{model:<9} {info['p']:>10,} {n:>5} {label:<20}"
                    if "error" in row:
                        print(f"{prefix} {row['error']}")
                        continue
                    fast, slow, err = against_baseline(tmp, label, row, base)
                    print(
                        f"{prefix} {row['seconds']:>8.2f} {fast:>7} {row['cpu']:>8.1f} "
                        f"{row['peak'] / 2**20:>9.0f} "
                        f"{(row['peak'] - row['before']) / 2**20:>8.0f} {slow:>7} {floor:>8.2f} "
                        f"{row['seconds'] / floor:>8.1f} {err:>9}"
                    )
                    line = profile_line(row)
                    if line:
                        print(line)
                sys.stdout.flush()
    print(
        "\ntime: wall seconds; cpu: CPU seconds of all threads (steadier on a shared machine). "
        "peak: the process's peak resident memory (ru_maxrss); growth: its increase during the "
        "timed call, after a warm-up call on 2 examples (the largest over --repeat runs; times are "
        "the fastest). x base: ratio to the baseline. floor: "
        "FLOPs of the Jacobians and of the contraction of distinct pairs, over the measured "
        f"float32 matmul rate ({info['rate'] / 1e9:.0f} GFLOP/s for the last model's run)."
    )


def sizes_of(args: argparse.Namespace, model: str) -> list[int]:
    """The n of each row of ``model``: ``--n``, else the quick or the default sizes."""
    if args.n:
        return [int(v) for v in args.n.split(",")]
    return (QUICK_N if args.quick else DEFAULT_N)[model]


def against_baseline(tmp: str, label: str, row: dict, base: dict | None) -> tuple[str, str, str]:
    """``(time ratio, peak ratio, relative Frobenius difference)`` of a row to the baseline's,
    from the kernels the workers saved in ``tmp``; dashes for the baseline itself or without one."""

    if base is None or "error" in base or label == "baseline":
        return "-", "-", "-"
    err = saved_difference(tmp, label, "baseline")
    return (
        f"{row['seconds'] / base['seconds']:.2f}",
        f"{row['peak'] / base['peak']:.2f}",
        f"{err:.1e}",
    )


def kernel_path(tmp: str, label: str) -> Path:
    """Where the worker of row ``label`` saves its kernel in ``tmp``."""
    return Path(tmp, f"{label.replace(' ', '_')}.pt")


def saved_difference(tmp: str, label: str, reference: str) -> float:
    """The relative Frobenius difference between the kernels the workers of rows ``label`` and
    ``reference`` saved in ``tmp``."""
    import torch

    want = torch.load(kernel_path(tmp, reference))
    kernel = torch.load(kernel_path(tmp, label))
    return float((kernel - want).norm() / want.norm())


def against_float64(tmp: str, label: str, exact: dict) -> str:
    """The relative Frobenius difference of a row's kernel from the float64 kernel (``--exact``)."""
    if "error" in exact:
        return f"float64 kernel: {exact['error']}"
    err = saved_difference(tmp, label, "float64")
    return f"against the float64 kernel: {err:.1e} (float64 call {exact['seconds']:.3f} s)"


def main_cuda(args, models: list[str], budgets: list[str], engine_methods: list[str]) -> None:
    """The CUDA table: one measurement process per (model, n, method, budget)."""

    command = [sys.executable, str(Path(__file__).resolve()), "--device-info"]
    device = run_worker([*command, "--device", args.device], args.timeout)
    if "error" in device:
        print(f"no usable CUDA device ({args.device}): {device['error']}")
        sys.exit(2)
    print(
        f"device {args.device}: {device['name']}, {device['total'] / GIB:.1f} GiB "
        f"({device['free'] / GIB:.1f} GiB free), torch {device['torch']} (CUDA {device['cuda']}), "
        f"float32 matmul {device['rate'] / 1e12:.1f} TFLOP/s (TF32 off)"
    )
    print(
        f"kind = {args.kind}, TF32 off for both, warm-up {args.warmup or 'full'}, median of "
        f"{args.repeat} synchronised call(s) per measurement, one process each"
    )
    header = (
        f"{'model':<9} {'params':>10} {'n':>5} {'method':<20} {'time s':>8} {'x base':>7} "
        f"{'peak GiB':>9} {'growth':>7} {'budget':>7} {'x base':>7} {'floor s':>8} {'x floor':>8} "
        f"{'rel err':>9}"
    )
    print(header)
    print("-" * len(header))
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            info = probe(model, args.kind, args.threads)
            info["rate"] = device["rate"]
            for n in sizes_of(args, model):
                floor = floor_seconds(info, n, args.kind)
                need = n * info["c"] * info["p"] * 4
                methods = [] if args.no_baseline else [("baseline", "baseline", "auto")]
                rows: list[tuple[str, dict]] = []
                if methods and 1.5 * need > 0.9 * device["free"]:
                    rows.append(
                        (
                            "baseline",
                            {
                                "error": f"skipped: would need {1.5 * need / GIB:.1f} GiB "
                                f"(1.5 x its Jacobian; {device['free'] / GIB:.0f} GiB free)"
                            },
                        )
                    )
                    methods = []
                methods += [(f"{m} {b}", m, b) for m in engine_methods for b in budgets]
                for label, method, budget in methods:
                    out = kernel_path(tmp, label)
                    out.unlink(missing_ok=True)
                    rows.append((label, measure(model, n, args.kind, method, budget, args, out)))
                exact = None
                if args.exact:  # the float64 kernel every row is compared with
                    out = kernel_path(tmp, "float64")
                    out.unlink(missing_ok=True)
                    exact = measure(model, n, args.kind, "float64", "auto", args, out)
                base = dict(rows).get("baseline")
                for label, row in rows:
                    prefix = f"{model:<9} {info['p']:>10,} {n:>5} {label:<20}"
                    if "error" in row:
                        extra = (
                            f" (peak {row['peak'] / GIB:.1f} GiB when it failed)"
                            if "peak" in row
                            else ""
                        )
                        print(f"{prefix} {row['error']}{extra}")
                        summary.append(f"| {model} | {n} | {label} | {row['error']} | | | |")
                        continue
                    fast, slow, err = against_baseline(tmp, label, row, base)
                    budget = f"{row['budget'] / GIB:.1f}" if row.get("budget") else "-"
                    growth = (row["peak"] - row["before"]) / GIB
                    print(
                        f"{prefix} {row['seconds']:>8.3f} {fast:>7} {row['peak'] / GIB:>9.2f} "
                        f"{growth:>7.2f} {budget:>7} {slow:>7} {floor:>8.3f} "
                        f"{row['seconds'] / floor:>8.1f} {err:>9}"
                    )
                    if row.get("budget") and growth * GIB > row["budget"]:
                        print(f"    OVER BUDGET: grew {growth:.2f} GiB on a {budget} GiB budget")
                    line = profile_line(row)
                    if line:
                        print(line)
                    if exact is not None:
                        print(f"    {against_float64(tmp, label, exact)}")
                    times = ", ".join(f"{t:.3f}" for t in row.get("times", []))
                    summary.append(
                        f"| {model} | {n} | {label} | {row['seconds']:.3f} ({times}) | {fast} | "
                        f"{row['peak'] / GIB:.2f} | {err} |"
                    )
                sys.stdout.flush()
    print(
        "\ntime: median wall seconds of the synchronised calls; x base: ratio to the baseline "
        "(time, then peak). peak: torch.cuda.max_memory_allocated during the call (model and "
        "inputs included); growth: peak minus what was allocated before the call; budget: the "
        "engine's --max-memory (auto: 80% of the free device memory at the call). floor: FLOPs "
        "of the Jacobians and of the contraction of distinct pairs over the device's float32 "
        "matmul rate. rel err: relative Frobenius difference from the baseline's kernel."
    )
    print(f"\n{device['name']}, torch {device['torch']}, kind = {args.kind}, TF32 off:\n")
    print("| model | n | method | time s (each call) | x baseline | peak GiB | rel err |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
