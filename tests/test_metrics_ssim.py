"""SSIM, MS-SSIM and PSNR agree with skimage and pytorch-msssim; gradients flow."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_msssim
import torch
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim
from skimage.metrics import peak_signal_noise_ratio

from optimizer.metrics._base import percentile
from optimizer.metrics.psnr import PSNR, psnr
from optimizer.metrics.ssim import MS_SSIM_WEIGHTS, MSSSIM, SSIM, ms_ssim, ms_ssim_levels, ssim

from .conftest import blur, jpeg, noise, read_rgb, sample_paths, skimage_ssim, to_tensor

DISTORTIONS = {
    "jpeg30": lambda a: jpeg(a, 30),
    "jpeg75": lambda a: jpeg(a, 75),
    "blur": blur,
    "noise": noise,
}
PHOTOS = ["astronaut.png", "chelsea.png", "graphic_text.png", "twins_cc0.png"]


def _pairs():
    for p in sample_paths():
        if p.name in PHOTOS:
            ref = read_rgb(p)
            for name, fn in DISTORTIONS.items():
                yield pytest.param(ref, fn(ref), id=f"{p.stem}-{name}")
    rng = np.random.default_rng(1)
    for i in range(3):
        a = rng.integers(0, 256, (190 + i * 7, 171 + i * 5, 3), dtype=np.uint8)
        b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
        yield pytest.param(a, b, id=f"random{i}")


@pytest.mark.parametrize(("ref", "dist"), list(_pairs()))
def test_ssim_msssim_psnr_match_references(ref, dist):
    x, y = to_tensor(dist), to_tensor(ref)
    assert abs(ssim(x, y).item() - skimage_ssim(ref, dist)) < 1e-4
    assert abs(ms_ssim(x, y).item() - pytorch_msssim.ms_ssim(x, y, data_range=1).item()) < 1e-4
    expected_psnr = peak_signal_noise_ratio(ref / 255.0, dist / 255.0, data_range=1)
    assert abs(psnr(x, y).item() - expected_psnr) < 1e-3


def test_grey_ssim_matches_skimage():
    ref = np.asarray(
        __import__("PIL.Image").Image.open(sample_paths()[0].parent / "tiger_grayscale_cc0.png")
    )
    dist = jpeg(np.repeat(ref[:, :, None], 3, 2), 40)[:, :, 0]
    expected = skimage_ssim(ref, dist)
    assert abs(ssim(to_tensor(dist), to_tensor(ref)).item() - expected) < 1e-4


def test_batch_equals_one_by_one_and_bands_change_nothing():
    ref = read_rgb(sample_paths()[0])[:200, :230]
    cands = [jpeg(ref, q) for q in (20, 50, 90)]
    x, y = torch.cat([to_tensor(c) for c in cands]), to_tensor(ref)
    batched = SSIM("cpu")(x, y)
    banded = SSIM("cpu", band_bytes=1)(x, y)  # one output row per band
    for i, c in enumerate(cands):
        single = SSIM("cpu")(to_tensor(c), y)
        assert abs(batched["ssim"][i].item() - single["ssim"].item()) < 1e-6
        assert abs(batched["ssim_p5"][i].item() - single["ssim_p5"].item()) < 1e-6
    assert torch.allclose(batched["ssim"], banded["ssim"], atol=1e-6)
    assert torch.allclose(
        MSSSIM("cpu")(x, y)["ms_ssim"], MSSSIM("cpu", band_bytes=1)(x, y)["ms_ssim"], atol=1e-6
    )


def test_identical_images_are_perfect():
    ref = to_tensor(read_rgb(sample_paths()[1]))
    assert ssim(ref, ref).item() == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(ref, ref).item() == pytest.approx(1.0, abs=1e-6)
    assert SSIM("cpu")(ref, ref)["ssim_p5"].item() == pytest.approx(1.0, abs=1e-6)
    assert psnr(ref, ref).item() == float("inf")


def _msssim_from_pytorch_msssim_parts(x, y, levels):
    """MS-SSIM over `levels` scales from pytorch-msssim's own `_ssim`, weights renormalised."""
    win = _fspecial_gauss_1d(11, 1.5).repeat(x.shape[1], 1, 1, 1)
    w = torch.tensor(MS_SSIM_WEIGHTS[:levels])
    w = w / w.sum()
    vals = []
    for i in range(levels):
        s, cs = _ssim(x, y, win=win, data_range=1, size_average=False)
        if i < levels - 1:
            vals.append(torch.relu(cs))
            pad = [d % 2 for d in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, 2, padding=pad)
            y = torch.nn.functional.avg_pool2d(y, 2, padding=pad)
    vals.append(torch.relu(s))
    return torch.prod(torch.stack(vals) ** w.view(-1, 1, 1), dim=0).mean(dim=1)


@pytest.mark.parametrize(
    ("h", "w", "levels"),
    [(160, 300, 4), (97, 131, 4), (80, 90, 3), (41, 60, 3), (40, 50, 2), (11, 30, 1)],
)
def test_small_images_use_fewer_scales_with_renormalised_weights(h, w, levels):
    assert ms_ssim_levels(h, w) == levels
    ref = read_rgb(sample_paths()[1])[:h, :w]
    dist = noise(ref, 12)
    x, y = to_tensor(dist), to_tensor(ref)
    expected = _msssim_from_pytorch_msssim_parts(x, y, levels)
    # float32 blurs summed in another order (banded matrix products vs conv2d): up to 1e-5 on
    # the one-row map of 11x30; a wrong scale count or weight is off by 1e-2 or more.
    assert abs(ms_ssim(x, y).item() - expected.item()) < 3e-5


def test_five_scales_from_161():
    assert ms_ssim_levels(161, 400) == 5 and ms_ssim_levels(160, 400) == 4


@pytest.mark.parametrize("metric", [SSIM, MSSSIM, PSNR])
def test_differentiable(metric):
    ref = to_tensor(read_rgb(sample_paths()[1])[:180, :180])
    x = to_tensor(jpeg(read_rgb(sample_paths()[1])[:180, :180], 30)).requires_grad_(True)
    m = metric("cpu")
    out = m(x, ref)[m.outputs[0].name]
    (-out.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_worst_region_sees_a_ruined_patch():
    ref = read_rgb(sample_paths()[1])
    dist = ref.copy()
    dist[40:136, 40:136] = noise(ref[40:136, 40:136], 60)  # ruin ~7% of the 32px tiles
    out = SSIM("cpu")(to_tensor(dist), to_tensor(ref))
    assert out["ssim"].item() > 0.9  # the mean barely notices
    assert out["ssim_p5"].item() < 0.5  # the worst region does


def test_percentile_matches_numpy_by_selection_and_by_sorting_alike():
    v = torch.rand(3, 1001)
    for q in (0.0, 5.0, 50.0, 95.0, 100.0):
        expected = np.percentile(v.cpu().numpy(), q, axis=1)
        select = percentile(v, q, method="select")
        assert np.allclose(select.cpu().numpy(), expected, atol=1e-6)
        # CUDA's way (one sort a row): the same order statistics, so the same values exactly
        assert torch.equal(percentile(v, q, method="sort"), select)
    with pytest.raises(ValueError, match="'select' or 'sort'"):
        percentile(v, 5.0, method="median")


def test_bad_inputs_raise_clear_errors():
    y = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssim(y * 255, y)
    with pytest.raises(ValueError, match="NCHW"):
        ssim(y[0], y)
    with pytest.raises(ValueError, match="differs"):
        ssim(torch.rand(1, 3, 20, 21), y)
    with pytest.raises(TypeError, match="floating"):
        ssim((y * 255).to(torch.uint8), y)
