"""A deterministic corpus of damaged image files, for the fuzz test of `optimizer.images.load`.

Each case is one small valid image (24-64 px, encoded by Pillow) with one mutation applied:
generic byte damage (truncation, bit flips, overwrites, inserted or deleted bytes) or a
format-aware edit that a byte-level fuzzer rarely hits: a chunk, segment, box or IFD length, a
checksum, or a declared width/height (zero, the field's maximum, just below or just above
Pillow's decompression-bomb limit). A case's bytes depend only on (seed, base, mutation, index)
and the Pillow build, so a failing id such as ``jpeg_exif/jpeg_sof_dims/3`` reproduces alone:

    python -m tests.fuzz_corpus --seed 0 --case jpeg_exif/jpeg_sof_dims/3 -o case.jpg
    python -m tests.fuzz_corpus --seed 0 --out-dir /tmp/corpus     # every case, as files
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"

#: Pillow's default Image.MAX_IMAGE_PIXELS, written out: `load` may raise Pillow's global
#: ceiling at run time, and the corpus must not depend on what ran before it.
BOMB_LIMIT = 89_478_485
#: cases per (base, mutation): generic mutations, format-aware ones
GENERIC_PER_BASE = 14
FORMAT_PER_BASE = 20


@dataclass(frozen=True)
class Case:
    base: str
    mutation: str
    index: int
    ext: str
    data: bytes
    #: what the mutation did, in words (shown with a failure)
    note: str
    #: the width x height the mutation declared in the header, where it set the image's size
    declared: tuple[int, int] | None = None

    @property
    def id(self) -> str:
        return f"{self.base}/{self.mutation}/{self.index}"

    @property
    def filename(self) -> str:
        return f"{self.base}-{self.mutation}-{self.index:03d}.{self.ext}"


# --------------------------------------------------------------------------- base images


def _crop(rng: random.Random, name: str, mode: str) -> Image.Image:
    im = Image.open(SAMPLES / name)
    w, h = rng.randint(24, 64), rng.randint(24, 64)
    x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
    return im.crop((x, y, x + w, y + h)).convert(mode)


def _with_alpha(im: Image.Image) -> Image.Image:
    # A gradient, so the alpha carries information and load() keeps it.
    w, h = im.size
    ramp = np.linspace(0, 255, w * h, dtype=np.float64).reshape(h, w).astype(np.uint8)
    out = im.convert("RGBA")
    out.putalpha(Image.fromarray(ramp, "L"))
    return out


def _encode(im: Image.Image | list[Image.Image], fmt: str, **kw) -> bytes:
    frames = im if isinstance(im, list) else [im]
    buf = io.BytesIO()
    if len(frames) > 1:
        kw.update(save_all=True, append_images=frames[1:])
    frames[0].save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "imgtune fuzz"  # Make: a string tag, so the IFD has an out-of-line value
    exif[0x011A] = 72.0  # XResolution: a RATIONAL
    return exif


def _icc() -> bytes:
    from .conftest import adobe_rgb_like_icc

    return adobe_rgb_like_icc()


def _rgb(r):
    return _crop(r, r.choice(["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]), "RGB")


def _grey16(r) -> Image.Image:
    grey = np.asarray(_crop(r, "tiger_grayscale_cc0.png", "L"), dtype=np.uint16) * 257
    return Image.fromarray(grey.astype(np.uint16))


def _palette(r) -> Image.Image:
    return _rgb(r).quantize(16)


def _frames(r, n: int, mode: str = "RGB") -> list[Image.Image]:
    first = _rgb(r)
    return [
        first.transpose(Image.Transpose.ROTATE_180).convert(mode) if i % 2 else first.convert(mode)
        for i in range(n)
    ]


#: name -> (extension, encoder of a seeded RNG)
BASES: dict[str, tuple[str, Callable[[random.Random], bytes]]] = {
    "png_rgb": ("png", lambda r: _encode(_rgb(r), "PNG")),
    "png_rgba": ("png", lambda r: _encode(_with_alpha(_rgb(r)), "PNG")),
    "png_palette_trns": ("png", lambda r: _encode(_palette(r), "PNG", transparency=0)),
    "png_grey16": ("png", lambda r: _encode(_grey16(r), "PNG")),
    "png_apng": ("png", lambda r: _encode(_frames(r, 3), "PNG", duration=100, loop=0)),
    "jpeg_baseline": ("jpg", lambda r: _encode(_rgb(r), "JPEG", quality=85)),
    "jpeg_progressive": (
        "jpg",
        lambda r: _encode(_rgb(r), "JPEG", quality=85, progressive=True),
    ),
    "jpeg_exif": ("jpg", lambda r: _encode(_rgb(r), "JPEG", quality=85, exif=_exif(6))),
    "jpeg_icc": ("jpg", lambda r: _encode(_rgb(r), "JPEG", quality=85, icc_profile=_icc())),
    "jpeg_cmyk": ("jpg", lambda r: _encode(_rgb(r).convert("CMYK"), "JPEG", quality=85)),
    "webp_lossy": ("webp", lambda r: _encode(_rgb(r), "WEBP", quality=80, method=0)),
    "webp_lossless": ("webp", lambda r: _encode(_with_alpha(_rgb(r)), "WEBP", lossless=True)),
    "webp_alpha": ("webp", lambda r: _encode(_with_alpha(_rgb(r)), "WEBP", quality=80)),
    "avif_rgb": ("avif", lambda r: _encode(_rgb(r), "AVIF", quality=60, speed=8, max_threads=1)),
    "avif_alpha": (
        "avif",
        lambda r: _encode(_with_alpha(_rgb(r)), "AVIF", quality=60, speed=8, max_threads=1),
    ),
    "gif_static": ("gif", lambda r: _encode(_palette(r), "GIF")),
    "gif_animated": ("gif", lambda r: _encode(_frames(r, 3, "P"), "GIF", duration=100, loop=0)),
    "tiff_raw": ("tif", lambda r: _encode(_rgb(r), "TIFF")),
    "tiff_lzw": ("tif", lambda r: _encode(_with_alpha(_rgb(r)), "TIFF", compression="tiff_lzw")),
    "tiff_multipage": ("tif", lambda r: _encode(_frames(r, 3), "TIFF")),
    "tiff_grey16": ("tif", lambda r: _encode(_grey16(r), "TIFF")),
}


@functools.cache
def base_bytes(seed: int, name: str) -> bytes:
    return BASES[name][1](random.Random(f"{seed}:base:{name}"))


def family(base: str) -> str:
    return base.split("_", 1)[0]


# --------------------------------------------------------------------------- mutations
# Each takes (rng, data, index, base) and returns (new data, note) or (new data, note, the size
# it declared, or None where that field is not the image's size); only the declared-size
# mutations look at index and base (see declared_size).

Result = tuple[bytes, str] | tuple[bytes, str, tuple[int, int] | None]


def _pos(rng: random.Random, n: int) -> int:
    # Half the damage lands in the first 512 bytes: headers are where parsers go wrong, and
    # damage deep in entropy-coded data mostly exercises the (C) decoders' own error paths.
    return rng.randrange(min(n, 512)) if rng.random() < 0.5 else rng.randrange(n)


def truncate(rng, data, index, base) -> Result:
    cut = _pos(rng, len(data) - 1) + 1
    return data[:cut], f"cut to {cut} of {len(data)} bytes"


def bitflip(rng, data, index, base) -> Result:
    out = bytearray(data)
    spots = [_pos(rng, len(out)) for _ in range(rng.randint(1, 8))]
    for p in spots:
        out[p] ^= 1 << rng.randrange(8)
    return bytes(out), f"bits flipped at {sorted(spots)}"


def overwrite(rng, data, index, base) -> Result:
    out = bytearray(data)
    p, n = _pos(rng, len(out)), rng.randint(1, 16)
    fill = rng.choice([b"\x00", b"\xff", None])
    out[p : p + n] = fill * n if fill else rng.randbytes(n)
    return bytes(out[: len(data)]), f"{n} bytes overwritten at {p}"


def insert(rng, data, index, base) -> Result:
    p, n = _pos(rng, len(data)), rng.randint(1, 64)
    return data[:p] + rng.randbytes(n) + data[p:], f"{n} bytes inserted at {p}"


def delete(rng, data, index, base) -> Result:
    p, n = _pos(rng, len(data)), rng.randint(1, 64)
    return data[:p] + data[p + n :], f"{n} bytes deleted at {p}"


GENERIC: dict[str, Callable] = {
    "truncate": truncate,
    "bitflip": bitflip,
    "overwrite": overwrite,
    "insert": insert,
    "delete": delete,
}


#: The one base of each format that declares a size just below the limit. A JPEG, AVIF or GIF
#: that declares 89 MP decodes for real (libjpeg pads the missing data with grey, libavif scales
#: to the declared `ispe`, a GIF's screen is filled with its background): seconds per case.
BELOW_LIMIT_BASES = frozenset(
    {"png_rgb", "jpeg_baseline", "webp_lossy", "avif_rgb", "gif_static", "tiff_raw"}
)


def declared_size(
    rng: random.Random, bits: int, w0: int, h0: int, index: int, base: str
) -> tuple[int, int]:
    """A width x height a `bits`-bit field can hold, among the sizes parsers get wrong.

    The first indices of every (base, mutation) are fixed sizes around the decompression-bomb
    limit, so that every base meets each of them whatever the seed; the rest are drawn from
    sizes that are cheap to refuse or to decode (zero, tiny, the field's maximum, ...).
    """
    top = (1 << bits) - 1
    side = math.isqrt(BOMB_LIMIT)  # side**2 <= BOMB_LIMIT < (side + 1)**2
    wide = BOMB_LIMIT // 8192  # wide * 8192 <= BOMB_LIMIT < (wide + 1) * 8192
    fixed = [
        (side + 1, side + 1),  # just above the limit
        (wide + 1, 8192),  # just above, not square
        (2 * side, 2 * side),  # above twice the limit, where Pillow refuses by itself
    ]
    if bits >= 27:
        # One row of exactly the limit, and one pixel more: the boundary itself.
        fixed += [(BOMB_LIMIT, 1), (BOMB_LIMIT + 1, 1)]
    if base in BELOW_LIMIT_BASES:
        fixed.append((side, side))  # just below the limit
    if index < len(fixed):
        w, h = fixed[index]
    else:
        small = (rng.randint(1, 1024), rng.randint(1, 1024))
        huge = rng.randint(side + 1, max(top, side + 1))
        huge = (huge, rng.randint(BOMB_LIMIT // huge + 1, max(top, BOMB_LIMIT // huge + 1)))
        w, h = rng.choice(
            [(0, h0), (w0, 0), (0, 0), (1, 1), (top, top), (top, 1), (1, top), (w0 * 2, h0)]
            + [small, huge]
        )
    return min(w, top), min(h, top)


def _interesting(rng: random.Random, current: int, bits: int) -> int:
    top = (1 << bits) - 1
    return rng.choice(
        [
            0,
            1,
            max(current - 1, 0),
            min(current + 1, top),
            min(current + rng.randint(2, 4096), top),
            top,
            top >> 1,
            rng.randint(0, top),
        ]
    )


# PNG: 8-byte signature, then chunks of length(4) type(4) data crc(4), big-endian.


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((pos, data[pos + 4 : pos + 8], n))
        pos += 12 + n
    return chunks


def _png_fix_crc(out: bytearray, pos: int, n: int) -> None:
    out[pos + 8 + n : pos + 12 + n] = struct.pack(">I", zlib.crc32(out[pos + 4 : pos + 8 + n]))


def png_chunk_len(rng, data, index, base) -> Result:
    pos, typ, n = rng.choice(_png_chunks(data))
    new = _interesting(rng, n, 32)
    out = bytearray(data)
    out[pos : pos + 4] = struct.pack(">I", new)
    return bytes(out), f"{typ.decode('latin-1')} length {n} -> {new}"


def png_crc(rng, data, index, base) -> Result:
    pos, typ, n = rng.choice(_png_chunks(data))
    out = bytearray(data)
    out[pos + 8 + n : pos + 12 + n] = struct.pack(">I", rng.getrandbits(32))
    return bytes(out), f"{typ.decode('latin-1')} CRC replaced"


def png_chunk_data(rng, data, index, base) -> Result:
    # The CRC is recomputed, so the damage reaches the chunk's parser, not only the checksum.
    pos, typ, n = rng.choice([c for c in _png_chunks(data) if c[2] > 0])
    out = bytearray(data)
    spots = sorted(pos + 8 + rng.randrange(n) for _ in range(rng.randint(1, 4)))
    for p in spots:
        out[p] = rng.choice([0, 0xFF, rng.randrange(256)])
    _png_fix_crc(out, pos, n)
    return bytes(out), f"{typ.decode('latin-1')} data changed at {spots}, CRC fixed"


def png_ihdr_dims(rng, data, index, base) -> Result:
    pos, _, n = _png_chunks(data)[0]
    w0, h0 = struct.unpack(">II", data[pos + 8 : pos + 16])
    w, h = declared_size(rng, 32, w0, h0, index, base)
    out = bytearray(data)
    out[pos + 8 : pos + 16] = struct.pack(">II", w, h)
    _png_fix_crc(out, pos, n)
    return bytes(out), f"IHDR {w0}x{h0} -> {w}x{h}, CRC fixed", (w, h)


def png_ihdr_fields(rng, data, index, base) -> Result:
    pos, _, n = _png_chunks(data)[0]
    field = rng.choice(["bit depth", "colour type", "compression", "filter", "interlace"])
    at = pos + 16 + ["bit depth", "colour type", "compression", "filter", "interlace"].index(field)
    new = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 255])
    out = bytearray(data)
    out[at] = new
    _png_fix_crc(out, pos, n)
    return bytes(out), f"IHDR {field} {data[at]} -> {new}, CRC fixed"


# JPEG: markers FF xx; most carry a big-endian 16-bit length that counts itself.

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset of the FF, marker, length) of every length-carrying segment, SOS included."""
    segs, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos += 1
            continue
        m = data[pos + 1]
        if m in (0x00, 0xFF, 0x01, 0xD8) or 0xD0 <= m <= 0xD7:
            pos += 1 if m == 0xFF else 2
            continue
        if m == 0xD9:
            break
        (n,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segs.append((pos, m, n))
        pos += 2 + n
        if m == 0xDA:  # entropy-coded data follows: skip to the next real marker
            while pos + 1 < len(data) and not (
                data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))
            ):
                pos += 1
    return segs


def jpeg_seg_len(rng, data, index, base) -> Result:
    pos, m, n = rng.choice(_jpeg_segments(data))
    new = _interesting(rng, n, 16)
    out = bytearray(data)
    out[pos + 2 : pos + 4] = struct.pack(">H", new)
    return bytes(out), f"FF{m:02X} length {n} -> {new}"


def jpeg_sof_dims(rng, data, index, base) -> Result:
    pos, m, _ = next(s for s in _jpeg_segments(data) if s[1] in _SOF)
    h0, w0 = struct.unpack(">HH", data[pos + 5 : pos + 9])
    w, h = declared_size(rng, 16, w0, h0, index, base)
    out = bytearray(data)
    out[pos + 5 : pos + 9] = struct.pack(">HH", h, w)
    return bytes(out), f"SOF FF{m:02X} {w0}x{h0} -> {w}x{h}", (w, h)


def jpeg_seg_data(rng, data, index, base) -> Result:
    pos, m, n = rng.choice([s for s in _jpeg_segments(data) if s[2] > 2])
    out = bytearray(data)
    spots = sorted(pos + 4 + rng.randrange(n - 2) for _ in range(rng.randint(1, 4)))
    for p in spots:
        out[p] = rng.choice([0, 1, 0xFF, rng.randrange(256)])
    return bytes(out), f"FF{m:02X} payload changed at {spots}"


def jpeg_segments(rng, data, index, base) -> Result:
    segs = _jpeg_segments(data)
    pos, m, n = rng.choice([s for s in segs if s[1] != 0xDA])
    seg = data[pos : pos + 2 + n]
    if rng.random() < 0.5:
        return data[:pos] + data[pos + 2 + n :], f"FF{m:02X} segment removed"
    return data[:pos] + seg + data[pos:], f"FF{m:02X} segment repeated"


# GIF: header, logical screen descriptor (little-endian), colour table, then blocks.


def _gif_blocks(data: bytes) -> tuple[list[int], list[int], list[int]]:
    """Offsets of the image descriptors, LZW code-size bytes and sub-block length bytes."""
    descs, codes, subs = [], [], []
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)

    def skip_subblocks(p: int) -> int:
        while p < len(data) and data[p]:
            subs.append(p)
            p += 1 + data[p]
        return p + 1

    while pos < len(data):
        kind = data[pos]
        if kind == 0x21:
            pos = skip_subblocks(pos + 2)
        elif kind == 0x2C:
            descs.append(pos)
            flags = data[pos + 9]
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            codes.append(pos)
            pos = skip_subblocks(pos + 1)
        else:
            break
    return descs, codes, subs


def gif_screen(rng, data, index, base) -> Result:
    w0, h0 = struct.unpack("<HH", data[6:10])
    w, h = declared_size(rng, 16, w0, h0, index, base)
    out = bytearray(data)
    out[6:10] = struct.pack("<HH", w, h)
    return bytes(out), f"logical screen {w0}x{h0} -> {w}x{h}", (w, h)


def gif_frame(rng, data, index, base) -> Result:
    descs, _, _ = _gif_blocks(data)
    pos = rng.choice(descs)
    field = rng.randrange(4)
    (old,) = struct.unpack("<H", data[pos + 1 + 2 * field : pos + 3 + 2 * field])
    new = _interesting(rng, old, 16)
    out = bytearray(data)
    out[pos + 1 + 2 * field : pos + 3 + 2 * field] = struct.pack("<H", new)
    name = ["left", "top", "width", "height"][field]
    return bytes(out), f"frame at {pos}: {name} {old} -> {new}"


def gif_lzw(rng, data, index, base) -> Result:
    _, codes, subs = _gif_blocks(data)
    out = bytearray(data)
    if rng.random() < 0.5:
        p = rng.choice(codes)
        out[p] = rng.choice([0, 1, 2, 9, 11, 12, 13, 255])
        return bytes(out), f"LZW code size at {p}: {data[p]} -> {out[p]}"
    p = rng.choice(subs)
    out[p] = rng.choice([0, 1, 255, rng.randrange(256)])
    return bytes(out), f"sub-block length at {p}: {data[p]} -> {out[p]}"


# TIFF: header, then IFDs of 12-byte entries (tag, type, count, value or offset).

_TIFF_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def _tiff_ifds(data: bytes) -> tuple[str, list[tuple[int, int]]]:
    """Byte order and (offset, entry count) of every IFD in the chain."""
    e = "<" if data[:2] == b"II" else ">"
    (pos,) = struct.unpack(e + "I", data[4:8])
    ifds, seen = [], set()
    while 8 <= pos < len(data) - 2 and pos not in seen:
        seen.add(pos)
        (count,) = struct.unpack(e + "H", data[pos : pos + 2])
        ifds.append((pos, count))
        end = pos + 2 + 12 * count
        if end + 4 > len(data):
            break
        (pos,) = struct.unpack(e + "I", data[end : end + 4])
    return e, ifds


def _tiff_entries(data: bytes) -> tuple[str, list[tuple[int, int, int, int]]]:
    """Byte order and (offset, tag, type, count) of every entry of every IFD."""
    e, ifds = _tiff_ifds(data)
    entries = []
    for pos, count in ifds:
        for i in range(count):
            at = pos + 2 + 12 * i
            tag, typ, n = struct.unpack(e + "HHI", data[at : at + 8])
            entries.append((at, tag, typ, n))
    return e, entries


def _tiff_value(data: bytes, e: str, at: int) -> int:
    (typ,) = struct.unpack(e + "H", data[at + 2 : at + 4])
    return struct.unpack(
        e + ("H" if typ == 3 else "I"), data[at + 8 : at + (10 if typ == 3 else 12)]
    )[0]


def tiff_ifd(rng, data, index, base) -> Result:
    e, ifds = _tiff_ifds(data)
    out = bytearray(data)
    choice = rng.randrange(3)
    if choice == 0:
        pos, count = rng.choice(ifds)
        new = _interesting(rng, count, 16)
        out[pos : pos + 2] = struct.pack(e + "H", new)
        return bytes(out), f"IFD at {pos}: entry count {count} -> {new}"
    if choice == 1:
        new = rng.choice([0, 4, 7, len(data), len(data) + 100, 0xFFFFFFFF, rng.getrandbits(32)])
        out[4:8] = struct.pack(e + "I", new)
        return bytes(out), f"first IFD offset -> {new}"
    pos, count = rng.choice(ifds)
    link = pos + 2 + 12 * count
    # Pointing the chain back at an IFD already read makes a loop.
    new = rng.choice([pos, ifds[0][0], len(data) - 2, 0xFFFFFFFF, rng.getrandbits(32)])
    out[link : link + 4] = struct.pack(e + "I", new)
    return bytes(out), f"next-IFD offset after IFD at {pos} -> {new}"


def tiff_dims(rng, data, index, base) -> Result:
    e, entries = _tiff_entries(data)
    first_ifd = _tiff_ifds(data)[1][0]
    mine = {
        tag: at
        for at, tag, _, _ in entries
        if first_ifd[0] <= at < first_ifd[0] + 2 + 12 * first_ifd[1]
    }
    w0, h0 = (_tiff_value(data, e, mine[tag]) for tag in (256, 257))
    w, h = declared_size(rng, 32, w0, h0, index, base)
    out = bytearray(data)
    for tag, v in ((256, w), (257, h)):
        # LONG (4) holds any 32-bit size; SHORT could not hold the larger ones.
        out[mine[tag] + 2 : mine[tag] + 12] = struct.pack(e + "HII", 4, 1, v)
    return bytes(out), f"first IFD {w0}x{h0} -> {w}x{h}", (w, h)


def tiff_strips(rng, data, index, base) -> Result:
    e, entries = _tiff_entries(data)
    at, tag, typ, n = rng.choice([x for x in entries if x[1] in (273, 278, 279)])
    name = {273: "StripOffsets", 278: "RowsPerStrip", 279: "StripByteCounts"}[tag]
    out = bytearray(data)
    size = _TIFF_TYPE_SIZE.get(typ, 4)
    fmt = e + ("H" if size == 2 else "I")
    if n * size > 4 and rng.random() < 0.5:  # an out-of-line array: damage one element
        (arr,) = struct.unpack(e + "I", data[at + 8 : at + 12])
        k = rng.randrange(n)
        p = arr + k * size
        (old,) = struct.unpack(fmt, data[p : p + size])
        new = _interesting(rng, old, 8 * size)
        out[p : p + size] = struct.pack(fmt, new)
        return bytes(out), f"{name}[{k}] {old} -> {new}"
    new = rng.choice([0, 1, len(data), len(data) + 1, 0xFFFFFFFF, rng.getrandbits(32)])
    if n * size > 4:
        out[at + 8 : at + 12] = struct.pack(e + "I", new)
        return bytes(out), f"{name} array offset -> {new}"
    out[at + 2 : at + 12] = struct.pack(e + "HII", 4, 1, new)
    return bytes(out), f"{name} -> LONG {new}"


def tiff_entry(rng, data, index, base) -> Result:
    e, entries = _tiff_entries(data)
    at, tag, typ, n = rng.choice(entries)
    out = bytearray(data)
    what = rng.randrange(3)
    if what == 0:
        new = rng.choice([0, 1, 2, 3, 4, 5, 7, 11, 12, 13, 16, 17, 255])
        out[at + 2 : at + 4] = struct.pack(e + "H", new)
        return bytes(out), f"tag {tag}: type {typ} -> {new}"
    if what == 1:
        new = rng.choice([0, 1, 2, n + 1, 0x3FFFFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
        out[at + 4 : at + 8] = struct.pack(e + "I", new)
        return bytes(out), f"tag {tag}: count {n} -> {new}"
    new = rng.choice([0, 1, 2, 3, 5, 7, 8, 16, 32, 0xFFFF, 0xFFFFFFFF, rng.getrandbits(32)])
    out[at + 8 : at + 12] = struct.pack(e + "I", new)
    return bytes(out), f"tag {tag}: value -> {new}"


# WebP: RIFF container, chunks of fourcc + little-endian size, padded to even length.


def _webp_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        (n,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        chunks.append((pos, data[pos : pos + 4], n))
        pos += 8 + n + (n & 1)
    return chunks


def webp_riff_size(rng, data, index, base) -> Result:
    (old,) = struct.unpack("<I", data[4:8])
    new = _interesting(rng, old, 32)
    return data[:4] + struct.pack("<I", new) + data[8:], f"RIFF size {old} -> {new}"


def webp_chunk_size(rng, data, index, base) -> Result:
    pos, typ, n = rng.choice(_webp_chunks(data))
    new = _interesting(rng, n, 32)
    out = bytearray(data)
    out[pos + 4 : pos + 8] = struct.pack("<I", new)
    return bytes(out), f"{typ.decode('latin-1')} size {n} -> {new}"


def webp_dims(rng, data, index, base) -> Result:
    pos, typ, _ = rng.choice([c for c in _webp_chunks(data) if c[1] in (b"VP8 ", b"VP8L", b"VP8X")])
    d = pos + 8
    out = bytearray(data)
    if typ == b"VP8 ":  # 14-bit width and height after the frame tag and start code
        w0, h0 = (v & 0x3FFF for v in struct.unpack("<HH", data[d + 6 : d + 10]))
        w, h = declared_size(rng, 14, w0, h0, index, base)
        out[d + 6 : d + 10] = struct.pack("<HH", w, h)
    elif typ == b"VP8L":  # 14 bits width - 1, 14 bits height - 1, after a signature byte
        (bits,) = struct.unpack("<I", data[d + 1 : d + 5])
        w0, h0 = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        w, h = declared_size(rng, 14, w0, h0, index, base)
        bits = (bits & ~0xFFFFFFF) | ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
        out[d + 1 : d + 5] = struct.pack("<I", bits)
    else:  # VP8X: 24-bit canvas width - 1 and height - 1
        w0 = int.from_bytes(data[d + 4 : d + 7], "little") + 1
        h0 = int.from_bytes(data[d + 7 : d + 10], "little") + 1
        w, h = declared_size(rng, 24, w0, h0, index, base)
        out[d + 4 : d + 7] = ((w - 1) & 0xFFFFFF).to_bytes(3, "little")
        out[d + 7 : d + 10] = ((h - 1) & 0xFFFFFF).to_bytes(3, "little")
    # Not the image's size for the test's purposes: a "minus one" field cannot say zero (0 wraps
    # round to the maximum), and a VP8X canvas and its VP8 frame can disagree.
    return bytes(out), f"{typ.decode('latin-1')} {w0}x{h0} -> {w}x{h}", None


# AVIF (ISOBMFF): boxes of big-endian size(4) type(4) [largesize(8)] payload.

#: container box -> bytes between its header and its first child
_AVIF_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"dinf": 0, b"iinf": None, b"iref": 4}


def _avif_boxes(
    data: bytes, start: int = 0, end: int | None = None
) -> list[tuple[int, bytes, int]]:
    """(offset, type, size) of every box, depth first."""
    end = len(data) if end is None else end
    boxes, pos = [], start
    while pos + 8 <= end:
        size, typ = struct.unpack(">I4s", data[pos : pos + 8])
        if size < 8 or pos + size > end:
            break
        boxes.append((pos, typ, size))
        skip = _AVIF_CONTAINERS.get(typ, -1)
        if typ == b"iinf":  # full box, then a 16- or 32-bit entry count
            skip = 4 + (2 if data[pos + 8] == 0 else 4)
        if skip >= 0 and typ != b"iref":
            boxes += _avif_boxes(data, pos + 8 + skip, pos + size)
        pos += size
    return boxes


def avif_ispe(rng, data, index, base) -> Result:
    pos = next(p for p, t, _ in _avif_boxes(data) if t == b"ispe")
    w0, h0 = struct.unpack(">II", data[pos + 12 : pos + 20])
    w, h = declared_size(rng, 32, w0, h0, index, base)
    out = bytearray(data)
    out[pos + 12 : pos + 20] = struct.pack(">II", w, h)
    # Not a declared size for the test's purposes: the AV1 stream holds its own dimensions.
    return bytes(out), f"ispe at {pos}: {w0}x{h0} -> {w}x{h}", None


def avif_box_size(rng, data, index, base) -> Result:
    pos, typ, n = rng.choice(_avif_boxes(data))
    new = rng.choice([0, 1, 7, 8, n - 1, n + 1, n + rng.randint(2, 4096), 0xFFFFFFFF])
    out = bytearray(data)
    out[pos : pos + 4] = struct.pack(">I", new)
    return bytes(out), f"{typ.decode('latin-1')} box at {pos}: size {n} -> {new}"


def avif_box_data(rng, data, index, base) -> Result:
    leaves = [b for b in _avif_boxes(data) if b[1] not in _AVIF_CONTAINERS and b[2] > 8]
    pos, typ, n = rng.choice(leaves)
    out = bytearray(data)
    spots = sorted(pos + 8 + rng.randrange(n - 8) for _ in range(rng.randint(1, 4)))
    for p in spots:
        out[p] = rng.choice([0, 1, 0xFF, rng.randrange(256)])
    return bytes(out), f"{typ.decode('latin-1')} box payload changed at {spots}"


FORMAT_AWARE: dict[str, dict[str, Callable]] = {
    "png": {
        "png_chunk_len": png_chunk_len,
        "png_crc": png_crc,
        "png_chunk_data": png_chunk_data,
        "png_ihdr_dims": png_ihdr_dims,
        "png_ihdr_fields": png_ihdr_fields,
    },
    "jpeg": {
        "jpeg_seg_len": jpeg_seg_len,
        "jpeg_sof_dims": jpeg_sof_dims,
        "jpeg_seg_data": jpeg_seg_data,
        "jpeg_segments": jpeg_segments,
    },
    "gif": {"gif_screen": gif_screen, "gif_frame": gif_frame, "gif_lzw": gif_lzw},
    "tiff": {
        "tiff_ifd": tiff_ifd,
        "tiff_dims": tiff_dims,
        "tiff_strips": tiff_strips,
        "tiff_entry": tiff_entry,
    },
    "webp": {
        "webp_riff_size": webp_riff_size,
        "webp_chunk_size": webp_chunk_size,
        "webp_dims": webp_dims,
    },
    "avif": {
        "avif_ispe": avif_ispe,
        "avif_box_size": avif_box_size,
        "avif_box_data": avif_box_data,
    },
}


def mutations(base: str) -> dict[str, tuple[Callable, int]]:
    """mutation name -> (function, number of cases) for `base`."""
    out = {name: (fn, GENERIC_PER_BASE) for name, fn in GENERIC.items()}
    out.update({name: (fn, FORMAT_PER_BASE) for name, fn in FORMAT_AWARE[family(base)].items()})
    return out


def make_case(seed: int, base: str, mutation: str, index: int) -> Case:
    fn, _ = mutations(base)[mutation]
    rng = random.Random(f"{seed}:{base}:{mutation}:{index}")
    data, note, *declared = fn(rng, base_bytes(seed, base), index, base)
    return Case(
        base, mutation, index, BASES[base][0], data, note, declared[0] if declared else None
    )


def case_by_id(seed: int, case_id: str) -> Case:
    base, mutation, index = case_id.split("/")
    return make_case(seed, base, mutation, int(index))


def corpus(seed: int = 0) -> Iterator[Case]:
    """Every case, in a fixed order; a case whose bytes an earlier one already had is left out
    (small choice sets, such as a 3-chunk PNG's chunk lengths, repeat themselves)."""
    seen: set[bytes] = set()
    for base in BASES:
        for mutation, (_, n) in mutations(base).items():
            for index in range(n):
                case = make_case(seed, base, mutation, index)
                if case.data not in seen:
                    seen.add(case.data)
                    yield case


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", help="one case id, base/mutation/index")
    ap.add_argument("-o", "--output", type=Path, help="where to write --case")
    ap.add_argument("--out-dir", type=Path, help="write every case here")
    args = ap.parse_args(argv)
    if args.case:
        case = case_by_id(args.seed, args.case)
        (args.output or Path(case.filename)).write_bytes(case.data)
        print(f"{case.id}: {case.note}")
        return
    if args.out_dir is None:
        ap.error("give --case or --out-dir")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for case in corpus(args.seed):
        (args.out_dir / case.filename).write_bytes(case.data)
        n += 1
    print(f"{n} cases written to {args.out_dir}")


if __name__ == "__main__":
    main()
