"""transforms: fit inside a box without upscaling, the six filters, sharpening, alpha care."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from optimizer.images import load
from optimizer.transforms import RESIZE_FILTERS, apply, fit_size, reference

from .conftest import SAMPLES, read_rgb, sample_paths


@pytest.mark.parametrize(
    ("size", "box", "expected"),
    [
        ((640, 427), (320, None), (320, 214)),
        ((640, 427), (None, 200), (300, 200)),
        ((640, 427), (320, 100), (150, 100)),
        ((640, 427), (1000, 1000), (640, 427)),  # never upscale
        ((640, 427), (None, None), (640, 427)),
        ((3000, 1), (30, None), (30, 1)),
    ],
)
def test_fit_size(size, box, expected):
    assert fit_size(*size, max_width=box[0], max_height=box[1]) == expected


def test_fit_size_rejects_nonsense():
    with pytest.raises(ValueError, match="at least 1"):
        fit_size(10, 10, max_width=0)


@pytest.mark.parametrize("name", list(RESIZE_FILTERS))
def test_each_filter_matches_pillow(name):
    px = read_rgb(sample_paths()[1])
    out = apply(px, size=(200, 133), resize_filter=name)
    expected = np.asarray(Image.fromarray(px).resize((200, 133), RESIZE_FILTERS[name]))
    assert out.shape == (133, 200, 3) and np.array_equal(out, expected)


def test_filters_differ():
    px = read_rgb(sample_paths()[1])
    outs = {n: apply(px, size=(150, 100), resize_filter=n) for n in ("nearest", "lanczos")}
    assert not np.array_equal(outs["nearest"], outs["lanczos"])


def test_sharpen_semantics():
    px = read_rgb(sample_paths()[1])
    assert np.array_equal(apply(px, sharpen=1.0), px)

    def detail(a):
        return np.abs(np.diff(a.astype(float), axis=1)).mean()

    assert detail(apply(px, sharpen=0.3)) < detail(px) < detail(apply(px, sharpen=1.8))
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(px)).enhance(1.5))
    assert np.array_equal(apply(px, sharpen=1.5), expected)


def test_bad_arguments():
    px = read_rgb(sample_paths()[1])
    with pytest.raises(ValueError, match="unknown resize filter 'cubic'"):
        apply(px, resize_filter="cubic")
    with pytest.raises(ValueError, match=r"\[0.0, 2.0\]"):
        apply(px, sharpen=2.5)
    with pytest.raises(ValueError, match="refusing to upscale"):
        apply(px, size=(px.shape[1] + 1, px.shape[0]))


def test_alpha_resized_premultiplied_and_never_sharpened():
    # Opaque red next to fully transparent *black*: a straight-alpha resize would pull black
    # into the red edge; premultiplied (Pillow's RGBA resize does it) keeps the edge red.
    a = np.zeros((40, 40, 4), np.uint8)
    a[:, :20] = (255, 0, 0, 255)
    out = apply(a, size=(15, 15), resize_filter="lanczos")
    edge = out[:, 7]
    visible = edge[:, 3] > 20
    assert visible.any() and (edge[visible, 0] > 240).all()
    rgba = load(SAMPLES / "portrait_alpha_cc0.png").pixels
    sharp = apply(rgba, sharpen=1.8)
    assert np.array_equal(sharp[:, :, 3], rgba[:, :, 3])
    assert not np.array_equal(sharp[:, :, :3], rgba[:, :, :3])


def test_grey_stays_grey_and_reference_is_lanczos():
    grey = load(SAMPLES / "tiger_grayscale_cc0.png").pixels
    out = apply(grey, size=(100, 100), resize_filter="box", sharpen=1.3)
    assert out.shape == (100, 100, 1)
    px = read_rgb(sample_paths()[1])
    assert np.array_equal(
        reference(px, (90, 60)), apply(px, size=(90, 60), resize_filter="lanczos")
    )
