"""A set of metrics scored together: 8-bit arrays in, typed `Scores` out.

The suite owns what is common to every metric: numpy -> [0, 1] NCHW tensors on one device,
alpha (composited over black and over white, or over the backgrounds a metric names, the
worse value of each metric counts), grey vs colour, batching under a pixel budget, and the
composite with its quality level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._base import Metric, resolve_device
from .catalog import (
    DEFAULT_METRICS,
    METRICS,
    OUTPUTS,
    CompositeSpec,
    lpips_category,
    quality_level,
)

__all__ = ["MetricSuite", "PreparedReference", "Scores", "build_metric"]

#: backgrounds alpha images are judged over (black and white: the worse counts), unless a
#: metric names its own (`Metric.alpha_backgrounds`)
ALPHA_BACKGROUNDS: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class Scores:
    """Every output of the suite for one candidate, plus the composite's quality level."""

    values: dict[str, float]
    level: str
    lpips_category: str | None = None

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    @property
    def composite(self) -> float:
        return self.values["composite"]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.values)
        out["level"] = self.level
        if self.lpips_category is not None:
            out["lpips_category"] = self.lpips_category
        return out


@dataclass
class PreparedReference:
    """A reference prepared once: per background, each metric's cached state."""

    shape: tuple[int, int, int]
    backgrounds: tuple[tuple[float, float, float], ...] | None
    per_background: list[dict[str, Any]]
    #: the uint8 reference (the caller's array, not a copy) and the background it was judged
    #: over, to prepare a colour version on demand; no float copy is kept (12 bytes a pixel)
    reference: np.ndarray = field(repr=False)
    background: tuple[int, int, int] | None = None
    #: colour channels the metrics saw (1 grey, 3 colour)
    colour: int = 3
    _colour: PreparedReference | None = field(default=None, repr=False)


def build_metric(
    name: str,
    *,
    device="auto",
    lpips_net: str = "alex",
    weights_dir: str | Path | None = None,
    allow_download: bool = True,
    compile: bool = False,
) -> Metric:
    """Create a metric by name; an unknown name lists the known ones. `compile` fuses the
    kernels of the metrics that gain from it (SSIM, MS-SSIM, SSIMULACRA2) with torch.compile."""
    if name == "ssim":
        from .ssim import SSIM

        return SSIM(device, compile=compile)
    if name == "ms_ssim":
        from .ssim import MSSSIM

        return MSSSIM(device, compile=compile)
    if name == "psnr":
        from .psnr import PSNR

        return PSNR(device)
    if name == "ssimulacra2":
        from .ssimulacra2 import SSIMULACRA2

        return SSIMULACRA2(device, compile=compile)
    if name == "lpips":
        from .lpips_metric import LPIPS

        return LPIPS(device, net=lpips_net, weights_dir=weights_dir, allow_download=allow_download)
    if name == "dists":
        from .dists_metric import DISTS

        return DISTS(device, weights_dir=weights_dir, allow_download=allow_download)
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")


def _to_tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"pixels must be uint8 H x W x C with C in 1..4, got {pixels.dtype} {pixels.shape}"
        )
    t = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).to(device)
    return t.permute(2, 0, 1).unsqueeze(0).to(torch.float32).div_(255.0)


def _flatten_alpha(x: torch.Tensor, background: tuple[float, float, float] | None) -> torch.Tensor:
    """(N, C, H, W) with C in 1..4 -> colour channels only, alpha composited over `background`."""
    c = x.shape[1]
    if c in (1, 3):
        return x
    colour, alpha = x[:, :-1], x[:, -1:]
    bg = torch.tensor(background or (0.0, 0.0, 0.0), dtype=x.dtype, device=x.device)
    bg = bg[: colour.shape[1]].view(1, -1, 1, 1)
    return colour * alpha + bg * (1 - alpha)


class MetricSuite:
    """Metrics scored together, with the composite over the components they provide."""

    def __init__(
        self,
        metrics: Sequence[Metric],
        *,
        composite: CompositeSpec | None = None,
        device="auto",
        batch_pixels: int | None = None,
    ) -> None:
        if not metrics:
            raise ValueError("a metric suite needs at least one metric")
        self.device = resolve_device(device)
        self.metrics = list(metrics)
        provided = [o.name for m in self.metrics for o in m.outputs]
        self.composite = composite or CompositeSpec.default(provided)
        missing = [n for n, _ in self.composite.weights if n not in provided]
        if missing:
            raise ValueError(f"composite uses {', '.join(missing)}, which no enabled metric gives")
        self.output_names: tuple[str, ...] = (*provided, "composite")
        # On the CPU small batches (about a megapixel) are fastest: the working set stays in
        # cache; larger ones were slower. On a GPU large batches are (benchmarks/RESULTS.md).
        if batch_pixels is None:
            batch_pixels = 16_000_000 if self.device.type == "cuda" else 1_000_000
        self.batch_pixels = batch_pixels

    @classmethod
    def build(
        cls,
        names: Sequence[str] = DEFAULT_METRICS,
        *,
        device="auto",
        composite_weights: str | dict[str, float] | None = None,
        lpips_net: str = "alex",
        weights_dir: str | Path | None = None,
        allow_download: bool = True,
        compile: bool = False,
    ) -> MetricSuite:
        """Build from metric names (LPIPS and DISTS weights are located first, before any work).

        An explicit composite (weights or a name such as ``documents``) adds the metrics its
        components need to `names`."""
        names = list(dict.fromkeys(names))
        for n in names:
            if n not in METRICS:
                raise ValueError(f"unknown metric {n!r}; known: {', '.join(METRICS)}")
        spec = None
        if isinstance(composite_weights, str):
            spec = CompositeSpec.parse(composite_weights)
        elif composite_weights is not None:
            spec = CompositeSpec.from_mapping(composite_weights)
        if spec is not None:
            names += [n for n in spec.metrics() if n not in names]
        dev = resolve_device(device)
        metrics = [
            build_metric(
                n,
                device=dev,
                lpips_net=lpips_net,
                weights_dir=weights_dir,
                allow_download=allow_download,
                compile=compile,
            )
            for n in names
        ]
        if spec is None:
            spec = CompositeSpec.default([o.name for m in metrics for o in m.outputs])
        return cls(metrics, composite=spec, device=dev)

    @property
    def min_side(self) -> int:
        return max(m.min_side for m in self.metrics)

    @property
    def working_set_per_pixel(self) -> int:
        """Bytes per pixel the metrics add to an image's working set (DISTS's feature maps)."""
        return sum(m.working_set_per_pixel for m in self.metrics)

    def describe(self) -> dict[str, Any]:
        """What produced these numbers: recorded in reports, studies and presets."""
        return {
            "metrics": [
                {
                    "name": m.name,
                    "version": m.version,
                    **({"net": m.net_name} if hasattr(m, "net_name") else {}),
                    **(
                        {"alpha_backgrounds": [list(b) for b in m.alpha_backgrounds]}
                        if m.alpha_backgrounds
                        else {}
                    ),
                }
                for m in self.metrics
            ],
            "composite": self.composite.as_dict(),
            "alpha_backgrounds": [list(b) for b in ALPHA_BACKGROUNDS],
        }

    def prepare(
        self, reference: np.ndarray, *, background: tuple[int, int, int] | None = None
    ) -> PreparedReference:
        """Prepare a uint8 H x W x C reference once; alpha is judged over black and white, or
        over `background` (0..255 RGB) alone when the output will be flattened onto it."""
        return self._prepare(reference, background, grey_as_colour=False)

    def _prepare(
        self,
        reference: np.ndarray,
        background: tuple[int, int, int] | None,
        *,
        grey_as_colour: bool,
    ) -> PreparedReference:
        ref = _to_tensor(reference, self.device)
        users = self._background_users(ref.shape[1], background)
        bgs = tuple(users) if ref.shape[1] in (2, 4) else None
        per_bg = []
        colour = ref.shape[1] - (1 if ref.shape[1] in (2, 4) else 0)
        with torch.no_grad():
            for bg, names in users.items():
                t = _flatten_alpha(ref, bg)
                if grey_as_colour:
                    t, colour = t.expand(-1, 3, -1, -1).contiguous(), 3
                per_bg.append({m.name: m.prepare(t) for m in self.metrics if m.name in names})
                del t  # one float copy at a time
        return PreparedReference(tuple(reference.shape), bgs, per_bg, reference, background, colour)

    def _background_users(
        self, channels: int, background: tuple[int, int, int] | None
    ) -> dict[tuple[float, float, float] | None, set[str]]:
        """Background -> the metrics judged over it. Without alpha: one entry, None. With alpha:
        `background` alone for every metric when the output will be flattened onto it; else each
        metric's own `alpha_backgrounds` (SSIMULACRA2: the reference's greys) or black and white.
        """
        if channels not in (2, 4):
            return {None: {m.name for m in self.metrics}}
        if background is not None:
            return {tuple(c / 255.0 for c in background): {m.name for m in self.metrics}}
        users: dict[tuple[float, float, float] | None, set[str]] = {}
        for m in self.metrics:
            for bg in m.alpha_backgrounds or ALPHA_BACKGROUNDS:
                users.setdefault(bg, set()).add(m.name)
        return users

    def _colour_version(self, prepared: PreparedReference) -> PreparedReference:
        # A grey reference scored against a colour candidate: compare in RGB (grey repeated).
        if prepared._colour is None:
            prepared._colour = self._prepare(
                prepared.reference, prepared.background, grey_as_colour=True
            )
        return prepared._colour

    def score(self, prepared: PreparedReference, candidates: Sequence[np.ndarray]) -> list[Scores]:
        """Score uint8 candidates (same height and width as the reference) in batches."""
        h, w = prepared.shape[:2]
        for c in candidates:
            if c.shape[:2] != (h, w):
                raise ValueError(
                    f"candidate is {c.shape[1]}x{c.shape[0]}, reference is {w}x{h}: sizes differ"
                )
        chunk = max(1, self.batch_pixels // (h * w))
        out: list[Scores] = []
        for start in range(0, len(candidates), chunk):
            out.extend(self._score_batch(prepared, candidates[start : start + chunk]))
        return out

    def _score_batch(
        self, prepared: PreparedReference, batch: Sequence[np.ndarray]
    ) -> list[Scores]:
        parts = [_to_tensor(c, self.device) for c in batch]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        del parts
        ref_colour = prepared.colour
        cand_colour = x.shape[1] - (1 if x.shape[1] in (2, 4) else 0)
        if cand_colour == 3 and ref_colour == 1:
            prepared = self._colour_version(prepared)
        worst: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for bg, state in zip(
                prepared.backgrounds or (None,), prepared.per_background, strict=True
            ):
                xb = _flatten_alpha(x, bg)
                if xb.shape[1] == 1 and prepared.colour == 3:
                    xb = xb.expand(-1, 3, -1, -1)
                for m in self.metrics:
                    if m.name not in state:  # this metric is not judged over this background
                        continue
                    for name, value in m.score(xb, state[m.name]).items():
                        better = OUTPUTS[name].higher_is_better
                        if name not in worst:
                            worst[name] = value
                        else:
                            pick = torch.minimum if better else torch.maximum
                            worst[name] = pick(worst[name], value)
        columns = {k: v.double().cpu().tolist() for k, v in worst.items()}
        results = []
        for i in range(len(batch)):
            values = {k: float(v[i]) for k, v in columns.items()}
            values["composite"] = float(self.composite.value(values))
            results.append(
                Scores(
                    values=values,
                    level=quality_level(values["composite"]),
                    lpips_category=lpips_category(values["lpips"]) if "lpips" in values else None,
                )
            )
        return results

    def score_pair(self, reference: np.ndarray, candidate: np.ndarray) -> Scores:
        return self.score(self.prepare(reference), [candidate])[0]
