"""A checkpoint directory and a store given in each other's place (:mod:`conetool.folder_roles`):
``kernels CKPTS --store CKPTS`` is refused before anything is written (it used to write the store
among the checkpoints, whose probe set the next listing then took for a checkpoint), ``kernels
STORE`` names the store and the run it was computed from, and ``--store CKPTS`` of the commands
that read a store says it is a checkpoint directory instead of advising ``kernels CKPTS --store
CKPTS``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import run_fixtures
from typer.testing import CliRunner

from conetool import folder_roles, paths
from conetool.checkpoints.records import CHECKPOINT_SUFFIXES
from conetool.checkpoints.scanning import scan_directory
from conetool.cli import app
from conetool.pipeline import kernels
from conetool.step_folders import read_as_one_step

runner = CliRunner()
trained, run = run_fixtures()


def flat(text: str) -> str:
    return " ".join(text.split())


def listing(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    text = flat(result.output)
    assert result.exit_code == 1 and "Traceback" not in text, text
    return text


@pytest.mark.parametrize("form", ["same", "dotted", "from inside"])
def test_a_store_that_is_the_checkpoint_directory_is_refused_before_anything_is_written(
    run: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = listing(run)
    store = {"same": str(run), "dotted": f"{run}/../{run.name}/", "from inside": "."}[form]
    if form == "from inside":
        monkeypatch.chdir(run)
    text = invoke("kernels", "." if form == "from inside" else str(run), "--store", store)
    assert "is the checkpoint directory" in text and "--store conetool-out" in text, text
    assert listing(run) == before  # was: manifest.json, probe.safetensors, kernels/ in it


def test_a_store_given_as_ckpts_names_the_run_it_was_computed_from(
    run: Path, tmp_path: Path
) -> None:
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu")
    before = listing(store)
    for given in (store, store / paths.KERNELS_DIR):
        text = invoke("kernels", str(given), "--store", str(tmp_path / "other"))
        assert "conetool store" in text and "not a checkpoint directory" in text, text
        assert f"conetool kernels {run.resolve()} --store {store}" in text, text
    assert listing(store) == before
    assert not (tmp_path / "other").exists()


def test_inspect_of_a_store_names_the_run_it_was_computed_from(run: Path, tmp_path: Path) -> None:
    """inspect STORE/kernels listed the store's kernel files as checkpoints, each "ok" (found by
    scripts/fuzz_cli.py --seed 2810, call 37)."""
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu")
    for given in (store, store / paths.KERNELS_DIR):
        text = invoke("inspect", str(given), "--verify")
        assert f"CKPTS {given} is" in text and "not a checkpoint directory" in text, text
        assert "its files are kernels, not model weights" in text, text
        assert f"Its kernels were computed from {run.resolve()}: conetool inspect " in text, text
        assert "checkpoints usable" not in text, text
    assert runner.invoke(app, ["inspect", str(run)]).exit_code == 0  # the run itself is read


@pytest.mark.parametrize("command", ["distance", "embed", "spectrum", "report"])
def test_reading_a_checkpoint_directory_as_the_store_says_so(run: Path, command: str) -> None:
    before = listing(run)
    text = invoke(command, "--store", str(run))
    assert "it is a checkpoint directory" in text and "conetool.toml and 3 checkpoint" in text, text
    # was: "Compute kernels into it first: conetool kernels CKPTS --store <the run>"
    assert f"--store {run}" not in text and f"kernels {run} --store conetool-out" in text, text
    assert listing(run) == before


def test_switch_on_a_checkpoint_directory_as_the_store_names_ckpts(run: Path) -> None:
    before = listing(run)
    text = invoke("switch", "--at", "5", "--store", str(run))
    assert "it is a checkpoint directory" in text, text
    assert f"conetool switch --ckpts {run} --store conetool-out" in text, text
    assert listing(run) == before


def test_checkpoint_contents(tmp_path: Path) -> None:
    assert folder_roles.checkpoint_contents(tmp_path / "absent") is None
    assert folder_roles.checkpoint_contents(tmp_path) is None
    for name in ("probe.safetensors", "eval.safetensors", "step_000001.optim.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert folder_roles.checkpoint_contents(tmp_path) is None  # a store's files, an optimizer's
    (tmp_path / "model.pt").write_bytes(b"")
    assert folder_roles.checkpoint_contents(tmp_path) == "the checkpoint file model.pt"
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "conetool.toml").write_text("")
    assert folder_roles.checkpoint_contents(tmp_path) == (
        "conetool.toml and the checkpoint file model.pt and 2 checkpoint folders such as "
        "checkpoint-10/"
    )


def test_same_folder_through_a_link_and_for_a_folder_not_made_yet(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert folder_roles.same_folder(tmp_path / "a", tmp_path / "b")
    assert folder_roles.same_folder(tmp_path / "c", tmp_path / "a" / ".." / "c")
    assert not folder_roles.same_folder(tmp_path / "a", tmp_path / "c")


def test_the_suffixes_are_those_the_checkpoint_reader_reads() -> None:
    assert folder_roles.CHECKPOINT_SUFFIXES == CHECKPOINT_SUFFIXES


def test_a_store_an_older_conetool_wrote_among_the_checkpoints_is_left_out_of_the_listing(
    run: Path, tmp_path: Path
) -> None:
    # What `kernels CKPTS --store CKPTS` left before it was refused: the store's manifest, probe
    # set and kernel files beside the checkpoints. The listing took probe.safetensors for a
    # checkpoint ("no step recoverable", the run refused without --skip-bad) and kernels/ for a
    # subfolder of checkpoints to point at.
    old = tmp_path / "old"
    kernels(run, store=old, device="cpu")
    for name in (paths.MANIFEST_NAME, paths.PROBE_NAME):
        shutil.copy(old / name, run / name)
    shutil.copytree(old / paths.KERNELS_DIR, run / paths.KERNELS_DIR)
    before = listing(run)
    result = runner.invoke(app, ["kernels", str(run), "--store", str(tmp_path / "new")])
    text = flat(result.output)
    assert result.exit_code == 0, text
    assert "not read: kernels/, manifest.json and probe.safetensors of" in text, text
    assert f"mkdir S && mv '{run / paths.KERNELS_DIR}'" in text and "--store S" in text, text
    assert "no step recoverable" not in text and "point at it" not in text, text
    assert sorted(p.name for p in (tmp_path / "new" / paths.KERNELS_DIR).iterdir()) == sorted(
        p.name for p in (old / paths.KERNELS_DIR).iterdir()
    )  # the run's three steps, from the checkpoints only
    assert listing(run) == before
    result = runner.invoke(app, ["inspect", str(run)])
    assert result.exit_code == 0 and "are a conetool store's files" in flat(result.output)


def _saved_as_step_folders(run: Path, folder: Path) -> Path:
    """The tiny run's checkpoints as a plain loop saves them: ``step_N/model.safetensors``, no
    spec beside them."""
    for file in sorted(run.glob("step_*.safetensors")):
        if paths.is_optimizer_state(file):
            continue
        step = int(file.name.removeprefix("step_").removesuffix(".safetensors"))
        (folder / f"step_{step}").mkdir(parents=True)
        shutil.copy(file, folder / f"step_{step}" / "model.safetensors")
    return folder


def test_a_run_saved_as_folders_per_step_given_as_the_store_is_a_checkpoint_directory(
    run: Path, tmp_path: Path
) -> None:
    # Only checkpoint-N/ folders were counted: --store RUN of a run saved as step_N/ folders was
    # taken for a store without kernels ('Compute kernels into it first: conetool kernels CKPTS
    # --store RUN')
    ckpts = _saved_as_step_folders(run, tmp_path / "loop")
    before = listing(ckpts)
    text = invoke("distance", "--store", str(ckpts))
    assert "it is a checkpoint directory" in text, text
    assert "3 checkpoint folders such as step_0/" in text, text
    assert listing(ckpts) == before


@pytest.mark.parametrize("command", ["distance", "embed", "report", "spectrum"])
def test_the_kernels_folder_of_a_store_given_as_the_store_names_the_store(
    run: Path, tmp_path: Path, command: str
) -> None:
    # --store STORE/kernels (fuzz_cli --mode flags --seed 201 --only 20) was said to be 'a
    # checkpoint directory (it holds 3 checkpoint files such as step_000000.safetensors)', its
    # kernel files taken for checkpoints, with the advice 'conetool kernels STORE/kernels
    # --store conetool-out', which kernels refuses
    store = tmp_path / "store"
    kernels(run, store=store, device="cpu")
    before = listing(store)
    text = invoke(command, "--store", str(store / paths.KERNELS_DIR))
    assert (
        f"store {store / paths.KERNELS_DIR} has no manifest.json: it is the kernels/ folder of "
        f"the conetool store {store} (which holds manifest.json), not a store. Pass that store: "
        f"--store {store}" in text
    ), text
    assert "checkpoint" not in text, text
    assert listing(store) == before


def test_a_store_an_older_conetool_wrote_among_step_folders_is_left_out_of_the_listing(
    run: Path, tmp_path: Path
) -> None:
    # A run saved as step_N/ folders holding an old store's files was refused as 'a conetool
    # store, not a checkpoint directory': its step folders did not count as checkpoints
    ckpts = _saved_as_step_folders(run, tmp_path / "loop")
    old = tmp_path / "old"
    kernels(run, store=old, device="cpu")
    for name in (paths.MANIFEST_NAME, paths.PROBE_NAME):
        shutil.copy(old / name, ckpts / name)
    shutil.copytree(old / paths.KERNELS_DIR, ckpts / paths.KERNELS_DIR)
    before = listing(ckpts)
    spec = shutil.copy(run / paths.SPEC_NAME, tmp_path / "spec.toml")
    result = runner.invoke(
        app, ["kernels", str(ckpts), "--spec", str(spec), "--store", str(tmp_path / "new")]
    )
    text = flat(result.output)
    assert result.exit_code == 0, text
    assert "not read: kernels/, manifest.json and probe.safetensors of" in text, text
    assert len(list((tmp_path / "new" / paths.KERNELS_DIR).iterdir())) == 3
    assert listing(ckpts) == before


#: Subfolder names, read as one step or not: named for a step (built-in rules, an epoch name),
#: a Hugging Face folder, and names that give none.
FOLDER_NAMES = (
    "step_0",
    "step_000010",
    "2000",
    "ckpt-5",
    "model_12",
    "global_step30",
    "epoch_3",
    "checkpoint-7",
    "checkpoint_2",
    "old",
    "best",
    "backup",
    "final",
    "weights",
    "run-2026-12-01",
)


@pytest.mark.parametrize("held", ["model.safetensors", "model.pt", "weights.pt", "nothing"])
@pytest.mark.parametrize("trainer_state", [False, True])
def test_folder_roles_counts_the_subfolders_the_checkpoint_listing_reads(
    tmp_path: Path, held: str, trainer_state: bool
) -> None:
    import torch
    from safetensors.torch import save_file

    for i, name in enumerate(FOLDER_NAMES):  # each of another step and weights: no copies
        folder = tmp_path / name
        folder.mkdir()
        if held.endswith(".safetensors"):
            save_file({"w": torch.full((2,), float(i))}, str(folder / held))
        elif held != "nothing":
            torch.save({"w": torch.full((2,), float(i))}, folder / held)
        if trainer_state:
            (folder / "trainer_state.json").write_text(f'{{"global_step": {100 + i}}}')
    scan = scan_directory(
        tmp_path, step_regex=None, iterations_per_epoch=None, steps=None, every=None, deep=False
    )
    read = {c.name.rstrip("/") for c in scan.candidates if c.folder is not None}
    counted = {n for n in FOLDER_NAMES if read_as_one_step(tmp_path / n)}
    assert counted == read
    assert ("step_0" in read) == (held in ("model.safetensors", "model.pt"))


def test_checkpoint_contents_imports_no_torch(tmp_path: Path) -> None:
    (tmp_path / "step_0").mkdir()
    (tmp_path / "step_0" / "model.pt").write_bytes(b"")
    script = (
        "import sys\nfrom pathlib import Path\nfrom conetool import folder_roles\n"
        "print(folder_roles.checkpoint_contents(Path(sys.argv[1])))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["the checkpoint folder step_0/", "False"]
