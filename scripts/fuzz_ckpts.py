"""Checkpoint folders written the way researchers' own tools write them, for scripts/fuzz_cli.py's
``--mode ckpts``: a :class:`Layout` of files made from the tiny run's weights with one to three
random variations (formats, names, prefixes, copies, junk, broken files, subfolders), and the
ground truth a call is checked against: which weights were written under which step.

Every choice comes from a seeded ``random.Random``, so a call replays. The documented rules this
follows are the README's "Checkpoint directories": a step the file stores wins over its name,
copies named without a step (``final.pt``) are read only as a step no other file gives, files in
a subfolder not named for a step are not read, and ``--skip-bad`` leaves an unusable file out
with a warning naming it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

CKPTS = "ckpts_run"

#: Steps a layout may hold (the tiny run's spec trains 12 steps: switch takes those up to 12).
STEP_POOL = [0, 4, 8, 12, 16, 100, 1000, 2500]
#: Flat names by scheme: (stem of step n with its number text, the --step-regex that reads it).
FLAT = {
    "step_": ("step_{n}", r"step_(\d+)"),
    "step=": ("step={n}", r"step=(\d+)"),
    "ckpt-": ("ckpt-{n}", r"ckpt-(\d+)"),
    "model_": ("model_{n}", r"model_(\d+)"),
    "epoch-step": ("epoch={e}-step={n}", r"step=(\d+)"),
    "global_step": ("global_step{n}", r"global_step(\d+)"),
    "iter_": ("iter_{n}", r"iter_(\d+)"),
    "bare": ("{n}", r"^(\d+)\."),
}
FOLDERS = {
    "checkpoint-": ("checkpoint-{n}", r"checkpoint-(\d+)"),
    "step_dir": ("step_{n}", r"step_(\d+)"),
}
TORCH_EXTS = [".pt", ".pth", ".bin", ".ckpt"]
COPIES = ["final.pt", "best.pt", "last.ckpt", "latest.pt", "final.safetensors"]
FOLDER_NAMES = ["my_ckpts", "my ckpts", "chkpts ünï", "ckpts"]
VARIATIONS = [
    "copy",
    "optimizer",
    "tfevents",
    "ds_store",
    "readme",
    "symlink",
    "empty",
    "truncated",
    "nan",
    "float16",
    "float64",
    "extra_key",
    "missing_key",
    "wrong_shape",
    "zero_length",
    "nested",
    "ema",
    "folder_other_step",
]

#: The variations that rewrite one good step's file (:meth:`Maker.pick`): a README instead when
#: every step's file is broken already (extra_key on a truncated step raised KeyError).
VARY_A_STEP = {
    "empty",
    "truncated",
    "nan",
    "float16",
    "float64",
    "extra_key",
    "missing_key",
    "wrong_shape",
    "zero_length",
    "ema",
    "folder_other_step",
}

State = dict[str, torch.Tensor]


@dataclass
class Layout:
    """A checkpoint folder to write and what reading it must give.

    ``files``: relative path (under the fuzz folder) -> bytes; ``links``: relative path -> link
    target (relative to the link's folder); ``truth``: step -> the weights written for it (float64,
    unprefixed keys), each to be read as that step; ``sources``: step -> the file or folder
    (relative to ``folder``) that holds it; ``maybe``: steps that may be read (then with these
    weights) or be left out with a message naming their file; ``broken``: step -> the unusable
    file written for it (never read; named when left out); ``never``: steps that must not be read;
    ``refusable``: junk a call may refuse, naming it (a dangling ``.pt`` link: a checkpoint
    being rotated, as conetool cannot tell); ``stepless``: (copy storing no step with other weights than the last step's, that step),
    to be warned of when that step is read; ``others``: (copy storing a step another file
    gives, with other weights than that file's, that step): to be warned of, and that file read,
    when it is good; ``copies``: step -> the copy named without a step that alone gives it (not read under
    --step-regex); ``regex``: a --step-regex that reads the main files' steps from their names; ``about``: what
    was done; ``folder_steps``: (folder, its step, the other step its file stores): the folder's
    step is read, and the stored one is to be warned of (naming the folder and the stored step);
    ``bad_entries``: copies named without a step whose step entry is no step (``'last'``): never
    read, always named (a warning or a note) by kernels and inspect without ``--step-regex``."""

    folder: str
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    truth: dict[int, State] = field(default_factory=dict)
    sources: dict[int, str] = field(default_factory=dict)
    maybe: dict[int, tuple[list[State], str]] = field(default_factory=dict)
    broken: dict[int, str] = field(default_factory=dict)
    never: set[int] = field(default_factory=set)
    copies: dict[int, str] = field(default_factory=dict)
    stepless: list[tuple[str, int]] = field(default_factory=list)
    others: list[tuple[str, int]] = field(default_factory=list)
    refusable: list[str] = field(default_factory=list)
    folder_steps: list[tuple[str, int, int]] = field(default_factory=list)
    bad_entries: list[str] = field(default_factory=list)
    regex: str = ""
    about: list[str] = field(default_factory=list)


def base_weights(pristine: Path) -> list[State]:
    """The tiny run's four checkpoints (steps 0, 4, 8, 12), float32 state dicts."""
    return [load_file(str(pristine / CKPTS / f"step_{s:06d}.safetensors")) for s in (0, 4, 8, 12)]


def weights_for(base: list[State], step: int, salt: int = 0) -> State:
    """Distinct float32 weights for ``step``: one of the run's checkpoints, perturbed by a noise
    seeded by the step (and ``salt``, for a second set of the same step)."""
    source = base[(step // 4 + salt) % len(base)]
    gen = torch.Generator().manual_seed(step * 7919 + salt)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in source.items()}


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def exact(state: State) -> State:
    """``state`` as the reference reads it: float64, unprefixed (zero-length and shape-broken
    states are never references)."""
    return {k: v.detach().to(torch.float64).clone() for k, v in state.items()}


class Maker:
    """Builds one :class:`Layout` from ``rng``."""

    def __init__(self, rng: random.Random, base: list[State]) -> None:
        self.rng = rng
        self.base = base
        self.layout = Layout(rng.choice(FOLDER_NAMES))
        self.folder_scheme = rng.random() < 0.25
        names = FOLDERS if self.folder_scheme else FLAT
        self.scheme = rng.choice(sorted(names))
        self.template, self.layout.regex = names[self.scheme]
        self.pad = rng.choice([0, 0, 6, 8]) if self.scheme != "checkpoint-" else 0
        self.ext = rng.choice([".safetensors"] * 2 + TORCH_EXTS)
        self.format = rng.choice(["plain", "dict", "dict", "lightning"])
        self.model_key = rng.choice(["model", "state_dict", "model_state_dict"])
        self.step_key = rng.choice(["step", "global_step", "epoch", "iteration", None])
        self.prefix = rng.choice(["", "", "", "module.", "_orig_mod."])
        self.meta = rng.choice(["step", "global_step", None])
        #: step -> the relative path of its weights file (inside a folder for folder schemes)
        self.main: dict[int, str] = {}
        self.stores_step: dict[int, bool] = {}
        #: copies that store a step no other file gives: step -> name
        self.copies: dict[int, str] = {}
        #: copies that store the step of another file: (step, weights, name)
        self.copied: list[tuple[int, State, str]] = []

    # -- names and bytes ------------------------------------------------------------------------

    def number(self, n: int) -> str:
        return f"{n:0{self.pad}d}" if self.pad else str(n)

    def main_name(self, n: int) -> str:
        """The relative path (under the layout's folder) of step ``n``'s file."""
        stem = self.template.format(n=self.number(n), e=n // 4)
        if not self.folder_scheme:
            return stem + self.ext
        if self.scheme == "checkpoint-":
            inner = "model.safetensors" if self.ext == ".safetensors" else "pytorch_model.bin"
        else:
            inner = (
                "model.safetensors"
                if self.ext == ".safetensors"
                else "model" + (self.ext if self.ext in (".pt", ".pth") else ".pt")
            )
        return f"{stem}/{inner}"

    def encode(self, state: State, step: int | None, name: str, *, fmt: str | None = None) -> bytes:
        """``state`` written as ``name``'s format would hold it (with ``step`` stored when the
        layout stores steps and ``step`` is given)."""
        fmt = fmt or self.format
        keyed = {self.prefix + k: v.contiguous() for k, v in state.items()}
        if name.endswith(".safetensors"):
            meta = {} if step is None or self.meta is None else {self.meta: str(step)}
            return safetensors_bytes(keyed, metadata=meta)
        if fmt == "plain" or name.endswith(("pytorch_model.bin",)):
            return torch_bytes(keyed)
        if fmt == "lightning":
            doc: dict[str, object] = {
                "state_dict": {"model." + k: v for k, v in state.items()},
                "epoch": (step or 0) // 4,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
                "callbacks": {},
            }
            if step is not None:
                doc["global_step"] = step
            return torch_bytes(doc)
        opt = {"state": {}, "param_groups": [{"lr": 0.1, "params": list(range(len(state)))}]}
        doc = {self.model_key: keyed, "optimizer": opt}
        if step is not None and self.step_key is not None:
            doc[self.step_key] = step // 4 if self.step_key == "epoch" else step
        return torch_bytes(doc)

    def stores(self, name: str) -> bool:
        """Whether a file of this layout named ``name`` stores its step."""
        if name.endswith(".safetensors"):
            return self.meta is not None
        if self.format == "plain" or name.endswith("pytorch_model.bin"):
            return False
        if self.format == "lightning":
            return True
        return self.step_key in ("step", "global_step")

    def put(self, rel: str, data: bytes) -> None:
        self.layout.files[f"{self.layout.folder}/{rel}"] = data

    # -- the run --------------------------------------------------------------------------------

    def build(self) -> Layout:
        rng, layout = self.rng, self.layout
        steps = sorted(rng.sample(STEP_POOL, k=rng.randint(2, 4)))
        layout.about.append(
            f"{layout.folder!r}: {self.scheme} {self.ext} {self.format} pad={self.pad} "
            f"key={self.model_key} step_key={self.step_key} meta={self.meta} "
            f"prefix={self.prefix!r} steps={steps}"
        )
        for n in steps:
            name = self.main_name(n)
            state = weights_for(self.base, n)
            self.main[n] = name
            self.stores_step[n] = self.stores(name)
            self.put(name, self.encode(state, n, name))
            layout.truth[n] = exact(state)
            layout.sources[n] = name.split("/")[0] if self.folder_scheme else name
        if self.scheme == "checkpoint-" and rng.random() < 0.5:
            for n in steps:
                state_json = f'{{"global_step": {n}, "log_history": []}}'.encode()
                self.put(f"{self.main[n].split('/')[0]}/trainer_state.json", state_json)
            layout.about.append("trainer_state.json in each checkpoint-N/")
        for variation in rng.sample(VARIATIONS, k=rng.choice([1, 1, 2, 3])):
            if variation in VARY_A_STEP and not self.good():  # every step's file broken
                variation = "readme"
            getattr(self, "vary_" + variation)()
        self.finish()
        layout.copies = dict(self.copies)
        return layout

    def good(self) -> list[int]:
        """The layout's steps whose main file is still good (not a step a copy named without a
        step alone gives: that has no main file to vary)."""
        return sorted(step for step in self.layout.truth if step in self.main)

    def pick(self) -> int:
        """One of :meth:`good` (build gives a variation of a step only when there is one)."""
        return self.rng.choice(self.good())

    def replace(self, n: int, data: bytes, why: str, *, broken: bool) -> None:
        """Step ``n``'s main file rewritten as ``data``; a broken one is never read."""
        self.put(self.main[n], data)
        self.layout.about.append(f"step {n} ({self.main[n]}): {why}")
        if broken:
            self.layout.truth.pop(n, None)
            self.layout.broken[n] = self.layout.sources[n]

    # -- variations -----------------------------------------------------------------------------

    def vary_copy(self) -> None:
        """A copy named without a step: the last step's weights again or other ones, storing
        that step, a new step, or none."""
        rng, layout = self.rng, self.layout
        name = rng.choice([c for c in COPIES if f"{layout.folder}/{c}" not in layout.files])
        last = max(self.main)
        kind = rng.choice(["same", "other", "new", "nostep", "last same", "last other"])
        step = max(STEP_POOL) + rng.choice([4, 500]) if kind == "new" else last
        salt = {"same": 0, "other": 1, "new": 0, "nostep": 2, "last same": 0, "last other": 4}
        state = weights_for(self.base, step, salt=salt[kind])
        # "last ...": a step entry that is no step, {"step": "last"}
        entry: object = "last" if kind.startswith("last ") else step
        if name.endswith(".safetensors"):
            meta = {} if kind == "nostep" else {"step": str(entry)}
            self.put(name, safetensors_bytes(state, metadata=meta))
        else:
            doc: dict[str, object] = {"model_state_dict": state}
            if kind != "nostep":
                doc["step"] = entry
            self.put(name, torch_bytes(doc))
        layout.about.append(f"{name}: copy ({kind}) of step {step}")
        if kind.startswith("last "):
            layout.bad_entries.append(name)
            if kind == "last other" and "best" not in name:
                layout.stepless.append((name, step))
        elif kind == "new":
            layout.truth[step] = exact(state)
            layout.sources[step] = name
            self.copies[step] = name
        elif kind != "nostep":
            self.copied.append((step, exact(state), name))
            if kind == "other":
                layout.others.append((name, step))
        elif "best" not in name:
            layout.stepless.append((name, step))

    def finish(self) -> None:
        """A copy storing the step of a file that is broken, or whose file may be refused, may be
        read in its place (``--skip-bad``)."""
        for step, state, _name in self.copied:
            layout = self.layout
            if step in layout.broken:
                layout.maybe[step] = ([state], layout.broken[step])
            elif step in layout.maybe:
                layout.maybe[step][0].append(state)

    def vary_optimizer(self) -> None:
        opt = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}
        self.put("optimizer.pt", torch_bytes(opt))
        self.layout.about.append("optimizer.pt beside")

    def vary_tfevents(self) -> None:
        self.put("events.out.tfevents.1764584040.host.123.0", bytes(self.rng.randbytes(300)))
        self.layout.about.append("tfevents file beside")

    def vary_ds_store(self) -> None:
        self.put(".DS_Store", b"\x00\x00\x00\x01Bud1" + self.rng.randbytes(100))
        self.layout.about.append(".DS_Store beside")

    def vary_readme(self) -> None:
        self.put(self.rng.choice(["README.md", "notes ünï.md"]), b"# my run\nlr 0.1\n")
        self.layout.about.append("README beside")

    def vary_symlink(self) -> None:
        n = max(self.main)
        name = self.rng.choice(["latest.pt", "dangling.pt", "current"])
        target = self.main[n] if name != "dangling.pt" else "nowhere.pt"
        if name == "current":
            target = self.main[n].split("/")[0] if self.folder_scheme else self.main[n]
        self.layout.links[f"{self.layout.folder}/{name}"] = target
        if name == "dangling.pt":
            self.layout.refusable.append(name)
        self.layout.about.append(f"symlink {name} -> {target}")

    def vary_empty(self) -> None:
        if self.rng.random() < 0.5:
            self.put("notes.txt", b"")
            self.layout.about.append("empty notes.txt")
            return
        n = self.pick()
        self.replace(n, b"", "emptied", broken=True)

    def vary_truncated(self) -> None:
        n = self.pick()
        data = self.layout.files[f"{self.layout.folder}/{self.main[n]}"]
        cut = self.rng.randrange(1, len(data))
        self.replace(n, data[:cut], f"truncated to {cut} of {len(data)} bytes", broken=True)

    def vary_nan(self) -> None:
        n = self.pick()
        state = weights_for(self.base, n)
        key = self.rng.choice(sorted(state))
        state[key].view(-1)[0] = float("nan")
        self.replace(n, self.encode(state, n, self.main[n]), f"NaN in {key}", broken=True)

    def vary_float16(self) -> None:
        n = self.pick()
        state = {k: v.half() for k, v in weights_for(self.base, n).items()}
        self.replace(n, self.encode(state, n, self.main[n]), "saved in float16", broken=False)
        self.layout.truth[n] = exact(state)

    def vary_float64(self) -> None:
        n = self.pick()
        state = {k: v.double() for k, v in weights_for(self.base, n).items()}
        self.replace(n, self.encode(state, n, self.main[n]), "saved in float64", broken=False)
        self.layout.truth[n] = exact(state)

    def vary_extra_key(self) -> None:
        n = self.pick()
        state = dict(weights_for(self.base, n))
        state["fc_layers.0.num_batches_tracked"] = torch.tensor(5)
        self.replace(
            n, self.encode(state, n, self.main[n]), "extra num_batches_tracked", broken=False
        )
        truth = self.layout.truth.pop(n)
        self.layout.maybe[n] = ([truth], self.layout.sources[n])

    def vary_missing_key(self) -> None:
        n = self.pick()
        state = dict(weights_for(self.base, n))
        key = self.rng.choice(sorted(state))
        del state[key]
        self.replace(n, self.encode(state, n, self.main[n]), f"{key} missing", broken=True)

    def vary_wrong_shape(self) -> None:
        n = self.pick()
        state = dict(weights_for(self.base, n))
        key = self.rng.choice(sorted(state))
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
        self.replace(n, self.encode(state, n, self.main[n]), f"{key} wrongly shaped", broken=True)

    def vary_zero_length(self) -> None:
        n = self.pick()
        state = dict(weights_for(self.base, n))
        key = self.rng.choice(sorted(state))
        state[key] = torch.zeros(0)
        self.replace(n, self.encode(state, n, self.main[n]), f"{key} zero-length", broken=True)

    def vary_nested(self) -> None:
        sub = self.rng.choice(["old", "backup ünï", "archive"])
        n = max(STEP_POOL) + 8
        state = weights_for(self.base, n)
        name = f"{sub}/step_{n}.pt"
        self.put(name, torch_bytes({"model_state_dict": state, "step": n}))
        self.layout.never.add(n)
        self.layout.about.append(f"nested {name}")

    def vary_ema(self) -> None:
        """An EMA of the weights beside the model (or alone) in one step's dict."""
        n = self.pick()
        if self.main[n].endswith(".safetensors") or self.main[n].endswith("pytorch_model.bin"):
            return self.vary_readme()
        state = weights_for(self.base, n)
        ema = weights_for(self.base, n, salt=3)
        if self.rng.random() < 0.7:
            doc = {"model": state, "ema": ema, "step": n}
            self.replace(n, torch_bytes(doc), "model beside its ema", broken=False)
            self.layout.truth[n] = exact(state)
        else:
            doc = {"ema": ema, "step": n}
            self.replace(n, torch_bytes(doc), "ema alone", broken=False)
            self.layout.truth.pop(n, None)
            self.layout.maybe[n] = ([exact(ema)], self.layout.sources[n])
        self.stores_step[n] = True
        return None

    def vary_folder_other_step(self) -> None:
        """A step folder (``step_4/model.pt``) whose file stores another step (a loop's stale
        counter, or another folder's step): the folder's step is read, with a warning."""
        n = self.pick()
        name = self.main[n]
        if not self.folder_scheme or name.endswith("pytorch_model.bin"):
            return self.vary_readme()
        others = [s for s in self.layout.truth if s != n]
        stored = self.rng.choice([n * 100 + 3, n + 1, *others])
        state = weights_for(self.base, n)
        if name.endswith(".safetensors"):
            data = safetensors_bytes(state, metadata={self.meta or "step": str(stored)})
        else:
            data = torch_bytes({"model_state_dict": state, "step": stored})
        self.replace(n, data, f"stores step {stored}", broken=False)
        self.layout.truth[n] = exact(state)
        self.stores_step[n] = True
        self.layout.folder_steps.append((name.split("/")[0], n, stored))
        return None


def make_layout(rng: random.Random, base: list[State]) -> Layout:
    """A random checkpoint folder of the tiny run's model, with its ground truth."""
    return Maker(rng, base).build()


# --- the call and its checks ------------------------------------------------------------------

FRESH = "fresh_store"


def ckpts_argv(rng: random.Random, layout: Layout) -> list[str]:
    """A kernels, inspect or switch call on ``layout``'s folder (with the tiny run's spec)."""
    folder, spec = layout.folder, ["--spec", "tiny.toml"]
    cpu = ["--device", "cpu", "--threads", "1"]
    command = rng.choice(["kernels"] * 6 + ["inspect"] * 2 + ["switch"] * 2)
    regex = ["--step-regex", layout.regex] if rng.random() < 0.15 else []
    if command == "inspect":
        return ["inspect", folder, *spec, *(["--verify"] if rng.random() < 0.5 else []), *regex]
    if command == "switch":
        early = [s for s in layout.truth if s < 12] or [0, 4]  # (t before the spec's T = 12)
        at = str(rng.choice(early))
        return [
            "switch",
            "--ckpts",
            folder,
            *spec,
            "--at",
            at,
            "--store",
            FRESH,
            "-q",
            *cpu,
            *regex,
        ]
    argv = ["kernels", folder, *spec, "--store", FRESH, *cpu, *regex]
    if rng.random() < 0.5:
        argv.append("-q")
    if rng.random() < 0.4:
        argv.append("--skip-bad")
    if rng.random() < 0.3:
        argv += ["--dtype", "float64"]
    if rng.random() < 0.2:
        lo, hi = sorted(rng.sample(STEP_POOL, 2))
        argv += ["--steps", f"{lo}:{hi}"]
    return argv


def selection(argv: list[str]) -> tuple[int, int]:
    """The --steps range of ``argv`` (both ends included), else everything."""
    if "--steps" in argv:
        lo, hi = argv[argv.index("--steps") + 1].split(":")
        return int(lo), int(hi)
    return 0, 1 << 60


def squeezed(text: str) -> str:
    """``text`` without whitespace (names wrap across lines in the output)."""
    return "".join(text.split())


def said(output: str, name: str) -> bool:
    """Whether ``output`` names ``name`` (a file or folder; its last part suffices)."""
    return squeezed(Path(name).name) in squeezed(output)


def kernel_error(store: Path, step: int, options: list[State]) -> float:
    """The smallest relative Frobenius error of the kernel stored for ``step`` against the
    empirical NTK, in float64, of each of ``options`` (the weights it may have been read from)."""
    from fuzz_cli import SPEC

    from conetool.ntk import empirical_ntk
    from conetool.pipeline.resolve import model_for
    from conetool.spec import spec_from_toml

    probe = load_file(str(store / "probe.safetensors"))["inputs"].double()
    got = load_file(str(store / "kernels" / f"step_{step:06d}.safetensors"))["kernel"].double()
    errors = []
    for state in options:
        model = model_for(spec_from_toml(SPEC)).double()
        model.load_state_dict(state)
        want = empirical_ntk(model, probe, kind="trace", dtype=torch.float64)
        errors.append(float((got - want).norm() / want.norm()))
    return min(errors)


def check_ckpts(argv: list[str], rc: int, output: str, work: Path, layout: Layout) -> list[str]:
    """The ground-truth checks of one ckpts call: (kinds of failure, details)."""
    found: list[str] = []
    regex = "--step-regex" in argv
    truth = dict(layout.truth)
    never = set(layout.never)
    if regex:  # copies named without a step are not read under --step-regex
        for step in layout.copies:
            truth.pop(step, None)
            never.add(step)
    lo, hi = selection(argv)
    benign = not layout.broken and not layout.maybe and not regex and not layout.refusable
    benign = benign and any(lo <= step <= hi for step in truth)  # (else nothing is selected)
    command = argv[0]
    stored: dict[int, dict[str, object]] = {}
    at = argv[argv.index("--at") + 1] if "--at" in argv else ""
    if rc == 1 and benign and (command != "switch" or (at.isdigit() and int(at) in truth)):
        found.append("refused-good: a layout of documented-good files was refused")
    if rc != 0:
        return found
    if command == "kernels":
        import json

        store = work / FRESH
        manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
        stored = {int(k): v for k, v in manifest.get("steps", {}).items()}
        for step, record in sorted(stored.items()):
            if not lo <= step <= hi:
                found.append(f"wrong-step: step {step} stored outside --steps {lo}:{hi}")
            if step in truth:
                options, source = [truth[step]], layout.sources[step]
            elif step in layout.maybe:
                options, source = layout.maybe[step]
            else:
                found.append(
                    f"wrong-step: step {step} stored, not written (from {record.get('source')})"
                )
                continue
            err = kernel_error(store, step, options)
            if err > 1e-5:
                found.append(
                    f"wrong-kernel: step {step} off by {err:.2e} (read {record.get('source')})"
                )
            sources = " ".join(record.get("source") or [])
            if step in truth and squeezed(source) not in squeezed(sources):
                found.append(f"wrong-source: step {step} read from {sources}, written as {source}")
        for step in sorted(set(truth) | set(layout.broken) | set(layout.maybe)):
            if lo <= step <= hi and step not in stored:
                name = layout.sources.get(step) or layout.broken.get(step) or layout.maybe[step][1]
                if not said(output, name):
                    found.append(f"wrong-step: step {step} ({name}) missing without a word")
    if command in ("kernels", "inspect") and not regex:
        for name, step in layout.stepless:
            if step in truth and lo <= step <= hi and not said(output, name):
                found.append(f"wrong-step: {name} (no step, other weights) left out without a word")
        for name, step in layout.others:
            if step in truth and lo <= step <= hi and not said(output, name):
                found.append(f"wrong-step: {name} (step {step}, other weights) left out unsaid")
            if step in truth and lo <= step <= hi and command == "kernels" and step not in stored:
                found.append(f"wrong-step: step {step}'s own file lost beside its copy {name}")
    if command in ("kernels", "inspect"):
        for folder, step, stored in layout.folder_steps:
            if (
                step in truth
                and lo <= step <= hi
                and not (said(output, folder) and f"storesstep{stored}" in squeezed(output))
            ):
                found.append(f"wrong-step: {folder} (storing step {stored}) not warned of")
    if command in ("kernels", "inspect") and not regex:
        for name in layout.bad_entries:
            if "-q" not in argv and not (said(output, name) and "'last'" in output):
                found.append(f"wrong-step: {name} (step entry 'last') left out, entry unsaid")
    if command == "inspect":
        import re

        shown = {int(m) for m in re.findall(r"^\s*[│|]\s*(\d+)\s*[│|]", output, re.M)}
        for step in sorted(shown):
            if step in never or not (
                step in truth or step in layout.maybe or step in layout.broken
            ):
                found.append(f"wrong-step: inspect shows step {step}, not written")
        for step, name in sorted(layout.sources.items()):
            if step in truth and step not in shown and not said(output, name):
                found.append(f"wrong-step: inspect leaves out step {step} ({name}) without a word")
    return found


def ckpts_plan(rng: random.Random, base: list[State]) -> tuple[Layout, list[str]]:
    """A random layout and a call on it."""
    layout = make_layout(rng, base)
    return layout, ckpts_argv(rng, layout)
