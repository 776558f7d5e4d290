"""codecs: options validated against each codec's table, round trips, grey and alpha."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from optimizer.codecs import (
    CODECS,
    CodecError,
    EncodeSettings,
    available_codecs,
    decode,
    encode,
    quality_grid,
)
from optimizer.images import load

from .conftest import SAMPLES, read_rgb, sample_paths


def test_pillow_codecs_available():
    av = available_codecs()
    assert av["jpeg"] and av["webp"] and av["avif"]  # Pillow >= 11.3 has AVIF built in
    assert set(av) == set(CODECS)


def test_defaults_filled_and_hashable():
    s = EncodeSettings.make("jpeg", 80)
    assert dict(s.options) == {"optimize": True, "progressive": True, "subsampling": "4:2:0"}
    assert s == EncodeSettings.make("jpeg", 80, subsampling="4:2:0")
    assert len({s, EncodeSettings.make("jpeg", 80)}) == 1


@pytest.mark.parametrize(
    ("codec", "quality", "options", "match"),
    [
        ("jpg", 80, {}, "unknown codec 'jpg'; known: jpeg, webp, avif, jxl, webp-lossless, png"),
        ("jpeg", 0, {}, r"quality must be an integer in \[1, 100\]"),
        ("webp", 101, {}, r"\[0, 100\]"),
        ("jpeg", 80, {"subsample": "4:4:4"}, "unknown jpeg option.*subsample.*subsampling"),
        ("jpeg", 80, {"subsampling": "4:2:2"}, "'4:2:0', '4:4:4'"),
        ("webp", 80, {"method": 7}, r"method=7 must be an integer in \[0, 6\]"),
        ("avif", 50, {"speed": 2.5}, "speed=2.5"),
        ("avif", 50, {"method": 4}, "avif takes: speed, subsampling"),
    ],
)
def test_bad_settings_are_named(codec, quality, options, match):
    with pytest.raises(CodecError, match=match):
        EncodeSettings.make(codec, quality, **options)


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_round_trip_and_quality_changes_size(codec):
    px = read_rgb(sample_paths()[1])
    lo = encode(px, EncodeSettings.make(codec, 30))
    hi = encode(px, EncodeSettings.make(codec, 90))
    assert len(lo) < len(hi)
    out = decode(hi, channels=3)
    assert out.shape == px.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - px).mean() < 6
    assert Image.open(io.BytesIO(hi)).format == CODECS[codec].pil_format


def test_options_reach_the_encoder():
    px = read_rgb(sample_paths()[1])
    a = encode(px, EncodeSettings.make("jpeg", 80, subsampling="4:2:0"))
    b = encode(px, EncodeSettings.make("jpeg", 80, subsampling="4:4:4"))
    from PIL import JpegImagePlugin

    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(a))) == 2  # 4:2:0
    assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(b))) == 0  # 4:4:4
    slow = encode(px, EncodeSettings.make("webp", 70, method=6))
    fast = encode(px, EncodeSettings.make("webp", 70, method=0))
    assert slow != fast
    prog = Image.open(io.BytesIO(encode(px, EncodeSettings.make("jpeg", 80, progressive=True))))
    base = Image.open(io.BytesIO(encode(px, EncodeSettings.make("jpeg", 80, progressive=False))))
    assert prog.info.get("progressive") and not base.info.get("progressive")


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_grey_stays_grey(codec):
    grey = load(SAMPLES / "tiger_grayscale_cc0.png").pixels
    data = encode(grey, EncodeSettings.make(codec, 70))
    out = decode(data, channels=1)
    assert out.shape == grey.shape
    assert np.abs(out.astype(int) - grey).mean() < 6
    if codec == "jpeg":
        assert Image.open(io.BytesIO(data)).mode == "L"


@pytest.mark.parametrize("codec", ["webp", "avif"])
def test_alpha_kept(codec):
    rgba = load(SAMPLES / "portrait_alpha_cc0.png").pixels
    out = decode(encode(rgba, EncodeSettings.make(codec, 90)), channels=4)
    assert out.shape == rgba.shape
    assert np.abs(out[:, :, 3].astype(int) - rgba[:, :, 3]).mean() < 3


def test_jpeg_refuses_alpha_without_background_and_flattens_with_one():
    rgba = load(SAMPLES / "portrait_alpha_cc0.png").pixels
    with pytest.raises(CodecError, match="give a background colour"):
        encode(rgba, EncodeSettings.make("jpeg", 90))
    out = decode(encode(rgba, EncodeSettings.make("jpeg", 95), background=(255, 255, 255)))
    clear = rgba[:, :, 3] < 10
    assert out[clear].mean() > 240  # transparent areas came out white
    la = np.zeros((16, 16, 2), np.uint8)  # grey + fully transparent
    flat = decode(encode(la, EncodeSettings.make("jpeg", 95), background=(255, 0, 0)))
    assert abs(int(flat[..., 0].mean()) - 76) <= 2  # pure red's luminance (0.299 * 255)


def test_jpeg_xl_through_the_plugin():
    """pillow-jxl-plugin is a dev dependency, so this path runs in CI too."""
    assert available_codecs()["jxl"], "pip install -e '.[dev]' installs pillow-jxl-plugin"
    px = read_rgb(sample_paths()[1])
    fast = encode(px, EncodeSettings.make("jxl", 80, effort=1))
    slow = encode(px, EncodeSettings.make("jxl", 80, effort=9))
    assert fast != slow  # the option reaches the encoder
    out = decode(slow, channels=3)
    assert out.shape == px.shape and np.abs(out.astype(int) - px).mean() < 6
    assert Image.open(io.BytesIO(slow)).format == "JXL"
    with pytest.raises(CodecError, match=r"effort=0 must be an integer in \[1, 9\]"):
        EncodeSettings.make("jxl", 80, effort=0)


def test_the_avif_quality_grid_names_its_distinct_files_on_a_photo():
    """Every quality off the grid encodes exactly the file of the grid quality below it, and
    every grid quality a file of its own (checked on a photo at the default speed, 4:2:0 and
    4:4:4, where the grid was measured on noise at speed 10)."""
    grid = quality_grid("avif")
    assert grid is not None and grid[0] == 0 and grid[-1] == 100 and len(grid) < 101
    assert quality_grid("jpeg") is None and quality_grid("webp") is None
    px = read_rgb(SAMPLES / "chelsea.png")[:64, :96]
    for sub in ("4:2:0", "4:4:4"):
        files = {
            q: encode(px, EncodeSettings.make("avif", q, subsampling=sub)) for q in range(50, 81)
        }
        for q in range(51, 81):
            same = files[q] == files[q - 1]
            assert same == (q not in grid), (sub, q)
