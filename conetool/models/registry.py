"""The model registry: a built-in name or ``"package.module:factory"`` -> ``nn.Module``.

Example::

    import torch
    from conetool.models import build_model, output_check
    from conetool.spec import ModelSpec

    torch.manual_seed(0)  # seeding is the caller's job
    spec = ModelSpec(arch="resnet20", num_classes=10, options={"width": 2})
    model = build_model(spec, (3, 32, 32))
    output_check(model, (3, 32, 32), 10, arch=spec.arch)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConetoolError, ModelError
from ..model_inputs import check_batch, is_token_batch
from ..ntk_buffers import called_on_copies
from ..spec import ModelSpec, toml_text
from ..user_modules import import_user_module, is_import_path, raised_at, shadowed_note
from .lenet import lenet5, lenet_300_100
from .mlp import mlp
from .outputs import logits_returned
from .resnet import resnet20
from .vgg import vgg16

BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "lenet_300_100": lenet_300_100,
    "mlp": mlp,
    "resnet20": resnet20,
    "vgg16": vgg16,
}

# Parameters that build_model fills in itself; every other factory parameter is an option.
_FIXED = ("input_shape", "num_classes")


def build_model(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    *,
    source: str | None = None,
    examples: torch.Tensor | None = None,
) -> nn.Module:
    """Build the model that ``spec`` describes, for examples of shape ``input_shape``.

    ``spec.arch`` is a key of :data:`BUILTIN_MODELS`, called as
    ``factory(input_shape=..., num_classes=..., **spec.options)``, or ``"package.module:factory"``
    (the part after the colon may be dotted, ``"pkg.mod:Class.create"``), called with
    ``num_classes=`` and ``**spec.options``, plus ``input_shape=`` when the factory's signature
    has an ``input_shape`` parameter or ``**kwargs``. A module that is not importable from
    ``sys.path`` is looked for in the current directory too (like ``python -m``). A user model
    whose forward returns its logits inside an object (a dict's ``"logits"``, a Hugging Face
    ``ModelOutput``, a dataclass's ``.logits``) is made to return the tensor itself, its names
    unchanged (:func:`conetool.models.outputs.logits_returned`).

    A built-in model comes back on the CPU in float32 and training mode; a factory's model as the
    factory returned it, in its dtype, on its device and in its mode (``model.double()``: a
    float64 model, whose batches conetool casts to float64, :mod:`conetool.model_inputs`). Both are
    initialized from the global RNG: call ``torch.manual_seed`` first for a reproducible model.
    ``input_shape`` is one example's shape, e.g. ``(1, 8, 8)`` (digits), ``(1, 28, 28)``
    (MNIST), ``(3, 32, 32)`` (CIFAR-10); the model maps ``(batch, *input_shape)`` to ``(batch, num_classes)``
    (check it with :func:`output_check`).

    ``source``: the spec file ``spec`` was read from, which every error then begins with, as
    the spec's own errors do (``run.toml: unknown key 'widht' in [model] ...``). ``examples``:
    the data set's first inputs, ``(k, *input_shape)``, on which a model of token ids (integer
    inputs) is run to see what its forward returns (:func:`conetool.model_inputs.check_batch`).

    Raises:
        ModelError: unknown architecture, unknown option, bad option value, or a user factory
            that cannot be imported, called, or does not return an ``nn.Module``.
    """
    if source is None:
        return _build_model(spec, input_shape, examples)
    try:
        return _build_model(spec, input_shape, examples)
    except ModelError as exc:
        raise type(exc)(f"{source}: {exc}") from exc


def _build_model(
    spec: ModelSpec, input_shape: tuple[int, ...], examples: torch.Tensor | None = None
) -> nn.Module:
    """:func:`build_model` without the spec file in its errors."""
    arch, options = spec.arch, dict(spec.options)
    input_shape = tuple(input_shape)
    if not isinstance(arch, str):
        raise ModelError(f"[model] arch = {toml_text(arch)} must be a string. {_choices_text()}")
    if ":" in arch:
        return _build_user_model(arch, spec.num_classes, options, input_shape, examples)
    if arch not in BUILTIN_MODELS:
        close = difflib.get_close_matches(arch, BUILTIN_MODELS, n=1)
        hint = f" Did you mean {toml_text(close[0])}?" if close else ""
        if "." in arch and not close:  # "pkg.mod.factory": a factory is named with a colon
            module, _, name = arch.rpartition(".")
            meant = toml_text(f"{module}:{name}")
            hint = f' Did you mean {meant} (a factory is "package.module:factory")?'
        raise ModelError(
            f"[model] arch = {toml_text(arch)} is not a known architecture. {_choices_text()}{hint}"
        )
    factory = BUILTIN_MODELS[arch]
    valid = [name for name in inspect.signature(factory).parameters if name not in _FIXED]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            raise ModelError(
                f"unknown key '{key}' in [model] for arch '{arch}'. "
                f"Valid keys for '{arch}': arch, num_classes"
                + "".join(f", {name}" for name in valid)
                + ". Remove the key or fix its spelling."
                + (f" Did you mean '{close[0]}'?" if close else "")
                + _key_of_another_arch(key, arch)
            )
    try:
        return factory(input_shape=input_shape, num_classes=spec.num_classes, **options)
    except (MemoryError, RuntimeError, TypeError, OverflowError) as exc:
        if not _too_large(exc):
            raise
        sizes = {"num_classes": spec.num_classes, **options}
        shown = ", ".join(f"{key} = {toml_text(value)}" for key, value in sizes.items())
        raise ModelError(
            f"[model] arch '{arch}' with {shown} is too large to build: its weights do not fit "
            f"in memory ({_first_line(exc)}). Use smaller sizes in [model] (a few hundred to a "
            "few thousand units per layer, e.g. widths = [512, 512] for 'mlp')."
        ) from exc


def _key_of_another_arch(key: str, arch: str) -> str:
    """`` 'widths' is a key of arch 'mlp': ...`` when ``key``, unknown to ``arch``, is an option
    of other built-in architectures (the arch written wrong, or not written: the default, which
    the commands then say, :func:`conetool.spec.default_arch_note`)."""
    others = [
        name
        for name, factory in BUILTIN_MODELS.items()
        if name != arch and key in inspect.signature(factory).parameters and key not in _FIXED
    ]
    if not others:
        return ""
    shown = " or ".join(f"'{name}'" for name in sorted(others)[:3])
    return f" '{key}' is a key of arch {shown}: set [model] arch = \"{sorted(others)[0]}\" if that model is meant."


#: What PyTorch says when a tensor of a model cannot be made for its size: the allocator found
#: no memory ("can't allocate memory", an out-of-memory error), or the size overflows (a width
#: of 2**62: "Storage size calculation overflowed"; of 10**30: "Overflow when unpacking long").
_TOO_LARGE = ("can't allocate memory", "out of memory", "overflow")


def _too_large(exc: BaseException) -> bool:
    """Whether ``exc``, raised while a built-in model is made, says its tensors are too large."""
    if isinstance(exc, MemoryError):
        return True
    return any(words in str(exc).lower() for words in _TOO_LARGE)


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (PyTorch's C++ errors add a stack after it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def output_check(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    arch: str | None = None,
    *,
    examples: torch.Tensor | None = None,
) -> None:
    """Run one batch of 2 examples of ``input_shape`` through ``model``; the output must be
    ``(2, num_classes)``.

    The inputs are standard normal from a private generator (the global RNG is untouched), on
    the model's device and in its dtype; or, when ``examples`` (k, *input_shape), inputs of the
    data set, are token ids, their first two as they are (:func:`conetool.model_inputs.check_batch`).
    The model runs in eval mode under ``torch.no_grad()`` and gets
    its training flag back afterwards, on copies of its buffers and tensor attributes
    (:func:`conetool.ntk_buffers.called_on_copies`): BatchNorm statistics do not change, nor
    does a state its forward pass updates (a call counter).

    Raises:
        ModelError: the forward pass fails, or returns something other than a
            ``(2, num_classes)`` tensor: a scalar (a loss) or an output without the batch first,
            integer outputs (argmax), another number of classes, each with its own fix. The
            message names ``arch`` (default: the class name).
    """
    name = arch if arch is not None else type(model).__name__
    shape = (2, *tuple(input_shape))
    x = check_batch(model, input_shape, examples)
    tokens = is_token_batch(x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = called_on_copies(model, x)
    except ConetoolError:
        raise
    except Exception as exc:
        given = (
            f" of the data set's {x.dtype} inputs (integer ids, given to the model as they are: "
            "if they are not token ids but numbers such as pixel values, return them as floats, "
            "x.float(), from the data factory)"
            if tokens
            else ""
        )
        raise ModelError(
            f"model '{name}' fails on an input batch of shape {shape}{given} "
            f"({type(exc).__name__}: {exc}). Check that [model] fits the data set: its examples "
            f"have shape {tuple(input_shape)} and {num_classes} classes."
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model '{name}' returned {type(out).__name__} for an input batch of shape {shape}; "
            "conetool needs the logits: a tensor of shape (batch, num_classes), or an object "
            "holding it under 'logits' (a dict, a Hugging Face ModelOutput, a dataclass with a "
            "logits field). Make forward return one of them without renaming the parameters: "
            "a subclass of the model whose forward returns the logits (class Net(MyNet): "
            "def forward(self, x): return super().forward(x)[0]), not a module around it, "
            "which puts a prefix before every name of the state dict."
        )
    if out.dim() == 0 or out.shape[0] != shape[0]:
        raise ModelError(
            f"model '{name}' maps an input batch of shape {shape} to an output of shape "
            f"{tuple(out.shape)}, which is not one row of logits per example: conetool needs "
            f"(batch, num_classes), here (2, {num_classes}), with the examples along the first "
            "dimension. Return the logits themselves (not a loss or another reduction over the "
            "batch), with the batch first."
        )
    if not (out.is_floating_point() or out.is_complex()):
        raise ModelError(
            f"model '{name}' returns {out.dtype} outputs of shape {tuple(out.shape)} for an "
            f"input batch of shape {shape}, which have no gradient, so their eNTK is not "
            "defined (it would be zero) and they cannot be trained. Return the logits as a "
            f"floating-point tensor (batch, num_classes), here (2, {num_classes}), not the "
            "predicted classes (argmax) or another integer result."
        )
    if tuple(out.shape) != (2, num_classes):
        raise ModelError(
            f"model '{name}' maps an input batch of shape {shape} to an output of shape "
            f"{tuple(out.shape)}, expected (2, {num_classes}): one logit per class. Set "
            f"[model] num_classes = {num_classes} to match the data set, or fix the model's "
            "output layer."
        )


def _choices_text() -> str:
    return (
        "Built-in: "
        + ", ".join(sorted(BUILTIN_MODELS))
        + ', or "package.module:factory" for your own model.'
    )


def _public_callables(module: Any) -> list[str]:
    names = [
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and callable(value) and not inspect.ismodule(value)
    ]
    return sorted(names)[:8]


def _resolve(arch: str) -> Callable[..., Any]:
    module_name, _, attr_path = arch.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    parts = attr_path.split(".")
    if arch.count(":") != 1 or not is_import_path(module_name, attr_path):
        raise ModelError(
            f'[model] arch = "{arch}" is not a valid import path. Write "package.module:factory", '
            'e.g. arch = "mymodels:build_net" for a function build_net in mymodels.py, '
            f"or a built-in name. {_choices_text()}"
        )
    module = import_user_module(module_name, f'[model] arch = "{arch}"', ModelError)
    target: Any = module
    for depth, part in enumerate(parts):
        if not hasattr(target, part):
            where = module_name + "".join("." + p for p in parts[:depth])
            found = _public_callables(target)
            listing = ", ".join(found) if found else "no public callables"
            raise ModelError(
                f"module '{where}' has no attribute '{part}' (from [model] arch = \"{arch}\"). "
                f"It defines: {listing}. Fix the name after the colon.{shadowed_note(module_name)}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(
            f'[model] arch = "{arch}" names a {type(target).__name__}, not a callable. Point it '
            "at a function or nn.Module class that builds the model."
        )
    return target


def _accepts_input_shape(factory: Callable[..., Any]) -> bool | None:
    """True/False from the factory's signature; None when it cannot be inspected."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    return any(
        (p.name == "input_shape" and p.kind != inspect.Parameter.POSITIONAL_ONLY)
        or p.kind == inspect.Parameter.VAR_KEYWORD
        for p in params
    )


def _at(exc: BaseException) -> str:
    """`` at FILE:LINE`` of the user's code that raised ``exc``; empty when unknown."""
    where = raised_at(exc)
    return f" at {where}" if where else ""


def _build_user_model(
    arch: str,
    num_classes: int,
    options: dict[str, Any],
    input_shape: tuple[int, ...],
    examples: torch.Tensor | None = None,
) -> nn.Module:
    factory = _resolve(arch)
    kwargs: dict[str, Any] = {"num_classes": num_classes, **options}
    if _accepts_input_shape(factory):
        kwargs["input_shape"] = input_shape
    passed = ", ".join(kwargs)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise ModelError(
                f'the factory "{arch}" cannot be called with the keys passed ({passed}): {exc}. '
                f"Its signature is {signature}. conetool passes num_classes, every other [model] "
                "key, and input_shape when the factory accepts it; rename the [model] keys or "
                "the factory's parameters to match."
            ) from exc
    try:
        model = factory(**kwargs)
    except ConetoolError:
        raise
    except TypeError as exc:
        raise ModelError(
            f'the factory "{arch}" raised TypeError{_at(exc)} when called with the keys '
            f"{passed}: {exc}. Check the [model] keys against the factory's parameters and the "
            "types it expects."
        ) from exc
    except Exception as exc:
        raise ModelError(
            f'the factory "{arch}" raised {type(exc).__name__}{_at(exc)} when called with the '
            f"keys {passed}: {exc}. Fix the [model] keys or the factory."
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(
            f'the factory "{arch}" returned {type(model).__name__}, not a torch.nn.Module. '
            "Make it return the model (an nn.Module instance)."
        )
    return logits_returned(model, input_shape, examples)
