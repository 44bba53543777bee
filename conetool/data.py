"""Data sets: the embedded digits, MNIST, CIFAR-10, seeded synthetic clusters and user factories.

:func:`load_data` turns the ``[data]`` section of a spec into a :class:`DataBundle`: a train and a
test :class:`Split`, the input shape, the class count and the data set's standard training
augmentation (a batched function of a batch and a ``torch.Generator``, or ``None``).

Built-in data sets are held in memory as normalized float32 tensors, so a batch is one indexing
operation. A user factory's datasets are read item by item.

==============  ============  ==========================================================  =========
dataset         input shape   normalization                                               augment
==============  ============  ==========================================================  =========
``digits``      (1, 8, 8)     /16, then minus the train split's mean, over its std         none
``mnist``       (1, 28, 28)   /255, then (x - 0.1307) / 0.3081                             none
``cifar10``     (3, 32, 32)   /255, then ImageNet mean/std per channel (as open_lth)       crop+flip
``synthetic``   data.shape    none (Gaussian clusters)                                     none
==============  ============  ==========================================================  =========

The containers (:class:`Split`, :class:`DataBundle`, the CIFAR-10 augmentation) live in
:mod:`conetool.data_split`; the training data order, a pure function of ``(seed, step)``
(:func:`batch_indices`, :func:`augment_generator`), in :mod:`conetool.data_order`. Both are
re-exported here.

Example::

    bundle = load_data(DataSpec(dataset="digits"))
    x, y = bundle.train.batch(batch_indices(len(bundle.train), 128, seed=0, step=0))
    # x: (128, 1, 8, 8) float32, y: (128,) int64
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data_files import (
    check_mnist_files,
    cifar_checksum_problem,
    cifar_problem,
    misplaced_problem,
    mnist_label_problem,
)
from .data_order import augment_generator, batch_indices, mix_seed, steps_per_epoch
from .data_split import CropFlip, DataBundle, Split
from .digits import digits_arrays, stratified_split
from .errors import ConetoolError, DataError
from .spec import BUILTIN_DATASETS, DataSpec, toml_text
from .user_modules import import_user_module, is_import_path, raised_at, shadowed_note

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DIGITS_RANDOM_STATE",
    "DIGITS_TEST_FRACTION",
    "MNIST_MEAN",
    "MNIST_STD",
    "CropFlip",
    "DataBundle",
    "Split",
    "augment_generator",
    "batch_indices",
    "load_data",
    "steps_per_epoch",
]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# open_lth (datasets/cifar10.py) normalizes CIFAR-10 with the ImageNet statistics, not with
# CIFAR-10's own (0.4914, 0.4822, 0.4465) / (0.247, 0.243, 0.261); we follow open_lth because the
# paper trains with its recipes.
CIFAR10_MEAN = (0.485, 0.456, 0.406)
CIFAR10_STD = (0.229, 0.224, 0.225)
# The digits train/test split: sklearn.model_selection.train_test_split(test_size=0.2,
# stratify=labels, random_state=0) -> 1437 train and 360 test images.
DIGITS_TEST_FRACTION = 0.2
DIGITS_RANDOM_STATE = 0


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_data(spec: DataSpec, *, source: str | None = None) -> DataBundle:
    """Build the data set that ``spec`` (the ``[data]`` section) names.

    Nothing is downloaded unless ``spec.download`` is true; missing files raise a
    :class:`DataError` that says where conetool looked and how to get them. ``source``: the spec
    file the section is from, which each :class:`DataError` then names first, as the spec's own
    errors do (``spec.toml: 'data.root' = ...``).
    """
    try:
        return _load(spec)
    except DataError as exc:
        if source is not None and not str(exc).startswith(f"{source}: "):
            exc.args = (f"{source}: {exc}", *exc.args[1:])
        raise


def _load(spec: DataSpec) -> DataBundle:
    name = spec.dataset
    if name == "digits":
        return _digits()
    if name == "mnist":
        return _mnist(spec)
    if name == "cifar10":
        return _cifar10(spec)
    if name == "synthetic":
        return _synthetic(spec)
    if ":" in name:
        return _user_factory(spec)
    raise DataError(
        f"unknown data set 'data.dataset' = {toml_text(name)}. Choices: {', '.join(BUILTIN_DATASETS)}, "
        'or "package.module:factory" for your own.'
    )


@dataclass(frozen=True)
class DataInfo:
    """What a data set looks like without loading it: one example's shape, the class count and
    the number of training examples."""

    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    #: a user factory's first two training inputs (:meth:`DataBundle.examples`), on which a
    #: model of token ids is first run (:func:`conetool.model_inputs.check_batch`); ``None`` for
    #: the built-in data sets
    examples: torch.Tensor | None = field(default=None, compare=False)


# The built-in data sets' shapes and sizes (digits: the fixed 80/20 split of 1,797 images).
_KNOWN = {
    "digits": DataInfo((1, 8, 8), 10, 1437),
    "mnist": DataInfo((1, 28, 28), 10, 60000),
    "cifar10": DataInfo((3, 32, 32), 10, 50000),
}


def describe_data(spec: DataSpec, *, source: str | None = None) -> DataInfo:
    """Shape, class count and training-set size of ``spec``'s data set; reads no data files for
    the built-in data sets (a user factory is called, since only it knows; ``source`` as
    :func:`load_data`'s)."""
    if spec.dataset in _KNOWN:
        return _KNOWN[spec.dataset]
    if spec.dataset == "synthetic":
        return DataInfo(tuple(int(s) for s in spec.shape), spec.num_classes, spec.train_size)
    bundle = load_data(spec, source=source)
    return DataInfo(
        tuple(bundle.input_shape), bundle.num_classes, len(bundle.train), bundle.examples()
    )


def _digits() -> DataBundle:
    # scikit-learn's load_digits and train_test_split(x / 16, y, stratify=y), without importing
    # scikit-learn (conetool.digits says why)
    x, y = digits_arrays()
    train, test = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_RANDOM_STATE)
    x = x / 16.0
    x_train, x_test, y_train, y_test = x[train], x[test], y[train], y[test]
    # Standardize with the train split's statistics (scalars; population std, ddof=0).
    mean, std = float(x_train.mean()), float(x_train.std())

    def split(xs: Any, ys: Any) -> Split:
        inputs = torch.from_numpy((xs - mean) / std).reshape(-1, 1, 8, 8)
        return Split.from_tensors(inputs, torch.from_numpy(ys))

    return DataBundle("digits", split(x_train, y_train), split(x_test, y_test), (1, 8, 8), 10)


def _synthetic(spec: DataSpec) -> DataBundle:
    """Gaussian clusters: class means ~ N(0, I) in prod(shape) dims, x = mean[y] + noise * N(0, I).

    Labels are ``arange(size) % num_classes`` (balanced to within one). The means, the train noise
    and the test noise come from three generators seeded with hashes of ``spec.seed``, so the test
    set does not change when ``train_size`` does.
    """
    shape = tuple(int(s) for s in spec.shape)
    dim, classes = math.prod(shape), spec.num_classes
    if not shape or dim <= 0 or classes <= 0 or spec.train_size <= 0 or spec.test_size <= 0:
        raise DataError(
            f"synthetic data needs a positive data.shape, data.num_classes, data.train_size and "
            f"data.test_size; got shape={list(shape)}, num_classes={classes}, "
            f"train_size={spec.train_size}, test_size={spec.test_size}."
        )
    means_gen = torch.Generator().manual_seed(mix_seed("synthetic-means", spec.seed))
    means = torch.randn(classes, dim, generator=means_gen, dtype=torch.float32)

    def split(size: int, stream: str) -> Split:
        gen = torch.Generator().manual_seed(mix_seed(stream, spec.seed))
        labels = torch.arange(size, dtype=torch.int64) % classes
        noise = torch.randn(size, dim, generator=gen, dtype=torch.float32)
        inputs = means[labels] + spec.noise * noise
        return Split.from_tensors(inputs.reshape(size, *shape), labels)

    train = split(spec.train_size, "synthetic-train")
    test = split(spec.test_size, "synthetic-test")
    return DataBundle("synthetic", train, test, shape, classes)


def _root(spec: DataSpec) -> Path:
    root = Path(os.path.expanduser(spec.root))
    if root.exists() and not root.is_dir():
        raise DataError(
            f"'data.root' = {toml_text(spec.root)} ({root}) is a file, not a folder. Point data.root at "
            f"the folder that holds the {spec.dataset} files (or, with `download = true` in "
            "[data], the folder to download them into)."
        )
    if not spec.download and not root.is_dir():
        raise DataError(
            f"'data.root' = {toml_text(spec.root)} ({root}) does not exist. Point data.root at the folder "
            f"that holds the {spec.dataset} files, or set `download = true` in [data] to "
            "download them there (needs a network)."
        )
    return root


def _listing(root: Path) -> str:
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError:
        return ""
    if not names:
        return f" {root} is empty."
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f" {root} holds: {shown}."


# What torchvision raises on files it cannot read: a bad IDX magic number is an AssertionError, a
# damaged CIFAR-10 batch an UnpicklingError, EOFError, KeyError or TypeError.
_READ_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    AssertionError,
    KeyError,
    TypeError,
    IndexError,
    EOFError,
    pickle.UnpicklingError,
)


def _torchvision(
    cls: type,
    root: Path,
    spec: DataSpec,
    train: bool,
    expected: str,
    diagnose: Callable[[], str | None] = lambda: None,
) -> Any:
    """Instantiate a torchvision data set class, turning its errors into DataErrors; when it
    fails, ``diagnose()`` may name the file at fault (a sentence that says the fix)."""
    quiet = contextlib.redirect_stdout(io.StringIO()) if spec.download else contextlib.nullcontext()
    try:
        with quiet:
            return cls(str(root), train=train, download=spec.download)
    except _READ_ERRORS as exc:
        if (problem := diagnose()) is not None:
            raise DataError(problem) from exc
        if spec.download:
            raise DataError(
                f"could not download {spec.dataset} into {root} ({exc}). Check the network "
                f"connection, or copy the files there by hand: torchvision expects {expected}."
            ) from exc
        raise DataError(
            f"{spec.dataset} was not found (or is incomplete or corrupted) under 'data.root' = "
            f"{root}: torchvision expects {expected} (it said: {exc}).{_listing(root)} To get "
            "it, set `download = true` in [data] of the spec on a machine with a network, or "
            "copy the files there."
        ) from exc


def _mnist(spec: DataSpec) -> DataBundle:
    from torchvision.datasets import MNIST

    root = _root(spec)
    expected = (
        f"{root / 'MNIST' / 'raw'}/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte"
    )

    raw = root / "MNIST" / "raw"

    def split(train: bool) -> Split:
        check_mnist_files(raw, train)  # (headers only: names the file torchvision would fail on)
        ds = _torchvision(
            MNIST, root, spec, train, expected, lambda: misplaced_problem(root, "mnist")
        )
        if (problem := mnist_label_problem(raw, train, ds.targets)) is not None:
            raise DataError(problem)
        inputs = (ds.data.to(torch.float32).unsqueeze(1) / 255.0 - MNIST_MEAN) / MNIST_STD
        return Split.from_tensors(inputs, ds.targets)

    return DataBundle("mnist", split(True), split(False), (1, 28, 28), 10)


def _cifar10(spec: DataSpec) -> DataBundle:
    from torchvision.datasets import CIFAR10

    root = _root(spec)
    expected = (
        f"{root / 'cifar-10-batches-py'}/ holding data_batch_1 ... data_batch_5, test_batch and "
        "batches.meta (the extracted cifar-10-python.tar.gz)"
    )
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)

    folder = root / "cifar-10-batches-py"

    def split(train: bool) -> Split:
        ds = _torchvision(
            CIFAR10,
            root,
            spec,
            train,
            expected,
            lambda: (
                cifar_problem(folder, train)
                or cifar_checksum_problem(folder)
                or misplaced_problem(root, "cifar10")
            ),
        )
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        if len(labels) != len(ds.data) or not bool(((labels >= 0) & (labels < 10)).all()):
            # (torchvision reads a batch with more or fewer labels than images, or a label
            # beyond 9, without a word)
            raise DataError(
                cifar_problem(folder, train)
                or f"the CIFAR-10 batches in {folder} hold {len(ds.data)} images and "
                f"{len(labels)} labels, some outside 0..9. Replace them with the originals "
                "from the extracted cifar-10-python.tar.gz."
            )
        pixels = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        inputs = (pixels.to(torch.float32) / 255.0 - mean) / std
        return Split.from_tensors(inputs, labels)

    # Padding fill: the normalized value of pixel 0, as torchvision pads before normalizing.
    fill = tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD, strict=True))
    return DataBundle(
        "cifar10", split(True), split(False), (3, 32, 32), 10, augment=CropFlip(fill, padding=4)
    )


def _import_factory(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    if not is_import_path(module_name, attr):
        raise DataError(
            f"'data.dataset' = {toml_text(path)} is not of the form \"package.module:factory\"."
        )
    module = import_user_module(module_name, f"[data] dataset = {toml_text(path)}", DataError)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DataError(
                f"'data.dataset' = {toml_text(path)}: module {module_name!r} has no attribute {attr!r}."
                + shadowed_note(module_name)
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise DataError(f"'data.dataset' = {toml_text(path)}: {attr!r} is not callable.")
    return obj


def _user_factory(spec: DataSpec) -> DataBundle:
    """Call a user's ``factory(**options)`` returning ``(train, test)`` datasets.

    Every ``[data]`` key but ``dataset``, ``root`` and ``download`` is passed as a keyword
    argument; a key the factory has no parameter for (and no ``**kwargs``) is refused, naming it
    and the parameters it accepts. ``root`` (the expanded ``data.root``, a string) and
    ``download`` are passed only when the factory names them as parameters. ``num_classes`` is
    ``len(train.classes)`` when the train dataset has a ``classes`` list (as torchvision's do),
    else the largest label + 1.
    """
    path = spec.dataset
    factory = _import_factory(path)
    kwargs: dict[str, Any] = dict(spec.options)
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(factory).parameters
        inspected = True  # a factory without parameters too: every [data] key is refused
    except (TypeError, ValueError):  # builtins without a signature: pass the options only
        params, inspected = {}, False
    named = {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
    refused = sorted(k for k in kwargs if k not in named) if inspected and not takes_any else []
    if refused:
        accepted = sorted(named) or ["(none)"]
        raise DataError(
            f"[data] key{'s' if len(refused) > 1 else ''} {', '.join(repr(k) for k in refused)} "
            f"{'are' if len(refused) > 1 else 'is'} not a parameter of the data factory {path!r}, "
            f"which accepts: {', '.join(accepted)}. Remove "
            f"{'them' if len(refused) > 1 else 'it'} from [data], or add the parameter to the "
            f"factory (every [data] key but dataset, root and download is passed to it)."
        )
    if "root" in named:
        kwargs["root"] = os.path.expanduser(spec.root)
    if "download" in named:
        kwargs["download"] = spec.download
    if inspected:
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as exc:
            raise DataError(
                f"'data.dataset' = {toml_text(path)} cannot be called with the [data] options "
                f"{sorted(spec.options)} ({exc}). Its parameters are: {', '.join(params)}; "
                "fix the extra keys in [data]."
            ) from exc
    try:
        result = factory(**kwargs)
    except ConetoolError:
        raise
    except Exception as exc:
        where = raised_at(exc)
        raise DataError(
            f"the data factory {path!r} ([data] dataset) raised {type(exc).__name__}"
            f"{f' at {where}' if where else ''} when called with the keys "
            f"{', '.join(kwargs) or '(none)'}: {exc}. Fix the [data] keys or the factory."
        ) from exc
    if not isinstance(result, Sequence) or len(result) != 2:
        raise DataError(
            f"'data.dataset' = {toml_text(path)} returned {type(result).__name__}; a data factory must "
            "return a pair (train, test) of torch Datasets whose items are (input, label)."
        )
    train = Split.from_dataset(result[0], f"the train set of {path}")
    test = Split.from_dataset(result[1], f"the test set of {path}")
    if test.input_shape != train.input_shape:
        raise DataError(
            f"{path}: train inputs have shape {train.input_shape} but test inputs have shape "
            f"{test.input_shape}; both splits must have the same input shape."
        )
    classes = getattr(result[0], "classes", None)
    if isinstance(classes, Sequence) and not isinstance(classes, str) and len(classes) > 0:
        num_classes = len(classes)
    else:
        lowest = int(min(train.labels().min(), test.labels().min()))
        if lowest < 0:
            split_name = "train" if int(train.labels().min()) < 0 else "test"
            raise DataError(
                f"the {split_name} set of {path} has the label {lowest}: labels must be class "
                "indices 0, 1, ..., num_classes - 1. Map them to 0.. in your data factory."
            )
        num_classes = int(max(train.labels().max(), test.labels().max())) + 1
    return DataBundle(path, train, test, train.input_shape, num_classes)
