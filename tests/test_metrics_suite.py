"""The suite: composite, levels, alpha over black and white, grey vs colour, monotonicity."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from optimizer.images import load
from optimizer.metrics import CompositeSpec, MetricSuite, lpips_category, quality_level
from optimizer.metrics.psnr import PSNR
from optimizer.metrics.ssim import MSSSIM, SSIM

from .conftest import DEVICES, SAMPLES, jpeg, noise, read_rgb, sample_paths, skimage_ssim


@pytest.fixture(scope="module")
def suite():
    return MetricSuite.build(["ssim", "ms_ssim", "psnr"], device="cpu")


@pytest.fixture(scope="module")
def full_suite(random_weights_dir):
    return MetricSuite.build(device="cpu", weights_dir=random_weights_dir)


def test_default_composite_is_the_seed_scheme(full_suite):
    w = full_suite.composite.as_dict()
    assert w == pytest.approx({"lpips": 3 / 7, "ssim": 3 / 7, "psnr": 1 / 7})
    ref = read_rgb(sample_paths()[1])
    s = full_suite.score_pair(ref, jpeg(ref, 40))
    expected = (3 * (1 - s["lpips"]) + 3 * s["ssim"] + min(s["psnr"] / 50, 1)) / 7
    assert s.composite == pytest.approx(expected, abs=1e-12)
    assert s.level == quality_level(s.composite)
    assert s.lpips_category == lpips_category(s["lpips"])
    assert set(s.values) == {
        "lpips",
        "lpips_p95",
        "ssim",
        "ssim_p5",
        "ms_ssim",
        "psnr",
        "ssimulacra2",
        "composite",
    }


def test_weight_free_composite_renormalises(suite):
    assert suite.composite.as_dict() == pytest.approx({"ssim": 0.75, "psnr": 0.25})


def test_custom_weights_and_errors():
    spec = CompositeSpec.parse("ssim=1,ms_ssim=1")
    assert spec.as_dict() == {"ssim": 0.5, "ms_ssim": 0.5}
    with pytest.raises(ValueError, match="'foo'"):
        CompositeSpec.parse("foo=1")
    with pytest.raises(ValueError, match="NAME=NUMBER"):
        CompositeSpec.parse("ssim")
    # An explicit composite is computed: its metrics join the ones asked for ...
    built = MetricSuite.build(["ssim"], device="cpu", composite_weights="psnr=1")
    assert [m.name for m in built.metrics] == ["ssim", "psnr"]
    # ... while a suite given its metrics refuses a composite they cannot make.
    with pytest.raises(ValueError, match="which no enabled metric gives"):
        MetricSuite(built.metrics[:1], composite=CompositeSpec.parse("psnr=1"), device="cpu")


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (0.95, "excellent"),
        (0.9, "excellent"),
        (0.85, "very_good"),
        (0.7, "good"),
        (0.65, "acceptable"),
        (0.5, "poor"),
        (0.2, "very_poor"),
    ],
)
def test_levels(value, level):
    assert quality_level(value) == level


def test_lpips_categories():
    assert [lpips_category(d) for d in (0.05, 0.15, 0.3, 0.5)] == [
        "excellent",
        "good",
        "acceptable",
        "poor",
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_identical_images_score_perfectly(full_suite, device, random_weights_dir):
    if device != "cpu":
        full_suite = MetricSuite.build(device=device, weights_dir=random_weights_dir)
    for p in sample_paths():
        px = load(p).pixels
        s = full_suite.score_pair(px, px)
        assert s["ssim"] == pytest.approx(1, abs=1e-6) and s["ms_ssim"] == pytest.approx(
            1, abs=1e-5
        )
        assert s["psnr"] == float("inf") and s["lpips"] == pytest.approx(0, abs=1e-6)
        assert s.composite == pytest.approx(1, abs=1e-6) and s.level == "excellent"


def test_alpha_judged_over_black_and_white_worse_counts(suite):
    rgba = load(SAMPLES / "portrait_alpha_cc0.png").pixels
    assert rgba.shape[2] == 4
    cand = rgba.copy()
    cand[:, :, 3] = np.clip(cand[:, :, 3].astype(int) - 60, 0, 255).astype(np.uint8)
    s = suite.score_pair(rgba, cand)
    by_bg = []
    for bg in (0, 255):

        def flat(a, bg=bg):
            al = a[:, :, 3:4] / 255.0
            return np.rint(a[:, :, :3] * al + bg * (1 - al)).astype(np.uint8)

        by_bg.append(suite.score_pair(flat(rgba), flat(cand)))
    assert s["ssim"] == pytest.approx(min(b["ssim"] for b in by_bg), abs=2e-3)
    assert s["psnr"] == pytest.approx(min(b["psnr"] for b in by_bg), abs=0.2)
    # colour hidden under fully transparent pixels is invisible on any background
    ref = rgba.copy()
    ref[100:200, 100:200, 3] = 0
    hidden = ref.copy()
    hidden[100:200, 100:200, :3] = 255 - hidden[100:200, 100:200, :3]
    assert suite.score_pair(ref, hidden)["psnr"] == float("inf")


def test_alpha_against_a_chosen_background(suite):
    rgba = load(SAMPLES / "portrait_alpha_cc0.png").pixels
    white = suite.prepare(rgba, background=(255, 255, 255))
    al = rgba[:, :, 3:4] / 255.0
    flat = np.rint(rgba[:, :, :3] * al + 255 * (1 - al)).astype(np.uint8)
    assert suite.score(white, [flat])[0]["psnr"] > 45  # only rounding differs


def test_grey_reference_with_colour_candidate(suite):
    grey = load(SAMPLES / "tiger_grayscale_cc0.png").pixels
    d = noise(grey, 8)
    as_grey = suite.score_pair(grey, d)
    as_rgb = suite.score_pair(grey, np.repeat(d, 3, axis=2))
    assert as_rgb["ssim"] == pytest.approx(as_grey["ssim"], abs=1e-6)
    assert as_rgb["psnr"] == pytest.approx(as_grey["psnr"], abs=1e-3)


def test_sizes_must_match(suite):
    a = read_rgb(sample_paths()[1])
    with pytest.raises(ValueError, match="sizes differ"):
        suite.score_pair(a, a[:-1])


def test_batches_split_under_the_pixel_budget():
    ref = read_rgb(sample_paths()[1])
    cands = [jpeg(ref, q) for q in (30, 60, 90)]
    small = MetricSuite([SSIM("cpu"), MSSSIM("cpu"), PSNR("cpu")], device="cpu", batch_pixels=1)
    big = MetricSuite([SSIM("cpu"), MSSSIM("cpu"), PSNR("cpu")], device="cpu")
    a = small.score(small.prepare(ref), cands)
    b = big.score(big.prepare(ref), cands)
    for x, y in zip(a, b, strict=True):
        assert x.values == pytest.approx(y.values, abs=1e-6)


def _codec_roundtrip(src, q):
    buf = io.BytesIO()
    fmt = "WEBP" if src.has_alpha else "JPEG"  # JPEG has no alpha
    src.to_pil().save(buf, fmt, quality=q)
    d = np.asarray(Image.open(buf))
    return d if d.ndim == 3 else d[:, :, None]


def test_composite_rises_with_jpeg_quality_on_every_sample(full_suite):
    """Qualities 30, 35, 40, 60, 65, 70, 95 (every one where a dip was ever seen, its
    neighbour below, and the ends). Known exception: astronaut.png dips at 35->40 and 65->70;
    skimage's own SSIM dips at the same steps, so the encoder (libjpeg's quantisation tables on
    this image), not the metric, is non-monotone there. Each dip is checked to be of that kind."""
    qualities = [30, 35, 40, 60, 65, 70, 95]
    exceptions = []
    for p in sample_paths():
        src = load(p)
        cands = [_codec_roundtrip(src, q) for q in qualities]
        comp = [s.composite for s in full_suite.score(full_suite.prepare(src.pixels), cands)]
        for i in range(len(comp) - 1):
            if comp[i + 1] < comp[i]:
                sk = [skimage_ssim(src.pixels, c) for c in cands[i : i + 2]]
                assert sk[1] < sk[0], f"{p.name}: composite fell at q{qualities[i + 1]} alone"
                assert comp[i] - comp[i + 1] < 0.005
                exceptions.append((p.name, qualities[i + 1]))
    assert {name for name, _ in exceptions} <= {"astronaut.png"}, exceptions
