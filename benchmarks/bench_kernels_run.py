"""Time a whole ``conetool kernels`` run: K synthetic checkpoints of a built-in model, probe size n.

The script writes, in a temporary folder, a run laid out as ``conetool train`` writes one: a
spec (``conetool.toml``: the model, a ``synthetic`` data set of the model's input shape with 10
classes and at least n training examples, probe size n) and ``--checkpoints`` K safetensors files
``step_000000.safetensors``, ``step_000010.safetensors``, ... with a ``step`` metadata key. Each
checkpoint is the previous one plus a small random step on every parameter (a trajectory, so no two
files are alike); BatchNorm running statistics are non-trivial. Writing them is not timed.

Then it calls the library function ``conetool.kernels(ckpts, store=..., probe_size=n, ...)``
once on one checkpoint (a warm-up into a throwaway store: CUDA context, cuBLAS/cuDNN handles, lazy
imports) and once on all K (timed, into a fresh store), and prints:

- the whole run's wall time and seconds per kernel (wall / K, and ``KernelsResult``'s own mean,
  which counts each checkpoint from its loading to its kernel);
- the time inside the engine calls (``empirical_ntk`` as ``conetool.pipeline.kernels_loop`` calls
  it, wrapped with a timer; on CUDA each call returns its kernel on the host, so it ends when the
  device is done) and the share of the wall spent outside them: loading checkpoints
  (``read_checkpoint``, in a read-ahead thread, and ``apply_checkpoint``), writing kernels
  (``Store.write_kernel``, in a background thread) and the rest (data, probe set,
  store, manifest). That outside share is what overlapping loading and writing with the device's
  work removes. Overlapping intervals (calls on other threads) are counted once.
- on CUDA, the device's peak memory (``KernelsResult.peak_memory``) and its busy fraction.

How the busy fraction is measured, and why: CUDA events time a span of one stream, idle gaps
included, so they cannot tell busy from idle inside a kernel computation. torch.profiler with CUDA
activity (CUPTI) records every device kernel with its start and end, so the union of those
intervals over the wall time is the busy fraction; but the engine launches up to ~10^5 kernels
per checkpoint, and recording all of them over K = 50 would change the run and take long to
process. So the profiler runs on a separate short run of the first ``--profile-checkpoints``
checkpoints (default 3; CUDA activity only, no CPU op recording, which keeps its overhead low),
after the timed run; it also counts the kernels and launch calls per checkpoint. As a cross-check
over the whole timed run, NVML's utilisation (``torch.cuda.utilization``: the share of each
sampling period in which any kernel ran; needs the ``pynvml`` module) is sampled every 0.1 s when
available. On the CPU the profiled run counts aten calls per kernel instead (the launch count's
direction, issue 15).

Examples::

    python benchmarks/bench_kernels_run.py --model lenet5 --checkpoints 3 --n 32 --device cpu
    python benchmarks/bench_kernels_run.py --device cuda                      # resnet20, 50, 1024
    python benchmarks/bench_kernels_run.py --device cuda --checkpoints 20 --method jacobian

``--panel-memory compare`` instead times the run (after the warm-up) with the panel's memory kept
from kernel to kernel, as ``conetool kernels`` does (``ntk_schedule.kept_panel_memory``), and
with it given back after each kernel as before (the block replaced by a no-op), alternately,
``--rounds`` times each, and prints each run's wall time, page faults and system time (this
process's ``getrusage``) and the ratio of the medians, kept over fresh::

    python benchmarks/bench_kernels_run.py --device cpu --checkpoints 4 --n 1024 \\
        --max-memory 4GiB --method jacobian --panel-memory compare --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    "mlp": [1, 28, 28],
    "lenet5": [1, 28, 28],
    "lenet_300_100": [1, 28, 28],
    "resnet20": [3, 32, 32],
    "vgg16": [3, 32, 32],
}
CLASSES = 10
STEP = 10  # checkpoint k is step k * STEP
GIB = 2**30


def write_run(folder: Path, model_name: str, checkpoints: int, n: int) -> Path:
    """A run directory ``folder / "ckpts"`` as described in the module docstring."""
    import torch
    from safetensors.torch import save_file

    from conetool import paths
    from conetool.pipeline.resolve import model_for
    from conetool.spec import save_spec, spec_from_dict

    spec = spec_from_dict(
        {
            "model": {"arch": model_name, "num_classes": CLASSES},
            "data": {
                "dataset": "synthetic",
                "shape": SHAPES[model_name],
                "num_classes": CLASSES,
                "train_size": n + 100,
                "test_size": 100,
            },
            "probe": {"size": n},
            "train": {"steps": STEP * max(checkpoints - 1, 1), "save_every": STEP},
        },
        source="bench_kernels_run.toml",
    )
    ckpts = folder / "ckpts"
    ckpts.mkdir(parents=True)
    save_spec(spec, paths.spec(ckpts))
    torch.manual_seed(0)
    model = model_for(spec)
    with torch.no_grad():
        for module in model.modules():  # running statistics as in a trained checkpoint
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for k in range(checkpoints):
            if k:
                for p in model.parameters():
                    p.add_(1e-2 * (p.std() if p.numel() > 1 else 1.0) * torch.randn_like(p))
            state = {key: v.detach().clone().contiguous() for key, v in model.state_dict().items()}
            save_file(
                state, str(paths.checkpoint(ckpts, k * STEP)), metadata={"step": str(k * STEP)}
            )
    return ckpts


def subset(ckpts: Path, folder: Path, count: int) -> Path:
    """A run directory with the spec and the first ``count`` checkpoints of ``ckpts`` (links)."""
    from conetool import paths

    folder.mkdir(parents=True)
    shutil.copy(paths.spec(ckpts), paths.spec(folder))
    for step in paths.checkpoint_steps(ckpts)[:count]:
        source, target = paths.checkpoint(ckpts, step), paths.checkpoint(folder, step)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
    return folder


class Timers:
    """Wall-clock intervals of wrapped functions, by name (appends are thread-safe)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        spans = self.spans.setdefault(name, [])

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spans.append((start, time.perf_counter()))

        return timed

    def total(self, name: str) -> float | None:
        """The union of ``name``'s intervals, in seconds (``None``: never wrapped)."""
        if name not in self.spans:
            return None
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.spans[name]):
            if a > end:
                total += b - a
                end = b
            elif b > end:
                total += b - end
                end = b
        return total

    def union_of(self, names: list[str]) -> float:
        merged = Timers()
        merged.spans["all"] = [s for name in names for s in self.spans.get(name, [])]
        return merged.total("all") or 0.0


def instrument(timers: Timers) -> Callable[[], None]:
    """Wrap the engine, checkpoint loading and kernel writing as ``conetool kernels`` calls them;
    returns the function that undoes it. A name the pipeline no longer uses is left out (its
    line then shows ``-``)."""
    from conetool import store
    from conetool.pipeline import kernels_loop

    undo: list[Callable[[], None]] = []
    for owner, attribute, name in (
        (kernels_loop, "empirical_ntk", "engine"),
        (kernels_loop, "read_checkpoint", "load"),
        (kernels_loop, "apply_checkpoint", "apply"),
        (store.Store, "write_kernel", "write"),
    ):
        original = getattr(owner, attribute, None)
        if original is None:
            continue
        setattr(owner, attribute, timers.wrap(name, original))
        undo.append(functools.partial(setattr, owner, attribute, original))

    def restore() -> None:
        for step in undo:
            step()

    return restore


class UtilizationSampler:
    """Samples ``torch.cuda.utilization`` (NVML) every ``period`` seconds in a thread."""

    def __init__(self, device: Any, period: float = 0.1) -> None:
        import torch

        self.samples: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._device, self._period = device, period
        try:
            torch.cuda.utilization(device)
        except Exception as exc:  # no pynvml / NVML: report why
            self.error = f"{type(exc).__name__}: {str(exc)[:80]}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self._stop.wait(self._period):
            try:
                self.samples.append(float(torch.cuda.utilization(self._device)))
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {str(exc)[:80]}"
                return

    def __enter__(self) -> UtilizationSampler:
        if self.error is None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def run_kernels(ckpts: Path, store: Path, args: argparse.Namespace) -> Any:
    import conetool

    return conetool.kernels(
        ckpts,
        store=store,
        probe_size=args.n,
        kind=args.kind,
        device=args.device,
        max_memory=args.max_memory,
        method=args.method,
        threads=args.threads,
    )


def profiled_run(ckpts: Path, store: Path, args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """The first ``--profile-checkpoints`` checkpoints under torch.profiler (CUDA activity only on
    CUDA, CPU ops on the CPU); counts per kernel and the busy fraction."""
    from profiling import format_top, raw_events, summarize
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        result = run_kernels(ckpts, store, args)
        wall = time.perf_counter() - start
    summary = summarize(raw_events(prof))
    summary["wall"] = wall
    summary["count"] = len(result.computed)
    summary["table"] = format_top(summary, "profiled run")
    return summary


def panel_memory_runs(ckpts: Path, folder: Path, args: argparse.Namespace) -> None:
    """``--panel-memory compare``: the timed run with the panel memory kept across kernels and
    given back per kernel, alternately (see the module docstring)."""
    import resource

    from conetool.pipeline import kernels_loop

    kept_block = kernels_loop.kept_panel_memory
    times: dict[str, list[float]] = {"kept": [], "fresh": []}
    for round_ in range(args.rounds):
        order = ["fresh", "kept"] if round_ % 2 == 0 else ["kept", "fresh"]
        for mode in order:
            if mode == "fresh":
                kernels_loop.kept_panel_memory = contextlib.nullcontext  # type: ignore[assignment]
            try:
                before = resource.getrusage(resource.RUSAGE_SELF)
                began = time.perf_counter()
                result = run_kernels(ckpts, folder / f"store_{mode}_{round_}", args)
                wall = time.perf_counter() - began
                after = resource.getrusage(resource.RUSAGE_SELF)
            finally:
                kernels_loop.kept_panel_memory = kept_block  # type: ignore[assignment]
            k = max(len(result.computed), 1)
            times[mode].append(wall)
            print(
                f"{mode:5}  {wall:8.2f} s  {wall / k:7.2f} s per kernel  "
                f"{(after.ru_minflt - before.ru_minflt) / k:12,.0f} page faults per kernel  "
                f"{(after.ru_stime - before.ru_stime) / k:6.2f} s system time per kernel",
                flush=True,
            )
    kept, fresh = statistics.median(times["kept"]), statistics.median(times["fresh"])
    print(f"panel memory kept / given back per kernel: {kept / fresh:.3f} (medians)")
    print("RESULT " + json.dumps({"kept": times["kept"], "fresh": times["fresh"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", choices=list(SHAPES))
    parser.add_argument("--checkpoints", type=int, default=50, help="K (default 50)")
    parser.add_argument("--n", type=int, default=1024, help="probe size (default 1024)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:k")
    parser.add_argument("--max-memory", default=None, help="the engine's budget (default auto)")
    parser.add_argument("--method", default="auto", help="auto (default), structured, jacobian")
    parser.add_argument("--kind", default="trace", choices=["trace", "full", "sum"])
    parser.add_argument("--threads", default="auto", help="conetool's --threads (default auto)")
    parser.add_argument(
        "--profile-checkpoints",
        type=int,
        default=3,
        help="checkpoints in the profiled run after the timed one (0: none; default 3)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="time the first call's costs too")
    parser.add_argument("--top", action="store_true", help="print the profiled run's top kernels")
    parser.add_argument("--keep", default=None, help="write the run and stores here, and keep them")
    parser.add_argument(
        "--panel-memory",
        default="kept",
        choices=["kept", "compare"],
        help="kept (default, as conetool kernels runs), or compare kept with given back",
    )
    parser.add_argument("--rounds", type=int, default=1, help="--panel-memory compare's rounds")
    args = parser.parse_args()
    if args.threads != "auto":
        args.threads = int(args.threads)

    import torch

    from conetool.device import resolve_device

    device = resolve_device(args.device)
    args.device = str(device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        ckpts = write_run(folder / "run", args.model, args.checkpoints, args.n)
        written = time.perf_counter() - began
        size = sum(p.stat().st_size for p in ckpts.glob("*.safetensors"))
        print(
            f"conetool kernels, whole run: {args.model}, {args.checkpoints} checkpoints "
            f"({size / 2**20:.1f} MiB, written in {written:.1f} s, not timed), n = {args.n}, "
            f"kind {args.kind}, method {args.method}, max-memory {args.max_memory or 'auto'}, "
            f"device {device} ({name}), torch {torch.__version__}, threads {args.threads}",
            flush=True,
        )
        if not args.no_warmup:
            began = time.perf_counter()
            run_kernels(subset(ckpts, folder / "warm", 1), folder / "store_warm", args)
            print(
                f"warm-up (1 checkpoint, own store, not timed): {time.perf_counter() - began:.2f} s"
            )
        if args.panel_memory == "compare":
            panel_memory_runs(ckpts, folder, args)
            return

        timers = Timers()
        restore = instrument(timers)
        if cuda:
            torch.cuda.synchronize(device)
        sampler = UtilizationSampler(device) if cuda else None
        try:
            with sampler if sampler is not None else contextlib.nullcontext():
                began = time.perf_counter()
                result = run_kernels(ckpts, folder / "store", args)
                if cuda:
                    torch.cuda.synchronize(device)
                wall = time.perf_counter() - began
        finally:
            restore()
        k = len(result.computed)
        engine = timers.total("engine")
        load, apply = timers.total("load"), timers.total("apply")
        write = timers.total("write")
        outside = wall - (engine or 0.0)
        calls = [b - a for a, b in timers.spans.get("engine", [])]
        print(
            f"run: {k} kernels in {wall:.2f} s = {wall / max(k, 1):.3f} s per kernel "
            f"(conetool's own mean, loading to kernel: {result.seconds_per_kernel or 0:.3f} s; "
            f"median engine call {statistics.median(calls) if calls else float('nan'):.3f} s)"
        )

        def share(seconds: float | None) -> str:
            return "-" if seconds is None else f"{seconds:.2f} s ({100 * seconds / wall:.1f}%)"

        other = wall - timers.union_of(["engine", "load", "apply", "write"])
        print(
            f"engine calls: {share(engine)}; outside the engine: {share(outside)}. Reading "
            f"checkpoints {share(load)} and writing kernels {share(write)} run in background "
            f"threads beside the engine; applying weights {share(apply)}; other {share(other)} "
            "(start-up: data, probe set, store; manifest)"
        )
        record: dict[str, Any] = {
            "model": args.model,
            "checkpoints": k,
            "n": args.n,
            "device": name,
            "wall": wall,
            "per_kernel": wall / max(k, 1),
            "engine": engine,
            "outside_share": outside / wall,
            "load": load,
            "apply": apply,
            "write": write,
        }
        if cuda:
            print(f"peak device memory: {result.peak_memory / GIB:.2f} GiB (KernelsResult)")
            record["peak_memory"] = result.peak_memory
            if sampler is not None and sampler.samples:
                mean = statistics.mean(sampler.samples)
                record["nvml_busy"] = mean / 100
                print(
                    f"GPU busy, NVML utilisation over the timed run: {mean:.0f}% "
                    f"(mean of {len(sampler.samples)} samples every 0.1 s)"
                )
            else:
                why = sampler.error if sampler is not None else "no samples"
                print(f"GPU busy, NVML utilisation: n/a ({why})")
        if args.profile_checkpoints > 0:
            count = min(args.profile_checkpoints, args.checkpoints)
            part = subset(ckpts, folder / "profiled", count)
            try:
                prof = profiled_run(part, folder / "store_profiled", args, cuda)
            except Exception as exc:  # the profiler is a diagnostic: say why, keep the timings
                print(f"profiled run failed: {type(exc).__name__}: {exc}")
            else:
                per = max(prof["count"], 1)
                if cuda:
                    record["profiled_busy"] = prof["busy_s"] / prof["wall"]
                    print(
                        f"GPU busy, torch.profiler (CUDA activity) over {prof['count']} "
                        f"checkpoint(s): {prof['busy_s']:.2f} s of {prof['wall']:.2f} s = "
                        f"{100 * record['profiled_busy']:.0f}%; per kernel "
                        f"{prof['kernels'] / per:,.0f} device kernels, "
                        f"{prof['launches'] / per:,.0f} launch calls, "
                        f"{prof['copies'] / per:,.0f} copies, kernel time "
                        f"{prof['kernel_s'] / per:.3f} s"
                    )
                else:
                    print(
                        f"profiled run (CPU ops) over {prof['count']} checkpoint(s): "
                        f"{prof['aten'] / per:,.0f} aten calls per kernel, {prof['wall']:.2f} s"
                    )
                record["profiled"] = {
                    key: prof[key] for key in ("aten", "launches", "kernels", "count", "wall")
                }
                if args.top:
                    print(prof["table"])
        print("RESULT " + json.dumps(record))


if __name__ == "__main__":
    main()
