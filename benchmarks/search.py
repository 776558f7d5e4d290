"""Search efficiency against an exhaustive oracle, and savings against the usual alternatives.

    python -m benchmarks.search --corpus DIR [--target 'ssimulacra2>=80'] [--max-width W]
        [--budgets 20,40,80] [--seeds 1,2,3] [--no-write]

1. Oracle: every recipe of a coarse grid (each codec's quality in steps of 5 over tune's range,
   each codec option tune searches, sharpening in {0.5, 0.75, 1.0, 1.25, 1.5}, every resize
   filter when resizing) on every image; the smallest recipe meeting the target (every image)
   is the oracle. Exact with early stopping (a recipe stops at its first failing image or once
   its bytes pass the best so far: neither can be the smallest passing one), and cached on disk
   (benchmarks/.cache), so it is paid once per corpus, size and target. Its cost is reported as
   the full grid (recipes x images), what an exhaustive search encodes.
2. `tune` with each strategy at each trial budget and seed, on a fresh cache: bytes relative to
   the oracle (below 1 means it found an off-grid recipe smaller than the grid's best), the
   encodes it made, wall time; medians over seeds.
3. The usual alternatives, judged by the same metric and target: fixed defaults (JPEG 85,
   WebP 80, AVIF 60), the best single quality per codec, a jpeg-recompress-style per-image JPEG
   bisection, and `imgtune optimize` per image.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from optimizer import transforms
from optimizer.codecs import available_codecs
from optimizer.images import load_folder
from optimizer.metrics import MetricSuite
from optimizer.recipe import Candidate
from optimizer.search import ImageSet, SearchSpace, evaluate
from optimizer.study import run_study
from optimizer.targets import parse_target

from ._results import write_section
from .bench_optimize import baseline as jpeg_bisection
from .bench_optimize import imgtune as optimize_run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CACHE = ROOT / "benchmarks" / ".cache"
SHARPEN = (0.5, 0.75, 1.0, 1.25, 1.5)
FIXED = (("jpeg", 85), ("webp", 80), ("avif", 60))


@dataclass
class Grid:
    codecs: tuple[str, ...]
    step: int = 5
    sharpen: tuple[float, ...] = SHARPEN
    filters: tuple[str | None, ...] = (None,)

    def recipes(self, space: SearchSpace) -> list[Candidate]:
        out = []
        for codec in self.codecs:
            lo, hi = space.quality[codec]
            qualities = list(range(hi, lo - 1, -self.step))
            opts = space.options.get(codec, {})
            keys = sorted(opts)
            for values in itertools.product(*(opts[k] for k in keys)):
                for q, s, f in itertools.product(qualities, self.sharpen, self.filters):
                    opts_ = dict(zip(keys, values, strict=True))
                    out.append(Candidate.make(codec, q, resize_filter=f, sharpen=s, **opts_))
        return out


def load_corpus(folder: Path, min_side: int):
    sources, _ = load_folder(
        folder,
        min_side=min_side,
        follow_symlinks=True,
        on_skip=lambda exc: print(f"skipped: {exc}", file=sys.stderr),
    )
    if not sources:
        raise SystemExit(f"{folder}: no usable image")
    return sources


def oracle(images: ImageSet, recipes: list[Candidate], target) -> dict:
    t0 = time.perf_counter()
    best = None
    feasible_bytes: dict[Candidate, float] = {}
    for cand in recipes:
        ev = evaluate(images, cand, target, best_total=best.total_bytes if best else None)
        if ev.feasible and ev.complete:
            feasible_bytes[cand] = ev.total_bytes
            if best is None or ev.total_bytes < best.total_bytes:
                best = ev
    return {
        "best": best,
        "feasible": feasible_bytes,
        "grid": len(recipes),
        "pairs": len(recipes) * len(images.items),
        "encodes": images.encodes,
        "seconds": time.perf_counter() - t0,
    }


def run(
    corpus: Path,
    target_text: str,
    *,
    max_width: int | None = None,
    max_height: int | None = None,
    budgets: tuple[int, ...] = (20, 40, 80),
    seeds: tuple[int, ...] = (1, 2, 3),
    grid: Grid | None = None,
    codecs: tuple[str, ...] | None = None,
    cache: bool = True,
) -> dict:
    target = parse_target(target_text)
    suite = MetricSuite.build(list(dict.fromkeys(target.metrics)), device="cpu")
    sources = load_corpus(corpus, suite.min_side)
    avail = [c for c, ok in available_codecs().items() if ok and c != "jxl"]
    chosen = list(codecs or avail)
    if any(s.has_alpha for s in sources) and "jpeg" in chosen:
        chosen.remove("jpeg")  # as tune does without --background
    resized = any(
        transforms.fit_size(s.width, s.height, max_width=max_width, max_height=max_height)
        != (s.width, s.height)
        for s in sources
    )
    space = SearchSpace.default(chosen, resized=resized)
    grid = grid or Grid(tuple(chosen))
    if resized and grid.filters == (None,):
        grid.filters = tuple(transforms.RESIZE_FILTERS)
    key = hashlib.sha256(
        json.dumps(
            [sorted(s.sha256 for s in sources), max_width, max_height, suite.describe()],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    cache_path = CACHE / f"{corpus.name}-{key}.scores.sqlite" if cache else None
    shared = ImageSet(
        sources, suite, max_width=max_width, max_height=max_height, cache_path=cache_path
    )
    orc = oracle(shared, grid.recipes(space), target)
    if orc["best"] is None:
        raise SystemExit(f"no recipe of the grid meets {target} on every image")
    o_bytes = orc["best"].total_bytes
    tune_rows = []
    for strategy, budget in itertools.product(("tpe", "bisect"), budgets):
        runs = []
        for seed in seeds:
            fresh = ImageSet(sources, suite, max_width=max_width, max_height=max_height)
            r = run_study(fresh, target, space, trials=budget, seed=seed, strategy=strategy)
            runs.append(
                {
                    "ratio": r.best.total_bytes / o_bytes if r.best else None,
                    "encodes": r.encodes,
                    "seconds": r.seconds,
                }
            )
        ratios = [x["ratio"] for x in runs if x["ratio"] is not None]
        tune_rows.append(
            {
                "strategy": strategy,
                "budget": budget,
                "found": len(ratios),
                "runs": len(runs),
                "ratio": statistics.median(ratios) if ratios else None,
                "worst_ratio": max(ratios) if ratios else None,
                "encodes": statistics.median(x["encodes"] for x in runs),
                "seconds": statistics.median(x["seconds"] for x in runs),
            }
        )
    alternatives = []
    for codec, q in FIXED:
        if codec not in chosen and codec != "jpeg":
            continue
        bg = (255, 255, 255) if codec == "jpeg" and shared.has_alpha else None
        imgs = shared if bg is None else ImageSet(sources, suite, background=bg)
        cand = Candidate.make(codec, q)
        ev = evaluate(imgs, cand, target, stop_early=False)
        alternatives.append(_alt(f"fixed {codec} q{q}", ev, target))
    for codec in chosen:  # the best single quality per codec, default options
        best = None
        lo, hi = space.quality[codec]
        for q in range(hi, lo - 1, -grid.step):
            cand = Candidate.make(codec, q)
            ev = evaluate(shared, cand, target)
            if ev.feasible and ev.complete and (best is None or ev.total_bytes < best.total_bytes):
                best = ev
        if best is not None:
            name = f"best single {codec} quality (q{best.candidate.quality})"
            alternatives.append(_alt(name, best, target))
        else:
            alternatives.append(
                {
                    "name": f"best single {codec} quality: none of {lo}-{hi} meets the target "
                    "(default options)",
                    "bytes": math.nan,
                    "meets": False,
                    "worst": None,
                }
            )
    jr = jpeg_bisection(corpus, target, suite, max_width, max_height)
    op = optimize_run(
        corpus, target, suite, chosen, "imgtune optimize (per image)", max_width, max_height
    )
    for r in (jr, op):  # per-image methods: every written file meets the target by design
        alternatives.append(
            {
                "name": f"{r['name']}, {r['encodes_per_image']:.2f} encodes/image",
                "bytes": r["output_bytes"],
                "meets": True,
                "worst": None,
            }
        )
    return {
        "corpus": corpus,
        "target": target,
        "images": len(sources),
        "source_bytes": sum(s.file_bytes for s in sources),
        "codecs": chosen,
        "grid": grid,
        "oracle": orc,
        "tune": tune_rows,
        "alternatives": alternatives,
    }


def _alt(name: str, ev, target) -> dict:
    metric = target.clauses[0].metric
    from optimizer.metrics.catalog import OUTPUTS

    pick = min if OUTPUTS[metric].higher_is_better else max
    return {
        "name": name,
        "bytes": ev.total_bytes,
        "meets": bool(ev.feasible),
        "worst": pick(v[metric] for v in ev.per_image.values()),
        "candidate": ev.candidate,
    }


def table(res: dict, command: str) -> list[str]:
    orc = res["oracle"]
    best = orc["best"]
    o_bytes = best.total_bytes
    c = best.candidate
    lines = [
        "## Search efficiency against an exhaustive oracle, and the usual alternatives",
        "",
        f"Command: `{command}`  ",
        f"Corpus: `{res['corpus'].name}` ({res['images']} images, {res['source_bytes']:,} bytes); "
        f"target `{res['target']}` on every image; codecs {', '.join(res['codecs'])}; "
        f"{platform.machine()}, Python {platform.python_version()}; date {date.today()}",
        "",
        f"Oracle: {orc['grid']} recipes x {res['images']} images = {orc['pairs']:,} encodes "
        f"exhaustively (quality step {res['grid'].step}, sharpen {list(res['grid'].sharpen)}, "
        f"tune's codec options); found {c.codec} q{c.quality} {dict(c.options)} sharpen "
        f"{c.sharpen}: **{int(o_bytes):,} bytes**. (This run encoded {orc['encodes']:,} pairs "
        f"thanks to exact early stopping and the disk cache, in {orc['seconds']:.0f} s.)",
        "",
        "| tune strategy | trials | found (of seeds) | bytes / oracle (median) | worst seed | "
        "encodes (median) | encodes / exhaustive | time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["tune"]:
        ratio = f"{r['ratio']:.3f}" if r["ratio"] else "-"
        worst = f"{r['worst_ratio']:.3f}" if r["worst_ratio"] else "-"
        lines.append(
            f"| {r['strategy']} | {r['budget']} | {r['found']}/{r['runs']} | {ratio} | {worst} | "
            f"{r['encodes']:.0f} | {100 * r['encodes'] / orc['pairs']:.1f}% | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "| alternative | meets target | worst image | total bytes | vs oracle |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for a in res["alternatives"]:
        worst = f"{a['worst']:.2f}" if a.get("worst") is not None else "(per image)"
        if math.isnan(a["bytes"]):
            lines.append(f"| {a['name']} | no | - | - | - |")
            continue
        lines.append(
            f"| {a['name']} | {'yes' if a['meets'] else 'no'} | {worst} | {int(a['bytes']):,} | "
            f"{100 * (a['bytes'] / o_bytes - 1):+.1f}% |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "sample_images"))
    ap.add_argument("--target", default="ssimulacra2>=80")
    ap.add_argument("--max-width", type=int)
    ap.add_argument("--max-height", type=int)
    ap.add_argument("--budgets", default="20,40,80")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    res = run(
        Path(args.corpus),
        args.target,
        max_width=args.max_width,
        max_height=args.max_height,
        budgets=tuple(int(b) for b in args.budgets.split(",")),
        seeds=tuple(int(s) for s in args.seeds.split(",")),
    )
    command = "python -m benchmarks.search " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = table(res, command.strip())
    print("\n".join(lines))
    if not args.no_write:
        write_section(RESULTS, "search", lines)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
