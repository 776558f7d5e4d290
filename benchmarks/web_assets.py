"""Responsive web assets: `imgtune optimize --widths --formats` against a fixed-quality pipeline.

    python -m benchmarks.web_assets [--corpus ../shared/corpora/kodak24] [--widths 480,960]
        [--formats avif,jpeg] [--target 80] [--no-write]

The fixed pipeline is sharp's defaults, made with Pillow's encoders: AVIF quality 50, 4:4:4,
libavif speed 5 (sharp's effort 4), and JPEG quality 80, 4:2:0, progressive with optimised
Huffman tables (sharp's mozjpeg switch is off by default; Pillow has no trellis quantisation),
resized with Lanczos and never enlarged (sharp's `withoutEnlargement`: a width wider than the
source makes the source's own width, as imgtune does). imgtune runs with the learned model and
`--no-learn`. Every output of both is scored here by a fresh SSIMULACRA2 suite against the
source resized with Lanczos to the output's size. Per width and format: total bytes, the worst
image's score, how many of the fixed files miss the target and by how much, and the bytes
imgtune saves on the images where the fixed file does pass. Results go to benchmarks/RESULTS.md
(section "web-assets"). A second table runs imgtune per format with the fixed files' worst score
as its target: the bytes each saves at the same worst-case quality.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from optimizer import codecs, transforms
from optimizer.codecs import EncodeSettings
from optimizer.images import iter_image_files, load
from optimizer.metrics import MetricSuite

from ._results import write_section

RESULTS = Path(__file__).with_name("RESULTS.md")
#: format -> sharp's default settings, in Pillow's terms
FIXED = {
    "avif": EncodeSettings.make("avif", 50, subsampling="4:4:4", speed=5),
    "jpeg": EncodeSettings.make("jpeg", 80, subsampling="4:2:0", progressive=True, optimize=True),
    "webp": EncodeSettings.make("webp", 80, method=4),
}


def _width(src_width: int, widths: list[int]) -> list[int]:
    keep = [w for w in widths if w <= src_width]
    if max(widths) > src_width and src_width not in keep:
        keep.append(src_width)
    return keep


def fixed_pipeline(paths: list[Path], widths: list[int], formats: list[str], suite) -> list[dict]:
    rows = []
    for p in paths:
        src = load(p)
        for w in _width(src.width, widths):
            size = transforms.fit_size(src.width, src.height, max_width=w)
            ref = (
                src.pixels
                if size == (src.width, src.height)
                else transforms.reference(src.pixels, size)
            )
            for f in formats:
                data = codecs.encode(ref, FIXED[f])
                got = codecs.decode(data, channels=ref.shape[2])
                score = suite.score_pair(ref, got).values["ssimulacra2"]
                rows.append(
                    {"image": p.name, "width": w, "format": f, "bytes": len(data), "score": score}
                )
    return rows


def imgtune_pipeline(
    paths: list[Path], widths: list[int], formats: list[str], target: float, suite
) -> tuple[list[dict], float, float]:
    from optimizer.api import optimize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src_dir, out = Path(tmp) / "src", Path(tmp) / "out"
        src_dir.mkdir()
        for p in paths:
            shutil.copy(p, src_dir / p.name)
        os.environ["IMGTUNE_STUDIES"] = str(Path(tmp) / "studies")
        outcomes = []
        t0 = time.perf_counter()
        optimize(
            src_dir, out, target=f"ssimulacra2>={target:g}", widths=widths, formats=formats,
            learn=False, on_result=outcomes.append,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        encodes = sum(o.encodes for o in outcomes)
        for o in outcomes:
            if not o.output:
                continue
            src = load(src_dir / o.source)
            got = load(out / o.output)
            size = (got.width, got.height)
            ref = (
                src.pixels
                if size == (src.width, src.height)
                else transforms.reference(src.pixels, size)
            )
            score = suite.score_pair(ref, got.pixels).values["ssimulacra2"]
            fmt = {"avif": "avif", "jpeg": "jpeg", "webp": "webp"}.get(o.codec or "", "kept")
            rows.append(
                {
                    "image": o.source,
                    "width": o.variant.split("w")[0] and int(o.variant.split("w")[0]),
                    "format": fmt,
                    "bytes": o.output_bytes,
                    "score": score,
                }
            )
    return rows, seconds, encodes / max(len(outcomes), 1)


def table(fixed: pd.DataFrame, tuned: pd.DataFrame, target: float) -> list[str]:
    lines = [
        "| width | format | fixed: bytes | fixed: worst score | fixed: files missing the target "
        "(worst shortfall) | imgtune: bytes | imgtune: worst score | imgtune vs fixed, all | "
        "imgtune vs fixed, where fixed passes |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    both = fixed.merge(tuned, on=["image", "width", "format"], suffixes=("_f", "_t"))
    for (w, f), g in both.groupby(["width", "format"]):
        miss = g[g["score_f"] < target]
        ok = g[g["score_f"] >= target]
        short = f" ({target - miss['score_f'].min():.1f} points)" if len(miss) else ""
        where = (
            f"{ok['bytes_t'].sum() / ok['bytes_f'].sum():.2f}x ({len(ok)} images)"
            if len(ok)
            else "(none passes)"
        )
        lines.append(
            f"| {w} | {f} | {g['bytes_f'].sum():,} | {g['score_f'].min():.1f} | "
            f"{len(miss)} of {len(g)}{short} | {g['bytes_t'].sum():,} | {g['score_t'].min():.1f} | "
            f"{g['bytes_t'].sum() / g['bytes_f'].sum():.2f}x | {where} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default="../shared/corpora/kodak24")
    ap.add_argument("--widths", default="480,960")
    ap.add_argument("--formats", default="avif,jpeg")
    ap.add_argument("--target", type=float, default=80.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    paths = [p for p in iter_image_files(Path(args.corpus)) if isinstance(p, Path)]
    if not paths:
        sys.exit(f"{args.corpus}: no images")
    widths = [int(w) for w in args.widths.split(",")]
    formats = [f.strip() for f in args.formats.split(",")]
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    fixed = pd.DataFrame(fixed_pipeline(paths, widths, formats, suite))
    rows, seconds, per_output = imgtune_pipeline(paths, widths, formats, args.target, suite)
    tuned = pd.DataFrame(rows)
    lines = table(fixed, tuned, args.target)
    # The same worst-case quality as the fixed pipeline: imgtune with its worst score as the
    # target, per format (what it saves where the fixed files are good enough for a user).
    matched = [
        "| format | target (the fixed files' worst score) | fixed: bytes | imgtune: bytes "
        "| imgtune: worst score | imgtune vs fixed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in formats:
        worst = float(np.floor(fixed[fixed["format"] == f]["score"].min() * 10) / 10)
        got, _, _ = imgtune_pipeline(paths, widths, [f], worst, suite)
        g = pd.DataFrame(got)
        fb = int(fixed[fixed["format"] == f]["bytes"].sum())
        matched.append(
            f"| {f} | {worst:.1f} | {fb:,} | {int(g['bytes'].sum()):,} | "
            f"{g['score'].min():.1f} | {g['bytes'].sum() / fb:.2f}x |"
        )
    n = len(tuned)
    header = [
        "## Web assets: per-variant search against a fixed-quality pipeline",
        "",
        f"Command: `python -m benchmarks.web_assets --corpus {args.corpus} --widths {args.widths} "
        f"--formats {args.formats} --target {args.target:g}`  ",
        f"{len(paths)} images; target ssimulacra2>={args.target:g}; fixed: sharp's defaults "
        "(AVIF q50 4:4:4 speed 5, JPEG q80 4:2:0 progressive optimised) with Pillow; widths "
        "wider than a source make its own width. Scores: a fresh SSIMULACRA2 suite against the "
        "source resized with Lanczos to each output's size. "
        f"imgtune: {n} outputs in {seconds:.0f} s ({per_output:.2f} encodes per output, "
        f"{seconds / max(n, 1):.2f} s per output). "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"date {date.today().isoformat()}",
        "",
        *lines,
        "",
        f"imgtune, every output: worst score {tuned['score'].min():.2f}, "
        f"{int((tuned['score'] < args.target).sum())} below the target.",
        "",
        "At the fixed pipeline's own worst-case quality (imgtune's target set to the lowest score "
        "of the fixed files of that format, every width):",
        "",
        *matched,
    ]
    print("\n".join(header))
    if not args.no_write:
        write_section(RESULTS, "web-assets", header)
        print(f"wrote {RESULTS}")
    if np.isnan(tuned["score"]).any():
        sys.exit("a score was NaN")


if __name__ == "__main__":
    main()
