"""One image's quality searches, recipe after recipe: every probe, and the best output so far.

`optimize_image` runs one `ImageSearch` per image: for each recipe, the lowest passing quality
(`quality_search.lowest_passing`), given up as soon as the recipe cannot beat the best so far;
for AVIF, searched at a fast encoder speed and encoded at the recipe's own (`probe_speed`), and
over the qualities that make distinct files only (`codecs.quality_grid`).
"""

from __future__ import annotations

import math
from typing import Any

from .codecs import quality_grid
from .probe_speed import MAX_DROP, UNLEARNT_STEPS, fast_recipe, just_passing, margin_slope
from .quality_search import Probe, SearchResult, bytes_per_margin, cannot_win, lowest_passing
from .recipe import Candidate
from .search import ImageSet
from .targets import Target

__all__ = ["ImageSearch"]


class ImageSearch:
    """One image's searches, recipe after recipe: every probe, and the best output so far."""

    def __init__(self, images: ImageSet, target: Target, *, resized: bool, source_bytes: int):
        self.images, self.target, self.resized = images, target, resized
        self.probes: list[Probe] = []
        self.best: Probe | None = None
        # Beat the source (an output never exceeds it) unless resizing makes it incomparable.
        self.best_bytes = math.inf if resized else float(source_bytes)
        #: codec -> the margin its recipe's speed had over the probe speed's at one quality
        self.gains: dict[str, float] = {}

    def probe(self, cand: Candidate) -> Probe:
        nbytes, values = self.images.score(0, cand)
        margin = min(
            c.margin(values[c.metric]) / max(abs(c.value), 1e-9) for c in self.target.clauses
        )
        return Probe(cand.quality, nbytes, self.target.met(values), margin, (cand, values))

    def run(
        self,
        base: Candidate,
        *,
        prune: bool = True,
        keep_first: bool = True,
        probe_speed: int | None = None,
        gain: float | None = None,
        **search: Any,
    ) -> SearchResult:
        """The lowest passing quality of `base`'s recipe; it becomes the best if smaller (or, with
        `keep_first` and a resized set, if it is the first pass). `prune`: give up on a recipe
        that cannot beat the best so far. `probe_speed`: search at that (faster) encoder speed,
        then confirm at `base`'s own (`_confirm`, aimed with `gain`); the result is the fast
        search's, unless nothing passed at that speed (then `base` is searched as it is)."""
        fast = fast_recipe(base, probe_speed)
        if fast is not None:
            r = self._search(fast, prune=prune, keep_first=keep_first, **search)
            if r.best is not None:
                self._confirm(base, r, gain=gain, prune=prune, **search)
                return r
            # Nothing passed, or a fast file was already too large: the fast speed's files can
            # be far larger and worse than the recipe's (flat graphics: AVIF drops its screen
            # content tools at speed 9), so the recipe's own speed decides.
        return self._search(base, prune=prune, keep_first=keep_first, **search)

    def offer(self, cand: Candidate) -> Probe:
        """One recipe as it is (a lossless file: no quality to search), scored; it becomes the
        best if it passes and is smaller."""
        p = self.probe(cand)
        self.probes.append(p)
        if p.passed:
            self._consider(p, None)
        return p

    def _search(
        self,
        base: Candidate,
        *,
        prune: bool,
        keep_first: bool,
        prefer: Probe | None = None,
        **search: Any,
    ) -> SearchResult:
        """`lowest_passing` on `base`'s recipe; its pass becomes the best if smaller, or no
        larger than `prefer` while that is the best."""
        give_up = None
        if prune:
            rate = bytes_per_margin(self._by_recipe()) if math.isfinite(self.best_bytes) else None
            give_up = cannot_win(self.best_bytes, rate)
        grid = None if self.images.items[0].source.has_alpha else quality_grid(base.codec)
        r = lowest_passing(
            lambda q: self.probe(base.with_quality(q)), give_up=give_up, grid=grid, **search
        )
        self.probes.extend(r.probes)
        if r.best is not None:
            self._consider(r.best, prefer, first=keep_first and self.best is None and self.resized)
        return r

    def _confirm(
        self, base: Candidate, fast: SearchResult, *, gain: float | None, prune: bool, **search
    ) -> None:
        """The fast search's find confirmed at `base`'s own speed: one encode where that speed
        should just pass (the fast probes' margin line, moved down by the margin `gain` it had
        over them on earlier images; none learnt yet: a quality step's worth), and only if
        that misses, one where
        its own margin says it passes, then the found quality. Where it passes so far above
        that the speeds plainly disagree (flat graphics), a search at its speed from there.
        The margin gained is noted in `gains`. Each pass becomes the best if smaller (or,
        against this recipe's fast probe, no larger); where none does, the fast probe stays
        the best: it was scored passing too."""
        found = fast.best
        if found is None:
            return
        lo, top = search["bounds"][0], found.quality
        slope = margin_slope(fast.probes, found)
        if slope is None:  # nothing to aim with: the found quality
            self.gains[base.codec] = self._confirming(base.with_quality(top), found).margin - (
                found.margin
            )
            return
        if gain is None:  # nothing learnt yet (a run's first image): a step's worth
            gain = UNLEARNT_STEPS * slope
        q = min(max(lo, just_passing(top, found.margin + gain, slope)), top)
        first = self._confirming(base.with_quality(q), found)
        self.gains[base.codec] = first.margin - (found.margin - slope * (top - q))
        if not first.passed:  # just missed, as a rule: up its own margin, else the found one
            up = min(max(just_passing(q, first.margin, slope), q + 1), top)
            missed = up >= top or not self._confirming(base.with_quality(up), found).passed
            if missed and q < top:
                self._confirming(base.with_quality(top), found)
            return
        down = max(lo, just_passing(q, first.margin, slope))
        if q - down > MAX_DROP:  # the speeds disagree: a search at the recipe's speed
            self._search(
                base, prune=prune, keep_first=False, prefer=found,
                **{**search, "start": down, "bounds": (lo, q)},
            )  # fmt: skip

    def _confirming(self, cand: Candidate, found: Probe) -> Probe:
        p = self.probe(cand)
        self.probes.append(p)
        if p.passed:
            self._consider(p, found)
        return p

    def _consider(self, p: Probe, prefer: Probe | None, *, first: bool = False) -> None:
        """A passing probe becomes the best if smaller, or no larger than `prefer` while that is
        the best (the recipe's own speed over its fast probe), or `first`."""
        if (
            p.bytes < self.best_bytes
            or (prefer is not None and self.best is prefer and p.bytes <= prefer.bytes)
            or first
        ):
            self.best_bytes, self.best = p.bytes, p

    def _by_recipe(self) -> list[list[Probe]]:
        groups: dict[tuple, list[Probe]] = {}
        for p in self.probes:
            cand = p.result[0]
            groups.setdefault((cand.codec, cand.options), []).append(p)
        return list(groups.values())
