"""A set of metrics scored together: 8-bit arrays in, typed `Scores` out.

The suite owns what is common to every metric: numpy -> [0, 1] NCHW tensors on one device,
alpha (composited over black and over white, or over the backgrounds a metric names, the
worse value of each metric counts), grey vs colour, batching under a pixel budget, and the
composite with its quality level.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._base import Metric, map_tensors, resolve_device, stack_states
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
    #: a grey reference repeated to RGB (the colour version of a grey one)
    grey_as_colour: bool = False
    #: the metrics' states were moved to the host (the device budget had no room for them):
    #: they go to the device with each batch that scores against them
    on_host: bool = False
    #: prepared by the CPU twin (the device had no memory for it): scored there too
    on_twin: bool = False
    _colour: PreparedReference | None = field(default=None, repr=False)
    #: the same reference prepared by the CPU twin, once the device ran out of memory on it
    _twin: PreparedReference | None = field(default=None, repr=False)

    def group_key(self, candidate: np.ndarray) -> tuple:
        """Candidates whose keys are equal can be scored in one batch, each against its own
        reference: same size and channels (a candidate's size is its reference's), same
        backgrounds, same metrics on each."""
        return (
            candidate.shape,
            self.backgrounds,
            self.colour,
            tuple(tuple(sorted(state)) for state in self.per_background),
        )


#: scoring runs in full float32: cuDNN would use TF32 for convolutions on Ampere and newer
#: GPUs by default (1e-4..1e-3 off the CPU and the reference packages). Process-wide flags, so
#: set while any scoring runs and restored when the last one ends.
PRECISION = "float32 (TF32 off)"
_tf32_lock = threading.Lock()
_tf32_users = 0
_tf32_saved: tuple[bool, bool] | None = None


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    global _tf32_users, _tf32_saved
    with _tf32_lock:
        if _tf32_users == 0:
            _tf32_saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _tf32_users += 1
    try:
        yield
    finally:
        with _tf32_lock:
            _tf32_users -= 1
            if _tf32_users == 0 and _tf32_saved is not None:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _tf32_saved


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
        batching: bool | None = None,
        device_memory: int | float | None = None,
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
        #: score through one `BatchScorer` (cross-image micro-batches, a device memory budget,
        #: out-of-memory fallbacks): the default on a GPU; on the CPU, threads score directly
        self.batching = self.device.type == "cuda" if batching is None else batching
        #: the batch scorer's budget: bytes, or a share (0..1) of the device's free memory
        #: (None: 80% of it)
        self.device_memory = device_memory
        #: the device kind `spec()` names when another process scores (a cluster's workers)
        self.spec_device: str | None = None
        self._recipe: dict[str, Any] | None = None
        self._scorer = None
        self._scorer_lock = threading.Lock()

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
        batching: bool | None = None,
        device_memory: int | float | None = None,
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
        suite = cls(
            metrics, composite=spec, device=dev, batching=batching, device_memory=device_memory
        )
        # what the CPU twin (out-of-memory fallback) is built from
        suite._recipe = dict(
            names=names, composite_weights=composite_weights, lpips_net=lpips_net,
            weights_dir=weights_dir, allow_download=allow_download, compile=compile,
        )  # fmt: skip
        return suite

    def __getstate__(self) -> dict[str, Any]:
        # A suite sent to another process leaves its scorer (a thread, a lock) behind: the
        # other process makes its own on first use.
        state = dict(self.__dict__)
        state["_scorer"] = None
        del state["_scorer_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._scorer_lock = threading.Lock()

    def cpu_twin(self) -> MetricSuite:
        """The same metrics on the CPU: where a candidate goes when the GPU runs out of memory
        even for it alone. Needs a suite made by `build` (which knows how to make it again)."""
        if self.device.type == "cpu":
            return self
        if self._recipe is None:
            raise RuntimeError(
                "this metric suite was not made by MetricSuite.build, so it has no CPU twin"
            )
        return MetricSuite.build(**self._recipe, device="cpu", batching=False)

    @property
    def scorer(self):
        """What scores for this suite in a run: one `BatchScorer` per suite (its device's
        owner) when batching, else a `DirectScorer` (each caller scores on its own thread)."""
        with self._scorer_lock:
            if self._scorer is None:
                from .batching import BatchScorer, DirectScorer

                self._scorer = (
                    BatchScorer(self, budget_bytes=self.device_memory)
                    if self.batching
                    else DirectScorer(self)
                )
            return self._scorer

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

    def spec(self) -> dict[str, Any]:
        """`describe()` plus where and how the numbers were computed (device kind, precision):
        what keys score caches and manifests, so that CPU and GPU scores never mix there.
        Presets and studies compare `describe()`: the metrics, not the machine."""
        device = self.spec_device or self.device.type
        return {**self.describe(), "device": device, "precision": PRECISION}

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
        with torch.no_grad(), full_float32():
            for bg, names in users.items():
                t = _flatten_alpha(ref, bg)
                if grey_as_colour:
                    t, colour = t.expand(-1, 3, -1, -1).contiguous(), 3
                per_bg.append({m.name: m.prepare(t) for m in self.metrics if m.name in names})
                del t  # one float copy at a time
        return PreparedReference(
            tuple(reference.shape), bgs, per_bg, reference, background, colour, grey_as_colour
        )

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
            self._check_size(prepared, c)
        chunk = max(1, self.batch_pixels // (h * w))
        out: list[Scores] = []
        for start in range(0, len(candidates), chunk):
            part = candidates[start : start + chunk]
            out.extend(self.score_pairs([(prepared, c) for c in part]))
        return out

    @staticmethod
    def _check_size(prepared: PreparedReference, candidate: np.ndarray) -> None:
        h, w = prepared.shape[:2]
        if candidate.shape[:2] != (h, w):
            raise ValueError(
                f"candidate is {candidate.shape[1]}x{candidate.shape[0]}, reference is {w}x{h}: "
                "sizes differ"
            )

    def matched(self, prepared: PreparedReference, candidate: np.ndarray) -> PreparedReference:
        """The reference version a candidate is scored against: a grey reference's colour
        version for a colour candidate, else the reference itself."""
        self._check_size(prepared, candidate)
        channels = candidate.shape[2] if candidate.ndim == 3 else 0
        cand_colour = channels - (1 if channels in (2, 4) else 0)
        if cand_colour == 3 and prepared.colour == 1:
            return self._colour_version(prepared)
        return prepared

    def score_pairs(self, pairs: Sequence[tuple[PreparedReference, np.ndarray]]) -> list[Scores]:
        """Score each candidate against its own reference in one batch (all of one
        `PreparedReference.group_key`): candidates of several images at once. The caller sizes
        the batch (`score` and `BatchScorer` do)."""
        refs = [self.matched(p, c) for p, c in pairs]
        keys = {p.group_key(c) for p, (_, c) in zip(refs, pairs, strict=True)}
        if len(keys) != 1:
            raise ValueError("these candidates cannot share a batch (sizes or channels differ)")
        parts = [_to_tensor(c, self.device) for _, c in pairs]
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        del parts
        first = refs[0]
        one = all(p is first for p in refs)  # one reference: its batch-1 state broadcasts
        worst: dict[str, torch.Tensor] = {}
        with torch.inference_mode(), full_float32():
            for k, bg in enumerate(first.backgrounds or (None,)):
                states = [
                    self._on_device(p.per_background[k]) if p.on_host else p.per_background[k]
                    for p in ([first] if one else refs)
                ]
                state = states[0] if one else stack_states(states)
                del states
                xb = _flatten_alpha(x, bg)
                if xb.shape[1] == 1 and first.colour == 3:
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
                del state, xb
        columns = {k: v.double().cpu().tolist() for k, v in worst.items()}
        results = []
        for i in range(len(pairs)):
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

    def _on_device(self, state: dict[str, Any]) -> dict[str, Any]:
        # A state kept on the host (the device budget had no room for it), for one batch.
        return map_tensors(state, lambda t: t.to(self.device, non_blocking=True))

    def score_pair(self, reference: np.ndarray, candidate: np.ndarray) -> Scores:
        return self.score(self.prepare(reference), [candidate])[0]
