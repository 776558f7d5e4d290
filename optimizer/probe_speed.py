"""Quality searched at a fast encoder speed, the output encoded at the recipe's own.

A per-image search spends most of its time in AVIF encodes: at the default speed 6 one encode
takes six to ten times as long as at speed 9, whose files are some 5-7% larger at one quality
and score a little lower. So the search probes at `probe_speed`, and the output is
encoded at the recipe's speed where that should just pass: the fast probes' margin line (the
margin per quality step next to the lowest fast pass) moved down by the margin speed 6 gained
over speed 9 on earlier images of the run (`QualityPredictor` learns it, like the start
quality; on a run's first image, one quality step's worth). That encode is
scored; only if it misses, one more where its own margin says it passes, then the found
quality itself. Where speed 6 passes so far above the line that the speeds plainly disagree
(flat graphics: speed 9 drops AVIF's screen-content tools), speed 6 is searched from there.

The smallest passing encode is written and its params name its speed; the fast probe's own
output only where no speed-6 encode passed and was no larger. Where nothing passes at the fast
speed, or its files outgrow the source, the recipe's speed is searched as without probe
speeds. Measured in `benchmarks/RESULTS.md` (section probe_speed). Only AVIF has a faster
setting worth it: WebP's `method` 2 saves about 0.6 s an encode at 6 MP, where scoring the
encode costs several seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .codecs import CODECS
from .errors import UsageError
from .quality_search import Probe
from .recipe import Candidate

__all__ = [
    "DEFAULT_PROBE_SPEED",
    "MAX_DROP",
    "UNLEARNT_STEPS",
    "fast_recipe",
    "just_passing",
    "margin_slope",
    "parse",
]

#: AVIF speed of the search's probes: 9, timed against 8 (four times as long, its qualities
#: nearer speed 6's) and 10 (the same files as 9 with libavif 1.4); `benchmarks/RESULTS.md`
DEFAULT_PROBE_SPEED = 9
#: quality steps of margin speed 6 is taken to gain over speed 9 before a run has learnt it
#: (its first image): it needed 1-4 steps fewer on every Kodak image
UNLEARNT_STEPS = 1
#: quality steps: where the recipe's speed passes with a margin that puts its crossing further
#: below, the speeds disagree on this image (their offset is 1-4 steps on photos)
MAX_DROP = 8
_SPEED = "speed"


def parse(value: int | str | None) -> int | None:
    """A probe speed from the command line or the API: an AVIF speed (0-10, 10 fastest), or
    ``"off"`` / None (probe at the recipe's own speed). Raises `UsageError` naming the value."""
    if value is None:
        return None
    speed: object = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "off":
            return None
        speed = int(text) if text.isdigit() else None
    lo, hi = CODECS["avif"].options[_SPEED].range  # type: ignore[misc]
    if isinstance(speed, bool) or not isinstance(speed, int) or not lo <= speed <= hi:
        raise UsageError(
            f"probe speed must be an AVIF speed {lo}-{hi} ({hi} fastest) or off, not {value!r}"
        )
    return speed


def fast_recipe(base: Candidate, speed: int | None) -> Candidate | None:
    """`base` at probe speed `speed`, when that is faster than its own; else None (search
    `base` itself)."""
    own = dict(base.options).get(_SPEED)
    if speed is None or own is None or speed <= own:
        return None
    return base.with_options(**{_SPEED: speed})


def margin_slope(probes: Sequence[Probe], found: Probe) -> float | None:
    """Margin per quality step of a search's probes next to its lowest pass `found` (the probe
    just below it, else just above); None where they give no rising line."""
    below = [p for p in probes if p.quality < found.quality]
    above = [p for p in probes if p.quality > found.quality]
    other = max(below, key=lambda p: p.quality) if below else None
    if other is None and above:
        other = min(above, key=lambda p: p.quality)
    if other is None:
        return None
    slope = (found.margin - other.margin) / (found.quality - other.quality)
    return slope if slope > 0 and math.isfinite(slope) else None


def just_passing(quality: int, margin: float, slope: float) -> int:
    """The quality where a margin of `margin` at `quality` should fall to zero, rounded up
    (the side that passes)."""
    return math.ceil(quality - margin / slope - 1e-9)
