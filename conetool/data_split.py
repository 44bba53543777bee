"""The in-memory containers of a data set: a split (inputs and labels, batched by index), the
bundle of train and test splits with their shape and classes, and the CIFAR-10 crop-and-flip
augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .errors import DataError

__all__ = ["TOKEN_DTYPES", "Augment", "CropFlip", "DataBundle", "Split", "as_input", "dataset_item"]

#: A batched augmentation: ``(batch, generator) -> batch``.
Augment = Callable[[Tensor, torch.Generator], Tensor]

#: The input dtypes kept as they are: integer ids (tokens), as ``nn.Embedding`` takes them. Every
#: other input (floating point, ``uint8`` pixels, bool) is held in float32.
TOKEN_DTYPES = (torch.int64, torch.int32)


def as_input(x: Any) -> Tensor:
    """``x`` (a tensor, an array or nested numbers) as conetool holds an input: unchanged when
    its dtype is one of :data:`TOKEN_DTYPES` (token ids, which a cast to float would break:
    ``nn.Embedding`` refuses float indices), else float32."""
    t = torch.as_tensor(x)
    return t if t.dtype in TOKEN_DTYPES else t.to(torch.float32)


# --------------------------------------------------------------------------------------------
# Splits and bundles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a data set, backed by in-memory tensors or by a torch ``Dataset``.

    Build one with :meth:`from_tensors` (inputs ``(N, *shape)`` float32, already normalized, or
    int64 / int32 token ids, kept as they are (:func:`as_input`); labels ``(N,)`` int64) or :meth:`from_dataset` (any map-style dataset whose items are
    ``(x, y)`` with ``x`` a tensor or array and ``y`` an integer).
    """

    input_shape: tuple[int, ...]
    inputs: Tensor | None = None
    targets: Tensor | None = None
    dataset: Dataset[Any] | None = None
    _cache: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_tensors(cls, inputs: Tensor, labels: Tensor) -> Split:
        """A split held in memory: ``inputs`` (N, *shape) -> float32 (int64 and int32 token ids
        kept as they are), ``labels`` (N,) -> int64."""
        if labels.ndim != 1 or inputs.ndim < 1 or inputs.shape[0] != labels.shape[0]:
            raise DataError(
                f"a data split needs inputs (N, ...) and labels (N,); got inputs of shape "
                f"{tuple(inputs.shape)} and labels of shape {tuple(labels.shape)}."
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise DataError(
                f"labels must be integer class indices; got dtype {labels.dtype}. Convert them "
                "with labels.long() in your data factory."
            )
        return cls(
            input_shape=tuple(inputs.shape[1:]),
            inputs=as_input(inputs).contiguous(),
            targets=labels.to(torch.int64).contiguous(),
        )

    @classmethod
    def from_dataset(cls, dataset: Dataset[Any], name: str = "dataset") -> Split:
        """A split read item by item from ``dataset``; ``name`` is used in error messages.

        A ``TensorDataset`` of (inputs, labels) is copied into memory instead.
        """
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise DataError(
                f"{name} is a {type(dataset).__name__}, not a map-style dataset (one with "
                "__len__ and __getitem__). Return a torch.utils.data.Dataset or TensorDataset."
            )
        if len(dataset) == 0:
            raise DataError(f"{name} is empty: it has no examples.")
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            return cls.from_tensors(*dataset.tensors)
        x, _ = dataset_item(dataset, 0, name)
        return cls(input_shape=tuple(x.shape), dataset=dataset)

    def __len__(self) -> int:
        if self.targets is not None:
            return int(self.targets.shape[0])
        return len(cast(Sized, self.dataset))  # no targets: a map-style dataset (from_dataset)

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The examples at ``indices`` (B,): inputs (B, *input_shape) float32 (or the data set's
        integer token ids, :func:`as_input`), labels (B,) int64.

        In-memory splits return tensors on the split's device (see :meth:`to`).
        """
        if self.inputs is not None and self.targets is not None:
            idx = indices.to(device=self.inputs.device, dtype=torch.int64)
            return self.inputs[idx], self.targets[idx]
        items = [dataset_item(self.dataset, int(i), "dataset") for i in indices.tolist()]
        if not items:
            return torch.empty((0, *self.input_shape)), torch.empty(0, dtype=torch.int64)
        xs = [x for x, _ in items]
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise DataError(
                f"the dataset's items have different shapes {sorted(shapes)}; every input must "
                "have the same shape (resize or crop them in your data factory)."
            )
        labels = torch.tensor([y for _, y in items], dtype=torch.int64)
        return torch.stack(xs), labels

    def labels(self) -> Tensor:
        """All labels, (N,) int64 (for a ``Dataset``: read once by iterating it, then cached)."""
        if self.targets is not None:
            return self.targets
        if "labels" not in self._cache:
            ds = self.dataset
            self._cache["labels"] = torch.tensor(
                [dataset_item(ds, i, "dataset")[1] for i in range(len(cast(Sized, ds)))],
                dtype=torch.int64,
            )
        return self._cache["labels"]

    def to(self, device: torch.device | str) -> Split:
        """The same split with its in-memory tensors on ``device`` (a Dataset split is returned as
        is: its items are built on the CPU)."""
        if self.inputs is None or self.targets is None:
            return self
        return Split(
            input_shape=self.input_shape,
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
        )


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A data set: train and test splits, input shape, class count and training augmentation.

    ``augment(x, generator)`` maps a normalized training batch (B, C, H, W) to an augmented batch
    of the same shape, drawing every random choice from ``generator`` (so it is reproducible from
    a seed); it is ``None`` when the data set has no standard augmentation.
    """

    name: str
    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    augment: Augment | None = None

    def examples(self, count: int = 2) -> Tensor:
        """The first ``count`` training inputs, (min(count, N), *input_shape), as the split
        holds them (for a model's output check, :func:`conetool.models.output_check`)."""
        n = min(count, len(self.train))
        return self.train.batch(torch.arange(n))[0]

    def split(self, name: str) -> Split:
        """The split called ``name`` ("train" or "test")."""
        if name == "train":
            return self.train
        if name == "test":
            return self.test
        raise DataError(f"unknown split {name!r}; valid splits: train, test.")


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropFlip:
    """Random crop with zero padding plus random horizontal flip, batched and seeded.

    The same as torchvision's ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip(0.5)`` applied
    to each image before normalization: the padding is filled with ``fill`` per channel, which
    should be the normalized value of pixel 0, ``-mean / std``. Each image gets its own offsets
    (uniform in 0..2·padding) and flip (probability 0.5).

    ``CropFlip(fill)(x, generator)``: x (B, C, H, W) -> (B, C, H, W), on x's device; the random
    numbers are drawn on the CPU from ``generator``, so results do not depend on the device.
    """

    fill: tuple[float, ...]
    padding: int = 4
    flip: bool = True

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b, c, h, w = x.shape
        p = self.padding
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator)
        flips = torch.rand(b, generator=generator) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device)
        if fill.numel() == 1:
            fill = fill.expand(c)
        padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        rows = offsets[0][:, None] + torch.arange(h)  # (B, H)
        cols = offsets[1][:, None] + torch.arange(w)  # (B, W)
        cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reverses the window
        rows, cols = rows.to(x.device), cols.to(x.device)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def dataset_item(dataset: Any, index: int, name: str) -> tuple[Tensor, int]:
    """Item ``index`` of a user dataset as (input tensor, int label): the input in float32, or
    as it is when it holds int64 or int32 token ids (:func:`as_input`)."""
    item = dataset[index]
    if not isinstance(item, tuple | list) or len(item) < 2:
        raise DataError(
            f"{name}: item {index} is a {type(item).__name__}; items must be (input, label) pairs."
        )
    x, y = item[0], item[1]
    try:
        x = as_input(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{name}: input {index} is a {type(x).__name__}, not a tensor or array. Add "
            "torchvision.transforms.ToTensor() (and your normalization) to the dataset."
        ) from exc
    try:
        as_tensor = torch.as_tensor(y)
        if as_tensor.numel() != 1:
            raise ValueError("not one value")
        label = int(as_tensor)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{name}: label {index} is {y!r}; labels must be integer class indices."
        ) from exc
    if as_tensor.is_floating_point() or as_tensor.is_complex() or as_tensor.dtype == torch.bool:
        # int() would truncate 0.5 to 0 and train on other labels than the data set's
        raise DataError(
            f"{name}: label {index} is {y!r} ({as_tensor.dtype}); labels must be integer class "
            "indices, as in a TensorDataset. Return int(label) (or a long tensor) from your "
            "dataset's __getitem__."
        )
    return x, label
