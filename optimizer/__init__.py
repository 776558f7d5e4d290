"""imgtune: find the smallest image encoding that still meets a perceptual-quality target.

The Python API mirrors the commands: `score_pair` / `score_dirs` (imgtune score). Metrics live
in `optimizer.metrics`, image loading in `optimizer.images`, targets in `optimizer.targets`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load": ".images",
    "SourceImage": ".images",
    "ImageError": ".images",
    "parse_target": ".targets",
    "Target": ".targets",
    "score_pair": ".scoring",
    "score_dirs": ".scoring",
    "MetricSuite": ".metrics",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
