"""Where one structured eNTK call's dispatched calls go, and what the GPU's cotangent layout costs.

Three measurements, each printed with the command that reproduces it (trace kernel, random
weights, CPU, calls as large as the budget allows as on a GPU):

- ``--phases`` (default): one lone ``empirical_ntk`` call and one with a filled
  :class:`conetool.EngineMemo`, under torch.profiler; the outermost aten calls that compute
  something (``benchmarks/profiling.py``'s ``outer`` rule) counted per phase of the structured
  engine: set-up check, set-up measurement, forward, backward passes (with the copies of their
  cotangents), layer rows, Gram products and the rest (independence check, schedule); and how
  many of them run before the first block of rows (on a GPU, host time the device waits
  through). ``--check-later`` forces the GPU's order (the set-up's check after the blocks).
- ``--layouts``: the peak resident memory a call grows by with the CPU's cotangent layout and with
  the GPU's (``StructuredRows.fuses_copies`` forced), each in a fresh process, and whether the two
  kernels are equal to the bit.
- ``--vmap-backward``: aten calls of ``g`` backward passes of the hooked model against one pass
  ``vmap``-ed over the ``g`` cotangents (``is_grads_batched``), 64 examples.

    python benchmarks/bench_ntk_phases.py --model resnet20 --n 256
    python benchmarks/bench_ntk_phases.py --model resnet20 --n 256 --check-later
    python benchmarks/bench_ntk_phases.py --model resnet20 --n 256 --layouts
    python benchmarks/bench_ntk_phases.py --model resnet20 --vmap-backward
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_ntk  # noqa: E402
from profiling import FORWARDING_OPS, METADATA_OPS  # noqa: E402

from conetool import ntk, ntk_schedule, ntk_structured, ntk_tuning  # noqa: E402
from conetool.ntk import empirical_ntk  # noqa: E402
from conetool.ntk_memo import EngineMemo  # noqa: E402
from conetool.peak_memory import peak_resident_memory  # noqa: E402

PHASES = {  # (owner, method): phase
    (ntk_structured.StructuredRows, "_check"): "set-up check",
    (ntk_structured.StructuredRows, "_measure"): "set-up measure",
    (ntk_structured.StructuredRows, "_measure_only"): "set-up measure",
    (ntk_structured.StructuredRows, "_record"): "forward",
    (ntk_structured.StructuredRows, "_cotangents"): "backward",
    (ntk_structured.StructuredRows, "_layer_terms"): "layer rows",
    (ntk_structured.StructuredRows, "_fallback"): "fallback",
    (ntk_schedule, "_add_self"): "gram",
    (ntk_schedule, "_add_block"): "gram",
}


BLOCK = "block"  # a range around each computation of rows (not a phase: phases stay innermost)


def label_phases() -> None:
    """Wrap each phase's function in a torch.profiler range named after the phase, and each
    computation of rows (``StructuredRows._rows``) in a ``block`` range."""
    labels = {key: "phase: " + phase for key, phase in PHASES.items()}
    labels[(ntk_structured.StructuredRows, "_rows")] = BLOCK
    for (owner, name), label in labels.items():
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def wrapped(*args, _inner=inner, _label=label, **kwargs):
            with torch.profiler.record_function(_label):
                return _inner(*args, **kwargs)

        setattr(owner, name, wrapped)


def outer_by_phase(prof) -> tuple[Counter, int]:
    """Outermost computing aten calls per phase (the innermost phase range around each), and how
    many of them start before the first block of rows: on a GPU, host time the device waits
    through before its first large kernel."""
    first_block = min(
        (e.time_range.start for e in prof.events() if e.name == BLOCK), default=float("inf")
    )
    counts: Counter = Counter()
    before = 0
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in METADATA_OPS:
            continue
        parent, phase = event.cpu_parent, "other"
        while parent is not None:
            if parent.name.startswith("aten::") and parent.name not in FORWARDING_OPS:
                break  # nested in an op that computes: not outermost
            if parent.name.startswith("phase: ") and phase == "other":
                phase = parent.name.removeprefix("phase: ")
            parent = parent.cpu_parent
        else:
            counts[phase] += 1
            before += event.time_range.start < first_block
    return counts, before


def setup(args):
    torch.set_num_threads(args.threads)
    # calls as large as the budget allows, as on a GPU
    ntk_tuning.CPU = dataclasses.replace(ntk_tuning.CPU, activation_bytes=None)
    model = bench_ntk.build(args.model)
    torch.manual_seed(1)
    return model, torch.randn(args.n, *bench_ntk.SHAPES[args.model])


def call(model, x, budget, memo=None):
    return empirical_ntk(model, x, device="cpu", method="structured", max_memory=budget, memo=memo)


def phases(args) -> None:
    model, x = setup(args)
    label_phases()
    if args.check_later:  # the GPU's order: the set-up's check after the blocks
        ntk._checks_later = lambda device: True
    memo = EngineMemo()
    with torch.no_grad():
        call(model, x[:2], args.max_memory)  # warm-up: lazy imports, first-call costs
        call(model, x, args.max_memory, memo)  # fills the memo
        for label, used in (("lone call", None), ("with the memo", memo)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                call(model, x, args.max_memory, used)
            counts, before = outer_by_phase(prof)
            parts = ", ".join(f"{phase} {count:,}" for phase, count in counts.most_common())
            print(
                f"{args.model} n={args.n} {label}: {sum(counts.values()):,} outermost ({parts}); "
                f"{before:,} before the first block"
            )


def layout_worker(args) -> None:
    """One call in this process with the layout ``args.layout``; prints its growth as JSON."""
    model, x = setup(args)
    if args.layout == "gpu":
        ntk_structured.StructuredRows.fuses_copies = lambda self: True
    with torch.no_grad():
        call(model, x[:2], args.max_memory)
        before = peak_resident_memory()
        kernel = call(model, x, args.max_memory)
        grew = peak_resident_memory() - before
    torch.save(kernel, args.out)
    print(json.dumps({"grew_bytes": grew}))


def layouts(args, tmp: Path) -> None:
    kernels = {}
    for layout in ("cpu", "gpu"):
        out = tmp / f"{layout}.pt"
        command = [sys.executable, __file__, "--model", args.model, "--n", str(args.n)]
        command += ["--max-memory", args.max_memory, "--threads", str(args.threads)]
        command += ["--layout", layout, "--out", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        grew = json.loads(result.stdout.strip().splitlines()[-1])["grew_bytes"]
        kernels[layout] = torch.load(out)
        print(f"{args.model} n={args.n} {layout} layout: grew {grew / 2**30:.2f} GiB")
    print(f"kernels equal to the bit: {torch.equal(kernels['cpu'], kernels['gpu'])}")


def vmap_backward(args) -> None:
    model = bench_ntk.build(args.model)
    torch.manual_seed(1)
    x = torch.randn(64, *bench_ntk.SHAPES[args.model])
    eps = []

    def hook(module, inputs, output):
        eps.append(torch.zeros_like(output, requires_grad=True))
        return output + eps[-1]

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear)):
            module.register_forward_hook(hook)
    out = model(x)
    cot = torch.eye(out.shape[1])
    for label in ("one pass per cotangent", "one pass vmap-ed over them"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            if label.startswith("one pass per"):
                for row in cot:
                    torch.autograd.grad(out, eps, row.expand(64, -1), retain_graph=True)
            else:
                grads = cot.unsqueeze(1).expand(-1, 64, -1)
                torch.autograd.grad(out, eps, grads, retain_graph=True, is_grads_batched=True)
        names = [e.name for e in prof.events() if e.name.startswith("aten::")]
        calls = Counter(names)
        print(
            f"{args.model}, {len(cot)} cotangents, 64 examples, {label}: {len(names):,} aten "
            f"calls, convolution_backward {calls['aten::convolution_backward']}, "
            f"native_batch_norm_backward {calls['aten::native_batch_norm_backward']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(bench_ntk.SHAPES))
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--max-memory", default="16GiB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", action="store_true")
    parser.add_argument("--vmap-backward", action="store_true")
    parser.add_argument(
        "--check-later",
        action="store_true",
        help="the GPU's order: the set-up's check after the blocks (ntk._checks_later)",
    )
    parser.add_argument("--layout", choices=("cpu", "gpu"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.layout:
        layout_worker(args)
    elif args.layouts:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            layouts(args, Path(tmp))
    elif args.vmap_backward:
        vmap_backward(args)
    else:
        phases(args)


if __name__ == "__main__":
    main()
