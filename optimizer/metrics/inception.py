"""The FID Inception and its features: pytorch-fid's network, found like every checkpoint,
and its bilinear resize to 299 x 299 computed from the few pixels it reads.

`InceptionFeatures(images)` equals pytorch-fid's `InceptionV3([3])` pool3 output on the same
images and weights (tests/test_metrics_fid.py); `set_metrics` turns the features of two sets
into FID and KID.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._base import resolve_device
from .weights import find_checkpoint, frozen, load_state, match_state

__all__ = [
    "FEATURE_DIM",
    "FID_WEIGHTS_FILE",
    "INPUT_SIZE",
    "InceptionFeatures",
    "find_fid_weights",
    "load_fid_inception",
    "resize_bilinear",
]

#: pytorch-fid's checkpoint (the TensorFlow FID Inception of 2015-12-05, ported to PyTorch)
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: pool3 features per image
FEATURE_DIM = 2048
#: side every image is resized to, as pytorch-fid's `InceptionV3(resize_input=True)`
INPUT_SIZE = 299


# -- the network --------------------------------------------------------------------------------


def find_fid_weights(weights_dir: str | Path | None = None, *, allow_download: bool = True) -> Path:
    """Path of pytorch-fid's Inception checkpoint, downloading it once into the torch cache."""
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return find_checkpoint(
        FID_WEIGHTS_FILE,
        FID_WEIGHTS_URL,
        needs="FID and KID need pytorch-fid's Inception weights",
        instead="leave --set-metrics out (FID and KID have no weight-free form)",
        weights_dir=weights_dir,
        allow_download=allow_download,
        # pytorch-fid downloads it with torch's default check_hash=False: a file it accepts, we do.
        check_hash=False,
    )


def load_fid_inception(weights_dir: str | Path | None = None, *, allow_download: bool = True):
    """pytorch-fid's FID Inception (`fid_inception_v3`'s architecture) with the real checkpoint.

    Built as `pytorch_fid.inception.fid_inception_v3` builds it, minus its unconditional download:
    the checkpoint is found by `find_fid_weights` first, and a file that does not load or whose
    tensors do not fit raises `WeightsMissingError` naming it.
    """
    path = find_fid_weights(weights_dir, allow_download=allow_download)
    return _build_inception(load_state(path, "FID Inception weights"), path)


def _build_inception(state: dict[str, torch.Tensor], source: Path | str) -> nn.Module:
    from pytorch_fid.inception import (
        FIDInceptionA,
        FIDInceptionC,
        FIDInceptionE_1,
        FIDInceptionE_2,
        _inception_v3,
    )

    net = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    own = net.state_dict()
    given = dict(state)
    for name in own:
        # BatchNorm's step counter does nothing in eval mode; a checkpoint saved before PyTorch
        # 0.4.1 lacks it, and torch's own loader then sets it to 0 as we do.
        if name.endswith(".num_batches_tracked") and name not in given:
            given[name] = torch.zeros((), dtype=torch.long)
    net.load_state_dict(match_state(own, given, source, "pytorch-fid's FID Inception"))
    return frozen(net)


def _blocks(inception: nn.Module) -> nn.Sequential:
    """Blocks 0..3 as `pytorch_fid.inception.InceptionV3` assembles them, ending at pool3.

    `inception` is the Inception3 module `load_fid_inception` returns, or pytorch-fid's own
    `InceptionV3([3])` (whose blocks are used as they are).
    """
    if isinstance(getattr(inception, "blocks", None), nn.ModuleList):
        if len(inception.blocks) != 4:
            raise ValueError("a pytorch-fid InceptionV3 must have all four blocks (output 3)")
        return nn.Sequential(*inception.blocks).eval()
    i = inception
    return nn.Sequential(
        i.Conv2d_1a_3x3,
        i.Conv2d_2a_3x3,
        i.Conv2d_2b_3x3,
        nn.MaxPool2d(kernel_size=3, stride=2),
        i.Conv2d_3b_1x1,
        i.Conv2d_4a_3x3,
        nn.MaxPool2d(kernel_size=3, stride=2),
        i.Mixed_5b,
        i.Mixed_5c,
        i.Mixed_5d,
        i.Mixed_6a,
        i.Mixed_6b,
        i.Mixed_6c,
        i.Mixed_6d,
        i.Mixed_6e,
        i.Mixed_7a,
        i.Mixed_7b,
        i.Mixed_7c,
        nn.AdaptiveAvgPool2d(output_size=(1, 1)),
    ).eval()


# -- features -----------------------------------------------------------------------------------


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight lambda of i1, as PyTorch's bilinear (align_corners=False).

    src = max((dst + 0.5) * in/out - 0.5, 0), i0 = floor(src), i1 = min(i0 + 1, in - 1),
    lambda = src - i0, in float32 as PyTorch computes them for float32 input: the scale rounded
    to float32, and src with a single rounding (its CPU kernel's fused multiply-add, emulated in
    float64 where the float32 product is exact). Measured against `F.interpolate`: exact
    arithmetic moves output values by up to 1e-4, plain float32 steps by 1e-5, this by 1.2e-7.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    half = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * half.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, lam


def _unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 H x W x C -> float32 [0, 1] RGB or grey, alpha composited over white.

    Compositing is per pixel and the resize is linear, so doing it on the gathered pixels equals
    doing it on the whole image first.
    """
    x = pixels.astype(np.float32) / np.float32(255)
    c = x.shape[-1]
    if c in (2, 4):
        a = x[..., -1:]
        x = x[..., :-1] * a + (np.float32(1) - a)
    return x


def resize_bilinear(pixels: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 H x W x C (C 1..4) -> float32 3 x size x size in [0, 1], as pytorch-fid resizes.

    Equals `F.interpolate(x / 255, (size, size), mode='bilinear', align_corners=False)` (no
    antialias) on the full image, but reads only the two source rows and columns each output
    pixel needs, straight from the uint8 array: a 45-megapixel photo costs four size x size
    gathers, never a full-size float copy.

    Alpha (2 or 4 channels) is composited over white first. pytorch-fid reads images with PIL's
    `convert('RGB')`, which drops alpha: the colour of fully transparent pixels would then count,
    and an encoder that changes invisible pixels would be charged for it. Grey is repeated to
    three channels, as `convert('RGB')` does.
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w = pixels.shape[:2]
    r0, r1, ly = _taps(h, size)
    c0, c1, lx = _taps(w, size)
    ly, lx = ly[:, None, None], lx[None, :, None]
    one = np.float32(1)
    # The order of PyTorch's CPU kernel: interpolate along the width, then the height.
    top = (
        _unit(pixels[r0[:, None], c0[None, :]]) * (one - lx)
        + _unit(pixels[r0[:, None], c1[None, :]]) * lx
    )
    bottom = (
        _unit(pixels[r1[:, None], c0[None, :]]) * (one - lx)
        + _unit(pixels[r1[:, None], c1[None, :]]) * lx
    )
    out = top * (one - ly) + bottom * ly
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def _check_pixels(pixels, i: int) -> None:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"image {i} must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype != np.uint8:
        raise TypeError(f"image {i} must be uint8 (8-bit pixels), got {pixels.dtype}")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and not 1 <= pixels.shape[2] <= 4):
        raise ValueError(f"image {i} must be H x W or H x W x C with C 1..4, got {pixels.shape}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"image {i} is empty ({pixels.shape})")


class InceptionFeatures:
    """Pool3 features (2048 per image) of pytorch-fid's FID Inception, for uint8 images.

    `features(images)` equals pytorch-fid's `InceptionV3([3], resize_input=True,
    normalize_input=True)` output on `image / 255` (measured in tests/test_metrics_fid.py), with
    the memory-bounded resize of `resize_bilinear`. `network` is the Inception module
    `load_fid_inception` returns (found from `weights_dir`, the torch cache or one download when
    not given); `batch` images go through it at a time (8 on the CPU, 32 on a GPU by default).
    """

    def __init__(
        self,
        device: str | torch.device = "auto",
        *,
        weights_dir: str | Path | None = None,
        allow_download: bool = True,
        network: nn.Module | None = None,
        batch: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.batch = batch or (8 if self.device.type == "cpu" else 32)
        self.source = "a network given by the caller"
        if network is None:
            path = find_fid_weights(weights_dir, allow_download=allow_download)
            network = _build_inception(load_state(path, "FID Inception weights"), path)
            self.source = path.name
        # Channels-last on the CPU: oneDNN's convolutions are a third faster in that layout.
        self._layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.blocks = _blocks(network).to(self.device, memory_format=self._layout)

    def features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, 2048) float64 features on the CPU of N uint8 H x W x C images (C 1..4)."""
        for i, im in enumerate(images):
            _check_pixels(im, i)
        from .suite import full_float32

        out = []
        with torch.inference_mode(), full_float32():  # no TF32 convolutions on a GPU
            for start in range(0, len(images), self.batch):
                chunk = [resize_bilinear(im) for im in images[start : start + self.batch]]
                x = torch.from_numpy(np.stack(chunk)).to(self.device)
                y = self.blocks((2 * x - 1).contiguous(memory_format=self._layout))
                out.append(y.squeeze(3).squeeze(2).to("cpu", torch.float64))
        if not out:
            return torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
        return torch.cat(out)
