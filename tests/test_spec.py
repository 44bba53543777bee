"""The spec: defaults, validation messages, and the TOML round trip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conetool.errors import SpecError
from conetool.spec import (
    Spec,
    load_spec,
    recipe_warnings,
    save_spec,
    spec_differences,
    spec_from_dict,
    spec_from_toml,
    spec_to_toml,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_defaults_fill_missing_sections(tmp_path):
    spec = load_spec(write(tmp_path, '[model]\narch = "mlp"\n'))
    assert spec.model.arch == "mlp"
    assert spec.data.dataset == "digits"
    assert spec.probe.size == 500
    assert spec.train.optimizer == "sgd"
    assert spec.source == str(tmp_path / "spec.toml")


def test_model_extra_keys_become_factory_options(tmp_path):
    spec = load_spec(write(tmp_path, '[model]\narch = "mlp"\nwidths = [32, 16]\n'))
    assert spec.model.options == {"widths": [32, 16]}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "[train]\nstepz = 3\n",
            r"unknown key 'stepz' in \[train\]\. Valid keys: steps, batch_size",
        ),
        ("[trian]\nsteps = 3\n", r"unknown section \[trian\]\. Valid sections: \[model\]"),
        ('[train]\nsteps = "ten"\n', r"'train\.steps' must be an integer, got \"ten\"\."),
        ("[train]\nsteps = true\n", r"'train\.steps' must be an integer, got true\."),
        ("[train]\nsteps = { a = 1 }\n", r"'train\.steps' must be an integer, got \{ a = 1 \}\."),
        ('[probe]\nseed = "ünï"\n', r"'probe\.seed' must be an integer, got \"ünï\"\."),
        ("[data]\ntrain_size = [nan]\n", r"'data\.train_size' must be an integer, got \[nan\]\."),
        ("[train]\nsteps = 1.5\n", r"'train\.steps' must be an integer, got 1\.5"),
        ("[train]\naugment = 1\n", r"'train\.augment' must be true or false, got 1"),
        (
            '[train]\noptimizer = "rmsprop"\n',
            r"'train\.optimizer' = \"rmsprop\" is not valid\. Choices: sgd, adam",
        ),
        ('[train]\nschedule = "linear"\n', r"Choices: constant, step, cosine"),
        (
            '[data]\ndataset = "imagenet"\n',
            r"'data\.dataset' = \"imagenet\" is not valid\. Choices: digits, mnist, cifar10, synthetic",
        ),
        ("[data]\nsize = 3\n", r"unknown key 'size' in \[data\].*user factory"),
        (
            '[probe]\nsplit = "val"\n',
            r"'probe\.split' = \"val\" is not valid\. Choices: train, test",
        ),
        ("[probe]\nsize = 0\n", r"'probe\.size' must be positive, got 0"),
        ('[train]\nschedule = "step"\n', r"needs 'train\.milestones'"),
        ("[train]\nmilestones = [300, 200]\n", r"'train\.milestones' must be increasing"),
        (
            "[train]\nsteps = 10\nsave_at = [5, 11]\n",
            r"'train\.save_at' holds \[11\], outside 0\.\.10",
        ),
        ('[train]\noptimizer = "adam"\nnesterov = true\n', r"'train\.nesterov' needs optimizer"),
        ("[train]\nlr = -0.1\n", r"'train\.lr' must be positive"),
        (
            "[train]\nsave_at = [1, 'a']\n",
            r"'train\.save_at' must be a list of integers, got \[1, \"a\"\]",
        ),
        ("model = 3\n", r"'model' must be a table"),
        ('model = "x"\n', r"'model' must be a table \(\[model\]\), got \"x\"\."),
    ],
)
def test_validation_names_file_key_value_and_choices(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=match) as info:
        load_spec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[train]\nlr = 1e300\n", "train.lr"),
        ("[train]\nweight_decay = 1e300\n", "train.weight_decay"),
        ("[train]\nmomentum = 1e39\n", "train.momentum"),
        ("[train]\ngamma = 1e300\n", "train.gamma"),
        ('[data]\ndataset = "synthetic"\nnoise = 1e300\n', "data.noise"),
    ],
)
def test_a_value_beyond_float32_is_refused_naming_its_key(tmp_path, text, key):
    """lr = 1e300 passed the spec check and ended training with PyTorch's "value cannot be
    converted to type float without overflow" traceback (a weight decay or gamma alike; a noise
    or momentum that large 'diverged', blamed on train.lr)."""
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    value = text.split("= ")[-1].strip()
    assert message.startswith(f"{path}: '{key}' = {float(value)!r} is beyond the largest float32")
    assert "Set a value of the usual size" in message
    assert load_spec(write(tmp_path, text.replace(value, "1e38")))  # within float32: taken


def test_a_step_schedule_whose_rate_grows_beyond_float32_is_refused(tmp_path):
    text = "[train]\nschedule = 'step'\nlr = 1e30\ngamma = 1e5\nmilestones = [100, 200]\n"
    with pytest.raises(SpecError, match=r"the learning rate reaches 1e\+40 \(train\.lr 1e\+30 x "):
        load_spec(write(tmp_path, text))
    with pytest.raises(SpecError, match=r"set 'train\.gamma' below 1"):  # inf past float64's range
        load_spec(write(tmp_path, text.replace("1e5", "1e38").replace("200]", "200, 300]")))
    assert load_spec(write(tmp_path, text.replace("1e5", "1e3")))  # 1e36: it fits


def test_a_momentum_of_one_or_more_is_warned_about_not_refused():
    """momentum = 5 trained silently to a test loss of 2.7e9; torch.optim.SGD takes it, so the
    spec does too, and train and switch warn (tests/test_training.py, test_switch_command.py)."""
    for momentum, said in ((0.99, 0), (1.0, 1), (5.0, 1)):
        spec = spec_from_dict({"train": {"momentum": momentum}}, source="s.toml")
        warned = recipe_warnings(spec)
        assert len(warned) == said, warned
        if said:
            assert warned[0].startswith(f"s.toml: 'train.momentum' = {momentum!r} is 1 or more")
            assert "SGD's updates grow without bound" in warned[0]
    adam = spec_from_dict({"train": {"optimizer": "adam", "momentum": 5.0}})  # Adam ignores it
    (said,) = recipe_warnings(adam)  # ... which is what it is told (tests/test_spec_combinations)
    assert "'train.momentum' = 5.0 has no effect with optimizer = \"adam\"" in said, said


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match="is not valid TOML"):
        load_spec(write(tmp_path, "[model\narch = 1\n"))


def test_user_factory_dataset_passes_extra_keys(tmp_path):
    spec = load_spec(write(tmp_path, '[data]\ndataset = "mypkg.data:make"\nsize = 3\n'))
    assert spec.data.options == {"size": 3}


def test_integer_accepted_for_float(tmp_path):
    spec = load_spec(write(tmp_path, "[train]\nlr = 1\n"))
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float)


def test_round_trip_is_exact_and_hash_stable(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            '[model]\narch = "mlp"\nwidths = [8, 4]\nactivation = "tanh"\n'
            '[train]\nsteps = 50\nschedule = "step"\nmilestones = [10, 20]\nsave_at = [3]\n'
            '[data]\ndataset = "synthetic"\nshape = [2, 3]\n',
        )
    )
    out = tmp_path / "resolved.toml"
    save_spec(spec, out)
    again = load_spec(out)
    assert again == spec
    assert again.hash() == spec.hash()
    assert spec_from_dict(tomllib.loads(spec_to_toml(spec))) == spec


def test_hash_changes_with_any_value():
    base = Spec()
    changed = spec_from_dict({"train": {"lr": 0.05}})
    assert base.hash() != changed.hash()
    assert spec_from_dict({}).hash() == base.hash()


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_examples_are_valid(name):
    spec = load_spec(EXAMPLES / name)
    assert spec.train.steps > 0


def test_the_readme_spec_block_shows_every_key_at_its_default():
    # The README's "The spec" block says it shows the defaults: each key set there has its
    # default value, and each key of the spec appears there (set, or named in a comment).
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## The spec\n", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    shown = tomllib.loads(block)
    defaults = spec_from_dict({}, source="defaults.toml")
    for name, values in shown.items():
        default = vars(getattr(defaults, name))
        for key, value in values.items():
            assert default[key] == value, (name, key, value, default[key])
    for name in ("model", "data", "probe", "train"):
        for key in vars(getattr(defaults, name)):
            if key != "options":
                assert f"{key} =" in block, (name, key)


def test_spec_differences_name_each_changed_key():
    """What train --resume's refusal of another spec names (it named only the two hashes)."""
    old = spec_from_toml('[model]\narch = "mlp"\nwidths = [8]\n[train]\nlr = 0.1\n', "a.toml")
    new = spec_from_toml('[model]\narch = "mlp"\n[train]\nlr = 0.05\nsteps = 7\n', "b.toml")
    assert spec_differences(old, new) == [
        "model.widths = [8] (now (not set))",
        "train.steps = 1000 (now 7)",
        "train.lr = 0.1 (now 0.05)",
    ]
    assert spec_differences(old, new, limit=1) == [
        "model.widths = [8] (now (not set))",
        "and 2 more",
    ]
    assert spec_differences(old, old) == []


@pytest.mark.parametrize(
    ("text", "suggested"),
    [
        ("[train]\nsave_evry = 3\n", "Did you mean 'save_every'?"),
        ("[train]\nwarmup = 3\n", "Did you mean 'warmup_steps'?"),
        ("[probe]\nsplits = 'test'\n", "Did you mean 'split'?"),
        ("[trian]\nsteps = 3\n", "Did you mean [train]?"),
    ],
)
def test_a_misspelt_key_or_section_gets_the_closest_valid_one(text, suggested):
    """An unknown key listed every valid one but not the one meant."""
    with pytest.raises(SpecError) as info:
        spec_from_toml(text, "typo.toml")
    assert suggested in str(info.value)


def test_an_unknown_key_like_no_valid_one_gets_no_guess():
    with pytest.raises(SpecError) as info:
        spec_from_toml("[train]\nlearning_rate = 0.1\n", "typo.toml")
    assert "Did you mean" not in str(info.value)


def test_spec_differences_name_values_equal_in_python_but_not_in_the_hash():
    """A factory option given as 2 in one spec and 2.0 (or true and 1) in the other: the hashes
    differ (canonical JSON), so the key is named; == found nothing and train --resume said
    'It differs in .'."""
    head = '[model]\narch = "pkg.mod:make"\nnum_classes = 3\n'
    old = spec_from_toml(head + "depth = 2\nwide = true\n", "a.toml")
    new = spec_from_toml(head + "depth = 2.0\nwide = 1\n", "b.toml")
    assert old.hash() != new.hash()
    assert spec_differences(old, new) == [
        "model.depth = 2 (now 2.0)",
        "model.wide = true (now 1)",
    ]


@pytest.mark.parametrize("value", ["1e308", "3", "[1]", "true", "{a = 1}"])
def test_a_dataset_that_is_not_a_string_is_refused_naming_the_key(tmp_path, value):
    """dataset = 1e308 (found by scripts/fuzz_cli.py --mode spec) ended in TypeError 'argument of
    type 'float' is not iterable' and a traceback, before the key's type was checked."""
    path = write(tmp_path, f"[data]\ndataset = {value}\n")
    with pytest.raises(SpecError, match=r"'data\.dataset' must be a string, got ") as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("value", [2**63, 99999999999999999999])
def test_a_run_longer_than_a_toml_integer_is_refused_naming_its_key(tmp_path, value):
    """train.steps = 99999999999999999999 (Python's TOML reader takes it) passed the spec check
    and conetool train trained without end; TOML's largest integer, 2**63 - 1, is the bound."""
    path = write(tmp_path, f"[train]\nsteps = {value}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: 'train.steps' = {value} is beyond the longest")
    write(tmp_path, f"[train]\nsteps = {2**63 - 1}\n")
    assert load_spec(path).train.steps == 2**63 - 1


@pytest.mark.parametrize(
    ("key", "line", "said"),
    [
        ("save_every", "save_every = {big}", "= {big}"),
        ("eval_every", "eval_every = {big}", "= {big}"),
        ("warmup_steps", "warmup_steps = {big}", "= {big}"),
        ("dense_until", "dense_every = 2\ndense_until = {big}", "= {big}"),
        ("dense_every", "dense_every = {big}\ndense_until = {big}", "= {big}"),
        ("milestones", 'schedule = "step"\nmilestones = [5, {big}]', "holds {big}"),
        ("save_at", "save_at = [5, {big}]", "holds {big}"),
    ],
)
def test_step_keys_beyond_a_toml_integer_are_refused_naming_their_key(tmp_path, key, line, said):
    """save_every, warmup_steps, milestones, ... = 10**30 (Python's TOML reader takes it) passed
    the spec check, as train.steps did before; the run trained and wrote them into its
    conetool.toml, beyond the integers of TOML. Bounded as train.steps is."""
    big = 10**30
    path = write(tmp_path, "[train]\nsteps = 10\n" + line.format(big=big) + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert text.startswith(f"{path}: 'train.{key}' {said.format(big=big)}, beyond the largest"), (
        text
    )
    assert f"({2**63 - 1}, TOML's largest integer" in text


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("train", "seed", 10**30),
        ("train", "seed", 2**64),
        ("probe", "seed", -(2**63) - 1),
        ("data", "seed", 10**30),
    ],
)
def test_a_seed_beyond_pytorchs_is_refused_naming_its_key(tmp_path, section, key, value):
    """train.seed = 10**30 (found by scripts/fuzz_cli.py --mode spec) passed the spec check and
    ended train with torch.manual_seed's "Overflow when unpacking long long" traceback."""
    extra = 'dataset = "synthetic"\n' if section == "data" else ""
    text = f"[{section}]\n{extra}{key} = {value}\n"
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: '{section}.{key}' = {value} is beyond the seeds")
    for taken in (2**64 - 1, -(2**63), 0):
        assert load_spec(write(tmp_path, text.replace(f"= {value}", f"= {taken}")))


@pytest.mark.parametrize("name", ["step_000004.safetensors", "model.pt", "notes.bin.txt"])
def test_a_spec_file_that_is_not_text_says_what_to_pass(tmp_path, name):
    """A checkpoint passed as the spec (--spec ckpts/step_000004.safetensors, fuzz_cli --mode
    flags --seed 201) got only the UTF-8 decoder's words, no fix; now it is named a checkpoint
    and the spec beside a run's checkpoints is named, and any other binary file gets the fix."""
    path = tmp_path / name
    path.write_bytes(b"\xa0\x00\xff binary")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"spec file {path} is not UTF-8 text: ")
    if name.endswith(".txt"):
        assert message.endswith(". Pass the path of a TOML spec file."), message
    else:
        assert f"It is a checkpoint ({path.suffix}), not a spec: pass the TOML spec" in message
        assert "conetool.toml, beside its checkpoints" in message, message


def test_label_smoothing_is_a_train_key_that_leaves_every_earlier_hash_as_it_was():
    """[train] had no label_smoothing (an unknown key, refused), so a run trained with it could
    not say so. It is a key now; at its default 0 it is left out of the hash, so that every spec,
    and the stores and runs made with it, keep the hash they had before the key existed."""
    from conetool.spec import Spec, spec_from_dict

    assert Spec().hash() == "92b16c94fc5d204f"  # its hash before the key existed
    adam = {"optimizer": "adam", "lr": 1e-3}
    assert spec_from_dict({"train": adam}).hash() == "46c4950a4d89178b"
    zero = spec_from_dict({"train": {**adam, "label_smoothing": 0.0}})
    assert zero.hash() == "46c4950a4d89178b" and zero.to_dict()["train"]["label_smoothing"] == 0
    smoothed = spec_from_dict({"train": {**adam, "label_smoothing": 0.1}})
    assert smoothed.train.label_smoothing == 0.1 and smoothed.hash() != zero.hash()
    with pytest.raises(SpecError, match=r"s\.toml: 'train\.label_smoothing' must be at least 0"):
        spec_from_dict({"train": {"label_smoothing": 1.0}}, source="s.toml")


def test_a_manifest_written_before_label_smoothing_is_not_said_to_differ_in_it():
    """A store's manifest from before train.label_smoothing existed has no such key; its hash
    counts it as the default 0, but the differences a refusal names (another spec's kernels in
    the store, distance --spec, switch --spec) said 'train.label_smoothing = (not set) (now
    0.0)' beside the key that did differ."""
    from conetool.spec import Spec, resolved_differences

    earlier = Spec().to_dict()
    del earlier["train"]["label_smoothing"]  # as a manifest of an earlier conetool holds it
    now = Spec().to_dict()
    now["train"]["lr"] = 0.5
    assert resolved_differences(earlier, now) == ["train.lr = 0.1 (now 0.5)"]
    assert resolved_differences(now, earlier) == ["train.lr = 0.5 (now 0.1)"]
    smoothed = Spec().to_dict()
    smoothed["train"]["label_smoothing"] = 0.1
    assert resolved_differences(earlier, smoothed) == ["train.label_smoothing = 0.0 (now 0.1)"]
