"""Scanning a checkpoint directory: flat files, Hugging Face folders and shards, read headers
only; duplicates and mixed runs are flagged."""

from __future__ import annotations

import json
import os
import re
import stat
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from conetool import paths
from conetool.errors import CheckpointError
from conetool.io import os_error_path
from conetool.step_folders import (
    FOLDER_TORCH,
    FOLDER_WEIGHT_NAMES,
    HF_WEIGHTS,
    read_as_one_step,
    step_named,
)
from conetool.step_names import compile_step_regex

from ._hashed_reads import files_fingerprint
from ._keys import diff_keys, strip_common_prefixes
from ._opening import open_error
from ._safetensors_format import read_header
from ._state_dicts import bitwise_equal
from ._torch_save import (
    check_torch_file,
    read_torch_contents,
    state_dict_records,
    storage_records,
)
from ._training_state_given import refuse_training_state
from .records import (
    BadStepCopy,
    Candidate,
    LeftCopy,
    Scan,
    has_checkpoint_suffix,
    is_safetensors,
)
from .selection import (
    bad_stored_step,
    candidate_stem,
    check_selection,
    is_selected,
    recover_step,
    step_from_name,
    stored_step,
)

# --------------------------------------------------------------------------------------------------
# candidates

_NOT_MODEL = re.compile(
    r"^(optimizer\.(pt|bin)|scheduler\.pt|scaler\.pt|training_args\.bin|rng_state.*\.pth"
    r"|checkpoint\.pth|mask\.pth)$",
    re.IGNORECASE,
)
_SHARD = re.compile(
    r"^(?P<prefix>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})(?P<suffix>\.safetensors|\.bin)$", re.IGNORECASE
)
# Accelerate's save_state with automatic checkpoint naming: checkpoints/checkpoint_0, _1, ...
# numbered by the count of saves; each holds its RNG states random_states_<process>.pkl.
_ACCELERATE_FOLDER = re.compile(r"^checkpoint_\d+$")
_ACCELERATE_RNG = re.compile(r"^random_states_\d+\.pkl$")
#: The names of the weights a checkpoint folder is read by, as the messages say them.
FOLDER_WEIGHTS = (
    "model.safetensors (or its shards with model.safetensors.index.json), pytorch_model.bin, "
    "model.pt or model.pth"
)
_HF_FINAL = re.compile(r"^(model\.safetensors|pytorch_model\.bin)(\.index\.json)?$")
# A copy of some step's weights kept under a fixed name by a training loop (best.pt, last.pt,
# latest.pth, model_best.pt, final_model.safetensors, Lightning's last-v1): no step in the name.
_ALIAS = re.compile(
    r"^(?:model[_-]?)?(?:best|last|latest|final)(?:[_-]?(?:model|checkpoint|ckpt|weights))?"
    r"(?:-v\d+)?$",
    re.IGNORECASE,
)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False instead of an error for unreadable directories."""
    try:
        return path.is_file()
    except OSError:
        return False


def _entry_kind(entry: os.DirEntry[str]) -> tuple[str, OSError | None]:
    try:
        if entry.is_dir():
            return "dir", None
        if entry.is_file():
            return "file", None
        os.stat(entry.path)  # a symlink to something else, or a special file
        return "other", None
    except OSError as e:  # a symlink loop (ELOOP) or a broken link (ENOENT)
        return "broken", e


def _looks_like_checkpoint(name: str) -> bool:
    return has_checkpoint_suffix(name) or paths.is_hf_checkpoint_folder(name)


def _read_headers(c: Candidate, deep: bool) -> None:
    """Fill ``headers``/``shapes``/``size`` from the files' headers; record the first problem."""
    try:
        sizes = []
        for p in c.paths:
            found = os.stat(p)
            sizes.append(found.st_size)
            if not stat.S_ISREG(found.st_mode):
                what = "a directory" if stat.S_ISDIR(found.st_mode) else "a device, pipe or socket"
                c.size = -1  # no size to show: not a file
                c.fail(
                    f"'{p}' is not a regular file but {what}"
                    + (f" (a link to '{os.path.realpath(p)}')" if os.path.islink(p) else "")
                    + "; point it at the real checkpoint file or remove it."
                )
                return
        c.size = sum(sizes)  # also shown for a file whose header cannot be read
        if c.format == "safetensors":
            c.headers = tuple(read_header(p) for p in c.paths)
            shapes: dict[str, tuple[int, ...]] = {}
            for h in c.headers:
                shapes.update(h.shapes)
            c.shapes = shapes
        else:
            zipped = [check_torch_file(p) for p in c.paths]
            # Every pickle is read (memory-mapped: no tensor data), with or without ``deep``: a
            # flat file's dict may store the step, or it may hold no state dict at all
            # (losses.pt: not a checkpoint); any file's dict, a Hugging Face folder's
            # pytorch_model.bin and its shards too, may hold an EMA beside the state dict read
            # (``left``, said by kernels as by inspect). A legacy (non-zip) pickle cannot be
            # memory-mapped: its contents wait for the load. The step a folder's one file
            # (step_7/model.pt) stores is kept too: the folder gives the step, and a stored
            # step that differs is said.
            flat = c.folder is None and c.index is None
            if all(zipped):
                keys: dict[str, tuple[int, ...]] = {}
                for p in c.paths:
                    contents = read_torch_contents(p)
                    if contents.problem is not None:
                        c.holds = contents.holds if flat else None
                        c.fail(contents.problem)
                        return
                    assert contents.shapes is not None
                    keys.update(contents.shapes)
                    c.stored_steps = contents.steps if c.index is None else {}
                    c.stored_epoch = contents.epoch if c.index is None else None
                    if contents.entry is not None:
                        c.entry = contents.entry
                        c.uncompared = (*dict.fromkeys(c.uncompared + contents.uncompared),)
                        c.left = (*dict.fromkeys(c.left + contents.left),)
                        if contents.left and c.left_file is None:
                            c.left_file = p
                if deep:
                    c.shapes = keys
    except CheckpointError as e:
        c.fail(str(e))
    except OSError as e:
        c.fail(str(open_error(os_error_path(e) or Path(c.location), e)))


def _file_candidate(path: Path, deep: bool) -> Candidate:
    is_st = is_safetensors(path)
    c = Candidate(path.name, path, (path,), "safetensors" if is_st else "torch")
    _read_headers(c, deep)
    return c


def _sharded(c: Candidate, index: Path, deep: bool) -> None:
    """Fill a candidate from a shard index (``*.index.json`` with a ``weight_map``)."""
    c.index, c.source = index, "hf-sharded"
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not all(isinstance(v, str) and Path(v).name == v for v in dict(weight_map).values()):
            raise TypeError  # shard names are plain file names beside the index
    except OSError as e:
        c.fail(str(open_error(index, e)))
        return
    except (ValueError, KeyError, TypeError):
        c.fail(
            f"'{index}' is not a valid shard index (it needs a JSON 'weight_map' from tensor name "
            f"to shard file); re-save the checkpoint, or restore the index if a copy cut it short."
        )
        return
    shard_names = sorted(set(weight_map.values()))
    c.paths = tuple(index.parent / s for s in shard_names)
    absent = [s for s in shard_names if not _is_file(index.parent / s)]
    if absent:
        c.fail(
            f"'{index}' names shard(s) that are missing: {', '.join(absent)}. The checkpoint is "
            f"incomplete; if a run or a copy is still writing it, wait and rerun, otherwise "
            f"restore the shards."
        )
        return
    if not c.paths:
        c.fail(f"'{index}' lists no tensors; re-save the checkpoint.")
        return
    _read_headers(c, deep)
    if c.problem is not None or not c.headers:
        return
    where = {k: h.path.name for h in c.headers for k in h.tensors}
    wrong = [k for k, s in weight_map.items() if where.get(k) != s]
    extra = [k for k in where if k not in weight_map]
    if wrong or extra:
        listed = ", ".join(f"'{k}'" for k in (wrong + extra)[:10])
        c.fail(
            f"the shards of '{index}' do not hold what the index says ({len(wrong) + len(extra)} "
            f"tensor(s) absent or in another shard, e.g. {listed}); the shards and the index come "
            f"from different saves: re-save the checkpoint."
        )


def _folder_candidate(folder: Path, deep: bool, *, subfolder: bool = False) -> Candidate | None:
    """A Hugging Face checkpoint folder, or a plain loop's folder of one step (``step_2000/``
    holding ``model.pt`` or ``model.pth``), or None when the folder holds no model weights.

    ``subfolder``: the folder is one of a directory scanned whole, read only when it gives a
    step: named for one (``step_2000``, ``checkpoint-2000``; :func:`step_named` tells; --step-regex
    too) or holding ``trainer_state.json``; else (``old/``, ``best/``, ``backup/`` beside the
    run's own files) None, a subfolder not read, whatever its weights are named."""
    c = Candidate(folder.name + "/", folder, folder=folder, source="hf")
    try:
        names = set(os.listdir(folder))
    except OSError as e:
        if not paths.is_hf_checkpoint_folder(folder.name):
            return None
        c.fail(str(open_error(folder, e)))
        return c
    if subfolder and "trainer_state.json" not in names:
        return None
    if _ACCELERATE_FOLDER.match(folder.name):
        c.save_count = any(_ACCELERATE_RNG.match(n) for n in names)
    for index_name, single in HF_WEIGHTS:
        if index_name in names:
            _sharded(c, folder / index_name, deep)
            break
        if single in names:
            c.paths = (folder / single,)
            _read_headers(c, deep)
            break
    else:
        torch_file = next((n for n in FOLDER_TORCH if n in names), None)
        if torch_file is not None:
            c.paths = (folder / torch_file,)
            _read_headers(c, deep)
        elif not paths.is_hf_checkpoint_folder(folder.name):
            return None
        else:
            listed = ", ".join(sorted(names)[:10]) or "nothing"
            c.fail(
                f"'{folder}' holds no model weights (model.safetensors, its shards with "
                f"model.safetensors.index.json, or pytorch_model.bin); it has: {listed}. If the "
                f"run is still saving it, wait and rerun; otherwise remove the folder."
            )
            return c
    if "trainer_state.json" in names:
        state = folder / "trainer_state.json"
        try:
            c.global_step = int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            c.fail(
                f"'{state}' is unreadable or has no integer global_step; if the run is still "
                f"saving it, wait and rerun, otherwise fix or remove it."
            )
    return c


def _skipped_on_purpose(name: str) -> bool:
    """A file with a checkpoint's extension that is never a model checkpoint (optimizer and
    scheduler states, RNG states, open_lth's mask). Lightning's last.ckpt is a copy named without a
    step (``_ALIAS``), read when it stores a step no other file gives."""
    return paths.is_optimizer_state(Path(name)) or bool(_NOT_MODEL.match(name))


def _nested_checkpoints(folder: Path) -> int:
    """How many checkpoints (files, checkpoint-N/ folders, and folders read as one step:
    ``step_0/model.pt``, a folder holding ``trainer_state.json`` beside its weights) a subfolder
    that is not itself a checkpoint folder holds at its top level; 0 for a conetool store or an
    unreadable folder."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return 0
    if any(e.name == paths.MANIFEST_NAME for e in entries):
        return 0  # a store: its probe.safetensors is no checkpoint
    count = 0
    for e in entries:
        try:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                count += read_as_one_step(Path(e.path))
            elif e.is_file() and has_checkpoint_suffix(e.name) and not _skipped_on_purpose(e.name):
                count += 1
        except OSError:
            continue
    return count


def only_checkpoint_file(folder: Path) -> str | None:
    """The name of the one checkpoint file at the top of ``folder`` (as
    :func:`_nested_checkpoints` counts them); None when it holds none or several, or cannot be
    listed."""
    try:
        names = [
            e.name
            for e in os.scandir(folder)
            if not e.name.startswith(".")
            and has_checkpoint_suffix(e.name)
            and not _skipped_on_purpose(e.name)
            and e.is_file()
        ]
    except OSError:
        return None
    return names[0] if len(names) == 1 else None


def _list_directory(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        if isinstance(e, PermissionError):
            raise CheckpointError(
                f"cannot list checkpoint directory '{directory}': permission denied. Make it "
                f"readable (chmod u+rx '{directory}') or run as a user who may read it."
            ) from None
        raise CheckpointError(f"cannot list checkpoint directory '{directory}': {e}.") from None


#: A store's own files and folders, never checkpoints where its manifest.json lies beside them
#: (its kernel files are named like checkpoints: ``kernels/step_000100.safetensors``).
_STORE_ENTRIES = (
    paths.MANIFEST_NAME,
    paths.PROBE_NAME,
    paths.EVAL_NAME,
    paths.KERNELS_DIR + "/",
    paths.EVAL_KERNELS_DIR + "/",
    paths.LAYER_KERNELS_DIR + "/",
)


def _holds_a_store(entries: list[os.DirEntry[str]]) -> bool:
    """Whether the listed folder holds a store's ``manifest.json`` and ``probe.safetensors`` (the
    two files :func:`conetool.folder_roles.store_holding` recognises a store by)."""
    names = {e.name for e in entries}
    return paths.MANIFEST_NAME in names and paths.PROBE_NAME in names


def _collect(directory: Path, deep: bool, pattern: re.Pattern[str] | None = None) -> Scan:
    scan = Scan(directory, [])
    shards: dict[tuple[str, str], list[Path]] = {}
    entries = _list_directory(directory)
    store_here = _holds_a_store(entries)
    for entry in entries:
        name, path = entry.name, Path(entry.path)
        if name.startswith("."):
            scan.ignored.append(name)
            continue
        if store_here:
            listed = name + "/" if _entry_kind(entry)[0] == "dir" else name
            if listed in _STORE_ENTRIES:
                scan.store_files.append(listed)
                continue
        kind, error = _entry_kind(entry)
        if kind == "broken":
            if _looks_like_checkpoint(name):
                assert error is not None
                scan.candidates.append(Candidate(name, path, problem=str(open_error(path, error))))
            else:
                scan.others.append(name)
        elif kind == "dir":
            named = step_named(name, pattern)
            c = _folder_candidate(path, deep, subfolder=not named)
            if c is None:
                scan.others.append(name + "/")
                if count := _nested_checkpoints(path):
                    scan.nested[name + "/"] = count
            else:
                scan.candidates.append(c)
        elif kind != "file" or not has_checkpoint_suffix(name):
            scan.others.append(name)
        elif _skipped_on_purpose(name):
            scan.ignored.append(name)
        elif m := _SHARD.match(name):
            shards.setdefault((m["prefix"], m["suffix"]), []).append(path)
        else:
            c = _file_candidate(path, deep)
            if c.holds is not None:  # a cached tensor, a list of losses: not a checkpoint
                scan.ignored.append(name)
                scan.not_state_dicts[name] = c.holds
            else:
                scan.candidates.append(c)
    for (prefix, suffix), files in sorted(shards.items()):
        index = directory / f"{prefix}{suffix}.index.json"
        c = Candidate(index.name, index, tuple(files), "hf-sharded", index=index)
        if _is_file(index):
            _sharded(c, index, deep)
            if index.name in scan.others:
                scan.others.remove(index.name)
        else:
            c.fail(
                f"'{files[0]}' is a shard ({len(files)} found) but its index '{index.name}' is "
                f"missing; restore the index, which says which tensor is in which shard."
            )
        scan.candidates.append(c)
    if any(c.folder is not None for c in scan.candidates):
        # Trainer.save_model's final model beside the checkpoint-N/ folders: its step is the
        # global_step of the output directory's trainer_state.json (save_state), if there is one
        # (scan_directory leaves it out when a checkpoint-N/ folder gives that step)
        final = [c for c in scan.candidates if c.folder is None and _HF_FINAL.match(c.name)]
        state = _output_state(directory) if final else None
        for c in final:
            if state is not None:
                c.trainer_final, c.global_step = True, state[0]
                scan.best_model = state[1]
            else:  # no step known
                scan.candidates.remove(c)
                scan.ignored.append(c.name)
    return scan


def _output_state(directory: Path) -> tuple[int, str | None] | None:
    """``(global_step, best_model_checkpoint)`` of a Trainer output directory's own
    ``trainer_state.json`` (``trainer.save_state()``); None when it has none, or one without an
    integer global_step."""
    try:
        state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
        step, best = state["global_step"], state.get("best_model_checkpoint")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    return step, best if isinstance(best, str) and best else None


def _same_content(group: list[Candidate]) -> bool:
    """Whether the files of one step are copies of each other (a backup ``ckpt_0060.pt`` beside
    ``ckpt_60.pt``): the same size, then the same sha256. Only files that share a step are
    hashed, and only when their sizes agree; a file that cannot be read counts as different."""
    if len({c.size for c in group}) > 1 or len({len(c.paths) for c in group}) > 1:
        return False
    try:
        return len({files_fingerprint(c.paths) for c in group}) == 1
    except CheckpointError:
        return False


#: How the files of one step are copies of each other, as the note says it.
SAME_BYTES = "the same content (size and sha256)"
SAME_TENSORS = "the same tensors (names, dtypes, shapes and values, bit for bit)"


def _normalized(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` under their names without a wrapper prefix they all share (``module.``)."""
    return dict(zip(strip_common_prefixes(tensors)[1], tensors.values(), strict=True))


def _same_tensors(group: list[Candidate]) -> bool:
    """Whether the files of one step hold the same tensors: the same names (but for a wrapper
    prefix all of one file's share: DDP's ``module.``), dtypes, shapes and bytes. The same
    weights saved twice are not the same bytes when torch.save wrote them (it writes the file's
    name into the archive), nor as a ``.pt`` and a ``.safetensors`` export of one state dict.
    Known key sets are compared first; then each file is read in full (the first kept in memory
    beside the one compared), so only files of a step several give are read. A file that
    cannot be read counts as different."""
    known = [c.shapes for c in group if c.shapes is not None]
    keys = {frozenset(zip(strip_common_prefixes(s)[1], s.values(), strict=True)) for s in known}
    if len(keys) > 1:
        return False
    from .load import read_checkpoint  # (load imports discover, which imports this module)

    try:
        first = _normalized(read_checkpoint(group[0].ref(), check_finite=False).state_dict)
        for c in group[1:]:
            other = _normalized(read_checkpoint(c.ref(), check_finite=False).state_dict)
            if other.keys() != first.keys():
                return False
            if not all(bitwise_equal(first[k], other[k]) for k in first):
                return False
    except CheckpointError:
        return False
    return True


def _same_weights(copy: Candidate, kept: Candidate) -> bool:
    """Whether ``copy`` (``final.pt``, storing ``kept``'s step, or no step) holds what ``kept``
    does, told cheaply where it can be: two torch.save files whose storage records have the same
    CRC-32s and sizes (their zip directories, no tensor data read: one dict saved twice,
    Lightning's ``last.ckpt`` beside its step's file) are the same; so are two whose state
    dicts' own tensors have the same records (:func:`state_dict_records`: a ``final.pt`` saving
    the optimizer state beside the weights that ``ckpt_N.pt`` holds alone). Others are read in
    full and compared (:func:`_same_tensors`), which only a copy whose weights' records differ,
    or a file not told so (safetensors, shards, a torch that cannot tell), costs."""
    if copy.format == "torch" and kept.format == "torch" and len(kept.paths) == 1:
        if len(copy.paths) == 1:
            records = storage_records(copy.paths[0])
            if records is not None and records == storage_records(kept.paths[0]):
                return True
            weights = state_dict_records(copy.paths[0])
            if weights is not None and weights == state_dict_records(kept.paths[0]):
                return True
    return _same_tensors([kept, copy])


#: a name that says its file holds an exponential moving average of the weights: ``ep3_ema.pth``,
#: ``model-ema-2000.pt``, ``ema.step_100.pt``
_EMA_NAME = re.compile(r"(?:^|[_.-])ema(?:[_.-]|$)", re.IGNORECASE)


def _flag_duplicates(cands: list[Candidate]) -> list[tuple[Candidate, Candidate, str]]:
    """Refuse every file of a step that several files give, unless they are copies of each
    other: the same bytes, then the first by name is kept (a file named for its step before a
    ``best``/``last`` copy that stores it: the copy is the file a loop overwrites); or the same
    tensors (:func:`_same_tensors`), then a torch.save file is kept before a safetensors one (its
    dict may hold the optimizer state ``switch`` reads; the weights are the same), then the first
    by name. The others are returned as ``(copy, kept, how)`` pairs (``how``:
    :data:`SAME_BYTES` or :data:`SAME_TENSORS`), for the caller to leave out with a note."""
    by_step: dict[int, list[Candidate]] = {}
    for c in cands:
        if c.problem is None and c.step is not None:
            by_step.setdefault(c.step, []).append(c)
    copies: list[tuple[Candidate, Candidate, str]] = []
    for step, group in by_step.items():
        if len(group) > 1 and _same_content(group):
            kept, *same = sorted(group, key=lambda c: (_is_alias(c), c.name))
            copies.extend((c, kept, SAME_BYTES) for c in same)
        elif len(group) > 1 and _same_tensors(group):
            kept, *same = sorted(group, key=lambda c: (_is_alias(c), c.format != "torch", c.name))
            copies.extend((c, kept, SAME_TENSORS) for c in same)
        elif len(group) > 1:
            quoted = [f"'{c.location}'" for c in group]
            names = ", ".join(quoted[:-1]) + f" and {quoted[-1]}"
            count = "two" if len(group) == 2 else str(len(group))
            others = "the other" if len(group) == 2 else "the others"
            averaged = [c for c in group if _EMA_NAME.search(c.name)]
            ema = (
                f" {', '.join(repr(c.name) for c in averaged)} "
                f"{'is' if len(averaged) == 1 else 'are'} named as an EMA of the weights: "
                "conetool reads one set of weights per step, so move the EMA files (each step's) "
                "into a folder of their own, which conetool measures apart with the same spec."
                if 0 < len(averaged) < len(group)
                else ""
            )
            for c in group:
                c.fail(
                    f"{count} checkpoints have step {step}: {names}. Keep one of them (move "
                    f"{others} out of the directory), or pass --step-regex if the steps come out "
                    f"wrong.{ema}"
                )
    return copies


def _flag_mixed_runs(cands: list[Candidate]) -> None:
    """Flag checkpoints whose key set (or shapes) differ from the rest: two runs in one folder."""
    known = [c for c in cands if c.problem is None and c.shapes is not None]
    normal: dict[int, dict[str, tuple[int, ...]]] = {}  # keys without a shared wrapper prefix
    for c in known:
        assert c.shapes is not None
        _, keys = strip_common_prefixes(c.shapes)
        normal[id(c)] = dict(zip(keys, c.shapes.values(), strict=True))
    sig = {i: frozenset(n.items()) for i, n in normal.items()}
    counts = Counter(sig.values())
    if len(counts) <= 1:
        return
    ranked = counts.most_common()
    majority = ranked[0][0] if ranked[0][1] > ranked[1][1] else None
    for c in known:
        if sig[id(c)] == majority:
            continue
        wanted = majority if majority is not None else next(s for s, _ in ranked if s != sig[id(c)])
        other = next(o for o in known if sig[id(o)] == wanted)
        diff = diff_keys(normal[id(c)], normal[id(other)])
        c.fail(
            f"'{c.location}' is not from the same run as {counts[wanted]} other checkpoint(s) here "
            f"such as '{other.location}' ({diff}): the directory seems to mix {len(counts)} runs. "
            f"Move each run's checkpoints to a directory of its own."
        )


def _is_hf_folder(directory: Path) -> bool:
    """True when ``directory`` is itself one Hugging Face checkpoint folder: named
    ``checkpoint-N``, or holding ``trainer_state.json`` but no ``checkpoint-N/`` folders (the
    Trainer's output directory holds its final model and ``trainer_state.json`` beside them)."""
    if not paths.is_hf_checkpoint_folder(directory.name):
        if not _is_file(directory / "trainer_state.json") or _has_checkpoint_folders(directory):
            return False
    return any(_is_file(directory / n) for pair in HF_WEIGHTS for n in pair)


def _is_accelerate_folder(directory: Path) -> bool:
    """True when ``directory`` is one folder of Accelerate's ``save_state`` with automatic
    naming (``checkpoint_3/`` holding ``random_states_0.pkl`` beside its weights), given as the
    one to read: read as one folder, so that it gets the error of its save count (or its step
    from --step-regex, searched in the folder's name), not "no step" for its weights file."""
    if not _ACCELERATE_FOLDER.match(directory.name):
        return False
    try:
        names = set(os.listdir(directory))
    except OSError:
        return False
    return bool(names & FOLDER_WEIGHT_NAMES) and any(_ACCELERATE_RNG.match(n) for n in names)


def _one_step_folder(directory: Path, scan: Scan, pattern: re.Pattern[str] | None) -> bool:
    """Whether ``directory``, given as the one to read and listed whole (``scan``), is one
    folder of one step: its name gives a step (``step_0``; :func:`step_named`, ``--step-regex``
    too) and all it holds is the usable weights a folder per step is read by
    (:data:`FOLDER_WEIGHTS`: ``model.pt``, or shards with ``model.safetensors.index.json``),
    which read as a file of its own would give no step ("no step recoverable") or the one it
    stores. It is then read as it is inside its run's directory: the step is the folder's,
    whatever its file stores (a stored step that differs is said, as from the parent)."""
    if len(scan.candidates) != 1 or not step_named(directory.name, pattern):
        return False
    (c,) = scan.candidates
    name = (c.index or c.location).name
    return c.folder is None and c.problem is None and name in FOLDER_WEIGHT_NAMES


def _has_checkpoint_folders(directory: Path) -> bool:
    """Whether ``directory`` holds a ``checkpoint-N/`` folder (a Trainer's output directory)."""
    try:
        with os.scandir(directory) as it:
            return any(paths.is_hf_checkpoint_folder(e.name) and e.is_dir() for e in it)
    except OSError:
        return False


def _is_alias(c: Candidate) -> bool:
    """True for a file named like ``best.pt`` or ``last.pt`` (see ``_ALIAS``)."""
    return c.folder is None and c.index is None and bool(_ALIAS.match(candidate_stem(c)))


def _usable_step(c: Candidate) -> bool:
    """Whether ``c`` gives its step to the run: it has one, and no problem so far."""
    return c.step is not None and c.problem is None


def _note_stand_ins(
    scan: Scan, kept: list[Candidate], given: set[int | None], *, folders: bool
) -> None:
    """Record in ``scan.stand_ins`` each of ``kept`` (copies named without a step, or a
    Trainer's final model, read for their step) whose step only unusable files (``folders``:
    checkpoint-N/ folders) of the directory give, none of ``given``."""
    for c in kept:
        if c.problem is not None or c.step is None or c.step in given:
            continue
        broken = [
            o.name
            for o in scan.candidates
            if o.problem is not None
            and o.step == c.step
            and not _is_alias(o)
            and (o.folder is not None if folders else not o.trainer_final)
        ]
        if broken:
            how = (
                "the global_step of the directory's trainer_state.json"
                if folders
                else "the step it stores"
            )
            scan.stand_ins.append((c.name, broken, c.step, how))


def _single(path: Path, deep: bool) -> Scan:
    scan = Scan(path.parent, [])
    if path.is_dir():
        c = _folder_candidate(path, deep)
        if c is not None:
            scan.candidates.append(c)
    elif has_checkpoint_suffix(path.name):
        scan.candidates.append(_file_candidate(path, deep))
    else:
        scan.others.append(path.name)
    return scan


def scan_directory(
    directory: str | Path,
    *,
    step_regex: str | None,
    iterations_per_epoch: int | None,
    steps: tuple[int | None, int | None] | None,
    every: int | None,
    deep: bool,
    single: bool = False,
    fixed_step: int | None = None,
) -> Scan:
    """Every checkpoint candidate of ``directory`` with its step or its problem (headers only).

    ``deep`` also reads the key sets of zip-format torch files (memory-mapped pickle, no data).
    """
    pattern = compile_step_regex(step_regex)
    check_selection(steps, every)
    if iterations_per_epoch is not None and iterations_per_epoch < 1:
        raise CheckpointError(
            f"iterations per epoch must be at least 1, not {iterations_per_epoch}; check the "
            f"spec's [train] batch_size and the data set size."
        )
    directory = Path(directory).expanduser()
    if not directory.exists():
        raise CheckpointError(
            f"checkpoint directory '{directory}' does not exist; pass the --out directory of "
            f"`conetool train`, or a directory of checkpoint files."
        )
    refuse_training_state(directory)  # a file beside a checkpoint, given as the one to read
    one = _is_hf_folder(directory) or _is_accelerate_folder(directory)
    whole = not (directory.is_file() or single or one)
    scan = _collect(directory, deep, pattern) if whole else _single(directory, deep)
    if whole and _one_step_folder(directory, scan, pattern):  # step_0/ given alone
        whole, scan = False, _single(directory, deep)
    unmatched: dict[str, int] = {}  # aliases --step-regex does not match -> the step they store
    unreadable = {c.name for c in scan.candidates if c.problem is not None}  # before any step
    matched_bad: set[str] = set()  # aliases --step-regex matches but reads no step from
    scan.step_regex = None if pattern is None else pattern.pattern
    for c in scan.candidates:
        matched = None
        if whole and pattern is not None and c.problem is None and _is_alias(c):
            matched = pattern.search(c.location.name)
            if matched is None and (held := stored_step(c)) is not None:
                unmatched[c.name] = held
        if c.problem is None and fixed_step is not None:
            c.step = fixed_step
        elif c.problem is None:
            try:
                recover_step(c, pattern, iterations_per_epoch)
            except CheckpointError as e:
                c.fail(str(e))
                if matched is not None:  # its error is the regex's: said, not left out
                    matched_bad.add(c.name)
        elif c.step is None:  # best effort, so that --steps can leave a bad file out
            try:
                c.step = step_from_name(
                    candidate_stem(c), iterations_per_epoch=iterations_per_epoch
                )
            except CheckpointError:
                pass
            if c.step is None:  # a Trainer's final model: its output directory's global_step
                c.step = c.global_step
    if whole:
        # best.pt, last.pt: a copy of another step's weights, not a step of its own (a file of
        # this name that gives a step, by its metadata or --step-regex, is read as any other).
        # A torch.save alias is left out even when its dict stores the step, when another file
        # gives that step: it is the dict of a step saved under its own name too, and
        # torch.save writes the file's name into its bytes, so the two are never the same bytes
        # (as copies must be) but two of one step. One whose step no other file gives (the
        # loop's final.pt, its last step saved under no other name) is that step's checkpoint.
        # A file of the step that is unusable (truncated, no checkpoint) gives it to no one:
        # the alias stands in for it, said by the listing (--skip-bad leaves that file out).
        # A safetensors alias storing such a step is left out so when it holds other tensors
        # (a loop's later weights under a stale step counter, as final.pt): read beside that
        # step's file, both were refused as two files of one step, and --skip-bad lost the
        # step; one of the same tensors is left to the duplicates' check, whose note names it.
        named = {c.step for c in scan.candidates if not _is_alias(c) and _usable_step(c)}
        stepped: dict[int | None, Candidate] = {}  # the file of each step, the first by name
        for c in scan.candidates:
            if not _is_alias(c) and _usable_step(c):
                stepped.setdefault(c.step, c)
        # (an alias --step-regex matches without reading a step from it, 'ckpt_(\d+)|final'
        # on final.pt, keeps the regex's error: left out, it would be lost without a word)
        aliases = [
            c
            for c in scan.candidates
            if _is_alias(c)
            and c.name not in matched_bad
            and (
                c.step is None
                or (
                    c.step_inside
                    and c.step in named
                    and (c.format == "torch" or not _same_weights(c, stepped[c.step]))
                )
            )
        ]
        last_step = max((k for k in stepped if k is not None), default=None)
        last = None if last_step is None else stepped[last_step]
        for c in aliases:
            scan.candidates.remove(c)
            scan.ignored.append(c.name)
            if c.step is not None and c.step in named and c.problem is None:
                scan.left_copies.setdefault(c.step, []).append(LeftCopy(c.location))
                # later weights saved with a stale step would be lost without a word: a copy
                # of a selected step that holds other tensors than its file is said
                # (a safetensors one is left out only when it holds other tensors: known)
                if is_selected(c.step, steps, every) and (
                    c.format != "torch" or not _same_weights(c, stepped[c.step])
                ):
                    scan.other_copies.append((c.name, stepped[c.step].name, c.step))
            held = unmatched.get(c.name)
            told_by_regex = False
            if pattern is not None and held is not None and held not in named:
                scan.regex_left.append((c.name, held, pattern.pattern))
                told_by_regex = True
            if c.name in unreadable and c.problem is not None:  # its step cannot be known
                scan.unreadable_aliases.append((c.name, c.problem))
            # a final.pt that stores no step is not read: said when it holds other tensors than
            # the last step's file (a loop's final weights, saved after its last ckpt_N.pt);
            # best.pt is some earlier step's weights by its name, and stays silent
            stepless = c.step is None and c.name not in unreadable  # (no step: its problem)
            compared = (
                last
                if stepless
                and last is not None
                and last_step is not None
                and "best" not in candidate_stem(c).lower()
                and is_selected(last_step, steps, every)
                else None
            )
            other = compared is not None and not _same_weights(
                replace(c, step=last_step, problem=None), compared
            )
            # one that stores a step entry that is no step ({"step": "last"}) is said with that
            # entry, whatever it holds: its error, dropped with it, was lost without a word
            # (under --step-regex the steps come from the names: not its entry's to give)
            bad = bad_stored_step(c) if stepless and pattern is None else None
            if bad is not None:
                at, at_step = (None, None) if compared is None else (compared.name, last_step)
                told = BadStepCopy(c.name, *bad, at, at_step, other)
                scan.bad_step_copies.append(told)
            elif other and last is not None and last_step is not None and not told_by_regex:
                # (one told of above, storing a step no file gives, is said once, by that step)
                scan.stepless_copies.append((c.name, last.name, last_step))
        _note_stand_ins(scan, [c for c in scan.candidates if _is_alias(c)], named, folders=False)
        # A Trainer's final model is read as the output directory's global_step when no usable
        # checkpoint-N/ folder gives that step (save_steps does not divide the run's length; a
        # folder without its weights yet, a save in progress, gives none: the final model
        # stands in for it, said by the listing);
        # when one does, it is that folder's weights again, left out as final.pt is. A run
        # that names a best_model_checkpoint may have saved that checkpoint's weights as its
        # final model (load_best_model_at_end): its step is not known, and a warning says so.
        folders = {c.step for c in scan.candidates if c.folder is not None and _usable_step(c)}
        finals: list[Candidate] = []
        for c in [c for c in scan.candidates if c.trainer_final]:
            step = c.step if c.step is not None else c.global_step
            assert step is not None
            if step not in folders and scan.best_model is None:
                finals.append(c)
                continue
            scan.candidates.remove(c)
            scan.ignored.append(c.name)
            if step not in folders:
                scan.final_left.append((c.name, step))
            elif scan.best_model is None:  # (with one, it would not be read in the folder's place)
                # its step the file's own, else the global_step of the directory's state file
                by_state = c.step_inside is None and step == c.global_step
                state = scan.directory / "trainer_state.json" if by_state else None
                scan.left_copies.setdefault(step, []).append(LeftCopy(c.location, state))
        _note_stand_ins(scan, finals, folders, folders=True)
    kept = []
    for c in scan.candidates:
        if c.step is None or is_selected(c.step, steps, every):
            kept.append(c)
        else:
            scan.unselected.append(c.step)
    for copy, original, how in _flag_duplicates(kept):
        kept.remove(copy)
        assert copy.step is not None
        scan.copies.append((copy.name, original.name, copy.step, how))
    _flag_mixed_runs(kept)
    # a copy stands in only where it is read: within the selection, and usable itself (not of
    # another run, not a step that files of other content give too)
    scan.regex_left = [e for e in scan.regex_left if is_selected(e[1], steps, every)]
    # a final model left out is said only when its step is one the selection reads
    scan.final_left = [e for e in scan.final_left if is_selected(e[1], steps, every)]
    read = {c.name for c in kept if c.problem is None}
    scan.stand_ins = [entry for entry in scan.stand_ins if entry[0] in read]
    scan.other_copies = [entry for entry in scan.other_copies if entry[1] in read]
    scan.stepless_copies = [entry for entry in scan.stepless_copies if entry[1] in read]
    scan.bad_step_copies = [  # compared with a file not read after all: not compared
        e
        if e.last is None or e.last in read
        else replace(e, last=None, last_step=None, other=False)
        for e in scan.bad_step_copies
    ]
    kept.sort(key=lambda c: (c.step is None, c.step or 0, c.name))
    scan.candidates = kept
    return scan
