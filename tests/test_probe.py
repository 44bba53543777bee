"""The probe set: deterministic, class-balanced, exact on disk, tamper-evident."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conetool.data import DataBundle, Split, load_data
from conetool.errors import DataError
from conetool.probe import Probe, load_probe, make_probe, probe_hash, save_probe
from conetool.spec import DataSpec, ProbeSpec


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data(DataSpec(dataset="digits"))


def _bundle(labels: list[int], num_classes: int) -> DataBundle:
    """A tiny bundle whose inputs encode their position (inputs[i] = [i, -i])."""
    n = len(labels)
    positions = torch.arange(n, dtype=torch.float32)
    x = torch.stack([positions, -positions], 1)
    split = Split.from_tensors(x, torch.tensor(labels))
    return DataBundle("tiny", split, split, (2,), num_classes)


def test_probe_is_deterministic_and_matches_the_split(digits: DataBundle) -> None:
    spec = ProbeSpec(size=50, split="train", seed=3)
    a, b = make_probe(digits, spec), make_probe(digits, spec)
    for name in ("inputs", "labels", "indices"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.hash == b.hash and len(a.hash) == 16 and a.split == "train"
    assert a.inputs.shape == (50, 1, 8, 8) and a.inputs.dtype == torch.float32
    assert a.labels.dtype == torch.int64 and a.indices.dtype == torch.int64
    # The probe is the split's stored (unaugmented) examples at its indices.
    assert torch.equal(a.inputs, digits.train.inputs[a.indices])
    assert torch.equal(a.labels, digits.train.labels()[a.indices])
    assert len(set(a.indices.tolist())) == 50
    # Ordered by class, then by position in the split.
    order = sorted(range(50), key=lambda i: (int(a.labels[i]), int(a.indices[i])))
    assert order == list(range(50))


def test_probe_balance_per_class(digits: DataBundle) -> None:
    probe = make_probe(digits, ProbeSpec(size=25, split="test", seed=0))
    # 25 = 10 * 2 + 5: the first five classes get one more.
    assert torch.bincount(probe.labels, minlength=10).tolist() == [3] * 5 + [2] * 5
    assert torch.equal(probe.inputs, digits.test.inputs[probe.indices])
    assert probe.split == "test"


def test_probe_shortfall_is_filled_round_robin() -> None:
    # Class 0 has 1 example, class 1 has 3, classes 2 and 3 have 10 each; 20 requested.
    labels = [0] + [1] * 3 + [2] * 10 + [3] * 10
    probe = make_probe(_bundle(labels, 4), ProbeSpec(size=20, seed=1))
    # Quotas 5 each; class 0 gives 1, class 1 gives 3: the 6 missing go round-robin to 2, 3.
    assert torch.bincount(probe.labels, minlength=4).tolist() == [1, 3, 8, 8]
    assert torch.equal(probe.inputs[:, 0].long(), probe.indices)
    # A class absent from the split altogether is filled the same way.
    probe = make_probe(_bundle([0] * 5 + [2] * 5, 3), ProbeSpec(size=9, seed=0))
    assert torch.bincount(probe.labels, minlength=3).tolist() == [5, 0, 4]


def test_different_seed_gives_different_probe(digits: DataBundle) -> None:
    a = make_probe(digits, ProbeSpec(size=40, seed=0))
    b = make_probe(digits, ProbeSpec(size=40, seed=1))
    assert not torch.equal(a.indices, b.indices) and a.hash != b.hash
    assert torch.equal(torch.bincount(a.labels), torch.bincount(b.labels))


def test_probe_larger_than_split_is_an_error(digits: DataBundle) -> None:
    with pytest.raises(DataError) as info:
        make_probe(digits, ProbeSpec(size=361, split="test"))
    assert "probe.size" in str(info.value) and "360" in str(info.value)
    whole = make_probe(digits, ProbeSpec(size=360, split="test"))  # the whole split is fine
    assert sorted(whole.indices.tolist()) == list(range(360))


def test_labels_outside_num_classes_are_an_error() -> None:
    with pytest.raises(DataError, match="num_classes"):
        make_probe(_bundle([0, 1, 5], 3), ProbeSpec(size=2))


def test_probe_hash_reference(digits: DataBundle) -> None:
    # A fixed value, computed once without torch or conetool from the format that probe_hash
    # documents (name|dtype|shape| then the little-endian bytes, for each tensor in turn):
    #   d = hashlib.sha256()
    #   d.update(b"inputs|torch.float32|(2, 2)|"); d.update(struct.pack("<4f", .5, -1, 2, .25))
    #   d.update(b"labels|torch.int64|(2,)|"); d.update(struct.pack("<2q", 1, 0))
    #   d.update(b"indices|torch.int64|(2,)|"); d.update(struct.pack("<2q", 7, 3))
    #   d.hexdigest()[:16]
    inputs = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    labels, indices = torch.tensor([1, 0]), torch.tensor([7, 3])
    assert probe_hash(inputs, labels, indices) == "e98761ea6ffcb745"
    assert probe_hash(inputs.T.contiguous().T, labels, indices) == "e98761ea6ffcb745"  # strides
    probe = make_probe(digits, ProbeSpec(size=10))
    assert probe.hash == probe_hash(probe.inputs, probe.labels, probe.indices)
    # Any change of content, dtype or shape changes it.
    assert probe_hash(probe.inputs + 0, probe.labels, probe.indices) == probe.hash
    assert probe_hash(probe.inputs.double(), probe.labels, probe.indices) != probe.hash
    bumped = probe.inputs.clone()
    bumped[0, 0, 0, 0] += 1e-3
    assert probe_hash(bumped, probe.labels, probe.indices) != probe.hash


def test_save_load_round_trip_is_exact(digits: DataBundle, tmp_path: Path) -> None:
    probe = make_probe(digits, ProbeSpec(size=30, split="test", seed=2))
    path = tmp_path / "store" / "probe.safetensors"
    save_probe(probe, path)
    loaded = load_probe(path)
    assert isinstance(loaded, Probe)
    for name in ("inputs", "labels", "indices"):
        assert torch.equal(getattr(loaded, name), getattr(probe, name))
        assert getattr(loaded, name).dtype == getattr(probe, name).dtype
    assert (loaded.split, loaded.hash) == ("test", probe.hash)
    assert sorted(load_file(str(path))) == ["indices", "inputs", "labels"]


def test_tampered_probe_file_is_an_error(digits: DataBundle, tmp_path: Path) -> None:
    probe = make_probe(digits, ProbeSpec(size=20))
    path = tmp_path / "probe.safetensors"
    save_probe(probe, path)
    # Flip one bit in the tensor data (the end of the file is tensor bytes).
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_probe(tampered)
    assert str(tampered) in str(info.value) and "hash" in str(info.value)
    # A tensor changed and the file rewritten with the old metadata.
    tensors = load_file(str(path))
    tensors["labels"][0] = (tensors["labels"][0] + 1) % 10
    save_file(tensors, str(tampered), metadata={"split": "train", "hash": probe.hash})
    with pytest.raises(DataError, match="modified or is corrupted"):
        load_probe(tampered)
    # Missing tensors, a file that is not safetensors, a missing file.
    save_file({"inputs": probe.inputs}, str(tampered), metadata={"split": "train", "hash": "x"})
    with pytest.raises(DataError, match="labels, indices"):
        load_probe(tampered)
    tampered.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors"):
        load_probe(tampered)
    with pytest.raises(DataError, match="does not exist"):
        load_probe(tmp_path / "absent.safetensors")
