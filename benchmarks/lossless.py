"""Where lossless files win under a lossy target, and what `optimizer.lossless` tries.

    python -m benchmarks.lossless [--seeds 0,1] [--count 18] [--target ssimulacra2>=80]

Per rendered graphic (`benchmarks.graphics`, 768x512, every kind once per 18; the first six of
set 0 again in grey, where every image has at most 256 levels), per image drawn here (flat
shapes, grey antialiased text, noise of 16 and of 2 colours), and per photo (Kodak 24 where
../shared/corpora has it, else sample_images): its colours and flat share and whether
`lossless.worth_trying` tries it given the lossy output, the lossy search's output (AVIF/WebP,
as `optimize` without lossless codecs), and the lossless WebP and PNG files with their encode
times. A row is a *win* where a lossless file is smaller than the lossy output (or than the
source, where nothing lossy beat it); the summary counts the wins the evidence tries and
misses, and the losses it tries for nothing (one lossless WebP encode each). Photos get no
encode: the evidence must refuse them before any, even without a lossy output to weigh.
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from optimizer.codecs import encode
from optimizer.image_job import Job, Status, optimize_image
from optimizer.images import load, pixels_to_pil
from optimizer.lossless import flat_share, recipes, worth_trying
from optimizer.metrics import MetricSuite
from optimizer.predictor import Prediction
from optimizer.targets import parse_target

from ._results import write_section
from .graphics import make_graphics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
KODAK = ROOT.parent / "shared" / "corpora" / "kodak24"


def _colours(pixels) -> int | str:
    found = pixels_to_pil(pixels).getcolors(4096)
    return len(found) if found is not None else ">4096"


def _timed(pixels, cand) -> tuple[int, float]:
    t = time.perf_counter()
    data = encode(pixels, cand.settings())
    return len(data), time.perf_counter() - t


def drawn(dest: Path) -> list[Path]:
    """Four images the rendered sets lack: flat shapes with no antialiasing, antialiased text in
    grey, and noise of 16 and of 2 colours (few colours, nothing flat)."""
    rng = np.random.default_rng(0)
    w, h = 768, 512
    shapes = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(shapes)
    colours = [(230, 30, 30), (30, 160, 60), (20, 60, 200), (250, 200, 0), (0, 0, 0)]
    for i in range(40):
        x, y = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
        d.rectangle((x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 150))),
                    fill=colours[i % len(colours)])  # fmt: skip
    text = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(text)
    for i in range(22):
        d.text((20, 20 + 20 * i), f"Lorem ipsum dolor sit amet, consectetur {i}", fill=30,
               font=ImageFont.load_default(14))  # fmt: skip
    palette = rng.integers(0, 256, (16, 3)).astype(np.uint8)
    images = {
        "flat_shapes": shapes,
        "grey_text": text,
        "noise_16": Image.fromarray(palette[rng.integers(0, 16, (h, w))]),
        "noise_2": Image.fromarray((rng.random((h, w)) < 0.5).astype(np.uint8) * 255),
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name, im in images.items():
        im.save(dest / f"{name}.png")
    return [dest / f"{name}.png" for name in images]


def measure(path: Path, suite, target, *, encodes: bool) -> dict:
    src = load(path)
    w, h = src.width, src.height
    row = {
        "image": path.stem,
        "colours": _colours(src.pixels),
        "flat": flat_share(src.pixels),
        "tried": worth_trying(src.pixels),  # no lossy output weighed: the most it tries
        "source": src.file_bytes,
        "win": None,
    }
    if not encodes:
        return row
    webp, png = recipes(("webp-lossless", "png"))
    row["webp"], row["webp_s"] = _timed(src.pixels, webp)
    row["png"], row["png_s"] = _timed(src.pixels, png)
    r = optimize_image(path, Job.optimize(target, ["avif", "webp"]), suite=suite,
                       prediction=Prediction())  # fmt: skip
    written = r.outcome.status == Status.WRITTEN
    row["lossy"] = r.outcome.output_bytes if written else None
    row["codec"] = r.outcome.codec if written else "none below the source"
    best_lossy = row["lossy"] if written else src.file_bytes
    row["bits"] = 8 * best_lossy / (w * h) if written else math.inf
    row["tried"] = worth_trying(src.pixels, row["bits"])  # as `consider` weighs it
    row["win"] = min(row["webp"], row["png"]) < best_lossy
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1", help="graphics sets (benchmarks.graphics)")
    ap.add_argument("--count", type=int, default=18, help="graphics per set")
    ap.add_argument("--target", default="ssimulacra2>=80")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    target = parse_target(args.target)
    suite = MetricSuite.build(target.needed_metrics(), device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets: list[tuple[str, list[Path]]] = []
        for seed in (int(s) for s in args.seeds.split(",")):
            sets.append(
                (f"graphics {seed}", make_graphics(Path(tmp) / str(seed), args.count, seed))
            )
        grey = Path(tmp) / "grey"
        grey.mkdir()
        for path in sets[0][1][:6]:
            Image.open(path).convert("L").save(grey / path.name)
        sets.append((f"{sets[0][0]} in grey", sorted(grey.glob("*.png"))))
        sets.append(("drawn", drawn(Path(tmp) / "drawn")))
        for name, paths in sets:
            for path in paths:
                rows.append({**measure(path, suite, target, encodes=True), "set": name})
                print(rows[-1], flush=True)
    photos = sorted(KODAK.glob("*.png")) or sorted((ROOT / "sample_images").glob("*.png"))
    for path in photos:
        rows.append({**measure(path, suite, target, encodes=False), "set": "photos"})
        print(rows[-1], flush=True)
    graphics = [r for r in rows if r["set"] != "photos"]
    wins = [r for r in graphics if r["win"]]
    losses = [r for r in graphics if r["tried"] and not r["win"]]
    lines = [
        f"`python -m benchmarks.lossless` ({args.target}; lossy: the AVIF/WebP search; "
        "lossless: WebP effort 100 method 4, oxipng level 2; encode times from the same run "
        "on 2 busy cores)",
        "",
        f"- graphics: lossless won on {len(wins)} of {len(graphics)}; the evidence tried "
        f"{sum(r['tried'] for r in wins)} of those wins (saving "
        f"{sum(r['lossy'] or r['source'] for r in wins if r['tried']) - sum(min(r['webp'], r['png']) for r in wins if r['tried']):,} bytes) "  # noqa: E501
        f"and {len(losses)} losses (one lossless WebP encode each, "
        f"{sum(r['webp_s'] for r in losses):.2f} s in all)",
        f"- photos ({'Kodak 24' if KODAK.is_dir() else 'sample_images'}): "
        f"{sum(r['tried'] for r in rows if r['set'] == 'photos')} of "
        f"{len(rows) - len(graphics)} tried",
        "",
        "| set | image | colours | flat | tried | source | lossy (bits/px) | lossless WebP (s) "
        "| PNG (s) | win |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r["win"] is None:  # a photo: the evidence only
            cells = "| | | |"
        else:
            lossy = f"{r['lossy']:,} {r['codec']}" if r["lossy"] is not None else r["codec"]
            lossy += f" ({r['bits']:.2f})" if r["lossy"] is not None else ""
            cells = (
                f"| {lossy} | {r['webp']:,} ({r['webp_s']:.2f}) | {r['png']:,} "
                f"({r['png_s']:.2f}) | {'**win**' if r['win'] else ''} |"
            )
        lines.append(
            f"| {r['set']} | {r['image']} | {r['colours']} | {r['flat']:.2f} | "
            f"{'yes' if r['tried'] else 'no'} | {r['source']:,} " + cells
        )
    print("\n".join(lines))
    if not args.no_write:
        write_section(RESULTS, "lossless", lines)


if __name__ == "__main__":
    main()
