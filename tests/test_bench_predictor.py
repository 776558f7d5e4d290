"""benchmarks/predictor.py: the slope label the shipped model learns."""

from __future__ import annotations

import pytest

from benchmarks.predictor import _slope


def _plateaus(crossing: int) -> dict:
    """Scores on a grid of files two qualities wide: 0.5 per quality on average, all of it in
    jumps of 1.0 where the file changes, one of them at the `crossing` (the lowest quality of
    its file)."""
    return {("img", "avif", q): 70.0 + 1.0 * ((q - crossing) // 2) for q in range(40, 100)}


def test_the_slope_is_the_average_change_per_step_not_the_jump_at_the_crossing():
    scores = _plateaus(70)
    jump = scores[("img", "avif", 70)] - scores[("img", "avif", 69)]
    assert jump == 1.0  # what one step below the crossing would have said
    assert _slope(scores, "img", "avif", 70) == pytest.approx(0.5, abs=0.05)


def test_too_few_scores_or_a_falling_line_give_no_slope():
    assert _slope({("img", "avif", 70): 80.0}, "img", "avif", 70) == 0.0
    falling = {("img", "avif", q): 100.0 - q for q in range(64, 77)}
    assert _slope(falling, "img", "avif", 70) == 0.0
