"""Band size of the banded metrics (SSIMULACRA2, SSIM, MS-SSIM) on the CPU: time and memory.

For each size, a photo tiled from the corpus (never committed) and its JPEG q70 are scored by
each metric with several `band_bytes`, one torch thread, in this process: seconds to prepare
the reference and to score the candidate, peak RSS above the start per pixel, and the value
(equal across band sizes to the digits shown, or the table says otherwise).

    python -m benchmarks.bands [--sizes 6,25] [--bands 256,32] [--no-write]
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image

from ._results import write_section
from .bench_image_memory import KODAK, make_photo

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def main(argv: list[str] | None = None) -> None:
    from optimizer.metrics.ssim import MSSSIM, SSIM
    from optimizer.metrics.ssimulacra2 import SSIMULACRA2
    from optimizer.metrics.suite import MetricSuite

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="6,25", help="megapixels, comma-separated")
    ap.add_argument("--bands", default="256,32", help="band_bytes in MiB, comma-separated")
    ap.add_argument("--corpus", default=str(KODAK))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    proc = psutil.Process()
    peak = [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.003)

    threading.Thread(target=sample, daemon=True).start()
    load = psutil.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in (float(s) for s in args.sizes.split(",")):
            path = make_photo(Path(args.corpus), mp, Path(tmp) / f"{mp}.png")
            ref = np.asarray(Image.open(path).convert("RGB"))
            buf = io.BytesIO()
            Image.fromarray(ref).save(buf, "JPEG", quality=70)
            cand = np.asarray(Image.open(buf).convert("RGB"))
            px = ref.shape[0] * ref.shape[1]
            for cls in (SSIMULACRA2, SSIM, MSSSIM):
                for mib in (int(b) for b in args.bands.split(",")):
                    suite = MetricSuite([cls("cpu", band_bytes=mib << 20)], device="cpu")
                    base = proc.memory_info().rss
                    peak[0] = base
                    t0 = time.perf_counter()
                    prepared = suite.prepare(ref)
                    t1 = time.perf_counter()
                    value = suite.score(prepared, [cand])[0].values[cls.name]
                    t2 = time.perf_counter()
                    rows.append(
                        (f"{ref.shape[1]}x{ref.shape[0]}", cls.name, mib, t1 - t0, t2 - t1,
                         (peak[0] - base) / px, value)
                    )  # fmt: skip
                    print(rows[-1], file=sys.stderr)
                    del prepared, suite
    if args.no_write:
        return
    command = "python -m benchmarks.bands " + " ".join(argv or sys.argv[1:])
    lines = [
        "## Band size of the banded metrics (CPU)",
        "",
        f"Command: `{command.strip()}`  ",
        f"A photo tiled from `{Path(args.corpus).name}` against its JPEG q70; one torch thread; "
        f"{psutil.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"load average at the start {load:.1f}; date {date.today()}",
        "",
        "| size | metric | band MiB | prepare s | score s | peak B/px | value |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, name, mib, tp, ts, bpp, value in rows:
        lines.append(f"| {size} | {name} | {mib} | {tp:.2f} | {ts:.2f} | {bpp:.0f} | {value:.6f} |")
    write_section(RESULTS, "bands", lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
