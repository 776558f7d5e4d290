"""imgtune: find the smallest image encoding that still meets a perceptual-quality target.

The Python API has the commands' names and defaults (`optimizer.api`):

    import optimizer
    result = optimizer.tune("photos/", quality="high")     # -> TuneResult (.preset, .recipe)
    summary = optimizer.optimize("photos/", "out/")         # -> RunSummary
    pair = optimizer.score("a.png", "a.avif")               # -> PairResult (.scores)

Heavy modules (torch, optuna) load on first use, so `import optimizer` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import cpus as _cpus

__version__ = "0.1.0"

# Before torch loads OpenMP: idle torch threads sleep rather than spin (see optimizer.cpus).
_cpus.passive_wait()

_LAZY = {
    "tune": ".api",
    "optimize": ".api",
    "apply": ".api",
    "score": ".api",
    "check": ".api",
    "build_suite": ".api",
    "TuneResult": ".api",
    "load_preset": ".presets",
    "Preset": ".presets",
    "PresetError": ".presets",
    "RunSummary": ".batch",
    "Candidate": ".recipe",
    "ImgtuneError": ".errors",
    "UsageError": ".errors",
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
