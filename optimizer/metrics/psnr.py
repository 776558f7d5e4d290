"""PSNR in dB for data range 1; infinite for identical images (never clipped to a cap)."""

from __future__ import annotations

import torch

from ._base import Metric
from .catalog import OUTPUTS

__all__ = ["PSNR", "psnr"]


class PSNR(Metric):
    """Peak signal-to-noise ratio over all channels and pixels, as skimage's
    `peak_signal_noise_ratio(data_range=1)`; `inf` when the images are identical."""

    name = "psnr"
    outputs = (OUTPUTS["psnr"],)

    def prepare(self, reference: torch.Tensor) -> torch.Tensor:
        return reference

    def score(self, candidates: torch.Tensor, prepared: torch.Tensor) -> dict[str, torch.Tensor]:
        mse = ((candidates - prepared) ** 2).mean(dim=(1, 2, 3))
        # 10 * log10(1 / 0) is +inf in IEEE arithmetic, which is exactly what identical means.
        return {"psnr": -10.0 * torch.log10(mse)}


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each candidate in `x` (N, C, H, W) against `y`, inputs in [0, 1]."""
    return PSNR(x.device)(x, y)["psnr"]
