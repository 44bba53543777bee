"""A switch point file (``switch/at_XXXXXX.json``) damaged by hand or a tool: a value of another
type, an entry missing, the key not an object. It is no finished point: a sweep computes it again
(and rewrites it), and one that does not ask for it leaves it out of results.csv, as a file that
is not JSON at all already was. Found by scripts/fuzz_cli.py --mode store, seed 12, call 95:
``test_acc = 'ünï'`` ended ``switch --at 4,8`` in a traceback (a float format of a string)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from test_switch_beside_state import spec_dict

from conetool import paths
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train

DAMAGES = {
    "test_acc a string": lambda p: p.update(test_acc="ünï"),
    "train_loss a list": lambda p: p.update(train_loss=[1.0]),
    "at a list": lambda p: p.update(at=[4]),
    "until a string": lambda p: p.update(until="12"),
    "momentum missing": lambda p: p.pop("momentum"),
    "seconds a bool": lambda p: p.update(seconds=True),
    "rows not a list": lambda p: p.update(rows="x"),
    "key a string": lambda p: p.update(key="x"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run conetool train wrote (checkpoints of steps 0, 4, 8, 12) and a store holding its
    switch points at 4 and 8."""
    base = tmp_path_factory.mktemp("damaged_points")
    out = base / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    switch([4, 8], store=base / "s", ckpts=out, device="cpu")
    return out, base / "s"


def damage(store, t, how):
    path = paths.switch_point(store, t)
    payload = json.loads(path.read_text())
    DAMAGES[how](payload)
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_point_is_computed_again(run, tmp_path, how):
    ckpts, pristine = run
    store = tmp_path / "s"
    shutil.copytree(pristine, store)
    damage(store, 4, how)
    result = switch([4], store=store, ckpts=ckpts, device="cpu")
    ((point, reused),) = [(p, p.reused) for p in result.points if p.at == 4]
    assert not reused and isinstance(point.test_acc, float)
    assert json.loads(paths.switch_point(store, 4).read_text())["test_acc"] == point.test_acc


@pytest.mark.parametrize("how", sorted(DAMAGES))
def test_a_damaged_point_of_an_earlier_sweep_is_left_out_of_the_results(run, tmp_path, how):
    ckpts, pristine = run
    store = tmp_path / "s"
    shutil.copytree(pristine, store)
    damage(store, 8, how)
    result = switch([4], store=store, ckpts=ckpts, device="cpu")
    assert [(p.at, p.reused) for p in result.points] == [(4, True)]
    with paths.switch_results_csv(store).open(newline="") as handle:
        assert [row["at"] for row in csv.DictReader(handle)] == ["4"]
