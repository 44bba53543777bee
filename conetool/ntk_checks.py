"""Checks that a model's examples are independent, and the eval mode the eNTK is computed in; the
logits read from what a model's forward returns (:func:`logits_of`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import vmap

from .errors import ModelError
from .models.outputs import logits_in
from .ntk_failures import loop_notes_dropped
from .random_calls import random_calls

__all__ = [
    "ExamplesInteractError",
    "UnreachedParametersWarning",
    "check_branches",
    "check_independence",
    "check_modules",
    "check_per_example",
    "eval_mode",
    "logits_of",
    "logits_of_batch",
    "perturbed",
    "recurrent_outside_cudnn",
    "unreached_parameters",
    "unreached_warning",
]

#: The perturbation's size, relative to each parameter's root mean square (:func:`perturbed`).
PERTURBATION = 0.01


class ExamplesInteractError(ModelError):
    """The model's output for one example depends on the other examples of its batch
    (:func:`check_independence`)."""


def check_per_example(model: nn.Module, inputs: Tensor | None = None) -> None:
    """Raise :class:`~conetool.errors.ModelError` when the model's examples would not be independent.

    The eNTK is defined per example, and the engine evaluates the model one example at a time, so
    a model whose output for one example depends on the others in the batch would get a kernel of
    a different function. Two checks:

    - structural, always: a BatchNorm module in training mode, or one without running statistics
      (``track_running_stats=False`` normalizes with batch statistics even in eval mode); a dropout
      module in training mode (the kernel would be random). Call ``model.eval()`` first;
      :func:`empirical_ntk` does, and restores each module's mode afterwards.
    - numeric, when ``inputs`` has at least 2 examples: the outputs of the first two examples as one
      batch must equal their outputs computed one at a time (to ``10·sqrt(eps)`` of the output
      scale). This catches explicit batch dependencies (``x - x.mean(0)``, attention across the
      batch). ``inputs`` must be on the model's device.

    Each forward pass of the check runs on copies of the model's buffers and tensor attributes
    (:func:`conetool.ntk_buffers.called_on_copies`), as the engines' do: a model that updates its
    state in forward (a call counter) is left as it was, and each pass starts from that state.
    """
    from .ntk_buffers import called_on_copies

    check_modules(model)
    if inputs is not None and inputs.shape[0] >= 2:
        with torch.no_grad():
            check_independence(lambda batch: logits_of(called_on_copies(model, batch)), inputs[:2])


def logits_of(out: object) -> Tensor:
    """The logits in what a model's forward returned: ``out`` itself when it is a tensor, else
    the tensor it holds under ``"logits"`` (a dict, a Hugging Face ``ModelOutput``) or as
    ``.logits`` (a dataclass; :func:`conetool.models.outputs.logits_in`).

    Raises:
        ModelError: ``out`` is neither (a tuple, say), naming its type and the fix.
    """
    if isinstance(out, Tensor):
        return out
    found = logits_in(out)
    if found is not None:
        return found
    raise ModelError(
        "the eNTK needs a model that returns its logits: a tensor of outputs (batch, c), or an "
        "object holding it under 'logits' (a dict, a Hugging Face ModelOutput, a dataclass with "
        f"a logits field), but it returned a {type(out).__name__}. Wrap the model in a module "
        "whose forward returns the logits (for a model of a spec, a subclass whose forward "
        "returns them keeps the parameters' names: class Net(MyNet): def forward(self, x): "
        "return super().forward(x)[0])."
    )


def logits_of_batch(out: object, batch: Tensor) -> Tensor:
    """:func:`logits_of` ``out``, the output of a forward pass of ``batch`` ``(m, *shape)``,
    checked to be what the eNTK is defined on: floating-point outputs ``(m, ...)``, the examples
    along the first dimension (the engines flatten the rest into the ``c`` logits).

    Raises:
        ModelError: an output without the batch dimension (a scalar such as a loss, or a tensor
            whose first dimension is not ``m``), or integer or boolean outputs (predicted classes
            from ``argmax``), whose eNTK is not defined: naming what was returned and the fix.
    """
    logits = logits_of(out)
    m = batch.shape[0]
    if logits.dim() == 0 or logits.shape[0] != m:
        raise ModelError(
            f"the model's forward maps a batch of {m} example{'s' if m != 1 else ''} of shape "
            f"{tuple(batch.shape[1:])} to an output of shape {tuple(logits.shape)}, which is not "
            "one row of logits per example: the eNTK needs outputs (batch, c) with the examples "
            "along the first dimension. Return the logits themselves (not a loss or another "
            "reduction over the batch), with the batch first."
        )
    if not (logits.is_floating_point() or logits.is_complex()):
        raise ModelError(
            f"the model's forward returns {logits.dtype} outputs, which have no gradient, so its "
            "eNTK is not defined (it would be zero). Return the logits as a floating-point "
            "tensor (batch, c), not the predicted classes (argmax) or another integer result."
        )
    return logits


def check_modules(model: nn.Module) -> None:
    for name, module in model.named_modules():
        label = f"module '{name or type(model).__name__}' ({type(module).__name__})"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_mean is None or module.running_var is None:
                raise ModelError(
                    f"{label} has no running statistics (track_running_stats=False), so it "
                    "normalizes with the statistics of the batch even in eval mode: each example's "
                    "output depends on the other examples and the per-example eNTK is not the "
                    "kernel of this model. Build it with track_running_stats=True (and load running "
                    "statistics), or use a per-example normalization such as GroupNorm or LayerNorm."
                )
            if module.training:
                raise ModelError(
                    f"{label} is in training mode: it normalizes with the statistics of the batch, "
                    "so examples interact. Call model.eval() first (conetool.empirical_ntk does "
                    "this itself and restores the mode afterwards)."
                )
        elif isinstance(module, nn.modules.dropout._DropoutNd) and module.training:
            raise ModelError(
                f"{label} is in training mode, so the model's output (and its kernel) is random. "
                "Call model.eval() first (conetool.empirical_ntk does this itself and restores the "
                "mode afterwards)."
            )


def check_independence(
    forward: Callable[[Tensor], Tensor],
    pair: Tensor,
    outputs: tuple[Tensor, Tensor] | None = None,
) -> None:
    """``forward(pair)`` row by row must equal ``forward`` of each example alone (not checked
    when an output is NaN or infinite: there is nothing to compare).

    ``outputs``: both already computed, ``(together, alone)``, each ``(2, c)`` (the structured
    engine's set-up computes them for its own check), so that no forward pass is run here.
    """
    if outputs is not None:
        together, alone = outputs
    else:
        together = logits_of(forward(pair)).reshape(pair.shape[0], -1)
        alone = torch.cat([forward(pair[i : i + 1]).reshape(1, -1) for i in range(pair.shape[0])])
    if not (bool(torch.isfinite(together).all()) and bool(torch.isfinite(alone).all())):
        # NaN inputs or weights, or an overflow: no comparison can tell randomness or a batch
        # dependency from that, and the kernel will not be finite either (which is said then).
        return
    scale = float(together.abs().max()) if together.numel() else 0.0
    if together.is_floating_point():
        tol = 10 * math.sqrt(torch.finfo(together.dtype).eps) * max(1.0, scale)
    else:
        tol = 0.0
    diff = float((together - alone).abs().max()) if together.numel() else 0.0
    if not diff <= tol:
        # Told apart from a batch dependency: the same batch twice.
        first, second = (forward(pair).reshape(pair.shape[0], -1) for _ in range(2))
        drift = float((first - second).abs().max())
        if not drift <= tol:
            calls = random_calls(lambda: forward(pair))
            cause = (
                f"Its forward pass calls {'; '.join(calls)}: make each follow the module's "
                "mode, or use nn.Dropout, which eval mode turns off."
                if calls
                else "A functional dropout (F.dropout(x, p) is on unless given "
                "training=self.training, as F.scaled_dot_product_attention's dropout_p is) or a "
                "random draw (torch.rand, torch.randn) in the forward pass does this; make it "
                "follow the module's mode, or use nn.Dropout, which eval mode turns off."
            )
            raise ModelError(
                f"the model's output is random in eval mode: the same {_count(pair.shape[0])} "
                "examples evaluated twice "
                f"differ by up to {drift:.3g} (output scale {scale:.3g}). {cause}"
            )
        raise ExamplesInteractError(
            "the model's output for one example depends on the other examples in the batch: in "
            f"eval mode, {_count(pair.shape[0])} examples evaluated together differ from the same "
            "examples evaluated "
            f"one at a time by up to {diff:.3g} (output scale {scale:.3g}). The eNTK is defined per "
            "example; remove the batch dependency (batch statistics, batch-wise normalization, "
            "attention across the batch, or a branch on values of the whole batch such as "
            "if x.max() > 1: ...) from the model's eval-mode forward pass."
        )


#: Examples per batched pass of :func:`check_branches`. It sets the check's memory and also what
#: the check can find: examples are compared only with the others of their chunk, while the
#: structured engine's passes hold as many examples as its memory budget allows (more or fewer).
BRANCH_CHUNK = 64


def check_branches(forward: Callable[[Tensor], Tensor], x: Tensor) -> None:
    """Every example of ``x`` ``(n, ...)``, evaluated in batches as the structured engine does,
    must give its output evaluated alone, when the forward pass branches on tensor values.

    A branch on values of the whole batch (``if x.sum() > 0:``, ``if x.max() > 1: x = x / 255``)
    is a batch dependency that :func:`check_independence` sees only when its two examples happen
    to take different branches; the structured engine's batched passes would silently give the
    kernel of another function. Such a forward pass cannot be ``vmap``-ed (torch.func refuses
    data-dependent control flow), so one ``vmap`` of the forward pass over ``x[:2]`` tells, at the
    cost of one small pass, whether the slow check is needed: only then is every example run alone
    and compared with its output in consecutive chunks of up to :data:`BRANCH_CHUNK` examples
    (once per run: one pass of each example alone, and one more of the example before a last
    chunk of one, which is checked with it (below), so ``n`` or ``n + 1`` single-example passes,
    plus one batched pass per chunk; none for a single example, which has nothing to be compared
    with).

    A dependence is found only where it shows within one chunk: a branch that one example turns
    for the whole batch is missed when no other example of its chunk takes the other branch alone
    (every example of the chunk takes the same branch), though an engine pass holding it with
    examples of another chunk would take it; a last chunk of one example is checked together with
    the example before it, so that no example is compared with nothing. A
    dependence that shows in any pair (batch statistics, as a batch-norm in training mode gives;
    attention or other mixing across the batch) is found by :func:`check_independence` on the
    first two examples already.

    Raises:
        ModelError: an example's output evaluated in a batch differs from its output alone.
    """
    try:
        # its result is not used: torch's note that vmap loops over the examples is no news
        with loop_notes_dropped():
            vmap(lambda example: forward(example.unsqueeze(0)))(x[:2])
        return
    except Exception:  # any failure: the forward pass is not plain tensor code
        pass
    n = x.shape[0]
    for lo in range(0, n, BRANCH_CHUNK):
        # A last chunk of one example overlaps the chunk before it by one: alone, the example
        # would be compared with nothing.
        batch = x[min(lo, max(n - 2, 0)) : lo + BRANCH_CHUNK]
        if batch.shape[0] >= 2:
            check_independence(forward, batch)


class UnreachedParametersWarning(UserWarning):
    """What :func:`conetool.empirical_ntk` warns of, without a ``warn`` of the caller's, when
    trainable parameters get no gradient (:func:`unreached_parameters`)."""


#: Parameters named in :func:`unreached_warning` before the rest are counted.
NAMED_UNREACHED = 5


def unreached_parameters(
    forward: Callable[[Tensor, dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    x: Tensor,
) -> list[str]:
    """The names of the trainable parameters that no gradient of the outputs reaches: those the
    model's forward pass uses only under ``torch.no_grad()``, through a ``.detach()``-ed tensor or
    ``.data``, or not at all (an auxiliary head it never calls). The engines' kernel has no
    contribution from them (autograd sees none), though the model has ``requires_grad=True`` on
    them. A parameter whose gradient is zero (behind a dead ReLU) is reached, and not named.

    One forward pass of ``x[:2]`` ``(<= 2, *shape)`` at ``params`` and one backward pass of its
    outputs summed: a parameter is unreached when autograd gives no gradient for it (``None``, not
    a zero tensor). A diagnostic only: a forward or backward pass that fails here (the engines
    computed the kernel already) names nothing.
    """
    live = {name: t.detach().requires_grad_() for name, t in params.items()}
    try:
        with torch.enable_grad():
            out = forward(x[:2], live)
            if not out.requires_grad:  # no parameter reaches the outputs at all
                return list(live)
            grads = torch.autograd.grad(
                out, list(live.values()), torch.ones_like(out), allow_unused=True
            )
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError):
        return []
    return [name for name, grad in zip(live, grads, strict=True) if grad is None]


def unreached_warning(names: list[str]) -> str:
    """What is said of the trainable parameters :func:`unreached_parameters` found (non-empty
    ``names``): the first :data:`NAMED_UNREACHED` named, the count, why they are not in the
    kernel and the two fixes."""
    count = len(names)
    shown = ", ".join(f"'{name}'" for name in names[:NAMED_UNREACHED])
    more = f" and {count - NAMED_UNREACHED} more" if count > NAMED_UNREACHED else ""
    one = count == 1
    tensors, get, its, them = (
        ("tensor", "gets", "its", "it") if one else ("tensors", "get", "their", "them")
    )
    return (
        f"{count} trainable parameter {tensors} (requires_grad=True) {get} no gradient from the "
        f"model's outputs, so the eNTK leaves {its} contribution out: {shown}{more}. The "
        f"forward pass uses {them} under torch.no_grad(), through .detach() or .data, or not at "
        "all (an auxiliary head it never calls, or whose output it discards). If "
        f"{'it' if one else 'they'} should count, remove the no_grad, detach or .data from the "
        f"forward pass; if {'it is' if one else 'they are'} frozen or unused on purpose, set "
        f"requires_grad=False on {them} in the model (module.requires_grad_(False)), which says "
        "so and silences this warning."
    )


def _count(k: int) -> str:
    return "two" if k == 2 else str(k)


def perturbed(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """The weights the set-up's checks run at: each parameter plus seeded Gaussian noise of
    ``PERTURBATION`` times its root mean square (for a parameter that is all zeros, times that of
    all the parameters together). New tensors, on the parameters' device (the noise is drawn there:
    no copy from the host, which on a GPU would wait for the work queued before it).

    The checks decide what is kept for every checkpoint of a run (:mod:`conetool.ntk_memo`), so
    they must not depend on accidents of one checkpoint's weights: at a zero-initialised head every
    gradient behind it is zero and every output is the head's bias, which hides a parameter used
    where the hooks do not see it and a batch dependency alike. Near generic weights neither
    hides; the structure they test is the architecture's.
    """
    values = list(params.values())
    if not values:
        return {}
    device, dtype = values[0].device, values[0].dtype
    # A few calls whatever the number of parameters (on a GPU, few kernel launches): one flat
    # vector of all of them, perturbed at once, and views of it in their shapes.
    sizes = [v.numel() for v in values]
    norms = torch._foreach_norm(values)
    rms = torch.stack(torch._foreach_div(norms, [math.sqrt(max(n, 1)) for n in sizes]))
    overall = torch.stack(norms).norm() / math.sqrt(max(sum(sizes), 1))
    scales = torch.where(rms > 0, rms, overall).to(dtype)
    scale = torch.cat([s.expand(n) for s, n in zip(scales.unbind(), sizes, strict=True)])
    flat = torch.cat([v.detach().reshape(-1).to(dtype) for v in values])
    generator = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(flat.shape, generator=generator, device=device, dtype=dtype)
    moved = flat + PERTURBATION * scale * noise
    return {
        name: piece.view(v.shape).to(v.dtype)
        for (name, v), piece in zip(params.items(), moved.split(sizes), strict=True)
    }


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode and restore each module's own mode afterwards.

    Its recurrent layers (nn.GRU, nn.LSTM, nn.RNN) run outside cuDNN meanwhile
    (:func:`recurrent_outside_cudnn`): cuDNN's RNN refuses a backward pass in eval mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with recurrent_outside_cudnn(model):
            yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def recurrent_outside_cudnn(model: nn.Module, onednn: bool = False) -> Iterator[None]:
    """cuDNN off (``torch.backends.cudnn.enabled``) while the forward of one of ``model``'s
    recurrent layers (nn.RNNBase: nn.GRU, nn.LSTM, nn.RNN) runs, and as it was everywhere else;
    with ``onednn``, oneDNN too (``torch.backends.mkldnn.enabled``).

    cuDNN's RNN refuses a backward pass in eval mode ('cudnn RNN backward can only be called in
    training mode', a cuDNN rule), which every eNTK engine takes: on CUDA the layer then runs
    PyTorch's own RNN kernels, which compute the same function and differentiate in any mode; the
    convolutions and the rest of the model keep cuDNN. Without ``onednn`` nothing changes on a
    CPU; nothing changes for a model without recurrent layers. ``onednn`` is for forward-mode AD
    (the linearized model, :func:`conetool.linearize.f0_and_jvp`): oneDNN's LSTM
    (``mkldnn_rnn_layer``, nn.LSTM in float32 on a CPU) has no forward-mode derivative in torch
    2.14, PyTorch's own LSTM has."""
    recurrent = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    if not recurrent:
        yield
        return
    before: list[tuple[bool, bool]] = []

    def off(module: nn.Module, args: object) -> None:
        before.append((torch.backends.cudnn.enabled, bool(torch.backends.mkldnn.enabled)))
        torch.backends.cudnn.enabled = False
        if onednn:
            # torch's stubs type the flag as its ContextProp descriptor; a bool is how it is set
            torch.backends.mkldnn.enabled = False  # type: ignore[assignment]

    def back(module: nn.Module, args: object, output: object) -> None:
        if before:
            torch.backends.cudnn.enabled, mkldnn = before.pop()
            torch.backends.mkldnn.enabled = mkldnn  # type: ignore[assignment]

    outermost = torch.backends.cudnn.enabled, bool(torch.backends.mkldnn.enabled)
    handles = [m.register_forward_pre_hook(off) for m in recurrent]
    # prepended: the hooks of an outer block on the same layer (the eNTK engines' around a
    # linearized model's) restore after these, in the order opposite to the one they turned off in
    handles += [m.register_forward_hook(back, always_call=True, prepend=True) for m in recurrent]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        torch.backends.cudnn.enabled = outermost[0]
        torch.backends.mkldnn.enabled = outermost[1]  # type: ignore[assignment]
