"""benchmarks/trial.py: the mosaic it encodes and the crossing it reads off."""

from __future__ import annotations

import math

import numpy as np

from benchmarks.trial import QUALITIES, crossing, mosaic
from optimizer.features import TILE


def test_the_mosaic_is_eight_native_tiles_of_the_image():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    m = mosaic(big)
    assert m.shape == (2 * TILE, 4 * TILE, 3)
    # every tile is a crop of the image at its own scale: found somewhere in it
    tile = m[:TILE, :TILE]
    hits = [
        (y, x)
        for y in range(700 - TILE + 1)
        for x in range(1000 - TILE + 1)
        if big[y, x, 0] == tile[0, 0, 0] and np.array_equal(big[y : y + TILE, x : x + TILE], tile)
    ]
    assert len(hits) == 1
    small = rng.integers(0, 256, (100, 90, 1), dtype=np.uint8)
    assert np.array_equal(mosaic(small), small)  # smaller than a tile: itself


def test_the_crossing_is_linear_between_the_trial_qualities_and_nan_off_the_curve():
    scores = {("a", q): 40 + q / 2 for q in QUALITIES}  # 55, 65, 75, 85
    assert crossing(scores, "a", 70) == 60.0
    assert crossing(scores, "a", 55) == 30.0 and crossing(scores, "a", 85) == 90.0
    assert math.isnan(crossing(scores, "a", 90))  # never reached
    bumpy = dict(scores) | {("a", 70): 50.0}
    assert math.isnan(crossing(bumpy, "a", 70))  # not rising with quality
