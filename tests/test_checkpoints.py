"""Checkpoint discovery, step recovery and loading, on real files written in tmp_path.

Bad inputs are in test_checkpoints_bad.py, inspect and the header-only guarantees in
test_checkpoints_inspect.py. References: safetensors' own loader, hashlib over the file bytes,
and the tensors that were written.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conetool import paths
from conetool.checkpoints import (
    CheckpointWarning,
    _opening,
    checkpoint_ref,
    fingerprint,
    inspect_checkpoints,
    list_checkpoints,
    load_checkpoint,
    match_state_dict,
    parse_step_range,
    read_checkpoint,
    read_state_dict,
    step_from_name,
)
from conetool.errors import CheckpointError

# ------------------------------------------------------------------------------------------------
# helpers (shared by the other test_checkpoints_* files through plain copies: no conftest)


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def state(seed: int, classes: int = 3) -> dict[str, torch.Tensor]:
    """A distinct, fully random state dict of Net (running statistics included)."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: (
            torch.randint(0, 100, v.shape, generator=g)
            if not v.is_floating_point()
            else torch.randn(v.shape, generator=g).abs() + 0.1
        )
        for k, v in Net(classes).state_dict().items()
    }


def write_conetool(directory: Path, step: int, sd: dict[str, torch.Tensor]) -> Path:
    """What `conetool train` writes: the checkpoint with metadata and the optimizer state."""
    directory.mkdir(parents=True, exist_ok=True)
    path = paths.checkpoint(directory, step)
    meta = {"step": str(step), "epoch": "0", "spec_hash": "abc", "conetool_version": "0.1.0"}
    save_file(sd, str(path), metadata=meta)
    save_file(
        {"state.0.momentum_buffer": torch.ones(5)}, str(paths.optimizer_state(directory, step))
    )
    return path


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def assert_loaded(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert sorted(own) == sorted(sd)
    for k, v in sd.items():
        assert torch.equal(own[k], v.to(own[k].dtype)), k


# ------------------------------------------------------------------------------------------------
# flat safetensors: what conetool train writes


def test_conetool_layout_lists_steps_in_order_and_never_takes_optimizer_files(tmp_path: Path):
    for step in (1000, 0, 20000, 500):
        write_conetool(tmp_path, step, state(step))
    (tmp_path / paths.SPEC_NAME).write_text("[model]\n")
    (tmp_path / paths.METRICS_NAME).write_text("step,loss\n")
    torch.save({"x": torch.ones(1)}, tmp_path / "step_000500.optim.pt")
    refs = list_checkpoints(tmp_path)
    assert [r.step for r in refs] == [0, 500, 1000, 20000]
    assert [r.paths for r in refs] == [
        (paths.checkpoint(tmp_path, s),) for s in (0, 500, 1000, 20000)
    ]
    assert {r.source for r in refs} == {"safetensors"}
    assert refs[0].size == paths.checkpoint(tmp_path, 0).stat().st_size
    assert refs[0].file == paths.checkpoint(tmp_path, 0)


def test_upper_case_extensions_are_read_and_optimizer_states_still_skipped(tmp_path: Path):
    # names from a case-insensitive file system: left out silently before
    save_file(state(0), str(tmp_path / "STEP_100.SAFETENSORS"))
    torch.save(state(1), tmp_path / "step_200.PT")
    save_file(
        {"state.0.momentum_buffer": torch.ones(5)}, str(tmp_path / "STEP_100.OPTIM.SAFETENSORS")
    )
    torch.save({"state": {}}, tmp_path / "OPTIMIZER.PT")
    refs = list_checkpoints(tmp_path, warn=lambda message: None)
    assert [(r.step, r.file.name, r.format) for r in refs] == [
        (100, "STEP_100.SAFETENSORS", "safetensors"),
        (200, "step_200.PT", "torch"),
    ]
    assert_same(read_state_dict(refs[0]), state(0))
    assert_same(read_state_dict(refs[1]), state(1))


def test_metadata_step_wins_over_the_file_name(tmp_path: Path):
    save_file(state(0), str(tmp_path / "step_100.safetensors"), metadata={"step": "4242"})
    with pytest.warns(CheckpointWarning, match="stores step 4242 .* its name says 100"):
        assert [r.step for r in list_checkpoints(tmp_path)] == [4242]


@pytest.mark.parametrize("meta", ["-3", "2.5", "two"])
def test_a_metadata_step_that_is_not_a_count_is_refused_naming_the_file(tmp_path: Path, meta):
    path = tmp_path / "step_100.safetensors"
    save_file(state(0), str(path), metadata={"step": meta})
    with pytest.raises(CheckpointError, match="metadata step") as caught:
        list_checkpoints(tmp_path)
    message = str(caught.value)
    assert str(path) in message and f"'{meta}'" in message and "--step-regex" in message


@pytest.mark.parametrize(
    "stem",
    [
        "step_2000",
        "step=2000",
        "epoch=3-step=2000",
        "ckpt-2000",
        "ckpt_2000",
        "model_2000",
        "step_002000",
        "global_step2000",
        "checkpoint_2000",
        "resnet20_step2000",
        "iter_2000",
        "2000",
        "weights-2000",
    ],
)
def test_step_from_file_name(tmp_path: Path, stem: str):
    save_file(state(0), str(tmp_path / f"{stem}.safetensors"))
    (ref,) = list_checkpoints(tmp_path)
    assert ref.step == 2000
    assert step_from_name(stem) == 2000


def test_step_from_name_rejects_names_without_a_step():
    assert step_from_name("weights") is None
    with pytest.raises(CheckpointError, match="named by epoch"):  # an epoch is not a step
        step_from_name("epoch=3")
    assert step_from_name("epoch=3", iterations_per_epoch=10) == 30
    assert step_from_name("resnet20") is None


def test_open_lth_names_use_iterations_per_epoch(tmp_path: Path):
    # open_lth: step = ep * iterations_per_epoch + it, iterations_per_epoch = ceil(n / batch).
    ipe = math.ceil(50000 / 128)
    sds = {(0, 0): state(0), (3, 17): state(1), (1, 0): state(2)}
    for (ep, it), sd in sds.items():
        torch.save(sd, tmp_path / f"model_ep{ep}_it{it}.pth")
    torch.save({"model_state_dict": state(9), "ep": 3}, tmp_path / "checkpoint.pth")  # resume file
    torch.save({"mask": torch.ones(1)}, tmp_path / "mask.pth")
    (tmp_path / "hparams.log").write_text("x")
    notes: list[str] = []
    refs = list_checkpoints(tmp_path, iterations_per_epoch=ipe, warn=notes.append)
    assert [r.step for r in refs] == [0, ipe, 3 * ipe + 17]
    assert refs[2].paths == (tmp_path / "model_ep3_it17.pth",) and refs[2].source == "torch"
    assert_same(read_state_dict(refs[2]), sds[(3, 17)])
    assert len(notes) == 1 and "safetensors is preferred" in notes[0]


def test_open_lth_names_without_iterations_per_epoch_say_what_to_give(tmp_path: Path):
    torch.save(state(0), tmp_path / "model_ep3_it17.pth")
    with pytest.raises(CheckpointError, match=r"model_ep3_it17\.pth") as e:
        list_checkpoints(tmp_path)
    assert "iterations per epoch" in str(e.value) and "--spec" in str(e.value)


def test_step_regex_overrides_metadata_and_names(tmp_path: Path):
    save_file(state(0), str(tmp_path / "run_it300_step_1.safetensors"), metadata={"step": "7"})
    save_file(state(1), str(tmp_path / "run_it100_step_2.safetensors"), metadata={"step": "8"})
    refs = list_checkpoints(tmp_path, step_regex=r"it(\d+)")
    assert [(r.step, r.paths[0].name) for r in refs] == [
        (100, "run_it100_step_2.safetensors"),
        (300, "run_it300_step_1.safetensors"),
    ]
    named = list_checkpoints(tmp_path, step_regex=r"_(?P<step>\d+)\.safe")
    assert [r.step for r in named] == [1, 2]
    ep_it = list_checkpoints(
        tmp_path, step_regex=r"it(?P<epoch>\d)(?P<it>\d+)_", iterations_per_epoch=10
    )
    assert [r.step for r in ep_it] == [10 + 0, 30 + 0]
    with pytest.warns(CheckpointWarning, match="named by epoch: step = epoch x 7"):
        epochs = list_checkpoints(tmp_path, step_regex=r"it(?P<epoch>\d)", iterations_per_epoch=7)
    assert [r.step for r in epochs] == [7, 21]


@pytest.mark.parametrize("regex", ["it(\\d+", "it\\d+", "(?P<it>\\d+)"])
def test_bad_step_regex_names_the_flag(tmp_path: Path, regex: str):
    save_file(state(0), str(tmp_path / "step_1.safetensors"))
    with pytest.raises(CheckpointError, match="--step-regex"):
        list_checkpoints(tmp_path, step_regex=regex)


def test_step_regex_that_does_not_match_names_the_file(tmp_path: Path):
    save_file(state(0), str(tmp_path / "step_1.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not match .*step_1\.safetensors"):
        list_checkpoints(tmp_path, step_regex=r"it(\d+)")


# ------------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:5000", (0, 5000)),
        ("2000:", (2000, None)),
        (":5000", (None, 5000)),
        ("300", (300, 300)),
        (" 1 : 2 ", (1, 2)),
    ],
)
def test_parse_step_range(text: str, expected: tuple[int | None, int | None]):
    assert parse_step_range(text) == expected


@pytest.mark.parametrize("text", ["a:b", "1:2:3", "", "-5:3", "5:3", "1.5:2"])
def test_parse_step_range_errors_name_the_flag(text: str):
    with pytest.raises(CheckpointError, match="--steps"):
        parse_step_range(text)


def test_steps_and_every_select_inclusively_and_skip_checking_the_rest(tmp_path: Path):
    for step in range(0, 1001, 100):
        write_conetool(tmp_path, step, state(step))
    (tmp_path / "step_002500.safetensors").write_bytes(b"garbage")  # outside the range: not checked
    refs = list_checkpoints(tmp_path, steps=(200, 800))
    assert [r.step for r in refs] == [200, 300, 400, 500, 600, 700, 800]
    refs = list_checkpoints(tmp_path, steps=(None, 1000), every=300)
    assert [r.step for r in refs] == [0, 300, 600, 900]
    with pytest.raises(CheckpointError, match=r"--steps 5000:.*steps found are 0, 100"):
        list_checkpoints(tmp_path, steps=(5000, None))
    with pytest.raises(CheckpointError, match="--every"):
        list_checkpoints(tmp_path, steps=(0, 1000), every=0)


def test_hidden_and_temporary_files_are_ignored(tmp_path: Path):
    write_conetool(tmp_path, 0, state(0))
    (tmp_path / ".step_000100.safetensors.abc.tmp").write_bytes(b"partial")
    (tmp_path / ".step_000200.safetensors").write_bytes(b"partial")
    assert [r.step for r in list_checkpoints(tmp_path)] == [0]


# ------------------------------------------------------------------------------------------------
# Hugging Face Trainer layouts


def write_trainer_state(folder: Path, step: int) -> None:
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0}))


def write_hf(
    root: Path, step: int, sd: dict[str, torch.Tensor], *, trainer_step: int | None = None
):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"state": {}}, folder / "optimizer.pt")
    torch.save({"last_epoch": 1}, folder / "scheduler.pt")
    torch.save({"scale": 65536.0}, folder / "scaler.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    torch.save({"python": 1}, folder / "rng_state_1.pth")  # one per process
    torch.save({"output_dir": str(root)}, folder / "training_args.bin")
    write_trainer_state(folder, step if trainer_step is None else trainer_step)
    return folder


def write_hf_sharded(
    folder: Path, sd: dict[str, torch.Tensor], groups: list[list[str]], prefix: str = "model"
) -> list[Path]:
    """Shards as transformers writes them, with its index JSON written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(groups)
    weight_map, files = {}, []
    for k, keys in enumerate(groups, start=1):
        name = f"{prefix}-{k:05d}-of-{n:05d}.safetensors"
        save_file({key: sd[key] for key in keys}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in keys})
        files.append(folder / name)
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


SHARDS = [
    ["fc2.weight", "fc2.bias", "bn.weight"],
    [
        "fc1.weight",
        "fc1.bias",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ],
]


def test_hf_trainer_folders_single_and_sharded(tmp_path: Path):
    sds = {500: state(5), 1000: state(10)}
    write_hf(tmp_path, 500, sds[500])
    folder = tmp_path / "checkpoint-1000"
    files = write_hf_sharded(folder, sds[1000], SHARDS)
    write_trainer_state(folder, 1000)
    (tmp_path / "runs").mkdir()  # tensorboard logs: not a checkpoint
    (tmp_path / "config.json").write_text("{}")
    refs = list_checkpoints(tmp_path)
    assert [(r.step, r.source) for r in refs] == [(500, "hf"), (1000, "hf-sharded")]
    assert refs[0].paths == (tmp_path / "checkpoint-500" / "model.safetensors",)
    assert refs[0].file == tmp_path / "checkpoint-500"
    assert refs[1].paths == tuple(files)
    assert refs[1].index == folder / "model.safetensors.index.json"
    assert refs[1].size == sum(f.stat().st_size for f in files)
    for ref in refs:
        model = Net()
        loaded = load_checkpoint(model, ref)
        assert loaded is not None and loaded.ref == ref
        assert_loaded(model, sds[ref.step])
    # shards merged: every key once, exactly the tensors written
    assert_same(read_state_dict(refs[1]), sds[1000])


def test_hf_pytorch_model_bin_and_its_shards(tmp_path: Path):
    a = tmp_path / "checkpoint-10"
    a.mkdir()
    torch.save(state(1), a / "pytorch_model.bin")
    torch.save({"x": 1}, a / "training_args.bin")
    b = tmp_path / "checkpoint-20"
    b.mkdir()
    sd = state(2)
    weight_map = {}
    for k, keys in enumerate(SHARDS, start=1):
        name = f"pytorch_model-{k:05d}-of-00002.bin"
        torch.save({key: sd[key] for key in keys}, b / name)
        weight_map.update({key: name for key in keys})
    (b / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.source, r.format) for r in refs] == [
        (10, "hf", "torch"),
        (20, "hf-sharded", "torch"),
    ]
    assert_same(read_state_dict(refs[0]), state(1))
    assert_same(read_state_dict(refs[1]), sd)


def test_hf_final_model_beside_checkpoint_folders_is_skipped(tmp_path: Path):
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    save_file(state(10), str(tmp_path / "model.safetensors"))  # Trainer.save_model(output_dir)
    torch.save({"x": 1}, tmp_path / "training_args.bin")
    refs = list_checkpoints(tmp_path)
    assert [(r.step, r.source) for r in refs] == [(500, "hf"), (1000, "hf")]


def test_hf_output_dir_with_its_trainer_state_beside_checkpoint_folders(tmp_path: Path):
    # Was: trainer.save_model() + trainer.save_state() put trainer_state.json in the output
    # directory too, which was then read as one checkpoint folder: its final model only, every
    # checkpoint-N/ folder left out without a word.
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    save_file(state(10), str(tmp_path / "model.safetensors"))
    write_trainer_state(tmp_path, 1000)
    refs = list_checkpoints(tmp_path)
    assert [(r.step, r.file) for r in refs] == [
        (500, tmp_path / "checkpoint-500"),
        (1000, tmp_path / "checkpoint-1000"),
    ]


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_final_model_of_a_step_no_folder_gives_is_read_as_that_step(tmp_path: Path, weights):
    # Was: save_steps=500 on a run of 1500 steps saves checkpoint-500/ and checkpoint-1000/;
    # save_model() + save_state() put the weights of step 1500 and trainer_state.json (global_step
    # 1500) beside them, and that final model was left out without a word: the run's last kernel
    # lost, as a loop's final.pt was.
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    if weights == "model.safetensors":
        save_file(state(15), str(tmp_path / weights), metadata={"format": "pt"})
    else:
        torch.save(state(15), tmp_path / weights)
    write_trainer_state(tmp_path, 1500)
    torch.save({"output_dir": str(tmp_path)}, tmp_path / "training_args.bin")
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.file) for r in refs] == [
        (500, tmp_path / "checkpoint-500"),
        (1000, tmp_path / "checkpoint-1000"),
        (1500, tmp_path / weights),
    ]
    assert_same(read_state_dict(refs[2]), state(15))
    # a --step-regex made for the folders leaves the final model to its global_step
    refs = list_checkpoints(tmp_path, step_regex="checkpoint-(\\d+)", warn=lambda _: None)
    assert [r.step for r in refs] == [500, 1000, 1500]


def test_hf_final_model_is_read_when_the_folder_of_its_step_holds_no_weights(tmp_path: Path):
    # Was: checkpoint-N/ folders still being saved (no weights yet) beside save_model's final
    # model and trainer_state.json: the empty checkpoint-1000/ gave step 1000, so the final model
    # was dropped as its copy, and --skip-bad ended in "no usable checkpoint left".
    (tmp_path / "checkpoint-500").mkdir()
    (tmp_path / "checkpoint-1000").mkdir()
    save_file(state(10), str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    write_trainer_state(tmp_path, 1000)
    with pytest.raises(CheckpointError, match="holds no model weights"):
        list_checkpoints(tmp_path, warn=lambda _: None)
    said: list[str] = []
    refs = list_checkpoints(tmp_path, skip_bad=True, warn=said.append)
    assert [(r.step, r.file) for r in refs] == [(1000, tmp_path / "model.safetensors")]
    assert_same(read_state_dict(refs[0]), state(10))
    (stand_in,) = [m for m in said if "in place of" in m]
    assert "'model.safetensors'" in stand_in and "'checkpoint-1000/'" in stand_in, stand_in
    assert "trainer_state.json" in stand_in, stand_in


def test_hf_final_model_beside_a_best_model_checkpoint_is_left_out_with_a_warning(
    tmp_path: Path,
):
    # load_best_model_at_end saves the best checkpoint's weights as the final model, so its step
    # is not trainer_state.json's global_step: not read, and the warning says why and the fix
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    save_file(state(5), str(tmp_path / "model.safetensors"))
    state_file = tmp_path / "trainer_state.json"
    best = str(tmp_path / "checkpoint-500")
    state_file.write_text(json.dumps({"global_step": 1500, "best_model_checkpoint": best}))
    said: list[str] = []
    refs = list_checkpoints(tmp_path, warn=said.append)
    assert [r.step for r in refs] == [500, 1000]
    (warning,) = [w for w in said if "final model" in w]
    assert "'model.safetensors'" in warning and f"best_model_checkpoint '{best}'" in warning
    assert f"mkdir '{tmp_path / 'checkpoint-1500'}'" in warning, warning


def test_hf_step_from_trainer_state_when_the_folder_name_has_none(tmp_path: Path):
    folder = tmp_path / "best"
    folder.mkdir()
    save_file(state(0), str(folder / "model.safetensors"))
    write_trainer_state(folder, 1234)
    assert [r.step for r in list_checkpoints(tmp_path)] == [1234]


def test_hf_folder_name_checked_against_trainer_state(tmp_path: Path):
    write_hf(tmp_path, 2000, state(0), trainer_step=1999)
    with pytest.raises(CheckpointError, match="checkpoint-2000") as e:
        list_checkpoints(tmp_path)
    assert "global_step 1999" in str(e.value) and "rename" in str(e.value)


def test_a_single_hf_folder_or_file_can_be_given(tmp_path: Path):
    folder = write_hf(tmp_path, 300, state(3))
    (ref,) = list_checkpoints(folder)
    assert (ref.step, ref.source) == (300, "hf")
    path = write_conetool(tmp_path / "flat", 700, state(7))
    assert [r.step for r in list_checkpoints(path)] == [700]
    assert checkpoint_ref(path).step == 700


def test_top_level_shards_with_their_index(tmp_path: Path):
    sd = state(4)
    files = write_hf_sharded(tmp_path / "a", sd, SHARDS, prefix="step_300")
    (ref,) = list_checkpoints(tmp_path / "a")
    assert (ref.step, ref.source, ref.paths) == (300, "hf-sharded", tuple(files))
    assert ref.file == tmp_path / "a" / "step_300.safetensors.index.json"
    assert_same(read_state_dict(ref), sd)
    write_hf_sharded(tmp_path / "b", sd, SHARDS)  # save_pretrained output: no step anywhere
    with pytest.raises(CheckpointError, match=r"no step recoverable from .*model\.safetensors"):
        list_checkpoints(tmp_path / "b")


# ------------------------------------------------------------------------------------------------
# loading: key prefixes, Lightning, torch files, exact weights


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "module.",
        "model.",
        "_orig_mod.",
        "module._orig_mod.",
        # a LightningModule's compiled DDP network: all three
        "model._orig_mod.module.",
        "model.module._orig_mod.",
    ],
)
def test_prefixes_are_stripped_when_that_makes_keys_match(tmp_path: Path, prefix: str):
    sd = state(3)
    save_file({prefix + k: v for k, v in sd.items()}, str(tmp_path / "step_1.safetensors"))
    model = Net()
    load_checkpoint(model, list_checkpoints(tmp_path)[0])
    assert_loaded(model, sd)


class Outer(nn.Module):
    """A model whose own keys start with "model." (must not be stripped)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Net()


def test_a_model_prefix_that_belongs_to_the_model_is_kept():
    outer_sd = {"model." + k: v for k, v in state(1).items()}
    model = Outer()
    load_checkpoint(model, outer_sd)
    assert_loaded(model, outer_sd)
    # and a wrapped checkpoint of that model: only "module." goes
    model2 = Outer()
    load_checkpoint(model2, {"module." + k: v for k, v in outer_sd.items()})
    assert_loaded(model2, outer_sd)


def test_a_compiled_model_loads_a_plain_checkpoint():
    class Wrapper(nn.Module):  # what torch.compile's OptimizedModule looks like to state_dict()
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = Net()

    model = Wrapper()
    sd = state(2)
    load_checkpoint(model, sd)
    assert_loaded(model._orig_mod, sd)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_plain_torch_state_dicts(tmp_path: Path, suffix: str):
    sd = state(6)
    torch.save(sd, tmp_path / f"step_7{suffix}")
    notes: list[str] = []
    (ref,) = list_checkpoints(tmp_path, warn=notes.append)
    assert (ref.step, ref.source) == (7, "torch")
    assert notes and "weights_only=True" in notes[0]
    model = Net()
    load_checkpoint(model, ref)
    assert_loaded(model, sd)


def test_lightning_ckpt_with_state_dict_and_model_prefix(tmp_path: Path):
    sd = state(8)
    ckpt = {
        "epoch": 3,
        "global_step": 2000,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model." + k: v for k, v in sd.items()},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}],
        "lr_schedulers": [],
    }
    torch.save(ckpt, tmp_path / "epoch=3-step=2000.ckpt")
    torch.save(ckpt, tmp_path / "last.ckpt")  # Lightning's copy of the latest: not a second step
    (ref,) = list_checkpoints(tmp_path, warn=lambda _: None)
    assert ref.step == 2000 and ref.paths[0].name == "epoch=3-step=2000.ckpt"
    model = Net()
    load_checkpoint(model, ref)
    assert_loaded(model, sd)


def test_lightning_last_ckpt_holding_the_only_copy_of_the_final_step_is_read(tmp_path: Path):
    """ModelCheckpoint(save_top_k=2, monitor=..., save_last=True): the top-k files keep the best
    steps, and the run's final step may be only in last.ckpt. It was always skipped by name, the
    last kernel lost without a word; it is read as its stored global_step when no other file
    gives that step (as last.pt and final.pt are), and left out without a word when one does."""

    def lightning(step: int, seed: int) -> dict[str, object]:
        sd = {"model." + k: v for k, v in state(seed).items()}
        return {"epoch": step // 100, "global_step": step, "state_dict": sd}

    torch.save(lightning(100, 1), tmp_path / "epoch=0-step=100.ckpt")
    torch.save(lightning(200, 2), tmp_path / "epoch=1-step=200.ckpt")
    torch.save(lightning(300, 3), tmp_path / "last.ckpt")
    said: list[str] = []
    refs = list_checkpoints(tmp_path, warn=said.append)
    assert [(r.step, r.paths[0].name) for r in refs] == [
        (100, "epoch=0-step=100.ckpt"),
        (200, "epoch=1-step=200.ckpt"),
        (300, "last.ckpt"),
    ]
    model = Net()
    load_checkpoint(model, refs[-1])
    assert_loaded(model, state(3))
    torch.save(lightning(300, 3), tmp_path / "epoch=2-step=300.ckpt")  # top-k kept it too
    torch.save(lightning(300, 3), tmp_path / "last-v1.ckpt")  # a second fit's last, same step
    said.clear()
    refs = list_checkpoints(tmp_path, warn=said.append)
    assert [r.paths[0].name for r in refs][-1] == "epoch=2-step=300.ckpt" and len(refs) == 3
    assert not [m for m in said if "last" in m], said


def test_copies_named_best_or_last_are_not_taken_for_steps(tmp_path: Path):
    """A plain loop's best.pt / last.pt beside its step files is a copy of some step, not an
    unusable file: the directory lists cleanly without --skip-bad. Such a file that gives a step
    (metadata) is read as any other, and a folder of nothing else says why it is empty."""
    for step in (0, 10):
        torch.save(state(step), tmp_path / f"ckpt_{step}.pt")
    for name in ("best.pt", "last.pt", "LATEST.pth", "model_best.pt", "final_model.bin"):
        torch.save(state(10), tmp_path / name)
    save_file(state(10), str(tmp_path / "best_model.safetensors"))
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.paths[0].name) for r in refs] == [(0, "ckpt_0.pt"), (10, "ckpt_10.pt")]

    save_file(state(20), str(tmp_path / "last.safetensors"), metadata={"step": "20"})
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.paths[0].name) for r in refs][-1] == (20, "last.safetensors")

    alone = tmp_path / "alone"
    alone.mkdir()
    torch.save(state(1), alone / "best.pt")
    with pytest.raises(CheckpointError) as e:
        list_checkpoints(alone, warn=lambda _: None)
    text = str(e.value)
    assert "it holds: best.pt" in text and "copies named without a step" in text, text
    # Pointed at directly, the file is still one checkpoint whose step must be known.
    with pytest.raises(CheckpointError, match="no step recoverable"):
        list_checkpoints(alone / "best.pt", warn=lambda _: None)


def test_every_that_keeps_one_checkpoint_says_which_spacing_works(tmp_path: Path):
    """Steps 22 apart (epochs of 22 iterations) with --every 40 keep step 0 alone: no distance
    can come of it, so a warning names the spacing the steps have and an --every that works."""
    for step in range(0, 221, 22):
        torch.save(state(step), tmp_path / f"ckpt_{step}.pt")
    said: list[str] = []
    refs = list_checkpoints(tmp_path, every=40, warn=said.append)
    assert [r.step for r in refs] == [0]
    (note,) = [m for m in said if "--every 40" in m]
    flat = " ".join(note.split())
    assert "keeps only step 0 of the 11 steps found" in flat, flat
    assert "multiples of 22" in flat and "--every 44" in flat, flat
    # Two or more kept, or the rest left out by --steps rather than --every: nothing to say.
    said.clear()
    assert [r.step for r in list_checkpoints(tmp_path, every=44, warn=said.append)][:2] == [0, 44]
    assert not [m for m in said if "--every" in m]
    said.clear()
    list_checkpoints(tmp_path, steps=(0, 21), every=40, warn=said.append)
    assert not [m for m in said if "--every" in m]


def test_every_beyond_the_run_suggests_an_every_that_keeps_two_checkpoints(tmp_path: Path):
    """Steps 0 to 220, 22 apart, with --every 440: 440 is already a multiple of the spacing, so
    the warning must not suggest it back (it said 'pass a multiple of 22 (--every 440)', the
    flag given); it names the last step and an --every that keeps at least two checkpoints."""
    steps = range(0, 221, 22)
    for step in steps:
        torch.save(state(step), tmp_path / f"ckpt_{step}.pt")
    said: list[str] = []
    refs = list_checkpoints(tmp_path, every=440, warn=said.append)
    assert [r.step for r in refs] == [0]
    (note,) = [m for m in said if "--every 440 (" in m]
    flat = " ".join(note.split())
    assert "keeps only step 0 of the 11 steps found" in flat, flat
    suggested = [int(k) for k in re.findall(r"--every (\d+)\)", flat)]
    assert suggested and all(k != 440 for k in suggested), flat
    (k,) = suggested
    assert k % 22 == 0 and sum(1 for s in steps if s % k == 0) >= 2, flat
    assert "end at 220" in flat, flat


def test_legacy_torch_serialization_is_read(tmp_path: Path):
    sd = state(9)
    torch.save(sd, tmp_path / "ckpt-40.pt", _use_new_zipfile_serialization=False)
    (ref,) = list_checkpoints(tmp_path, warn=lambda _: None)
    assert_same(read_state_dict(ref), sd)


def test_missing_num_batches_tracked_is_filled_from_the_model():
    sd = state(1)
    del sd["bn.num_batches_tracked"]
    model = Net()
    before = model.bn.num_batches_tracked.clone()
    load_checkpoint(model, sd)
    assert torch.equal(model.bn.num_batches_tracked, before)
    assert torch.equal(model.fc1.weight, sd["fc1.weight"])


def test_loading_casts_into_the_model_dtype_exactly():
    sd = state(2)
    model = Net().double()
    with pytest.warns(CheckpointWarning, match="lower precision than the model's float64"):
        load_checkpoint(model, sd)
    assert model.fc1.weight.dtype == torch.float64
    assert torch.equal(model.fc1.weight, sd["fc1.weight"].double())


@pytest.mark.parametrize("compute", [None, torch.float32, torch.float64])
def test_lower_precision_warning_says_the_dtype_the_kernel_is_computed_in(compute):
    """It said "the kernel is computed in the model's dtype" whatever the kernel's: a float64
    model's kernel under kernels' default --dtype float32 is computed in float32."""
    said: list[str] = []
    match_state_dict(Net().double(), state(2), warn=said.append, compute=compute)
    (warning,) = said
    assert "lower precision than the model's float64" in warning, warning
    assert "computed in the model's dtype" not in warning, warning
    if compute is None:  # a plain load: no kernel to speak of
        assert "kernel" not in warning, warning
    else:
        assert f"the kernel is computed in {str(compute).removeprefix('torch.')}" in warning


@pytest.mark.parametrize(
    ("saved", "model_dtype", "warned"),
    [
        (torch.bfloat16, torch.float16, True),  # same width, 8 significant bits against 11
        (torch.float16, torch.bfloat16, False),  # loading rounds, as float32 into float16 does
        (torch.float16, torch.float32, True),
        (torch.float32, torch.float32, False),
    ],
)
def test_lower_precision_is_judged_by_significant_digits_not_width(saved, model_dtype, warned):
    """A bfloat16 checkpoint loaded into a float16 model lost digits when it was saved, but both
    are 16 bits wide, so the lower-precision warning compared widths and said nothing."""
    sd = {k: v.to(saved) if v.is_floating_point() else v for k, v in state(4).items()}
    said: list[str] = []
    load_checkpoint(Net().to(model_dtype), sd, warn=said.append)
    assert any("lower precision" in message for message in said) == warned, said


@pytest.mark.parametrize(
    ("saved", "model_dtype", "value", "holds"),
    [
        (torch.bfloat16, torch.float16, 1e5, "float32"),  # float16's largest is 65504
        (torch.float32, torch.float16, -7e4, "float32"),
        (torch.float64, torch.float32, 1e39, "float64"),  # float32's largest is 3.4e38
    ],
)
def test_values_beyond_the_models_dtype_are_refused_naming_tensor_and_fix(
    saved, model_dtype, value, holds
):
    """A bfloat16 checkpoint holding 1e5, loaded into a float16 model, became Inf there without
    a word (only the lower-precision warning), and the kernel was NaN (or the model was called
    random in eval mode). It is refused: the message names the tensor, its largest value, and a
    dtype whose range holds it."""
    sd = {k: v.to(saved) if v.is_floating_point() else v for k, v in state(4).items()}
    sd["fc2.weight"][1, 2] = value
    assert torch.isfinite(sd["fc2.weight"]).all()
    model = Net().to(model_dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(model, sd, warn=lambda _: None)
    message = str(refused.value)
    stored = abs(float(sd["fc2.weight"][1, 2]))  # as the checkpoint's dtype rounded it
    assert f"'fc2.weight' ({str(saved)[6:]}, up to {stored:.4g})" in message
    assert "fc1.weight" not in message  # only the tensors that overflow are named
    assert f"Load the checkpoint into a {holds} model" in message and "--dtype" in message
    for key, tensor in model.state_dict().items():  # the model was left as it was
        assert torch.equal(tensor, before[key]), key
    load_checkpoint(Net().to(getattr(torch, holds)), sd, warn=lambda _: None)  # it holds them


def test_values_within_the_models_range_and_non_finite_ones_are_not_overflow():
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state(4).items()}
    sd["fc2.weight"][0, 0] = 6.5e4  # bfloat16's 65024, below float16's 65504
    model = Net().to(torch.float16)
    load_checkpoint(model, sd, warn=lambda _: None)
    assert model.fc2.weight[0, 0].item() == 65024.0
    sd["fc2.weight"][0, 0] = float("inf")  # the checkpoint's own Inf: check_finite's business
    load_checkpoint(model, sd, check_finite=False, warn=lambda _: None)
    assert model.fc2.weight[0, 0].item() == float("inf")


@pytest.mark.parametrize("saved", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("value", [65504.0, 65519.0, 65520.0, -65520.0, 7e4, 1e30])
def test_overflow_is_refused_exactly_when_casting_makes_a_value_inf(saved, value):
    """The check reads each tensor's largest magnitude (no cast of the tensor): it refuses
    exactly the values that the elementwise cast into float16 turns into Inf, at the rounding
    boundary too (65519 rounds down to 65504, 65520 up to Inf)."""
    sd = {k: v.to(saved) if v.is_floating_point() else v for k, v in state(4).items()}
    sd["fc1.bias"][0] = value
    becomes_inf = not bool(torch.isfinite(sd["fc1.bias"].to(torch.float16)).all())  # reference
    model = Net().to(torch.float16)
    if becomes_inf:
        with pytest.raises(CheckpointError, match="'fc1.bias'"):
            load_checkpoint(model, sd, warn=lambda _: None)
    else:
        load_checkpoint(model, sd, warn=lambda _: None)
        assert torch.isfinite(model.fc1.bias).all()


def test_overflow_beside_the_checkpoints_own_nan_is_still_refused():
    """With check_finite off, a tensor holding NaN and 1e5 (bfloat16, into float16): its
    largest magnitude is NaN, and the 1e5 that would become Inf is still found and named."""
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state(4).items()}
    sd["fc2.weight"][0, 0] = float("nan")
    sd["fc2.weight"][0, 1] = 1e5
    with pytest.raises(CheckpointError, match=r"'fc2.weight' \(bfloat16, up to 9.984e\+04\)"):
        load_checkpoint(Net().to(torch.float16), sd, check_finite=False, warn=lambda _: None)


def test_a_tensor_lost_to_zero_in_the_models_dtype_is_named():
    """A float32 tensor of 1e-9 (a learned scale, say) loaded into a float16 model became all
    zeros there, without a word: below float16's smallest subnormal (6e-8) every value is 0. A
    warning names the file, the tensor, its dtype, its largest magnitude, and the fix; a tensor
    whose small values sit beside large ones is ordinary rounding and is not named."""
    sd = state(4)
    sd["fc1.bias"] = torch.full_like(sd["fc1.bias"], 1e-9)
    sd["fc2.bias"] = torch.full_like(sd["fc2.bias"], 2e-6)  # subnormal in float16, not 0
    sd["fc1.weight"][0, 0] = 1e-9  # beside values near 1: rounding, not a loss
    said: list[str] = []
    model = Net().to(torch.float16)
    load_checkpoint(model, sd, warn=said.append)
    assert not model.fc1.bias.any()  # what loading does: all 0
    [message] = [m for m in said if "smallest normal" in m]
    assert message.startswith("'the state dict' stores ")
    assert "'fc1.bias' (float32, up to 1e-09, all 0 in float16)" in message
    assert "'fc2.bias' (float32, up to 2e-06)" in message
    assert "fc1.weight" not in message and "'fc2.weight'" not in message
    assert "load the checkpoint into a float32 model" in message and "--dtype" in message
    said.clear()
    load_checkpoint(Net().to(torch.float32), sd, warn=said.append)  # it holds them
    assert not said
    sd["fc1.bias"] = torch.zeros_like(sd["fc1.bias"])  # zeros stay zeros: nothing lost
    sd["fc2.bias"] = torch.zeros_like(sd["fc2.bias"])
    load_checkpoint(model, sd, warn=said.append)
    assert not said


def test_match_state_dict_returns_model_keys():
    sd = {"module." + k: v for k, v in state(3).items()}
    out = match_state_dict(Net(), sd)
    assert sorted(out) == sorted(Net().state_dict())
    assert out["fc1.weight"] is sd["module.fc1.weight"]


# ------------------------------------------------------------------------------------------------
# the reader against safetensors' own loader; fingerprints against hashlib

ALL_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def test_reader_matches_safetensors_for_every_dtype_and_shape(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(ALL_DTYPES):
        x = torch.randn(3, 5, generator=g) * 50
        tensors[f"t{i}"] = (x > 0) if dtype == torch.bool else x.to(dtype)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["odd"] = torch.arange(7, dtype=torch.int8)  # makes later offsets unaligned
    tensors["after_odd"] = torch.randn(3, generator=g, dtype=torch.float64)
    path = tmp_path / "step_1.safetensors"
    save_file(tensors, str(path), metadata={"step": "1", "note": "x"})
    loaded = read_checkpoint(path)
    assert_same(loaded.state_dict, load_file(str(path)))
    assert loaded.metadata == {"step": "1", "note": "x"}
    assert loaded.ref.step == 1


def test_fingerprint_is_size_and_sha256_of_the_bytes(tmp_path: Path):
    path = write_conetool(tmp_path, 100, state(1))
    data = path.read_bytes()
    expected = f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
    assert fingerprint(path) == expected
    (ref,) = list_checkpoints(tmp_path)
    assert fingerprint(ref) == expected
    assert read_checkpoint(ref).fingerprint == expected
    write_conetool(tmp_path, 100, state(2))  # same size, other content
    assert path.stat().st_size == len(data)
    assert fingerprint(ref) != expected


def test_fingerprint_of_shards_combines_them_in_order(tmp_path: Path):
    files = write_hf_sharded(tmp_path / "checkpoint-5", state(1), SHARDS)
    (ref,) = list_checkpoints(tmp_path)
    lines = "".join(
        f"{f.stat().st_size}:{hashlib.sha256(f.read_bytes()).hexdigest()}\n" for f in files
    )
    total = sum(f.stat().st_size for f in files)
    assert fingerprint(ref) == f"{total}:{hashlib.sha256(lines.encode()).hexdigest()}"
    assert read_checkpoint(ref).fingerprint == fingerprint(ref)


class CountingFile(io.FileIO):
    bytes_read = 0
    opened = 0

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        CountingFile.opened += 1

    def readinto(self, b):
        n = super().readinto(b)
        CountingFile.bytes_read += n or 0
        return n

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        CountingFile.bytes_read += len(data)
        return data


def test_loading_reads_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write_conetool(tmp_path, 3, state(3))
    (ref,) = list_checkpoints(tmp_path)
    CountingFile.bytes_read = CountingFile.opened = 0
    monkeypatch.setattr(_opening, "open_file", CountingFile)
    model = Net()
    loaded = load_checkpoint(model, ref)
    assert CountingFile.opened == 1
    assert CountingFile.bytes_read == path.stat().st_size
    assert loaded is not None and loaded.fingerprint.startswith(f"{path.stat().st_size}:")
    assert_loaded(model, state(3))


def test_read_by_path_without_a_recoverable_step(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    save_file(state(1), str(path))
    loaded = read_checkpoint(path)
    assert loaded.ref.step == -1
    assert_same(loaded.state_dict, state(1))
    assert fingerprint(path) == loaded.fingerprint
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        bad = tmp_path / "other.safetensors"
        bad.write_bytes(b"\x05" + b"\0" * 7 + b"{bad}")
        read_checkpoint(bad)  # a problem with the file itself is still raised


def test_hf_final_model_that_cannot_be_read_has_its_global_step(tmp_path: Path):
    # Was: its inspect row said step None though trainer_state.json gives global_step 1500, and
    # --steps could not leave it out: kernels --steps 0:1000 stopped at the damaged final model.
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    final = tmp_path / "model.safetensors"
    save_file(state(15), str(final), metadata={"format": "pt"})
    final.write_bytes(final.read_bytes()[:-20])
    write_trainer_state(tmp_path, 1500)
    rows = inspect_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.file, r.status) for r in rows] == [
        (500, "checkpoint-500/", "ok"),
        (1000, "checkpoint-1000/", "ok"),
        (1500, "model.safetensors", "error"),
    ]
    assert "truncated" in (rows[2].problem or "")
    with pytest.raises(CheckpointError, match="truncated"):
        list_checkpoints(tmp_path, warn=lambda _: None)
    refs = list_checkpoints(tmp_path, steps=(0, 1000), warn=lambda _: None)
    assert [r.step for r in refs] == [500, 1000]


def test_hf_best_model_warning_only_when_the_selection_reads_its_step(tmp_path: Path):
    # Was: "not read: 'model.safetensors' ... the Trainer's final model" under --steps 0:1000 too,
    # which leaves step 1500 (its trainer_state.json global_step) out anyway: nothing lost there.
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    save_file(state(5), str(tmp_path / "model.safetensors"))
    best = str(tmp_path / "checkpoint-500")
    (tmp_path / "trainer_state.json").write_text(
        json.dumps({"global_step": 1500, "best_model_checkpoint": best})
    )

    def final_said(**selection: object) -> bool:
        said: list[str] = []
        list_checkpoints(tmp_path, warn=said.append, **selection)  # type: ignore[arg-type]
        return any("final model" in w for w in said)

    assert final_said() and final_said(steps=(1000, None)) and final_said(every=500)
    assert not final_said(steps=(0, 1000)) and not final_said(every=1000)
    notes: list[str] = []  # inspect, which shares the scan, alike
    inspect_checkpoints(tmp_path, steps=(0, 1000), warn=notes.append)
    assert not [w for w in notes if "final model" in w], notes


def test_hf_final_model_of_the_step_a_folder_gives_is_left_out_without_a_warning(tmp_path: Path):
    # the same weights as checkpoint-1000/: no "final model" warning (that is for a
    # best_model_checkpoint, whose step is not known)
    write_hf(tmp_path, 500, state(5))
    write_hf(tmp_path, 1000, state(10))
    save_file(state(10), str(tmp_path / "model.safetensors"))
    write_trainer_state(tmp_path, 1000)
    said: list[str] = []
    refs = list_checkpoints(tmp_path, warn=said.append)
    assert [r.step for r in refs] == [500, 1000]
    assert not [w for w in said if "final model" in w], said


def test_hf_final_model_at_global_step_0_stands_in_for_an_empty_checkpoint_0(tmp_path: Path):
    (tmp_path / "checkpoint-0").mkdir()  # being saved
    save_file(state(0), str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    write_trainer_state(tmp_path, 0)  # step 0 is a step
    refs = list_checkpoints(tmp_path, skip_bad=True, warn=lambda _: None)
    assert [(r.step, r.file) for r in refs] == [(0, tmp_path / "model.safetensors")]


def test_hf_final_model_storing_its_step_is_read_as_that_step(tmp_path: Path):
    # a step in the final model's own metadata wins over trainer_state.json's global_step, as
    # for any file; the folder-name check against global_step is for checkpoint-N/ folders only
    write_hf(tmp_path, 500, state(5))
    save_file(state(7), str(tmp_path / "model.safetensors"), metadata={"step": "700"})
    write_trainer_state(tmp_path, 1000)
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.file) for r in refs] == [
        (500, tmp_path / "checkpoint-500"),
        (700, tmp_path / "model.safetensors"),
    ]


def test_a_file_named_like_a_checkpoint_folder_does_not_hide_the_output_dirs_model(
    tmp_path: Path,
):
    # only checkpoint-N/ folders make a directory with trainer_state.json a Trainer's output
    # directory to scan: a file of that name beside its final model leaves it one HF folder
    save_file(state(10), str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    write_trainer_state(tmp_path, 1000)
    (tmp_path / "checkpoint-500").write_text("notes")
    refs = list_checkpoints(tmp_path, warn=lambda _: None)
    assert [(r.step, r.file) for r in refs] == [(1000, tmp_path)]
