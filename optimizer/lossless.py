"""Lossless candidates: lossless WebP and PNG (oxipng), files that decode to exactly the pixels
they were given.

Two uses, both from `image_job.optimize_image`:

- `--quality lossless` (`optimize_image`): each image's smallest pixel-identical file among the
  allowed lossless codecs, or its source where none is smaller. Nothing is scored: each file is
  decoded and compared with the pixels it was made from.
- Under a lossy target (`consider`, after the lossy search): a lossless file meets any target
  (its pixels are the reference's), so where one is smaller than the best passing lossy output
  (and the source) it becomes the output. Encoding one costs as much as a few lossy probes, and
  on photos it never wins, so it is tried only where cheap evidence says it may (`worth_trying`):
  few colours, or a flat image whose lossy file is still large. Its file is compared by its
  bytes first, and scored only if it is the smallest.

The evidence, measured at 768x512 under ``ssimulacra2>=80`` against the AVIF/WebP search
(`python -m benchmarks.lossless`: 36 rendered graphics, six of them again in grey, four drawn
images, Kodak 24; lossless WebP effort 100 method 4; benchmarks/RESULTS.md). Lossless won on 10
of the 46 graphics; these rules try 9 of them, and 3 that lost (one encode each):
- at most 16 colours, flat or not: won every time (flat shapes 416 bytes vs 2,068 lossy, pixel
  art 642 vs 2,825, noise of 2 colours 49,212 vs 49,944; pixel art and 16-colour noise where
  nothing lossy beat the source);
- flat (three pixels in four repeat their left or upper neighbour) with at most 256 colours:
  a palette holds a pixel in a byte (a poster won, 3,318 vs 3,530; line art lost, 1,536 vs
  1,308). Not for grey, which has at most 256 levels anyway: six grey graphics all lost
  (1.2-15x), so grey is weighed like the next kind;
- flat with up to 4,096 colours where the lossy file still takes 0.3 bits a pixel or more, or
  nothing lossy beat the source: text-heavy pages won (a table 19,334 vs 24,615, a document
  16,028 vs 18,762, grey text 2,736 where nothing lossy beat the source's 5,902) and two lost
  (1.06x, 1.85x). Below 0.3 bits (charts, diagrams, maps, UIs) 22 of 23 lost, by 1.06-5.9x;
  the one win (a poster at 0.25 bits) is missed.
More than 4,096 colours or not flat (gradients, photos with text, a detailed map) never won
(1.6-26x); no Kodak photo is tried (thousands of colours, flat share 0.05-0.31), and counting
stops at the 4,097th colour, so a photo costs nothing.

Lossless WebP is tried before PNG: it was the smaller on 45 of the 46 graphics (PNG 1.0-3.3x
its bytes; a grey gradient, where the PNG was 0.89x, lost to the lossy file by 15x anyway).
Under a lossy target PNG is therefore tried only where lossless WebP won (or is not allowed);
under `--quality lossless`, every allowed codec is tried.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from .codecs import CODECS, decode, encode
from .errors import UsageError
from .images import SourceImage, pixels_to_pil
from .recipe import Candidate
from .targets import Target

if TYPE_CHECKING:
    from .image_job import ImageResult, Job
    from .image_search import ImageSearch
    from .search import ImageSet

__all__ = [
    "FEW_COLOURS",
    "DENSE_BITS",
    "FLAT_SHARE",
    "MAX_COLOURS",
    "ORDER",
    "PALETTE",
    "consider",
    "flat_share",
    "holds",
    "lossy_only",
    "optimize_image",
    "recipes",
    "split_codecs",
    "stored_pixels",
    "worth_trying",
]

#: the lossless codecs in the order they are tried: the smaller as a rule first
ORDER = ("webp-lossless", "png")
#: at most this many colours, flat or not (4 bits a pixel: pixel art, noise, dithering)
FEW_COLOURS = 16
#: else the share of pixels that repeat their left or upper neighbour must be this (flat) ...
FLAT_SHARE = 0.75
#: ... and at most this many colours (a palette holds the image: a byte a pixel or less) ...
PALETTE = 256
#: ... or at most this many, where the lossy output takes at least `DENSE_BITS` a pixel
MAX_COLOURS = 4096
DENSE_BITS = 0.3
#: rows sampled, evenly spaced, for the flat share (enough for a share; cheap at any size)
SAMPLED_ROWS = 256

#: what Pillow reads exactly as `load` does (palette and 1-bit expanded, padding dropped)
_EXACT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX")
#: 16-bit grey: `load` rounds it to 8 bits; PNG holds all 16
_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I;16N")


def recipes(codecs: Sequence[str]) -> tuple[Candidate, ...]:
    """Each lossless codec among `codecs` with its default options, in `ORDER`."""
    return tuple(Candidate.make(c, 100) for c in ORDER if c in codecs)


def holds(cand: Candidate, pixels: np.ndarray) -> bool:
    """Whether `cand`'s format can hold `pixels` exactly (WebP: 8 bits, 16383 px a side)."""
    info = CODECS[cand.codec]
    h, w = pixels.shape[:2]
    return max(w, h) <= info.max_side and (pixels.dtype == np.uint8 or cand.codec == "png")


def flat_share(pixels: np.ndarray) -> float:
    """The share of pixels equal to their left or upper neighbour, over `SAMPLED_ROWS` rows."""
    h = pixels.shape[0]
    if h < 2:
        return 0.0
    rows = np.unique(np.linspace(1, h - 1, min(h - 1, SAMPLED_ROWS)).astype(int))
    here, above = pixels[rows], pixels[rows - 1]
    same = (here == above).all(axis=2)
    same[:, 1:] |= (here[:, 1:] == here[:, :-1]).all(axis=2)
    return float(same.mean())


def worth_trying(pixels: np.ndarray, bits_per_pixel: float = math.inf) -> bool:
    """Cheap evidence that a lossless file of `pixels` may beat the lossy one, which takes
    `bits_per_pixel` (infinite: there is none below the source) -- see the module's
    measurements. At most `FEW_COLOURS` colours; else flat, with at most `PALETTE` colours (a
    palette saves nothing on grey, which has at most 256 levels anyway) or at most `MAX_COLOURS`
    where the lossy file takes `DENSE_BITS` a pixel or more."""
    colours = pixels_to_pil(pixels).getcolors(MAX_COLOURS)  # None past it: stops counting
    if colours is None:
        return False
    if len(colours) <= FEW_COLOURS:
        return True
    palette = len(colours) <= PALETTE and pixels.shape[2] > 1
    if not palette and bits_per_pixel < DENSE_BITS:
        return False
    return flat_share(pixels) >= FLAT_SHARE


def consider(search: ImageSearch, images: ImageSet, job: Job) -> None:
    """After `job`'s lossy search of one image (`images` holds it): its lossless recipes, where
    `worth_trying` says so, each kept as the best if it is smaller than the best so far (which
    starts at the source's size). Each encode counts in `images.encodes`."""
    if not job.lossless:
        return
    w, h = images.items[0].size
    bits = 8 * search.best_bytes / (w * h) if search.best is not None else math.inf
    if not worth_trying(images.items[0].source.pixels, bits):
        return
    for cand in job.lossless:
        if max(w, h) > CODECS[cand.codec].max_side:
            continue
        if len(images.encode(0, cand)) >= search.best_bytes:
            break  # the next lossless one is larger as a rule
        search.offer(cand)  # scored, as every output is: identical pixels pass any target


def stored_pixels(path: Path, src: SourceImage) -> tuple[np.ndarray, bytes | None] | None:
    """The values `src`'s file stores, for a lossless file of them: (pixels, the ICC profile
    that gives them their colours, or None), or None where no lossless candidate holds them.

    Mostly `src.pixels` as `load` made them. Two kinds of source differ: one with an ICC profile
    that `load` converted to sRGB (converting clips and rounds, so the stored values are kept,
    with their profile: imgtune, a browser, read the same colours back), and 16-bit grey, which
    `load` rounds to 8 bits (PNG holds all 16). More than 8 bits a colour channel (Pillow reads
    only the high byte), CMYK and other colour models have no lossless candidate: such a source
    is kept as it is."""
    converted = any(n.startswith("converted from ICC profile") for n in src.notes)
    try:
        with Image.open(path) as im:
            deep = im.mode in _DEEP_GREY
            if not deep and (
                im.mode not in _EXACT_MODES or any(";16" in str(t.args) for t in im.tile)
            ):
                return None
            if not deep and not converted:
                return src.pixels, None
            icc = im.info.get("icc_profile") if converted else None
            im.load()
            with suppress(Exception):  # a broken EXIF block: `load` left it as stored too
                im = ImageOps.exif_transpose(im)
            if deep:
                arr = np.asarray(im).astype(np.uint16)[:, :, None]
            else:
                if im.mode in ("P", "PA", "1", "RGBX"):
                    mode = {"1": "L", "RGBX": "RGB", "PA": "RGBA"}.get(im.mode)
                    im = im.convert(mode or ("RGBA" if "transparency" in im.info else "RGB"))
                arr = np.asarray(im)
                arr = arr[:, :, None] if arr.ndim == 2 else arr
                if arr.shape[2] in (2, 4) and bool((arr[:, :, -1] == 255).all()):
                    arr = arr[:, :, :-1]  # as `load`: an opaque alpha carries nothing
    except (OSError, ValueError, SyntaxError, MemoryError):
        return None
    if arr.shape[:2] != src.pixels.shape[:2]:
        return None
    return np.ascontiguousarray(arr), icc


def _identical(data: bytes, pixels: np.ndarray) -> bool:
    """Whether the file `data` decodes to exactly `pixels` (a guard: never expected to fail)."""
    if pixels.dtype == np.uint8:
        return bool(np.array_equal(decode(data, channels=pixels.shape[2]), pixels))
    with Image.open(io.BytesIO(data)) as im:
        return bool(np.array_equal(np.asarray(im).astype(pixels.dtype), pixels[:, :, 0]))


def optimize_image(
    path: Path, job: Job, *, suite: Any, name: str | None = None, stem: str | None = None
) -> ImageResult:
    """`job` (its target `lossless`) on one image: the smallest file among its lossless recipes
    that decodes to the values the source stores (`stored_pixels`), written if smaller than the
    source, else the source kept. Reads `path`, writes nothing; arguments as
    `image_job.optimize_image`'s."""
    from .image_job import (  # it calls this
        ImageOutcome,
        ImageResult,
        Status,
        load_or_skip,
        names_of,
        stem_with,
    )

    rel, stem = names_of(path, name, stem)
    src = load_or_skip(path, job, suite, rel)
    if isinstance(src, ImageResult):
        return src
    outcome = ImageOutcome(rel, Status.KEPT, source_bytes=src.file_bytes, meets_target=True)
    result = ImageResult(outcome)
    stored = stored_pixels(path, src)
    best: tuple[Candidate, bytes] | None = None
    if stored is not None:
        pixels, icc = stored
        for cand in (c for c in job.lossless if holds(c, pixels)):
            data = encode(pixels, cand.settings(), icc=icc)
            outcome.encodes += 1
            if (best is None or len(data) < len(best[1])) and _identical(data, pixels):
                best = cand, data
    if best is not None and len(best[1]) < src.file_bytes:
        cand, result.payload = best
        result.winner = cand.codec
        outcome.status = Status.WRITTEN
        outcome.output = stem_with(stem, CODECS[cand.codec].extension)
        outcome.output_bytes = len(result.payload)
        outcome.codec, outcome.quality, outcome.params = cand.codec, cand.quality, cand.as_dict()
        return result
    # The source is the one pixel-identical file no larger than itself.
    outcome.output = stem_with(stem, Path(rel).suffix)
    outcome.output_bytes = src.file_bytes
    return result


def split_codecs(
    target: Target, codecs: Sequence[str], *, resizes: bool = False, flattens: bool = False
) -> tuple[list[str], tuple[Candidate, ...]]:
    """`optimize`'s codecs as (the lossy ones it searches, the lossless recipes), for `target`:
    under `lossless` only the lossless ones (at least one, and nothing that changes pixels:
    `resizes`, `flattens` transparency); under any other target at least one lossy one. A
    `UsageError` says what is missing."""
    lossy = [c for c in codecs if not CODECS[c].lossless]
    found = recipes(codecs)
    if target.lossless:
        if not found:
            raise UsageError(
                f"--quality lossless needs a lossless codec ({', '.join(ORDER)}); "
                f"--codecs {','.join(codecs)} has none"
            )
        if resizes or flattens:
            what = "--max-width/--max-height resize" if resizes else "--background flattens"
            raise UsageError(f"--quality lossless keeps every pixel, and {what} the image")
        return [], found
    if not lossy:
        raise UsageError(
            f"--codecs {','.join(codecs)}: lossless only, so the target {target} would change "
            "nothing: use --quality lossless, or add a lossy codec (avif, webp, jpeg)"
        )
    return lossy, found


def lossy_only(command: str, target: Target, codecs: Sequence[str] = ()) -> None:
    """Refuse, for `command` (tune, apply: they search or apply one lossy recipe), the `lossless`
    target and lossless codecs, saying where they belong."""
    named = [c for c in codecs if CODECS[c].lossless]
    if target.lossless or named:
        what = "--quality lossless" if target.lossless else f"--codecs {','.join(named)}"
        raise UsageError(
            f"{what}: {command} searches lossy recipes by quality; lossless files (no quality "
            "to search) are for `imgtune optimize`, which tries them where they win, and keeps "
            "every pixel with --quality lossless"
        )
