"""Lossless candidates (`optimizer.lossless`): `--quality lossless` writes files that decode to
the source's pixels (every layout `load` makes, palette, 16-bit grey, an ICC profile) and never
larger than the source; under a lossy target a lossless file is the output where it beats the
lossy search, and a photo costs no lossless encode. Real encoders throughout, small images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import oxipng
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import optimizer
from optimizer.cli import app
from optimizer.codecs import CODECS, EncodeSettings, check_codecs, decode, encode
from optimizer.errors import UsageError
from optimizer.image_job import Job, Status, optimize_image
from optimizer.images import load
from optimizer.lossless import flat_share, recipes, stored_pixels, worth_trying
from optimizer.metrics import MetricSuite
from optimizer.predictor import Prediction
from optimizer.targets import parse_target, resolve_target

from .conftest import SAMPLES, adobe_rgb_like_icc

runner = CliRunner()
TARGET = parse_target("ssimulacra2>=80")
LOSSLESS = recipes(("webp-lossless", "png"))


@pytest.fixture(scope="module")
def suite():
    return MetricSuite.build(["ssimulacra2"], device="cpu")


def _graphic(w: int = 120, h: int = 80, colours: int = 6, seed: int = 0) -> np.ndarray:
    """Flat rectangles in a few colours, no antialiasing: a banner, a chart, a screenshot."""
    rng = np.random.default_rng(seed)
    palette = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(colours)]
    im = Image.new("RGB", (w, h), palette[0])
    d = ImageDraw.Draw(im)
    for i in range(24):
        x, y = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        d.rectangle((x, y, x + int(rng.integers(5, w // 2)), y + int(rng.integers(4, h // 3))),
                    fill=palette[1 + i % (colours - 1)])  # fmt: skip
    return np.asarray(im)


def _sources(folder: Path) -> dict[str, Path]:
    """One source of each layout `load` makes, plus palette ones, as uncompressed PNGs (so a
    lossless file is smaller and gets written)."""
    rng = np.random.default_rng(1)
    rgb = _graphic()
    rgba = np.dstack([rgb, rng.choice([0, 128, 255], rgb.shape[:2]).astype(np.uint8)])
    rgba[:4, :4, 3] = 0  # transparent pixels whose colour must survive too
    rgba[:4, :4, :3] = rng.integers(0, 256, (4, 4, 3))
    grey = rgb[:, :, :1].copy()
    grey_alpha = np.dstack([grey, rgba[:, :, 3:]])
    images = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "grey.png": Image.fromarray(grey[:, :, 0], "L"),
        "grey_alpha.png": Image.fromarray(grey_alpha, "LA"),
        "palette.png": Image.fromarray(rgb).quantize(6, dither=Image.Dither.NONE),
    }
    trans = Image.fromarray(rgb).quantize(6, dither=Image.Dither.NONE)
    trans.info["transparency"] = 0  # palette entry 0 transparent: loads as RGBA
    images["palette_transparent.png"] = trans
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, im in images.items():
        kw = {"transparency": 0} if name == "palette_transparent.png" else {}
        im.save(folder / name, compress_level=0, **kw)
        paths[name] = folder / name
    assert load(paths["palette_transparent.png"]).channels == 4
    return paths


def _rgba(pixels: np.ndarray) -> np.ndarray:
    """Any layout `load` makes as RGBA (a grey source may come back from WebP, which has no grey,
    as RGB with equal channels: the same pixels)."""
    c = pixels.shape[2]
    colour = pixels[:, :, :1].repeat(3, axis=2) if c in (1, 2) else pixels[:, :, :3]
    alpha = pixels[:, :, -1:] if c in (2, 4) else np.full_like(pixels[:, :, :1], 255)
    return np.dstack([colour, alpha])


def _records(out: list) -> dict[str, dict]:
    return {o.source: o.record() for o in out}


def test_quality_lossless_outputs_decode_to_the_source_pixels_in_every_layout(tmp_path):
    src = tmp_path / "src"
    paths = _sources(src)
    got = []
    summary = optimizer.optimize(
        src, tmp_path / "out", quality="lossless", jobs=1, device="cpu", on_result=got.append
    )
    assert summary.exit_code == 0 and summary.target == "lossless"
    recs = _records(got)
    assert set(recs) == set(paths)
    for name, rec in recs.items():
        out = tmp_path / "out" / rec["output"]
        assert rec["status"] == "written" and rec["meets_target"], rec
        assert rec["codec"] in ("webp-lossless", "png") and CODECS[rec["codec"]].lossless
        assert out.suffix == CODECS[rec["codec"]].extension
        assert out.stat().st_size == rec["output_bytes"] < rec["source_bytes"]
        a, b = load(paths[name]), load(out)
        assert np.array_equal(_rgba(a.pixels), _rgba(b.pixels)), name  # colour under alpha too
        assert rec["encodes"] == 2  # both lossless codecs tried, nothing lossy


def test_16_bit_grey_keeps_its_16_bits_in_png_and_16_bit_colour_is_kept_as_is(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(2)
    deep = (rng.integers(0, 8, (40, 60)) * 8191 + 3).astype(np.uint16)  # low bytes matter
    Image.fromarray(deep).save(src / "grey16.png", compress_level=0)
    assert Image.open(src / "grey16.png").mode == "I;16"
    rgb16 = rng.integers(0, 4, (40, 60, 3)).astype(">u2") * 4097 + 1
    data = oxipng.RawImage(rgb16.tobytes(), 60, 40, color_type=oxipng.ColorType.rgb(),
                           bit_depth=16).create_optimized_png(level=0)  # fmt: skip
    (src / "rgb16.png").write_bytes(data)
    got = []
    optimizer.optimize(src, tmp_path / "out", quality="lossless", jobs=1, device="cpu",
                       on_result=got.append)  # fmt: skip
    recs = _records(got)
    g = recs["grey16.png"]
    assert g["status"] == "written" and g["codec"] == "png"  # WebP holds 8 bits: not tried
    assert g["encodes"] == 1
    out = Image.open(tmp_path / "out" / g["output"])
    assert np.array_equal(np.asarray(out).astype(np.uint16), deep)
    assert np.array_equal(
        load(tmp_path / "out" / g["output"]).pixels, load(src / "grey16.png").pixels
    )
    c = recs["rgb16.png"]  # Pillow reads only the high bytes: nothing here holds it exactly
    assert c["status"] == "kept" and c["encodes"] == 0 and c["output"] == "rgb16.png"
    assert (tmp_path / "out" / "rgb16.png").read_bytes() == data


def test_an_icc_profile_travels_with_the_values_it_describes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    icc = adobe_rgb_like_icc()
    Image.fromarray(_graphic()).save(src / "wide.png", icc_profile=icc, compress_level=0)
    loaded = load(src / "wide.png")
    assert any(n.startswith("converted from ICC profile") for n in loaded.notes)
    stored, kept_icc = stored_pixels(src / "wide.png", loaded)
    assert kept_icc == icc and np.array_equal(stored, _graphic())  # not the sRGB-converted ones
    got = []
    optimizer.optimize(src, tmp_path / "out", quality="lossless", jobs=1, device="cpu",
                       on_result=got.append)  # fmt: skip
    out = tmp_path / "out" / got[0].output
    assert got[0].status == Status.WRITTEN
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        assert np.array_equal(np.asarray(im.convert("RGB")), _graphic())
    assert np.array_equal(load(out).pixels, loaded.pixels)  # the same colours, read back


def test_a_source_already_tighter_than_every_candidate_is_kept(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    noise = np.random.default_rng(3).integers(0, 256, (48, 48, 3)).astype(np.uint8)
    tight = oxipng.RawImage(noise.tobytes(), 48, 48, color_type=oxipng.ColorType.rgb())
    data = tight.create_optimized_png(level=6, strip=oxipng.StripChunks.all())
    (src / "tight.png").write_bytes(data)
    for c in ("webp-lossless", "png"):  # what each candidate makes of it: no smaller
        assert len(encode(noise, EncodeSettings.make(c, 100))) >= len(data)
    got = []
    optimizer.optimize(src, tmp_path / "out", quality="lossless", jobs=1, device="cpu",
                       on_result=got.append)  # fmt: skip
    o = got[0]
    assert o.status == Status.KEPT and o.encodes == 2 and o.meets_target
    assert o.output == "tight.png" and o.output_bytes == len(data)
    assert (tmp_path / "out" / "tight.png").read_bytes() == data


def test_a_flat_graphic_under_a_lossy_target_gets_a_lossless_file_smaller_than_the_search(
    tmp_path, suite
):
    path = tmp_path / "flat.png"  # stored uncompressed, so the lossy search writes a file
    Image.fromarray(_graphic(160, 112, colours=5)).save(path, compress_level=0)
    assert worth_trying(load(path).pixels)
    lossy = optimize_image(path, Job.optimize(TARGET, ["avif", "webp"]), suite=suite,
                           prediction=Prediction())  # fmt: skip
    both = optimize_image(path, Job.optimize(TARGET, ["avif", "webp"], lossless=LOSSLESS),
                          suite=suite, prediction=Prediction())  # fmt: skip
    assert lossy.outcome.status == Status.WRITTEN and lossy.outcome.codec in ("avif", "webp")
    o = both.outcome
    assert o.status == Status.WRITTEN and o.codec in ("webp-lossless", "png")
    assert o.output_bytes == len(both.payload) < lossy.outcome.output_bytes
    assert o.output.endswith(CODECS[o.codec].extension) and o.meets_target
    assert o.scores["ssimulacra2"] == pytest.approx(100.0, abs=1e-3)  # scored like any output
    assert np.array_equal(decode(both.payload, channels=3), load(path).pixels)
    # the same lossy search, then the lossless WebP and (as it won) the PNG
    assert o.encodes == lossy.outcome.encodes + 2
    assert both.found == lossy.found  # the predictor learns what the lossy search found


def test_a_photo_under_a_lossy_target_costs_no_lossless_encode(suite):
    path = SAMPLES / "chelsea.png"
    assert not worth_trying(load(path).pixels)  # thousands of colours: counting stops at 257
    runs = [
        optimize_image(path, Job.optimize(TARGET, ["avif", "webp"], lossless=ll), suite=suite,
                       prediction=Prediction())
        for ll in ((), LOSSLESS)
    ]  # fmt: skip
    without, with_ = (r.outcome for r in runs)
    assert with_.encodes == without.encodes
    assert with_.codec == without.codec in ("avif", "webp")
    assert runs[0].payload == runs[1].payload


def test_the_evidence_few_colours_and_flat(tmp_path):
    rng = np.random.default_rng(4)
    grey_photo = load(SAMPLES / "tiger_grayscale_cc0.png").pixels  # 256 levels, not flat
    assert flat_share(grey_photo) < 0.6 and not worth_trying(grey_photo)
    assert worth_trying(_graphic())  # few colours, flat
    noise16 = rng.integers(0, 16, (64, 64, 1)).astype(np.uint8) * 16
    assert flat_share(noise16) < 0.3 and worth_trying(noise16)  # few enough colours for any
    noise200 = rng.integers(0, 200, (64, 64, 3)).astype(np.uint8)
    assert not worth_trying(noise200)  # a palette would hold it, but nothing repeats
    assert flat_share(np.zeros((1, 5, 3), np.uint8)) == 0.0  # one row: nothing above
    # 600 flat blocks of their own colour: tried only where the lossy file is still large, or
    # where nothing lossy beat the source (no bits given)
    blocks = rng.permutation(256**3)[:600].view(np.uint8).reshape(20, 30, 8)[:, :, :3]
    flat600 = blocks.repeat(8, axis=0).repeat(8, axis=1)
    assert flat_share(flat600) > 0.9
    assert not worth_trying(flat600, 0.1) and worth_trying(flat600, 0.5) and worth_trying(flat600)
    # grey has at most 256 levels anyway: no palette to save, so it is weighed the same way
    grey = (blocks[:, :, :1] % 100).repeat(8, axis=0).repeat(8, axis=1)
    assert 16 < len(np.unique(grey)) <= 100
    assert not worth_trying(grey, 0.1) and worth_trying(grey, 0.5)
    assert worth_trying(np.dstack([grey, grey]), 0.1)  # grey + alpha: a palette of pairs


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("codec", ["webp-lossless", "png"])
def test_lossless_codecs_round_trip_exactly(codec, channels):
    rng = np.random.default_rng(channels)
    px = rng.integers(0, 256, (33, 47, channels)).astype(np.uint8)
    if channels in (2, 4):
        px[::3, :, -1] = 0  # transparent, with colour that must come back unchanged
    data = encode(px, EncodeSettings.make(codec, 100))
    assert np.array_equal(decode(data, channels=channels), px)
    assert Image.open(io.BytesIO(data)).format == CODECS[codec].pil_format


def test_lossless_codecs_in_the_codec_table():
    s = EncodeSettings.make("webp-lossless", 100)
    assert dict(s.options) == {"effort": 100, "method": 4}
    assert s.pillow_kwargs() == {"lossless": True, "quality": 100, "method": 4, "exact": True}
    assert dict(EncodeSettings.make("png", 100).options) == {"level": 2}
    with pytest.raises(UsageError, match=r"quality must be an integer in \[100, 100\]"):
        EncodeSettings.make("png", 80)
    assert "png" not in check_codecs(None) and "webp-lossless" not in check_codecs(None)
    with pytest.raises(UsageError, match="holds 8 bits"):
        encode(np.zeros((4, 4, 1), np.uint16), EncodeSettings.make("webp-lossless", 100))


def test_the_lossless_target_and_its_key():
    t = resolve_target(None, "lossless")
    assert t.lossless and str(t) == "lossless" and t == parse_target("lossless")
    assert t.metrics == ("psnr",) and t.needed_metrics() == ["psnr"]
    assert not t.failures({"psnr": float("inf")}) and t.failures({"psnr": 60.0})
    spec = MetricSuite.build(["psnr"], device="cpu").describe()
    keys = {
        Job.optimize(TARGET, ["avif"]).key(spec),
        Job.optimize(TARGET, ["avif"], lossless=LOSSLESS).key(spec),
        Job.optimize(TARGET, ["avif"], lossless=LOSSLESS[:1]).key(spec),
        Job.optimize(t, [], lossless=LOSSLESS).key(spec),
    }
    assert len(keys) == 4


def test_cli_quality_lossless_end_to_end(tmp_path):
    src = tmp_path / "src"
    paths = _sources(src)
    args = ["optimize", str(src), str(tmp_path / "out"), "--quality", "lossless"]
    args += ["--codecs", "png", "--json", "--device", "cpu"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    recs, summary = lines[:-1], lines[-1]
    assert summary["target"] == "lossless" and summary["counts"]["written"] == len(paths)
    assert {x["codec"] for x in recs} == {"png"}
    assert all(x["output"].endswith(".png") and x["meets_target"] for x in recs)
    manifest = (tmp_path / "out" / ".imgtune-manifest.jsonl").read_text().splitlines()
    assert {json.loads(x)["codec"] for x in manifest} == {"png"}
    again = runner.invoke(app, args)
    assert json.loads(again.stdout.splitlines()[-1])["counts"]["up_to_date"] == len(paths)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["optimize", "--quality", "lossless", "--codecs", "avif,webp"], "needs a lossless codec"),
        (["optimize", "--quality", "lossless", "--max-width", "50"], "keeps every pixel"),
        (["optimize", "--codecs", "png"], "lossless only"),
        (["tune", "--quality", "lossless"], "tune searches lossy recipes"),
        (["tune", "--codecs", "webp,png"], "--codecs png: tune searches lossy"),
    ],
)
def test_what_lossless_cannot_be_combined_with_is_refused(tmp_path, args, message):
    src = tmp_path / "src"
    _sources(src)
    where = [str(src), str(tmp_path / "out")] if args[0] == "optimize" else [str(src)]
    r = runner.invoke(app, [args[0], *where, *args[1:], "--device", "cpu"])
    assert r.exit_code == 2 and message in r.stderr, r.output
    assert not (tmp_path / "out").exists()
