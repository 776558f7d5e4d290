"""`imgtune optimize` against a jpeg-recompress-style baseline: encodes per image and total bytes.

Baseline (what jpeg-recompress does, with our metric): JPEG only, plain bisection on quality over
1..100 until the lowest passing quality is pinned to one step, same metric and target; the
source is kept when the passing JPEG is not smaller (the rule imgtune follows too).
imgtune rows: `optimize` with its defaults (AVIF + WebP, prediction + bracketing +
interpolation, tolerance 3; AVIF probed at speed 9 and confirmed at 6), with
`--probe-speed off`, and with `--codecs jpeg` to compare the search alone on the baseline's
codec.

    python -m benchmarks.bench_optimize [--images sample_images] [--target 'ssimulacra2>=80']
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from optimizer.batch import run_folder
from optimizer.image_job import Job
from optimizer.images import iter_image_files, load
from optimizer.metrics import MetricSuite
from optimizer.predictor import QualityPredictor
from optimizer.probe_speed import DEFAULT_PROBE_SPEED
from optimizer.recipe import Candidate
from optimizer.search import ImageSet
from optimizer.targets import parse_target

from ._results import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def baseline(folder: Path, target, suite, max_width=None, max_height=None) -> dict:
    """jpeg-recompress style: JPEG, bisection on quality, lowest passing quality."""
    t0 = time.perf_counter()
    total_src = total_out = encodes = n = missed = 0
    for path in iter_image_files(folder, follow_symlinks=True):
        try:
            src = load(path, min_side=suite.min_side)
        except Exception:  # noqa: BLE001 - same skips as imgtune
            continue
        n += 1
        total_src += src.file_bytes
        bg = (255, 255, 255) if src.has_alpha else None  # JPEG has no alpha: flatten on white
        images = ImageSet([src], suite, background=bg, max_width=max_width, max_height=max_height)

        def probe(q: int, images=images):
            c = Candidate.make("jpeg", q)
            nbytes, values = images.score(0, c)
            return nbytes, target.met(values)

        lo, hi = 0, 100  # invariant: lo fails (or is below the range), hi passes
        top_bytes, top_ok = probe(100)
        if not top_ok:
            missed += 1
            total_out += src.file_bytes
            encodes += images.encodes
            continue
        best = top_bytes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            nbytes, ok = probe(mid)
            if ok:
                hi, best = mid, nbytes
            else:
                lo = mid
        encodes += images.encodes
        total_out += best if images.resized else min(best, src.file_bytes)
    return {
        "name": "jpeg-recompress style (JPEG, bisection)",
        "images": n,
        "encodes_per_image": encodes / n,
        "source_bytes": total_src,
        "output_bytes": total_out,
        "missed": missed,
        "seconds": time.perf_counter() - t0,
    }


def imgtune(
    folder: Path,
    target,
    suite,
    codecs: list[str],
    name: str,
    max_width=None,
    max_height=None,
    probe_speed: int | None = DEFAULT_PROBE_SPEED,
) -> dict:
    bg = (255, 255, 255) if codecs == ["jpeg"] else None
    job = Job.optimize(
        target, codecs, background=bg, max_width=max_width, max_height=max_height,
        probe_speed=probe_speed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        s = run_folder(
            folder, Path(tmp) / "out", job, suite=suite, jobs=1, predictor=QualityPredictor()
        )
    return {
        "name": name,
        "images": s.searched,
        "encodes_per_image": s.encodes_per_image,
        "source_bytes": s.source_bytes,
        "output_bytes": s.output_bytes,
        "missed": s.counts["missed"],
        "seconds": s.seconds,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", default=str(ROOT / "sample_images"))
    ap.add_argument("--target", default="ssimulacra2>=80")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    folder = Path(args.images)
    target = parse_target(args.target)
    suite = MetricSuite.build(list(dict.fromkeys(m for m in target.metrics)), device="cpu")
    rows = [
        baseline(folder, target, suite),
        imgtune(folder, target, suite, ["jpeg"], "imgtune optimize --codecs jpeg"),
        imgtune(folder, target, suite, ["avif", "webp"], "imgtune optimize (avif, webp)"),
        imgtune(
            folder,
            target,
            suite,
            ["avif", "webp"],
            "imgtune optimize (avif, webp) --probe-speed off",
            probe_speed=None,
        ),
    ]
    base = rows[0]["output_bytes"]
    for r in rows:
        print(
            f"{r['name']}: {r['encodes_per_image']:.2f} encodes/image, {r['output_bytes']:,} bytes "
            f"({100 * (r['output_bytes'] / base - 1):+.1f}% vs baseline), {r['missed']} missed, "
            f"{r['seconds']:.1f} s"
        )
    if args.no_write:
        return
    command = "python -m benchmarks.bench_optimize " + " ".join(argv or sys.argv[1:])
    lines = [
        "## `optimize` against a jpeg-recompress-style baseline",
        "",
        f"Command: `{command.strip()}`  ",
        f"Images: `{Path(args.images).name}` ({rows[0]['images']} images, "
        f"{rows[0]['source_bytes']:,} bytes); target `{target}` (every image); "
        f"{platform.machine()}, Python {platform.python_version()}; date {date.today()}",
        "",
        "| method | encodes per image | total bytes | vs baseline | missed target | time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['encodes_per_image']:.2f} | {r['output_bytes']:,} | "
            f"{100 * (r['output_bytes'] / base - 1):+.1f}% | {r['missed']} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "Bytes count what is written: the encode, or the source where nothing smaller passes "
        "(both sides follow that rule). The baseline bisects 1..100 to one step (7-8 encodes); "
        "imgtune starts from the quality earlier images needed, brackets, and interpolates on "
        "the target margin to a 3-step bracket, and drops a codec once it cannot win; by "
        "default AVIF's probes are at speed 9 (each about an eighth of a speed-6 encode's "
        "time) and the outputs at speed 6, so it counts more, cheaper encodes. Images "
        "with transparency are flattened on white for JPEG. 'missed' counts images where no "
        "encode up to quality 100 passed while smaller than the source (the source is kept "
        "either way; imgtune stops a codec as soon as its files reach the source's size, so it "
        "reports such images as kept).",
    ]
    write_section(RESULTS, "bench_optimize", lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
