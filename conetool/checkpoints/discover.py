"""Find the checkpoints of a directory and recover their training steps, reading headers only.

Layouts accepted without configuration (one directory level, plus Hugging Face folders):

- flat ``*.safetensors`` files (what ``conetool train`` writes: ``step_002000.safetensors``);
- flat ``*.pt`` / ``*.pth`` / ``*.bin`` / ``*.ckpt`` torch.save files (plain state dicts, or
  Lightning's dict with ``state_dict``), read only with ``torch.load(weights_only=True)``;
- Hugging Face Trainer folders ``checkpoint-2000/`` holding ``model.safetensors`` or
  ``pytorch_model.bin``, or shards ``model-00001-of-00002.safetensors`` with
  ``model.safetensors.index.json`` (also shards with their index directly in the directory).

Never taken for model checkpoints: optimizer states (``*.optim.safetensors``, ``*.optim.pt``),
Hugging Face Trainer extras (``optimizer.pt``, ``scheduler.pt``, ``scaler.pt``, ``rng_state*.pth``,
``training_args.bin``), open_lth's ``checkpoint.pth`` (resume state) and ``mask.pth``, Lightning's
``last*.ckpt`` (a copy of the latest checkpoint, without a step in its name), hidden files
(``.step_002000.safetensors.tmp``: a write in progress), and, beside ``checkpoint-N/`` folders, the
final model that ``Trainer.save_model`` writes into the output directory (it has no step; it is
usually the last checkpoint again).

The step of each checkpoint, in order of precedence:

1. ``step_regex`` (``--step-regex``), searched in the file name (or the Hugging Face folder name):
   its group ``step`` or its first group; or a group ``epoch`` (and optionally ``it``) for
   ``epoch × iterations per epoch + it``;
2. the safetensors metadata key ``step``;
3. the name: ``step_2000``, ``step=2000``, ``epoch=3-step=2000``, ``global_step2000``,
   ``ckpt-2000``, ``checkpoint-2000``, ``model_2000``, ``iter_2000``, a bare ``2000``; or an epoch
   name, ``epoch_3``, ``epoch=3``, ``ep3`` (step = 3 × iterations per epoch) or open_lth's
   ``model_ep3_it17`` (3 × iterations per epoch + 17), with iterations per epoch = ceil(training
   examples / batch size) from the spec; without it, an error says what to give (the rules are in
   :mod:`conetool.checkpoints.step_names`);
4. for Hugging Face folders, ``trainer_state.json`` ``global_step``, which is also checked against
   the folder name when both are present.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conetool import paths
from conetool.errors import CheckpointError

from ._format import (
    SAFETENSORS_SUFFIX,
    TORCH_SUFFIXES,
    SafetensorsHeader,
    check_torch_file,
    open_error,
    read_header,
    torch_shapes,
)
from ._keys import diff_keys, strip_common_prefixes
from .step_names import (
    STEP_REGEX_EXAMPLE,
    compile_step_regex,
    epoch_note,
    name_step,
    regex_step,
)

CHECKPOINT_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)
SOURCES = ("safetensors", "torch", "hf", "hf-sharded")

_NOT_MODEL = re.compile(
    r"^(optimizer\.(pt|bin)|scheduler\.pt|scaler\.pt|training_args\.bin|rng_state.*\.pth"
    r"|checkpoint\.pth|mask\.pth|last(-v\d+)?\.ckpt)$"
)
_SHARD = re.compile(r"^(?P<prefix>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})(?P<suffix>\.safetensors|\.bin)$")
_HF_FOLDER = re.compile(r"^checkpoint-\d+$")
_HF_WEIGHTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
_HF_FINAL = re.compile(r"^(model\.safetensors|pytorch_model\.bin)(\.index\.json)?$")
_STEP_REGEX_HELP = STEP_REGEX_EXAMPLE
TORCH_NOTE = (
    "a torch.save file, read only with torch.load(weights_only=True); safetensors is preferred "
    "(no pickle, checked from its header)"
)


class CheckpointWarning(UserWarning):
    """A per-file checkpoint problem skipped under ``skip_bad``, or a note on the file format."""


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a directory: its training step and the file(s) holding its weights.

    ``paths`` is one file, or the shards of a sharded checkpoint in order. ``source`` is
    ``"safetensors"`` or ``"torch"`` for flat files, ``"hf"`` for a Hugging Face folder with one
    weights file, ``"hf-sharded"`` for shards with their index. ``size`` is the total size in
    bytes when it was listed.
    """

    step: int
    paths: tuple[Path, ...]
    source: str
    folder: Path | None = None  # the Hugging Face checkpoint-N/ folder
    index: Path | None = None  # the shard index (*.index.json)
    size: int = 0

    @property
    def file(self) -> Path:
        """What to show the user: the Hugging Face folder, else the shard index, else the file."""
        return self.folder or self.index or self.paths[0]

    @property
    def format(self) -> str:
        """``"safetensors"`` or ``"torch"`` (pickle-based, read with ``weights_only=True``)."""
        return "safetensors" if self.paths[0].suffix == SAFETENSORS_SUFFIX else "torch"


@dataclass
class _Candidate:
    name: str  # relative to the directory, for display ("checkpoint-2000/" for folders)
    location: Path
    paths: tuple[Path, ...] = ()
    source: str = ""
    folder: Path | None = None
    index: Path | None = None
    size: int = 0
    step: int | None = None
    problem: str | None = None
    headers: tuple[SafetensorsHeader, ...] = ()
    shapes: dict[str, tuple[int, ...]] | None = None  # key -> shape, when known without loading
    global_step: int | None = None  # trainer_state.json
    epoch: int | None = None  # set when the step was converted from an epoch in the name

    def fail(self, message: str) -> None:
        if self.problem is None:
            self.problem = message

    @property
    def metadata(self) -> dict[str, str]:
        return self.headers[0].metadata if self.headers else {}

    @property
    def format(self) -> str:
        return (
            "safetensors" if self.paths and self.paths[0].suffix == SAFETENSORS_SUFFIX else "torch"
        )

    def ref(self) -> CheckpointRef:
        assert self.step is not None and self.problem is None
        return CheckpointRef(self.step, self.paths, self.source, self.folder, self.index, self.size)


@dataclass
class _Scan:
    directory: Path
    candidates: list[_Candidate]  # selected ones, sorted by step (unknown steps last)
    ignored: list[str] = field(default_factory=list)  # skipped on purpose (optimizer states, ...)
    others: list[str] = field(default_factory=list)  # everything else in the directory
    unselected: list[int] = field(default_factory=list)  # steps left out by --steps / --every


# --------------------------------------------------------------------------------------------------
# flags


def parse_step_range(text: str) -> tuple[int | None, int | None]:
    """Parse ``--steps``: ``"0:5000"`` -> ``(0, 5000)``, ``"2000:"`` -> ``(2000, None)``,
    ``":5000"`` -> ``(None, 5000)``, ``"2000"`` -> ``(2000, 2000)``. Both ends are included."""
    raw = text.strip()
    lo_text, colon, hi_text = raw.partition(":")
    try:
        if ":" in hi_text or not raw:
            raise ValueError
        lo = int(lo_text) if lo_text.strip() else None
        hi = int(hi_text) if hi_text.strip() else None
        if not colon:
            hi = lo
        if any(v is not None and v < 0 for v in (lo, hi)):
            raise ValueError
    except ValueError:
        raise CheckpointError(
            f"--steps '{text}' is not a step range: write START:END with whole numbers, both "
            f"included (--steps 0:5000), or leave an end open (--steps 2000:, --steps :5000)."
        ) from None
    if lo is not None and hi is not None and lo > hi:
        raise CheckpointError(
            f"--steps '{text}' starts after it ends; write the smaller step first "
            f"(--steps {hi}:{lo})."
        )
    return lo, hi


def _check_selection(steps: tuple[int | None, int | None] | None, every: int | None) -> None:
    if every is not None and (not isinstance(every, int) or every < 1):
        raise CheckpointError(f"--every must be a positive whole number of steps, not {every!r}.")
    if steps is not None:
        ok = len(steps) == 2 and all(s is None or (isinstance(s, int) and s >= 0) for s in steps)
        if not ok or (steps[0] is not None and steps[1] is not None and steps[0] > steps[1]):
            raise CheckpointError(
                f"--steps must be START:END with 0 <= START <= END (either may be left open), "
                f"not {steps!r}."
            )


def _selected(step: int, steps: tuple[int | None, int | None] | None, every: int | None) -> bool:
    lo, hi = steps if steps is not None else (None, None)
    if (lo is not None and step < lo) or (hi is not None and step > hi):
        return False
    return every is None or step % every == 0


# --------------------------------------------------------------------------------------------------
# steps


def step_from_name(name: str, *, iterations_per_epoch: int | None = None) -> int | None:
    """The step a checkpoint's name (without suffix) gives, or None (see
    :mod:`conetool.checkpoints.step_names`).

    Raises :class:`CheckpointError` for a name that gives an epoch (``epoch_3``, open_lth's
    ``model_ep3_it17``) without ``iterations_per_epoch``.
    """
    return name_step(name, iterations_per_epoch, Path(name))[0]


def _no_step(path: Path) -> CheckpointError:
    return CheckpointError(
        f"no step recoverable from '{path}': name files like step_2000.safetensors, store a "
        f"'step' metadata key, or pass {_STEP_REGEX_HELP} (a regex with a group around the step)."
    )


def _stem(c: _Candidate) -> str:
    if c.folder is not None:
        return c.folder.name
    if c.index is not None:  # top-level shards: "model" of model.safetensors.index.json
        return c.index.name.split(".", 1)[0]
    name = c.location.name
    return name[: -len(c.location.suffix)] if c.location.suffix else name


def _recover_step(c: _Candidate, pattern: re.Pattern[str] | None, ipe: int | None) -> None:
    where = c.folder or c.location
    if pattern is not None:
        name = c.folder.name if c.folder is not None else c.location.name
        c.step, c.epoch = regex_step(pattern, name, ipe, where)
        return
    meta = c.metadata.get("step")
    if meta is not None and c.folder is None:
        try:
            c.step = int(meta)
        except ValueError:
            raise CheckpointError(
                f"'{where}' has safetensors metadata step '{meta}', which is not a whole number; "
                f"re-save it with a numeric step, or pass {_STEP_REGEX_HELP} to take the step "
                f"from the file name instead."
            ) from None
        return
    c.step, c.epoch = name_step(_stem(c), ipe, where)
    if c.folder is not None and c.global_step is not None:
        if c.step is None:
            c.step = c.global_step
        elif c.step != c.global_step:
            raise CheckpointError(
                f"'{c.folder}' is named for step {c.step} but its trainer_state.json says "
                f"global_step {c.global_step}; rename the folder to checkpoint-{c.global_step} if "
                f"that is right, or pass --step-regex to take the step from the name."
            )
    if c.step is None:
        raise _no_step(where)


# --------------------------------------------------------------------------------------------------
# candidates


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
    return name.endswith(CHECKPOINT_SUFFIXES) or bool(_HF_FOLDER.match(name))


def _read_headers(c: _Candidate, deep: bool) -> None:
    """Fill ``headers``/``shapes``/``size`` from the files' headers; record the first problem."""
    try:
        for p in c.paths:
            mode = os.stat(p).st_mode
            if not stat.S_ISREG(mode):
                what = "a directory" if stat.S_ISDIR(mode) else "a device, pipe or socket"
                c.size = -1  # no size to show: not a file
                c.fail(
                    f"'{p}' is not a regular file but {what}"
                    + (f" (a link to '{os.path.realpath(p)}')" if os.path.islink(p) else "")
                    + "; point it at the real checkpoint file or remove it (or pass --skip-bad)."
                )
                return
        if c.format == "safetensors":
            c.headers = tuple(read_header(p) for p in c.paths)
            c.size = sum(h.size for h in c.headers)
            shapes: dict[str, tuple[int, ...]] = {}
            for h in c.headers:
                shapes.update(h.shapes)
            c.shapes = shapes
        else:
            zipped = [check_torch_file(p) for p in c.paths]
            c.size = sum(os.stat(p).st_size for p in c.paths)
            if deep and all(zipped):
                c.shapes = {}
                for p in c.paths:
                    c.shapes.update(torch_shapes(p))
    except CheckpointError as e:
        c.fail(str(e))
    except OSError as e:
        c.fail(str(open_error(Path(e.filename or c.location), e)))


def _file_candidate(path: Path, deep: bool) -> _Candidate:
    is_st = path.suffix == SAFETENSORS_SUFFIX
    c = _Candidate(path.name, path, (path,), "safetensors" if is_st else "torch")
    _read_headers(c, deep)
    return c


def _sharded(c: _Candidate, index: Path, deep: bool) -> None:
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
            f"restore the shards (or pass --skip-bad)."
        )
        return
    if not c.paths:
        c.fail(f"'{index}' lists no tensors; re-save the checkpoint (or pass --skip-bad).")
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
            f"from different saves: re-save the checkpoint (or pass --skip-bad)."
        )


def _folder_candidate(folder: Path, deep: bool) -> _Candidate | None:
    """A Hugging Face checkpoint folder, or None when the folder holds no model weights."""
    c = _Candidate(folder.name + "/", folder, folder=folder, source="hf")
    try:
        names = set(os.listdir(folder))
    except OSError as e:
        if not _HF_FOLDER.match(folder.name):
            return None
        c.fail(str(open_error(folder, e)))
        return c
    for index_name, single in _HF_WEIGHTS:
        if index_name in names:
            _sharded(c, folder / index_name, deep)
            break
        if single in names:
            c.paths = (folder / single,)
            _read_headers(c, deep)
            break
    else:
        if not _HF_FOLDER.match(folder.name):
            return None
        listed = ", ".join(sorted(names)[:10]) or "nothing"
        c.fail(
            f"'{folder}' holds no model weights (model.safetensors, its shards with "
            f"model.safetensors.index.json, or pytorch_model.bin); it has: {listed}. If the run "
            f"is still saving it, wait and rerun; otherwise remove the folder (or pass --skip-bad)."
        )
        return c
    if "trainer_state.json" in names:
        state = folder / "trainer_state.json"
        try:
            c.global_step = int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            c.fail(
                f"'{state}' is unreadable or has no integer global_step; if the run is still "
                f"saving it, wait and rerun, otherwise fix or remove it (or pass --skip-bad)."
            )
    return c


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


def _collect(directory: Path, deep: bool) -> _Scan:
    scan = _Scan(directory, [])
    shards: dict[tuple[str, str], list[Path]] = {}
    for entry in _list_directory(directory):
        name, path = entry.name, Path(entry.path)
        if name.startswith("."):
            scan.ignored.append(name)
            continue
        kind, error = _entry_kind(entry)
        if kind == "broken":
            if _looks_like_checkpoint(name):
                assert error is not None
                scan.candidates.append(_Candidate(name, path, problem=str(open_error(path, error))))
            else:
                scan.others.append(name)
        elif kind == "dir":
            c = _folder_candidate(path, deep)
            if c is None:
                scan.others.append(name + "/")
            else:
                scan.candidates.append(c)
        elif kind != "file" or not name.endswith(CHECKPOINT_SUFFIXES):
            scan.others.append(name)
        elif paths.is_optimizer_state(path) or _NOT_MODEL.match(name):
            scan.ignored.append(name)
        elif m := _SHARD.match(name):
            shards.setdefault((m["prefix"], m["suffix"]), []).append(path)
        else:
            scan.candidates.append(_file_candidate(path, deep))
    for (prefix, suffix), files in sorted(shards.items()):
        index = directory / f"{prefix}{suffix}.index.json"
        c = _Candidate(index.name, index, tuple(files), "hf-sharded", index=index)
        if _is_file(index):
            _sharded(c, index, deep)
            if index.name in scan.others:
                scan.others.remove(index.name)
        else:
            c.fail(
                f"'{files[0]}' is a shard ({len(files)} found) but its index '{index.name}' is "
                f"missing; restore the index, which says which tensor is in which shard (or pass "
                f"--skip-bad)."
            )
        scan.candidates.append(c)
    if any(c.folder is not None for c in scan.candidates):
        # Trainer.save_model's final model beside the checkpoint-N/ folders: it has no step.
        final = [c for c in scan.candidates if c.folder is None and _HF_FINAL.match(c.name)]
        for c in final:
            scan.candidates.remove(c)
            scan.ignored.append(c.name)
    return scan


def _flag_duplicates(cands: list[_Candidate]) -> None:
    by_step: dict[int, list[_Candidate]] = {}
    for c in cands:
        if c.problem is None and c.step is not None:
            by_step.setdefault(c.step, []).append(c)
    for step, group in by_step.items():
        if len(group) > 1:
            names = " and ".join(f"'{c.location}'" for c in group)
            for c in group:
                c.fail(
                    f"two checkpoints have step {step}: {names}. Keep one of them (move the other "
                    f"out of the directory), or pass --step-regex if the steps come out wrong."
                )


def _flag_mixed_runs(cands: list[_Candidate]) -> None:
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
            f"Move each run's checkpoints to a directory of its own (or pass --skip-bad)."
        )


def _is_hf_folder(directory: Path) -> bool:
    """True when ``directory`` is itself one Hugging Face checkpoint folder."""
    if not _is_file(directory / "trainer_state.json") and not _HF_FOLDER.match(directory.name):
        return False
    return any(_is_file(directory / n) for pair in _HF_WEIGHTS for n in pair)


def _single(path: Path, deep: bool) -> _Scan:
    scan = _Scan(path.parent, [])
    if path.is_dir():
        c = _folder_candidate(path, deep)
        if c is not None:
            scan.candidates.append(c)
    elif path.name.endswith(CHECKPOINT_SUFFIXES):
        scan.candidates.append(_file_candidate(path, deep))
    else:
        scan.others.append(path.name)
    return scan


def _scan(
    directory: str | Path,
    *,
    step_regex: str | None,
    iterations_per_epoch: int | None,
    steps: tuple[int | None, int | None] | None,
    every: int | None,
    deep: bool,
    single: bool = False,
    fixed_step: int | None = None,
) -> _Scan:
    """Every checkpoint candidate of ``directory`` with its step or its problem (headers only).

    ``deep`` also reads the key sets of zip-format torch files (memory-mapped pickle, no data).
    """
    pattern = compile_step_regex(step_regex)
    _check_selection(steps, every)
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
    if directory.is_file() or single or _is_hf_folder(directory):
        scan = _single(directory, deep)
    else:
        scan = _collect(directory, deep)
    for c in scan.candidates:
        if c.problem is None and fixed_step is not None:
            c.step = fixed_step
        elif c.problem is None:
            try:
                _recover_step(c, pattern, iterations_per_epoch)
            except CheckpointError as e:
                c.fail(str(e))
        elif c.step is None:  # best effort, so that --steps can leave a bad file out
            try:
                c.step = step_from_name(_stem(c), iterations_per_epoch=iterations_per_epoch)
            except CheckpointError:
                pass
    kept = []
    for c in scan.candidates:
        if c.step is None or _selected(c.step, steps, every):
            kept.append(c)
        else:
            scan.unselected.append(c.step)
    _flag_duplicates(kept)
    _flag_mixed_runs(kept)
    kept.sort(key=lambda c: (c.step is None, c.step or 0, c.name))
    scan.candidates = kept
    return scan


# --------------------------------------------------------------------------------------------------
# public


def _describe_contents(scan: _Scan) -> str:
    names = scan.others + scan.ignored
    if not names:
        return "it is empty"
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return f"it holds: {shown}"


def empty_error(scan: _Scan) -> CheckpointError:
    """The error for a directory without checkpoint candidates, listing what is there."""
    return CheckpointError(
        f"no checkpoints in '{scan.directory}' ({_describe_contents(scan)}). conetool reads "
        f"*.safetensors and *.pt/*.pth/*.bin/*.ckpt files and Hugging Face checkpoint-N/ folders, "
        f"and skips optimizer states (*.optim.safetensors, optimizer.pt), Lightning's last.ckpt "
        f"and hidden files; pass the --out directory of `conetool train` or the folder holding "
        f"the checkpoint files."
    )


_COLLAPSE_AT = 3


def summarize_problems(problems: list[tuple[Path, str]]) -> list[str]:
    """One line per distinct problem: three or more ``(file, message)`` pairs whose messages
    differ only by the file become ``"61 files (epoch_0.pt, epoch_1.pt, epoch_2.pt, ...,
    epoch_60.pt): <message>"``, the message naming "each file" instead of one (it still says how
    to fix it). Fewer are listed as they are."""
    groups: dict[str, list[tuple[Path, str]]] = {}
    for where, message in problems:
        key = message.replace(f"'{where}'", "each file").replace(str(where), "each file")
        groups.setdefault(key, []).append((where, message))
    lines = []
    for key, members in groups.items():
        if len(members) < _COLLAPSE_AT:
            lines.extend(message for _, message in members)
            continue
        names = [where.name or str(where) for where, _ in members]
        shown = ", ".join(names[:3]) + (f", ..., {names[-1]}" if len(names) > 3 else "")
        lines.append(f"{len(members)} files ({shown}): {key}")
    return lines


def _problem_lines(bad: list[_Candidate]) -> list[str]:
    assert all(c.problem is not None for c in bad)
    return summarize_problems([(c.folder or c.location, c.problem or "") for c in bad])


def _problems_error(directory: Path, bad: list[_Candidate]) -> CheckpointError:
    lines = _problem_lines(bad)
    shown = "\n".join(f"  - {line}" for line in lines[:20])
    more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
    return CheckpointError(
        f"{len(bad)} unusable checkpoint(s) in '{directory}':\n{shown}{more}\n"
        f"Fix or move these files, or pass --skip-bad to skip them with a warning."
    )


def _none_selected(
    scan: _Scan, steps: tuple[int | None, int | None] | None, every: int | None
) -> CheckpointError:
    found = sorted(scan.unselected)
    shown = ", ".join(map(str, found[:10])) + (" ..." if len(found) > 10 else "")
    flags = []
    if steps is not None:
        lo, hi = steps
        flags.append(f"--steps {'' if lo is None else lo}:{'' if hi is None else hi}")
    if every is not None:
        flags.append(f"--every {every} (steps that are multiples of {every})")
    return CheckpointError(
        f"no checkpoint in '{scan.directory}' is selected by {' and '.join(flags)}; the steps "
        f"found are {shown}. Widen the selection."
    )


def _default_warn(message: str) -> None:
    warnings.warn(message, CheckpointWarning, stacklevel=3)


def torch_note(count: int, example: Path) -> str:
    """The note shown for pickle-based checkpoints."""
    return (
        f"{count} checkpoint(s) such as '{example}' are torch.save files: conetool reads them "
        f"only with torch.load(weights_only=True). safetensors is preferred (no pickle, checked "
        f"from its header, memory-mapped loading); see `safetensors.torch.save_file`."
    )


def scan_selected(
    directory: str | Path,
    *,
    step_regex: str | None,
    iterations_per_epoch: int | None,
    steps: tuple[int | None, int | None] | None,
    every: int | None,
    deep: bool,
) -> _Scan:
    """The directory's candidates within the selection; an error when there are none."""
    scan = _scan(
        directory,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=steps,
        every=every,
        deep=deep,
    )
    if not scan.candidates and scan.unselected:
        raise _none_selected(scan, steps, every)
    if not scan.candidates:
        raise empty_error(scan)
    return scan


def list_checkpoints(
    directory: str | Path,
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
    steps: tuple[int | None, int | None] | None = None,
    every: int | None = None,
    skip_bad: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[CheckpointRef]:
    """The checkpoints of ``directory`` sorted by step, found by reading file headers only.

    Args:
        directory: a checkpoint directory (see the module docstring for the layouts), or one
            checkpoint file or Hugging Face folder.
        step_regex: overrides step recovery (``--step-regex``), searched in each file name (the
            folder name for Hugging Face folders); its group ``step``, or its first group.
        iterations_per_epoch: for names that give an epoch (``epoch_3``: step = 3 x this;
            open_lth's ``model_ep{E}_it{I}``: E x this + I; see
            :mod:`conetool.checkpoints.step_names`): ceil(training examples / batch size).
        steps: ``(first, last)``, both included, either may be None (``--steps``; see
            :func:`parse_step_range`). Files outside the range are not checked.
        every: keep only steps that are multiples of ``every`` (``--every``).
        skip_bad: turn per-file problems into ``warn`` calls and go on with the other files.
        warn: receives warnings (skipped files, notes); default :func:`warnings.warn`.

    Raises:
        CheckpointError: the directory is missing, unreadable or holds no checkpoint; or (unless
            ``skip_bad``) any file is unusable: not safetensors, truncated, no step, duplicate
            step, a run mixed into another, a symlink loop, unreadable, still being written.
            One error lists every problem, each naming its file and the fix.
    """
    warn = warn or _default_warn
    scan = scan_selected(
        directory,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=steps,
        every=every,
        deep=False,
    )
    bad = [c for c in scan.candidates if c.problem is not None]
    if bad and not skip_bad:
        raise _problems_error(scan.directory, bad)
    for line in _problem_lines(bad):
        warn(f"skipping {line}" if line[0].isdigit() else f"skipping a checkpoint: {line}")
    refs = [c.ref() for c in scan.candidates if c.problem is None]
    if not refs:
        raise CheckpointError(
            f"no usable checkpoint left in '{scan.directory}': all {len(bad)} were skipped "
            f"(--skip-bad; see the warnings). Fix the files or point at another directory."
        )
    from_epochs = sum(1 for c in scan.candidates if c.problem is None and c.epoch is not None)
    if from_epochs and iterations_per_epoch is not None:
        warn(epoch_note(iterations_per_epoch, from_epochs))
    pickled = [r for r in refs if r.format == "torch"]
    if pickled:
        warn(torch_note(len(pickled), pickled[0].file))
    return refs


def checkpoint_ref(
    path: str | Path,
    *,
    step_regex: str | None = None,
    iterations_per_epoch: int | None = None,
    step: int | None = None,
) -> CheckpointRef:
    """The :class:`CheckpointRef` of one checkpoint file or Hugging Face folder (header checked).

    The step is recovered as in :func:`list_checkpoints` unless ``step`` is given.
    """
    scan = _scan(
        path,
        step_regex=step_regex,
        iterations_per_epoch=iterations_per_epoch,
        steps=None,
        every=None,
        deep=False,
        single=True,
        fixed_step=step,
    )
    if not scan.candidates:
        raise CheckpointError(
            f"'{path}' is not a checkpoint: conetool reads *.safetensors, *.pt/*.pth/*.bin/*.ckpt "
            f"files and Hugging Face checkpoint-N/ folders."
        )
    c = scan.candidates[0]
    if c.problem is not None:
        raise CheckpointError(c.problem)
    return c.ref()
