"""DISTS: Deep Image Structure and Texture Similarity, with its weights found (never invented).

Reference: Ding, Ma, Wang, Simoncelli, "Image Quality Assessment: Unifying Structure and Texture
Similarity", IEEE TPAMI 2020; numbers must equal `DISTS_pytorch.DISTS()(candidate, reference)`
(the authors' `dists-pytorch` package, MIT) given the same weights.

What it measures: a VGG16 whose max-pools are replaced by L2 pooling (a 3x3 Hann window,
stride 2, which keeps the features free of aliasing) gives six stages of feature maps (the image
itself, then relu1_2 ... relu5_3). Per channel it compares the two images' *global* statistics:
the means (texture: "is it the same kind of stuff") and the covariance against the variances
(structure: "is it in the same place"). Learned per-channel weights alpha (texture) and beta
(structure) mix the 1475 channel similarities; DISTS = 1 - that mix, 0 for identical images. It
tolerates resampled texture (grass, noise, film grain) that PSNR and SSIM punish, which is what
a codec's smoothing or a generative upscaler changes.

Weights: the VGG16 backbone is torchvision's ImageNet checkpoint (`vgg16-397923af.pth`), looked
for like LPIPS's (`--weights DIR` / `IMGTUNE_WEIGHTS`, the torch cache, else downloaded once);
alpha and beta are the authors' `weights.pt`, shipped inside the `dists-pytorch` package (a
dependency of imgtune, 12 KB). Anything missing or malformed is a `WeightsMissingError`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._base import Metric
from ._tiles import check_tiling, is_tiled, tiles
from .catalog import OUTPUTS
from .weights import (
    WEIGHT_FREE,
    WeightsMissingError,
    find_checkpoint,
    frozen,
    load_state,
    match_state,
)

__all__ = [
    "CHANNELS",
    "DISTS",
    "DISTSNetwork",
    "alpha_beta_file",
    "find_vgg16_weights",
    "load_dists_network",
    "vgg16_weights_file",
]

#: channels of the six stages: the image, relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (3, 64, 128, 256, 512, 512)
#: each stage's stride against the image (the L2 pools halve, rounding up)
STRIDES = (1, 1, 2, 4, 8, 16)
#: the reference's stabilising constants for the texture (means) and structure (covariance) terms
C1 = C2 = 1e-6
INSTEAD = f"leave DISTS out (weight-free metrics: --metrics {WEIGHT_FREE})"


def vgg16_weights_file() -> tuple[str, str]:
    """(file name, download URL) of torchvision's VGG16 ImageNet checkpoint."""
    import torchvision.models as tvm

    url = tvm.VGG16_Weights.DEFAULT.url
    return url.rsplit("/", 1)[-1], url


def find_vgg16_weights(weights_dir: str | Path | None = None, *, allow_download=True) -> Path:
    name, url = vgg16_weights_file()
    return find_checkpoint(
        name,
        url,
        needs="DISTS needs torchvision's VGG16 weights",
        instead=INSTEAD,
        weights_dir=weights_dir,
        allow_download=allow_download,
    )


def alpha_beta_file() -> Path:
    """The authors' learned alpha/beta (`weights.pt`) as the `dists-pytorch` package ships it.

    The package's own loader reads a copy under `sys.prefix`, which exists only for some install
    layouts; the copy inside the package folder is always there.
    """
    from importlib.util import find_spec

    spec = find_spec("DISTS_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsMissingError(
            "DISTS needs its learned alpha/beta weights, shipped by the dists-pytorch package "
            f"(MIT), which is not installed: pip install dists-pytorch==0.1, or {INSTEAD}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights.pt"
    if not path.is_file():
        raise WeightsMissingError(
            f"DISTS needs its learned alpha/beta weights '{path}', which the dists-pytorch "
            f"package should ship: reinstall it (pip install --force-reinstall dists-pytorch==0.1)"
            f", or {INSTEAD}."
        )
    return path


class L2Pool(nn.Module):
    """sqrt(blur(x^2)) with a 3x3 Hann window (np.hanning(5)[1:-1], normalised), stride 2,
    padding 1: the anti-aliased replacement of VGG's max-pool."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.hann_window(5, periodic=False, dtype=torch.float64)[1:-1]
        g = a[:, None] * a[None, :]
        g = (g / g.sum()).to(torch.float32)
        self.register_buffer("filter", g.expand(channels, 1, 3, 3).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTSNetwork(nn.Module):
    """The VGG16 stages (L2-pooled) and the alpha/beta weights; `stages(x)` gives the six maps."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"], batch_norm=False)  # VGG16's `features`, indices 0..30
        self.vgg = features
        pools = {4: 64, 9: 128, 16: 256, 23: 512}  # max-pools replaced by L2 pools
        stages, current = [], nn.Sequential()
        for i in range(30):
            if i in pools:
                stages.append(current)
                current = nn.Sequential(L2Pool(pools[i]))
            else:
                current.append(features[i])
        stages.append(current)
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        self.register_buffer("alpha", torch.full((1, sum(CHANNELS), 1, 1), 0.1))
        self.register_buffer("beta", torch.full((1, sum(CHANNELS), 1, 1), 0.1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        maps = [x]
        for stage in self.stages:
            h = stage(h)
            maps.append(h)
        return maps

    def weights(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Alpha and beta normalised by their joint sum, split per stage: (1, C_k, 1, 1) each."""
        total = self.alpha.sum() + self.beta.sum()
        return (
            torch.split(self.alpha / total, CHANNELS, dim=1),
            torch.split(self.beta / total, CHANNELS, dim=1),
        )


def load_dists_network(
    weights_dir: str | Path | None = None,
    *,
    allow_download: bool = True,
    alpha_beta: str | Path | None = None,
) -> DISTSNetwork:
    """The DISTS network with torchvision's VGG16 checkpoint and the authors' alpha/beta.

    Raises `WeightsMissingError` before building anything when a file cannot be found, and
    naming the file when it cannot be read or does not fit.
    """
    vgg_path = find_vgg16_weights(weights_dir, allow_download=allow_download)
    ab_path = Path(alpha_beta) if alpha_beta is not None else alpha_beta_file()
    if not ab_path.is_file():
        raise WeightsMissingError(f"DISTS alpha/beta weights {ab_path}: no such file; {INSTEAD}")
    vgg_state = load_state(vgg_path, "DISTS VGG16 weights")
    ab_state = load_state(ab_path, "DISTS alpha/beta weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = DISTSNetwork()
    net.vgg.load_state_dict(
        match_state(
            net.vgg.state_dict(),
            vgg_state,
            vgg_path,
            "torchvision's VGG16 checkpoint",
            key=lambda k: f"features.{k}",
        )
    )
    ab = match_state(
        {"alpha": net.alpha, "beta": net.beta}, ab_state, ab_path, "DISTS's alpha/beta weights"
    )
    if not all(torch.isfinite(v).all() and (v >= 0).all() for v in ab.values()):
        raise WeightsMissingError(f"{ab_path}: alpha/beta must be finite and non-negative")
    net.alpha.copy_(ab["alpha"])
    net.beta.copy_(ab["beta"])
    return frozen(net)


@dataclass
class _Prepared:
    size: tuple[int, int]
    maps: list[torch.Tensor] | None  # whole-image mode: the reference's six stages
    means: list[torch.Tensor] | None  # ... and their per-channel means
    reference: torch.Tensor | None  # tiled mode: the image (stages recomputed per tile)


class DISTS(Metric):
    """DISTS distance (0 = identical; lower is better). `network` is a `DISTSNetwork`, by
    default the one `load_dists_network` returns. Inputs are [0, 1]; grey is repeated to RGB.

    Images larger than one tile (`tile` + 2 `margin` on a side, 1280 px by default) are scored in
    tiles: each tile's core (`tile` px, starting on a multiple of 16) runs with `margin` px of
    context, and its per-channel sums (x, y, x^2, y^2, xy, in float64) are added up, so the means,
    variances and covariance are the whole image's up to the network's reach at tile seams
    (the difference is measured in tests/test_metrics_dists.py and benchmarks/RESULTS.md).
    """

    name = "dists"
    outputs = (OUTPUTS["dists"],)
    #: measured peak of prepare + score at 768x512: 1.7 KB a pixel (VGG16's 64-channel maps at
    #: full size, the reference's kept); tiled images peak near 2 GB whatever their size, so
    #: this overstates large ones, on the safe side
    working_set_per_pixel = 1700

    def __init__(
        self,
        device="auto",
        *,
        weights_dir=None,
        allow_download: bool = True,
        network: DISTSNetwork | None = None,
        tile: int = 1024,
        margin: int = 128,
    ) -> None:
        super().__init__(device)
        check_tiling("DISTS", tile, margin)
        self.tile, self.margin = tile, margin
        if network is None:
            network = load_dists_network(weights_dir, allow_download=allow_download)
        # The default (NCHW) layout: unlike AlexNet's, VGG16's full-resolution convolutions were
        # slower channels-last on the CPU (7.0 s against 5.4 s a 768x512 forward, 2 cores).
        self.network = network.to(self.device).eval()

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.network(x.contiguous())

    def _is_tiled(self, h: int, w: int) -> bool:
        return is_tiled(h, w, self.tile, self.margin)

    def prepare(self, reference: torch.Tensor) -> _Prepared:
        size = (reference.shape[2], reference.shape[3])
        if self._is_tiled(*size):
            return _Prepared(size, None, None, reference)
        with torch.no_grad():
            maps = self._maps(reference)
        return _Prepared(size, maps, [m.mean([2, 3], keepdim=True) for m in maps], None)

    def score(self, candidates: torch.Tensor, prepared: _Prepared) -> dict[str, torch.Tensor]:
        alpha, beta = self.network.weights()
        texture = structure = 0
        for k, (x_mean, y_mean, x_var, y_var, xy_cov) in enumerate(
            self._statistics(candidates, prepared)
        ):
            s1 = (2 * x_mean * y_mean + C1) / (x_mean**2 + y_mean**2 + C1)
            s2 = (2 * xy_cov + C2) / (x_var + y_var + C2)
            texture = texture + (alpha[k] * s1).sum(1, keepdim=True)
            structure = structure + (beta[k] * s2).sum(1, keepdim=True)
        return {"dists": (1 - (texture + structure)).flatten()}

    def _statistics(self, candidates: torch.Tensor, prepared: _Prepared):
        """Per stage: the candidates' and reference's per-channel means, variances and their
        covariance, each (N or 1, C, 1, 1), computed as the reference implementation does."""
        if prepared.maps is not None:
            for x, y, y_mean in zip(
                self._maps(candidates), prepared.maps, prepared.means, strict=True
            ):
                x_mean = x.mean([2, 3], keepdim=True)
                x_var = ((x - x_mean) ** 2).mean([2, 3], keepdim=True)
                y_var = ((y - y_mean) ** 2).mean([2, 3], keepdim=True)
                xy_cov = (x * y).mean([2, 3], keepdim=True) - x_mean * y_mean
                yield x_mean, y_mean, x_var, y_var, xy_cov
            return
        yield from self._tiled_statistics(candidates, prepared)

    def _tiled_statistics(self, candidates: torch.Tensor, prepared: _Prepared):
        h, w = prepared.size
        n = candidates.shape[0]
        # sums[k]: (5, N, C_k) float64 of x, y, x^2, y^2, xy over the stage's cores
        sums = [candidates.new_zeros(5, n, c, dtype=torch.float64) for c in CHANNELS]
        counts = [0] * len(CHANNELS)
        shapes = [(-(-h // s), -(-w // s)) for s in STRIDES]
        for tl in tiles(h, w, self.tile, self.margin):
            rows, cols = tl.context
            fx = self._maps(candidates[:, :, rows, cols])
            fy = self._maps(prepared.reference[:, :, rows, cols])
            for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
                _, (in_r, in_c) = tl.core(STRIDES[k], shapes[k])
                a, b = a[:, :, in_r, in_c], b[:, :, in_r, in_c]
                # Products in float32 (as the whole-image path), sums in float64: no float64
                # copy of a map is ever made.
                for j, (u, v) in enumerate(((a, None), (b, None), (a, a), (b, b), (a, b))):
                    prod = u if v is None else u * v
                    sums[k][j] += prod.sum((2, 3), dtype=torch.float64).expand(n, -1)
                    del prod
                counts[k] += a.shape[2] * a.shape[3]
            del fx, fy
        for k, total in enumerate(sums):
            sx, sy, sxx, syy, sxy = (v / counts[k] for v in total)
            x_var, y_var = sxx - sx * sx, syy - sy * sy
            cov = sxy - sx * sy
            yield tuple(
                v[:, :, None, None].to(candidates.dtype) for v in (sx, sy, x_var, y_var, cov)
            )
