"""Shared fixtures: sample images, codec round trips, and LPIPS with a random backbone.

Pretrained LPIPS backbones cannot be downloaded here, so `random_weights_dir` saves a randomly
initialised torchvision checkpoint under the real file name; the production loader then reads it
exactly as it would read the real one (same class, same code path, different numbers).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"


#: the devices a metric test runs on: the CPU everywhere, CUDA where there is one (`gpu`)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def sample_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.png"))


def thumbnails(folder: Path, layout: dict[str, str], side: int = 96) -> Path:
    """Write sample images shrunk to `side` px as `folder/<rel>` for each rel -> sample name
    (small: a folder job on them takes a second or two). Returns `folder`."""
    for rel, name in layout.items():
        im = Image.open(SAMPLES / f"{name}.png").convert("RGB")
        im.thumbnail((side, side))
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        im.save(folder / rel)
    return folder


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def blur(pixels: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(sigma)))


def noise(pixels: np.ndarray, sigma: float = 8.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(pixels + rng.normal(0, sigma, pixels.shape), 0, 255).astype(np.uint8)


def skimage_ssim(ref: np.ndarray, dist: np.ndarray) -> float:
    """The SSIM reference: skimage with the Wang et al. Gaussian settings, on uint8 H x W [x C]."""
    from skimage.metrics import structural_similarity

    return structural_similarity(
        ref / 255.0,
        dist / 255.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
        channel_axis=-1 if ref.ndim == 3 else None,
    )


def to_tensor(pixels: np.ndarray):
    import torch

    arr = pixels if pixels.ndim == 3 else pixels[:, :, None]
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="session")
def random_weights_dir(tmp_path_factory) -> Path:
    """A weights folder with a *randomly initialised* AlexNet checkpoint under its real name."""
    import torch
    import torchvision.models as tvm

    from optimizer.metrics.lpips_metric import backbone_weights_file

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tvm.alexnet()
    torch.save(model.state_dict(), d / backbone_weights_file("alex")[0])
    return d


@pytest.fixture(scope="session")
def all_weights_dir(tmp_path_factory, random_weights_dir) -> Path:
    """A `--weights` folder with every network imgtune can use, *randomly initialised*, under
    the real file names: AlexNet (LPIPS), VGG16 (DISTS) and pytorch-fid's Inception (FID/KID)."""
    import shutil

    from ._random_weights import (
        random_fid_state,
        random_vgg16_features,
        save_fid_inception,
        save_vgg16,
    )

    d = tmp_path_factory.mktemp("all_weights")
    for f in random_weights_dir.iterdir():
        shutil.copy(f, d / f.name)
    save_vgg16(d, random_vgg16_features())
    save_fid_inception(d, random_fid_state())
    return d


def adobe_rgb_like_icc() -> bytes:
    """A minimal ICC v2 matrix/TRC RGB profile (Adobe RGB 1998 primaries, D50, gamma 2.2).

    Pillow can only synthesise sRGB/LAB/XYZ profiles and no .icc file ships with this machine, so
    the test builds a real wide-gamut one byte by byte (ICC.1:2001-04, sections 6 and 6.5).
    """
    import struct

    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    curv = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 563) + b"\0\0"  # gamma 563/256 = 2.2
    text = b"Adobe RGB like (test)\0"
    desc = (
        b"desc"
        + b"\0" * 4
        + struct.pack(">I", len(text))
        + text
        + struct.pack(">II", 0, 0)
        + struct.pack(">HB", 0, 0)
        + b"\0" * 67
    )
    desc += b"\0" * (-len(desc) % 4)
    tags = [
        (b"desc", desc),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.6097, 0.3111, 0.0195)),
        (b"gXYZ", xyz(0.2053, 0.6257, 0.0609)),
        (b"bXYZ", xyz(0.1492, 0.0632, 0.7446)),
        (b"rTRC", curv),
        (b"gTRC", curv),
        (b"bTRC", curv),
        (b"cprt", b"text" + b"\0" * 4 + b"CC0\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"none"
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 4
        + b"\0" * 4
        + b"\0" * 8
        + b"\0" * 8
        + struct.pack(">I", 0)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 4
        + b"\0" * 16
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def pytest_collection_modifyitems(config, items):
    """`gpu`-marked tests need CUDA: skipped here with the reason (`pytest -m gpu` on a GPU)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA device (torch.cuda.is_available() is False here); "
        "run `pytest -m gpu` on a machine with one"
    )
    for item in gpu:
        item.add_marker(skip)


# Module- and session-scoped fixtures run before any test's own fixtures: their runs learn into
# a folder of the test session's, never into the working tree's studies/.
os.environ["IMGTUNE_STUDIES"] = tempfile.mkdtemp(prefix="imgtune-test-studies-")


@pytest.fixture(autouse=True)
def _own_studies(tmp_path, monkeypatch):
    """Each test its own studies folder (`IMGTUNE_STUDIES`): what `optimize` and `tune` learn
    into the quality model must neither leak between tests nor land in the working tree. It is
    `tmp_path/studies`, where a test that works in `tmp_path` (as a user works in a folder)
    expects `tune`'s studies."""
    monkeypatch.setenv("IMGTUNE_STUDIES", str(tmp_path / "studies"))
