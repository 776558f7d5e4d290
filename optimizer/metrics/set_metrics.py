"""Set-level FID and KID: how far the encoded images, as a set, sit from the originals as a set.

Both compare the distributions of Inception pool3 features (2048 numbers per image, from the
network pytorch-fid uses) of two sets of images: here the originals and their encoded versions.

* FID (Heusel, Ramsauer, Unterthiner, Nessler, Hochreiter, "GANs Trained by a Two Time-Scale
  Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017) fits one Gaussian to each set
  and reports the Fréchet distance between them, ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^½).
  Numbers must equal pytorch-fid's (`pytorch_fid.fid_score`, the port of the authors' TTUR code):
  same network, same resize, and its `calculate_frechet_distance` formula for the last step.
* KID (Binkowski, Sutherland, Arbel, Gretton, "Demystifying MMD GANs", ICLR 2018) is the
  unbiased estimate of the squared maximum mean discrepancy under the kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets; numbers must equal torchmetrics'
  `KernelInceptionDistance` on the same features and subsets.

Why set metrics and never per image: FID is a distance between two fitted distributions, and a
2048-dimension covariance needs more than 2048 images to be of full rank. From one image (or a
few hundred) there is no covariance to speak of; with fewer than 2048 images the estimate is
biased upward by an amount that depends on the set size, so FIDs are only comparable between
sets of the same size. KID's estimator is unbiased at any size (it still needs 2 images a set),
which makes it the number to read for the small sets a tuning run produces.

The Inception checkpoint is found like every other network's (`weights.find_checkpoint`: an
explicit weights folder, else the torch hub cache, else one download): we never compute FID or
KID with random or different weights. Memory stays bounded whatever the set and image sizes:
images are resized by gathering only the pixels the bilinear filter reads, FID keeps running
sums (2048 x 2048 float64, 32 MB a set) and KID a uniform reservoir sample of features.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .inception import (
    FEATURE_DIM,
    FID_WEIGHTS_FILE,
    INPUT_SIZE,
    InceptionFeatures,
    find_fid_weights,
    load_fid_inception,
    resize_bilinear,
)
from .weights import WeightsMissingError

__all__ = [
    "FEATURE_DIM",
    "FID_WEIGHTS_FILE",
    "INPUT_SIZE",
    "SET_METRICS",
    "FIDStats",
    "InceptionFeatures",
    "KIDResult",
    "KIDSample",
    "SetScorer",
    "SetStats",
    "WeightsMissingError",
    "fid",
    "frechet_distance",
    "find_fid_weights",
    "kid",
    "kid_subset_indices",
    "load_fid_inception",
    "parse_set_metrics",
    "poly_mmd2",
    "resize_bilinear",
]

#: the set metrics, by the name `--set-metrics` takes
SET_METRICS = ("fid", "kid")


def parse_set_metrics(text: str) -> tuple[str, ...]:
    """'fid,kid' -> ('fid', 'kid'); an unknown name raises ValueError listing the known ones."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not names:
        raise ValueError(f"no set metric named in {text!r}; choose from {', '.join(SET_METRICS)}")
    unknown = [n for n in names if n not in SET_METRICS]
    if unknown:
        raise ValueError(
            f"unknown set metric {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(SET_METRICS)}"
        )
    return names


# -- FID ----------------------------------------------------------------------------------------


def _rows(features) -> np.ndarray:
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be an (N, d) array, got shape {x.shape}")
    return x


@dataclass
class FIDStats:
    """Streaming mean and covariance of feature rows, in bounded memory (d x d float64).

    Kept as the count, the mean and M2, the sum of outer products of the rows' deviations from
    that mean. Each `add`ed batch is centred on its own mean (two passes over the batch) and
    combined with the running values by Chan, Golub and LeVeque's pairwise update (1979), as is
    `merge`d partial state from another process: unlike a raw sum of x x^T minus n mu mu^T, no
    large nearly equal numbers are subtracted, so `cov()` equals `np.cov(rows, rowvar=False)`
    to rounding whatever the features' offset. `add` and `merge` update in place and return self.
    """

    n: int = 0
    mu: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, features) -> FIDStats:
        """Take in an (N, d) array or tensor of feature rows."""
        x = _rows(features)
        if len(x) == 0:
            return self
        mu = x.mean(axis=0)
        dev = x - mu
        return self.merge(FIDStats(len(x), mu, dev.T @ dev))

    def merge(self, other: FIDStats) -> FIDStats:
        """Add another accumulator's rows (partial sums from another worker)."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mu, self.m2 = other.n, other.mu.copy(), other.m2.copy()
            return self
        if other.mu.shape != self.mu.shape:
            raise ValueError(
                f"cannot merge features of {other.mu.shape[0]} dimensions into {self.mu.shape[0]}"
            )
        n = self.n + other.n
        delta = other.mu - self.mu
        self.mu = self.mu + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        self.n = n
        return self

    def mean(self) -> np.ndarray:
        """The mean feature row."""
        if self.n < 1:
            raise ValueError("no features added yet")
        return self.mu.copy()

    def cov(self) -> np.ndarray:
        """The sample covariance (divided by n - 1), as `np.cov(rows, rowvar=False)`."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature rows, got {self.n}")
        return self.m2 / (self.n - 1)


def fid(a: FIDStats, b: FIDStats) -> float:
    """Fréchet distance of the two sets' Gaussians (`frechet_distance`, pytorch-fid's formula).

    Any feature dimension d works; each set needs at least 2 rows (else ValueError).
    """
    for side, s in (("first", a), ("second", b)):
        if s.n < 2:
            raise ValueError(f"FID needs at least 2 images in each set; the {side} has {s.n}")
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"FID of {a.mu.shape[0]}- and {b.mu.shape[0]}-dimension features")
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the quantity pytorch-fid's
    `calculate_frechet_distance` computes, by symmetric eigendecompositions.

    Tr (S1 S2)^1/2 is the sum of the square roots of the eigenvalues of S1 S2, which are those of
    the symmetric positive semi-definite S1^1/2 S2 S1^1/2 (torchmetrics' FID also works from the
    eigenvalues). Two `eigh` calls take 5 s at d = 2048 on 2 cores, where pytorch-fid's
    `scipy.linalg.sqrtm` of the non-symmetric product took 31-42 s; no complex values and no
    regularising retry are needed. Equal to pytorch-fid's number within 1e-6 relative
    (tests/test_metrics_fid.py; benchmarks/RESULTS.md at d = 2048).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    ev, vecs = np.linalg.eigh((s1 + s1.T) / 2)
    root = (vecs * np.sqrt(np.clip(ev, 0, None))) @ vecs.T
    inner = root @ s2 @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


# -- KID ----------------------------------------------------------------------------------------


class KIDSample:
    """A uniform random sample of at most `capacity` feature rows (Vitter's Algorithm R).

    Sets up to `capacity` rows are kept whole; beyond, every row seen has the same chance,
    capacity / seen, of being kept, so KID's subsets drawn from the sample are uniform subsets of
    the whole set. Memory is capacity x d float64 (160 MB at the defaults and d = 2048), reached
    only by sets that large. Deterministic given `seed` and the order of `add` calls.
    """

    def __init__(self, capacity: int = 10_000, seed: int = 0) -> None:
        if not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"KID sample capacity must be an integer >= 2, got {capacity!r}")
        self.capacity = capacity
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._buf: np.ndarray | None = None
        self._kept = 0

    @property
    def rows(self) -> np.ndarray:
        """The kept rows, (min(seen, capacity), d)."""
        if self._buf is None:
            return np.zeros((0, 0))
        return self._buf[: self._kept]

    def _room(self, d: int, needed: int) -> None:
        if self._buf is None:
            self._buf = np.empty((min(self.capacity, max(64, needed)), d))
        elif self._buf.shape[1] != d:
            raise ValueError(f"cannot add {d}-dimension features to {self._buf.shape[1]}")
        if needed > len(self._buf):
            grown = np.empty((min(self.capacity, max(needed, 2 * len(self._buf))), d))
            grown[: self._kept] = self._buf[: self._kept]
            self._buf = grown

    def add(self, features) -> KIDSample:
        """Take in an (N, d) array or tensor of feature rows."""
        x = _rows(features)
        if len(x) == 0:
            return self
        fill = min(len(x), self.capacity - self._kept)
        self._room(x.shape[1], self._kept + fill)
        self._buf[self._kept : self._kept + fill] = x[:fill]
        self._kept += fill
        rest = x[fill:]
        if len(rest):
            # Row t (0-based over the whole stream) replaces a uniform slot with probability
            # capacity / (t + 1): draw j in [0, t] and keep the row when j < capacity.
            t = self.seen + fill + np.arange(len(rest))
            slots = self._rng.integers(0, t + 1)
            for row, j in zip(rest, slots, strict=True):
                if j < self.capacity:
                    self._buf[j] = row
        self.seen += len(x)
        return self

    def merge(self, other: KIDSample) -> KIDSample:
        """Combine with another sample into a uniform sample of both streams (in place).

        How many of the kept rows come from each side is hypergeometric, as it would be for a
        uniform sample of the union; each side then gives a uniform subset of its own sample.
        """
        if other.seen == 0:
            return self
        if self.seen == 0:
            mine = np.zeros((0, other.rows.shape[1]))
        else:
            mine = self.rows
            if mine.shape[1] != other.rows.shape[1]:
                raise ValueError(f"cannot merge {other.rows.shape[1]}- into {mine.shape[1]}-dim")
        total = self.seen + other.seen
        k = min(self.capacity, total)
        from_mine = int(self._rng.hypergeometric(self.seen, other.seen, k)) if self.seen else 0
        take = []
        for rows, count in ((mine, from_mine), (other.rows, k - from_mine)):
            if count == len(rows):
                take.append(rows)
            else:
                take.append(rows[np.sort(self._rng.choice(len(rows), count, replace=False))])
        merged = np.concatenate(take)
        self._buf, self._kept = merged.copy(), len(merged)
        self.seen = total
        return self


def poly_mmd2(
    x: np.ndarray,
    y: np.ndarray,
    *,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    paired: bool = False,
) -> float:
    """Unbiased MMD^2 of two (m, d) samples under k(a, b) = (gamma a.b + coef)^degree.

    As torchmetrics' `poly_mmd` (independent samples): the within-set kernel sums leave out the
    diagonal (divided by m (m - 1)), the cross term does not (divided by m^2). gamma defaults
    to 1 / d.

    `paired`: row i of `y` is made from row i of `x` (an output and its original), so the two
    are not independent and k(x_i, y_i) would bias the cross term upward and the estimate
    downward (a set against itself comes out below 0). Then the cross term leaves out the
    diagonal too: Gretton et al.'s U-statistic (JMLR 2012, eq. 3), unbiased for paired samples
    and exactly 0 for a set against itself.
    """
    m = len(x)
    if m < 2 or len(y) != m:
        raise ValueError(f"MMD needs two samples of the same size >= 2, got {m} and {len(y)}")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * g + coef) ** degree
    k_yy = (y @ y.T * g + coef) ** degree
    k_xy = (x @ y.T * g + coef) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    if paired:
        return float(within - 2 * (k_xy.sum() - np.trace(k_xy)) / (m * (m - 1)))
    return float(within - 2 * k_xy.sum() / m**2)


def kid_subset_indices(
    n_a: int, n_b: int, m: int, subsets: int, seed: int = 0
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """For each subset, m row indices into each set drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    for _ in range(subsets):
        yield rng.choice(n_a, m, replace=False), rng.choice(n_b, m, replace=False)


@dataclass(frozen=True)
class KIDResult:
    """KID's mean and standard deviation over subsets, the subset size used, and why."""

    mean: float | None
    std: float | None
    subset_size: int
    subsets: int
    values: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()


def kid(
    a,
    b,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    paired: bool = False,
) -> KIDResult:
    """KID of two sets of feature rows (arrays, tensors or `KIDSample`s), as torchmetrics;
    `paired` (row i of `b` is made from row i of `a`): each subset takes the same rows of both
    and `poly_mmd2(..., paired=True)`.

    Mean and population standard deviation (torchmetrics' `std(unbiased=False)`) of
    `poly_mmd2` over `subsets` random subsets of m = min(subset_size, n_a, n_b) rows per set;
    torchmetrics refuses sets smaller than subset_size, we use m and say so in the notes. When m
    is the whole of both sets every subset holds the same rows, so the estimate is computed once.
    """
    xa = a.rows if isinstance(a, KIDSample) else _rows(a)
    xb = b.rows if isinstance(b, KIDSample) else _rows(b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(
            f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, {subset_size}"
        )
    if paired and len(xa) != len(xb):
        raise ValueError(f"paired KID needs sets of one size, got {len(xa)} and {len(xb)}")
    m = min(subset_size, len(xa), len(xb))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set; got {len(xa)} and {len(xb)}")
    notes = []
    if m < subset_size:
        notes.append(
            f"KID from subsets of {m} images, fewer than the {subset_size} asked for: the sets "
            f"hold {len(xa)} and {len(xb)} (KID stays unbiased, its spread grows)."
        )
    opts = {"degree": degree, "gamma": gamma, "coef": coef, "paired": paired}
    if m == len(xa) == len(xb):
        values = (poly_mmd2(xa, xb, **opts),) * subsets
        if subsets > 1:
            notes.append(
                "Every KID subset is the whole of both sets, so the standard deviation over "
                "subsets is 0 and says nothing about the estimate's uncertainty."
            )
    else:
        values = tuple(
            poly_mmd2(xa[i], xb[i if paired else j], **opts)
            for i, j in kid_subset_indices(len(xa), len(xb), m, subsets, seed)
        )
    arr = np.asarray(values)
    return KIDResult(float(arr.mean()), float(arr.std()), m, subsets, values, tuple(notes))


# -- orchestration ------------------------------------------------------------------------------


@dataclass
class SetStats:
    """What FID and KID need of two sets, without the network: picklable and mergeable.

    The originals form one set, the encoded images the other. Workers each fill one and the
    parent `merge`s them; `result()` then gives the numbers.
    """

    names: tuple[str, ...] = SET_METRICS
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_capacity: int = 10_000
    seed: int = 0
    n: int = 0
    fid_ref: FIDStats = field(default_factory=FIDStats)
    fid_cand: FIDStats = field(default_factory=FIDStats)
    #: KID's sample of pairs: each row is an original's features followed by its output's,
    #: so the reservoir keeps (or drops) the two together
    kid_pairs: KIDSample | None = None

    def __post_init__(self) -> None:
        self.names = parse_set_metrics(",".join(self.names))
        if "kid" in self.names and self.kid_pairs is None:
            self.kid_pairs = KIDSample(self.kid_capacity, seed=self.seed)

    def kid_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """KID's kept (originals, outputs) feature rows, paired row by row."""
        rows = self.kid_pairs.rows
        d = rows.shape[1] // 2
        return rows[:, :d], rows[:, d:]

    def add_features(self, reference, candidate) -> None:
        """Take in (N, d) features of N originals and of their N encoded versions."""
        ref, cand = _rows(reference), _rows(candidate)
        if len(ref) != len(cand):
            raise ValueError(f"{len(ref)} reference features but {len(cand)} candidate features")
        if "fid" in self.names:
            self.fid_ref.add(ref)
            self.fid_cand.add(cand)
        if "kid" in self.names:
            self.kid_pairs.add(np.concatenate([ref, cand], axis=1))
        self.n += len(ref)

    def merge(self, other: SetStats) -> SetStats:
        """Add another worker's pairs (same metric names); in place, returns self."""
        if other.names != self.names:
            raise ValueError(f"cannot merge set metrics {other.names} into {self.names}")
        self.fid_ref.merge(other.fid_ref)
        self.fid_cand.merge(other.fid_cand)
        if self.kid_pairs is not None:
            self.kid_pairs.merge(other.kid_pairs)
        self.n += other.n
        return self

    def result(self) -> dict:
        """{'n', 'fid', 'kid_mean', 'kid_std', 'kid_subset_size', 'kid_subsets', 'notes'}."""
        n = self.n
        out = {
            "n": n,
            "fid": None,
            "kid_mean": None,
            "kid_std": None,
            "kid_subset_size": None,
            "kid_subsets": None,
            "notes": [],
        }
        notes = out["notes"]
        if n < 2:
            notes.append(
                f"FID and KID compare two sets of images and need at least 2 pairs; got {n}, "
                "so neither is defined."
            )
            return out
        if "fid" in self.names:
            out["fid"] = fid(self.fid_ref, self.fid_cand)
            d = len(self.fid_ref.mu)
            if n <= d:
                read = "read KID" if "kid" in self.names else "add kid to --set-metrics"
                notes.append(
                    f"FID from {n} images: the {d}-dimension covariance needs more than {d} "
                    "images to be full rank, so FID is biased upward and only comparable between "
                    f"sets of the same size; KID is unbiased at any size: {read}."
                )
        if "kid" in self.names:
            k = kid(
                *self.kid_rows(),
                subsets=self.kid_subsets,
                subset_size=self.kid_subset_size,
                seed=self.seed,
                paired=True,
            )
            out.update(
                kid_mean=k.mean, kid_std=k.std, kid_subset_size=k.subset_size, kid_subsets=k.subsets
            )
            notes.extend(k.notes)
            if self.kid_pairs.seen > self.kid_pairs.capacity:
                notes.append(
                    f"KID from a uniform sample of {self.kid_pairs.capacity} of the {n} pairs."
                )
        return out


class SetScorer:
    """FID and/or KID of the originals against their encoded versions, one pair at a time.

    `names` is a subset of `SET_METRICS` (or 'fid,kid'); the network is found up front as in
    `InceptionFeatures`, so a missing checkpoint fails before any work. KID uses `kid_subsets`
    subsets of `kid_subset_size` (Binkowski et al.'s and torchmetrics' 100 and 1000) drawn with
    `seed` from at most `kid_capacity` features a set.
    """

    def __init__(
        self,
        names: str | Sequence[str] = SET_METRICS,
        *,
        device: str | torch.device = "auto",
        weights_dir: str | Path | None = None,
        allow_download: bool = True,
        network: nn.Module | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        kid_capacity: int = 10_000,
        seed: int = 0,
        batch: int | None = None,
    ) -> None:
        names = parse_set_metrics(names if isinstance(names, str) else ",".join(names))
        if kid_subsets < 1 or kid_subset_size < 2:
            raise ValueError(
                f"KID needs kid_subsets >= 1 and kid_subset_size >= 2, got {kid_subsets} and "
                f"{kid_subset_size}"
            )
        self.features = InceptionFeatures(
            device,
            weights_dir=weights_dir,
            allow_download=allow_download,
            network=network,
            batch=batch,
        )
        self.stats = SetStats(names, kid_subsets, kid_subset_size, kid_capacity, seed)

    @property
    def names(self) -> tuple[str, ...]:
        return self.stats.names

    def add(self, reference_pixels: np.ndarray, candidate_pixels: np.ndarray) -> None:
        """One original and its encoded version (uint8 H x W x C; sizes may differ)."""
        f = self.features.features([reference_pixels, candidate_pixels])
        self.stats.add_features(f[:1], f[1:])

    def add_batch(self, references: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> None:
        """Several pairs at once (the network sees full batches)."""
        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        f = self.features.features([*references, *candidates])
        self.stats.add_features(f[: len(references)], f[len(references) :])

    def merge(self, other: SetScorer | SetStats) -> None:
        """Add the pairs another scorer (or a worker's `SetStats`) has seen."""
        self.stats.merge(other.stats if isinstance(other, SetScorer) else other)

    def result(self) -> dict:
        """The numbers and notes (see `SetStats.result`)."""
        return self.stats.result()

    def describe(self) -> dict[str, str]:
        """What produced the numbers, for reports."""
        s = self.stats
        out = {
            "features": f"pool3 ({FEATURE_DIM} values) of pytorch-fid's FID Inception "
            f"({self.features.source})",
            "resize": f"bilinear to {INPUT_SIZE}x{INPUT_SIZE}, align_corners=False, no "
            "antialias (as pytorch-fid); alpha composited over white; grey repeated to RGB",
        }
        if "fid" in s.names:
            out["fid"] = (
                "Fréchet distance of Gaussians fitted to each set's features "
                "(pytorch-fid's formula, by symmetric eigendecompositions)"
            )
        if "kid" in s.names:
            out["kid"] = (
                f"unbiased MMD² with kernel (x·y/{FEATURE_DIM} + 1)^3, mean and population std "
                f"over {s.kid_subsets} subsets of up to {s.kid_subset_size} pairs (seed "
                f"{s.seed}; at most {s.kid_capacity} pairs, uniformly sampled), as torchmetrics' "
                "KernelInceptionDistance but paired: an output is not independent of its "
                "original, so the cross term leaves out each image's own pair (Gretton et al. "
                "2012's U-statistic; 0 for a set against itself, where torchmetrics' form is "
                "negative)"
            )
        return out
