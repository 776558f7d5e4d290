"""Presets: the versioned JSON document a tuned recipe is handed on as (DESIGN.md section 2)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .metrics.catalog import OUTPUTS

__all__ = ["SCHEMA", "build_preset", "read_preset", "write_preset"]

SCHEMA = 1


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("imgtune", "pillow", "optuna", "torch", "lpips", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def build_preset(result, images, target, aggregate: str) -> dict[str, Any]:
    """The preset for a feasible `TuneResult` (never for one that misses its target)."""
    ev = result.best
    if ev is None or not ev.feasible:
        raise ValueError("no feasible recipe: a preset must not claim a target it does not meet")
    quality = {}
    for metric in target.metrics:
        vals = [v[metric] for v in ev.per_image.values()]
        worst = min(vals) if OUTPUTS[metric].higher_is_better else max(vals)
        quality[metric] = {"worst": worst, "mean": sum(vals) / len(vals)}
    total = int(ev.total_bytes)
    return {
        "schema": SCHEMA,
        "params": ev.candidate.as_dict(),
        "pillow_save_kwargs": ev.candidate.settings().pillow_kwargs(),
        "max_size": [max(it.size[0] for it in images.items), max(it.size[1] for it in images.items)]
        if images.resized
        else None,
        "background": list(images.background) if images.background else None,
        "target": {"spec": str(target), "aggregate": aggregate},
        "metrics": images.suite.spec(),
        "achieved": {
            "quality": quality,
            "total_bytes": total,
            "source_bytes": images.source_bytes,
            "saved_bytes": images.source_bytes - total,
            "per_image": {
                name: {k: (None if v == float("inf") else v) for k, v in vals.items()}
                for name, vals in ev.per_image.items()
            },
        },
        "images": images.fingerprint(),
        "study": {"name": result.study_name, "storage": result.storage, "trials": result.trials},
        "versions": _versions(),
    }


def write_preset(preset: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, json.dumps(preset, indent=2) + "\n")


def read_preset(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    if data.get("schema") != SCHEMA:
        raise ValueError(
            f"{path}: preset schema {data.get('schema')!r}; this imgtune reads {SCHEMA}"
        )
    return data
