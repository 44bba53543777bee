"""The noise floor of S: one kernel computed by two independent routes."""

from __future__ import annotations

import dataclasses
import doctest

import pytest
import torch

# tests/ has no __init__.py, so pytest's default ("prepend") import mode puts it on sys.path.
from test_ntk_accuracy import BUILTINS

from conetool import noise_floor
from conetool.errors import ConetoolError
from conetool.geometry import kernel_distance
from conetool.noise_floor import NoiseEstimate, kernel_noise


def resnet() -> tuple[torch.nn.Module, torch.Tensor]:
    factory, shape = BUILTINS["resnet20"]
    torch.manual_seed(0)
    return factory(shape).eval(), torch.randn(6, *shape)


def test_float64_routes_agree_to_rounding() -> None:
    model, x = resnet()
    noise = kernel_noise(model, x, method="structured", dtype=torch.float64, device="cpu")
    assert noise.S < 1e-12 and noise.relative_error < 1e-10
    assert (noise.n, noise.kind, noise.method, noise.dtype) == (6, "trace", "structured", "float64")


@pytest.mark.parametrize("kind", ["trace", "full", "sum"])
def test_float32_noise_is_positive_and_tiny(kind: str) -> None:
    model, x = resnet()
    noise = kernel_noise(model, x, kind=kind, subset=4, device="cpu")
    assert noise.n == 4 and noise.dtype == "float32" and noise.method == "auto"
    assert 0 < noise.relative_error < 1e-6
    assert 0 <= noise.S < 1e-12
    assert noise.S <= noise.relative_error**2  # S = ‖δu‖²/2 with ‖δu‖ <= ~relative_error


def test_s_is_kernel_distance_between_the_routes() -> None:
    from conetool.ntk import empirical_ntk

    model, x = resnet()
    noise = kernel_noise(model, x, subset=3, method="jacobian", device="cpu")
    kernel = empirical_ntk(model, x[:3], method="jacobian", device="cpu")
    exact = empirical_ntk(model, x[:3], method="jacobian", dtype=torch.float64, device="cpu")
    assert noise.S == kernel_distance(kernel, exact)


def test_estimate_is_frozen_and_uncertainty_grows_with_s() -> None:
    noise = NoiseEstimate(1e-7, 5e-15, 32, "trace", "auto", "float32")
    with pytest.raises(dataclasses.FrozenInstanceError):
        noise.S = 0.0  # type: ignore[misc]
    assert noise.uncertainty(0.0) == pytest.approx(2e-14)
    assert noise.uncertainty(1e-4) > noise.uncertainty(1e-6) > noise.uncertainty(0.0)


def test_bad_subset_is_refused() -> None:
    model, x = resnet()
    with pytest.raises(ConetoolError, match="subset"):
        kernel_noise(model, x, subset=0, device="cpu")


def test_docstring_examples_run() -> None:
    assert doctest.testmod(noise_floor, raise_on_error=False).failed == 0
