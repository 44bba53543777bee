"""How many CPU threads conetool computes with, and a warning when steps run implausibly slowly.

PyTorch starts one intra-op thread per physical core, and SciPy's and NumPy's BLAS one per
logical core. On a machine whose cores are busy with other work (a shared server, other jobs,
another conetool process) those threads wait on each other at every operation: each parallel
region ends only when its slowest thread has been scheduled, so a small network's thousands of
tiny operations per step each wait for a time slice. Measured on a 2-core machine already
loaded by other work (``benchmarks/bench_contention.py``, two more busy processes beside it), the
demo's training steps took 155 ms with PyTorch's default two threads and 23 ms with one; its
kernel 3.8 s against 0.18 s. Even without the two extra busy processes (the machine was still
shared with other jobs), one thread was 5.7x faster than two on the kernel.

:func:`limit_threads` sets PyTorch's intra-op threads and every BLAS/OpenMP pool that
threadpoolctl knows (SciPy's ``syrk`` in the eNTK engine, NumPy in the geometry and embedding,
its MDS) to one number for the duration of a block, and restores them after. Every
computing command takes ``--threads N``; the library functions take ``threads=N``; both go
through :func:`limit_threads`.

``threads="auto"`` (the default, :func:`auto_threads`): ``CONETOOL_THREADS`` or
``OMP_NUM_THREADS`` when set, else the cores that are idle now (the CPUs this process may use,
less the 1-minute load average of the rest of the machine), at most PyTorch's own default (the
physical cores) and at least one. On an idle machine that is PyTorch's default; on a busy one it
falls towards one thread, which is what a shared machine needs.

This module imports nothing heavy at import time (the CLI's ``--help`` must not load PyTorch).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .choices import integer

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .data import DataBundle
    from .progress import Progress
    from .spec import Spec

THREADS_ENV = "CONETOOL_THREADS"
THREADS_HELP = (
    "CPU threads for PyTorch and BLAS: a number, or auto (the idle cores, at most the physical "
    "ones; CONETOOL_THREADS or OMP_NUM_THREADS when set). On a machine shared with other work, "
    "use 1."
)


def usable_cpus() -> int:
    """The logical CPUs this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


#: Threads per logical CPU of the machine past which a count is refused: more only wait on
#: each other, and a count such as 9999999 (a typo) had OpenMP start threads until the machine
#: could start no more process (the command then crashed, and other programs could not fork).
THREADS_PER_CPU = 4


def most_threads() -> int:
    """The largest thread count taken: :data:`THREADS_PER_CPU` per logical CPU of the machine."""
    return THREADS_PER_CPU * max(1, os.cpu_count() or 1)


def _busy_cpus() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return 0.0


def _torch_default() -> int:
    """PyTorch's own default: its intra-op threads as it started (the physical cores)."""
    import torch

    return max(1, torch.get_num_threads())


def auto_threads(*, cpus: int | None = None, busy: float | None = None) -> int:
    """The ``threads="auto"`` count (see the module docstring).

    ``cpus`` and ``busy`` (the load average of other work) are read from the machine when not
    given. Example: 8 cores with a load of 6.3 from other jobs -> 2 threads.
    """
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        raw = os.environ.get(name, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                value = 0
            if value >= 1 and (value <= most_threads() or name != THREADS_ENV):
                return value  # OMP_NUM_THREADS: PyTorch's own, whatever conetool does
            if name == THREADS_ENV:
                from .errors import ConetoolError

                raise ConetoolError(
                    f"environment variable {THREADS_ENV}={raw!r} is not a thread count. Set it "
                    f"to a whole number from 1 to {most_threads()} (1 on a shared machine), or "
                    "unset it for the idle cores; --threads N (threads=N in Python) overrides it."
                )
            break  # a bad OMP_NUM_THREADS is PyTorch's to report
    cpus = usable_cpus() if cpus is None else cpus
    busy = _busy_cpus() if busy is None else busy
    idle = cpus - math.floor(busy + 0.5)
    return max(1, min(idle, _torch_default()))


def parse_threads(threads: int | str | None) -> int | None:
    """``threads`` as a count, None for "auto". Raises ValueError for anything else."""
    if threads is None:
        return None
    if (count := integer(threads)) is not None:
        value = count
    else:
        text = str(threads).strip().lower()
        if text == "auto":
            return None
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"threads must be a whole number of at least 1 or 'auto', not {threads!r}"
            ) from None
    if value < 1:
        raise ValueError(f"threads must be at least 1 (or 'auto'), not {value}")
    if value > most_threads():
        raise ValueError(
            f"threads must be at most {most_threads()} ({THREADS_PER_CPU} per CPU of this "
            f"machine), not {value}"
        )
    return value


def resolve_threads(threads: int | str | None = "auto") -> int:
    """The number of threads ``threads`` (a count, ``"auto"`` or None = auto) stands for.

    Raises:
        ConetoolError: ``threads`` is no count; the fix names the Python argument (``threads=1``):
            the command line refuses a bad ``--threads`` itself, naming the flag, before this
            runs (:mod:`conetool.cli.runtime`)."""
    from .errors import ConetoolError

    try:
        value = parse_threads(threads)
    except ValueError as e:
        raise ConetoolError(f"{e}. Pass threads=1 on a shared machine.") from None
    return auto_threads() if value is None else value


@contextmanager
def limit_threads(threads: int | str | None = "auto") -> Iterator[int]:
    """Run the block with ``threads`` CPU threads in PyTorch and every BLAS/OpenMP pool.

    Restores the previous settings on exit. Yields the count. Example::

        with conetool.limit_threads(1):
            conetool.kernels("runs/digits", store="conetool-out")
    """
    import torch
    from threadpoolctl import threadpool_limits

    count = resolve_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield count
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------
# slow steps

# One CPU core runs the demo's LeNet-5 steps at about 10 GFLOP/s, overhead included (2.5 ms for
# 26 MFLOP, measured on a shared 2-core VM), and a small step's Python, optimizer and data
# overhead is a millisecond or two. A step 10x slower than that is not the model: the cores are
# oversubscribed (the same steps took 155 ms with PyTorch's two threads beside two busy
# processes, 23 ms with one thread).
SLOW_FLOPS_PER_SECOND = 1e10
SLOW_OVERHEAD_SECONDS = 0.002
SLOW_FACTOR = 10.0
SLOW_AFTER_STEPS = 20


def expected_step_seconds(step_flops: float) -> float:
    """A generous upper estimate of one step's time on one CPU core (see :class:`SlowStepWatch`)."""
    return step_flops / SLOW_FLOPS_PER_SECOND + SLOW_OVERHEAD_SECONDS


def flops_text(flops: float) -> str:
    """``flops`` in the unit that shows it: ``'15 kFLOP'``, ``'26 MFLOP'``, ``'3.6 GFLOP'``."""
    for scale, unit in ((1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "kFLOP")):
        if flops >= scale:
            value = flops / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{flops:.0f} FLOP"


class SlowStepWatch:
    """Warns once when training steps run implausibly slowly for the model's size.

    The heuristic: a step costs about ``step_flops`` floating-point operations (3 x 2 x the
    multiply-adds of a forward pass of the batch: forward, and backward for inputs and weights);
    at 10 GFLOP/s plus 2 ms of overhead, a step should take about
    :func:`expected_step_seconds`. When the median of the first 20 steps (and of each later 20)
    is more than 10 times that, ``warn`` is called once with the measured and expected times and
    the fix (``--threads 1`` on a busy machine). Only on the CPU: GPUs are not oversubscribed by
    threads. ``clock`` is injectable for tests.

    A ``step_flops`` of 0 is no estimate (:func:`forward_flops` found no operation it counts: the
    model's work is in others), not a step that costs nothing: such a watch never warns, since
    any step time would look implausible against 2 ms of overhead.
    """

    def __init__(
        self,
        step_flops: float,
        warn: Callable[[str], None],
        *,
        threads: int,
        clock: Callable[[], float] = time.perf_counter,
        window: int = SLOW_AFTER_STEPS,
    ) -> None:
        self.limit = SLOW_FACTOR * expected_step_seconds(step_flops)
        self.step_flops, self.warn, self.threads = step_flops, warn, threads
        self.clock, self.window = clock, window
        self._last: float | None = None
        self._times: list[float] = []
        self.warned = step_flops <= 0  # no estimate: nothing to compare the steps with

    def __call__(self, step: int) -> None:
        """Call at the start of every step (an ``on_step`` callback of the training loop)."""
        now = self.clock()
        if self._last is not None and not self.warned:
            self._times.append(now - self._last)
            if len(self._times) == self.window:
                median = sorted(self._times)[self.window // 2]
                self._times.clear()
                if median > self.limit:
                    self.warned = True
                    self.warn(self.message(median))
        self._last = now

    def message(self, seconds: float) -> str:
        return (
            f"training steps take {seconds * 1000:.0f} ms each, over {SLOW_FACTOR:.0f}x what a "
            f"model of this size needs on one CPU core ({self.limit / SLOW_FACTOR * 1000:.1f} ms "
            f"for {flops_text(self.step_flops)}). The cores are probably shared with other "
            f"work while conetool runs {self.threads} thread(s): "
            + (
                "stop the other work (conetool already runs one thread)."
                if self.threads == 1
                else "pass --threads 1 (or threads=1 in Python), or stop the other work."
            )
        )


def forward_flops(model: nn.Module, example: torch.Tensor) -> float:
    """Floating-point operations of one forward pass of ``model`` on the batch ``example``
    (``(batch, *input_shape)``): those of its matrix products, convolutions and attention (the
    operations that dominate), wherever they are made (``nn.Linear`` and ``nn.Conv2d`` modules,
    ``nn.MultiheadAttention``'s projections, ``F.linear``, ``torch.matmul``, ``torch.einsum``), as
    PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` counts them in one pass, in eval mode.

    The pass runs with gradients on, as in training: without them, ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` in eval mode take a fused kernel that the counter does not see
    into. It runs on copies of the model's buffers and tensor attributes
    (:func:`conetool.ntk_buffers.state_copies`): a forward pass that updates its state (a call
    counter) leaves the model as it was. Where the counter fails, the Linear and Conv modules
    called as modules are counted with forward hooks instead. 0 when neither finds an operation it
    counts (a model whose work is elementwise): no estimate (:class:`SlowStepWatch`)."""
    import torch
    from torch.func import functional_call

    from .ntk_buffers import state_copies

    was_training = model.training
    try:
        model.eval()
        try:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention())
            with counter, torch.enable_grad():
                functional_call(model, state_copies(model), (example,))
            return float(counter.get_total_flops())
        except Exception:  # the counter failed (or the model: the hooks run it again to say so)
            return _module_flops(model, state_copies(model), example)
    finally:
        model.train(was_training)


def _cpu_attention() -> dict[Any, Callable[..., float]]:
    """The counter's formula for the CPU's fused attention (``F.scaled_dot_product_attention``,
    ``nn.MultiheadAttention`` with ``need_weights=False``), which PyTorch's counter lists only for
    the GPU's kernels: ``2 x`` the multiply-adds of ``Q K^T`` and of the weights times ``V``."""
    import torch

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:  # pragma: no cover - an older PyTorch
        return {}

    def flops(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> float:
        # shapes (batch, heads, L, E), (batch, heads, S, E), (batch, heads, S, Ev); a PyTorch
        # that hands the formula tensors rather than shapes gives their shapes here
        q, k, v = (tuple(getattr(t, "shape", t)) for t in (query, key, value))
        return 2.0 * math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])

    return {op: flops}


def _module_flops(model: nn.Module, state: dict[str, torch.Tensor], example: torch.Tensor) -> float:
    """2 x the multiply-adds of ``model``'s Linear and Conv modules in one no-grad pass of
    ``example`` with the buffers and tensor attributes ``state``, counted with forward hooks."""
    import torch
    from torch import nn
    from torch.func import functional_call

    total = 0.0

    def count(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2.0 * output.numel() * module.in_features
        else:  # a ConvNd: every output element costs in_channels/groups x kernel volume
            assert isinstance(module, nn.modules.conv._ConvNd)
            per = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += 2.0 * output.numel() * per

    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    try:
        with torch.no_grad():
            functional_call(model, state, (example,))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def slow_step_watch(
    model: nn.Module,
    data: DataBundle,
    spec: Spec,
    device: torch.device,
    threads: int,
    progress: Progress,
    *,
    passes: float = 3.0,
    notes: list[str] | None = None,
) -> list[SlowStepWatch]:
    """The ``on_step`` callbacks that watch a training loop's speed: one :class:`SlowStepWatch`
    on the CPU (its warning goes to ``progress.log`` and to ``notes``, which the command's result
    carries to a Python caller who passed no progress), none on a GPU. A step costs ``passes``
    forward passes of the batch (3: forward, backward for inputs and for weights), counted by
    :func:`forward_flops` on the first training example; a model whose operations it does not
    count (0) gets a watch that never warns."""
    import torch

    from .model_inputs import model_batch

    if torch.device(device).type != "cpu":
        return []
    example = model_batch(model, data.train.batch(torch.arange(1))[0], device)
    step_flops = passes * spec.train.batch_size * forward_flops(model, example)

    def warn(message: str) -> None:
        if notes is not None:
            notes.append(message)
        progress.log(f"warning: {message}")

    return [SlowStepWatch(step_flops, warn, threads=threads)]
