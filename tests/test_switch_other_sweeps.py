"""A store keeps one switch point per t (``switch/at_XXXXXX.json``): a sweep of another T or spec
overwrites the points of the earlier sweep at its steps, minutes of training a rerun of that sweep
spends again. It is said before any point trains, with the command that keeps both."""

from __future__ import annotations

import json

import pytest
from test_switch_beside_state import spec_dict

from conetool import paths
from conetool.pipeline.run_switch import switch
from conetool.spec import save_spec, spec_from_dict
from conetool.training import train


@pytest.fixture
def run(tmp_path):
    """A run conetool train wrote: checkpoints of steps 0, 4, 8, 12."""
    out = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), out)
    return out


def replacing(result):
    return [w for w in result.warnings if "would replace points" in w]


def test_a_sweep_of_another_until_says_the_points_it_replaces(run, tmp_path):
    store = tmp_path / "s"
    first = switch([0, 4], store=store, ckpts=run, device="cpu")
    assert replacing(first) == []
    again = switch([0, 4], store=store, ckpts=run, device="cpu")  # the same sweep: reused
    assert replacing(again) == []
    other = switch([0, 4, 8], until=10, store=store, ckpts=run, device="cpu")
    (said,) = replacing(other)
    assert f"{paths.switch_dir(store)} holds from another sweep (t=0, 4: --until 12)" in said
    assert "this sweep (--until 10)" in said
    own = f"conetool switch --at 0,4,8 --until 10 --store OTHER_STORE --ckpts {run} --device cpu"
    assert said.endswith(own), said
    # as said: the earlier sweep's points are gone, a rerun of it trains them again
    assert json.loads(paths.switch_point(store, 0).read_text())["key"]["until"] == 10
    back = switch([0, 4], store=store, ckpts=run, device="cpu")
    assert [p.reused for p in back.points] == [False, False]
    assert [p.test_acc for p in back.points] == [p.test_acc for p in first.points]


def test_a_sweep_of_another_spec_says_the_points_it_replaces(run, tmp_path):
    store = tmp_path / "s"
    switch([0, 4], store=store, ckpts=run, device="cpu")
    raw = spec_dict(lr=0.05)
    other = tmp_path / "other.toml"
    save_spec(spec_from_dict(raw, source=str(other)), other)
    result = switch([4, 8], store=store, ckpts=run, spec=other, device="cpu")
    (said,) = replacing(result)
    assert "holds from another sweep (t=4: another spec)" in said, said
    assert f"--store OTHER_STORE --ckpts {run} --spec {other}" in said, said
