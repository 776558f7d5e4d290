"""Cheap features of an image that say how much quality its encodes will need.

What makes an image expensive to encode at a perceptual target is detail the encoder must keep
(edges, texture, noise), colour detail that chroma subsampling loses, and flat areas where
banding shows; a source that is already a JPEG has lost detail at its own quality. So:

- `grad`, `hf`: mean luma gradient and high-frequency residual (|Y - 3x3 mean|), at the source's
  own scale, on up to `TILES` tiles of `TILE` px spread over the image (the encoder sees native
  pixels; a downscaled copy would average the noise away). 0..1 luma.
- `chroma`: mean gradient of the two chroma planes there (what 4:2:0 halves).
- `flat`: the fraction of 8x8 blocks whose luma varies by under 1.5 levels (banding risk).
- `colours`: log2 of the distinct colours in the tiles, over 24 (few: graphics, screenshots).
- `colourful`: Hasler and Suesstrunk's colourfulness on a copy of at most 256 px a side, / 100.
- `grad_small`: the mean luma gradient of that copy (large-scale structure).
- `log_mp`: log2 of the megapixels; `grey`, `alpha`: 0 or 1.
- `jpeg_q`: the source's own JPEG quality (IJG scale, estimated from its luma quantisation
  table) / 100, and 0 when the source is not a JPEG; `is_jpeg`.

About 20 ms for any image size (tiles and a 256 px copy), so each image pays for them once.
Deterministic: the same pixels give the same numbers (tested)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FEATURES", "TILE", "TILES", "image_features", "jpeg_quality"]

TILE = 128
TILES = 8
#: the features, in the order models use them
FEATURES = (
    "grad",
    "hf",
    "chroma",
    "flat",
    "colours",
    "colourful",
    "grad_small",
    "log_mp",
    "grey",
    "alpha",
    "jpeg_q",
    "is_jpeg",
)

#: IJG's standard luminance quantisation table (JPEG Annex K), in natural order
_IJG_LUMA = np.array(
    [
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ],
    dtype=np.float64,
)  # fmt: skip


def jpeg_quality(quantization: dict | None) -> int | None:
    """The IJG quality (1..100) whose scaled luminance table is nearest the source's, from
    Pillow's `Image.quantization` of a JPEG; None without one. Exact for files written by
    libjpeg-based encoders (most cameras' and tools'), an estimate for others."""
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(quantization[0], dtype=np.float64)
    if table.size != 64:
        return None
    # Pillow gives the table in natural (row-major) order, as _IJG_LUMA is; libjpeg scales it
    # with integer arithmetic (jcparam.c: jpeg_quality_scaling, jpeg_add_quant_table).
    best, best_err = None, math.inf
    for q in range(1, 101):
        scale = 5000 // q if q < 50 else 200 - 2 * q
        std = np.clip((_IJG_LUMA * scale + 50) // 100, 1, 255)
        err = float(np.abs(std - table).sum())
        if err < best_err:
            best, best_err = q, err
    return best


def _tiles(pixels: np.ndarray) -> list[np.ndarray]:
    """Up to `TILES` tiles of `TILE` x `TILE` on a grid over the image (the whole image if
    smaller than a tile)."""
    h, w = pixels.shape[:2]
    if h <= TILE or w <= TILE:
        return [pixels]
    rows = max(1, min(int(math.sqrt(TILES * h / w) + 0.5), h // TILE))
    cols = max(1, min(TILES // rows, w // TILE))
    ys = np.linspace(0, h - TILE, rows + 2)[1:-1].astype(int) if rows > 1 else [(h - TILE) // 2]
    xs = np.linspace(0, w - TILE, cols + 2)[1:-1].astype(int) if cols > 1 else [(w - TILE) // 2]
    return [pixels[y : y + TILE, x : x + TILE] for y in ys for x in xs]


def _ycc(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 full-range Y, Cb, Cr in 0..1 (JPEG's), from 0..255 RGB (or grey)."""
    x = rgb.astype(np.float32) / 255.0
    if x.shape[2] < 3:
        y = x[..., 0]
        zero = np.zeros_like(y)
        return y, zero, zero
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, 0.564 * (b - y), 0.713 * (r - y)


def _grad(p: np.ndarray) -> float:
    if p.shape[0] < 2 or p.shape[1] < 2:
        return 0.0
    return float((np.abs(np.diff(p, axis=0)).mean() + np.abs(np.diff(p, axis=1)).mean()) / 2)


def _hf(y: np.ndarray) -> float:
    if y.shape[0] < 3 or y.shape[1] < 3:
        return 0.0
    pad = np.pad(y, 1, mode="edge")
    mean = (
        sum(pad[dy : dy + y.shape[0], dx : dx + y.shape[1]] for dy in range(3) for dx in range(3))
        / 9.0
    )
    return float(np.abs(y - mean).mean())


def _flat(y: np.ndarray) -> float:
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if not h or not w:
        return 0.0
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8)
    spread = blocks.max(axis=(1, 3)) - blocks.min(axis=(1, 3))
    return float((spread < 1.5 / 255).mean())


def _small(pixels: np.ndarray, side: int = 256) -> np.ndarray:
    """A copy of at most `side` px a side, by block means (Pillow's `reduce`, in C)."""
    from PIL import Image

    h, w = pixels.shape[:2]
    f = max(1, math.ceil(max(h, w) / side))
    im = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    out = np.asarray(im.reduce(f) if f > 1 else im, dtype=np.float32)
    return out[..., None] if out.ndim == 2 else out


def image_features(
    pixels: np.ndarray, *, source_jpeg_quality: int | None = None
) -> dict[str, float]:
    """The features above for uint8 H x W x C `pixels` (C = 1..4, alpha last when 2 or 4).
    `source_jpeg_quality`: the source's own JPEG quality (`jpeg_quality`), None if not a JPEG."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[2]
    alpha = channels in (2, 4)
    colour = pixels[..., : channels - 1] if alpha else pixels
    grads, hfs, chromas, flats, colours = [], [], [], [], []
    for t in _tiles(colour):
        y, cb, cr = _ycc(t)
        grads.append(_grad(y))
        hfs.append(_hf(y))
        chromas.append((_grad(cb) + _grad(cr)) / 2)
        flats.append(_flat(y))
        flat = t.reshape(-1, t.shape[2]).astype(np.uint32)
        packed = flat[:, 0] << 16
        if t.shape[2] >= 3:
            packed = packed | (flat[:, 1] << 8) | flat[:, 2]
        colours.append(np.unique(packed))
    distinct = np.unique(np.concatenate(colours)).size
    small = _small(colour)
    if small.shape[2] >= 3:
        r, g, b = small[..., 0], small[..., 1], small[..., 2]
        rg, yb = r - g, 0.5 * (r + g) - b
        colourful = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(
            float(rg.mean()), float(yb.mean())
        )
        y_small = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    else:
        colourful, y_small = 0.0, small[..., 0] / 255.0
    q = source_jpeg_quality
    h, w = pixels.shape[:2]
    return {
        "grad": float(np.mean(grads)),
        "hf": float(np.mean(hfs)),
        "chroma": float(np.mean(chromas)),
        "flat": float(np.mean(flats)),
        "colours": math.log2(max(distinct, 1)) / 24.0,
        "colourful": colourful / 100.0,
        "grad_small": _grad(y_small),
        "log_mp": math.log2(max(h * w, 1) / 1e6),
        "grey": float(colour.shape[2] == 1),
        "alpha": float(alpha),
        "jpeg_q": (q or 0) / 100.0,
        "is_jpeg": float(q is not None),
    }
