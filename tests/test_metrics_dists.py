"""DISTS against the authors' `dists-pytorch` package, with a *randomly initialised* VGG16 saved
under torchvision's real checkpoint name (no pretrained weights can be downloaded here).

The reference `DISTS_pytorch.DISTS` builds its VGG16 with `torchvision.models.vgg16(pretrained=
True)`; the tests answer that call with the same random network our loader reads from the
checkpoint file, and give it the alpha/beta the package ships (the file our loader reads too).
"""

from __future__ import annotations

import io
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from optimizer.metrics import MetricSuite
from optimizer.metrics.catalog import CompositeSpec
from optimizer.metrics.dists_metric import (
    DISTS,
    alpha_beta_file,
    load_dists_network,
    vgg16_weights_file,
)
from optimizer.metrics.weights import WeightsMissingError
from optimizer.targets import parse_target

from ._random_weights import random_vgg16_features, save_vgg16
from .conftest import read_rgb, sample_paths, to_tensor


@pytest.fixture(scope="module")
def features():
    return random_vgg16_features(seed=1)


@pytest.fixture(scope="module")
def vgg_dir(tmp_path_factory, features):
    d = tmp_path_factory.mktemp("vgg")
    save_vgg16(d, features)
    return d


@pytest.fixture(scope="module")
def reference(features):
    """The authors' module, its VGG16 download answered with `features`, its alpha/beta the
    package's own file."""
    from DISTS_pytorch.DISTS_pt import DISTS as Reference

    class Pretrained:  # what models.vgg16(pretrained=True) returns, as far as DISTS reads it
        pass

    fake = Pretrained()
    fake.features = features
    with mock.patch("torchvision.models.vgg16", lambda *a, **k: fake):
        ref = Reference(load_weights=False)
    ab = torch.load(alpha_beta_file(), weights_only=True)
    ref.alpha.data, ref.beta.data = ab["alpha"], ab["beta"]
    return ref.eval()


@pytest.fixture(scope="module")
def metric(vgg_dir):
    return DISTS("cpu", weights_dir=vgg_dir)


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def _pairs():
    """(reference, candidates) at several sizes, odd ones included: photo crops against JPEGs
    of them and against noise, and a random image against a blurred copy."""
    photo = read_rgb(sample_paths()[1])
    out = []
    for h, w in ((64, 64), (97, 131), (33, 250), (151, 77)):
        ref = np.ascontiguousarray(photo[:h, :w])
        cands = [_jpeg(ref, 10), _jpeg(ref, 60)]
        rng = np.random.default_rng(h)
        cands.append(np.clip(ref + rng.normal(0, 25, ref.shape), 0, 255).astype(np.uint8))
        out.append((to_tensor(ref), torch.cat([to_tensor(c) for c in cands])))
    rng = np.random.default_rng(0)
    ref = torch.from_numpy(rng.random((1, 3, 45, 61), dtype=np.float32))
    blurred = torch.nn.functional.avg_pool2d(ref, 3, 1, 1, count_include_pad=False)
    out.append((ref, blurred))
    return out


def test_equals_the_reference_package(metric, reference):
    worst = 0.0
    seen = []
    for ref, cands in _pairs():
        ours = metric(cands, ref)["dists"]
        with torch.no_grad():
            theirs = reference(cands, ref.expand_as(cands)).reshape(-1)
        worst = max(worst, float((ours - theirs).abs().max()))
        seen += theirs.tolist()
    assert worst < 1e-5, worst  # measured: 1.2e-7
    # The pairs are not trivial: the numbers spread (random weights, so small, but not equal).
    assert max(seen) > 3 * min(seen) > 0


def test_identical_images_score_zero_and_worse_images_more(metric):
    ref = read_rgb(sample_paths()[1])[:96, :128]
    suite = MetricSuite([metric], device="cpu")
    prepared = suite.prepare(ref)
    same, q60, q5 = (
        s["dists"] for s in suite.score(prepared, [ref, _jpeg(ref, 60), _jpeg(ref, 5)])
    )
    assert abs(same) < 1e-6
    assert 0 < q60 < q5


def test_grey_is_scored_as_rgb(metric):
    grey = read_rgb(sample_paths()[1])[:64, :80, :1]
    cand = _jpeg(np.repeat(grey, 3, axis=2), 20)[:, :, :1]
    a = metric(to_tensor(cand), to_tensor(grey))["dists"]
    b = metric(to_tensor(cand).expand(-1, 3, -1, -1), to_tensor(grey).expand(-1, 3, -1, -1))
    assert torch.allclose(a, b["dists"], atol=1e-7)


def test_gradient_equals_the_reference_gradient(metric, reference):
    ref = to_tensor(read_rgb(sample_paths()[1])[:48, :64])
    cand = to_tensor(_jpeg(read_rgb(sample_paths()[1])[:48, :64], 15))
    x = cand.clone().requires_grad_(True)
    metric.score(x, metric.prepare(ref))["dists"].sum().backward()
    y = cand.clone().requires_grad_(True)
    reference(y, ref, require_grad=True).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    scale = float(y.grad.abs().max())
    assert float((x.grad - y.grad).abs().max()) < 1e-4 * scale


def _tiling_case():
    ref = read_rgb(sample_paths()[-3])[:120, :301]  # odd width; 2 x 5 tiles of 64 below
    return to_tensor(ref), to_tensor(_jpeg(ref, 10))


def test_tiled_equals_whole_image(metric):
    """The network reaches 105 px (13 convolutions and 4 pools): with a margin of at least 112,
    each tile's core sees what it sees in the whole image, and the summed statistics are the
    whole image's up to rounding."""
    ref, cand = _tiling_case()
    whole = metric(cand, ref)["dists"]
    tiled = DISTS("cpu", network=metric.network, tile=64, margin=112)
    assert tiled._is_tiled(120, 301)
    got = tiled(cand, ref)["dists"]
    assert torch.allclose(got, whole, rtol=1e-5, atol=0), (got, whole)


def test_a_short_margin_shows_at_the_seams(metric):
    """The check above could fail: with 16 px of context the tiles' edges differ."""
    ref, cand = _tiling_case()
    whole = metric(cand, ref)["dists"]
    short = DISTS("cpu", network=metric.network, tile=64, margin=16)(cand, ref)["dists"]
    assert float((short - whole).abs().max()) > 1e-3 * float(whole.abs().max())


def test_tile_sizes_are_checked(metric):
    with pytest.raises(ValueError, match="multiples of 16"):
        DISTS("cpu", network=metric.network, tile=100)


# -- weights ------------------------------------------------------------------------------------


def test_missing_vgg16_in_explicit_folder(tmp_path):
    with pytest.raises(WeightsMissingError) as e:
        DISTS("cpu", weights_dir=tmp_path)
    msg = str(e.value)
    assert vgg16_weights_file()[0] == "vgg16-397923af.pth"
    assert "vgg16-397923af.pth" in msg and str(tmp_path) in msg
    assert "leave DISTS out" in msg and "--metrics ssim,ms_ssim,psnr,ssimulacra2" in msg


def test_missing_vgg16_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsMissingError, match="downloads are disabled"):
        DISTS("cpu", allow_download=False)


def test_vgg16_from_the_torch_cache(tmp_path, monkeypatch, vgg_dir, metric):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    name = vgg16_weights_file()[0]
    (hub / "checkpoints" / name).write_bytes((vgg_dir / name).read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    net = load_dists_network(allow_download=False)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(net(x)[-1], metric.network(x)[-1])


def test_corrupt_or_wrong_vgg16(tmp_path, features):
    name = vgg16_weights_file()[0]
    (tmp_path / name).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMissingError, match="could not be read"):
        load_dists_network(tmp_path)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save({**state, "features.28.weight": torch.zeros(3)}, tmp_path / name)
    with pytest.raises(WeightsMissingError, match=r"'features.28.weight' has shape \(3,\)"):
        load_dists_network(tmp_path)
    del state["features.0.bias"]
    torch.save(state, tmp_path / name)
    with pytest.raises(WeightsMissingError, match="lacks 'features.0.bias'"):
        load_dists_network(tmp_path)


def test_alpha_beta_errors(tmp_path, vgg_dir):
    ab = torch.load(alpha_beta_file(), weights_only=True)
    assert ab["alpha"].shape == (1, 1475, 1, 1)
    bad = tmp_path / "ab.pt"
    torch.save({"alpha": ab["alpha"][:, :10], "beta": ab["beta"]}, bad)
    with pytest.raises(WeightsMissingError, match=r"'alpha' has shape \(1, 10, 1, 1\)"):
        load_dists_network(vgg_dir, alpha_beta=bad)
    torch.save({"alpha": -ab["alpha"], "beta": ab["beta"]}, bad)
    with pytest.raises(WeightsMissingError, match="non-negative"):
        load_dists_network(vgg_dir, alpha_beta=bad)
    with pytest.raises(WeightsMissingError, match="no such file"):
        load_dists_network(vgg_dir, alpha_beta=tmp_path / "absent.pt")


def test_without_the_dists_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "DISTS_pytorch" else real(n, *a)
    )
    with pytest.raises(WeightsMissingError, match="pip install dists-pytorch"):
        alpha_beta_file()


# -- the suite, targets and the composite -------------------------------------------------------


def test_target_and_default_composite():
    assert parse_target("dists<=0.1").needed_metrics() == ["dists"]
    # A composite target alone is judged without DISTS (a second VGG16 is opt-in) ...
    assert "dists" not in parse_target("composite>=0.9").needed_metrics()
    # ... and DISTS counts 0.2 of the documents' 0.9 when it is enabled.
    spec = CompositeSpec.default(["lpips", "ssim", "dists", "psnr"])
    assert spec.as_dict() == pytest.approx(
        {"lpips": 0.3 / 0.9, "ssim": 0.3 / 0.9, "dists": 0.2 / 0.9, "psnr": 0.1 / 0.9}
    )
    assert CompositeSpec.default(["lpips", "ssim", "psnr"]).as_dict() == pytest.approx(
        {"lpips": 3 / 7, "ssim": 3 / 7, "psnr": 1 / 7}
    )


def test_documents_composite_computes_every_component(all_weights_dir):
    suite = MetricSuite.build(
        ["ssimulacra2"], device="cpu", composite_weights="documents", weights_dir=all_weights_dir
    )
    assert [m.name for m in suite.metrics] == ["ssimulacra2", "lpips", "ssim", "dists", "psnr"]
    assert suite.composite.name == "documents"
    assert "FID is a set metric, renormalised away per image" in suite.composite.describe()
    ref = read_rgb(sample_paths()[1])[:64, :96]
    s = suite.score_pair(ref, _jpeg(ref, 30))
    expected = (
        0.3 * (1 - s["lpips"])
        + 0.3 * s["ssim"]
        + 0.2 * (1 - s["dists"])
        + 0.1 * min(s["psnr"] / 50, 1)
    ) / 0.9
    assert s.composite == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="documents"):
        CompositeSpec.parse("documentz")
