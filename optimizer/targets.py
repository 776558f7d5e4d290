"""Quality targets: `composite>=0.95`, `lpips<=0.05,ssim_p5>=0.9` -- parsed once, here.

Every clause must hold. The direction of a clause must agree with its metric's (a target that asks
`lpips>=0.1` asks for *worse* images); a malformed or contradictory clause names the bad token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .metrics.catalog import OUTPUTS

__all__ = ["Clause", "Target", "TargetError", "parse_target"]

_CLAUSE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$"
)


class TargetError(ValueError):
    """A target string that cannot be understood; the message quotes the bad token."""


@dataclass(frozen=True)
class Clause:
    metric: str
    op: str  # ">=" or "<="
    value: float

    def holds(self, measured: float) -> bool:
        if math.isnan(measured):
            return False
        return measured >= self.value if self.op == ">=" else measured <= self.value

    def margin(self, measured: float) -> float:
        """How far inside (>0) or outside (<0) the bound `measured` lies, in the metric's units."""
        return measured - self.value if self.op == ">=" else self.value - measured

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Target:
    clauses: tuple[Clause, ...]

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.metric for c in self.clauses))

    def failures(self, values: Mapping[str, float]) -> list[Clause]:
        """The clauses `values` miss (a clause whose metric is absent is a miss)."""
        return [c for c in self.clauses if c.metric not in values or not c.holds(values[c.metric])]

    def met(self, values: Mapping[str, float]) -> bool:
        return not self.failures(values)

    def __str__(self) -> str:
        return ",".join(str(c) for c in self.clauses)


def parse_target(text: str) -> Target:
    """Parse `metric>=x` / `metric<=x` clauses joined by commas."""
    if not text or not text.strip():
        raise TargetError("empty quality target: expected e.g. 'composite>=0.95'")
    clauses = []
    for token in text.split(","):
        m = _CLAUSE.match(token)
        if not m:
            raise TargetError(
                f"bad target clause {token.strip()!r}: expected METRIC>=NUMBER or METRIC<=NUMBER "
                f"(e.g. 'ssim>=0.95,lpips<=0.05')"
            )
        name, op, value = m.group(1), m.group(2), float(m.group(3))
        if name not in OUTPUTS:
            raise TargetError(
                f"unknown metric {name!r} in target clause {token.strip()!r}; "
                f"known: {', '.join(OUTPUTS)}"
            )
        want = ">=" if OUTPUTS[name].higher_is_better else "<="
        if op != want:
            better = "higher" if OUTPUTS[name].higher_is_better else "lower"
            raise TargetError(
                f"target clause {token.strip()!r} bounds {name} the wrong way: {better} is "
                f"better, so write {name}{want}{value:g}"
            )
        clauses.append(Clause(name, op, value))
    return Target(tuple(clauses))
