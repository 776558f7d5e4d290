"""SSIMULACRA 2.1 in torch, matching Cloudinary's reference C++ implementation.

Reference: the SSIMULACRA2 reference implementation, version 2.1 (April 2023, BSD-3):
cloudinary/ssimulacra2 `src/ssimulacra2.cc`, the same code as libjxl `tools/ssimulacra2.cc`.
The algorithm and the constants below (XYB matrix and bias, C2, the 108 pooling weights, the
final mapping's coefficients) are that file's, version 2.1; version 2.0 had other weights and
another mapping, so the two must not be mixed. Scale, from the reference's documentation:
100 = identical, 90 visually lossless, 80 very high, 70 high, 50 medium, 30 low, negative =
extremely low.

Per scale (at most six, 2x box downsampling of linear RGB, stop below 8 px) and per XYB channel:
an SSIM-like error map and two edge-difference maps (ringing/blocking "artifact", blur "detail
lost"), each pooled by its mean and its 4-norm: 108 values, weighted, then mapped to 0..100.

The reference's recursive Gaussian (sigma 1.5) equals a 9-tap separable filter with zero
padding, so a convolution reproduces it.

Memory: `prepare` keeps only the reference's per-scale XYB planes (16 bytes per pixel over all
scales). Scoring converts the candidate band by band of rows and blurs each band's statistics,
the reference's local means and variances with the candidate's, in one call: beyond its input
it holds the next scale's linear RGB (4 bytes per pixel) and a band's working set
(`band_bytes`, 32 MiB by default on the CPU), whatever the image size (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._base import Metric, compiled, pick_state
from ._blur import blur
from .catalog import OUTPUTS

__all__ = ["SSIMULACRA2", "WEIGHTS", "ssimulacra2"]

SCALES = 6
MIN_SIDE = 8
C2 = 0.0009
#: the reference's recursive Gaussian (sigma 1.5) as its exact 9-tap kernel
KERNEL = (
    0.009414367809654,
    0.03601111465836,
    0.1093353727775,
    0.2129285920104,
    0.2646211054882,
    0.2129285920104,
    0.1093353727775,
    0.03601111465836,
    0.009414367809654,
)
RADIUS = len(KERNEL) // 2
#: linear RGB -> XYB: the reference's mixing matrix and bias (libjxl's opsin absorbance values)
XYB_BIAS = 0.0037930732552754493
XYB_MATRIX = (
    (0.30, 0.622, 0.078),
    (0.23, 0.692, 0.078),
    (0.24342268924547819, 0.20476744424496821, 0.5518098665095536),
)
#: SSIMULACRA 2.1's weights, ordered: channel (X, Y, B), scale, norm (1, 4), map (ssim,
#: artifact, detail lost). Fewer scales use a prefix (one running counter, as the reference).
WEIGHTS = (
    0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0,
    0.0, 0.0004371155730107379, 0.0, 1.1041726426657346, 0.00066284834129271,
    0.00015231632783718752,
    0.0, 0.0016406437456599754, 0.0, 1.8422455520539298, 11.441172603757666, 0.0,
    0.0007989109436015163, 0.000176816438078653, 0.0, 1.8787594979546387, 10.94906990605142, 0.0,
    0.0007289346991508072, 0.9677937080626833, 0.0, 0.00014003424285435884, 0.9981766977854967,
    0.00031949755934435053,
    0.0004550992113792063, 0.0, 0.0, 0.0013648766163243398, 0.0, 0.0,
    0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262,
    0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296, 1.027889937768264,
    225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361, 0.001237755635509985,
    176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408,
    0.0, 0.0, 0.0, 34.77906344483772, 44.835625328877896, 0.0,
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    0.0, 0.0008680556573291698, 0.0, 0.0, 0.0, 0.0,
    0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112, 0.0, 0.0,
    0.0, 0.0, 0.0, 0.0004179171803251336, 0.0017290828234722833, 0.0,
    0.0020827005846636437, 0.0, 0.0, 8.826982764996862, 23.19243343998926, 0.0,
    95.1080498811086, 0.9863978034400682, 0.9834382792465353, 0.0012286405048278493,
    171.2667255897307, 0.9807858872435379,
    0.0, 0.0, 0.0, 0.0005130064588990679, 0.0, 0.00010854057858411537,
)  # fmt: skip
#: a band's working set per candidate: small on the CPU, where a band that stays in cache scores
#: faster (benchmarks/RESULTS.md, "Band size of the banded metrics"), large on CUDA, where
#: parallelism needs work
BAND_BYTES = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}
MIN_BAND_ROWS = 64
#: backgrounds (sRGB-encoded grey) the reference tool composites alpha over; the lower score counts
ALPHA_BACKGROUNDS = ((0.1, 0.1, 0.1), (0.9, 0.9, 0.9))


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


def linear_to_xyb(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) linear RGB -> the reference's positive XYB (X' = 14X + .42, Y' = Y + .01,
    B' = B - Y + .55)."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    # Elementwise, not a matrix product: a product's rounding depends on where a pixel falls in
    # BLAS's tiles (so on the batch), and a candidate equal to the reference must convert to
    # the same bits.
    mixed = torch.cat([m0 * r + m1 * g + m2 * b for m0, m1, m2 in XYB_MATRIX], dim=1) + XYB_BIAS
    cb = torch.tensor(XYB_BIAS, dtype=torch.float64).pow(1 / 3).item()
    # mixed >= the bias for non-negative input, so the cube root's gradient stays finite
    c = mixed.clamp_min(0).pow(1 / 3) - cb
    x = 0.5 * (c[:, 0] - c[:, 1])
    y = 0.5 * (c[:, 0] + c[:, 1])
    return torch.stack([14.0 * x + 0.42, y + 0.01, c[:, 2] - y + 0.55], dim=1)


def downsample(rgb: torch.Tensor) -> torch.Tensor:
    """2x2 box average; an odd last row/column is replicated (output ceil(h/2) x ceil(w/2))."""
    h, w = rgb.shape[2:]
    if h % 2 or w % 2:
        rgb = F.pad(rgb, (0, w % 2, 0, h % 2), mode="replicate")
    return F.avg_pool2d(rgb, 2)


def _kernel(device, dtype) -> torch.Tensor:
    return torch.tensor(KERNEL, dtype=dtype, device=device)


def _halo(h: int, r0: int, r1: int) -> tuple[int, int]:
    """The input rows output rows r0:r1 of the blur read: RADIUS each side, within the image."""
    return max(0, r0 - RADIUS), min(h, r1 + RADIUS)


def _blur_band(band: torch.Tensor, k: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """Zero-padded separable blur of a band of rows (N, C, rows, W) that carries `top` and
    `bottom` rows of context; missing context (past the image's edge) is zeros, as the
    reference's blur sees it. Returns only the band's own rows."""
    return blur(band, k, (RADIUS, RADIUS, RADIUS - top, RADIUS - bottom), exact=True)


def _chunks(h: int, w: int, band_bytes: int) -> list[tuple[int, int]]:
    """The row bands of a plane h x w: even sizes (so each halves into the next scale's rows)
    of at least the blur's radius, ~`band_bytes` of working set per candidate. They depend on
    the size alone, so a reference and its candidates are cut, converted and blurred alike."""
    # ~40 float planes per pixel live at once inside a band; at least MIN_BAND_ROWS rows (even),
    # so the halo recomputed around each band stays a small share of it.
    rows = max(MIN_BAND_ROWS, band_bytes // (40 * 4 * max(w, 1)) // 2 * 2)
    return [(r, min(h, r + rows)) for r in range(0, h, rows)]


def _band_sums(
    xb: torch.Tensor, yb: torch.Tensor, k: torch.Tensor, top: int, bottom: int
) -> torch.Tensor:
    """One band of one scale: candidate rows `xb` (N, 3, rows, W) and reference rows `yb`
    (1, 3, rows, W), in positive XYB, with `top`/`bottom` rows of blur context. Returns
    (N, 3, 6) sums over the band's own rows: [ssim, artifact, detail lost] then the same to the
    4th power. The reference's local statistics are blurred in the same call as the
    candidate's: with an exact blur, identical images then give s12 == s22 == s11 and
    mu1 == mu2 bit for bit, so d = 0 exactly (the 4-norm and the final mapping turn a 1e-7
    residue into 0.1 point)."""
    n = xb.shape[0]
    y = yb.expand(n, -1, -1, -1)
    stats = _blur_band(torch.cat([xb, xb * xb, xb * y, y, y * y], dim=1), k, top, bottom)
    mu2, s22, s12, mu1, s11 = stats.split(3, dim=1)
    own = xb[:, :, top : xb.shape[2] - bottom]
    own_ref = y[:, :, top : xb.shape[2] - bottom]
    if not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and xb.requires_grad):
        return _band_sums_inplace(mu2, s22, s12, own, mu1, s11, own_ref)
    var1 = s11 - mu1 * mu1
    num = (1 - (mu1 - mu2) ** 2) * (2 * (s12 - mu1 * mu2) + C2)
    den = var1 + (s22 - mu2 * mu2) + C2
    d = (1 - num / den).clamp_min(0)
    edge1 = 1 + (own_ref - mu1).abs()
    e = (1 + (own - mu2).abs()) / edge1 - 1
    art, det = e.clamp_min(0), (-e).clamp_min(0)
    out = []
    for p in (1, 4):
        for m in (d, art, det):
            v = m if p == 1 else (m * m) * (m * m)
            out.append(v.sum(dim=(2, 3)))
    return torch.stack(out, dim=2)


def _band_sums_inplace(mu2, s22, s12, own, mu1, s11, own_ref) -> torch.Tensor:
    """`_band_sums` without autograd: the same arithmetic in place in the blurs' outputs, and
    4th-power sums as dot products, so no full-size temporary is allocated per operation:
    faster on the CPU (see benchmarks/RESULTS.md); equal numbers, tested."""
    # Products rounded on their own (no fused multiply-add), as the differentiable path.
    tmp = torch.mul(mu2, mu2)
    var1 = s11.sub_(torch.mul(mu1, mu1))
    den = s22.sub_(tmp).add_(var1).add_(C2)
    cs = s12.sub_(torch.mul(mu1, mu2, out=tmp)).mul_(2).add_(C2)
    d = torch.sub(mu1, mu2).square_().neg_().add_(1).mul_(cs).div_(den).neg_().add_(1)
    d = d.clamp_min_(0)
    edge1 = mu1.neg_().add_(own_ref).abs_().add_(1)
    e = mu2.neg_().add_(own).abs_().add_(1).div_(edge1).sub_(1)
    art = e.clamp_min(0)
    det = e.neg_().clamp_min_(0)
    maps = (d, art, det)
    s1 = [m.sum(dim=(2, 3)) for m in maps]
    s4 = []
    for m in maps:
        sq = m.square_().flatten(2)
        s4.append(torch.linalg.vecdot(sq, sq))
    return torch.stack(s1 + s4, dim=2)


class _Rows:
    """The converted rows of one scale, chunk by chunk, kept only while a band needs them."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, torch.Tensor]] = []
        self.end = 0

    def add(self, start: int, rows: torch.Tensor) -> None:
        self.parts.append((start, rows))
        self.end = start + rows.shape[2]

    def get(self, a: int, b: int) -> torch.Tensor:
        pieces = [
            t[:, :, max(a, s) - s : min(b, s + t.shape[2]) - s]
            for s, t in self.parts
            if s < b and s + t.shape[2] > a
        ]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)

    def drop_below(self, row: int) -> None:
        self.parts = [(s, t) for s, t in self.parts if s + t.shape[2] > row]


@dataclass
class _Prepared:
    size: tuple[int, int]
    scales: list[torch.Tensor]  # per scale, the reference (1, 3, h, w) in positive XYB


def scale_count(height: int, width: int) -> int:
    """Scales the reference computes. Like the reference, the size test comes *before* each
    downsampling: a scale is computed when the previous one was at least 8 px a side, so the
    last scale may be smaller than 8 (a 192 px image gets six, the last at 6 px)."""
    n = 0
    while n < SCALES and height >= MIN_SIDE and width >= MIN_SIDE:
        n += 1
        if n > 1:
            height, width = (height + 1) // 2, (width + 1) // 2
    return n


class SSIMULACRA2(Metric):
    """SSIMULACRA 2.1 score, 100 = identical (higher is better). Grey inputs are scored as RGB
    with equal channels, as the reference reads them. Alpha: the suite composites over the
    reference tool's grey backgrounds 0.1 and 0.9 (`alpha_backgrounds`); the lower score counts.
    """

    name = "ssimulacra2"
    outputs = (OUTPUTS["ssimulacra2"],)
    min_side = MIN_SIDE
    alpha_backgrounds = ALPHA_BACKGROUNDS

    def __init__(
        self, device="auto", *, band_bytes: int | None = None, compile: bool = False
    ) -> None:
        super().__init__(device)
        self.band_bytes = band_bytes or BAND_BYTES.get(self.device.type, BAND_BYTES["cpu"])
        self._band_sums = compiled(_band_sums) if compile else _band_sums

    @staticmethod
    def _rgb(x: torch.Tensor) -> torch.Tensor:
        # Contiguous NCHW, whatever layout came in: elementwise kernels round by memory order
        # (vector body vs scalar tail), and reference and candidate must be processed alike.
        return (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).contiguous()

    def _convert(self, src: torch.Tensor, srgb: bool, last: bool) -> Iterator[tuple]:
        """One scale of `src` (sRGB at the first scale, else linear RGB), chunk by chunk:
        yields (first row, rows in positive XYB); with `last` False, also fills and finally
        yields the next scale's linear RGB (2x2 box average of each chunk's rows)."""
        n, c, h, w = src.shape
        nxt = None if last else src.new_empty(n, c, (h + 1) // 2, (w + 1) // 2)
        for r0, r1 in _chunks(h, w, self.band_bytes):
            lin = src[:, :, r0:r1]
            if srgb:
                lin = srgb_to_linear(lin)
            yield r0, linear_to_xyb(lin)
            if nxt is not None:
                nxt[:, :, r0 // 2 : (r1 + 1) // 2] = downsample(lin)
        if nxt is not None:
            yield -1, nxt

    def prepare(self, reference: torch.Tensor) -> _Prepared:
        src = self._rgb(reference)
        h, w = src.shape[2:]
        count = scale_count(h, w)
        if not count:
            raise ValueError(f"SSIMULACRA2 needs at least 8x8 pixels, got {w}x{h}")
        scales = []
        for s in range(count):
            xyb = src.new_empty(src.shape)
            nxt = None
            for r0, rows in self._convert(src, s == 0, s == count - 1):
                if r0 < 0:
                    nxt = rows
                else:
                    xyb[:, :, r0 : r0 + rows.shape[2]] = rows
            scales.append(xyb)
            src = nxt
        return _Prepared(size=(h, w), scales=scales)

    def _scale_values(
        self, src: torch.Tensor, srgb: bool, ref: torch.Tensor, k: torch.Tensor, last: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One scale: (N, 3, 6) per channel [ssim, artifact, detail lost] 1-norms then the same
        4-norms, and the next scale's linear RGB (None at the last scale). The candidate's rows
        are converted chunk by chunk as `prepare` converted the reference's, each band blurred
        as soon as the rows below it (its halo) are converted."""
        n, _, h, w = src.shape
        sums = src.new_zeros(n, 3, 6, dtype=torch.float64)
        band_sums = self._band_sums
        converted = self._convert(src, srgb, last)
        rows, nxt = _Rows(), None
        for r0, r1 in _chunks(h, w, self.band_bytes):
            a, b = _halo(h, r0, r1)
            while rows.end < b:
                start, part = next(converted)
                rows.add(start, part)
            part = band_sums(rows.get(a, b), ref[:, :, a:b], k, r0 - a, b - r1)
            sums = sums + part.double()
            rows.drop_below(r1 - RADIUS)
        for start, part in converted:  # the next scale's rows, once the last chunk is done
            nxt = part if start < 0 else nxt
        mean = sums / (h * w)
        return torch.cat([mean[:, :, :3], mean[:, :, 3:].pow(0.25)], dim=2), nxt

    def score(self, candidates: torch.Tensor, prepared: _Prepared) -> dict[str, torch.Tensor]:
        if candidates.device.type == "cpu" and candidates.shape[0] > 1:
            # One at a time on the CPU: vectorised pow (sRGB decoding, cube roots) rounds an
            # element differently from the scalar loop that finishes a tensor, so a candidate
            # equal to the reference converts to the same bits only in a tensor of the same
            # shape. (Batches do not pay on the CPU anyway; on CUDA every element runs alike.)
            # References of several images (`stack_states`) are split alike, pair by pair.
            parts = [
                self.score(c, pick_state(prepared, i))["ssimulacra2"]
                for i, c in enumerate(candidates.split(1))
            ]
            return {"ssimulacra2": torch.cat(parts)}
        src = self._rgb(candidates)
        k = _kernel(src.device, src.dtype)
        per_scale = []
        count = len(prepared.scales)
        for s, ref in enumerate(prepared.scales):
            values, src = self._scale_values(src, s == 0, ref, k, s == count - 1)
            per_scale.append(values)
        # (N, S, 3, 6) -> channel-major, then scale, then norm/map: the reference's order.
        values = torch.stack(per_scale, dim=1).transpose(1, 2).flatten(1)
        weights = torch.tensor(WEIGHTS[: values.shape[1]], dtype=torch.float64, device=k.device)
        raw = (values.abs() * weights).sum(dim=1)
        return {"ssimulacra2": _to_scale(raw).to(candidates.dtype)}


def _to_scale(s: torch.Tensor) -> torch.Tensor:
    """The reference's mapping (version 2.1) of the weighted sum to the 0..100 scale."""
    s = s * 0.9562382616834844
    s = 2.326765642916932 * s - 0.020884521182843837 * s * s + 6.248496625763138e-05 * s**3
    mapped = 100.0 - 10.0 * s.clamp_min(1e-30).pow(0.6276336467831387)
    return torch.where(s > 0, mapped, torch.full_like(s, 100.0))


def ssimulacra2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIMULACRA 2.1 of each candidate in `x` (N, C, H, W) against `y`, inputs in [0, 1]."""
    return SSIMULACRA2(x.device)(x, y)["ssimulacra2"]
