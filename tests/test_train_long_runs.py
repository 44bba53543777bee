"""A run of any length (``train.steps`` up to TOML's largest integer, 2**63 - 1) starts training
at once: which steps are saved is asked step by step and counted, never listed before the run."""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from conetool.spec import Spec, TrainSpec, dense_only_steps, save_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("steps", [1, 2, 7, 12, 30])
def test_save_steps_asked_and_counted_match_the_listing(steps: int) -> None:
    from conetool.spec import dense_only_count, is_save_step, save_count

    for save_every, dense_every, dense_until, save_at in itertools.product(
        (1, 3, 5, 40), (0, 1, 2, 4, 6), (0, 3, 9, 31, 50), ([], [0], [7, 11], [steps])
    ):
        train = TrainSpec(
            steps=steps,
            save_every=save_every,
            dense_every=dense_every,
            dense_until=dense_until,
            save_at=[s for s in save_at if s <= steps],
        )
        listed = save_steps(Spec(train=train))
        assert [s for s in range(-2, steps + 3) if is_save_step(train, s)] == listed, train
        assert save_count(Spec(train=train)) == len(listed), train
        assert dense_only_count(train) == len(dense_only_steps(train)), train


#: Runs in a child process whose memory is capped: the steps of a run of 2**63 - 1 steps, put
#: in a set before training, would otherwise fill the machine's memory.
_SCRIPT = """
import json, sys
from pathlib import Path
from conetool.spec import spec_from_dict, train_warnings
from conetool.training import train

spec = json.loads(sys.argv[1])
out = Path(sys.argv[2])
dense = json.loads(json.dumps(spec))
dense["train"].update(steps=10**15, dense_every=7, dense_until=10**16)
print("WARNINGS", json.dumps(train_warnings(spec_from_dict(dense, source="dense.toml"))))


class Reached(Exception):
    pass


class Stop:
    def task(self, description, total):
        return self

    def advance(self, amount=1, **fields):
        pass

    def close(self):
        pass

    def log(self, message):
        if message.startswith("train step 0:"):
            raise Reached(message)


try:
    train(spec_from_dict(spec, source="long.toml"), out, progress=Stop(), threads=1)
except Reached as exc:
    print("REACHED", exc)
"""


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def test_a_run_of_any_length_starts_training_at_once(tmp_path: Path) -> None:
    spec = {
        "model": {"arch": "mlp", "num_classes": 3, "widths": [4]},
        "data": {
            "dataset": "synthetic",
            "shape": [4],
            "num_classes": 3,
            "train_size": 24,
            "test_size": 6,
        },
        "probe": {"size": 6},
        "train": {
            "steps": 2**63 - 1,
            "batch_size": 8,
            "save_every": 100,
            "dense_every": 7,
            "dense_until": 2**62,
        },
    }
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(spec), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=_cap_memory,
    )
    assert "REACHED train step 0" in done.stdout, done.stdout + done.stderr
    # step 0 was saved before its evaluation, step_<19 digits> names sort as the others
    assert (tmp_path / "run" / "step_000000.safetensors").is_file()
    (said,) = [json.loads(line[9:]) for line in done.stdout.splitlines() if line[:9] == "WARNINGS "]
    # every 7 steps up to 10**15, and the multiples of 100 between them
    count = 10**15 // 7 + 1 + (10**15 // 100 + 1) - (10**15 // 700 + 1)
    assert any(f"({count} checkpoints)" in line for line in said), said
