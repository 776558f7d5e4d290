"""A learned guess, per image and per codec option ("arm"), of the quality that just passes a
target, of its file size, and of how sure the guess is.

Why a Bayesian linear model (numpy only): the training sets are small (tens of images times a
few targets), where boosted trees overfit and need a dependency; a linear model on
standardised features (`features.FEATURES`, plus their products with the target) is exact to
fit in closed form, prints as a few numbers, and its posterior is the natural way to keep
learning: a user's own observations update the shipped model as the likelihood of new data
(`QualityModel.update`), with no retraining pipeline. Its predictive standard deviation is what
the search steps by.

Per arm two regressions: the lowest passing quality, and the log of bytes per pixel at that
quality (to rank arms before encoding anything). Each is w ~ N(mean, precision^-1) with noise
variance `noise`; predictions use the mean and `noise` (the parameter uncertainty is small next
to it once trained, and leaving it out keeps what travels with each image's task small).

Arms: "avif:4:2:0", "avif:4:4:4", "webp", "jpeg:4:2:0", "jpeg:4:4:4" (`arm_of` a Candidate);
grey images use the 4:2:0 arms only (subsampling has no meaning for them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .features import FEATURES

__all__ = [
    "ARMS",
    "DEFAULT_MODEL",
    "ArmGuess",
    "ModelLearner",
    "QualityModel",
    "store_path",
    "arm_of",
    "design",
]

ARMS = ("avif:4:2:0", "avif:4:4:4", "webp", "jpeg:4:2:0", "jpeg:4:4:4")
#: the model shipped for `ssimulacra2>=T` targets (trained by `python -m benchmarks.predictor`)
DEFAULT_MODEL = Path(__file__).with_name("models") / "ssimulacra2.json"
#: targets are centred and scaled before they enter the design: (T - centre) / scale
TARGET_CENTRE, TARGET_SCALE = 80.0, 10.0
#: how much of the shipped model's precision a user's model keeps (a power prior): < 1 lets a
#: catalogue's own images move the guesses sooner
PRIOR_WEIGHT = 0.5
#: how far (quality steps; log bytes per pixel) a catalogue's images may sit, all together,
#: from the training images' line: the doubt added to the intercept when updating
OFFSET_SD = (5.0, 0.25)
#: how far one arm's file sizes may learn to differ from the others' offset (log bytes)
ARM_SD = 0.05


def arm_of(codec: str, options: Mapping[str, object] | Sequence[tuple[str, object]]) -> str:
    """The arm name of a codec and its options: the codec, with ":<subsampling>" where it has
    that option."""
    sub = dict(options).get("subsampling")
    return f"{codec}:{sub}" if sub else codec


def design(features: Mapping[str, float], target: float, mean, scale) -> np.ndarray:
    """The model's input: 1, the standardised features, the scaled target, and their products
    with it (how much more quality a higher target costs depends on the image)."""
    f = (np.array([features[k] for k in FEATURES], dtype=np.float64) - mean) / scale
    t = (target - TARGET_CENTRE) / TARGET_SCALE
    return np.concatenate([[1.0], f, [t, t * t], t * f])


@dataclass(frozen=True)
class ArmGuess:
    """One arm's guess for one image: quality and log bytes/pixel, each with its standard
    deviation; `slope`: the typical change of the relative margin per quality step near the
    target (how far one step moves the score)."""

    quality: float
    quality_sd: float
    log_bpp: float
    log_bpp_sd: float
    slope: float


@dataclass
class _Regression:
    mean: np.ndarray
    precision: np.ndarray | None
    noise: float  # variance of the residuals

    def predict(self, x: np.ndarray) -> tuple[float, float]:
        return float(x @ self.mean), math.sqrt(self.noise)

    def as_dict(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "noise": self.noise,
        }

    @classmethod
    def from_dict(cls, d: dict) -> _Regression:
        return cls(np.array(d["mean"]), np.array(d["precision"]), float(d["noise"]))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, ridge: float) -> _Regression:
        """Ridge regression as a posterior: prior N(0, noise/ridge) on every weight but the
        intercept; the noise variance from the residuals (with the fit's degrees of freedom)."""
        n, d = x.shape
        penalty = np.full(d, ridge)
        penalty[0] = 1e-6
        a = x.T @ x + np.diag(penalty)
        mean = np.linalg.solve(a, x.T @ y)
        resid = y - x @ mean
        dof = max(n - float(np.trace(x @ np.linalg.solve(a, x.T))), 1.0)
        noise = max(float(resid @ resid) / dof, 1e-6)
        return cls(mean, a / noise, noise)

    def update(
        self, x: np.ndarray, y: np.ndarray, prior_weight: float, offset_sd: float
    ) -> _Regression:
        """The posterior after observations (x, y): the prior's precision (scaled by
        `prior_weight`, and with `offset_sd` more doubt about the intercept: a catalogue may
        need a constant more or less than the training images did) plus the data's, at this
        regression's noise."""
        cov = np.linalg.inv(self.precision * prior_weight)
        cov[0, 0] += offset_sd**2
        prior = np.linalg.inv(cov)
        a = prior + x.T @ x / self.noise
        mean = np.linalg.solve(a, prior @ self.mean + x.T @ y / self.noise)
        resid = y - x @ mean
        # The noise follows the new data where there is enough of it to say.
        noise = self.noise
        if len(y) >= 20:
            noise = (self.noise * 10 + float(resid @ resid)) / (10 + len(y))
        return _Regression(mean, a, max(noise, 1e-6))


@dataclass
class QualityModel:
    """Per arm, the quality and size regressions, for one metric's targets (`metric`,
    `higher_is_better`); `mean`/`scale` standardise the features."""

    metric: str
    mean: np.ndarray
    scale: np.ndarray
    quality: dict[str, _Regression]
    size: dict[str, _Regression]
    slope: dict[str, float]
    #: what it was trained on (shown by `imgtune` and kept in RESULTS.md)
    trained_on: dict = field(default_factory=dict)

    def knows(self, codec: str) -> bool:
        """Whether any of the codec's arms was learnt."""
        return any(a.split(":")[0] == codec for a in self.quality)

    def light(self) -> QualityModel:
        """This model without the precision matrices (only `update` needs them): what travels
        with each image's task."""
        strip = {a: _Regression(r.mean, None, r.noise) for a, r in self.quality.items()}
        size = {a: _Regression(r.mean, None, r.noise) for a, r in self.size.items()}
        return QualityModel(
            self.metric, self.mean, self.scale, strip, size, dict(self.slope), self.trained_on
        )

    def guess(self, arm: str, features: Mapping[str, float], target: float) -> ArmGuess | None:
        """The arm's guess, or None when the model has not learnt that arm."""
        if arm not in self.quality:
            return None
        x = design(features, target, self.mean, self.scale)
        q, q_sd = self.quality[arm].predict(x)
        b, b_sd = self.size[arm].predict(x)
        return ArmGuess(q, q_sd, b, b_sd, self.slope.get(arm, 0.01))

    @classmethod
    def fit(
        cls,
        metric: str,
        rows: Sequence[Mapping],
        *,
        ridge: float = 3.0,
        trained_on: dict | None = None,
    ) -> QualityModel:
        """Fit from observations: dicts with `features` (dict), `arm`, `target`, `quality`,
        `log_bpp`, and optionally `slope` (margin per quality step near the target)."""
        feats = np.array([[r["features"][k] for k in FEATURES] for r in rows], dtype=np.float64)
        mean = feats.mean(axis=0)
        scale = feats.std(axis=0)
        scale[scale < 1e-6] = 1.0
        quality, size, slope = {}, {}, {}
        for arm in sorted({r["arm"] for r in rows}):
            sel = [r for r in rows if r["arm"] == arm]
            if len(sel) < 8:
                continue
            x = np.array([design(r["features"], r["target"], mean, scale) for r in sel])
            quality[arm] = _Regression.fit(x, np.array([r["quality"] for r in sel]), ridge)
            size[arm] = _Regression.fit(x, np.array([r["log_bpp"] for r in sel]), ridge)
            slopes = sorted(r["slope"] for r in sel if r.get("slope"))
            if slopes:
                slope[arm] = slopes[len(slopes) // 2]
        return cls(metric, mean, scale, quality, size, slope, dict(trained_on or {}))

    def update(self, rows: Sequence[Mapping], prior_weight: float = PRIOR_WEIGHT) -> QualityModel:
        """This model, as a prior, updated with observations (same form as `fit`'s rows) of
        arms it knows. Returns a new model; this one is unchanged."""
        quality, size = dict(self.quality), dict(self.size)
        resid: dict[str, np.ndarray] = {}
        for arm in quality:
            sel = [r for r in rows if r["arm"] == arm]
            if not sel:
                continue
            x = np.array([design(r["features"], r["target"], self.mean, self.scale) for r in sel])
            quality[arm] = quality[arm].update(
                x, np.array([r["quality"] for r in sel]), prior_weight, OFFSET_SD[0]
            )
            resid[arm] = np.array([r["log_bpp"] for r in sel]) - x @ size[arm].mean
        # File sizes learn an offset shared by every arm (shrunk towards 0 with OFFSET_SD), and
        # each arm only a little of its own (ARM_SD). An arm is observed only where it was
        # expected smallest, so it tends to come out larger than expected (the winner's
        # curse): an offset of its own would push it down the ranking for every later image
        # (measured on Kodak: runs learning a free offset per arm chose 4:2:0 over a 4:4:4 file
        # up to 7% smaller on 7 of 12 images). Where the trained ranking is plainly wrong, the
        # arm's own offset still moves it, over tens of images.
        if resid:
            every = np.concatenate(list(resid.values()))
            noise = float(np.mean([size[a].noise for a in resid]))
            shift = float(every.sum()) / (every.size + noise / OFFSET_SD[1] ** 2)
            for arm, reg in size.items():
                own = resid.get(arm)
                dev = 0.0
                if own is not None:
                    dev = float((own - shift).sum()) / (own.size + reg.noise / ARM_SD**2)
                mean = reg.mean.copy()
                mean[0] += shift + dev
                size[arm] = _Regression(mean, reg.precision, reg.noise)
        trained = {**self.trained_on, "user_observations": len(rows)}
        return QualityModel(
            self.metric, self.mean, self.scale, quality, size, dict(self.slope), trained
        )

    def as_dict(self) -> dict:
        return {
            "format": "imgtune-quality-model-1",
            "metric": self.metric,
            "features": list(FEATURES),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "arms": {
                a: {
                    "quality": self.quality[a].as_dict(),
                    "size": self.size[a].as_dict(),
                    "slope": self.slope.get(a),
                }
                for a in self.quality
            },
            "trained_on": self.trained_on,
        }

    @classmethod
    def from_dict(cls, d: dict) -> QualityModel:
        if d.get("format") != "imgtune-quality-model-1" or d.get("features") != list(FEATURES):
            raise ValueError("not an imgtune quality model of this version")
        arms = d["arms"]
        return cls(
            d["metric"],
            np.array(d["mean"]),
            np.array(d["scale"]),
            {a: _Regression.from_dict(v["quality"]) for a, v in arms.items()},
            {a: _Regression.from_dict(v["size"]) for a, v in arms.items()},
            {a: v["slope"] for a, v in arms.items() if v.get("slope")},
            d.get("trained_on", {}),
        )

    def save(self, path: Path) -> None:
        from .files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.as_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> QualityModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


#: a user's observations kept (the newest); older ones are dropped when the store is read
MAX_ROWS = 20_000
#: observations needed before a metric with no shipped model gets one of its own
MIN_ROWS = 40


class ModelLearner:
    """A run's model: the shipped one (if any) updated with the user's stored observations,
    and with each image's as the run goes. Observations are appended to `store` (one JSON line
    per row, written whole) so the next run starts where this one ended; several runs may
    append at once. Not thread-safe: the folder driver calls it from one thread."""

    def __init__(self, base: QualityModel | None, store: Path | None, metric: str) -> None:
        self.base, self.store, self.metric = base, store, metric
        self.run: str | None = None
        self.rows: list[dict] = _read_rows(store) if store else []
        self.model: QualityModel | None = None
        self._light: QualityModel | None = None
        self._fitted_at = -1
        self.added = 0
        self._refit()

    def begin(self, run: str) -> None:
        """Name the run (its OUT and job): rows an earlier run of it stored are set aside, as
        that run's manifest lines teach them again in input order (`add(persist=False)`), and
        the rows this run stores carry the name."""
        self.run = run
        self.rows = [r for r in self.rows if r.get("run") != run]
        self._fitted_at = -1
        self._refit()

    def _refit(self) -> None:
        n = len(self.rows)
        if n == self._fitted_at:
            return
        if self.base is not None:
            self.model = self.base.update(self.rows) if self.rows else self.base
        elif n >= MIN_ROWS:
            self.model = QualityModel.fit(
                self.metric, self.rows, trained_on={"user_observations": n}
            )
        self._light = self.model.light() if self.model is not None else None
        self._fitted_at = n

    def add(self, rows: Sequence[Mapping], *, persist: bool = True) -> None:
        """An image's observations: stored (unless not `persist`: learnt again from a
        manifest), and learnt from at the next refit (after every image while there are few,
        then after each eighth more)."""
        if not rows:
            return
        if self.run is not None:
            rows = [{**r, "run": self.run} for r in rows]
        if self.store is not None and persist:
            lines = "".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows)
            self.store.parent.mkdir(parents=True, exist_ok=True)
            with self.store.open("a") as fh:  # one write: whole lines, even beside another run
                fh.write(lines)
        self.rows.extend(dict(r) for r in rows)
        del self.rows[:-MAX_ROWS]
        self.added += len(rows)
        fresh = len(self.rows) - max(self._fitted_at, 0)
        if fresh >= max(1, self._fitted_at // 8) or (self.model is None and fresh):
            self._refit()

    def current(self) -> QualityModel | None:
        """The model the next image's search uses (light: what travels with its task)."""
        return self._light


def _read_rows(store: Path) -> list[dict]:
    if not store.exists():
        return []
    rows = []
    for line in store.read_text().splitlines()[-MAX_ROWS:]:
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: the others still count
        if isinstance(r, dict) and set(FEATURES) <= set(r.get("features", {})):
            rows.append(r)
    return rows


def store_path(studies: Path, metric: str) -> Path:
    """Where a user's observations for `metric` targets live: beside their studies."""
    return Path(studies) / "predictor" / f"{metric}.jsonl"
