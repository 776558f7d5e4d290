"""Separable blurs with a 1-D kernel, the inner loop of SSIM, MS-SSIM and SSIMULACRA2.

On the CPU, torch's depthwise convolution is slow along the height (slower than along the
width). A blur along the height is a product with a banded Toeplitz matrix; done in blocks of 32
output rows, each block is one small matrix product per plane that BLAS runs near peak, reading
rows that are already contiguous, so nothing is copied and the vertical pass is faster (timings
in benchmarks/RESULTS.md). The numbers equal the convolution's to float32 rounding (tested).
On CUDA, and inside torch.compile, the convolution is used as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["blur"]

BLOCK = 32


def _toeplitz(kernel: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, rows + L - 1) matrix whose row i holds the kernel at columns i .. i + L - 1."""
    n = kernel.shape[0]
    out = kernel.new_zeros(rows, rows + n - 1)
    idx = torch.arange(rows, device=kernel.device)
    for j in range(n):
        out[idx, idx + j] = kernel[j]
    return out


def _along_rows(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid correlation along dim -2 of (B, H, W): output (B, H - L + 1, W)."""
    n = kernel.shape[0]
    h_out = x.shape[-2] - n + 1
    out = x.new_empty(*x.shape[:-2], h_out, x.shape[-1])
    full = _toeplitz(kernel, BLOCK)
    for a in range(0, h_out, BLOCK):
        b = min(h_out, a + BLOCK)
        t = full if b - a == BLOCK else full[: b - a, : b - a + n - 1]
        out[..., a:b, :] = torch.matmul(t, x[..., a : b + n - 1, :])
    return out


def blur(
    x: torch.Tensor,
    kernel: torch.Tensor,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    *,
    exact: bool = False,
) -> torch.Tensor:
    """Correlate every plane of x (N, C, H, W) with `kernel` (1-D, length L) along the width and
    then the height, after zero padding (left, right, top, bottom): output
    (N, C, H + top + bottom - L + 1, W + left + right - L + 1). No padding = 'valid' mode.

    `exact`: equal planes of one call give equal bits wherever they sit in it (convolution
    only). Matrix products do not promise that: BLAS tiles rows and columns, and a plane in an
    edge tile is rounded differently (measured: widths 57, 105, 139 among others)."""
    if any(pad):
        x = F.pad(x, pad)
    n, c, h, w = x.shape
    # Under torch.compile the convolution is kept: the compiler fuses around it, and unrolling
    # the block loops would make compiling take minutes.
    if exact or x.device.type != "cpu" or torch.compiler.is_compiling():
        k = kernel.to(x.dtype)
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    k = kernel.to(x.dtype)
    # Along the width the depthwise convolution is as fast as banded products here.
    y = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = _along_rows(y.reshape(n * c, h, y.shape[3]), k)
    return y.view(n, c, y.shape[1], y.shape[2])
