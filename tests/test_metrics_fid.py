"""FID and KID against their references: pytorch-fid (features, Fréchet distance) and
torchmetrics (KID), with a *randomly initialised* FID Inception saved under its real file name.

pytorch-fid's weights cannot be downloaded here, so `fid_state` builds `fid_inception_v3`'s own
architecture (its download patched out), fills every tensor from a seeded generator and saves it
as `pt_inception-2015-12-05-6726825d.pth`; the production loader reads it as it would the real
file, and pytorch-fid's `InceptionV3([3])` is built from the same tensors as the reference.
"""

from __future__ import annotations

import tracemalloc
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_fid import inception as pfi
from pytorch_fid.fid_score import calculate_frechet_distance
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from optimizer.metrics.set_metrics import (
    FEATURE_DIM,
    FID_WEIGHTS_FILE,
    FIDStats,
    InceptionFeatures,
    KIDSample,
    SetScorer,
    SetStats,
    WeightsMissingError,
    fid,
    kid,
    kid_subset_indices,
    load_fid_inception,
    parse_set_metrics,
    poly_mmd2,
    resize_bilinear,
)

from ._random_weights import random_fid_state
from .conftest import SAMPLES


@pytest.fixture(scope="module")
def fid_state():
    return random_fid_state()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, fid_state):
    d = tmp_path_factory.mktemp("fid_weights")
    torch.save(fid_state, d / FID_WEIGHTS_FILE)
    return d


@pytest.fixture(scope="module")
def reference(fid_state):
    """pytorch-fid's own feature extractor, its download answered with the same tensors."""
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: fid_state):
        return pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()


@pytest.fixture(scope="module")
def extractor(weights_dir):
    return InceptionFeatures("cpu", weights_dir=weights_dir)


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLES / name).convert("RGB"))


def _unit(pixels: np.ndarray) -> torch.Tensor:
    # As pytorch-fid reads images: PIL RGB, then ToTensor (uint8 / 255, float32, CHW).
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255


# -- the network and its features ---------------------------------------------------------------


def test_loader_overwrites_every_tensor(weights_dir, fid_state):
    net = load_fid_inception(weights_dir, allow_download=False)
    own = net.state_dict()
    assert own.keys() == fid_state.keys()
    for name, t in own.items():
        assert torch.equal(t, fid_state[name]), name
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_features_equal_pytorch_fid(extractor, reference):
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),  # upscaled, odd sizes
        _rgb("chelsea.png"),  # 300 x 451
        _rgb("rocket.png"),  # 427 x 640
    ]
    ours = extractor.features(images)
    assert ours.shape == (3, FEATURE_DIM) and ours.dtype == torch.float64
    with torch.inference_mode():
        theirs = torch.cat(
            [reference(_unit(im))[0].squeeze(3).squeeze(2) for im in images]
        ).double()
    scale = float(theirs.abs().max())
    # Not degenerate: the features differ between images and are not NaN.
    assert torch.isfinite(theirs).all() and float(theirs.std(0).mean()) > 1e-3 * scale
    # Measured: max |difference| 4.3e-6 with features up to 7.3 (6e-7 of the scale); 2.9e-6
    # with the contiguous layout pytorch-fid uses (ours is channels-last on the CPU).
    np.testing.assert_allclose(
        ours.cpu().numpy(), theirs.cpu().numpy(), rtol=1e-5, atol=1e-5 * scale
    )


@pytest.mark.parametrize(
    "shape", [(37, 53), (300, 451), (427, 640), (1000, 1500), (1, 1), (2, 900), (4000, 7)]
)
def test_resize_equals_interpolate(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = resize_bilinear(pixels)
    theirs = F.interpolate(_unit(pixels), (299, 299), mode="bilinear", align_corners=False)
    # Measured: at most 1.2e-7 (one float32 step); plain float32 index arithmetic gave 1.3e-5.
    np.testing.assert_allclose(ours, theirs[0].cpu().numpy(), rtol=0, atol=1e-6)


def test_resize_grey_and_alpha():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (61, 45), dtype=np.uint8)
    as_rgb = resize_bilinear(np.repeat(grey[:, :, None], 3, axis=2))
    assert np.array_equal(resize_bilinear(grey), as_rgb)
    assert np.array_equal(resize_bilinear(grey[:, :, None]), as_rgb)

    rgb = rng.integers(0, 256, (61, 45, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (61, 45, 1), dtype=np.uint8)
    alpha[:20] = 0
    rgba = np.concatenate([rgb, alpha], axis=2)
    a = alpha / 255.0
    over_white = torch.from_numpy((rgb / 255.0 * a + (1 - a)).astype(np.float32))
    over_white = over_white.permute(2, 0, 1)[None]
    expected = F.interpolate(over_white, (299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_bilinear(rgba), expected[0].cpu().numpy(), rtol=0, atol=1e-6)
    # Pixels nobody can see do not count.
    changed = rgba.copy()
    changed[:20, :, :3] = 255 - changed[:20, :, :3]
    assert np.array_equal(resize_bilinear(changed), resize_bilinear(rgba))
    # Opaque alpha is no alpha; grey + alpha is composited too.
    opaque = np.concatenate([rgb, np.full_like(alpha, 255)], axis=2)
    assert np.array_equal(resize_bilinear(opaque), resize_bilinear(rgb))
    la = np.concatenate([grey[:, :, None], np.zeros_like(grey)[:, :, None]], axis=2)
    assert np.array_equal(resize_bilinear(la), np.ones((3, 299, 299), np.float32))


def test_resize_of_45_megapixels_gathers_only_what_it_reads():
    # A virtual 8256 x 5504 RGB image (broadcast: no memory of its own). Any full-size copy
    # would allocate at least 136 MB (uint8), a float32 one 545 MB.
    row = np.random.default_rng(3).integers(0, 256, (1, 8256, 3), dtype=np.uint8)
    huge = np.broadcast_to(row, (5504, 8256, 3))
    tracemalloc.start()
    try:
        out = resize_bilinear(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (3, 299, 299)
    assert peak < 20e6, f"resize peaked at {peak / 1e6:.0f} MB"
    small = np.ascontiguousarray(huge[:2])  # every row is the same, so 2 rows resize alike
    theirs = F.interpolate(_unit(small), (299, 299), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(out[:, :1], theirs[0, :, :1].cpu().numpy(), atol=1e-6)


def test_features_check_their_input(extractor):
    with pytest.raises(TypeError, match="uint8"):
        extractor.features([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="C 1..4"):
        extractor.features([np.zeros((8, 8, 5), np.uint8)])
    assert extractor.features([]).shape == (0, FEATURE_DIM)


# -- FID ----------------------------------------------------------------------------------------


def _gaussians(n=300, d=64):
    rng = np.random.default_rng(4)
    mix = rng.normal(size=(d, d)) / d**0.5
    a = rng.normal(size=(n, d)) @ mix + 3.0
    b = rng.normal(size=(n, d)) @ (mix + 0.1 * np.eye(d)) + 3.2
    return a, b


def test_fid_stats_equal_numpy_and_merge():
    a, _ = _gaussians()
    a = a + 1e4  # an offset far above the spread: a naive sum of squares would lose digits
    whole = FIDStats()
    for chunk in np.array_split(a, 7):
        whole.add(torch.from_numpy(chunk))
    np.testing.assert_allclose(whole.mean(), a.mean(axis=0), rtol=1e-14)
    cov = np.cov(a, rowvar=False)
    # Measured: 5e-13 of the largest entry (1e-12 after the merge).
    np.testing.assert_allclose(whole.cov(), cov, rtol=0, atol=1e-11 * np.abs(cov).max())
    halves = FIDStats().add(a[:100]).merge(FIDStats().add(a[100:]))
    assert halves.n == len(a)
    np.testing.assert_allclose(halves.cov(), cov, rtol=0, atol=1e-11 * np.abs(cov).max())
    with pytest.raises(ValueError, match="at least 2"):
        FIDStats().add(a[:1]).cov()


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
@pytest.mark.parametrize(("n", "d"), [(300, 64), (100, 256)])
def test_fid_equals_pytorch_fid(n, d):
    """Our eigendecomposition form against pytorch-fid's sqrtm, also when n < d (the covariances
    are then singular, as with any tuning set of fewer than 2048 images)."""
    a, b = _gaussians(n=n, d=d)
    ours = fid(FIDStats().add(a), FIDStats().add(b))
    theirs = calculate_frechet_distance(
        a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False)
    )
    assert ours > 1.0
    assert ours == pytest.approx(theirs, rel=1e-6)
    # A set against itself: 0 up to rounding of the traces (the terms that cancel).
    scale = 2 * np.trace(np.cov(a, rowvar=False))
    assert abs(fid(FIDStats().add(a), FIDStats().add(a))) < 1e-7 * scale


def test_fid_needs_two_rows_a_side_and_one_dimension():
    a, b = _gaussians()
    with pytest.raises(ValueError, match="at least 2 images in each set; the second has 1"):
        fid(FIDStats().add(a), FIDStats().add(b[:1]))
    with pytest.raises(ValueError, match="dimension"):
        fid(FIDStats().add(a), FIDStats().add(b[:, :10]))


# -- KID ----------------------------------------------------------------------------------------


def test_each_kid_subset_equals_torchmetrics_poly_mmd():
    a, b = _gaussians(n=120, d=32)
    result = kid(a, b, subsets=5, subset_size=50, seed=7)
    assert result.subset_size == 50 and len(result.values) == 5
    worst = 0.0
    for value, (i, j) in zip(
        result.values, kid_subset_indices(120, 120, 50, 5, seed=7), strict=True
    ):
        theirs = float(poly_mmd(torch.from_numpy(a[i]), torch.from_numpy(b[j])))
        assert poly_mmd2(a[i], b[j]) == value
        worst = max(worst, abs(value - theirs) / abs(theirs))
    assert worst < 1e-10  # measured: 1e-15
    assert len(set(result.values)) == 5  # the subsets differ
    assert result.mean == pytest.approx(np.mean(result.values), rel=1e-12)
    # torchmetrics reports the population standard deviation (std(unbiased=False)).
    assert result.std == pytest.approx(np.std(result.values, ddof=0), rel=1e-12)
    assert kid(a, b, subsets=5, subset_size=50, seed=7) == result


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_equals_torchmetrics_kernel_inception_distance():
    a, b = _gaussians(n=80, d=48)
    tm = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=1, subset_size=80)
    tm.update(torch.from_numpy(a), real=True)
    tm.update(torch.from_numpy(b), real=False)
    mean, std = tm.compute()
    ours = kid(a, b, subsets=1, subset_size=80)
    assert ours.mean == pytest.approx(float(mean), rel=1e-6)  # measured: 1e-15
    assert ours.std == float(std) == 0.0
    # More subsets: torchmetrics' own draws, its std is the population one of its values.
    torch.manual_seed(0)
    tm = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=4, subset_size=30)
    tm.update(torch.from_numpy(a), real=True)
    tm.update(torch.from_numpy(b), real=False)
    mean, std = tm.compute()
    torch.manual_seed(0)
    values = []
    for _ in range(4):
        i, j = torch.randperm(80)[:30], torch.randperm(80)[:30]
        values.append(poly_mmd2(a[i.cpu().numpy()], b[j.cpu().numpy()]))
    assert float(mean) == pytest.approx(np.mean(values), rel=1e-9)
    assert float(std) == pytest.approx(np.std(values, ddof=0), rel=1e-9)


def test_kid_on_small_sets_uses_what_there_is():
    a, b = _gaussians(n=40, d=16)
    r = kid(a, b[:30], subsets=10, subset_size=1000)
    assert r.subset_size == 30 and r.subsets == 10
    assert any("fewer than the 1000" in n for n in r.notes)
    same = kid(a[:30], b[:30], subsets=10, subset_size=1000)
    assert same.std == 0.0 and same.mean == poly_mmd2(a[:30], b[:30])
    assert any("whole of both sets" in n for n in same.notes)
    with pytest.raises(ValueError, match="at least 2 images"):
        kid(a[:1], b)


def test_reservoir_keeps_all_then_exactly_capacity_and_is_deterministic():
    rows = np.arange(500, dtype=float)[:, None]
    small = KIDSample(capacity=600, seed=1).add(rows[:300]).add(rows[300:])
    assert np.array_equal(small.rows, rows)
    s1 = KIDSample(capacity=100, seed=1)
    s2 = KIDSample(capacity=100, seed=1)
    for chunk in np.array_split(rows, 9):
        s1.add(chunk)
        s2.add(chunk)
    assert s1.seen == 500 and s1.rows.shape == (100, 1)
    assert np.array_equal(s1.rows, s2.rows)
    assert len(np.unique(s1.rows)) == 100  # distinct rows: no row kept twice
    other = KIDSample(capacity=100, seed=2).add(rows)
    assert not np.array_equal(np.sort(other.rows, axis=0), np.sort(s1.rows, axis=0))


def test_reservoir_is_uniform():
    # 2000 of 20000 rows: each tenth of the stream should give about 200 (sd about 13).
    stream = np.arange(20_000, dtype=float)[:, None]
    sample = KIDSample(capacity=2000, seed=3)
    for chunk in np.array_split(stream, 13):
        sample.add(chunk)
    per_tenth = np.bincount((sample.rows[:, 0] // 2000).astype(int), minlength=10)
    assert per_tenth.sum() == 2000
    assert per_tenth.min() > 150 and per_tenth.max() < 250, per_tenth
    # Merging keeps uniformity: 1/4 of the union came from the first sample.
    a = KIDSample(capacity=2000, seed=4).add(stream[:5000])
    b = KIDSample(capacity=2000, seed=5).add(stream[5000:])
    a.merge(b)
    assert a.seen == 20_000 and a.rows.shape == (2000, 1)
    from_a = int((a.rows[:, 0] < 5000).sum())
    assert 400 < from_a < 600, from_a
    both = (
        KIDSample(capacity=100, seed=0)
        .add(stream[:30])
        .merge(KIDSample(capacity=100, seed=1).add(stream[30:60]))
    )
    assert np.array_equal(both.rows, stream[:60])


# -- weights ------------------------------------------------------------------------------------


def test_missing_weights_name_the_file_and_folder(tmp_path):
    with pytest.raises(WeightsMissingError) as err:
        load_fid_inception(tmp_path)
    assert FID_WEIGHTS_FILE in str(err.value) and str(tmp_path) in str(err.value)
    assert "--set-metrics" in str(err.value)


def test_disabled_downloads_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsMissingError, match="downloads are disabled") as err:
        SetScorer("kid", device="cpu", allow_download=False)
    assert FID_WEIGHTS_FILE in str(err.value)


def test_garbage_file_could_not_be_read(tmp_path):
    (tmp_path / FID_WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMissingError, match="could not be read") as err:
        load_fid_inception(tmp_path)
    assert FID_WEIGHTS_FILE in str(err.value)


def test_wrong_or_missing_tensors_are_named(tmp_path, fid_state):
    bad = dict(fid_state)
    bad["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(3, 3)
    (tmp_path / "shape").mkdir()
    torch.save(bad, tmp_path / "shape" / FID_WEIGHTS_FILE)
    with pytest.raises(WeightsMissingError, match=r"'Mixed_7c.branch_pool.conv.weight' has shape"):
        load_fid_inception(tmp_path / "shape")
    lacking = {k: v for k, v in fid_state.items() if k != "fc.bias"}
    (tmp_path / "lacking").mkdir()
    torch.save(lacking, tmp_path / "lacking" / FID_WEIGHTS_FILE)
    with pytest.raises(WeightsMissingError, match="lacks 'fc.bias'"):
        load_fid_inception(tmp_path / "lacking")


# -- orchestration ------------------------------------------------------------------------------


def test_parse_set_metrics():
    assert parse_set_metrics("fid,kid") == ("fid", "kid")
    assert parse_set_metrics(" KID , fid,kid") == ("kid", "fid")
    with pytest.raises(ValueError, match="unknown set metric 'lpips'; choose from fid, kid"):
        parse_set_metrics("fid,lpips")
    with pytest.raises(ValueError, match="choose from fid, kid"):
        parse_set_metrics(" , ")


def test_paired_kid_is_zero_for_a_set_against_itself_where_the_independent_form_is_not():
    """An output is made from its original: the pairs are not independent. torchmetrics' cross
    term counts k(x_i, y_i), which makes a set against itself score below 0; the paired
    U-statistic leaves those terms out."""
    a, b = _gaussians(n=12, d=16)
    assert poly_mmd2(a, a, paired=True) == pytest.approx(0.0, abs=1e-9)
    assert float(poly_mmd(torch.from_numpy(a), torch.from_numpy(a))) < -0.1
    # The U-statistic written out: the mean over i != j of h(z_i, z_j).
    g = 1.0 / a.shape[1]

    def k(u, v):
        return (u @ v * g + 1) ** 3

    m = len(a)
    h = [
        k(a[i], a[j]) + k(b[i], b[j]) - k(a[i], b[j]) - k(a[j], b[i])
        for i in range(m)
        for j in range(m)
        if i != j
    ]
    assert poly_mmd2(a, b, paired=True) == pytest.approx(np.mean(h), rel=1e-12)
    # kid(paired=True) draws the same rows of both sets in each subset.
    r = kid(a, b, subsets=4, subset_size=5, seed=3, paired=True)
    for value, (i, _) in zip(r.values, kid_subset_indices(12, 12, 5, 4, seed=3), strict=True):
        assert value == pytest.approx(poly_mmd2(a[i], b[i], paired=True), rel=1e-12)
    with pytest.raises(ValueError, match="one size"):
        kid(a, b[:5], paired=True)


def test_the_kid_sample_keeps_pairs_together():
    """Beyond its capacity the reservoir drops pairs whole: every kept output row is still the
    one made from the kept original beside it."""
    stats = SetStats(("kid",), kid_capacity=20, kid_subset_size=10, kid_subsets=3)
    rng = np.random.default_rng(1)
    for _ in range(5):
        ref = rng.normal(size=(13, 8))
        stats.add_features(ref, ref + 1.0)
    ref, cand = stats.kid_rows()
    assert len(ref) == 20 and stats.n == 65
    np.testing.assert_allclose(cand - ref, 1.0)
    assert any("uniform sample of 20 of the 65 pairs" in n for n in stats.result()["notes"])


def test_set_stats_notes_for_small_sets():
    a, b = _gaussians(n=40, d=16)
    one = SetStats()
    one.add_features(a[:1], b[:1])
    r = one.result()
    assert r["n"] == 1 and r["fid"] is None and r["kid_mean"] is None
    assert "need at least 2" in r["notes"][0]

    small = SetStats(kid_subsets=5, kid_subset_size=1000)
    small.add_features(a[:10], b[:10])
    r = small.result()
    assert r["fid"] == pytest.approx(fid(FIDStats().add(a[:10]), FIDStats().add(b[:10])))
    assert r["kid_mean"] == pytest.approx(poly_mmd2(a[:10], b[:10], paired=True))
    assert r["kid_subset_size"] == 10 and r["kid_subsets"] == 5
    text = " ".join(r["notes"])
    assert "FID from 10 images: the 16-dimension covariance needs more than 16" in text
    assert "KID is unbiased at any size: read KID" in text

    # Two workers' halves merge into the whole; above d images FID is full rank, no such note.
    left, right = SetStats(kid_subset_size=40), SetStats(kid_subset_size=40)
    left.add_features(a[:25], b[:25])
    right.add_features(a[25:], b[25:])
    whole = SetStats(kid_subset_size=40)
    whole.add_features(a, b)
    merged, expected = left.merge(right).result(), whole.result()
    assert merged["n"] == 40 and merged["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    assert merged["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-9)
    assert not any("FID from" in n for n in merged["notes"])


def test_set_scorer_end_to_end(weights_dir):
    # KID only: FID's 2048 x 2048 matrix square root takes a minute on a 2-core machine.
    scorer = SetScorer("kid", device="cpu", weights_dir=weights_dir, kid_subsets=3)
    a, b, c = (
        _rgb("coffee.png"),
        _rgb("chelsea.png"),
        np.asarray(Image.open(SAMPLES / "tiger_grayscale_cc0.png")),
    )
    scorer.add(a, a)
    scorer.add_batch([b], [c])
    ref, cand = scorer.stats.kid_rows()
    assert ref.shape == cand.shape == (2, FEATURE_DIM)
    assert np.array_equal(ref[0], cand[0]) and not np.array_equal(ref[1], cand[1])
    r = scorer.result()
    assert r["n"] == 2 and r["fid"] is None and r["kid_subset_size"] == 2
    assert r["kid_mean"] == pytest.approx(poly_mmd2(ref, cand, paired=True))
    assert r["kid_std"] == 0.0
    assert any("FID" not in n and "fewer than the 1000" in n for n in r["notes"])
    d = scorer.describe()
    assert FID_WEIGHTS_FILE in d["features"] and "(x·y/2048 + 1)^3" in d["kid"]
    assert "align_corners=False" in d["resize"] and "fid" not in d
    with pytest.raises(ValueError, match="2 references but 1 candidates"):
        scorer.add_batch([a, b], [c])


def test_pytorch_fid_module_can_be_given(extractor, fid_state):
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: fid_state):
        theirs = pfi.InceptionV3([3])
    given = InceptionFeatures("cpu", network=theirs)
    assert given.source == "a network given by the caller"
    a = list(extractor.blocks.state_dict().values())
    b = list(given.blocks.state_dict().values())
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    two_blocks = torch.nn.Module()
    two_blocks.blocks = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    with pytest.raises(ValueError, match="all four blocks"):
        InceptionFeatures("cpu", network=two_blocks)
    with pytest.raises(ValueError, match="unknown set metric 'lpips'"):
        SetScorer("fid,lpips", device="cpu", network=theirs)
