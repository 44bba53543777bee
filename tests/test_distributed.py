"""Sharing `kernels` and `switch` among torchrun ranks (gloo on the CPU, over loopback).

End to end: two ranks give the same store as one process; a rank killed mid-run leaves a valid
store that a single process completes; an error on one rank surfaces once, with exit code 1.
The pieces alone: `shard`, `Ranks`, and `Job` with ranks simulated by threads over one store.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conetool import paths
from conetool.distributed import Job, PeerFailedError, PeerInterruptedError, Ranks, shard
from conetool.errors import ConetoolError, StoreError
from conetool.pipeline import kernels
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict, spec_to_toml
from conetool.store import StepRecord, Store, StoreIdentity
from conetool.training import train

SPEC = {
    "model": {"arch": "mlp", "num_classes": 3, "widths": [6], "activation": "tanh"},
    "data": {
        "dataset": "synthetic",
        "shape": [4],
        "num_classes": 3,
        "train_size": 48,
        "test_size": 12,
    },
    "probe": {"size": 6},
    "train": {
        "steps": 10,
        "batch_size": 8,
        "lr": 0.2,
        "momentum": 0.9,
        "save_every": 2,
        "eval_every": 5,
    },
}
STEPS = [0, 2, 4, 6, 8, 10]

# A model whose forward pass sleeps when SLOW_MODEL_DELAY is set: it makes each kernel take a
# known time in the torchrun processes, so that a rank can be killed in the middle of the run.
SLOW_MODEL = """
import os, time
import torch
from torch import nn

if os.environ.get("SLOW_MODEL_IMPORT_MARK"):  # the import itself blocks, after saying so
    open(os.environ["SLOW_MODEL_IMPORT_MARK"] + os.environ.get("RANK", ""), "w").close()
    time.sleep(60)

class Slow(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        gate = os.environ.get("SLOW_MODEL_GATE")
        # the first pass with gradients (a point's training, not the no-grad look at a factory's
        # outputs when the sweep is prepared) waits for the gate, saying so
        if gate and torch.is_grad_enabled() and not os.path.exists(gate):
            open(gate + ".waiting" + os.environ.get("RANK", ""), "w").close()
            while not os.path.exists(gate):
                time.sleep(0.01)
        time.sleep(float(os.environ.get("SLOW_MODEL_DELAY", "0")))
        forbidden = os.environ.get("SLOW_MODEL_FORBIDDEN")  # rank 1's kernels (not the model
        if forbidden and os.environ.get("RANK") == "1" and x.shape[0] != 2:  # check's batch)
            while not os.path.exists(forbidden + ".go"):  # meet a forbidden file system
                time.sleep(0.01)
            raise PermissionError(13, "Permission denied", forbidden)
        return self.fc(x.flatten(1))

def make(num_classes):
    return Slow(num_classes)
"""


# ---------------------------------------------------------------------------------- helpers
def torchrun(*args: str) -> list[str]:
    """The command line of `torchrun --nproc-per-node 2 -m conetool ARGS` on a free port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--monitor-interval",
        "0.05",
        "-m",
        "conetool",
        *args,
    ]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def run_torchrun(*args: str, cwd: Path, timeout: float = 120, **extra: str):
    return subprocess.run(
        torchrun(*args),
        cwd=cwd,
        env=environment(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(store: Path) -> dict[str, dict]:
    """manifest.json's per-step records as written (no adoption), without the timing."""
    manifest = json.loads(paths.manifest(store).read_text())
    return {
        step: {k: v for k, v in r.items() if k != "seconds"}
        for step, r in manifest["steps"].items()
    }


def rank_pid(parent: int, rank: int) -> int | None:
    """The process id of torchrun worker ``rank`` (a child of ``parent``), from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and f"RANK={rank}".encode() in (entry / "environ").read_bytes().split(
                b"\0"
            ):
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ckpts"
    train(spec_from_dict(SPEC, source="tiny.toml"), out)
    return out


# ---------------------------------------------------------------------------------- shard
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("count", [0, 1, 5, 6, 13])
def test_shards_are_disjoint_covering_and_balanced(world, count):
    units = [100 * i for i in range(count)][::-1]  # any order in, sorted shares out
    weights = [float(count - i) for i in range(count)]
    for w in (None, weights):
        shares = [shard(units, r, world, weights=w) for r in range(world)]
        flat = [u for s in shares for u in s]
        assert sorted(flat) == sorted(units) and len(set(flat)) == len(flat)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert all(s == sorted(s) for s in shares)
        assert shares == [shard(units, r, world, weights=w) for r in range(world)]


def test_round_robin_and_snake_order():
    assert shard([0, 100, 200, 300, 400], 0, 2) == [0, 200, 400]
    assert shard([400, 300, 200, 100, 0], 1, 2) == [100, 300]
    # Switch points t with cost T - t (T = 1000): heaviest first, dealt 0, 1, 1, 0.
    at = [0, 100, 200, 300]
    cost = [1000 - t for t in at]
    assert shard(at, 0, 2, weights=cost) == [0, 300] and shard(at, 1, 2, weights=cost) == [100, 200]
    with pytest.raises(ValueError):
        shard(at, 2, 2)


def test_ranks_from_environment():
    assert Ranks.from_env({}) == Ranks(0, 1, 0) and not Ranks().is_distributed
    ranks = Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ranks.rank, ranks.world_size, ranks.local_rank, ranks.is_main) == (3, 4, 1, False)
    with pytest.raises(ConetoolError, match="RANK='x' is not an integer"):
        Ranks.from_env({"RANK": "x"})
    with pytest.raises(ConetoolError, match="not a valid torchrun placement"):
        Ranks.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    # Was "environment RANK=0, WORLD_SIZE=0, LOCAL_RANK=0 is not ...": values never set shown as
    # set (fuzz_cli --mode env --seed 300 --only 4)
    with pytest.raises(ConetoolError) as info:
        Ranks.from_env({"WORLD_SIZE": "0"})
    assert str(info.value).startswith(
        "environment RANK unset, WORLD_SIZE=0, LOCAL_RANK unset is not a valid torchrun placement "
        "(WORLD_SIZE >= 1,"
    ), str(info.value)
    if not torch.cuda.is_available():
        assert ranks.device("auto") == torch.device("cpu")
        with pytest.raises(ConetoolError, match="no usable CUDA"):
            ranks.device("cuda")


# ---------------------------------------------------------------------------------- Job
def fail(message: str):
    raise ConetoolError(message)


def on_threads(world: int, body) -> list:
    """Run ``body(job)`` as ranks 0..world-1 on threads sharing one key-value store; each
    thread's result, or the exception it raised."""
    store = dist.HashStore()
    results: list = [None] * world

    def rank(r: int) -> None:
        job = Job("t", Ranks(r, world, r), torch.device("cpu"), dist.PrefixStore("t", store))
        try:
            results[r] = body(job)
        except Exception as exc:
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return results


def test_agree_raises_each_distinct_error_once():
    def same(job):
        return job.agree(lambda: fail("bad spec"))

    first, second, third = on_threads(3, same)
    assert type(first) is ConetoolError and str(first) == "bad spec"
    assert isinstance(second, PeerFailedError) and isinstance(third, PeerFailedError)

    def only_rank_2(job):
        def work():
            if job.rank == 2:
                raise ConetoolError("disk full on node 2")
            return job.rank

        return job.agree(work)

    first, second, third = on_threads(3, only_rank_2)
    assert isinstance(first, PeerFailedError) and "rank 2 failed: disk full" in str(first)
    assert isinstance(second, PeerFailedError) and str(third) == "disk full on node 2"


def test_main_first_gather_broadcast_and_shared_bar():
    order: list[int] = []

    class Task:
        def __init__(self):
            self.done = 0

        def advance(self, amount=1, **fields):
            self.done += amount

        def close(self):
            pass

    def body(job):
        job.agree(
            lambda: (time.sleep(0.2 if job.is_main else 0), order.append(job.rank)), main_first=True
        )
        todo = job.broadcast([5, 6, 7, 8, 9] if job.is_main else None)
        task = Task()
        bar = job.bar(task)
        for _ in job.shard(todo):
            if job.rank == 1:
                time.sleep(0.1)  # the slow rank: rank 0 counts its units while it waits
            bar.advance(1)
        everyone = job.gather(job.shard(todo), while_waiting=bar.poll)
        bar.close()
        return everyone, task.done

    (gathered0, shown0), (gathered1, shown1) = on_threads(2, body)
    assert order == [0, 1]  # rank 1 started only after rank 0 finished
    assert gathered0 == gathered1 == [[5, 7, 9], [6, 8]]
    assert shown0 == 5 and shown1 == 0  # rank 0's bar shows both ranks' units; rank 1's nothing


def test_ranks_stopped_by_an_interrupted_rank_say_which_one_was():
    told = threading.Event()

    def body(job):
        if job.rank == 1:  # a Ctrl-C that reached rank 1 alone
            job.abandon(KeyboardInterrupt())
            return None
        if job.rank == 2:
            told.wait(10)  # rank 0 has stopped, and said so in the store, before rank 2 looks
        try:
            return job.gather(job.rank)
        except PeerInterruptedError as exc:
            job.abandon(exc)  # as distributed.job does on its way out
            told.set()
            raise

    first, _, third = on_threads(3, body)
    for stopped in (first, third):  # rank 2 still learns of rank 1, not of rank 0's stop
        assert isinstance(stopped, PeerInterruptedError), stopped
        assert str(stopped).startswith("rank 1 was interrupted (Ctrl-C), so every rank stopped.")
    assert isinstance(first, PeerFailedError)  # a library caller's except PeerFailedError holds


def test_settle_hands_every_ranks_word_to_rank_0_and_its_decision_to_all():
    def body(job):
        if job.rank == 1:
            time.sleep(0.2)  # the slow rank: rank 0 decides only once it has spoken too
        return job.settle(f"r{job.rank}", lambda words: "+".join(words))

    assert on_threads(3, body) == ["r0+r1+r2"] * 3

    def failing(job):  # rank 0's decision fails: it raises, and the others stop with it
        try:
            return job.settle(job.rank, lambda words: fail("cannot clear"))
        except ConetoolError as exc:
            job.abandon(exc)  # as distributed.job does on its way out
            raise

    first, second = on_threads(2, failing)
    assert str(first) == "cannot clear"
    assert isinstance(second, PeerFailedError) and "rank 0 failed" in str(second)


def test_single_process_job_is_plain():
    job = Job("t", Ranks(), torch.device("cpu"), None)
    assert job.agree(lambda: 7) == 7 and job.broadcast([1]) == [1] and job.gather(3) == [3]
    assert job.shard([3, 1, 2]) == [1, 2, 3] and not job.peer_failed()
    with pytest.raises(ConetoolError, match="boom"):
        job.agree(lambda: fail("boom"))


# ---------------------------------------------------------------------------------- the store
def test_joined_store_writes_kernels_only_and_the_owner_merges_them(tmp_path):
    ident = StoreIdentity("s", "p", "trace", "float32")

    def record(step, fingerprint):
        return StepRecord(step, [f"/ck/{step}"], 10, fingerprint, paths.kernel_relative(step),
                          1.0, 0.1)  # fmt: skip

    owner = Store.open_for_writing(tmp_path / "s", ident, {"checkpoints": "/ck"})
    owner.write_kernel(record(0, "a"), torch.eye(2))
    owner.flush()  # manifest.json now holds step 0 (write_kernel may leave it for later)
    joined = Store.join(tmp_path / "s")
    joined.write_kernel(record(5, "a"), 2 * torch.eye(2))
    assert list(json.loads(paths.manifest(tmp_path / "s").read_text())["steps"]) == ["0"]
    assert owner.adopt_kernel_files() == [5] and owner.adopt_kernel_files() == []
    assert Store.open(tmp_path / "s").record(5) == record(5, "a")
    # Another rank recomputes step 5 (its checkpoint changed): the file's record wins.
    Store.join(tmp_path / "s").write_kernel(record(5, "b"), 3 * torch.eye(2))
    assert owner.adopt_kernel_files() == [5]
    again = Store.open(tmp_path / "s")
    assert again.record(5) == record(5, "b") and torch.equal(again.load_kernel(5), 3 * torch.eye(2))
    with pytest.raises(StoreError, match="file system that all nodes share"):
        Store.join(tmp_path / "elsewhere")


def test_readme_and_slurm_example_agree():
    root = Path(__file__).resolve().parents[1]
    script = root / "examples" / "slurm_kernels.sh"
    text = script.read_text()
    for flag in (
        "#SBATCH --nodes",
        "--rdzv-backend c10d",
        "--rdzv-endpoint",
        "-m conetool kernels",
    ):
        assert flag in text
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    readme = (root / "README.md").read_text()
    section = readme.split("## More than one GPU", 1)[1].split("\n## ", 1)[0]
    assert "examples/slurm_kernels.sh" in section
    assert "torchrun --nproc-per-node 4 -m conetool kernels" in section
    assert "benchmarks/bench_sharding.py" in section


def _rounds_to(num: str, den: str, ratio: str) -> bool:
    """Whether some quotient of two timings that round to ``num`` and ``den`` rounds to ``ratio``
    (each number at the precision it is written with)."""

    def half_unit(text: str) -> float:
        return 0.5 * 10.0 ** -len(text.partition(".")[2])

    lo = (float(num) - half_unit(num)) / (float(den) + half_unit(den))
    hi = (float(num) + half_unit(num)) / (float(den) - half_unit(den))
    return lo < float(ratio) + half_unit(ratio) and hi >= float(ratio) - half_unit(ratio)


def test_readme_sharding_numbers_are_the_benchmarks_quotients():
    root = Path(__file__).resolve().parents[1]
    section = (root / "README.md").read_text().split("## More than one GPU", 1)[1]
    section = " ".join(section.split("\n## ", 1)[0].split())  # one line: wrapping aside
    bench = (root / "benchmarks" / "bench_sharding.py").read_text()
    # The setting the README names is the benchmark's default: 400 steps saved every 5 steps
    # (steps 0, 5, ..., 400) of LeNet-5 on the digits, n = 1024, two ranks.
    defaults = {
        flag: int(re.search(rf'"--{flag}", type=int, default=(\d+)', bench).group(1))
        for flag in ("steps", "save-every", "probe-size", "ranks")
    }
    checkpoints = defaults["steps"] // defaults["save-every"] + 1
    setting = f"same {checkpoints} checkpoints (LeNet-5 on digits, n = {defaults['probe-size']})"
    assert setting in section
    assert defaults["ranks"] == 2 and '"arch": "lenet5"' in bench and '"dataset": "digits"' in bench
    # The ratio the benchmark prints is two ranks' wall time over one process's.
    assert "{sharded / single:.2f}" in bench
    wall = re.search(
        r"one process ([\d.]+) s, two ranks ([\d.]+) s, \*\*ratio ([\d.]+)\*\*", section
    )
    assert wall, "the README no longer quotes the wall times and their ratio"
    one, two, ratio = wall.groups()
    assert _rounds_to(two, one, ratio), (two, one, ratio)
    assert float(ratio) < 1  # two ranks are faster
    work = re.search(
        r"kernels themselves took ([\d.]+) s on one process and ([\d.]+) s per rank on two "
        r"\(([\d.]+)\)",
        section,
    )
    assert work, "the README no longer quotes the kernel seconds and their ratio"
    one_work, two_work, work_ratio = work.groups()
    assert _rounds_to(two_work, one_work, work_ratio), (two_work, one_work, work_ratio)
    # "the rest is the start of the processes (about 10 s, a little more under torchrun)"
    rest_one, rest_two = float(one) - float(one_work), float(two) - float(two_work)
    assert "(about 10 s, a little more under torchrun)" in section
    assert abs(rest_one - 10) < 1 and rest_one < rest_two < 12


# ---------------------------------------------------------------------------------- end to end
def test_two_ranks_make_the_same_store_as_one_process(run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--store", str(two), "--device", "cpu", "--eval-size", "4"]
    # torchrun first: the single process computes its store while torchrun imports PyTorch
    ranks = subprocess.Popen(
        torchrun("kernels", str(run), *args),
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        single = kernels(run, store=one, device="cpu", eval_size=4)
        stdout, stderr = ranks.communicate(timeout=120)
    finally:
        if ranks.poll() is None:
            ranks.kill()
            ranks.wait()
    assert single.computed == STEPS and single.eval_computed == STEPS
    done = subprocess.CompletedProcess(ranks.args, ranks.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("conetool kernels ->") == 1  # only rank 0 reports
    assert "cpu x2" in done.stdout
    # One valid manifest, written by rank 0 with every rank's kernels (no adoption needed).
    assert records(two) == records(one)
    stored = Store.open(two)
    assert stored.steps() == STEPS and stored.identity == Store.open(one).identity
    for step in STEPS:  # bit-identical, as the README says: the same work on either side
        assert torch.equal(stored.load_kernel(step), Store.open(one).load_kernel(step)), step
        # each step's eval kernel, written by the rank that handled the step
        assert torch.equal(stored.load_eval_kernel(step), Store.open(one).load_eval_kernel(step)), (
            step
        )
    assert "eval kernels K(eval, probe), 4 test examples: 6 computed" in done.stdout
    assert stored.manifest["eval"] == Store.open(one).manifest["eval"]
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]


def test_every_rank_writes_this_runs_selection_into_its_kernel_files(run, tmp_path):
    """Each kernel file carries the checkpoint selection of the run that wrote it, from which a
    lost manifest is rebuilt. Was: rank 1 joined the store through manifest.json, which rank 0
    rewrites with this run's selection only with its next kernel, so rank 1's kernel files
    carried the previous run's (--steps 0:4)."""
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", steps="0:4")
    args = ["--store", str(store), "--device", "cpu", "--steps", "0:10"]
    done = run_torchrun("kernels", str(run), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in (6, 8, 10):  # computed by this run, on both ranks
        with safe_open(str(paths.kernel(store, step)), framework="pt") as handle:
            chosen = json.loads(handle.metadata()["selection"])
        assert chosen["steps"] == "0:10", (step, chosen)


def test_two_ranks_share_a_switch_sweep(run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    switch([0, 4, 8], store=one, ckpts=run, device="cpu")
    # Point 0 is already done in the shared store: rank 0 finds it, the ranks share 4 and 8.
    paths.switch_dir(two).mkdir(parents=True)
    for name in ("at_000000.json", "at_000000.csv"):
        shutil.copy(paths.switch_dir(one) / name, paths.switch_dir(two) / name)
    args = ["--ckpts", str(run), "--store", str(two), "--device", "cpu"]
    done = run_torchrun("switch", "--at", "0,4,8", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("conetool switch ->") == 1 and done.stdout.count("reused") == 1

    def rows(store):
        with open(paths.switch_results_csv(store)) as handle:
            return list(csv.DictReader(handle))

    expected, found = rows(one), rows(two)
    assert [r["at"] for r in found] == ["0", "4", "8"] == [r["at"] for r in expected]
    for a, b in zip(expected, found, strict=True):  # every number, to the last digit
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert paths.switch_png(two).is_file() and paths.switch_results_json(two).is_file()
    for t in (4, 8):
        assert json.loads(paths.switch_point(two, t).read_text())["at"] == t
    # The rerun reuses every point, whichever rank trained it, and writes the same results.
    csv_before = paths.switch_results_csv(two).read_bytes()
    again = run_torchrun("switch", "--at", "0,4,8", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused") == 3, again.stdout[-3000:]
    assert paths.switch_results_csv(two).read_bytes() == csv_before


def test_a_torchrun_rerun_reusing_every_switch_point_says_their_momentum_again(run, tmp_path):
    # Was: rank 0 found the points done and said nothing of their momentum: a rerun that reused
    # every point dropped the warning the sweep that trained them gave, results.json with it.
    other = tmp_path / "other.toml"  # the run trained with momentum 0.9: each point warns
    raw = {**SPEC, "train": {**SPEC["train"], "momentum": 0.5}}
    other.write_text(spec_to_toml(spec_from_dict(raw, source="other.toml")))
    store = tmp_path / "s"
    first = switch([0, 4, 8], store=store, ckpts=run, spec=other, device="cpu")
    (warned,) = [w for w in first.warnings if "saved with momentum 0.9 (the spec's 0.5)" in w]
    args = ["--ckpts", str(run), "--spec", str(other), "--store", str(store), "--device", "cpu"]
    again = run_torchrun("switch", "--at", "0,4,8", *args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused") == 3, again.stdout[-3000:]
    kept = json.loads(paths.switch_results_json(store).read_text())["warnings"]
    assert warned in kept and kept == first.warnings, kept


@pytest.mark.skipif(sys.platform != "linux", reason="finds the rank's process in /proc")
def test_killed_rank_leaves_a_store_a_single_process_completes(tmp_path, monkeypatch):
    (tmp_path / "conetool_slow_model.py").write_text(SLOW_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {
        **SPEC,
        "model": {"arch": "conetool_slow_model:make", "num_classes": 3},
        "train": {**SPEC["train"], "steps": 14},
    }
    ckpts, store = tmp_path / "ckpts", tmp_path / "store"
    train(spec_from_dict(spec, source="slow.toml"), ckpts)
    every = list(range(0, 15, 2))
    log = open(tmp_path / "torchrun.log", "w")
    proc = subprocess.Popen(
        torchrun("kernels", str(ckpts), "--store", str(store), "--device", "cpu"),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=environment(
            SLOW_MODEL_DELAY="0.15",
            PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        ),
    )
    try:
        deadline = time.monotonic() + 90
        while not list((store / paths.KERNELS_DIR).glob("step_*.safetensors")):
            assert proc.poll() is None and time.monotonic() < deadline, "no kernel written"
            time.sleep(0.02)
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(timeout=60) != 0  # torchrun stops the other rank and fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    survived = Store.open(store)  # readable; adopts kernel files missing from the manifest
    kept = survived.steps()
    assert 0 < len(kept) < len(every), kept
    for step in kept:
        assert torch.isfinite(survived.load_kernel(step)).all()
    rerun = kernels(ckpts, store=store, device="cpu")
    assert rerun.skipped == kept
    assert rerun.computed == [s for s in every if s not in kept]
    assert Store.open(store).steps() == every


def test_error_on_one_rank_surfaces_once_and_the_store_stays_valid(run, tmp_path):
    bad = tmp_path / "ckpts"
    bad.mkdir()
    for path in run.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    # Step 2 is the first unit of rank 1 (steps are dealt 0, 2, 4, ... to ranks 0, 1, 0, ...).
    target = paths.checkpoint(bad, 2)
    with safe_open(str(target), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(target))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(target), metadata=meta)
    store = tmp_path / "s"
    done = run_torchrun("kernels", str(bad), "--store", str(store), "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("error: rank 1: step 2 ") == 1, done.stderr[-3000:]
    assert "error: step" not in done.stderr  # rank 0 stops silently
    assert "--skip-bad" in done.stderr
    assert "conetool kernels ->" not in done.stdout
    # Rank 0 stops after its current unit: step 0, or none when it saw rank 1's error first,
    # and then it removes the store it created, as a single process does; the message says so.
    kept = Store.open(store).steps() if store.exists() else []
    assert set(kept) <= {0, 4, 8}  # rank 1 stopped at step 2, rank 0 after its current unit
    said = " ".join(done.stderr.split())
    assert (f"Kernels already computed are kept in {store};" in said) == bool(kept), said[-3000:]
    assert ("No kernel was computed;" in said) == (not kept)
    shutil.copy(paths.checkpoint(run, 2), target)  # fixed: the rerun computes only the rest
    rerun = kernels(bad, store=store, device="cpu")
    assert rerun.skipped == kept and sorted(rerun.computed + kept) == STEPS


def test_an_error_of_the_model_on_every_rank_is_said_once_and_removes_the_new_store(run, tmp_path):
    # A --max-memory too small for the model fails every rank's first step alike. Was: each
    # rank printed it, both said "Kernels already computed are kept in" the store though none
    # was, and the store the run created stayed behind (a single process removes it).
    store = tmp_path / "s"
    args = ["--store", str(store), "--device", "cpu", "--max-memory", "1"]
    done = run_torchrun("kernels", str(run), *args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert said.count("--max-memory 1 B is too small for this model") == 1, said[-3000:]
    assert "error: step " in said and "error: rank 1" not in said  # rank 0 says it
    assert "No kernel was computed; rerun after the fix." in said
    assert "already computed are kept" not in said
    assert "conetool/pipeline" not in said  # no traceback of conetool's (torchrun prints its own)
    assert not store.exists()


BRANCHING_FACTORY = """
import torch


class Branching(torch.nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.fc = torch.nn.Linear(input_shape[0], num_classes)

    def forward(self, x):
        if x.max() > 1:  # a branch on the whole batch: a batch dependency
            x = x / 255
        return self.fc(x)


def make(num_classes, input_shape):
    return Branching(num_classes, input_shape)
"""


def test_a_batch_dependency_on_every_rank_is_said_once(tmp_path, monkeypatch):
    """The model's fault, with numbers of each rank's own checkpoint in its message (how far a
    batch's outputs differ from one example's). Was: both ranks said it, rank 1 as 'error: rank
    1: step 5 ...', since the ranks' messages were compared with their numbers."""
    (tmp_path / "branching_factory.py").write_text(BRANCHING_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    from conetool.pipeline.resolve import model_for

    spec = spec_from_dict({**SPEC, "model": {"arch": "branching_factory:make", "num_classes": 3}})
    (tmp_path / "run.toml").write_text(spec_to_toml(spec))
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in (0, 5):
        torch.manual_seed(step)
        save_file(model_for(spec).state_dict(), str(paths.checkpoint(ckpts, step)))
    args = ["--spec", "run.toml", "--store", "s", "--device", "cpu", "--skip-bad"]
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    done = run_torchrun("kernels", str(ckpts), *args, cwd=tmp_path, PYTHONPATH=path)
    assert done.returncode == 1, done.stderr[-3000:]
    said = " ".join(done.stderr.split())
    assert said.count("depends on the other examples in the batch") == 1, said[-3000:]
    assert "error: step 0 " in said and "error: rank 1" not in said  # rank 0 says it


def test_every_checkpoint_failing_under_torchrun_is_said_once_and_removes_the_new_store(
    run, tmp_path
):
    # --skip-bad goes on without every checkpoint (each holds a NaN): every rank knows that no
    # kernel was computed. Was: both ranks printed the error, and the empty store stayed.
    bad = _with_nan(run, tmp_path / "ckpts", STEPS)
    store = tmp_path / "s"
    args = ["--store", str(store), "--device", "cpu", "--skip-bad"]
    done = run_torchrun("kernels", str(bad), *args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("every checkpoint failed (6 of 6)") == 1, done.stderr[-3000:]
    assert "error: rank 1" not in done.stderr
    assert not store.exists()


def test_overwrite_refused_before_clearing_stops_both_ranks_and_keeps_the_store(run, tmp_path):
    # Rank 0 clears a store for --overwrite before the others join it: the spec's model that
    # fits none of the checkpoints (SLOW_MODEL's one layer) is refused there, before the
    # clearing, and the other rank stops with it. It cleared the store, then failed at step 0.
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", steps=(0, 2))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    (tmp_path / "conetool_slow_model.py").write_text(SLOW_MODEL)
    model = {"arch": "conetool_slow_model:make", "num_classes": 3}
    spec = tmp_path / "slow.toml"
    spec.write_text(spec_to_toml(spec_from_dict({**SPEC, "model": model}, source="slow.toml")))
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    args = ["--spec", str(spec), "--store", str(store), "--device", "cpu", "--overwrite"]
    done = run_torchrun("kernels", str(run), *args, cwd=tmp_path, PYTHONPATH=pythonpath)
    assert done.returncode != 0
    kept = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert sorted(map(str, kept)) == sorted(map(str, before)) and kept == before
    assert done.stderr.count(f"--overwrite removed nothing: {store} is as it was") == 1, (
        done.stderr[-3000:]
    )
    assert "does not fit it either" in done.stderr, done.stderr[-3000:]


def _with_nan(run: Path, folder: Path, steps: list[int]) -> Path:
    """A copy of ``run`` into ``folder`` whose checkpoints at ``steps`` hold a NaN."""
    shutil.copytree(run, folder)
    for step in steps:
        target = paths.checkpoint(folder, step)
        with safe_open(str(target), framework="pt") as handle:
            meta = handle.metadata()
        state = load_file(str(target))
        next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
        save_file(state, str(target), metadata=meta)
    return folder


def test_overwrite_under_torchrun_keeps_the_old_store_when_a_rank_fails_before_clearing(
    run, tmp_path
):
    # Step 2, rank 1's first checkpoint, holds a NaN: rank 1 fails before its first kernel, so
    # no rank writes one and the old store (float64 kernels) must stay byte for byte. Was: rank 0
    # cleared it when it opened it, before any rank had computed anything.
    store = tmp_path / "s"
    kernels(run, store=store, device="cpu", dtype="float64", steps=(0, 4))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    bad = _with_nan(run, tmp_path / "ckpts", [2])
    args = ["--store", str(store), "--device", "cpu", "--overwrite"]
    done = run_torchrun("kernels", str(bad), *args, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    kept = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert sorted(map(str, kept)) == sorted(map(str, before)) and kept == before
    said = " ".join(done.stderr.split())
    assert said.count("error: rank 1: step 2 ") == 1, said[-3000:]
    assert said.count(f"--overwrite removed nothing: {store} is as it was") == 1, said[-3000:]
    assert "--overwrite removed the replaced store" not in said + done.stdout
    assert "conetool/pipeline" not in said  # no traceback of conetool's (torchrun prints its own)


def test_overwrite_under_torchrun_replaces_the_store_once_the_ranks_have_kernels(run, tmp_path):
    # --skip-bad: rank 1's first checkpoint (step 2) is left out, its next one computed; the
    # old store is cleared once both ranks have a kernel, and the new one is the store a single
    # process makes of the same checkpoints.
    store, one = tmp_path / "s", tmp_path / "one"
    kernels(run, store=store, device="cpu", dtype="float64", steps=(0, 4))
    bad = _with_nan(run, tmp_path / "ckpts", [2])
    args = ["--store", str(store), "--device", "cpu", "--overwrite", "--skip-bad"]
    done = run_torchrun("kernels", str(bad), *args, "--eval-size", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    kernels(bad, store=one, device="cpu", skip_bad=True, eval_size=4)
    assert records(store) == records(one)
    stored = Store.open(store)
    assert stored.steps() == [0, 4, 6, 8, 10] and stored.identity == Store.open(one).identity
    for step in stored.steps():
        assert torch.equal(stored.load_kernel(step), Store.open(one).load_kernel(step)), step
        assert torch.equal(stored.load_eval_kernel(step), Store.open(one).load_eval_kernel(step))
    said = " ".join((done.stdout + done.stderr).split())
    assert said.count("--overwrite removed the replaced store's 3 kernel file(s)") == 1, said
    assert said.count("conetool kernels ->") == 1


# ---------------------------------------------------------------------------------- by hand
# Ranks started without torchrun (as `srun` or a second node's own command starts them): the
# environment variables alone, each rank its own command line. Nothing stops a rank whose peer
# failed but conetool itself, so a hang fails the test through the timeout.
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ranks(commands: list[list[str]], cwds: list[Path], **extra: str) -> list:
    """Start ``conetool ARGS`` once per rank with torchrun's environment variables set by hand
    (rank 0 hosts the key-value store); their stdout and stderr go to files."""
    port, world = str(free_port()), str(len(commands))
    procs = []
    for rank, (args, cwd) in enumerate(zip(commands, cwds, strict=True)):
        env = environment(RANK=str(rank), WORLD_SIZE=world, LOCAL_RANK=str(rank), **extra)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        with open(cwd / f"rank{rank}.log", "w") as out:
            command = [sys.executable, "-m", "conetool", *args]
            procs.append(
                subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    return procs


def finish_ranks(procs: list, cwds: list[Path], timeout: float = 60) -> list[tuple[int, str]]:
    """Each rank's exit code and output; fails the test (killing them) if one hangs."""
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        logs = [(cwd / f"rank{r}.log").read_text()[-2000:] for r, cwd in enumerate(cwds)]
        pytest.fail(f"a rank hangs after its peer stopped: {logs}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        (code, (cwd / f"rank{r}.log").read_text())
        for r, (code, cwd) in enumerate(zip(codes, cwds, strict=True))
    ]


def test_ranks_started_with_other_arguments_stop_together_naming_the_flag(run, tmp_path):
    store = str(tmp_path / "s")
    base = ["kernels", str(run), "--store", store, "--device", "cpu"]
    procs = start_ranks([base, [*base, "--steps", "0:4", "--dtype", "float64"]], [tmp_path] * 2)
    (code0, log0), (code1, log1) = finish_ranks(procs, [tmp_path] * 2)
    assert code0 == 1 and code1 == 1, (log0, log1)
    assert "Traceback" not in log0 + log1
    assert log1.count("error: rank 1: this rank was started with other arguments than rank 0") == 1
    assert "--steps 0:4 here, not given on rank 0" in log1 and "--dtype float64 here" in log1
    assert "error" not in log0  # one message, by the rank that differs


def test_ranks_that_list_other_checkpoints_stop_together(run, tmp_path):
    # The same relative CKPTS on two "nodes" whose directories differ (a node-local path).
    cwds = [tmp_path / "node0", tmp_path / "node1"]
    for cwd in cwds:
        shutil.copytree(run, cwd / "ckpts")
    for step in (6, 8, 10):  # node 1 lacks the last checkpoints, which rank 1 would get
        paths.checkpoint(cwds[1] / "ckpts", step).unlink()
    args = ["kernels", "ckpts", "--store", str(tmp_path / "s"), "--device", "cpu"]
    (code0, log0), (code1, log1) = finish_ranks(start_ranks([args, args], cwds), cwds)
    assert code0 == 1 and code1 == 1, (log0, log1)
    assert "Traceback" not in log0 + log1
    assert "this rank finds other checkpoints in ckpts than rank 0" in log1
    assert "only on rank 0: [6, 8, 10]" in log1 and "file system that all nodes share" in log1


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """A run of SLOW_MODEL, checkpoints at 0, 2, ..., 14, and the PYTHONPATH that imports it."""
    folder = tmp_path_factory.mktemp("slow")
    (folder / "conetool_slow_model.py").write_text(SLOW_MODEL)
    spec = {
        **SPEC,
        "model": {"arch": "conetool_slow_model:make", "num_classes": 3},
        "train": {**SPEC["train"], "steps": 14},
    }
    sys.path.insert(0, str(folder))
    try:
        train(spec_from_dict(spec, source="slow.toml"), folder / "ckpts")
    finally:
        sys.path.remove(str(folder))
    return folder / "ckpts", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])


def start_slow_ranks(slow_run, tmp_path, **extra: str) -> tuple[list, Path]:
    """Two ranks started by hand on the slow run, returned once the first kernel is written."""
    ckpts, pythonpath = slow_run
    store = tmp_path / "store"
    args = ["kernels", str(ckpts), "--store", str(store), "--device", "cpu"]
    procs = start_ranks(
        [args, args], [tmp_path] * 2, SLOW_MODEL_DELAY="0.15", PYTHONPATH=pythonpath, **extra
    )
    deadline = time.monotonic() + 60
    while not list((store / paths.KERNELS_DIR).glob("step_*.safetensors")):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            finish_ranks(procs, [tmp_path] * 2, timeout=1)
            pytest.fail("no kernel written")
        time.sleep(0.02)
    return procs, store


def test_a_forbidden_file_system_on_one_rank_is_said_once_by_that_rank(slow_run, tmp_path):
    # A plain OSError (not conetool's) on rank 1, once rank 0 has written its kernels and waits
    # for it. Was: rank 1 said the forbidden path and its fix, and rank 0 said it again as
    # "rank 1 stopped (PermissionError: ...)".
    ckpts, pythonpath = slow_run
    store, forbidden = tmp_path / "store", tmp_path / "cache.bin"
    args = ["kernels", str(ckpts), "--store", str(store), "--device", "cpu"]
    env = environment(PYTHONPATH=pythonpath, SLOW_MODEL_FORBIDDEN=str(forbidden))
    log = tmp_path / "torchrun.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(torchrun(*args), cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while len(list((store / paths.KERNELS_DIR).glob("step_*.safetensors"))) < 4:  # rank 0's
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(0.5)  # rank 0 waits for rank 1 now
        Path(f"{forbidden}.go").touch()
        assert proc.wait(timeout=90) == 1
    finally:
        proc.kill()
    said = " ".join(log.read_text().split())
    assert said.count("Permission denied") == 1, said[-3000:]
    assert f"error: rank 1: cannot write {forbidden}: " in said, said[-3000:]
    assert "rank 1 stopped" not in said and "conetool/pipeline" not in said


def test_overwrite_keeps_the_old_store_when_a_rank_crashes_before_its_first_kernel(
    slow_run, tmp_path, monkeypatch
):
    # Ranks started by hand (nothing but conetool stops rank 0): rank 1 raises a plain OSError,
    # not conetool's, at its first kernel while rank 0 waits to clear the store. Both stop at
    # once and the old store stays byte for byte. Was: rank 0 cleared it when it opened it.
    ckpts, pythonpath = slow_run
    monkeypatch.syspath_prepend(str(ckpts.parent))  # the slow model's module
    store, forbidden = tmp_path / "store", tmp_path / "cache.bin"
    kernels(ckpts, store=store, device="cpu", dtype="float64", steps=(0, 4))
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != ".lock"}
    Path(f"{forbidden}.go").touch()
    args = ["kernels", str(ckpts), "--store", str(store), "--device", "cpu", "--overwrite"]
    procs = start_ranks(
        [args, args],
        [tmp_path] * 2,
        PYTHONPATH=pythonpath,
        SLOW_MODEL_FORBIDDEN=str(forbidden),
        CONETOOL_PEER_TIMEOUT="60",  # a hang fails the test (finish_ranks' 60 s) before it
    )
    (code0, log0), (code1, log1) = finish_ranks(procs, [tmp_path] * 2)
    assert (code0, code1) == (1, 1), (log0, log1)
    kept = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and p.name != ".lock"}
    assert sorted(map(str, kept)) == sorted(map(str, before)) and kept == before
    assert f"cannot write {forbidden}" in " ".join(log1.split()), log1[-2000:]
    assert "Traceback" not in log0 + log1


def test_a_rank_interrupted_alone_stops_the_other(slow_run, tmp_path):
    procs, _ = start_slow_ranks(slow_run, tmp_path)
    procs[1].send_signal(signal.SIGINT)  # Ctrl-C reaching one rank only (one node's terminal)
    (code0, log0), (code1, log1) = finish_ranks(procs, [tmp_path] * 2)
    # Was: rank 0 exited 1 with "error: rank 1 stopped (KeyboardInterrupt)". The job was
    # interrupted: every rank exits 130, as a single process does, and rank 0 says it once.
    assert (code0, code1) == (130, 130), (log0, log1)
    said = " ".join(log0.split())
    assert said.count("interrupted: rank 1 was interrupted (Ctrl-C), so every rank stopped.") == 1
    assert "rerun the same command to continue" in said and "error" not in said, log0
    assert "Traceback" not in log0 + log1 and "interrupted" not in log1  # rank 0 speaks


def test_a_killed_rank_stops_the_other_after_the_peer_timeout(slow_run, tmp_path, monkeypatch):
    # Without torchrun (or across nodes) nothing else stops rank 0 when rank 1 is killed.
    procs, store = start_slow_ranks(slow_run, tmp_path, CONETOOL_PEER_TIMEOUT="2")
    os.kill(procs[1].pid, signal.SIGKILL)
    (code0, log0), _ = finish_ranks(procs, [tmp_path] * 2)
    assert code0 == 1, log0
    assert log0.count("error: rank 1 has shown no sign of life for 2 s") == 1, log0
    assert "CONETOOL_PEER_TIMEOUT" in log0 and "Traceback" not in log0
    kept = Store.open(store).steps()  # rank 0 finished its share; rank 1's first is there too
    assert set(range(0, 15, 4)) <= set(kept), kept
    ckpts, _ = slow_run
    monkeypatch.syspath_prepend(str(ckpts.parent))  # the slow model's module
    rerun = kernels(ckpts, store=store, device="cpu")
    assert rerun.skipped == kept and sorted(rerun.computed + kept) == list(range(0, 15, 2))


def test_a_rank_whose_peers_never_start_stops_after_the_peer_timeout(run, tmp_path):
    # WORLD_SIZE=2 set by hand, the other rank never started: gloo would wait 30 minutes.
    args = ["kernels", str(run), "--store", str(tmp_path / "s"), "--device", "cpu"]
    env = environment(RANK="0", WORLD_SIZE="2", CONETOOL_PEER_TIMEOUT="1")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = [sys.executable, "-m", "conetool", *args]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error: not all 2 ranks (WORLD_SIZE) joined within 1 s (CONETOOL_PEER_TIMEOUT)" in (
        done.stderr
    )
    assert not (tmp_path / "s").exists()  # nothing written


def test_a_rank_that_loses_the_store_says_so_without_a_traceback(slow_run, tmp_path):
    # Started by hand, rank 0's process hosts the key-value store: killing it takes the store.
    procs, store = start_slow_ranks(slow_run, tmp_path)
    os.kill(procs[0].pid, signal.SIGKILL)
    _, (code1, log1) = finish_ranks(procs, [tmp_path] * 2)
    assert code1 == 1, log1
    assert log1.count("error: rank 1: lost the job's key-value store") == 1, log1
    assert "rerun the same command" in log1 and "Traceback" not in log1
    assert Store.open(store).steps()  # what was written stays readable


def test_ctrl_c_while_starting_is_announced_once_by_rank_0(slow_run, tmp_path):
    ckpts, pythonpath = slow_run
    mark = tmp_path / "importing"  # every rank imports the model to list its layers (--per-layer)
    proc = subprocess.Popen(
        torchrun(
            "kernels", str(ckpts), "--store", str(tmp_path / "s"), "--device", "cpu", "--per-layer"
        ),
        cwd=tmp_path,
        env=environment(SLOW_MODEL_IMPORT_MARK=str(mark), PYTHONPATH=pythonpath),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (Path(f"{mark}0").exists() and Path(f"{mark}1").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: every process gets it
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert len(said) == 1, output[-3000:]


def test_switch_ranks_started_with_other_points_stop_together_naming_the_flag(run, tmp_path):
    base = ["switch", "--ckpts", str(run), "--store", str(tmp_path / "s"), "--device", "cpu"]
    procs = start_ranks([[*base, "--at", "0,4,8"], [*base, "--at", "0,4"]], [tmp_path] * 2)
    (code0, log0), (code1, log1) = finish_ranks(procs, [tmp_path] * 2)
    assert code0 == 1 and code1 == 1, (log0, log1)
    assert "Traceback" not in log0 + log1 and "error" not in log0
    assert "error: rank 1: this rank was started with other arguments than rank 0" in log1
    assert "--at 0,4 here, 0,4,8 on rank 0" in log1 and "conetool switch command" in log1
    assert not list(paths.switch_dir(tmp_path / "s").glob("at_*.json"))  # no point trained


def test_switch_ranks_write_nothing_into_a_store_replaced_while_they_train(slow_run, tmp_path):
    # kernels --overwrite replaces the store while both ranks train their points (each waits at
    # its first forward pass until the test has replaced it). Was: each rank wrote its point into
    # the new store, and rank 0 its results.csv, and the job succeeded.
    ckpts, pythonpath = slow_run
    store, gate = tmp_path / "store", tmp_path / "gate"
    header = {"checkpoints": str(ckpts)}
    Store.open_for_writing(store, StoreIdentity("s", "p", "trace", "float32"), header).close()
    args = ["switch", "--at", "0,6", "--ckpts", str(ckpts), "--store", str(store)]
    procs = start_ranks(
        [[*args, "--device", "cpu"]] * 2,
        [tmp_path] * 2,
        SLOW_MODEL_GATE=str(gate),
        PYTHONPATH=pythonpath,
    )
    deadline = time.monotonic() + 60
    while not all(Path(f"{gate}.waiting{rank}").exists() for rank in (0, 1)):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            gate.touch()
            finish_ranks(procs, [tmp_path] * 2, timeout=10)
            pytest.fail("the ranks did not reach their points' training")
        time.sleep(0.02)
    other = StoreIdentity("s2", "p", "trace", "float32")
    Store.open_for_writing(store, other, header, overwrite=True).close()
    gate.touch()
    (code0, log0), (code1, log1) = finish_ranks(procs, [tmp_path] * 2)
    assert code0 == 1 and code1 == 1, (log0, log1)
    assert "Traceback" not in log0 + log1
    said = " ".join((log0 + log1).split())
    assert said.count(f"store {store} was replaced while conetool switch was writing") == 1, said
    assert "stopped and wrote nothing into the new store" in said
    # the points of both ranks, named once, and the command that computes them there
    assert "the points at t = 0, 6 (in progress) are not written." in said, said
    assert f"run: conetool switch --at 0,6 --store {store} --ckpts {ckpts} --device cpu." in said, (
        said
    )
    assert Store.open(store).identity == other
    assert (
        not list(paths.switch_dir(store).glob("at_*"))
        and not paths.switch_results_csv(store).exists()
    )
