"""SSIMULACRA 2.1: agreement with the reference C++ build, scales, odd and tiny sizes, alpha."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from optimizer.images import load
from optimizer.metrics import CompositeSpec, MetricSuite
from optimizer.metrics.ssimulacra2 import SSIMULACRA2, WEIGHTS, scale_count

from .conftest import DEVICES, jpeg, read_rgb, sample_paths, to_tensor

VECTORS = Path(__file__).parent / "data" / "ssimulacra2"


def _rows(folder: Path) -> list[tuple[str, str, float]]:
    with open(folder / "expected.csv", newline="") as f:
        return [
            (r["distorted"], r["reference"], float(r["ssimulacra2_cpp_2_1"]))
            for r in csv.DictReader(f)
        ]


def _score(folder: Path, distorted: str, reference: str, device: str = "cpu") -> float:
    m = SSIMULACRA2(device)
    a = to_tensor(read_rgb(folder / distorted)).to(m.device)
    b = to_tensor(read_rgb(folder / reference)).to(m.device)
    return m(a, b)["ssimulacra2"].item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "distorted,reference,expected", [r for r in _rows(VECTORS) if r[0].endswith(".png")]
)
def test_matches_the_reference_cpp_build(distorted, reference, expected, device):
    # The issue asks for 0.5 points; measured: at most 0.045 on these 42 pairs (the CPU).
    assert _score(VECTORS, distorted, reference, device) == pytest.approx(expected, abs=0.1)


def test_matches_the_reference_on_the_jpeg_quality_set():
    rows = [r for r in _rows(VECTORS) if r[0].startswith("q")]
    assert len(rows) == 4
    for distorted, reference, expected in rows:
        # JPEG decoders differ by a few levels here and there (Pillow's libjpeg-turbo vs the
        # reference's): measured 0.02-0.19 points.
        assert _score(VECTORS, distorted, reference) == pytest.approx(expected, abs=0.5)


def test_scale_count_tests_size_before_downsampling():
    # The reference checks the size, then downsamples: the last scale may be under 8 px.
    assert scale_count(192, 192) == 6  # 192 .. 6
    assert scale_count(40, 40) == 4  # 40, 20, 10, 5 (the 40x40 vector pins this)
    assert scale_count(131, 97) == 5  # odd: 97, 49, 25, 13, 7
    assert scale_count(8, 8) == 2  # 8, then 4
    assert scale_count(15, 9) == 2
    assert scale_count(7, 100) == 0
    assert scale_count(4096, 4096) == 6


@pytest.mark.parametrize("device", DEVICES)
def test_identical_images_score_exactly_100(device):
    # Exactly, not nearly: near identity the 4-norm and the final mapping turn a 1e-7 rounding
    # residue into 0.1-0.2 point. Odd widths included (BLAS products round edge tiles apart).
    m = SSIMULACRA2(device)
    for p in sample_paths():
        x = to_tensor(read_rgb(p)).to(m.device)
        assert m(x, x)["ssimulacra2"].item() == 100.0, p.name
    src = read_rgb(sample_paths()[2])
    for h, w in ((97, 131), (139, 105), (75, 57), (13, 17)):
        ref = src[:h, :w]
        batch = torch.cat([to_tensor(jpeg(ref, 50)), to_tensor(ref), to_tensor(jpeg(ref, 90))])
        got = m(batch.to(m.device), to_tensor(ref).to(m.device))["ssimulacra2"].cpu()
        assert got[1].item() == 100.0, (h, w)
        assert got[0] < got[2] < 100


def test_scores_fall_as_jpeg_quality_falls_on_every_sample_image():
    # Steps of 10. In steps of 5 the flat graphic rises by 0.01 from q40 to q35 (measured).
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    for p in sample_paths():
        src = load(p).pixels
        colour = src[:, :, :3] if src.shape[2] in (3, 4) else src[:, :, :1]
        prepared = suite.prepare(src)
        values = []
        for q in (90, 80, 70, 60, 50, 40, 30):
            c = jpeg(colour[:, :, 0] if colour.shape[2] == 1 else colour, q)
            c = c[:, :, None] if c.ndim == 2 else c
            if src.shape[2] in (2, 4):
                c = np.concatenate([c, src[:, :, -1:]], axis=2)
            values.append(suite.score(prepared, [c])[0]["ssimulacra2"])
        assert all(a > b for a, b in zip(values, values[1:], strict=False)), (p.name, values)


def test_tiny_images_use_the_reference_running_weight_counter():
    # A 9x9 image has two scales (9, then 5): 36 values weighted by the first 36 weights in
    # channel-major order, so Y's values take the weights a six-scale image gives X's scales
    # 2-3. Rebuild the score by hand from the per-scale values.
    from optimizer.metrics.ssimulacra2 import (
        _kernel,
        _to_scale,
        downsample,
        linear_to_xyb,
        srgb_to_linear,
    )

    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    dist = np.clip(ref.astype(int) + rng.integers(-30, 31, ref.shape), 0, 255).astype(np.uint8)
    r, d = to_tensor(ref).double(), to_tensor(dist).double()
    m = SSIMULACRA2("cpu")
    prepared = m.prepare(r)
    assert len(prepared.scales) == 2
    k = _kernel("cpu", torch.float64)
    first, lin = m._scale_values(d, True, prepared.scales[0], k, False)
    assert torch.equal(lin, downsample(srgb_to_linear(d)))
    assert torch.equal(prepared.scales[1], linear_to_xyb(downsample(srgb_to_linear(r))))
    per_scale = [first, m._scale_values(lin, False, prepared.scales[1], k, True)[0]]
    values = torch.stack(per_scale, dim=1)[0]  # (scale, channel, 6)
    flat = values.permute(1, 0, 2).flatten()  # X: s0, s1; Y: s0, s1; B: s0, s1
    expected = _to_scale((flat.abs() * torch.tensor(WEIGHTS[:36]).double()).sum())
    got = m(d, r)["ssimulacra2"].item()
    assert got == pytest.approx(expected.item(), abs=1e-6)
    # Indexing each channel's block as a six-scale image does would give another number.
    blocks = WEIGHTS[0:12] + WEIGHTS[36:48] + WEIGHTS[72:84]
    other = _to_scale((flat.abs() * torch.tensor(blocks).double()).sum()).item()
    assert abs(other - got) > 0.1


def test_smaller_than_8_pixels_is_refused_with_the_reason():
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    assert suite.min_side == 8  # the loader refuses such files by name (test_images.py)
    tiny = np.zeros((7, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 8x8 pixels, got 20x7"):
        suite.score_pair(tiny, tiny)


def test_batched_banded_and_one_at_a_time_agree():
    ref = read_rgb(sample_paths()[1])
    cands = [jpeg(ref, q) for q in (30, 60, 90)]
    whole = SSIMULACRA2("cpu")
    banded = SSIMULACRA2("cpu", band_bytes=1)  # the smallest bands (MIN_BAND_ROWS rows)
    # float64: the banding is exact; float32: rounding differs by ~2e-3 points (measured).
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-2)):
        r = to_tensor(ref).to(dtype)
        batch = torch.cat([to_tensor(c) for c in cands]).to(dtype)
        a = whole(batch, r)["ssimulacra2"]
        b = banded(batch, r)["ssimulacra2"]
        singles = torch.cat([whole(to_tensor(c).to(dtype), r)["ssimulacra2"] for c in cands])
        assert torch.allclose(a, b, atol=tol)
        assert torch.allclose(a, singles, atol=tol)
        assert a[0] < a[1] < a[2]


def test_grey_is_scored_as_rgb_with_equal_channels():
    grey = np.asarray(Image.open(sample_paths()[0]).convert("L"))[:200, :200]
    dist = jpeg(grey, 40)[:, :, 0]  # the helper decodes to RGB; grey JPEG has equal channels
    m = SSIMULACRA2("cpu")
    g = m(to_tensor(dist), to_tensor(grey))["ssimulacra2"].item()
    rgb = m(to_tensor(np.dstack([dist] * 3)), to_tensor(np.dstack([grey] * 3)))["ssimulacra2"]
    assert g == pytest.approx(rgb.item(), abs=1e-4)
    assert g < 90


def test_alpha_is_judged_over_the_reference_greys_and_the_lower_score_counts():
    rgba = load(next(p for p in sample_paths() if "alpha" in p.name)).pixels[:256, :256]
    assert rgba.shape[2] == 4
    dist = np.concatenate([jpeg(rgba[:, :, :3], 50), rgba[:, :, 3:]], axis=2)
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    got = suite.score_pair(rgba, dist)["ssimulacra2"]

    def over(pixels, grey):
        a = pixels[:, :, 3:] / 255.0
        return (pixels[:, :, :3] * a + grey * 255 * (1 - a)).astype(np.float32) / 255.0

    m = SSIMULACRA2("cpu")
    by_hand = []
    for grey in (0.1, 0.9):
        t = [torch.from_numpy(over(p, grey)).permute(2, 0, 1)[None] for p in (dist, rgba)]
        by_hand.append(m(*t)["ssimulacra2"].item())
    assert got == pytest.approx(min(by_hand), abs=1e-3)
    assert abs(by_hand[0] - by_hand[1]) > 0.01  # the background matters, so the test can fail
    # The other metrics keep black and white: a suite with SSIM too prepares four backgrounds.
    both = MetricSuite.build(["ssim", "ssimulacra2"], device="cpu")
    prepared = both.prepare(rgba)
    assert sorted(prepared.backgrounds) == [(0, 0, 0), (0.1,) * 3, (0.9,) * 3, (1, 1, 1)]
    assert both.score(prepared, [dist])[0]["ssimulacra2"] == pytest.approx(got, abs=1e-6)


def test_is_differentiable():
    ref = to_tensor(read_rgb(sample_paths()[1])[:64, :64])
    x = to_tensor(jpeg(read_rgb(sample_paths()[1])[:64, :64], 30)).requires_grad_(True)
    score = SSIMULACRA2("cpu")(x, ref)["ssimulacra2"].sum()
    score.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_in_the_composite_as_score_over_100_clamped():
    spec = CompositeSpec.parse("ssimulacra2=1,ssim=1")
    assert spec.value({"ssimulacra2": 85.0, "ssim": 0.9}) == pytest.approx((0.85 + 0.9) / 2)
    assert spec.value({"ssimulacra2": -12.0, "ssim": 0.5}) == pytest.approx(0.25)
    assert spec.value({"ssimulacra2": 100.0, "ssim": 1.0}) == pytest.approx(1.0)
    alone = MetricSuite.build(["ssimulacra2"], device="cpu")  # none of the seed's components
    assert alone.composite.as_dict() == {"ssimulacra2": 1.0}
    ref = read_rgb(sample_paths()[1])
    s = alone.score_pair(ref, jpeg(ref, 50))
    assert s.composite == pytest.approx(s["ssimulacra2"] / 100)


def test_compiled_kernels_give_the_same_numbers():
    ref = read_rgb(sample_paths()[1])[:96, :128]
    cands = [jpeg(ref, 40), jpeg(ref, 80)]
    r, batch = to_tensor(ref), torch.cat([to_tensor(c) for c in cands])
    eager = SSIMULACRA2("cpu")(batch, r)["ssimulacra2"]
    with _no_compile_failure():
        fused = SSIMULACRA2("cpu", compile=True)(batch, r)["ssimulacra2"]
    assert torch.allclose(eager, fused, atol=1e-3)


class _no_compile_failure:
    """Fail if the compiled path fell back to eager (the test would prove nothing then)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self._log = self._cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        failed = [w for w in self._log if "torch.compile failed" in str(w.message)]
        assert not failed, failed[0].message


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    ref = read_rgb(sample_paths()[1])[:64, :64]
    r, c = to_tensor(ref), to_tensor(jpeg(ref, 40))
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        got = SSIMULACRA2("cpu", compile=True)(c, r)["ssimulacra2"]
    assert got.item() == pytest.approx(SSIMULACRA2("cpu")(c, r)["ssimulacra2"].item(), abs=1e-5)


def test_the_inplace_fast_path_equals_the_differentiable_one():
    ref = read_rgb(sample_paths()[2])[:120, :150]
    cands = torch.cat([to_tensor(jpeg(ref, q)) for q in (25, 70)])
    r = to_tensor(ref)
    m = SSIMULACRA2("cpu")
    with torch.no_grad():  # candidates need no gradient: the in-place path
        fast = m(cands, r)["ssimulacra2"]
    slow = m(cands.clone().requires_grad_(True), r)["ssimulacra2"].detach()
    assert torch.allclose(fast, slow, atol=1e-3)
    assert not torch.equal(fast, torch.full_like(fast, 100.0))
