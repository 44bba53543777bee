"""Float32 kernels at the ends of float32's range: entries beyond 3.4e38, and kernels made of
subnormal products (below 1.2e-38), are refused with the fix (--dtype float64) instead of being
returned infinite or with lost digits; float64 computes both, a zero eNTK stays a zero kernel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_run import SPEC

from conetool import paths
from conetool.errors import ConetoolError
from conetool.ntk import KernelUnderflowError, NonFiniteKernelError, empirical_ntk
from conetool.ntk_range import check_range, smallest_float32_kernel
from conetool.pipeline import distance, kernels
from conetool.pipeline.resolve import model_for
from conetool.spec import Spec, spec_from_dict
from conetool.store import Store

METHODS = ["jacobian", "structured"]


class Scaled(torch.nn.Module):
    """A small MLP whose logits are multiplied by ``scale``: its eNTK is ``scale**2`` times the
    MLP's."""

    def __init__(self, scale: float, inputs: int = 8, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(inputs, 32), torch.nn.Tanh(), torch.nn.Linear(32, classes)
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def _relative(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    return float((kernel.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["trace", "sum"])
def test_entries_beyond_float32_are_refused_and_float64_holds_them(method: str, kind: str) -> None:
    """A linear model whose inputs have norm 1.2e19: each logit's kernel is 1.44e38 on the
    diagonal, the trace over 3 logits 4.3e38. The structured engine summed its float32 products in
    float64 and returned the float32 kernel with those entries infinite, silently."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    x = x / x.norm(dim=1, keepdim=True) * 1.2e19
    with pytest.raises(NonFiniteKernelError, match="--dtype float64") as raised:
        empirical_ntk(model, x, kind=kind, device="cpu", method=method)
    assert "beyond the largest float32" in str(raised.value) or "non-finite" in str(raised.value)
    exact = empirical_ntk(model, x, kind=kind, device="cpu", method=method, dtype="float64")
    x64 = x.double()
    closed = 3 * x64 @ x64.T  # both kinds: 3 logits (trace), or g = sum_k w_k.x (sum)
    assert torch.isfinite(exact).all() and _relative(exact, closed) < 1e-12


def test_the_structured_trace_kernel_beyond_float32_names_its_largest_entry() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    x = x / x.norm(dim=1, keepdim=True) * 1.2e19
    with pytest.raises(NonFiniteKernelError) as raised:
        empirical_ntk(model, x, device="cpu", method="structured")
    message = str(raised.value)
    assert "entries up to 4.32e+38, beyond the largest float32 number (3.4e+38)" in message


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e-20, 1e-25])
def test_a_kernel_of_subnormal_products_is_refused(method: str, scale: float) -> None:
    """Logits scaled by 1e-20: a largest entry of 1.8e-39, returned 3e-5 off the float64 kernel
    (documented: 1e-6); by 1e-25 every product is 0 and the kernel was all zeros."""
    model = Scaled(scale)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(KernelUnderflowError, match=r"--dtype float64") as raised:
        empirical_ntk(model, x, device="cpu", method=method)
    assert ("all zeros" in str(raised.value)) == (scale == 1e-25)
    exact = empirical_ntk(model, x, device="cpu", method=method, dtype="float64")
    reference = empirical_ntk(Scaled(1.0), x, device="cpu", method="jacobian", dtype="float64")
    assert _relative(exact / scale**2, reference) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_small_kernels_above_the_bound_are_returned_to_float32_precision(method: str) -> None:
    """Logits scaled by 1e-17 (a largest entry of 1.8e-33, above 1,476 parameters times
    1.2e-38): float32 still holds the kernel to its usual precision, and it is returned."""
    model = Scaled(1e-17)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    kernel = empirical_ntk(model, x, device="cpu", method=method)
    exact = empirical_ntk(model, x, device="cpu", method="jacobian", dtype="float64")
    assert float(exact.abs().max()) > smallest_float32_kernel(1476)
    assert kernel.dtype == torch.float32 and _relative(kernel, exact) < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_a_zero_entk_is_a_zero_kernel_not_an_error(method: str) -> None:
    """Every weight zero and no bias: the outputs do not depend on the parameters at all, the
    eNTK is exactly 0 in any dtype (the distance step says what that means)."""
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6, bias=False), torch.nn.ReLU(), torch.nn.Linear(6, 3, bias=False)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    kernel = empirical_ntk(model, torch.randn(5, 4), device="cpu", method=method)
    assert kernel.dtype == torch.float32 and not kernel.any()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["trace", "sum"])
def test_a_cross_kernel_of_orthogonal_jacobians_is_a_zero_kernel_not_an_error(
    method: str, kind: str
) -> None:
    """A bias-free linear model and two input sets on disjoint inputs: their Jacobians move other
    weights, so the cross kernel is exactly 0 (float64 says so) while each set's outputs move.
    The float32 kernel was refused as underflowed (the gradient of x1's outputs is not zero)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=False)
    x1 = torch.zeros(3, 4)
    x1[:, :2] = torch.randn(3, 2)
    x2 = torch.zeros(5, 4)
    x2[:, 2:] = torch.randn(5, 2)
    exact = empirical_ntk(model, x1, x2, device="cpu", method=method, kind=kind, dtype="float64")
    assert not exact.any()
    kernel = empirical_ntk(model, x1, x2, device="cpu", method=method, kind=kind)
    assert kernel.dtype == torch.float32 and kernel.shape == (3, 5) and not kernel.any()


class Centered(torch.nn.Module):
    """:class:`Scaled`'s logits minus their mean: they sum to 0 over the logits for any weights."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scaled = Scaled(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scaled(x)
        return z - z.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("method", METHODS)
def test_an_underflowed_kernel_of_logits_summing_to_zero_is_refused(method: str) -> None:
    """Centered logits scaled by 1e-25: every float32 product is 0 but the float64 kernel is not;
    the gradient of the outputs' plain sum is 0 for any weights, so the zeros were returned as
    a zero eNTK. The "sum" kernel of those logits is a zero eNTK: returned."""
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    model = Centered(1e-25)
    assert empirical_ntk(model, x, device="cpu", method=method, dtype="float64").any()
    with pytest.raises(KernelUnderflowError, match="all zeros"):
        empirical_ntk(model, x, device="cpu", method=method)
    summed = empirical_ntk(Centered(1.0), x, device="cpu", method=method, kind="sum")
    assert summed.dtype == torch.float32 and not summed.any()


SCALED_FACTORY = """
import torch


class Scaled(torch.nn.Module):
    def __init__(self, num_classes, input_shape, scale):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(input_shape[0], 6), torch.nn.Tanh(), torch.nn.Linear(6, num_classes)
        )
        self.scale = scale

    def forward(self, x):
        return self.net(x) * self.scale


def make(num_classes, input_shape, scale=1.0):
    return Scaled(num_classes, input_shape, scale)
"""


def _factory_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, text: str, steps: tuple[int, ...]
) -> tuple[Spec, Path]:
    """A spec whose model is ``module:make`` (its source ``text`` written into ``tmp_path``, put
    on the path) with ``scale = 1e-22``, and a folder of its checkpoints at ``steps``, each
    initialised with its step as the seed."""
    (tmp_path / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**SPEC, "model": {"arch": f"{module}:make", "num_classes": 3, "scale": 1e-22}}
    spec = spec_from_dict(raw, source=f"{module}.toml")
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    for step in steps:
        torch.manual_seed(step)
        save_file(model_for(spec).state_dict(), str(paths.checkpoint(ckpts, step)))
    return spec, ckpts


def test_kernels_names_the_step_and_the_flag_and_float64_computes_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose logits are scaled by 1e-22 (a user's factory): `kernels` stored float32
    kernels 1e-4 to 1 off (or zeros), and distance compared them as if exact."""
    spec, ckpts = _factory_run(tmp_path, monkeypatch, "scaled_factory", SCALED_FACTORY, (0, 5, 10))
    store = tmp_path / "store"
    with pytest.raises(ConetoolError) as stopped:
        kernels(ckpts, spec=spec, store=store, device="cpu")
    message = " ".join(str(stopped.value).split())
    assert "step 0 " in message and "--dtype float64" in message
    # the fix is the dtype, not the file
    assert "fix this checkpoint" not in message and "rerun with --dtype float64" in message
    assert isinstance(stopped.value, KernelUnderflowError)
    kernels(ckpts, spec=spec, store=store, device="cpu", dtype="float64")
    opened = Store.open(store)
    assert opened.steps() == [0, 5, 10]
    distance(store, noise=False)
    s = np.load(store / "distance" / "matrix.npz")["S"]
    assert np.isfinite(s).all() and s[0, 2] > 0


def test_the_docstring_examples_run() -> None:
    import doctest

    from conetool import ntk_range

    assert doctest.testmod(ntk_range, raise_on_error=False).failed == 0


TINY_HEAD_FACTORY = """
import torch


class TinyHead(torch.nn.Module):
    def __init__(self, num_classes, input_shape, scale):
        super().__init__()
        self.body = torch.nn.Linear(input_shape[0], 6)
        self.head = torch.nn.Linear(6, num_classes)
        self.aux = torch.nn.Linear(6, num_classes)
        self.scale = scale

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.head(h) + self.scale * self.aux(h)


def make(num_classes, input_shape, scale=1.0):
    return TinyHead(num_classes, input_shape, scale)
"""


def test_a_per_layer_group_of_subnormal_products_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head scaled by 1e-22 next to a normal one: the model's kernel is fine in float32, the
    head's group kernel (--per-layer) is not, and the error said 'the eNTK's largest entry is
    1e-43' with no word of which kernel, as if the model's outputs hardly moved."""
    spec, ckpts = _factory_run(
        tmp_path, monkeypatch, "tiny_head_factory", TINY_HEAD_FACTORY, (0, 5)
    )
    kernels(ckpts, spec=spec, store=tmp_path / "whole", device="cpu")  # the model's: fine
    with pytest.raises(KernelUnderflowError) as stopped:
        kernels(ckpts, spec=spec, store=tmp_path / "groups", device="cpu", per_layer=True)
    message = " ".join(str(stopped.value).split())
    assert "step 0 " in message and "group 'aux'" in message and "21 parameters" in message
    assert "rerun with --dtype float64" in message
    done = kernels(
        ckpts, spec=spec, store=tmp_path / "exact", device="cpu", per_layer=True, dtype="float64"
    )
    assert done.layer_computed == [0, 5]


# --------------------------------------------------------------------------------------------------
# check_range's bounds, by hand (float32's largest number M = 3.4028e38, smallest normal number
# tiny = 1.1755e-38; a model of p parameters needs a largest entry of at least p * tiny)

M32 = float(torch.finfo(torch.float32).max)
TINY32 = float(torch.finfo(torch.float32).tiny)


def test_the_underflow_bound_is_p_times_float32s_smallest_normal_number() -> None:
    """A largest entry of 5 tiny, for 10 parameters: above tiny itself, but its products (5 tiny
    shared among 10 of them, each half of tiny) are subnormal: refused. Exactly 10 tiny is the
    bound, which is returned (the docstring: "at least p times")."""
    assert smallest_float32_kernel(10) == 10 * TINY32
    with pytest.raises(KernelUnderflowError, match="below 1.18e-37"):
        check_range(torch.eye(2, dtype=torch.float64) * 5 * TINY32, float32=True, parameters=10)
    check_range(torch.eye(2, dtype=torch.float64) * 10 * TINY32, float32=True, parameters=10)
    # float64 kernels hold either
    check_range(torch.eye(2, dtype=torch.float64) * 5 * TINY32, float32=False, parameters=10)


def test_float32s_largest_number_itself_is_within_range() -> None:
    """An entry of exactly M is a finite float32 number: returned; the next float64 past M
    is refused (float32 would round it to M, so the check is on the safe side there)."""
    exact = torch.tensor([[M32, 1.0]], dtype=torch.float64)
    check_range(exact, float32=True, parameters=10)
    assert torch.isfinite(exact.float()).all()
    beyond = torch.tensor([[float(np.nextafter(M32, np.inf)), 1.0]], dtype=torch.float64)
    with pytest.raises(NonFiniteKernelError, match="beyond the largest float32 number"):
        check_range(beyond, float32=True, parameters=10)


def test_an_empty_kernel_and_a_zero_kernel_without_a_gradient_test_are_returned() -> None:
    """A kernel of no entries has no largest entry (torch's max of nothing raised); an all-zero
    float32 kernel with no outputs_move given is returned (the docstring's ``None``)."""
    check_range(torch.empty(0, 3, dtype=torch.float64), float32=True, parameters=10)
    check_range(torch.zeros(2, 2, dtype=torch.float64), float32=True, parameters=10)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("float32", [True, False])
def test_infinite_entries_are_refused_in_float64_too(value: float, float32: bool) -> None:
    kernel = torch.eye(3, dtype=torch.float64)
    kernel[1, 2] = value
    with pytest.raises(NonFiniteKernelError, match="the eNTK has 1 non-finite entries"):
        check_range(kernel, float32=float32, parameters=10)


class Tiny(torch.nn.Module):
    """A bias-free linear model whose logits are scaled by 1e-25: its trace kernel is
    ``3e-50 x1 . x2`` (1e-50 per product of Jacobian entries: 0 in float32)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 1e-25


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["trace", "sum"])
def test_an_underflowed_cross_kernel_of_opposite_examples_is_refused(
    method: str, kind: str
) -> None:
    """x2 = -x1: the exact cross kernel is minus x1's own (negative on its diagonal), every
    float32 product 0, and the random combinations' gradients of the two sides point opposite
    ways: their dot product is negative, not zero, so the zeros are refused."""
    x1 = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    x2 = -x1
    exact = empirical_ntk(Tiny(), x1, x2, kind=kind, device="cpu", method=method, dtype="float64")
    x64 = x1.double()
    closed = -3e-50 * x64 @ x64.T  # trace: 3 logits; sum: g = 1e-25 sum_k w_k . x, 3 of them
    assert _relative(exact, closed) < 1e-12
    with pytest.raises(KernelUnderflowError, match="all zeros"):
        empirical_ntk(Tiny(), x1, x2, kind=kind, device="cpu", method=method)


class ZeroFirst(torch.nn.Module):
    """A bias-free tanh MLP whose logits are scaled by 1e-25: an example of zeros has outputs 0
    at any weights (its Jacobian is 0), any other example's move."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 3, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 1e-25


@pytest.mark.parametrize("method", METHODS)
def test_an_underflowed_kernel_whose_first_example_does_not_move_is_refused(method: str) -> None:
    """The first probe example is all zeros (its kernel row is exactly 0): the gradient test
    combines the first 8 examples' outputs, so the others tell that the zeros underflowed."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    x[0] = 0.0
    exact = empirical_ntk(ZeroFirst(), x, device="cpu", method=method, dtype="float64")
    assert not exact[0].any() and exact[1:, 1:].diagonal().min() > 0
    with pytest.raises(KernelUnderflowError, match="all zeros"):
        empirical_ntk(ZeroFirst(), x, device="cpu", method=method)
