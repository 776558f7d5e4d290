"""LPIPS through the production loader with a random backbone, and the missing-weights path."""

from __future__ import annotations

import copy
import warnings

import lpips
import numpy as np
import pytest
import torch

from optimizer.metrics.lpips_metric import (
    LPIPS,
    WeightsMissingError,
    backbone_weights_file,
    find_backbone_weights,
    load_lpips_network,
)

from .conftest import DEVICES, blur, jpeg, noise, read_rgb, sample_paths, to_tensor


@pytest.fixture(scope="module")
def metric(random_weights_dir):
    return LPIPS("cpu", weights_dir=random_weights_dir)


@pytest.fixture(scope="module")
def reference_module(random_weights_dir):
    """The lpips package's own module, backbone loaded from the same checkpoint by hand."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    state = torch.load(random_weights_dir / backbone_weights_file("alex")[0], weights_only=True)
    for i, sl in enumerate([m.net.slice1, m.net.slice2, m.net.slice3, m.net.slice4, m.net.slice5]):
        for name, module in sl.named_children():
            module.load_state_dict(
                {
                    k.split(".", 2)[2]: v
                    for k, v in state.items()
                    if k.startswith(f"features.{name}.")
                }
            )
        assert i < 5
    return m.eval()


def test_loader_overwrites_every_backbone_tensor(random_weights_dir, reference_module):
    net = load_lpips_network("alex", random_weights_dir)
    for (k, a), (k2, b) in zip(
        net.net.state_dict().items(), reference_module.net.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    # the linear layers are the package's shipped ones, not random
    for a, b in zip(net.lins.parameters(), reference_module.lins.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dist", ["jpeg20", "jpeg80", "blur", "noise"])
def test_matches_lpips_package_value_and_spatial_map(metric, reference_module, dist, device):
    """Ours on `device` (TF32 off while scoring) against the package on the CPU."""
    ref = read_rgb(sample_paths()[0])[:192, :160]
    cand = {
        "jpeg20": jpeg(ref, 20),
        "jpeg80": jpeg(ref, 80),
        "blur": blur(ref),
        "noise": noise(ref),
    }[dist]
    x, y = to_tensor(cand), to_tensor(ref)
    if device != "cpu":
        metric = LPIPS(device, network=copy.deepcopy(metric.network))  # the same tensors
    ours = {k: v.cpu() for k, v in metric(x.to(metric.device), y.to(metric.device)).items()}
    with torch.no_grad():
        expected = reference_module(x, y, normalize=True).item()
        reference_module.spatial = True
        spatial = reference_module(x, y, normalize=True).flatten().cpu().numpy()
        reference_module.spatial = False
    assert abs(ours["lpips"].item() - expected) < 1e-5
    assert abs(ours["lpips_p95"].item() - np.percentile(spatial, 95)) < 1e-5


def test_identical_is_zero_and_batch_matches(metric):
    ref = read_rgb(sample_paths()[1])[:128, :128]
    y = to_tensor(ref)
    x = torch.cat([y, to_tensor(jpeg(ref, 30))])
    out = metric(x, y)
    assert out["lpips"][0].item() == pytest.approx(0.0, abs=1e-7)
    assert out["lpips"][1].item() > 0
    assert out["lpips"][1].item() == pytest.approx(metric(x[1:], y)["lpips"].item(), abs=1e-6)


def test_grey_is_repeated_to_three_channels(metric):
    g = read_rgb(sample_paths()[1])[:96, :96, :1]
    d = noise(g, 10)
    grey = metric(to_tensor(d), to_tensor(g))["lpips"].item()
    rgb = metric(to_tensor(np.repeat(d, 3, 2)), to_tensor(np.repeat(g, 3, 2)))["lpips"].item()
    assert grey == pytest.approx(rgb, abs=1e-6)


def test_differentiable(metric):
    ref = to_tensor(read_rgb(sample_paths()[1])[:96, :96])
    x = to_tensor(noise(read_rgb(sample_paths()[1])[:96, :96], 20)).requires_grad_(True)
    metric.score(x, metric.prepare(ref))["lpips"].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_missing_weights_in_explicit_folder(tmp_path):
    with pytest.raises(WeightsMissingError) as e:
        LPIPS("cpu", weights_dir=tmp_path)
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path) in msg
    assert "--metrics ssim,ms_ssim,psnr" in msg


def test_missing_weights_without_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsMissingError, match="downloads are disabled"):
        find_backbone_weights("alex", allow_download=False)


def test_failed_download_is_reported_not_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsMissingError, match="network unreachable"):
        LPIPS("cpu")


def test_torch_cache_is_used(tmp_path, monkeypatch, random_weights_dir):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    name = backbone_weights_file("alex")[0]
    (hub / "checkpoints" / name).write_bytes((random_weights_dir / name).read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert find_backbone_weights("alex", allow_download=False) == hub / "checkpoints" / name


def test_wrong_or_corrupt_checkpoint(tmp_path):
    name = backbone_weights_file("alex")[0]
    (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(WeightsMissingError, match="could not be read"):
        load_lpips_network("alex", tmp_path)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(WeightsMissingError, match=r"'features.0.weight' has shape \(1,\)"):
        load_lpips_network("alex", tmp_path)
    torch.save({"classifier.1.weight": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(WeightsMissingError, match="not torchvision's alex checkpoint"):
        load_lpips_network("alex", tmp_path)


def test_unknown_network():
    with pytest.raises(ValueError, match="alex, squeeze, vgg"):
        backbone_weights_file("resnet")


@pytest.mark.parametrize(("tile", "margin"), [(128, 128), (96, 96), (256, 128)])
def test_tiled_equals_whole_image(metric, tile, margin):
    """Tiles start on multiples of 16 (the backbone's total stride) and see `margin` px of
    context; with margin >= 96 (AlexNet's reach) the result is the whole-image one exactly."""
    ref = read_rgb(sample_paths()[-3])  # rocket.png, 640x427: odd height, several tiles
    x = torch.cat([to_tensor(jpeg(ref, 30)), to_tensor(noise(ref, 6))])
    y = to_tensor(ref)
    tiled = LPIPS("cpu", network=metric.network, tile=tile, margin=margin)
    assert tiled.prepare(y).features is None  # really tiled
    a, b = metric(x, y), tiled(x, y)
    assert torch.allclose(a["lpips"], b["lpips"], rtol=1e-5, atol=1e-8)
    assert torch.allclose(a["lpips_p95"], b["lpips_p95"], rtol=1e-5, atol=1e-8)


def test_tiled_grey_and_thin_strip(metric):
    g = read_rgb(sample_paths()[1])[:60, :, :1]  # 451 wide, 60 high: tiled along one axis only
    d = noise(g, 10)
    tiled = LPIPS("cpu", network=metric.network, tile=128, margin=96)
    whole = metric(to_tensor(d), to_tensor(g))["lpips"].item()
    assert tiled(to_tensor(d), to_tensor(g))["lpips"].item() == pytest.approx(whole, rel=1e-5)


def test_tile_geometry_is_validated(metric):
    with pytest.raises(ValueError, match="multiples of 16"):
        LPIPS("cpu", network=metric.network, tile=100)
