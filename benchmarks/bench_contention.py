"""How much conetool slows down when the CPU cores are shared, against a plain PyTorch loop.

    python benchmarks/bench_contention.py            # minutes (10 on a busy 2-core machine)
    python benchmarks/bench_contention.py --quick    # fewer steps and repeats
    python benchmarks/bench_contention.py --busy 4   # four busy processes instead of two

The demo's work (LeNet-5 on the digits, batch 64; its 100-example probe set) is timed in one
process in three rounds: alone, with ``--busy`` processes (default 2) spinning beside it, and alone
again (the quieter alone round is the baseline):

- ``conetool train steps``: conetool's training loop (``TrainingLoop.update``), median step time;
- ``conetool kernels``: ``empirical_ntk`` of the probe set, median of a few;
- each with conetool's default ``threads="auto"`` and with PyTorch's own thread default (what
  conetool did before ``--threads`` existed);
- ``plain loop``: a hand-written PyTorch loop (forward, cross-entropy, backward, SGD step) on the
  same model and batches with PyTorch's defaults, and the same loop with one thread
  (``torch.set_num_threads(1)``, as a careful user would run it on a shared machine).

It prints each time alone and loaded and the slowdown (loaded / alone). The target: conetool's
slowdown with its default is no larger than the plain loop's with one thread, the best a plain
loop does under the same load. The busy processes start ``--settle`` seconds (default 20) before
the loaded round so that the load average sees them, as it sees other jobs on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = (
    # (label, worker, threads)
    ("conetool train steps, threads=auto", "train", "auto"),
    ("conetool train steps, torch default threads", "train", "torch"),
    ("plain loop, torch default threads", "plain", "torch"),
    ("plain loop, 1 thread", "plain", "1"),
    ("conetool kernels, threads=auto", "kernels", "auto"),
    ("conetool kernels, torch default threads", "kernels", "torch"),
)


# --------------------------------------------------------------------------------------------------
# the work, measured in this process (thread settings change between cases; the busy processes
# are separate processes)


def _demo():
    from conetool.pipeline.run_demo import demo_spec
    from conetool.probe import make_probe
    from conetool.training import build_for_spec

    spec = demo_spec()
    model, data = build_for_spec(spec)
    return spec, model, data, make_probe(data, spec.probe)


def _thread_context(threads: str):
    import contextlib

    from conetool.threads import limit_threads

    if threads == "torch":
        return contextlib.nullcontext(TORCH_DEFAULT)
    if threads == "1":  # the plain loop's own setting, no conetool involved
        return _plain_threads(1)
    return limit_threads(threads)


def _plain_threads(count: int):
    import contextlib

    import torch

    @contextlib.contextmanager
    def block():
        torch.set_num_threads(count)
        try:
            yield count
        finally:
            torch.set_num_threads(TORCH_DEFAULT)

    return block()


def _measure(kind: str, threads: str, demo, steps: int, repeat: int) -> tuple[float, int]:
    """Median seconds per step (train, plain) or per kernel, and the threads used."""
    import torch

    from conetool.data import batch_indices
    from conetool.loop import TrainingLoop
    from conetool.ntk import empirical_ntk
    from conetool.optim import make_optimizer
    from conetool.progress import NullProgress

    spec, model, data, probe = demo
    t = spec.train
    times = []
    with _thread_context(threads):
        used = torch.get_num_threads()
        if kind == "plain":
            opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum)
            for step in range(steps + 10):
                x, y = data.train.batch(batch_indices(len(data.train), t.batch_size, t.seed, step))
                began = time.perf_counter()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()
                times.append(time.perf_counter() - began)
            times = times[10:]
        elif kind == "train":
            optimizer = make_optimizer(list(model.parameters()), t)
            loop = TrainingLoop(spec, model, optimizer, data, torch.device("cpu"), NullProgress())
            for step in range(steps + 10):
                began = time.perf_counter()
                loop.update(step)
                times.append(time.perf_counter() - began)
            times = times[10:]
        else:
            empirical_ntk(model, probe.inputs, device="cpu")  # warm up
            for _ in range(repeat):
                began = time.perf_counter()
                empirical_ntk(model, probe.inputs, device="cpu")
                times.append(time.perf_counter() - began)
    return statistics.median(times), used


# --------------------------------------------------------------------------------------------------
# driver


def _busy(count: int) -> list[subprocess.Popen]:
    spin = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]


def _round(demo, steps: int, repeat: int) -> dict[str, tuple[float, int]]:
    return {label: _measure(kind, th, demo, steps, repeat) for label, kind, th in CASES}


def main() -> None:
    global TORCH_DEFAULT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the work")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before loaded runs")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CONETOOL_THREADS"):
        if os.environ.get(name):
            raise SystemExit(f"unset {name}: the benchmark compares thread settings itself")
    import torch

    TORCH_DEFAULT = torch.get_num_threads()
    steps, repeat = (60, 2) if args.quick else (200, 3)
    demo = _demo()
    print(
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({TORCH_DEFAULT} threads by default); "
        f"load average {os.getloadavg()[0]:.2f} before starting; {args.busy} busy processes in "
        f"the loaded round"
    )
    first = _round(demo, steps, repeat)
    spinners = _busy(args.busy)
    try:
        time.sleep(args.settle)
        load = os.getloadavg()[0]
        loaded = _round(demo, steps, repeat)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    again = _round(demo, steps, repeat)
    print(f"load average {load:.2f} when the loaded round started")
    width = max(len(label) for label, _, _ in CASES)
    print(f"{'':{width}}  {'threads':>10}  {'alone ms':>9}  {'loaded ms':>9}  {'slowdown':>8}")
    slowdown = {}
    for label, _, _ in CASES:
        alone = min(first[label], again[label])  # the quieter of the two rounds alone
        busy = loaded[label]
        slowdown[label] = busy[0] / alone[0]
        print(
            f"{label:{width}}  {alone[1]:>4} -> {busy[1]:<3}  {alone[0] * 1e3:9.2f}  "
            f"{busy[0] * 1e3:9.2f}  {slowdown[label]:7.2f}x"
        )
    plain = slowdown["plain loop, 1 thread"]
    for what in ("train steps", "kernels"):
        mine = slowdown[f"conetool {what}, threads=auto"]
        verdict = "met" if mine <= plain * 1.1 else "NOT met"
        print(
            f"target ({what}): conetool (threads=auto) slows {mine:.2f}x, the plain loop with "
            f"1 thread {plain:.2f}x -> {verdict} (10% tolerance)"
        )


TORCH_DEFAULT = 1

if __name__ == "__main__":
    main()
