"""conetool used from Python (a notebook), not the command line: the caller's global state is
left as found, and plain Python values work where the command line takes flags."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_run import SPEC, run_fixtures

import conetool
from conetool import paths
from conetool.spec import spec_from_dict

trained, run = run_fixtures()


def _after_seed(seed: int, call: object) -> torch.Tensor:
    torch.manual_seed(seed)
    if callable(call):
        call()
    return torch.randn(4)


def test_library_calls_keep_the_callers_random_state(run: Path, tmp_path: Path) -> None:
    """Building a model seeds torch's global generator with the spec's seed, and training seeds it
    at every step: the caller's stream continues as if conetool had not been called."""
    store = tmp_path / "store"
    calls = {
        "train": lambda: conetool.train(
            spec_from_dict(SPEC, source="tiny.toml"), tmp_path / "again", overwrite=True, threads=1
        ),
        "inspect": lambda: conetool.inspect(run),
        "kernels": lambda: conetool.kernels(run, store=store, threads=1),
        "distance": lambda: conetool.distance(store),
        "switch": lambda: conetool.switch([5], store=store, threads=1),
    }
    for name, call in calls.items():
        for seed in (1, 2):
            expected = _after_seed(seed, None)
            assert torch.equal(_after_seed(seed, call), expected), name


def test_a_failed_call_keeps_the_random_state_too(tmp_path: Path) -> None:
    torch.manual_seed(3)
    expected = torch.randn(4)
    torch.manual_seed(3)
    with pytest.raises(conetool.ConetoolError):
        conetool.distance(tmp_path / "missing")
    assert torch.equal(torch.randn(4), expected)


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.BatchNorm2d(3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 4),
    )


def test_linearized_model_under_inference_mode() -> None:
    """Dual numbers carry no tangent under torch.inference_mode(): the linearized model returned
    f(x; θ_t), the network at the anchor, instead of f_lin(x; θ)."""
    lin = conetool.linearize(_small_net())
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.01)
    x = torch.randn(5, 1, 8, 8)
    expected = lin(x).detach()
    with torch.inference_mode():
        found = lin(x)
    torch.testing.assert_close(found, expected)


@pytest.mark.parametrize("kind", ["trace", "full"])
def test_empirical_ntk_under_inference_mode(kind: str) -> None:
    model, x = _small_net(), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    model.double()
    expected = conetool.empirical_ntk(model, x, kind=kind, device="cpu")
    with torch.inference_mode():
        inputs = x.clone()  # an inference tensor
        found = conetool.empirical_ntk(model, inputs, kind=kind, device="cpu")
        cross = conetool.empirical_ntk(model, inputs, inputs[:2], kind=kind, device="cpu")
    torch.testing.assert_close(found, expected)
    torch.testing.assert_close(cross, expected[:, :2] if kind == "trace" else expected[:, :, :2])


def test_one_step_and_step_pairs_as_plain_python_values(run: Path, tmp_path: Path) -> None:
    """switch(5), distance(refs=0, dts=5), kernels(steps=(0, 5)): a bare int failed with
    "'int' object is not iterable", a string was read one character at a time, and a (first,
    last) pair with "'tuple' object has no attribute 'strip'"."""
    store = tmp_path / "store"
    assert [r.step for r in conetool.inspect(run, steps=(5, None))] == [5, 10]
    assert [r.step for r in conetool.inspect(run, steps=[None, 5])] == [0, 5]
    result = conetool.kernels(run, store=store, steps=(0, 5), threads=1)
    assert result.computed == [0, 5]
    conetool.kernels(run, store=store, threads=1)
    d = conetool.distance(store, refs=0, dts=5, noise=False)
    assert d.refs == [0] and d.dts == [5]
    assert conetool.distance(store, refs="last", noise=False).refs == [10]
    with pytest.raises(conetool.ConetoolError, match="--steps .* is not a step range"):
        conetool.kernels(run, store=store, steps=(0, 5, 10), threads=1)
    assert [p.at for p in conetool.switch(5, store=store, threads=1).points] == [5]
    assert [p.at for p in conetool.switch("0:10:5", store=store, threads=1).points] == [0, 5]
    assert [p.at for p in conetool.switch(range(0, 10, 5), store=store, threads=1).points] == [
        0,
        5,
    ]


def test_demo_refuses_a_run_too_short(tmp_path: Path) -> None:
    """demo(steps=0) trained nothing and then blamed a missing conetool.toml."""
    for steps in (0, 7):
        with pytest.raises(conetool.ConetoolError, match=r"^--steps \d: .*at least 8"):
            conetool.demo(tmp_path / "demo", steps=steps, threads=1)
    with pytest.raises(conetool.ConetoolError, match=r"--probe-size"):
        conetool.demo(tmp_path / "demo", steps=8, probe_size=1, threads=1)
    assert not (tmp_path / "demo").exists()


def test_distance_and_spectrum_take_threads(run: Path, tmp_path: Path) -> None:
    """As the CLI's --threads; and the caller's thread count is back after the call."""
    store = tmp_path / "store"
    conetool.kernels(run, store=store, threads=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []

    class Spy:
        def task(self, description: str, total: int | None) -> Spy:
            seen.append(torch.get_num_threads())
            return self

        def advance(self, amount: int = 1, **fields: object) -> None:
            pass

        def close(self) -> None:
            pass

        def log(self, message: str) -> None:
            seen.append(torch.get_num_threads())

    try:
        conetool.distance(store, noise=False, threads=1, progress=Spy())
        conetool.spectrum(store, threads=1, progress=Spy())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    # the Python argument, not the flag (it said "Pass --threads 1", which Python has not)
    with pytest.raises(conetool.ConetoolError, match=r"^threads must .* not 0\. Pass threads=1 "):
        conetool.spectrum(store, threads=0)


def test_kernels_take_a_torch_dtype_as_empirical_ntk_does(run: Path, tmp_path: Path) -> None:
    made = conetool.kernels(run, store=tmp_path / "s", dtype=torch.float64, steps=(0, 0), threads=1)
    assert conetool.Store.open(made.store).load_kernel(0).dtype == torch.float64
    with pytest.raises(conetool.ConetoolError, match="--dtype 'int8' is unknown"):
        conetool.kernels(run, store=tmp_path / "t", dtype=torch.int8, threads=1)


def test_empirical_ntk_takes_a_dtype_name_as_kernels_does() -> None:
    """The README: `dtype=` takes "float64" or torch.float64. empirical_ntk passed the string to
    Tensor.to, whose TypeError (no ConetoolError) listed Tensor.to's signatures."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x = torch.randn(5, 4)
    named = conetool.empirical_ntk(model, x, dtype="float64", device="cpu")
    assert named.dtype == torch.float64
    assert torch.equal(named, conetool.empirical_ntk(model, x, dtype=torch.float64, device="cpu"))
    assert conetool.empirical_ntk(model, x, dtype="float32", device="cpu").dtype == torch.float32
    with pytest.raises(conetool.ConetoolError, match="^dtype 'float16' is unknown"):
        conetool.empirical_ntk(model, x, dtype="float16", device="cpu")


def test_every_error_a_call_raises_is_exported_under_conetool_error() -> None:
    for name in ("GeometryError", "MemoryBudgetError", "NonFiniteKernelError", "ModelError"):
        assert issubclass(getattr(conetool, name), conetool.ConetoolError), name
        assert name in conetool.__all__


def test_every_error_class_of_conetool_errors_is_exported() -> None:
    """OptimizerStateDamagedError, which train(resume=True) raises, was not exported."""
    import inspect

    import conetool.errors

    classes = [
        name
        for name, value in vars(conetool.errors).items()
        if inspect.isclass(value) and issubclass(value, conetool.ConetoolError)
    ]
    assert "OptimizerStateDamagedError" in classes
    for name in classes:
        assert name in conetool.__all__, name
        assert getattr(conetool, name) is getattr(conetool.errors, name)


@pytest.mark.parametrize("name", ["probe_size", "eval_size"])
@pytest.mark.parametrize("value", ["10", 2.5, True, 0])
def test_a_count_that_is_no_whole_number_is_named(
    run: Path, tmp_path: Path, name: str, value: object
) -> None:
    # no int: the Python argument (the command line cannot pass one); 0: the flag, as the CLI's
    flag = "--" + name.replace("_", "-")
    named = f"{flag} must be a positive whole number" if value == 0 else f"^{name}={value!r} is a"
    with pytest.raises(conetool.ConetoolError, match=named):
        conetool.kernels(run, store=tmp_path / "s", threads=1, **{name: value})
    assert not (tmp_path / "s").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda run, tmp: conetool.kernels(None, store=tmp / "s", threads=1), r"^ckpts=None"),
        (lambda run, tmp: conetool.kernels([run], store=tmp / "s", threads=1), r"^ckpts=\["),
        (lambda run, tmp: conetool.kernels(run, store=None, threads=1), r"^--store None"),
        (lambda run, tmp: conetool.inspect(None), r"^ckpts=None"),
        (lambda run, tmp: conetool.train(run / "conetool.toml", None), r"^--out None"),
        (lambda run, tmp: conetool.train(None, tmp / "t"), r"^spec=None"),
        (lambda run, tmp: conetool.kernels(run, spec=2.5, store=tmp / "s"), r"^spec=2\.5"),
        (lambda run, tmp: conetool.distance(None), r"^--store None"),
        (lambda run, tmp: conetool.embed(7), r"^--store 7"),
        (lambda run, tmp: conetool.spectrum([tmp]), r"^--store \["),
        (lambda run, tmp: conetool.report(None), r"^--store None"),
        (lambda run, tmp: conetool.switch(5, store=tmp / "s", ckpts=1), r"^--ckpts 1"),
        (lambda run, tmp: conetool.switch(5, store=None), r"^--store None"),
        (lambda run, tmp: conetool.demo(None, steps=8), r"^--out None"),
        (lambda run, tmp: conetool.Store.open(None), r"^--store None"),
        (lambda run, tmp: conetool.Store.open([tmp]), r"^--store \["),
    ],
)
def test_a_path_argument_that_is_no_path_is_named(
    run: Path, tmp_path: Path, call: Any, named: str
) -> None:
    """kernels(None), store=None, a list of directories: a bare TypeError from pathlib."""
    with pytest.raises(conetool.ConetoolError, match=named) as e:
        call(run, tmp_path)
    assert "str or pathlib.Path" in str(e.value)
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda run, tmp: conetool.kernels("", store=tmp / "s", threads=1), r"^ckpts=''"),
        (lambda run, tmp: conetool.kernels(run, store="", threads=1), r"^--store ''"),
        (lambda run, tmp: conetool.kernels(run, spec="", store=tmp / "s"), r"^spec=''"),
        (lambda run, tmp: conetool.inspect(""), r"^ckpts=''"),
        (lambda run, tmp: conetool.train(run / "conetool.toml", ""), r"^--out ''"),
        (lambda run, tmp: conetool.train("", tmp / "t"), r"^spec=''"),
        (lambda run, tmp: conetool.load_spec(""), r"^spec=''"),
        (lambda run, tmp: conetool.distance(""), r"^--store ''"),
        (lambda run, tmp: conetool.switch(5, store=tmp / "s", ckpts=""), r"^--ckpts ''"),
        (lambda run, tmp: conetool.demo("", steps=8), r"^--out ''"),
        (lambda run, tmp: conetool.Store.open(""), r"^--store ''"),
    ],
)
def test_an_empty_path_argument_is_refused_not_taken_as_the_current_folder(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: Any, named: str
) -> None:
    """Path("") is Path("."): kernels(run, store="") made its store in the current folder, and
    train(spec, "") wrote its checkpoints there."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(conetool.ConetoolError, match=named) as e:
        call(run, tmp_path)
    assert "is an empty path" in str(e.value)
    assert list(here.iterdir()) == [] and not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (
            lambda run, tmp: conetool.kernels(run, store="  "),
            "--store '  ' is a path of only spaces, which would name a file or folder '  ' in "
            "the current folder. Pass ",
        ),
        (
            lambda run, tmp: conetool.inspect(" "),
            "ckpts=' ' is a path of only spaces, which would name a file or folder ' ' in the "
            "current folder. Pass the checkpoint directory (or one checkpoint).",
        ),
        (
            lambda run, tmp: conetool.load_spec(" "),
            "spec=' ' is a path of only spaces. Pass the path of a TOML spec file",
        ),
    ],
)
def test_a_path_of_only_spaces_is_said_to_be_that_not_empty(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: Any, said: str
) -> None:
    """A path of spaces was refused as 'an empty path, which would mean the current folder':
    it is neither; it would name a folder of spaces here."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(conetool.ConetoolError) as e:
        call(run, tmp_path)
    assert str(e.value).startswith(said), str(e.value)
    assert "empty" not in str(e.value)
    assert list(here.iterdir()) == []


def test_load_kernel_takes_a_step_as_ref_does(run: Path, tmp_path: Path) -> None:
    """load_kernel("last") raised a TypeError from the nearest-steps hint; "last" is what --ref
    takes for the last stored step, so it is the last stored kernel here too."""
    conetool.kernels(run, store=tmp_path / "s", threads=1)
    store = conetool.Store.open(tmp_path / "s")
    last = store.load_kernel(10)
    assert torch.equal(store.load_kernel("last"), last)
    assert torch.equal(store.load_kernel("LAST"), last)
    assert torch.equal(store.load_kernel(np.int64(10)), last)
    assert torch.equal(store.load_kernel("5"), store.load_kernel(5))
    for wrong in (None, "first", 2.5, True, [10]):
        with pytest.raises(conetool.StoreError, match=r"^load_kernel\(step=.*'last'.*0 to 10"):
            store.load_kernel(wrong)  # type: ignore[arg-type]
    with pytest.raises(conetool.StoreError, match="step 7 is not in store"):
        store.load_kernel(7)


def test_spectrum_top_k_beyond_the_kernel_keeps_all_and_says_so(run: Path, tmp_path: Path) -> None:
    """top_k=1000 on a kernel of 6 eigenvalues was taken silently: the label energy over every
    eigenvector is 1 (an orthonormal basis holds all of the labels' energy)."""
    store = tmp_path / "s"
    conetool.kernels(run, store=store, threads=1)
    n = conetool.Store.open(store).load_kernel(0).shape[0]
    result = conetool.spectrum(store, top_k=1000, threads=1)
    assert result.top_k == n
    assert all(p.eigenvalues.size == n for p in result.points)
    assert all(p.label_energy == pytest.approx(1.0) for p in result.points)
    assert (
        len(result.warnings) == 1
        and f"--top-k 1000 is not below the {n} eigenvalues" in (result.warnings[0])
    )
    summary = json.loads(paths.spectrum_summary(store).read_text())
    assert summary["warnings"] == summary["notes"] == result.warnings and summary["top_k"] == n
    below = conetool.spectrum(store, top_k=n - 1, threads=1)
    assert below.warnings == below.notes == [] and below.top_k == n - 1
    for wrong in ("10", 2.5, None, True):
        with pytest.raises(conetool.ConetoolError, match=rf"^top_k={wrong!r} is a .*not an int"):
            conetool.spectrum(store, top_k=wrong, threads=1)  # type: ignore[arg-type]
    with pytest.raises(conetool.ConetoolError, match=r"^--top-k 0: .*positive whole number"):
        conetool.spectrum(store, top_k=0, threads=1)


def test_scalar_arguments_of_the_wrong_type_are_named(run: Path, tmp_path: Path) -> None:
    """Each of these ended in a raw TypeError, AttributeError or ValueError (or, for dts="15",
    asked for the spacings 1 and 5)."""
    store = tmp_path / "s"
    conetool.kernels(run, store=store, threads=1)
    refused: list[tuple[Any, str]] = [
        (lambda: conetool.kernels(run, store=store, device=0.5), r"^--device 0\.5"),
        (lambda: conetool.inspect(run, step_regex=5), r"^--step-regex 5 .* as a str"),
        (lambda: conetool.inspect(run, every=True), r"^every=True is a bool, not an int"),
        (lambda: conetool.kernels(run, store=store, groups=5), r"^--groups 5 is no grouping"),
        (lambda: conetool.kernels(run, store=store, groups=["a=b"]), r"^--groups \['a=b'\]"),
        (lambda: conetool.distance(store, dts="abc"), r"^--dt 'abc' is not a number"),
        (lambda: conetool.distance(store, dts=[True]), r"^--dt True is not a number"),
        (lambda: conetool.distance(store, rules="x"), r"^rules='x' is not a .*VerdictRules"),
        (lambda: conetool.embed(store, seed=-1), r"^--seed -1 is not a seed"),
        (lambda: conetool.embed(store, seed="0"), r"^seed='0' is a str, not an int: pass seed=0"),
        (lambda: conetool.switch(5, store=store, until="10"), r"^until='10' is a str, not an int"),
        (lambda: conetool.switch(5, store=store, until=2.5), r"^until=2\.5 is a float, not an"),
    ]
    for call, named in refused:
        with pytest.raises(conetool.ConetoolError, match=named):
            call()
    assert conetool.distance(store, dts="5", noise=False).dts == [5]  # the text of --dt 5
    assert not paths.switch_dir(store).exists()


def test_demo_checks_switch_at_before_training(tmp_path: Path) -> None:
    """switch_at="abc" or a step past the run failed in the switch stage, after training and the
    kernels (minutes on the full demo)."""
    for at, named in (("abc", r"^switch_at='abc': --at 'abc'"), ([0, 8], r"^switch_at=\[0, 8\]")):
        with pytest.raises(conetool.ConetoolError, match=named):
            conetool.demo(tmp_path / "demo", steps=8, switch_at=at, threads=1)
    assert not (tmp_path / "demo").exists()


# ------------------------------------------------------------------- bool and int argument types


def _command_functions() -> list[str]:
    """The library function behind each CLI command (one per command, the same name)."""
    from conetool.cli import app

    names = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
    assert set(names) <= set(conetool.__all__), names
    return names


#: Wrong values per annotation: taken by their truth ("no" as True), or a float where the code
#: slices, ranges and compares (embed(dims=2.0) passed `dims in (2, 3)` and then raised a raw
#: TypeError after computing the S matrix). A numpy integer is an int (it is taken, below).
_WRONG = {
    "bool": ["no", "False", 0, 1, None, 0.0, np.bool_(True)],
    "int": [2.0, "2", True, None, np.float64(2.0), np.bool_(True)],
    "int | None": [2.0, "2", False, np.bool_(False)],
}

#: (function, parameter, its annotation, a wrong value), over every bool and int parameter of
#: every command's function, read from its signature, so that a new parameter is covered too.
_TYPED = [
    (name, parameter, str(spec.annotation), value)
    for name in _command_functions()
    for parameter, spec in inspect.signature(getattr(conetool, name)).parameters.items()
    for value in _WRONG.get(str(spec.annotation), [])
]


def test_the_typed_parameters_include_the_known_ones() -> None:
    seen = {(name, parameter) for name, parameter, _, _ in _TYPED}
    for known in [
        ("train", "overwrite"),
        ("kernels", "skip_bad"),
        ("kernels", "probe_size"),
        ("distance", "noise"),
        ("embed", "dims"),
        ("spectrum", "logx"),
        ("switch", "beyond_run"),
        ("demo", "steps"),
        ("inspect", "verify"),
    ]:
        assert known in seen, known


@pytest.mark.parametrize(("name", "parameter", "annotation", "value"), _TYPED, ids=repr)
def test_a_bool_or_int_argument_of_another_type_is_refused_naming_it(
    tmp_path: Path, name: str, parameter: str, annotation: str, value: object
) -> None:
    """overwrite="no" acted as True and embed(dims=2.0) was taken: every bool parameter of a
    command's function takes only True or False, and every int parameter only an integer (not a
    float, text, bool or numpy bool), refused before anything runs, naming the argument."""
    function = getattr(conetool, name)
    signature = inspect.signature(function)
    given: dict[str, Any] = {}
    for other, spec in signature.parameters.items():  # paths that are not there, or a step
        if spec.default is inspect.Parameter.empty or other in ("store", "out"):
            given[other] = 5 if other == "at" else tmp_path / other
    given[parameter] = value
    with pytest.raises(conetool.ConetoolError) as refused:
        function(**given)
    message = str(refused.value)
    wanted = "a bool" if annotation == "bool" else "an int"
    assert message.startswith(f"{parameter}={value!r} is a {type(value).__name__}, not {wanted}:")
    if annotation == "bool":
        fix = f"pass {parameter}=True or {parameter}=False"
    elif str(value) in ("2", "2.0"):  # 2.0, "2", np.float64(2.0): the int it stands for
        fix = f"pass {parameter}=2"
    else:
        fix = "pass a whole number as an int"
    assert fix in message, message
    assert list(tmp_path.iterdir()) == []  # refused before anything was read or written


def test_a_whole_number_of_another_type_gets_the_int_to_pass() -> None:
    with pytest.raises(
        conetool.ConetoolError, match=r"^dims=2\.0 is a float, not an int: pass dims=2\.$"
    ):
        conetool.embed("nowhere", dims=2.0)
    with pytest.raises(conetool.ConetoolError, match=r"pass every=4 \(or every=None\)\.$"):
        conetool.inspect("nowhere", every="4")


@pytest.mark.parametrize("text", ["--5", "+-5", "\u00b2", "5-"])
def test_text_that_is_no_whole_number_gets_the_message_not_a_value_error(text: str) -> None:
    # "--5".lstrip("+-") and "²" pass str.isdigit: int() of them raised a bare ValueError
    with pytest.raises(conetool.ConetoolError, match=r"pass a whole number as an int\.$"):
        conetool.embed("nowhere", dims=text)
    with pytest.raises(conetool.ConetoolError, match=r"pass every=-5 \(or every=None\)\.$"):
        conetool.inspect("nowhere", every=" -5 ")


# ------------------------------------------------------------- numpy numbers and mixed arguments


def test_numpy_numbers_arrive_as_plain_ints_and_floats() -> None:
    """np.int64 (np.arange, a shape) was refused for an int argument; it is an integer, and the
    function gets a plain int (its JSON files refuse numpy scalars), a numpy float a plain float."""
    from conetool.library_call import library_call

    seen: dict[str, object] = {}

    @library_call
    def f(a: int, b: int | None = None, *, c: float = 1.0, d: float | None = None) -> None:
        seen.update(a=a, b=b, c=c, d=d)

    f(np.int64(3), np.uint8(4), c=np.float32(0.5), d=np.int32(2))
    assert seen == {"a": 3, "b": 4, "c": 0.5, "d": 2.0}
    assert [type(seen[k]) for k in "abcd"] == [int, int, float, float]
    f(5, c=2)  # plain values as they were; an int is a real number
    assert seen == {"a": 5, "b": None, "c": 2.0, "d": None} and type(seen["c"]) is float
    for call, refused in [
        (lambda: f(np.bool_(True)), r"^a=np\.True_ is a bool, not an int: pass a whole number"),
        (lambda: f(1, c="0.5"), r"^c='0\.5' is a str, not a float: pass c=0\.5\.$"),
        (lambda: f(1, c=True), r"^c=True is a bool, not a float: pass a number as a float\.$"),
        (lambda: f(1, c=None), r"^c=None is a NoneType, not a float"),
        (lambda: f(1, d=np.bool_(False)), r"^d=np\.False_ is a bool, not a float: .*\(or d=None\)"),
    ]:
        with pytest.raises(conetool.ConetoolError, match=refused):
            call()


def test_a_0d_integer_tensor_is_an_integer_for_every_integer_argument() -> None:
    """distance_matrix(count=torch.tensor(3)) was refused while np.int64(3) was taken, and
    load_kernel(step=torch.tensor(True)) read step 1: every integer argument asks
    choices.integer, which takes an int, a numpy integer or a 0-d integer tensor or array, and
    refuses bools of any kind, floats, tensors of one element that are not 0-d, time spans and
    masked values."""
    from conetool.checkpoints.selection import step_range_text
    from conetool.choices import float_argument, integer, step_or_last
    from conetool.geometry import GeometryError, distance_matrix
    from conetool.kernel_spectrum import spectrum_point
    from conetool.library_call import library_call
    from conetool.noise_floor import kernel_noise
    from conetool.threads import parse_threads
    from conetool.units import parse_memory

    seen: dict[str, object] = {}

    @library_call
    def f(a: int, b: int | None = None) -> None:
        seen.update(a=a, b=b)

    three = torch.tensor(3)
    for given in (3, np.int64(3), three, torch.tensor(3, dtype=torch.uint8), np.array(3)):
        assert integer(given) == 3 and type(integer(given)) is int, given
        f(given, given)
        assert seen == {"a": 3, "b": 3} and type(seen["a"]) is int
        assert step_or_last(given) == 3 and step_range_text((given, None)) == "3:"
        assert parse_threads(given) == 3 and parse_memory(given) == 3
    for refused in (
        True,
        np.bool_(True),
        torch.tensor(True),
        np.array(True),
        3.0,
        torch.tensor(3.0),
        torch.tensor([3]),
        torch.empty((), dtype=torch.int64, device="meta"),
    ):
        assert integer(refused) is None and step_or_last(refused) is None, refused
        with pytest.raises(conetool.ConetoolError, match=r"^a=.* is a \w+, not an int: pass "):
            f(refused)
    # a bool tensor is no whole number to pass instead (it read as 1)
    with pytest.raises(conetool.ConetoolError, match=r"pass a whole number as an int\.$"):
        f(torch.tensor(True))
    with pytest.raises(ValueError, match=r"threads must be a whole number"):
        parse_threads(torch.tensor(True))
    with pytest.raises(conetool.ConetoolError, match=r"max_memory=tensor\(True\) is not a memory"):
        parse_memory(torch.tensor(True), "max_memory")

    # numpy counts a time span among its integers (np.timedelta64(3, 's') then failed with a raw
    # TypeError, np.timedelta64(3) was 3), and a masked value's data (np.ma.array(3, mask=True))
    # is a placeholder: no integer, no float, no memory size, refused as any other non-integer
    for refused in (
        np.timedelta64(3),
        np.timedelta64(3, "s"),
        np.datetime64(3, "s"),
        np.ma.masked,
        np.ma.array(3, mask=True),
    ):
        assert integer(refused) is None and step_or_last(refused) is None, refused
        with pytest.raises(conetool.ConetoolError, match=r"pass a whole number as an int\.$"):
            f(refused)
        with pytest.raises(conetool.ConetoolError, match=r"(?s)^x=.* not a float: pass a number"):
            float_argument(refused, "x")
        with pytest.raises(
            conetool.ConetoolError, match=r"(?s)^max_memory=.* is not a memory size"
        ):
            parse_memory(refused)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"threads must be a whole number"):
            parse_threads(refused)  # type: ignore[arg-type]
    assert integer(np.ma.array(3)) == 3  # a masked array's value that is not masked

    kernels = [torch.eye(3) * (i + 1) + i for i in range(3)]
    expected = distance_matrix(kernels.__getitem__, 3)
    np.testing.assert_array_equal(
        distance_matrix(kernels.__getitem__, three, block_size=three), expected
    )
    with pytest.raises(GeometryError, match=r"^count=tensor\(True\) is a Tensor, not an int"):
        distance_matrix(kernels.__getitem__, torch.tensor(True))
    labels = torch.tensor([0, 1, 0, 1])
    point = spectrum_point(np.eye(4), labels.numpy(), labels.max() + 1, top_k=three)
    assert point.eigenvalues.size == 3
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    assert kernel_noise(net, torch.randn(6, 4), subset=three, device="cpu").n == 3
    with pytest.raises(conetool.ConetoolError, match=r"subset must be a positive number"):
        kernel_noise(net, torch.randn(6, 4), subset=torch.tensor(True), device="cpu")


def test_numpy_integers_work_for_every_int_and_step_argument(run: Path, tmp_path: Path) -> None:
    """A researcher's np.int64 for a count, a step, a memory size or a step pair: refused before
    (int arguments, max_memory, kernels(steps=)), or taken by refs, dts and at."""
    i = np.int64
    store = tmp_path / "store"
    made = conetool.kernels(
        run,
        store=store,
        probe_size=i(4),
        eval_size=i(3),
        every=i(5),
        steps=(i(0), i(10)),
        max_memory=i(2**28),
        threads=i(1),
    )
    assert made.computed == [0, 5, 10]
    manifest = json.loads(paths.manifest(store).read_text())
    assert manifest["probe"]["size"] == 4 and manifest["eval"]["size"] == 3
    assert [r.step for r in conetool.inspect(run, steps=[i(5), None], every=i(5))] == [5, 10]
    d = conetool.distance(
        store, refs=np.array([0, 5]), dts=i(5), max_memory=i(2**28), threads=i(1), noise=False
    )
    assert d.refs == [0, 5] and d.dts == [5]
    assert conetool.distance(store, refs=i(10), dts=np.arange(5, 6), noise=False).refs == [10]
    e = conetool.embed(store, dims=i(2), seed=i(1), method="pca")
    summary = json.loads(paths.embed_summary(store).read_text())
    assert e.embedding.coords.shape == (3, 2) and (summary["dims"], summary["seed"]) == (2, 1)
    assert conetool.spectrum(store, top_k=i(2)).top_k == 2
    switched = conetool.switch(np.array([0]), store=store, until=i(5), threads=1)
    assert [p.at for p in switched.points] == [0]
    assert json.loads(paths.switch_results_json(store).read_text())["until"] == 5


def test_a_memory_budget_is_any_positive_number_of_bytes(run: Path, tmp_path: Path) -> None:
    """max_memory=2.5e8 (Python's way to write 250 MB) was refused as "not a memory size", which
    takes "250000000.0" as text; a number that is no size is refused naming max_memory= (the
    command line checks --max-memory itself, naming it)."""
    from conetool.units import parse_memory

    assert parse_memory(2.5e8) == 250_000_000 == parse_memory("250MB")
    assert parse_memory(np.float32(1024.0)) == 1024 and parse_memory(np.uint32(7)) == 7
    # a fraction of a byte: no budget, most likely a slip for "1.5GiB"
    for wrong in (
        0.5,
        1.5,
        np.float32(1024.5),
        0,
        -1.0,
        float("nan"),
        float("inf"),
        np.bool_(True),
        [5],
        None,
    ):
        with pytest.raises(conetool.MemoryBudgetError, match=r"^max_memory=.* is not a memory"):
            parse_memory(wrong)  # type: ignore[arg-type]
    store = tmp_path / "store"
    conetool.kernels(run, store=store, threads=1)
    assert conetool.distance(store, max_memory=2.5e8, noise=False).steps == [0, 5, 10]


def test_mixed_arguments_of_the_wrong_type_are_named(run: Path, tmp_path: Path) -> None:
    """threads, max_memory, steps, refs, dts, at and switch_at (each a number or text or a list)
    are parsed by their function: a wrong type is a ConetoolError naming the argument's flag and
    the fix, never a raw TypeError."""
    store = tmp_path / "store"
    conetool.kernels(run, store=store, threads=1)
    refused: list[tuple[Any, str]] = [
        (lambda: conetool.distance(store, threads=1.5), r"^threads must be a whole .* not 1\.5"),
        (lambda: conetool.spectrum(store, threads=[1]), r"^threads must be a whole .* not \[1\]"),
        (lambda: conetool.distance(store, max_memory=[5]), r"^max_memory=\[5\] is not a memory"),
        (lambda: conetool.embed(store, max_memory="abc"), r"^max_memory='abc' is not a memory"),
        (
            lambda: conetool.kernels(run, store=tmp_path / "k", max_memory="lots"),
            r"^max_memory='lots' is not a memory size\. Pass .* max_memory='4GiB'",
        ),
        (
            lambda: conetool.kernels(run, store=store, steps=[0.5, 5]),
            r"^--steps \[0\.5, 5\] is not",
        ),
        (lambda: conetool.inspect(run, steps={"a": 1}), r"^--steps \{'a': 1\} is not a step range"),
        (lambda: conetool.distance(store, refs=2.5), r"^--ref 2\.5 is not a step\. Pass a stored"),
        (lambda: conetool.distance(store, refs=[None]), r"^--ref None is not a step"),
        (lambda: conetool.distance(store, dts=2.5), r"^--dt 2\.5 is not a number of steps\. Pass"),
        (lambda: conetool.distance(store, dts=[5.0]), r"^--dt 5\.0 is not a number of steps"),
        (lambda: conetool.switch(2.5, store=store), r"^--at 2\.5 is not a step list\. Use a step"),
        (lambda: conetool.switch(None, store=store), r"^--at None is not a step list"),
        (lambda: conetool.switch([True], store=store), r"^--at True is not a step list"),
        (
            lambda: conetool.demo(tmp_path / "demo", steps=8, switch_at=[2.5]),
            r"^switch_at=\[2\.5\]: --at 2\.5 is not a step list",
        ),
        (
            lambda: conetool.demo(tmp_path / "demo", steps=8, switch_at=np.array([0, 99])),
            r"^switch_at=array\(\[ 0, 99\]\): step 99 is not before the demo's last step 8",
        ),
    ]
    for call, named in refused:
        with pytest.raises(conetool.ConetoolError, match=named):
            call()
    assert not paths.switch_dir(store).exists() and not (tmp_path / "demo").exists()


def test_verdict_rules_take_numpy_numbers_and_name_a_wrong_type() -> None:
    """distance(rules=VerdictRules(min_drop="3")) ended in a raw TypeError from the range check
    ('>' between str and float), reference_fractions=np.array(...) in numpy's "truth value of
    an array is ambiguous"; numpy numbers are taken, as plain floats and ints."""
    from conetool.verdict import VerdictRules

    rules = VerdictRules(
        min_drop=np.float32(3.0),
        velocity_dt=np.int64(5),
        lazy_level=0,
        reference_fractions=np.array([0.1, 0.3]),
        min_steps=np.int64(9),
    )
    assert rules == VerdictRules(
        min_drop=3.0, velocity_dt=5, lazy_level=0.0, reference_fractions=(0.1, 0.3), min_steps=9
    )
    assert [type(v) for v in rules.to_dict().values()] == [
        float,
        int,
        float,
        float,
        float,
        float,
        float,
        list,
        int,
        int,
        int,
    ]
    assert json.loads(json.dumps(rules.to_dict()))["velocity_dt"] == 5
    for given, refused in [
        ({"min_drop": "3"}, r"^min_drop='3' is a str, not a float: pass min_drop=3\.0\.$"),
        ({"min_drop": None}, r"^min_drop=None is a NoneType, not a float"),
        ({"freeze_factor": True}, r"^freeze_factor=True is a bool, not a float"),
        ({"velocity_dt": 2.5}, r"^velocity_dt=2\.5 is a float, not an int: .*velocity_dt=None"),
        ({"min_steps": "8"}, r"^min_steps='8' is a str, not an int: pass min_steps=8\.$"),
        ({"reference_fractions": "0.1"}, r"^reference_fractions='0\.1' is not a sequence"),
        ({"reference_fractions": 0.1}, r"^reference_fractions=0\.1 is not a sequence"),
        ({"reference_fractions": [0.1, "a"]}, r"^reference_fractions\[1\]='a' is a str"),
    ]:
        with pytest.raises(conetool.ConetoolError, match=refused):
            VerdictRules(**given)


def test_a_memory_size_in_scientific_notation_is_bytes_on_the_command_line_too() -> None:
    """--max-memory 2e9 (as parse_memory's docstring writes a size) was refused as text; a
    fraction of a byte stays refused as text as it is as a number ("1.5" was 1 byte)."""
    from conetool.units import parse_memory

    assert parse_memory("2e9") == parse_memory(2e9) == 2_000_000_000
    assert parse_memory("2.5E8") == parse_memory(" 1e3B ") * 250_000 == 250_000_000
    assert parse_memory("1.5GiB") == 3 * 2**29 and parse_memory("1e0KiB") == 1024
    for wrong in ("1.5", "2.5e-1", "1e999", "1e999GiB", "0e5", "2e", "e9", "1e9.5"):
        with pytest.raises(conetool.MemoryBudgetError, match=r"^--max-memory .* is not a memory"):
            parse_memory(wrong, "--max-memory")
