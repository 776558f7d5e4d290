"""Where a folder job starts each image's quality search: what earlier images of the run needed.

`QualityPredictor` lives with the run (the driver); each image's search gets a `Prediction`, a
plain snapshot of it, so the per-image job needs no shared state and can run in another process
or on another machine, and hands back what it found for the driver to `record`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_START", "DEFAULT_STEP", "Prediction", "QualityPredictor"]

#: first guesses (no preset, no earlier image) and the step out from them
DEFAULT_START = {"jpeg": 80, "webp": 80, "avif": 65, "jxl": 75}
DEFAULT_STEP = 8
#: the guess for a codec with no default start
FALLBACK_START = 75


@dataclass(frozen=True)
class Prediction:
    """Per codec, the first quality to probe and the first step out; which codecs won most."""

    #: codec -> (first quality, first step)
    guesses: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    #: codecs with a quality from an earlier image (not just a default or a preset's start)
    seen: frozenset[str] = frozenset()
    #: codec -> images it won
    wins: Mapping[str, int] = field(default_factory=dict)
    #: codec -> how much more margin the recipe's own encoder speed had than the probe speed's
    #: at one quality on earlier images, a cautious estimate (see `probe_speed`); absent: none
    gains: Mapping[str, float] = field(default_factory=dict)
    #: the learned model (`quality_model`), without what only updating it needs; None: off
    model: Any = None

    def guess(self, codec: str) -> tuple[int, int]:
        return self.guesses.get(codec, (DEFAULT_START.get(codec, FALLBACK_START), DEFAULT_STEP))

    def order(self, codecs: Sequence[str]) -> list[str]:
        """`codecs`, the most frequent winners first (stable otherwise)."""
        return sorted(codecs, key=lambda c: -self.wins.get(c, 0))


class QualityPredictor:
    """Per codec, the quality earlier images needed (median of the last `window`) and how far to
    step to bracket the next one (their spread); which codec won most often is tried first.
    Thread-safe: a run's images finish in several threads."""

    def __init__(self, start: Mapping[str, int] | None = None, window: int = 25) -> None:
        self.start = {**DEFAULT_START, **(start or {})}
        self.window = window
        self.history: dict[str, deque[int]] = {}
        self.gains: dict[str, deque[float]] = {}
        self.wins: dict[str, int] = {}
        self._lock = threading.Lock()

    def predict(self, codec: str) -> tuple[int, int]:
        """(first quality, first step) for `codec`'s next search."""
        with self._lock:
            seen = sorted(self.history.get(codec, ()))
        if not seen:
            return self.start.get(codec, FALLBACK_START), DEFAULT_STEP
        median = seen[len(seen) // 2]
        spread = seen[(3 * len(seen)) // 4] - seen[len(seen) // 4]
        return median, min(max(3, spread + 2), 12)

    def record(self, codec: str, quality: int, won: bool, gain: float | None = None) -> None:
        """An image needed `quality` with `codec` (and that codec gave its output if `won`);
        `gain`: the margin its recipe's speed had over the probe speed's."""
        with self._lock:
            self.history.setdefault(codec, deque(maxlen=self.window)).append(quality)
            if gain is not None:
                self.gains.setdefault(codec, deque(maxlen=self.window)).append(gain)
            if won:
                self.wins[codec] = self.wins.get(codec, 0) + 1

    def snapshot(self, codecs: Sequence[str]) -> Prediction:
        """What the next image's search starts from, for `codecs`."""
        with self._lock:
            seen = frozenset(c for c in codecs if self.history.get(c))
            wins = dict(self.wins)
            # the lower quartile: a cautious aim passes at the first encode more often, and an
            # encode more costs more than a quality step (measured: benchmarks/RESULTS.md)
            gains = {c: sorted(g)[len(g) // 4] for c, g in self.gains.items() if g and c in codecs}
        return Prediction({c: self.predict(c) for c in codecs}, seen, wins, gains)
