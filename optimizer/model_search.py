"""One image's search guided by the learned model (`quality_model`): which codec options to try,
where to start, how far to step, when to stop; and what the image teaches the model back.

Per allowed codec, each of its options that the model knows is an arm (AVIF and JPEG: 4:2:0 and
4:4:4, chosen per image instead of 4:4:4 only as a fallback). The arms are ranked by the file
size the model expects at the quality that just passes; the first is searched, and the next
ones only while their expected size is within `RANK_GAP` of the first's (the model's size
guesses are good to a few percent: an arm expected 10% larger is not worth an encode). Each arm's
search starts at the expected quality, aims its next probe where the first one's margin says
the target is crossed (the model's margin change per quality step), and stops at a pass whose
margin is under one step's change (`quality_search.lowest_passing`'s `slope`): the step below
would miss. Everything runs at the recipe's own encoder speed: the model replaces
the cheap exploration that fast probes were for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .features import image_features
from .image_search import ImageSearch
from .quality_model import ArmGuess, QualityModel, arm_of
from .quality_search import SearchResult
from .recipe import Candidate
from .targets import Target

__all__ = [
    "RANK_GAP",
    "Arm",
    "beaten_by_guess",
    "worth_searching",
    "model_target",
    "observations",
    "plan",
    "run",
    "search_arms",
]

#: search a further arm only while its expected bytes are within this factor of the best's
RANK_GAP = 1.04
#: after the first arms: search another only where the model expects it this many times
#: smaller than the smallest file they found (its size guesses are good to a few percent
#: between arms of one image, to 30% in absolute terms, which is what this compares)
REVISE_GAP = 1.25


@dataclass(frozen=True)
class Arm:
    base: Candidate
    name: str
    guess: ArmGuess


def model_target(model: QualityModel | None, target: Target) -> float | None:
    """The target value the model is asked about, or None when it cannot speak to `target`
    (another metric, or more than one clause)."""
    if model is None or len(target.clauses) != 1:
        return None
    c = target.clauses[0]
    return float(c.value) if c.metric == model.metric and c.op == ">=" else None


def plan(
    model: QualityModel,
    t: float,
    bases: Sequence[Candidate],
    features: dict[str, float],
    *,
    grey: bool,
) -> list[Arm]:
    """Every arm of `bases` the model knows, best expected first (`worth_searching` says which
    to search). Bases whose codec the model does not know are left out (the caller searches
    them the usual way)."""
    arms = []
    for base in bases:
        opts = dict(base.options)
        variants = [base]
        if "subsampling" in opts and not grey:
            variants = [base.with_options(subsampling=s) for s in ("4:2:0", "4:4:4")]
        for v in variants:
            name = arm_of(v.codec, v.options)  # grey: its 4:2:0 arm (no chroma to subsample)
            g = model.guess(name, features, t)
            if g is not None:
                arms.append(Arm(v, name, g))
    arms.sort(key=lambda a: a.guess.log_bpp)
    return arms


def worth_searching(arms: Sequence[Arm]) -> list[Arm]:
    """The arms of `plan` (best expected first) expected within `RANK_GAP` of the first."""
    if not arms:
        return []
    best = arms[0].guess.log_bpp
    return [a for a in arms if a.guess.log_bpp - best <= math.log(RANK_GAP)]


def beaten_by_guess(
    arms: Sequence[Arm], searched: Sequence[Arm], best_bytes: float, pixels: int
) -> list[Arm]:
    """The arms not yet searched that the model still expects to beat `best_bytes` (the
    smallest passing file of the `searched` arms) by more than `REVISE_GAP`, their size guesses
    moved by half of how far the best searched arm's file missed its own guess (the arms of one
    image miss together, partly). Where the first arm came out far larger than expected, the
    miss is often its own (4:2:0 on thin coloured lines needs quality 82 where 4:4:4 passes at
    45, at half the bytes), so the ranking made before any encode no longer holds."""
    if not searched or not math.isfinite(best_bytes):
        return []
    miss = math.log(best_bytes / pixels) - min(a.guess.log_bpp for a in searched)
    return [
        a for a in arms if math.exp(a.guess.log_bpp + miss / 2) * pixels * REVISE_GAP < best_bytes
    ]


def run(
    search: ImageSearch, arms: Sequence[Arm], *, bounds, tolerance: int, flat: Any = None
) -> dict[str, SearchResult]:
    """Each arm's search, in order; returns arm name -> its search."""
    results = {}
    for arm in arms:
        lo, hi = bounds(arm.base.codec)
        g = arm.guess
        start = min(max(round(g.quality), lo), hi)
        step = max(1, round(g.quality_sd))
        results[arm.name] = search.run(
            arm.base, start=start, step=step, bounds=(lo, hi), tolerance=tolerance,
            probe_speed=None, slope=g.slope,
            flat=flat if dict(arm.base.options).get("subsampling") == "4:2:0" else None,
        )  # fmt: skip
    return results


def search_arms(
    search: ImageSearch,
    model: QualityModel,
    t: float,
    bases: Sequence[Candidate],
    features: dict[str, float],
    *,
    grey: bool,
    pixels: int,
    bounds,
    tolerance: int,
    flat: Any = None,
) -> tuple[dict[str, SearchResult], list[Arm]]:
    """One image's searches of the arms of `bases` the model knows: the expected winners
    (`worth_searching`); if none of them passes, every other arm in order before anything is
    given up (4:2:0 on red text, say); else the arms the result says the ranking got wrong
    (`beaten_by_guess`). Returns arm name -> its search, and the arms searched, in order."""
    every = plan(model, t, bases, features, grey=grey)
    arms = worth_searching(every)
    kw = {"bounds": bounds, "tolerance": tolerance, "flat": flat}
    results = run(search, arms, **kw)
    rest = [a for a in every if a not in arms]
    if not any(p.passed for p in search.probes):
        more = rest
    elif search.best is not None:
        more = beaten_by_guess(rest, arms, search.best.bytes, pixels)
    else:
        more = []
    results.update(run(search, more, **kw))
    return results, [*arms, *more]


def observations(
    results: dict[str, SearchResult], features: dict[str, float], t: float, pixels: int, lo
) -> list[dict[str, Any]]:
    """What the searches say each arm needed, as training rows for the model: the lowest
    passing quality where the search pinned it (a miss one step below, a pass at the bottom of
    the range, or a settled pass), with its log bytes per pixel and the margin change per step."""
    rows = []
    for name, r in results.items():
        if r.best is None:
            continue
        b = r.best
        below = [p for p in r.probes if not p.passed and p.quality < b.quality]
        miss = max(below, key=lambda p: p.quality) if below else None
        width = b.quality - miss.quality if miss else 1
        if width > 2 and b.quality > lo(name):
            continue  # not pinned: the label would be a guess
        slope = (b.margin - miss.margin) / width if miss is not None else None
        rows.append(
            {
                "features": features,
                "arm": name,
                "target": t,
                "quality": b.quality - (width - 1) / 2,
                "log_bpp": math.log(max(b.bytes, 1) / pixels),
                **({"slope": slope} if slope and slope > 0 else {}),
            }
        )
    return rows


def features_of(src, size: tuple[int, int]) -> dict[str, float]:
    """The source's features; `log_mp` that of the output's `size` (after --max-width/height)."""
    f = image_features(src.pixels, source_jpeg_quality=src.jpeg_quality)
    return {**f, "log_mp": math.log2(max(size[0] * size[1], 1) / 1e6)}


def observations_from_set(images, target: Target, t: float) -> list[dict[str, Any]]:
    """Training rows from the encodes a `tune` run scored (its `ImageSet`'s cache): per image
    and arm (the codec's default options but subsampling; no sharpening), the lowest passing
    quality where a miss within two steps below pins it. A study's trials teach the model too."""
    clause = target.clauses[0]
    by_sha = {it.source.sha256: it for it in images.items}
    groups: dict[tuple[str, str], list[tuple[int, bool, float, int]]] = {}
    with images._lock:
        entries = list(images.cache.items())
    for (sha, cand), (nbytes, values) in entries:
        if cand.sharpen != 1.0 or clause.metric not in values or sha not in by_sha:
            continue
        sub = dict(cand.options).get("subsampling")
        plain = Candidate.make(cand.codec, cand.quality, **({"subsampling": sub} if sub else {}))
        if plain.options != cand.options or (cand.resize_filter and not images.resized):
            continue
        margin = clause.margin(values[clause.metric]) / max(abs(clause.value), 1e-9)
        key = (sha, arm_of(cand.codec, cand.options))
        groups.setdefault(key, []).append((cand.quality, margin >= 0, margin, nbytes))
    rows = []
    feats: dict[str, dict[str, float]] = {}
    for (sha, arm), probes in groups.items():
        passes = [p for p in probes if p[1]]
        if not passes:
            continue
        q, _, m, nbytes = min(passes)
        below = [p for p in probes if not p[1] and p[0] < q]
        if not below:
            continue
        qm, _, mm, _ = max(below)
        if q - qm > 2:
            continue
        item = by_sha[sha]
        if sha not in feats:
            feats[sha] = features_of(item.source, item.size)
        w, h = item.size
        rows.append(
            {
                "features": feats[sha],
                "arm": arm,
                "target": t,
                "quality": q - (q - qm - 1) / 2,
                "log_bpp": math.log(max(nbytes, 1) / (w * h)),
                **({"slope": (m - mm) / (q - qm)} if m > mm else {}),
            }
        )
    return rows
