"""Folder jobs on a machine another process keeps busy (a CI runner, a shared server).

`imgtune optimize` runs on a folder of 512x512 crops of the corpus with `--jobs 1` and
`--jobs 2`, first alone, then while `--busy` processes spin on the CPU, and each of those with
OpenMP's passive wait policy (imgtune's default since it sets `OMP_WAIT_POLICY=PASSIVE`, see
optimizer/cpus.py) and with the active one (the old behaviour: torch's threads spin at every
parallel region's end). Every run is a fresh `imgtune` process; seconds are wall time.

    python -m benchmarks.contention [--corpus DIR] [--images 24] [--busy 1] [--no-write]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from PIL import Image

from ._results import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
KODAK = ROOT.parent / "shared" / "corpora" / "kodak24"


def _spin() -> None:
    while True:
        pass


def crops(corpus: Path, n: int, dest: Path) -> Path:
    files = sorted(p for p in corpus.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            im = im.convert("RGB")
            left = (i // len(files)) * 64 % max(1, im.width - 512)
            im.crop((left, 0, left + 512, 512)).save(dest / f"{i:03d}.png")
    return dest


def timed(src: Path, out: Path, jobs: int, policy: str) -> float:
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "optimizer", "optimize", str(src), str(out), "--jobs", str(jobs)],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(KODAK if KODAK.is_dir() else ROOT / "sample_images"))
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--busy", type=int, default=1, help="busy processes during the loaded runs")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = crops(Path(args.corpus), args.images, Path(tmp) / "src")
        for busy in (0, args.busy):
            spinners = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
            for p in spinners:
                p.start()
            try:
                for jobs in (1, 2):
                    for policy in ("PASSIVE", "ACTIVE"):
                        out = Path(tmp) / f"out-{busy}-{jobs}-{policy}"
                        s = timed(src, out, jobs, policy)
                        rows.append((busy, jobs, policy, s))
                        print(f"busy={busy} jobs={jobs} {policy}: {s:.1f} s", file=sys.stderr)
            finally:
                for p in spinners:
                    p.terminate()
                    p.join()
    if args.no_write:
        return
    command = "python -m benchmarks.contention " + " ".join(argv or sys.argv[1:])
    alone = {(j, p): s for b, j, p, s in rows if b == 0}
    lines = [
        "## Thread pools under contention",
        "",
        f"Command: `{command.strip()}`  ",
        f"`imgtune optimize` (default target) on {args.images} crops of 512x512 from "
        f"`{Path(args.corpus).name}`, alone and beside {args.busy} busy process(es); "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"load average before {load_before:.1f}; date {date.today()}",
        "",
        "| busy processes | --jobs | OMP_WAIT_POLICY | seconds | vs. alone, same settings |",
        "| ---: | ---: | --- | ---: | ---: |",
    ]
    for busy, jobs, policy, s in rows:
        lines.append(
            f"| {busy} | {jobs} | {policy}{' (default)' if policy == 'PASSIVE' else ''} | "
            f"{s:.1f} | {s / alone[(jobs, policy)]:.2f}x |"
        )
    write_section(RESULTS, "contention", lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
