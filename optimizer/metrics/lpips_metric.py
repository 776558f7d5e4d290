"""LPIPS through the `lpips` package, with its backbone weights found (never invented) up front.

Reference: Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep Features
as a Perceptual Metric", CVPR 2018; numbers must equal `lpips.LPIPS(net=...)(a, b, normalize=True)`.

The `lpips` package ships its linear layers; the backbone (AlexNet by default) is torchvision's
ImageNet checkpoint. We look for that file in an explicit weights folder (`--weights DIR` /
`IMGTUNE_WEIGHTS`: offline machines, nothing is downloaded then), else in the torch hub cache,
else download it once into that cache. If none works, `WeightsMissingError` says which file, where
to put it and which metrics need no weights. We never score with random or different weights.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ._base import Metric, percentile
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
    "BACKBONES",
    "LPIPS",
    "WeightsMissingError",
    "backbone_weights_file",
    "find_backbone_weights",
    "load_lpips_network",
]

#: lpips network name -> (torchvision weights enum, smallest side the network accepts)
BACKBONES = {
    "alex": ("AlexNet_Weights", 31),
    "squeeze": ("SqueezeNet1_1_Weights", 17),
    "vgg": ("VGG16_Weights", 16),
}


def backbone_weights_file(net: str) -> tuple[str, str]:
    """(file name, download URL) of torchvision's checkpoint for an lpips backbone."""
    if net not in BACKBONES:
        raise ValueError(f"unknown LPIPS network {net!r}; choose one of {', '.join(BACKBONES)}")
    import torchvision.models as tvm

    url = getattr(tvm, BACKBONES[net][0]).DEFAULT.url
    return url.rsplit("/", 1)[-1], url


def find_backbone_weights(
    net: str = "alex", weights_dir: str | Path | None = None, *, allow_download: bool = True
) -> Path:
    """Path of the backbone checkpoint, downloading it once into the torch cache if allowed.

    With `weights_dir` only that folder is looked in (an offline machine's explicit choice).
    """
    name, url = backbone_weights_file(net)
    return find_checkpoint(
        name,
        url,
        needs=f"LPIPS ({net}) needs torchvision's backbone weights",
        instead=f"leave LPIPS out with --metrics {WEIGHT_FREE} (weight-free metrics)",
        weights_dir=weights_dir,
        allow_download=allow_download,
    )


def load_lpips_network(
    net: str = "alex", weights_dir: str | Path | None = None, *, allow_download: bool = True
):
    """The `lpips.LPIPS` module with its package linear layers and the real backbone checkpoint.

    Raises `WeightsMissingError` before building anything when the checkpoint cannot be found.
    """
    path = find_backbone_weights(net, weights_dir, allow_download=allow_download)
    return _build(net, load_state(path, "LPIPS backbone weights"), path)


def _build(net: str, backbone_state: dict[str, torch.Tensor], source: Path | str):
    import lpips

    with warnings.catch_warnings():
        # Build the architecture without touching the network; every backbone tensor is
        # overwritten from `backbone_state` below, and a missing one is an error.
        warnings.simplefilter("ignore")
        module = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    mapped = match_state(
        module.net.state_dict(),
        backbone_state,
        source,
        f"torchvision's {net} checkpoint",
        key=lambda k: re.sub(r"^slice\d+\.", "features.", k),
    )
    module.net.load_state_dict(mapped, strict=True)
    return frozen(module)


@dataclass
class _Prepared:
    size: tuple[int, int]
    features: list[torch.Tensor] | None  # cached reference features (whole-image mode)
    reference: torch.Tensor | None  # kept instead in tiled mode (features recomputed per tile)


class LPIPS(Metric):
    """LPIPS distance (0 = identical) and `lpips_p95`, the 95th percentile of its spatial map.

    `network` is an `lpips.LPIPS` module, by default the one `load_lpips_network` returns; inputs
    are [0, 1] and scaled to [-1, 1] inside. Grey inputs are repeated to three channels.

    Images larger than one tile (`tile` + 2 `margin` on a side, 1280 px by default) are scored in
    tiles: each tile's core (`tile` px, starting on a multiple of 16) is run with `margin` px of
    context and written into whole-image layer maps, so the backbone's working set is that of a
    1280 x 1280 image whatever the input size. Features of the core equal whole-image features
    up to the backbone's receptive field at the margins (measured in tests/test_metrics_lpips.py).
    """

    name = "lpips"
    outputs = (OUTPUTS["lpips"], OUTPUTS["lpips_p95"])

    def __init__(
        self,
        device="auto",
        *,
        net: str = "alex",
        weights_dir=None,
        allow_download: bool = True,
        network=None,
        tile: int = 1024,
        margin: int = 128,
    ) -> None:
        super().__init__(device)
        check_tiling("LPIPS", tile, margin)
        self.net_name = net
        self.min_side = BACKBONES[net][1] if net in BACKBONES else 32
        self.tile, self.margin = tile, margin
        if network is None:
            network = load_lpips_network(net, weights_dir, allow_download=allow_download)
        self.network = network.to(self.device).eval()
        # Channels-last on the CPU: oneDNN's convolutions are faster in that layout (see
        # benchmarks/RESULTS.md).
        cpu = self.device.type == "cpu"
        self._layout = torch.channels_last if cpu else torch.contiguous_format
        self.network.to(memory_format=self._layout)
        self._meta = None
        self._strides: list[int] | None = None

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        import lpips

        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        scaled = self.network.scaling_layer(2 * x - 1).contiguous(memory_format=self._layout)
        outs = self.network.net(scaled)
        return [lpips.normalize_tensor(o) for o in outs]

    def _is_tiled(self, h: int, w: int) -> bool:
        return is_tiled(h, w, self.tile, self.margin)

    def _layer_shapes(self, h: int, w: int) -> list[tuple[int, int]]:
        # Shape inference on the meta device: no memory, no arithmetic.
        if self._meta is None:
            import copy

            self._meta = copy.deepcopy(self.network.net).to("meta")
        outs = self._meta(torch.empty(1, 3, h, w, device="meta"))
        return [(o.shape[2], o.shape[3]) for o in outs]

    def prepare(self, reference: torch.Tensor) -> _Prepared:
        size = (reference.shape[2], reference.shape[3])
        if self._is_tiled(*size):
            return _Prepared(size=size, features=None, reference=reference)
        with torch.no_grad():
            feats = self._features(reference)
        return _Prepared(size=size, features=feats, reference=None)

    def _layer_maps(self, candidates: torch.Tensor, prepared: _Prepared) -> list[torch.Tensor]:
        """Per layer, the (N, 1, h_k, w_k) map of lin((f - r)^2), whole image or tile by tile."""
        if prepared.features is not None:
            feats = self._features(candidates)
            return [
                lin((f - r) ** 2)
                for lin, f, r in zip(self.network.lins, feats, prepared.features, strict=True)
            ]
        h, w = prepared.size
        n = candidates.shape[0]
        shapes = self._layer_shapes(h, w)
        if self._strides is None:
            # Each layer's stride, from a large probe (a small side would round badly); once.
            self._strides = [
                2 ** round(math.log2(1024 / hk)) for hk, _ in self._layer_shapes(1024, 1024)
            ]
        strides = self._strides
        maps = [candidates.new_zeros(n, 1, hk, wk) for hk, wk in shapes]
        for tl in tiles(h, w, self.tile, self.margin):
            rows, cols = tl.context
            fx = self._features(candidates[:, :, rows, cols])
            fr = self._features(prepared.reference[:, :, rows, cols])
            for k, (lin, a, b) in enumerate(zip(self.network.lins, fx, fr, strict=True)):
                (out_r, out_c), (in_r, in_c) = tl.core(strides[k], shapes[k])
                maps[k][:, :, out_r, out_c] = lin((a - b) ** 2)[:, :, in_r, in_c]
        return maps

    def score(self, candidates: torch.Tensor, prepared: _Prepared) -> dict[str, torch.Tensor]:
        value = 0
        spatial = 0
        for layer in self._layer_maps(candidates, prepared):
            value = value + layer.mean(dim=(2, 3))
            # As lpips's spatial=True: each layer's map upsampled bilinearly to the input size.
            spatial = spatial + F.interpolate(
                layer, size=prepared.size, mode="bilinear", align_corners=False
            )
        return {
            "lpips": value.flatten(),
            "lpips_p95": percentile(spatial.flatten(1), 95.0),
        }
