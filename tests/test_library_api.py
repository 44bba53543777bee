"""conetool used from Python (a notebook), not the command line: the caller's global state is
left as found, and plain Python values work where the command line takes flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_run import SPEC, run_fixtures

import conetool
from conetool.spec import spec_from_dict

trained, run = run_fixtures()


def _after_seed(seed: int, call: object) -> torch.Tensor:
    torch.manual_seed(seed)
    if callable(call):
        call()
    return torch.randn(4)


def test_library_calls_keep_the_callers_random_state(run: Path, tmp_path: Path) -> None:
    """Building a model seeds torch's global generator with the spec's seed, and training seeds it
    at every step: the caller's stream continues as if conetool had not been called."""
    store = tmp_path / "store"
    calls = {
        "train": lambda: conetool.train(
            spec_from_dict(SPEC, source="tiny.toml"), tmp_path / "again", overwrite=True, threads=1
        ),
        "inspect": lambda: conetool.inspect(run),
        "kernels": lambda: conetool.kernels(run, store=store, threads=1),
        "distance": lambda: conetool.distance(store),
        "switch": lambda: conetool.switch([5], store=store, threads=1),
    }
    for name, call in calls.items():
        for seed in (1, 2):
            expected = _after_seed(seed, None)
            assert torch.equal(_after_seed(seed, call), expected), name


def test_a_failed_call_keeps_the_random_state_too(tmp_path: Path) -> None:
    torch.manual_seed(3)
    expected = torch.randn(4)
    torch.manual_seed(3)
    with pytest.raises(conetool.ConetoolError):
        conetool.distance(tmp_path / "missing")
    assert torch.equal(torch.randn(4), expected)


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 4),
    )


def test_linearized_model_under_inference_mode() -> None:
    """Dual numbers carry no tangent under torch.inference_mode(): the linearized model returned
    f(x; θ_t), the network at the anchor, instead of f_lin(x; θ)."""
    lin = conetool.linearize(_small_net())
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.01)
    x = torch.randn(5, 1, 8, 8)
    expected = lin(x).detach()
    with torch.inference_mode():
        found = lin(x)
    torch.testing.assert_close(found, expected)


@pytest.mark.parametrize("kind", ["trace", "full"])
def test_empirical_ntk_under_inference_mode(kind: str) -> None:
    model, x = _small_net(), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    model.double()
    expected = conetool.empirical_ntk(model, x, kind=kind, device="cpu")
    with torch.inference_mode():
        inputs = x.clone()  # an inference tensor
        found = conetool.empirical_ntk(model, inputs, kind=kind, device="cpu")
        cross = conetool.empirical_ntk(model, inputs, inputs[:2], kind=kind, device="cpu")
    torch.testing.assert_close(found, expected)
    torch.testing.assert_close(cross, expected[:, :2] if kind == "trace" else expected[:, :, :2])


def test_one_step_and_step_pairs_as_plain_python_values(run: Path, tmp_path: Path) -> None:
    """switch(5), distance(refs=0, dts=5), kernels(steps=(0, 5)): a bare int failed with
    "'int' object is not iterable", a string was read one character at a time, and a (first,
    last) pair with "'tuple' object has no attribute 'strip'"."""
    store = tmp_path / "store"
    assert [r.step for r in conetool.inspect(run, steps=(5, None))] == [5, 10]
    assert [r.step for r in conetool.inspect(run, steps=[None, 5])] == [0, 5]
    result = conetool.kernels(run, store=store, steps=(0, 5), threads=1)
    assert result.computed == [0, 5]
    conetool.kernels(run, store=store, threads=1)
    d = conetool.distance(store, refs=0, dts=5, noise=False)
    assert d.refs == [0] and d.dts == [5]
    assert conetool.distance(store, refs="last", noise=False).refs == [10]
    with pytest.raises(conetool.ConetoolError, match="--steps .* is not a step range"):
        conetool.kernels(run, store=store, steps=(0, 5, 10), threads=1)
    assert [p.at for p in conetool.switch(5, store=store, threads=1).points] == [5]
    assert [p.at for p in conetool.switch("0:10:5", store=store, threads=1).points] == [0, 5]
    assert [p.at for p in conetool.switch(range(0, 10, 5), store=store, threads=1).points] == [
        0,
        5,
    ]


def test_demo_refuses_a_run_too_short(tmp_path: Path) -> None:
    """demo(steps=0) trained nothing and then blamed a missing conetool.toml."""
    for steps in (0, 7):
        with pytest.raises(conetool.ConetoolError, match=r"^--steps \d: .*at least 8"):
            conetool.demo(tmp_path / "demo", steps=steps, threads=1)
    with pytest.raises(conetool.ConetoolError, match=r"--probe-size"):
        conetool.demo(tmp_path / "demo", steps=8, probe_size=1, threads=1)
    assert not (tmp_path / "demo").exists()


def test_distance_and_spectrum_take_threads(run: Path, tmp_path: Path) -> None:
    """As the CLI's --threads; and the caller's thread count is back after the call."""
    store = tmp_path / "store"
    conetool.kernels(run, store=store, threads=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []

    class Spy:
        def task(self, description: str, total: int | None) -> Spy:
            seen.append(torch.get_num_threads())
            return self

        def advance(self, amount: int = 1, **fields: object) -> None:
            pass

        def close(self) -> None:
            pass

        def log(self, message: str) -> None:
            seen.append(torch.get_num_threads())

    try:
        conetool.distance(store, noise=False, threads=1, progress=Spy())
        conetool.spectrum(store, threads=1, progress=Spy())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    with pytest.raises(conetool.ConetoolError, match="--threads"):
        conetool.spectrum(store, threads=0)


def test_kernels_take_a_torch_dtype_as_empirical_ntk_does(run: Path, tmp_path: Path) -> None:
    made = conetool.kernels(run, store=tmp_path / "s", dtype=torch.float64, steps=(0, 0), threads=1)
    assert conetool.Store.open(made.store).load_kernel(0).dtype == torch.float64
    with pytest.raises(conetool.ConetoolError, match="--dtype 'int8' is unknown"):
        conetool.kernels(run, store=tmp_path / "t", dtype=torch.int8, threads=1)


def test_every_error_a_call_raises_is_exported_under_conetool_error() -> None:
    for name in ("GeometryError", "MemoryBudgetError", "NonFiniteKernelError", "ModelError"):
        assert issubclass(getattr(conetool, name), conetool.ConetoolError), name
        assert name in conetool.__all__


@pytest.mark.parametrize("name", ["probe_size", "eval_size"])
@pytest.mark.parametrize("value", ["10", 2.5, True, 0])
def test_a_count_that_is_no_whole_number_is_named(
    run: Path, tmp_path: Path, name: str, value: object
) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(conetool.ConetoolError, match=f"{flag} must be a positive whole number"):
        conetool.kernels(run, store=tmp_path / "s", threads=1, **{name: value})
    assert not (tmp_path / "s").exists()  # refused before anything is written
