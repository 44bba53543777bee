"""Every on-disk name conetool reads or writes, in one place.

Checkpoint directories written by ``conetool train``::

    CKPTS/conetool.toml                     the resolved spec
    CKPTS/metrics.csv                       train / test loss and accuracy
    CKPTS/step_002000.safetensors           model state dict, metadata step, epoch, spec_hash, ...
    CKPTS/step_002000.optim.safetensors     optimizer state beside it

Steps are zero-padded to at least 6 digits so that names sort in step order. A Hugging Face
Trainer run keeps each step in a folder of its own: ``CKPTS/checkpoint-2000/model.safetensors``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SPEC_NAME = "conetool.toml"
METRICS_NAME = "metrics.csv"
CHECKPOINT_SUFFIX = ".safetensors"
OPTIMIZER_SUFFIX = ".optim.safetensors"


def step_name(step: int) -> str:
    """``step_002000`` for step 2000 (at least 6 digits)."""
    return f"step_{step:06d}"


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps of the model checkpoints ``conetool train`` wrote in ``directory``, ascending
    (optimizer states and other names are not counted)."""
    steps = []
    for path in Path(directory).glob(f"step_*{CHECKPOINT_SUFFIX}"):
        if is_optimizer_state(path):
            continue
        digits = path.name[len("step_") : -len(CHECKPOINT_SUFFIX)]
        if digits.isdigit():
            steps.append(int(digits))
    return sorted(steps)


def checkpoint(directory: Path, step: int) -> Path:
    """The model checkpoint of ``step`` in a directory written by ``conetool train``."""
    return Path(directory) / f"{step_name(step)}{CHECKPOINT_SUFFIX}"


def optimizer_state(directory: Path, step: int) -> Path:
    """The optimizer state saved beside the checkpoint of ``step``."""
    return Path(directory) / f"{step_name(step)}{OPTIMIZER_SUFFIX}"


def spec(directory: Path) -> Path:
    """The resolved spec copied into a checkpoint directory."""
    return Path(directory) / SPEC_NAME


def metrics(directory: Path) -> Path:
    """The training metrics CSV of a checkpoint directory."""
    return Path(directory) / METRICS_NAME


def is_optimizer_state(path: Path) -> bool:
    """True for optimizer-state files, which are never model checkpoints."""
    name = Path(path).name.lower()
    return name.endswith(OPTIMIZER_SUFFIX) or name.endswith(".optim.pt")


_HF_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-\d+$")


def is_hf_checkpoint_folder(name: str) -> bool:
    """True for the name of a Hugging Face Trainer checkpoint folder (``checkpoint-2000``): one
    step's weights, inside the run's output directory."""
    return bool(_HF_CHECKPOINT_FOLDER.match(name))


# The store written by the analysis commands (``--store``, default ``conetool-out``).
DEFAULT_STORE = "conetool-out"
MANIFEST_NAME = "manifest.json"
PROBE_NAME = "probe.safetensors"
KERNELS_DIR = "kernels"
LOCK_NAME = ".lock"
RESULTS_LOCK_NAME = ".results.lock"
RESULTS_GATE_NAME = ".results.gate"


def manifest(store: Path) -> Path:
    """The store's manifest: provenance and the per-step index of kernels."""
    return Path(store) / MANIFEST_NAME


def lock(store: Path) -> Path:
    """The file a writer of the store holds an exclusive OS lock on (``fcntl.flock``); it names
    the process holding it. Released by the OS when that process ends, however it ends."""
    return Path(store) / LOCK_NAME


def results_lock(store: Path) -> Path:
    """The file the commands that read the store lock (shared) while they write their results
    into it, and ``kernels --overwrite`` locks (exclusive) while it clears the store: results
    never land in a store that replaced the one they were computed from."""
    return Path(store) / RESULTS_LOCK_NAME


def results_gate(store: Path) -> Path:
    """The file that a clearing waiting for :func:`results_lock` holds (exclusive), and that a
    reader passes through (exclusive, for a moment) before it takes that lock shared: a reader
    arriving while a clearing waits queues behind it, so back-to-back readers cannot keep it
    waiting for ever."""
    return Path(store) / RESULTS_GATE_NAME


def probe(store: Path) -> Path:
    """The probe set the store's kernels were computed on."""
    return Path(store) / PROBE_NAME


def kernel(store: Path, step: int) -> Path:
    """The kernel of ``step``: ``STORE/kernels/step_002000.safetensors``."""
    return Path(store) / KERNELS_DIR / f"{step_name(step)}{CHECKPOINT_SUFFIX}"


def kernel_relative(step: int) -> str:
    """The kernel's path relative to the store, as recorded in the manifest."""
    return f"{KERNELS_DIR}/{step_name(step)}{CHECKPOINT_SUFFIX}"


# ``conetool kernels --eval-size m``: a held-out evaluation set and, per step, the cross kernel
# K(eval, probe) that the kernel machine of ``conetool spectrum`` is evaluated with.
#
#     STORE/eval.safetensors                   "inputs", "labels", "indices" (test split positions)
#     STORE/eval_kernels/step_002000.safetensors   tensor "kernel" (m, n) or (m, c, n, c); metadata
#                                              step, kind, dtype, eval_hash, probe_hash,
#                                              spec_hash, fingerprint (of the source checkpoint)
EVAL_NAME = "eval.safetensors"
EVAL_KERNELS_DIR = "eval_kernels"


def eval_set(store: Path) -> Path:
    """The evaluation set of the kernel machine (drawn like the probe set, from the test split)."""
    return Path(store) / EVAL_NAME


def eval_kernels_dir(store: Path) -> Path:
    """``STORE/eval_kernels``: the cross kernels K(eval, probe), one file per step."""
    return Path(store) / EVAL_KERNELS_DIR


def eval_kernel(store: Path, step: int) -> Path:
    """The cross kernel of ``step``: ``STORE/eval_kernels/step_002000.safetensors``."""
    return eval_kernels_dir(store) / f"{step_name(step)}{CHECKPOINT_SUFFIX}"


# ``conetool kernels --per-layer``: per step, the kernel of each parameter group (they sum to the
# step's kernel).
#
#     STORE/layer_kernels/step_002000.safetensors   one tensor per group (key = group name), each
#                                              shaped like the kernel; metadata step, kind, dtype,
#                                              probe_hash, spec_hash, fingerprint, groups (JSON:
#                                              group -> parameter names), groups_hash
LAYER_KERNELS_DIR = "layer_kernels"


def layer_kernels_dir(store: Path) -> Path:
    """``STORE/layer_kernels``: the per-group kernels, one file per step."""
    return Path(store) / LAYER_KERNELS_DIR


def layer_kernel(store: Path, step: int) -> Path:
    """The per-group kernels of ``step``: ``STORE/layer_kernels/step_002000.safetensors``."""
    return layer_kernels_dir(store) / f"{step_name(step)}{CHECKPOINT_SUFFIX}"


# --------------------------------------------------------------------------------------------
# Outputs of `conetool distance` and `conetool embed`, derived from the store's kernels.
#
#     STORE/distance/to_ref.csv      step, ref_<τ> ...          (Fig. 1a)
#     STORE/distance/adjacent.csv    step, dt, S, velocity      (Fig. 1b)
#     STORE/distance/matrix.npz      "steps" (K,), "S" (K, K), "key", "excluded"
#     STORE/distance/summary.json    the verdict and its numbers; to_ref.png, adjacent.png,
#                                    matrix.png beside
#     STORE/distance/per_layer.csv   with layer kernels: step, group, S_ref_<τ> ..., S_adjacent,
#                                    velocity; per_layer.png beside
#     STORE/embed/coords.csv         step, x, y[, z]            (Fig. 1c)
#     STORE/embed/summary.json       method, dims, seed, stress / explained variance; embedding.png
#     STORE/embed/matrix.npz         the S matrix embedded (as distance/matrix.npz)
DISTANCE_DIR = "distance"
EMBED_DIR = "embed"


def distance_dir(store: Path) -> Path:
    """``STORE/distance``: the outputs of ``conetool distance``."""
    return Path(store) / DISTANCE_DIR


def to_ref_csv(store: Path) -> Path:
    """Distance to each reference step (Fig. 1a): ``step, ref_<τ>, ...``."""
    return distance_dir(store) / "to_ref.csv"


def adjacent_csv(store: Path) -> Path:
    """Adjacent distance and velocity (Fig. 1b): ``step, dt, S, velocity``, one row per pair."""
    return distance_dir(store) / "adjacent.csv"


def matrix_npz(store: Path) -> Path:
    """The S matrix over all stored steps: arrays ``steps`` (K,) and ``S`` (K, K)."""
    return distance_dir(store) / "matrix.npz"


def distance_summary(store: Path) -> Path:
    """The verdict, its numbers, the references, dts and rules used."""
    return distance_dir(store) / "summary.json"


def noise_json(store: Path) -> Path:
    """The noise floor of S estimated on the run's model, with the key it is valid for."""
    return distance_dir(store) / "noise.json"


def per_layer_csv(store: Path) -> Path:
    """With layer kernels: ``step, group, S_ref_<τ> ..., S_adjacent, velocity`` per group."""
    return distance_dir(store) / "per_layer.csv"


def per_layer_png(store: Path) -> Path:
    """With layer kernels: the velocity of each group against step."""
    return distance_dir(store) / "per_layer.png"


def to_ref_png(store: Path) -> Path:
    return distance_dir(store) / "to_ref.png"


def adjacent_png(store: Path) -> Path:
    return distance_dir(store) / "adjacent.png"


def matrix_png(store: Path) -> Path:
    return distance_dir(store) / "matrix.png"


def embed_dir(store: Path) -> Path:
    """``STORE/embed``: the outputs of ``conetool embed``."""
    return Path(store) / EMBED_DIR


def coords_csv(store: Path) -> Path:
    """Embedding coordinates (Fig. 1c): ``step, x, y[, z]``."""
    return embed_dir(store) / "coords.csv"


def embed_summary(store: Path) -> Path:
    """Method, dims, seed and the quality of the embedding (stress, explained variance)."""
    return embed_dir(store) / "summary.json"


def embedding_png(store: Path) -> Path:
    return embed_dir(store) / "embedding.png"


def embed_matrix_npz(store: Path) -> Path:
    """The S matrix ``conetool embed`` embedded (like :func:`matrix_npz`, which is distance's
    own: each command keeps the matrix of its results, and reads the other's when it matches)."""
    return embed_dir(store) / "matrix.npz"


# ``conetool spectrum`` outputs: alignment and spectrum of each stored kernel.
#
#     STORE/spectrum/spectrum.csv     step, alignment, effective_rank, label_energy, trace,
#                                     eval_acc, eval_loss (empty without eval kernels),
#                                     eig_1 ... eig_k
#     STORE/spectrum/summary.json     top_k, the probe's classes, the store's identity, notes
#     STORE/spectrum/spectrum.png     the three measures (and the kernel machine's test accuracy)
#                                     against step, Phase I's end marked
SPECTRUM_DIR = "spectrum"


def spectrum_dir(store: Path) -> Path:
    """``STORE/spectrum``: the outputs of ``conetool spectrum``."""
    return Path(store) / SPECTRUM_DIR


def spectrum_csv(store: Path) -> Path:
    """One row per stored step: alignment, effective rank, label energy, top eigenvalues."""
    return spectrum_dir(store) / "spectrum.csv"


def spectrum_summary(store: Path) -> Path:
    return spectrum_dir(store) / "summary.json"


def spectrum_png(store: Path) -> Path:
    return spectrum_dir(store) / "spectrum.png"


# ``conetool switch`` outputs.
SWITCH_DIR = "switch"


def switch_dir(store: Path) -> Path:
    """``STORE/switch``: the outputs of ``conetool switch``."""
    return Path(store) / SWITCH_DIR


def switch_point(store: Path, at: int) -> Path:
    """One switch point's result (JSON), written as soon as the point is done."""
    return switch_dir(store) / f"at_{at:06d}.json"


def switch_point_metrics(store: Path, at: int) -> Path:
    """One switch point's train/test metrics along the linearized run (CSV)."""
    return switch_dir(store) / f"at_{at:06d}.csv"


def switch_reference(store: Path) -> Path:
    """The standard model at T that the switch points are compared with (JSON)."""
    return switch_dir(store) / "reference.json"


def switch_results_csv(store: Path) -> Path:
    """``at, until, test_acc, test_loss, ...``: one row per switch point (Fig. 2)."""
    return switch_dir(store) / "results.csv"


def switch_results_json(store: Path) -> Path:
    return switch_dir(store) / "results.json"


def switch_png(store: Path) -> Path:
    return switch_dir(store) / "switch.png"


# ``conetool report`` outputs: one self-contained page and its Markdown twin.
#
#     STORE/report/report.html   figures embedded as data: URIs, no network needed to view it
#     STORE/report/report.md     figures linked by relative path (../distance/to_ref.png)
#     STORE/report/spec.toml     the resolved spec from the manifest, for the reproduce commands
REPORT_DIR = "report"


def report_dir(store: Path) -> Path:
    """``STORE/report``: the outputs of ``conetool report``."""
    return Path(store) / REPORT_DIR


def report_html(store: Path) -> Path:
    """The self-contained HTML report (figures embedded)."""
    return report_dir(store) / "report.html"


def report_md(store: Path) -> Path:
    """The Markdown report (figures linked relative to it)."""
    return report_dir(store) / "report.md"


def report_training_png(store: Path) -> Path:
    """The training curves drawn from the checkpoint directory's ``metrics.csv``."""
    return report_dir(store) / "training.png"


#: The store's folders of derived results, which ``kernels --overwrite`` clears with the kernels.
DERIVED_DIRS = (DISTANCE_DIR, EMBED_DIR, SPECTRUM_DIR, SWITCH_DIR, REPORT_DIR)

#: The prefix of the folder in a store that ``kernels --overwrite`` moves the replaced store's
#: files into before it deletes them (``STORE/.conetool-replaced-x1y2/``): the replaced store is
#: gone the moment its ``manifest.json`` is moved there, whatever stops the clearing after. While
#: such a folder is there, the clearing has not moved everything yet, and nothing was written
#: into the store since it began.
REPLACED_PREFIX = ".conetool-replaced-"

#: The prefix that folder is renamed to once every file of the replaced store is in it
#: (``STORE/.conetool-cleared-x1y2/``), before it is deleted: what is in the store beside it
#: is never the replaced store's (a deletion that fails leaves it, and the new store is written).
CLEARED_PREFIX = ".conetool-cleared-"


def replaced_folders(store: Path) -> list[Path]:
    """The folders ``STORE/.conetool-replaced-*`` a clearing made and has not finished moving
    the replaced store into (real folders, no symlink), sorted; empty where there are none or
    the store cannot be listed."""
    return _folders_named(store, REPLACED_PREFIX)


def cleared_folders(store: Path) -> list[Path]:
    """The folders ``STORE/.conetool-cleared-*`` holding a replaced store's files, all moved out
    of the store, which a clearing has not deleted yet (real folders, no symlink), sorted."""
    return _folders_named(store, CLEARED_PREFIX)


def _folders_named(store: Path, prefix: str) -> list[Path]:
    """The real folders (no symlink) directly in ``store`` whose names start with ``prefix``,
    sorted; empty where there are none or ``store`` cannot be listed."""
    try:
        with os.scandir(store) as entries:
            found = [
                Path(entry.path)
                for entry in entries
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []
    return sorted(found, key=lambda path: path.name)


def report_spec(store: Path) -> Path:
    """The resolved spec the store was computed with, as TOML (``conetool train`` reads it)."""
    return report_dir(store) / "spec.toml"
