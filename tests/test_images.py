"""images.load: every bad-input category of DESIGN.md gets a typed error naming the file."""

from __future__ import annotations

import io
import os

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
    TooManyPixelsError,
    TooSmallError,
    TruncatedImageError,
    UnsupportedImageError,
    iter_image_files,
    load,
)

from .conftest import SAMPLES, adobe_rgb_like_icc


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
