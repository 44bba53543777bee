"""A checkpoint directory and a store given in each other's place (:mod:`conetool.folder_roles`):
``kernels CKPTS --store CKPTS`` is refused before anything is written (it used to write the store
among the checkpoints, whose probe set the next listing then took for a checkpoint), ``kernels
STORE`` names the store and the run it was computed from, and ``--store CKPTS`` of the commands
that read a store says it is a checkpoint directory instead of advising ``kernels CKPTS --store
CKPTS``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tiny_run import run_fixtures
from typer.testing import CliRunner

from conetool import folder_roles, paths
from conetool.checkpoints.records import CHECKPOINT_SUFFIXES
from conetool.cli import app
from conetool.pipeline import kernels

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
