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
