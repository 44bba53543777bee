"""Every switch point, and --reference train's standard run, loads its checkpoint into a model
built for it (conetool.checkpoints.load's docstring relies on it: BatchNorm ``num_batches_tracked``
counters missing from old checkpoints are filled from the model as it is, so a model shared by two
points would hand the first point's count, or weights, to the second)."""

from __future__ import annotations

from test_switch_beside_state import spec_dict

from conetool import paths
from conetool.pipeline import switch_points, switch_reference
from conetool.pipeline.run_switch import switch
from conetool.spec import spec_from_dict
from conetool.training import train


def watch_builds_and_loads(monkeypatch):
    """Lists filled as switch runs: the models built (``model_for``), and ``(step, model)`` for
    each checkpoint loaded (by the points and by --reference train), models held (no id reused)."""
    built, loads = [], []
    for module in (switch_points, switch_reference):
        real_build, real_load = module.model_for, module.load_checkpoint

        def build(spec, real_build=real_build):
            model = real_build(spec)
            built.append(model)
            return model

        def load(model, ref, *args, real_load=real_load, **kwargs):
            loads.append((ref.step, model))
            return real_load(model, ref, *args, **kwargs)

        monkeypatch.setattr(module, "model_for", build)
        monkeypatch.setattr(module, "load_checkpoint", load)
    return built, loads


def test_each_point_and_the_reference_load_into_a_model_of_their_own(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(spec_from_dict(spec_dict(), source="run.toml"), run)
    paths.checkpoint(run, 12).unlink()  # --reference train continues from step 8, a point too
    built, loads = watch_builds_and_loads(monkeypatch)
    result = switch([0, 4, 8], store=tmp_path / "s", ckpts=run, device="cpu", reference="train")
    assert [p.at for p in result.points] == [0, 4, 8]
    assert result.reference is not None and result.reference["source"] == "trained from step 8"
    assert sorted(step for step, _ in loads) == [0, 4, 8, 8]
    models = [model for _, model in loads]
    assert len({id(model) for model in models}) == len(models)  # none loaded into twice
    assert all(any(model is new for new in built) for model in models)  # each built for it
    assert len(built) == len(models)
