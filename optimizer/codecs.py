"""Encode pixels to bytes and back through Pillow's own encoders: JPEG, WebP, AVIF (JPEG XL when
`pillow-jxl-plugin` is installed), and two lossless ones: lossless WebP and PNG (Pillow's PNG
reader; written by oxipng, through `pyoxipng`).

Pillow's `Image.save()` silently ignores keywords it does not know, so a typo would produce a
wrong preset without a word. Every option is validated here against its codec's table first.
Knows nothing of metrics or Optuna.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from .errors import UsageError
from .images import MODES, pil_to_pixels, pixels_to_pil

__all__ = [
    "CODECS",
    "Codec",
    "CodecError",
    "EncodeSettings",
    "available_codecs",
    "check_codecs",
    "parse_colour",
    "parse_quality_ranges",
    "decode",
    "encode",
]


class CodecError(UsageError):
    """A codec or option that does not exist, or a value outside its range."""


@dataclass(frozen=True)
class Option:
    """One encoder option: its allowed values (a tuple) or an inclusive integer range."""

    default: Any
    choices: tuple[Any, ...] | None = None
    range: tuple[int, int] | None = None
    help: str = ""

    def check(self, codec: str, name: str, value: Any) -> Any:
        if self.choices is not None:
            if value not in self.choices:
                raise CodecError(
                    f"{codec} option {name}={value!r} is not one of "
                    f"{', '.join(map(repr, self.choices))}"
                )
            return value
        lo, hi = self.range  # type: ignore[misc]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise CodecError(f"{codec} option {name}={value!r} must be an integer in [{lo}, {hi}]")
        return value


@dataclass(frozen=True)
class Codec:
    name: str
    pil_format: str
    extension: str
    quality_range: tuple[int, int]
    supports_alpha: bool
    options: Mapping[str, Option] = field(default_factory=dict)
    #: the module whose import registers the codec with Pillow (plugins)
    plugin: str | None = None
    #: the longest side the format holds and Pillow reads back (WebP: 16383 by its spec; AVIF:
    #: libavif's default decode limit of 32768, which Pillow keeps; JPEG: 65500 in libjpeg)
    max_side: int = 65500
    #: outputs decode to exactly the pixels encoded: no quality to search (it is fixed at 100,
    #: the top of every scale); the options trade encode time for bytes (`optimizer.lossless`)
    lossless: bool = False


CODECS: dict[str, Codec] = {
    "jpeg": Codec(
        "jpeg",
        "JPEG",
        ".jpg",
        (1, 100),
        False,
        {
            "subsampling": Option(
                "4:2:0",
                choices=("4:2:0", "4:4:4"),
                help="chroma subsampling (ignored for grey images)",
            ),
            "progressive": Option(True, choices=(True, False), help="progressive scan"),
            "optimize": Option(True, choices=(True, False), help="optimised Huffman tables"),
        },
    ),
    "webp": Codec(
        "webp",
        "WEBP",
        ".webp",
        (0, 100),
        True,
        {"method": Option(4, range=(0, 6), help="effort: 0 fast .. 6 smallest")},
        max_side=16383,
    ),
    "avif": Codec(
        "avif",
        "AVIF",
        ".avif",
        (0, 100),
        True,
        {
            "speed": Option(6, range=(0, 10), help="effort: 0 slowest/smallest .. 10 fastest"),
            "subsampling": Option(
                "4:2:0",
                choices=("4:2:0", "4:4:4"),
                help="chroma subsampling (grey images are always 4:0:0)",
            ),
        },
        max_side=32768,
    ),
    "jxl": Codec(
        "jxl",
        "JXL",
        ".jxl",
        (0, 100),
        True,
        {"effort": Option(7, range=(1, 9), help="effort: 1 fast .. 9 smallest")},
        plugin="pillow_jxl",
        max_side=1 << 30,
    ),
    # Lossless: tried by `optimize` where they may win (`optimizer.lossless`), and the only
    # candidates under `--quality lossless`. Default efforts timed at 768x512 on 2 cores (flat
    # graphic / Kodak-size photo): lossless WebP effort 100, method 4: 0.08 / 1.3 s (effort 75:
    # 0.03 / 0.4 s but 2-3% larger graphics; method 6: 1.8 / 14 s for 0-2% less); oxipng level 2
    # (its own default): 0.3 / 0.9 s (level 1: 0.2 / 0.5 s, 2.5-3.5% larger; 3 and 4: 3x the
    # time for 0-1.5% less).
    "webp-lossless": Codec(
        "webp-lossless",
        "WEBP",
        ".webp",
        (100, 100),
        True,
        {
            "effort": Option(100, range=(0, 100), help="libwebp's lossless effort ('quality')"),
            "method": Option(4, range=(0, 6), help="effort: 0 fast .. 6 smallest"),
        },
        max_side=16383,
        lossless=True,
    ),
    "png": Codec(
        "png",
        "PNG",
        ".png",
        (100, 100),
        True,
        {"level": Option(2, range=(0, 6), help="oxipng optimisation level: 0 fast .. 6 smallest")},
        plugin="oxipng",
        max_side=(1 << 31) - 1,
        lossless=True,
    ),
}


@dataclass(frozen=True)
class EncodeSettings:
    """Codec, quality and options, validated; hashable so it can key a cache."""

    codec: str
    quality: int
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, codec: str, quality: int, **options: Any) -> EncodeSettings:
        """Validate against the codec's table; unknown names and bad values raise `CodecError`."""
        info = CODECS.get(codec)
        if info is None:
            raise CodecError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
        lo, hi = info.quality_range
        if isinstance(quality, bool) or not isinstance(quality, int) or not lo <= quality <= hi:
            raise CodecError(f"{codec} quality must be an integer in [{lo}, {hi}], got {quality!r}")
        full = {}
        for name, opt in info.options.items():
            full[name] = opt.check(codec, name, options.pop(name, opt.default))
        if options:
            raise CodecError(
                f"unknown {codec} option(s) {', '.join(sorted(options))}; "
                f"{codec} takes: {', '.join(info.options) or 'none'}"
            )
        return cls(codec, quality, tuple(sorted(full.items())))

    @property
    def info(self) -> Codec:
        return CODECS[self.codec]

    def pillow_kwargs(self, grey: bool = False) -> dict[str, Any]:
        """The exact `Image.save()` keyword arguments for these settings (PNG: Pillow's plain
        PNG, which `encode` does not use: oxipng writes it)."""
        opts = dict(self.options)
        if self.codec == "webp-lossless":
            # exact: keep the colour of fully transparent pixels, which libwebp otherwise
            # replaces, so the file decodes to every pixel it was given
            return {
                "lossless": True,
                "quality": opts["effort"],
                "method": opts["method"],
                "exact": True,
            }
        if self.codec == "png":
            return {}
        kw: dict[str, Any] = {"quality": self.quality, **opts}
        if grey and "subsampling" in kw:
            del kw["subsampling"]  # JPEG L has no chroma; AVIF picks 4:0:0 for grey itself
        return kw


@cache
@functools.cache
def quality_grid(codec: str) -> tuple[int, ...] | None:
    """The qualities of `codec` that give distinct files, each the lowest of the qualities that
    give the same one; None where every quality is its own (JPEG, WebP), or the codec is not
    built. AVIF: libavif maps Pillow's 101 qualities onto 64 quantisers, so 37 qualities encode
    exactly the file of the one below them. Measured, not copied from libavif (its mapping has
    changed between versions): 101 encodes of a 16x16 noise image (0.2 s, once a process).
    For opaque images only: with alpha, the alpha plane's own quality mapping makes more
    distinct files."""
    if codec != "avif" or not available_codecs().get(codec):
        return None
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image, grid, last = Image.fromarray(noise), [], None
    lo, hi = CODECS[codec].quality_range
    for q in range(lo, hi + 1):
        buf = io.BytesIO()
        image.save(buf, "AVIF", quality=q, speed=10, max_threads=1)
        if buf.getvalue() != last:
            grid.append(q)
        last = buf.getvalue()
    return tuple(grid)


def available_codecs() -> dict[str, bool]:
    """Which codecs this Pillow (and oxipng) can encode *and* decode (checked once per process)."""
    out = {}
    probe = Image.new("RGB", (16, 16), (120, 60, 30))
    for name, info in CODECS.items():
        ok = True
        if info.plugin:
            try:
                __import__(info.plugin)
            except ImportError:
                ok = False
        if ok:
            try:
                buf = io.BytesIO()
                probe.save(buf, info.pil_format, quality=80)
                Image.open(io.BytesIO(buf.getvalue())).load()
            except (OSError, KeyError, ValueError):
                ok = False
        out[name] = ok
    return out


def check_codecs(names: str | Sequence[str] | None, *, default: Sequence[str] = ()) -> list[str]:
    """The codecs named (a comma-separated string or a list), each known and available here;
    None: `default`, or every available lossy codec but JPEG XL (most browsers cannot show it).
    Raises `CodecError` naming the codecs that cannot be used and those that can."""
    avail = [c for c, ok in available_codecs().items() if ok]
    if names is None:
        chosen = list(default) or [c for c in avail if c != "jxl" and not CODECS[c].lossless]
    elif isinstance(names, str):
        chosen = [c.strip() for c in names.split(",") if c.strip()]
    else:
        chosen = [c.strip() for c in names]
    bad = [c for c in chosen if c not in avail]
    if bad or not chosen:
        raise CodecError(
            f"codec(s) {', '.join(bad) or '(none)'} not available; available: {', '.join(avail)}"
        )
    return chosen


def parse_quality_ranges(
    text: str | Mapping[str, tuple[int, int]] | None, codecs: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """'jpeg=50-95,avif=30-80' (or a mapping) -> per-codec quality bounds, each checked against
    the codec's own quality scale; only `codecs` may be named."""
    items: list[tuple[str, str, tuple[int, int] | None]] = []  # (as given, codec, bounds)
    if isinstance(text, Mapping):
        items = [(f"{k}={v}", k, tuple(v)) for k, v in text.items()]  # type: ignore[misc]
    else:
        for item in filter(None, (t.strip() for t in (text or "").split(","))):
            name, _, rng = item.partition("=")
            lo, _, hi = rng.partition("-")
            ok = lo.isdigit() and hi.isdigit()
            items.append((item, name, (int(lo), int(hi)) if ok else None))
    out: dict[str, tuple[int, int]] = {}
    for shown, name, rng in items:
        if name not in codecs or rng is None or len(rng) != 2:
            raise CodecError(
                f"bad quality range {shown!r}: expected CODEC=LOW-HIGH with CODEC one of "
                f"{', '.join(codecs)}"
            )
        a, b = rng
        qlo, qhi = CODECS[name].quality_range
        if not all(isinstance(v, int) for v in rng) or not qlo <= a <= b <= qhi:
            raise CodecError(f"{shown!r}: {name} quality runs {qlo}-{qhi}, low <= high")
        out[name] = (a, b)
    return out


def parse_colour(text: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """A background to flatten transparency onto: white, black, #RRGGBB or (r, g, b)."""
    if text is None:
        return None
    if not isinstance(text, str):
        rgb = tuple(text)
        if len(rgb) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in rgb):
            raise CodecError(f"{text!r} is not a colour: use (r, g, b) with values 0-255")
        return rgb  # type: ignore[return-value]
    t = text.strip().lstrip("#")
    t = {"white": "ffffff", "black": "000000"}.get(t.lower(), t)
    if len(t) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in t):
        raise CodecError(f"{text!r} is not a colour: use white, black or #RRGGBB")
    return tuple(int(t[k : k + 2], 16) for k in (0, 2, 4))  # type: ignore[return-value]


def _to_pil(pixels: np.ndarray, background: tuple[int, int, int] | None, info: Codec):
    c = pixels.shape[2]
    if c in (2, 4) and not info.supports_alpha:
        if background is None:
            raise CodecError(
                f"{info.name} has no alpha channel and this image has real transparency; "
                f"give a background colour to flatten onto, or use webp/avif"
            )
        colour = pixels[:, :, :-1].astype(np.float32)
        alpha = pixels[:, :, -1:].astype(np.float32) / 255.0
        r, g, b = background
        # Grey + alpha flattens onto the background's luminance (ITU-R 601, as Pillow's "L").
        bg = np.array((r, g, b) if c == 4 else (0.299 * r + 0.587 * g + 0.114 * b,), np.float32)
        pixels = np.rint(colour * alpha + bg * (1 - alpha)).astype(np.uint8)
    return pixels_to_pil(pixels)


def encode(
    pixels: np.ndarray,
    settings: EncodeSettings,
    *,
    background: tuple[int, int, int] | None = None,
    icc: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    """Encode uint8 H x W x C pixels (C = 1..4; PNG also uint16) with Pillow, or oxipng for PNG;
    returns the file's bytes. `icc`: a colour profile to embed (the pixels are in its space);
    `exif`, `xmp`: metadata blocks to embed where the format holds them (not oxipng's PNG)."""
    info = settings.info
    if not available_codecs().get(info.name):
        hint = f" (pip install {info.plugin.replace('_', '-')}-plugin)" if info.plugin else ""
        if info.plugin == "oxipng":
            hint = " (pip install pyoxipng)"
        raise CodecError(f"codec {info.name} is not available in this Pillow{hint}")
    if info.name == "png":
        return _png(pixels, dict(settings.options)["level"], icc)
    if pixels.dtype != np.uint8:
        raise CodecError(f"{info.name} holds 8 bits per channel, not {pixels.dtype}")
    im = _to_pil(pixels, background, info)
    buf = io.BytesIO()
    extra = {k: v for k, v in (("icc_profile", icc), ("exif", exif), ("xmp", xmp)) if v}
    im.save(buf, info.pil_format, **settings.pillow_kwargs(grey=im.mode in ("L", "LA")), **extra)
    return buf.getvalue()


def _png(pixels: np.ndarray, level: int, icc: bytes | None) -> bytes:
    """oxipng straight from the pixels (no Pillow PNG to decode first: 1.5% smaller with alpha,
    the same bytes otherwise, measured). Its reductions (palette when 256 colours or fewer,
    grey, bit depth, dropping an opaque alpha) are all lossless, and it leaves the colour of
    transparent pixels alone (`optimize_alpha` off), so the file decodes to these pixels. A
    palette made first by hand saved 0-1% (16 and 2 colours at 768x512): not done."""
    import oxipng

    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim != 3:
        raise CodecError(f"png takes H x W x C uint8 or uint16 pixels, not {pixels.dtype}")
    h, w, c = pixels.shape
    colour = {
        1: oxipng.ColorType.grayscale,
        2: oxipng.ColorType.grayscale_alpha,
        3: oxipng.ColorType.rgb,
        4: oxipng.ColorType.rgba,
    }[c]()
    depth = 8 * pixels.dtype.itemsize
    data = pixels.astype(">u2").tobytes() if depth == 16 else np.ascontiguousarray(pixels).tobytes()
    raw = oxipng.RawImage(data, w, h, color_type=colour, bit_depth=depth)
    if icc:
        raw.add_icc_profile(icc)
    return raw.create_optimized_png(level=level)


def decode(data: bytes, channels: int | None = None) -> np.ndarray:
    """Decode to uint8 H x W x C. With `channels`, match a source's layout (grey sources decode
    grey even where the codec returns RGB; alpha is added back as opaque if the codec dropped it).
    """
    im = Image.open(io.BytesIO(data))
    im.load()
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if channels is None:
        channels = {"L": 1, "LA": 2}.get(im.mode, 4 if has_alpha else 3)
    return pil_to_pixels(im.convert(MODES[channels]))
