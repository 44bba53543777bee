"""What a notebook user passes by mistake to the library functions: each is refused with a
``ConetoolError`` naming the argument and the fix, not a raw ``AttributeError`` or
``IndexError`` from deep inside, nor a silently wrong number or a message blaming something else.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_run import run_fixtures
from torch import nn

import conetool
from conetool import paths
from conetool.geometry import GeometryError, block_size_for, distance_matrix, kernel_distance
from conetool.kernel_regression import kernel_regression
from conetool.kernel_spectrum import spectrum_point

trained, run = run_fixtures()

_WITH_PROGRESS = [
    name
    for name in ("train", "kernels", "distance", "embed", "spectrum", "switch", "report", "demo")
    if "progress" in inspect.signature(getattr(conetool, name)).parameters
]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_every_command_with_a_progress_is_covered() -> None:
    assert len(_WITH_PROGRESS) == 8, _WITH_PROGRESS


@pytest.mark.parametrize("name", _WITH_PROGRESS)
@pytest.mark.parametrize("value", [True, print, "yes"], ids=["True", "print", "str"])
def test_a_progress_that_is_no_progress_display_is_named(
    name: str, value: object, tmp_path: Path
) -> None:
    """progress=True (a notebook user asking for a bar) failed with AttributeError: 'bool'
    object has no attribute 'log' once the command reported, after work was done."""
    # the first argument of each: a path that need not exist (the check comes first)
    first: Any = [0] if name == "switch" else tmp_path / "nothing"
    more = {"out": tmp_path / "out"} if name == "train" else {}
    with pytest.raises(conetool.ConetoolError, match=r"progress=.* is not a progress display"):
        getattr(conetool, name)(first, progress=value, **more)


@pytest.mark.parametrize("model", [None, lambda x: x], ids=["None", "function"])
def test_empirical_ntk_of_no_module_is_named(model: Any) -> None:
    with pytest.raises(conetool.ConetoolError, match="needs a torch.nn.Module as model"):
        conetool.empirical_ntk(model, torch.randn(3, 4))


def test_empirical_ntk_of_numpy_inputs_says_to_make_them_tensors() -> None:
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(conetool.ConetoolError, match=r"x1 as a torch.Tensor, got ndarray"):
        conetool.empirical_ntk(_mlp(), x)
    with pytest.raises(conetool.ConetoolError, match=r"x2 as a torch.Tensor, got ndarray"):
        conetool.empirical_ntk(_mlp(), torch.as_tensor(x), x)


def test_empirical_ntk_refuses_an_integer_dtype_naming_it() -> None:
    """dtype=torch.int64 was blamed on the inputs ("the model cannot take inputs of shape")."""
    with pytest.raises(conetool.ConetoolError, match=r"dtype=torch.int64 is not a floating"):
        conetool.empirical_ntk(_mlp(), torch.randn(3, 4), dtype=torch.int64)


def test_empirical_ntk_refuses_a_memo_that_is_no_engine_memo() -> None:
    with pytest.raises(conetool.ConetoolError, match=r"memo=\{\} is not a conetool.EngineMemo"):
        conetool.empirical_ntk(_mlp(), torch.randn(3, 4), memo={})  # type: ignore[arg-type]


@pytest.mark.parametrize("row", [0, 4])
@pytest.mark.parametrize("method", ["auto", "jacobian"])
def test_nan_inputs_are_named_as_the_inputs(row: int, method: str) -> None:
    """A NaN in the first example read as "the model's output is random in eval mode" (the
    independence check compared NaN with NaN), and one elsewhere blamed the weights."""
    x = torch.randn(5, 4)
    x[row, 1] = float("nan")
    with pytest.raises(conetool.NonFiniteKernelError, match=rf"x1 holds NaN .* at index {row}\)"):
        conetool.empirical_ntk(_mlp(), x, method=method)
    with pytest.raises(conetool.NonFiniteKernelError, match=rf"x2 holds NaN .* at index {row}\)"):
        conetool.empirical_ntk(_mlp(), torch.randn(3, 4), x, method=method)


def test_nan_weights_are_no_random_model() -> None:
    """NaN weights were a ModelError ("random in eval mode"), which kernels takes as the model's
    fault (the run stops, even with skip_bad) rather than the checkpoint's."""
    model = _mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(conetool.NonFiniteKernelError, match="Check the weights for NaN") as info:
        conetool.empirical_ntk(model, torch.randn(5, 4))
    assert not isinstance(info.value, conetool.ModelError)


def test_a_memo_learns_nothing_from_a_call_that_failed_on_nan() -> None:
    """The independence check cannot decide on NaN outputs: the next call of the memo runs it."""

    class Centered(nn.Module):  # each example's output depends on the batch
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x - x.mean(0))

    model, memo = Centered(), conetool.EngineMemo()
    x = torch.randn(5, 4)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(conetool.NonFiniteKernelError):
        conetool.empirical_ntk(model, bad, memo=memo)
    with pytest.raises(conetool.ModelError, match="depends on the other examples"):
        conetool.empirical_ntk(model, x, memo=memo)


@pytest.mark.parametrize("value", [None, "kernel"])
def test_kernel_distance_of_no_kernel_is_named(value: object) -> None:
    """None was "kernels of different shapes: h1 has shape (1,)"; text a raw ValueError."""
    with pytest.raises(GeometryError, match="h1 is not a kernel"):
        kernel_distance(value, torch.eye(3))  # type: ignore[arg-type]


def test_kernel_distance_refuses_a_complex_kernel() -> None:
    """Its imaginary part was dropped with a UserWarning from PyTorch."""
    with pytest.raises(GeometryError, match="complex"):
        kernel_distance(torch.eye(3, dtype=torch.complex64), torch.eye(3))


def _regression_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 10)), rng.standard_normal((4, 10))
    return a @ a.T, b @ a.T, np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2, 0])


def test_kernel_regression_refuses_the_cross_kernel_transposed() -> None:
    """K(x_probe, x_eval) (n, m), as empirical_ntk(model, x_probe, x_eval) gives it, was
    reshaped to (m, n) without a word: a wrong accuracy."""
    k, ke, y, ye = _regression_inputs()
    kernel_regression(k, ke, y, ye, 3)  # (m, n): fine
    with pytest.raises(
        GeometryError, match=r"k_eval has shape \(6, 4\).*\(4, 6\).*x_eval, x_probe"
    ):
        kernel_regression(k, ke.T, y, ye, 3)
    with pytest.raises(GeometryError, match=r"k_train has shape \(6, 6\).*\(5, 5\)"):
        kernel_regression(k, ke[:, :5], y[:5], ye, 3)


@pytest.mark.parametrize("bad", [-1, 3, 0.5])
def test_labels_outside_the_classes_are_refused(bad: float) -> None:
    """-1 was read as the last class and 0.5 as class 0; 3 an IndexError from one_hot."""
    k, ke, y, ye = _regression_inputs()
    wrong = y.astype(np.float64)
    wrong[2] = bad
    with pytest.raises(GeometryError, match=r"train_labels must be whole numbers in \[0, 3\)"):
        kernel_regression(k, ke, wrong, ye, 3)
    with pytest.raises(GeometryError, match=r"eval_labels must be whole numbers in \[0, 3\)"):
        kernel_regression(k, ke, y, wrong[:4], 3)
    with pytest.raises(GeometryError, match=r"labels must be whole numbers in \[0, 3\)"):
        spectrum_point(k, wrong, 3)


def test_a_directory_given_as_the_spec_is_no_missing_file(run: Path) -> None:
    """load_spec(run_dir) said 'spec file ... does not exist'."""
    with pytest.raises(
        conetool.SpecError, match=r"is a directory, not a spec file: pass .*conetool"
    ):
        conetool.load_spec(run)
    with pytest.raises(conetool.SpecError, match=r"is a directory, not a spec file"):
        conetool.train(run.parent, out=run.parent / "other")


def test_a_file_given_as_the_store_is_no_store_to_compute_into(run: Path) -> None:
    """It said 'has no manifest.json. Compute kernels into it first: ... --store FILE'."""
    file = run / "conetool.toml"
    for call in (conetool.Store.open, conetool.distance, conetool.report):
        with pytest.raises(conetool.StoreError, match="is a file, not a store directory") as info:
            call(file)
        assert "Compute kernels into it" not in str(info.value)


def test_a_file_of_the_run_that_is_no_checkpoint_is_named(run: Path) -> None:
    """inspect(run / 'conetool.toml') said "no checkpoints in RUN (it holds: conetool.toml)" of
    a directory that holds three."""
    with pytest.raises(conetool.CheckpointError) as info:
        conetool.inspect(run / "metrics.csv")
    message = str(info.value)
    assert f"'{run / 'metrics.csv'}' is not a checkpoint" in message, message
    assert f"Pass the directory of the checkpoints ('{run}')" in message, message


def test_an_optimizer_state_given_as_the_checkpoint_says_which_file_to_pass(
    run: Path, tmp_path: Path
) -> None:
    """inspect(run / 'step_000005.optim.safetensors') listed it as an 'ok' checkpoint of step 5
    (its momentum buffers as the model's weights), and kernels(it, spec=...) read it as one."""
    state = paths.optimizer_state(run, 5)
    beside = f"Pass the checkpoint beside it ('{paths.checkpoint(run, 5)}') or the run's directory"
    calls = {
        "inspect": lambda: conetool.inspect(state),
        "inspect with a spec": lambda: conetool.inspect(state, spec=paths.spec(run)),
        "kernels": lambda: conetool.kernels(state, store=tmp_path / "store", device="cpu"),
        "kernels with a spec": lambda: conetool.kernels(
            state, spec=paths.spec(run), store=tmp_path / "store", device="cpu"
        ),
    }
    for name, call in calls.items():
        with pytest.raises(conetool.CheckpointError) as info:
            call()
        message = str(info.value)
        assert f"'{state}' is an optimizer state" in message, (name, message)
        assert beside in message, (name, message)
    assert not (tmp_path / "store").exists()
    paths.checkpoint(run, 5).unlink()  # no checkpoint beside it: the run's directory
    with pytest.raises(conetool.CheckpointError, match=r"Pass the run's directory \('"):
        conetool.inspect(state)


@pytest.mark.parametrize(
    ("name", "held", "what"),
    [
        ("optimizer.pt", {"state": {}, "param_groups": []}, "an optimizer state"),
        ("scheduler.pt", {"last_epoch": 200, "_step_count": 201}, "a learning-rate scheduler's"),
        ("scaler.pt", {"scale": 65536.0, "growth_factor": 2.0}, "a gradient scaler's state"),
        ("rng_state.pth", {"python": 1, "cpu": torch.zeros(4)}, "the random number generators'"),
        ("rng_state_1.pth", {"python": 1, "cpu": torch.zeros(4)}, "the random number generators'"),
        ("training_args.bin", {"output_dir": "out", "learning_rate": 0.1}, "the Trainer's arg"),
    ],
)
def test_a_trainers_file_beside_the_weights_says_to_pass_the_weights(
    tmp_path: Path, name: str, held: dict[str, Any], what: str
) -> None:
    """scheduler.pt, scaler.pt, rng_state.pth and training_args.bin given as the checkpoint were
    listed as an unusable checkpoint, "not a state dict ... re-save the model's state dict":
    each is refused as optimizer.pt is, naming what it holds and the weights beside it."""
    out = tmp_path / "out"
    folder = out / "checkpoint-200"
    folder.mkdir(parents=True)
    given = folder / name
    torch.save(held, given)
    weights = folder / "model.safetensors"
    calls = {
        "inspect": lambda: conetool.inspect(given),
        "kernels": lambda: conetool.kernels(given, store=tmp_path / "store", device="cpu"),
    }
    for weights_beside in (False, True):
        if weights_beside:
            save_file({"w": torch.zeros(2)}, str(weights))
            instead = (
                f"Pass the model's weights beside it ('{weights}'), the folder ('{folder}') or "
                f"the run's directory ('{out}')."
            )
        else:
            instead = "Pass the model's weights file (model.safetensors or pytorch_model.bin,"
        for call_name, call in calls.items():
            with pytest.raises(conetool.CheckpointError) as info:
                call()
            message = str(info.value)
            assert message.startswith(f"'{given}' holds {what}"), (call_name, message)
            assert "a Hugging Face Trainer saves beside the model's weights" in message, message
            assert instead in message, (call_name, message)
    assert not (tmp_path / "store").exists()


def _kernels() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(4, 4) + 4 * torch.eye(4) for _ in range(3)]


def test_distance_matrix_on_cuda_without_it_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kernels = _kernels()
    for device in ("cuda", torch.device("cuda")):
        with pytest.raises(GeometryError, match=r"device='cuda' asks for CUDA.*device='cpu'"):
            distance_matrix(kernels.__getitem__, 3, device=device)
    with pytest.raises(GeometryError, match=r"device='gpu' is not a device"):
        distance_matrix(kernels.__getitem__, 3, device="gpu")


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"count": 3.0}, r"count=3\.0 is a float, not an int: pass count=3\."),
        ({"count": "3"}, r"count='3' is a str, not an int: pass count=3\."),
        ({"count": 3, "block_size": 2.0}, r"block_size=2\.0 is a float.*pass block_size=2\."),
        ({"count": 3, "max_memory": "1 gigs"}, r"max_memory='1 gigs' is not a memory size"),
        ({"count": 3, "max_memory": 0}, r"max_memory=0 is not a memory size"),
    ],
)
def test_distance_matrix_names_a_count_or_budget_of_the_wrong_type(
    given: dict[str, Any], said: str
) -> None:
    kernels = _kernels()
    with pytest.raises(GeometryError, match=said):
        distance_matrix(kernels.__getitem__, **given)


def test_distance_matrix_takes_max_memory_as_the_command_line_does() -> None:
    kernels = _kernels()
    expected = distance_matrix(kernels.__getitem__, 3)
    for budget in ("1GiB", "auto", "2e9", 2**20):
        np.testing.assert_array_equal(
            distance_matrix(kernels.__getitem__, 3, max_memory=budget), expected
        )
    assert block_size_for(16, "1KiB") == block_size_for(16, 1024) == 3
    with pytest.raises(GeometryError, match="max_memory=240 bytes is too small"):
        distance_matrix(kernels.__getitem__, 3, max_memory="240B")


def test_distance_matrix_of_a_list_says_to_pass_its_getitem() -> None:
    kernels = _kernels()
    with pytest.raises(GeometryError, match=r"load=list is not callable.*__getitem__"):
        distance_matrix(kernels, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(4, 3), (4, 4, 2), (4, 2, 3, 2)])
def test_spectrum_point_of_a_kernel_that_is_not_square_is_named(shape: tuple[int, ...]) -> None:
    with pytest.raises(GeometryError, match=r"kernel has shape .* cross kernel"):
        spectrum_point(np.ones(shape), np.array([0, 1, 0, 1]), 2)


def test_spectrum_point_with_labels_not_one_per_example_is_named() -> None:
    with pytest.raises(GeometryError, match=r"labels of shape .* one label per probe example"):
        spectrum_point(np.eye(4), np.array([0, 1, 0]), 2)


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"top_k": "3"}, r"^top_k='3' is a str, not an int: pass top_k=3\.$"),
        ({"top_k": 2.5}, r"^top_k=2\.5 is a float, not an int: pass a whole number as an int\.$"),
        ({"top_k": True}, r"^top_k=True is a bool, not an int"),
        ({"top_k": 0}, r"^top_k=0: pass a positive number of eigenvalues"),
        ({"num_classes": "2"}, r"^num_classes='2' is a str, not an int: pass num_classes=2\.$"),
    ],
)
def test_spectrum_point_names_a_count_of_the_wrong_type(given: dict[str, Any], said: str) -> None:
    """top_k="3" was taken as 3, 2.5 as 2 and True or 0 as 1; num_classes="2" ended in a raw
    TypeError from numpy: each is refused as distance_matrix refuses its count."""
    arguments: dict[str, Any] = {"num_classes": 2, "top_k": 2, **given}
    with pytest.raises(GeometryError, match=said):
        spectrum_point(np.eye(4), np.array([0, 1, 0, 1]), **arguments)
    assert (
        spectrum_point(np.eye(4), np.array([0, 1, 0, 1]), np.int64(2), np.int64(3)).eigenvalues.size
        == 3
    )


def test_empirical_ntk_of_meta_inputs_is_named() -> None:
    model = _mlp()
    with pytest.raises(conetool.ConetoolError, match=r"x1 is a meta tensor"):
        conetool.empirical_ntk(model, torch.empty(5, 4, device="meta"), device="cpu")
    with pytest.raises(conetool.ConetoolError, match=r"x2 is a meta tensor"):
        conetool.empirical_ntk(
            model, torch.randn(5, 4), torch.empty(2, 4, device="meta"), device="cpu"
        )


def test_empirical_ntk_of_a_model_on_the_meta_device_says_to_give_it_weights() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    with pytest.raises(
        conetool.ModelError, match=r"parameter '0\.weight' is on the meta.*to_empty"
    ):
        conetool.empirical_ntk(model, torch.randn(5, 4), device="cpu")
