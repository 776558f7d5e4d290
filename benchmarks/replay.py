"""The model-guided search replayed against the oracle's cached encodes: seconds, not minutes,
to see what a change to the search or the model does to bytes and encodes per image.

    python -m benchmarks.replay --corpus DIR [--train DIR ...] [--heldout DIR ...]
        [--folds 2] [--target 80]

Per image, `model_search.search_arms` (what `optimize` runs for each image with the model) on
an `ImageSearch` whose probes read the oracle's table (`benchmarks.oracle`, cached; measured
first where missing) instead of encoding: each probe's bytes and SSIMULACRA2 are the ones the
oracle measured for that arm and quality. A quality the oracle did not probe (it probes every
quality only near each target's crossing, every 5th elsewhere) is interpolated between its
neighbours, and counted ("interpolated" below). Arms: AVIF 4:2:0/4:4:4 and WebP, the default
lossy codecs; lossless candidates and the run's learning are left out, so `benchmarks.predictor
evaluate` (real encodes, every output re-scored) stays the measurement that counts. Models as
there: k-fold on `--corpus` with every `--train` corpus; the `--heldout` corpora with a model
trained on both. Prints bytes against the oracle and probes per image; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from optimizer.image_job import FLAT  # optimize's flat-curve give-up, as the replay uses it
from optimizer.image_search import ImageSearch
from optimizer.images import load
from optimizer.model_search import features_of, search_arms
from optimizer.quality_model import QualityModel, arm_of
from optimizer.quality_search import Probe
from optimizer.recipe import Candidate
from optimizer.targets import parse_target

from . import oracle as orc
from .predictor import DEFAULT_ARMS, images_of, rows_for

BASES = (Candidate.make("avif", 50), Candidate.make("webp", 75))


class OracleSearch(ImageSearch):
    """An `ImageSearch` of one image whose probes are the oracle's measurements."""

    def __init__(self, table, target: float, *, has_alpha: bool, source_bytes: int):
        images = SimpleNamespace(
            items=[SimpleNamespace(source=SimpleNamespace(has_alpha=has_alpha))]
        )
        super().__init__(
            images, parse_target(f"ssimulacra2>={target:g}"), resized=False,
            source_bytes=source_bytes,
        )  # fmt: skip
        self.t = target
        self.curves = {
            arm: (g["quality"].to_numpy(), g["bytes"].to_numpy(), g[orc.METRIC].to_numpy())
            for arm, g in table.groupby("arm")
        }
        self.interpolated = 0

    def probe(self, cand: Candidate) -> Probe:
        q, b, s = self.curves[arm_of(cand.codec, cand.options)]
        hit = np.flatnonzero(q == cand.quality)
        if hit.size:
            nbytes, score = float(b[hit[0]]), float(s[hit[0]])
        else:
            self.interpolated += 1
            nbytes = float(np.exp(np.interp(cand.quality, q, np.log(b))))
            score = float(np.interp(cand.quality, q, s))
        margin = (score - self.t) / self.t
        return Probe(cand.quality, nbytes, score >= self.t, margin, (cand, {orc.METRIC: score}))


def replay(model: QualityModel, paths: list[Path], target: float) -> dict:
    table = orc.measure(paths, (target,))
    best = orc.oracle(table, target, DEFAULT_ARMS)
    oracle_bytes = dict(zip(best["image"], best["bytes"], strict=True))
    out = {"bytes": 0.0, "oracle": 0, "probes": 0, "interpolated": 0, "images": 0, "missed": 0}
    for p in paths:
        if p.name not in oracle_bytes:  # nothing in range passes: no oracle to compare with
            continue
        src = load(p)
        rows = table[table["image"] == p.name].sort_values("quality")
        search = OracleSearch(rows, target, has_alpha=src.has_alpha, source_bytes=src.file_bytes)
        feats = features_of(src, (src.width, src.height))
        search_arms(
            search, model, target, BASES, feats, grey=src.is_grey,
            pixels=src.width * src.height,
            bounds=orc.quality_range, tolerance=1, flat=FLAT,
        )  # fmt: skip
        out["images"] += 1
        out["probes"] += len(search.probes)
        out["interpolated"] += search.interpolated
        out["oracle"] += int(oracle_bytes[p.name])
        if search.best is None:
            out["missed"] += 1
            out["bytes"] += float(oracle_bytes[p.name])  # counted at the oracle's: said apart
        else:
            out["bytes"] += search.best.bytes
    return out


def _line(name: str, r: dict) -> str:
    return (
        f"{name}: {r['bytes'] / r['oracle']:.4f}x the oracle, "
        f"{r['probes'] / r['images']:.2f} probes per image ({r['interpolated']} interpolated), "
        f"{r['missed']} of {r['images']} with no passing probe"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--train", action="append", default=[])
    ap.add_argument("--heldout", action="append", default=[])
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--target", type=float, default=80.0)
    args = ap.parse_args(argv)
    paths = images_of(args.corpus)
    extra = rows_for([p for c in args.train for p in images_of(c)]) if args.train else []
    rows = rows_for(paths)
    total: dict = {}
    for k in range(args.folds):
        fold = paths[k :: args.folds]
        names = {p.name for p in fold}
        model = QualityModel.fit(
            "ssimulacra2", extra + [r for r in rows if r["image"] not in names]
        )
        r = replay(model, fold, args.target)
        total = {key: total.get(key, 0) + v for key, v in r.items()}
    print(_line(f"{Path(args.corpus).name} ({args.folds}-fold)", total))
    model = QualityModel.fit("ssimulacra2", extra + rows)
    for h in args.heldout:
        print(
            _line(
                f"{Path(h.rpartition(':')[0] or h).name} (held out)",
                replay(model, images_of(h), args.target),
            )
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
