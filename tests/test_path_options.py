"""Path options given a value that cannot be what they take: Click said "file '' is a
directory" or "dir 'x.toml' is a file" with no fix (and ``--store ''``, ``CKPTS ''``, ``--out ''``
went on in the current folder); each is a usage error (exit 2) naming the flag and the fix,
before anything is loaded or written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conetool import paths
from conetool.cli import app
from conetool.cli.options import path_problem
from conetool.errors import ConetoolError, OptionError

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a file ``notes.toml``, a folder ``empty`` and a run folder ``run`` holding
    a conetool.toml; the current folder, so that what a command would write there is seen."""
    (tmp_path / "notes.toml").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    paths.spec(tmp_path / "run").write_text("[train]\nsteps = 2\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


CASES = [
    # (command line, what is said)
    (
        ["train", "", "--out", "o"],
        "SPEC '' is an empty path, which would mean the current folder. Give the TOML spec of "
        "the run, for example conetool train examples/digits_lenet.toml --out runs/digits.",
    ),
    (
        ["train", "empty", "--out", "o"],
        "SPEC 'empty' is a folder, not a file: SPEC takes the TOML spec of the run; pass the "
        "path of a TOML spec file, for example conetool train",
    ),
    (
        ["train", "run", "--out", "o"],
        "SPEC 'run' is a folder, not a file: SPEC takes the TOML spec of the run; pass "
        "run/conetool.toml, the spec of the run in it.",
    ),
    (
        ["train", "notes.toml", "--out", ""],
        "--out '' is an empty path, which would mean the current folder. Give the folder for "
        "the checkpoints, for example --out runs/digits.",
    ),
    (
        ["train", "notes.toml", "--out", "notes.toml"],
        "--out notes.toml is a file, not a folder: --out takes the folder for the checkpoints "
        "(made when it does not exist). Pass the path of a folder, for example --out "
        "runs/digits, or move notes.toml away.",
    ),
    (
        ["train", "notes.toml", "--out", "notes.toml/a/b"],
        "--out notes.toml/a/b cannot be made: notes.toml is a file, not a folder. --out takes "
        "the folder for the checkpoints: pass a path whose folders are folders",
    ),
    (["inspect", ""], "CKPTS '' is an empty path, which would mean the current folder."),
    (
        ["kernels", ""],
        "CKPTS '' is an empty path, which would mean the current folder. Give the run's "
        "checkpoint folder (or one checkpoint), for example conetool kernels runs/digits.",
    ),
    (
        ["kernels", "run", "--spec", ""],
        "--spec '' is an empty path, which would mean the current folder. Give the TOML spec "
        "of the run, for example --spec runs/digits/conetool.toml. (An empty value usually "
        "comes from a shell variable that is not set.)",
    ),
    (
        ["kernels", "run", "--spec", "run"],
        "--spec run is a folder, not a file: --spec takes the TOML spec of the run; pass --spec "
        "run/conetool.toml, the spec of the run in it.",
    ),
    (
        ["kernels", "run", "--store", "notes.toml"],
        "--store notes.toml is a file, not a folder: --store takes the store's folder (made "
        "when it does not exist). Pass the path of a folder, for example --store conetool-out, "
        "or move notes.toml away.",
    ),
    (["kernels", "run", "--store", ""], "--store '' is an empty path"),
    (
        ["kernels", "run", "--store", " "],
        "--store ' ' is a path of only spaces, which would name a file or folder ' ' in the "
        "current folder. Give the store's folder, for example --store conetool-out.",
    ),
    (
        ["train", " ", "--out", "o"],
        "SPEC ' ' is a path of only spaces, which would name a file or folder ' ' in the "
        "current folder. Give the TOML spec of the run, for example conetool train",
    ),
    (["inspect", "run", "--spec", "empty"], "--spec empty is a folder, not a file"),
    (["distance", "--store", ""], "--store '' is an empty path"),
    (["distance", "--store", "notes.toml"], "--store notes.toml is a file, not a folder"),
    (["distance", "--spec", "empty"], "--spec empty is a folder, not a file"),
    (["distance", "--ckpts", ""], "--ckpts '' is an empty path"),
    (["embed", "--store", "notes.toml"], "--store notes.toml is a file, not a folder"),
    (["embed", "--spec", "empty"], "--spec empty is a folder, not a file"),
    (["spectrum", "--store", ""], "--store '' is an empty path"),
    (["switch", "--at", "0", "--store", "notes.toml"], "--store notes.toml is a file"),
    (["switch", "--at", "0", "--spec", ""], "--spec '' is an empty path"),
    (
        ["report", "--out", "notes.toml"],
        "--out notes.toml is a file, not a folder: --out takes the folder for the report",
    ),
    (["report", "--ckpts", ""], "--ckpts '' is an empty path"),
    (
        ["demo", "--out", ""],
        "--out '' is an empty path, which would mean the current folder. Give the demo's "
        "folder, for example --out conetool-demo.",
    ),
]


@pytest.mark.parametrize(("args", "said"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_path_option_that_cannot_be_meant_is_refused_naming_the_flag_and_the_fix(
    place: Path, args: list[str], said: str
) -> None:
    before = sorted(os.listdir(place))
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert said in text, text
    assert "Traceback" not in text and "loading PyTorch" not in text, text
    assert sorted(os.listdir(place)) == before  # nothing written, here or anywhere
    assert (place / "notes.toml").read_text() == "mine"


def test_paths_that_can_be_meant_pass(place: Path) -> None:
    checkpoint = place / "run" / "step_1.safetensors"
    checkpoint.write_bytes(b"")
    for value, takes in [
        ("new/store", "folder"),  # made by the command
        ("empty", "folder"),
        (Path("conetool-out"), "folder"),  # a default, given as a Path
        ("run/conetool.toml", "spec"),
        ("missing.toml", "spec"),  # the command says it does not exist, with its own fix
        ("run", "either"),
        (str(checkpoint), "either"),  # one checkpoint
    ]:
        assert path_problem("--x", value, takes, "it", "--x y") is None, value  # type: ignore[arg-type]


def test_option_error_is_a_conetool_error() -> None:
    assert issubclass(OptionError, ConetoolError)


@pytest.mark.parametrize(
    "args",
    [
        ["distance", "--store", "a" * 5000],
        ["inspect", "a" * 5000],
        ["kernels", "run", "--spec", f"{'a' * 300}/s.toml"],
    ],
    ids=["distance --store", "inspect CKPTS", "kernels --spec"],
)
def test_a_path_too_long_for_the_file_system_is_said_not_a_traceback(
    place: Path, args: list[str]
) -> None:
    """A name longer than the file system allows: the parser's checks (os.stat) raised
    OSError('File name too long') out of Click with a traceback; they leave such a path to the
    command, which says it in one paragraph (distance and inspect had a traceback there too)."""
    assert path_problem("--store", "a" * 5000, "folder", "it", "--store s") is None
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert result.exit_code == 1, text
    assert "Traceback" not in text and not isinstance(result.exception, OSError), text
    assert "longer than the file system allows" in text, text


def test_kernels_of_a_checkpoint_directory_that_does_not_exist_says_what_to_pass(
    place: Path,
) -> None:
    """It said "Check the CKPTS path." and no more."""
    for given, said in [
        ("runs/missing", ""),
        (
            "missing.toml",
            " (missing.toml would be a spec: pass it as --spec missing.toml, and the "
            "checkpoints as CKPTS)",
        ),
    ]:
        result = runner.invoke(app, ["kernels", given, "--store", "s"])
        text = flat(result.output)
        assert result.exit_code == 1, text
        assert (
            f"error: checkpoint directory {given} does not exist{said}. Pass the run's checkpoint "
            "directory as CKPTS: the --out of conetool train, or the folder holding the "
            "checkpoint files (conetool kernels runs/digits)." in text
        ), text
        assert not (place / "s").exists()
