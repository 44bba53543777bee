"""conetool from a researcher's script or notebook: what the caller set up around a call is
neither changed by it nor read into its results (the default dtype), and importing conetool from
a package run with ``python -m`` leaves Python's Ctrl-C alone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_run import SPEC, run_fixtures

import conetool
from conetool import _startup
from conetool.spec import spec_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent

trained, run = run_fixtures()


@pytest.fixture
def float64_default() -> Iterator[None]:
    """A notebook that computes in float64: ``torch.set_default_dtype(torch.float64)``."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def test_train_under_a_float64_default_trains_the_specs_float32_run(
    trained: Path, tmp_path: Path, float64_default: None
) -> None:
    """The spec alone decides the run: under the caller's float64 default, LeNet/MLP specs were
    built in float64, so that the same seed drew another initialization and the checkpoints
    were float64. The caller's default is given back."""
    out = tmp_path / "run"
    conetool.train(spec_from_dict(SPEC, source="tiny.toml"), out, threads=1)
    assert torch.get_default_dtype() == torch.float64
    for name in ("step_000000.safetensors", "step_000010.safetensors"):
        ours, cli = load_file(out / name), load_file(trained / name)
        assert {t.dtype for t in ours.values()} == {torch.float32}, name
        assert ours.keys() == cli.keys()
        assert all(torch.equal(ours[k], cli[k]) for k in cli), name


def test_switch_under_a_float64_default_trains_as_the_command_does(
    run: Path, tmp_path: Path, float64_default: None
) -> None:
    """switch built the float32 run's model in float64: the continuation trained in float64 and
    the checkpoints were warned of as of lower precision than the model."""
    store = tmp_path / "store"
    conetool.kernels(run, store=store, threads=1)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ours = conetool.switch([5], store=store, threads=1)
    assert not [w for w in said if "lower precision" in str(w.message)]
    assert torch.get_default_dtype() == torch.float64
    assert not [w for w in ours.warnings if "lower precision" in w]
    torch.set_default_dtype(torch.float32)
    other = tmp_path / "store32"
    conetool.kernels(run, store=other, threads=1)
    theirs = conetool.switch([5], store=other, threads=1)
    assert [(p.at, p.test_loss, p.test_acc) for p in ours.points] == [
        (p.at, p.test_loss, p.test_acc) for p in theirs.points
    ]


def test_a_failed_call_gives_the_default_dtype_back(tmp_path: Path, float64_default: None) -> None:
    with pytest.raises(conetool.ConetoolError):
        conetool.distance(tmp_path / "missing")
    assert torch.get_default_dtype() == torch.float64


def test_empirical_ntk_keeps_the_callers_default_dtype(float64_default: None) -> None:
    """The model is the caller's: what its forward creates follows the caller's default."""
    seen = []

    class Net(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_default_dtype())
            return super().forward(x)

    net = Net(3, 2)
    kernel = conetool.empirical_ntk(net, torch.randn(4, 3), device="cpu")
    assert kernel.dtype == torch.float64 and set(seen) == {torch.float64}


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["python", "-m", "conetool", "kernels"], "conetool"),
        (["python", "-mconetool"], "conetool"),
        (["python", "-Im", "conetool"], "conetool"),
        (["python", "-X", "importtime", "-W", "error", "-m", "conetool"], "conetool"),
        (["python", "-Ximporttime", "-m", "conetool.__main__"], "conetool.__main__"),
        (["python", "--check-hash-based-pycs", "always", "-m", "conetool"], "conetool"),
        (["python", "-m", "mypkg.script", "-m", "conetool"], "mypkg.script"),
        (["python", "-c", "import conetool", "-m", "conetool"], None),
        (["python", "script.py", "-m", "conetool"], None),
        (["python"], None),
    ],
)
def test_the_module_python_m_runs(argv: list[str], module: str | None) -> None:
    assert _startup.main_module(argv) == module


@pytest.mark.parametrize(("module", "command_line"), [("conetool", True), ("mypkg.script", False)])
def test_only_python_m_conetool_is_the_command_line(
    monkeypatch: pytest.MonkeyPatch, module: str, command_line: bool
) -> None:
    monkeypatch.setattr(sys, "argv", ["-m"])  # as it is while python -m imports the packages
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", module], raising=False)
    assert _startup.is_command_line() is command_line


@pytest.mark.parametrize("module", ["mypkg", "mypkg.script"])
def test_a_package_run_with_python_m_keeps_its_ctrl_c(tmp_path: Path, module: str) -> None:
    """A researcher's package imports conetool in its ``__init__`` and is run as ``python -m``:
    conetool took itself for the command line and replaced the SIGINT handler with its start-up
    guard, so that a Ctrl-C anywhere later (in a long ``kernels`` call, in the user's own code)
    ended the process at once saying 'interrupted while conetool was starting', skipping the
    script's ``finally`` blocks, instead of raising KeyboardInterrupt."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("import conetool\n")
    probe = "import signal\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    (package / "__main__.py").write_text(probe)
    (package / "script.py").write_text(probe)
    assert _python("-m", module, path=tmp_path) == "True"


def _python(*args: str, path: Path | None = None) -> str:
    """What a fresh Python given ``args`` prints (stripped), with this checkout (and ``path``)
    on its import path and SIGINT's default action (:func:`_sigint_as_at_a_terminal`); it must
    exit 0."""
    where = [str(ROOT)] if path is None else [str(ROOT), str(path)]
    done = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(where)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_sigint_as_at_a_terminal,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _sigint_as_at_a_terminal() -> None:
    """SIGINT's default action in the child, as a terminal's shell starts it: a suite run as a
    background job (``pytest &`` in a script, as CI may) starts with SIGINT ignored, which the
    child inherits, and Python then leaves the ignoring in place of its own handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_python_m_conetool_still_guards_its_start_up() -> None:
    """The command line's own start-up keeps its guard (a Ctrl-C while PyTorch loads: exit 130
    at once): ``python -m conetool`` is read as the command line while it imports."""
    code = (
        "import signal, sys\n"
        "sys.argv = ['-m']\n"
        "sys.orig_argv = [sys.executable, '-m', 'conetool', '--help']\n"
        "import conetool\n"
        "print(signal.getsignal(signal.SIGINT) is not signal.default_int_handler)\n"
    )
    assert _python("-c", code) == "True"


def _in_bfloat16(trained: Path, folder: Path) -> Path:
    """A copy of the tiny run whose checkpoints hold bfloat16 tensors (a run saved in half
    precision), with their conetool metadata."""
    out = folder / "bf16"
    shutil.copytree(trained, out)
    for path in sorted(out.glob("step_*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        state = {k: v.to(torch.bfloat16) for k, v in load_file(path).items()}
        save_file(state, str(path), metadata=metadata)
    return out


def test_checkpoint_dtype_warnings_are_the_calls_not_pythons(trained: Path, tmp_path: Path) -> None:
    """distance's noise floor and switch loaded the checkpoints with no ``warn``: what loading
    says of a bfloat16 checkpoint went to Python's warnings module (and on the command line a
    raw ``CheckpointWarning`` with its source line), not to the result's warnings as kernels
    says it. Now switch says it once, of the first such file, as kernels does; distance, whose
    kernels' call said it, says nothing more."""
    run = _in_bfloat16(trained, tmp_path)
    store = tmp_path / "store"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        kernels = conetool.kernels(run, store=store, threads=1)
        distance = conetool.distance(store, threads=1)
        switch = conetool.switch([0, 5], store=store, threads=1)
    assert [str(w.message) for w in said] == []
    lower = [w for w in kernels.warnings if "in lower precision than" in w]
    assert len(lower) == 1 and "step_000000.safetensors" in lower[0]
    assert not [w for w in distance.warnings if "in lower precision than" in w]
    lower = [w for w in switch.warnings if "in lower precision than" in w]
    assert len(lower) == 1 and "step_000000.safetensors" in lower[0], switch.warnings


def test_the_package_is_typed_for_its_users() -> None:
    """Without a ``py.typed`` marker (PEP 561) mypy skipped an installed conetool ('module is
    installed, but missing library stubs or py.typed marker') and every call was ``Any``: the
    annotations this package keeps strict reached no user. The marker ships with the package."""
    assert (ROOT / "conetool" / "py.typed").is_file()
    with open(ROOT / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["conetool"]


def _state() -> dict[str, object]:
    """What a notebook sets up around a call that a library call must neither change nor read."""
    return {
        "threads": torch.get_num_threads(),
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "cwd": os.getcwd(),
        "sys.path": list(sys.path),
        "filters": list(warnings.filters),
        "sigint": signal.getsignal(signal.SIGINT),
    }


def test_every_command_leaves_the_notebook_as_it_found_it(
    trained: Path, tmp_path: Path, float64_default: None
) -> None:
    """Each command's function, called as a notebook calls it (default threads, the caller's own
    thread count and float64 default), leaves them, the working directory, ``sys.path``, the
    warnings filters and Ctrl-C's handler as it found them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    store = tmp_path / "store"
    run = tmp_path / "run"
    calls = {
        "train": lambda: conetool.train(spec_from_dict(SPEC, source="tiny.toml"), run),
        "inspect": lambda: conetool.inspect(run),
        "kernels": lambda: conetool.kernels(run, store=store),
        "distance": lambda: conetool.distance(store),
        "embed": lambda: conetool.embed(store),
        "spectrum": lambda: conetool.spectrum(store),
        "switch": lambda: conetool.switch([5], store=store),
        "report": lambda: conetool.report(store),
    }
    try:
        for name, call in calls.items():
            before = _state()
            call()
            assert _state() == before, name
    finally:
        torch.set_num_threads(threads)


def test_every_exported_error_is_defined_in_conetool_errors() -> None:
    """GeometryError, NonFiniteKernelError and KernelUnderflowError lived in geometry and
    ntk_range: ``from conetool.errors import GeometryError`` failed, and reading
    ``conetool.GeometryError`` for an ``except`` clause loaded PyTorch (seconds). The family
    is whole in :mod:`conetool.errors`; the old modules still give the same classes."""
    import inspect

    import conetool.errors
    import conetool.geometry
    import conetool.ntk

    errors = [
        name
        for name in conetool.__all__
        if inspect.isclass(getattr(conetool, name))
        and issubclass(getattr(conetool, name), BaseException)
    ]
    assert {"GeometryError", "NonFiniteKernelError", "KernelUnderflowError"} <= set(errors)
    for name in errors:
        assert getattr(conetool, name) is getattr(conetool.errors, name), name
    assert conetool.geometry.GeometryError is conetool.errors.GeometryError
    assert conetool.ntk.NonFiniteKernelError is conetool.errors.NonFiniteKernelError
    assert conetool.ntk.KernelUnderflowError is conetool.errors.KernelUnderflowError
    code = (
        "import sys, conetool\n"
        "errors = (conetool.GeometryError, conetool.NonFiniteKernelError,"
        " conetool.KernelUnderflowError)\n"
        "print('torch' in sys.modules)\n"
    )
    assert _python("-c", code) == "False"
