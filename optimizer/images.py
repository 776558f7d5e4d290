"""Turn a path into a validated source image, or a typed error that names the file and the reason.

Everything downstream (transforms, codecs, metrics) works on `SourceImage.pixels`: an 8-bit
sRGB array, H x W x C with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Alpha is kept
only when it carries information.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODES",
    "AnimatedImageError",
    "BrokenLinkError",
    "EmptyFileError",
    "ImageError",
    "NotAFileError",
    "NotAnImageError",
    "SourceImage",
    "TooManyPixelsError",
    "TooSmallError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "iter_image_files",
    "load",
    "pil_to_pixels",
    "pixels_to_pil",
]

# Pillow's own decompression-bomb threshold (about 89 megapixels); we keep it unless told otherwise.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

AnimatedPolicy = Literal["refuse", "first"]


class ImageError(Exception):
    """An input that cannot be used. `str()` is one line: the file, the reason, the remedy."""

    reason = "unusable image"

    def __init__(self, path: Path | str, detail: str = "") -> None:
        self.path = Path(path)
        self.detail = detail
        super().__init__(f"{self.path}: {self.reason}" + (f" ({detail})" if detail else ""))


class NotAFileError(ImageError):
    reason = "is a directory or special file, not an image file"


class BrokenLinkError(ImageError):
    reason = "is a symbolic link whose target does not exist"


class EmptyFileError(ImageError):
    reason = "is empty (0 bytes)"


class NotAnImageError(ImageError):
    reason = "is not an image Pillow can read"


class TruncatedImageError(ImageError):
    reason = "is truncated or corrupt"


class TooManyPixelsError(ImageError):
    reason = "has more pixels than the decompression-bomb limit"


class TooSmallError(ImageError):
    reason = "is too small to score"


class AnimatedImageError(ImageError):
    reason = "is animated; imgtune optimises still images"


class UnsupportedImageError(ImageError):
    reason = "uses a pixel format imgtune cannot convert to 8-bit sRGB"


@dataclass(frozen=True, eq=False)
class SourceImage:
    """A decoded source: 8-bit sRGB pixels (H, W, C), its file's content hash, and what was done."""

    path: Path
    pixels: np.ndarray
    sha256: str
    file_bytes: int
    format: str
    notes: tuple[str, ...] = field(default=())

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def is_grey(self) -> bool:
        return self.channels in (1, 2)

    def to_pil(self) -> Image.Image:
        return pixels_to_pil(self.pixels)


#: channels of an H x W x C array -> Pillow mode, the one mapping every module uses
MODES: dict[int, str] = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def pixels_to_pil(pixels: np.ndarray) -> Image.Image:
    """uint8 H x W x C (C = 1..4) -> a Pillow image of the matching mode."""
    c = pixels.shape[2]
    return Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, MODES[c])


def pil_to_pixels(im: Image.Image) -> np.ndarray:
    """A Pillow image -> uint8 H x W x C (grey keeps its single channel)."""
    arr = np.asarray(im)
    return arr[:, :, None] if arr.ndim == 2 else arr


_limit_lock = threading.Lock()


def _allow_pixels(max_pixels: int) -> None:
    # Pillow refuses outright at twice MAX_IMAGE_PIXELS, before we can look at the size; raise its
    # ceiling (never lower it) so that our own, explicit limit is the one that decides.
    with _limit_lock:
        if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _check_path(path: Path) -> int:
    if path.is_symlink() and not path.exists():
        raise BrokenLinkError(path, f"points to {os.readlink(path)}")
    if not path.exists():
        raise NotAFileError(path, "no such file")
    if not path.is_file():
        raise NotAFileError(path)
    size = path.stat().st_size
    if size == 0:
        raise EmptyFileError(path)
    return size


def _to_srgb(im: Image.Image, notes: list[str]) -> Image.Image:
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        if im.mode == "CMYK":
            notes.append("CMYK without a profile converted naively to RGB")
            return im.convert("RGB")
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        notes.append("embedded ICC profile unreadable; pixels taken as sRGB")
        return im.convert("RGB") if im.mode == "CMYK" else im
    desc = (ImageCms.getProfileDescription(src) or "").strip()
    if "srgb" in desc.lower() and im.mode != "CMYK":
        return im
    if im.mode in ("L", "LA"):
        # A grey profile maps to grey; converting through RGB would triple the channels for nothing.
        return im
    out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
    alpha = im.getchannel("A") if im.mode == "RGBA" else None
    base = im.convert("RGB") if im.mode == "RGBA" else im
    try:
        converted = ImageCms.profileToProfile(
            base, src, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except ImageCms.PyCMSError as exc:
        notes.append(f"ICC conversion failed ({exc}); pixels taken as sRGB")
        return im.convert(out_mode)
    if alpha is not None:
        converted.putalpha(alpha)
    notes.append(f"converted from ICC profile '{desc or 'unnamed'}' to sRGB")
    return converted


def _to_8bit(im: Image.Image, path: Path, notes: list[str]) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit containers hold 0..65535; round-to-nearest division by 257 maps it onto 0..255.
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        notes.append("16-bit grey scaled to 8-bit")
        return Image.fromarray(arr, "L")
    if im.mode == "F":
        raise UnsupportedImageError(path, "32-bit float pixels have no defined display range")
    if im.mode == "P":
        has_transparency = "transparency" in im.info
        return im.convert("RGBA" if has_transparency else "RGB")
    if im.mode == "PA":
        return im.convert("RGBA")
    if im.mode in ("1",):
        return im.convert("L")
    if im.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return im
    if im.mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        return im.convert("RGB")
    if im.mode in ("La", "RGBa"):
        return im.convert(im.mode.upper())
    raise UnsupportedImageError(path, f"mode {im.mode}")


def _drop_opaque_alpha(arr: np.ndarray, notes: list[str]) -> np.ndarray:
    if arr.shape[2] in (2, 4) and bool((arr[:, :, -1] == 255).all()):
        notes.append("fully opaque alpha dropped")
        return np.ascontiguousarray(arr[:, :, :-1])
    return arr


def load(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    animated: AnimatedPolicy = "refuse",
) -> SourceImage:
    """Decode `path` to 8-bit sRGB pixels, EXIF-oriented, alpha kept only when it matters.

    Raises a subclass of `ImageError` whose message names the file and the reason. `min_side` is
    the smallest width/height the caller's metrics can score (11 for SSIM's window).
    `animated="first"` takes the first frame (and says so in `notes`); the default refuses.
    """
    path = Path(path)
    size = _check_path(path)
    data = path.read_bytes()
    notes: list[str] = []
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > max_pixels:
            raise TooManyPixelsError(
                path, f"{w}x{h} = {w * h:,} pixels > {max_pixels:,}; raise it with --max-pixels"
            )
        fmt = im.format or "unknown"
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and getattr(im, "is_animated", False):
            if animated == "refuse":
                raise AnimatedImageError(
                    path, f"{frames} frames; pass --animated first to use the first frame"
                )
            notes.append(f"animated ({frames} frames): first frame used")
        im.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise NotAnImageError(path) from exc
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(path, str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise TruncatedImageError(path, str(exc)) from exc

    try:
        oriented = ImageOps.exif_transpose(im)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as exc:
        # A broken EXIF block must not cost the user the image: keep the stored orientation.
        notes.append(f"EXIF unreadable ({exc}); orientation left as stored")
        oriented = im
    orientation = _exif_orientation(im)
    if orientation not in (None, 1) and oriented is not im:
        notes.append(f"EXIF orientation {orientation} applied")
    eight = _to_8bit(oriented, path, notes)
    srgb = _to_srgb(eight, notes)
    if srgb.mode == "CMYK":
        srgb = srgb.convert("RGB")
    arr = np.asarray(srgb, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = _drop_opaque_alpha(np.ascontiguousarray(arr), notes)
    if min(arr.shape[0], arr.shape[1]) < min_side:
        raise TooSmallError(
            path, f"{arr.shape[1]}x{arr.shape[0]}; the metrics need at least {min_side}x{min_side}"
        )
    return SourceImage(
        path=path,
        pixels=arr,
        sha256=hashlib.sha256(data).hexdigest(),
        file_bytes=size,
        format=fmt,
        notes=tuple(notes),
    )


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except (OSError, ValueError, SyntaxError):
        return None


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def iter_image_files(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield image files under `root` (by extension), sorted, following links but never a loop.

    Files that do not look like images (by extension) are skipped silently; files that look like
    images but are broken are yielded so that `load` can report them by name.
    """
    root = Path(root)
    exts = _image_extensions()
    seen: set[tuple[int, int]] = set()

    def walk(directory: Path) -> Iterator[Path]:
        try:
            st = directory.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        try:
            entries = sorted(directory.iterdir(), key=lambda p: p.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from walk(entry)
            elif entry.suffix.lower() in exts:
                yield entry

    yield from walk(root)
