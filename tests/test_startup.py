"""The command line answers --help and usage errors without importing PyTorch (issue 16)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

_PROBE = """
import json, sys
from conetool.cli import main
sys.argv = ["conetool", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "numpy", "scipy", "sklearn", "matplotlib") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _run(args: list[str]) -> dict:
    (result,) = _run_side_by_side([args])
    return result


def _run_side_by_side(commands: list[list[str]]) -> list[dict]:
    """:data:`_PROBE` of each command line, each in its own process, all started at once (each
    imports what its command imports: side by side, the imports of PyTorch overlap)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROBE, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for args in commands
    ]
    try:
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    return [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]


@pytest.mark.parametrize(
    "args, code",
    [
        (["--help"], 0),
        (["kernels", "--help"], 0),
        (["kernels"], 2),  # usage error: CKPTS missing
        (["train", "spec.toml", "--out", "x", "--threads", "many"], 2),
    ],
)
def test_help_and_usage_errors_do_not_import_torch(args: list[str], code: int) -> None:
    result = _run(args)
    assert result["code"] == code
    assert result["heavy"] == []


def test_every_command_help_is_torch_free() -> None:
    """Each command's --help, in one process (the command modules import the library lazily)."""
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom conetool.cli import app\n"
        "for c in ['train','inspect','kernels','distance','embed','switch','report','demo']:\n"
        "    assert CliRunner().invoke(app, [c, '--help']).exit_code == 0, c\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_verdict_defaults_shown_by_distance_match_the_rules() -> None:
    from conetool.cli.options import VERDICT_DEFAULTS
    from conetool.verdict import VerdictRules

    rules = VerdictRules()
    for name in (
        "min_drop",
        "freeze_factor",
        "bounded_exponent",
        "drift_exponent",
        "plateau_tolerance",
        "lazy_level",
    ):
        assert getattr(VERDICT_DEFAULTS, name) == getattr(rules, name), name


def test_package_attributes_are_loaded_on_use() -> None:
    import conetool
    import conetool.linearize  # the submodule must not shadow the function of the same name

    assert callable(conetool.linearize) and not isinstance(conetool.linearize, type(conetool))
    assert set(conetool.__all__) <= set(dir(conetool))
    assert conetool.limit_threads.__module__ == "conetool.threads"


def test_commands_that_draw_nothing_do_not_import_matplotlib(tmp_path: Path) -> None:
    """conetool.pipeline imported every command's module, so conetool kernels and inspect loaded
    matplotlib (the figures of distance and the others, 0.6 s) and SciPy for nothing. (Each
    command in its own process, the two side by side: one PyTorch import's time for both.)"""
    commands = {
        "kernels": ["kernels", str(tmp_path), "--store", str(tmp_path / "s")],
        "inspect": ["inspect", str(tmp_path)],
    }
    results = _run_side_by_side(list(commands.values()))
    for command, result in zip(commands, results, strict=True):
        assert result["code"] == 1, command  # an empty folder: no checkpoints, after torch loaded
        assert "torch" in result["heavy"], command
        assert "matplotlib" not in result["heavy"] and "scipy" not in result["heavy"], (
            command,
            result,
        )


def test_the_pipeline_package_loads_each_command_on_use() -> None:
    import conetool.pipeline as pipeline

    assert set(pipeline.__all__) <= set(dir(pipeline))
    for name in pipeline.__all__:
        module = f"conetool.pipeline.run_{name.removesuffix('Result').lower()}"
        assert getattr(pipeline, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = pipeline.nothing  # type: ignore[attr-defined]
