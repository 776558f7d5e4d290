"""The banded-matrix blur equals torch's depthwise convolution, with and without padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from optimizer.metrics._blur import BLOCK, blur


def _conv_blur(x, k, pad):
    x = F.pad(x, pad)
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@pytest.mark.parametrize(
    "shape,taps,pad",
    [
        ((1, 3, 70, 90), 11, (0, 0, 0, 0)),  # SSIM: valid mode
        ((2, 9, 2 * BLOCK + 5, 3 * BLOCK + 1), 9, (4, 4, 4, 4)),  # SSIMULACRA2: zero 'same'
        ((1, 9, 12, 40), 9, (4, 4, 1, 3)),  # a band with partial context
        ((1, 1, 11, 11), 11, (0, 0, 0, 0)),  # a single output pixel
        ((3, 2, 9, 200), 9, (4, 4, 4, 4)),  # fewer rows than a block
    ],
)
def test_equals_the_depthwise_convolution(shape, taps, pad):
    g = torch.Generator().manual_seed(sum(shape) + taps)
    x = torch.rand(*shape, generator=g)
    k = torch.rand(taps, generator=g)
    k = k / k.sum()
    got = blur(x, k, pad)
    want = _conv_blur(x, k, pad)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6)


def test_float64_and_gradient():
    x = torch.rand(1, 2, 40, 50, dtype=torch.float64, requires_grad=True)
    k = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(blur(x, k), _conv_blur(x, k, (0, 0, 0, 0)), atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: blur(t, k, (1, 1, 1, 1)), (x[:, :, :8, :9],))
