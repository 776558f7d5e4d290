"""Turn a path into a validated source image, or a typed error that names the file and the reason.

Everything downstream (transforms, codecs, metrics) works on `SourceImage.pixels`: an 8-bit
sRGB array, H x W x C with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Alpha is kept
only when it carries information.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import ImgtuneError, UsageError
from .features import jpeg_quality

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MODES",
    "AnimatedImageError",
    "BrokenLinkError",
    "EmptyFileError",
    "ImageError",
    "NotAFileError",
    "NotAnImageError",
    "OutOfMemoryError",
    "OutsideSourceError",
    "SourceImage",
    "TooManyPixelsError",
    "shown_size",
    "TooSmallError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "AnimatedPolicy",
    "check_animated",
    "iter_image_files",
    "load",
    "load_folder",
    "pil_to_pixels",
    "pixels_to_pil",
]

# Pillow's own decompression-bomb threshold (about 89 megapixels); we keep it unless told otherwise.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

AnimatedPolicy = Literal["refuse", "first"]


def check_animated(policy: str) -> AnimatedPolicy:
    """`policy` if it is one `load` knows, else a `UsageError` naming the choices."""
    if policy not in ("refuse", "first"):
        raise UsageError(f"animated must be 'refuse' or 'first', not {policy!r}")
    return policy  # type: ignore[return-value]


class ImageError(ImgtuneError):
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


class OutOfMemoryError(TooManyPixelsError):
    reason = "is too large to decode in the memory available"


class TooSmallError(ImageError):
    reason = "is too small to score"


class AnimatedImageError(ImageError):
    reason = "is animated; imgtune optimises still images"


class UnsupportedImageError(ImageError):
    reason = "uses a pixel format imgtune cannot convert to 8-bit sRGB"


class OutsideSourceError(ImageError):
    reason = "is a symbolic link that leads outside the source folder; not read"

    def __init__(self, path: Path | str, detail: str = "") -> None:
        super().__init__(path, f"{detail}; pass --follow-symlinks to read it" if detail else "")


@dataclass(frozen=True, eq=False)
class SourceImage:
    """A decoded source: 8-bit sRGB pixels (H, W, C), its file's content hash, and what was done."""

    path: Path
    pixels: np.ndarray
    sha256: str
    file_bytes: int
    format: str
    notes: tuple[str, ...] = field(default=())
    #: the IJG quality the source was saved at, when it is a JPEG (`features.jpeg_quality`)
    jpeg_quality: int | None = None

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
    try:
        if path.is_symlink() and not path.exists():
            raise BrokenLinkError(path, f"points to {os.readlink(path)}")
        if not path.exists():
            raise NotAFileError(path, "no such file")
        if not path.is_file():
            raise NotAFileError(path)
        size = path.stat().st_size
    except FileNotFoundError as exc:  # removed (or a link re-pointed) while we looked
        raise NotAFileError(path, "no such file") from exc
    except OSError as exc:
        # is_symlink()/exists() pass some errors through (a name too long, a folder we may not
        # enter, an I/O error); none of them is a fact about the image, so no subclass fits.
        raise ImageError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if size == 0:
        raise EmptyFileError(path)
    return size


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise NotAFileError(path, "no such file") from exc
    except OSError as exc:  # permission, I/O error, or replaced by a folder since the check
        raise ImageError(path, f"cannot be read: {exc.strerror or exc}") from exc


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
    try:
        desc = (ImageCms.getProfileDescription(src) or "").strip()
    except ImageCms.PyCMSError:
        # A description byte over 0x7F reaches Python as a negative code point (ValueError, as
        # PyCMSError); lcms parsed the rest of the profile, so it can still convert.
        desc = ""
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
        # 16-bit containers hold 0..65535; round-to-nearest division by 257 maps it onto 0..255.
        # In integers, (x + 128) // 257 is exactly rint(x / 257) (257 is odd: no ties), and it
        # needs 4 bytes a pixel per temporary where float64 took 8: half the peak memory.
        arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        arr = ((arr + 128) // 257).astype(np.uint8)
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


#: What Pillow raises on bytes that are not a valid image. It documents OSError (with
#: UnidentifiedImageError), SyntaxError, ValueError and EOFError, but its format plugins parse
#: headers in Python and let the parser's own errors through: struct.error and IndexError on
#: short reads, KeyError and TypeError on missing tags (TIFF's "Missing dimensions"),
#: ZeroDivisionError and OverflowError on zero or absurd sizes. Image.open turns some of these
#: into UnidentifiedImageError, but only while it identifies the format: seek() (counting frames)
#: and load() run the same parsing code again, unguarded. The AVIF plugin reports libavif's
#: failures as RuntimeError. Around the decode step each of them means "these bytes are not a
#: valid image", and the try blocks that catch them hold Pillow calls only.
_CORRUPT: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ArithmeticError,
    RuntimeError,
)

#: What a damaged EXIF block raises while Pillow parses it (the same parser errors as above).
_EXIF_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ArithmeticError,
)

#: Formats whose signature Pillow checks byte for byte: a file that starts with one of them and
#: still cannot be opened is a damaged file of that format, and its parser can say why.
_SIGNED_FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "AVIF", "JPEG2000")


def _describe(exc: BaseException) -> str:
    if exc.args and isinstance(exc.args[0], BaseException):
        return _describe(exc.args[0])  # ImageFile wraps a parser's error: SyntaxError(KeyError(5))
    text = " ".join(str(exc).split())  # one line, whatever the plugin put in its message
    if text and isinstance(exc, (OSError, SyntaxError, ValueError, EOFError, RuntimeError)):
        return text
    # A parser's own error says little without its type ("index out of range", "57325").
    kind = type(exc).__name__
    if type(exc).__module__ != "builtins":
        kind = f"{type(exc).__module__}.{kind}"  # struct.error, not "error"
    return f"{kind}: {text}" if text else kind


def _signature(data: bytes) -> str | None:
    """The format whose signature `data` starts with, among those Pillow checks strictly."""
    Image.init()
    for fmt in _SIGNED_FORMATS:
        accept = Image.OPEN[fmt][1] if fmt in Image.OPEN else None
        if accept is not None and accept(data[:16]) is True:
            return fmt
    return None


def _why_unidentified(data: bytes) -> str:
    """'reading the PNG header: <why>' when `data` has a signature Pillow knows but could not
    open (Image.open only says "cannot identify"), else ''."""
    fmt = _signature(data)
    if fmt is None:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Image.OPEN[fmt][0](io.BytesIO(data)).close()
    except Exception as exc:  # any type: only its words are wanted, for the message
        return f"reading the {fmt} header: {_describe(exc)}"
    return ""


def _out_of_memory(path: Path, im: Image.Image | None, step: str) -> OutOfMemoryError:
    # Not a decompression bomb by our count, but the same cause (too many pixels for this
    # machine), so a subclass of it: refused by name instead of killing the whole run.
    if im is None:
        return OutOfMemoryError(path, f"ran out of memory {step}")
    w, h = im.size
    return OutOfMemoryError(path, f"{w}x{h} = {w * h:,} pixels; ran out of memory {step}")


def _to_pixels(im: Image.Image, path: Path, notes: list[str]) -> np.ndarray:
    try:
        oriented = ImageOps.exif_transpose(im)
    except _EXIF_ERRORS as exc:
        # A broken EXIF block must not cost the user the image: keep the stored orientation.
        notes.append(f"EXIF unreadable ({_describe(exc)}); orientation left as stored")
        oriented = im
    orientation = _exif_orientation(im)
    # exif_transpose returns a copy even when it does nothing: only 2..8 name a transposition.
    if oriented is not im and orientation in range(2, 9):
        notes.append(f"EXIF orientation {orientation} applied")
    elif oriented is not im and orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} is not a valid value; left as stored")
    eight = _to_8bit(oriented, path, notes)
    srgb = _to_srgb(eight, notes)
    if srgb.mode == "CMYK":
        srgb = srgb.convert("RGB")
    arr = np.asarray(srgb, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return _drop_opaque_alpha(np.ascontiguousarray(arr), notes)


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
    Damaged files raise `TruncatedImageError` saying which step failed and why; a decode that
    runs out of memory raises `OutOfMemoryError` (a `TooManyPixelsError`: the same cure).
    """
    path = Path(path)
    size = _check_path(path)
    data = _read(path)
    notes: list[str] = []
    _allow_pixels(max_pixels)
    im: Image.Image | None = None
    step = "reading the header"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise TooManyPixelsError(
                    path,
                    f"{w}x{h} = {w * h:,} pixels > {max_pixels:,}; raise it with --max-pixels",
                )
            fmt = im.format or "unknown"
            step = "counting the frames"
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and getattr(im, "is_animated", False):
                if animated == "refuse":
                    raise AnimatedImageError(
                        path, f"{frames} frames; pass --animated first to use the first frame"
                    )
                notes.append(f"animated ({frames} frames): first frame used")
            step = "decoding the pixels"
            im.load()
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise NotAnImageError(path, _why_unidentified(data)) from exc
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(path, str(exc)) from exc
    except MemoryError as exc:
        raise _out_of_memory(path, im, step) from exc
    except NotImplementedError as exc:
        raise UnsupportedImageError(path, f"{step}: {_describe(exc)}") from exc
    except _CORRUPT as exc:
        if im is None and (signed := _signature(data)):
            step = f"reading the {signed} header"
        raise TruncatedImageError(path, f"{step}: {_describe(exc)}") from exc

    try:
        arr = _to_pixels(im, path, notes)
    except MemoryError as exc:
        raise _out_of_memory(path, im, "converting to 8-bit sRGB") from exc
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
        jpeg_quality=jpeg_quality(getattr(im, "quantization", None)) if fmt in _JPEGS else None,
    )


_JPEGS = ("JPEG", "MPO")


def shown_size(source: str | os.PathLike[str] | bytes) -> tuple[int, int] | None:
    """(width, height) of an image as shown (EXIF orientation applied), from its header only (a
    path or the file's bytes); None where Pillow cannot read one. No pixel limit here: `load`
    applies it and names what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            f = io.BytesIO(source) if isinstance(source, bytes) else source
            with Image.open(f) as im:
                w, h = im.size
                return (h, w) if _exif_orientation(im) in (5, 6, 7, 8) else (w, h)
    except Exception:
        return None


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except _EXIF_ERRORS:
        return None


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def iter_image_files(
    root: str | os.PathLike[str], *, follow_symlinks: bool = False
) -> Iterator[Path | OutsideSourceError]:
    """Yield image files under `root` (by extension), sorted, following links but never a loop.

    Files that do not look like images (by extension) are skipped silently; files that look like
    images but are broken are yielded so that `load` can report them by name. A symbolic link
    (to a file or a folder) that leads outside `root` is yielded as an `OutsideSourceError` for
    the caller to report, and not read, unless `follow_symlinks`: a folder shared with others
    must not hand the job files from elsewhere.
    """
    root = Path(root)
    top = root.resolve()
    exts = _image_extensions()
    seen: set[tuple[int, int]] = set()

    def outside(entry: Path) -> Path | None:
        if follow_symlinks or not entry.is_symlink():
            return None
        try:
            target = entry.resolve(strict=True)
        except (OSError, RuntimeError):
            return None  # broken or a loop: `load` names it
        return None if target == top or top in target.parents else target

    def walk(directory: Path) -> Iterator[Path | OutsideSourceError]:
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
            is_dir = entry.is_dir()
            if not is_dir and entry.suffix.lower() not in exts:
                continue
            target = outside(entry)
            if target is not None:
                yield OutsideSourceError(entry, f"points to {target}")
            elif is_dir:
                yield from walk(entry)
            else:
                yield entry

    yield from walk(root)


def load_folder(
    folder: str | os.PathLike[str],
    *,
    min_side: int = 1,
    follow_symlinks: bool = False,
    max_pixels: int | None = None,
    animated: AnimatedPolicy = "refuse",
    on_skip: Callable[[ImageError], None] | None = None,
) -> tuple[list[SourceImage], list[ImageError]]:
    """Every usable image under `folder` (sorted), and why each other one was skipped (also
    passed to `on_skip` as it happens). Decodes everything: for sets that fit in memory (`tune`);
    folder jobs stream their images one by one instead."""
    sources: list[SourceImage] = []
    skipped: list[ImageError] = []
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    for item in iter_image_files(folder, follow_symlinks=follow_symlinks):
        problem = item if isinstance(item, ImageError) else None  # a link out: named, not read
        if problem is None:
            try:
                sources.append(load(item, min_side=min_side, max_pixels=limit, animated=animated))
            except ImageError as exc:
                problem = exc
        if problem is not None:
            skipped.append(problem)
            if on_skip:
                on_skip(problem)
    return sources, skipped
