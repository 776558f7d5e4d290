"""`optimize --keep-metadata`: what an encoded output carries from its source. Pixels are always
sRGB and turned as EXIF orientation says; the orientation tag never survives; auto tags converted
colours with an sRGB profile; all keeps EXIF and XMP; the blocks count against --max-bytes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from optimizer.cli import app

from .conftest import SAMPLES, adobe_rgb_like_icc

runner = CliRunner()
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """wide.jpg: Adobe RGB-like profile, EXIF orientation 6 and a camera make, XMP;
    plain.png: untagged (sRGB)."""
    src = tmp_path_factory.mktemp("meta") / "src"
    src.mkdir()
    im = Image.open(SAMPLES / "coffee.png").convert("RGB")
    im.thumbnail((120, 120))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    im.save(src / "wide.jpg", quality=95, icc_profile=adobe_rgb_like_icc(), exif=exif, xmp=XMP)
    im.save(src / "plain.png")
    return src, im.size


def _run(src, out, *args) -> dict[str, dict]:
    r = runner.invoke(
        app, ["optimize", str(src), str(out), "--codecs", "avif", "--json", "--no-learn", *args]
    )
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert r.exit_code == 0, r.output
    return {x["source"]: x for x in lines[:-1]}


def _meta(path):
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        desc = (
            ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
            if icc
            else None
        )
        return im.size, desc, dict(im.getexif()), im.info.get("xmp"), np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def runs(sources, tmp_path_factory):
    src, _ = sources
    root = tmp_path_factory.mktemp("meta-out")
    return {mode: (root / mode, _run(src, root / mode, "--keep-metadata", mode))
            for mode in ("auto", "none", "all")}  # fmt: skip


def test_auto_tags_converted_colours_with_srgb_and_strips_the_rest(sources, runs):
    _, (w, h) = sources
    out, recs = runs["auto"]
    size, desc, exif, xmp, _ = _meta(out / recs["wide.jpg"]["output"])
    assert size == (h, w)  # turned by the orientation, which is gone
    assert desc is not None and "sRGB" in desc
    assert exif == {} and not xmp
    size, desc, exif, xmp, _ = _meta(out / recs["plain.png"]["output"])
    assert desc is None and exif == {} and not xmp  # sRGB already: nothing to say
    for r in recs.values():
        assert (out / r["output"]).stat().st_size == r["output_bytes"]


def test_none_strips_everything_and_all_keeps_exif_and_xmp_but_not_the_orientation(runs):
    out, recs = runs["none"]
    _, desc, exif, xmp, none_px = _meta(out / recs["wide.jpg"]["output"])
    assert desc is None and exif == {} and not xmp
    out, recs = runs["all"]
    _, desc, exif, xmp, all_px = _meta(out / recs["wide.jpg"]["output"])
    assert "sRGB" in desc and exif.get(0x010F) == "TestCam" and 0x0112 not in exif
    assert xmp and b"xmpmeta" in (xmp if isinstance(xmp, bytes) else xmp.encode())
    _, desc, _, _, _ = _meta(out / recs["plain.png"]["output"])
    assert "sRGB" in desc  # all: a profile always
    # The blocks change no pixel: the scored encode, with metadata added.
    assert runs["auto"][1]["wide.jpg"]["quality"] == runs["none"][1]["wide.jpg"]["quality"]
    assert np.array_equal(none_px, all_px)


def test_the_blocks_count_against_the_budget(sources, tmp_path):
    src, _ = sources
    budget = 2500
    recs = _run(src, tmp_path / "b", "--keep-metadata", "all", "--max-bytes", str(budget))
    written = [r for r in recs.values() if r["status"] == "written"]
    assert len(written) == 2
    for r in written:
        assert (tmp_path / "b" / r["output"]).stat().st_size == r["output_bytes"] <= budget


def test_a_bad_mode_is_refused(sources, tmp_path):
    src, _ = sources
    r = runner.invoke(app, ["optimize", str(src), str(tmp_path / "x"), "--keep-metadata", "some"])
    assert r.exit_code == 2 and "--keep-metadata 'some'" in r.stderr
