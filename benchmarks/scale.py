"""Folder-job throughput: threads against a Dask LocalCluster of 1 and 2 worker processes.

Runs `optimizer.optimize` on the same corpus with `--jobs N` (threads), `--cluster local:1` and
`--cluster local:2`, each into a fresh OUT, and reports images per second, seconds per megapixel,
the scaling efficiency of local:2 over local:1, and whether every run wrote the same bytes.
Cluster start-up (worker processes, their metric suites) is inside the time, as a user pays it.

    python -m benchmarks.scale [--corpus DIR] [--target 'ssimulacra2>=80'] [--jobs 2] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from PIL import Image

import optimizer

from ._results import write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file() and not p.name.startswith(".imgtune"):
            h.update(p.relative_to(out).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def run(corpus: Path, target: str, jobs: int) -> list[dict]:
    files = [p for p in sorted(corpus.rglob("*")) if p.suffix.lower() in (".png", ".jpg")]
    megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in files) / 1e6
    settings = [
        (f"threads (--jobs {jobs})", {"jobs": jobs}),
        ("--cluster local:1", {"cluster": "local:1"}),
        ("--cluster local:2", {"cluster": "local:2"}),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in settings:
            out = Path(tmp) / name.replace(" ", "_")
            t0 = time.perf_counter()
            s = optimizer.optimize(corpus, out, target=target, **kw)
            seconds = time.perf_counter() - t0
            rows.append(
                {
                    "name": name,
                    "images": s.searched,
                    "seconds": seconds,
                    "images_per_s": s.searched / seconds,
                    "s_per_mp": seconds / megapixels,
                    "bytes": s.output_bytes,
                    "digest": _digest(out),
                }
            )
            print(
                f"{name}: {s.searched} images in {seconds:.1f} s, "
                f"{rows[-1]['images_per_s']:.2f} images/s",
                file=sys.stderr,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "sample_images"))
    ap.add_argument("--target", default="ssimulacra2>=80")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    corpus = Path(args.corpus)
    rows = run(corpus, args.target, args.jobs)
    one = next(r for r in rows if r["name"] == "--cluster local:1")
    two = next(r for r in rows if r["name"] == "--cluster local:2")
    same = len({r["digest"] for r in rows}) == 1
    if args.no_write:
        return
    command = "python -m benchmarks.scale " + " ".join(argv or sys.argv[1:])
    lines = [
        "## Folder jobs: threads against a Dask LocalCluster",
        "",
        f"Command: `{command.strip()}`  ",
        f"Corpus: `{corpus.name}` ({rows[0]['images']} images); target `{args.target}`; "
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"date {date.today()}",
        "",
        "| run | images/s | seconds | s per megapixel | output bytes |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['images_per_s']:.2f} | {r['seconds']:.1f} | "
            f"{r['s_per_mp']:.1f} | {r['bytes']:,} |"
        )
    lines += [
        "",
        f"Scaling efficiency local:2 over local:1: "
        f"{two['images_per_s'] / one['images_per_s'] / 2:.0%} (100% = twice the images/s). "
        f"Every run wrote the same bytes: {'yes' if same else 'NO'}. Times include starting the "
        "worker processes and building their metric suites.",
    ]
    write_section(RESULTS, "scale", lines)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
