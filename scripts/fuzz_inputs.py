"""Inputs other than flags for scripts/fuzz_cli.py: spec files, environment variables, and
corrupted store and run files. Each ``*_plan`` function returns a :class:`Plan` (the command line,
the files to write into the call's folder before it runs, the environment to add, and the words a
failing call's message must hold) from a seeded ``random.Random`` only, so a call replays.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CKPTS = "ckpts_run"
STORE = "conetool-out"


@dataclass
class Plan:
    """One fuzz call: ``argv`` (without the program name); ``files`` (relative path -> bytes, or
    None to delete) written into the call's folder first; ``env`` added to its environment;
    ``names`` the words a failing call's output must hold (the spec file and key, the corrupted
    file); ``about`` what was broken, for the log; ``debug`` when CONETOOL_DEBUG asks for
    tracebacks; ``links`` (relative path -> target) symbolic links made after the files;
    ``layout`` the ground truth of a checkpoint folder (``--mode ckpts``)."""

    argv: list[str]
    files: dict[str, bytes | None] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    about: str = ""
    debug: bool = False
    links: dict[str, str] = field(default_factory=dict)
    layout: Any = None


# --- spec files -------------------------------------------------------------------------------

#: TOML values that are wrong for most keys (of another type, out of range, huge, non-finite).
SPEC_VALUES: list[Any] = [
    "abc",
    "",
    "ünïcødé",
    "💥",
    "12",
    True,
    False,
    0,
    -1,
    1,
    2,
    2**63 - 1,
    -(2**63),
    10**30,
    1.5,
    -0.5,
    0.0,
    1e308,
    math.inf,
    -math.inf,
    math.nan,
    1e-300,
    [],
    [0],
    [-1],
    [2**31],
    [10**30],
    ["a"],
    [[1]],
    [1.5],
    [math.nan],
    {"a": 1},
    {},
]
#: Keys a spec may hold by mistake (misspelt, of another section, or unknown anywhere).
UNKNOWN_KEYS = ["colour", "lr", "steps", "arch", "ünï", "widths", "step", "batchsize", "Arch"]


def toml_value(value: Any) -> str:
    """``value`` as TOML text (strings with JSON's escapes, which TOML shares)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(doc: dict[str, Any]) -> str:
    """A spec document (sections of keys, or a top-level value where a mutation put one)."""
    lines = [f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if not is_table(v)]
    for name, section in doc.items():
        if is_table(section):
            lines.append(f"[{json.dumps(name, ensure_ascii=False)}]")
            lines += [
                f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in section.items()
            ]
    return "\n".join(lines) + "\n"


def is_table(value: Any) -> bool:
    return isinstance(value, dict) and value is not None


def mutate_spec(rng: random.Random, doc: dict[str, Any]) -> tuple[str, str | None]:
    """Break ``doc`` once, in place: (what was done, the key a refusal must name or None)."""
    sections = [s for s in doc if is_table(doc[s])]
    name = rng.choice(sections)
    section = doc[name]
    roll = rng.random()
    if roll < 0.55 and section:
        key = rng.choice(sorted(section))
        section[key] = rng.choice(SPEC_VALUES)
        return f"[{name}] {key} = {toml_value(section[key])}", key
    if roll < 0.65 and section:
        key = rng.choice(sorted(section))
        del section[key]
        return f"[{name}] {key} removed", None
    if roll < 0.8:
        key = rng.choice(UNKNOWN_KEYS + [k + "s" for k in section] + [k[:-1] for k in section if k])
        if key in section or not key:
            key = "colour"
        section[key] = rng.choice(SPEC_VALUES[:12])
        return (
            f"[{name}] unknown {key} = {toml_value(section[key])}",
            key if name != "model" else None,
        )
    if roll < 0.87:
        del doc[name]
        return f"[{name}] removed", None
    if roll < 0.93:
        doc[name] = rng.choice(SPEC_VALUES[:20])
        return f"{name} = {toml_value(doc[name])} (not a table)", name
    extra = rng.choice(["colour", "optim", "ünï", "Model", "training"])
    doc[extra] = {"x": 1}
    return f"[{extra}] unknown section", extra


def spec_plan(rng: random.Random, resolved: str) -> Plan:
    """A broken copy of the run's resolved spec (``resolved``, its conetool.toml text) passed to
    train, kernels, switch, inspect or distance."""
    doc: dict[str, Any] = tomllib.loads(resolved)
    if rng.random() < 0.2:
        doc["data"]["dataset"] = "synthetic"  # its shape and sizes count then
    done, keys = [], []
    for _ in range(rng.choices([1, 2], [0.75, 0.25])[0]):
        what, key = mutate_spec(rng, doc)
        done.append(what)
        if key is not None:
            keys.append(key)
    spec = rng.choice(["fuzz.toml", "fuzz ünï.toml", "spec.toml"])
    files: dict[str, bytes | None] = {spec: toml_text(doc).encode("utf-8")}
    command = rng.choice(["train"] * 4 + ["kernels"] * 3 + ["switch", "inspect", "distance"])
    cpu = ["--device", "cpu"]
    argv = {
        "train": ["train", spec, "--out", "new_out", "-q", *cpu],
        "kernels": ["kernels", CKPTS, "--spec", spec, "-q", *cpu],
        "switch": ["switch", "--at", "4", "--spec", spec, "-q", *cpu],
        "inspect": ["inspect", CKPTS, "--spec", spec],
        "distance": ["distance", "--spec", spec, "-q"],
    }[command]
    if command == "kernels" and rng.random() < 0.5:
        argv += ["--store", "new_store"]  # a store of its own: the spec is read, not compared
    names = [spec] + (keys[:1] if len(done) == 1 else [])
    return Plan(argv, files, names=names, about="; ".join(done))


# --- spec files wrong in meaning -------------------------------------------------------------

#: Mistakes of meaning a spec of well-typed values can make, each (what is done, the word a
#: refusal must name, the change: section -> key -> value, None removing the key). A call that
#: succeeds (a warning, or a spec that works) is fine; one that fails must name the word.
SEMANTIC: list[tuple[str, str, dict[str, dict[str, Any]]]] = [
    (
        "synthetic data of 2 classes, a model of 10",
        "num_classes",
        {"data": {"dataset": "synthetic", "num_classes": 2}},
    ),
    ("a model of 3 classes on digits (10)", "num_classes", {"model": {"num_classes": 3}}),
    ("a probe set larger than the train split", "probe.size", {"probe": {"size": 5000}}),
    (
        "a probe set larger than the test split",
        "probe.size",
        {"probe": {"size": 400, "split": "test"}},
    ),
    (
        "a synthetic probe set larger than its test split",
        "probe.size",
        {"data": {"dataset": "synthetic", "test_size": 20}, "probe": {"size": 30, "split": "test"}},
    ),
    ("mnist under an empty folder", "data", {"data": {"dataset": "mnist", "root": "empty_dir"}}),
    (
        "cifar10 under a folder that does not exist",
        "data",
        {"data": {"dataset": "cifar10", "root": "no_such_dir"}},
    ),
    ("mnist with root a file", "data", {"data": {"dataset": "mnist", "root": "note.txt"}}),
    (
        "cifar10 with root a file, download = true",
        "data",
        {"data": {"dataset": "cifar10", "root": "note.txt", "download": True}},
    ),
    ("a batch larger than the train set", "batch_size", {"train": {"batch_size": 5000}}),
    ("a hidden layer of width 0", "widths", {"model": {"widths": [0]}}),
    ("a negative hidden width", "widths", {"model": {"widths": [8, -2]}}),
    ("no arch, mlp's widths", "arch", {"model": {"arch": None}}),
    ("lenet5 with mlp's widths", "widths", {"model": {"arch": "lenet5"}}),
    (
        "milestones beyond the run",
        "milestones",
        {"train": {"schedule": "step", "milestones": [100]}},
    ),
    ("save_every beyond the run", "save_every", {"train": {"save_every": 100}}),
    ("eval_every beyond the run", "eval_every", {"train": {"eval_every": 100}}),
    ("warmup longer than the run", "warmup_steps", {"train": {"warmup_steps": 100}}),
    (
        "dense_every and dense_until swapped",
        "dense_until",
        {"train": {"dense_every": 8, "dense_until": 4}},
    ),
    ("a learning rate that diverges", "train.lr", {"train": {"lr": 1e30}}),
    ("save_at beyond the run", "save_at", {"train": {"save_at": [50]}}),
]


def semantic_plan(rng: random.Random, resolved: str) -> Plan:
    """The run's resolved spec (``resolved``) with one or two mistakes of meaning from
    :data:`SEMANTIC`, passed to train, kernels (into a store of its own), switch (a sweep of its
    own) or inspect; a refusal names the spec file and, for one mistake, its word."""
    doc: dict[str, Any] = tomllib.loads(resolved)
    picked = rng.sample(SEMANTIC, rng.choices([1, 2], [0.8, 0.2])[0])
    for _, _, change in picked:
        for section, values in change.items():
            for key, value in values.items():
                if value is None:
                    doc[section].pop(key, None)
                else:
                    doc[section][key] = value
    spec = rng.choice(["fuzz.toml", "fuzz ünï.toml", "spec.toml"])
    files: dict[str, bytes | None] = {spec: toml_text(doc).encode("utf-8")}
    command = rng.choice(["train"] * 3 + ["kernels"] * 3 + ["switch", "inspect"])
    cpu = ["--device", "cpu"]
    sweep = ["--ckpts", CKPTS, "--spec", spec, "--store", "sweep"]
    argv = {
        "train": ["train", spec, "--out", "new_out", "-q", *cpu],
        "kernels": ["kernels", CKPTS, "--spec", spec, "--store", "new_store", "-q", *cpu],
        "switch": ["switch", "--at", "4", *sweep, "-q", *cpu],
        "inspect": ["inspect", CKPTS, "--spec", spec],
    }[command]
    names = [spec] + ([picked[0][1]] if len(picked) == 1 else [])
    return Plan(argv, files, names=names, about="; ".join(what for what, _, _ in picked))


# --- environment variables --------------------------------------------------------------------

#: Commands that work in the fuzz folder, run under a broken environment.
GOOD_CALLS = [
    ["kernels", CKPTS, "-q", "--device", "cpu"],
    ["kernels", CKPTS, "--store", "new_store", "-q", "--device", "cpu"],
    ["distance", "-q"],
    ["embed", "-q"],
    ["spectrum", "-q"],
    ["switch", "--at", "8", "-q", "--device", "cpu"],
    ["inspect", CKPTS],
    ["report", "--out", "report_out", "-q"],
    ["train", "tiny.toml", "--out", "new_out", "-q", "--device", "cpu"],
]
#: Variables conetool (or what it runs on) reads, with values to try. No huge thread count that
#: could be taken (CONETOOL_THREADS past 4 per CPU is refused; OMP_NUM_THREADS is PyTorch's).
ENV_VALUES = {
    "CONETOOL_THREADS": ["0", "-1", "abc", "", " ", "1.5", "１", "nan", "auto", "1", " 2 ", "9"],
    "CONETOOL_THREADS ": ["99999999999999999999", "1e3", "0x2", "+1", "2_0"],
    "CONETOOL_PEER_TIMEOUT": ["0", "-1", "abc", "nan", "inf", "1e308", "2", "1e-9", "", "💥"],
    "CONETOOL_DEBUG": ["1", "0", "yes", "", "no"],
    "RANK": ["0", "1", "-1", "abc", "", "99999999999999999999", " 0 "],
    "WORLD_SIZE": ["1", "2", "0", "-1", "abc", "", "99999999999999999999"],
    "LOCAL_RANK": ["0", "1", "-1", "abc", "", "99999999999999999999"],
    "OMP_NUM_THREADS": ["1", "abc", "0", "-1", "1"],
    "COLUMNS": ["0", "-1", "abc", "1", "5", "100000", ""],
    "LINES": ["0", "-1", "abc"],
    "LC_ALL": ["C", "POSIX", "xx_XX.UTF-8"],
    "TERM": ["dumb", "", "xterm-256color"],
    "NO_COLOR": ["1", ""],
    "HOME": ["/nonexistent", "", "ünï"],
    "TMPDIR": ["/nonexistent", "note.txt"],
    "MPLCONFIGDIR": ["/nonexistent", "note.txt"],
    "CUDA_VISIBLE_DEVICES": ["", "-1", "abc", "0"],
}


def env_plan(rng: random.Random) -> Plan:
    """A call that works, under one to three variables set to odd values (sometimes without
    the fuzz's PYTHONIOENCODING, so that the locale decides the output's encoding)."""
    argv = list(rng.choice(GOOD_CALLS))
    env: dict[str, str] = {}
    for name in rng.sample(sorted(ENV_VALUES), k=rng.choice([1, 1, 2, 3])):
        env[name.strip()] = rng.choice(ENV_VALUES[name])
    if rng.random() < 0.2:
        env["PYTHONIOENCODING"] = ""  # (empty: Python's own choice)
    if env.get("WORLD_SIZE") not in (None, "", "1", "0", "-1", "abc"):
        env.setdefault("CONETOOL_PEER_TIMEOUT", "5")  # a rank alone waits that long, not 300 s
    debug = env.get("CONETOOL_DEBUG", "") not in ("", "0")
    about = " ".join(f"{k}={v!r}" for k, v in env.items())
    return Plan(argv, env=env, about=about, debug=debug)


# --- corrupted store and run files ------------------------------------------------------------

#: Files of the fuzz folder to corrupt, with the commands that read them.
READERS = {
    f"{STORE}/manifest.json": ["kernels", "distance", "embed", "spectrum", "switch", "report"],
    f"{STORE}/probe.safetensors": ["kernels", "switch"],
    f"{STORE}/kernels/step_000004.safetensors": ["kernels", "distance", "embed", "spectrum"],
    f"{STORE}/kernels/step_000012.safetensors": ["distance", "embed", "report"],
    f"{STORE}/distance/to_ref.csv": ["report", "distance"],
    f"{STORE}/distance/adjacent.csv": ["report"],
    f"{STORE}/distance/summary.json": ["report", "distance"],
    f"{STORE}/distance/matrix.npz": ["report", "embed"],
    f"{STORE}/distance/noise.json": ["distance", "report"],
    f"{STORE}/embed/coords.csv": ["report", "embed"],
    f"{STORE}/embed/summary.json": ["report"],
    f"{STORE}/switch/results.csv": ["switch", "report"],
    f"{STORE}/switch/results.json": ["switch", "report"],
    f"{STORE}/switch/at_000004.json": ["switch", "report"],
    f"{CKPTS}/step_000004.safetensors": ["kernels", "switch", "inspect"],
    f"{CKPTS}/step_000004.optim.safetensors": ["switch", "inspect", "train"],
    f"{CKPTS}/conetool.toml": ["kernels", "switch", "inspect", "train"],
    f"{CKPTS}/metrics.csv": ["report", "train", "switch"],
}
CORRUPT_CALLS = {
    "kernels": ["kernels", CKPTS, "-q", "--device", "cpu"],
    "distance": ["distance", "-q"],
    "embed": ["embed", "-q"],
    "spectrum": ["spectrum", "-q"],
    "switch": ["switch", "--at", "4,8", "-q", "--device", "cpu"],
    "report": ["report", "--out", "report_out", "-q"],
    "inspect": ["inspect", CKPTS, "--verify"],
    "train": [
        "train",
        f"{CKPTS}/conetool.toml",
        "--out",
        CKPTS,
        "--resume",
        "-q",
        "--device",
        "cpu",
    ],
}


def corrupt_json(rng: random.Random, data: Any) -> tuple[Any, str]:
    """``data`` with one value deep inside replaced or removed: (new data, what was done)."""
    path: list[Any] = []
    node = data
    while isinstance(node, dict | list) and node and rng.random() < 0.75:
        key = rng.choice(sorted(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        parent, node = node, node[key]
    if not path:
        return rng.choice([[], "x", None, 3, {}]), "whole document replaced"
    new = rng.choice(["abc", -1, None, [], {}, 1e308, True, "ünï", 10**30, 0])
    if rng.random() < 0.3 and isinstance(parent, dict):
        del parent[path[-1]]
        return data, f"{'/'.join(map(str, path))} removed"
    parent[path[-1]] = new
    return data, f"{'/'.join(map(str, path))} = {new!r}"


def corrupt_bytes(rng: random.Random, raw: bytes, name: str) -> tuple[bytes | None, str]:
    """``raw`` broken one way: (new bytes or None for deleted, what was done)."""
    roll = rng.random()
    if name.endswith(".json") and roll < 0.4:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if data is not None:
            new, what = corrupt_json(rng, data)
            return json.dumps(new).encode(), what
    if name.endswith(".csv") and roll < 0.4:
        lines = raw.decode("utf-8", "replace").splitlines()
        row = rng.randrange(len(lines)) if lines else 0
        cells = lines[row].split(",") if lines else [""]
        cells[rng.randrange(len(cells))] = rng.choice(["abc", "", "nan", "-1", "1e400", "ünï"])
        if lines:
            lines[row] = ",".join(cells)
        if rng.random() < 0.3 and lines:
            del lines[row]
            return ("\n".join(lines) + "\n").encode(), f"line {row + 1} removed"
        return ("\n".join(lines) + "\n").encode(), f"line {row + 1} = {','.join(cells)!r}"
    roll = rng.random()
    if roll < 0.2:
        return b"", "emptied"
    if roll < 0.4:
        cut = rng.randrange(1, max(2, len(raw)))
        return raw[:cut], f"truncated to {cut} of {len(raw)} bytes"
    if roll < 0.7 and raw:
        data = bytearray(raw)
        spots = [rng.randrange(len(data)) for _ in range(rng.choice([1, 2, 8]))]
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        where = "header" if min(spots) < 8 + 200 else "data"
        return bytes(data), f"bits flipped at {sorted(spots)} ({where})"
    if roll < 0.8:
        return raw + b"\x00garbage\xff", "garbage appended"
    if roll < 0.9:
        return None, "deleted"
    return rng.choice([b"{}", b"not a file\n", b"\xff\xfe\x00", "ünï".encode()]), "replaced"


def store_plan(rng: random.Random, folder: Path) -> Plan:
    """One file of the fuzz folder's store or run (``folder``, the pristine copy) broken, then a
    command that reads it. A refusal must name the file."""
    target = rng.choice(sorted(READERS))
    raw = (folder / target).read_bytes()
    new, what = corrupt_bytes(rng, raw, target)
    command = rng.choice(READERS[target])
    argv = list(CORRUPT_CALLS[command])
    return Plan(argv, {target: new}, names=[Path(target).name], about=f"{target}: {what}")
