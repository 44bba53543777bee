"""What is wrong with a data set's files in torchvision's on-disk formats, naming the file.

torchvision reads MNIST's IDX files and CIFAR-10's pickled batches without saying which file it
failed on (a bad magic number is a bare ``AssertionError``, a truncated batch an
``UnpicklingError``), and a batch whose label count differs from its image count, or a label
outside 0..9, loads without complaint and fails later. These functions find the file at fault:

- :func:`check_mnist_files` reads only the IDX headers and file sizes (cheap: run before
  torchvision reads the files);
- :func:`mnist_label_problem` and :func:`cifar_problem` look at what was read, or at the files
  after torchvision failed (:func:`cifar_problem` unpickles the batches, with an unpickler that
  builds numpy arrays and nothing else);
- :func:`cifar_checksum_problem` names a CIFAR-10 file whose md5 is not the original's, which
  torchvision refuses as "not found or corrupted" although every file is there;
- :func:`misplaced_problem` finds files torchvision says are not found under ``root`` although
  they are there, elsewhere (``root`` set to the data set's own folder, files still compressed).

Each returns, or raises as a :class:`~conetool.errors.DataError`, a sentence that names the file
and what is wrong with it.
"""

from __future__ import annotations

import math
import numbers
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .spec import toml_text

__all__ = [
    "CLASSES",
    "check_mnist_files",
    "cifar_checksum_problem",
    "cifar_problem",
    "misplaced_problem",
    "mnist_label_problem",
]

#: The class count of MNIST and CIFAR-10: their labels are 0 to 9.
CLASSES = 10
#: (images, labels) IDX files of each MNIST split under ``ROOT/MNIST/raw``.
MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SIDE = 28
_MNIST_FIX = (
    "Replace it with the original (the gunzipped file of the MNIST download), or delete it and "
    "set `download = true` in [data] on a machine with a network."
)
_CIFAR_FIX = (
    "Replace it with the original from the extracted cifar-10-python.tar.gz, or delete the "
    "folder and set `download = true` in [data] on a machine with a network."
)
#: said of a batch that is not CIFAR-10's: one written by hand is refused however well formed
_CIFAR_OWN = (
    "A batch written by hand is refused even when well formed (torchvision checks every file "
    "against the released data set's md5): for images of your own, give a \"package.module:"
    'factory" as [data] dataset (the README\'s "Bring your own run").'
)


def check_mnist_files(raw: Path, train: bool) -> None:
    """Check the headers and sizes of the IDX files of one MNIST split in ``raw``; a file that
    is absent is left to torchvision (which says what is missing)."""
    images, labels = (raw / name for name in MNIST_FILES[train])
    if not (images.is_file() and labels.is_file()):
        return
    image_shape = _idx_shape(images, 3, "images")
    (count,) = _idx_shape(labels, 1, "labels")
    if image_shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
        raise DataError(
            f"MNIST file {images} holds images of {image_shape[1]} x {image_shape[2]} pixels; "
            f"MNIST's are {_MNIST_SIDE} x {_MNIST_SIDE}. {_MNIST_FIX}"
        )
    if image_shape[0] != count:
        raise DataError(
            f"MNIST files {images} and {labels} do not match: {image_shape[0]} images but "
            f"{count} labels. Replace both with the originals (the gunzipped files of the MNIST "
            "download), or delete them and set `download = true` in [data]."
        )


def _idx_shape(path: Path, ndim: int, what: str) -> tuple[int, ...]:
    """The dimensions an IDX file of uint8 ``what`` with ``ndim`` dimensions declares, after
    checking its magic number and that its size is what they say."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4 + 4 * ndim)
    expected_magic = 0x0800 + ndim
    if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
        found = f"0x{head[:4].hex()}" if len(head) >= 4 else f"{len(head)} bytes long"
        raise DataError(
            f"MNIST file {path} is not an IDX file of {what}: its magic number (the first 4 "
            f"bytes) is {found}, where an IDX file of {ndim}-dimensional unsigned bytes has "
            f"0x{expected_magic:08x}. {_MNIST_FIX}"
        )
    if len(head) < 4 + 4 * ndim:
        raise DataError(
            f"MNIST file {path} is truncated: it ends ({size} bytes) inside its header. "
            + _MNIST_FIX
        )
    dims = struct.unpack(f">{ndim}i", head[4:])
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        said = "is truncated" if size < expected else "is longer than its header says"
        raise DataError(
            f"MNIST file {path} {said}: its header declares {' x '.join(map(str, dims))} "
            f"{what}, {expected} bytes with the header, but the file has {size} bytes. "
            + _MNIST_FIX
        )
    return tuple(dims)


def mnist_label_problem(raw: Path, train: bool, labels: torch.Tensor) -> str | None:
    """A sentence naming the labels file of a split whose ``labels`` (N,) fall outside 0..9."""
    bad = ((labels < 0) | (labels >= CLASSES)).nonzero()
    if not len(bad):
        return None
    at = int(bad[0])
    return (
        f"MNIST file {raw / MNIST_FILES[train][1]} holds label {int(labels[at])} (at position "
        f"{at}); MNIST's labels are 0 to {CLASSES - 1}. {_MNIST_FIX}"
    )


def cifar_problem(folder: Path, train: bool) -> str | None:
    """A sentence naming the first batch file of a CIFAR-10 split in ``folder`` (``data_batch_1``
    ... ``data_batch_5``, or ``test_batch``) that is not a CIFAR-10 python batch: not unpicklable,
    not a dict with ``data`` (N, 3072) unsigned bytes and ``labels`` N integers in 0..9; None
    when each is one (or is absent, or holds objects other than numpy arrays: not judged)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    for name in names:
        path = folder / name
        if path.is_file() and (problem := _batch_problem(path)) is not None:
            return f"CIFAR-10 file {path} {problem}. {_CIFAR_FIX} {_CIFAR_OWN}"
    return None


def cifar_checksum_problem(folder: Path) -> str | None:
    """A sentence naming the first CIFAR-10 file in ``folder`` whose md5 is not the one
    torchvision checks it against (a batch written or cut down by hand), when every file
    torchvision checks is there; None when one is missing (the data set is incomplete: the
    caller says so) or every file is the original."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    files = [
        *CIFAR10.train_list,
        *CIFAR10.test_list,
        [CIFAR10.meta["filename"], CIFAR10.meta["md5"]],
    ]
    if not all((folder / name).is_file() for name, _ in files):
        return None
    for name, md5 in files:
        path = folder / name
        if not check_integrity(str(path), md5):
            return (
                f"CIFAR-10 file {path} is not the original: torchvision checks every file of "
                f"cifar-10-batches-py against the md5 of the released data set ({md5} for "
                f"{name}) and refuses the whole data set when one differs, so a subset or "
                'batches written by hand cannot be read as `dataset = "cifar10"`. '
                f'{_CIFAR_FIX} For images of your own, give a "package.module:factory" as '
                '[data] dataset (the README\'s "Bring your own run").'
            )
    return None


#: The files of CIFAR-10's extracted archive, all in ``ROOT/cifar-10-batches-py``.
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def misplaced_problem(root: Path, dataset: str) -> str | None:
    """A sentence when ``dataset``'s files (``"mnist"`` or ``"cifar10"``) are under ``root`` but
    not where torchvision looks for them (``ROOT/MNIST/raw/``, ``ROOT/cifar-10-batches-py/``):
    ``root`` is the data set's own folder (the fix: its parent as root), or the files are still
    compressed (MNIST's ``.gz``, CIFAR-10's ``cifar-10-python.tar.gz``: the fix, extracting
    them). None when no such file is found (the data set is missing: the caller says so)."""
    if dataset == "mnist":
        names = [name for pair in MNIST_FILES.values() for name in pair]
        target = root / "MNIST" / "raw"
        for folder in (target, root / "raw", root):
            found = [n for n in names if (folder / n).is_file()]
            packed = [f"{n}.gz" for n in names if (folder / f"{n}.gz").is_file() and n not in found]
            if folder == target:
                if packed:
                    return (
                        f"MNIST's files in {folder} are still compressed ({', '.join(packed)}): "
                        "torchvision reads them extracted. Extract them where they are "
                        f"(gunzip {folder}/*.gz), or set `download = true` in [data] on a "
                        "machine with a network."
                    )
                continue
            if found or packed:
                listed = [*found, *packed]
                shown = ", ".join(listed[:2]) + (", ..." if len(listed) > 2 else "")
                fix = _parent_root(root, folder, ("MNIST", "raw"))
                extract = ", and extract the .gz files (gunzip)" if packed else ""
                return (
                    f"MNIST's files are in {folder} ({shown}), but torchvision looks for them "
                    f"in ROOT/MNIST/raw/, here {target}/: {fix}{extract}."
                )
        return None
    folder = root / "cifar-10-batches-py"
    if folder.is_dir():
        return None
    archive = root / "cifar-10-python.tar.gz"
    if archive.is_file():
        return (
            f"{archive} is not extracted: torchvision reads the folder cifar-10-batches-py "
            f"it holds. Extract it where it is (tar -xzf {archive} -C {root})."
        )
    found = [n for n in CIFAR_FILES if (root / n).is_file()]
    if found:
        shown = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
        fix = _parent_root(root, root, ("cifar-10-batches-py",))
        return (
            f"CIFAR-10's files are in {root} ({shown}), but torchvision looks for them in "
            f"ROOT/cifar-10-batches-py/, here {folder}/: {fix}."
        )
    return None


def _parent_root(root: Path, folder: Path, layout: tuple[str, ...]) -> str:
    """The fix for files found in ``folder`` (``root`` or below it) rather than in
    ``ROOT/*layout``: the root that puts ``folder`` there, when ``folder``'s path ends in
    ``layout``; else moving the files there."""
    depth = len(layout)
    tail = folder.parts[-depth:] if len(folder.parts) > depth else ()
    if tail == layout:
        parent = folder
        for _ in layout:
            parent = parent.parent
        return f"set data.root = {toml_text(str(parent))} in [data] (the folder above {'/'.join(layout)})"
    return f"move them into {root.joinpath(*layout)}/"


def _batch_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            entry = _ArraysOnly(handle, encoding="latin1").load()
    except _NotJudged:
        return None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        return f"cannot be read as a pickled batch ({type(exc).__name__}: {exc})"
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        keys = sorted(map(str, entry)) if isinstance(entry, dict) else None
        held = f"a dict with keys {keys}" if keys is not None else f"a {type(entry).__name__}"
        said = f"holds {held}, not a batch with 'data' and 'labels'"
        if isinstance(entry, dict) and {b"data", b"labels"} <= set(entry):
            said += (
                " (its keys are bytes, b'data' and b'labels', as a dict read with "
                "pickle.load(..., encoding='bytes') and written again has them; the released "
                "files' are read as text)"
            )
        return said
    data, labels = entry["data"], entry["labels"]
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] != 3 * 32 * 32:
        return f"holds 'data' of shape {shape}, not (N, 3072): N images of 3 x 32 x 32 bytes"
    if not isinstance(labels, list | tuple) or len(labels) != shape[0]:
        count = len(labels) if isinstance(labels, list | tuple) else type(labels).__name__
        return f"holds {shape[0]} images but {count} labels"
    for at, label in enumerate(labels):
        if not isinstance(label, numbers.Integral) or not 0 <= int(label) < CLASSES:
            return (
                f"holds label {label!r} (at position {at}); CIFAR-10's labels are 0 to "
                f"{CLASSES - 1}"
            )
    return None


class _NotJudged(Exception):
    """A pickle that refers to something other than numpy arrays: not a CIFAR-10 batch as
    released, but not built here either (torchvision's own load judged it)."""


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts and strings, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise _NotJudged(f"{module}.{name}")
        return super().find_class(module, name)
