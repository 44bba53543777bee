"""The convolution patches of the structured engine against ``F.unfold`` (bit for bit)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conetool.ntk_layer_grads import patches

CASES_2D = list(
    itertools.product(
        [1, 3, (2, 3)],  # kernel
        [1, 2, (1, 2)],  # stride
        [1, (2, 1)],  # dilation
        [0, 1, (2, 1)],  # padding
        ["zeros", "reflect", "circular", "replicate"],
    )
)


def unfolded(module: nn.Conv1d | nn.Conv2d, inp: torch.Tensor) -> torch.Tensor:
    """What ``patches`` must equal: the padded input through ``F.unfold``."""
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(inp, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        return F.unfold(
            x.unsqueeze(2),
            kernel_size=(1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            stride=(1, module.stride[0]),
        )
    return F.unfold(
        x, kernel_size=module.kernel_size, dilation=module.dilation, stride=module.stride
    )


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(("kernel", "stride", "dilation", "padding", "mode"), CASES_2D)
# On CUDA F.unfold launches a kernel per example, the reason patches() does not use it.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_conv2d_patches_equal_unfold(
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int],
    dilation: int | tuple[int, int],
    padding: int | tuple[int, int],
    mode: str,
    device: str,
) -> None:
    conv = nn.Conv2d(
        3, 4, kernel, stride=stride, dilation=dilation, padding=padding, padding_mode=mode
    )
    conv = conv.to(device)
    x = torch.randn(5, 3, 9, 11, generator=torch.Generator().manual_seed(0)).to(device)
    got = patches(conv, x)
    assert got.shape == unfolded(conv, x).shape
    assert torch.equal(got, unfolded(conv, x))


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "padding"),
    list(itertools.product([1, 3], [1, 2], [1, 2], [0, 2])),
)
@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_conv1d_patches_equal_unfold(
    kernel: int, stride: int, dilation: int, padding: int, mode: str
) -> None:
    conv = nn.Conv1d(
        3, 4, kernel, stride=stride, dilation=dilation, padding=padding, padding_mode=mode
    )
    x = torch.randn(5, 3, 13, generator=torch.Generator().manual_seed(1))
    assert torch.equal(patches(conv, x), unfolded(conv, x))


def test_patches_of_a_non_contiguous_input() -> None:
    """A recorded input can be a view (channels last, a slice of a larger batch)."""
    conv = nn.Conv2d(3, 2, 3, padding=1, stride=2)
    x = torch.randn(6, 9, 10, 3).permute(0, 3, 1, 2)[1:5]
    assert not x.is_contiguous()
    assert torch.equal(patches(conv, x), unfolded(conv, x.contiguous()))
