"""Quality thresholds over many outputs: the service's rolling monitor and `imgtune check`.

Two targets make the thresholds: `warn` and `fail` (``"ssimulacra2>=75"``). They judge the bad
tail of a set of scores, not its average: for each clause, the 5th percentile of the metric
(the 95th for a ``<=`` clause such as LPIPS), so one image in twenty below the line is a breach
however good the rest are. A set whose tail misses `fail` is critical; one whose tail misses
only `warn` is a warning. `check` judges a folder once; `QualityMonitor` judges the last
`window` outputs after each one and reports when the level changes (a structured event, the
`imgtune_quality_level` gauge, and a POST to a webhook when one is given).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .targets import Clause, Target, parse_target

__all__ = ["LEVELS", "QualityMonitor", "Thresholds", "tail"]

LEVELS = ("ok", "warning", "critical")
#: the percentile each clause judges: the bad 5% of the set
TAIL = 5.0


def tail(clause: Clause, values: Iterable[float]) -> float:
    """The bad tail of `values` for `clause`: its 5th percentile (95th for ``<=``), taken as a
    value of the set (so one output in twenty below the line puts the tail there)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan
    if clause.op == ">=":  # the value at the 5% mark itself, not between it and the next
        return float(np.percentile(v, TAIL, method="lower"))
    return float(np.percentile(v, 100 - TAIL, method="higher"))


@dataclass(frozen=True)
class Thresholds:
    warn: Target | None = None
    fail: Target | None = None

    @classmethod
    def parse(cls, warn: str | None, fail: str | None) -> Thresholds:
        return cls(parse_target(warn) if warn else None, parse_target(fail) if fail else None)

    @property
    def metrics(self) -> list[str]:
        return list(
            dict.fromkeys(m for t in (self.warn, self.fail) if t is not None for m in t.metrics)
        )

    def judge(self, scores: Iterable[Mapping[str, float]]) -> dict[str, Any]:
        """The level of a set of per-output scores, with each clause's tail value."""
        rows = list(scores)
        tails: dict[str, float] = {}
        level = "ok"
        for name, target in (("warning", self.warn), ("critical", self.fail)):
            if target is None:
                continue
            for c in target.clauses:
                t = tail(c, (r.get(c.metric, math.nan) for r in rows))
                tails[str(c)] = t
                if rows and not c.holds(t):
                    level = name if LEVELS.index(name) > LEVELS.index(level) else level
        return {"level": level, "count": len(rows), "tails": tails}

    def item_level(self, scores: Mapping[str, float]) -> str:
        """One output judged alone: critical if it misses `fail`, warning if only `warn`."""
        if self.fail is not None and not self.fail.met(scores):
            return "critical"
        if self.warn is not None and not self.warn.met(scores):
            return "warning"
        return "ok"


@dataclass
class QualityMonitor:
    """Rolling statistics of the last `window` outputs, judged by `thresholds` after each."""

    thresholds: Thresholds
    window: int = 500
    level: str = "ok"
    #: each threshold clause's tail over the window, as of the last `add`
    tails: dict[str, float] = field(default_factory=dict)
    _scores: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, scores: Mapping[str, float]) -> dict[str, Any] | None:
        """Record one output's scores; returns an event when the level changed, else None."""
        with self._lock:
            self._scores.append(dict(scores))
            while len(self._scores) > self.window:
                self._scores.popleft()
            judged = self.thresholds.judge(self._scores)
            self.tails = judged["tails"]
            if judged["level"] == self.level:
                return None
            event = {"event": "quality_level", "from": self.level, "to": judged["level"],
                     "window": len(self._scores), "tails": judged["tails"]}  # fmt: skip
            self.level = judged["level"]
            return event

    def stats(self) -> dict[str, Any]:
        """Per metric over the window: count, mean, 5th percentile, and the misses of each
        threshold."""
        with self._lock:
            rows = list(self._scores)
        out: dict[str, Any] = {"count": len(rows), "level": self.level, "metrics": {}}
        for m in self.thresholds.metrics:
            v = [r[m] for r in rows if m in r and not math.isnan(r[m])]
            out["metrics"][m] = {
                "mean": float(np.mean(v)) if v else math.nan,
                "p5": float(np.percentile(v, TAIL, method="lower")) if v else math.nan,
            }
        for name, t in (("warn", self.thresholds.warn), ("fail", self.thresholds.fail)):
            if t is not None:
                out[f"{name}_misses"] = sum(1 for r in rows if not t.met(r))
        return out
