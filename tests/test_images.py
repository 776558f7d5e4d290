"""images.load: every kind of bad input gets a typed error that names the file and the reason."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from optimizer import images
from optimizer.images import (
    AnimatedImageError,
    BrokenLinkError,
    EmptyFileError,
    NotAFileError,
    NotAnImageError,
    OutsideSourceError,
    TooManyPixelsError,
    TooSmallError,
    TruncatedImageError,
    UnsupportedImageError,
    iter_image_files,
    load,
)

from .conftest import ROOT, SAMPLES, adobe_rgb_like_icc


def _png(path, im):
    im.save(path)
    return path


def _assert_names(exc_info, path):
    msg = str(exc_info.value)
    assert str(path) in msg and "\n" not in msg


def test_sample_images_load_with_expected_channels():
    modes = {p.name: load(p).channels for p in SAMPLES.glob("*.png")}
    assert modes["portrait_alpha_cc0.png"] == 4
    assert modes["tiger_grayscale_cc0.png"] == 1
    assert modes["chelsea.png"] == 3
    assert 6 <= len(modes) <= 10


def test_hash_is_of_file_content(tmp_path):
    a = _png(tmp_path / "a.png", Image.new("RGB", (20, 20), (1, 2, 3)))
    b = tmp_path / "b copy.png"
    b.write_bytes(a.read_bytes())
    c = _png(tmp_path / "c.png", Image.new("RGB", (20, 20), (1, 2, 4)))
    assert load(a).sha256 == load(b).sha256 != load(c).sha256


def test_not_an_image(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("hello, not a png")
    with pytest.raises(NotAnImageError) as e:
        load(p)
    _assert_names(e, p)


def test_truncated(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, "JPEG", quality=90
    )
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(TruncatedImageError) as e:
        load(p)
    _assert_names(e, p)


def test_truncated_png(tmp_path):
    src = (SAMPLES / "chelsea.png").read_bytes()
    p = tmp_path / "cut.png"
    p.write_bytes(src[: len(src) // 3])
    with pytest.raises(TruncatedImageError):
        load(p)


def test_empty(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(EmptyFileError) as e:
        load(p)
    _assert_names(e, p)


def test_too_many_pixels_and_raising_the_limit(tmp_path):
    p = _png(tmp_path / "big.png", Image.new("RGB", (200, 100)))
    with pytest.raises(TooManyPixelsError) as e:
        load(p, max_pixels=19_999)
    assert "--max-pixels" in str(e.value)
    assert load(p, max_pixels=20_000).width == 200


def test_pillow_bomb_limit_stays_on_by_default():
    assert images.DEFAULT_MAX_PIXELS == 89_478_485
    assert Image.MAX_IMAGE_PIXELS is not None


def test_too_small(tmp_path):
    p = _png(tmp_path / "tiny.png", Image.new("RGB", (10, 40)))
    with pytest.raises(TooSmallError) as e:
        load(p, min_side=11)
    assert "10x40" in str(e.value) and "11x11" in str(e.value)
    assert load(p, min_side=10).width == 10


def _gif(path, frames=3):
    ims = [Image.new("RGB", (32, 32), (i * 80, 0, 0)) for i in range(frames)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100, loop=0)
    return path


def test_animated_refused_by_default_first_frame_on_request(tmp_path):
    p = _gif(tmp_path / "anim.gif")
    with pytest.raises(AnimatedImageError) as e:
        load(p)
    assert "3 frames" in str(e.value) and "--animated first" in str(e.value)
    src = load(p, animated="first")
    assert any("first frame" in n for n in src.notes)


def test_directory_and_missing(tmp_path):
    with pytest.raises(NotAFileError):
        load(tmp_path)
    with pytest.raises(NotAFileError):
        load(tmp_path / "nope.png")


def test_broken_link(tmp_path):
    link = tmp_path / "dangling.png"
    os.symlink(tmp_path / "gone.png", link)
    with pytest.raises(BrokenLinkError) as e:
        load(link)
    _assert_names(e, link)


def test_16bit_grey_scaled_down(tmp_path):
    arr = np.array([[0, 257 * 100, 65535] * 5] * 15, dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    src = load(p)
    assert src.channels == 1
    assert src.pixels[0, :3, 0].tolist() == [0, 100, 255]
    assert any("16-bit" in n for n in src.notes)


def test_float_image_refused(tmp_path):
    p = tmp_path / "f.tif"
    Image.fromarray(np.ones((20, 20), np.float32)).save(p)
    with pytest.raises(UnsupportedImageError):
        load(p)


def test_cmyk_converted_to_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(p, quality=95)
    src = load(p)
    assert src.channels == 3
    r, g, b = src.pixels[10, 10]
    assert r > 200 and g < 60 and b < 60  # cyan-free, full magenta+yellow = red


def test_palette_with_transparency_keeps_alpha(tmp_path):
    im = Image.new("P", (20, 20), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (0, 0, 10, 20))
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    src = load(p)
    assert src.channels == 4
    assert src.pixels[0, 15, 3] == 0 and src.pixels[0, 5, 3] == 255


def test_opaque_alpha_dropped(tmp_path):
    p = _png(tmp_path / "opaque.png", Image.new("RGBA", (20, 20), (9, 8, 7, 255)))
    src = load(p)
    assert src.channels == 3 and any("opaque alpha" in n for n in src.notes)


def test_grey_stays_grey(tmp_path):
    p = _png(tmp_path / "g.png", Image.new("L", (20, 20), 77))
    src = load(p)
    assert src.channels == 1 and src.is_grey and int(src.pixels[0, 0, 0]) == 77


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    src = load(p)
    assert (src.width, src.height) == (20, 40)
    assert src.pixels[2, 10, 2] > 200  # the blue strip is now at the top
    assert any("orientation 6" in n for n in src.notes)


def test_icc_profile_converted_to_srgb(tmp_path):
    # Saturated green in a wide-gamut (Adobe RGB) file is more saturated than sRGB's green:
    # converted correctly, red goes to 0 and green stays at its maximum.
    im = Image.new("RGB", (20, 20), (0, 200, 0))
    p = tmp_path / "adobe.png"
    im.save(p, icc_profile=adobe_rgb_like_icc())
    src = load(p)
    assert any("ICC profile 'Adobe RGB like (test)'" in n for n in src.notes)
    r, g, b = (int(v) for v in src.pixels[0, 0])
    assert g > 200 and b < 60 and (r, g, b) != (0, 200, 0)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    q = tmp_path / "srgb.png"
    im.save(q, icc_profile=srgb.tobytes())
    assert tuple(int(v) for v in load(q).pixels[0, 0]) == (0, 200, 0)  # sRGB: untouched


def test_unicode_and_spaces_in_path(tmp_path):
    d = tmp_path / "résumé photos 写真"
    d.mkdir()
    p = _png(d / "ça va.png", Image.new("RGB", (16, 16), (5, 5, 5)))
    assert load(p).width == 16
    assert list(iter_image_files(tmp_path)) == [p]


def test_walk_skips_non_images_and_symlink_loops(tmp_path):
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "sub" / "a.png", Image.new("RGB", (16, 16)))
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "b.JPG").write_bytes(b"not really")  # looks like an image: load() will say
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    assert found == ["b.JPG", "sub/a.png"]


# Regressions found by tests/test_fuzz_inputs.py: each of these escaped `load` as a bare
# Pillow/Python exception (named in the test) instead of a typed ImageError.


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _two_page_tiff_second_without_size() -> bytes:
    """A 1x1 grey TIFF whose second IFD has no ImageWidth/ImageLength."""

    def ifd(entries, next_at):
        body = b"".join(struct.pack("<HHII", *e) for e in entries)
        return struct.pack("<H", len(entries)) + body + struct.pack("<I", next_at)

    second_at = 8 + 2 + 12 * 8 + 4
    pixel_at = second_at + 2 + 12 + 4
    first = [
        (256, 3, 1, 1),  # ImageWidth
        (257, 3, 1, 1),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # PhotometricInterpretation: black is zero
        (273, 4, 1, pixel_at),  # StripOffsets
        (278, 3, 1, 1),  # RowsPerStrip
        (279, 4, 1, 1),  # StripByteCounts
    ]
    return b"II*\0" + struct.pack("<I", 8) + ifd(first, second_at) + ifd([first[3]], 0) + b"\x80"


@pytest.mark.parametrize(
    ("name", "data", "old"),
    [
        # Counting frames seeks to page 2, whose parser raises TypeError("Missing dimensions").
        ("two-page.tif", _two_page_tiff_second_without_size(), "TypeError"),
        # A 1x1 GIF whose trailer is replaced by an extension introducer: counting frames reads
        # past the end and indexes an empty byte string (IndexError).
        (
            "bang.gif",
            b"GIF87a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00,\x00\x00\x00\x00"
            b"\x01\x00\x01\x00\x00\x08\x04\x00\x01\x04\x04\x00!",
            "IndexError",
        ),
    ],
)
def test_a_broken_later_frame_is_corrupt_not_a_crash(tmp_path, name, data, old):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(TruncatedImageError) as e:
        load(p)
    _assert_names(e, p)
    assert "counting the frames" in str(e.value) and old in str(e.value)


def _avif(tmp_path, damage) -> os.PathLike:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "AVIF", speed=10, max_threads=1)
    data = bytearray(buf.getvalue())
    damage(data)
    p = tmp_path / "bad.avif"
    p.write_bytes(bytes(data))
    return p


def _zero_coded_data(data: bytearray) -> None:
    at = data.index(b"mdat") - 4
    (size,) = struct.unpack(">I", data[at : at + 4])
    data[at + 8 : at + size] = bytes(size - 8)


def _break_item_info(data: bytearray) -> None:
    at = data.index(b"infe")
    data[at + 8 : at + 10] = b"\xff\xff"  # the item's id: no longer the primary item


@pytest.mark.parametrize(
    ("damage", "step"),
    [(_zero_coded_data, "decoding the pixels"), (_break_item_info, "reading the AVIF header")],
)
def test_avif_decoder_failure_is_corrupt_not_runtime_error(tmp_path, damage, step):
    # libavif's failures reach Python as RuntimeError, at open and at load.
    p = _avif(tmp_path, damage)
    with pytest.raises(TruncatedImageError) as e:
        load(p)
    _assert_names(e, p)
    assert step in str(e.value) and "Failed to decode" in str(e.value)


def test_a_row_of_exactly_the_pixel_limit_that_pillow_cannot_allocate(tmp_path):
    # 89,478,485 x 1 RGBA is within the limit, but Pillow's decoder refuses a line that long
    # with a bare MemoryError (its line buffer would pass INT_MAX bytes).
    ihdr = struct.pack(">IIBBBBB", images.DEFAULT_MAX_PIXELS, 1, 8, 6, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    p = tmp_path / "row.png"
    p.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    with pytest.raises(TooManyPixelsError) as e:
        load(p)
    _assert_names(e, p)
    assert "89478485x1" in str(e.value) and "ran out of memory" in str(e.value)


def test_running_out_of_memory_is_a_typed_error(tmp_path):
    # A valid 6000x6000 RGBA image (144 MB decoded) in a process allowed 120 MB more than it
    # already has: the allocation fails for real, inside Pillow or numpy.
    p = tmp_path / "big.png"
    Image.new("RGBA", (6000, 6000), (1, 2, 3, 4)).save(p, compress_level=1)
    code = (
        "import resource, sys\n"
        "from optimizer.images import load, TooManyPixelsError\n"
        "vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) << 10\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + (120 << 20),) * 2)\n"
        "try:\n"
        "    load(sys.argv[1])\n"
        "except TooManyPixelsError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(p)], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert str(p) in out.stdout and "6000x6000" in out.stdout and "ran out of memory" in out.stdout


def test_a_path_the_system_refuses_is_a_typed_error(tmp_path):
    p = tmp_path / ("x" * 300 + ".png")  # longer than any file name may be (ENAMETOOLONG)
    with pytest.raises(images.ImageError) as e:
        load(p)
    _assert_names(e, p)
    assert "cannot be read" in str(e.value)


def test_a_png_with_a_damaged_header_says_why(tmp_path):
    # Pillow only says "cannot identify image file"; the PNG parser knows what is wrong.
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[29] ^= 1  # IHDR's CRC
    p = tmp_path / "crc.png"
    p.write_bytes(bytes(data))
    with pytest.raises(NotAnImageError) as e:
        load(p)
    _assert_names(e, p)
    assert "reading the PNG header" in str(e.value) and "checksum" in str(e.value)


def test_16bit_rounding_is_round_to_nearest():
    values = np.array([[0, 128, 129, 25828, 25829, 65406, 65407, 65535]], dtype=np.uint16)
    out = images._to_8bit(Image.fromarray(values), None, [])
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.asarray(out).tolist() == expected.tolist() == [[0, 0, 1, 100, 101, 254, 255, 255]]


def test_an_invalid_exif_orientation_is_not_reported_as_applied(tmp_path):
    # Found by the fuzzer as "EXIF orientation 4102 applied": exif_transpose returns a copy
    # even when the value names no transposition, and the note took the copy for a rotation.
    exif = Image.Exif()
    exif[0x0112] = 9
    p = tmp_path / "nine.jpg"
    Image.new("RGB", (40, 20), (9, 9, 9)).save(p, exif=exif)
    src = load(p)
    assert (src.width, src.height) == (40, 20)
    assert not any("applied" in n for n in src.notes)
    assert any("orientation 9 is not a valid value" in n for n in src.notes)


def test_an_icc_description_with_a_high_byte_still_converts(tmp_path):
    # Found by the fuzzer (seed 3): getProfileDescription raised PyCMSError ("character
    # U+ffffffd5 is not in range") out of load. The profile itself is fine: it converts.
    icc = adobe_rgb_like_icc().replace(b"Adobe RGB like", b"\xd5dobe RGB like")
    p = tmp_path / "d5.png"
    Image.new("RGB", (20, 20), (0, 200, 0)).save(p, icc_profile=icc)
    src = load(p)
    assert "converted from ICC profile 'unnamed' to sRGB" in src.notes
    r, g, b = (int(v) for v in src.pixels[0, 0])
    assert g > 200 and b < 60 and (r, g, b) != (0, 200, 0)


def test_walk_reports_links_out_of_the_root_and_follows_the_rest_on_request(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "in").mkdir(parents=True)
    (elsewhere / "d").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "in" / "a.png")
    Image.new("RGB", (16, 16)).save(elsewhere / "b.png")
    Image.new("RGB", (16, 16)).save(elsewhere / "d" / "c.png")
    (root / "b.png").symlink_to(elsewhere / "b.png")
    (root / "d").symlink_to(elsewhere / "d")
    (root / "again.png").symlink_to(root / "in" / "a.png")  # inside: followed
    (root / "gone.png").symlink_to(tmp_path / "nothing.png")  # broken: `load` names it
    found = list(iter_image_files(root))
    paths = sorted(p.relative_to(root).as_posix() for p in found if isinstance(p, Path))
    refused = {e.path.name: str(e) for e in found if isinstance(e, OutsideSourceError)}
    assert paths == ["again.png", "gone.png", "in/a.png"]
    assert set(refused) == {"b.png", "d"}
    assert str(elsewhere / "d") in refused["d"] and "--follow-symlinks" in refused["d"]
    followed = sorted(
        p.relative_to(root).as_posix() for p in iter_image_files(root, follow_symlinks=True)
    )
    assert followed == ["again.png", "b.png", "d/c.png", "gone.png", "in/a.png"]
