"""Peak memory of scoring one candidate, per pixel, as the image grows (CPU).

Each size runs in a fresh process; the figure is the growth of the process's peak resident set
(ru_maxrss) while preparing a reference and scoring one candidate, divided by the pixel count.
Flat numbers mean memory is bounded by the tile/band working set plus the images themselves.

    python -m benchmarks.bench_memory [--sizes 1024 2048 3072 4096] [--metric lpips]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

from ._results import write_section
from ._weights import random_alexnet_dir

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

CHILD = r"""
import json, resource, sys, torch
from optimizer.metrics import build_metric
name, side, wdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = build_metric(name, device="cpu", weights_dir=wdir or None)
g = torch.Generator().manual_seed(0)
y = torch.rand(1, 3, side, side, generator=g)
x = (y + 0.05 * torch.rand(1, 3, side, side, generator=g)).clamp(0, 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    m.score(x, m.prepare(y))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_bytes": (after - before) * 1024}))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096])
    ap.add_argument("--metric", action="append", help="lpips, ssim, ms_ssim (default: all three)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    metrics = args.metric or ["lpips", "ssim", "ms_ssim"]
    wdir = str(random_alexnet_dir()) if "lpips" in metrics else ""
    rows = []
    for name in metrics:
        for side in args.sizes:
            res = subprocess.run(
                [sys.executable, "-c", CHILD, name, str(side), wdir],
                capture_output=True,
                text=True,
                check=True,
            )
            growth = json.loads(res.stdout.strip().splitlines()[-1])["growth_bytes"]
            rows.append((name, side, growth / 2**20, growth / side**2))
            print(
                f"{name} {side}x{side}: +{growth / 2**20:.0f} MiB, "
                f"{growth / side**2:.1f} bytes/pixel"
            )
    if not args.no_write:
        cmd = "python -m benchmarks.bench_memory " + " ".join(argv or sys.argv[1:])
        lines = [
            "## Peak memory of scoring one candidate (CPU)",
            "",
            f"Command: `{cmd.strip()}`; date {date.today().isoformat()}  ",
            "Growth of the process's peak RSS while preparing one reference and scoring one "
            "candidate (fresh process per row). The two float32 input images alone are 24 "
            "bytes/pixel. A first row of 0 means the model's own loading peak was higher.",
            "",
            "| metric | size | peak growth (MiB) | bytes/pixel |",
            "| --- | --- | ---: | ---: |",
            *[f"| {n} | {s}x{s} | {mib:.0f} | {bpp:.1f} |" for n, s, mib, bpp in rows],
        ]
        write_section(RESULTS, "bench_memory", lines)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
