"""quality_search.lowest_passing against an exhaustive scan of synthetic quality curves.

A curve is margin(q) (> 0 passes) and bytes(q) (growing with quality). Monotone curves have one
true answer, the lowest passing quality; nearly monotone ones dip like JPEG's quantisation
tables do; flat ones do not depend on quality at all.
"""

from __future__ import annotations

import itertools
import math

import pytest

from optimizer.quality_search import (
    Probe,
    bytes_per_margin,
    cannot_win,
    lowest_passing,
)


class Curve:
    def __init__(self, margin, lo=0, hi=100):
        self.margin, self.bounds = margin, (lo, hi)
        self.calls: list[int] = []

    def bytes(self, q: int) -> float:
        return 1000.0 * math.exp(q / 25)

    def probe(self, q: int) -> Probe:
        self.calls.append(q)
        m = self.margin(q)
        return Probe(q, self.bytes(q), m >= 0, m)

    def truth(self) -> int | None:
        """The lowest passing quality, by scanning every one."""
        lo, hi = self.bounds
        return next((q for q in range(lo, hi + 1) if self.margin(q) >= 0), None)


def linear(cross: float, slope: float = 0.01):
    return lambda q: slope * (q - cross)


def saturating(cross: float):
    # steep at low quality, nearly flat near the top: SSIMULACRA2's shape
    return lambda q: (1 - math.exp(-q / 20)) - (1 - math.exp(-cross / 20))


def dipping(cross: float):
    # monotone trend with a dip every 7 qualities
    return lambda q: 0.01 * (q - cross) - (0.004 if q % 7 == 3 else 0.0)


MONOTONE = [
    f(c) for f, c in itertools.product((linear, saturating), (0.5, 3.2, 17.5, 41.7, 63.2, 88.9))
]
STARTS = [None, 0, 10, 35, 50, 65, 80, 100]


@pytest.mark.parametrize("margin", MONOTONE)
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("step", [None, 1, 4, 8])
def test_monotone_curves_find_the_true_lowest_passing_quality(margin, start, step):
    curve = Curve(margin)
    found = lowest_passing(curve.probe, curve.bounds, start=start, step=step)
    assert found.best is not None and found.best.passed
    assert found.best.quality == curve.truth()
    # each quality scored once, all inside the bounds, in the order reported
    assert len(curve.calls) == len(set(curve.calls)) == len(found.probes)
    assert [p.quality for p in found.probes] == curve.calls
    assert all(0 <= q <= 100 for q in curve.calls)


@pytest.mark.parametrize("margin", MONOTONE)
@pytest.mark.parametrize("tolerance", [2, 3, 5])
def test_a_tolerance_stops_within_that_many_steps_of_the_answer(margin, tolerance):
    curve = Curve(margin)
    found = lowest_passing(curve.probe, curve.bounds, start=60, step=8, tolerance=tolerance)
    assert found.best.passed
    assert 0 <= found.best.quality - curve.truth() < tolerance


@pytest.mark.parametrize("cross", [5.5, 22.2, 47.0, 71.4, 93.3])
@pytest.mark.parametrize("start", STARTS)
def test_nearly_monotone_curves_answer_a_quality_that_was_scored_passing(cross, start):
    curve = Curve(dipping(cross))
    found = lowest_passing(curve.probe, curve.bounds, start=start, step=8)
    assert found.best.passed and curve.margin(found.best.quality) >= 0
    assert found.best.quality >= curve.truth()
    # a dip can hide the true answer, but never by more than the dip's reach (0.4 steps of 0.01)
    assert found.best.quality - curve.truth() <= 1


def test_probe_counts_are_pinned():
    # bisection with interpolation from the top: 100 passes, 0 misses, the secant lands on 57
    # exactly, 56 misses: four probes
    curve = Curve(linear(57))
    assert lowest_passing(curve.probe, (0, 100)).best.quality == 57
    assert curve.calls == [100, 0, 57, 56]
    # a folder job's search: a guess at 65 passes, the step down to 57 passes, the secant
    # through them aims below 57, then narrowing to one step
    curve = Curve(linear(57))
    assert lowest_passing(curve.probe, (0, 100), start=65, step=8).best.quality == 57
    assert curve.calls == [65, 57, 56]
    # On a saturating curve plain regula falsi keeps its stale low end (25) and creeps down
    # from above one step at a time: nine probes. Pinned as the behaviour today; the Illinois
    # variant would halve the stale end's margin and converge in fewer.
    curve = Curve(saturating(41.7))
    found = lowest_passing(curve.probe, (0, 100), start=80, step=8, tolerance=3)
    assert curve.calls == [80, 72, 56, 25, 47, 44, 43, 42, 41]
    assert found.best.quality == curve.truth() == 42


def test_nothing_passes_returns_no_best_after_probing_the_top():
    curve = Curve(lambda q: -1.0 + q / 1000)
    found = lowest_passing(curve.probe, (10, 90), start=50, step=8)
    assert found.best is None and not found.gave_up
    assert 90 in curve.calls and max(curve.calls) == 90
    assert found.closest_miss.quality == 90


def test_everything_passes_returns_the_bottom():
    curve = Curve(lambda q: 0.5 + q / 1000)
    found = lowest_passing(curve.probe, (10, 90), start=50, step=8)
    assert found.best.quality == 10 and found.closest_miss is None


def test_flat_curves_give_up_early_only_when_asked():
    flat = Curve(lambda q: -0.3)  # quality does not matter: something else is missing
    found = lowest_passing(flat.probe, (0, 100), start=50, step=8, flat=2e-4)
    assert found.best is None and found.gave_up and len(flat.calls) == 2
    climbing = Curve(lambda q: -0.3)
    found = lowest_passing(climbing.probe, (0, 100), start=50, step=8)
    assert found.best is None and not found.gave_up and 100 in climbing.calls


def test_a_single_quality_is_one_probe():
    passing, failing = Curve(linear(40)), Curve(linear(60))
    assert lowest_passing(passing.probe, (50, 50), start=50, tolerance=0).best.quality == 50
    assert lowest_passing(failing.probe, (50, 50), start=50, tolerance=0).best is None
    assert passing.calls == failing.calls == [50]


def test_give_up_on_a_miss_larger_than_the_best():
    curve = Curve(linear(60))
    best_bytes = curve.bytes(30)  # a smaller passing output exists already
    found = lowest_passing(
        curve.probe, (0, 100), start=40, step=8, give_up=cannot_win(best_bytes, None)
    )
    # q40 misses and is already larger than the best: more quality only costs more
    assert found.best is None and found.gave_up and curve.calls == [40]


def test_cannot_win_extrapolates_a_pass_down_to_the_target():
    rule = cannot_win(1000.0, rate=10.0, slack=1.1)
    assert not rule(Probe(50, 1050.0, True, 0.05))  # 1050 * e^-0.5 = 637: could still win
    assert rule(Probe(50, 3000.0, True, 0.05))  # 3000 * e^-0.5 = 1820 > 1100
    assert not cannot_win(1000.0, None)(Probe(50, 3000.0, True, 0.05))  # no rate: keep going
    assert cannot_win(1000.0, None)(Probe(50, 1000.0, False, -0.1))


def test_bytes_per_margin_is_the_median_log_slope():
    a = [Probe(40, 1000.0, False, -0.1), Probe(60, 2000.0, True, 0.1)]
    b = [Probe(40, 1000.0, False, -0.1), Probe(50, 4000.0, True, 0.1)]
    assert bytes_per_margin([a]) == pytest.approx(math.log(2) / 0.2)
    assert bytes_per_margin([a, b, b]) == pytest.approx(math.log(4) / 0.2)
    assert bytes_per_margin([[a[0]]]) is None  # one probe: no slope


def test_empty_bounds_are_refused():
    with pytest.raises(ValueError, match="empty"):
        lowest_passing(Curve(linear(5)).probe, (60, 50))


# AVIF-like plateaus: 101 qualities onto fewer files, each the file of its class's lowest quality.
_GRID = (0, 3, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 35, 37, 39, 40, 42, 44)
_GRID += (45, 47, 49, 50, 52, 54, 55, 56, 58, 59, 60, 62, 63, 64, 66, 67, 68, 70, 71, 72, 74)
_GRID += (75, 76, 78, 79, 80, 82, 83, 84, 86, 87, 88, 90, 91, 92, 94, 95, 96, 98, 99, 100)


def _plateau_probe(crossing: float, calls: list[int]):
    def probe(q: int) -> Probe:
        calls.append(q)
        file_q = max(g for g in _GRID if g <= q)  # the file quality q encodes
        m = 0.01 * (file_q - crossing)
        return Probe(q, 1000 + 10 * file_q, m >= 0, m)

    return probe


@pytest.mark.parametrize("crossing", [5.5, 33.2, 61.7, 64.5, 65.0, 77.9, 99.5])
@pytest.mark.parametrize("start,step,slope", [(None, None, None), (70, 4, 0.01), (40, 8, 0.02)])
def test_a_grid_probes_each_file_once_and_answers_the_lowest_quality_making_it(
    crossing, start, step, slope
):
    calls: list[int] = []
    r = lowest_passing(
        _plateau_probe(crossing, calls), (0, 100), start=start, step=step, slope=slope,
        grid=_GRID,
    )  # fmt: skip
    assert set(calls) <= set(_GRID) and len(calls) == len(set(calls))  # one encode per file
    assert [p.quality for p in r.probes] == calls  # probes carry real qualities
    want = min(g for g in _GRID if g >= crossing)  # the lowest quality making a passing file
    assert r.best is not None and r.best.quality == want
    # without the grid: the same answer's file, with qualities that repeat a file probed
    plain: list[int] = []
    r0 = lowest_passing(_plateau_probe(crossing, plain), (0, 100), start=start, step=step)
    assert r0.best.bytes == r.best.bytes


def test_a_grid_inside_narrower_bounds_starts_at_the_bound():
    calls: list[int] = []
    r = lowest_passing(_plateau_probe(1.0, calls), (65, 90), start=65, grid=_GRID)
    # 65 makes 64's file, the lowest reachable in bounds: it is probed as 65, and passes
    assert calls == [65] and r.best.quality == 65
