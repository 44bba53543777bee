"""The TOML spec: how to rebuild the model, where the data is, which probe set, how training ran.

The spec is a tree of frozen dataclasses. :func:`load_spec` reads a TOML file, fills defaults and
validates every key and value; each error names the file, the key, the bad value and the valid
choices. :func:`save_spec` writes the resolved spec (every default made explicit) back to TOML, so
that ``conetool.toml`` beside a run's checkpoints says exactly how the run was made.

Example::

    [model]
    arch = "lenet5"
    num_classes = 10
    [data]
    dataset = "digits"
    [train]
    steps = 600
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from . import paths
from .errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BUILTIN_DATASETS = ("digits", "mnist", "cifar10", "synthetic")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
SPLITS = ("train", "test")
#: The largest float32 (``torch.finfo(torch.float32).max``): the optimizer computes in the
#: parameters' dtype, where a learning rate or factor beyond it overflows ("value cannot be
#: converted to type float without overflow").
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class ModelSpec:
    """``[model]``: a built-in ``arch`` or ``"package.module:factory"``; other keys go to the factory."""

    arch: str = "lenet5"
    num_classes: int = 10
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSpec:
    """``[data]``: the data set and, for ``synthetic``, its shape.

    With a user factory (``dataset = "package.module:factory"``) every key but ``dataset``,
    ``root`` and ``download`` goes to ``options`` and from there to the factory (``seed = 7`` is
    the factory's ``seed``, not the synthetic set's); the synthetic-only fields keep their
    defaults, unused, and stay out of :meth:`Spec.to_dict`.
    """

    dataset: str = "digits"
    root: str = "~/data"
    download: bool = False
    # synthetic only: seeded Gaussian clusters of this input shape and class count
    shape: list[int] = field(default_factory=lambda: [1, 8, 8])
    num_classes: int = 10
    train_size: int = 1000
    test_size: int = 500
    noise: float = 1.0
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeSpec:
    """``[probe]``: ``size`` class-balanced examples of ``split``, drawn with ``seed``."""

    size: int = 500
    split: str = "train"
    seed: int = 0


@dataclass(frozen=True)
class TrainSpec:
    """``[train]``: the recipe of the standard run (and of the switch experiment)."""

    steps: int = 1000
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0  # the training loss's, as nn.CrossEntropyLoss(label_smoothing=)
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_steps: int = 0
    augment: bool = True
    seed: int = 0
    save_every: int = 100
    save_at: list[int] = field(default_factory=list)
    dense_every: int = 0  # also save every dense_every steps before dense_until (0: off)
    dense_until: int = 0
    eval_every: int = 100
    eval_batch_size: int = 1000


#: ``(section, key, default)`` of the keys added after specs had hashes (:meth:`Spec.hash` leaves
#: each out at its default): ``train.label_smoothing``.
LATER_KEYS: tuple[tuple[str, str, Any], ...] = (("train", "label_smoothing", 0.0),)


@dataclass(frozen=True)
class Spec:
    """A whole spec. ``source`` is the file it was read from (for error messages), not part of it.

    ``written``: the keys the file (or dict) wrote, as ``"train.lr"``, the others taken from
    conetool's defaults; None for a spec built in Python (not known). Like ``source`` it is no
    part of the spec: not in :meth:`to_dict`, :meth:`hash` or ``==``, so a file that writes a
    default value and one that leaves it out are the same spec (and the same store)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    source: str = field(default="<spec>", compare=False)
    written: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved spec as plain TOML-ready data (``options`` folded into their section)."""
        out: dict[str, dict[str, Any]] = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            values = {
                f.name: _plain(getattr(section, f.name))
                for f in dataclasses.fields(section)
                if f.name != "options"
            }
            if name == "data" and is_user_dataset(section.dataset):
                values = _user_data_values(section)
            values.update(_plain(getattr(section, "options", {})))
            out[name] = values
        return out

    def hash(self) -> str:
        """A short content hash of the resolved spec (16 hex digits of sha256 over canonical JSON).

        A key added after runs and stores were made (:data:`LATER_KEYS`) is left out at its
        default, so that every spec keeps the hash it had before the key existed (and its
        stores and runs their identity)."""
        values = self.to_dict()
        for section, key, default in LATER_KEYS:
            if values[section].get(key) == default:
                del values[section][key]
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_SECTIONS: dict[str, type] = {
    "model": ModelSpec,
    "data": DataSpec,
    "probe": ProbeSpec,
    "train": TrainSpec,
}
# Sections whose unknown keys are passed on to a user's factory instead of being rejected.
_OPEN_SECTIONS = {
    "model": lambda values: True,
    # (a dataset that is not a string is refused by name as [data]'s closed keys are checked)
    "data": lambda values: ":" in str(values.get("dataset", "")),
}


# [data] keys that conetool itself reads for a user factory (root and download are passed on only
# when the factory names them); every other key is the factory's.
USER_DATA_KEYS = ("dataset", "root", "download")


def is_user_dataset(dataset: str) -> bool:
    """True for ``"package.module:factory"``, False for the built-in data sets."""
    return ":" in dataset


def _user_data_values(data: DataSpec) -> dict[str, Any]:
    """A user factory's [data] in the resolved spec: ``dataset``, ``root`` and ``download`` when
    they are not the defaults, then the factory's own keys (no synthetic-only defaults)."""
    default = DataSpec()
    values: dict[str, Any] = {"dataset": data.dataset}
    for key in ("root", "download"):
        if getattr(data, key) != getattr(default, key):
            values[key] = getattr(data, key)
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def load_spec(path: str | Path) -> Spec:
    """Read, default-fill and validate a spec file.

    Raises :class:`SpecError` naming the file, the key, the bad value and the valid choices.
    """
    if not isinstance(path, str | os.PathLike) or not isinstance(os.fspath(path), str):
        # train's spec=, and every command's --spec (spec=), come here when no Spec is given
        raise SpecError(
            f"spec={path!r} is not a spec. Pass the path of a TOML spec file (a str or "
            "pathlib.Path), or a conetool.Spec (conetool.load_spec reads one)."
        )
    if not os.fspath(path):  # Path("") is the current folder
        raise SpecError(
            "spec='' is an empty path. Pass the path of a TOML spec file, for example "
            "examples/digits_lenet.toml (an empty value usually comes from a variable that is "
            "not set)."
        )
    if not os.fspath(path).strip():
        raise SpecError(
            f"spec={os.fspath(path)!r} is a path of only spaces. Pass the path of a TOML spec "
            "file, for example examples/digits_lenet.toml."
        )
    path = Path(path)
    if path.is_dir():
        inside = paths.spec(path)  # a run directory's resolved spec
        hint = (
            f"pass {inside}, the spec of the run in it"
            if inside.is_file()
            else "pass the path of a TOML spec file"
        )
        raise SpecError(f"spec file {path} is a directory, not a spec file: {hint}.")
    if not path.is_file():
        raise SpecError(
            f"spec file {path} does not exist. Pass the path of a TOML spec, for example "
            "examples/digits_lenet.toml, or write one as the README's 'The spec' section shows."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        weights = path.suffix.lower() in {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}
        hint = (
            f" It is a checkpoint ({path.suffix}), not a spec: pass the TOML spec that builds "
            f"its model (a run of conetool train has one, {paths.SPEC_NAME}, beside its "
            "checkpoints)."
            if weights
            else " Pass the path of a TOML spec file."
        )
        raise SpecError(f"spec file {path} is not UTF-8 text: {exc}.{hint}") from exc
    return spec_from_toml(text, source=str(path))


def spec_from_toml(text: str, source: str = "<spec>") -> Spec:
    """Parse and validate spec TOML text (``source`` names it in error messages)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(
            f"spec file {source} is not valid TOML: {exc}. Fix the syntax there."
        ) from exc
    return spec_from_dict(raw, source=source)


def spec_from_dict(raw: Mapping[str, Any], source: str = "<spec>") -> Spec:
    """Build a validated :class:`Spec` from parsed TOML data (the same checks as :func:`load_spec`)."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise SpecError(
            f"{source}: unknown section [{unknown[0]}]. Valid sections: "
            f"{', '.join(f'[{s}]' for s in _SECTIONS)}."
            + _did_you_mean(unknown[0], list(_SECTIONS), "[{}]")
        )
    sections = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, Mapping):
            raise SpecError(
                f"{source}: '{name}' must be a table ([{name}]), got {toml_text(values)}."
            )
        sections[name] = _build_section(cls, name, dict(values), source)
    written = frozenset(
        f"{name}.{key}"
        for name in _SECTIONS
        if isinstance(raw.get(name), Mapping)
        for key in raw[name]
    )
    spec = Spec(**sections, source=source, written=written)
    _check_semantics(spec)
    return spec


def _build_section(cls: type, name: str, values: dict[str, Any], source: str) -> Any:
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    is_open = name in _OPEN_SECTIONS and _OPEN_SECTIONS[name](values)
    if name == "data" and is_open:
        known = list(USER_DATA_KEYS)  # the rest (seed, shape, ...) is the factory's
    for key, value in values.items():
        if key in known:
            kwargs[key] = _check_type(value, hints[key], f"{name}.{key}", source)
        elif is_open:
            extra[key] = value
        else:
            raise SpecError(
                f"{source}: unknown key '{key}' in [{name}]. Valid keys: {', '.join(known)}."
                + _did_you_mean(key, known, "'{}'")
                + _open_hint(name)
            )
    if "options" in hints:
        kwargs["options"] = extra
    return cls(**kwargs)


def _did_you_mean(name: str, valid: list[str], form: str) -> str:
    """`` Did you mean 'steps'?`` for the valid name closest to a misspelt one (none: "")."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f" Did you mean {form.format(close[0])}?" if close else ""


def _open_hint(section: str) -> str:
    if section == "data":
        return (
            ' Extra keys are allowed only with a user factory (dataset = "package.module:factory").'
        )
    return ""


def _type_name(tp: Any) -> str:
    if get_origin(tp) is list:
        return {int: "a list of integers", float: "a list of numbers"}[get_args(tp)[0]]
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    def bad() -> SpecError:
        return SpecError(f"{source}: '{key}' must be {_type_name(tp)}, got {toml_text(value)}.")

    if get_origin(tp) is list:
        if not isinstance(value, list):
            raise bad()
        (item,) = get_args(tp)
        try:
            return [_check_type(v, item, key, source) for v in value]
        except SpecError:
            raise bad() from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise AssertionError(f"unhandled spec type {tp}")  # a bug in the dataclasses above


def _choice(source: str, key: str, value: Any, choices: tuple[str, ...], extra: str = "") -> None:
    if value not in choices:
        raise SpecError(
            f"{source}: '{key}' = {toml_text(value)} is not valid. Choices: "
            f"{', '.join(choices)}{extra}."
        )


def _positive(source: str, key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        need = "zero or more" if allow_zero else "positive"
        raise SpecError(f"{source}: '{key}' must be {need}, got {value!r}.")


def _in_float32(source: str, key: str, value: float, usual: str) -> None:
    if abs(value) > FLOAT32_MAX:
        raise SpecError(
            f"{source}: '{key}' = {value!r} is beyond the largest float32 ({FLOAT32_MAX:.4g}): "
            "PyTorch cannot use it with float32 parameters, and no training works with it. "
            f"Set a value of the usual size ({usual})."
        )


#: The longest run: ``train.steps`` (and ``conetool demo --steps``) up to TOML's largest integer,
#: 2**63 - 1; a larger count (99999999999999999999, which Python's TOML reader takes) trained
#: without end.
MAX_STEPS = 2**63 - 1


def _at_most_steps(source: str, key: str, value: int) -> None:
    """A step count of at most :data:`MAX_STEPS`."""
    if value > MAX_STEPS:
        raise SpecError(
            f"{source}: '{key}' = {value} is beyond the longest run conetool trains "
            f"({MAX_STEPS}, TOML's largest integer). Set the number of steps to train."
        )


def _steps_within_toml(source: str, t: TrainSpec) -> None:
    """The step keys besides ``train.steps`` (intervals, the warmup, milestones, save_at) at most
    :data:`MAX_STEPS`: larger ones trained, and their run's conetool.toml held integers beyond
    TOML's (which other TOML readers refuse)."""
    keys: list[tuple[str, int]] = [
        (key, getattr(t, key))
        for key in ("warmup_steps", "save_every", "eval_every", "dense_every", "dense_until")
    ]
    keys += [(key, max(getattr(t, key), default=0)) for key in ("milestones", "save_at")]
    for key, value in keys:
        if value > MAX_STEPS:
            held = f"holds {value}" if key in ("milestones", "save_at") else f"= {value}"
            raise SpecError(
                f"{source}: 'train.{key}' {held}, beyond the largest step conetool takes "
                f"({MAX_STEPS}, TOML's largest integer, which the run's conetool.toml must "
                f"hold). Set steps within the run (train.steps = {t.steps})."
            )


#: The seeds PyTorch takes (``torch.manual_seed``, ``torch.Generator.manual_seed``), inclusive.
SEED_RANGE = (-(2**63), 2**64 - 1)


def _in_seed_range(source: str, key: str, value: int) -> None:
    """A seed PyTorch takes: beyond :data:`SEED_RANGE`, ``manual_seed`` raised "Overflow when
    unpacking long long" once training or the probe drew from it."""
    low, high = SEED_RANGE
    if not low <= value <= high:
        raise SpecError(
            f"{source}: '{key}' = {value} is beyond the seeds PyTorch takes ({low} to {high}). "
            "Set a smaller whole number (seed = 0)."
        )


def _check_schedule_peak(source: str, t: TrainSpec) -> None:
    """A step schedule with gamma > 1 raises the learning rate at each milestone: its largest
    (every milestone counted, as switch --beyond-run may pass them all) must fit float32 too."""
    if t.schedule != "step" or t.gamma <= 1:
        return
    peak = t.lr
    for _ in t.milestones:
        peak *= t.gamma  # inf once past float64's range: refused alike
    if peak > FLOAT32_MAX:
        raise SpecError(
            f"{source}: the learning rate reaches {peak:.4g} (train.lr {t.lr!r} x train.gamma "
            f"{t.gamma!r} at each of the {len(t.milestones)} milestones), beyond the largest "
            f"float32 ({FLOAT32_MAX:.4g}) that training computes in. A step schedule decays the "
            "rate: set 'train.gamma' below 1 (e.g. 0.1)."
        )


def recipe_warnings(spec: Spec) -> list[str]:
    """What in the spec's ``[train]`` recipe PyTorch accepts but trains badly, or sets to no
    effect, each a sentence naming the key (``train`` and ``switch`` say them at their start): a
    momentum of 1 or more for SGD; for Adam a momentum other than 0 and the default; for SGD
    betas other than the default; without the step schedule milestones, or a gamma other than
    the default (none of them applies there); a step schedule with gamma = 1 (the rate never
    changes); a warmup longer than the run (the rate never reaches lr)."""
    src, t = spec.source, spec.train
    default = TrainSpec()
    said = []
    if t.optimizer == "sgd" and t.momentum >= 1:
        said.append(
            f"{src}: 'train.momentum' = {t.momentum!r} is 1 or more, so SGD's updates "
            "grow without bound (each adds momentum x the previous one) and the loss explodes; "
            "torch.optim.SGD accepts it, conetool trains with it as asked. Momentum is usually "
            "0.9 (0: none)."
        )
    if t.optimizer != "sgd" and t.momentum not in (0, default.momentum):  # 0: says "none"
        said.append(
            f"{src}: 'train.momentum' = {t.momentum!r} has no effect with optimizer = "
            f"\"{t.optimizer}\": it is SGD's. Adam's momentum is the first of 'train.betas' (now "
            f"{t.betas!r}): set betas if that was meant, and remove momentum."
        )
    if t.optimizer == "sgd" and t.betas != default.betas:
        said.append(
            f"{src}: 'train.betas' = {t.betas!r} has no effect with optimizer = \"sgd\": they "
            'are Adam\'s. Set optimizer = "adam" if that was meant, or remove betas.'
        )
    if t.schedule != "step":
        unused = [
            f"'train.{key}' = {getattr(t, key)!r}"
            for key in ("milestones", "gamma")
            if getattr(t, key) != getattr(default, key)
        ]
        if unused:
            said.append(
                f"{src}: {' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no "
                f'effect with schedule = "{t.schedule}": the learning rate drops at milestones '
                'by gamma only with schedule = "step". Set schedule = "step" if that was meant, '
                f"or remove {' and '.join(u.split(' = ')[0] for u in unused)}."
            )
    elif t.gamma == 1:
        said.append(
            f"{src}: 'train.gamma' = 1.0 with schedule = \"step\": the learning rate is multiplied "
            f"by 1 at each milestone {t.milestones}, so it never changes. Set gamma below 1 (for "
            'example 0.1), or schedule = "constant".'
        )
    if t.warmup_steps > t.steps:
        said.append(
            f"{src}: 'train.warmup_steps' = {t.warmup_steps} is longer than 'train.steps' = "
            f"{t.steps}, so the learning rate never reaches train.lr = {t.lr!r}: it ends the "
            f"run at {t.steps / t.warmup_steps:.3g} x lr. Set warmup_steps to at most "
            "train.steps (usually a small part of it)."
        )
    return said


def _regular_saves(t: TrainSpec) -> set[int]:
    """The checkpoints besides the dense ones: 0, every save_every, each of save_at, the last."""
    return set(range(0, t.steps + 1, t.save_every)) | set(t.save_at) | {0, t.steps}


def _dense_saves(t: TrainSpec) -> set[int]:
    """Every dense_every steps before dense_until (none when dense_every is 0)."""
    if not t.dense_every:
        return set()
    return set(range(0, min(t.dense_until, t.steps + 1), t.dense_every))


def dense_only_steps(train: TrainSpec) -> list[int]:
    """The steps that only the dense checkpoints save (none: ``dense_every`` adds nothing).
    A list of them all: :func:`dense_only_count` counts them without making it."""
    return sorted(_dense_saves(train) - _regular_saves(train))


def save_steps(spec: Spec) -> list[int]:
    """The steps the run saves: 0, every ``save_every``, every ``dense_every`` before
    ``dense_until``, each of ``save_at``, and the last. A list of them all, as long as the
    checkpoints written: :func:`is_save_step` and :func:`save_count` answer for a run of any
    length (``steps`` up to TOML's 2**63 - 1) without making it."""
    return sorted(_regular_saves(spec.train) | _dense_saves(spec.train))


def is_save_step(train: TrainSpec, step: int) -> bool:
    """Whether the run saves a checkpoint at ``step`` (one of :func:`save_steps`), in O(1)."""
    t = train
    if not 0 <= step <= t.steps:
        return False
    if step == t.steps or step % t.save_every == 0 or step in t.save_at:
        return True
    return bool(t.dense_every) and step < t.dense_until and step % t.dense_every == 0


def _multiples_below(every: int, end: int) -> int:
    """How many of 0, every, 2 every, ... lie below ``end``."""
    return -(-end // every) if end > 0 else 0


def dense_only_count(train: TrainSpec) -> int:
    """``len(dense_only_steps(train))``, counted without listing the steps."""
    t = train
    if not t.dense_every:
        return 0
    end = min(t.dense_until, t.steps + 1)  # the dense steps: multiples of dense_every below it
    both = math.lcm(t.dense_every, t.save_every)  # the dense steps that save_every saves too
    listed = {  # the dense steps that only save_at or the last step saves besides
        s for s in (*t.save_at, t.steps) if s < end and s % t.dense_every == 0 and s % both
    }
    return _multiples_below(t.dense_every, end) - _multiples_below(both, end) - len(listed)


def save_count(spec: Spec) -> int:
    """``len(save_steps(spec))``, counted without listing the steps."""
    t = spec.train
    off_grid = {s for s in (*t.save_at, t.steps) if s % t.save_every}
    return t.steps // t.save_every + 1 + len(off_grid) + dense_only_count(t)


def check_for_training(spec: Spec) -> None:
    """Refuse what ``conetool train`` cannot do as the spec asks (before anything is written).

    ``load_spec`` accepts these, so that a run or a store already made with such a spec (its
    ``conetool.toml``, its manifest) still loads: only a new run is refused. Today: what
    :func:`check_training_data` refuses; dense checkpoints turned on (``dense_every`` > 0) with
    no step to save them before (``dense_until`` at most ``dense_every`` saves only step 0,
    which is always saved).
    """
    check_training_data(spec)
    t = spec.train
    if t.dense_every and t.dense_until <= t.dense_every:
        swapped = " (are the two swapped?)" if 0 < t.dense_until < t.dense_every else ""
        raise SpecError(
            f"{spec.source}: 'train.dense_every' = {t.dense_every} with 'train.dense_until' = "
            f"{t.dense_until} saves no dense checkpoint{swapped}: they are saved every "
            "dense_every steps before step dense_until, which here is step 0 only, and step 0 is "
            "always saved. Set dense_until to the step where the dense checkpoints stop (for "
            "example dense_every = 10 and dense_until = 1000: steps 0, 10, ..., 990), or "
            "dense_every = 0 for none."
        )


def check_training_data(spec: Spec) -> None:
    """Refuse a spec whose data no training on it could learn as the spec describes: a synthetic
    training split smaller than its class count (some classes would never be trained on).

    Both commands that train on the spec's data refuse it before anything is written:
    ``conetool train`` (:func:`check_for_training`) and ``conetool switch``, whose linearized
    model trains on the same data. (Dense checkpoints that save nothing concern only the
    checkpoints ``train`` writes, so ``switch`` does not refuse them.)
    """
    d = spec.data
    if d.dataset == "synthetic" and d.train_size < d.num_classes:
        raise SpecError(
            f"{spec.source}: 'data.train_size' = {d.train_size} is smaller than "
            f"'data.num_classes' = {d.num_classes}: the synthetic examples take the labels 0, 1, "
            f"2, ... in turn, so {_classes_left(d.train_size, d.num_classes)} would have no "
            f"training example and the model would never learn to predict them. Set "
            f"data.train_size to at least {d.num_classes} (usually many times it; the default "
            f"is {DataSpec().train_size}), or data.num_classes (and model.num_classes) to at "
            f"most {d.train_size}."
        )


def check_model_classes(spec: Spec, data_classes: int, *, builtin_model: bool = True) -> None:
    """Refuse a spec whose ``[model] num_classes`` is not the data set's class count
    ``data_classes`` (``[data] num_classes`` for ``synthetic``): the model needs one logit per
    class, and a model of another count would fail later, on its output or on the checkpoints,
    with a message naming neither key.

    ``builtin_model``: whether ``[model]`` is a built-in architecture, whose output count is
    ``num_classes``. A user factory may ignore it (its output is checked instead, by
    :func:`conetool.models.output_check`), so only a spec contradicting itself (synthetic data
    with another ``[data] num_classes``) is refused then.

    Raises:
        SpecError: naming the spec file, both keys and values, and the fix.
    """
    src, m, d = spec.source, spec.model, spec.data
    if m.num_classes == data_classes:
        return
    if d.dataset == "synthetic":
        raise SpecError(
            f"{src}: [model] num_classes = {m.num_classes}, but [data] num_classes = "
            f"{d.num_classes}: the synthetic data set has {d.num_classes} classes and the model "
            f"needs one output (logit) per class. Make the two agree: set [model] num_classes = "
            f"{d.num_classes}, or [data] num_classes = {m.num_classes}."
        )
    if builtin_model:
        raise SpecError(
            f"{src}: [model] num_classes = {m.num_classes}, but data set '{d.dataset}' has "
            f"{data_classes} classes, and the model needs one output (logit) per class. Set "
            f"num_classes = {data_classes} in [model]."
        )


def default_arch_note(spec: Spec) -> str:
    """``'model.toml sets no [model] arch, so the default "lenet5" was built: set arch to the
    model meant.'`` (the arch as the file would write it) when the spec's file does not write
    ``arch`` (its ``written`` keys known), for messages about the model built; else ``""``."""
    if spec.written is None or "model.arch" in spec.written:
        return ""
    file = "the spec" if spec.source == "<spec>" else spec.source
    return (
        f"{file} sets no [model] arch, so the default {toml_text(spec.model.arch)} was built: "
        "set arch to the model meant."
    )


def _steps_text(steps: list[int]) -> str:
    """``step 5`` or ``steps 5 and 9`` (``steps 1, 5 and 9``)."""
    if len(steps) == 1:
        return f"step {steps[0]}"
    return f"steps {', '.join(map(str, steps[:-1]))} and {steps[-1]}"


def _classes_left(size: int, num_classes: int) -> str:
    """The classes a synthetic split of ``size`` < ``num_classes`` examples has no example of
    (its labels are ``arange(size) % num_classes``)."""
    if num_classes - size == 1:
        return f"class {size}"
    return f"classes {size} to {num_classes - 1}"


def train_warnings(spec: Spec) -> list[str]:
    """What ``conetool train`` says at its start: :func:`recipe_warnings`, then the keys only the
    training run reads (its checkpoints, its data) that the spec sets to no effect (the
    synthetic-only keys with another data set; root and download with digits or synthetic; step
    schedule milestones all at or beyond train.steps, which only ``switch --beyond-run``
    reaches), or
    to an effect probably not meant. Each a sentence naming the keys, their values and the fix."""
    src, t, d = spec.source, spec.train, spec.data
    said = recipe_warnings(spec)
    # A milestone beyond the run with one inside it is for switch --beyond-run: said nothing of.
    # With none inside, the step schedule does nothing in this run (gamma = 1: recipe_warnings).
    if t.schedule == "step" and t.milestones and min(t.milestones) >= t.steps and t.gamma != 1:
        are = "is" if len(t.milestones) == 1 else "are all"
        said.append(
            f"{src}: 'train.milestones' = {list(t.milestones)} {are} at or beyond "
            f"'train.steps' = {t.steps}, so schedule = \"step\" does nothing in this run: its "
            f"learning rate never drops by gamma (its last update is at step {t.steps - 1}); "
            "only `conetool switch --beyond-run`, which trains past train.steps, reaches them. "
            f'Set a milestone below {t.steps} for the run to decay, or schedule = "constant" '
            "if a constant rate is meant."
        )
    if t.steps >= 2 and save_count(spec) == 2:
        every = max(1, t.steps // 10)
        than = "larger than" if t.save_every > t.steps else "equal to"
        said.append(
            f"{src}: 'train.save_every' = {t.save_every} is {than} 'train.steps' = {t.steps}, "
            f"so the run saves 2 checkpoints only, step 0 and the last ({t.steps}): their "
            "kernels give one distance, and distance reads no verdict from fewer than 8 "
            f"(its min_steps). Set save_every to a part of train.steps (for example "
            f"save_every = {every}: {t.steps // every + 1 + bool(t.steps % every)} checkpoints), "
            "or list the steps to save in save_at."
        )
    if list(t.save_at) != sorted(set(t.save_at)):
        repeated = sorted({s for s in t.save_at if t.save_at.count(s) > 1})
        how = (
            f"lists {_steps_text(repeated)} more than once"
            if repeated
            else "is not in increasing order"
        )
        said.append(
            f"{src}: 'train.save_at' = {list(t.save_at)} {how}: the run saves each listed step "
            "once, in step order, whatever the order written (a step written twice may stand "
            f"for another one meant). Write save_at = {sorted(set(t.save_at))}, with any "
            "step missing from it."
        )
    if t.dense_until and not t.dense_every:
        said.append(
            f"{src}: 'train.dense_until' = {t.dense_until} has no effect: 'train.dense_every' "
            "is 0, which turns the dense checkpoints off. Set dense_every (for example 10: "
            "every 10 steps before dense_until) for dense checkpoints, or remove dense_until."
        )
    elif t.dense_every and t.dense_until > t.dense_every:
        if not dense_only_count(t):
            said.append(
                f"{src}: 'train.dense_every' = {t.dense_every} (with 'train.dense_until' = "
                f"{t.dense_until}) adds no checkpoint: each of its steps is saved anyway "
                f"(save_every = {t.save_every}, save_at, step 0 and the last step "
                f"{t.steps}). Set dense_every below {min(t.save_every, t.steps)} and not a "
                "multiple of save_every for checkpoints between those, or dense_every = 0 for "
                "none."
            )
        elif t.dense_until > t.steps:
            said.append(
                f"{src}: 'train.dense_until' = {t.dense_until} is beyond 'train.steps' = "
                f"{t.steps}, so the whole run is saved every dense_every = {t.dense_every} "
                f"steps ({save_count(spec)} checkpoints). Set dense_until to the step "
                "where the dense checkpoints should stop, at most train.steps."
            )
    if d.dataset == "synthetic" and d.test_size < d.num_classes:
        missing = _classes_left(d.test_size, d.num_classes)
        said.append(
            f"{src}: 'data.test_size' = {d.test_size} is smaller than 'data.num_classes' = "
            f"{d.num_classes}: the synthetic examples take the labels 0, 1, 2, ... in turn, so "
            f"{missing} {'has' if missing.startswith('class ') else 'have'} no test example, "
            "and the test accuracy and loss measure the others only. Set data.test_size to at "
            f"least {d.num_classes} (the default is {DataSpec().test_size})."
        )
    if d.dataset in BUILTIN_DATASETS and d.dataset != "synthetic":
        default = DataSpec()
        for key in ("shape", "num_classes", "train_size", "test_size", "noise", "seed"):
            if getattr(d, key) != getattr(default, key):
                said.append(
                    f"{src}: 'data.{key}' = {getattr(d, key)!r} has no effect: it applies to "
                    f'dataset = "synthetic" only, and {d.dataset} is used whole, as it is. '
                    f"Remove data.{key}."
                )
    if d.dataset in ("digits", "synthetic"):
        made = {
            "digits": "read from the copy inside scikit-learn",
            "synthetic": "generated from data.seed",
        }[d.dataset]
        for key in ("root", "download"):
            if (value := getattr(d, key)) != getattr(DataSpec(), key):
                shown = _toml_value(value) if isinstance(value, bool) else repr(value)  # true
                said.append(
                    f"{src}: 'data.{key}' = {shown} has no effect: it applies to "
                    'dataset = "mnist" and "cifar10" (torchvision\'s files under root), and '
                    f"{d.dataset} is {made}: nothing is read from root or downloaded. Remove "
                    f"data.{key}."
                )
    return said


def _check_semantics(spec: Spec) -> None:
    src, m, d, p, t = spec.source, spec.model, spec.data, spec.probe, spec.train
    if ":" not in d.dataset:
        _choice(src, "data.dataset", d.dataset, BUILTIN_DATASETS, ', or "package.module:factory"')
    _positive(src, "model.num_classes", m.num_classes)
    if d.dataset == "synthetic":
        if not d.shape or any(s <= 0 for s in d.shape):
            raise SpecError(f"{src}: 'data.shape' must be a list of positive sizes, got {d.shape}.")
        _positive(src, "data.num_classes", d.num_classes)
        _positive(src, "data.train_size", d.train_size)
        _positive(src, "data.test_size", d.test_size)
        _positive(src, "data.noise", d.noise, allow_zero=True)
        _in_float32(src, "data.noise", d.noise, "the default: noise = 1.0")
    _positive(src, "probe.size", p.size)
    _choice(src, "probe.split", p.split, SPLITS)
    for key, seed in (("train.seed", t.seed), ("probe.seed", p.seed), ("data.seed", d.seed)):
        _in_seed_range(src, key, seed)
    _positive(src, "train.steps", t.steps)
    _at_most_steps(src, "train.steps", t.steps)
    _positive(src, "train.batch_size", t.batch_size)
    _choice(src, "train.optimizer", t.optimizer, OPTIMIZERS)
    _positive(src, "train.lr", t.lr)
    _positive(src, "train.momentum", t.momentum, allow_zero=True)
    _positive(src, "train.weight_decay", t.weight_decay, allow_zero=True)
    if not 0 <= t.label_smoothing < 1:
        raise SpecError(
            f"{src}: 'train.label_smoothing' must be at least 0 and below 1 (the share of each "
            f"target spread over the classes, as nn.CrossEntropyLoss takes it; 0: none), got "
            f"{t.label_smoothing!r}."
        )
    _choice(src, "train.schedule", t.schedule, SCHEDULES)
    _positive(src, "train.gamma", t.gamma)  # 0 stops training at a milestone; < 0 ascends
    for key, value, usual in (
        ("train.lr", t.lr, "SGD: lr = 0.1; Adam: lr = 1e-3"),
        ("train.momentum", t.momentum, "momentum = 0.9"),
        ("train.weight_decay", t.weight_decay, "weight_decay = 1e-4"),
        ("train.gamma", t.gamma, "gamma = 0.1"),
    ):
        _in_float32(src, key, value, usual)
    _check_schedule_peak(src, t)
    _positive(src, "train.warmup_steps", t.warmup_steps, allow_zero=True)
    _positive(src, "train.save_every", t.save_every)
    _positive(src, "train.eval_every", t.eval_every)
    _positive(src, "train.dense_every", t.dense_every, allow_zero=True)
    _positive(src, "train.dense_until", t.dense_until, allow_zero=True)
    _positive(src, "train.eval_batch_size", t.eval_batch_size)
    _steps_within_toml(src, t)
    if t.nesterov and (t.optimizer != "sgd" or t.momentum == 0):
        raise SpecError(f"{src}: 'train.nesterov' needs optimizer = \"sgd\" and momentum > 0.")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise SpecError(f"{src}: 'train.betas' must be two numbers in [0, 1), got {t.betas}.")
    if t.schedule == "step" and not t.milestones:
        raise SpecError(
            f"{src}: schedule = \"step\" needs 'train.milestones', the steps at which the learning "
            "rate is multiplied by 'gamma', for example milestones = [4000, 8000]."
        )
    if list(t.milestones) != sorted(set(t.milestones)) or any(s <= 0 for s in t.milestones):
        raise SpecError(
            f"{src}: 'train.milestones' must be increasing positive steps, got {t.milestones}."
        )
    bad_save = [s for s in t.save_at if not 0 <= s <= t.steps]
    if bad_save:
        raise SpecError(
            f"{src}: 'train.save_at' holds {bad_save}, outside 0..{t.steps} (train.steps)."
        )


def spec_differences(old: Spec, new: Spec, limit: int = 5) -> list[str]:
    """The keys whose resolved values differ between ``old`` and ``new``, each as
    ``"train.lr = 0.1 (now 0.05)"`` (a key only one has: ``(not set)``), at most ``limit`` of them
    and then ``"and N more"``."""
    return resolved_differences(old.to_dict(), new.to_dict(), limit)


def resolved_differences(a: Mapping[str, Any], b: Mapping[str, Any], limit: int = 5) -> list[str]:
    """:func:`spec_differences` of two resolved specs as plain data (:meth:`Spec.to_dict`, or a
    store manifest's ``spec``); a section that is not a table counts as empty."""
    said = []
    for name in differing_keys(a, b):
        section, key = name.split(".", 1)
        before, after = (_section(d, section) for d in (a, b))
        was, now = (toml_text(d[key]) if key in d else "(not set)" for d in (before, after))
        said.append(f"{name} = {was} (now {now})")
    if len(said) > limit:
        said = [*said[:limit], f"and {len(said) - limit} more"]
    return said


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The keys (``"train.lr"``) whose values differ between two resolved specs as plain data
    (:meth:`Spec.to_dict`, or a store manifest's ``spec``), in section order, each key once: set
    in one and not the other, or another value as :meth:`Spec.hash` sees it; a section that is
    not a table counts as empty."""
    keys = []
    for section in _SECTIONS:
        before, after = _section(a, section), _section(b, section)
        for key in [*before, *(k for k in after if k not in before)]:
            if (key in before) != (key in after) or _canonical(before[key]) != _canonical(
                after[key]
            ):
                keys.append(f"{section}.{key}")
    return keys


def _section(spec: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    """``spec[section]`` of a resolved spec as plain data, or empty where it is not a table; a
    key of :data:`LATER_KEYS` that it leaves out (a manifest written before the key existed) at
    its default, as :meth:`Spec.hash` counts it."""
    values = spec.get(section)
    values = values if isinstance(values, Mapping) else {}
    later = {k: v for where, k, v in LATER_KEYS if where == section and k not in values}
    return {**values, **later} if later else values


def _canonical(value: Any) -> str:
    """``value`` as :meth:`Spec.hash` sees it (2 and 2.0, or true and 1, differ there, not
    under ``==``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def toml_text(value: Any) -> str:
    """``value`` as a spec file writes it, for messages that name a key's value: ``0.1``,
    ``true``, ``"ten"``, ``[0.9, 0.999]``, ``{ a = 1 }`` (not Python's ``True``, ``'ten'`` or
    ``{'a': 1}``), its letters as they are (``"ünï"``, not ``"\\u00fcn\\u00ef"``); a value TOML
    cannot hold: its repr."""
    try:
        return _toml_value(value, ascii_only=False)
    except SpecError:
        return repr(value)


def _toml_value(value: Any, *, ascii_only: bool = True) -> str:
    """``value`` in TOML; ``ascii_only``: letters beyond ASCII as escapes (``spec_to_toml``'s
    bytes, kept as they were written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # a JSON string is a valid TOML basic string
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, ascii_only=ascii_only) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{k} = {_toml_value(v, ascii_only=ascii_only)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise SpecError(f"cannot write {value!r} to TOML")


def spec_to_toml(spec: Spec) -> str:
    """The resolved spec as TOML text; ``spec_from_dict(tomllib.loads(text)) == spec``."""
    lines = [f"# conetool spec (resolved; hash {spec.hash()})"]
    for name, values in spec.to_dict().items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def save_spec(spec: Spec, path: str | Path) -> None:
    """Write the resolved spec to ``path`` atomically."""
    from .io import atomic_write_text

    atomic_write_text(Path(path), spec_to_toml(spec))
