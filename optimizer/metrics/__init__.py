"""Full-reference image quality metrics in torch: LPIPS, DISTS, SSIM, MS-SSIM, PSNR,
SSIMULACRA2 and a composite; FID and KID for sets (`set_metrics`).

All take float tensors in [0, 1], NCHW, on one device. Heavy modules (torch) load on first use,
so that `from optimizer.metrics import OUTPUTS` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .catalog import (
    COMPOSITE_LEVELS,
    DEFAULT_COMPOSITE_METRICS,
    DEFAULT_COMPOSITE_WEIGHTS,
    DEFAULT_METRICS,
    METRICS,
    NAMED_COMPOSITES,
    OUTPUTS,
    CompositeSpec,
    MetricOutput,
    lpips_category,
    output,
    quality_level,
)

_LAZY = {
    "Metric": "._base",
    "resolve_device": "._base",
    "SSIM": ".ssim",
    "MSSSIM": ".ssim",
    "ssim": ".ssim",
    "ms_ssim": ".ssim",
    "PSNR": ".psnr",
    "psnr": ".psnr",
    "SSIMULACRA2": ".ssimulacra2",
    "ssimulacra2": ".ssimulacra2",
    "LPIPS": ".lpips_metric",
    "WeightsMissingError": ".weights",
    "DISTS": ".dists_metric",
    "load_dists_network": ".dists_metric",
    "load_lpips_network": ".lpips_metric",
    "SET_METRICS": ".set_metrics",
    "SetScorer": ".set_metrics",
    "parse_set_metrics": ".set_metrics",
    "MetricSuite": ".suite",
    "Scores": ".suite",
    "build_metric": ".suite",
}

__all__ = [
    "COMPOSITE_LEVELS",
    "DEFAULT_COMPOSITE_METRICS",
    "DEFAULT_COMPOSITE_WEIGHTS",
    "DEFAULT_METRICS",
    "METRICS",
    "NAMED_COMPOSITES",
    "OUTPUTS",
    "CompositeSpec",
    "MetricOutput",
    "lpips_category",
    "output",
    "quality_level",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
