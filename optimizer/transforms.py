"""Resize (fit inside a box, never upscale) and sharpen, before encoding.

Sharpening follows Pillow's `ImageEnhance.Sharpness`: 1.0 leaves the image unchanged, below 1
softens, above sharpens (range [0, 2]). Alpha is handled as a careful pipeline would: resizing
runs on premultiplied colour (Pillow's own behaviour: no dark fringes where transparent black
meets colour), and
sharpening touches colour only, never the transparency.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from .images import pil_to_pixels, pixels_to_pil

__all__ = ["RESIZE_FILTERS", "SHARPEN_RANGE", "apply", "fit_size", "reference"]

RESIZE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
SHARPEN_RANGE = (0.0, 2.0)


def fit_size(
    width: int, height: int, *, max_width: int | None = None, max_height: int | None = None
) -> tuple[int, int]:
    """The largest size with the same aspect ratio inside the box; never larger than the input."""
    scale = 1.0
    if max_width is not None:
        if max_width < 1:
            raise ValueError(f"max width must be at least 1, got {max_width}")
        scale = min(scale, max_width / width)
    if max_height is not None:
        if max_height < 1:
            raise ValueError(f"max height must be at least 1, got {max_height}")
        scale = min(scale, max_height / height)
    if scale >= 1.0:
        return width, height
    # Halves round up, as sharp and libvips do (Python's round() goes to even: 42.5 -> 42),
    # so a width variant has the height the exported sharp script gives it.
    return max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))


def apply(
    pixels: np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    resize_filter: str = "lanczos",
    sharpen: float = 1.0,
) -> np.ndarray:
    """Resize uint8 H x W x C `pixels` to `size` (width, height) with `resize_filter`, then
    sharpen with strength `sharpen` in [0, 2] (1.0 = unchanged)."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(
            f"unknown resize filter {resize_filter!r}; known: {', '.join(RESIZE_FILTERS)}"
        )
    lo, hi = SHARPEN_RANGE
    if not lo <= sharpen <= hi:
        raise ValueError(f"sharpen must be in [{lo}, {hi}] (1.0 = unchanged), got {sharpen}")
    im = pixels_to_pil(pixels)
    w, h = im.size
    if size is not None:
        if size[0] > w or size[1] > h:
            raise ValueError(f"refusing to upscale {w}x{h} to {size[0]}x{size[1]}")
        # Pillow resizes RGBA/LA premultiplied by itself (tested), so transparent pixels
        # do not bleed their meaningless colour into visible edges.
        im = im.resize(size, RESIZE_FILTERS[resize_filter]) if im.size != size else im
    if sharpen != 1.0:
        alpha = im.getchannel("A") if im.mode in ("RGBA", "LA") else None
        colour = im.convert("RGB" if im.mode == "RGBA" else "L") if alpha is not None else im
        colour = ImageEnhance.Sharpness(colour).enhance(sharpen)
        if alpha is not None:
            colour.putalpha(alpha)
        im = colour
    return pil_to_pixels(im)


def reference(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What every candidate of a resized set is scored against: the source resized with Lanczos
    to the output size, whatever filter the candidate used."""
    return apply(pixels, size=size, resize_filter="lanczos")
