"""Where one image's search spends memory and time, at camera sizes.

For each size, a photo of that many megapixels is made by tiling the Kodak suite (or the
sample images) into a temporary folder (never committed), and `optimize_image` runs on it once
with the default target and AVIF, in this process, while a thread samples the resident set
size every 5 ms. Reported per size: peak RSS above the idle process per source pixel, seconds
per megapixel, and per stage (decode, prepare the reference, transforms, encode, decode the
candidate, score) the largest rise in RSS during one call and the total time.

    python -m benchmarks.bench_image_memory [--sizes 0.4,6,25] [--corpus DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import psutil
from PIL import Image

from ._results import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
KODAK = ROOT.parent / "shared" / "corpora" / "kodak24"


def make_photo(corpus: Path, megapixels: float, dest: Path) -> Path:
    tiles = sorted(p for p in corpus.iterdir() if p.suffix.lower() == ".png")
    w, h = 768, 512
    n = max(1, round(math.sqrt(megapixels * 1e6 / (w * h))))
    cols, rows = n, max(1, round(megapixels * 1e6 / (w * h) / n))
    im = Image.new("RGB", (cols * w, rows * h))
    for i in range(cols * rows):
        t = Image.open(tiles[i % len(tiles)]).convert("RGB").resize((w, h))
        im.paste(t, ((i % cols) * w, (i // cols) * h))
    dest.parent.mkdir(parents=True, exist_ok=True)
    im.save(dest)
    return dest


class Probe:
    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.peak = 0
        self.stages: dict[str, list[float]] = {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def wrap(self, owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def measured(*args, **kwargs):
            before, outer = self.proc.memory_info().rss, self.peak
            self.peak = before
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                rise = self.peak - before
                st = self.stages.setdefault(label, [0, 0.0, 0.0])
                st[0] += 1
                st[1] = max(st[1], rise)
                st[2] += time.perf_counter() - t0
                self.peak = max(self.peak, outer)

        setattr(owner, name, measured)


def measure(path: Path) -> dict:
    from optimizer import codecs, image_job, transforms
    from optimizer.image_job import Job, optimize_image
    from optimizer.metrics import MetricSuite
    from optimizer.metrics.suite import MetricSuite as Suite
    from optimizer.predictor import Prediction
    from optimizer.targets import parse_target

    probe = Probe()
    for owner, name, label in [
        (image_job, "load", "decode the source"),
        (Suite, "prepare", "prepare the reference"),
        (transforms, "apply", "resize/sharpen"),
        (codecs, "encode", "encode"),
        (codecs, "decode", "decode the candidate"),
        (Suite, "score", "score"),
    ]:
        probe.wrap(owner, name, label)
    suite = MetricSuite.build(["ssimulacra2"], device="cpu")
    idle = probe.proc.memory_info().rss
    probe.peak = idle
    t0 = time.perf_counter()
    job = Job.optimize(parse_target("ssimulacra2>=80"), ["avif"])
    r = optimize_image(path, job, suite=suite, prediction=Prediction())
    seconds = time.perf_counter() - t0
    w, h = Image.open(path).size
    px = w * h
    return {
        "size": f"{w}x{h}",
        "mp": px / 1e6,
        "bytes_per_px": (probe.peak - idle) / px,
        "s_per_mp": seconds / (px / 1e6),
        "seconds": seconds,
        "encodes": r.outcome.encodes,
        "stages": {k: (n, rise / px, t) for k, (n, rise, t) in probe.stages.items()},
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.4,6")
    ap.add_argument("--corpus", default=str(KODAK if KODAK.is_dir() else ROOT / "sample_images"))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    load = os.getloadavg()[0]  # other work on the machine slows the times (not the memory)
    with tempfile.TemporaryDirectory() as tmp:
        for mp in (float(x) for x in args.sizes.split(",")):
            photo = make_photo(Path(args.corpus), mp, Path(tmp) / f"{mp}mp.png")
            # a fresh process per size: one size's allocator state must not hide another's peak
            import subprocess

            out = subprocess.run(
                [sys.executable, "-c",
                 "import json, sys; from benchmarks.bench_image_memory import measure; "
                 f"print(json.dumps(measure(__import__('pathlib').Path({str(photo)!r}))))"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = __import__("json").loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['size']}: {row['bytes_per_px']:.0f} B/px peak, "
                f"{row['s_per_mp']:.2f} s/MP, {row['encodes']} encodes",
                file=sys.stderr,
            )
    if args.no_write:
        return
    command = "python -m benchmarks.bench_image_memory " + " ".join(argv or sys.argv[1:])
    lines = [
        "## One image at camera sizes: memory and time per pixel",
        "",
        f"Command: `{command.strip()}`  ",
        f"`optimize_image`, target `ssimulacra2>=80`, AVIF (speed 6), one thread of this process; "
        f"photos tiled from `{Path(args.corpus).name}`; {psutil.cpu_count()} cores, "
        f"{platform.machine()}, Python {platform.python_version()}; load average at the start "
        f"{load:.1f}; date {date.today()}",
        "",
        "| size | megapixels | peak RSS above idle (bytes/pixel) | seconds per MP | encodes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['mp']:.1f} | {r['bytes_per_px']:.0f} | {r['s_per_mp']:.2f} | "
            f"{r['encodes']} |"
        )
    lines += [
        "",
        "Per stage (largest rise in RSS during one call, bytes/pixel; total seconds):",
        "",
    ]
    lines += ["| size | " + " | ".join(rows[0]["stages"]) + " |"]
    lines += ["| --- |" + " ---: |" * len(rows[0]["stages"])]
    for r in rows:
        cells = [f"{rise:.0f} B/px, {t:.1f} s" for _, rise, t in r["stages"].values()]
        lines.append(f"| {r['size']} | " + " | ".join(cells) + " |")
    write_section(RESULTS, "bench_image_memory", lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
