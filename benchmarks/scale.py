"""Folder-job throughput: threads against a Dask LocalCluster of 1 and 2 worker processes.

Runs `optimizer.optimize` on the same corpus with `--jobs N` (threads), `--cluster local:1` and
`--cluster local:2`, each into a fresh OUT, and reports images per second, seconds per megapixel,
the scaling efficiency of local:2 over local:1, and whether every run wrote the same bytes.
Cluster start-up (worker processes, their metric suites) is inside the time, as a user pays it.

`--big N,MP` (repeatable) also runs `imgtune optimize` as a user would (a fresh process, the
default `--jobs` and `--memory`) on N photos of MP megapixels tiled from the Kodak suite (made
in a temporary folder, never committed), sampling the peak RSS of the process and its children:
camera-size folders under the default memory budget (half the machine's RAM). `--sizes` runs
`benchmarks.bench_image_memory` on those sizes (seconds per megapixel, bytes per pixel).

    python -m benchmarks.scale [--corpus DIR] [--target 'ssimulacra2>=80'] [--jobs 2]
        [--big 1,45 --big 10,25] [--sizes 0.4,6,25,45] [--skip-threads] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
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


def big_folder(count: int, megapixels: float) -> dict:
    """`imgtune optimize` on `count` tiled photos of `megapixels`, default settings."""
    import threading

    import psutil

    from optimizer.api import memory_budget

    from .bench_image_memory import KODAK, make_photo

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        first = make_photo(KODAK, megapixels, src / "photo-00.png")
        for i in range(1, count):  # different bytes, same content: each is searched
            with Image.open(first) as im:
                im.rotate(180 * (i % 2)).save(src / f"photo-{i:02d}.png", compress_level=i % 9)
        w, h = Image.open(first).size
        t0 = time.perf_counter()
        log = (Path(tmp) / "log.ndjson").open("w")
        proc = psutil.Popen(
            [sys.executable, "-m", "optimizer", "optimize", str(src), str(Path(tmp) / "out"),
             "--json"],
            stdout=log, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        peak = 0

        def tree_rss() -> int:
            try:
                procs = [proc, *proc.children(recursive=True)]
                return sum(p.memory_info().rss for p in procs)
            except psutil.Error:
                return 0

        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss())
                time.sleep(0.02)

        t = threading.Thread(target=sample)
        t.start()
        rc = proc.wait()
        done.set()
        t.join()
        log.close()
        seconds = time.perf_counter() - t0
        lines = (Path(tmp) / "log.ndjson").read_text().splitlines()
        import json

        records = [json.loads(x) for x in lines if x.strip()]
        written = sum(1 for r in records if r.get("status") == "written")
        return {
            "name": f"{count} x {w}x{h} ({w * h / 1e6:.1f} MP)",
            "rc": rc,
            "seconds": seconds,
            "s_per_mp": seconds / (count * w * h / 1e6),
            "peak": peak,
            "budget": memory_budget(None),
            "written": written,
            "count": count,
        }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "sample_images"))
    ap.add_argument("--target", default="ssimulacra2>=80")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--big", action="append", default=[], help="N,MP: N photos of MP megapixels")
    ap.add_argument("--sizes", help="also run benchmarks.bench_image_memory on these sizes")
    ap.add_argument("--skip-threads", action="store_true", help="only --big and --sizes")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    command = "python -m benchmarks.scale " + " ".join(argv or sys.argv[1:])
    if args.big:
        bigs = [big_folder(int(n), float(mp)) for n, mp in (b.split(",") for b in args.big)]
        lines = [
            "## Camera-size folders under the default memory budget",
            "",
            f"Command: `{command.strip()}`  ",
            "`imgtune optimize SRC OUT --json` in a fresh process, default `--jobs` and "
            f"`--memory` (half the RAM: {bigs[0]['budget'] / 2**30:.1f} GiB of "
            f"{2 * bigs[0]['budget'] / 2**30:.1f}); photos tiled from kodak24; "
            f"{os.cpu_count()} cores, {platform.machine()}; date {date.today()}",
            "",
            "| folder | exit code | images written | seconds | s per megapixel | "
            "peak RSS (process and children) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in bigs:
            print(b, file=sys.stderr)
            lines.append(
                f"| {b['name']} | {b['rc']} | {b['written']} of {b['count']} | "
                f"{b['seconds']:.0f} | {b['s_per_mp']:.2f} | {b['peak'] / 2**30:.2f} GiB |"
            )
        if not args.no_write:
            write_section(RESULTS, "scale-big", lines)
    if args.sizes:
        from . import bench_image_memory

        bench_image_memory.main(["--sizes", args.sizes] + (["--no-write"] if args.no_write else []))
    if args.skip_threads:
        return
    corpus = Path(args.corpus)
    rows = run(corpus, args.target, args.jobs)
    one = next(r for r in rows if r["name"] == "--cluster local:1")
    two = next(r for r in rows if r["name"] == "--cluster local:2")
    same = len({r["digest"] for r in rows}) == 1
    if args.no_write:
        return
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
