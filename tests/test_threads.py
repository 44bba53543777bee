"""--threads / threads=: one setting for PyTorch and every BLAS pool, and the slow-step warning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info
from torch import nn

from conetool import threads as th
from conetool.errors import ConetoolError


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_limit_threads_sets_torch_and_blas_and_restores() -> None:
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, which the eNTK engine's syrk uses)

    before_torch, before_blas = torch.get_num_threads(), _blas_threads()
    with th.limit_threads(1) as count:
        assert count == 1
        assert torch.get_num_threads() == 1
        assert _blas_threads() == {1}
    assert torch.get_num_threads() == before_torch
    assert _blas_threads() == before_blas


def test_auto_threads_counts_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (th.THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(th, "_torch_default", lambda: 4)
    assert th.auto_threads(cpus=8, busy=0.1) == 4  # idle: PyTorch's default (physical cores)
    assert th.auto_threads(cpus=8, busy=6.3) == 2
    assert th.auto_threads(cpus=2, busy=5.5) == 1  # busy machine: one thread, never zero
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert th.auto_threads(cpus=2, busy=5.5) == 3  # the user's own setting wins
    monkeypatch.setenv(th.THREADS_ENV, "2")
    assert th.auto_threads(cpus=8, busy=0.0) == 2


@pytest.mark.parametrize("value", ["0", "-1", "many", "2.5"])
def test_a_bad_conetool_threads_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # it was ignored without a word ("many": the idle cores) or taken as 1 ("0", "-1"), while a
    # comment said parse_threads reported it; --threads N still overrides it
    monkeypatch.setenv(th.THREADS_ENV, value)
    with pytest.raises(ConetoolError, match=rf"{th.THREADS_ENV}='{value}' is not a thread count"):
        th.resolve_threads("auto")
    assert th.resolve_threads(2) == 2


@pytest.mark.parametrize("value", ["0", "-1", "many", 0, 1.5])
def test_bad_thread_counts_are_refused(value: object) -> None:
    with pytest.raises(ConetoolError, match="threads"):
        th.resolve_threads(value)  # type: ignore[arg-type]


def test_parse_threads() -> None:
    assert th.parse_threads("auto") is None and th.parse_threads(None) is None
    assert th.parse_threads("3") == 3 and th.parse_threads(2) == 2


class _Clock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_slow_steps_warn_once_with_the_fix() -> None:
    warnings: list[str] = []
    flops = 1e8  # expected: 1e8 / 1e10 s + 2 ms = 12 ms per step; warns above 120 ms
    watch = th.SlowStepWatch(flops, warnings.append, threads=2, clock=_Clock(0.2))
    for step in range(100):
        watch(step)
    assert len(warnings) == 1
    assert "200 ms each" in warnings[0] and "--threads 1" in warnings[0]
    assert "2 thread(s)" in warnings[0]


def test_slow_steps_on_one_thread_do_not_advise_one_thread() -> None:
    """demo --threads 1 on a busy machine warned 'conetool runs 1 thread(s): pass --threads 1'."""
    warnings: list[str] = []
    watch = th.SlowStepWatch(1e8, warnings.append, threads=1, clock=_Clock(0.2))
    for step in range(100):
        watch(step)
    assert len(warnings) == 1 and "1 thread(s): stop the other work" in warnings[0]
    assert "--threads" not in warnings[0], warnings[0]


def test_plausible_steps_do_not_warn() -> None:
    warnings: list[str] = []
    watch = th.SlowStepWatch(1e8, warnings.append, threads=2, clock=_Clock(0.1))
    for step in range(100):
        watch(step)
    assert warnings == []


def test_forward_flops_counts_linear_and_conv_layers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    flops = th.forward_flops(model, torch.zeros(2, 1, 8, 8))
    conv = 2 * (2 * 4 * 6 * 6) * (1 * 3 * 3)
    linear = 2 * (2 * 10) * (4 * 6 * 6)
    assert flops == conv + linear
    assert model.training  # its mode is restored


def test_a_thread_count_past_four_per_cpu_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--threads 9999999 (a typo) was taken: OpenMP started threads until the machine could fork
    no more, and the command crashed with a traceback. Past 4 per CPU it is refused, naming it."""
    from typer.testing import CliRunner

    from conetool.cli import app

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    assert th.resolve_threads(8) == 8
    for value in (9, "9", "9999999"):
        with pytest.raises(ConetoolError, match=rf"^threads must be at most 8 .* not {value}\."):
            th.resolve_threads(value)
    monkeypatch.setenv(th.THREADS_ENV, "9")
    with pytest.raises(ConetoolError, match=rf"{th.THREADS_ENV}='9' is not a thread count"):
        th.resolve_threads("auto")
    monkeypatch.delenv(th.THREADS_ENV)
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["distance", "--threads", "9", "--store", str(store), "-q"])
    text = " ".join(result.output.replace("│", " ").split())  # the usage error's box
    assert result.exit_code == 2, text
    assert "--threads" in text and "at most 8 (4 per CPU of this machine), not 9" in text, text
    assert not store.exists()


def test_the_thread_cap_is_on_conetools_variable_only_and_takes_four_per_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "64")  # PyTorch's own setting: taken as it is
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    assert th.auto_threads(cpus=2, busy=0.0) == 64
    monkeypatch.setenv(th.THREADS_ENV, "8")  # 4 per CPU: at the cap, taken
    assert th.auto_threads(cpus=2, busy=0.0) == 8


@pytest.mark.skipif(not os.environ.get("PYTEST_XDIST_WORKER"), reason="not an xdist worker")
def test_an_xdist_worker_computes_with_one_thread() -> None:
    # tests/conftest.py: workers of two threads each on 2 cores wait on each other
    import scipy.linalg  # noqa: F401  (its BLAS, loaded after the conftest's limits)

    assert torch.get_num_threads() == 1
    assert _blas_threads() <= {1}


# --------------------------------------------------------------------------------------------------
# the estimate of a model whose work is not in Linear and Conv modules


class _Attention(nn.Module):
    """Token embedding, self-attention, a functional head (F.linear): no Linear or Conv module is
    called as a module (the attention's out_proj is a Linear that it only reads the weight of).
    It counts its calls in a buffer and a plain tensor attribute."""

    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = nn.Parameter(torch.randn(classes, d) / d**0.5)
        self.register_buffer("calls", torch.zeros(()))
        self.seen = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen += 1
        h = self.emb(x)
        a, _ = self.attn(h, h, h)
        return torch.nn.functional.linear(torch.einsum("bld->bd", a), self.head)


def _attention_flops(batch: int, length: int, d: int, classes: int) -> tuple[float, float]:
    """The attention model's matrix products: its projections and head, and those plus the two
    products of the attention itself (Q K^T, then the weights times V)."""
    projections = 2.0 * batch * length * d * (3 * d + d) + 2.0 * batch * d * classes
    return projections, projections + 2 * (2.0 * batch * length * length * d)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_flops_counts_attention_and_functional_products(mode: str) -> None:
    """An attention model's forward pass was estimated at 0 FLOP: only Linear and Conv modules
    called as modules were counted, and nn.MultiheadAttention calls none (nor F.linear, einsum).
    Its matrix products are counted now, and its call counters are left as they were."""
    torch.manual_seed(0)
    model = _Attention().train(mode == "train")
    x = torch.randint(0, 50, (2, 16))
    flops = th.forward_flops(model, x)
    projections, total = _attention_flops(2, 16, 32, 3)
    assert projections <= flops <= total, (flops, projections, total)
    assert model.training == (mode == "train")  # its mode is restored
    assert float(model.calls) == 0 and float(model.seen) == 0  # its state is unchanged


def test_a_slow_step_of_an_attention_model_is_warned_of_with_its_work() -> None:
    """The warning said '2.0 ms for 0 MFLOP' of an attention model, and warned of any step over
    20 ms however large the model: the estimate counted none of its work."""
    model = _Attention(vocab=100, d=256, heads=4)
    example = torch.randint(0, 100, (1, 64))
    step_flops = 3 * 32 * th.forward_flops(model, example)  # batch 32: about 3.7 GFLOP
    expected = th.expected_step_seconds(step_flops)  # about 0.37 s
    assert expected > 0.3
    plausible: list[str] = []  # 0.5 s a step: slower than 10 GFLOP/s, not 10x slower
    watch = th.SlowStepWatch(step_flops, plausible.append, threads=2, clock=_Clock(0.5))
    for step in range(100):
        watch(step)
    assert plausible == []
    slow: list[str] = []  # 20 s a step: over 10x what it needs
    watch = th.SlowStepWatch(step_flops, slow.append, threads=2, clock=_Clock(20.0))
    for step in range(100):
        watch(step)
    assert len(slow) == 1 and "20000 ms each" in slow[0], slow
    assert " GFLOP)" in slow[0] and "0 MFLOP" not in slow[0], slow[0]


def test_a_step_of_no_counted_work_is_not_judged() -> None:
    """A model whose forward pass has no matrix product or convolution (elementwise work only)
    has no estimate: its steps are not compared with 2 ms of overhead, nor said to be '0 MFLOP'."""
    model = nn.Sequential(nn.Tanh(), nn.Softplus())
    assert th.forward_flops(model, torch.zeros(4, 3)) == 0
    warnings: list[str] = []
    watch = th.SlowStepWatch(0.0, warnings.append, threads=2, clock=_Clock(1.0))
    for step in range(100):
        watch(step)
    assert warnings == []


def test_the_work_is_said_in_the_unit_that_shows_it() -> None:
    """A small model's step was said to cost '0 MFLOP'."""
    assert th.flops_text(15_360) == "15 kFLOP"
    assert th.flops_text(2.6e7) == "26 MFLOP" and th.flops_text(3.7e9) == "3.7 GFLOP"
    assert th.flops_text(640) == "640 FLOP"
    watch = th.SlowStepWatch(15_360, print, threads=1)
    assert "for 15 kFLOP)" in watch.message(1.0)


def test_the_modules_are_counted_where_the_flop_counter_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where PyTorch's counter cannot run, the Linear and Conv modules are counted by hooks, and
    the model's state is left as it was there too."""
    import torch.utils.flop_counter

    class Broken:
        def __init__(self, **kwargs: object) -> None:
            raise RuntimeError("no counter here")

    monkeypatch.setattr(torch.utils.flop_counter, "FlopCounterMode", Broken)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    assert th.forward_flops(model, torch.zeros(2, 1, 8, 8)) == 10944
    attention = _Attention()
    assert th.forward_flops(attention, torch.randint(0, 50, (2, 16))) == 0  # no module called
    assert float(attention.calls) == 0 and float(attention.seen) == 0
