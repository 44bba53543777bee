"""A user's data and model factories (``"pkg.mod:factory"``): labels that are not class indices,
an empty split and a factory that raises get a message naming the spec key and the user's code."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from conetool.data import load_data
from conetool.errors import DataError, ModelError
from conetool.models import build_model
from conetool.spec import spec_from_dict

FACTORIES = """
import torch
from torch.utils.data import Dataset, TensorDataset


class Pairs(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def halves():
    x, y = torch.randn(30, 4), (torch.arange(30) % 3).float() * 0.5  # 0, 0.5, 1.0
    return Pairs(x[:20], y[:20]), Pairs(x[20:], y[20:])


def python_floats():
    x, y = torch.randn(30, 4), [float(i % 3) for i in range(30)]
    return Pairs(x[:20], y[:20]), Pairs(x[20:], y[20:])


def ints():
    x, y = torch.randn(30, 4), [i % 3 for i in range(30)]
    return Pairs(x[:20], y[:20]), Pairs(x[20:], y[20:])


def from_minus_one():
    x, y = torch.randn(30, 4), torch.arange(30) % 3 - 1
    return TensorDataset(x[:20], y[:20]), TensorDataset(x[20:], y[20:])


def empty_test():
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    return TensorDataset(x, y), TensorDataset(x[30:], y[30:])


def raises():
    raise ValueError("no such file: shards/0.npz")


def net(num_classes):
    raise ValueError("depth must be even")
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conetool_byo_checks.py"
    path.write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "conetool_byo_checks", raising=False)  # this test's file
    return path


def _data(factory: str) -> object:
    spec = spec_from_dict(
        {
            "model": {"arch": "mlp", "num_classes": 3},
            "data": {"dataset": f"conetool_byo_checks:{factory}"},
        }
    )
    return load_data(spec.data)


@pytest.mark.parametrize("factory", ["halves", "python_floats"])
def test_float_labels_of_a_dataset_are_refused_not_truncated(
    user_module: Path, factory: str
) -> None:
    # int(0.5) == 0: the old code trained on labels 0, 0, 1 for 0, 0.5, 1.0 (and 2 classes)
    with pytest.raises(DataError, match=r"label 0 is .*labels must be integer class indices"):
        _data(factory)


def test_integer_labels_of_a_dataset_are_read(user_module: Path) -> None:
    bundle = _data("ints")
    assert bundle.num_classes == 3  # type: ignore[attr-defined]
    assert bundle.train.labels().tolist()[:4] == [0, 1, 2, 0]  # type: ignore[attr-defined]


def test_negative_labels_are_refused_naming_the_split(user_module: Path) -> None:
    with pytest.raises(DataError, match=r"train set of .*from_minus_one has the label -1"):
        _data("from_minus_one")


def test_an_empty_tensor_dataset_split_is_refused(user_module: Path) -> None:
    with pytest.raises(DataError, match=r"test set of conetool_byo_checks:empty_test is empty"):
        _data("empty_test")


def test_a_data_factory_that_raises_names_the_key_and_the_users_line(user_module: Path) -> None:
    with pytest.raises(DataError) as caught:
        _data("raises")
    text = str(caught.value)
    assert "'conetool_byo_checks:raises' ([data] dataset) raised ValueError" in text
    assert f"at {user_module}:" in text and "no such file: shards/0.npz" in text


def test_a_model_factory_that_raises_names_the_users_line(user_module: Path) -> None:
    spec = spec_from_dict(
        {"model": {"arch": "conetool_byo_checks:net", "num_classes": 3}, "data": {}}
    )
    with pytest.raises(ModelError) as caught:
        build_model(spec.model, (4,))
    assert f"raised ValueError at {user_module}:" in str(caught.value)
    assert "depth must be even" in str(caught.value)


@pytest.mark.parametrize("key", ["model", "data"])
def test_a_file_shadowed_by_pythons_module_of_its_name_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # random.py beside the user: the `conetool` command imports Python's random instead, and the
    # old message only listed random's functions ("Fix the name after the colon")
    (tmp_path / "random.py").write_text("def make(num_classes=3):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    error = ModelError if key == "model" else DataError
    with pytest.raises(error) as caught:
        if key == "model":
            spec = spec_from_dict({"model": {"arch": "random:make", "num_classes": 3}, "data": {}})
            build_model(spec.model, (4,))
        else:
            spec = spec_from_dict({"model": {"arch": "mlp"}, "data": {"dataset": "random:make"}})
            load_data(spec.data)
    text = str(caught.value)
    assert f"not your {tmp_path / 'random.py'}" in text and "Rename your file" in text


def test_no_shadowing_is_said_for_a_misspelt_factory(user_module: Path) -> None:
    spec = spec_from_dict({"model": {"arch": "conetool_byo_checks:nett", "num_classes": 3}})
    with pytest.raises(ModelError, match="has no attribute 'nett'") as caught:
        build_model(spec.model, (4,))
    assert "Rename your file" not in str(caught.value)
