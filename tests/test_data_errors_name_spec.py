"""A data set that cannot be found, read or built is an error that names the spec file first, as
the spec's own errors do: the fix is a key of that file's [data]."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conetool.cli import app
from conetool.errors import DataError
from conetool.spec import load_spec
from conetool.training import train


def _spec(folder: Path, data: str) -> Path:
    path = folder / "mine.toml"
    path.write_text(f"[data]\n{data}\n[train]\nsteps = 4\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ('dataset = "mnist"\nroot = "{tmp}/absent"', "'data.root' = "),
        ('dataset = "mnist"\nroot = "{tmp}"', "mnist was not found"),
        ('dataset = "cifar10"\nroot = "{tmp}"', "cifar10 was not found"),
        ('dataset = "conetool_no_such_module_xyz:make"', ""),
    ],
)
def test_a_data_error_names_the_spec_file_first(tmp_path: Path, data: str, said: str) -> None:
    spec = _spec(tmp_path, data.format(tmp=tmp_path))
    with pytest.raises(DataError) as caught:
        train(load_spec(spec), tmp_path / "run")
    assert str(caught.value).startswith(f"{spec}: {said}"), caught.value
    assert not (tmp_path / "run").exists()


def test_the_command_says_it_with_the_spec_file_first(tmp_path: Path) -> None:
    spec = _spec(tmp_path, f'dataset = "mnist"\nroot = "{tmp_path}"')
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"error: {spec}: mnist was not found (or is incomplete or corrupted)" in text, text
