"""SSIM and MS-SSIM in torch, matching skimage and pytorch-msssim.

References: Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004 (SSIM); Wang, Simoncelli, Bovik, "Multiscale structural
similarity for image quality assessment", Asilomar 2003 (MS-SSIM, the five weights).
Numbers must equal `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1)` and `pytorch_msssim.ms_ssim(data_range=1)`.

Memory: the Gaussian statistics of the candidates are computed in horizontal bands sized so
the working set stays under `band_bytes` (32 MiB by default on the CPU) whatever the image
size; what persists is the prepared reference (3 floats per pixel and channel per scale) and,
for SSIM's worst-region pooling, one float per pixel per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._base import Metric, compiled, percentile
from ._blur import blur
from .catalog import OUTPUTS

__all__ = ["MSSSIM", "SSIM", "MS_SSIM_WEIGHTS", "ms_ssim", "ssim", "ms_ssim_levels"]

WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
C1, C2 = K1**2, K2**2  # data range 1
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: side of the square tiles over which SSIM's worst-region value (`ssim_p5`) is pooled
TILE = 32
#: a band's working set: small on the CPU, where a band that stays in cache is faster (see
#: benchmarks/RESULTS.md, "Band size of the banded metrics"), large on CUDA (parallelism)
BAND_BYTES = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}


def _window(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(WIN_SIZE, dtype=torch.float64) - WIN_SIZE // 2
    g = torch.exp(-(coords**2) / (2 * WIN_SIGMA**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian, 'valid' region only (as skimage's cropped map and pytorch-msssim)."""
    return blur(x, win)


@dataclass
class _Level:
    y: torch.Tensor  # (1, C, H, W) reference at this scale
    mu: torch.Tensor  # (1, C, h, w) its local mean
    var: torch.Tensor  # (1, C, h, w) its local variance


def _prepare_level(y: torch.Tensor, win: torch.Tensor, band_bytes: int) -> _Level:
    _, c, h, w = y.shape
    h_out, w_out = h - WIN_SIZE + 1, w - WIN_SIZE + 1
    mu = y.new_empty(1, c, h_out, w_out)
    var = y.new_empty(1, c, h_out, w_out)
    rows = _band_rows(1, c, w, band_bytes)
    for r0 in range(0, h_out, rows):  # banded like scoring, so preparing is bounded too
        r1 = min(h_out, r0 + rows)
        yb = y[:, :, r0 : r1 + WIN_SIZE - 1]
        stats = _blur(torch.cat([yb, yb * yb], dim=1), win)
        mu[:, :, r0:r1] = stats[:, :c]
        var[:, :, r0:r1] = stats[:, c:] - stats[:, :c] ** 2
    return _Level(y=y, mu=mu, var=var)


def _band_rows(n: int, c: int, w: int, band_bytes: int) -> int:
    # ~16 floats per candidate pixel and channel live at once inside a band.
    return max(1, band_bytes // (16 * 4 * max(n, 1) * c * max(w, 1)))


def _ssim_band(
    xb: torch.Tensor, yb: torch.Tensor, mu_y: torch.Tensor, var_y: torch.Tensor, win: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps of one band: candidate and reference rows `xb`, `yb`
    (with the window's context), the reference's prepared mean and variance for the band."""
    c = xb.shape[1]
    stats = _blur(torch.cat([xb, xb * xb, xb * yb], dim=1), win)
    mu_x, exx, exy = stats[:, :c], stats[:, c : 2 * c], stats[:, 2 * c :]
    var_x = exx - mu_x * mu_x
    cov = exy - mu_x * mu_y
    cs = (2 * cov + C2) / (var_x + var_y + C2)
    lum = (2 * mu_x * mu_y + C1) / (mu_x * mu_x + mu_y * mu_y + C1)
    return lum * cs, cs


def _ssim_maps(x: torch.Tensor, ref: _Level, win: torch.Tensor, band_bytes: int, band=_ssim_band):
    """Yield (ssim_band, cs_band) over horizontal bands of the valid map, top to bottom."""
    n, c, _, w = x.shape
    h_out = ref.mu.shape[2]
    rows = _band_rows(n, c, w, band_bytes)
    for r0 in range(0, h_out, rows):
        r1 = min(h_out, r0 + rows)
        xb = x[:, :, r0 : r1 + WIN_SIZE - 1]
        yb = ref.y[:, :, r0 : r1 + WIN_SIZE - 1]
        yield band(xb, yb, ref.mu[:, :, r0:r1], ref.var[:, :, r0:r1], win)


def ms_ssim_levels(height: int, width: int) -> int:
    """Scales MS-SSIM uses: five when the smaller side exceeds 160 (pytorch-msssim's rule), else
    the most for which the coarsest scale still holds an 11x11 window:
    smaller side > 10 * 2**(L-1).
    """
    side = min(height, width)
    levels = 5
    while levels > 1 and side <= (WIN_SIZE - 1) * 2 ** (levels - 1):
        levels -= 1
    return levels


def _downsample(x: torch.Tensor) -> torch.Tensor:
    # pytorch-msssim pads odd sides by one on both ends and counts the zeros; reproduce it exactly.
    return F.avg_pool2d(x, kernel_size=2, padding=[s % 2 for s in x.shape[2:]])


class _Banded(Metric):
    """SSIM and MS-SSIM: statistics in row bands of `band_bytes`; `compile` fuses each band."""

    def __init__(
        self, device="auto", *, band_bytes: int | None = None, compile: bool = False
    ) -> None:
        super().__init__(device)
        self.band_bytes = band_bytes or BAND_BYTES.get(self.device.type, BAND_BYTES["cpu"])
        self._band = compiled(_ssim_band) if compile else _ssim_band


class SSIM(_Banded):
    """Mean SSIM (Gaussian window 11, sigma 1.5, K 0.01/0.03, population covariance), averaged
    over channels, and `ssim_p5`: the 5th percentile of SSIM over ~32x32 tiles (worst region)."""

    name = "ssim"
    outputs = (OUTPUTS["ssim"], OUTPUTS["ssim_p5"])
    min_side = WIN_SIZE

    def prepare(self, reference: torch.Tensor) -> _Level:
        return _prepare_level(
            reference, _window(reference.device, reference.dtype), self.band_bytes
        )

    def score(self, candidates: torch.Tensor, prepared: _Level) -> dict[str, torch.Tensor]:
        win = _window(candidates.device, candidates.dtype)
        bands = [
            s.mean(dim=1, keepdim=True)
            for s, _ in _ssim_maps(candidates, prepared, win, self.band_bytes, self._band)
        ]
        smap = torch.cat(bands, dim=2)  # (N, 1, h, w), channel-averaged
        h, w = smap.shape[2:]
        tiles = F.adaptive_avg_pool2d(smap, (max(1, round(h / TILE)), max(1, round(w / TILE))))
        return {
            "ssim": smap.mean(dim=(1, 2, 3)),
            "ssim_p5": percentile(tiles.flatten(1), 5.0),
        }


class MSSSIM(_Banded):
    """MS-SSIM with the standard five scales and weights; images whose smaller side is 160 or
    less use fewer scales (see `ms_ssim_levels`) with the leading weights renormalised to sum 1."""

    name = "ms_ssim"
    outputs = (OUTPUTS["ms_ssim"],)
    min_side = WIN_SIZE

    def prepare(self, reference: torch.Tensor) -> list[_Level]:
        win = _window(reference.device, reference.dtype)
        levels = ms_ssim_levels(*reference.shape[2:])
        out, y = [], reference
        for i in range(levels):
            out.append(_prepare_level(y, win, self.band_bytes))
            if i < levels - 1:
                y = _downsample(y)
        return out

    def score(self, candidates: torch.Tensor, prepared: list[_Level]) -> dict[str, torch.Tensor]:
        win = _window(candidates.device, candidates.dtype)
        levels = len(prepared)
        weights = torch.tensor(
            MS_SSIM_WEIGHTS[:levels], dtype=candidates.dtype, device=candidates.device
        )
        weights = weights / weights.sum()
        x, per_level = candidates, []
        for i, ref in enumerate(prepared):
            sums_s = sums_c = 0
            count = ref.mu.shape[2] * ref.mu.shape[3]
            for s, cs in _ssim_maps(x, ref, win, self.band_bytes, self._band):
                sums_s = sums_s + s.sum(dim=(2, 3))
                sums_c = sums_c + cs.sum(dim=(2, 3))
            if i < levels - 1:
                per_level.append(torch.relu(sums_c / count))
                x = _downsample(x)
            else:
                per_level.append(torch.relu(sums_s / count))
        stacked = torch.stack(per_level, dim=0)  # (L, N, C)
        value = torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(dim=1)
        return {"ms_ssim": value}


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each candidate in `x` (N, C, H, W) against `y`, inputs in [0, 1]."""
    return SSIM(x.device)(x, y)["ssim"]


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each candidate in `x` (N, C, H, W) against `y`, inputs in [0, 1]."""
    return MSSSIM(x.device)(x, y)["ms_ssim"]
