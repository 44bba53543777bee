"""Seeded fuzz of conetool's command line against its two promises: bad input gets a clear
message naming the file or flag at fault (exit 1 or 2, no traceback), and a failing command never
loses what was already computed.

    OMP_NUM_THREADS=1 python scripts/fuzz_cli.py --runs 200 --seed 0
    OMP_NUM_THREADS=1 python scripts/fuzz_cli.py --seed 0 --only 17 --keep   # one call again
    OMP_NUM_THREADS=1 python scripts/fuzz_cli.py --mode spec --runs 100 --seed 0
    OMP_NUM_THREADS=1 python scripts/fuzz_cli.py --mode ckpts --runs 300 --seed 0 --interrupt 0

It trains once, in a temporary folder, a tiny MLP on the embedded digits (12 steps, checkpoints at
0, 4, 8 and 12), computes its kernels (10 x 10), distances, embedding and one switch point into the
store ``conetool-out`` (the default ``--store``, as the calls run in that folder). Each fuzz call
starts from a fresh copy of that folder, at the path it was built in (the store names the
checkpoint folder by its absolute path: a copy elsewhere would read the original's), and runs
``python -m conetool CMD ...`` in a subprocess: a random command (every command of the app; its
options are the ones ``conetool CMD --help`` lists, read from the Typer app) with random flags and
values (negative, zero, huge, NaN, inf, empty, non-numeric, unicode, paths that do not exist, a
file where a folder is expected and the reverse, steps not stored, duplicated flags, options of
other commands). A call running past ``--timeout`` seconds gets a Ctrl-C (SIGINT), then a kill. After each call it checks:

- ``traceback``: no Python traceback in the output (``--debug`` is never passed);
- ``exit-code``: the exit code is 0, 1, 2, or 130 after a Ctrl-C; ``timeout``: the call ran
  past ``--timeout`` (a share ``--interrupt`` of the calls get a Ctrl-C after a random 0.3 to 8
  seconds on purpose: those must exit 130 or finish, leave no temporary file and lose no
  checkpoint or kernel, though results being rewritten may be gone);
- ``unnamed``: a failing call's output names a flag, an argument, a file or a value it was given;
- ``changed`` / ``lost``: every file of the folder before a failing call (but the lock files) is
  still there with the same bytes afterwards; ``lost-on-success``: a successful call without
  ``--overwrite`` removed a checkpoint or a kernel file;
- ``temporary``: no temporary file is left (a name starting with ``.`` and holding ``tmp`` or
  ``partial``, as :func:`conetool.io.temporaries_of` names them).

``--mode`` fuzzes other inputs than the flags (``scripts/fuzz_inputs.py`` makes them), with the
same checks plus ``unnamed-input``: a failing call's output names the input that was broken.

- ``spec``: a copy of the run's resolved spec with one or two keys given a value of another type,
  out of range, huge, non-finite or unicode, removed, misspelt or unknown (or a section removed,
  unknown, or not a table), passed to train, kernels, switch, inspect or distance; a refusal
  names the spec file and, for one broken key, that key;
- ``semantic``: the run's spec with one or two mistakes of meaning, each value of the right
  type (``fuzz_inputs.SEMANTIC``: a model of other classes than the data, a probe set larger
  than its split, mnist/cifar10 ``root`` empty, missing or a file, a batch larger than the train
  set, a hidden width of 0, no arch beside mlp's widths, milestones, save_every, eval_every or
  warmup beyond the run, dense steps swapped, a diverging learning rate), passed to train,
  kernels, switch or inspect; a refusal names the spec file and, for one mistake, its key;
- ``env``: a call that works, under one to three odd environment variables (CONETOOL_THREADS,
  CONETOOL_PEER_TIMEOUT, CONETOOL_DEBUG (tracebacks are then asked for), RANK, WORLD_SIZE,
  LOCAL_RANK, OMP_NUM_THREADS, COLUMNS, LC_ALL, HOME, TMPDIR, ...), sometimes without the
  fuzz's PYTHONIOENCODING;
- ``store``: one file of the store or run (a kernel, manifest.json, probe.safetensors, a results
  CSV or JSON, a checkpoint, conetool.toml, metrics.csv) emptied, truncated, bit-flipped,
  extended, deleted or, for JSON and CSV, given one wrong value or row; then a command that
  reads it; a refusal names the file.
- ``ckpts``: a checkpoint folder written the way researchers' own tools write them
  (``scripts/fuzz_ckpts.py``), from the tiny run's weights perturbed per step: safetensors
  (metadata ``step``/``global_step`` or none) or torch.save files (``.pt``, ``.pth``, ``.bin``,
  ``.ckpt``: a plain state dict, a loop's dict under ``model``/``state_dict``/
  ``model_state_dict`` with ``step``/``global_step``/``epoch``/``iteration``, Lightning's),
  ``module.``/``_orig_mod.`` prefixes, names ``step_N``, ``ckpt-N``, ``epoch=E-step=N``,
  ``model_N``, ... (zero-padded or not) or ``checkpoint-N/`` and ``step_N/`` folders, plus one to
  three of: a copy named without a step (``final.pt``, ``last.ckpt``: the same weights, others,
  a new step, no step), junk beside (optimizer state, tfevents, ``.DS_Store``, README, symlinks,
  an empty file), a step's file truncated, emptied, with a NaN, in float16 or float64, with an
  extra, missing, wrongly shaped or zero-length tensor, an EMA beside the model or alone, a
  nested subfolder; folder names with spaces and unicode. Then ``kernels`` into a fresh store
  (sometimes ``--skip-bad``, ``--steps``, ``--step-regex``, ``--dtype float64``), ``inspect`` or
  ``switch --ckpts``. The fuzz knows which weights it wrote under which step, so beside the
  checks above: ``wrong-kernel``: a stored kernel is not, within 1e-5 relative, the float64
  :func:`conetool.ntk.empirical_ntk` of those weights; ``wrong-step``: a step stored (or shown by
  ``inspect``) that was not written, or a step written but left out without its file named, or
  a copy named without a step that stores a good file's step with other weights left out
  unnamed, or that file not read beside it;
  ``wrong-source``: a step read from another file than its own; ``refused-good``: a folder of
  documented-good files only (no broken file, no ``--step-regex``) refused.

Every call runs with its data segment limited to 6 GiB (a spec asking for a huge model fails to
allocate instead of filling the machine). Each call's random choices come from ``(seed, index)``
(and the mode) only, so ``--only INDEX`` replays one.
Failures go to ``--log`` (JSON lines) with the command, exit code and output; a summary by kind
ends the run (exit 1 when any call failed). This script is not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz_inputs import Plan, env_plan, semantic_plan, spec_plan, store_plan

SPEC = """\
[model]
arch = "mlp"
num_classes = 10
widths = [8]
[data]
dataset = "digits"
[probe]
size = 10
[train]
steps = 12
batch_size = 16
save_every = 4
eval_every = 4
"""

CKPTS = "ckpts_run"
STORE = "conetool-out"
LOCKS = {".lock", ".results.lock", ".results.gate"}
TEMPORARY = re.compile(r"^\..*(tmp|partial)", re.IGNORECASE)

#: Values that are wrong almost anywhere.
HOSTILE = [
    "-1",
    "0",
    "99999999999999999999",
    "1e308",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "",
    " ",
    "abc",
    "1.5",
    "0x10",
    "１２",
    "ünïcødé",
    "💥",
    "-q",
    "--",
    "1:2:3",
    ":",
    "1e3",
    "1_0",
    "=",
    "\t",
]

#: Paths, relative to the fuzz folder (the calls' working directory).
DIRS = [CKPTS, STORE, "no_such_dir", "empty_dir", "ünï_dir", "dir with space", "new_out"]
FILES = ["tiny.toml", "note.txt", "missing.toml", "bad_syntax.toml", "unknown_key.toml"]
FILES += ["empty.toml", "negative_steps.toml", "ünï.toml", f"{CKPTS}/conetool.toml"]
PATHS = DIRS + FILES + [f"{CKPTS}/step_000004.safetensors", f"{STORE}/manifest.json"]
PATHS += [f"{STORE}/kernels", "note.txt/inside", "", ".", "..", f"{STORE}/distance/to_ref.csv"]

INTS = ["0", "1", "2", "3", "4", "8", "12", "-1", "-4", "99999999999999999999", "1e3", "nan"]
INTS += ["", "abc", "１２", "0x10", "1_0", "2.0", "+4", " 4", "4 "]
STEPS = ["0", "4", "5", "8", "12", "13", "-4", "last", "LAST", "first", "", "nan", "4.0", "1e1"]
RANGES = ["0:8", "8:0", ":", "-5:", ":-5", "a:b", "1:2:3", "", "99999999999999999999:", "5:7"]
RANGES += ["nan:inf", "4", "4:4", " : ", "0:12"]
ATS = ["4", "0,4", "0:12:4", "5", "13", "-4", "0:12:0", "0:12:-4", "", "4,,8", "1e3", "12"]
ATS += ["0:99999999999999999999:1", "4,4", "a", "8:4:1", "0:12:99999999999999999999", "last"]
FLOATS = ["0", "-1", "nan", "inf", "-inf", "1e308", "1e-300", "", "abc", "0.5", "5", "2", "1e400"]
MEMORY = ["4GiB", "0", "-1GiB", "1B", "1e400", "nan", "inf", "auto", "", "4XB", "1e3", "1KiB"]
MEMORY += ["99999999999999999999GiB", "64MiB", "1.5GiB", "GiB", "ünï"]
THREADS = ["1", "0", "-1", "auto", "9999999", "nan", "", "1.5", "AUTO", "2"]
DEVICES = ["cpu", "cuda", "cuda:0", "cuda:-1", "tpu", "", "CPU", "mps", "cuda:99999999999999999999"]
DEVICES += ["auto", "cuda:", "cpu:0"]
GROUPS = ["a=*", "=", "a=", "a=b=c", "x=nomatch*", "a=*,a=*", "", "ü=*", "a=layers.0.*", ","]
REGEXES = ["(", r"step_(\d+)", r"(?P<epoch>\d+)", "nomatch", "", "(?P<step>x)", ".*"]
REGEXES += [r"(\d+)(\d+)", r"(?P<step>\d+", "[", r"(?P<it>\d+)"]
CHOICES = {
    "--kind": ["trace", "full", "sum", "TRACE", "", "ünï", "full "],
    "--dtype": ["float32", "float64", "float16", "bfloat16", "", "double"],
    "--method": ["auto", "structured", "jacobian", "mds", "pca", "", "MDS", "tsne"],
    "--reference": ["checkpoint", "train", "", "both"],
    "--dims": ["2", "3", "1", "4", "0", "", "2.5", "nan"],
}
BY_NAME = {
    "--ref": STEPS,
    "--at": ATS,
    "--steps": RANGES + INTS,
    "--until": ["12", "4", "0", "13", "-1", "99999999999999999999", "nan", "", "8", "16"],
    "--every": INTS,
    "--dt": INTS,
    "--velocity-dt": INTS,
    "--probe-size": INTS,
    "--eval-size": INTS,
    "--top-k": INTS,
    "--seed": INTS,
    "--max-memory": MEMORY,
    "--threads": THREADS,
    "--device": DEVICES,
    "--groups": GROUPS,
    "--step-regex": REGEXES,
    "--min-drop": FLOATS,
    "--freeze-factor": FLOATS,
    "--bounded-exponent": FLOATS,
    "--drift-exponent": FLOATS,
    "--plateau-tolerance": FLOATS,
    "--lazy-level": FLOATS,
    "--store": PATHS,
    "--out": PATHS,
    "--ckpts": PATHS,
    "--spec": PATHS,
    **CHOICES,
}
#: Values that work, by option (``--out`` by command): a call starts from these, then some of
#: them are broken, so that the checks past the command line's own parsing are reached too.
VALID = {
    "--ref": ["0", "4", "8", "12", "last"],
    "--dt": ["4", "8"],
    "--velocity-dt": ["4", "8"],
    "--at": ["4", "0,8", "0:12:4", "8"],
    "--until": ["12", "8"],
    "--steps": ["0:8", "4:", ":8", "0:12"],
    "--every": ["4", "8"],
    "--probe-size": ["10", "6"],
    "--eval-size": ["5", "3"],
    "--top-k": ["3", "9"],
    "--seed": ["0", "1"],
    "--max-memory": ["1GiB", "64MiB"],
    "--threads": ["1"],
    "--device": ["cpu"],
    "--groups": ["all=*", "first=layers.0*,rest=*"],
    "--step-regex": [r"step_(\d+)"],
    "--min-drop": ["5", "2"],
    "--freeze-factor": ["5", "3"],
    "--bounded-exponent": ["0.25", "0.1"],
    "--drift-exponent": ["0.5", "0.9"],
    "--plateau-tolerance": ["0.15", "0.3"],
    "--lazy-level": ["1e-4", "0.01"],
    "--store": [STORE, STORE, "new_store"],
    "--ckpts": [CKPTS],
    "--spec": ["tiny.toml", f"{CKPTS}/conetool.toml"],
    "--kind": ["trace", "full", "sum"],
    "--dtype": ["float32", "float64"],
    "--method": ["auto", "structured", "jacobian", "mds", "pca"],
    "--reference": ["checkpoint", "train"],
    "--dims": ["2", "3"],
}
OUTS = {"train": "new_out", "report": "report_out", "demo": "demo_out"}

#: Options of one command that others do not take (passed to a command that does not).
FOREIGN = ["--ref", "--at", "--bogus", "--store", "--kind", "--top-k", "--out"]

#: Demo is the whole pipeline: its calls always shorten it, and often break it.
DEMO_STEPS = ["8", "0", "-1", "abc", "7", "nan", "", "99999999999999999999", "8"]


@dataclass(frozen=True)
class Param:
    """One parameter of a command: its first option name (or the argument's name), whether it is
    a flag, whether it is a positional argument, and whether it repeats."""

    name: str
    flag: bool
    positional: bool
    multiple: bool


@dataclass
class Outcome:
    """One call: its arguments, exit code, output, seconds, the failures found and the files
    they are about."""

    index: int
    argv: list[str]
    rc: int = 0
    output: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    interrupt: float | None = None
    failures: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    about: str = ""
    env: dict[str, str] = field(default_factory=dict)


def commands() -> dict[str, list[Param]]:
    """Every command of the app with the parameters its ``--help`` lists (``--help`` and
    ``--debug`` left out)."""
    from typer.main import get_command

    from conetool.cli import app

    group: Any = get_command(app)
    found: dict[str, list[Param]] = {}
    for name, command in group.commands.items():
        params = []
        for p in command.params:
            positional = not p.opts[0].startswith("-")
            label = p.opts[0] if not positional else (p.metavar or p.name).upper()
            if label in ("--help", "--debug"):
                continue
            flag = bool(getattr(p, "is_flag", False))
            params.append(Param(label, flag, positional, bool(p.multiple)))
        found[name] = params
    return found


#: The data segment a call may use (bytes): a spec asking for a huge model fails to allocate
#: instead of filling the shared machine's memory.
MEMORY_LIMIT = 6 << 30


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def conetool(
    folder: Path,
    argv: list[str],
    timeout: float,
    interrupt: float | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[int, str, float, bool]:
    """Run ``python -m conetool *argv`` in ``folder``: (exit code, output, seconds, stopped).
    Past ``interrupt`` seconds when given, else past ``timeout``: SIGINT to its process group (a
    Ctrl-C; ``stopped`` is then true), 30 s later SIGKILL. ``extra_env`` is added to the
    environment (an empty value of PYTHONIOENCODING removes it)."""
    env = {k: v for k, v in os.environ.items() if k != "CONETOOL_DEBUG"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="100", PYTHONIOENCODING="utf-8")
    env.update(extra_env or {})
    if env.get("PYTHONIOENCODING") == "":
        del env["PYTHONIOENCODING"]
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conetool", *argv],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_limit_memory,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout if interrupt is None else interrupt)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    return proc.returncode, out.decode("utf-8", "replace"), time.monotonic() - start, timed_out


def build(folder: Path, timeout: float) -> None:
    """The tiny run and its store in ``folder``, plus the files the fuzz points at."""
    (folder / "tiny.toml").write_text(SPEC, encoding="utf-8")
    (folder / "ünï.toml").write_text(SPEC, encoding="utf-8")
    (folder / "note.txt").write_text("not a spec\n", encoding="utf-8")
    (folder / "bad_syntax.toml").write_text("[model\narch = \n", encoding="utf-8")
    (folder / "unknown_key.toml").write_text(SPEC + "colour = 3\n", encoding="utf-8")
    (folder / "empty.toml").write_text("", encoding="utf-8")
    (folder / "negative_steps.toml").write_text(SPEC.replace("steps = 12", "steps = -12"))
    for name in ("empty_dir", "ünï_dir", "dir with space"):
        (folder / name).mkdir()
    steps = [
        ["train", "tiny.toml", "--out", CKPTS, "-q"],
        ["kernels", CKPTS, "-q", "--device", "cpu"],
        ["distance", "-q"],
        ["embed", "-q"],
        ["switch", "--at", "4", "-q", "--device", "cpu"],
    ]
    for argv in steps:
        rc, out, seconds, _ = conetool(folder, argv, timeout)
        print(f"setup: conetool {' '.join(argv)}: exit {rc} in {seconds:.1f}s", flush=True)
        if rc != 0:
            raise SystemExit(f"setup failed: conetool {' '.join(argv)}\n{out}")


def valid(rng: random.Random, command: str, name: str) -> str:
    """A value for option ``name`` of ``command`` that works (or, with no such value known, a
    hostile one)."""
    if name == "--out":
        return OUTS.get(command, "new_out")
    pool = VALID.get(name)
    return rng.choice(pool) if pool else value(rng, name)


def value(rng: random.Random, name: str) -> str:
    """A value for option ``name``: mostly from its own pool, else a hostile one or a path."""
    pool = BY_NAME.get(name)
    roll = rng.random()
    if pool is not None and roll < 0.7:
        return rng.choice(pool)
    return rng.choice(HOSTILE if roll < 0.88 else PATHS)


def invocation(rng: random.Random, table: dict[str, list[Param]]) -> list[str]:
    """A random command line (without the program name)."""
    weights = {"demo": 0.3, "train": 0.8}
    names = sorted(table)
    command = rng.choices(names, [weights.get(n, 1.0) for n in names])[0]
    params = table[command]
    argv = [command]
    for p in params:
        if p.positional and rng.random() < 0.9:
            pool = [CKPTS] * 8 + PATHS if p.name == "CKPTS" else ["tiny.toml"] * 8 + PATHS
            argv.append(rng.choice(pool))
            if rng.random() < 0.05:
                argv.append(rng.choice(PATHS))
    options = [p for p in params if not p.positional]
    chosen = rng.sample(options, k=min(len(options), rng.randint(0, 4)))
    if command == "switch" and rng.random() < 0.8:
        chosen += [p for p in options if p.name == "--at" and p not in chosen]
    if command == "demo":
        chosen = [p for p in chosen if p.name != "--steps"]
        argv += ["--steps", rng.choice(DEMO_STEPS), "--probe-size", rng.choice(["2", "3", "0"])]
        if not any(p.name == "--out" for p in chosen):
            argv += ["--out", rng.choice(["demo_out"] * 3 + PATHS)]
        chosen = [p for p in chosen if p.name != "--probe-size"]
    valued = [p for p in chosen if not p.flag]
    broken = rng.sample(valued, k=min(len(valued), rng.choices([0, 1, 2], [0.2, 0.6, 0.2])[0]))
    for p in chosen:
        times = 2 if rng.random() < 0.12 else 1
        for _ in range(times):
            if p.flag:
                argv.append(p.name)
            else:
                pick = value(rng, p.name) if p in broken else valid(rng, command, p.name)
                argv += [p.name, pick]
    if rng.random() < 0.6 and any(p.name == "--quiet" for p in options):
        argv.append(rng.choice(["-q", "--quiet"]))
    if rng.random() < 0.06:
        argv += [rng.choice(FOREIGN), rng.choice(HOSTILE + STEPS)]
    if rng.random() < 0.03:
        argv.append(rng.choice(HOSTILE))
    return argv


def snapshot(folder: Path) -> dict[str, str]:
    """The sha256 of every file under ``folder`` (lock files left out), by relative path."""
    hashes = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name not in LOCKS:
            hashes[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def named(output: str, argv: list[str], table: dict[str, list[Param]]) -> bool:
    """Whether ``output`` names a flag, an argument, a file or a value of the call."""
    if re.search(r"(?<![\w-])--?[a-zA-Z][\w-]*", output):
        return True
    words = {p.name for params in table.values() for p in params if p.positional}
    words |= {"manifest.json", "conetool.toml", ".safetensors", "store", "spec", "checkpoint"}
    words |= {a for a in argv[1:] if len(a.strip()) >= 3}
    words |= {f"'{a}'" for a in argv[1:]}
    return any(w in output for w in words)


def check(
    outcome: Outcome, before: dict[str, str], after: dict[str, str], table: Any, plan: Plan
) -> None:
    """Fill ``outcome.failures`` from the call's result and the folder before and after."""
    rc, out, argv = outcome.rc, outcome.output, outcome.argv
    if "Traceback (most recent call last)" in out and not plan.debug:
        outcome.failures.append("traceback")
    if rc == -signal.SIGINT and outcome.timed_out:
        rc = 130  # killed by the Ctrl-C itself (Python's shutdown restores SIGINT's default)
    if rc not in (0, 1, 2, 130) or (rc == 130 and not outcome.timed_out):
        outcome.failures.append("exit-code")
    if outcome.timed_out and outcome.interrupt is None:
        outcome.failures.append("timeout")
    if rc not in (0, 130) and not named(out, argv, table) and not any(k in out for k in plan.env):
        outcome.failures.append("unnamed")  # (a refused environment variable, named, is named)
    missing = [n for n in plan.names if n not in out]
    if rc not in (0, 130) and missing:
        outcome.failures.append("unnamed-input")
        outcome.paths += missing
    lost = [p for p in before if p not in after]
    changed = [p for p, h in before.items() if p in after and after[p] != h]
    kept = (f"{CKPTS}/step_", f"{STORE}/kernels/")
    if rc == 130:  # Ctrl-C: results being rewritten may be gone, what was computed may not
        lost = [p for p in lost if p.startswith(kept) and "--overwrite" not in argv]
        changed = []
    if rc != 0:
        outcome.failures += ["lost"] * bool(lost) + ["changed"] * bool(changed)
        outcome.paths += lost + changed
    elif "--overwrite" not in argv and any(p.startswith(kept) for p in lost):
        outcome.failures.append("lost-on-success")
        outcome.paths += [p for p in lost if p.startswith(kept)]
    temporary = [p for p in after if TEMPORARY.match(Path(p).name)]
    if temporary:
        outcome.failures.append("temporary")
        outcome.paths += temporary


def call(index: int, seed: int, pristine: Path, work: Path, table: Any, options: Any) -> Outcome:
    """Fuzz call ``index``: a fresh copy of ``pristine`` (built in ``work``) in ``work``, one command (a Ctrl-C after
    a random time in a share ``options.interrupt`` of the calls), the checks."""
    mode = options.mode
    rng = random.Random(f"{seed}-{index}" if mode == "flags" else f"{mode}-{seed}-{index}")
    if mode == "flags":
        plan = Plan(invocation(rng, table))
    elif mode == "spec":
        plan = spec_plan(rng, (pristine / CKPTS / "conetool.toml").read_text(encoding="utf-8"))
    elif mode == "semantic":
        plan = semantic_plan(rng, (pristine / CKPTS / "conetool.toml").read_text(encoding="utf-8"))
    elif mode == "env":
        plan = env_plan(rng)
    elif mode == "ckpts":
        from fuzz_ckpts import base_weights, ckpts_plan

        global _BASE
        _BASE = _BASE or base_weights(pristine)
        layout, argv = ckpts_plan(rng, _BASE)
        files: dict[str, bytes | None] = dict(layout.files)
        plan = Plan(argv, files, about="; ".join(layout.about), links=layout.links, layout=layout)
    else:
        plan = store_plan(rng, pristine)
    interrupt = rng.uniform(0.3, 8.0) if rng.random() < options.interrupt else None
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work, symlinks=True)
    for name, data in plan.files.items():
        if data is None:
            (work / name).unlink()
        else:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
    for name, target in plan.links.items():
        (work / name).symlink_to(target)
    before = snapshot(work)
    outcome = Outcome(index, plan.argv, interrupt=interrupt, about=plan.about, env=plan.env)
    ran = conetool(work, plan.argv, options.timeout, interrupt, plan.env)
    outcome.rc, outcome.output, outcome.seconds, outcome.timed_out = ran
    check(outcome, before, snapshot(work), table, plan)
    if plan.layout is not None and not outcome.timed_out:
        from fuzz_ckpts import check_ckpts

        for found in check_ckpts(plan.argv, outcome.rc, outcome.output, work, plan.layout):
            outcome.failures.append(found.split(":")[0])
            outcome.paths.append(found)
    return outcome


#: The tiny run's weights (``--mode ckpts``), read once.
_BASE: Any = None


def built_for(pristine: Path, work: Path) -> bool:
    """Whether ``pristine`` holds the run and store built in ``work`` (the store's manifest names
    the checkpoint folder by its absolute path: built elsewhere, the calls in ``work`` would read
    and be checked against the checkpoints of that other folder, not their own copy)."""
    try:
        manifest = json.loads((pristine / STORE / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(manifest.get("checkpoints") == str((work / CKPTS).resolve()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="fuzz calls (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calls (default 0)")
    parser.add_argument("--start", type=int, default=0, help="index of the first call")
    parser.add_argument("--only", type=int, help="run only the call of this index")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per call")
    parser.add_argument(
        "--interrupt", type=float, default=0.15, help="share of calls given a Ctrl-C (0.15)"
    )
    parser.add_argument(
        "--mode",
        choices=["flags", "spec", "semantic", "env", "store", "ckpts"],
        default="flags",
        help="what is fuzzed: the flags (default), spec files (values of the wrong type or "
        "range; semantic: well-typed values wrong in meaning), environment variables, "
        "corrupted store and run files, or checkpoint folders written as other tools do",
    )
    parser.add_argument("--log", type=Path, help="JSON lines of the failing calls")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--show", action="store_true", help="print every call's output")
    parser.add_argument("--folder", type=Path, help="use (and keep) this folder instead")
    args = parser.parse_args(argv)
    table = commands()
    base = args.folder or Path(tempfile.mkdtemp(prefix="conetool-fuzz-"))
    pristine, work = base / "pristine", base / "work"
    if not built_for(pristine, work):
        for folder in (pristine, work):
            if folder.exists():
                shutil.rmtree(folder)
        work.mkdir(parents=True)
        build(work, timeout=600)
        work.rename(pristine)
    indices = [args.only] if args.only is not None else range(args.start, args.start + args.runs)
    kinds: Counter[str] = Counter()
    failing = 0
    try:
        for i in indices:
            outcome = call(i, args.seed, pristine, work, table, args)
            status = ",".join(outcome.failures) or "ok"
            shown = " ".join(repr(a) if not a or " " in a else a for a in outcome.argv)
            ctrl_c = "" if outcome.interrupt is None else f" ctrl-c@{outcome.interrupt:.1f}s"
            print(
                f"[{i}] exit {outcome.rc} {outcome.seconds:.1f}s{ctrl_c} {status}: {shown}",
                flush=True,
            )
            if outcome.about:
                print(f"    input: {outcome.about}", flush=True)
            if outcome.paths:
                print(f"    files: {', '.join(outcome.paths)}", flush=True)
            if args.show and not outcome.failures:
                print("    " + outcome.output[-2000:].replace("\n", "\n    "), flush=True)
            if outcome.failures:
                failing += 1
                kinds.update(outcome.failures)
                if args.only is not None or args.log is None or args.show:
                    print("    " + outcome.output[-2000:].replace("\n", "\n    "), flush=True)
                if args.log is not None:
                    with args.log.open("a", encoding="utf-8") as log:
                        log.write(json.dumps(outcome.__dict__, ensure_ascii=False) + "\n")
    finally:
        if not (args.keep or args.folder):
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"folder kept: {base}")
    print(f"{len(indices)} calls, {failing} failing; by kind: {dict(sorted(kinds.items()))}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
