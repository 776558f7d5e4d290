"""Train the shipped quality model, and measure `optimize` with it against the per-image oracle.

    python -m benchmarks.predictor train --corpus DIR[:N] [--corpus DIR[:N] ...] [--out FILE]
    python -m benchmarks.predictor evaluate --corpus DIR --train DIR [--train DIR ...]
        [--folds 2] [--heldout DIR ...] [--targets 80] [--no-write]

`train`: the training rows are, per image of each corpus, per arm and per target (60, 70, 80,
85, 90), the oracle's lowest passing quality (`benchmarks.oracle`, cached), the log of its
bytes per pixel, and the score change from one quality below (the margin a step moves), with
the image's features (`optimizer.features`); `QualityModel.fit` on them. Writes
optimizer/models/ssimulacra2.json by default.

`evaluate`: `imgtune optimize` (default codecs, target, tolerance; `--no-learn`) on each
corpus, with a model that never saw the images it is run on: for `--corpus` (e.g. Kodak 24),
k-fold (each fold's model trained on the other folds plus every `--train` corpus); for each
`--heldout` corpus, the model trained on `--corpus` and `--train` together. Reports total
bytes against the per-image oracle over the same arms (AVIF 4:2:0/4:4:4 + WebP, the default
codecs), encodes per image, seconds per image, and that every output re-scores as passing;
the same run with `--model off` (the search before the model) beside it. Writes a RESULTS.md
section `predictor`.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from optimizer.images import iter_image_files, load
from optimizer.model_search import features_of
from optimizer.quality_model import DEFAULT_MODEL, QualityModel

from . import oracle as orc
from ._results import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
TARGETS = (60.0, 70.0, 80.0, 85.0, 90.0)
#: the arms `optimize` searches by default (codecs avif,webp)
DEFAULT_ARMS = ("avif:4:2:0", "avif:4:4:4", "webp")


def images_of(corpus: Path | str) -> list[Path]:
    """A corpus's images, sorted; `DIR:N` takes the first N of them."""
    text = str(corpus)
    head, _, n = text.rpartition(":")
    if head and n.isdigit():
        return sorted(iter_image_files(Path(head), follow_symlinks=True))[: int(n)]
    return sorted(iter_image_files(Path(text), follow_symlinks=True))


def rows_for(paths: list[Path], targets=TARGETS, jobs: int = 2) -> list[dict]:
    """Training rows for `paths` (the oracle's cache makes a second call cheap)."""
    table = orc.measure(paths, targets, jobs=jobs)
    feats = {}
    for p in paths:
        src = load(p)
        feats[p.name] = (features_of(src, (src.width, src.height)), src.width * src.height)
    rows = []
    scores = {
        (r.image, r.arm, int(r.quality)): r.ssimulacra2
        for r in table[["image", "arm", "quality", "ssimulacra2"]].itertuples()
    }
    for t in targets:
        for r in orc.lowest_passing(table, t).itertuples():
            if r.image not in feats:
                continue
            f, pixels = feats[r.image]
            slope = _slope(scores, r.image, r.arm, int(r.quality)) / t
            rows.append(
                {
                    "image": r.image,
                    "features": f,
                    "arm": r.arm,
                    "target": t,
                    "quality": float(r.quality),
                    "log_bpp": math.log(max(int(r.bytes), 1) / pixels),
                    **({"slope": slope} if slope else {}),
                }
            )
    return rows


#: the qualities either side of the crossing whose scores give its slope
SLOPE_SPAN = 6


def _slope(scores: dict, image: str, arm: str, q: int) -> float:
    """The score's change per quality step around the crossing at `q`: a least-squares line
    through the scores within `SLOPE_SPAN` steps either side. Not the one step below `q`: that
    step is where the file changed by definition (q is the lowest quality making the passing
    file), so its jump is a grid level's (AVIF's 101 qualities make 64 files), twice the
    average per step, and the search's first aim from a probe several steps away overshoots."""
    pts = [
        (k, scores[(image, arm, k)])
        for k in range(q - SLOPE_SPAN, q + SLOPE_SPAN + 1)
        if (image, arm, k) in scores
    ]
    if len(pts) < 3:
        return 0.0
    x, y = np.array(pts, dtype=float).T
    return max(float(np.polyfit(x, y, 1)[0]), 0.0)


def train(corpora: list[str], out: Path, jobs: int = 2) -> QualityModel:
    rows = []
    names = []
    for c in corpora:
        paths = images_of(c)
        rows += rows_for(paths, jobs=jobs)
        names.append(f"{Path(c.rpartition(':')[0] or c).name} ({len(paths)} images)")
    model = QualityModel.fit(
        "ssimulacra2",
        rows,
        trained_on={
            "corpora": names,
            "targets": list(TARGETS),
            "rows": len(rows),
            "date": date.today().isoformat(),
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return model


def run_optimize(paths: list[Path], model: str, target: float) -> dict:
    """`optimize` on `paths` (copied into a folder), the outputs re-scored by a fresh suite."""
    import shutil

    from optimizer.api import optimize
    from optimizer.metrics import MetricSuite
    from optimizer.scoring import score_pair
    from optimizer.targets import parse_target

    tgt = parse_target(f"ssimulacra2>={target:g}")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        src.mkdir()
        for p in paths:
            shutil.copy(p, src / p.name)
        outcomes = []
        t0 = time.perf_counter()
        summary = optimize(
            src, out, target=str(tgt), model=model, learn=False, on_result=outcomes.append
        )
        seconds = time.perf_counter() - t0
        suite = MetricSuite.build(["ssimulacra2"], device="cpu")
        failed = 0
        for o in outcomes:
            if o.output and o.codec:
                r = score_pair(src / o.source, out / o.output, suite, target=tgt)
                failed += bool(r.missed)
    return {
        "bytes": summary.output_bytes,
        "encodes": sum(o.encodes for o in outcomes),
        "images": len(outcomes),
        "seconds": seconds,
        "failed": failed,
        "per_image": {o.source: (o.codec, o.quality, o.output_bytes) for o in outcomes},
    }


def evaluate(args) -> None:
    corpus = Path(args.corpus[0].rpartition(":")[0] or args.corpus[0])
    paths = images_of(args.corpus[0])
    train_extra = [p for c in args.train for p in images_of(c)]
    extra_rows = rows_for(train_extra) if train_extra else []
    all_rows = rows_for(paths)
    lines_out = []
    results = []
    for target in [float(t) for t in args.targets.split(",")]:
        folds = [paths[i :: args.folds] for i in range(args.folds)]
        runs = {"model": [], "off": []}
        for k, fold in enumerate(folds):
            names = {p.name for p in fold}
            rows = extra_rows + [r for r in all_rows if r["image"] not in names]
            with tempfile.TemporaryDirectory() as tmp:
                model = QualityModel.fit("ssimulacra2", rows)
                mfile = Path(tmp) / "model.json"
                model.save(mfile)
                runs["model"].append(run_optimize(fold, str(mfile), target))
            runs["off"].append(run_optimize(fold, "off", target))
            print(f"target {target:g} fold {k + 1}/{args.folds} done", file=sys.stderr)
        table = orc.measure(paths, (target,))
        best = orc.oracle(table, target, DEFAULT_ARMS)
        results.append((corpus.name, target, "k-fold", _sum(runs, best, len(paths))))
        for h in args.heldout:
            hp = images_of(h)
            with tempfile.TemporaryDirectory() as tmp:
                model = QualityModel.fit("ssimulacra2", extra_rows + all_rows)
                mfile = Path(tmp) / "model.json"
                model.save(mfile)
                hr = {"model": [run_optimize(hp, str(mfile), target)]}
            hr["off"] = [run_optimize(hp, "off", target)]
            hbest = orc.oracle(orc.measure(hp, (target,)), target, DEFAULT_ARMS)
            name = Path(h.rpartition(":")[0] or h).name
            results.append((f"{name} ({len(hp)})", target, "held out", _sum(hr, hbest, len(hp))))
    for name, target, how, s in results:
        print(name, target, how, s)
        lines_out.append(
            f"| {name} ({how}) | {target:g} | {s['oracle']:,} | "
            f"{s['model_bytes']:,} ({s['model_bytes'] / s['oracle']:.3f}x) | "
            f"{s['model_enc']:.2f} | {s['model_s']:.2f} | "
            f"{s['off_bytes']:,} ({s['off_bytes'] / s['oracle']:.3f}x) | {s['off_enc']:.2f} | "
            f"{s['off_s']:.2f} | {s['failed']} |"
        )
    if args.no_write:
        return
    command = "python -m benchmarks.predictor " + " ".join(sys.argv[1:])
    lines = [
        "## Quality model: `optimize` against the per-image oracle",
        "",
        f"Command: `{command}`  ",
        "`imgtune optimize` (default codecs: AVIF and WebP, lossless files where they may win; "
        "default tolerance; --no-learn) with the learned "
        "model (a model that never saw the images it runs on: k-fold on the corpus, each fold's "
        "model trained on the other folds and the --train corpora; held-out corpora with the "
        "model trained on everything else) and with `--model off` (the search without it). "
        "Oracle: per image, the smallest passing file over AVIF 4:2:0, AVIF 4:4:4 and WebP, "
        "every quality in steps of 1 (`benchmarks.oracle`). Every output re-scored by a fresh "
        "suite. Seconds were measured beside other work on the machine. "
        f"2 cores, {platform.machine()}, Python {platform.python_version()}; date "
        f"{date.today().isoformat()}",
        "",
        "| corpus | target | oracle bytes | model: bytes | model: encodes/image | "
        "model: s/image | off: bytes | off: encodes/image | off: s/image | outputs failing |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *lines_out,
    ]
    write_section(RESULTS, "predictor", lines)
    print(f"wrote {RESULTS}")


def _sum(runs: dict, best, n: int) -> dict:
    def tot(key, mode):
        return sum(r[key] for r in runs[mode])

    return {
        "oracle": int(best["bytes"].sum()),
        "model_bytes": tot("bytes", "model"),
        "model_enc": tot("encodes", "model") / n,
        "model_s": tot("seconds", "model") / n,
        "off_bytes": tot("bytes", "off"),
        "off_enc": tot("encodes", "off") / n,
        "off_s": tot("seconds", "off") / n,
        "failed": tot("failed", "model") + tot("failed", "off"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--corpus", action="append", required=True)
    t.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    t.add_argument("--jobs", type=int, default=2)
    e = sub.add_parser("evaluate")
    e.add_argument("--corpus", action="append", required=True)
    e.add_argument("--train", action="append", default=[])
    e.add_argument("--heldout", action="append", default=[])
    e.add_argument("--folds", type=int, default=2)
    e.add_argument("--targets", default="80")
    e.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "train":
        m = train(args.corpus, args.out, args.jobs)
        print(f"wrote {args.out}: {m.trained_on}")
        for arm in m.quality:
            print(
                f"  {arm}: quality sd {math.sqrt(m.quality[arm].noise):.2f}, "
                f"log bytes/px sd {math.sqrt(m.size[arm].noise):.3f}, slope {m.slope.get(arm)}"
            )
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
