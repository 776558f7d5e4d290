"""Quality targets: `composite>=0.95`, `lpips<=0.05,ssim_p5>=0.9` -- parsed once, here.

Every clause must hold. The direction of a clause must agree with its metric's (a target that asks
`lpips>=0.1` asks for *worse* images); a malformed or contradictory clause names the bad token.
`lossless` is the one target that is not a metric bound: pixel-identical outputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import UsageError
from .metrics.catalog import DEFAULT_COMPOSITE_METRICS, METRICS, OUTPUTS

__all__ = [
    "LOSSLESS",
    "QUALITY_LEVELS",
    "Aggregate",
    "Clause",
    "Target",
    "TargetError",
    "check_aggregate",
    "parse_target",
    "resolve_target",
]

#: the target (and quality level) of pixel-identical outputs: `Target.lossless`
LOSSLESS = "lossless"

#: named quality levels -> targets on SSIMULACRA2's published scale: 50 medium quality, 70 high
#: (artifacts visible, not annoying), 80 very high (not noticeable side by side at 1:1), 90
#: visually lossless. Our names are one step plainer: low, medium, high, lossless-looking; and
#: `lossless`, which is no score but identical pixels.
QUALITY_LEVELS: dict[str, str] = {
    "low": "ssimulacra2>=50",
    "medium": "ssimulacra2>=70",
    "high": "ssimulacra2>=80",
    "lossless-looking": "ssimulacra2>=90",
    LOSSLESS: LOSSLESS,
}

_CLAUSE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$"
)


class TargetError(UsageError):
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


#: what `lossless` asks of scores, where something judges it by them (`imgtune score`): no
#: error at all, which PSNR says exactly (infinite for identical pixels, never capped)
_IDENTICAL = Clause("psnr", ">=", math.inf)


@dataclass(frozen=True)
class Target:
    clauses: tuple[Clause, ...]
    #: `lossless`: outputs decode to the source's pixels. No clause (nothing to search or
    #: margin to measure); `optimize` compares pixels, `failures` asks PSNR to be infinite.
    lossless: bool = False

    @property
    def _checks(self) -> tuple[Clause, ...]:
        return (_IDENTICAL,) if self.lossless else self.clauses

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.metric for c in self._checks))

    def failures(self, values: Mapping[str, float]) -> list[Clause]:
        """The clauses `values` miss (a clause whose metric is absent is a miss)."""
        return [c for c in self._checks if c.metric not in values or not c.holds(values[c.metric])]

    def met(self, values: Mapping[str, float]) -> bool:
        return not self.failures(values)

    def margin(self, values: Mapping[str, float]) -> float:
        """How far inside (> 0) or outside (< 0) the target `values` lie, relative to each bound
        (the worst clause counts): one scale for targets on metrics of different units."""
        return min(c.margin(values[c.metric]) / max(abs(c.value), 1e-9) for c in self.clauses)

    def __str__(self) -> str:
        return LOSSLESS if self.lossless else ",".join(str(c) for c in self.clauses)

    def needed_metrics(self, chosen: Sequence[str] | None = None) -> list[str]:
        """The metrics to build to judge this target. `chosen`: metrics the caller wants anyway
        (kept first, in order), plus each metric a clause names (a composite is made of the
        chosen ones); None: only what the clauses name, a composite from its default components,
        in the catalogue's order."""
        names = [n.strip() for n in chosen or () if n.strip()]
        for o in self.metrics:
            metric = OUTPUTS[o].metric
            if metric == "composite":
                if chosen is None:
                    names += list(DEFAULT_COMPOSITE_METRICS)
            elif metric not in names:
                names.append(metric)
        names = list(dict.fromkeys(names))
        return names if chosen is not None else sorted(names, key=METRICS.index)


def parse_target(text: str) -> Target:
    """Parse `metric>=x` / `metric<=x` clauses joined by commas, or `lossless`."""
    if not text or not text.strip():
        raise TargetError("empty quality target: expected e.g. 'composite>=0.95'")
    if text.strip() == LOSSLESS:
        return Target((), lossless=True)
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


def resolve_target(target: str | Target | None, quality: str = "high") -> Target:
    """`target` (a string is parsed), or the named `quality` level when it is None."""
    if isinstance(target, Target):
        return target
    if target is None:
        if quality not in QUALITY_LEVELS:
            raise TargetError(f"unknown quality {quality!r}; known: {', '.join(QUALITY_LEVELS)}")
        target = QUALITY_LEVELS[quality]
    return parse_target(target)


#: how a set meets a target: "min" (every image), "mean", or "pNN" (see `check_aggregate`)
Aggregate = str


def check_aggregate(how: str) -> Aggregate:
    """How a set meets a target: `min` (every image), `mean`, or `pNN` (the NN-th percentile
    from the bad end, 0 < NN < 100). Raises `TargetError` for anything else."""
    if how in ("min", "mean") or (how[:1] == "p" and how[1:].isdigit() and 0 < int(how[1:]) < 100):
        return how
    raise TargetError(f"aggregate must be min, mean or pNN (e.g. p10), not {how!r}")
