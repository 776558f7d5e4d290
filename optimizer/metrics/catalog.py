"""The names every metric output goes by, their direction, the composite and quality levels.

Torch-free on purpose: target parsing, `--help` and reports need these facts without paying for
`import torch`. Metric classes take their `outputs` from here, so a name is declared once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "COMPOSITE_LEVELS",
    "DEFAULT_COMPOSITE_WEIGHTS",
    "DEFAULT_COMPOSITE_METRICS",
    "DEFAULT_METRICS",
    "METRICS",
    "NAMED_COMPOSITES",
    "OUTPUTS",
    "CompositeSpec",
    "MetricOutput",
    "lpips_category",
    "output",
    "quality_level",
]


@dataclass(frozen=True)
class MetricOutput:
    """One number a metric reports. `higher_is_better` sets a target's direction."""

    name: str
    higher_is_better: bool
    description: str
    metric: str


_O = MetricOutput
OUTPUTS: dict[str, MetricOutput] = {
    o.name: o
    for o in (
        _O("lpips", False, "learned perceptual distance (0 = identical)", "lpips"),
        _O("lpips_p95", False, "LPIPS of the worst 5% of pixels (spatial map p95)", "lpips"),
        _O(
            "dists",
            False,
            "DISTS structure and texture distance, VGG16 features (0 = identical)",
            "dists",
        ),
        _O("ssim", True, "structural similarity, mean over the image (1 = identical)", "ssim"),
        _O("ssim_p5", True, "SSIM of the worst 5% of 32x32 tiles (worst region)", "ssim"),
        _O("ms_ssim", True, "multi-scale SSIM (1 = identical)", "ms_ssim"),
        _O("psnr", True, "peak signal-to-noise ratio in dB (inf = identical)", "psnr"),
        _O(
            "ssimulacra2",
            True,
            "SSIMULACRA 2.1: 100 identical, 90 visually lossless, 80 very high, 70 high, 50 medium",
            "ssimulacra2",
        ),
        _O(
            "composite",
            True,
            "weighted sum of normalised metrics, 0..1 (1 = identical)",
            "composite",
        ),
    )
}
#: metric classes by name, in the order reports show them
METRICS: tuple[str, ...] = ("lpips", "dists", "ssim", "ms_ssim", "psnr", "ssimulacra2")
#: what is scored unless told otherwise: DISTS (a second VGG16-sized network, several times
#: LPIPS's cost on the CPU) is asked for by name, a target or `--composite documents`
DEFAULT_METRICS: tuple[str, ...] = ("lpips", "ssim", "ms_ssim", "psnr", "ssimulacra2")
#: the default composite (the design documents' weights): renormalised to sum 1 over the
#: components present, so DISTS counts 0.2 when it is enabled and nothing when it is not.
#: The documents' fifth component, FID (0.1), is a set metric and never enters a per-image score.
DEFAULT_COMPOSITE_WEIGHTS: dict[str, float] = {"lpips": 0.3, "ssim": 0.3, "dists": 0.2, "psnr": 0.1}
#: the metrics a composite target is judged with when none is chosen: the default composite's
#: components among the default metrics (DISTS only when asked for)
DEFAULT_COMPOSITE_METRICS: tuple[str, ...] = tuple(
    n for n in DEFAULT_COMPOSITE_WEIGHTS if n in DEFAULT_METRICS
)
#: named composites (`--composite NAME`): all their components are computed
NAMED_COMPOSITES: dict[str, dict[str, float]] = {
    # LPIPS 0.3, SSIM 0.3, DISTS 0.2, PSNR 0.1 (+ FID 0.1, renormalised away per image)
    "documents": dict(DEFAULT_COMPOSITE_WEIGHTS),
}
#: composite components (equal weights) when none of the default's is enabled
FALLBACK_COMPOSITE: tuple[str, ...] = ("ssimulacra2", "ms_ssim")
#: composite -> quality level, highest first (the prototype's bands)
COMPOSITE_LEVELS: tuple[tuple[float, str], ...] = (
    (0.9, "excellent"),
    (0.8, "very_good"),
    (0.7, "good"),
    (0.6, "acceptable"),
    (0.5, "poor"),
)


def output(name: str) -> MetricOutput:
    """Look a metric output up by name; an unknown name lists the known ones."""
    try:
        return OUTPUTS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(OUTPUTS)}") from None


def _clamp01(v):
    return v.clamp(0.0, 1.0) if hasattr(v, "clamp") else min(max(v, 0.0), 1.0)


# How each output becomes a 0..1 "higher is better" component (the prototype's scheme: LPIPS as
# 1 - d, SSIM as is, PSNR / 50 capped at 1).
_NORMALISE = {
    "lpips": lambda d: _clamp01(1.0 - d),
    "lpips_p95": lambda d: _clamp01(1.0 - d),
    "dists": lambda d: _clamp01(1.0 - d),
    "ssim": lambda s: s,
    "ssim_p5": lambda s: s,
    "ms_ssim": lambda s: s,
    # inf dB (identical) / 50 clamps to 1 like any PSNR above 50 dB.
    "psnr": lambda p: _clamp01(p / 50.0),
    "ssimulacra2": lambda s: _clamp01(s / 100.0),
}
_FORMULA = {
    "lpips": "(1 - lpips)",
    "lpips_p95": "(1 - lpips_p95)",
    "dists": "(1 - dists)",
    "psnr": "min(psnr/50, 1)",
    "ssimulacra2": "clamp(ssimulacra2/100, 0, 1)",
}


@dataclass(frozen=True)
class CompositeSpec:
    """Weights of the composite, normalised to sum 1; recorded with every score and preset.

    `name`: the named composite it came from (`--composite documents`), if any."""

    weights: tuple[tuple[str, float], ...]
    name: str | None = None

    @classmethod
    def from_mapping(
        cls, weights: dict[str, float], available=None, *, name: str | None = None
    ) -> CompositeSpec:
        """Keep the components that `available` outputs provide, renormalised to sum 1."""
        for n, w in weights.items():
            if n not in _NORMALISE:
                raise ValueError(
                    f"composite cannot use {n!r}; components: {', '.join(_NORMALISE)}"
                    f" (or a named composite: {', '.join(NAMED_COMPOSITES)})"
                )
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"composite weight for {n} must be >= 0, got {w}")
        kept = {n: w for n, w in weights.items() if w > 0 and (available is None or n in available)}
        total = sum(kept.values())
        if total <= 0:
            raise ValueError(
                "the composite has no component among the enabled metrics "
                f"(weights {weights}, enabled {sorted(available or [])})"
            )
        return cls(tuple((n, w / total) for n, w in kept.items()), name)

    @classmethod
    def default(cls, available) -> CompositeSpec:
        """The default weights over the enabled metrics; when none of its components is enabled
        (e.g. `--metrics ssimulacra2`), equal weights over the enabled of ssimulacra2, ms_ssim."""
        if any(n in available for n in DEFAULT_COMPOSITE_WEIGHTS):
            return cls.from_mapping(DEFAULT_COMPOSITE_WEIGHTS, available=available)
        return cls.from_mapping(dict.fromkeys(FALLBACK_COMPOSITE, 1.0), available=available)

    @classmethod
    def parse(cls, text: str, available=None) -> CompositeSpec:
        """`lpips=0.3,ssim=0.3,psnr=0.1` or a named composite (`documents`) -> spec; a
        malformed item is named. A named composite keeps all its components."""
        key = text.strip().lower()
        if key in NAMED_COMPOSITES:
            return cls.from_mapping(NAMED_COMPOSITES[key], name=key)
        weights: dict[str, float] = {}
        for item in filter(None, (t.strip() for t in text.split(","))):
            name, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(
                    f"bad composite weight {item!r}: expected NAME=NUMBER or one of "
                    f"{', '.join(NAMED_COMPOSITES)}"
                ) from None
        return cls.from_mapping(weights, available)

    def metrics(self) -> list[str]:
        """The metrics whose outputs the composite is made of."""
        return list(dict.fromkeys(OUTPUTS[n].metric for n, _ in self.weights))

    def value(self, values):
        """The composite of a mapping output name -> value (floats or tensors alike)."""
        return sum(w * _NORMALISE[n](values[n]) for n, w in self.weights)

    def describe(self) -> str:
        formula = " + ".join(f"{w:.3f}*{_FORMULA.get(n, n)}" for n, w in self.weights)
        if self.name == "documents":
            formula += (
                "  (the design documents' 0.3 LPIPS + 0.3 SSIM + 0.2 DISTS + 0.1 PSNR + 0.1 FID "
                "over 0.9: FID is a set metric, renormalised away per image; see --set-metrics)"
            )
        return formula

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)


def quality_level(composite: float) -> str:
    """excellent >= 0.9, very_good >= 0.8, good >= 0.7, acceptable >= 0.6, poor >= 0.5."""
    for threshold, name in COMPOSITE_LEVELS:
        if composite >= threshold:
            return name
    return "very_poor"


def lpips_category(distance: float) -> str:
    """excellent < 0.1, good < 0.2, acceptable < 0.4, else poor (the prototype's bands)."""
    for threshold, name in ((0.1, "excellent"), (0.2, "good"), (0.4, "acceptable")):
        if distance < threshold:
            return name
    return "poor"
