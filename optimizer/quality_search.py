"""The lowest passing quality of one recipe: a one-dimensional search on a nearly monotone curve.

Every quality search of imgtune is this one function: `tune`'s bisect strategy (per trial, over
the whole set), `optimize` and `apply --refine` (per image and codec), and the benchmarks. The
caller supplies `probe(q)`, which encodes and scores the recipe at quality `q` and says whether
it passes and by how much (`margin`, relative to the target: > 0 passes with room, < 0 misses).

The search, as ab-av1 and Av1an search CRF: a first probe at `start`, steps out (doubling) until
the lowest passing quality is bracketed, aiming each step at the zero crossing of the margin line
through the last two probes; then interpolation between the bracketing probes (regula falsi on
the margin), falling back to the midpoint where interpolation stalls, until the bracket is at most
`tolerance` quality steps wide. With the defaults (`start` = the top of `bounds`, one step to
the bottom, `tolerance` 1) this is bisection with interpolation: top, bottom, then inside.

Scores are only nearly monotone in quality (JPEG's quantisation tables make small dips), so the
answer is always a probe that was itself scored passing, never an assumption; on a monotone curve
it is the lowest passing quality (within `tolerance`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

#: a pass settles the search when its margin is under this share of one quality step's change:
#: not 1, because a step is not always the same size (AVIF's 101 qualities map onto 64
#: quantisers: some steps change nothing, the next twice the average; Kodak's kodim05 passed at
#: 67, one step under a pass whose margin was 0.9 of the average step)
SETTLE = 0.5
#: the fewest quality steps between two misses that `flat` judges (one step's change is within
#: the noise of a score: it can be nothing where quality still matters)
FLAT_SPAN = 3
#: two probes on one side of the crossing aim with their own slope blended with the model's
#: `slope` as if the model's were worth this many quality steps of evidence: a secant over one
#: or two steps is mostly the noise of a plateau (AVIF's quantiser, JPEG's tables)
BLEND = 2

__all__ = ["Probe", "SearchResult", "cannot_win", "bytes_per_margin", "lowest_passing"]


@dataclass(frozen=True)
class Probe:
    """One scored quality of the recipe being searched."""

    quality: int
    bytes: float
    passed: bool
    #: relative distance to the target: > 0 passes with room, < 0 misses by that much
    margin: float
    #: whatever the caller's probe function wants back (an evaluation, a candidate and scores)
    result: Any = field(default=None, compare=False, repr=False)


@dataclass
class SearchResult:
    #: the lowest passing probe found; None when nothing in bounds passed, or the search gave up
    best: Probe | None
    #: every probe, in the order made (each quality once)
    probes: list[Probe]
    #: True when `give_up` or `flat` ended the search early
    gave_up: bool = False

    @property
    def closest_miss(self) -> Probe | None:
        misses = [p for p in self.probes if not p.passed]
        return max(misses, key=lambda p: p.margin) if misses else None


def lowest_passing(
    probe: Callable[[int], Probe],
    bounds: tuple[int, int],
    *,
    start: int | None = None,
    step: int | None = None,
    tolerance: int = 1,
    give_up: Callable[[Probe], bool] | None = None,
    flat: float | None = None,
    slope: float | None = None,
    grid: Sequence[int] | None = None,
    settle: float = SETTLE,
) -> SearchResult:
    """The lowest passing quality in `bounds` (inclusive), to within `tolerance` steps.

    `start`: the first quality probed (default: the top of `bounds`); `step`: the first step out
    from it (default: the whole range), doubled on each further step. `give_up(p)`: True when
    probe `p` shows the recipe cannot be worth finishing (e.g. a miss already larger than the
    best output so far: passing needs more quality, and more quality costs more bytes); checked
    on every probe while bracketing and on every miss while narrowing (a pass found while
    narrowing is smaller than one already accepted). `flat`: two misses on the way up whose
    margins differ by less than `flat` per quality step end the search (quality is not what is
    missing); None never gives up on that.

    `slope`: how much the margin typically changes per quality step near the crossing (a
    model's guess, > 0). With it, the first step from a single probe aims at the quality where
    that probe's margin line crosses zero, and a pass whose margin is under `SETTLE` of one
    step's change (the local slope of its nearest probes where there are two, else `slope`)
    settles the search: the step below would miss, so it is not probed.

    `grid`: the qualities that give distinct files, each the lowest of those giving the same
    file (`codecs.quality_grid`: AVIF's 101 qualities are 64 quantisers); the search then steps
    over those only, with `step`, `tolerance` and `slope` read per distinct file, and each
    probe's quality is the lowest that makes its file. A quality between two of them is never
    probed: it would encode a file already probed.
    """
    lo, hi = bounds
    if lo > hi:
        raise ValueError(f"empty quality bounds {bounds}")
    if grid is not None:
        return _on_grid(
            probe, bounds, grid, start=start, step=step, tolerance=tolerance,
            give_up=give_up, flat=flat, slope=slope,
        )  # fmt: skip
    start = hi if start is None else min(max(start, lo), hi)
    step = max(1, hi - lo if step is None else step)
    seen: dict[int, Probe] = {}
    order: list[Probe] = []

    def at(q: int) -> Probe:
        if q not in seen:
            p = probe(q)
            seen[q] = p
            order.append(p)
        return seen[q]

    def stop() -> SearchResult:
        return SearchResult(None, order, gave_up=True)

    def settles(p: Probe) -> bool:
        if slope is None or not p.passed:
            return False
        others = [o for o in order if o is not p and o.margin != p.margin]
        local = slope
        if others:
            o = min(others, key=lambda o: abs(o.quality - p.quality))
            s = (p.margin - o.margin) / (p.quality - o.quality)
            local = s if s > 0 else slope
        return p.margin < settle * local

    first = at(start)
    if give_up and give_up(first):
        return stop()
    good = first if first.passed else None
    bad = None if first.passed else first
    if good is not None and settles(good):
        return SearchResult(good, order)
    last: Probe | None = None
    while good is None or bad is None:  # step out until the lowest pass is bracketed
        edge = bad if good is None else good
        direction = 1 if good is None else -1
        if (direction > 0 and edge.quality >= hi) or (direction < 0 and edge.quality <= lo):
            # Misses at the top (nothing passes) / passes at the bottom of the range.
            return SearchResult(good, order)
        q = edge.quality + direction * step
        if last is None and slope is not None and slope > 0:  # aim at the predicted crossing
            aim = math.ceil(edge.quality - edge.margin / slope)  # its lowest pass
            q = edge.quality + direction * max(direction * (aim - edge.quality), 1)
        elif last is not None:  # two probes on one side: aim at the zero crossing, a step past
            if (
                flat is not None
                and direction > 0
                and abs(edge.quality - last.quality) >= FLAT_SPAN  # a step or two is noise
                and abs(edge.margin - last.margin) < flat * abs(edge.quality - last.quality)
            ):
                return stop()
            guess = _zero_crossing(last, edge)
            if slope is not None and slope > 0:
                d = abs(edge.quality - last.quality)
                own = max((edge.margin - last.margin) / (edge.quality - last.quality), 0.0)
                guess = edge.quality - edge.margin / ((own * d + slope * BLEND) / (d + BLEND))
            if math.isfinite(guess):
                aim = round(guess) + direction
                q = edge.quality + direction * min(max(direction * (aim - edge.quality), 1), step)
                if direction > 0 and aim >= hi:
                    q = hi  # the crossing lies past the range: one probe at the top settles it
        p = at(min(max(q, lo), hi))
        if give_up and give_up(p):
            return stop()
        if p.passed:
            good = p if good is None or p.quality < good.quality else good
            if good is p and settles(p):
                return SearchResult(p, order)
        else:
            bad = p if bad is None or p.quality > bad.quality else bad
        last = edge
        step *= 2
    while good.quality - bad.quality > tolerance:  # narrow the bracket
        guess = _zero_crossing(bad, good) if good.margin > bad.margin else math.nan
        q = round(guess) if math.isfinite(guess) else (good.quality + bad.quality) // 2
        p = at(min(max(q, bad.quality + 1), good.quality - 1))
        if p.passed:
            good = p
            if settles(p):
                break
        else:
            if give_up and give_up(p):
                return stop()
            bad = p
    return SearchResult(good, order)


def _on_grid(probe, bounds, grid, *, start, step, tolerance, **search) -> SearchResult:
    """`lowest_passing` over the distinct files of `grid` (which starts at the codec's lowest
    quality) within `bounds`: level i is the i-th of them, `bounds`' bottom standing for the
    file it makes; the answer and probes carry real qualities."""
    lo, hi = bounds
    levels = [lo, *(q for q in grid if lo < q <= hi)]
    per = (hi - lo + 1) / len(levels)  # qualities per level
    slope, flat = search.pop("slope"), search.pop("flat")
    inner = lowest_passing(
        lambda i: replace(probe(levels[i]), quality=i),
        (0, len(levels) - 1),
        start=None if start is None else bisect_right(levels, min(max(start, lo), hi)) - 1,
        step=None if step is None else max(1, round(step / per)),
        tolerance=max(1, round(tolerance / per)) if tolerance > 1 else tolerance,
        slope=None if slope is None else slope * per,
        flat=None if flat is None else flat * per,
        settle=SETTLE / per,  # a pass settles as close to the target as with every quality
        **search,
    )

    def real(p: Probe) -> Probe:
        return replace(p, quality=levels[p.quality])

    best = None if inner.best is None else real(inner.best)
    return SearchResult(best, [real(p) for p in inner.probes], gave_up=inner.gave_up)


def _zero_crossing(a: Probe, b: Probe) -> float:
    """The quality where the margin line through a and b crosses zero (secant)."""
    if a.margin == b.margin:
        return math.nan
    return a.quality + (b.quality - a.quality) * (-a.margin) / (b.margin - a.margin)


def bytes_per_margin(recipes: Iterable[Sequence[Probe]]) -> float | None:
    """How fast bytes fall as the margin falls, d ln(bytes) / d margin: the median over pairs of
    consecutive probes of each recipe (one image's). None before there is such a pair."""
    ks = []
    for probes in recipes:
        for a, b in zip(probes, probes[1:], strict=False):
            if abs(a.margin - b.margin) > 1e-3 and a.bytes > 0 and b.bytes > 0:
                k = math.log(a.bytes / b.bytes) / (a.margin - b.margin)
                if k > 0:
                    ks.append(k)
    return sorted(ks)[len(ks) // 2] if ks else None


def cannot_win(
    best_bytes: float, rate: float | None, slack: float = 1.1
) -> Callable[[Probe], bool]:
    """The give-up rule of a search that must beat `best_bytes` (the best output so far, or the
    source's size): a miss at least that large is hopeless, exactly (passing needs more quality,
    which costs more bytes); a pass is hopeless when its bytes, extrapolated down to the target
    with `rate` (`bytes_per_margin`), still exceed the best by `slack` (a heuristic, hence the
    slack)."""

    def rule(p: Probe) -> bool:
        if not p.passed:
            return p.bytes >= best_bytes
        return rate is not None and p.bytes * math.exp(-rate * p.margin) > slack * best_bytes

    return rule
