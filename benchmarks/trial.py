"""How well a trial encode of a few native-scale tiles predicts the quality a whole image needs:
the measurement behind the next step for the quality model (issue 14's two encodes per image).

    python -m benchmarks.trial --corpus DIR [--corpus DIR ...] [--targets 70,80,90] [--no-write]

Per image: the tiles `optimizer.features` already reads (up to 8 of 128 px, at the source's own
scale) are laid out as one mosaic (2 x 4 tiles, 256 x 512 px) and encoded with AVIF 4:2:0 and
4:4:4 (speed 6) at qualities 30, 50, 70 and 90, each scored with SSIMULACRA2 against the mosaic.
The quality where the mosaic's score crosses a target (linear between those four) is compared
with the whole image's lowest passing quality for that arm and target (`benchmarks.oracle`,
every quality near the crossing, cached): the table gives the mean and the standard deviation
of the difference per corpus, arm and target, beside the quality model's own residual sd for
the same rows (the shipped model; in-sample where the corpus trained it, said so). Also the
seconds the trial encodes and scores took per image.

Writes a RESULTS.md section `trial`.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from optimizer.codecs import EncodeSettings, decode, encode
from optimizer.features import _tiles
from optimizer.images import load
from optimizer.quality_model import DEFAULT_MODEL, QualityModel

from ._results import write_section
from .predictor import images_of, rows_for

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
QUALITIES = (30, 50, 70, 90)
SUBS = {"avif:4:2:0": "4:2:0", "avif:4:4:4": "4:4:4"}


def mosaic(pixels: np.ndarray) -> np.ndarray:
    """The feature tiles as one 2 x 4 mosaic (the image itself when it is smaller than a tile;
    the last tile repeated where there are fewer than 8)."""
    tiles = _tiles(pixels)
    if len(tiles) == 1:
        return tiles[0]
    tiles = (tiles + [tiles[-1]] * 8)[:8]
    return np.concatenate([np.concatenate(tiles[r * 4 : r * 4 + 4], axis=1) for r in (0, 1)])


def trial_scores(pixels: np.ndarray, suite) -> tuple[dict[tuple[str, int], float], float]:
    """(arm, quality) -> the mosaic's SSIMULACRA2; and the seconds it took."""
    t0 = time.perf_counter()
    m = mosaic(pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., :1])  # alpha left out
    ref = suite.prepare(m)
    out = {}
    for arm, sub in SUBS.items():
        cands = [
            decode(encode(m, EncodeSettings.make("avif", q, subsampling=sub)), m.shape[2])
            for q in QUALITIES
        ]
        for q, s in zip(QUALITIES, suite.score(ref, cands), strict=True):
            out[(arm, q)] = float(s.values["ssimulacra2"])
    return out, time.perf_counter() - t0


def crossing(scores: dict[tuple[str, int], float], arm: str, target: float) -> float:
    """The quality where the mosaic's score reaches `target`, linear between the trial
    qualities; NaN where the scores do not rise with quality or never reach it."""
    s = [scores[(arm, q)] for q in QUALITIES]
    if s != sorted(s) or not s[0] <= target <= s[-1]:
        return math.nan
    return float(np.interp(target, s, QUALITIES))


def measure(corpora: list[str], targets: list[float]) -> tuple[list[dict], float]:
    from optimizer.metrics import MetricSuite

    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    model = QualityModel.load(DEFAULT_MODEL)
    trained = " ".join(model.trained_on.get("corpora", []))
    lines, seconds, n = [], 0.0, 0
    for corpus in corpora:
        paths = images_of(corpus)
        rows = rows_for(paths)
        trial = {}
        for p in paths:
            trial[p.name], sec = trial_scores(load(p).pixels, suite)
            seconds, n = seconds + sec, n + 1
            print(f"{p.name}: {sec:.2f} s", file=sys.stderr, flush=True)
        name = Path(corpus.rpartition(":")[0] or corpus).name
        for arm in SUBS:
            for t in targets:
                sel = [r for r in rows if r["arm"] == arm and r["target"] == t]
                diff = np.array([r["quality"] - crossing(trial[r["image"]], arm, t) for r in sel])
                model_res = np.array(
                    [r["quality"] - model.guess(arm, r["features"], t).quality for r in sel]
                )
                ok = np.isfinite(diff)
                lines.append(
                    {
                        "corpus": name + (" (trained the model)" if name in trained else ""),
                        "arm": arm,
                        "target": t,
                        "n": int(ok.sum()),
                        "of": len(sel),
                        "mean": float(diff[ok].mean()) if ok.any() else math.nan,
                        "sd": float(diff[ok].std()) if ok.any() else math.nan,
                        "model_sd": float(model_res.std()) if len(sel) else math.nan,
                    }
                )
    return lines, seconds / max(n, 1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", action="append", required=True)
    ap.add_argument("--targets", default="70,80,90")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    lines, per_image = measure(args.corpus, targets)
    table = [
        f"| {x['corpus']} | {x['arm']} | {x['target']:g} | {x['n']} of {x['of']} | "
        f"{x['mean']:+.2f} | {x['sd']:.2f} | {x['model_sd']:.2f} |"
        for x in lines
    ]
    print("\n".join(table))
    print(f"trial encodes and scores: {per_image:.2f} s per image")
    if args.no_write:
        return
    command = "python -m benchmarks.trial " + " ".join(sys.argv[1:] if argv is None else argv)
    write_section(
        RESULTS,
        "trial",
        [
            "## A trial encode of the feature tiles against the whole image's quality",
            "",
            f"Command: `{command}`  ",
            "Per image, the 8 feature tiles (128 px, native scale) as one 256 x 512 mosaic, "
            "encoded with AVIF 4:2:0 and 4:4:4 (speed 6) at qualities 30/50/70/90 and scored; "
            "the quality where the mosaic crosses the target (linear between those) against the "
            "whole image's lowest passing quality (the oracle). 'model sd': the shipped model's "
            "residual sd on the same rows (in-sample on corpora that trained it). Rows where the "
            "mosaic's scores never reach the target are left out (n of all). "
            f"Trial encodes and scores: {per_image:.2f} s per image. 2 cores, "
            f"{platform.machine()}, Python {platform.python_version()}; "
            f"date {date.today().isoformat()}",
            "",
            "| corpus | arm | target | n | mean (whole - mosaic) | sd | model sd |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            *table,
        ],
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
