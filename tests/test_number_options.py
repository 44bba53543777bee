"""Number options given a value that is no number, or out of their bounds: Typer said only
"Invalid value for '--bounded-exponent': Input should be a valid number, unable to parse string
as a number" (or "... greater than or equal to 1"), with no fix; each is a usage error (exit 2)
naming the flag, what it takes and an example, before anything is loaded or written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from conetool.cli import app
from conetool.cli.number_options import NUMBER_OPTIONS, is_number, is_whole, takes

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def number_params() -> list[tuple[str, str, Any]]:
    """(command, flag, parameter) of every int or float option of every command of the app."""
    group = typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            if is_number(param.type_descriptor.annotation):
                flag = next(o for o in param.opts if o.startswith("--"))
                found.append((name, flag, param))
    return found


PARAMS = number_params()
IDS = [f"{name} {flag}" for name, flag, _ in PARAMS]


def test_every_number_option_is_said_and_its_example_is_a_value_it_takes() -> None:
    flags = {flag for _, flag, _ in PARAMS}
    assert len(PARAMS) >= 18  # inspect's --every ... demo's --probe-size: the options today
    assert flags == set(NUMBER_OPTIONS), "NUMBER_OPTIONS lists exactly the number options"
    for _, flag, param in PARAMS:
        example = NUMBER_OPTIONS[flag][1].split()
        assert example[0] == flag and len(example) == 2, example
        info = param.type_descriptor.parameter_info
        value = int(example[1]) if is_whole(param.type_descriptor.annotation) else float(example[1])
        assert info.min is None or value >= info.min, (flag, value)
        assert info.max is None or value <= info.max, (flag, value)


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(place: Path, args: list[str]) -> str:
    result = runner.invoke(app, args)
    text = flat(result.output)
    assert result.exit_code == 2, text
    assert "Input should be" not in text and "Traceback" not in text, text
    assert "loading PyTorch" not in text, text
    assert os.listdir(place) == []  # nothing written
    return text


@pytest.mark.parametrize(("command", "flag", "param"), PARAMS, ids=IDS)
def test_a_number_option_given_no_number_names_the_flag_what_it_takes_and_an_example(
    place: Path, command: str, flag: str, param: Any
) -> None:
    annotation = param.type_descriptor.annotation
    info = param.type_descriptor.parameter_info
    text = _refused(place, [command, flag, "abc"])
    kind = "a whole number" if is_whole(annotation) else "a number"
    said = (
        f"Invalid value: {flag} abc is not {kind}: {flag} takes "
        f"{takes(flag, is_whole(annotation), info.min, info.max)}, for example "
        f"{NUMBER_OPTIONS[flag][1]}."
    )
    assert said in text, text


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["distance", "--bounded-exponent", "x"],
            "Invalid value: --bounded-exponent x is not a number: --bounded-exponent takes the "
            "largest exponent a of Phase II S growing like lag^a that counts as bounded, a "
            "number, for example --bounded-exponent 0.25.",
        ),
        (
            ["spectrum", "--top-k", "2.5"],
            "Invalid value: --top-k 2.5 is not a whole number: --top-k takes the number of "
            "eigenvalues kept, a whole number of at least 1, for example --top-k 20.",
        ),
        (
            ["kernels", "run", "--probe-size", ""],
            "Invalid value: --probe-size '' is not a whole number: --probe-size takes the number "
            "of probe examples, a whole number of at least 1, for example --probe-size 200.",
        ),
        (
            ["spectrum", "--top-k", "0"],
            "Invalid value: --top-k 0 is below 1: --top-k takes the number of eigenvalues kept, "
            "a whole number of at least 1, for example --top-k 20.",
        ),
        (
            ["embed", "--dims", "4"],
            "Invalid value: --dims 4 is above 3: --dims takes the embedding's dimensions, 2 or "
            "3, for example --dims 3.",
        ),
        (
            ["distance", "--dt", "10", "--dt", "ten"],
            "Invalid value: --dt ten is not a whole number: --dt takes the spacing of the pairs "
            "(t, t+dt), in steps (repeatable), a whole number of at least 1, for example --dt 10.",
        ),
        (
            ["demo", "--steps", "4"],
            "Invalid value: --steps 4 is below 8: --steps takes the steps of the demo's training "
            "run, a whole number of at least 8, for example --steps 1200.",
        ),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_number_messages_read_whole(place: Path, args: list[str], said: str) -> None:
    assert said in _refused(place, args)


@pytest.mark.parametrize(
    ("command", "flag", "param"),
    [p for p in PARAMS if p[2].type_descriptor.parameter_info.min is not None],
    ids=[
        i
        for i, p in zip(IDS, PARAMS, strict=True)
        if p[2].type_descriptor.parameter_info.min is not None
    ],
)
def test_a_number_option_below_its_least_names_the_least_and_an_example(
    place: Path, command: str, flag: str, param: Any
) -> None:
    least = param.type_descriptor.parameter_info.min
    text = _refused(place, [command, flag, str(least - 1)])
    assert f"Invalid value: {flag} {least - 1} is below {least}: {flag} takes " in text, text
    assert f"for example {NUMBER_OPTIONS[flag][1]}." in text, text
